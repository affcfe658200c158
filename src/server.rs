//! Start-up and shutdown of `tee-risk serve`: resolve the master key, open the encrypted
//! database, generate the in-memory SM2 keys, publish their public halves, serve HTTP until
//! SIGTERM/SIGINT, then flush.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::access::{ClientRegistry, DevClient};
use crate::api::{AppState, request_context, routes};
use crate::attest::Attester;
use crate::attest::sim::{Measurement, SimPlatform};
use crate::config::Config;
use crate::limits::RateLimiter;
use crate::service::Service;
use crate::store::rotation::DEFAULT_BATCH;
use crate::store::{MasterKey, OpenMode, SledStore, Store, Vault};
use crate::time::unix_now;

/// Name of the environment variable holding the DB master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "DB_MASTER_KEY";
/// Previous (decrypt-only) master keys during a rotation: comma-separated, 64 hex each.
pub const PREVIOUS_KEYS_ENV: &str = "DB_MASTER_KEY_PREVIOUS";
/// Bearer token for the operator endpoints (`/admin/…`); unset: they answer 404.
pub const ADMIN_TOKEN_ENV: &str = "TEE_RISK_ADMIN_TOKEN";
/// Printed on stdout once the operator listener is bound, followed by its address.
pub const OPERATOR_LISTENING_PREFIX: &str = "OPERATOR LISTENING ";
/// File beside the data holding the generated development master key.
pub const DEV_KEY_FILE: &str = "dev-master-key.hex";
/// The line printed on stdout once the server listens (tests and scripts wait for it).
pub const LISTENING_PREFIX: &str = "tee-risk listening on http://";

pub const IDENTITY_PEM: &str = "identity.pub.pem";
pub const SIM_PLATFORM_PEM: &str = "sim-platform.pub.pem";
/// The sim platform's private key, beside the data (sim mode only).
pub const SIM_PLATFORM_KEY_FILE: &str = "sim-platform-key.hex";

/// Where the master key came from.
pub enum MasterKeySource {
    Env,
    DevFile,
}

/// The master key from `env_value` (the content of DB_MASTER_KEY, if set) or, in dev mode
/// only, from (or newly into) the dev key file under `data_dir`.
pub fn resolve_master_key(
    env_value: Option<Zeroizing<String>>,
    dev: bool,
    data_dir: &Path,
) -> anyhow::Result<(MasterKey, MasterKeySource)> {
    if let Some(text) = env_value {
        let key =
            MasterKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{MASTER_KEY_ENV}: {e}"))?;
        return Ok((key, MasterKeySource::Env));
    }
    if !dev {
        bail!(
            "{MASTER_KEY_ENV} is not set. Set it to 64 hex characters (for example the output of \
             `openssl rand -hex 32`, kept in your secret store), or run with --dev for a local \
             development key."
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join(DEV_KEY_FILE);
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        );
        let key =
            MasterKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((key, MasterKeySource::DevFile));
    }
    let key = MasterKey::generate().context("cannot generate a master key")?;
    write_private_file(&path, key.to_hex_zeroizing().as_bytes())?;
    Ok((key, MasterKeySource::DevFile))
}

/// Creates `path` with mode 0600 (never overwrites) and syncs it.
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

fn warn_dev_key(data_dir: &Path) {
    let banner = "!".repeat(78);
    tracing::warn!("{banner}");
    tracing::warn!(
        "DEVELOPMENT MODE: the DB master key is {}/{DEV_KEY_FILE}, stored beside the data it \
         protects. Anyone who can read this folder can read every record. Never use this in \
         production: set {MASTER_KEY_ENV} instead.",
        data_dir.display()
    );
    tracing::warn!("{banner}");
}

/// The master keys from the environment (`DB_MASTER_KEY_PREVIOUS` parsed; the texts are
/// wiped when dropped).
pub struct MasterKeyEnv {
    pub current: Option<Zeroizing<String>>,
    pub previous: Option<Zeroizing<String>>,
}

impl MasterKeyEnv {
    pub fn from_process() -> Self {
        let read = |name| std::env::var(name).ok().map(Zeroizing::new);
        Self {
            current: read(MASTER_KEY_ENV),
            previous: read(PREVIOUS_KEYS_ENV),
        }
    }
}

/// Parses `DB_MASTER_KEY_PREVIOUS`.
pub fn previous_keys(text: Option<&Zeroizing<String>>) -> anyhow::Result<Vec<MasterKey>> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => {
            MasterKey::parse_list(text).map_err(|e| anyhow::anyhow!("{PREVIOUS_KEYS_ENV}: {e}"))
        }
    }
}

/// Opens the database under `data_dir` with the keys from the environment (or the dev key).
pub fn open_vault(
    env: MasterKeyEnv,
    dev: bool,
    data_dir: &Path,
    mode: OpenMode,
) -> anyhow::Result<Vault> {
    let (master, source) = resolve_master_key(env.current, dev, data_dir)?;
    if let MasterKeySource::DevFile = source {
        warn_dev_key(data_dir);
    }
    let previous = previous_keys(env.previous.as_ref())?;
    let db_path = data_dir.join("db");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&db_path).map_err(|e| {
        anyhow::anyhow!(
            "{e} (a running service holds the database: stop it first, or use its \
             /admin/db/status endpoint)"
        )
    })?);
    let vault =
        Vault::open_keyring(store, &master, &previous, mode).context("cannot open the database")?;
    tracing::info!(
        path = %db_path.display(),
        master_key_id = %vault.key_id(),
        previous_key_ids = ?previous.iter().map(|k| k.key_id().to_string()).collect::<Vec<_>>(),
        rotation_pending = vault.rotation_pending(),
        "database open"
    );
    Ok(vault)
}

/// Re-encrypts under the current key in the background while the service serves; stops
/// between batches when `stop` is set.
fn spawn_rotation(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("key-rotation".into())
        .spawn(move || {
            let started = Instant::now();
            let mut moved = 0u64;
            let mut last_report = Instant::now();
            let result = service.vault().rotate_until_done(
                DEFAULT_BATCH,
                &|| stop.load(Ordering::Relaxed),
                &mut |n| {
                    moved += n;
                    if last_report.elapsed() >= Duration::from_secs(5) {
                        tracing::info!(moved, "key rotation in progress");
                        last_report = Instant::now();
                    }
                },
            );
            match result {
                Ok(true) => tracing::info!(
                    moved,
                    seconds = started.elapsed().as_secs_f64(),
                    "key rotation complete: run `tee-risk db verify`, then `tee-risk db \
                     retire-key <old id>` with the service stopped"
                ),
                Ok(false) => tracing::info!(moved, "key rotation paused for shutdown"),
                Err(error) => tracing::error!(%error, "key rotation stopped"),
            }
        })
}

/// The registered clients: the clients file, or in dev mode (without one) the dev client.
fn client_registry(config: &Config) -> anyhow::Result<ClientRegistry> {
    let file = &config.access.clients_file;
    if !file.as_os_str().is_empty() {
        let registry = ClientRegistry::load(file).map_err(anyhow::Error::msg)?;
        tracing::info!(clients = registry.len(), file = %file.display(), "clients registered");
        return Ok(registry);
    }
    anyhow::ensure!(
        config.server.dev,
        "no clients registered: set access.clients_file (or --clients / TEE_RISK_CLIENTS) to \
         a clients file (docs/OPERATIONS.md); refusing to serve without client credentials"
    );
    let key_file = DevClient::key_file(&config.storage.data_dir);
    tracing::warn!(
        "DEVELOPMENT client `{}` may enrol, assess and erase; its key is {} (tee-risk client \
         uses it by default). Register real clients with access.clients_file.",
        DevClient::ID,
        key_file.display()
    );
    DevClient::registry(&config.storage.data_dir).map_err(anyhow::Error::msg)
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(config: Config, keys: MasterKeyEnv) -> anyhow::Result<()> {
    let data_dir = config.storage.data_dir.clone();
    let vault = open_vault(keys, config.server.dev, &data_dir, OpenMode::Write)?;

    let service =
        Arc::new(Service::new(&config, vault, unix_now()).context("cannot start the service")?);
    publish_public_keys(&config.keys.dir, &service)?;

    let stop_rotation = Arc::new(AtomicBool::new(false));
    let rotation = if service.vault().rotation_pending() {
        Some(spawn_rotation(service.clone(), stop_rotation.clone())?)
    } else {
        None
    };
    let stop_maintenance = Arc::new(AtomicBool::new(false));
    let maintenance = spawn_key_maintenance(service.clone(), stop_maintenance.clone())?;

    let attestation = Arc::new(match config.attestation.mode.as_str() {
        "snp" => {
            anyhow::ensure!(
                Path::new("/dev/sev-guest").exists(),
                "attestation.mode = \"snp\" needs /dev/sev-guest: run inside an SEV-SNP guest"
            );
            tracing::info!("attestation: AMD SEV-SNP reports from /dev/sev-guest");
            Attester::Snp
        }
        #[cfg(feature = "csv")]
        "csv" => {
            anyhow::ensure!(
                Path::new("/dev/csv-guest").exists(),
                "attestation.mode = \"csv\" needs /dev/csv-guest: run inside a Hygon CSV guest"
            );
            tracing::info!("attestation: Hygon CSV reports from /dev/csv-guest");
            let file = &config.attestation.csv_hsk_cek_file;
            Attester::Csv {
                hsk_cek_file: (!file.is_empty()).then(|| file.into()),
            }
        }
        _ => Attester::Sim(Box::new(sim_platform(&config)?)),
    });

    let clients = Arc::new(client_registry(&config)?);

    let state = web::Data::new(AppState {
        attestation,
        clients,
        draining: Arc::new(AtomicBool::new(false)),
        operator_listener: Arc::new(std::sync::OnceLock::new()),
        dev: config.server.dev,
        client_limits: Arc::new(RateLimiter::new(
            config.limits.client_per_minute,
            config.limits.client_burst,
        )),
        service: service.clone(),
        max_body_bytes: config.server.max_body_bytes,
        admin_token: std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| crate::crypto::sm3(t.as_bytes())),
    });
    let listen: SocketAddr = config.listen_addr().map_err(anyhow::Error::msg)?;
    let draining = state.draining.clone();
    let operator_listener = state.operator_listener.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(request_context)
            .configure(routes)
    })
    .shutdown_signal(shutdown_signal(draining))
    .shutdown_timeout(30)
    .worker_max_blocking_threads(config.server.blocking_threads_per_worker);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let mut server = server
        .bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let service_addr = *server.addrs().first().context("no listening address")?;
    if let Some(operator) = config.operator_addr().map_err(anyhow::Error::msg)? {
        server = server
            .bind(operator)
            .with_context(|| format!("cannot listen on {operator} (operator)"))?;
        let bound = *server.addrs().last().context("no operator address")?;
        let _ = operator_listener.set(bound);
        tracing::info!(addr = %bound, "operator endpoints (/metrics, /admin/…) listening");
        // Before the service's line, which tells watchers that start-up is complete.
        println!("{OPERATOR_LISTENING_PREFIX}{bound}");
    }
    tracing::info!(addr = %service_addr, "listening");
    println!("{LISTENING_PREFIX}{service_addr}");
    std::io::stdout().flush().ok();
    // On SIGTERM/SIGINT: stop accepting, finish in-flight requests (answers then close
    // their connections), then stop the background threads and flush.
    server.run().await?;
    stop_rotation.store(true, Ordering::Relaxed);
    stop_maintenance.store(true, Ordering::Relaxed);
    if let Some(rotation) = rotation {
        let _ = rotation.join();
    }
    let _ = maintenance.join();
    service.vault().flush().context("final flush failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Resolves at SIGTERM or SIGINT, after marking the service as draining.
async fn shutdown_signal(draining: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    draining.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = name,
        "draining: finishing in-flight requests, then stopping"
    );
}

/// Writes the identity public key as PEM for clients that pin it (encryption keys rotate;
/// clients fetch them from `GET /v1/keys` and check their certificates against it).
fn publish_public_keys(dir: &Path, service: &Service) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = service.identity_public();
    let path = dir.join(IDENTITY_PEM);
    std::fs::write(&path, key.to_pem())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), kid = %key.kid(), "identity public key written");
    Ok(())
}

/// The simulated TEE: refused where a TEE device exists; its key persists beside the data
/// and its public half is written for verifiers to pin.
fn sim_platform(config: &Config) -> anyhow::Result<SimPlatform> {
    SimPlatform::check_no_tee_device().map_err(anyhow::Error::msg)?;
    let key = SimPlatform::load_or_create_key(&config.storage.data_dir.join(SIM_PLATFORM_KEY_FILE))
        .map_err(anyhow::Error::msg)?;
    let measurement = if config.attestation.sim_measurement.is_empty() {
        Measurement::FileDigest(
            std::env::current_exe().context("cannot locate the running executable")?,
        )
    } else {
        let mut m = [0u8; 32];
        hex::decode_to_slice(&config.attestation.sim_measurement, &mut m)
            .context("attestation.sim_measurement")?;
        Measurement::Fixed(m)
    };
    let platform = SimPlatform::with_measurement(key, measurement, config.server.dev);
    let path = config.keys.dir.join(SIM_PLATFORM_PEM);
    std::fs::create_dir_all(&config.keys.dir)
        .with_context(|| format!("cannot create {}", config.keys.dir.display()))?;
    std::fs::write(&path, platform.public().to_pem())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(
        platform_key = %path.display(),
        "SIMULATED attestation: evidence is signed by a local sim platform key, not by TEE \
         hardware; verifiers accept it only if their policy allows `sim`"
    );
    Ok(platform)
}

/// Issues and wipes encryption keys on time, checking every second until `stop`.
/// How often spent request ids past the replay window are forgotten.
const SPENT_RID_PRUNE_SECS: u64 = 60;

fn spawn_key_maintenance(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("key-maintenance".into())
        .spawn(move || {
            let mut seconds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) = service.maintain_keys(unix_now()) {
                    tracing::error!(%error, "encryption key maintenance failed");
                }
                if seconds % SPENT_RID_PRUNE_SECS == 0
                    && let Err(error) = service.prune_spent_rids(unix_now())
                {
                    tracing::error!(%error, "forgetting old request ids failed");
                }
                seconds += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
}

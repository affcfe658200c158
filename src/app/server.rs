//! Start-up and shutdown of `tee-risk serve`: open the encrypted database, generate the
//! in-memory SM2 keys, publish their public halves, serve HTTP until SIGTERM/SIGINT, then
//! flush.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::{App, HttpServer, web};

use super::AppError;
use super::config::Config;
use super::config::MasterKeySourceConfig;
use super::join::{self, Joined};
use super::secrets::{MasterKeyEnv, database_key_ids, open_vault, open_vault_with};
use super::tasks::{
    spawn_custody_upkeep, spawn_key_maintenance, spawn_periodic_tasks, spawn_rotation,
};
use crate::attest::join::ClusterSecrets;
use crate::attest::sim::{Measurement, SimPlatform};
use crate::attest::{Attester, Policy, TeeKind};
use crate::crypto::keyfile;
use crate::http::{AppState, request_context, routes};
use crate::obs::unix_now;
use crate::service::access::{ClientRegistry, DevClient};
use crate::service::cluster::ClusterPeer;
use crate::service::custody::{Gate, OpenError, Opener, Roster};
use crate::service::keyset::KeySet;
use crate::service::limits::RateLimiter;
use crate::service::{Service, Settings};
use crate::store::{KeyId, MasterKey, OpenMode, VaultError};

/// Bearer token for the operator endpoints (`/admin/…`); unset: they answer 404.
pub const ADMIN_TOKEN_ENV: &str = "TEE_RISK_ADMIN_TOKEN";
/// Printed on stdout once the operator listener is bound, followed by its address.
pub const OPERATOR_LISTENING_PREFIX: &str = "OPERATOR LISTENING ";
/// The line printed on stdout once the server listens (tests and scripts wait for it).
pub const LISTENING_PREFIX: &str = "tee-risk listening on http://";
pub use crate::protocol::IDENTITY_PEM;
/// The sim platform's public key as PEM, in the keys folder (sim mode).
pub const SIM_PLATFORM_PEM: &str = "sim-platform.pub.pem";
/// The sim platform's private key, beside the data (sim mode only).
pub const SIM_PLATFORM_KEY_FILE: &str = "sim-platform-key.hex";

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AppError + 'a {
    move |source| AppError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The clients file's registry; `None` in dev mode without one (the dev client is made
/// later, since making it writes its key). Refuses production without a clients file.
fn clients_from_file(config: &Config) -> Result<Option<ClientRegistry>, AppError> {
    let file = &config.access.clients_file;
    if !file.as_os_str().is_empty() {
        let registry = ClientRegistry::load(file)?;
        tracing::info!(clients = registry.len(), file = %file.display(), "clients registered");
        return Ok(Some(registry));
    }
    if !config.server.dev {
        return Err(AppError::NoClients);
    }
    Ok(None)
}

/// The development client (dev mode without a clients file); creates its key when missing.
fn dev_client_registry(config: &Config) -> Result<ClientRegistry, AppError> {
    let key_file = DevClient::key_file(&config.storage.data_dir);
    tracing::warn!(
        "DEVELOPMENT client `{}` may enrol, assess and erase; its key is {} (tee-risk client \
         uses it by default). Register real clients with access.clients_file.",
        DevClient::ID,
        key_file.display()
    );
    DevClient::registry(&config.storage.data_dir).map_err(AppError::DevClient)
}

/// Refuses a start whose attestation mode does not fit the machine, before anything is
/// written: a hardware mode without its device, sim mode where a TEE device exists.
fn check_attestation_device(config: &Config) -> Result<(), AppError> {
    let needed = match config.attestation.mode {
        TeeKind::Sim => {
            return match SimPlatform::tee_device_present() {
                Some(device) => Err(AppError::TeeDevicePresent(device)),
                None => Ok(()),
            };
        }
        TeeKind::Snp => "/dev/sev-guest",
        TeeKind::Csv => "/dev/csv-guest",
        // Quotes come through configfs-tsm, which must be there.
        TeeKind::Tdx => crate::attest::tsm::REPORT_DIR,
    };
    if Path::new(needed).exists() {
        Ok(())
    } else {
        Err(AppError::NoTeeDevice {
            mode: config.attestation.mode.as_str(),
            device: needed,
        })
    }
}

/// Where evidence comes from, for the configured TEE kind (its device was checked).
fn attester(config: &Config) -> Result<Attester, AppError> {
    Ok(match config.attestation.mode {
        TeeKind::Snp => {
            tracing::info!("attestation: AMD SEV-SNP reports from /dev/sev-guest");
            Attester::Snp
        }
        #[cfg(feature = "csv")]
        TeeKind::Csv => {
            tracing::info!("attestation: Hygon CSV reports from /dev/csv-guest");
            let file = &config.attestation.csv_hsk_cek_file;
            Attester::Csv {
                hsk_cek_file: (!file.is_empty()).then(|| file.into()),
            }
        }
        // Config validation refuses `csv` in a build without the feature.
        #[cfg(not(feature = "csv"))]
        TeeKind::Csv => {
            return Err(super::ConfigError::Invalid(
                "attestation.mode = \"csv\" needs a build with `--features csv`",
            )
            .into());
        }
        TeeKind::Tdx => {
            tracing::info!("attestation: Intel TDX quotes through configfs-tsm");
            Attester::Tdx
        }
        TeeKind::Sim => Attester::Sim(Box::new(sim_platform(config)?)),
    })
}

/// Binds a listener (before anything is written: a port in use refuses the start cleanly).
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    std::net::TcpListener::bind(addr).map_err(|source| AppError::Bind { addr, source })
}

/// Runs the service until SIGTERM or SIGINT.
///
/// Order: everything that can refuse the start runs before anything is written (config,
/// attestation device, clients file, custodians file, listeners), then the database opens
/// (the first write: a new database, a new dev key) — in custodian mode only once the
/// custodians unseal it — then the key files are written. A refused start leaves the data
/// and keys folders as they were.
pub async fn serve(
    config: Config,
    keys: MasterKeyEnv,
    accept_data_loss: bool,
) -> Result<(), AppError> {
    let data_dir = config.storage.data_dir.clone();
    let settings = config.service_settings()?;
    check_attestation_device(&config)?;
    if !crate::crypto::aead::constant_time_sm4() {
        tracing::warn!(
            "SM4 runs on the portable table-based code (no AES-NI here): slower, and its \
             S-box lookups are exposed to cache timing by whoever shares this CPU's caches"
        );
    }
    let clients_file = clients_from_file(&config)?;
    let roster = custodians(&config, &keys)?;
    let listener = bind(config.listen_addr()?)?;
    let operator_listener = config.operator_addr()?.map(bind).transpose()?;
    let cluster = join_cluster(&config)?;

    let now = unix_now();
    let mut secrets = match cluster.secrets {
        Some(secrets) => secrets,
        None => KeySet::bootstrap(
            settings.encryption_key_lifetime_secs,
            settings.encryption_key_grace_secs,
            now,
        )
        .map_err(crate::service::StartError::from)?,
    };
    let master_from_peer = secrets.master_key.take().map(MasterKey::from_secret);
    let previous_from_peer: Vec<MasterKey> = std::mem::take(&mut secrets.previous_keys)
        .into_iter()
        .map(MasterKey::from_secret)
        .collect();
    let key_set = Arc::new(KeySet::new(secrets, now).map_err(crate::service::StartError::from)?);
    let background = Arc::new(std::sync::Mutex::new(None));
    let gate = match roster {
        None => {
            // Off the async runtime: the PostgreSQL client blocks on a runtime of its own.
            let service = off_runtime(|| -> Result<_, AppError> {
                let vault = open_vault(
                    keys,
                    config.server.dev,
                    &config.storage,
                    OpenMode::Write,
                    accept_data_loss,
                )?;
                // The data folder holds the files beside the store (sim platform key, dev
                // files); with PostgreSQL nothing else has made it.
                std::fs::create_dir_all(&data_dir).map_err(io("create", &data_dir))?;
                Ok(Arc::new(Service::with_keys(
                    &settings,
                    vault,
                    key_set.clone(),
                    now,
                )?))
            })?;
            Gate::open(service)
        }
        Some(roster) => {
            std::fs::create_dir_all(&data_dir).map_err(io("create", &data_dir))?;
            let opener = AppOpener {
                storage: config.storage.clone(),
                database_url: keys.database_url,
                settings: settings.clone(),
                accept_data_loss,
                background: background.clone(),
            };
            // Off the async runtime: with a key from a peer it opens the database now.
            let gate = off_runtime(|| {
                Gate::custodians(
                    key_set.clone(),
                    roster,
                    Box::new(opener),
                    master_from_peer,
                    previous_from_peer,
                    now,
                )
            })
            .map_err(|e| AppError::Join(format!("cannot open with the cluster's key: {e}")))?;
            if !gate.is_sealed() {
                tracing::info!("master key received with the cluster's secrets: serving");
            }
            gate
        }
    };
    let gate = Arc::new(gate);
    let attestation = match cluster.attester {
        Some(attestation) => attestation,
        None => Arc::new(attester(&config)?),
    };
    let clients = Arc::new(match clients_file {
        Some(registry) => registry,
        None => dev_client_registry(&config)?,
    });
    publish_public_keys(&config.keys.dir, gate.identity_public())?;
    // With the key from the environment the database is open now: its background work
    // (the sweep of a rotation, the periodic tasks) starts last, as the listener does. In
    // custodian mode it starts when the custodians unseal it (`AppOpener::open`).
    if !gate.custody_mode()
        && let Ok(service) = gate.service()
    {
        *lock(&background) = Some(Background::start(&service, &data_dir)?);
    }
    let keys_stop = Arc::new(AtomicBool::new(false));
    let key_maintenance = spawn_key_maintenance(key_set, keys_stop.clone())
        .map_err(io("start the key maintenance thread for", &data_dir))?;
    let custody_upkeep = spawn_custody_upkeep(gate.clone(), keys_stop.clone())
        .map_err(io("start the custody thread for", &data_dir))?;
    let state = app_state(&config, &gate, attestation, cluster.policy, clients);
    // On SIGTERM/SIGINT: stop accepting, finish in-flight requests (answers then close
    // their connections), then stop the background threads and flush.
    run_http(&config, state, listener, operator_listener).await?;
    if let Some(background) = lock(&background).take() {
        background.stop();
    }
    keys_stop.store(true, Ordering::Relaxed);
    let _ = key_maintenance.join();
    let _ = custody_upkeep.join();
    if let Ok(service) = gate.service() {
        off_runtime(|| {
            service.vault().flush()?;
            service.vault().sync_high_water_mark()
        })?;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The custodians file in custodian mode (`None`: the key comes from the environment).
/// Refuses a key in the environment too: in this mode the host must never hold it.
fn custodians(config: &Config, keys: &MasterKeyEnv) -> Result<Option<Roster>, AppError> {
    if config.keys.source != MasterKeySourceConfig::Custodians {
        return Ok(None);
    }
    if keys.current.is_some() || keys.previous.is_some() {
        return Err(AppError::KeyInEnvironment);
    }
    let roster = Roster::load(&config.keys.custodians_file)?;
    tracing::info!(
        file = %config.keys.custodians_file.display(),
        threshold = roster.threshold(),
        "custodian mode: the master key is rebuilt from the custodians' shares"
    );
    Ok(Some(roster))
}

/// How a sealed service opens its database once the custodians have rebuilt the key.
struct AppOpener {
    storage: super::config::StorageConfig,
    database_url: Option<zeroize::Zeroizing<String>>,
    settings: Settings,
    accept_data_loss: bool,
    /// Where the opened service's background threads are kept, to stop them at shutdown.
    background: Arc<std::sync::Mutex<Option<Background>>>,
}

impl Opener for AppOpener {
    fn key_ids(&self) -> Result<Option<Vec<KeyId>>, OpenError> {
        off_runtime(|| database_key_ids(&self.storage, self.database_url.as_ref()))
            .map_err(|e| OpenError::Fault(e.to_string()))
    }

    fn open(
        &self,
        current: &MasterKey,
        previous: &[MasterKey],
        keys: Arc<KeySet>,
    ) -> Result<Arc<Service>, OpenError> {
        let fault = |e: &dyn std::fmt::Display| OpenError::Fault(e.to_string());
        // Off any async runtime: the PostgreSQL client blocks on a runtime of its own.
        let service = off_runtime(|| {
            let vault = open_vault_with(
                current,
                previous,
                &self.storage,
                self.database_url.as_ref(),
                OpenMode::Write,
                self.accept_data_loss,
            )
            .map_err(|e| match e {
                AppError::Vault(VaultError::Store(_)) | AppError::StoreOpen { .. } => {
                    OpenError::Fault(e.to_string())
                }
                other => OpenError::Refused(other.to_string()),
            })?;
            Service::with_keys(&self.settings, vault, keys, unix_now())
                .map(Arc::new)
                .map_err(|e| fault(&e))
        })?;
        self.resume(&service)?;
        Ok(service)
    }

    fn close(&self, service: &Service) {
        if let Some(background) = lock(&self.background).take() {
            background.stop();
        }
        let flushed = off_runtime(|| {
            service.vault().flush()?;
            service.vault().sync_high_water_mark()
        });
        if let Err(error) = flushed {
            tracing::error!(%error, "flushing before the database reopens under a new key");
        }
    }

    fn resume(&self, service: &Arc<Service>) -> Result<(), OpenError> {
        let background = Background::start(service, &self.storage.data_dir)
            .map_err(|e| OpenError::Fault(e.to_string()))?;
        *lock(&self.background) = Some(background);
        Ok(())
    }
}

/// What a cluster replica has before its database opens.
struct ClusterStart {
    /// The policy peers verify each other under (none outside a cluster).
    policy: Option<Policy>,
    /// The attester made early to join (sim mode writes the sim platform key first).
    attester: Option<Arc<Attester>>,
    /// The cluster's secrets from a peer; none for a single node or a new cluster.
    secrets: Option<ClusterSecrets>,
}

/// The cluster's secrets before the database opens: a replica that cannot join does not
/// serve.
fn join_cluster(config: &Config) -> Result<ClusterStart, AppError> {
    if !config.cluster.enabled() {
        return Ok(ClusterStart {
            policy: None,
            attester: None,
            secrets: None,
        });
    }
    let policy = Policy::load(&config.cluster.policy)?;
    let attestation = Arc::new(attester(config)?);
    let secrets = if config.cluster.peers.is_empty() {
        None
    } else {
        match off_runtime(|| join::join(&config.cluster, &policy, &attestation))? {
            Joined::Peer(peer, secrets) => {
                check_schedule(config, &secrets);
                tracing::info!(%peer, "cluster secrets received from a peer");
                Some(secrets)
            }
            Joined::Bootstrap => {
                tracing::warn!(
                    "no peer answered: bootstrapping a NEW cluster identity (clients must \
                     re-attest and re-pin it)"
                );
                None
            }
        }
    };
    Ok(ClusterStart {
        policy: Some(policy),
        attester: Some(attestation),
        secrets,
    })
}

/// The background threads: the re-encryption sweep (while one is pending) and the
/// periodic tasks.
struct Background {
    stop: Arc<AtomicBool>,
    rotation: Option<std::thread::JoinHandle<()>>,
    periodic: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(service: &Arc<Service>, data_dir: &Path) -> Result<Self, AppError> {
        let stop = Arc::new(AtomicBool::new(false));
        let rotation = if service.vault().rotation_pending() {
            Some(
                spawn_rotation(service.clone(), stop.clone())
                    .map_err(io("start the rotation thread for", data_dir))?,
            )
        } else {
            None
        };
        let periodic = spawn_periodic_tasks(service, &stop)
            .map_err(io("start the periodic threads for", data_dir))?;
        Ok(Self {
            stop,
            rotation,
            periodic,
        })
    }

    /// Asks every thread to stop and waits for them.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.rotation.into_iter().chain(self.periodic) {
            let _ = thread.join();
        }
    }
}

/// What every handler shares.
fn app_state(
    config: &Config,
    gate: &Arc<Gate>,
    attestation: Arc<Attester>,
    cluster_policy: Option<Policy>,
    clients: Arc<ClientRegistry>,
) -> web::Data<AppState> {
    web::Data::new(AppState {
        attestation,
        cluster: cluster_policy.map(|policy| Arc::new(ClusterPeer::new(policy))),
        clients,
        draining: Arc::new(AtomicBool::new(false)),
        operator_listener: Arc::new(std::sync::OnceLock::new()),
        dev: config.server.dev,
        client_limits: Arc::new(RateLimiter::new(
            config.limits.client_per_minute,
            config.limits.client_burst,
        )),
        gate: gate.clone(),
        max_body_bytes: config.server.max_body_bytes,
        body_deadline: std::time::Duration::from_secs(config.server.body_deadline_secs),
        bodies_in_flight: Arc::new(tokio::sync::Semaphore::new(
            config.server.bodies_in_flight_bytes,
        )),
        admin_token: std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| crate::crypto::sm3(t.as_bytes())),
    })
}

/// Serves HTTP on the service's listener (and the operator's, if any) until SIGTERM or
/// SIGINT, then drains: stops accepting and finishes the requests in flight.
async fn run_http(
    config: &Config,
    state: web::Data<AppState>,
    listener: std::net::TcpListener,
    operator_listener: Option<std::net::TcpListener>,
) -> Result<(), AppError> {
    let draining = state.draining.clone();
    let stop_signals = StopSignals::install()?;
    let operator_addr = state.operator_listener.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(request_context)
            .configure(routes)
    })
    .shutdown_signal(stop_signals.wait(draining))
    .shutdown_timeout(30)
    .worker_max_blocking_threads(config.server.blocking_threads_per_worker);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let service_addr = listener.local_addr().map_err(AppError::Serve)?;
    let mut server = server.listen(listener).map_err(|source| AppError::Bind {
        addr: service_addr,
        source,
    })?;
    if let Some(operator) = operator_listener {
        let bound = operator.local_addr().map_err(AppError::Serve)?;
        server = server.listen(operator).map_err(|source| AppError::Bind {
            addr: bound,
            source,
        })?;
        let _ = operator_addr.set(bound);
        tracing::info!(addr = %bound, "operator endpoints (/metrics, /admin/…) listening");
        // Before the service's line, which tells watchers that start-up is complete.
        println!("{OPERATOR_LISTENING_PREFIX}{bound}");
    }
    tracing::info!(addr = %service_addr, "listening");
    println!("{LISTENING_PREFIX}{service_addr}");
    std::io::stdout().flush().ok();
    server.run().await.map_err(AppError::Serve)
}

/// Runs blocking storage work (a start, the last flush) on a thread of its own: the
/// synchronous PostgreSQL client drives a runtime of its own, which cannot run inside the
/// server's.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The cluster's key schedule wins over this replica's `[keys]`: every replica must publish
/// the same keys at the same time. A difference is worth a warning, not a refusal.
fn check_schedule(config: &Config, secrets: &ClusterSecrets) {
    let schedule = secrets.schedule;
    if (schedule.lifetime, schedule.grace)
        != (
            config.keys.encryption_key_lifetime_secs,
            config.keys.encryption_key_grace_secs,
        )
    {
        tracing::warn!(
            cluster_lifetime = schedule.lifetime,
            cluster_grace = schedule.grace,
            "[keys] differs from the cluster's key schedule; the cluster's applies"
        );
    }
}

/// SIGTERM and SIGINT, caught from before the service says it listens: a signal that
/// arrives between that line and the server's first poll must drain, not kill.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self, AppError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(AppError::Serve)?,
            int: signal(SignalKind::interrupt()).map_err(AppError::Serve)?,
        })
    }

    /// Resolves at SIGTERM or SIGINT, after marking the service as draining.
    async fn wait(mut self, draining: Arc<AtomicBool>) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        draining.store(true, Ordering::SeqCst);
        tracing::info!(
            signal = name,
            "draining: finishing in-flight requests, then stopping"
        );
    }
}

/// Writes the identity public key as PEM for clients that pin it (encryption keys rotate;
/// clients fetch them from `GET /v1/keys` and check their certificates against it).
fn publish_public_keys(dir: &Path, key: &crate::crypto::sm2::PublicKey) -> Result<(), AppError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(IDENTITY_PEM);
    write_public_file(&path, &key.to_pem())?;
    tracing::info!(path = %path.display(), kid = %key.kid(), "identity public key written");
    Ok(())
}

/// Writes a public file a verifier may be reading (a cluster policy pins a replica's sim
/// platform key): unchanged content is left alone, new content replaces the file at once
/// (write beside it, then rename), so a reader never sees it half-written.
fn write_public_file(path: &Path, text: &str) -> Result<(), AppError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).map_err(io("write", &partial))?;
    std::fs::rename(&partial, path).map_err(io("rename into place", path))
}

/// The simulated TEE: refused where a TEE device exists; its key persists beside the data
/// and its public half is written for verifiers to pin.
fn sim_platform(config: &Config) -> Result<SimPlatform, AppError> {
    if let Some(device) = SimPlatform::tee_device_present() {
        return Err(AppError::TeeDevicePresent(device));
    }
    let key_file = if config
        .attestation
        .sim_platform_key_file
        .as_os_str()
        .is_empty()
    {
        config.storage.data_dir.join(SIM_PLATFORM_KEY_FILE)
    } else {
        config.attestation.sim_platform_key_file.clone()
    };
    if let Some(folder) = key_file.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(io("create", folder))?;
    }
    let key = keyfile::load_or_create_sm2_key(&key_file)?;
    let measurement = if config.attestation.sim_measurement.is_empty() {
        let exe = std::env::current_exe().map_err(io("locate", Path::new("the executable")))?;
        Measurement::FileDigest(exe)
    } else {
        // Validated as 64 hex digits when the config was loaded.
        let mut m = [0u8; 32];
        hex::decode_to_slice(&config.attestation.sim_measurement, &mut m)
            .expect("validated by Config");
        Measurement::Fixed(m)
    };
    let platform = SimPlatform::with_measurement(key, measurement, config.server.dev);
    let path = config.keys.dir.join(SIM_PLATFORM_PEM);
    std::fs::create_dir_all(&config.keys.dir).map_err(io("create", &config.keys.dir))?;
    write_public_file(&path, &platform.public().to_pem())?;
    tracing::warn!(
        platform_key = %path.display(),
        "SIMULATED attestation: evidence is signed by a local sim platform key, not by TEE \
         hardware; verifiers accept it only if their policy allows `sim`"
    );
    Ok(platform)
}

//! Start-up and shutdown of `tee-risk serve`: resolve the master key, open the encrypted
//! database, generate the in-memory SM2 keys, publish their public halves, serve HTTP until
//! SIGTERM/SIGINT, then flush.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::api::{AppState, routes};
use crate::config::Config;
use crate::service::Service;
use crate::store::{MasterKey, SledStore, Store, Vault};

/// Name of the environment variable holding the DB master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "DB_MASTER_KEY";
/// File beside the data holding the generated development master key.
pub const DEV_KEY_FILE: &str = "dev-master-key.hex";
/// The line printed on stdout once the server listens (tests and scripts wait for it).
pub const LISTENING_PREFIX: &str = "tee-risk listening on http://";

pub const IDENTITY_PEM: &str = "identity.pub.pem";
pub const ENCRYPTION_PEM: &str = "encryption.pub.pem";

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

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
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

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(
    config: Config,
    master_key_env: Option<Zeroizing<String>>,
) -> anyhow::Result<()> {
    let data_dir = config.storage.data_dir.clone();
    let (master, source) = resolve_master_key(master_key_env, config.server.dev, &data_dir)?;
    if let MasterKeySource::DevFile = source {
        warn_dev_key(&data_dir);
    }
    let db_path = data_dir.join("db");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&db_path)?);
    let vault = Vault::open(store, &master).context("cannot open the database")?;
    drop(master);
    tracing::info!(path = %db_path.display(), master_key_id = %vault.key_id(), "database open");

    let service =
        Arc::new(Service::new(&config, vault).context("cannot generate the service keys")?);
    publish_public_keys(&config.keys.dir, &service)?;

    let state = web::Data::new(AppState {
        service: service.clone(),
        max_body_bytes: config.server.max_body_bytes,
    });
    let listen: SocketAddr = config.listen_addr().map_err(anyhow::Error::msg)?;
    let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .shutdown_timeout(30)
        .worker_max_blocking_threads(config.server.blocking_threads_per_worker);
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    let server = server
        .bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    for addr in server.addrs() {
        tracing::info!(%addr, "listening");
        println!("{LISTENING_PREFIX}{addr}");
    }
    std::io::stdout().flush().ok();
    // actix-web stops on SIGTERM/SIGINT after in-flight requests finish.
    server.run().await?;
    service.vault().flush().context("final flush failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Writes both public keys as PEM for clients that pin them.
fn publish_public_keys(dir: &Path, service: &Service) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, key) in [
        (IDENTITY_PEM, service.identity_public()),
        (ENCRYPTION_PEM, service.encryption_public()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, key.to_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(path = %path.display(), kid = %key.kid(), "public key written");
    }
    Ok(())
}

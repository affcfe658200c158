//! Where the secrets a start needs come from: the DB master keys (env `DB_MASTER_KEY`,
//! `DB_MASTER_KEY_PREVIOUS`, or in dev mode a generated key file beside the data) and
//! opening the vault with them. The texts are wiped when dropped and never printed.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::AppError;
use crate::crypto::keyfile::{read_secret_text, write_private_file};
use crate::store::{MasterKey, OpenMode, RecoveringStore, SledStore, Store, Vault};

/// Name of the environment variable holding the DB master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "DB_MASTER_KEY";
/// Previous (decrypt-only) master keys during a rotation: comma-separated, 64 hex each.
pub const PREVIOUS_KEYS_ENV: &str = "DB_MASTER_KEY_PREVIOUS";
/// File beside the data holding the generated development master key.
pub const DEV_KEY_FILE: &str = "dev-master-key.hex";

/// Where the master key came from.
pub enum MasterKeySource {
    /// `DB_MASTER_KEY`.
    Env,
    /// The development key file beside the data.
    DevFile,
}

/// The master keys from the environment (the texts are wiped when dropped).
pub struct MasterKeyEnv {
    /// `DB_MASTER_KEY`, if set.
    pub current: Option<Zeroizing<String>>,
    /// `DB_MASTER_KEY_PREVIOUS`, if set.
    pub previous: Option<Zeroizing<String>>,
}

impl MasterKeyEnv {
    /// Reads both variables of this process.
    pub fn from_process() -> Self {
        let read = |name| std::env::var(name).ok().map(Zeroizing::new);
        Self {
            current: read(MASTER_KEY_ENV),
            previous: read(PREVIOUS_KEYS_ENV),
        }
    }
}

/// The master key from `env_value` (the content of DB_MASTER_KEY, if set) or, in dev mode
/// only, from (or newly into) the dev key file under `data_dir`.
pub fn resolve_master_key(
    env_value: Option<Zeroizing<String>>,
    dev: bool,
    data_dir: &Path,
) -> Result<(MasterKey, MasterKeySource), AppError> {
    let bad = |origin: String| {
        move |reason: &str| AppError::BadMasterKey {
            origin,
            reason: reason.to_owned(),
        }
    };
    if let Some(text) = env_value {
        let key = MasterKey::from_hex(&text).map_err(bad(MASTER_KEY_ENV.into()))?;
        return Ok((key, MasterKeySource::Env));
    }
    if !dev {
        return Err(AppError::NoMasterKey);
    }
    std::fs::create_dir_all(data_dir).map_err(|source| AppError::Io {
        action: "create",
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(DEV_KEY_FILE);
    if path.exists() {
        refuse_open_permissions(&path)?;
        let text = read_secret_text(&path)?;
        let key = MasterKey::from_hex(&text).map_err(bad(path.display().to_string()))?;
        return Ok((key, MasterKeySource::DevFile));
    }
    // A database without a dev key beside it was sealed with a real master key: generating
    // a dev key would only leave a stray file behind a refused start.
    if store_path(data_dir).exists() {
        return Err(AppError::NotADevFolder(data_dir.to_owned()));
    }
    let key = MasterKey::generate().map_err(|e| AppError::BadMasterKey {
        origin: "the generated development key".into(),
        reason: e.to_string(),
    })?;
    write_private_file(&path, key.to_hex_zeroizing().as_bytes())?;
    Ok((key, MasterKeySource::DevFile))
}

/// Refuses a secret file that others may read or write, as OpenSSH does for private keys:
/// whoever could read it can read every record.
fn refuse_open_permissions(path: &Path) -> Result<(), AppError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| AppError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AppError::SecretFileOpen {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    Ok(())
}

/// Parses `DB_MASTER_KEY_PREVIOUS`.
pub fn previous_keys(text: Option<&Zeroizing<String>>) -> Result<Vec<MasterKey>, AppError> {
    match text {
        None => Ok(Vec::new()),
        Some(text) => MasterKey::parse_list(text).map_err(|e| AppError::BadMasterKey {
            origin: PREVIOUS_KEYS_ENV.into(),
            reason: e.to_string(),
        }),
    }
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

/// The store folder under a data folder.
pub fn store_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("db")
}

/// Opens the database under `data_dir` with the keys from the environment (or the dev key).
/// Opened to write, it keeps the high-water mark beside the store (`store::mark`): a store
/// behind it is refused unless `accept_loss`.
pub fn open_vault(
    env: MasterKeyEnv,
    dev: bool,
    data_dir: &Path,
    mode: OpenMode,
    accept_loss: bool,
) -> Result<Vault, AppError> {
    let (master, source) = resolve_master_key(env.current, dev, data_dir)?;
    if let MasterKeySource::DevFile = source {
        warn_dev_key(data_dir);
    }
    let previous = previous_keys(env.previous.as_ref())?;
    let db_path = store_path(data_dir);
    // sled fails every operation after an I/O error (a full disk) until it is reopened:
    // the recovering wrapper reopens it once the fault clears.
    let engine_path = db_path.clone();
    let store: Arc<dyn Store> = Arc::new(
        RecoveringStore::new(move || {
            SledStore::open(&engine_path).map(|store| Arc::new(store) as Arc<dyn Store>)
        })
        .map_err(|source| AppError::StoreOpen { source })?,
    );
    let mut vault = Vault::open_keyring(store, &master, &previous, mode)?;
    if mode == OpenMode::Write {
        vault.keep_high_water_mark(data_dir, accept_loss)?;
    }
    tracing::info!(
        path = %db_path.display(),
        master_key_id = %vault.key_id(),
        previous_key_ids = ?previous.iter().map(|k| k.key_id().to_string()).collect::<Vec<_>>(),
        rotation_pending = vault.rotation_pending(),
        "database open"
    );
    Ok(vault)
}

//! Where the secrets a start needs come from: the DB master keys (env `DB_MASTER_KEY`,
//! `DB_MASTER_KEY_PREVIOUS`, or in dev mode a generated key file beside the data), the
//! PostgreSQL URL (env `TEE_RISK_DATABASE_URL`, which may hold a password), and opening the
//! store and the vault with them. The texts are wiped when dropped and never printed.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::AppError;
use super::config::{StorageBackend, StorageConfig};
use crate::crypto::keyfile::{read_secret_text, write_private_file};
use crate::store::{MasterKey, OpenMode, RecoveringStore, SledStore, Store, Vault};

/// Name of the environment variable holding the DB master key (64 hex characters).
pub const MASTER_KEY_ENV: &str = "DB_MASTER_KEY";
/// Previous (decrypt-only) master keys during a rotation: comma-separated, 64 hex each.
pub const PREVIOUS_KEYS_ENV: &str = "DB_MASTER_KEY_PREVIOUS";
/// The PostgreSQL URL when `[storage] backend = "postgres"`.
pub const DATABASE_URL_ENV: &str = "TEE_RISK_DATABASE_URL";
/// File beside the data holding the generated development master key.
pub const DEV_KEY_FILE: &str = "dev-master-key.hex";

/// Where the master key came from.
pub enum MasterKeySource {
    /// `DB_MASTER_KEY`.
    Env,
    /// The development key file beside the data.
    DevFile,
}

/// The secrets from the environment (the texts are wiped when dropped).
pub struct MasterKeyEnv {
    /// `DB_MASTER_KEY`, if set.
    pub current: Option<Zeroizing<String>>,
    /// `DB_MASTER_KEY_PREVIOUS`, if set.
    pub previous: Option<Zeroizing<String>>,
    /// `TEE_RISK_DATABASE_URL`, if set.
    pub database_url: Option<Zeroizing<String>>,
}

impl MasterKeyEnv {
    /// Reads the variables of this process.
    pub fn from_process() -> Self {
        let read = |name| std::env::var(name).ok().map(Zeroizing::new);
        Self {
            current: read(MASTER_KEY_ENV),
            previous: read(PREVIOUS_KEYS_ENV),
            database_url: read(DATABASE_URL_ENV),
        }
    }
}

/// Opens the configured store: sled under the data folder (reopened by itself after a
/// fault), or PostgreSQL at `TEE_RISK_DATABASE_URL` (its pool reconnects by itself).
pub fn open_store(
    storage: &StorageConfig,
    database_url: Option<&Zeroizing<String>>,
) -> Result<Arc<dyn Store>, AppError> {
    match storage.backend {
        StorageBackend::Sled => {
            // sled fails every operation after an I/O error (a full disk) until it is
            // reopened: the recovering wrapper reopens it once the fault clears.
            let engine_path = store_path(&storage.data_dir);
            Ok(Arc::new(
                RecoveringStore::new(move || {
                    SledStore::open(&engine_path).map(|store| Arc::new(store) as Arc<dyn Store>)
                })
                .map_err(|source| AppError::StoreOpen { source })?,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        StorageBackend::Postgres => {
            let _ = database_url;
            Err(AppError::Config(crate::app::ConfigError::Invalid(
                "storage.backend = \"postgres\" needs a build with `--features postgres`",
            )))
        }
        #[cfg(feature = "postgres")]
        StorageBackend::Postgres => {
            use crate::store::{PostgresOptions, PostgresStore};
            let url = database_url.ok_or(AppError::NoDatabaseUrl)?;
            let store = PostgresStore::open(&PostgresOptions {
                url: url.clone(),
                pool_size: storage.pool_size,
                timeout: std::time::Duration::from_secs(storage.timeout_secs),
                ca_file: storage.postgres_ca(),
            })
            .map_err(|source| AppError::StoreOpen { source })?;
            Ok(Arc::new(store))
        }
    }
}

/// The vault of a stopped service, to inspect: a sled store is opened as a copy (see
/// [`SledStore::open_copy`]), so nothing the inspection does (sled's recovery included)
/// writes to it; PostgreSQL as it is (its recovery is its own).
pub fn open_vault_copy(
    env: MasterKeyEnv,
    dev: bool,
    storage: &StorageConfig,
) -> Result<Vault, AppError> {
    if storage.backend != StorageBackend::Sled {
        return open_vault(env, dev, storage, OpenMode::Inspect, false);
    }
    let (master, _) = resolve_master_key(env.current, dev, &storage.data_dir)?;
    let previous = previous_keys(env.previous.as_ref())?;
    let copy: Arc<dyn Store> = Arc::new(
        SledStore::open_copy(&store_path(&storage.data_dir))
            .map_err(|source| AppError::StoreOpen { source })?,
    );
    Ok(Vault::open_keyring(
        copy,
        &master,
        &previous,
        OpenMode::Inspect,
    )?)
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

/// Opens the configured database with the keys from the environment (or the dev key).
pub fn open_vault(
    env: MasterKeyEnv,
    dev: bool,
    storage: &StorageConfig,
    mode: OpenMode,
    accept_loss: bool,
) -> Result<Vault, AppError> {
    let (master, source) = resolve_master_key(env.current, dev, &storage.data_dir)?;
    if let MasterKeySource::DevFile = source {
        warn_dev_key(&storage.data_dir);
    }
    let previous = previous_keys(env.previous.as_ref())?;
    open_vault_with(
        &master,
        &previous,
        storage,
        env.database_url.as_ref(),
        mode,
        accept_loss,
    )
}

/// Opens the configured database with `master` (and decrypt-only `previous` keys), from
/// the environment or rebuilt by custodians. Opened to write on sled, it keeps the
/// high-water mark beside the store (`store::mark`): a store behind it is refused unless
/// `accept_loss`. (PostgreSQL keeps its own WAL and replicas: a file beside one replica
/// would not describe the shared database.)
pub fn open_vault_with(
    master: &MasterKey,
    previous: &[MasterKey],
    storage: &StorageConfig,
    database_url: Option<&Zeroizing<String>>,
    mode: OpenMode,
    accept_loss: bool,
) -> Result<Vault, AppError> {
    let data_dir = &storage.data_dir;
    if mode == OpenMode::Write && storage.backend == StorageBackend::Sled && !accept_loss {
        // Checked on a copy first: a store that is refused stays byte for byte as found
        // (sled's recovery would rewrite a damaged log as it opens it).
        let copy: Arc<dyn Store> = Arc::new(
            SledStore::open_copy(&store_path(data_dir))
                .map_err(|source| AppError::StoreOpen { source })?,
        );
        let new_store = copy
            .last(crate::store::Table::Meta)
            .map_err(|source| AppError::StoreOpen { source })?
            .is_none();
        let check = match new_store {
            true => None,
            false => Some(
                Vault::open_keyring(copy, master, previous, OpenMode::Inspect)?
                    .check_high_water_mark(data_dir)?,
            ),
        };
        if let Some(check) = check
            && let Some(detail) = check.behind
        {
            return Err(crate::store::VaultError::BehindHighWaterMark {
                detail,
                mark_commits: check.mark.commits,
                store_commits: check.store_commits,
            }
            .into());
        }
    }
    let store = open_store(storage, database_url)?;
    let mut vault = Vault::open_keyring(store, master, previous, mode)?;
    if mode == OpenMode::Write && storage.backend == StorageBackend::Sled {
        vault.keep_high_water_mark(data_dir, accept_loss)?;
    }
    let place = match storage.backend {
        StorageBackend::Sled => store_path(data_dir).display().to_string(),
        StorageBackend::Postgres => format!("postgres ({DATABASE_URL_ENV})"),
    };
    tracing::info!(
        store = %place,
        master_key_id = %vault.key_id(),
        previous_key_ids = ?previous.iter().map(|k| k.key_id().to_string()).collect::<Vec<_>>(),
        rotation_pending = vault.rotation_pending(),
        "database open"
    );
    Ok(vault)
}

/// The key ids of the configured database (`None`: empty), read without a key: on sled
/// from a copy (nothing written, the lock not taken), on PostgreSQL directly.
pub fn database_key_ids(
    storage: &StorageConfig,
    database_url: Option<&Zeroizing<String>>,
) -> Result<Option<Vec<crate::store::KeyId>>, AppError> {
    let store: Arc<dyn Store> = match storage.backend {
        StorageBackend::Sled => {
            if !store_path(&storage.data_dir).exists() {
                return Ok(None);
            }
            Arc::new(
                SledStore::open_copy(&store_path(&storage.data_dir))
                    .map_err(|source| AppError::StoreOpen { source })?,
            )
        }
        StorageBackend::Postgres => open_store(storage, database_url)?,
    };
    Ok(Vault::key_ids_of(&*store)?)
}

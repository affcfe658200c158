//! The encrypted database the service uses: every value sealed under its table's key, user
//! ids replaced by blind indexes, and a keyring of master keys: the current one seals, previous
//! ones open what rotation has not moved yet (`rotation.rs`). Opening checks the key registry
//! and fails closed, with a message that tells the operator what to do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::audit;
use super::group_commit::GroupCommit;
use super::keys::{KeyId, Keyring, MasterKey, SALT_LEN, TableKeys};
use super::record::{self, RecordError};
use super::registry::{KeyState, Registry, Rotation};
use super::{Store, StoreError, Table};
use crate::crypto::random_array;
use crate::time::unix_now;

const META_SALT: &[u8] = b"salt";
const META_REGISTRY: &[u8] = b"registry";
/// The single canary of databases created before the key registry.
const META_LEGACY_CANARY: &[u8] = b"canary";
const CANARY_PREFIX: &str = "canary/";
/// `idxmap/` ‖ old blind index → new blind index, while a rotation re-indexes users.
pub(super) const INDEX_MAP_PREFIX: &[u8] = b"idxmap/";
const CANARY_PLAINTEXT: &[u8] = b"tee-risk canary v1";

/// A user's blind index (HMAC-SM3 of the user id).
pub type UserIndex = [u8; 32];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error(
        "DB_MASTER_KEY does not match this database: the database was sealed with master key id \
         {database}, but the key supplied has id {supplied}. Start with the master key this \
         database was created with (key ids are printed at start-up), or, to rotate, set \
         DB_MASTER_KEY to the new key and DB_MASTER_KEY_PREVIOUS to the current one (id \
         {database})."
    )]
    WrongMasterKey { database: KeyId, supplied: KeyId },
    #[error(
        "DB_MASTER_KEY (id {supplied}) is an older key of this database, replaced by key \
         {active}: set DB_MASTER_KEY to key {active} (and keep {supplied} in \
         DB_MASTER_KEY_PREVIOUS until `tee-risk db status` shows no record under it)."
    )]
    ReplacedKey { supplied: KeyId, active: KeyId },
    #[error(
        "master key {0} was retired from this database after a verified rotation and is \
         refused: remove it from DB_MASTER_KEY and DB_MASTER_KEY_PREVIOUS."
    )]
    RetiredKey(KeyId),
    #[error(
        "DB_MASTER_KEY_PREVIOUS holds key {0}, which this database has never used: remove it \
         (check which keys the database knows with `tee-risk db status`)."
    )]
    UnknownPreviousKey(KeyId),
    #[error(
        "DB_MASTER_KEY_PREVIOUS is set but the database is new: start a new database with \
         DB_MASTER_KEY alone."
    )]
    PreviousKeyOnNewDatabase,
    #[error(
        "the canary of master key {0} failed to decrypt: the database or its meta table is \
         corrupt or was tampered with. Restore it from a backup."
    )]
    CanaryFailed(KeyId),
    #[error(
        "{count} records of table {table} are sealed under master key {key}, which was retired: \
         the database was changed after the retirement or restored from an older backup. \
         Restore a backup taken after the retirement."
    )]
    RecordsUnderRetiredKey {
        table: &'static str,
        key: KeyId,
        count: u64,
    },
    #[error(
        "{count} records of table {table} are sealed under master key {key}, which this \
         database never registered: they were not written by this database. Restore it from a \
         backup."
    )]
    RecordsUnderUnknownKey {
        table: &'static str,
        key: KeyId,
        count: u64,
    },
    #[error(
        "{count} records of table {table} are still sealed under master key {key}, which was not \
         supplied: add that key to DB_MASTER_KEY_PREVIOUS until rotation has moved them (see \
         `tee-risk db status`)."
    )]
    RecordsUnderMissingKey {
        table: &'static str,
        key: KeyId,
        count: u64,
    },
    #[error("the database is inconsistent: {0}. Restore it from a backup.")]
    Corrupt(String),
    #[error("{0}")]
    Refused(String),
    #[error("user already has the maximum of {0} templates")]
    TemplateLimit(usize),
    #[error("record {table}: {source}")]
    Record {
        table: &'static str,
        source: RecordError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How [`Vault::open_keyring`] may change the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Serving or an operator command that writes: registers a new current key (starting a
    /// rotation) and upgrades a database from before the registry.
    Write,
    /// `db status` and friends: changes nothing, refuses what would need a change.
    Inspect,
}

/// A user's enrolled templates (unit vectors), as stored. Wiped on drop.
#[derive(Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(super) struct UserRecord {
    /// Kept (sealed) so that a key rotation can compute the user's new blind index. Empty
    /// in records written before rotation existed.
    #[serde(default)]
    pub(super) user_id: String,
    pub(super) templates: Vec<StoredTemplate>,
    /// SM3 (hex) of the devices seen with this user, most recent first: enrolment and
    /// allowed assessments (for the new-device signal). Absent in older records.
    #[serde(default)]
    pub(super) devices: Vec<String>,
}

/// What the vault holds about an enrolled user: templates (unit vectors) and known devices.
#[derive(Default)]
pub struct Enrolment {
    pub templates: Vec<Zeroizing<Vec<f32>>>,
    /// SM3 (hex) of known device ids, most recent first.
    pub devices: Vec<String>,
}

impl UserRecord {
    /// Moves the templates out (the record is wiped on drop; the vectors in `Zeroizing`).
    fn take_templates(&mut self) -> Vec<Zeroizing<Vec<f32>>> {
        self.templates
            .iter_mut()
            .map(|t| Zeroizing::new(std::mem::take(&mut t.features)))
            .collect()
    }

    fn take_enrolment(&mut self) -> Enrolment {
        Enrolment {
            templates: self.take_templates(),
            devices: std::mem::take(&mut self.devices),
        }
    }
}

/// Puts `device` first in a most-recent-first list of at most `max`.
fn remember(devices: &mut Vec<String>, device: &str, max: usize) {
    devices.retain(|d| d != device);
    devices.insert(0, device.to_owned());
    devices.truncate(max);
}

#[derive(Serialize, Deserialize, Zeroize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredTemplate {
    #[serde(with = "super::packed")]
    features: Vec<f32>,
    enrolled_at: i64,
}

/// An accepted probe kept for drift checks. Wiped on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryRecord {
    #[serde(with = "super::packed")]
    features: Vec<f32>,
    at: i64,
    rid: String,
}

/// What an assessment leaves in `risk_logs`: the result and the re-encrypted probe.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RiskLogEntry {
    pub rid: String,
    pub at: i64,
    /// Hex of the user's blind index (never the user id). Rotation rewrites it to the new
    /// index for enrolled users; for ids that never enrolled it keeps the old one.
    pub user: String,
    pub decision: String,
    pub score: f64,
    pub reasons: Vec<String>,
    pub model: String,
    #[serde(with = "super::packed")]
    pub features: Vec<f32>,
    pub liveness: Option<f32>,
    pub device_id: Option<String>,
}

impl Drop for RiskLogEntry {
    fn drop(&mut self) {
        self.features.zeroize();
        self.device_id.zeroize();
    }
}

/// Records per table, after decrypting every one of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    pub user_data: usize,
    pub feature_history: usize,
    pub risk_logs: usize,
}

/// Whether `key` is a feature-history key of the user at `index` (index ‖ 8-byte sequence).
fn is_history_key_of(key: &[u8], index: &[u8]) -> bool {
    key.len() == index.len() + 8 && key.starts_with(index)
}

/// What [`Vault::erase_user`] removed or scrubbed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub templates: usize,
    pub history: usize,
    /// Risk log entries kept as decisions only: user index, features, liveness and device
    /// removed; rid, time, decision, score, reasons and model stay for the audit trail.
    pub risk_logs_scrubbed: usize,
}

/// What an erased user's risk log entries name instead of a blind index.
pub const ERASED_USER: &str = "erased";

/// A user as the vault looks them up: the blind index under every key of the keyring,
/// current first (during a rotation a record may still sit under an old index).
pub struct UserRef {
    indexes: Vec<UserIndex>,
}

impl UserRef {
    /// The index new records are written under.
    pub fn current(&self) -> &UserIndex {
        &self.indexes[0]
    }
}

pub struct Vault {
    pub(super) store: Arc<dyn Store>,
    pub(super) keyring: Keyring,
    pub(super) registry: Mutex<Registry>,
    group_commit: GroupCommit,
}

fn canary_key(id: KeyId) -> Vec<u8> {
    format!("{CANARY_PREFIX}{id}").into_bytes()
}

impl Vault {
    /// Opens (or initialises, when empty) the database with one master key and no previous
    /// ones.
    pub fn open(store: Arc<dyn Store>, master: &MasterKey) -> Result<Self, VaultError> {
        Self::open_keyring(store, master, &[], OpenMode::Write)
    }

    /// Opens the database with the current master key and previous (decrypt-only) ones, and
    /// checks them against the key registry, failing closed:
    /// - a current key the database does not know is accepted only when a previous key is
    ///   the registered active key: that starts a rotation to it (in [`OpenMode::Write`]);
    /// - a retired key, an unregistered previous key, or a failing canary is refused;
    /// - so is any record sealed under a key that is retired, unknown, or not supplied.
    pub fn open_keyring(
        store: Arc<dyn Store>,
        current: &MasterKey,
        previous: &[MasterKey],
        mode: OpenMode,
    ) -> Result<Self, VaultError> {
        let now = unix_now();
        let Some(salt) = store.get(Table::Meta, META_SALT)? else {
            if !previous.is_empty() {
                return Err(VaultError::PreviousKeyOnNewDatabase);
            }
            if mode == OpenMode::Inspect {
                return Err(VaultError::Refused(
                    "the database is empty: nothing to inspect".into(),
                ));
            }
            return Self::initialise(store, current, now);
        };
        let salt: [u8; SALT_LEN] = salt
            .try_into()
            .map_err(|_| VaultError::Corrupt("the database salt has the wrong length".into()))?;
        let derive = |master: &MasterKey| {
            TableKeys::derive(master, &salt).map_err(|e| VaultError::Corrupt(e.to_string()))
        };
        let keyring = Keyring::new(
            derive(current)?,
            previous.iter().map(derive).collect::<Result<_, _>>()?,
        );
        let current_id = keyring.current().key_id();
        if previous.iter().any(|p| p.key_id() == current_id) {
            return Err(VaultError::Refused(format!(
                "key {current_id} is both DB_MASTER_KEY and in DB_MASTER_KEY_PREVIOUS: list it once"
            )));
        }

        let (mut registry, legacy) = Self::load_registry(&*store, &keyring, current_id)?;
        let mut changed = legacy;
        let mut unregistered_current = false;
        for keys in keyring.all() {
            let id = keys.key_id();
            match registry.state(id) {
                Some(KeyState::Retired) => return Err(VaultError::RetiredKey(id)),
                None if id != current_id => return Err(VaultError::UnknownPreviousKey(id)),
                _ => {}
            }
        }
        match registry.state(current_id) {
            Some(KeyState::Active) => {}
            Some(KeyState::DecryptOnly) => {
                return Err(VaultError::ReplacedKey {
                    supplied: current_id,
                    active: registry.active().unwrap_or(current_id),
                });
            }
            Some(KeyState::Retired) => return Err(VaultError::RetiredKey(current_id)),
            None => {
                let active = registry.active().ok_or_else(|| {
                    VaultError::Corrupt("the key registry has no active key".into())
                })?;
                if keyring.get(active).is_none() {
                    return Err(VaultError::WrongMasterKey {
                        database: active,
                        supplied: current_id,
                    });
                }
                // Inspecting (e.g. `db rotate --dry-run`) shows what a rotation to this key
                // would do without registering it.
                if mode == OpenMode::Inspect {
                    unregistered_current = true;
                } else {
                    registry.set_state(active, KeyState::DecryptOnly, now);
                    registry.set_state(current_id, KeyState::Active, now);
                    registry.rotation = Some(Rotation {
                        to: current_id.to_string(),
                        started_at: now,
                        counts_at_start: BTreeMap::new(),
                        cursor: BTreeMap::new(),
                        moved: 0,
                        completed_at: None,
                        verified_at: None,
                    });
                    changed = true;
                }
            }
        }
        for keys in keyring.all() {
            // A key registered just now has no canary yet: it is written below.
            let new_here = keys.key_id() == current_id && (changed || unregistered_current);
            if !new_here {
                Self::check_canary(&*store, keys)?;
            }
        }
        let vault = Self {
            store,
            keyring,
            registry: Mutex::new(registry),
            group_commit: GroupCommit::default(),
        };
        let by_key = vault.counts_by_key()?;
        vault.check_records_have_keys(&by_key)?;
        if changed && mode == OpenMode::Write {
            vault.write_canary(vault.keyring.current())?;
            let starting = {
                let mut registry = vault.registry();
                match registry.rotation.as_mut() {
                    Some(rotation) if rotation.counts_at_start.is_empty() => {
                        rotation.counts_at_start = table_totals(&by_key);
                        true
                    }
                    _ => false,
                }
            };
            vault.save_registry()?;
            if legacy {
                vault.store.remove(Table::Meta, META_LEGACY_CANARY)?;
            }
            vault.store.flush()?;
            if starting {
                let from: Vec<String> = vault
                    .keyring
                    .ids()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                audit::append(
                    &*vault.store,
                    now,
                    "rotation_started",
                    from,
                    table_totals(&by_key),
                )?;
                vault.store.flush()?;
            }
        }
        Ok(vault)
    }

    /// The registry, or for a database created before it, one made from the legacy canary
    /// (its key becomes the active key). Returns whether it is such a new one.
    fn load_registry(
        store: &dyn Store,
        keyring: &Keyring,
        current: KeyId,
    ) -> Result<(Registry, bool), VaultError> {
        if let Some(sealed) = store.get(Table::Meta, META_REGISTRY)? {
            let (_, plain) = open_meta(keyring, current, META_REGISTRY, &sealed)?;
            let registry = serde_json::from_slice(&plain)
                .map_err(|e| VaultError::Corrupt(format!("key registry: {e}")))?;
            return Ok((registry, false));
        }
        let canary = store
            .get(Table::Meta, META_LEGACY_CANARY)?
            .ok_or_else(|| VaultError::Corrupt("the database has a salt but no canary".into()))?;
        let (id, plain) = open_meta(keyring, current, META_LEGACY_CANARY, &canary)?;
        let keys = keyring.get(id).expect("open_meta found it");
        if plain.as_slice() != CANARY_PLAINTEXT {
            return Err(VaultError::CanaryFailed(id));
        }
        // Registered now, with a per-key canary written when the registry is saved.
        store.insert(
            Table::Meta,
            &canary_key(id),
            seal_canary(keys, &canary_key(id))?,
        )?;
        Ok((Registry::new(id, unix_now()), true))
    }

    fn check_canary(store: &dyn Store, keys: &TableKeys) -> Result<(), VaultError> {
        let id = keys.key_id();
        let key = canary_key(id);
        let sealed = store
            .get(Table::Meta, &key)?
            .ok_or(VaultError::CanaryFailed(id))?;
        let plain = record::open(keys.cipher(Table::Meta), id, Table::Meta, &key, &sealed)
            .map_err(|_| VaultError::CanaryFailed(id))?;
        if plain.as_slice() != CANARY_PLAINTEXT {
            return Err(VaultError::CanaryFailed(id));
        }
        Ok(())
    }

    fn write_canary(&self, keys: &TableKeys) -> Result<(), VaultError> {
        let key = canary_key(keys.key_id());
        self.store
            .insert(Table::Meta, &key, seal_canary(keys, &key)?)?;
        Ok(())
    }

    /// Refuses to go on while a data record names a key that is retired, unknown, or not
    /// supplied.
    fn check_records_have_keys(
        &self,
        by_key: &BTreeMap<(Table, KeyId), u64>,
    ) -> Result<(), VaultError> {
        let registry = self.registry();
        for (&(table, key), &count) in by_key {
            if self.keyring.get(key).is_some() {
                continue;
            }
            let table = table.name();
            return Err(match registry.state(key) {
                Some(KeyState::Retired) => VaultError::RecordsUnderRetiredKey { table, key, count },
                None => VaultError::RecordsUnderUnknownKey { table, key, count },
                Some(_) => VaultError::RecordsUnderMissingKey { table, key, count },
            });
        }
        Ok(())
    }

    /// Records of each data table per master key id named in their headers (no decryption).
    pub fn counts_by_key(&self) -> Result<BTreeMap<(Table, KeyId), u64>, VaultError> {
        let mut counts = BTreeMap::new();
        for table in Table::DATA {
            self.store.visit(table, &mut |_, value| {
                let id = record::key_id_of(value)
                    .map_err(|e| StoreError::Aborted(format!("{}: {e}", table.name())))?;
                *counts.entry((table, id)).or_insert(0) += 1;
                Ok(())
            })?;
        }
        Ok(counts)
    }

    /// Creates a new database: the active key's canary, the registry, then the salt last. A
    /// database with a salt always has the rest; a start interrupted before the salt leaves
    /// only meta records, which the next start overwrites.
    fn initialise(store: Arc<dyn Store>, master: &MasterKey, now: i64) -> Result<Self, VaultError> {
        if let Some(table) = Table::DATA.iter().find(|t| store.len(**t) > 0) {
            return Err(VaultError::Corrupt(format!(
                "table {} holds records but the database has no salt",
                table.name()
            )));
        }
        let salt: [u8; SALT_LEN] =
            random_array().map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let keys =
            TableKeys::derive(master, &salt).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let id = keys.key_id();
        let vault = Self {
            store,
            keyring: Keyring::new(keys, Vec::new()),
            registry: Mutex::new(Registry::new(id, now)),
            group_commit: GroupCommit::default(),
        };
        vault.write_canary(vault.keyring.current())?;
        vault.save_registry()?;
        vault.store.flush()?;
        if !vault
            .store
            .compare_and_swap(Table::Meta, META_SALT, None, Some(salt.to_vec()))?
        {
            return Err(VaultError::Corrupt(
                "another process initialised the database at the same time".into(),
            ));
        }
        vault.store.flush()?;
        Ok(vault)
    }

    pub(super) fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every change to the registry is completed before the guard drops.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seals the registry under the current key. Not durable until flushed.
    pub(super) fn save_registry(&self) -> Result<(), VaultError> {
        let registry = self.registry().clone();
        let sealed = self.seal_value(Table::Meta, META_REGISTRY, &registry)?;
        self.store.insert(Table::Meta, META_REGISTRY, sealed)?;
        Ok(())
    }

    /// A copy of the key registry (ids, states, rotation progress).
    pub fn registry_snapshot(&self) -> Registry {
        self.registry().clone()
    }

    pub fn key_id(&self) -> KeyId {
        self.keyring.current().key_id()
    }

    /// The user's blind index under every key held, current first.
    pub fn user(&self, user_id: &str) -> UserRef {
        UserRef {
            indexes: self
                .keyring
                .all()
                .map(|keys| keys.blind_index(user_id))
                .collect(),
        }
    }

    pub(super) fn seal_value<T: Serialize>(
        &self,
        table: Table,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(
            serde_json::to_vec(value).map_err(|e| StoreError::Aborted(e.to_string()))?,
        );
        let current = self.keyring.current();
        record::seal(current.cipher(table), current.key_id(), table, key, plain)
            .map_err(|e| StoreError::Aborted(format!("{}: {e}", table.name())))
    }

    /// Opens a record with the key its header names, if the keyring holds it.
    pub(super) fn unseal<T: for<'de> Deserialize<'de>>(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<T, VaultError> {
        let error = |source| VaultError::Record {
            table: table.name(),
            source,
        };
        let id = record::key_id_of(sealed).map_err(error)?;
        let keys = self.keyring.get(id).ok_or(error(RecordError::WrongKey {
            found: id,
            expected: self.key_id(),
        }))?;
        let plain = record::open(keys.cipher(table), id, table, key, sealed).map_err(error)?;
        serde_json::from_slice(&plain)
            .map_err(|e| VaultError::Corrupt(format!("{} record: {e}", table.name())))
    }

    /// Where the user's record is: (its index, its sealed bytes), current index first.
    fn find_user(&self, user: &UserRef) -> Result<Option<(UserIndex, Vec<u8>)>, VaultError> {
        for index in &user.indexes {
            if let Some(sealed) = self.store.get(Table::UserData, index)? {
                return Ok(Some((*index, sealed)));
            }
        }
        Ok(None)
    }

    /// The user's templates (unit vectors); empty when not enrolled. A record from before
    /// user ids were sealed in it is upgraded on the way (once), so that a later key
    /// rotation can re-index it. Not durable until [`Vault::flush`].
    pub fn templates(
        &self,
        user: &UserRef,
        user_id: &str,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        Ok(self.enrolment(user, user_id)?.templates)
    }

    /// The user's templates and known devices (see [`Vault::templates`]).
    pub fn enrolment(&self, user: &UserRef, user_id: &str) -> Result<Enrolment, VaultError> {
        let Some((index, sealed)) = self.find_user(user)? else {
            return Ok(Enrolment::default());
        };
        let mut record: UserRecord = self.unseal(Table::UserData, &index, &sealed)?;
        if record.user_id.is_empty() {
            self.update_user(user, user_id, &|_| Ok(()))?;
        }
        Ok(record.take_enrolment())
    }

    /// Every enrolled user's id and templates (to build the in-memory gallery at start).
    /// Records from before user ids were sealed are left out until their user is next seen.
    pub fn enrolled_users(&self) -> Result<Vec<(String, Enrolment)>, VaultError> {
        let mut users = Vec::new();
        for (key, sealed) in self.store.scan(Table::UserData)? {
            let mut record: UserRecord = self.unseal(Table::UserData, &key, &sealed)?;
            if record.user_id.is_empty() {
                continue;
            }
            users.push((std::mem::take(&mut record.user_id), record.take_enrolment()));
        }
        Ok(users)
    }

    /// Adds `device` (SM3 hex) to the user's known devices, keeping the `max` most recent.
    /// Not durable until [`Vault::flush`].
    pub fn remember_device(
        &self,
        user: &UserRef,
        user_id: &str,
        device: &str,
        max: usize,
    ) -> Result<(), VaultError> {
        self.update_user(user, user_id, &|record| {
            remember(&mut record.devices, device, max);
            Ok(())
        })
        .map(|_| ())
    }

    /// The user's `limit` most recent accepted probes (unit vectors), newest first, under
    /// every key's index (a rotation may not have moved them yet).
    pub fn recent_probes(
        &self,
        user: &UserRef,
        limit: usize,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        let mut probes = Vec::new();
        for index in &user.indexes {
            for (key, sealed) in self
                .store
                .scan_prefix_last(Table::FeatureHistory, index, limit)?
            {
                if !is_history_key_of(&key, index) {
                    continue;
                }
                let mut entry: HistoryRecord = self.unseal(Table::FeatureHistory, &key, &sealed)?;
                probes.push(Zeroizing::new(std::mem::take(&mut entry.features)));
            }
        }
        probes.truncate(limit);
        Ok(probes)
    }

    /// Adds a template and returns the user's template count. Not durable until
    /// [`Vault::flush`].
    pub fn enrol(
        &self,
        user: &UserRef,
        user_id: &str,
        template: &[f32],
        now: i64,
        max_templates: usize,
    ) -> Result<usize, VaultError> {
        self.enrol_from(user, user_id, template, now, max_templates, None)
            .map(|templates| templates.len())
    }

    /// [`Vault::enrol`], remembering the enrolling device (SM3 hex, at most `max_devices`);
    /// returns all of the user's templates as stored (for the in-memory gallery).
    pub fn enrol_from(
        &self,
        user: &UserRef,
        user_id: &str,
        template: &[f32],
        now: i64,
        max_templates: usize,
        device: Option<(&str, usize)>,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        self.update_user(user, user_id, &|record| {
            if record.templates.len() >= max_templates {
                return Err(VaultError::TemplateLimit(max_templates));
            }
            record.templates.push(StoredTemplate {
                features: template.to_vec(),
                enrolled_at: now,
            });
            if let Some((device, max)) = device {
                remember(&mut record.devices, device, max);
            }
            Ok(())
        })
    }

    /// Read-modify-write of a user's record, atomic per user: a compare-and-swap, retried
    /// when a concurrent enrolment (or the rotation moving this user) got there first, so
    /// no update is lost. A record still under an old key's index moves to the current
    /// index on the way. Returns the templates as stored.
    fn update_user(
        &self,
        user: &UserRef,
        user_id: &str,
        change: &dyn Fn(&mut UserRecord) -> Result<(), VaultError>,
    ) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        let target = *user.current();
        loop {
            let found = self.find_user(user)?;
            let mut record: UserRecord = match &found {
                Some((index, sealed)) => self.unseal(Table::UserData, index, sealed)?,
                None => UserRecord::default(),
            };
            change(&mut record)?;
            record.user_id = user_id.to_owned();
            let sealed = self.seal_value(Table::UserData, &target, &record)?;
            match found {
                Some((index, old)) if index != target => {
                    // Moving to the current index: create it, then remove the old copy.
                    self.map_index(&index, &target)?;
                    if self
                        .store
                        .compare_and_swap(Table::UserData, &target, None, Some(sealed))?
                    {
                        self.store
                            .compare_and_swap(Table::UserData, &index, Some(&old), None)?;
                        return Ok(record.take_templates());
                    }
                }
                found => {
                    let expected = found.as_ref().map(|(_, old)| old.as_slice());
                    if self.store.compare_and_swap(
                        Table::UserData,
                        &target,
                        expected,
                        Some(sealed),
                    )? {
                        return Ok(record.take_templates());
                    }
                }
            }
        }
    }

    /// Records that the user at `old` is now at `new` (for history and logs still under the
    /// old index).
    pub(super) fn map_index(&self, old: &UserIndex, new: &UserIndex) -> Result<(), VaultError> {
        let key = [INDEX_MAP_PREFIX, old.as_slice()].concat();
        let sealed = self.seal_value(Table::Meta, &key, &new.to_vec())?;
        self.store.insert(Table::Meta, &key, sealed)?;
        Ok(())
    }

    pub(super) fn mapped_index(&self, old: &[u8]) -> Result<Option<UserIndex>, VaultError> {
        let key = [INDEX_MAP_PREFIX, old].concat();
        let Some(sealed) = self.store.get(Table::Meta, &key)? else {
            return Ok(None);
        };
        let new: Vec<u8> = self.unseal(Table::Meta, &key, &sealed)?;
        new.try_into()
            .map(Some)
            .map_err(|_| VaultError::Corrupt("an index map entry has the wrong length".into()))
    }

    /// Appends the risk log and, for an accepted probe, a history entry. The log is written
    /// first, so a crash between the two can leave a logged decision without its history
    /// entry but never history without its log. Not durable until [`Vault::flush`].
    pub fn record_assessment(
        &self,
        user: &UserIndex,
        log: &RiskLogEntry,
        accepted: bool,
    ) -> Result<(), VaultError> {
        let log_key = self.store.next_id()?.to_be_bytes();
        let log_record = self.seal_value(Table::RiskLogs, &log_key, log)?;
        self.store.insert(Table::RiskLogs, &log_key, log_record)?;
        if accepted {
            let mut key = user.to_vec();
            key.extend_from_slice(&self.store.next_id()?.to_be_bytes());
            let entry = HistoryRecord {
                features: log.features.clone(),
                at: log.at,
                rid: log.rid.clone(),
            };
            let sealed = self.seal_value(Table::FeatureHistory, &key, &entry)?;
            self.store.insert(Table::FeatureHistory, &key, sealed)?;
        }
        Ok(())
    }

    /// Erases a user: the record holding their templates (under every key's blind index),
    /// their feature history (also under older indexes that a rotation mapped to theirs),
    /// those index mappings, and in their risk log entries everything but the decision.
    /// Scans the index mappings and the risk logs (which are not keyed by user): cost grows
    /// with the database, which suits a rare operation. Not durable until [`Vault::flush`].
    pub fn erase_user(&self, user: &UserRef) -> Result<Erased, VaultError> {
        let mut indexes: Vec<Vec<u8>> = user.indexes.iter().map(|i| i.to_vec()).collect();
        for (key, sealed) in self.store.scan(Table::Meta)? {
            let Some(old) = key.strip_prefix(INDEX_MAP_PREFIX) else {
                continue;
            };
            let new: Vec<u8> = self.unseal(Table::Meta, &key, &sealed)?;
            if indexes.contains(&new) {
                indexes.push(old.to_vec());
                self.store.remove(Table::Meta, &key)?;
            }
        }
        let mut erased = Erased::default();
        for index in &user.indexes {
            if let Some(sealed) = self.store.get(Table::UserData, index)? {
                let record: UserRecord = self.unseal(Table::UserData, index, &sealed)?;
                erased.templates += record.templates.len();
                self.store.remove(Table::UserData, index)?;
            }
        }
        for index in &indexes {
            for (key, _) in self
                .store
                .scan_prefix_last(Table::FeatureHistory, index, usize::MAX)?
            {
                if is_history_key_of(&key, index) {
                    self.store.remove(Table::FeatureHistory, &key)?;
                    erased.history += 1;
                }
            }
        }
        let named: Vec<String> = indexes.iter().map(hex::encode).collect();
        for (key, sealed) in self.store.scan(Table::RiskLogs)? {
            let mut entry: RiskLogEntry = self.unseal(Table::RiskLogs, &key, &sealed)?;
            if !named.contains(&entry.user) {
                continue;
            }
            entry.user = ERASED_USER.into();
            entry.features.zeroize();
            entry.features.clear();
            entry.liveness = None;
            entry.device_id.zeroize();
            entry.device_id = None;
            let scrubbed = self.seal_value(Table::RiskLogs, &key, &entry)?;
            self.store.insert(Table::RiskLogs, &key, scrubbed)?;
            erased.risk_logs_scrubbed += 1;
        }
        Ok(erased)
    }

    /// Records per table (counting walks each table: for metrics scrapes, not hot paths).
    pub fn table_sizes(&self) -> BTreeMap<&'static str, usize> {
        Table::ALL
            .into_iter()
            .map(|table| (table.name(), self.store.len(table)))
            .collect()
    }

    /// Records a spent request id. Not durable until [`Vault::flush`], which every
    /// answered request waits for.
    pub fn spend_rid(&self, rid: &str, iat: i64) -> Result<(), VaultError> {
        self.store
            .insert(Table::Replay, rid.as_bytes(), iat.to_be_bytes().to_vec())?;
        Ok(())
    }

    /// The spent request ids with `iat` at or after `since`; older ones are forgotten.
    pub fn spent_rids(&self, since: i64) -> Result<Vec<(String, i64)>, VaultError> {
        let mut live = Vec::new();
        self.sweep_spent_rids(since, |rid, iat| {
            let rid = String::from_utf8(rid)
                .map_err(|_| VaultError::Corrupt("a replay entry is not UTF-8".into()))?;
            live.push((rid, iat));
            Ok(())
        })?;
        Ok(live)
    }

    /// Forgets the spent request ids with `iat` before `since`.
    pub fn forget_spent_rids(&self, since: i64) -> Result<(), VaultError> {
        self.sweep_spent_rids(since, |_, _| Ok(()))
    }

    /// Removes the entries older than `since` and hands each live one to `live`.
    fn sweep_spent_rids(
        &self,
        since: i64,
        mut live: impl FnMut(Vec<u8>, i64) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        for (rid, value) in self.store.scan(Table::Replay)? {
            let iat = value
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| VaultError::Corrupt("a replay entry is not an 8-byte iat".into()))?;
            if iat >= since {
                live(rid, iat)?;
            } else {
                self.store.remove(Table::Replay, &rid)?;
            }
        }
        Ok(())
    }

    /// Returns once every write completed before this call is durable. Concurrent callers
    /// share one flush (group commit); `Ok(true)` means this caller ran it.
    pub fn flush(&self) -> Result<bool, VaultError> {
        Ok(self.group_commit.commit(|| self.store.flush())?)
    }

    /// Decrypts every record of every data table and counts them; fails on the first record
    /// that does not open.
    pub fn verify_all(&self) -> Result<TableCounts, VaultError> {
        let mut counts = TableCounts::default();
        for (key, sealed) in self.store.scan(Table::UserData)? {
            let _: UserRecord = self.unseal(Table::UserData, &key, &sealed)?;
            counts.user_data += 1;
        }
        for (key, sealed) in self.store.scan(Table::FeatureHistory)? {
            let _: HistoryRecord = self.unseal(Table::FeatureHistory, &key, &sealed)?;
            counts.feature_history += 1;
        }
        for (key, sealed) in self.store.scan(Table::RiskLogs)? {
            let _: RiskLogEntry = self.unseal(Table::RiskLogs, &key, &sealed)?;
            counts.risk_logs += 1;
        }
        Ok(counts)
    }

    /// Every risk log entry, oldest first (for audits and tests).
    pub fn risk_logs(&self) -> Result<Vec<RiskLogEntry>, VaultError> {
        self.store
            .scan(Table::RiskLogs)?
            .into_iter()
            .map(|(key, sealed)| self.unseal(Table::RiskLogs, &key, &sealed))
            .collect()
    }
}

/// Opens a `meta` record with the key its header names. A key the process does not hold
/// means the database belongs to another key (`current` is named in the message); a record
/// that does not open means tampering.
fn open_meta(
    keyring: &Keyring,
    current: KeyId,
    key: &[u8],
    sealed: &[u8],
) -> Result<(KeyId, Zeroizing<Vec<u8>>), VaultError> {
    let id = record::key_id_of(sealed).map_err(|_| VaultError::CanaryFailed(current))?;
    let Some(keys) = keyring.get(id) else {
        return Err(VaultError::WrongMasterKey {
            database: id,
            supplied: current,
        });
    };
    let plain = record::open(keys.cipher(Table::Meta), id, Table::Meta, key, sealed)
        .map_err(|_| VaultError::CanaryFailed(id))?;
    Ok((id, plain))
}

fn seal_canary(keys: &TableKeys, key: &[u8]) -> Result<Vec<u8>, VaultError> {
    record::seal(
        keys.cipher(Table::Meta),
        keys.key_id(),
        Table::Meta,
        key,
        Zeroizing::new(CANARY_PLAINTEXT.to_vec()),
    )
    .map_err(|source| VaultError::Record {
        table: "meta",
        source,
    })
}

/// A risk log entry for tests.
#[cfg(test)]
pub(super) fn sample_log(rid: &str, user: &str) -> RiskLogEntry {
    RiskLogEntry {
        rid: rid.into(),
        at: 1,
        user: user.into(),
        decision: "allow".into(),
        score: 0.0,
        reasons: vec![],
        model: "m".into(),
        features: vec![0.6, 0.8],
        liveness: None,
        device_id: None,
    }
}

/// Per data table name: records under any key.
pub(super) fn table_totals(by_key: &BTreeMap<(Table, KeyId), u64>) -> BTreeMap<String, u64> {
    let mut totals: BTreeMap<String, u64> = Table::DATA
        .iter()
        .map(|t| (t.name().to_owned(), 0))
        .collect();
    for (&(table, _), &count) in by_key {
        *totals.entry(table.name().to_owned()).or_default() += count;
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    fn open_at(dir: &std::path::Path, byte: u8) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        Vault::open(store, &master(byte))
    }

    fn log(rid: &str) -> RiskLogEntry {
        sample_log(rid, "00")
    }

    #[test]
    fn records_survive_reopen_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let vault = open_at(dir.path(), 1).unwrap();
            let user = vault.user("alice");
            assert_eq!(vault.enrol(&user, "alice", &[0.6, 0.8], 1, 5).unwrap(), 1);
            assert_eq!(vault.enrol(&user, "alice", &[0.8, 0.6], 2, 5).unwrap(), 2);
            vault
                .record_assessment(user.current(), &log("r1"), true)
                .unwrap();
            vault.flush().unwrap();
        }
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user("alice");
        let templates = vault.templates(&user, "alice").unwrap();
        assert_eq!(templates.len(), 2);
        assert_eq!(&templates[1][..], &[0.8, 0.6]);
        assert_eq!(
            vault.verify_all().unwrap(),
            TableCounts {
                user_data: 1,
                feature_history: 1,
                risk_logs: 1
            }
        );
        assert_eq!(vault.risk_logs().unwrap(), vec![log("r1")]);
    }

    #[test]
    fn wrong_master_key_is_refused_with_both_ids() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_at(dir.path(), 1).unwrap());
        let err = open_at(dir.path(), 2).err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, VaultError::WrongMasterKey { .. }));
        assert!(message.contains(&master(1).key_id().to_string()));
        assert!(message.contains(&master(2).key_id().to_string()));
    }

    #[test]
    fn concurrent_enrolments_of_one_user_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Arc::new(open_at(dir.path(), 1).unwrap());
        let user = vault.user("dave");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let vault = vault.clone();
                std::thread::spawn(move || {
                    let user = vault.user("dave");
                    for j in 0..10 {
                        vault
                            .enrol(&user, "dave", &[i as f32, j as f32], 1, 100)
                            .unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let templates = vault.templates(&user, "dave").unwrap();
        assert_eq!(templates.len(), 80);
        let mut seen: Vec<(u32, u32)> = templates
            .iter()
            .map(|t| (t[0] as u32, t[1] as u32))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 80, "every enrolment is present exactly once");
    }

    #[test]
    fn a_start_interrupted_before_the_salt_was_written_initialises_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store
                .insert(Table::Meta, META_LEGACY_CANARY, b"left over".to_vec())
                .unwrap();
            store.flush().unwrap();
        }
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user("erin");
        vault.enrol(&user, "erin", &[1.0, 0.0], 1, 5).unwrap();
        vault.flush().unwrap();
        drop(vault);
        assert_eq!(
            open_at(dir.path(), 1)
                .unwrap()
                .verify_all()
                .unwrap()
                .user_data,
            1
        );
    }

    #[test]
    fn data_without_a_salt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.insert(Table::RiskLogs, b"1", b"x".to_vec()).unwrap();
            store.flush().unwrap();
        }
        let err = open_at(dir.path(), 1).err().unwrap().to_string();
        assert!(err.contains("risk_logs holds records"), "{err}");
    }

    #[test]
    fn template_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user("bob");
        vault.enrol(&user, "bob", &[1.0, 0.0], 1, 1).unwrap();
        assert!(matches!(
            vault.enrol(&user, "bob", &[1.0, 0.0], 1, 1),
            Err(VaultError::TemplateLimit(1))
        ));
        assert_eq!(vault.templates(&user, "bob").unwrap().len(), 1);
    }

    #[test]
    fn stored_bytes_hold_no_user_id_or_features() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user("carol-the-user");
        vault
            .enrol(&user, "carol-the-user", &[0.6, 0.8], 1, 5)
            .unwrap();
        vault.flush().unwrap();
        drop(vault);
        let store = SledStore::open(dir.path()).unwrap();
        for table in Table::ALL {
            for (key, value) in store.scan(table).unwrap() {
                for haystack in [&key, &value] {
                    assert!(!haystack.windows(14).any(|w| w == b"carol-the-user"));
                    assert!(!haystack.windows(8).any(|w| w == b"features"));
                }
            }
        }
    }
}

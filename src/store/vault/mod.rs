//! The encrypted database the service uses: every value sealed under its table's key, user
//! ids replaced by blind indexes, and a keyring of master keys: the current one seals,
//! previous ones open what rotation has not moved yet. One file per concern:
//!
//! | file | concern |
//! |---|---|
//! | `open.rs` | keyring, key registry, canaries, fail-closed open, initialisation |
//! | `layout.rs` | where each record sits (meta keys, user and history keys, index maps) |
//! | `records.rs` | what the sealed values hold |
//! | `users.rs` | enrolled users, compare-and-swap updates |
//! | `history.rs` | risk logs and accepted probes |
//! | `erase.rs` | erasure |
//! | `spent.rs` | spent request ids |
//! | `rotation.rs` | the re-encryption sweep |
//! | `copy.rs`, `salvage.rs` | copying a database whole, or what is left of a damaged one |
//! | `mark.rs` | the high-water mark beside a sled store |
//! | `changes.rs` | the change feed replicas follow |
//! | `status.rs` | `db status`, `verify`, `retire-key` |
//!
//! The concern files reach the store only through the few methods below (`store`,
//! `seal_value`, `unseal`, `registry`, `save_registry`, `update_registry`); the fields stay private here.

mod changes;
mod copy;
mod custody;
mod erase;
mod history;
mod layout;
pub mod mark;
mod open;
mod records;
mod rotation;
mod salvage;
mod spent;
mod status;
#[cfg(test)]
mod tests;
mod users;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::group_commit::GroupCommit;
use super::keys::{KeyId, Keyring};
use super::record::{self, RecordError};
use super::registry::Registry;
use super::{Store, StoreError, Table};
use layout::META_REGISTRY;

pub use changes::{CHANGE_OVERLAP_SECS, ChangeCursor};
#[cfg(test)]
pub(crate) use records::sample_log;
pub use records::{
    ERASED_USER, Enrolment, Erased, LEGACY_FACE_MODEL, RiskLogEntry, TableCounts, Template,
};
pub use rotation::{BatchOutcome, DEFAULT_BATCH};
pub use salvage::SalvageReport;
pub use status::{Status, VerifyReport};
pub use users::{Along, UserReading};

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
    /// The store lost acknowledged data (a damaged or rolled-back log).
    #[error(
        "the database is behind its high-water mark ({detail}): acknowledged data is missing, \
         so it is not served as if whole. Restore it from a backup; or, to serve what is left, \
         start once with --accept-data-loss (the loss is recorded in the audit log)."
    )]
    BehindHighWaterMark {
        /// What is behind.
        detail: String,
        /// Commits the mark records.
        mark_commits: u64,
        /// Commits the store holds.
        store_commits: u64,
    },
}

impl VaultError {
    /// Whether this is damage to the data (corruption, tampering, loss) rather than a
    /// wrong key or a precondition: `db verify` reports such a database as failing its check.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            VaultError::CanaryFailed(_)
                | VaultError::Corrupt(_)
                | VaultError::Record { .. }
                | VaultError::RecordsUnderUnknownKey { .. }
                | VaultError::RecordsUnderRetiredKey { .. }
                | VaultError::BehindHighWaterMark { .. }
        )
    }
}

/// How [`Vault::open_keyring`] may change the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Serving or an operator command that writes: registers a new current key (starting a
    /// rotation) and upgrades a database from before the registry.
    Write,
    /// `db status` and friends: changes nothing, refuses what would need a change.
    Inspect,
    /// `db salvage` on a damaged database: changes nothing, and opens with the keys and
    /// canaries alone; records that name a key it lacks, or whose headers are unreadable,
    /// are left for the salvage to count instead of refusing the open.
    Salvage,
}

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

/// The tables whose records `/metrics` reports, counted by the vault.
pub const COUNTED_TABLES: [Table; 4] = [
    Table::UserData,
    Table::FeatureHistory,
    Table::RiskLogs,
    Table::Replay,
];

/// Records per table, kept as counters: set from the store when the vault opens, then moved
/// by every write the vault makes, so that reading them (a `/metrics` scrape) never walks a
/// table nor waits on the store, whatever state the store is in.
#[derive(Default)]
struct RecordCounts([AtomicI64; Table::ALL.len()]);

impl RecordCounts {
    /// The counts of a database being opened: the data tables from the per-key counts that
    /// opening computes anyway (no second walk), the replay table from the store.
    fn from_open(by_key: &BTreeMap<(Table, KeyId), u64>, replay: usize) -> Self {
        let counts = Self::default();
        for (&(table, _), &n) in by_key {
            counts.add(table, i64::try_from(n).unwrap_or(i64::MAX));
        }
        counts.add(Table::Replay, i64::try_from(replay).unwrap_or(i64::MAX));
        counts
    }

    fn add(&self, table: Table, n: i64) {
        self.0[table.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, table: Table) -> u64 {
        u64::try_from(self.0[table.index()].load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// The encrypted database: the store, the keyring, the key registry, group commit.
pub struct Vault {
    store: Arc<dyn Store>,
    keyring: Keyring,
    registry: Mutex<Registry>,
    group_commit: GroupCommit,
    counts: RecordCounts,
    /// Where the high-water mark is kept (`mark.rs`); `None`: not kept (tests, tools).
    mark_dir: Option<std::path::PathBuf>,
    /// Commits made durable (the store's `commit-seq`), while a mark is kept.
    commits: Mutex<u64>,
    /// A mark was written since the last [`Vault::sync_high_water_mark`].
    mark_unsynced: std::sync::atomic::AtomicBool,
    /// The mark file, open for its slots' writes once this process wrote its first mark.
    mark_file: Mutex<Option<std::fs::File>>,
}

impl Vault {
    /// The store under the vault (for the concern files; never handed out of the crate).
    fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Whether the store can serve now (readiness: `GET /healthz`). A failed engine is
    /// reopened here when its retry is due, so probes also drive the recovery.
    pub fn storage_healthy(&self) -> bool {
        self.store.healthy()
    }

    /// A record was created (`n` = 1) or removed (`n` = −1) in `table`.
    fn counted(&self, table: Table, n: i64) {
        self.counts.add(table, n);
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every change to the registry is completed before the guard drops.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seals the registry under the current key. Not durable until flushed. The lock is
    /// held until the store has the copy, so that two savers cannot store their copies in
    /// the reverse order of their changes.
    fn save_registry(&self) -> Result<(), VaultError> {
        let registry = self.registry();
        let sealed = self.seal_value(Table::Meta, META_REGISTRY, &*registry)?;
        self.store.insert(Table::Meta, META_REGISTRY, sealed)?;
        Ok(())
    }

    /// Changes the registry as stored: read it, apply `change`, compare-and-swap; again when
    /// another writer changed it meanwhile (a replica on the same store, or the rotation
    /// thread), so no writer's change overwrites another's. The copy in memory becomes the
    /// stored one. Not durable until flushed.
    fn update_registry(&self, change: &mut dyn FnMut(&mut Registry)) -> Result<(), VaultError> {
        loop {
            let stored = self.store.get(Table::Meta, META_REGISTRY)?;
            let mut registry: Registry = match &stored {
                Some(sealed) => self.unseal(Table::Meta, META_REGISTRY, sealed)?,
                None => self.registry().clone(),
            };
            change(&mut registry);
            let sealed = self.seal_value(Table::Meta, META_REGISTRY, &registry)?;
            if self.store.compare_and_swap(
                Table::Meta,
                META_REGISTRY,
                stored.as_deref(),
                Some(sealed),
            )? {
                *self.registry() = registry;
                return Ok(());
            }
        }
    }

    /// Reads the registry as stored into memory (another replica may have moved the
    /// rotation on).
    fn reload_registry(&self) -> Result<(), VaultError> {
        if let Some(sealed) = self.store.get(Table::Meta, META_REGISTRY)? {
            *self.registry() = self.unseal(Table::Meta, META_REGISTRY, &sealed)?;
        }
        Ok(())
    }

    /// A copy of the key registry (ids, states, rotation progress).
    pub fn registry_snapshot(&self) -> Registry {
        self.registry().clone()
    }

    pub fn key_id(&self) -> KeyId {
        self.keyring.current().key_id()
    }

    /// The user's blind index under the current key (where rotation moves a user to).
    fn current_index(&self, user_id: &str) -> UserIndex {
        self.keyring.current().blind_index(user_id)
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

    fn seal_value<T: Serialize>(
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
    fn unseal<T: for<'de> Deserialize<'de>>(
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

    /// Returns once every write completed before this call is durable. Concurrent callers
    /// share one flush (group commit); `Ok(true)` means this caller ran it.
    pub fn flush(&self) -> Result<bool, VaultError> {
        self.group_commit.commit(|| self.commit_and_mark())
    }

    /// Records per table of [`COUNTED_TABLES`], from the counters: no store access, so it
    /// answers at once even while the store is failing.
    pub fn table_sizes(&self) -> BTreeMap<&'static str, u64> {
        COUNTED_TABLES
            .into_iter()
            .map(|table| (table.name(), self.counts.get(table)))
            .collect()
    }
}

//! Storage: a small key-value [`Store`] trait (sled behind it today), the sealed record
//! format, the key hierarchy derived from the DB master key, and the [`Vault`] that the
//! service uses to keep templates, feature history and risk logs encrypted.

pub mod audit;
pub mod group_commit;
pub mod keys;
pub mod packed;
pub mod record;
pub mod registry;
pub mod rotation;
pub mod sled_store;
pub mod vault;

pub use keys::MasterKey;
pub use sled_store::SledStore;
pub use vault::{OpenMode, Vault, VaultError};

/// The tables (sled trees) the service keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Enrolled templates, keyed by the user's blind index.
    UserData,
    /// Accepted probes per user (blind index ‖ sequence), for drift and template adaptation.
    FeatureHistory,
    /// One record per assessment, keyed by a monotonic id.
    RiskLogs,
    /// Database salt, key registry, per-key canaries, rotation index map.
    Meta,
    /// The append-only, SM3-chained audit log of key events (plain: no secrets).
    Audit,
    /// Request ids spent within the replay window, with their `iat` (plain: random ids the
    /// clients chose, nothing about users), so a restart does not reopen the window.
    Replay,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::UserData,
        Table::FeatureHistory,
        Table::RiskLogs,
        Table::Meta,
        Table::Audit,
        Table::Replay,
    ];

    /// The tables of user data, every record sealed under a master key.
    pub const DATA: [Table; 3] = [Table::UserData, Table::FeatureHistory, Table::RiskLogs];

    pub fn name(self) -> &'static str {
        match self {
            Table::UserData => "user_data",
            Table::FeatureHistory => "feature_history",
            Table::RiskLogs => "risk_logs",
            Table::Meta => "meta",
            Table::Audit => "audit",
            Table::Replay => "replay",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The operation refused to go on (the message says why).
    #[error("{0}")]
    Aborted(String),
}

/// One stored record: (key, value).
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Called with each (key, value) of a table by [`Store::visit`]; an error stops the walk.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// A durable key-value store with one namespace per [`Table`].
///
/// Writes are atomic per key; there are deliberately no multi-key transactions. On sled,
/// one transaction switches the whole process into a global reader-writer lock that every
/// later read and write takes, which serialises concurrent requests (docs/PERFORMANCE.md).
/// Read-modify-write goes through [`Store::compare_and_swap`]; writes that belong together
/// are ordered so that a crash between them leaves nothing that claims more than happened.
pub trait Store: Send + Sync {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    /// Sets `key` to `new` (`None`: removes it) only if its value is still `expected`
    /// (`None`: absent). Returns whether it did; `false` means another writer got there first.
    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError>;
    fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// A fresh, strictly increasing id (for log keys).
    fn next_id(&self) -> Result<u64, StoreError>;
    /// All records of a table, in key order.
    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError>;
    /// Up to `limit` records with keys strictly after `after` (from the start: `None`).
    fn scan_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
    /// Up to `limit` records whose keys start with `prefix`, greatest key first.
    fn scan_prefix_last(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
    /// Calls `visit` on every record in key order without collecting them.
    fn visit(&self, table: Table, visit: &mut Visitor) -> Result<(), StoreError>;
    /// The record with the greatest key.
    fn last(&self, table: Table) -> Result<Option<KeyValue>, StoreError>;
    fn len(&self, table: Table) -> usize;
}

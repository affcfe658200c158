//! The encrypted database the service uses: every value sealed under its table's key, user
//! ids replaced by blind indexes, a canary that proves the master key at start-up.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::group_commit::GroupCommit;
use super::keys::{KeyId, MasterKey, SALT_LEN, TableKeys};
use super::record::{self, RecordError};
use super::{Store, StoreError, Table};
use crate::crypto::random_array;

const META_SALT: &[u8] = b"salt";
const META_CANARY: &[u8] = b"canary";
const CANARY_PLAINTEXT: &[u8] = b"tee-risk canary v1";

/// A user's blind index (HMAC-SM3 of the user id).
pub type UserIndex = [u8; 32];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error(
        "DB_MASTER_KEY does not match this database: the database was sealed with master key id \
         {database}, but the key supplied has id {supplied}. Start with the master key this \
         database was created with (key ids are printed at start-up)."
    )]
    WrongMasterKey { database: KeyId, supplied: KeyId },
    #[error(
        "the master-key canary of this database failed to decrypt: the database or its meta \
         table is corrupt or was tampered with. Restore it from a backup."
    )]
    CanaryFailed,
    #[error("the database is inconsistent: {0}. Restore it from a backup.")]
    Corrupt(String),
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

/// A user's enrolled templates (unit vectors), as stored. Wiped on drop.
#[derive(Default, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    templates: Vec<StoredTemplate>,
}

#[derive(Serialize, Deserialize, Zeroize)]
#[serde(deny_unknown_fields)]
struct StoredTemplate {
    #[serde(with = "super::packed")]
    features: Vec<f32>,
    enrolled_at: i64,
}

/// An accepted probe kept for drift checks. Wiped on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct HistoryRecord {
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
    /// Hex of the user's blind index (never the user id).
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

pub struct Vault {
    store: Arc<dyn Store>,
    keys: TableKeys,
    group_commit: GroupCommit,
}

impl Vault {
    /// Opens (or initialises, when empty) the database under `master`. Refuses a master key
    /// that did not create the database, and a database whose canary fails.
    pub fn open(store: Arc<dyn Store>, master: &MasterKey) -> Result<Self, VaultError> {
        match store.get(Table::Meta, META_SALT)? {
            Some(salt) => {
                let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| {
                    VaultError::Corrupt("the database salt has the wrong length".into())
                })?;
                let keys = TableKeys::derive(master, &salt)
                    .map_err(|e| VaultError::Corrupt(e.to_string()))?;
                let canary = store.get(Table::Meta, META_CANARY)?.ok_or_else(|| {
                    VaultError::Corrupt("the database has a salt but no canary".into())
                })?;
                let database = record::key_id_of(&canary).map_err(|_| VaultError::CanaryFailed)?;
                if database != keys.key_id() {
                    return Err(VaultError::WrongMasterKey {
                        database,
                        supplied: keys.key_id(),
                    });
                }
                let plain = record::open(
                    keys.cipher(Table::Meta),
                    keys.key_id(),
                    Table::Meta,
                    META_CANARY,
                    &canary,
                )
                .map_err(|_| VaultError::CanaryFailed)?;
                if plain.as_slice() != CANARY_PLAINTEXT {
                    return Err(VaultError::CanaryFailed);
                }
                Ok(Self::new(store, keys))
            }
            None => Self::initialise(store, master),
        }
    }

    /// Creates the salt and canary of a new database. The canary is written first and the
    /// salt last: a database with a salt always has its canary, and a start interrupted
    /// between the two leaves only a canary, which the next start overwrites.
    fn initialise(store: Arc<dyn Store>, master: &MasterKey) -> Result<Self, VaultError> {
        let data_tables = Table::ALL.iter().filter(|t| **t != Table::Meta);
        if let Some(table) = data_tables.into_iter().find(|t| store.len(**t) > 0) {
            return Err(VaultError::Corrupt(format!(
                "table {} holds records but the database has no salt",
                table.name()
            )));
        }
        let salt: [u8; SALT_LEN] =
            random_array().map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let keys =
            TableKeys::derive(master, &salt).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let canary = record::seal(
            keys.cipher(Table::Meta),
            keys.key_id(),
            Table::Meta,
            META_CANARY,
            Zeroizing::new(CANARY_PLAINTEXT.to_vec()),
        )
        .map_err(|source| VaultError::Record {
            table: "meta",
            source,
        })?;
        store.insert(Table::Meta, META_CANARY, canary)?;
        store.flush()?;
        if !store.compare_and_swap(Table::Meta, META_SALT, None, salt.to_vec())? {
            return Err(VaultError::Corrupt(
                "another process initialised the database at the same time".into(),
            ));
        }
        store.flush()?;
        Ok(Self::new(store, keys))
    }

    fn new(store: Arc<dyn Store>, keys: TableKeys) -> Self {
        Self {
            store,
            keys,
            group_commit: GroupCommit::default(),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.keys.key_id()
    }

    pub fn user_index(&self, user_id: &str) -> UserIndex {
        self.keys.blind_index(user_id)
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
        record::seal(
            self.keys.cipher(table),
            self.keys.key_id(),
            table,
            key,
            plain,
        )
        .map_err(|e| StoreError::Aborted(format!("{}: {e}", table.name())))
    }

    fn unseal<T: for<'de> Deserialize<'de>>(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<T, VaultError> {
        let plain = record::open(
            self.keys.cipher(table),
            self.keys.key_id(),
            table,
            key,
            sealed,
        )
        .map_err(|source| VaultError::Record {
            table: table.name(),
            source,
        })?;
        serde_json::from_slice(&plain)
            .map_err(|e| VaultError::Corrupt(format!("{} record: {e}", table.name())))
    }

    /// The user's templates (unit vectors); empty when not enrolled.
    pub fn templates(&self, user: &UserIndex) -> Result<Vec<Zeroizing<Vec<f32>>>, VaultError> {
        let Some(sealed) = self.store.get(Table::UserData, user)? else {
            return Ok(Vec::new());
        };
        let mut record: UserRecord = self.unseal(Table::UserData, user, &sealed)?;
        Ok(record
            .templates
            .iter_mut()
            .map(|t| Zeroizing::new(std::mem::take(&mut t.features)))
            .collect())
    }

    /// Adds a template atomically (a concurrent enrolment of the same user is never lost:
    /// compare-and-swap, retried on conflict) and returns the user's template count. Not
    /// durable until [`Vault::flush`].
    pub fn enrol(
        &self,
        user: &UserIndex,
        template: &[f32],
        now: i64,
        max_templates: usize,
    ) -> Result<usize, VaultError> {
        loop {
            let current = self.store.get(Table::UserData, user)?;
            let mut record: UserRecord = match &current {
                Some(sealed) => self.unseal(Table::UserData, user, sealed)?,
                None => UserRecord::default(),
            };
            if record.templates.len() >= max_templates {
                return Err(VaultError::TemplateLimit(max_templates));
            }
            record.templates.push(StoredTemplate {
                features: template.to_vec(),
                enrolled_at: now,
            });
            let sealed = self.seal_value(Table::UserData, user, &record)?;
            if self
                .store
                .compare_and_swap(Table::UserData, user, current.as_deref(), sealed)?
            {
                return Ok(record.templates.len());
            }
        }
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

    /// Returns once every write completed before this call is durable. Concurrent callers
    /// share one flush (group commit); `Ok(true)` means this caller ran it.
    pub fn flush(&self) -> Result<bool, VaultError> {
        Ok(self.group_commit.commit(|| self.store.flush())?)
    }

    /// Decrypts every record of every table and counts them; fails on the first record that
    /// does not open.
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
        RiskLogEntry {
            rid: rid.into(),
            at: 1,
            user: "00".into(),
            decision: "allow".into(),
            score: 0.0,
            reasons: vec![],
            model: "m".into(),
            features: vec![0.6, 0.8],
            liveness: None,
            device_id: None,
        }
    }

    #[test]
    fn records_survive_reopen_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let vault = open_at(dir.path(), 1).unwrap();
            let user = vault.user_index("alice");
            assert_eq!(vault.enrol(&user, &[0.6, 0.8], 1, 5).unwrap(), 1);
            assert_eq!(vault.enrol(&user, &[0.8, 0.6], 2, 5).unwrap(), 2);
            vault.record_assessment(&user, &log("r1"), true).unwrap();
            vault.flush().unwrap();
        }
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user_index("alice");
        let templates = vault.templates(&user).unwrap();
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
        let user = vault.user_index("dave");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let vault = vault.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        vault.enrol(&user, &[i as f32, j as f32], 1, 100).unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let templates = vault.templates(&user).unwrap();
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
                .insert(Table::Meta, META_CANARY, b"left over".to_vec())
                .unwrap();
            store.flush().unwrap();
        }
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user_index("erin");
        vault.enrol(&user, &[1.0, 0.0], 1, 5).unwrap();
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
        let user = vault.user_index("bob");
        vault.enrol(&user, &[1.0, 0.0], 1, 1).unwrap();
        assert!(matches!(
            vault.enrol(&user, &[1.0, 0.0], 1, 1),
            Err(VaultError::TemplateLimit(1))
        ));
        assert_eq!(vault.templates(&user).unwrap().len(), 1);
    }

    #[test]
    fn stored_bytes_hold_no_user_id_or_features() {
        let dir = tempfile::tempdir().unwrap();
        let vault = open_at(dir.path(), 1).unwrap();
        let user = vault.user_index("carol-the-user");
        vault.enrol(&user, &[0.6, 0.8], 1, 5).unwrap();
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

//! Master-key rotation: re-encrypts every record sealed under an older key with the current
//! one, and re-indexes users (blind indexes are keyed from the master key), while requests go
//! on. Batches run in key order from a cursor kept in the sealed key registry; each batch is
//! flushed before the cursor moves, and every step is idempotent, so a process killed at any
//! point resumes where it stopped without losing or duplicating a record:
//!
//! 1. `user_data`: decrypt, compute the new index from the sealed user id, record
//!    old → new in the index map, create the record at the new index (compare-and-swap from
//!    absent: a copy already there is the same user, moved earlier or by an enrolment), then
//!    remove the old copy (compare-and-swap from the bytes read).
//! 2. `feature_history`: key old index ‖ seq becomes new index ‖ seq (seq is unique), then
//!    the old copy is removed.
//! 3. `risk_logs`: same key, the user field mapped to the new index, replaced by
//!    compare-and-swap.
//!
//! When no record names an old key any more, the rotation is complete; the index map is
//! removed when the old key is retired.

use std::collections::BTreeMap;

use serde::Serialize;

use super::audit;
use super::keys::KeyId;
use super::registry::KeyState;
use super::vault::{
    HistoryRecord, INDEX_MAP_PREFIX, RiskLogEntry, TableCounts, UserIndex, UserRecord, Vault,
    VaultError, table_totals,
};
use super::{Table, record};
use crate::time::unix_now;

/// Records visited per batch by the background rotation.
pub const DEFAULT_BATCH: usize = 512;

/// What one call of [`Vault::rotate_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub visited: usize,
    pub moved: usize,
    /// No record names an old key any more.
    pub complete: bool,
}

/// `db status`: keys, progress and counts, with no secret in it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub current_key: String,
    pub keys: Vec<super::registry::KeyEntry>,
    pub rotation: Option<super::registry::Rotation>,
    /// table → key id → records (from record headers).
    pub records: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What `db verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub counts: BTreeMap<String, u64>,
    pub counts_at_rotation_start: Option<BTreeMap<String, u64>>,
    /// Records still under another key than the current one.
    pub under_old_keys: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

const ORDER: [Table; 3] = [Table::UserData, Table::FeatureHistory, Table::RiskLogs];

impl Vault {
    /// A rotation has begun and not yet moved every record.
    pub fn rotation_pending(&self) -> bool {
        self.registry().rotation_pending()
    }

    /// Moves up to `limit` records (visited in key order from the cursor) under the current
    /// key, then flushes and advances the cursor.
    pub fn rotate_batch(&self, limit: usize) -> Result<BatchOutcome, VaultError> {
        let current = self.key_id();
        let Some(rotation) = self.registry().rotation.clone() else {
            return Ok(BatchOutcome {
                visited: 0,
                moved: 0,
                complete: true,
            });
        };
        if rotation.completed_at.is_some() {
            return Ok(BatchOutcome {
                visited: 0,
                moved: 0,
                complete: true,
            });
        }
        let (mut visited, mut moved) = (0, 0);
        for table in ORDER {
            let cursor = rotation
                .cursor
                .get(table.name())
                .map(|c| hex::decode(c).unwrap_or_default());
            if cursor.as_deref() == Some(DONE) {
                continue;
            }
            let room = limit.saturating_sub(visited);
            if room == 0 {
                return Ok(BatchOutcome {
                    visited,
                    moved,
                    complete: false,
                });
            }
            let batch = self.store.scan_after(table, cursor.as_deref(), room)?;
            let mut table_moved = 0;
            for (key, value) in &batch {
                visited += 1;
                if record::key_id_of(value).ok() != Some(current) {
                    self.move_record(table, key, value)?;
                    table_moved += 1;
                }
            }
            moved += table_moved;
            let finished_table = batch.len() < room;
            let next_cursor = match batch.last() {
                Some((key, _)) if !finished_table => hex::encode(key),
                _ => hex::encode(DONE),
            };
            // Durable moves first, then the cursor that skips them.
            self.flush()?;
            {
                let mut registry = self.registry();
                let rotation = registry.rotation.as_mut().expect("checked above");
                rotation.cursor.insert(table.name().to_owned(), next_cursor);
                rotation.moved += table_moved as u64;
            }
            self.save_registry()?;
            self.flush()?;
            if !finished_table {
                return Ok(BatchOutcome {
                    visited,
                    moved,
                    complete: false,
                });
            }
        }
        // Every table has been swept once; writes during the sweep used the current key,
        // so a recount confirms nothing old is left.
        let by_key = self.counts_by_key()?;
        let left: u64 = by_key
            .iter()
            .filter(|((_, key), _)| *key != current)
            .map(|(_, n)| n)
            .sum();
        if left > 0 {
            // Records written under an old key while the sweep ran (cannot happen with one
            // current key, but a restart could have raced): sweep again.
            self.registry()
                .rotation
                .as_mut()
                .expect("checked above")
                .cursor
                .clear();
            self.save_registry()?;
            self.flush()?;
            return Ok(BatchOutcome {
                visited,
                moved,
                complete: false,
            });
        }
        let totals = table_totals(&by_key);
        self.registry()
            .rotation
            .as_mut()
            .expect("checked above")
            .completed_at = Some(unix_now());
        self.save_registry()?;
        audit::append(
            &*self.store,
            unix_now(),
            "rotation_completed",
            vec![current.to_string()],
            totals,
        )?;
        self.flush()?;
        Ok(BatchOutcome {
            visited,
            moved,
            complete: true,
        })
    }

    /// Runs batches until the rotation is complete or `stop` says so; appends a checkpoint
    /// to the audit log every `checkpoint_every` moved records.
    pub fn rotate_until_done(
        &self,
        limit: usize,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<bool, VaultError> {
        const CHECKPOINT_EVERY: u64 = 50_000;
        let mut since_checkpoint = 0u64;
        loop {
            if stop() {
                return Ok(false);
            }
            let outcome = self.rotate_batch(limit)?;
            since_checkpoint += outcome.moved as u64;
            progress(outcome.moved as u64);
            if since_checkpoint >= CHECKPOINT_EVERY {
                let moved = self.registry().rotation.as_ref().map_or(0, |r| r.moved);
                audit::append(
                    &*self.store,
                    unix_now(),
                    "rotation_checkpoint",
                    vec![self.key_id().to_string()],
                    BTreeMap::from([("moved".to_owned(), moved)]),
                )?;
                since_checkpoint = 0;
            }
            if outcome.complete {
                return Ok(true);
            }
        }
    }

    fn move_record(&self, table: Table, key: &[u8], old: &[u8]) -> Result<(), VaultError> {
        match table {
            Table::UserData => {
                let record: UserRecord = self.unseal(table, key, old)?;
                if record.user_id.is_empty() {
                    return Err(VaultError::Refused(
                        "a user record written before version 0.2 holds no sealed user id, so \
                         its blind index cannot be recomputed under the new key: the record is \
                         upgraded the next time that user enrols or is assessed; until then keep \
                         the previous key"
                            .into(),
                    ));
                }
                let new_index = self.keyring.current().blind_index(&record.user_id);
                let old_index: UserIndex = key
                    .try_into()
                    .map_err(|_| VaultError::Corrupt("a user key is not 32 bytes".into()))?;
                self.map_index(&old_index, &new_index)?;
                let sealed = self.seal_value(table, &new_index, &record)?;
                self.store
                    .compare_and_swap(table, &new_index, None, Some(sealed))?;
                self.store.compare_and_swap(table, key, Some(old), None)?;
            }
            Table::FeatureHistory => {
                let record: HistoryRecord = self.unseal(table, key, old)?;
                if key.len() != 40 {
                    return Err(VaultError::Corrupt("a history key is not 40 bytes".into()));
                }
                let new_index = self.mapped_index(&key[..32])?.ok_or_else(|| {
                    VaultError::Corrupt("a history record belongs to no user record".into())
                })?;
                let new_key = [new_index.as_slice(), &key[32..]].concat();
                let sealed = self.seal_value(table, &new_key, &record)?;
                self.store.insert(table, &new_key, sealed)?;
                self.store.compare_and_swap(table, key, Some(old), None)?;
            }
            Table::RiskLogs => {
                let mut log: RiskLogEntry = self.unseal(table, key, old)?;
                if let Some(new_index) = hex::decode(&log.user)
                    .ok()
                    .map(|old_index| self.mapped_index(&old_index))
                    .transpose()?
                    .flatten()
                {
                    log.user = hex::encode(new_index);
                }
                let sealed = self.seal_value(table, key, &log)?;
                self.store
                    .compare_and_swap(table, key, Some(old), Some(sealed))?;
            }
            Table::Meta | Table::Audit | Table::Replay => {}
        }
        Ok(())
    }

    /// Keys, states, progress and record counts per key: nothing secret.
    pub fn status(&self) -> Result<Status, VaultError> {
        let mut records: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((table, key), count) in self.counts_by_key()? {
            records
                .entry(table.name().to_owned())
                .or_default()
                .insert(key.to_string(), count);
        }
        let registry = self.registry_snapshot();
        Ok(Status {
            current_key: self.key_id().to_string(),
            keys: registry.keys,
            rotation: registry.rotation,
            records,
        })
    }

    /// Records that a rotation would move, per table (`db rotate --dry-run`).
    pub fn pending_moves(&self) -> Result<BTreeMap<String, u64>, VaultError> {
        let current = self.key_id();
        let mut pending: BTreeMap<String, u64> =
            ORDER.iter().map(|t| (t.name().to_owned(), 0)).collect();
        for ((table, key), count) in self.counts_by_key()? {
            if key != current {
                *pending.entry(table.name().to_owned()).or_default() += count;
            }
        }
        Ok(pending)
    }

    /// Decrypts every record, checks none is under an old key and that no table has fewer
    /// records than when the rotation began. A pass is recorded in the registry and the
    /// audit log.
    pub fn verify_rotation(&self) -> Result<VerifyReport, VaultError> {
        let mut problems = Vec::new();
        let counts = match self.verify_all() {
            Ok(TableCounts {
                user_data,
                feature_history,
                risk_logs,
            }) => BTreeMap::from([
                ("user_data".to_owned(), user_data as u64),
                ("feature_history".to_owned(), feature_history as u64),
                ("risk_logs".to_owned(), risk_logs as u64),
            ]),
            Err(e) => {
                problems.push(format!("a record does not decrypt: {e}"));
                BTreeMap::new()
            }
        };
        let current = self.key_id();
        let under_old_keys: u64 = self
            .counts_by_key()?
            .iter()
            .filter(|((_, key), _)| *key != current)
            .map(|(_, n)| n)
            .sum();
        if under_old_keys > 0 {
            problems.push(format!(
                "{under_old_keys} records are still under an old key: let the rotation finish"
            ));
        }
        let rotation = self.registry_snapshot().rotation;
        let at_start = rotation.as_ref().map(|r| r.counts_at_start.clone());
        if let Some(at_start) = &at_start {
            for (table, before) in at_start {
                let now = counts.get(table).copied().unwrap_or(0);
                if now < *before {
                    problems.push(format!(
                        "{table} holds {now} records, fewer than the {before} when rotation began"
                    ));
                }
            }
        }
        if rotation.as_ref().is_some_and(|r| r.completed_at.is_none()) {
            problems.push("the rotation has not completed".into());
        }
        let report = VerifyReport {
            counts,
            counts_at_rotation_start: at_start,
            under_old_keys,
            problems,
        };
        let event = if report.passed() {
            "verify_passed"
        } else {
            "verify_failed"
        };
        if report.passed()
            && let Some(rotation) = self.registry().rotation.as_mut()
        {
            rotation.verified_at = Some(unix_now());
        }
        if report.passed() {
            self.save_registry()?;
        }
        audit::append(
            &*self.store,
            unix_now(),
            event,
            vec![current.to_string()],
            report.counts.clone(),
        )?;
        self.flush()?;
        Ok(report)
    }

    /// Retires a decrypt-only key after a verification that passes now: it is refused from
    /// then on, even if supplied, and its canary and the index map are removed. Retiring a
    /// retired key again is a no-op.
    pub fn retire_key(&self, id: KeyId) -> Result<(), VaultError> {
        match self.registry().state(id) {
            Some(KeyState::DecryptOnly) => {}
            Some(KeyState::Active) => {
                return Err(VaultError::Refused(format!(
                    "key {id} is the active key: rotate to a new key first"
                )));
            }
            // Re-running after success changes nothing.
            Some(KeyState::Retired) => return Ok(()),
            None => {
                return Err(VaultError::Refused(format!(
                    "key {id} is not a key of this database"
                )));
            }
        }
        let report = self.verify_rotation()?;
        if !report.passed() {
            return Err(VaultError::Refused(format!(
                "key {id} cannot be retired until `tee-risk db verify` passes: {}",
                report.problems.join("; ")
            )));
        }
        self.registry().set_state(id, KeyState::Retired, unix_now());
        self.save_registry()?;
        self.store
            .remove(Table::Meta, format!("canary/{id}").as_bytes())?;
        for (key, _) in self.store.scan(Table::Meta)? {
            if key.starts_with(INDEX_MAP_PREFIX) {
                self.store.remove(Table::Meta, &key)?;
            }
        }
        audit::append(
            &*self.store,
            unix_now(),
            "key_retired",
            vec![id.to_string()],
            BTreeMap::new(),
        )?;
        self.flush()?;
        Ok(())
    }
}

/// Cursor value of a table swept to its end.
const DONE: &[u8] = b"\xff\xffdone";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::keys::MasterKey;
    use crate::store::registry::KeyState;
    use crate::store::{OpenMode, SledStore, Store};

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    fn open(
        dir: &std::path::Path,
        current: u8,
        previous: &[u8],
        mode: OpenMode,
    ) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        let previous: Vec<MasterKey> = previous.iter().map(|b| key(*b)).collect();
        Vault::open_keyring(store, &key(current), &previous, mode)
    }

    use crate::store::vault::sample_log as log;

    /// Users u0..u{n}, each with one template, one accepted assessment (log + history), and
    /// one assessment of an id that never enrolled.
    fn seed(dir: &std::path::Path, master: u8, users: usize) {
        let vault = open(dir, master, &[], OpenMode::Write).unwrap();
        for i in 0..users {
            let id = format!("u{i}");
            let user = vault.user(&id);
            vault.enrol(&user, &id, &[i as f32, 1.0], 1, 5).unwrap();
            let hex_index = hex::encode(user.current());
            vault
                .record_assessment(user.current(), &log(&format!("r{i}"), &hex_index), true)
                .unwrap();
        }
        let stranger = vault.user("never-enrolled");
        vault
            .record_assessment(
                stranger.current(),
                &log("r-stranger", &hex::encode(stranger.current())),
                false,
            )
            .unwrap();
        vault.flush().unwrap();
    }

    fn rotate_all(vault: &Vault) {
        while !vault.rotate_batch(7).unwrap().complete {}
    }

    #[test]
    fn rotation_moves_and_reindexes_every_record() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 20);
        let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
        assert!(vault.rotation_pending());
        assert_eq!(
            vault.pending_moves().unwrap(),
            BTreeMap::from([
                ("user_data".to_owned(), 20),
                ("feature_history".to_owned(), 20),
                ("risk_logs".to_owned(), 21),
            ])
        );
        // Readable under either key while the rotation runs.
        let before = vault.templates(&vault.user("u3"), "u3").unwrap();
        assert_eq!(before.len(), 1);
        rotate_all(&vault);
        assert!(!vault.rotation_pending());
        assert_eq!(vault.pending_moves().unwrap().values().sum::<u64>(), 0);
        drop(vault);

        // The new key alone now opens everything, under the new indexes.
        let vault = open(dir.path(), 2, &[], OpenMode::Write).unwrap();
        let counts = vault.verify_all().unwrap();
        assert_eq!(
            (counts.user_data, counts.feature_history, counts.risk_logs),
            (20, 20, 21)
        );
        for i in 0..20 {
            let id = format!("u{i}");
            let user = vault.user(&id);
            let templates = vault.templates(&user, &id).unwrap();
            assert_eq!(&templates[0][..], &[i as f32, 1.0]);
            let mut history_key = user.current().to_vec();
            let prefix_hits = vault
                .store
                .scan(Table::FeatureHistory)
                .unwrap()
                .into_iter()
                .filter(|(k, _)| k.starts_with(&history_key))
                .count();
            assert_eq!(prefix_hits, 1, "history of {id} under its new index");
            history_key.clear();
        }
        let logs = vault.risk_logs().unwrap();
        let u5 = hex::encode(vault.user("u5").current());
        assert!(logs.iter().any(|l| l.rid == "r5" && l.user == u5));
        assert!(vault.verify_rotation().unwrap().passed());
        vault.retire_key(key(1).key_id()).unwrap();
        assert_eq!(
            vault.registry_snapshot().state(key(1).key_id()),
            Some(KeyState::Retired)
        );
        let events: Vec<String> = audit::verify(&*vault.store)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events,
            [
                "rotation_started",
                "rotation_completed",
                "verify_passed",
                "verify_passed",
                "key_retired"
            ]
        );
    }

    #[test]
    fn enrolment_during_rotation_moves_the_user_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 10);
        let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
        let user = vault.user("u4");
        assert_eq!(vault.enrol(&user, "u4", &[9.0, 9.0], 2, 5).unwrap(), 2);
        rotate_all(&vault);
        let templates = vault.templates(&vault.user("u4"), "u4").unwrap();
        assert_eq!(templates.len(), 2);
        assert_eq!(vault.verify_all().unwrap().user_data, 10, "no duplicate");
    }

    #[test]
    fn a_restart_resumes_from_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 30);
        let progress = {
            let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
            for _ in 0..3 {
                vault.rotate_batch(5).unwrap();
            }
            vault.registry_snapshot().rotation.unwrap()
        };
        // (Moved users get new keys that may sort after the cursor and are visited again,
        // already under the new key: at most 15 of the 15 visited records moved.)
        assert!((1..=15).contains(&progress.moved));
        let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
        assert_eq!(vault.registry_snapshot().rotation.unwrap(), progress);
        rotate_all(&vault);
        let counts = vault.verify_all().unwrap();
        assert_eq!(
            (counts.user_data, counts.feature_history, counts.risk_logs),
            (30, 30, 31)
        );
    }

    #[test]
    fn keys_are_checked_against_the_registry_and_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let message = |r: Result<Vault, VaultError>| r.err().expect("must refuse").to_string();
        assert!(
            message(open(dir.path(), 1, &[2], OpenMode::Write)).contains("the database is new")
        );
        seed(dir.path(), 1, 3);
        let id = |b: u8| key(b).key_id().to_string();

        let unknown = message(open(dir.path(), 3, &[], OpenMode::Write));
        assert!(
            unknown.contains("does not match this database"),
            "{unknown}"
        );
        assert!(unknown.contains("DB_MASTER_KEY_PREVIOUS") && unknown.contains(&id(1)));
        // A previous key that is not the active one does not vouch for a new current key.
        let stranger = message(open(dir.path(), 3, &[4], OpenMode::Write));
        assert!(stranger.contains(&id(1)), "{stranger}");
        let unregistered = message(open(dir.path(), 1, &[4], OpenMode::Write));
        assert!(unregistered.contains("never used") && unregistered.contains(&id(4)));

        // Rotation 1 → 2 begins; records stay under 1 until moved.
        let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
        vault.rotate_batch(2).unwrap();
        drop(vault);
        let missing = message(open(dir.path(), 2, &[], OpenMode::Write));
        assert!(
            missing.contains("still sealed under master key") && missing.contains(&id(1)),
            "{missing}"
        );
        let replaced = message(open(dir.path(), 1, &[2], OpenMode::Write));
        assert!(replaced.contains("older key") && replaced.contains(&id(2)));

        let vault = open(dir.path(), 2, &[1], OpenMode::Write).unwrap();
        let early = vault.retire_key(key(1).key_id()).unwrap_err().to_string();
        assert!(early.contains("cannot be retired"), "{early}");
        rotate_all(&vault);
        vault.retire_key(key(1).key_id()).unwrap();
        // A record sealed under the retired key (an old backup restored into it).
        plant_record(&vault, 1, Table::RiskLogs);
        drop(vault);
        let retired = message(open(dir.path(), 2, &[1], OpenMode::Write));
        assert!(retired.contains("was retired") && retired.contains(&id(1)));
        let under_retired = message(open(dir.path(), 2, &[], OpenMode::Write));
        assert!(
            under_retired.contains("which was retired") && under_retired.contains("risk_logs"),
            "{under_retired}"
        );
    }

    /// Writes a record sealed under master key `byte` behind the vault's back.
    fn plant_record(vault: &Vault, byte: u8, table: Table) {
        let salt: [u8; 32] = vault
            .store
            .get(Table::Meta, b"salt")
            .unwrap()
            .unwrap()
            .try_into()
            .unwrap();
        let keys = crate::store::keys::TableKeys::derive(&key(byte), &salt).unwrap();
        let sealed = record::seal(
            keys.cipher(table),
            keys.key_id(),
            table,
            b"planted",
            zeroize::Zeroizing::new(b"{}".to_vec()),
        )
        .unwrap();
        vault.store.insert(table, b"planted", sealed).unwrap();
        vault.flush().unwrap();
    }

    #[test]
    fn records_under_an_unknown_key_or_a_broken_canary_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 2);
        let vault = open(dir.path(), 1, &[], OpenMode::Write).unwrap();
        plant_record(&vault, 9, Table::UserData);
        drop(vault);
        let err = open(dir.path(), 1, &[], OpenMode::Write)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("never registered") && err.contains("user_data"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 2);
        {
            let store = SledStore::open(dir.path()).unwrap();
            let canary = format!("canary/{}", key(1).key_id());
            let mut sealed = store.get(Table::Meta, canary.as_bytes()).unwrap().unwrap();
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            store
                .insert(Table::Meta, canary.as_bytes(), sealed)
                .unwrap();
            store.flush().unwrap();
        }
        let err = open(dir.path(), 1, &[], OpenMode::Write)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("canary of master key"), "{err}");
    }

    #[test]
    fn inspecting_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1, 4);
        let vault = open(dir.path(), 2, &[1], OpenMode::Inspect).unwrap();
        assert_eq!(vault.pending_moves().unwrap().values().sum::<u64>(), 13);
        assert!(!vault.rotation_pending());
        drop(vault);
        // Still the original keyring: key 1 alone opens it.
        open(dir.path(), 1, &[], OpenMode::Write).unwrap();
    }
}

#[cfg(test)]
mod legacy_tests {
    use std::sync::Arc;

    use zeroize::Zeroizing;

    use super::*;
    use crate::store::keys::{MasterKey, TableKeys};
    use crate::store::{OpenMode, SledStore, Store};

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    /// A database as version 0.1 wrote it: salt, one `canary`, a user record without a
    /// sealed user id (templates as JSON arrays).
    fn legacy_database(dir: &std::path::Path) -> [u8; 32] {
        let store = SledStore::open(dir).unwrap();
        let salt = [7u8; 32];
        let keys = TableKeys::derive(&key(1), &salt).unwrap();
        let seal = |table: Table, record_key: &[u8], plain: &[u8]| {
            record::seal(
                keys.cipher(table),
                keys.key_id(),
                table,
                record_key,
                Zeroizing::new(plain.to_vec()),
            )
            .unwrap()
        };
        let index = keys.blind_index("old-user");
        store
            .insert(
                Table::Meta,
                b"canary",
                seal(Table::Meta, b"canary", b"tee-risk canary v1"),
            )
            .unwrap();
        let user = br#"{"templates":[{"features":[0.6,0.8],"enrolled_at":1}]}"#;
        store
            .insert(Table::UserData, &index, seal(Table::UserData, &index, user))
            .unwrap();
        store.insert(Table::Meta, b"salt", salt.to_vec()).unwrap();
        store.flush().unwrap();
        index
    }

    fn open(dir: &std::path::Path, current: u8, previous: &[u8]) -> Result<Vault, VaultError> {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        let previous: Vec<MasterKey> = previous.iter().map(|b| key(*b)).collect();
        Vault::open_keyring(store, &key(current), &previous, OpenMode::Write)
    }

    #[test]
    fn a_version_0_1_database_opens_upgrades_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        legacy_database(dir.path());
        let vault = open(dir.path(), 1, &[]).unwrap();
        assert_eq!(vault.registry_snapshot().active(), Some(key(1).key_id()));
        drop(vault);

        // Rotating before the user was seen stops with a message saying why.
        let vault = open(dir.path(), 2, &[1]).unwrap();
        let err = vault.rotate_batch(10).unwrap_err().to_string();
        assert!(err.contains("no sealed user id"), "{err}");
        // An assessment reads the templates and upgrades the record on the way.
        let templates = vault
            .templates(&vault.user("old-user"), "old-user")
            .unwrap();
        assert_eq!(&templates[0][..], &[0.6, 0.8]);
        while !vault.rotate_batch(10).unwrap().complete {}
        drop(vault);
        let vault = open(dir.path(), 2, &[]).unwrap();
        let templates = vault
            .templates(&vault.user("old-user"), "old-user")
            .unwrap();
        assert_eq!(&templates[0][..], &[0.6, 0.8]);
        assert_eq!(vault.verify_all().unwrap().user_data, 1);
    }
}

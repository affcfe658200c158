//! What operators ask of a database: `db status` (keys, progress, records per key), `db
//! verify` (every record decrypts, nothing left under an old key, no table shrank) and
//! `db retire-key`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::layout::{canary_key, index_map_old};
use super::mark::MarkCheck;
use super::records::{HistoryRecord, RiskLogEntry, TableCounts, UserRecord};
use super::rotation::ORDER;
use super::{Vault, VaultError};
use crate::obs::unix_now;
use crate::store::Table;
use crate::store::audit;
use crate::store::keys::KeyId;
use crate::store::registry::{KeyEntry, KeyState, Rotation};

/// `db status`: keys, progress and counts, with no secret in it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub current_key: String,
    pub keys: Vec<KeyEntry>,
    pub rotation: Option<Rotation>,
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

impl Vault {
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

    /// Decrypts every record of every data table and counts them; fails on the first record
    /// that does not open.
    pub fn verify_all(&self) -> Result<TableCounts, VaultError> {
        let mut counts = TableCounts::default();
        for (key, sealed) in self.store().scan(Table::UserData)? {
            let _: UserRecord = self.unseal(Table::UserData, &key, &sealed)?;
            counts.user_data += 1;
        }
        for (key, sealed) in self.store().scan(Table::FeatureHistory)? {
            let _: HistoryRecord = self.unseal(Table::FeatureHistory, &key, &sealed)?;
            counts.feature_history += 1;
        }
        for (key, sealed) in self.store().scan(Table::RiskLogs)? {
            let _: RiskLogEntry = self.unseal(Table::RiskLogs, &key, &sealed)?;
            counts.risk_logs += 1;
        }
        Ok(counts)
    }

    /// Decrypts every record, checks none is under an old key and that no table has fewer
    /// records than when the rotation began. A pass is recorded in the registry and the
    /// audit log.
    pub fn verify_rotation(&self) -> Result<VerifyReport, VaultError> {
        self.verify_with_problems(Vec::new())
    }

    /// [`Vault::verify_rotation`], and the store against the high-water mark in `dir`: a
    /// store behind it fails the verification (and the audit log records the failure).
    /// [`Vault::verify_with_mark`] for a store that keeps no mark (PostgreSQL).
    pub fn verify(&self) -> Result<VerifyReport, VaultError> {
        self.verify_with_problems(Vec::new())
    }

    pub fn verify_with_mark(&self, dir: &Path) -> Result<(VerifyReport, MarkCheck), VaultError> {
        let mark = self.check_high_water_mark(dir)?;
        let problems = mark
            .behind
            .iter()
            .map(|behind| format!("the database is behind its high-water mark: {behind}"))
            .collect();
        Ok((self.verify_with_problems(problems)?, mark))
    }

    fn verify_with_problems(&self, mut problems: Vec<String>) -> Result<VerifyReport, VaultError> {
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
        if let (Some(at_start), Some(rotation)) = (&at_start, &rotation) {
            for (table, before) in at_start {
                let now = counts.get(table).copied().unwrap_or(0);
                let erased = rotation.erased.get(table).copied().unwrap_or(0);
                if now + erased < *before {
                    problems.push(format!(
                        "{table} holds {now} records ({erased} erased since), fewer than the \
                         {before} when rotation began"
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
        self.record_verification(&report)?;
        Ok(report)
    }

    /// Records a verification's outcome: the audit log, and for one that passed, the
    /// rotation's verification time (what `retire-key` requires). `db verify` verifies a
    /// copy of a sled store (nothing written to a damaged one) and records a pass here, on
    /// the store itself: the copy was taken under the store's lock, so it holds for both.
    pub fn record_verification(&self, report: &VerifyReport) -> Result<(), VaultError> {
        let current = self.key_id();
        let event = if report.passed() {
            "verify_passed"
        } else {
            "verify_failed"
        };
        if report.passed() {
            self.update_registry(&mut |registry| {
                if let Some(rotation) = registry.rotation.as_mut() {
                    rotation.verified_at = Some(unix_now());
                }
            })?;
        }
        audit::append(
            self.store(),
            unix_now(),
            event,
            vec![current.to_string()],
            report.counts.clone(),
        )?;
        self.flush().map(|_| ())
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
        self.update_registry(&mut |registry| {
            registry.set_state(id, KeyState::Retired, unix_now())
        })?;
        self.store().remove(Table::Meta, &canary_key(id))?;
        for (key, _) in self.store().scan(Table::Meta)? {
            if index_map_old(&key).is_some() {
                self.store().remove(Table::Meta, &key)?;
            }
        }
        audit::append(
            self.store(),
            unix_now(),
            "key_retired",
            vec![id.to_string()],
            BTreeMap::new(),
        )?;
        self.flush()?;
        Ok(())
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

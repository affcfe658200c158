//! `db salvage`: what can still be read of a damaged database, copied into a new store.
//!
//! Only what proves itself is kept: a data record whose seal opens under the key its header
//! names, for its own table and key (the seal's associated data), and parses; the audit log
//! up to its first broken entry (a chain, cut where it stops being one); the meta records
//! that the keys are derived from and checked against. The source is only read.

use std::collections::BTreeMap;

use serde::Serialize;

use super::layout::split_history_key;
use super::mark::COMMIT_SEQ_KEY;
use super::records::{HistoryRecord, RiskLogEntry, UserRecord};
use super::{Vault, VaultError};
use crate::store::audit;
use crate::store::{Store, Table};

/// Meta records a salvaged store does not take over: the commit count (the new store keeps
/// its own, under its own mark) and a rotation lease (held by a process of the old store).
const META_NOT_KEPT: [&[u8]; 2] = [COMMIT_SEQ_KEY, super::layout::META_ROTATION_LEASE];

/// What a salvage kept and left behind, per table.
#[derive(Debug, Default, Serialize)]
pub struct SalvageReport {
    /// Records copied, per table.
    pub kept: BTreeMap<String, u64>,
    /// Records found but not copied (they did not open, or are not what their table holds).
    pub dropped: BTreeMap<String, u64>,
    /// Why, for the first few dropped records and for the audit log's cut.
    pub problems: Vec<String>,
}

/// Reasons listed in a report at most; the counts hold the rest.
const MAX_PROBLEMS: usize = 20;

impl SalvageReport {
    fn keep(&mut self, table: Table) {
        *self.kept.entry(table.name().to_owned()).or_default() += 1;
    }

    fn drop_record(&mut self, table: Table, why: String) {
        *self.dropped.entry(table.name().to_owned()).or_default() += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(format!("{}: {why}", table.name()));
        }
    }

    /// Whether anything found was left behind.
    pub fn lost_anything(&self) -> bool {
        self.dropped.values().any(|&n| n > 0)
    }

    /// The counts as audit entry counts (`kept_<table>`, `dropped_<table>`).
    pub fn audit_counts(&self) -> BTreeMap<String, u64> {
        let kept = self.kept.iter().map(|(t, n)| (format!("kept_{t}"), *n));
        let dropped = self
            .dropped
            .iter()
            .map(|(t, n)| (format!("dropped_{t}"), *n));
        kept.chain(dropped).collect()
    }
}

impl Vault {
    /// Copies into `to` (a new, empty store) every record of this database that proves
    /// itself, and makes `to` durable. Ids drawn in `to` afterwards come after every copied
    /// one. The change feed is not copied: it is for replicas sharing one store, and a new
    /// store starts its own.
    pub fn salvage_into(&self, to: &dyn Store) -> Result<SalvageReport, VaultError> {
        let mut report = SalvageReport::default();
        for table in [Table::UserData, Table::FeatureHistory, Table::RiskLogs] {
            report.kept.insert(table.name().to_owned(), 0);
            report.dropped.insert(table.name().to_owned(), 0);
        }
        self.store().visit(Table::Meta, &mut |key, value| {
            if !META_NOT_KEPT.contains(&key) {
                to.insert(Table::Meta, key, value.to_vec())?;
            }
            Ok(())
        })?;
        for table in Table::DATA {
            self.store().visit(table, &mut |key, sealed| {
                match self.opens_as_its_table(table, key, sealed) {
                    Ok(()) => {
                        to.insert(table, key, sealed.to_vec())?;
                        report.keep(table);
                    }
                    Err(e) => report.drop_record(table, e.to_string()),
                }
                Ok(())
            })?;
        }
        let (entries, broken) =
            audit::intact_prefix(self.store()).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        let audit_kept = entries.len();
        for (key, value) in self.store().scan_after(Table::Audit, None, audit_kept)? {
            to.insert(Table::Audit, &key, value)?;
            report.keep(Table::Audit);
        }
        if let Some(broken) = broken {
            let after = self.store().len(Table::Audit).saturating_sub(audit_kept);
            *report.dropped.entry("audit".to_owned()).or_default() += after as u64;
            report
                .problems
                .push(format!("audit log cut at its first broken entry: {broken}"));
        }
        self.store().visit(Table::Replay, &mut |key, value| {
            report.keep(Table::Replay);
            to.insert(Table::Replay, key, value.to_vec())
        })?;
        to.skip_ids_through(highest_id(to)?)?;
        to.flush()?;
        Ok(report)
    }

    /// Records in this (salvaged) store's audit log that it was built by a salvage, with
    /// what was kept and left behind ([`SalvageReport::audit_counts`], and the source's
    /// mark). Not durable until the next flush.
    pub fn record_salvage(&self, counts: BTreeMap<String, u64>) -> Result<(), VaultError> {
        audit::append(
            self.store(),
            crate::obs::unix_now(),
            "salvaged",
            vec![self.key_id().to_string()],
            counts,
        )?;
        Ok(())
    }

    /// Whether a data record opens and parses as what its table holds.
    fn opens_as_its_table(
        &self,
        table: Table,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<(), VaultError> {
        match table {
            Table::UserData => self.unseal::<UserRecord>(table, key, sealed).map(drop),
            Table::FeatureHistory => self.unseal::<HistoryRecord>(table, key, sealed).map(drop),
            Table::RiskLogs => self.unseal::<RiskLogEntry>(table, key, sealed).map(drop),
            other => Err(VaultError::Corrupt(format!(
                "{} is not a data table",
                other.name()
            ))),
        }
    }
}

/// The greatest id the vault drew in `store` ([`Store::next_id`]): risk logs are keyed by
/// one, feature history by a user's index and one, the change feed by one.
pub(super) fn highest_id(store: &dyn Store) -> Result<u64, VaultError> {
    let id_of = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes);
    let mut highest = 0u64;
    for table in [Table::RiskLogs, Table::Changes] {
        if let Some((key, _)) = store.last(table)? {
            highest = highest.max(id_of(&key));
        }
    }
    store.visit(Table::FeatureHistory, &mut |key, _| {
        if let Some((_, seq)) = split_history_key(key) {
            highest = highest.max(id_of(seq));
        }
        Ok(())
    })?;
    Ok(highest)
}

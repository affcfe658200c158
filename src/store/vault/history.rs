//! Assessments: the sealed risk log entry of every answer, and the accepted probes kept per
//! user for drift and replay detection.

use zeroize::Zeroizing;

use super::layout::{history_key, is_history_key_of};
use super::records::{HistoryRecord, RiskLogEntry};
use super::{UserIndex, UserRef, Vault, VaultError};
use crate::store::{KeyValue, StoreError, Table};

/// Accepted probes (unit vectors), newest first.
pub type Probes = Vec<Zeroizing<Vec<f32>>>;

impl Vault {
    /// The user's accepted probes of `face_model` among their `limit` most recent (unit
    /// vectors), newest first, from what the scans under each of the user's indexes found
    /// (under every key's index: a rotation may not have moved them yet). While a user moves
    /// to a new face model the older model's probes count against `limit` and are left out:
    /// fewer to compare with, never another model's vectors.
    pub(super) fn probes_among(
        &self,
        user: &UserRef,
        found: Vec<Vec<KeyValue>>,
        face_model: &str,
        limit: usize,
    ) -> Result<Probes, VaultError> {
        let mut probes = Vec::new();
        for (index, rows) in user.indexes.iter().zip(found) {
            for (key, sealed) in rows {
                if !is_history_key_of(&key, index) {
                    continue;
                }
                let mut entry: HistoryRecord = self.unseal(Table::FeatureHistory, &key, &sealed)?;
                if entry.face_model == face_model {
                    probes.push(Zeroizing::new(std::mem::take(&mut entry.features)));
                }
            }
        }
        probes.truncate(limit);
        Ok(probes)
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
        let ids = self.store().next_ids(if accepted { 2 } else { 1 })?;
        self.record_assessment_with_ids(user, log, accepted, &ids)
    }

    /// [`Vault::record_assessment`] under ids drawn before (with the request's reads:
    /// [`Vault::enrolment_and_recent`]): the first for the log, the second for the history
    /// entry of an accepted probe; an id left over is simply never used.
    pub fn record_assessment_with_ids(
        &self,
        user: &UserIndex,
        log: &RiskLogEntry,
        accepted: bool,
        ids: &[u64],
    ) -> Result<(), VaultError> {
        // Both records are written with the group commit's flush (`insert_at_flush`): the
        // request answers only after that flush, and nothing reads them back before it.
        let (log_id, history_id) = match (ids, accepted) {
            ([log, ..], false) => (*log, None),
            ([log, history, ..], true) => (*log, Some(*history)),
            _ => {
                return Err(
                    StoreError::Backend("too few ids for the assessment's records".into()).into(),
                );
            }
        };
        let log_key = log_id.to_be_bytes();
        let log_record = self.seal_value(Table::RiskLogs, &log_key, log)?;
        self.store()
            .insert_at_flush(Table::RiskLogs, &log_key, log_record)?;
        self.counted(Table::RiskLogs, 1);
        if let Some(id) = history_id {
            let key = history_key(user, id);
            let entry = HistoryRecord {
                features: log.features.clone(),
                at: log.at,
                rid: log.rid.clone(),
                face_model: log.face_model.clone(),
            };
            let sealed = self.seal_value(Table::FeatureHistory, &key, &entry)?;
            self.store()
                .insert_at_flush(Table::FeatureHistory, &key, sealed)?;
            self.counted(Table::FeatureHistory, 1);
        }
        Ok(())
    }

    /// Logs an identification (sealed like an assessment; no feature history).
    pub fn record_identification(&self, log: &RiskLogEntry) -> Result<(), VaultError> {
        let log_key = self.store().next_id()?.to_be_bytes();
        let log_record = self.seal_value(Table::RiskLogs, &log_key, log)?;
        self.store()
            .insert_at_flush(Table::RiskLogs, &log_key, log_record)?;
        self.counted(Table::RiskLogs, 1);
        Ok(())
    }

    /// Every risk log entry, oldest first (for audits and tests).
    pub fn risk_logs(&self) -> Result<Vec<RiskLogEntry>, VaultError> {
        self.store()
            .scan(Table::RiskLogs)?
            .into_iter()
            .map(|(key, sealed)| self.unseal(Table::RiskLogs, &key, &sealed))
            .collect()
    }
}

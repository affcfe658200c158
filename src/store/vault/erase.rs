//! Erasure (`DELETE /v1/users`): everything kept about a user goes, under every key's index
//! and every older index a rotation mapped to theirs; risk logs keep the decision only.

use zeroize::Zeroize;

use super::layout::{index_map_old, is_history_key_of};
use super::records::{ERASED_USER, Erased, RiskLogEntry, UserRecord};
use super::{UserRef, Vault, VaultError};
use crate::store::{StoreError, Table};

/// Passes an erasure makes before it gives up with a 503 (each pass after the first
/// means a concurrent write changed the user's records: in practice one or two).
const MAX_PASSES: usize = 16;

/// What an erasure pass found but could not remove, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Unsettled {
    user_data: usize,
    history: usize,
}

/// Adds `index` to `indexes` unless it is there (passes find the same ones again).
fn add_index(indexes: &mut Vec<Vec<u8>>, index: &[u8]) {
    if !indexes.iter().any(|known| known[..] == *index) {
        indexes.push(index.to_vec());
    }
}

impl Vault {
    /// Erases a user: the record holding their templates (under every key's blind index),
    /// their feature history (also under older indexes that a rotation mapped to theirs),
    /// those index mappings, and in their risk log entries everything but the decision.
    /// Scans the index mappings and the risk logs (which are not keyed by user): cost grows
    /// with the database, which suits a rare operation. Not durable until [`Vault::flush`].
    /// `user_id` is named in the change feed, so that other replicas drop the user from
    /// their galleries.
    pub fn erase_user(&self, user: &UserRef, user_id: &str) -> Result<Erased, VaultError> {
        // What earlier requests wrote for the next flush (their logs and history) lands
        // first, so that the erasure finds it.
        self.flush()?;
        let mut erased = Erased::default();
        let mut indexes: Vec<Vec<u8>> = Vec::new();
        // Records a pass found but could not remove were moved or changed meanwhile (by the
        // rotation's sweep or an enrolment, possibly on another replica); the next pass
        // finds them again. A pass that removes all it found has seen everything.
        let mut unsettled = Unsettled::default();
        for _ in 0..MAX_PASSES {
            unsettled = self.erase_pass(user, &mut indexes, unsettled, &mut erased)?;
            if unsettled == Unsettled::default() {
                self.scrub_risk_logs(&indexes, &mut erased)?;
                self.note_change(user_id, crate::obs::unix_now())?;
                return Ok(erased);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the user's records changed under each of {MAX_PASSES} attempts to erase them"
        ))
        .into())
    }

    /// One pass of an erasure: removes the user's record and history under every index
    /// (adding index map entries that name theirs to `indexes`, and removing them), and
    /// returns what it found but could not remove. Reads go from the oldest index to the
    /// current one: a move only goes that way, and takes its source away in the same write
    /// ([`crate::store::Store::move_value`]), so a record found nowhere was not in flight.
    fn erase_pass(
        &self,
        user: &UserRef,
        indexes: &mut Vec<Vec<u8>>,
        told: Unsettled,
        erased: &mut Erased,
    ) -> Result<Unsettled, VaultError> {
        for (key, sealed) in self.store().scan(Table::Meta)? {
            let Some(old) = index_map_old(&key) else {
                continue;
            };
            let new: Vec<u8> = self.unseal(Table::Meta, &key, &sealed)?;
            if user.indexes.iter().any(|index| index[..] == new[..]) {
                add_index(indexes, old);
                self.store().remove(Table::Meta, &key)?;
            }
        }
        for index in user.indexes.iter().rev() {
            add_index(indexes, index);
        }
        let mut records = Vec::new();
        for index in user.indexes.iter().rev() {
            if let Some(sealed) = self.store().get(Table::UserData, index)? {
                records.push((index.to_vec(), sealed));
            }
        }
        let mut history = Vec::new();
        for index in indexes.iter() {
            for (key, value) in
                self.store()
                    .scan_prefix_last(Table::FeatureHistory, index, usize::MAX)?
            {
                if is_history_key_of(&key, index) {
                    history.push((key, value));
                }
            }
        }
        // What goes, told first: a rotation in progress is told how many records an
        // erasure removes before they go (see `Rotation::erased`); what an earlier pass
        // told and could not remove is among what this one found.
        self.note_erasure_in_rotation(
            records.len().saturating_sub(told.user_data),
            history.len().saturating_sub(told.history),
        )?;
        let mut unsettled = Unsettled::default();
        for (index, sealed) in &records {
            let record: UserRecord = self.unseal(Table::UserData, index, sealed)?;
            if self
                .store()
                .compare_and_swap(Table::UserData, index, Some(sealed), None)?
            {
                self.counted(Table::UserData, -1);
                erased.templates += record.templates.len();
            } else {
                unsettled.user_data += 1;
            }
        }
        for (key, value) in &history {
            if self
                .store()
                .compare_and_swap(Table::FeatureHistory, key, Some(value), None)?
            {
                self.counted(Table::FeatureHistory, -1);
                erased.history += 1;
            } else {
                unsettled.history += 1;
            }
        }
        Ok(unsettled)
    }

    /// Keeps only the decision in the risk log entries that name one of `indexes`.
    fn scrub_risk_logs(&self, indexes: &[Vec<u8>], erased: &mut Erased) -> Result<(), VaultError> {
        let named: Vec<String> = indexes.iter().map(hex::encode).collect();
        for (key, sealed) in self.store().scan(Table::RiskLogs)? {
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
            self.store().insert(Table::RiskLogs, &key, scrubbed)?;
            erased.risk_logs_scrubbed += 1;
        }
        Ok(())
    }

    /// Adds records an erasure is about to remove to the rotation's tally, if a rotation is
    /// recorded (until the next one, `db verify` compares counts with its start).
    fn note_erasure_in_rotation(&self, user_data: usize, history: usize) -> Result<(), VaultError> {
        if self.registry().rotation.is_none() {
            return Ok(());
        }
        self.update_registry(&mut |registry| {
            if let Some(rotation) = registry.rotation.as_mut() {
                for (table, n) in [
                    (Table::UserData, user_data),
                    (Table::FeatureHistory, history),
                ] {
                    *rotation.erased.entry(table.name().to_owned()).or_default() += n as u64;
                }
            }
        })
    }
}

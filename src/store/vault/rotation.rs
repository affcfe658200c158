//! Master-key rotation: re-encrypts every record sealed under an older key with the current
//! one, and re-indexes users (blind indexes are keyed from the master key), while requests go
//! on. Batches run in key order from a cursor kept in the sealed key registry; each batch is
//! flushed before the cursor moves, and every step is idempotent, so a process killed at any
//! point resumes where it stopped without losing or duplicating a record:
//!
//! 1. `user_data`: decrypt, compute the new index from the sealed user id, record
//!    old → new in the index map, then move the record to the new index in one write
//!    ([`crate::store::Store::move_value`]): only if the old copy is still the bytes read
//!    (an erasure since then must not be undone), and keeping a copy already at the new
//!    index (the same user, moved earlier or by an enrolment).
//! 2. `feature_history`: key old index ‖ seq becomes new index ‖ seq (seq is unique), moved
//!    the same way.
//! 3. `risk_logs`: same key, the user field mapped to the new index, replaced by
//!    compare-and-swap.
//!
//! When no record names an old key any more, the rotation is complete; the index map is
//! removed when the old key is retired.
//!
//! Replicas sharing one store sweep one at a time: the sweeper holds a lease in `meta`
//! (renewed with every batch, [`ROTATION_LEASE_SECS`] long), the others wait and serve
//! meanwhile (they read both keys). A sweeper that dies is replaced once its lease runs out;
//! the new one resumes from the cursor in the stored registry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layout::{META_ROTATION_LEASE, index_map_key, split_history_key, user_index};
use super::records::{HistoryRecord, RiskLogEntry, UserRecord};
use super::status::table_totals;
use super::{Vault, VaultError};
use crate::obs::unix_now;
use crate::store::{Moved, Table, audit, record};

/// Cursor value of a table swept to its end.
const DONE: &[u8] = b"\xff\xffdone";

/// Records visited per batch by the background rotation.
pub const DEFAULT_BATCH: usize = 512;

/// How long a hold on the rotation lasts without a batch renewing it; another process takes
/// the sweep over after that.
pub const ROTATION_LEASE_SECS: i64 = 10;

/// Who sweeps, until when (sealed in `meta`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lease {
    holder: String,
    until: i64,
}

/// One table's part of a batch.
struct Swept {
    visited: usize,
    moved: usize,
    /// The table was swept to its end.
    finished: bool,
}

/// What one call of [`Vault::rotate_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Records read.
    pub visited: usize,
    /// Records re-sealed under the current key.
    pub moved: usize,
    /// No record names an old key any more.
    pub complete: bool,
}

pub(super) const ORDER: [Table; 3] = [Table::UserData, Table::FeatureHistory, Table::RiskLogs];

impl Vault {
    /// A rotation has begun and not yet moved every record.
    pub fn rotation_pending(&self) -> bool {
        self.registry().rotation_pending()
    }

    /// Moves up to `limit` records (visited in key order from the cursor) under the current
    /// key, then flushes and advances the cursor.
    pub fn rotate_batch(&self, limit: usize) -> Result<BatchOutcome, VaultError> {
        let done = |visited, moved, complete| BatchOutcome {
            visited,
            moved,
            complete,
        };
        let rotation = match self.registry().rotation.clone() {
            Some(rotation) if rotation.completed_at.is_none() => rotation,
            _ => return Ok(done(0, 0, true)),
        };
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
                return Ok(done(visited, moved, false));
            }
            let swept = self.sweep_table(table, cursor.as_deref(), room)?;
            visited += swept.visited;
            moved += swept.moved;
            if !swept.finished {
                return Ok(done(visited, moved, false));
            }
        }
        Ok(done(visited, moved, self.finish_rotation()?))
    }

    /// Moves up to `room` records of `table` after `cursor` to the current key, then saves
    /// the cursor past them (durable moves first, then the cursor that skips them).
    fn sweep_table(
        &self,
        table: Table,
        cursor: Option<&[u8]>,
        room: usize,
    ) -> Result<Swept, VaultError> {
        let current = self.key_id();
        let batch = self.store().scan_after(table, cursor, room)?;
        let mut moved = 0;
        for (key, value) in &batch {
            if record::key_id_of(value).ok() != Some(current) {
                self.move_record(table, key, value)?;
                moved += 1;
            }
        }
        let finished = batch.len() < room;
        let next_cursor = match batch.last() {
            Some((key, _)) if !finished => hex::encode(key),
            _ => hex::encode(DONE),
        };
        self.flush()?;
        self.update_registry(&mut |registry| {
            if let Some(rotation) = registry.rotation.as_mut() {
                rotation
                    .cursor
                    .insert(table.name().to_owned(), next_cursor.clone());
                rotation.moved += moved as u64;
            }
        })?;
        self.flush()?;
        Ok(Swept {
            visited: batch.len(),
            moved,
            finished,
        })
    }

    /// After every table was swept once: completes the rotation if a recount finds nothing
    /// under an old key (writes during the sweep used the current key), else starts the
    /// sweep again. Returns whether it completed.
    fn finish_rotation(&self) -> Result<bool, VaultError> {
        let current = self.key_id();
        // Records waiting for the next flush (`Store::insert_at_flush`) are counted too.
        self.flush()?;
        let by_key = self.counts_by_key()?;
        let left: u64 = by_key
            .iter()
            .filter(|((_, key), _)| *key != current)
            .map(|(_, n)| n)
            .sum();
        if left > 0 {
            // Records written under an old key while the sweep ran (cannot happen with one
            // current key, but a restart could have raced): sweep again.
            self.update_registry(&mut |registry| {
                if let Some(rotation) = registry.rotation.as_mut() {
                    rotation.cursor.clear();
                }
            })?;
            self.flush()?;
            return Ok(false);
        }
        self.update_registry(&mut |registry| {
            if let Some(rotation) = registry.rotation.as_mut() {
                rotation.completed_at = Some(unix_now());
            }
        })?;
        audit::append(
            self.store(),
            unix_now(),
            "rotation_completed",
            vec![current.to_string()],
            table_totals(&by_key),
        )?;
        self.flush()?;
        Ok(true)
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
        let holder = hex::encode(
            crate::crypto::random_array::<16>().map_err(|e| VaultError::Corrupt(e.to_string()))?,
        );
        let mut since_checkpoint = 0u64;
        let mut holding = false;
        loop {
            if stop() {
                self.release_rotation_lease(&holder)?;
                return Ok(false);
            }
            if !self.hold_rotation_lease(&holder, unix_now())? {
                // Another process sweeps: wait, and stop waiting once it has finished.
                self.reload_registry()?;
                if !self.rotation_pending() {
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if !holding {
                tracing::info!("key rotation: this process sweeps (it holds the rotation lease)");
                holding = true;
            }
            // The stored cursor: a previous holder may have moved it on.
            self.reload_registry()?;
            let outcome = self.rotate_batch(limit)?;
            since_checkpoint += outcome.moved as u64;
            progress(outcome.moved as u64);
            if since_checkpoint >= CHECKPOINT_EVERY {
                let moved = self.registry().rotation.as_ref().map_or(0, |r| r.moved);
                audit::append(
                    self.store(),
                    unix_now(),
                    "rotation_checkpoint",
                    vec![self.key_id().to_string()],
                    BTreeMap::from([("moved".to_owned(), moved)]),
                )?;
                since_checkpoint = 0;
            }
            if outcome.complete {
                self.release_rotation_lease(&holder)?;
                return Ok(true);
            }
        }
    }

    /// Takes or renews the rotation lease for `holder`; `false` while another holds it.
    fn hold_rotation_lease(&self, holder: &str, now: i64) -> Result<bool, VaultError> {
        let stored = self.store().get(Table::Meta, META_ROTATION_LEASE)?;
        if let Some(sealed) = &stored {
            // A lease that does not open (sealed under a key since retired) has expired.
            if let Ok(lease) = self.unseal::<Lease>(Table::Meta, META_ROTATION_LEASE, sealed)
                && lease.holder != holder
                && lease.until >= now
            {
                return Ok(false);
            }
        }
        let lease = Lease {
            holder: holder.to_owned(),
            until: now + ROTATION_LEASE_SECS,
        };
        let sealed = self.seal_value(Table::Meta, META_ROTATION_LEASE, &lease)?;
        Ok(self.store().compare_and_swap(
            Table::Meta,
            META_ROTATION_LEASE,
            stored.as_deref(),
            Some(sealed),
        )?)
    }

    /// Gives the lease up, if `holder` still holds it.
    fn release_rotation_lease(&self, holder: &str) -> Result<(), VaultError> {
        if let Some(sealed) = self.store().get(Table::Meta, META_ROTATION_LEASE)?
            && let Ok(lease) = self.unseal::<Lease>(Table::Meta, META_ROTATION_LEASE, &sealed)
            && lease.holder == holder
        {
            self.store()
                .compare_and_swap(Table::Meta, META_ROTATION_LEASE, Some(&sealed), None)?;
        }
        Ok(())
    }

    pub(super) fn move_record(
        &self,
        table: Table,
        key: &[u8],
        old: &[u8],
    ) -> Result<(), VaultError> {
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
                let new_index = self.current_index(&record.user_id);
                let old_index = user_index(key)
                    .ok_or_else(|| VaultError::Corrupt("a user key is not 32 bytes".into()))?;
                self.map_index(&old_index, &new_index)?;
                let sealed = self.seal_value(table, &new_index, &record)?;
                match self
                    .store()
                    .move_value(table, key, old, &new_index, sealed)?
                {
                    Moved::Placed => {}
                    // A copy already at the new index is this user's, moved before a
                    // restart or by an enrolment: it stays.
                    Moved::Kept => self.counted(table, -1),
                    // Changed since the sweep read it: moved by an enrolment (the copy is
                    // at the new index), or erased, and then the map entry written above
                    // names nobody.
                    Moved::Gone => {
                        if self.store().get(table, &new_index)?.is_none() {
                            self.store()
                                .remove(Table::Meta, &index_map_key(&old_index))?;
                        }
                    }
                }
            }
            Table::FeatureHistory => {
                let record: HistoryRecord = self.unseal(table, key, old)?;
                let (old_index, seq) = split_history_key(key).ok_or_else(|| {
                    VaultError::Corrupt("a history key has the wrong length".into())
                })?;
                let Some(new_index) = self.mapped_index(old_index)? else {
                    // An erasure removes the map entry, then the history: this record went
                    // with it after the sweep read it.
                    if self.store().get(table, key)?.as_deref() != Some(old) {
                        return Ok(());
                    }
                    return Err(VaultError::Corrupt(
                        "a history record belongs to no user record".into(),
                    ));
                };
                let new_key = [new_index.as_slice(), seq].concat();
                let sealed = self.seal_value(table, &new_key, &record)?;
                // The same sequence number under the new index is this record, moved before
                // a restart: it stays. Gone: erased since the sweep read it.
                if self.store().move_value(table, key, old, &new_key, sealed)? == Moved::Kept {
                    self.counted(table, -1);
                }
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
                self.store()
                    .compare_and_swap(table, key, Some(old), Some(sealed))?;
            }
            Table::Meta | Table::Audit | Table::Replay | Table::Changes => {}
        }
        Ok(())
    }
}

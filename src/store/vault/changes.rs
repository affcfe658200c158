//! The change feed (`Table::Changes`): each enrolment and erasure adds a sealed record
//! naming the user, under an id from the store's sequence. Replicas sharing one store read
//! the feed every second and reload those users' templates into their in-memory gallery
//! (the store is shared; the gallery of the identity-conflict search is per process).
//!
//! Ids are taken before the record commits, so on PostgreSQL a record can become visible
//! after one with a higher id. A reader therefore re-reads everything younger than
//! [`CHANGE_OVERLAP_SECS`] on every pass (reloading a user is idempotent), and moves its
//! cursor only past older records. Records older than [`CHANGE_RETENTION_SECS`] are removed:
//! a replica that was away longer reloads the whole gallery when it starts.
//!
//! On a store only this process uses (sled) there is no one to tell: the feed is neither
//! written nor read, so enrolment pays no extra write and no user is reloaded.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{Vault, VaultError};
use crate::store::Table;

/// Records younger than this are read again on every pass.
pub const CHANGE_OVERLAP_SECS: i64 = 10;
/// Records older than this are removed from the feed.
pub const CHANGE_RETENTION_SECS: i64 = 3_600;
/// Records read per pass at most.
const PASS_LIMIT: usize = 100_000;

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct Change {
    user_id: String,
    at: i64,
}

/// Where a reader is in the feed: the key of the last record it need not read again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeCursor(Option<Vec<u8>>);

impl Vault {
    /// Adds `user_id` to the feed. Not durable until [`Vault::flush`].
    pub(super) fn note_change(&self, user_id: &str, now: i64) -> Result<(), VaultError> {
        if self.store().exclusive() {
            return Ok(());
        }
        let key = self.store().next_id()?.to_be_bytes();
        let change = Change {
            user_id: user_id.to_owned(),
            at: now,
        };
        let sealed = self.seal_value(Table::Changes, &key, &change)?;
        self.store().insert(Table::Changes, &key, sealed)?;
        Ok(())
    }

    /// A cursor at the end of the feed as it is now (a reader that has just loaded every
    /// user starts here; the overlap covers what commits meanwhile).
    pub fn change_cursor_now(&self) -> Result<ChangeCursor, VaultError> {
        Ok(ChangeCursor(
            self.store().last(Table::Changes)?.map(|(key, _)| key),
        ))
    }

    /// The users named in the feed after `cursor` (and within the overlap), oldest first,
    /// each once; moves `cursor` past the records older than the overlap and removes those
    /// older than the retention. A record sealed under a key this process does not hold (a
    /// retired one) is skipped.
    pub fn changes_since(
        &self,
        cursor: &mut ChangeCursor,
        now: i64,
    ) -> Result<Vec<String>, VaultError> {
        if self.store().exclusive() {
            return Ok(Vec::new());
        }
        let records = self
            .store()
            .scan_after(Table::Changes, cursor.0.as_deref(), PASS_LIMIT)?;
        let mut users: Vec<String> = Vec::new();
        let mut settled = true;
        for (key, sealed) in records {
            let Ok(change) = self.unseal::<Change>(Table::Changes, &key, &sealed) else {
                continue;
            };
            if !users.contains(&change.user_id) {
                users.push(change.user_id.clone());
            }
            let old = change.at < now - CHANGE_OVERLAP_SECS;
            // The cursor moves over a run of old records only: past the first young one,
            // a lower id may still commit.
            settled &= old;
            if settled {
                cursor.0 = Some(key.clone());
            }
            if change.at < now - CHANGE_RETENTION_SECS {
                self.store()
                    .compare_and_swap(Table::Changes, &key, Some(&sealed), None)?;
            }
        }
        Ok(users)
    }
}

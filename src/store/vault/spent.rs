//! Spent request ids (the `replay` table): random ids the clients chose, with their `iat`,
//! durable with each answer so that a restart does not reopen the replay window.

use super::{Vault, VaultError};
use crate::store::Table;

/// A spent id's value in the replay table: its `iat`, big-endian.
pub(super) fn spent_value(iat: i64) -> [u8; 8] {
    iat.to_be_bytes()
}

impl Vault {
    /// Records a spent request id; `false` if it was spent already. The store decides, so
    /// that replicas sharing one database spend an id once between them (each replica's
    /// replay cache sees only its own requests). Not durable until [`Vault::flush`], which
    /// every answered request waits for.
    pub fn spend_rid(&self, rid: &str, iat: i64) -> Result<bool, VaultError> {
        let fresh = self.store().compare_and_swap(
            Table::Replay,
            rid.as_bytes(),
            None,
            Some(spent_value(iat).to_vec()),
        )?;
        Ok(self.counted_spend(fresh))
    }

    /// Counts a spend the store reported (`fresh`: this call inserted the id); returns
    /// `fresh`.
    pub(super) fn counted_spend(&self, fresh: bool) -> bool {
        if fresh {
            self.counted(Table::Replay, 1);
        }
        fresh
    }

    /// The spent request ids with `iat` at or after `since`; older ones are forgotten.
    pub fn spent_rids(&self, since: i64) -> Result<Vec<(String, i64)>, VaultError> {
        let mut live = Vec::new();
        self.sweep_spent_rids(since, |rid, iat| {
            let rid = String::from_utf8(rid)
                .map_err(|_| VaultError::Corrupt("a replay entry is not UTF-8".into()))?;
            live.push((rid, iat));
            Ok(())
        })?;
        Ok(live)
    }

    /// Forgets the spent request ids with `iat` before `since`.
    pub fn forget_spent_rids(&self, since: i64) -> Result<(), VaultError> {
        self.sweep_spent_rids(since, |_, _| Ok(()))
    }

    /// Removes the entries older than `since` and hands each live one to `live`.
    fn sweep_spent_rids(
        &self,
        since: i64,
        mut live: impl FnMut(Vec<u8>, i64) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        for (rid, value) in self.store().scan(Table::Replay)? {
            let iat = <[u8; 8]>::try_from(value.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| VaultError::Corrupt("a replay entry is not an 8-byte iat".into()))?;
            if iat >= since {
                live(rid, iat)?;
            } else if self
                .store()
                .compare_and_swap(Table::Replay, &rid, Some(&value), None)?
            {
                self.counted(Table::Replay, -1);
            }
        }
        Ok(())
    }
}

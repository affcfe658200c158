//! The audit log of key events (rotation started, checkpoints, completed, verified, key
//! retired): append-only entries in the `audit` tree, each holding the SM3 hash of the one
//! before, so that editing, removing or reordering any entry breaks the chain at that point.
//! Entries hold key ids, counts and times, never key material; they are stored in the clear
//! so that `tee-risk db verify-log` needs no key. The head hash is also written to the
//! service log at every event, for an external copy to anchor the chain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Table};
use crate::crypto::sm3;

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: i64,
    pub event: String,
    pub keys: Vec<String>,
    pub counts: BTreeMap<String, u64>,
    /// Who acted, where people did (custodians by their roster name; never a secret).
    /// Absent from entries without (so older entries hash as they did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub who: Vec<String>,
    /// Hex SM3 of the previous entry ([`GENESIS`] for the first).
    pub prev: String,
    /// Hex SM3 of this entry's JSON with `hash` empty, prefixed by the previous hash.
    pub hash: String,
}

impl AuditEntry {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let json = serde_json::to_vec(&unhashed).expect("an entry always serialises");
        let mut input = self.prev.as_bytes().to_vec();
        input.extend_from_slice(&json);
        hex::encode(sm3(&input))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit entry {seq} is broken: {reason}")]
    Broken { seq: u64, reason: &'static str },
    #[error("audit log unreadable: {0}")]
    Store(String),
}

/// Appends an event and returns the new entry. Safe against concurrent appends (the entry
/// is inserted only where no entry exists yet, else retried).
pub fn append(
    store: &dyn Store,
    at: i64,
    event: &str,
    keys: Vec<String>,
    counts: BTreeMap<String, u64>,
) -> Result<AuditEntry, StoreError> {
    append_by(store, at, event, keys, Vec::new(), counts)
}

/// [`append`], naming who acted.
pub fn append_by(
    store: &dyn Store,
    at: i64,
    event: &str,
    keys: Vec<String>,
    who: Vec<String>,
    counts: BTreeMap<String, u64>,
) -> Result<AuditEntry, StoreError> {
    loop {
        let (seq, prev) = match store.last(Table::Audit)? {
            Some((_, value)) => {
                let last: AuditEntry = serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Aborted(format!("audit log: {e}")))?;
                (last.seq + 1, last.hash)
            }
            None => (0, GENESIS.to_owned()),
        };
        let mut entry = AuditEntry {
            seq,
            at,
            event: event.to_owned(),
            keys: keys.clone(),
            counts: counts.clone(),
            who: who.clone(),
            prev,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let value = serde_json::to_vec(&entry).expect("an entry always serialises");
        if store.compare_and_swap(Table::Audit, &seq.to_be_bytes(), None, Some(value))? {
            tracing::info!(seq, event, head = %entry.hash, "audit log appended");
            return Ok(entry);
        }
    }
}

/// Checks every entry and the chain; returns the entries.
pub fn verify(store: &dyn Store) -> Result<Vec<AuditEntry>, AuditError> {
    match intact_prefix(store)? {
        (entries, None) => Ok(entries),
        (_, Some(broken)) => Err(broken),
    }
}

/// The entries from the first up to the first broken one, and what broke it (`None`: the
/// whole log is intact). What `db salvage` keeps of a damaged log: a chain, cut where it
/// stops being one.
pub fn intact_prefix(
    store: &dyn Store,
) -> Result<(Vec<AuditEntry>, Option<AuditError>), AuditError> {
    let mut entries = Vec::new();
    let mut prev = GENESIS.to_owned();
    let records = store
        .scan(Table::Audit)
        .map_err(|e| AuditError::Store(e.to_string()))?;
    for (expected_seq, (key, value)) in (0u64..).zip(records) {
        let broken = |reason| {
            Some(AuditError::Broken {
                seq: expected_seq,
                reason,
            })
        };
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&value) else {
            return Ok((entries, broken("not an audit entry")));
        };
        if key != expected_seq.to_be_bytes() || entry.seq != expected_seq {
            return Ok((entries, broken("entries are missing or out of order")));
        }
        if entry.prev != prev {
            return Ok((entries, broken("it does not chain to the entry before")));
        }
        if entry.hash != entry.compute_hash() {
            return Ok((entries, broken("its content does not match its hash")));
        }
        prev = entry.hash.clone();
        entries.push(entry);
    }
    Ok((entries, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    /// Writers that share one store (replicas on one PostgreSQL, each with its own pool)
    /// append at the same time: the log stays one chain, nothing lost, nothing forked.
    #[test]
    fn concurrent_writers_on_every_backend_keep_one_chain() {
        for backend in crate::store::testing::Backend::all() {
            // Two handles where the engine allows two (PostgreSQL: two pools); one shared
            // by both threads otherwise (sled locks its folder).
            let first = backend.open();
            let second = if backend.name() == "postgres" {
                backend.open()
            } else {
                first.clone()
            };
            let stores = [first, second];
            std::thread::scope(|scope| {
                for (writer, store) in stores.iter().enumerate() {
                    scope.spawn(move || {
                        for i in 0..25 {
                            let event = format!("writer-{writer}-{i}");
                            append(store.as_ref(), i, &event, vec![], BTreeMap::new()).unwrap();
                        }
                    });
                }
            });
            let entries = verify(stores[0].as_ref()).unwrap();
            assert_eq!(entries.len(), 50, "{}", backend.name());
        }
    }

    #[test]
    fn chain_verifies_and_any_edit_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for i in 0..3 {
            append(&store, i, "checkpoint", vec!["k".into()], BTreeMap::new()).unwrap();
        }
        assert_eq!(verify(&store).unwrap().len(), 3);

        let key = 1u64.to_be_bytes();
        let original = store.get(Table::Audit, &key).unwrap().unwrap();
        let mut edited: AuditEntry = serde_json::from_slice(&original).unwrap();
        let broken_by = |entry: &AuditEntry| {
            store
                .insert(Table::Audit, &key, serde_json::to_vec(entry).unwrap())
                .unwrap();
            verify(&store).unwrap_err()
        };
        edited.at = 99;
        let content = AuditError::Broken {
            seq: 1,
            reason: "its content does not match its hash",
        };
        assert_eq!(broken_by(&edited), content);
        // Recomputing the edited entry's own hash breaks the link to the next one instead.
        edited.hash = edited.compute_hash();
        let link = AuditError::Broken {
            seq: 2,
            reason: "it does not chain to the entry before",
        };
        assert_eq!(broken_by(&edited), link);
        store.remove(Table::Audit, &key).unwrap();
        assert!(matches!(
            verify(&store).unwrap_err(),
            AuditError::Broken { seq: 1, .. }
        ));
    }
}

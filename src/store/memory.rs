//! [`Store`] in memory: the same contract as sled (atomic per key, compare-and-swap, ordered
//! scans, strictly increasing ids) without a disk, so that the vault, rotation and audit
//! logic is tested on a second back-end and runs fast. `flush` is a no-op: nothing here
//! survives the process, so it is for tests and tools, never for serving.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{KeyValue, Moved, Store, StoreError, Table, Visitor};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory store: one ordered map per table.
#[derive(Default)]
pub struct MemoryStore {
    tables: [RwLock<Tree>; Table::ALL.len()],
    ids: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self, table: Table) -> RwLockReadGuard<'_, Tree> {
        // A panic while holding the lock cannot leave a map half-changed: each operation is
        // one map call.
        self.tables[table.index()]
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, table: Table) -> RwLockWriteGuard<'_, Tree> {
        self.tables[table.index()]
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn pairs<'a>(iter: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> Vec<KeyValue> {
    iter.map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(table).get(key).cloned())
    }

    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.write(table).insert(key.to_vec(), value);
        Ok(())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut tree = self.write(table);
        if tree.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => tree.insert(key.to_vec(), value),
            None => tree.remove(key),
        };
        Ok(true)
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.write(table).remove(key);
        Ok(())
    }

    fn move_value(
        &self,
        table: Table,
        from: &[u8],
        expected: &[u8],
        to: &[u8],
        value: Vec<u8>,
    ) -> Result<Moved, StoreError> {
        let mut tree = self.write(table);
        if tree.get(from).map(Vec::as_slice) != Some(expected) {
            return Ok(Moved::Gone);
        }
        tree.remove(from);
        if tree.contains_key(to) {
            return Ok(Moved::Kept);
        }
        tree.insert(to.to_vec(), value);
        Ok(Moved::Placed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.ids.fetch_add(1, Ordering::SeqCst))
    }

    fn skip_ids_through(&self, id: u64) -> Result<(), StoreError> {
        self.ids.fetch_max(id.saturating_add(1), Ordering::SeqCst);
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        Ok(pairs(self.read(table).iter()))
    }

    fn scan_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        Ok(pairs(
            self.read(table)
                .range::<[u8], _>((start, Bound::Unbounded))
                .take(limit),
        ))
    }

    fn scan_prefix_last(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        Ok(pairs(
            self.read(table)
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .take(limit),
        ))
    }

    fn visit(&self, table: Table, visit: &mut Visitor) -> Result<(), StoreError> {
        // A snapshot, so that `visit` may call back into the store.
        for (key, value) in self.scan(table)? {
            visit(&key, &value)?;
        }
        Ok(())
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .read(table)
            .last_key_value()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn len(&self, table: Table) -> usize {
        self.read(table).len()
    }
}

//! [`Store`] on sled 0.34: one tree per table, transactions across all trees.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use super::{KeyValue, Store, StoreError, Table, Txn};

pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| {
            StoreError::Backend(format!("cannot open database at {}: {e}", path.display()))
        })?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(backend))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { db, trees })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table.index()]
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

struct SledTxn<'a> {
    trees: &'a [TransactionalTree],
}

fn unabortable(e: UnabortableTransactionError) -> StoreError {
    match e {
        UnabortableTransactionError::Conflict => StoreError::Conflict,
        UnabortableTransactionError::Storage(e) => backend(e),
    }
}

impl Txn for SledTxn<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.trees[table.index()].get(key).map_err(unabortable)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.trees[table.index()]
            .insert(key, value)
            .map_err(unabortable)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(table)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn transaction(
        &self,
        body: &dyn Fn(&dyn Txn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let result = self.trees[..].transaction(|trees| {
            body(&SledTxn { trees }).map_err(|e| match e {
                // sled retries the closure on conflict.
                StoreError::Conflict => ConflictableTransactionError::Conflict,
                other => ConflictableTransactionError::Abort(other),
            })
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => backend(e),
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(backend)
    }

    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(table)
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn len(&self, table: Table) -> usize {
        self.tree(table).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_is_atomic_and_aborts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .transaction(&|txn| {
                txn.insert(Table::UserData, b"u", b"1".to_vec())?;
                txn.insert(Table::RiskLogs, b"l", b"2".to_vec())
            })
            .unwrap();
        assert_eq!(store.get(Table::UserData, b"u").unwrap().unwrap(), b"1");
        assert_eq!(store.get(Table::RiskLogs, b"l").unwrap().unwrap(), b"2");

        let err = store
            .transaction(&|txn| {
                txn.insert(Table::UserData, b"v", b"3".to_vec())?;
                Err(StoreError::Aborted("no".into()))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Aborted(m) if m == "no"));
        assert!(store.get(Table::UserData, b"v").unwrap().is_none());
        assert_eq!(store.len(Table::UserData), 1);
        assert!(store.next_id().unwrap() < store.next_id().unwrap());
    }
}

//! [`Store`] on sled 0.34: one tree per table, atomic per key. No sled transactions or
//! batches: either would put every later operation of the process behind sled's global
//! reader-writer lock (see the [`Store`] trait). The one two-key write, a move, is made
//! atomic by a lock of our own that only writes take (sled locks the folder, so this
//! process is the store's only writer).

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use super::{KeyValue, Moved, Store, StoreError, Table, Visitor};

/// How long [`SledStore::open`] waits for a lock held by a closing handle or process.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Held shared by every write and exclusively by [`Store::move_value`], so that no write
    /// lands between a move's check of its source and the source's removal. Reads do not
    /// take it: they may see a move's copy and source both, never neither.
    writes: RwLock<()>,
    /// For a store opened as a copy ([`SledStore::open_copy`]): the copy's folder, removed
    /// after the database above is dropped, and the original's lock. Declared last, so
    /// dropped last.
    copy: Option<Copy>,
}

/// The copy behind a [`SledStore::open_copy`].
struct Copy {
    dir: PathBuf,
    _original_lock: std::fs::File,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies every file under `from` into `to`, byte for byte.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the database. sled releases its file lock only when its background
    /// threads have let go of a closed database, a moment after the handle is dropped (sled's
    /// own tests block on the lock for this reason), so a held lock is retried for up to
    /// [`LOCK_WAIT`] before the open fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked(path.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot open database at {}: {e}",
                        path.display()
                    )));
                }
            }
        };
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).map_err(backend))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            db,
            trees,
            writes: RwLock::new(()),
            copy: None,
        })
    }

    /// Opens a copy of the store at `path`, leaving the original as it is, byte for byte.
    /// sled's recovery rewrites a damaged log as it opens it (the records after the damage
    /// are zeroed), so inspecting a damaged store in place would destroy the evidence and
    /// what a salvage could still read. The original's file lock (sled's own: its `db`
    /// file) is held while the copy is made and used, so that no service starts on it
    /// meanwhile; the copy (in the system's temporary folder: it needs the store's size in
    /// free space there) is removed when the store is dropped. A folder without a store
    /// gives an empty copy.
    pub fn open_copy(path: &Path) -> Result<Self, StoreError> {
        use fs2::FileExt;
        let io = |what: &str, e: std::io::Error| {
            StoreError::Backend(format!("cannot {what} {}: {e}", path.display()))
        };
        let dir = std::env::temp_dir().join(format!(
            "tee-risk-inspect-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let lock_path = path.join("db");
        let lock = if lock_path.exists() {
            let file = std::fs::File::open(&lock_path).map_err(|e| io("read", e))?;
            let deadline = std::time::Instant::now() + LOCK_WAIT;
            while file.try_lock_exclusive().is_err() {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Locked(path.display().to_string()));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            copy_tree(path, &dir).map_err(|e| io("copy", e))?;
            file
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| io("make a copy of", e))?;
            std::fs::File::open(&dir).map_err(|e| io("make a copy of", e))?
        };
        let copy = Copy {
            dir: dir.clone(),
            _original_lock: lock,
        };
        let mut store = Self::open(&dir)?;
        store.copy = Some(copy);
        Ok(store)
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table.index()]
    }

    /// The shared hold a write takes. The lock guards no data, so a poisoned one is as good.
    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.writes.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(table)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.tree(table).insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing();
        let swapped = self
            .tree(table)
            .compare_and_swap(key, expected, new)
            .map_err(backend)?;
        Ok(swapped.is_ok())
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        let _writing = self.writing();
        self.tree(table).remove(key).map_err(backend)?;
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
        let _alone = self.writes.write().unwrap_or_else(|p| p.into_inner());
        let tree = self.tree(table);
        if tree.get(from).map_err(backend)?.as_deref() != Some(expected) {
            return Ok(Moved::Gone);
        }
        // A crash (or a flush) between the two writes leaves the copy and the source both,
        // which a mover handles as "moved before": never neither.
        let placed = tree
            .compare_and_swap(to, None as Option<&[u8]>, Some(value))
            .map_err(backend)?
            .is_ok();
        tree.remove(from).map_err(backend)?;
        Ok(if placed { Moved::Placed } else { Moved::Kept })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(backend)
    }

    fn skip_ids_through(&self, id: u64) -> Result<(), StoreError> {
        // sled's id counter has no setter: draw ids until past `id`. Each draw is an atomic
        // add (the counter is persisted once per million), so even a store of a hundred
        // million logs is passed in seconds, once, when it is copied.
        while self.db.generate_id().map_err(backend)? <= id {}
        Ok(())
    }

    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(table)
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn scan_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Unbounded,
        };
        self.tree(table)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn scan_prefix_last(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(table)
            .scan_prefix(prefix)
            .rev()
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn visit(&self, table: Table, visit: &mut Visitor) -> Result<(), StoreError> {
        for kv in self.tree(table).iter() {
            let (key, value) = kv.map_err(backend)?;
            visit(&key, &value)?;
        }
        Ok(())
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .tree(table)
            .last()
            .map_err(backend)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn len(&self, table: Table) -> usize {
        self.tree(table).len()
    }
}

//! A [`Store`] that recovers by itself from a fault of its engine. sled, once an I/O error
//! such as a full disk has hit its log, fails every later operation until the process
//! reopens it, even after space is freed. This wrapper notices the first failing operation,
//! answers [`StoreError::Unavailable`] (the service's `503 storage_unavailable`) from then
//! on without touching the broken engine, and reopens the engine at most once per
//! [`RETRY_EVERY`] when asked to work again, until it opens and flushes. Nothing
//! acknowledged is lost: an answer waits for its flush, and a reopened engine holds exactly
//! what its last successful flush made durable.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{Fetched, KeyValue, Moved, Read, Store, StoreError, Table, Visitor};

/// The shortest time between two attempts to reopen a failed engine.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

type Opener = dyn Fn() -> Result<Arc<dyn Store>, StoreError> + Send + Sync;

/// The engine now, or why there is none.
enum State {
    Up(Arc<dyn Store>),
    /// Failed: the engine was dropped; the next reopen is due at this time.
    Down {
        retry_at: Instant,
        cause: String,
    },
}

/// A store that reopens its engine after a fault (see the module).
pub struct RecoveringStore {
    open: Box<Opener>,
    state: RwLock<State>,
    /// Serialises reopen attempts.
    reopening: Mutex<()>,
}

impl RecoveringStore {
    /// Opens the engine with `open`, and again with it after each fault.
    pub fn new(
        open: impl Fn() -> Result<Arc<dyn Store>, StoreError> + Send + Sync + 'static,
    ) -> Result<Self, StoreError> {
        let engine = open()?;
        Ok(Self {
            open: Box::new(open),
            state: RwLock::new(State::Up(engine)),
            reopening: Mutex::new(()),
        })
    }

    /// The engine, reopening it first when it failed and a retry is due.
    fn engine(&self) -> Result<Arc<dyn Store>, StoreError> {
        if let State::Up(engine) = &*self.read() {
            return Ok(engine.clone());
        }
        self.recover()?;
        match &*self.read() {
            State::Up(engine) => Ok(engine.clone()),
            State::Down { cause, .. } => Err(StoreError::Unavailable(cause.clone())),
        }
    }

    /// Reopens a failed engine if its retry is due; `Err` while it stays down.
    fn recover(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.reopening.lock().unwrap_or_else(|p| p.into_inner());
        let cause = match &*self.read() {
            State::Up(_) => return Ok(()),
            State::Down { retry_at, cause } if Instant::now() < *retry_at => {
                return Err(StoreError::Unavailable(cause.clone()));
            }
            State::Down { cause, .. } => cause.clone(),
        };
        // A fresh handle proves itself with a flush before it serves.
        let reopened = (self.open)().and_then(|engine| engine.flush().map(|()| engine));
        match reopened {
            Ok(engine) => {
                tracing::warn!(previous_fault = %cause, "storage recovered: the engine was reopened");
                *self.write() = State::Up(engine);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "storage still unavailable");
                *self.write() = State::Down {
                    retry_at: Instant::now() + RETRY_EVERY,
                    cause: error.to_string(),
                };
                Err(StoreError::Unavailable(error.to_string()))
            }
        }
    }

    /// Runs `op` on the engine; an engine error takes the engine down (it is dropped, so
    /// that its files and lock are released for the reopen).
    fn run<T>(
        &self,
        op: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let engine = self.engine()?;
        let result = op(&*engine);
        if let Err(StoreError::Backend(cause)) = &result {
            let mut state = self.write();
            if matches!(&*state, State::Up(current) if Arc::ptr_eq(current, &engine)) {
                tracing::error!(%cause, "storage fault: answering 503 until the engine reopens");
                *state = State::Down {
                    retry_at: Instant::now(),
                    cause: cause.clone(),
                };
            }
        }
        result
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for RecoveringStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(|s| s.get(table, key))
    }

    fn insert(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.run(|s| s.insert(table, key, value))
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.run(|s| s.compare_and_swap(table, key, expected, new))
    }

    fn remove(&self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.run(|s| s.remove(table, key))
    }

    fn move_value(
        &self,
        table: Table,
        from: &[u8],
        expected: &[u8],
        to: &[u8],
        value: Vec<u8>,
    ) -> Result<Moved, StoreError> {
        self.run(|s| s.move_value(table, from, expected, to, value))
    }

    fn insert_at_flush(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.run(|s| s.insert_at_flush(table, key, value))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.run(|s| s.flush())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.run(|s| s.next_id())
    }

    fn next_ids(&self, count: usize) -> Result<Vec<u64>, StoreError> {
        self.run(|s| s.next_ids(count))
    }

    fn skip_ids_through(&self, id: u64) -> Result<(), StoreError> {
        self.run(|s| s.skip_ids_through(id))
    }

    fn scan(&self, table: Table) -> Result<Vec<KeyValue>, StoreError> {
        self.run(|s| s.scan(table))
    }

    fn scan_after(
        &self,
        table: Table,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.run(|s| s.scan_after(table, after, limit))
    }

    fn scan_prefix_last(
        &self,
        table: Table,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.run(|s| s.scan_prefix_last(table, prefix, limit))
    }

    fn read_many(&self, reads: &[Read<'_>], ids: usize) -> Result<Fetched, StoreError> {
        self.run(|s| s.read_many(reads, ids))
    }

    fn visit(&self, table: Table, visit: &mut Visitor) -> Result<(), StoreError> {
        self.run(|s| s.visit(table, visit))
    }

    fn last(&self, table: Table) -> Result<Option<KeyValue>, StoreError> {
        self.run(|s| s.last(table))
    }

    fn len(&self, table: Table) -> usize {
        self.engine().map_or(0, |engine| engine.len(table))
    }

    fn healthy(&self) -> bool {
        let up = matches!(&*self.read(), State::Up(_));
        up || self.recover().is_ok()
    }

    fn exclusive(&self) -> bool {
        self.engine().is_ok_and(|engine| engine.exclusive())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;
    use crate::store::MemoryStore;

    /// A store that fails while `broken` is set, like an engine on a full disk.
    struct Flaky {
        inner: MemoryStore,
        broken: Arc<AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), StoreError> {
            if self.broken.load(Ordering::SeqCst) {
                Err(StoreError::Backend("No space left on device".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Store for Flaky {
        fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.check()?;
            self.inner.get(t, k)
        }
        fn insert(&self, t: Table, k: &[u8], v: Vec<u8>) -> Result<(), StoreError> {
            self.check()?;
            self.inner.insert(t, k, v)
        }
        fn compare_and_swap(
            &self,
            t: Table,
            k: &[u8],
            e: Option<&[u8]>,
            n: Option<Vec<u8>>,
        ) -> Result<bool, StoreError> {
            self.check()?;
            self.inner.compare_and_swap(t, k, e, n)
        }
        fn remove(&self, t: Table, k: &[u8]) -> Result<(), StoreError> {
            self.check()?;
            self.inner.remove(t, k)
        }
        fn move_value(
            &self,
            t: Table,
            f: &[u8],
            e: &[u8],
            to: &[u8],
            v: Vec<u8>,
        ) -> Result<Moved, StoreError> {
            self.check()?;
            self.inner.move_value(t, f, e, to, v)
        }
        fn flush(&self) -> Result<(), StoreError> {
            self.check()
        }
        fn next_id(&self) -> Result<u64, StoreError> {
            self.check()?;
            self.inner.next_id()
        }
        fn skip_ids_through(&self, id: u64) -> Result<(), StoreError> {
            self.check()?;
            self.inner.skip_ids_through(id)
        }
        fn scan(&self, t: Table) -> Result<Vec<KeyValue>, StoreError> {
            self.check()?;
            self.inner.scan(t)
        }
        fn scan_after(
            &self,
            t: Table,
            a: Option<&[u8]>,
            l: usize,
        ) -> Result<Vec<KeyValue>, StoreError> {
            self.check()?;
            self.inner.scan_after(t, a, l)
        }
        fn scan_prefix_last(
            &self,
            t: Table,
            p: &[u8],
            l: usize,
        ) -> Result<Vec<KeyValue>, StoreError> {
            self.check()?;
            self.inner.scan_prefix_last(t, p, l)
        }
        fn visit(&self, t: Table, v: &mut Visitor) -> Result<(), StoreError> {
            self.check()?;
            self.inner.visit(t, v)
        }
        fn last(&self, t: Table) -> Result<Option<KeyValue>, StoreError> {
            self.check()?;
            self.inner.last(t)
        }
        fn len(&self, t: Table) -> usize {
            self.inner.len(t)
        }
    }

    #[test]
    fn a_fault_makes_it_unavailable_until_the_engine_reopens() {
        let broken = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let (b, o) = (broken.clone(), opened.clone());
        let store = RecoveringStore::new(move || {
            o.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Flaky {
                inner: MemoryStore::new(),
                broken: b.clone(),
            }) as Arc<dyn Store>)
        })
        .unwrap();
        store.insert(Table::Meta, b"k", b"v".to_vec()).unwrap();
        assert!(store.healthy());

        broken.store(true, Ordering::SeqCst);
        assert!(matches!(store.flush(), Err(StoreError::Backend(_))));
        // Down: the reopen fails while the fault lasts, and is not retried at every call.
        assert!(matches!(
            store.get(Table::Meta, b"k"),
            Err(StoreError::Unavailable(_))
        ));
        assert!(!store.healthy());
        let attempts = opened.load(Ordering::SeqCst);
        for _ in 0..100 {
            assert!(store.get(Table::Meta, b"k").is_err());
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            attempts,
            "at most one reopen a second"
        );

        // The fault clears: after the retry delay the engine is reopened and serves.
        broken.store(false, Ordering::SeqCst);
        std::thread::sleep(RETRY_EVERY);
        assert!(store.healthy());
        store.insert(Table::Meta, b"k2", b"v".to_vec()).unwrap();
        store.flush().unwrap();
    }
}

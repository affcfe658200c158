//! Group commit: concurrent requests that each need their writes on disk before they answer
//! share one flush instead of queueing one fsync each.
//!
//! A caller takes a ticket *after* its write is complete in memory. The first caller to find
//! no flush running becomes the leader: it notes the highest ticket issued so far, flushes, and
//! marks every ticket up to that one durable. A flush that starts after a ticket was issued
//! covers that ticket's write, so no caller returns before its own write is on disk; callers
//! that arrive during a flush wait for the next one, which a single leader runs for all of
//! them. Hand-written because no maintained crate offers this over an arbitrary flush.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Tickets issued so far (the last one's number).
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A leader is flushing now.
    flushing: bool,
}

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
}

impl GroupCommit {
    /// Returns once every write completed before this call is durable, running `flush`
    /// itself when no flush is in progress. Returns `Ok(true)` when this caller flushed.
    /// A failed flush is returned to its leader; waiters then try again themselves.
    pub fn commit<E>(&self, flush: impl Fn() -> Result<(), E>) -> Result<bool, E> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(false);
            }
            if !state.flushing {
                state.flushing = true;
                let target = state.issued;
                drop(state);
                let result = flush();
                state = self.lock();
                state.flushing = false;
                if result.is_ok() {
                    state.durable = state.durable.max(target);
                }
                self.flushed.notify_all();
                return result.map(|()| true);
            }
            state = self
                .flushed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Tickets issued so far (for tests and metrics).
    pub fn issued(&self) -> u64 {
        self.lock().issued
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is three integers updated together under the lock; a panic elsewhere
        // cannot leave them inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    #[test]
    fn a_lone_commit_flushes_once() {
        let group = GroupCommit::default();
        let flushes = AtomicUsize::new(0);
        let flush = || -> Result<(), ()> {
            flushes.fetch_add(1, SeqCst);
            Ok(())
        };
        assert_eq!(group.commit(flush), Ok(true));
        assert_eq!(group.commit(flush), Ok(true));
        assert_eq!(flushes.load(SeqCst), 2);
    }

    /// The leader's flush waits until every other caller holds a ticket; those were issued
    /// after the leader chose its target, so exactly one more flush must serve all of them.
    #[test]
    fn waiters_share_the_next_flush() {
        const CALLERS: u64 = 8;
        let group = Arc::new(GroupCommit::default());
        let flushes = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..CALLERS)
            .map(|_| {
                let group = group.clone();
                let flushes = flushes.clone();
                std::thread::spawn(move || {
                    let inner = group.clone();
                    group.commit(move || -> Result<(), ()> {
                        if flushes.fetch_add(1, SeqCst) == 0 {
                            while inner.issued() < CALLERS {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        let leaders = handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .filter(|flushed| *flushed)
            .count();
        assert_eq!(flushes.load(SeqCst), 2);
        assert_eq!(leaders, 2);
    }

    /// Every caller's write (a counter bumped before commit) is covered by a flush that
    /// snapshot the counter after it, whatever the interleaving.
    #[test]
    fn no_caller_returns_before_its_write_is_flushed() {
        let group = Arc::new(GroupCommit::default());
        let written = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (group, written, durable) = (group.clone(), written.clone(), durable.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let mine = written.fetch_add(1, SeqCst) + 1;
                        let (w, d) = (written.clone(), durable.clone());
                        group
                            .commit(move || -> Result<(), ()> {
                                let snapshot = w.load(SeqCst);
                                std::thread::yield_now();
                                d.fetch_max(snapshot, SeqCst);
                                Ok(())
                            })
                            .unwrap();
                        assert!(durable.load(SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(written.load(SeqCst), 1600);
    }

    #[test]
    fn a_failed_flush_fails_its_leader_and_is_retried_by_the_next_caller() {
        let group = GroupCommit::default();
        assert_eq!(group.commit(|| Err("disk full")), Err("disk full"));
        assert_eq!(group.commit(|| Ok::<(), &str>(())), Ok(true));
    }
}

//! Remembers request ids for as long as their `iat` is acceptable, so that a captured
//! request cannot be sent twice. This is the in-memory view; the service also writes each
//! spent id to the store (`Table::Replay`) before it answers, and loads them back at start,
//! so a restart does not reopen the window.

use std::collections::HashMap;
use std::sync::Mutex;

/// Outcome of [`ReplayCache::check_and_insert`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayCheck {
    Fresh,
    Replayed,
    Full,
}

pub struct ReplayCache {
    seen: Mutex<HashMap<String, i64>>,
    /// An entry can be forgotten this many seconds after its `iat`.
    retention_secs: i64,
    capacity: usize,
}

impl ReplayCache {
    /// `window_secs` is the accepted |now − iat|; ids are kept for twice that.
    pub fn new(window_secs: i64, capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            retention_secs: window_secs.saturating_mul(2),
            capacity,
        }
    }

    /// How long after its `iat` an id must still be remembered.
    pub fn retention_secs(&self) -> i64 {
        self.retention_secs
    }

    /// Remembers ids spent before a restart.
    pub fn load(&self, spent: impl IntoIterator<Item = (String, i64)>) {
        self.lock().extend(spent);
    }

    /// Forgets ids whose `iat` is older than the retention.
    pub fn prune(&self, now: i64) {
        let retention = self.retention_secs;
        self.lock()
            .retain(|_, &mut at| now.saturating_sub(at) <= retention);
    }

    /// Whether `rid` was seen, without recording it.
    pub fn contains(&self, rid: &str) -> bool {
        self.lock().contains_key(rid)
    }

    /// Records `rid` (sent at `iat`) unless it was already seen.
    pub fn check_and_insert(&self, rid: &str, iat: i64, now: i64) -> ReplayCheck {
        let mut seen = self.lock();
        if seen.contains_key(rid) {
            return ReplayCheck::Replayed;
        }
        if seen.len() >= self.capacity {
            let retention = self.retention_secs;
            seen.retain(|_, &mut at| now.saturating_sub(at) <= retention);
            if seen.len() >= self.capacity {
                return ReplayCheck::Full;
            }
        }
        seen.insert(rid.to_owned(), iat);
        ReplayCheck::Fresh
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_a_replay() {
        let cache = ReplayCache::new(120, 10);
        assert_eq!(cache.check_and_insert("a", 100, 100), ReplayCheck::Fresh);
        assert!(cache.contains("a"));
        assert_eq!(cache.check_and_insert("a", 100, 101), ReplayCheck::Replayed);
    }

    #[test]
    fn expired_ids_make_room_and_live_ones_do_not() {
        let cache = ReplayCache::new(10, 2);
        assert_eq!(cache.check_and_insert("a", 0, 0), ReplayCheck::Fresh);
        assert_eq!(cache.check_and_insert("b", 0, 0), ReplayCheck::Fresh);
        assert_eq!(cache.check_and_insert("c", 5, 5), ReplayCheck::Full);
        assert_eq!(cache.check_and_insert("c", 25, 25), ReplayCheck::Fresh);
        assert!(!cache.contains("a"));
    }
}

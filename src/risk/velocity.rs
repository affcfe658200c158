//! Sliding windows of recent attempts per user and per device, in TEE memory: how many times
//! this user was tried (and refused) lately, and how many accounts this device tried. Lost
//! on restart by design (a window is minutes long) and bounded: old entries are pruned, and
//! each key keeps at most [`MAX_EVENTS_PER_KEY`] events.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::Velocity;
use super::gallery::GalleryKey;

/// Events remembered per user or device: far beyond any threshold worth having.
pub const MAX_EVENTS_PER_KEY: usize = 256;

/// SM3 of a device id.
pub type DeviceKey = [u8; 32];

pub fn device_key(device_id: &str) -> DeviceKey {
    crate::crypto::sm3(device_id.as_bytes())
}

#[derive(Default)]
struct Windows {
    /// Per user: (time, not denied).
    users: HashMap<GalleryKey, VecDeque<(i64, bool)>>,
    /// Per device: (time, user).
    devices: HashMap<DeviceKey, VecDeque<(i64, GalleryKey)>>,
}

pub struct VelocityTracker {
    window_secs: i64,
    windows: Mutex<Windows>,
}

impl VelocityTracker {
    pub fn new(window_secs: i64) -> Self {
        Self {
            window_secs,
            windows: Mutex::new(Windows::default()),
        }
    }

    /// The attempts in the window before `now` (this attempt not counted).
    pub fn observe(&self, user: &GalleryKey, device: Option<&DeviceKey>, now: i64) -> Velocity {
        let since = now - self.window_secs;
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (mut user_attempts, mut user_failures) = (0u32, 0u32);
        if let Some(events) = windows.users.get(user) {
            for &(_, passed) in events.iter().filter(|(at, _)| *at > since) {
                user_attempts += 1;
                user_failures += u32::from(!passed);
            }
        }
        let device_users = device
            .and_then(|d| windows.devices.get(d))
            .map_or(0, |events| {
                let mut others: Vec<&GalleryKey> = events
                    .iter()
                    .filter(|(at, u)| *at > since && u != user)
                    .map(|(_, u)| u)
                    .collect();
                others.sort_unstable();
                others.dedup();
                others.len() as u32
            });
        Velocity {
            user_attempts,
            user_failures,
            device_users,
        }
    }

    /// Records an attempt and whether it passed (allowed or stepped up, not denied).
    pub fn record(&self, user: &GalleryKey, device: Option<&DeviceKey>, now: i64, passed: bool) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        push_bounded(windows.users.entry(*user).or_default(), (now, passed));
        if let Some(device) = device {
            push_bounded(windows.devices.entry(*device).or_default(), (now, *user));
        }
    }

    /// Drops events older than the window, and keys left with none.
    pub fn prune(&self, now: i64) {
        let since = now - self.window_secs;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.users.retain(|_, events| {
            events.retain(|(at, _)| *at > since);
            !events.is_empty()
        });
        windows.devices.retain(|_, events| {
            events.retain(|(at, _)| *at > since);
            !events.is_empty()
        });
    }

    /// Users and devices with events in memory.
    pub fn tracked(&self) -> (usize, usize) {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        (windows.users.len(), windows.devices.len())
    }
}

fn push_bounded<T>(events: &mut VecDeque<T>, event: T) {
    if events.len() == MAX_EVENTS_PER_KEY {
        events.pop_front();
    }
    events.push_back(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_attempts_failures_and_accounts_per_device_within_the_window() {
        let tracker = VelocityTracker::new(600);
        let (alice, bob, carol) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let phone = device_key("phone");
        assert_eq!(
            tracker.observe(&alice, Some(&phone), 0),
            Velocity::default()
        );
        tracker.record(&alice, Some(&phone), 0, true);
        tracker.record(&alice, Some(&phone), 10, false);
        tracker.record(&bob, Some(&phone), 20, false);
        tracker.record(&carol, Some(&phone), 30, true);
        tracker.record(&carol, None, 40, true);
        let v = tracker.observe(&alice, Some(&phone), 50);
        assert_eq!(
            (v.user_attempts, v.user_failures, v.device_users),
            (2, 1, 2)
        );
        // After the window only the later events count; pruning forgets the rest.
        let v = tracker.observe(&alice, Some(&phone), 605);
        assert_eq!(
            (v.user_attempts, v.user_failures, v.device_users),
            (1, 1, 2)
        );
        tracker.prune(635);
        assert_eq!(tracker.tracked(), (1, 0));
        assert_eq!(
            tracker.observe(&alice, Some(&phone), 635),
            Velocity::default()
        );
    }

    #[test]
    fn each_key_keeps_a_bounded_number_of_events() {
        let tracker = VelocityTracker::new(1_000_000);
        for t in 0..1000 {
            tracker.record(&[9; 32], None, t, false);
        }
        let v = tracker.observe(&[9; 32], None, 1000);
        assert_eq!(v.user_attempts as usize, MAX_EVENTS_PER_KEY);
    }
}

//! Rate limits: a token bucket per key (a client id, a user's blind index). Each bucket
//! holds up to `burst` requests and refills at `per_minute / 60` requests per second; a
//! request that finds it empty is refused with the seconds until a token is back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Buckets kept before full ones are forgotten (a full bucket is the same as no bucket).
const PRUNE_AT: usize = 100_000;

pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Seconds (fractional) of the last refill, on the caller's clock.
    at: f64,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `per_minute` sustained, up to `burst` at once. `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at time `now` (seconds); `Err(retry_after_secs)` if none.
    pub fn check(&self, key: &K, now: f64) -> Result<(), u64> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        // A panic while holding the lock cannot leave a bucket half-updated.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + (now - b.at) * rate < burst);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + (now - bucket.at).max(0.0) * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // The epsilon keeps float noise from adding a second to an exact wait.
            Err((((1.0 - bucket.tokens) / self.per_second) - 1e-9)
                .ceil()
                .max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_rules() {
        let limiter = RateLimiter::new(60, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check(&"a", 100.0), Ok(()));
        }
        assert_eq!(limiter.check(&"a", 100.0), Err(1));
        // Other keys have their own bucket.
        assert_eq!(limiter.check(&"b", 100.0), Ok(()));
        // One token per second comes back, never more than the burst.
        assert_eq!(limiter.check(&"a", 101.0), Ok(()));
        assert_eq!(limiter.check(&"a", 101.0), Err(1));
        for _ in 0..3 {
            assert_eq!(limiter.check(&"a", 1000.0), Ok(()));
        }
        assert!(limiter.check(&"a", 1000.0).is_err());
    }

    #[test]
    fn zero_disables_and_slow_rates_say_how_long_to_wait() {
        let off = RateLimiter::new(0, 1);
        for _ in 0..1000 {
            assert!(off.check(&1, 0.0).is_ok());
        }
        let slow = RateLimiter::new(2, 1);
        assert!(slow.check(&1, 0.0).is_ok());
        assert_eq!(slow.check(&1, 0.0), Err(30));
        assert_eq!(slow.check(&1, 20.0), Err(10));
    }
}

//! The one clock: wall-clock time since the unix epoch. Everything that needs "now" reads it
//! here, so that a test can see every caller and a future mockable clock has one seam.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the unix epoch with fractions (rate limiters refill continuously).
pub fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One reading of the clock, taken once per request so that all its checks (rate limits,
/// freshness, key validity) and records (the answer's `iat`, the logs) see the same instant.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Now(f64);

impl Now {
    /// Reads the clock.
    pub fn read() -> Self {
        Self(unix_now_f64())
    }

    /// A given time in whole seconds (tests, replays of a recorded time).
    pub fn at(secs: i64) -> Self {
        Self(secs as f64)
    }

    /// Whole seconds since the unix epoch.
    pub fn secs(self) -> i64 {
        self.0.floor() as i64
    }

    /// Seconds with fractions (rate limiters refill continuously).
    pub fn precise(self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_one_instant_in_both_units() {
        let now = Now::read();
        assert_eq!(now.secs(), now.precise().floor() as i64);
        assert!((now.secs() - unix_now()).abs() <= 1);
        assert_eq!(Now::at(1_700_000_000).secs(), 1_700_000_000);
        assert_eq!(Now::at(5).precise(), 5.0);
    }
}

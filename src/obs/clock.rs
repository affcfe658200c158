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

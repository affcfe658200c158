//! Observability: the counters behind `GET /metrics` and the one clock. A leaf layer: it
//! imports nothing of this crate, so every layer may use it.

pub mod clock;
#[cfg(feature = "server")]
pub mod metrics;

pub use clock::{Now, unix_now, unix_now_f64};
#[cfg(feature = "server")]
pub use metrics::{Metrics, Stage, StageTimer};

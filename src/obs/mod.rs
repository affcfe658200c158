//! Observability: the counters behind `GET /metrics` and the one clock. A leaf layer: it
//! imports nothing of this crate, so every layer may use it.

pub mod clock;
pub mod metrics;

pub use clock::{unix_now, unix_now_f64};
pub use metrics::{Metrics, Stage, StageTimer};

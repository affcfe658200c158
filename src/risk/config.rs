//! `[risk]` in the configuration: owned here, assembled into the top-level config by `app`.

use std::sync::Arc;

use serde::Deserialize;

use super::{RiskModel, RiskPolicy};

/// The scoring policy's settings (documented in `config/default.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// See [`RiskPolicy::allow_max_fmr`].
    pub allow_max_fmr: f64,
    /// See [`RiskPolicy::step_up_max_fmr`].
    pub step_up_max_fmr: f64,
    /// See [`RiskPolicy::conflict_max_fmr`].
    pub conflict_max_fmr: f64,
    /// See [`RiskPolicy::enrolment_conflict_max_fmr`].
    pub enrolment_conflict_max_fmr: f64,
    /// See [`RiskPolicy::identify_max_fmr`].
    pub identify_max_fmr: f64,
    /// See [`RiskPolicy::min_liveness`].
    pub min_liveness: f32,
    /// See [`RiskPolicy::copy_min_similarity`].
    pub copy_min_similarity: f32,
    /// Recent accepted probes a new probe is compared with for replays.
    pub replay_history: usize,
    /// Templates per user at most.
    pub max_templates: usize,
    /// Length of the velocity windows (attempts per user, accounts per device).
    pub velocity_window_secs: i64,
    /// Devices remembered per user for the new-device signal.
    pub max_devices: usize,
    /// See [`RiskPolicy::reason_min_log_odds`].
    pub reason_min_log_odds: f64,
}

impl RiskConfig {
    /// The policy these settings give with `model`.
    pub fn policy(&self, model: Arc<RiskModel>) -> RiskPolicy {
        RiskPolicy {
            model,
            allow_max_fmr: self.allow_max_fmr,
            step_up_max_fmr: self.step_up_max_fmr,
            conflict_max_fmr: self.conflict_max_fmr,
            enrolment_conflict_max_fmr: self.enrolment_conflict_max_fmr,
            identify_max_fmr: self.identify_max_fmr,
            min_liveness: self.min_liveness,
            copy_min_similarity: self.copy_min_similarity,
            replay_history: self.replay_history,
            reason_min_log_odds: self.reason_min_log_odds,
        }
    }
}

impl RiskConfig {
    /// The rules `[risk]` keeps on its own (the thresholds' order is checked with each face
    /// model's overrides by `app::config`); each with the message given when it fails.
    pub fn checks(&self) -> Vec<(bool, &'static str)> {
        vec![
            (
                (1..=86_400).contains(&self.velocity_window_secs),
                "risk.velocity_window_secs must be in 1..=86400",
            ),
            (
                (1..=1000).contains(&self.max_devices),
                "risk.max_devices must be in 1..=1000",
            ),
            (
                self.reason_min_log_odds.is_finite() && self.reason_min_log_odds > 0.0,
                "risk.reason_min_log_odds must be positive",
            ),
            (
                (0.0..=1.0).contains(&self.min_liveness),
                "risk.min_liveness must be in [0, 1]",
            ),
            (
                (0.99..=1.0).contains(&self.copy_min_similarity),
                "risk.copy_min_similarity must be in [0.99, 1]",
            ),
            (
                self.replay_history <= 1000,
                "risk.replay_history must be at most 1000",
            ),
            (
                (1..=100).contains(&self.max_templates),
                "risk.max_templates must be in 1..=100",
            ),
        ]
    }
}

//! Risk scoring: a pure function from the signals of an attempt (match, copies, identity
//! conflict, liveness, velocity, device, drift) to a decision with a score and reason codes.
//! No I/O, so it is testable and benchmarkable alone; the service gathers the signals
//! ([`gallery`], [`velocity`], the vault) and this module decides.

pub mod calibration;
mod config;
mod face_model;
pub mod gallery;
pub mod identify;
pub mod model;
pub mod velocity;

use std::sync::Arc;

/// The wire's vocabulary of a decision (`protocol::reply`), which scoring produces.
pub use crate::protocol::reply::{Decision, Reason};
pub use calibration::{Calibration, CalibrationSet};
pub use config::RiskConfig;
pub use face_model::{FaceModel, FaceModels, FaceModelsError};
pub use model::{Feature, RiskModel};

/// The best match among other enrolled users.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conflict {
    /// Cosine of the probe with that user's centroid.
    pub similarity: f32,
    /// That user's template count (for the calibration curve).
    pub templates: usize,
    /// How many other users were searched: the best of N comparisons is N times as likely
    /// to be a false match, so its FMR is corrected by N.
    pub searched: usize,
}

impl Conflict {
    /// FMR of the best of `searched` comparisons (Bonferroni: N × the per-pair FMR).
    pub fn search_fmr(&self, calibration: &CalibrationSet) -> f64 {
        (calibration.false_match_rate(self.templates, self.similarity) * self.searched as f64)
            .min(1.0)
    }
}

/// Attempts in the sliding windows, before this one (`[risk] velocity_window_secs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Velocity {
    pub user_attempts: u32,
    /// Of those, the denied ones.
    pub user_failures: u32,
    /// Other users this device was used for.
    pub device_users: u32,
}

/// What the signals saw, before policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// The claimed user's template count; 0 = not enrolled.
    pub templates: usize,
    /// Cosine of the probe with the centroid of the user's templates.
    pub match_similarity: Option<f32>,
    /// Highest cosine of the probe with any single template (copies).
    pub copy_similarity: Option<f32>,
    /// Highest cosine with the user's recent accepted probes (replays and drift).
    pub history_similarity: Option<f32>,
    /// How many recent accepted probes were compared.
    pub history: usize,
    pub conflict: Option<Conflict>,
    pub liveness: Option<f32>,
    pub velocity: Velocity,
    pub new_device: bool,
}

/// Thresholds and the model, from `[risk]` in the config and the model file.
#[derive(Debug, Clone)]
pub struct RiskPolicy {
    pub model: Arc<RiskModel>,
    /// An otherwise unremarkable attempt is allowed when its match FMR is at most this…
    pub allow_max_fmr: f64,
    /// …and stepped up when at most this. The score thresholds are the model's scores at
    /// these FMRs ([`RiskModel::score_at_fmr`]).
    pub step_up_max_fmr: f64,
    /// A liveness score below this raises the risk to step-up at least.
    pub min_liveness: f32,
    /// A similarity at or above this (to a template or a recent probe) is a copy.
    pub copy_min_similarity: f32,
    /// How many recent accepted probes a new one is compared with.
    pub replay_history: usize,
    /// A match to another enrolled user whose FMR, corrected for the number of users
    /// searched, is at most this is an identity conflict at assessment…
    pub conflict_max_fmr: f64,
    /// …and at enrolment, where a missed conflict lets one face open a second account and a
    /// false one only delays an enrolment, so the bar is lower.
    pub enrolment_conflict_max_fmr: f64,
    /// 1:N: a candidate is named when its false-match rate, corrected for the gallery size
    /// searched, is at most this (`risk::identify`).
    pub identify_max_fmr: f64,
    /// A context signal is named as a reason when it adds at least this to the log-odds.
    pub reason_min_log_odds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub decision: Decision,
    /// Probability of fraud in [0, 1] from the model; 1 for the hard rules.
    pub score: f64,
    pub reasons: Vec<Reason>,
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The unit-length mean of unit vectors: a robust template for several enrolment images.
pub fn centroid<T: AsRef<[f32]>>(vectors: &[T]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, |v| v.as_ref().len());
    let mut sum = vec![0.0f32; dim];
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v.as_ref()) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        sum.iter_mut().for_each(|x| *x /= norm);
    }
    sum
}

/// The match signals of a unit-length `probe` against the user's unit-length `templates` and
/// `recent` accepted probes; the caller adds conflict, liveness, velocity and device.
pub fn signals<T: AsRef<[f32]>, R: AsRef<[f32]>>(
    probe: &[f32],
    templates: &[T],
    recent: &[R],
) -> Signals {
    Signals {
        templates: templates.len(),
        match_similarity: (!templates.is_empty()).then(|| cosine(probe, &centroid(templates))),
        copy_similarity: best_cosine(probe, templates),
        history_similarity: best_cosine(probe, recent),
        history: recent.len(),
        ..Signals::default()
    }
}

/// Whether an attempt's device counts as new to the user: only a named device that is not
/// among the `known` ones (SM3 hex). An unnamed device is scored as a known one: the best
/// honest value, never better (the property `risk::tests` checks for every optional signal).
pub fn device_is_new(device: Option<&str>, known: &[String]) -> bool {
    device.is_some_and(|d| !known.iter().any(|k| k == d))
}

/// The highest cosine of `probe` with any of `others`; `None` when there are none.
pub(crate) fn best_cosine<T: AsRef<[f32]>>(probe: &[f32], others: &[T]) -> Option<f32> {
    others
        .iter()
        .map(|t| cosine(probe, t.as_ref()))
        .fold(None, |best: Option<f32>, s| {
            Some(best.map_or(s, |b| b.max(s)))
        })
}

/// Context signals named as reasons when the model finds them risky enough.
const CONTEXT_REASONS: [(Feature, Reason); 5] = [
    (Feature::UserAttempts, Reason::HighVelocity),
    (Feature::UserFailures, Reason::RepeatedFailures),
    (Feature::DeviceUsers, Reason::SharedDevice),
    (Feature::NewDevice, Reason::NewDevice),
    (Feature::Drift, Reason::Drift),
];

impl RiskPolicy {
    /// The model's version, named in every assessment.
    pub fn model_version(&self) -> &str {
        &self.model.version
    }

    /// Scores at or below this are allowed.
    pub fn allow_max_risk(&self) -> f64 {
        self.model.score_at_fmr(self.allow_max_fmr)
    }

    /// Scores at or below this (and above [`Self::allow_max_risk`]) are stepped up.
    pub fn step_up_max_risk(&self) -> f64 {
        self.model.score_at_fmr(self.step_up_max_fmr)
    }

    /// Whether a probe's best match among other users makes it that user's face.
    pub fn is_conflict(&self, conflict: &Conflict) -> bool {
        conflict.search_fmr(&self.model.calibration) <= self.conflict_max_fmr
    }

    /// Whether a new template's best match among other users makes it a second account for
    /// one face.
    pub fn is_enrolment_conflict(&self, conflict: &Conflict) -> bool {
        conflict.search_fmr(&self.model.calibration) <= self.enrolment_conflict_max_fmr
    }

    pub fn decide(&self, signals: &Signals) -> Assessment {
        let (Some(similarity), Some(copy)) = (signals.match_similarity, signals.copy_similarity)
        else {
            return Assessment::hard(Reason::NoEnrolment);
        };
        // Hard rules: a copy of an enrolled template or of a recent probe is denied, however
        // well it matches.
        if copy >= self.copy_min_similarity {
            return Assessment::hard(Reason::TemplateInjection);
        }
        if signals
            .history_similarity
            .is_some_and(|s| s >= self.copy_min_similarity)
        {
            return Assessment::hard(Reason::ReplayedProbe);
        }
        let x = self.model.features(signals);
        let mut score = self.model.probability(&x);
        let (allow_max, step_up_max) = (self.allow_max_risk(), self.step_up_max_risk());
        let mut reasons = Vec::new();
        let fmr = self
            .model
            .calibration
            .false_match_rate(signals.templates, similarity);
        if fmr > self.step_up_max_fmr {
            reasons.push(Reason::NoMatch);
        } else if fmr > self.allow_max_fmr {
            reasons.push(Reason::WeakMatch);
        }
        // One face, many accounts: matching someone else better than the claimed user is a
        // deny; matching someone else at all, a step-up.
        if let Some(conflict) = signals.conflict.filter(|c| self.is_conflict(c)) {
            reasons.push(Reason::IdentityConflict);
            score = if conflict.similarity >= similarity {
                score.max(next_above(step_up_max))
            } else {
                score.max(next_above(allow_max))
            };
        }
        if signals.liveness.is_some_and(|l| l < self.min_liveness) {
            reasons.push(Reason::LowLiveness);
            score = score.max(next_above(allow_max));
        }
        for (feature, reason) in CONTEXT_REASONS {
            if self.model.contribution(&x, feature) >= self.reason_min_log_odds {
                reasons.push(reason);
            }
        }
        let decision = self.decision_for(score);
        // Every refusal is explained: when no signal was strong enough alone, name the one
        // that added most to the risk.
        if decision != Decision::Allow && reasons.is_empty() {
            let (feature, _) = Feature::ALL
                .iter()
                .map(|&f| (f, self.model.contribution(&x, f)))
                .filter(|(f, _)| *f != Feature::MatchEvidence)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("features are not empty");
            reasons.push(match feature {
                Feature::LivenessDeficit => Reason::LowLiveness,
                Feature::ConflictEvidence => Reason::IdentityConflict,
                Feature::UserAttempts => Reason::HighVelocity,
                Feature::UserFailures => Reason::RepeatedFailures,
                Feature::DeviceUsers => Reason::SharedDevice,
                Feature::NewDevice => Reason::NewDevice,
                Feature::Drift | Feature::MatchEvidence => Reason::Drift,
            });
        }
        Assessment {
            decision,
            score,
            reasons,
        }
    }

    fn decision_for(&self, score: f64) -> Decision {
        if score <= self.allow_max_risk() {
            Decision::Allow
        } else if score <= self.step_up_max_risk() {
            Decision::StepUp
        } else {
            Decision::Deny
        }
    }
}

/// The smallest score above a threshold (a floor that moves the decision one band up).
fn next_above(threshold: f64) -> f64 {
    (threshold + 1e-6).min(1.0)
}

impl Assessment {
    /// A hard rule's verdict: denied with the highest score.
    fn hard(reason: Reason) -> Self {
        Self {
            decision: Decision::Deny,
            score: 1.0,
            reasons: vec![reason],
        }
    }
}

/// The shipped model with the `[risk]` defaults of `config/default.toml` (for tests of this
/// layer and the ones above it, which cannot reach the app's config).
#[cfg(test)]
pub(crate) fn default_policy() -> RiskPolicy {
    let defaults: toml::Table = toml::from_str(include_str!("../../config/default.toml")).unwrap();
    let config: RiskConfig = defaults["risk"].clone().try_into().unwrap();
    config.policy(Arc::new(RiskModel::builtin()))
}

#[cfg(test)]
mod tests;

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
mod tests {
    use super::*;
    use crate::risk::model::LIVE_SCORE_FLOOR;

    fn policy() -> RiskPolicy {
        default_policy()
    }

    /// The metrics' labels are the wire codes, each at its decision's index.
    #[test]
    fn decision_names_follow_the_index() {
        for decision in Decision::ALL {
            assert_eq!(Decision::NAMES[decision.index()], decision.as_str());
            assert_eq!(
                serde_json::to_value(decision).unwrap(),
                decision.as_str(),
                "the serialised form is the same code"
            );
        }
    }

    /// A normal genuine attempt: two templates, a strong match (FMR about 10⁻⁵), recent
    /// history of the same face, nobody else close, a live capture from a known device.
    fn genuine() -> Signals {
        Signals {
            templates: 2,
            match_similarity: Some(0.97),
            copy_similarity: Some(0.95),
            history_similarity: Some(0.96),
            history: 4,
            conflict: Some(Conflict {
                similarity: 0.7,
                templates: 2,
                searched: 100,
            }),
            liveness: Some(0.95),
            velocity: Velocity::default(),
            new_device: false,
        }
    }

    fn decide(change: impl FnOnce(&mut Signals)) -> Assessment {
        let mut s = genuine();
        change(&mut s);
        policy().decide(&s)
    }

    #[test]
    fn a_normal_genuine_attempt_is_allowed_without_reasons() {
        let a = decide(|_| {});
        assert_eq!((a.decision, a.reasons), (Decision::Allow, vec![]));
        assert!(a.score <= policy().allow_max_risk());
        // And so without the optional signals.
        let bare = decide(|s| {
            s.liveness = None;
            s.conflict = None;
            s.history_similarity = None;
            s.history = 0;
        });
        assert_eq!((bare.decision, bare.reasons), (Decision::Allow, vec![]));
    }

    /// Every optional signal the client may leave out (liveness, device id): its absence
    /// never scores better, nor decides more leniently, than the signal present with any
    /// good (honest, live, known) value. Checked over many random attempts.
    #[test]
    fn an_absent_optional_signal_never_scores_better_than_a_good_one() {
        let policy = policy();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let rank = |d: Decision| d as u8;
        let known = vec!["aa".to_owned(), "bb".to_owned()];
        for _ in 0..3000 {
            let mut s = genuine();
            s.templates = 1 + (next() * 5.0) as usize;
            s.match_similarity = Some((0.3 + 0.7 * next()) as f32);
            s.copy_similarity = s.match_similarity;
            s.history = (next() * 9.0) as usize;
            s.history_similarity = Some((0.3 + 0.69 * next()) as f32);
            s.conflict = (next() < 0.5).then(|| Conflict {
                similarity: (0.3 + 0.6 * next()) as f32,
                templates: 1 + (next() * 3.0) as usize,
                searched: 1 + (next() * 10_000.0) as usize,
            });
            s.velocity = Velocity {
                user_attempts: (next() * 6.0) as u32,
                user_failures: (next() * 3.0) as u32,
                device_users: (next() * 3.0) as u32,
            };
            s.new_device = next() < 0.3;

            s.liveness = None;
            let absent = policy.decide(&s);
            for percent in 0..=100 {
                let good = LIVE_SCORE_FLOOR + (1.0 - LIVE_SCORE_FLOOR) * percent as f32 / 100.0;
                s.liveness = Some(good);
                let present = policy.decide(&s);
                assert!(
                    present.score <= absent.score + 1e-12,
                    "liveness {good} scored {} above absent {}",
                    present.score,
                    absent.score
                );
                assert!(rank(present.decision) <= rank(absent.decision));
            }

            s.liveness = Some(0.9);
            s.new_device = device_is_new(None, &known);
            let absent = policy.decide(&s);
            for device in &known {
                s.new_device = device_is_new(Some(device), &known);
                let present = policy.decide(&s);
                assert!(present.score <= absent.score + 1e-12);
                assert!(rank(present.decision) <= rank(absent.decision));
            }
        }
    }

    /// Each reason fires on the attempt it describes (and on a normal genuine attempt none
    /// does: the test above).
    #[test]
    fn every_reason_fires_on_its_own_case() {
        let p = policy();
        let similarity_at = |fmr: f64| {
            // The k = 2 curve's similarity with this FMR, by bisection.
            let (mut low, mut high) = (0.0f32, 1.0f32);
            for _ in 0..40 {
                let mid = (low + high) / 2.0;
                if p.model.calibration.false_match_rate(2, mid) > fmr {
                    low = mid;
                } else {
                    high = mid;
                }
            }
            high
        };
        type Case<'a> = (Reason, Box<dyn FnOnce(&mut Signals) + 'a>, Decision);
        let cases: Vec<Case<'_>> = vec![
            (
                Reason::NoEnrolment,
                Box::new(|s| *s = Signals::default()),
                Decision::Deny,
            ),
            (
                Reason::WeakMatch,
                Box::new(move |s| s.match_similarity = Some(similarity_at(0.003))),
                Decision::StepUp,
            ),
            (
                Reason::NoMatch,
                Box::new(|s| s.match_similarity = Some(0.75)),
                Decision::Deny,
            ),
            (
                Reason::LowLiveness,
                Box::new(|s| s.liveness = Some(0.2)),
                Decision::Deny,
            ),
            (
                Reason::TemplateInjection,
                Box::new(|s| s.copy_similarity = Some(1.0)),
                Decision::Deny,
            ),
            (
                Reason::ReplayedProbe,
                Box::new(|s| s.history_similarity = Some(0.99995)),
                Decision::Deny,
            ),
            (
                Reason::IdentityConflict,
                Box::new(|s| {
                    s.conflict = Some(Conflict {
                        similarity: 0.98,
                        templates: 2,
                        searched: 100,
                    })
                }),
                Decision::Deny,
            ),
            (
                Reason::HighVelocity,
                Box::new(|s| s.velocity.user_attempts = 30),
                Decision::Allow,
            ),
            (
                Reason::RepeatedFailures,
                Box::new(|s| s.velocity.user_failures = 20),
                Decision::Allow,
            ),
            (
                Reason::SharedDevice,
                Box::new(|s| s.velocity.device_users = 10),
                Decision::Allow,
            ),
            (
                Reason::NewDevice,
                Box::new(|s| s.new_device = true),
                Decision::Allow,
            ),
            (
                Reason::Drift,
                // A match just inside the allow band, far from every recent probe: drift
                // (worth at most ~1.5 in log-odds under the shipped weights, below
                // `reason_min_log_odds`) is what tips it into a step-up, so it is named.
                Box::new(move |s| {
                    s.match_similarity = Some(similarity_at(0.0009));
                    s.copy_similarity = s.match_similarity;
                    s.history_similarity = Some(0.3);
                }),
                Decision::Allow,
            ),
        ];
        let mut covered = Vec::new();
        for (reason, change, at_least) in cases {
            let a = decide(change);
            assert!(a.reasons.contains(&reason), "{reason:?}: {a:?}");
            assert!(
                rank(a.decision) >= rank(at_least),
                "{reason:?} gave {a:?}, expected at least {at_least:?}"
            );
            assert!(
                a.score > decide(|_| {}).score,
                "{reason:?} must raise the score"
            );
            covered.push(reason);
        }
        assert_eq!(covered, Reason::ALL, "every reason code has a case");
    }

    fn rank(d: Decision) -> u8 {
        match d {
            Decision::Allow => 0,
            Decision::StepUp => 1,
            Decision::Deny => 2,
        }
    }

    #[test]
    fn context_signals_together_turn_a_strong_match_into_a_refusal() {
        let a = decide(|s| {
            s.new_device = true;
            s.velocity = Velocity {
                user_attempts: 12,
                user_failures: 9,
                device_users: 6,
            };
        });
        assert_ne!(a.decision, Decision::Allow, "{a:?}");
        for r in [
            Reason::NewDevice,
            Reason::HighVelocity,
            Reason::RepeatedFailures,
            Reason::SharedDevice,
        ] {
            assert!(a.reasons.contains(&r), "{r:?} in {a:?}");
        }
    }

    #[test]
    fn a_conflict_is_never_allowed_and_a_stronger_one_than_the_claim_is_denied() {
        let conflict = |similarity| {
            decide(move |s| {
                s.match_similarity = Some(0.97);
                s.conflict = Some(Conflict {
                    similarity,
                    templates: 2,
                    searched: 100,
                });
            })
        };
        let weaker = conflict(0.955);
        assert!(
            weaker.reasons.contains(&Reason::IdentityConflict),
            "{weaker:?}"
        );
        assert_ne!(weaker.decision, Decision::Allow);
        let stronger = conflict(0.975);
        assert_eq!(stronger.decision, Decision::Deny);
    }

    #[test]
    fn copies_are_denied_however_well_they_match_and_new_captures_are_not() {
        for similarity in [1.0, 0.99995] {
            let a = decide(|s| {
                s.match_similarity = Some(similarity);
                s.copy_similarity = Some(similarity);
            });
            assert_eq!(
                (a.decision, a.score, a.reasons),
                (Decision::Deny, 1.0, vec![Reason::TemplateInjection])
            );
        }
        // The closest two captures of one face in the dev set come to 0.9963: allowed.
        let genuine = decide(|s| {
            s.copy_similarity = Some(0.9963);
            s.history_similarity = Some(0.9963);
        });
        assert_eq!(
            (genuine.decision, genuine.reasons),
            (Decision::Allow, vec![])
        );
    }

    #[test]
    fn score_rises_as_the_match_weakens() {
        let scores: Vec<f64> = [0.99, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8]
            .iter()
            .map(|&m| decide(|s| s.match_similarity = Some(m)).score)
            .collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
    }

    #[test]
    fn signals_use_the_centroid_for_the_match_and_every_template_for_copies() {
        let none: [Vec<f32>; 0] = [];
        let s = signals(
            &[1.0, 0.0],
            &[vec![0.0, 1.0], vec![0.6, 0.8]],
            &[vec![0.8, 0.6]],
        );
        let centroid = centroid(&[vec![0.0f32, 1.0], vec![0.6, 0.8]]);
        assert!((s.match_similarity.unwrap() - centroid[0]).abs() < 1e-6);
        assert!((s.copy_similarity.unwrap() - 0.6).abs() < 1e-6);
        assert!((s.history_similarity.unwrap() - 0.8).abs() < 1e-6);
        assert_eq!((s.templates, s.history), (2, 1));
        let empty = signals(&[1.0, 0.0], &none, &none);
        assert_eq!(
            (empty.match_similarity, empty.history_similarity),
            (None, None)
        );
    }

    #[test]
    fn wire_codes_match_serde_names() {
        for d in [Decision::Allow, Decision::StepUp, Decision::Deny] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}

//! Risk scoring: a pure function from a probe, its context and the enrolled templates to a
//! decision with a calibrated score and reason codes. No I/O, so it is testable and
//! benchmarkable alone; later signals (replay, conflicts, velocity…) extend [`Signals`].

pub mod calibration;
pub mod eval;

use serde::Serialize;

pub use calibration::Calibration;

/// Names the scoring logic in every response, so a decision can be traced to its model.
pub const MODEL_VERSION: &str = "cosine-fmr-v3";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    StepUp,
    Deny,
}

/// Stable reason codes: clients may branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The claimed user has no enrolled template.
    NoEnrolment,
    /// Best similarity is in the step-up band.
    WeakMatch,
    /// Best similarity is below the step-up band.
    NoMatch,
    /// The client's liveness score is below the configured minimum.
    LowLiveness,
    /// The probe is (nearly) a copy of an enrolled template, closer than two captures of a
    /// face come: a stolen or injected template, denied however well it matches.
    TemplateInjection,
    /// The probe is (nearly) a copy of one of the user's recent accepted probes: a replayed
    /// capture, denied however well it matches.
    ReplayedProbe,
}

/// Thresholds and calibration, from `[risk]` in the config.
#[derive(Debug, Clone)]
pub struct RiskPolicy {
    /// Scores at or below this are allowed.
    pub allow_max_risk: f64,
    /// Scores at or below this (and above `allow_max_risk`) need a step-up.
    pub step_up_max_risk: f64,
    /// A liveness score below this raises the risk to the step-up threshold.
    pub min_liveness: f32,
    /// A similarity at or above this (to a template or a recent probe) is a copy, not a new
    /// capture.
    pub copy_min_similarity: f32,
    /// How many recent accepted probes a new one is compared with (`[risk] replay_history`).
    pub replay_history: usize,
    pub calibration: Calibration,
}

/// What the signals saw, before policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// Best cosine similarity to the user's templates; `None` without an enrolment.
    pub best_similarity: Option<f32>,
    pub liveness: Option<f32>,
    /// Best cosine similarity to the user's recent accepted probes; `None` without any.
    pub replay_similarity: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub decision: Decision,
    /// Risk in [0, 1], higher is riskier: the false-match rate at the observed similarity,
    /// raised by other signals.
    pub score: f64,
    pub reasons: Vec<Reason>,
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Gathers the signals for a unit-length `probe` against unit-length `templates` and the
/// user's `recent` accepted probes.
pub fn signals<T: AsRef<[f32]>, R: AsRef<[f32]>>(
    probe: &[f32],
    liveness: Option<f32>,
    templates: &[T],
    recent: &[R],
) -> Signals {
    Signals {
        best_similarity: best_cosine(probe, templates),
        liveness,
        replay_similarity: best_cosine(probe, recent),
    }
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

impl Decision {
    /// The wire code, as in responses and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::StepUp => "step_up",
            Decision::Deny => "deny",
        }
    }
}

impl Reason {
    /// The stable wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoEnrolment => "no_enrolment",
            Reason::WeakMatch => "weak_match",
            Reason::NoMatch => "no_match",
            Reason::LowLiveness => "low_liveness",
            Reason::TemplateInjection => "template_injection",
            Reason::ReplayedProbe => "replayed_probe",
        }
    }
}

impl RiskPolicy {
    pub fn decide(&self, signals: &Signals) -> Assessment {
        let Some(similarity) = signals.best_similarity else {
            return Assessment {
                decision: Decision::Deny,
                score: 1.0,
                reasons: vec![Reason::NoEnrolment],
            };
        };
        // Hard rules: a copy of an enrolled template or of a recent probe is denied, however
        // well it matches.
        let copy = if similarity >= self.copy_min_similarity {
            Some(Reason::TemplateInjection)
        } else if signals
            .replay_similarity
            .is_some_and(|s| s >= self.copy_min_similarity)
        {
            Some(Reason::ReplayedProbe)
        } else {
            None
        };
        if let Some(reason) = copy {
            return Assessment {
                decision: Decision::Deny,
                score: 1.0,
                reasons: vec![reason],
            };
        }
        let mut score = self.calibration.false_match_rate(similarity);
        let mut reasons = Vec::new();
        if score > self.step_up_max_risk {
            reasons.push(Reason::NoMatch);
        } else if score > self.allow_max_risk {
            reasons.push(Reason::WeakMatch);
        }
        if signals.liveness.is_some_and(|l| l < self.min_liveness) {
            reasons.push(Reason::LowLiveness);
            score = score.max(self.step_up_max_risk);
        }
        Assessment {
            decision: self.decision_for(score),
            score,
            reasons,
        }
    }

    fn decision_for(&self, score: f64) -> Decision {
        if score <= self.allow_max_risk {
            Decision::Allow
        } else if score <= self.step_up_max_risk {
            Decision::StepUp
        } else {
            Decision::Deny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RiskPolicy {
        RiskPolicy {
            allow_max_risk: 0.001,
            step_up_max_risk: 0.01,
            min_liveness: 0.5,
            copy_min_similarity: 0.9999,
            replay_history: 8,
            calibration: Calibration::new(vec![(0.8, 0.5), (0.9, 0.01), (0.95, 0.001)]).unwrap(),
        }
    }

    fn decide(similarity: Option<f32>, liveness: Option<f32>) -> Assessment {
        policy().decide(&Signals {
            best_similarity: similarity,
            liveness,
            replay_similarity: None,
        })
    }

    #[test]
    fn strong_match_is_allowed_without_reasons() {
        let a = decide(Some(0.97), Some(0.9));
        assert_eq!(a.decision, Decision::Allow);
        assert!(a.reasons.is_empty());
        assert!(a.score <= 0.001);
    }

    #[test]
    fn no_enrolment_is_denied() {
        let a = decide(None, None);
        assert_eq!(
            (a.decision, a.score, a.reasons),
            (Decision::Deny, 1.0, vec![Reason::NoEnrolment])
        );
    }

    #[test]
    fn weak_match_steps_up() {
        let a = decide(Some(0.92), None);
        assert_eq!(
            (a.decision, a.reasons),
            (Decision::StepUp, vec![Reason::WeakMatch])
        );
    }

    #[test]
    fn poor_match_is_denied() {
        let a = decide(Some(0.85), None);
        assert_eq!(
            (a.decision, a.reasons),
            (Decision::Deny, vec![Reason::NoMatch])
        );
    }

    #[test]
    fn low_liveness_steps_up_a_strong_match_but_never_lowers_risk() {
        let a = decide(Some(0.97), Some(0.2));
        assert_eq!(
            (a.decision, a.reasons),
            (Decision::StepUp, vec![Reason::LowLiveness])
        );
        let b = decide(Some(0.85), Some(0.2));
        assert_eq!(b.decision, Decision::Deny);
        assert_eq!(b.reasons, vec![Reason::NoMatch, Reason::LowLiveness]);
    }

    #[test]
    fn score_rises_as_similarity_falls() {
        let scores: Vec<f64> = [0.99, 0.95, 0.92, 0.9, 0.85, 0.8, 0.5]
            .iter()
            .map(|&s| decide(Some(s), None).score)
            .collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
    }

    #[test]
    fn a_copy_of_a_template_is_denied_however_well_it_matches() {
        for similarity in [1.0, 0.99995] {
            let a = decide(Some(similarity), Some(0.99));
            assert_eq!(
                (a.decision, a.score, a.reasons),
                (Decision::Deny, 1.0, vec![Reason::TemplateInjection])
            );
        }
        // The closest two captures of one face in the dev set come to 0.9963: allowed.
        let genuine = decide(Some(0.9963), Some(0.99));
        assert_eq!(genuine.decision, Decision::Allow);
        assert!(genuine.reasons.is_empty());
    }

    #[test]
    fn a_replayed_probe_is_denied_and_a_new_capture_is_not() {
        let replay = policy().decide(&Signals {
            best_similarity: Some(0.97),
            liveness: Some(0.99),
            replay_similarity: Some(1.0),
        });
        assert_eq!(
            (replay.decision, replay.score, replay.reasons),
            (Decision::Deny, 1.0, vec![Reason::ReplayedProbe])
        );
        let genuine = policy().decide(&Signals {
            best_similarity: Some(0.97),
            liveness: Some(0.99),
            replay_similarity: Some(0.9963),
        });
        assert_eq!(genuine.decision, Decision::Allow);
        assert!(genuine.reasons.is_empty());
    }

    #[test]
    fn signals_take_the_best_template_and_the_closest_recent_probe() {
        let none: [Vec<f32>; 0] = [];
        let s = signals(
            &[1.0, 0.0],
            None,
            &[vec![0.0, 1.0], vec![0.6, 0.8]],
            &[vec![0.8, 0.6]],
        );
        assert!((s.best_similarity.unwrap() - 0.6).abs() < 1e-6);
        assert!((s.replay_similarity.unwrap() - 0.8).abs() < 1e-6);
        let empty = signals(&[1.0, 0.0], None, &none, &none);
        assert_eq!(
            (empty.best_similarity, empty.replay_similarity),
            (None, None)
        );
    }

    #[test]
    fn wire_codes_match_serde_names() {
        for d in [Decision::Allow, Decision::StepUp, Decision::Deny] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for r in [
            Reason::NoEnrolment,
            Reason::WeakMatch,
            Reason::NoMatch,
            Reason::LowLiveness,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}

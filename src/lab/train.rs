//! `tee-risk train`: measures the match calibration on labelled embeddings, generates
//! labelled attempts from them (genuine ones and the attacks the service must catch), and
//! fits the logistic model with linfa. Pure and deterministic: the same file gives the same
//! model, byte for byte, so the shipped model can be checked by re-training it.
//!
//! Faces come from the data; the *context* of each attempt (liveness, velocity, devices)
//! does not exist in any public face set, so it is drawn from stated distributions below.
//! Those are assumptions about clients and attackers, to be replaced by a deployment's own
//! labelled traffic: the weights they give are a starting point, not a measurement.

use std::collections::BTreeMap;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use std::sync::Arc;

use super::LabError;
use super::eval::evaluate as evaluate_scores;
use super::synth::{Context, Labelled, Rng, genuine_context, group, impostor_context};
use super::tail::fit_calibration;
use crate::risk::model::{
    FaceModelInfo, Feature, FeatureVector, MODEL_FORMAT, RiskModel, TrainingSummary,
};
use crate::risk::{Conflict, RiskPolicy, Signals, centroid, cosine, signals};

/// L2 penalty: small, the features are few and the samples many.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Enrolment sizes the attempts are generated for.
const ENROLMENT_SIZES: [usize; 3] = [1, 2, 3];
/// Impostor attempts drawn per identity and enrolment size.
const IMPOSTORS_PER_IDENTITY: usize = 24;

/// What kind of attempt a generated sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Genuine,
    /// Someone else's face, not enrolled anywhere.
    Impostor,
    /// Someone else's face that is enrolled under another account.
    EnrolledImpostor,
    /// The user's own face presented by a photo or screen: a genuine-looking match with a
    /// low liveness score.
    Presentation,
    /// An impostor hammering one account: many recent attempts, most refused.
    Burst,
    /// One device trying many accounts.
    DeviceFarm,
    /// A morph of the user's face with an enrolled attacker's.
    Morph,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Genuine => "genuine",
            Kind::Impostor => "impostor",
            Kind::EnrolledImpostor => "enrolled_impostor",
            Kind::Presentation => "presentation",
            Kind::Burst => "burst",
            Kind::DeviceFarm => "device_farm",
            Kind::Morph => "morph",
        }
    }

    pub fn is_fraud(self) -> bool {
        self != Kind::Genuine
    }
}

/// One labelled attempt.
pub struct Sample {
    pub kind: Kind,
    pub signals: Signals,
}

/// The generated attempts for every enrolment size: per identity its genuine attempts and
/// a sample of impostor and attack attempts (see [`Kind`]).
pub fn generate(samples: &[Labelled], seed: u64) -> Vec<Sample> {
    let identities = group(samples);
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for k in ENROLMENT_SIZES {
        let eligible: Vec<&Vec<&[f32]>> = identities.iter().filter(|i| i.len() > k).collect();
        if eligible.len() < 3 {
            continue;
        }
        let centroids: Vec<Vec<f32>> = eligible.iter().map(|i| centroid(&i[..k])).collect();
        // The best other enrolled user, leaving out the claimed one and, for an attacker who
        // is not enrolled, their own account.
        let conflict = |probe: &[f32], claimed: usize, absent: Option<usize>| {
            let searched = eligible.len() - 1 - usize::from(absent.is_some());
            centroids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != claimed && Some(*j) != absent)
                .map(|(_, c)| Conflict {
                    similarity: cosine(probe, c),
                    templates: k,
                    searched,
                })
                .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
        };
        for (i, images) in eligible.iter().enumerate() {
            let templates = &images[..k];
            let mut history: Vec<&[f32]> = Vec::new();
            for probe in &images[k..] {
                let mut s = genuine_context(&mut rng).apply(signals(probe, templates, &history));
                s.conflict = conflict(probe, i, None);
                out.push(Sample {
                    kind: Kind::Genuine,
                    signals: s,
                });
                history.push(probe);
            }
            let recent = &history[history.len().saturating_sub(8)..];
            let attack = |kind: Kind, probe: &[f32], absent: Option<usize>, c: Context| {
                let mut s = c.apply(signals(probe, templates, recent));
                s.conflict = conflict(probe, i, absent);
                Sample { kind, signals: s }
            };
            for _ in 0..IMPOSTORS_PER_IDENTITY {
                let j = other(&mut rng, eligible.len(), i);
                let probe = eligible[j][rng.below(eligible[j].len())];
                let c = impostor_context(&mut rng);
                let kind = if rng.chance(0.5) {
                    Kind::Impostor
                } else {
                    Kind::EnrolledImpostor
                };
                let absent = (kind == Kind::Impostor).then_some(j);
                out.push(attack(kind, probe, absent, c));
            }
            // Presentation: the user's own (unseen) face, a low liveness score.
            let own = images[k + rng.below(images.len() - k)];
            let mut c = impostor_context(&mut rng);
            c.liveness = Some(rng.between(0.0, 0.7) as f32);
            out.push(attack(Kind::Presentation, own, None, c));
            // Burst: many attempts on this account, most refused.
            let j = other(&mut rng, eligible.len(), i);
            let mut c = impostor_context(&mut rng);
            c.velocity.user_attempts = 5 + rng.below(40) as u32;
            c.velocity.user_failures = c.velocity.user_attempts * 3 / 4;
            out.push(attack(Kind::Burst, eligible[j][0], Some(j), c));
            // Device farm: one device, many accounts.
            let j = other(&mut rng, eligible.len(), i);
            let mut c = impostor_context(&mut rng);
            c.velocity.device_users = 3 + rng.below(30) as u32;
            c.new_device = true;
            out.push(attack(Kind::DeviceFarm, eligible[j][0], Some(j), c));
            // Morph of this user's face and an enrolled attacker's.
            let j = other(&mut rng, eligible.len(), i);
            let morph = centroid(&[own, eligible[j][rng.below(eligible[j].len())]]);
            let c = impostor_context(&mut rng);
            out.push(attack(Kind::Morph, &morph, None, c));
        }
    }
    out
}

fn other(rng: &mut Rng, n: usize, not: usize) -> usize {
    let j = rng.below(n - 1);
    if j >= not { j + 1 } else { j }
}

/// Fits the model: calibration measured on `samples` and the impostor-only `distractors`
/// (identities distinct from the samples'), its tail fitted beyond the data
/// ([`super::tail`]); weights by linfa's logistic regression on attempts generated from
/// `samples`, all embedded by `face_model`.
pub fn train(
    samples: &[Labelled],
    distractors: &[Labelled],
    face_model: FaceModelInfo,
    summary: TrainingSummary,
    alpha: f64,
    seed: u64,
) -> Result<RiskModel, LabError> {
    let calibration = fit_calibration(samples, distractors)?;
    let mut model = RiskModel {
        format: MODEL_FORMAT.into(),
        face_model: Some(face_model),
        version: String::new(),
        features: Feature::ALL.iter().map(|f| f.name().into()).collect(),
        weights: vec![0.0; Feature::ALL.len()],
        intercept: 0.0,
        calibration,
        operating_points: Vec::new(),
        training: summary,
    };
    let generated = generate(samples, seed);
    if generated.iter().all(|s| s.kind.is_fraud()) || generated.iter().all(|s| !s.kind.is_fraud()) {
        return Err(LabError::TooLittleData(
            "too few identities with enough images to generate attempts".into(),
        ));
    }
    let rows: Vec<FeatureVector> = generated
        .iter()
        .map(|s| model.features(&s.signals))
        .collect();
    let x = Array2::from_shape_fn((rows.len(), Feature::ALL.len()), |(r, c)| rows[r][c]);
    let y: Array1<bool> = generated.iter().map(|s| s.kind.is_fraud()).collect();
    let fitted = LogisticRegression::default()
        .alpha(alpha)
        .max_iterations(500)
        .fit(&Dataset::new(x, y))
        .map_err(|e| LabError::Fit(e.to_string()))?;
    // linfa's positive class is the larger one, whichever that is: orient to "fraud".
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    model.weights = fitted.params().iter().map(|w| sign * w).collect();
    model.intercept = sign * fitted.intercept();
    let mut counts = BTreeMap::new();
    for s in &generated {
        *counts.entry(s.kind.name().to_string()).or_insert(0) += 1;
    }
    model.training.samples = counts;
    model.training.alpha = alpha;
    model.operating_points = operating_points(&model, samples)?;
    model.version = model.computed_version();
    Ok(model)
}

/// FMR levels of the operating-point table.
const OPERATING_FMR_LEVELS: [f64; 15] = [
    0.99, 0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001,
    0.00005,
];

/// Measures the score thresholds at [`OPERATING_FMR_LEVELS`] on every impostor attempt of
/// the evaluation protocol (k = 1, 2, 3; attackers not enrolled, no context).
fn operating_points(model: &RiskModel, samples: &[Labelled]) -> Result<Vec<(f64, f64)>, LabError> {
    // Only the raw model scores are used; the provisional table merely lets `decide` run.
    let mut provisional = model.clone();
    provisional.operating_points = vec![(1.0, 1.0), (1e-9, 0.0)];
    let policy = RiskPolicy {
        model: Arc::new(provisional),
        allow_max_fmr: 0.001,
        step_up_max_fmr: 0.01,
        conflict_max_fmr: 0.01,
        enrolment_conflict_max_fmr: 0.1,
        identify_max_fmr: 0.001,
        min_liveness: 0.0,
        copy_min_similarity: 1.0,
        replay_history: 8,
        reason_min_log_odds: 1.0,
    };
    let mut scores = Vec::new();
    for k in ENROLMENT_SIZES {
        if let Ok(report) = evaluate_scores(&policy, samples, k) {
            scores.extend(report.scores.impostor_risk);
        }
    }
    if scores.len() < 10_000 {
        return Err(LabError::TooLittleData(format!(
            "{} impostor attempts are too few to set operating points (need 10,000)",
            scores.len()
        )));
    }
    scores.sort_by(f64::total_cmp);
    let n = scores.len() as f64;
    let mut points: Vec<(f64, f64)> = Vec::new();
    for level in OPERATING_FMR_LEVELS {
        // The largest threshold allowing at most `level` of the impostors (score ≤ t).
        let allowed = (level * n).floor() as usize;
        if allowed == 0 {
            break;
        }
        let threshold = scores[allowed - 1];
        let fmr = scores.partition_point(|&s| s <= threshold) as f64 / n;
        if points.last().is_none_or(|&(f, t)| fmr < f && threshold < t) {
            points.push((fmr, threshold));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let (x, y) = (a.unit(), b.unit());
            assert_eq!(x, y);
            assert!((0.0..1.0).contains(&x));
        }
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| other(&mut r, 5, 2) != 2));
    }
}

//! The risk model: the signals turned into a fixed feature vector, combined by a logistic
//! regression trained with linfa (`tee-risk train`) into one score in [0, 1], the estimated
//! probability that the attempt is fraudulent. The model file is versioned and carries the
//! match calibration it was trained with, so a score is always read with its own curves.

use serde::{Deserialize, Serialize};

use super::Signals;
use super::calibration::CalibrationSet;

/// The file format this build writes: format 2 and the face model it was trained for.
pub const MODEL_FORMAT: &str = "tee-risk-model/3";

/// Earlier formats this build still reads (no face model recorded: the configuration's
/// word is taken for it). Format 2 added the fitted tail; format 1 has curves as bare point
/// lists (beyond their last point they fall at their last slope).
pub const MODEL_FORMAT_2: &str = "tee-risk-model/2";
pub const MODEL_FORMAT_1: &str = "tee-risk-model/1";

/// The model shipped for dlib's 128-d ResNet (trained on the dev embeddings and the
/// distractors by `tee-risk train --face-model dlib-resnet128`).
pub const DEFAULT_MODEL_JSON: &str = include_str!("../../config/models/dlib-resnet128.json");

/// The models shipped in the binary, by face model id (`config/models/<id>.json`; the
/// `[features] models` entries with `model_file = ""` use them).
pub const BUILTIN_MODELS: [(&str, &str); 2] = [
    ("dlib-resnet128", DEFAULT_MODEL_JSON),
    (
        "mobilefacenet192",
        include_str!("../../config/models/mobilefacenet192.json"),
    ),
];

/// Evidence is capped here: beyond FMR 10⁻⁶ the calibration has no data.
const MAX_EVIDENCE: f64 = 6.0;

/// Among many enrolled users a genuine probe's best other match reaches a search-corrected
/// FMR of 10 % by chance often enough; only evidence beyond that counts as a conflict.
const CONFLICT_EVIDENCE_FLOOR: f64 = 1.0;

/// Recent accepted probes of the same person match a new one at least this well (FMR 0.1 %)
/// nearly always; drift is measured below it.
const DRIFT_EVIDENCE: f64 = 3.0;
/// Drift is measured against a history of at least this many accepted probes (requiring 3
/// measured worse on dev: FNMR at the operating point 6.25 % against 5.68 % at k = 2).
const DRIFT_MIN_HISTORY: usize = 1;

/// The lowest liveness score of a live capture (the low end of the genuine context the model
/// is trained on, `lab::synth`). The model reads only the shortfall below it: every score
/// at or above it, and no score at all, count the same. Liveness is the client's word, so an
/// attacker can always claim 1.0; a score can therefore only raise the risk (a capture the
/// client itself found doubtful), and leaving it out is never better than an honest live
/// score, nor worse than a forged perfect one.
pub const LIVE_SCORE_FLOOR: f32 = 0.85;

/// The model's inputs, in order. Each is 0 for an unremarkable attempt, so that a feature's
/// weight times its value is its contribution to the log-odds of fraud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// −log10 FMR of the probe's similarity to the claimed user's centroid: how far beyond
    /// impostor scores the match is (high is genuine-looking).
    MatchEvidence,
    /// −log10 FMR of the probe's best match among the other enrolled users, corrected for
    /// the number searched (the best of N impostors is N times likelier to match), less 1.
    ConflictEvidence,
    /// How far the client's liveness score falls short of [`LIVE_SCORE_FLOOR`] (0 for a
    /// live score and for none), so that leaving the score out never scores better than an
    /// honest live capture.
    LivenessDeficit,
    /// ln(1 + the user's attempts in the velocity window before this one).
    UserAttempts,
    /// ln(1 + the user's attempts that were denied in the window).
    UserFailures,
    /// ln(1 + other users this device tried in the window).
    DeviceUsers,
    /// 1 when the device has never been seen with this user (0 when none is named).
    NewDevice,
    /// How far the probe's best match with the user's recent accepted probes falls short of
    /// evidence 3 (FMR 0.1 %), in decades; 0 with fewer than 3 of them.
    Drift,
}

impl Feature {
    pub const ALL: [Feature; 8] = [
        Feature::MatchEvidence,
        Feature::ConflictEvidence,
        Feature::LivenessDeficit,
        Feature::UserAttempts,
        Feature::UserFailures,
        Feature::DeviceUsers,
        Feature::NewDevice,
        Feature::Drift,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::MatchEvidence => "match_evidence",
            Feature::ConflictEvidence => "conflict_evidence",
            Feature::LivenessDeficit => "liveness_deficit",
            Feature::UserAttempts => "user_attempts",
            Feature::UserFailures => "user_failures",
            Feature::DeviceUsers => "device_users",
            Feature::NewDevice => "new_device",
            Feature::Drift => "drift",
        }
    }
}

/// A feature vector in [`Feature::ALL`] order.
pub type FeatureVector = [f64; Feature::ALL.len()];

/// What `tee-risk train` saw, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSummary {
    /// The embeddings file's name and SM3 digest.
    pub data: String,
    pub data_sm3: String,
    pub identities: usize,
    pub images: usize,
    /// Labelled attempts by kind (genuine, impostor, each generated attack).
    pub samples: std::collections::BTreeMap<String, usize>,
    /// linfa-logistic's L2 penalty.
    pub alpha: f64,
    /// Impostor-only files the calibration was also fitted on (`tee-risk train
    /// --distractors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distractors: Vec<DataFile>,
}

/// A data file a model was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// The file's name and SM3 digest.
    pub data: String,
    pub data_sm3: String,
    pub identities: usize,
    pub images: usize,
}

/// The face model whose embeddings a risk model was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceModelInfo {
    /// The id requests name (`face_model`), e.g. `mobilefacenet192`.
    pub id: String,
    /// Its embedding dimension.
    pub dimension: usize,
}

/// The model file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskModel {
    pub format: String,
    /// The face model it was trained for (format 3; absent in earlier formats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_model: Option<FaceModelInfo>,
    /// Named in every assessment: `logit-<SM3 prefix of calibration and weights>`.
    pub version: String,
    /// Feature names in order; must equal this build's.
    pub features: Vec<String>,
    /// Log-odds of fraud = intercept + Σ weight·feature.
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub calibration: CalibrationSet,
    /// (FMR, score): the score at or below which that share of impostor attempts (not
    /// enrolled, no context) was allowed in training; FMR decreasing. Decision thresholds
    /// given as FMRs are read off this table, so "allow at FMR 0.1 %" means what it says.
    pub operating_points: Vec<(f64, f64)>,
    pub training: TrainingSummary,
}

/// Why a model file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Not JSON of the model's shape.
    #[error("not a risk model file: {0}")]
    Parse(#[from] serde_json::Error),
    /// Another format version.
    #[error(
        "risk model format `{0}` is not {MODEL_FORMAT} (or {MODEL_FORMAT_2}, {MODEL_FORMAT_1})"
    )]
    Format(String),
    /// Format 3 without its face model, or an earlier format with one.
    #[error(
        "risk model format {MODEL_FORMAT} names its face model (id, dimension); earlier formats do not"
    )]
    FaceModel,
    /// Features other than this build's, or in another order.
    #[error("risk model features {found:?} are not this build's {expected:?}")]
    Features {
        /// The file's feature names.
        found: Vec<String>,
        /// This build's.
        expected: Vec<&'static str>,
    },
    /// A weight is missing or not finite.
    #[error("risk model weights must be finite, one per feature")]
    Weights,
    /// The operating-point table is not monotone or out of range.
    #[error("risk model operating points must have FMR and score decreasing")]
    OperatingPoints,
    /// The version does not match the content (the file was edited).
    #[error("risk model version `{found}` does not match its content (`{computed}`)")]
    Version {
        /// The version the file names.
        found: String,
        /// The version of its content.
        computed: String,
    },
}

impl RiskModel {
    /// Parses and checks a model file: format, feature names and finite weights.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let model: RiskModel = serde_json::from_str(text)?;
        if ![MODEL_FORMAT, MODEL_FORMAT_2, MODEL_FORMAT_1].contains(&model.format.as_str()) {
            return Err(ModelError::Format(model.format));
        }
        if (model.format == MODEL_FORMAT)
            != model
                .face_model
                .as_ref()
                .is_some_and(|f| !f.id.is_empty() && f.dimension > 0)
        {
            return Err(ModelError::FaceModel);
        }
        let expected: Vec<&'static str> = Feature::ALL.iter().map(|f| f.name()).collect();
        if model.features != expected {
            return Err(ModelError::Features {
                found: model.features,
                expected,
            });
        }
        if model.weights.len() != expected.len()
            || !model
                .weights
                .iter()
                .chain([&model.intercept])
                .all(|w| w.is_finite())
        {
            return Err(ModelError::Weights);
        }
        if model.operating_points.len() < 2
            || model
                .operating_points
                .windows(2)
                .any(|w| w[0].0 <= w[1].0 || w[0].1 < w[1].1)
            || model
                .operating_points
                .iter()
                .any(|&(f, p)| !(f > 0.0 && f <= 1.0 && (0.0..=1.0).contains(&p)))
        {
            return Err(ModelError::OperatingPoints);
        }
        if model.version != model.computed_version() {
            return Err(ModelError::Version {
                computed: model.computed_version(),
                found: model.version,
            });
        }
        Ok(model)
    }

    /// The shipped model of dlib's 128-d ResNet (the default face model).
    pub fn builtin() -> Self {
        Self::from_json(DEFAULT_MODEL_JSON)
            .expect("config/models/dlib-resnet128.json is a valid model")
    }

    /// The model shipped for `face_model`, if one is.
    pub fn builtin_for(face_model: &str) -> Option<Self> {
        BUILTIN_MODELS
            .iter()
            .find(|(id, _)| *id == face_model)
            .map(|(id, json)| {
                Self::from_json(json)
                    .unwrap_or_else(|e| panic!("config/models/{id}.json is not a valid model: {e}"))
            })
    }

    /// The version a model with this content carries: a digest of what decides scores,
    /// each number to 12 significant digits (JSON parsing may move a float by one unit in
    /// the last place, which must not change the version).
    pub fn computed_version(&self) -> String {
        let mut content = self.features.join(",");
        let mut push = |x: f64| content.push_str(&format!(";{x:.11e}"));
        self.weights.iter().for_each(|&w| push(w));
        push(self.intercept);
        for k in 1..=self.calibration.sizes() {
            for &(s, f) in self.calibration.for_templates(k).points() {
                push(f64::from(s));
                push(f);
            }
        }
        for &(f, s) in &self.operating_points {
            push(f);
            push(s);
        }
        format!(
            "logit-{}",
            &crate::crypto::sm3_hex(content.as_bytes())[..12]
        )
    }

    /// −log10 FMR of a similarity to a centroid of `templates` templates, in [0, 6].
    pub fn evidence(&self, templates: usize, similarity: f32) -> f64 {
        let fmr = self.calibration.false_match_rate(templates, similarity);
        (-fmr.max(1e-300).log10()).clamp(0.0, MAX_EVIDENCE)
    }

    /// The feature vector of an attempt with at least one template.
    pub fn features(&self, s: &Signals) -> FeatureVector {
        let mut x = [0.0; Feature::ALL.len()];
        for (value, feature) in x.iter_mut().zip(Feature::ALL) {
            *value = match feature {
                Feature::MatchEvidence => s
                    .match_similarity
                    .map_or(0.0, |m| self.evidence(s.templates, m)),
                Feature::ConflictEvidence => s.conflict.map_or(0.0, |c| {
                    let search = -c.search_fmr(&self.calibration).max(1e-300).log10();
                    (search - CONFLICT_EVIDENCE_FLOOR).clamp(0.0, MAX_EVIDENCE)
                }),
                Feature::LivenessDeficit => s
                    .liveness
                    .map_or(0.0, |l| f64::from(LIVE_SCORE_FLOOR - l).clamp(0.0, 1.0)),
                Feature::UserAttempts => f64::from(s.velocity.user_attempts).ln_1p(),
                Feature::UserFailures => f64::from(s.velocity.user_failures).ln_1p(),
                Feature::DeviceUsers => f64::from(s.velocity.device_users).ln_1p(),
                Feature::NewDevice => f64::from(u8::from(s.new_device)),
                Feature::Drift => match s.history_similarity {
                    Some(h) if s.history >= DRIFT_MIN_HISTORY => {
                        (DRIFT_EVIDENCE - self.evidence(1, h)).max(0.0)
                    }
                    _ => 0.0,
                },
            };
        }
        x
    }

    /// Log-odds of fraud for a feature vector.
    pub fn log_odds(&self, x: &FeatureVector) -> f64 {
        self.intercept + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }

    /// The score: probability of fraud, in [0, 1].
    pub fn probability(&self, x: &FeatureVector) -> f64 {
        1.0 / (1.0 + (-self.log_odds(x)).exp())
    }

    /// The model's score of an attempt's signals (before hard rules and floors).
    pub fn score(&self, signals: &Signals) -> f64 {
        self.probability(&self.features(signals))
    }

    /// How much `feature` adds to the log-odds of this attempt.
    pub fn contribution(&self, x: &FeatureVector, feature: Feature) -> f64 {
        let i = Feature::ALL
            .iter()
            .position(|f| *f == feature)
            .expect("every feature is in ALL");
        self.weights[i] * x[i]
    }

    /// The score threshold that allowed a share `fmr` of impostors in training, log-linear
    /// between operating points and clamped to the table.
    pub fn score_at_fmr(&self, fmr: f64) -> f64 {
        let points = &self.operating_points;
        let (first, last) = (points[0], points[points.len() - 1]);
        if fmr >= first.0 {
            return first.1;
        }
        if fmr <= last.0 {
            return last.1;
        }
        let i = points.partition_point(|&(f, _)| f > fmr);
        let ((f0, s0), (f1, s1)) = (points[i - 1], points[i]);
        let t = (fmr.ln() - f0.ln()) / (f1.ln() - f0.ln());
        s0 + t * (s1 - s0)
    }

    /// The feature vector of an unremarkable attempt whose match has this evidence.
    pub fn with_match_evidence(evidence: f64) -> FeatureVector {
        let mut x = [0.0; Feature::ALL.len()];
        x[0] = evidence.clamp(0.0, MAX_EVIDENCE);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_model_loads_and_names_its_content() {
        let model = RiskModel::builtin();
        assert_eq!(model.version, model.computed_version());
        let mut changed = model.clone();
        changed.weights[0] += 0.001;
        let text = serde_json::to_string(&changed).unwrap();
        let error = RiskModel::from_json(&text).unwrap_err();
        assert!(matches!(error, ModelError::Version { .. }), "{error}");
    }

    #[test]
    fn refuses_other_formats_and_feature_sets() {
        let mut model = RiskModel::builtin();
        model.format = "tee-risk-model/0".into();
        assert!(
            RiskModel::from_json(&serde_json::to_string(&model).unwrap())
                .unwrap_err()
                .to_string()
                .contains("format")
        );
        let mut model = RiskModel::builtin();
        model.features.pop();
        assert!(
            RiskModel::from_json(&serde_json::to_string(&model).unwrap())
                .unwrap_err()
                .to_string()
                .contains("features")
        );
        assert!(RiskModel::from_json("{}").is_err());
    }

    /// Whatever linfa took as its positive class, the shipped score rises with every risk
    /// feature and falls as the match strengthens.
    #[test]
    fn score_rises_with_risk() {
        let model = RiskModel::builtin();
        let base = RiskModel::with_match_evidence(3.5);
        for (i, feature) in Feature::ALL.iter().enumerate() {
            let mut more = base;
            more[i] += 1.0;
            let (before, after) = (model.probability(&base), model.probability(&more));
            if *feature == Feature::MatchEvidence {
                assert!(after < before, "stronger match must lower the score");
            } else {
                assert!(after > before, "{} must raise the score", feature.name());
            }
        }
        assert!(model.score_at_fmr(0.001) < model.score_at_fmr(0.01));
    }
}

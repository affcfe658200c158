//! Maps a similarity to the false-match rate measured at that similarity on real impostor
//! pairs, so a match signal means "how often a different person scores this high".
//! A user with k templates is matched against their centroid, whose impostor scores are
//! spread differently for each k: one curve per enrolment size. `tee-risk train` measures
//! them for a deployment's own embedding model and ships them in the model file.

use serde::{Deserialize, Serialize};

/// Enrolment sizes with a curve of their own; larger enrolments use the last one (their
/// centroids are at least as well estimated, so its FMRs are conservative).
pub const CALIBRATED_ENROLMENT_SIZES: usize = 5;

/// FMR levels at which curves get measured points, as far as the data resolves them.
pub const CALIBRATION_FMR_LEVELS: [f64; 21] = [
    0.99, 0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001,
    0.00005, 0.00002, 0.00001, 5e-6, 2e-6, 1e-6, 5e-7,
];

/// A measured point needs at least this many impostor scores at or above it: fewer give an
/// FMR whose relative error exceeds 10 %; below, the fitted tail takes over.
pub const MIN_PAIRS_PER_POINT: usize = 100;

/// One curve: points (similarity, FMR), similarity strictly increasing, FMR strictly
/// decreasing. The first `measured` points are read off the impostor scores (at least
/// [`MIN_PAIRS_PER_POINT`] pairs above each); the rest come from the fitted tail (`tail`):
/// the similarity above which a stranger scores with probability at most that FMR, at the
/// tail fit's upper confidence bound. Beyond the last point the curve goes on falling at its
/// last slope (log-linear), never to zero: no similarity below 1 is called impossible for a
/// stranger.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    points: Vec<(f32, f64)>,
    measured: usize,
    tail: Option<TailFit>,
}

/// How the tail of a curve was fitted (`tee-risk train`, `lab::tail`): a generalised Pareto
/// distribution over the impostor scores above `threshold`, by maximum likelihood, with a
/// bootstrap bound. Carried in the model file so that an auditor sees what the points beyond
/// the data rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailFit {
    /// Impostor pairs the curve was measured on.
    pub pairs: u64,
    /// The similarity above which the tail model is fitted.
    pub threshold: f32,
    /// Impostor scores above it (the fit's sample), and their share of `pairs`.
    pub exceedances: u64,
    pub exceedance_rate: f64,
    /// GPD shape ξ (negative: a bounded tail, as cosine similarity is) and scale σ, the
    /// maximum-likelihood estimate.
    pub shape: f64,
    pub scale: f64,
    /// Bootstrap resamples of the exceedances, and the one-sided confidence of the bound the
    /// tail points carry.
    pub resamples: u32,
    pub confidence: f64,
}

/// The model file's form of a curve: an object with the tail (format 2), or the bare list
/// of points of format 1 (no tail: extrapolated at its last slope).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CurveFile {
    Fitted {
        points: Vec<(f32, f64)>,
        measured: usize,
        tail: TailFit,
    },
    Points(Vec<(f32, f64)>),
}

/// Why a calibration curve was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrationError {
    /// A curve has fewer than two points.
    #[error("calibration needs at least two points")]
    TooFewPoints,
    /// A point is out of range.
    #[error(
        "calibration point ({similarity}, {fmr}) must have similarity in [-1, 1] and FMR in (0, 1]"
    )]
    PointOutOfRange {
        /// The point's similarity.
        similarity: f32,
        /// The point's false match rate.
        fmr: f64,
    },
    /// The curve is not strictly monotone.
    #[error("calibration similarities must increase and FMRs decrease strictly")]
    NotMonotone,
    /// More measured points than points.
    #[error("a curve cannot have more measured points than points")]
    Measured,
    /// A set without the one-template curve.
    #[error("a calibration set needs the curve for one template at least")]
    EmptySet,
    /// The data has too few impostor pairs.
    #[error("{0} impostor pairs are too few to calibrate (need at least 1000)")]
    TooFewPairs(usize),
}

impl<'de> Deserialize<'de> for Calibration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let curve = match CurveFile::deserialize(d)? {
            CurveFile::Fitted {
                points,
                measured,
                tail,
            } => Self::with_tail(points, measured, Some(tail)),
            CurveFile::Points(points) => Self::new(points),
        };
        curve.map_err(serde::de::Error::custom)
    }
}

impl Serialize for Calibration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.tail {
            Some(tail) => CurveFile::Fitted {
                points: self.points.clone(),
                measured: self.measured,
                tail: tail.clone(),
            },
            None => CurveFile::Points(self.points.clone()),
        }
        .serialize(s)
    }
}

/// One curve per enrolment size 1, 2, …: `for_templates(k)` picks the one for a user with k
/// templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Calibration>", into = "Vec<Calibration>")]
pub struct CalibrationSet {
    by_size: Vec<Calibration>,
}

impl TryFrom<Vec<Calibration>> for CalibrationSet {
    type Error = CalibrationError;
    fn try_from(by_size: Vec<Calibration>) -> Result<Self, CalibrationError> {
        if by_size.is_empty() {
            return Err(CalibrationError::EmptySet);
        }
        Ok(Self { by_size })
    }
}

impl From<CalibrationSet> for Vec<Calibration> {
    fn from(c: CalibrationSet) -> Self {
        c.by_size
    }
}

impl CalibrationSet {
    /// A set from its curves, one per enrolment size 1, 2, … (at least one).
    pub fn new(by_size: Vec<Calibration>) -> Result<Self, CalibrationError> {
        Self::try_from(by_size)
    }

    /// The curve for a user with `templates` templates (at least one).
    pub fn for_templates(&self, templates: usize) -> &Calibration {
        &self.by_size[templates.clamp(1, self.by_size.len()) - 1]
    }

    /// FMR of a centroid of `templates` templates at `similarity`.
    pub fn false_match_rate(&self, templates: usize, similarity: f32) -> f64 {
        self.for_templates(templates).false_match_rate(similarity)
    }

    pub fn sizes(&self) -> usize {
        self.by_size.len()
    }
}

impl Calibration {
    /// A curve of measured points only (no tail).
    pub fn new(points: Vec<(f32, f64)>) -> Result<Self, CalibrationError> {
        let measured = points.len();
        Self::with_tail(points, measured, None)
    }

    /// A curve whose first `measured` points were measured and the rest come from `tail`.
    pub fn with_tail(
        points: Vec<(f32, f64)>,
        measured: usize,
        tail: Option<TailFit>,
    ) -> Result<Self, CalibrationError> {
        if points.len() < 2 {
            return Err(CalibrationError::TooFewPoints);
        }
        if measured > points.len() {
            return Err(CalibrationError::Measured);
        }
        for &(s, f) in &points {
            if !((-1.0..=1.0).contains(&s) && f > 0.0 && f <= 1.0) {
                return Err(CalibrationError::PointOutOfRange {
                    similarity: s,
                    fmr: f,
                });
            }
        }
        if points
            .windows(2)
            .any(|w| w[0].0 >= w[1].0 || w[0].1 <= w[1].1)
        {
            return Err(CalibrationError::NotMonotone);
        }
        Ok(Self {
            points,
            measured,
            tail,
        })
    }

    pub fn points(&self) -> &[(f32, f64)] {
        &self.points
    }

    /// The points read off the data (the rest are the tail model's).
    pub fn measured_points(&self) -> &[(f32, f64)] {
        &self.points[..self.measured]
    }

    pub fn tail(&self) -> Option<&TailFit> {
        self.tail.as_ref()
    }

    /// FMR at `similarity`: log-linear between points (impostor tails fall off roughly
    /// exponentially), the first point's FMR below the curve, and beyond the last point the
    /// last segment's log-linear slope continued: smaller and smaller, never zero.
    pub fn false_match_rate(&self, similarity: f32) -> f64 {
        let first = self.points[0];
        if similarity <= first.0 {
            return first.1;
        }
        let n = self.points.len();
        let i = self
            .points
            .partition_point(|&(s, _)| s <= similarity)
            .min(n - 1);
        let (s0, f0) = self.points[i - 1];
        let (s1, f1) = self.points[i];
        let t = f64::from(similarity - s0) / f64::from(s1 - s0);
        (f0.ln() + t * (f1.ln() - f0.ln()))
            .exp()
            .clamp(f64::MIN_POSITIVE, 1.0)
    }

    /// The lowest similarity whose FMR is at most `fmr` (the inverse of
    /// [`Self::false_match_rate`]), by bisection; 1 when none below 1 is.
    pub fn similarity_at(&self, fmr: f64) -> f32 {
        let (mut low, mut high) = (-1.0f32, 1.0f32);
        if self.false_match_rate(high) > fmr {
            return 1.0;
        }
        for _ in 0..60 {
            let mid = (low + high) / 2.0;
            if mid <= low || mid >= high {
                break;
            }
            if self.false_match_rate(mid) > fmr {
                low = mid;
            } else {
                high = mid;
            }
        }
        high
    }
}

/// Points (threshold, measured FMR) through sorted impostor scores: at each level (FMRs,
/// decreasing), the smallest threshold whose share of scores at or above it is at most the
/// level, as far as at least `min_above` scores lie at or above it.
pub fn measured_points(
    impostor: &[f32],
    levels: &[f64],
    min_above: usize,
) -> Result<Vec<(f32, f64)>, CalibrationError> {
    if impostor.len() < 1000 {
        return Err(CalibrationError::TooFewPairs(impostor.len()));
    }
    let n = impostor.len() as f64;
    let mut points: Vec<(f32, f64)> = Vec::new();
    for &level in levels {
        let above = (level * n).floor() as usize;
        if above < min_above.max(1) {
            break;
        }
        let threshold = impostor[impostor.len() - above];
        let measured = impostor.len() - impostor.partition_point(|&s| s < threshold);
        let fmr = measured as f64 / n;
        if points.last().is_none_or(|&(s, f)| threshold > s && fmr < f) {
            points.push((threshold, fmr));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::cosine;

    #[test]
    fn rejects_bad_curves() {
        assert!(Calibration::new(vec![(0.5, 0.1)]).is_err());
        assert!(Calibration::new(vec![(0.5, 0.1), (0.4, 0.01)]).is_err());
        assert!(Calibration::new(vec![(0.5, 0.1), (0.6, 0.2)]).is_err());
        assert!(Calibration::new(vec![(0.5, 0.0), (0.6, 0.0)]).is_err());
        assert!(Calibration::new(vec![(0.5, 0.1), (1.5, 0.01)]).is_err());
    }

    #[test]
    fn interpolates_log_linearly_and_clamps() {
        let c = Calibration::new(vec![(0.8, 0.1), (0.9, 0.001)]).unwrap();
        assert_eq!(c.false_match_rate(0.1), 0.1);
        assert!((c.false_match_rate(0.85) - 0.01).abs() < 1e-7);
        assert!((c.false_match_rate(0.9) - 0.001).abs() < 1e-12);
        // Beyond the last point: the last slope (two decades per 0.1) goes on, never 0.
        assert!((c.false_match_rate(0.95) - 0.0001).abs() < 1e-9);
        assert!((c.false_match_rate(1.0) - 0.00001).abs() < 1e-10);
        assert!((c.similarity_at(0.01) - 0.85).abs() < 1e-5);
        assert!((c.similarity_at(0.0001) - 0.95).abs() < 1e-5);
        assert_eq!(c.similarity_at(1e-9), 1.0, "beyond similarity 1");
    }

    #[test]
    fn model_files_of_format_1_and_2_read_and_write_back() {
        let old: Calibration = serde_json::from_str("[[0.8, 0.1], [0.9, 0.001]]").unwrap();
        assert_eq!(old.measured_points().len(), 2);
        assert!(old.tail().is_none());
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            "[[0.8,0.1],[0.9,0.001]]"
        );
        let tail = TailFit {
            pairs: 10_000,
            threshold: 0.85,
            exceedances: 100,
            exceedance_rate: 0.01,
            shape: -0.2,
            scale: 0.03,
            resamples: 100,
            confidence: 0.95,
        };
        let fitted =
            Calibration::with_tail(vec![(0.8, 0.1), (0.9, 0.001), (0.95, 1e-6)], 2, Some(tail))
                .unwrap();
        let text = serde_json::to_string(&fitted).unwrap();
        let back: Calibration = serde_json::from_str(&text).unwrap();
        assert_eq!(back, fitted);
        assert_eq!(back.measured_points().len(), 2);
        assert!(
            serde_json::from_str::<Calibration>(&text.replace("\"measured\":2", "\"measured\":4"))
                .is_err()
        );
    }

    #[test]
    fn measured_curve_matches_its_data() {
        // Two-dimensional unit vectors at random angles, one identity each: every pair is
        // an impostor pair, so the curve must report the share of pairs above each point.
        let mut state = 0x1234_5678u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 10_000) as f32 / 10_000.0 * std::f32::consts::PI
        };
        let embeddings: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                let a = next();
                vec![a.cos(), a.sin()]
            })
            .collect();
        // One identity each: every pair is an impostor pair.
        let mut scores: Vec<f32> = (0..embeddings.len())
            .flat_map(|i| (i + 1..embeddings.len()).map(move |j| (i, j)))
            .map(|(i, j)| cosine(&embeddings[i], &embeddings[j]))
            .collect();
        scores.sort_by(f32::total_cmp);
        let curve = Calibration::new(measured_points(&scores, &CALIBRATION_FMR_LEVELS, 1).unwrap())
            .unwrap();
        for &(s, f) in curve.points() {
            let share = scores.iter().filter(|&&x| x >= s).count() as f64 / scores.len() as f64;
            assert!(
                (share - f).abs() < 1e-12,
                "point ({s}, {f}) vs measured {share}"
            );
        }
    }
}

//! Maps a similarity to the false-match rate measured at that similarity on real impostor
//! pairs, so a match signal means "how often a different person scores this high".
//! A user with k templates is matched against their centroid, whose impostor scores are
//! spread differently for each k: one curve per enrolment size. `tee-risk train` measures
//! them for a deployment's own embedding model and ships them in the model file.

use serde::{Deserialize, Serialize};

use crate::risk::{centroid, cosine};

/// Enrolment sizes with a curve of their own; larger enrolments use the last one (their
/// centroids are at least as well estimated, so its FMRs are conservative).
pub const CALIBRATED_ENROLMENT_SIZES: usize = 5;

/// FMR levels at which `measure` places curve points.
pub const CALIBRATION_FMR_LEVELS: [f64; 15] = [
    0.99, 0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001,
    0.00005,
];

/// Points (similarity, FMR), similarity strictly increasing, FMR strictly decreasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<(f32, f64)>", into = "Vec<(f32, f64)>")]
pub struct Calibration {
    points: Vec<(f32, f64)>,
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
    /// A set without the one-template curve.
    #[error("a calibration set needs the curve for one template at least")]
    EmptySet,
    /// The data has too few impostor pairs.
    #[error("{0} impostor pairs are too few to calibrate (need at least 1000)")]
    TooFewPairs(usize),
}

impl TryFrom<Vec<(f32, f64)>> for Calibration {
    type Error = CalibrationError;
    fn try_from(points: Vec<(f32, f64)>) -> Result<Self, CalibrationError> {
        Self::new(points)
    }
}

impl From<Calibration> for Vec<(f32, f64)> {
    fn from(c: Calibration) -> Self {
        c.points
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
    /// The curve for a user with `templates` templates (at least one).
    pub fn for_templates(&self, templates: usize) -> &Calibration {
        &self.by_size[templates.clamp(1, self.by_size.len()) - 1]
    }

    /// FMR of a centroid of `templates` templates at `similarity`.
    pub fn false_match_rate(&self, templates: usize, similarity: f32) -> f64 {
        self.for_templates(templates).false_match_rate(similarity)
    }

    /// Measures a curve for every enrolment size 1..=[`CALIBRATED_ENROLMENT_SIZES`] that the
    /// data allows (sizes with too few impostor pairs are left out).
    pub fn measure(
        identities: &[usize],
        embeddings: &[Vec<f32>],
    ) -> Result<Self, CalibrationError> {
        let mut by_size = vec![Calibration::measure(identities, embeddings)?];
        for k in 2..=CALIBRATED_ENROLMENT_SIZES {
            match Calibration::measure_centroids(identities, embeddings, k) {
                Ok(curve) => by_size.push(curve),
                Err(_) => break,
            }
        }
        Ok(Self { by_size })
    }

    pub fn sizes(&self) -> usize {
        self.by_size.len()
    }
}

impl Calibration {
    pub fn new(points: Vec<(f32, f64)>) -> Result<Self, CalibrationError> {
        if points.len() < 2 {
            return Err(CalibrationError::TooFewPoints);
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
        Ok(Self { points })
    }

    pub fn points(&self) -> &[(f32, f64)] {
        &self.points
    }

    /// FMR at `similarity`: log-linear between points (impostor tails fall off roughly
    /// exponentially), the first point's FMR below the curve, and linear to 0 at
    /// similarity 1 above it.
    pub fn false_match_rate(&self, similarity: f32) -> f64 {
        let first = self.points[0];
        let last = self.points[self.points.len() - 1];
        if similarity <= first.0 {
            return first.1;
        }
        if similarity >= last.0 {
            let span = 1.0 - f64::from(last.0);
            if span <= 0.0 {
                return 0.0;
            }
            let left = (1.0 - f64::from(similarity)).max(0.0);
            return last.1 * left / span;
        }
        let i = self.points.partition_point(|&(s, _)| s <= similarity);
        let (s0, f0) = self.points[i - 1];
        let (s1, f1) = self.points[i];
        let t = f64::from(similarity - s0) / f64::from(s1 - s0);
        (f0.ln() + t * (f1.ln() - f0.ln())).exp()
    }

    /// Measures the curve on labelled unit embeddings: every pair of different identities is
    /// an impostor attempt.
    pub fn measure(
        identities: &[usize],
        embeddings: &[Vec<f32>],
    ) -> Result<Self, CalibrationError> {
        Self::from_impostor_scores(impostor_scores(identities, embeddings))
    }

    /// Measures the curve of k-template enrolments: each identity's images, in order, form
    /// disjoint groups of `k` whose centroid is compared with every image of every other
    /// identity.
    pub fn measure_centroids(
        identities: &[usize],
        embeddings: &[Vec<f32>],
        k: usize,
    ) -> Result<Self, CalibrationError> {
        let mut by_identity: std::collections::BTreeMap<usize, Vec<&[f32]>> = Default::default();
        for (&id, e) in identities.iter().zip(embeddings) {
            by_identity.entry(id).or_default().push(e);
        }
        let mut impostor = Vec::new();
        for (&id, images) in &by_identity {
            for group in images.chunks_exact(k) {
                let c = centroid(group);
                for (&other, e) in identities.iter().zip(embeddings) {
                    if other != id {
                        impostor.push(cosine(&c, e));
                    }
                }
            }
        }
        impostor.sort_by(f32::total_cmp);
        Self::from_impostor_scores(impostor)
    }

    /// The curve through sorted impostor scores at [`CALIBRATION_FMR_LEVELS`].
    fn from_impostor_scores(impostor: Vec<f32>) -> Result<Self, CalibrationError> {
        if impostor.len() < 1000 {
            return Err(CalibrationError::TooFewPairs(impostor.len()));
        }
        let n = impostor.len() as f64;
        let mut points: Vec<(f32, f64)> = Vec::new();
        for level in CALIBRATION_FMR_LEVELS {
            // Smallest threshold whose share of impostor scores at or above it is ≤ level.
            let above = (level * n).floor() as usize;
            if above == 0 {
                break;
            }
            let threshold = impostor[impostor.len() - above];
            let measured = impostor.len() - impostor.partition_point(|&s| s < threshold);
            let fmr = measured as f64 / n;
            if points.last().is_none_or(|&(s, f)| threshold > s && fmr < f) {
                points.push((threshold, fmr));
            }
        }
        Self::new(points)
    }
}

/// Sorted cosine scores of all pairs with different identities.
pub fn impostor_scores(identities: &[usize], embeddings: &[Vec<f32>]) -> Vec<f32> {
    let mut scores = pair_scores(identities, embeddings, false);
    scores.sort_by(f32::total_cmp);
    scores
}

/// Cosine scores of all pairs with the same identity.
pub fn genuine_scores(identities: &[usize], embeddings: &[Vec<f32>]) -> Vec<f32> {
    pair_scores(identities, embeddings, true)
}

/// Cosine scores of every unordered pair whose identities are equal (`same`) or differ.
fn pair_scores(identities: &[usize], embeddings: &[Vec<f32>], same: bool) -> Vec<f32> {
    let mut scores = Vec::new();
    for i in 0..embeddings.len() {
        for j in (i + 1)..embeddings.len() {
            if (identities[i] == identities[j]) == same {
                scores.push(cosine(&embeddings[i], &embeddings[j]));
            }
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!((c.false_match_rate(0.95) - 0.0005).abs() < 1e-7);
        assert_eq!(c.false_match_rate(1.0), 0.0);
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
        let ids: Vec<usize> = (0..200).collect();
        let curve = Calibration::measure(&ids, &embeddings).unwrap();
        let scores = impostor_scores(&ids, &embeddings);
        for &(s, f) in curve.points() {
            let share = scores.iter().filter(|&&x| x >= s).count() as f64 / scores.len() as f64;
            assert!(
                (share - f).abs() < 1e-12,
                "point ({s}, {f}) vs measured {share}"
            );
        }
    }
}

//! The low-FMR tail of a calibration curve, fitted rather than drawn: above a high threshold
//! u the impostor scores are modelled by a generalised Pareto distribution (GPD; the
//! peaks-over-threshold approach of extreme-value theory), fitted by maximum likelihood, and
//! the curve beyond the data carries the fit's upper confidence bound from a bootstrap of the
//! exceedances. So a 1:N decision in a gallery of a million, which asks for a per-pair FMR
//! of 10⁻⁸, reads a modelled and bounded rate instead of a line drawn to zero.
//!
//! Hand-written because no maintained Rust crate fits a GPD (statrs has no GPD; the R and
//! Python packages that do are not available in a TEE build, and this runs only in the lab).
//! The fit is Grimshaw's (1993) reduction of the two-parameter likelihood to one dimension:
//! for θ = ξ/σ, ξ(θ) = mean ln(1 + θy) and the profile log-likelihood is
//! −n (ln(ξ/θ) + ξ + 1); θ → 0 is the exponential tail.

use serde::Serialize;

use super::synth::{Labelled, Rng};
use crate::risk::calibration::{
    CALIBRATED_ENROLMENT_SIZES, CALIBRATION_FMR_LEVELS, Calibration, CalibrationError,
    CalibrationSet, MIN_PAIRS_PER_POINT, TailFit, measured_points,
};
use crate::risk::{centroid, cosine};

/// Exceedances fitted: about the top 0.1 % of the pairs, within these bounds.
const MIN_EXCEEDANCES: usize = 250;
const MAX_EXCEEDANCES: usize = 2_000;
/// Bootstrap resamples behind the bound, and its one-sided confidence.
const RESAMPLES: usize = 100;
const CONFIDENCE: f64 = 0.95;
/// The tail's points: one per decade (and half decade) below the measured points, down to
/// this FMR (a per-pair FMR of 10⁻¹² corrects a 1 % budget for a gallery of 10¹⁰).
const LOWEST_TAIL_FMR: f64 = 1e-12;
/// Seed of the bootstrap (the fit is deterministic: the same data give the same model).
const SEED: u64 = 0x07a1_1f17;

/// Enrolments of k templates formed per identity for the impostor scores: every k-subset of
/// its images when there are at most this many, else this many spread evenly over them.
const SUBSETS_PER_IDENTITY: usize = 45;

/// The impostor scores of enrolments of `k` templates, sorted ascending: the centroid of
/// each k-subset of an identity's images in `main` (see `SUBSETS_PER_IDENTITY`) against
/// every image of every other identity of `main` and `extra`. For k = 1, every pair of images
/// of different identities; pairs with both images in `extra` count only when `extra_pairs`
/// is set.
pub fn impostor_scores(
    main: &[Labelled],
    extra: &[Labelled],
    k: usize,
    extra_pairs: bool,
) -> Vec<f32> {
    let mut scores = Vec::new();
    for_each_impostor_pair(main, extra, k, extra_pairs, |s, _, _| scores.push(s));
    scores.sort_by(f32::total_cmp);
    scores
}

/// The impostor pairs of [`impostor_scores`] at or above `threshold`, with the two
/// identities of each (the enrolled one first), best first.
pub fn impostor_pairs_above(
    main: &[Labelled],
    extra: &[Labelled],
    k: usize,
    threshold: f32,
) -> Vec<(f32, usize, usize)> {
    let mut pairs = Vec::new();
    for_each_impostor_pair(main, extra, k, true, |s, a, b| {
        if s >= threshold {
            pairs.push((s, a, b));
        }
    });
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    pairs
}

/// Visits every impostor pair of enrolment size `k` (see [`impostor_scores`]) as (score,
/// identity of the enrolment, identity of the probe).
fn for_each_impostor_pair(
    main: &[Labelled],
    extra: &[Labelled],
    k: usize,
    extra_pairs: bool,
    mut visit: impl FnMut(f32, usize, usize),
) {
    if k <= 1 {
        let all: Vec<&Labelled> = main.iter().chain(extra).collect();
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate().skip(i + 1) {
                let both_extra = i >= main.len() && j >= main.len();
                if a.identity != b.identity && (extra_pairs || !both_extra) {
                    visit(cosine(a.embedding, b.embedding), a.identity, b.identity);
                }
            }
        }
        return;
    }
    let mut by_identity: std::collections::BTreeMap<usize, Vec<&[f32]>> = Default::default();
    for s in main {
        by_identity.entry(s.identity).or_default().push(s.embedding);
    }
    for (&id, images) in &by_identity {
        for subset in subsets(images.len(), k, SUBSETS_PER_IDENTITY) {
            let window: Vec<&[f32]> = subset.iter().map(|&i| images[i]).collect();
            let c = centroid(&window);
            for other in main.iter().chain(extra).filter(|s| s.identity != id) {
                visit(cosine(&c, other.embedding), id, other.identity);
            }
        }
    }
}

/// At most `most` of the k-subsets of 0..n in lexicographic order, evenly spaced (all of
/// them when there are no more).
fn subsets(n: usize, k: usize, most: usize) -> Vec<Vec<usize>> {
    if k == 0 || k > n {
        return Vec::new();
    }
    let mut all = Vec::new();
    let mut current: Vec<usize> = (0..k).collect();
    loop {
        all.push(current.clone());
        // The rightmost index that can move, moved, and the ones after it reset.
        let Some(i) = (0..k).rev().find(|&i| current[i] < n - k + i) else {
            break;
        };
        current[i] += 1;
        for j in i + 1..k {
            current[j] = current[j - 1] + 1;
        }
    }
    if all.len() <= most {
        return all;
    }
    let step = all.len() as f64 / most as f64;
    (0..most)
        .map(|i| all[(i as f64 * step) as usize].clone())
        .collect()
}

/// Fits the calibration set: a curve per enrolment size 1..=[`CALIBRATED_ENROLMENT_SIZES`]
/// that the data allows, each measured as far as it resolves and fitted beyond.
pub fn fit_calibration(
    main: &[Labelled],
    extra: &[Labelled],
) -> Result<CalibrationSet, CalibrationError> {
    let mut by_size = Vec::new();
    for k in 1..=CALIBRATED_ENROLMENT_SIZES {
        let scores = impostor_scores(main, extra, k, true);
        match fit_curve(&scores) {
            Ok(curve) => by_size.push(curve),
            Err(e) if k == 1 => return Err(e),
            Err(_) => break,
        }
    }
    CalibrationSet::new(by_size)
}

/// One curve from sorted impostor scores: measured points while at least
/// [`MIN_PAIRS_PER_POINT`] scores lie above, then the tail's bound at each level below.
pub fn fit_curve(sorted: &[f32]) -> Result<Calibration, CalibrationError> {
    let mut points = measured_points(sorted, &CALIBRATION_FMR_LEVELS, MIN_PAIRS_PER_POINT)?;
    let measured = points.len();
    let Some(fit) = Gpd::fit_top(sorted) else {
        return Calibration::new(points);
    };
    let bounds = fit.bootstrap(sorted, RESAMPLES, SEED);
    for level in tail_levels() {
        let Some(&(last_s, last_f)) = points.last() else {
            break;
        };
        if level >= last_f {
            continue;
        }
        let Some(s) = bounds.similarity_at(level) else {
            break;
        };
        let s = s as f32;
        if s >= 1.0 {
            break;
        }
        if s > last_s {
            points.push((s, level));
        }
    }
    let tail = TailFit {
        pairs: sorted.len() as u64,
        threshold: fit.threshold as f32,
        exceedances: fit.exceedances as u64,
        exceedance_rate: fit.rate,
        shape: fit.shape,
        scale: fit.scale,
        resamples: RESAMPLES as u32,
        confidence: CONFIDENCE,
    };
    Calibration::with_tail(points, measured, Some(tail))
}

/// FMR levels of the tail's points: 5, 2, 1 × each decade down to [`LOWEST_TAIL_FMR`].
fn tail_levels() -> Vec<f64> {
    let mut levels = Vec::new();
    let mut decade = 1e-3;
    while decade >= LOWEST_TAIL_FMR {
        levels.extend([5.0 * decade, 2.0 * decade, decade]);
        decade /= 10.0;
    }
    levels
}

/// A generalised Pareto fit of the scores above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gpd {
    pub threshold: f64,
    /// Share of all pairs above the threshold.
    pub rate: f64,
    pub exceedances: usize,
    /// ξ and σ.
    pub shape: f64,
    pub scale: f64,
}

impl Gpd {
    /// Fits the top ~0.1 % of sorted scores (see [`MIN_EXCEEDANCES`]); `None` with too few.
    pub fn fit_top(sorted: &[f32]) -> Option<Self> {
        let n = sorted.len();
        let wanted = (n / 1000).clamp(MIN_EXCEEDANCES, MAX_EXCEEDANCES);
        if n < 10 * wanted {
            return None;
        }
        let threshold = f64::from(sorted[n - wanted - 1]);
        let excess: Vec<f64> = sorted[n - wanted..]
            .iter()
            .map(|&s| f64::from(s) - threshold)
            .filter(|&y| y > 0.0)
            .collect();
        if excess.len() < MIN_EXCEEDANCES / 2 {
            return None;
        }
        let (shape, scale) = fit_gpd(&excess)?;
        Some(Self {
            threshold,
            rate: excess.len() as f64 / n as f64,
            exceedances: excess.len(),
            shape,
            scale,
        })
    }

    /// FMR at similarity `s` under the fit (valid above the threshold).
    pub fn fmr(&self, s: f64) -> f64 {
        let y = (s - self.threshold).max(0.0);
        let survival = if self.shape.abs() < 1e-12 {
            (-y / self.scale).exp()
        } else {
            let base = 1.0 + self.shape * y / self.scale;
            if base <= 0.0 {
                0.0
            } else {
                base.powf(-1.0 / self.shape)
            }
        };
        self.rate * survival
    }

    /// The similarity at which the fit's FMR is `fmr` (below the exceedance rate).
    pub fn similarity_at(&self, fmr: f64) -> f64 {
        let ratio = self.rate / fmr;
        if self.shape.abs() < 1e-12 {
            self.threshold + self.scale * ratio.ln()
        } else {
            self.threshold + self.scale / self.shape * (ratio.powf(self.shape) - 1.0)
        }
    }

    /// The upper confidence bound of the similarity at each tail level: refits on
    /// `resamples` bootstrap resamples of the exceedances.
    fn bootstrap(&self, sorted: &[f32], resamples: usize, seed: u64) -> Bound {
        let n = sorted.len();
        let excess: Vec<f64> = sorted[n - self.exceedances..]
            .iter()
            .map(|&s| f64::from(s) - self.threshold)
            .collect();
        let mut rng = Rng::new(seed);
        let mut fits = Vec::with_capacity(resamples);
        let mut sample = vec![0.0; excess.len()];
        for _ in 0..resamples {
            for y in sample.iter_mut() {
                *y = excess[rng.below(excess.len())];
            }
            if let Some((shape, scale)) = fit_gpd(&sample) {
                fits.push(Gpd {
                    shape,
                    scale,
                    ..*self
                });
            }
        }
        Bound { fits }
    }
}

/// The bootstrap fits, read at the bound's confidence.
struct Bound {
    fits: Vec<Gpd>,
}

impl Bound {
    /// The similarity that [`CONFIDENCE`] of the fits place at or below FMR `fmr`: a
    /// stranger's score exceeds it with probability at most `fmr`, at that confidence.
    fn similarity_at(&self, fmr: f64) -> Option<f64> {
        let mut at: Vec<f64> = self.fits.iter().map(|f| f.similarity_at(fmr)).collect();
        if at.len() < 10 || at.iter().any(|s| !s.is_finite()) {
            return None;
        }
        at.sort_by(f64::total_cmp);
        let index = ((CONFIDENCE * at.len() as f64).ceil() as usize).clamp(1, at.len()) - 1;
        Some(at[index])
    }
}

/// Maximum-likelihood (ξ, σ) of a GPD for positive excesses `y`, ξ restricted to [−1, 2]
/// (below −1 the likelihood is unbounded; above 2 no score distribution goes).
fn fit_gpd(y: &[f64]) -> Option<(f64, f64)> {
    let n = y.len() as f64;
    let max = y.iter().copied().fold(0.0, f64::max);
    let mean = y.iter().sum::<f64>() / n;
    if max <= 0.0 || mean <= 0.0 {
        return None;
    }
    // θ over the whole line through one parameter z: z < 0 maps to (−1/max, 0), z > 0 to
    // (0, ∞), z = 0 is the exponential limit.
    let theta = |z: f64| {
        if z < 0.0 {
            -(1.0 - z.exp()) / max
        } else {
            z.exp_m1() / mean
        }
    };
    let profile = |z: f64| -> Option<(f64, f64, f64)> {
        let t = theta(z);
        if t == 0.0 {
            return Some((-n * (mean.ln() + 1.0), 0.0, mean));
        }
        let xi = y.iter().map(|&v| (t * v).ln_1p()).sum::<f64>() / n;
        let sigma = xi / t;
        if !(-1.0..=2.0).contains(&xi) || sigma <= 0.0 || !sigma.is_finite() {
            return None;
        }
        Some((-n * (sigma.ln() + xi + 1.0), xi, sigma))
    };
    let mut best: Option<(f64, f64)> = None;
    let mut z = -30.0;
    while z <= 8.0 {
        if let Some((l, _, _)) = profile(z)
            && best.is_none_or(|(bl, _)| l > bl)
        {
            best = Some((l, z));
        }
        z += 0.5;
    }
    let (_, mut centre) = best?;
    // Golden-section refinement around the best grid point.
    let (mut a, mut b) = (centre - 0.5, centre + 0.5);
    let value = |z: f64| profile(z).map_or(f64::NEG_INFINITY, |p| p.0);
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (c, d) = (b - ratio * (b - a), a + ratio * (b - a));
        if value(c) >= value(d) {
            b = d;
        } else {
            a = c;
        }
        centre = (a + b) / 2.0;
    }
    let (_, xi, sigma) = profile(centre).or_else(|| profile(best?.1))?;
    Some((xi, sigma))
}

/// One row of the tail check: at the similarity where the model's FMR is `nominal`, the
/// share of impostor pairs at or above it.
#[derive(Debug, Clone, Serialize)]
pub struct TailCheck {
    pub nominal_fmr: f64,
    pub similarity: f32,
    /// Pairs expected at or above the similarity if the model is right (nominal × pairs);
    /// the row resolves the FMR when at least [`RESOLVING_PAIRS`].
    pub expected_pairs: f64,
    pub resolved: bool,
    /// Pairs at or above the similarity, and their share of all pairs.
    pub pairs_above: usize,
    /// How many distinct pairs of identities those pairs come from (a k-template enrolment
    /// gives many subsets of one identity, so a single look-alike counts many times), and
    /// the identity pairs that give most of them (enrolled ~ probe: pairs).
    /// (Counted only for rows at or above the threshold the pairs were gathered from.)
    pub identity_pairs_above: Option<usize>,
    pub top_identity_pairs: Vec<(String, String, usize)>,
    pub measured_fmr: f64,
    /// The fit's own (unbounded) FMR there, for comparison with the bound.
    pub fit_fmr: Option<f64>,
    /// Whether the point lies beyond the measured points (the tail model's region).
    pub modelled: bool,
}

/// A check row resolves its FMR when the model expects at least this many pairs above it
/// (a Poisson count of 5 falls below a third of it or above three times it with
/// probability under 5 %).
pub const RESOLVING_PAIRS: f64 = 5.0;

/// Nominal against measured FMR per enrolment size, at every decade from 10⁻¹ down to the
/// lowest the impostor pairs resolve (an expected count of at least one pair).
#[derive(Debug, Clone, Serialize)]
pub struct TailReport {
    pub enrol_images: usize,
    pub pairs: usize,
    pub rows: Vec<TailCheck>,
}

/// Checks a curve of `calibration` against sorted impostor scores of its size; `above` are
/// the pairs at or above `from` with their identities (from [`impostor_pairs_above`]),
/// named by `name`.
pub fn check_tail(
    calibration: &Calibration,
    k: usize,
    sorted: &[f32],
    (from, above): (f32, &[(f32, usize, usize)]),
    name: &dyn Fn(usize) -> String,
) -> TailReport {
    let n = sorted.len();
    let fit = calibration.tail().map(|t| Gpd {
        threshold: f64::from(t.threshold),
        rate: t.exceedance_rate,
        exceedances: t.exceedances as usize,
        shape: t.shape,
        scale: t.scale,
    });
    let last_measured = calibration
        .measured_points()
        .last()
        .map_or(f64::INFINITY, |p| p.1);
    let mut rows = Vec::new();
    let mut nominal = 0.1;
    while nominal * n as f64 >= 1.0 {
        let similarity = calibration.similarity_at(nominal);
        let pairs_above = n - sorted.partition_point(|&s| s < similarity);
        let mut by_identity: std::collections::BTreeMap<(usize, usize), usize> = Default::default();
        for &(_, a, b) in above.iter().take_while(|p| p.0 >= similarity) {
            *by_identity.entry((a, b)).or_default() += 1;
        }
        let mut top: Vec<((usize, usize), usize)> =
            by_identity.iter().map(|(&p, &c)| (p, c)).collect();
        top.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        rows.push(TailCheck {
            identity_pairs_above: (similarity >= from).then_some(by_identity.len()),
            top_identity_pairs: top
                .iter()
                .take(3)
                .map(|&((a, b), c)| (name(a), name(b), c))
                .collect(),
            nominal_fmr: nominal,
            similarity,
            expected_pairs: nominal * n as f64,
            resolved: nominal * n as f64 >= RESOLVING_PAIRS,
            pairs_above,
            measured_fmr: pairs_above as f64 / n as f64,
            fit_fmr: fit
                .filter(|f| f64::from(similarity) > f.threshold)
                .map(|f| f.fmr(f64::from(similarity))),
            modelled: nominal < last_measured,
        });
        nominal /= 10.0;
    }
    TailReport {
        enrol_images: k,
        pairs: n,
        rows,
    }
}

/// The highest-scoring impostor pairs of `samples` (labels are (identity, image) names), for
/// the reports: where the tail comes from.
#[derive(Debug, Clone, Serialize)]
pub struct TopPair {
    pub similarity: f32,
    pub a: (String, String),
    pub b: (String, String),
}

/// The `count` highest-scoring pairs of different identities among `samples`.
pub fn top_impostor_pairs(samples: &[(&str, &str, &[f32])], count: usize) -> Vec<TopPair> {
    let mut best: Vec<(f32, usize, usize)> = Vec::new();
    let mut floor = f32::NEG_INFINITY;
    for (i, a) in samples.iter().enumerate() {
        for (j, b) in samples.iter().enumerate().skip(i + 1) {
            if a.0 == b.0 {
                continue;
            }
            let s = cosine(a.2, b.2);
            if best.len() < count || s > floor {
                best.push((s, i, j));
                best.sort_by(|x, y| y.0.total_cmp(&x.0));
                best.truncate(count);
                if best.len() == count {
                    floor = best[count - 1].0;
                }
            }
        }
    }
    best.into_iter()
        .map(|(similarity, i, j)| TopPair {
            similarity,
            a: (samples[i].0.to_owned(), samples[i].1.to_owned()),
            b: (samples[j].0.to_owned(), samples[j].1.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores drawn from a known GPD (inverse transform) give back its parameters.
    #[test]
    fn subsets_are_all_or_evenly_spread() {
        assert_eq!(subsets(4, 2, 45).len(), 6);
        assert_eq!(subsets(10, 2, 45).len(), 45);
        let five = subsets(10, 5, 45);
        assert_eq!(five.len(), 45);
        assert!(
            five.iter()
                .all(|s| s.len() == 5 && s.windows(2).all(|w| w[0] < w[1]))
        );
        assert_eq!(subsets(3, 3, 45), vec![vec![0, 1, 2]]);
        assert!(subsets(2, 3, 45).is_empty());
    }

    #[test]
    fn the_fit_recovers_a_known_tail() {
        for (shape, scale) in [(-0.3, 0.02), (0.0, 0.01), (0.2, 0.05)] {
            let truth = Gpd {
                threshold: 0.9,
                rate: 1.0,
                exceedances: 0,
                shape,
                scale,
            };
            let mut rng = Rng::new(3);
            let y: Vec<f64> = (0..5000)
                .map(|_| truth.similarity_at(1.0 - rng.unit()) - 0.9)
                .collect();
            let (xi, sigma) = fit_gpd(&y).unwrap();
            assert!((xi - shape).abs() < 0.06, "ξ {xi} for {shape}");
            assert!((sigma / scale - 1.0).abs() < 0.08, "σ {sigma} for {scale}");
        }
    }

    /// A curve fitted on a large sample predicts the FMR of an independent sample of the
    /// same distribution beyond its own measured points, within a factor of 3.
    #[test]
    fn the_fitted_tail_predicts_unseen_pairs() {
        let draw = |seed: u64, n: usize| {
            // Normal-ish scores (sum of uniforms) bounded at 1 like a cosine.
            let mut rng = Rng::new(seed);
            let mut s: Vec<f32> = (0..n)
                .map(|_| {
                    let x: f64 = (0..6).map(|_| rng.unit()).sum::<f64>() / 6.0;
                    (0.2 + 0.7 * x) as f32
                })
                .collect();
            s.sort_by(f32::total_cmp);
            s
        };
        let fitted = fit_curve(&draw(1, 200_000)).unwrap();
        assert!(fitted.points().len() > fitted.measured_points().len());
        let tail = fitted.tail().unwrap();
        assert!(tail.shape < 0.0, "a bounded distribution: {}", tail.shape);
        let check = check_tail(&fitted, 1, &draw(2, 2_000_000), (1.0, &[]), &|i| {
            i.to_string()
        });
        let modelled: Vec<_> = check
            .rows
            .iter()
            .filter(|r| r.modelled && r.pairs_above >= 10)
            .collect();
        assert!(!modelled.is_empty(), "{check:?}");
        for row in modelled {
            let ratio = row.measured_fmr / row.nominal_fmr;
            assert!((1.0 / 3.0..=3.0).contains(&ratio), "{row:?}");
        }
        // Never zero, always falling.
        assert!(fitted.false_match_rate(0.9999) > 0.0);
        assert!(fitted.false_match_rate(0.99) > fitted.false_match_rate(0.9999));
    }
}

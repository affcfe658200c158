//! Offline evaluation of the scoring core on labelled embeddings (`tee-risk eval`): a fixed,
//! deterministic protocol replayed through the real [`RiskPolicy`], so that error rates are
//! measured, not asserted. No I/O here; the command reads the file and writes the report.
//!
//! Protocol, per identity with more than `k` images (in file order): its first `k` images
//! are enrolled as templates; each remaining image is a **genuine** attempt; every image of
//! every other identity, claiming this one, is an **impostor** attempt. Attacks: an exact
//! **replay** of the identity's last accepted genuine probe, an **injection** of
//! its first enrolled template as a probe, and a **conflicting enrolment** (its second
//! genuine image enrolled under a new account). Genuine attempts run in file order, each
//! accepted one joining the user's recent probes as in the service; the replay re-sends the
//! last accepted one. A detector counts an attack as flagged when
//! the decision is not `allow` or a reason names it.

use serde::Serialize;

use super::LabError;
use super::synth::{Context, Labelled, Rng, genuine_context, group};
use crate::risk::{
    Conflict, Decision, Reason, RiskPolicy, Signals, Velocity, centroid, cosine, signals,
};

/// Error rates of one enrolment size.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Templates enrolled per identity.
    pub enrol_images: usize,
    pub identities: usize,
    pub genuine_attempts: usize,
    pub impostor_attempts: usize,
    /// At the configured operating point (`allow` is acceptance), attackers not enrolled,
    /// no context (no liveness score, a known device, no other attempts).
    pub fmr_at_operating_point: f64,
    pub fnmr_at_operating_point: f64,
    /// Genuine attempts stepped up (the rest of the FNMR is denied).
    pub genuine_stepped_up: f64,
    /// Best achievable on the match scores alone: FNMR where FMR is at most 1 % / 0.1 %.
    pub fnmr_at_fmr_1pct: f64,
    pub fnmr_at_fmr_0_1pct: f64,
    pub eer: f64,
    /// FMR when the impostor is enrolled under their own account (the identity-conflict
    /// signal sees them).
    pub fmr_enrolled_impostors: f64,
    /// FMR of impostors hammering the account (20 attempts, 15 refused, in the window).
    pub fmr_in_bursts: f64,
    /// FNMR of genuine attempts with a realistic genuine context (liveness, devices, a few
    /// attempts), the price of the context signals.
    pub fnmr_with_genuine_context: f64,
    /// Attack attempts and the share flagged (not allowed, or a reason naming them).
    pub replays: usize,
    pub replays_flagged: f64,
    pub injections: usize,
    pub injections_flagged: f64,
    /// Another image of an enrolled face, enrolled under a new account.
    pub conflicting_enrolments: usize,
    pub conflicting_enrolments_flagged: f64,
    /// First enrolments of faces not yet enrolled, wrongly flagged as conflicts.
    pub new_enrolments_flagged: f64,
    /// The user's own face with a liveness score of 0.2.
    pub presentation_attacks: usize,
    pub presentation_attacks_flagged: f64,
    /// Genuine attempts wrongly flagged as replays or injections.
    pub genuine_flagged_as_replay: f64,
    /// The highest cosine between two different captures of one person: a replay detector
    /// must sit above it.
    pub max_genuine_cosine: f32,
    /// Scores for the plots (not in the JSON report).
    #[serde(skip)]
    pub scores: Scores,
}

/// Raw scores of genuine and impostor attempts, for DET curves and histograms.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Cosine with the claimed user's centroid.
    pub genuine_similarity: Vec<f32>,
    pub impostor_similarity: Vec<f32>,
    /// The model's risk score, before the hard rules' and conflict floors.
    pub genuine_risk: Vec<f64>,
    pub impostor_risk: Vec<f64>,
}

/// Evaluates `policy` on `samples` with `k` enrolled images per identity.
pub fn evaluate(policy: &RiskPolicy, samples: &[Labelled], k: usize) -> Result<Report, LabError> {
    let identities = group(samples);
    let eligible: Vec<&Vec<&[f32]>> = identities.iter().filter(|imgs| imgs.len() > k).collect();
    if eligible.len() < 3 || k == 0 {
        return Err(LabError::TooLittleData(format!(
            "need k ≥ 1 and at least three identities with more than {k} images"
        )));
    }
    let enrolled = Enrolled::new(&eligible, k);
    let mut rng = Rng::new(0x5eed);
    let mut counts = Counts::default();
    for i in 0..eligible.len() {
        let history = enrolled.genuine(policy, i, &mut counts, &mut rng);
        enrolled.impostors(policy, i, recent(&history, policy), &mut counts);
        enrolled.attacks(policy, i, &history, &mut counts);
    }
    Ok(counts.report(k, eligible.len(), max_distinct_capture_cosine(&identities)))
}

/// The evaluation's enrolled gallery: each eligible identity enrolled with its first `k`
/// images, and the cosine of every image with every centroid, computed once.
struct Enrolled<'a> {
    identities: &'a [&'a Vec<&'a [f32]>],
    k: usize,
    /// `similarity[identity][image][enrolled user]`.
    similarity: Vec<Vec<Vec<f32>>>,
}

/// What the evaluation counts.
#[derive(Default)]
struct Counts {
    scores: Scores,
    genuine_allowed: usize,
    genuine_stepped_up: usize,
    genuine_flagged: usize,
    genuine_context_allowed: usize,
    impostor_allowed: usize,
    enrolled_allowed: usize,
    burst_allowed: usize,
    replays: Tally,
    injections: Tally,
    conflicts: Tally,
    new_enrolments: Tally,
    presentations: Tally,
}

impl<'a> Enrolled<'a> {
    fn new(identities: &'a [&'a Vec<&'a [f32]>], k: usize) -> Self {
        let centroids: Vec<Vec<f32>> = identities.iter().map(|i| centroid(&i[..k])).collect();
        let similarity = identities
            .iter()
            .map(|images| {
                images
                    .iter()
                    .map(|img| centroids.iter().map(|c| cosine(img, c)).collect())
                    .collect()
            })
            .collect();
        Self {
            identities,
            k,
            similarity,
        }
    }

    /// The best enrolled user other than the claimed one and (if given) the prober's own,
    /// for identity `prober`'s image `image`.
    fn conflict(
        &self,
        prober: usize,
        image: usize,
        claimed: usize,
        absent: Option<usize>,
    ) -> Option<Conflict> {
        let row = &self.similarity[prober][image];
        let other = |j: &usize| *j != claimed && Some(*j) != absent;
        let searched = (0..self.identities.len()).filter(other).count();
        row.iter()
            .enumerate()
            .filter(|(j, _)| other(j))
            .map(|(_, &s)| Conflict {
                similarity: s,
                templates: self.k,
                searched,
            })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    }

    /// Identity `i`'s genuine attempts in order; each accepted one joins the user's recent
    /// probes, which are returned.
    fn genuine(
        &self,
        policy: &RiskPolicy,
        i: usize,
        counts: &mut Counts,
        rng: &mut Rng,
    ) -> Vec<&'a [f32]> {
        let images = self.identities[i];
        let templates = &images[..self.k];
        let mut history: Vec<&[f32]> = Vec::new();
        for (m, probe) in images.iter().enumerate().skip(self.k) {
            let mut s = signals(probe, templates, recent(&history, policy));
            s.conflict = self.conflict(i, m, i, None);
            let assessment = policy.decide(&s);
            counts
                .scores
                .genuine_similarity
                .push(s.match_similarity.unwrap_or(-1.0));
            counts.scores.genuine_risk.push(policy.model.score(&s));
            let is_allowed = assessment.decision == Decision::Allow;
            counts.genuine_allowed += usize::from(is_allowed);
            counts.genuine_stepped_up += usize::from(assessment.decision == Decision::StepUp);
            counts.genuine_flagged += usize::from(
                assessment
                    .reasons
                    .iter()
                    .any(|r| matches!(r, Reason::TemplateInjection | Reason::ReplayedProbe)),
            );
            let in_context = genuine_context(rng).apply(s);
            counts.genuine_context_allowed +=
                usize::from(policy.decide(&in_context).decision == Decision::Allow);
            if is_allowed {
                history.push(probe);
            }
        }
        history
    }

    /// Every other identity's images claiming to be identity `i`: alone, in a burst of
    /// failures, and enrolled themselves (their own account found as a conflict).
    fn impostors(
        &self,
        policy: &RiskPolicy,
        i: usize,
        recent_probes: &[&[f32]],
        counts: &mut Counts,
    ) {
        let templates = &self.identities[i][..self.k];
        let burst = Context {
            velocity: Velocity {
                user_attempts: 20,
                user_failures: 15,
                device_users: 0,
            },
            ..Context::default()
        };
        for (j, others) in self.identities.iter().enumerate() {
            if i == j {
                continue;
            }
            for (m, probe) in others.iter().enumerate() {
                let mut s = signals(probe, templates, recent_probes);
                s.conflict = self.conflict(j, m, i, Some(j));
                let assessment = policy.decide(&s);
                counts
                    .scores
                    .impostor_similarity
                    .push(s.match_similarity.unwrap_or(-1.0));
                counts.scores.impostor_risk.push(policy.model.score(&s));
                counts.impostor_allowed += usize::from(assessment.decision == Decision::Allow);
                counts.burst_allowed += usize::from(allowed(policy, &burst.apply(s)));
                s.conflict = self.conflict(j, m, i, None);
                counts.enrolled_allowed += usize::from(allowed(policy, &s));
            }
        }
    }

    /// Replay: the last accepted probe, captured and sent again. Injection: an enrolled
    /// template sent as a probe. Presentation: an unseen photo of the user, liveness 0.2.
    /// And enrolment conflicts: this identity's first unenrolled image under a new account
    /// (the search covers every enrolled user, its own account included), and a face
    /// enrolled for the first time (the search covers everyone else).
    fn attacks(&self, policy: &RiskPolicy, i: usize, history: &[&[f32]], counts: &mut Counts) {
        let (k, images) = (self.k, self.identities[i]);
        let templates = &images[..k];
        let recent_probes = recent(history, policy);
        if let Some(last) = history.last() {
            counts
                .replays
                .add(!allowed(policy, &signals(last, templates, recent_probes)));
        }
        counts.injections.add(!allowed(
            policy,
            &signals(images[0], templates, recent_probes),
        ));
        let mut presented = signals(images[k], templates, &[] as &[&[f32]]);
        presented.conflict = self.conflict(i, k, i, None);
        presented.liveness = Some(0.2);
        counts.presentations.add(!allowed(policy, &presented));
        if let Some(c) = self.conflict(i, k, usize::MAX, None) {
            counts.conflicts.add(policy.is_enrolment_conflict(&c));
        }
        if let Some(c) = self.conflict(i, 0, i, None) {
            counts.new_enrolments.add(policy.is_enrolment_conflict(&c));
        }
    }
}

impl Counts {
    fn report(self, k: usize, identities: usize, max_genuine_cosine: f32) -> Report {
        let scores = self.scores;
        let (genuine_n, impostor_n) = (
            scores.genuine_similarity.len(),
            scores.impostor_similarity.len(),
        );
        let mut genuine = scores.genuine_similarity.clone();
        let mut impostor = scores.impostor_similarity.clone();
        genuine.sort_by(f32::total_cmp);
        impostor.sort_by(f32::total_cmp);
        let rate = |count: usize, total: usize| count as f64 / total as f64;
        Report {
            enrol_images: k,
            identities,
            genuine_attempts: genuine_n,
            impostor_attempts: impostor_n,
            fmr_at_operating_point: rate(self.impostor_allowed, impostor_n),
            fnmr_at_operating_point: 1.0 - rate(self.genuine_allowed, genuine_n),
            genuine_stepped_up: rate(self.genuine_stepped_up, genuine_n),
            fnmr_at_fmr_1pct: fnmr_at_fmr(&genuine, &impostor, 0.01),
            fnmr_at_fmr_0_1pct: fnmr_at_fmr(&genuine, &impostor, 0.001),
            eer: equal_error_rate(&genuine, &impostor),
            fmr_enrolled_impostors: rate(self.enrolled_allowed, impostor_n),
            fmr_in_bursts: rate(self.burst_allowed, impostor_n),
            fnmr_with_genuine_context: 1.0 - rate(self.genuine_context_allowed, genuine_n),
            replays: self.replays.total,
            replays_flagged: self.replays.rate(),
            injections: self.injections.total,
            injections_flagged: self.injections.rate(),
            conflicting_enrolments: self.conflicts.total,
            conflicting_enrolments_flagged: self.conflicts.rate(),
            new_enrolments_flagged: self.new_enrolments.rate(),
            presentation_attacks: self.presentations.total,
            presentation_attacks_flagged: self.presentations.rate(),
            genuine_flagged_as_replay: rate(self.genuine_flagged, genuine_n),
            max_genuine_cosine,
            scores,
        }
    }
}

#[derive(Default)]
struct Tally {
    total: usize,
    flagged: usize,
}

impl Tally {
    fn add(&mut self, flagged: bool) {
        self.total += 1;
        self.flagged += usize::from(flagged);
    }

    fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.flagged as f64 / self.total as f64
        }
    }
}

fn allowed(policy: &RiskPolicy, signals: &Signals) -> bool {
    policy.decide(signals).decision == Decision::Allow
}

/// The most recent accepted probes the service would compare with.
fn recent<'h, 'a>(history: &'h [&'a [f32]], policy: &RiskPolicy) -> &'h [&'a [f32]] {
    &history[history.len().saturating_sub(policy.replay_history)..]
}

/// FNMR at the lowest threshold whose FMR is at most `fmr` (sorted ascending inputs).
fn fnmr_at_fmr(genuine: &[f32], impostor: &[f32], fmr: f64) -> f64 {
    let allowed_impostors = (fmr * impostor.len() as f64).floor() as usize;
    // Accept similarity > threshold, where threshold is the impostor score that leaves at
    // most `allowed_impostors` above it.
    let threshold = impostor[impostor.len() - 1 - allowed_impostors.min(impostor.len() - 1)];
    genuine.partition_point(|&s| s <= threshold) as f64 / genuine.len() as f64
}

/// The error rate where FMR and FNMR cross (their mean at the closest threshold).
fn equal_error_rate(genuine: &[f32], impostor: &[f32]) -> f64 {
    let mut best = (f64::INFINITY, 0.0);
    for &threshold in genuine.iter().chain(impostor) {
        let fnmr = genuine.partition_point(|&s| s < threshold) as f64 / genuine.len() as f64;
        let fmr = (impostor.len() - impostor.partition_point(|&s| s < threshold)) as f64
            / impostor.len() as f64;
        let gap = (fmr - fnmr).abs();
        if gap < best.0 {
            best = (gap, (fmr + fnmr) / 2.0);
        }
    }
    best.1
}

fn max_distinct_capture_cosine(identities: &[Vec<&[f32]>]) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for images in identities {
        for (a, first) in images.iter().enumerate() {
            for second in &images[a + 1..] {
                max = max.max(cosine(first, second));
            }
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_on_a_separable_toy_set() {
        let genuine = [0.8, 0.85, 0.9, 0.95];
        let impostor = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.82, 0.9, 0.91];
        // FMR ≤ 10 %: accept above 0.9 (only 0.91 of the impostors); 0.95 alone passes.
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.1), 0.75);
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.0), 0.75);
        // FMR ≤ 30 %: accept above 0.7; every genuine score passes.
        assert_eq!(fnmr_at_fmr(&genuine, &impostor, 0.3), 0.0);
        let eer = equal_error_rate(&genuine, &impostor);
        assert!((0.1..=0.3).contains(&eer), "{eer}");
        let clean = equal_error_rate(&[0.9, 0.95], &[0.1, 0.2]);
        assert_eq!(clean, 0.0);
    }
}

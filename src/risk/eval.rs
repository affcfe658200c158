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

use super::{Decision, Reason, RiskPolicy, best_cosine, cosine, signals};

/// One labelled sample: an identity number and a unit embedding.
pub struct Labelled<'a> {
    pub identity: usize,
    pub embedding: &'a [f32],
}

/// Error rates of one enrolment size.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Templates enrolled per identity.
    pub enrol_images: usize,
    pub identities: usize,
    pub genuine_attempts: usize,
    pub impostor_attempts: usize,
    /// At the configured operating point (`allow` is acceptance).
    pub fmr_at_operating_point: f64,
    pub fnmr_at_operating_point: f64,
    /// Best achievable on these scores: FNMR where FMR is at most 1 % / 0.1 %.
    pub fnmr_at_fmr_1pct: f64,
    pub fnmr_at_fmr_0_1pct: f64,
    pub eer: f64,
    /// Attack attempts and the share flagged (not allowed, or a reason naming them).
    pub replays: usize,
    pub replays_flagged: f64,
    pub injections: usize,
    pub injections_flagged: f64,
    pub conflicting_enrolments: usize,
    pub conflicting_enrolments_flagged: f64,
    /// Genuine attempts wrongly flagged as replays or injections.
    pub genuine_flagged_as_replay: f64,
    /// The highest cosine between two different captures of one person: a replay detector
    /// must sit above it.
    pub max_genuine_cosine: f32,
}

/// Evaluates `policy` on `samples` with `k` enrolled images per identity.
pub fn evaluate(policy: &RiskPolicy, samples: &[Labelled], k: usize) -> Result<Report, String> {
    let identities = group(samples);
    let eligible: Vec<&Vec<&[f32]>> = identities.iter().filter(|imgs| imgs.len() > k).collect();
    if eligible.len() < 2 || k == 0 {
        return Err(format!(
            "need k ≥ 1 and at least two identities with more than {k} images"
        ));
    }
    let mut genuine = Vec::new();
    let mut impostor = Vec::new();
    let mut genuine_allowed = 0usize;
    let mut genuine_flagged = 0usize;
    let mut impostor_allowed = 0usize;
    let (mut replays, mut injections, mut conflicts) =
        (Tally::default(), Tally::default(), Tally::default());
    for (i, images) in eligible.iter().enumerate() {
        let templates = &images[..k];
        // Genuine attempts in order; each accepted one joins the user's recent probes.
        let mut history: Vec<&[f32]> = Vec::new();
        for probe in &images[k..] {
            let similarity = best(probe, templates);
            genuine.push(similarity);
            let assessment =
                policy.decide(&signals(probe, None, templates, recent(&history, policy)));
            let is_allowed = assessment.decision == Decision::Allow;
            genuine_allowed += usize::from(is_allowed);
            genuine_flagged += usize::from(
                assessment
                    .reasons
                    .iter()
                    .any(|r| matches!(r, Reason::TemplateInjection | Reason::ReplayedProbe)),
            );
            if is_allowed {
                history.push(probe);
            }
        }
        for (j, others) in eligible.iter().enumerate() {
            if i == j {
                continue;
            }
            for probe in others.iter() {
                impostor.push(best(probe, templates));
                impostor_allowed += usize::from(allowed(policy, probe, templates, &[]));
            }
        }
        // Replay: the last accepted probe, captured and sent again. Injection: an enrolled
        // template sent as a probe.
        if let Some(last) = history.last() {
            replays.add(!allowed(policy, last, templates, recent(&history, policy)));
        }
        injections.add(!allowed(
            policy,
            images[0],
            templates,
            recent(&history, policy),
        ));
        // Enrolling this identity's next image under a new account: nothing compares an
        // enrolment with other users' templates yet, so none is flagged.
        if images.len() > k + 1 {
            conflicts.add(false);
        }
    }
    genuine.sort_by(f32::total_cmp);
    impostor.sort_by(f32::total_cmp);
    Ok(Report {
        enrol_images: k,
        identities: eligible.len(),
        genuine_attempts: genuine.len(),
        impostor_attempts: impostor.len(),
        fmr_at_operating_point: impostor_allowed as f64 / impostor.len() as f64,
        fnmr_at_operating_point: 1.0 - genuine_allowed as f64 / genuine.len() as f64,
        fnmr_at_fmr_1pct: fnmr_at_fmr(&genuine, &impostor, 0.01),
        fnmr_at_fmr_0_1pct: fnmr_at_fmr(&genuine, &impostor, 0.001),
        eer: equal_error_rate(&genuine, &impostor),
        replays: replays.total,
        replays_flagged: replays.rate(),
        injections: injections.total,
        injections_flagged: injections.rate(),
        conflicting_enrolments: conflicts.total,
        conflicting_enrolments_flagged: conflicts.rate(),
        genuine_flagged_as_replay: genuine_flagged as f64 / genuine.len() as f64,
        max_genuine_cosine: max_distinct_capture_cosine(&identities),
    })
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

/// Images per identity, identities in order of first appearance, images in file order.
fn group<'a>(samples: &[Labelled<'a>]) -> Vec<Vec<&'a [f32]>> {
    let mut groups: Vec<Vec<&[f32]>> = Vec::new();
    let mut index: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for sample in samples {
        let slot = *index.entry(sample.identity).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(sample.embedding);
    }
    groups
}

fn best(probe: &[f32], templates: &[&[f32]]) -> f32 {
    best_cosine(probe, templates).unwrap_or(f32::NEG_INFINITY)
}

fn allowed(policy: &RiskPolicy, probe: &[f32], templates: &[&[f32]], recent: &[&[f32]]) -> bool {
    policy
        .decide(&signals(probe, None, templates, recent))
        .decision
        == Decision::Allow
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

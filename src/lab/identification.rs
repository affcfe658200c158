//! The 1:N evaluation protocol (ISO/IEC 19795-1 terms), through the service's own index
//! (`risk::gallery`) and decision (`RiskPolicy::identify`):
//!
//! - identities with at least `enrol + 1` images are split in two halves by order of first
//!   appearance: the first half can be enrolled (the gallery, `enrol` images each), the second
//!   never is (each of its images is a **non-mated** search);
//! - for each gallery size G, the first G enrollable identities are enrolled; every image of
//!   theirs beyond the enrolled ones is a **mated** search;
//! - rank-1 identification rate: mated searches whose best candidate is the right identity;
//! - FNIR at FPIR x: the score threshold at which a fraction x of non-mated searches name
//!   someone, and the fraction of mated searches that do not name the right identity above it;
//! - at the configured operating point (`identify_max_fmr`): the service's decisions, FPIR
//!   (non-mated named) and FNIR (mated not named right);
//! - enrolment conflicts: a second enrolment of a gallery face under a new account (its next
//!   image) is caught when the best other user passes `enrolment_conflict_max_fmr`; an honest
//!   first enrolment (a non-mated identity) is falsely stopped when it does.

use serde::Serialize;

use super::LabError;
use super::synth::{Labelled, group};
use crate::risk::RiskPolicy;
use crate::risk::gallery::{Gallery, gallery_key};
use crate::risk::identify::IdentifyDecision;

/// The figures for one gallery size.
#[derive(Debug, Clone, Serialize)]
pub struct IdentificationReport {
    pub gallery: usize,
    pub enrol_images: usize,
    pub mated_searches: usize,
    pub non_mated_searches: usize,
    pub rank1_identification_rate: f64,
    pub fnir_at_fpir_1pct: f64,
    pub fnir_at_fpir_0_1pct: f64,
    /// At `identify_max_fmr`: non-mated searches that named someone (match or ambiguous).
    pub fpir_at_operating_point: f64,
    /// At `identify_max_fmr`: mated searches not answered `match` with the right identity.
    pub fnir_at_operating_point: f64,
    /// Mated searches answered `ambiguous`.
    pub ambiguous_rate: f64,
    /// Mated searches answered `match` with the wrong identity.
    pub wrong_match_rate: f64,
    /// Second enrolments of a gallery face under a new account that are stopped.
    pub conflicts_caught: f64,
    /// Honest first enrolments (never-enrolled faces) that are stopped.
    pub false_conflicts: f64,
    /// (FPIR, FNIR) pairs for a DET-style curve.
    pub det: Vec<(f64, f64)>,
}

/// Runs the protocol for each gallery size in `sizes` (capped at the enrollable identities;
/// 0 means all of them).
pub fn evaluate_identification(
    policy: &RiskPolicy,
    samples: &[Labelled],
    enrol: usize,
    sizes: &[usize],
) -> Result<Vec<IdentificationReport>, LabError> {
    let identities: Vec<Vec<&[f32]>> = group(samples)
        .into_iter()
        .filter(|images| images.len() > enrol)
        .collect();
    if identities.len() < 4 {
        return Err(LabError::TooLittleData(
            "1:N needs at least 4 identities with more images than enrolled".into(),
        ));
    }
    let half = identities.len() / 2;
    let (enrollable, strangers) = identities.split_at(half);
    let mut reports = Vec::new();
    let mut sizes: Vec<usize> = sizes
        .iter()
        .map(|&s| if s == 0 { half } else { s.min(half) })
        .collect();
    sizes.dedup();
    for size in sizes {
        let gallery = Gallery::default();
        for (i, images) in enrollable[..size].iter().enumerate() {
            gallery.set(&format!("id-{i}"), &images[..enrol]);
        }
        let searched = gallery.len();

        // Mated: (is the best the right one, best score, decision right?).
        let mut mated = Vec::new();
        let (mut ambiguous, mut wrong, mut missed) = (0usize, 0usize, 0usize);
        for (i, images) in enrollable[..size].iter().enumerate() {
            let id = format!("id-{i}");
            for probe in &images[enrol..] {
                let found = gallery.top_k(probe, 2);
                let right = found.first().is_some_and(|c| c.user_id == id);
                mated.push((right, found.first().map_or(f32::MIN, |c| c.similarity)));
                let decision = policy.identify(&found, searched, 1, None);
                match decision.decision {
                    IdentifyDecision::Match if right => {}
                    IdentifyDecision::Match => {
                        wrong += 1;
                        missed += 1;
                    }
                    IdentifyDecision::Ambiguous => {
                        ambiguous += 1;
                        missed += 1;
                    }
                    _ => missed += 1,
                }
            }
        }
        // Non-mated: the best score, and whether the service would name someone.
        let mut non_mated = Vec::new();
        let mut named = 0usize;
        for probe in strangers.iter().flatten() {
            let found = gallery.top_k(probe, 2);
            non_mated.push(found.first().map_or(f32::MIN, |c| c.similarity));
            let decision = policy.identify(&found, searched, 1, None).decision;
            if matches!(
                decision,
                IdentifyDecision::Match | IdentifyDecision::Ambiguous
            ) {
                named += 1;
            }
        }
        // Enrolment conflicts at this gallery size.
        let caught = enrollable[..size]
            .iter()
            .enumerate()
            .filter(|(i, images)| {
                gallery
                    .best_other(images[enrol], &gallery_key(&format!("new-account-{i}")))
                    .is_some_and(|c| policy.is_enrolment_conflict(&c))
            })
            .count();
        let stopped = strangers
            .iter()
            .filter(|images| {
                gallery
                    .best_other(images[0], &gallery_key("newcomer"))
                    .is_some_and(|c| policy.is_enrolment_conflict(&c))
            })
            .count();

        let rate = |n: usize, of: usize| n as f64 / of.max(1) as f64;
        let fnir_at = |fpir: f64| fnir_at_fpir(&mated, &non_mated, fpir);
        let det = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
            .iter()
            .map(|&f| (f, fnir_at(f)))
            .collect();
        reports.push(IdentificationReport {
            gallery: size,
            enrol_images: enrol,
            mated_searches: mated.len(),
            non_mated_searches: non_mated.len(),
            rank1_identification_rate: rate(mated.iter().filter(|m| m.0).count(), mated.len()),
            fnir_at_fpir_1pct: fnir_at(0.01),
            fnir_at_fpir_0_1pct: fnir_at(0.001),
            fpir_at_operating_point: rate(named, non_mated.len()),
            fnir_at_operating_point: rate(missed, mated.len()),
            ambiguous_rate: rate(ambiguous, mated.len()),
            wrong_match_rate: rate(wrong, mated.len()),
            conflicts_caught: rate(caught, size),
            false_conflicts: rate(stopped, strangers.len()),
            det,
        });
    }
    Ok(reports)
}

/// FNIR at the threshold where a fraction `fpir` of non-mated searches score at or above
/// it: mated searches that are wrong at rank 1 or below the threshold.
fn fnir_at_fpir(mated: &[(bool, f32)], non_mated: &[f32], fpir: f64) -> f64 {
    let mut scores = non_mated.to_vec();
    scores.sort_by(|a, b| b.total_cmp(a));
    // The first non-mated score that must not pass: a search passes only strictly above it
    // (none such: every search passes).
    let allowed = (fpir * scores.len() as f64).floor() as usize;
    let limit = scores.get(allowed).copied();
    let missed = mated
        .iter()
        .filter(|&&(right, score)| !right || limit.is_some_and(|l| score <= l))
        .count();
    missed as f64 / mated.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnir_at_fpir_counts_wrong_and_low_mated_searches() {
        let non_mated = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];
        let mated = [(true, 0.99), (true, 0.85), (false, 0.99), (true, 0.5)];
        // FPIR 10 %: one non-mated (0.95) may pass; the threshold is just above 0.9.
        assert_eq!(fnir_at_fpir(&mated, &non_mated, 0.1), 0.75);
        // FPIR 0: above 0.95.
        assert_eq!(fnir_at_fpir(&mated, &non_mated, 0.0), 0.75);
        // FPIR 50 %: above 0.5: the wrong one and the 0.5 one miss.
        assert_eq!(fnir_at_fpir(&mated, &non_mated, 0.5), 0.5);
    }
}

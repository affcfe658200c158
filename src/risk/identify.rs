//! The 1:N decision: which enrolled user, if any, a face belongs to (ISO/IEC 19795-1 terms:
//! a positive identification when a candidate's false-match rate, corrected for the size of
//! the gallery searched, is at most the configured FPIR budget).
//!
//! - `match`: the best candidate passes and the second does not;
//! - `ambiguous`: two candidates pass: the face cannot be told apart between them (twins,
//!   one person enrolled twice), so naming either would be a guess;
//! - `no_match`: none passes.
//!
//! The hard rules of verification apply first (`risk::RiskPolicy::decide`): a probe that is
//! a copy of an enrolled template or of a recent probe is `refused`, naming no one.

use serde::Serialize;

use super::gallery::Candidate;
use super::{Reason, RiskPolicy};

/// The outcome of an identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifyDecision {
    Match,
    NoMatch,
    Ambiguous,
    /// A copy (template injection, replayed probe): refused, no candidate named.
    Refused,
}

impl IdentifyDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifyDecision::Match => "match",
            IdentifyDecision::NoMatch => "no_match",
            IdentifyDecision::Ambiguous => "ambiguous",
            IdentifyDecision::Refused => "refused",
        }
    }
}

/// A candidate as answered: its similarity and its false-match rate for this search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredCandidate {
    pub user_id: String,
    /// Cosine similarity with the user's enrolled centroid (6 decimals).
    pub similarity: f64,
    /// The probability that a stranger's face scores this well against *some* user of a
    /// gallery this size: the calibrated per-pair FMR × users searched, at most 1.
    pub fmr: f64,
}

/// An identification's decision and the candidates it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Identification {
    pub decision: IdentifyDecision,
    pub candidates: Vec<ScoredCandidate>,
    pub reasons: Vec<Reason>,
}

/// A candidate of an investigative search: its rank, similarity and calibrated FMRs, with
/// no decision (NIST FRTE 1:N's "investigation" use: leads for a human reviewer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedCandidate {
    /// 1 for the best.
    pub rank: usize,
    pub user_id: String,
    /// Cosine similarity with the user's enrolled centroid (6 decimals).
    pub similarity: f64,
    /// As in a decision: the per-pair FMR × users searched, at most 1.
    pub fmr: f64,
    /// The calibrated FMR of this one comparison (a stranger's chance of scoring this well
    /// against this user).
    pub pair_fmr: f64,
}

/// An investigative search's candidates, or a refusal by the hard rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Investigation {
    /// `false` when a hard rule refused (no candidates, `reasons` says why).
    pub answered: bool,
    pub candidates: Vec<RankedCandidate>,
    pub reasons: Vec<Reason>,
}

impl RiskPolicy {
    /// The top `candidates` of a search of `searched` users, ranked with their FMRs; the
    /// hard rules (`copy`) refuse as in a decision, naming no one.
    pub fn investigate(
        &self,
        candidates: &[Candidate],
        searched: usize,
        copy: Option<Reason>,
    ) -> Investigation {
        if let Some(reason) = copy {
            return Investigation {
                answered: false,
                candidates: Vec::new(),
                reasons: vec![reason],
            };
        }
        let candidates = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pair_fmr = self
                    .model
                    .calibration
                    .false_match_rate(c.templates, c.similarity);
                RankedCandidate {
                    rank: i + 1,
                    user_id: c.user_id.clone(),
                    similarity: (f64::from(c.similarity) * 1e6).round() / 1e6,
                    fmr: (pair_fmr * searched as f64).min(1.0),
                    pair_fmr,
                }
            })
            .collect();
        Investigation {
            answered: true,
            candidates,
            reasons: Vec::new(),
        }
    }

    /// Decides on `candidates` (best first, at least two when the gallery has them) from a
    /// search of `searched` users, returning at most `top_k`. `copy` is the reason if the
    /// probe is a copy of an enrolled template or a recent probe of the best candidate.
    pub fn identify(
        &self,
        candidates: &[Candidate],
        searched: usize,
        top_k: usize,
        copy: Option<Reason>,
    ) -> Identification {
        if let Some(reason) = copy {
            return Identification {
                decision: IdentifyDecision::Refused,
                candidates: Vec::new(),
                reasons: vec![reason],
            };
        }
        let scored: Vec<ScoredCandidate> = candidates
            .iter()
            .map(|c| ScoredCandidate {
                user_id: c.user_id.clone(),
                similarity: (f64::from(c.similarity) * 1e6).round() / 1e6,
                fmr: (self
                    .model
                    .calibration
                    .false_match_rate(c.templates, c.similarity)
                    * searched as f64)
                    .min(1.0),
            })
            .collect();
        let passes = |i: usize| {
            scored
                .get(i)
                .is_some_and(|c| c.fmr <= self.identify_max_fmr)
        };
        let decision = match (passes(0), passes(1)) {
            (true, false) => IdentifyDecision::Match,
            (true, true) => IdentifyDecision::Ambiguous,
            _ => IdentifyDecision::NoMatch,
        };
        Identification {
            decision,
            candidates: scored.into_iter().take(top_k).collect(),
            reasons: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::risk::default_policy;

    fn candidate(user: &str, similarity: f32) -> Candidate {
        Candidate {
            user_id: user.into(),
            similarity,
            templates: 2,
        }
    }

    #[test]
    fn match_ambiguous_no_match_and_refused() {
        let policy = default_policy();
        let strong = candidate("alice", 0.98);
        let weak = candidate("bob", 0.5);
        let found = policy.identify(&[strong.clone(), weak.clone()], 10, 1, None);
        assert_eq!(found.decision, IdentifyDecision::Match);
        assert_eq!(found.candidates.len(), 1);
        assert_eq!(found.candidates[0].user_id, "alice");
        assert!(found.candidates[0].fmr <= policy.identify_max_fmr);

        let twin = candidate("alice-twin", 0.979);
        let found = policy.identify(&[strong.clone(), twin], 10, 2, None);
        assert_eq!(found.decision, IdentifyDecision::Ambiguous);
        assert_eq!(found.candidates.len(), 2);

        let found = policy.identify(std::slice::from_ref(&weak), 1_000, 5, None);
        assert_eq!(found.decision, IdentifyDecision::NoMatch);
        assert_eq!(
            policy.identify(&[], 0, 1, None).decision,
            IdentifyDecision::NoMatch
        );

        let refused = policy.identify(&[strong], 1_000, 1, Some(Reason::TemplateInjection));
        assert_eq!(refused.decision, IdentifyDecision::Refused);
        assert!(refused.candidates.is_empty());
    }

    #[test]
    fn an_investigation_ranks_every_candidate_and_decides_nothing() {
        let policy = default_policy();
        let found = policy.investigate(
            &[
                candidate("alice", 0.98),
                candidate("bob", 0.9),
                candidate("carol", 0.5),
            ],
            1_000,
            None,
        );
        assert!(found.answered);
        let ranks: Vec<_> = found
            .candidates
            .iter()
            .map(|c| (c.rank, c.user_id.as_str()))
            .collect();
        assert_eq!(ranks, [(1, "alice"), (2, "bob"), (3, "carol")]);
        for c in &found.candidates {
            assert!(c.pair_fmr > 0.0 && c.fmr >= c.pair_fmr && c.fmr <= 1.0);
        }
        assert!(found.candidates[0].pair_fmr < found.candidates[1].pair_fmr);
        let refused = policy.investigate(
            &[candidate("alice", 1.0)],
            1,
            Some(Reason::TemplateInjection),
        );
        assert!(!refused.answered && refused.candidates.is_empty());
    }

    #[test]
    fn a_larger_gallery_needs_a_stronger_match() {
        let policy = default_policy();
        // The per-pair FMR at which this candidate just passes in a gallery of 10 fails in a
        // gallery of a million: the correction is the gallery size.
        let c = candidate("alice", 0.93);
        let small = policy.identify(std::slice::from_ref(&c), 10, 1, None);
        let large = policy.identify(std::slice::from_ref(&c), 1_000_000, 1, None);
        assert!(large.candidates[0].fmr >= small.candidates[0].fmr);
        assert!((large.candidates[0].fmr - (small.candidates[0].fmr * 1e5).min(1.0)).abs() < 1e-9);
    }
}

//! `POST /v1/identify` (1:N): the flow of one identification, beside the verification flows
//! of `service/mod.rs`. Its answer names users, so it is always encrypted to the client. Two
//! modes: a decision (`identify`) and an investigation (`investigate`: ranked leads, no
//! decision), each under its own permission.

use super::access::{Authorized, Permission};
use super::{Answer, ModelSlot, Service, ServiceError, fault};
use crate::obs::Now;
use crate::obs::metrics::{Stage, StageTimer};
use crate::protocol::payload::{IdentifyMode, IdentifyProbe};
use crate::protocol::reply::{Candidate, Extra, IdentifyOutcome, IdentifyReply};
use crate::risk::gallery::Candidate as GalleryCandidate;
use crate::risk::identify::{
    Identification, IdentifyDecision, Investigation, RankedCandidate, ScoredCandidate,
};
use crate::risk::{self, Reason};
use crate::store::{Along, RiskLogEntry, UserReading};

/// The outcome of either mode, as answered and logged.
enum Found {
    Decided(Identification),
    Investigated(Investigation),
}

impl Found {
    fn outcome(&self) -> IdentifyOutcome {
        match self {
            Found::Decided(found) => match found.decision {
                IdentifyDecision::Match => IdentifyOutcome::Match,
                IdentifyDecision::NoMatch => IdentifyOutcome::NoMatch,
                IdentifyDecision::Ambiguous => IdentifyOutcome::Ambiguous,
                IdentifyDecision::Refused => IdentifyOutcome::Refused,
            },
            Found::Investigated(found) if found.answered => IdentifyOutcome::Candidates,
            Found::Investigated(_) => IdentifyOutcome::Refused,
        }
    }

    fn mode(&self) -> IdentifyMode {
        match self {
            Found::Decided(_) => IdentifyMode::Decide,
            Found::Investigated(_) => IdentifyMode::Investigate,
        }
    }

    fn reasons(&self) -> &[Reason] {
        match self {
            Found::Decided(found) => &found.reasons,
            Found::Investigated(found) => &found.reasons,
        }
    }

    /// Whom the risk log names: the best candidate's blind index when a decision names one
    /// (an erasure of that user scrubs the entry), else no one's. An investigation names
    /// leads, not a finding: logged under no one's index, as such.
    fn logged_user(&self, best_index: Option<String>) -> String {
        match self {
            Found::Decided(d) if d.decision == IdentifyDecision::Match => {
                best_index.unwrap_or_default()
            }
            Found::Decided(_) => "identify".into(),
            Found::Investigated(_) => "investigate".into(),
        }
    }

    /// The logged decision: the outcome, or "investigate" for answered leads.
    fn logged_decision(&self) -> &'static str {
        match self {
            Found::Investigated(i) if i.answered => "investigate",
            _ => self.outcome().as_str(),
        }
    }

    /// The best candidate's corrected FMR (1 with none), logged as the score.
    fn best_fmr(&self) -> f64 {
        match self {
            Found::Decided(found) => found.candidates.first().map_or(1.0, |c| c.fmr),
            Found::Investigated(found) => found.candidates.first().map_or(1.0, |c| c.fmr),
        }
    }
}

impl Service {
    /// `POST /v1/identify`: whose face is this, among every enrolled user? The answer names
    /// users, so it is always encrypted to the client (`ans` is required). To decide the
    /// client needs `identify`; to investigate (`"mode": "investigate"`), `investigate`.
    pub fn identify(
        &self,
        body: &[u8],
        clock: Now,
        client: &Authorized,
    ) -> Result<Answer, ServiceError> {
        let now = clock.secs();
        let mut timer = StageTimer::start(&self.metrics);
        let (header, probe, answer_key) =
            self.open_request_as(body, now, &mut timer, true, |p| {
                let probe = IdentifyProbe::parse(p, &|m| self.resolve_face_model(m))?;
                let needed = match probe.mode {
                    IdentifyMode::Decide => Permission::Identify,
                    IdentifyMode::Investigate => Permission::Investigate,
                };
                if !client.may(needed) {
                    return Err(ServiceError::Forbidden(needed));
                }
                Ok(probe)
            })?;
        let slot = self.slot(&probe.face_model)?;
        let policy = slot.policy();
        // This model's templates only: users not (yet) enrolled under it are not searched.
        let searched = slot.gallery.len();
        // Two at least: the second tells a match from an ambiguous one.
        let candidates = slot.gallery.top_k(&probe.features, probe.top_k.max(2));
        let (refused, best_index) = self.hard_rules(slot, &probe, candidates.first())?;
        let found = match probe.mode {
            IdentifyMode::Decide => {
                Found::Decided(policy.identify(&candidates, searched, probe.top_k, refused))
            }
            IdentifyMode::Investigate => Found::Investigated(policy.investigate(
                &candidates[..probe.top_k.min(candidates.len())],
                searched,
                refused,
            )),
        };
        drop(candidates);
        timer.lap(Stage::Score);
        let log = RiskLogEntry {
            rid: header.rid.clone(),
            at: now,
            user: found.logged_user(best_index),
            decision: found.logged_decision().into(),
            score: found.best_fmr(),
            reasons: found
                .reasons()
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            model: policy.model_version().into(),
            face_model: slot.id().to_owned(),
            features: probe.features.clone(),
            liveness: probe.liveness,
            device_id: probe.device_id.clone(),
        };
        drop(probe);
        self.vault.record_identification(&log).map_err(fault)?;
        drop(log);
        timer.lap(Stage::StoreWrite);
        self.make_durable(&mut timer)?;
        let candidates = match &found {
            Found::Decided(d) => d.candidates.iter().map(scored).collect(),
            Found::Investigated(i) => i.candidates.iter().map(ranked).collect(),
        };
        let response = self.answer(
            &header.rid,
            answer_key,
            &IdentifyReply {
                stamp: super::stamp("identify", &header.rid, body, now),
                mode: found.mode().as_str().to_owned(),
                decision: found.outcome().into(),
                searched,
                candidates,
                reasons: super::codes(found.reasons()),
                model: policy.model_version().to_owned(),
                face_model: slot.id().to_owned(),
                extra: Extra::new(),
            },
        );
        timer.lap(Stage::Sign);
        response
    }

    /// The hard rules, against the best candidate: a copy of one of its templates or of one
    /// of its recent accepted probes names no one; nor does a failed liveness check. Returns
    /// the refusing reason, if any, and the best candidate's blind index (for the log).
    fn hard_rules(
        &self,
        slot: &ModelSlot,
        probe: &IdentifyProbe,
        best: Option<&GalleryCandidate>,
    ) -> Result<(Option<Reason>, Option<String>), ServiceError> {
        let policy = slot.policy();
        let mut refused = probe
            .liveness
            .filter(|&l| l < policy.min_liveness)
            .map(|_| Reason::LowLiveness);
        let Some(best) = best else {
            return Ok((refused, None));
        };
        let user = self.vault.user(&best.user_id);
        let UserReading {
            enrolment, recent, ..
        } = self
            .vault
            .enrolment_and_recent(
                &user,
                &best.user_id,
                slot.id(),
                policy.replay_history,
                Along::default(),
            )
            .map_err(fault)?;
        let templates = enrolment.templates_of(slot.id());
        let signals = risk::signals(&probe.features, &templates, &recent);
        let copied = |s: Option<f32>| s.is_some_and(|s| s >= policy.copy_min_similarity);
        if copied(signals.copy_similarity) {
            refused = Some(Reason::TemplateInjection);
        } else if copied(signals.history_similarity) {
            refused = Some(Reason::ReplayedProbe);
        }
        Ok((refused, Some(hex::encode(user.current()))))
    }
}

/// A decision's candidate as answered.
fn scored(candidate: &ScoredCandidate) -> Candidate {
    Candidate {
        rank: None,
        user_id: candidate.user_id.clone(),
        similarity: candidate.similarity,
        fmr: candidate.fmr,
        pair_fmr: None,
        extra: Extra::new(),
    }
}

/// An investigation's candidate as answered.
fn ranked(candidate: &RankedCandidate) -> Candidate {
    Candidate {
        rank: Some(candidate.rank),
        user_id: candidate.user_id.clone(),
        similarity: candidate.similarity,
        fmr: candidate.fmr,
        pair_fmr: Some(candidate.pair_fmr),
        extra: Extra::new(),
    }
}

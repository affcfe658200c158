//! `POST /v1/identify` (1:N): the flow of one identification, beside the verification flows
//! of `service/mod.rs`. Its answer names users, so it is always encrypted to the client.

use serde::Serialize;

use super::{Answer, Service, ServiceError, fault};
use crate::crypto::sm3_hex;
use crate::obs::metrics::{Stage, StageTimer};
use crate::protocol::payload::IdentifyProbe;
use crate::risk::identify::{IdentifyDecision, ScoredCandidate};
use crate::risk::{self, Reason};
use crate::store::RiskLogEntry;

#[derive(Serialize)]
struct IdentifyPayload<'a> {
    op: &'static str,
    rid: &'a str,
    req_sm3: String,
    iat: i64,
    decision: IdentifyDecision,
    /// How many enrolled users were searched (the FMRs are corrected for it).
    searched: usize,
    candidates: &'a [ScoredCandidate],
    reasons: &'a [Reason],
    model: &'a str,
}

impl Service {
    /// `POST /v1/identify`: whose face is this, among every enrolled user? The answer names
    /// users, so it is always encrypted to the client (`ans` is required).
    pub fn identify(&self, body: &[u8], now: i64) -> Result<Answer, ServiceError> {
        let mut timer = StageTimer::start(&self.metrics);
        let dimension = self.dimension;
        let (header, probe, answer_key) =
            self.open_request_as(body, now, &mut timer, true, |p| {
                Ok(IdentifyProbe::parse(p, dimension)?)
            })?;
        let searched = self.gallery.len();
        // Two at least: the second tells a match from an ambiguous one.
        let candidates = self.gallery.top_k(&probe.features, probe.top_k.max(2));
        // The hard rules, against the best candidate: a copy of one of its templates or of
        // one of its recent accepted probes names no one. So does a failed liveness check.
        let mut copy = probe
            .liveness
            .filter(|&l| l < self.policy.min_liveness)
            .map(|_| Reason::LowLiveness);
        let mut logged_user = None;
        if let Some(best) = candidates.first() {
            let user = self.vault.user(&best.user_id);
            let enrolment = self.vault.enrolment(&user, &best.user_id).map_err(fault)?;
            let recent = self
                .vault
                .recent_probes(&user, self.policy.replay_history)
                .map_err(fault)?;
            let signals = risk::signals(&probe.features, &enrolment.templates, &recent);
            if signals
                .copy_similarity
                .is_some_and(|s| s >= self.policy.copy_min_similarity)
            {
                copy = Some(Reason::TemplateInjection);
            } else if signals
                .history_similarity
                .is_some_and(|s| s >= self.policy.copy_min_similarity)
            {
                copy = Some(Reason::ReplayedProbe);
            }
            logged_user = Some(hex::encode(user.current()));
        }
        let found = self
            .policy
            .identify(&candidates, searched, probe.top_k, copy);
        drop(candidates);
        timer.lap(Stage::Score);
        let score = found.candidates.first().map_or(1.0, |c| c.fmr);
        let log = RiskLogEntry {
            rid: header.rid.clone(),
            at: now,
            // The best candidate's blind index when one is named (an erasure of that user
            // scrubs the entry), else no one's.
            user: match found.decision {
                IdentifyDecision::Match => logged_user.unwrap_or_default(),
                _ => "identify".into(),
            },
            decision: found.decision.as_str().into(),
            score,
            reasons: found
                .reasons
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            model: self.policy.model_version().into(),
            features: probe.features.clone(),
            liveness: probe.liveness,
            device_id: probe.device_id.clone(),
        };
        drop(probe);
        self.vault.record_identification(&log).map_err(fault)?;
        drop(log);
        timer.lap(Stage::StoreWrite);
        self.make_durable(&mut timer)?;
        let response = self.answer(
            &header.rid,
            answer_key,
            &IdentifyPayload {
                op: "identify",
                rid: &header.rid,
                req_sm3: sm3_hex(body),
                iat: now,
                decision: found.decision,
                searched,
                candidates: &found.candidates,
                reasons: &found.reasons,
                model: self.policy.model_version(),
            },
        );
        timer.lap(Stage::Sign);
        response
    }
}

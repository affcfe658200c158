//! The 1:1 flows: `POST /v1/enroll`, `POST /v1/assess` and `DELETE /v1/users`, each
//! against the one user the request names (1:N is `identify`).

use super::{Answer, Service, ServiceError, codes, fault, stamp};
use crate::obs::Now;
use crate::obs::metrics::{Stage, StageTimer};
use crate::protocol::payload::EraseRequest;
use crate::protocol::reply::{
    AssessReply, EnrollOutcome, EnrollReply, EraseReply, ErasedCounts, Extra,
};
use crate::risk::gallery::gallery_key;
use crate::risk::velocity::device_key;
use crate::risk::{self, Assessment, Decision, Reason};
use crate::store::{Along, RiskLogEntry, Template, UserReading, VaultError};

impl Service {
    /// `POST /v1/enroll`: adds the probe as a template of the user, unless the face is
    /// already enrolled under another account (identity conflict: nothing is stored).
    pub fn enroll(&self, body: &[u8], clock: Now) -> Result<Answer, ServiceError> {
        let now = clock.secs();
        let mut timer = StageTimer::start(&self.metrics);
        let (header, probe, answer_key) = self.open_request(body, now, &mut timer)?;
        let user = self.vault.user(&probe.user_id);
        self.limit_user(&user, clock)?;
        let slot = self.slot(&probe.face_model)?;
        let key = gallery_key(&probe.user_id);
        // Among this model's templates only: another model's scores live on another scale.
        let conflict = slot
            .gallery
            .best_other(&probe.features, &key)
            .filter(|c| slot.policy().is_enrolment_conflict(c));
        let (outcome, templates, reasons) = if conflict.is_some() {
            let templates = self
                .vault
                .enrolment(&user, &probe.user_id)
                .map_err(fault)?
                .templates_of(slot.id())
                .len();
            (
                EnrollOutcome::IdentityConflict,
                templates,
                vec![Reason::IdentityConflict],
            )
        } else {
            let device = probe
                .device_id
                .as_deref()
                .map(|d| hex::encode(device_key(d)));
            let template = Template {
                face_model: probe.face_model.clone(),
                features: zeroize::Zeroizing::new(probe.features.clone()),
            };
            let templates = match self.vault.enrol_from(
                &user,
                &probe.user_id,
                &template,
                now,
                self.max_templates,
                device.as_deref().map(|d| (d, self.max_devices)),
            ) {
                Ok(templates) => templates,
                Err(VaultError::TemplateLimit(max)) => {
                    return Err(self.refuse_spent(ServiceError::TemplateLimit(max)));
                }
                Err(e) => return Err(fault(e)),
            };
            drop(template);
            slot.gallery.set(&probe.user_id, &templates);
            (EnrollOutcome::Enrolled, templates.len(), Vec::new())
        };
        drop(probe);
        timer.lap(Stage::StoreWrite);
        self.make_durable(&mut timer)?;
        let response = self.answer(
            &header.rid,
            answer_key,
            &EnrollReply {
                stamp: stamp("enroll", &header.rid, body, now),
                outcome: outcome.into(),
                templates,
                reasons: codes(&reasons),
                model: slot.policy().model_version().to_owned(),
                face_model: slot.id().to_owned(),
                extra: Extra::new(),
            },
        );
        timer.lap(Stage::Sign);
        response
    }

    /// `POST /v1/assess`: scores the probe against the user's templates and recent accepted
    /// probes.
    pub fn assess(&self, body: &[u8], clock: Now) -> Result<Answer, ServiceError> {
        let now = clock.secs();
        let mut timer = StageTimer::start(&self.metrics);
        let (header, probe, answer_key, unspent) =
            self.open_request_unspent(body, now, &mut timer, false, |p| self.parse_probe(p))?;
        let user = self.vault.user(&probe.user_id);
        let checked = self
            .user_limit(&user, clock)
            .and_then(|()| self.slot(&probe.face_model));
        let slot = match checked {
            Ok(slot) => slot,
            Err(refusal) => return Err(self.refuse_unspent(unspent, refusal)),
        };
        let policy = slot.policy();
        // One round trip: the request id's spend, the reads, and the ids of the risk log and
        // of the history entry it may write.
        let along = Along {
            ids: 2,
            spend: Some((&unspent.rid, unspent.iat)),
        };
        let UserReading {
            enrolment,
            recent,
            ids,
            fresh_rid,
        } = self
            .vault
            .enrolment_and_recent(
                &user,
                &probe.user_id,
                slot.id(),
                policy.replay_history,
                along,
            )
            .map_err(fault)?;
        if fresh_rid != Some(true) {
            return Err(ServiceError::ReplayedRequest);
        }
        let templates = enrolment.templates_of(slot.id());
        if templates.is_empty() && !enrolment.templates.is_empty() {
            // Enrolled, but under other models only: comparing would mix two scales.
            return Err(self.refuse_spent(ServiceError::OtherFaceModel {
                requested: slot.id().to_owned(),
                enrolled: enrolment.face_models().join(", "),
            }));
        }
        // (Not enrolled: no history either; what little was read is left out.)
        let recent = if templates.is_empty() {
            Vec::new()
        } else {
            recent
        };
        let key = gallery_key(&probe.user_id);
        let device = probe.device_id.as_deref().map(device_key);
        let device_hex = device.map(hex::encode);
        let mut signals = risk::signals(&probe.features, &templates, &recent);
        signals.conflict = slot.gallery.best_other(&probe.features, &key);
        signals.liveness = probe.liveness;
        signals.velocity = self.velocity.observe(&key, device.as_ref(), now);
        signals.new_device = risk::device_is_new(device_hex.as_deref(), &enrolment.devices);
        let enrolled = !templates.is_empty();
        drop(templates);
        drop(enrolment);
        drop(recent);
        let Assessment {
            decision,
            score,
            reasons,
        } = policy.decide(&signals);
        // A failure is a denied attempt; a step-up is the user being asked for more.
        self.velocity
            .record(&key, device.as_ref(), now, decision != Decision::Deny);
        // A device becomes known once an attempt from it is allowed or stepped up (the step-up
        // the client then runs confirms it); otherwise a new device would stay new forever.
        if decision != Decision::Deny && signals.new_device && enrolled {
            if let Some(d) = &device_hex {
                self.vault
                    .remember_device(&user, &probe.user_id, d, self.max_devices)
                    .map_err(fault)?;
            }
        }
        let score = (score * 1e6).round() / 1e6;
        timer.lap(Stage::Score);
        let log = RiskLogEntry {
            rid: header.rid.clone(),
            at: now,
            user: hex::encode(user.current()),
            decision: decision.as_str().into(),
            score,
            reasons: reasons.iter().map(|r| r.as_str().to_owned()).collect(),
            model: policy.model_version().into(),
            face_model: slot.id().to_owned(),
            features: probe.features.clone(),
            liveness: probe.liveness,
            device_id: probe.device_id.clone(),
        };
        drop(probe);
        self.vault
            .record_assessment_with_ids(user.current(), &log, decision == Decision::Allow, &ids)
            .map_err(fault)?;
        drop(log);
        timer.lap(Stage::StoreWrite);
        self.make_durable(&mut timer)?;
        self.metrics.record_decision(decision.index());
        let response = self.answer(
            &header.rid,
            answer_key,
            &AssessReply {
                stamp: stamp("assess", &header.rid, body, now),
                decision: decision.into(),
                score,
                reasons: codes(&reasons),
                model: policy.model_version().to_owned(),
                face_model: slot.id().to_owned(),
                extra: Extra::new(),
            },
        );
        timer.lap(Stage::Sign);
        response
    }

    /// `DELETE /v1/users`: erases the user's templates, history and indexes, and scrubs
    /// their risk log entries down to the decisions (`Vault::erase_user`).
    pub fn erase(&self, body: &[u8], clock: Now) -> Result<Answer, ServiceError> {
        let now = clock.secs();
        let mut timer = StageTimer::start(&self.metrics);
        let (header, request, answer_key) =
            self.open_request_as(body, now, &mut timer, false, |p| {
                Ok(EraseRequest::parse(p)?)
            })?;
        let user = self.vault.user(&request.user_id);
        let key = gallery_key(&request.user_id);
        self.limit_user(&user, clock)?;
        let erased = self
            .vault
            .erase_user(&user, &request.user_id)
            .map_err(fault)?;
        drop(request);
        for slot in &self.models {
            slot.gallery.remove(&key);
        }
        timer.lap(Stage::StoreWrite);
        self.make_durable(&mut timer)?;
        let response = self.answer(
            &header.rid,
            answer_key,
            &EraseReply {
                stamp: stamp("erase", &header.rid, body, now),
                erased: ErasedCounts {
                    templates: erased.templates,
                    history: erased.history,
                    risk_logs_scrubbed: erased.risk_logs_scrubbed,
                },
                extra: Extra::new(),
            },
        );
        timer.lap(Stage::Sign);
        response
    }
}

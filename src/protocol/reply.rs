//! What the service answers (docs/PROTOCOL.md §3 and §4): the payloads it signs, their
//! decision and reason codes, and the refusal codes. One set of types for both sides: the
//! service serialises them to sign, the client deserialises them once the signature, the
//! request id and the request hash have checked out, so the two cannot disagree.
//!
//! A newer service may add a field or a code. The client keeps both instead of failing: a
//! field it does not know lands in `extra`, a code it does not know in [`Code::Other`].

use serde::{Deserialize, Serialize};

/// A field a newer service added, kept as it came.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// A code as a client reads it: one this version knows, or a newer one kept as its text.
/// The service only ever sends [`Code::Known`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Code<T> {
    Known(T),
    Other(String),
}

/// A code with a stable wire name.
pub trait WireCode: Copy {
    /// The code as sent.
    fn as_str(self) -> &'static str;
}

impl<T: WireCode> Code<T> {
    /// The known code, if it is one.
    pub fn known(&self) -> Option<T> {
        match self {
            Code::Known(code) => Some(*code),
            Code::Other(_) => None,
        }
    }

    /// The code as sent, known or not.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(code) => code.as_str(),
            Code::Other(text) => text,
        }
    }
}

impl<T> From<T> for Code<T> {
    fn from(code: T) -> Self {
        Code::Known(code)
    }
}

impl<T: WireCode> std::fmt::Display for Code<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code equals its wire name (`reply.decision == "allow"`), known or not.
impl<T: WireCode> PartialEq<str> for Code<T> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl<T: WireCode> PartialEq<&str> for Code<T> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The decision of an assessment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    StepUp,
    Deny,
}

impl Decision {
    /// Every decision, in [`Decision::index`] order.
    pub const ALL: [Decision; 3] = [Decision::Allow, Decision::StepUp, Decision::Deny];
    /// Their wire codes, in the same order (the metrics' labels).
    pub const NAMES: [&'static str; 3] = ["allow", "step_up", "deny"];

    /// The decision's place in [`Decision::ALL`] and [`Decision::NAMES`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Decision {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// Stable reason codes: clients may branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The claimed user has no enrolled template.
    NoEnrolment,
    /// The match is in the step-up band (its FMR above `allow_max_fmr`).
    WeakMatch,
    /// The match is below the step-up band.
    NoMatch,
    /// The client's liveness score is below the configured minimum.
    LowLiveness,
    /// The probe is (nearly) a copy of an enrolled template, closer than two captures of a
    /// face come: a stolen or injected template, denied however well it matches.
    TemplateInjection,
    /// The probe is (nearly) a copy of one of the user's recent accepted probes: a replayed
    /// capture, denied however well it matches.
    ReplayedProbe,
    /// The face matches another enrolled user: better than the claimed one (denied), or
    /// beyond `conflict_max_fmr` (step-up). At enrolment: one face, many accounts.
    IdentityConflict,
    /// Many attempts for this user in the velocity window.
    HighVelocity,
    /// Attempts for this user were denied in the window.
    RepeatedFailures,
    /// This device tried several accounts in the window.
    SharedDevice,
    /// First time this device is seen with this user.
    NewDevice,
    /// The probe is far from the user's recent accepted probes.
    Drift,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::NoEnrolment,
        Reason::WeakMatch,
        Reason::NoMatch,
        Reason::LowLiveness,
        Reason::TemplateInjection,
        Reason::ReplayedProbe,
        Reason::IdentityConflict,
        Reason::HighVelocity,
        Reason::RepeatedFailures,
        Reason::SharedDevice,
        Reason::NewDevice,
        Reason::Drift,
    ];
}

impl Reason {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoEnrolment => "no_enrolment",
            Reason::WeakMatch => "weak_match",
            Reason::NoMatch => "no_match",
            Reason::LowLiveness => "low_liveness",
            Reason::TemplateInjection => "template_injection",
            Reason::ReplayedProbe => "replayed_probe",
            Reason::IdentityConflict => "identity_conflict",
            Reason::HighVelocity => "high_velocity",
            Reason::RepeatedFailures => "repeated_failures",
            Reason::SharedDevice => "shared_device",
            Reason::NewDevice => "new_device",
            Reason::Drift => "drift",
        }
    }
}

/// What an enrolment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollOutcome {
    Enrolled,
    /// The face is another enrolled user's: nothing was stored.
    IdentityConflict,
}

impl EnrollOutcome {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollOutcome::Enrolled => "enrolled",
            EnrollOutcome::IdentityConflict => "identity_conflict",
        }
    }
}

/// An identification's outcome: `match` / `no_match` / `ambiguous` / `refused` to decide,
/// `candidates` / `refused` to investigate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifyOutcome {
    Match,
    NoMatch,
    Ambiguous,
    /// A copy (template injection, replayed probe) or failed liveness: no candidate named.
    Refused,
    /// Investigative mode: ranked leads, no decision.
    Candidates,
}

impl IdentifyOutcome {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifyOutcome::Match => "match",
            IdentifyOutcome::NoMatch => "no_match",
            IdentifyOutcome::Ambiguous => "ambiguous",
            IdentifyOutcome::Refused => "refused",
            IdentifyOutcome::Candidates => "candidates",
        }
    }
}

/// The fields every answer carries, which the client checks before it returns the answer:
/// `rid` and `req_sm3` tie it to the one request sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// `enroll`, `assess`, `identify` or `erase`.
    pub op: String,
    /// The request id of the request answered.
    pub rid: String,
    /// SM3 (hex) of the exact envelope answered.
    pub req_sm3: String,
    /// When the answer was made (unix seconds).
    pub iat: i64,
}

/// `POST /v1/enroll`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollReply {
    #[serde(flatten)]
    pub stamp: Stamp,
    pub outcome: Code<EnrollOutcome>,
    /// The user's template count now (under `face_model`).
    pub templates: usize,
    pub reasons: Vec<Code<Reason>>,
    /// The risk model's version.
    pub model: String,
    /// PROTOCOL v1.3: the face model whose templates were searched and counted.
    pub face_model: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/assess`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessReply {
    #[serde(flatten)]
    pub stamp: Stamp,
    pub decision: Code<Decision>,
    /// The risk score in [0, 1] (higher is riskier).
    pub score: f64,
    pub reasons: Vec<Code<Reason>>,
    pub model: String,
    /// PROTOCOL v1.3: the face model that decided.
    pub face_model: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One candidate of an identification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// 1 for the best (investigative mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    pub user_id: String,
    /// Cosine similarity with the user's enrolled centroid (6 decimals).
    pub similarity: f64,
    /// The chance that a stranger's face scores this well against *some* user of a gallery
    /// this size: the calibrated per-pair FMR × users searched, at most 1.
    pub fmr: f64,
    /// The calibrated FMR of this one comparison (investigative mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_fmr: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /v1/identify`'s answer, in either mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentifyReply {
    #[serde(flatten)]
    pub stamp: Stamp,
    /// `decide` or `investigate`.
    pub mode: String,
    pub decision: Code<IdentifyOutcome>,
    /// How many enrolled users were searched (the FMRs are corrected for it).
    pub searched: usize,
    pub candidates: Vec<Candidate>,
    pub reasons: Vec<Code<Reason>>,
    pub model: String,
    /// PROTOCOL v1.3: the face model whose templates were searched.
    pub face_model: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What an erasure removed or scrubbed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasedCounts {
    pub templates: usize,
    pub history: usize,
    /// Risk log entries kept as decisions only (the user's index, features, liveness and
    /// device removed; rid, time, decision, score, reasons and model kept for the audit).
    pub risk_logs_scrubbed: usize,
}

/// `DELETE /v1/users`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EraseReply {
    #[serde(flatten)]
    pub stamp: Stamp,
    pub erased: ErasedCounts,
    #[serde(flatten)]
    pub extra: Extra,
}

macro_rules! wire_codes {
    ($($code:ty),*) => {
        $(impl WireCode for $code {
            fn as_str(self) -> &'static str {
                <$code>::as_str(self)
            }
        })*
    };
}

wire_codes!(Decision, Reason, EnrollOutcome, IdentifyOutcome, ErrorCode);

/// An answer shows as the JSON it was signed as (in logs and test messages).
macro_rules! display_as_json {
    ($($reply:ty),*) => {
        $(impl std::fmt::Display for $reply {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_string(self) {
                    Ok(text) => f.write_str(&text),
                    Err(_) => Err(std::fmt::Error),
                }
            }
        })*
    };
}

display_as_json!(EnrollReply, AssessReply, IdentifyReply, EraseReply);

/// A refusal's stable code (`{"error": <code>, "detail": …}`, docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedEnvelope,
    BadBase64,
    BadLength,
    BadHeader,
    UnsupportedAlgorithm,
    UnknownKid,
    KeyRetired,
    StaleRequest,
    AnswerEncryptionRequired,
    DecryptionFailed,
    IncompleteBody,
    QueryNotAllowed,
    LengthRequired,
    ReplayedRequest,
    TemplateLimit,
    BodyTooLarge,
    MalformedPayload,
    WrongDimension,
    NonFiniteFeature,
    ZeroNorm,
    InvalidField,
    Unauthenticated,
    Forbidden,
    RateLimited,
    BadNonce,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Overloaded,
    StorageUnavailable,
    InternalError,
    BadJoinRequest,
    JoinRefused,
    JoinUnavailable,
    Sealed,
    NotSealed,
    BadCustodyRequest,
    UnknownCustodian,
    BadCustodianSignature,
    StaleAttempt,
    ShareReplayed,
    ShareInvalid,
    ShareMismatch,
    DatabaseNotEmpty,
    DatabaseNotInitialised,
    RekeyInProgress,
}

impl ErrorCode {
    /// Every code, in the order docs/openapi.yaml lists them.
    pub const ALL: [ErrorCode; 46] = [
        ErrorCode::MalformedEnvelope,
        ErrorCode::BadBase64,
        ErrorCode::BadLength,
        ErrorCode::BadHeader,
        ErrorCode::UnsupportedAlgorithm,
        ErrorCode::UnknownKid,
        ErrorCode::KeyRetired,
        ErrorCode::StaleRequest,
        ErrorCode::AnswerEncryptionRequired,
        ErrorCode::DecryptionFailed,
        ErrorCode::IncompleteBody,
        ErrorCode::QueryNotAllowed,
        ErrorCode::LengthRequired,
        ErrorCode::ReplayedRequest,
        ErrorCode::TemplateLimit,
        ErrorCode::BodyTooLarge,
        ErrorCode::MalformedPayload,
        ErrorCode::WrongDimension,
        ErrorCode::NonFiniteFeature,
        ErrorCode::ZeroNorm,
        ErrorCode::InvalidField,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::BadNonce,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Overloaded,
        ErrorCode::StorageUnavailable,
        ErrorCode::InternalError,
        ErrorCode::BadJoinRequest,
        ErrorCode::JoinRefused,
        ErrorCode::JoinUnavailable,
        ErrorCode::Sealed,
        ErrorCode::NotSealed,
        ErrorCode::BadCustodyRequest,
        ErrorCode::UnknownCustodian,
        ErrorCode::BadCustodianSignature,
        ErrorCode::StaleAttempt,
        ErrorCode::ShareReplayed,
        ErrorCode::ShareInvalid,
        ErrorCode::ShareMismatch,
        ErrorCode::DatabaseNotEmpty,
        ErrorCode::DatabaseNotInitialised,
        ErrorCode::RekeyInProgress,
    ];
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedEnvelope => "malformed_envelope",
            ErrorCode::BadBase64 => "bad_base64",
            ErrorCode::BadLength => "bad_length",
            ErrorCode::BadHeader => "bad_header",
            ErrorCode::UnsupportedAlgorithm => "unsupported_algorithm",
            ErrorCode::UnknownKid => "unknown_kid",
            ErrorCode::KeyRetired => "key_retired",
            ErrorCode::StaleRequest => "stale_request",
            ErrorCode::AnswerEncryptionRequired => "answer_encryption_required",
            ErrorCode::DecryptionFailed => "decryption_failed",
            ErrorCode::IncompleteBody => "incomplete_body",
            ErrorCode::QueryNotAllowed => "query_not_allowed",
            ErrorCode::LengthRequired => "length_required",
            ErrorCode::ReplayedRequest => "replayed_request",
            ErrorCode::TemplateLimit => "template_limit",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::MalformedPayload => "malformed_payload",
            ErrorCode::WrongDimension => "wrong_dimension",
            ErrorCode::NonFiniteFeature => "non_finite_feature",
            ErrorCode::ZeroNorm => "zero_norm",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadNonce => "bad_nonce",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::BadJoinRequest => "bad_join_request",
            ErrorCode::JoinRefused => "join_refused",
            ErrorCode::JoinUnavailable => "join_unavailable",
            ErrorCode::Sealed => "sealed",
            ErrorCode::NotSealed => "not_sealed",
            ErrorCode::BadCustodyRequest => "bad_custody_request",
            ErrorCode::UnknownCustodian => "unknown_custodian",
            ErrorCode::BadCustodianSignature => "bad_custodian_signature",
            ErrorCode::StaleAttempt => "stale_attempt",
            ErrorCode::ShareReplayed => "share_replayed",
            ErrorCode::ShareInvalid => "share_invalid",
            ErrorCode::ShareMismatch => "share_mismatch",
            ErrorCode::DatabaseNotEmpty => "database_not_empty",
            ErrorCode::DatabaseNotInitialised => "database_not_initialised",
            ErrorCode::RekeyInProgress => "rekey_in_progress",
        }
    }
}

/// A refusal's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: Code<ErrorCode>,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_their_wire_names() {
        let outcomes = [EnrollOutcome::Enrolled, EnrollOutcome::IdentityConflict];
        for outcome in outcomes {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::json!(outcome.as_str())
            );
        }
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
        for decision in Decision::ALL {
            assert_eq!(
                serde_json::to_value(decision).unwrap(),
                serde_json::json!(decision.as_str())
            );
        }
    }

    #[test]
    fn a_newer_services_fields_and_codes_are_kept() {
        let text = r#"{"op":"assess","rid":"r1","req_sm3":"ab","iat":7,"decision":"allow",
            "score":0.1,"reasons":["new_device","moon_phase"],"model":"m","face_model":"f",
            "explanation":{"top":"match"}}"#;
        let reply: AssessReply = serde_json::from_str(text).unwrap();
        assert_eq!(reply.decision, Code::Known(Decision::Allow));
        assert_eq!(
            reply.reasons,
            vec![
                Code::Known(Reason::NewDevice),
                Code::Other("moon_phase".into())
            ]
        );
        assert_eq!(reply.extra["explanation"]["top"], "match");
        assert_eq!(reply.stamp.rid, "r1");
        // And it serialises back to the same JSON.
        let again: serde_json::Value = serde_json::to_value(&reply).unwrap();
        let first: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, first);
        let refusal: ErrorBody =
            serde_json::from_str(r#"{"error":"too_early","detail":"x"}"#).unwrap();
        assert_eq!(refusal.error, Code::Other("too_early".into()));
        assert_eq!(refusal.error.to_string(), "too_early");
    }
}

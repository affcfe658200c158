//! Why the service refused or failed a request. Independent of HTTP: each variant has a
//! stable machine code (`docs/PROTOCOL.md` §4); the status it maps to lives in `http::error`.
//! Details never carry secrets, feature values or user ids.

use crate::protocol::payload::FeatureError;
use crate::protocol::reply::ErrorCode;
use crate::protocol::request::EnvelopeError;

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Requests per authenticated client.
    Client,
    /// Requests per user (blind index), over enrol, assess and erase.
    User,
}

impl LimitScope {
    /// The scope's name in error details.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Client => "client",
            LimitScope::User => "user",
        }
    }
}

/// A refusal or fault of one request's flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The envelope does not parse, or its payload does not decrypt.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The envelope names an encryption key never issued.
    #[error("unknown key id: fetch the current keys from GET /v1/keys and encrypt again")]
    UnknownKid,
    /// The envelope names an encryption key already wiped.
    #[error(
        "this encryption key was retired and wiped: fetch the current keys from GET /v1/keys \
         and encrypt again"
    )]
    RetiredKid,
    /// `iat` is outside the window (seconds).
    #[error("iat is more than {0} seconds away from the server's clock")]
    StaleRequest(i64),
    /// The request id was spent before.
    #[error("this request id was already used")]
    ReplayedRequest,
    /// An endpoint whose answer names users, asked for without `ans` in the header.
    #[error(
        "this endpoint's answer names users, so it is always encrypted: set \"ans\":\"SM4-GCM\" \
         in the protected header (docs/PROTOCOL.md §3a)"
    )]
    AnswerEncryptionRequired,
    /// The decrypted payload is invalid.
    #[error(transparent)]
    Payload(#[from] FeatureError),
    /// The payload asks for what the client's permissions do not cover (identify's
    /// `"mode": "investigate"` without `investigate`). The request id is spent.
    #[error("this client lacks the `{}` permission", .0.as_str())]
    Forbidden(crate::service::access::Permission),
    /// An assessment in one face model of a user whose templates are all of others: scores
    /// of two models are never compared. The request id is spent.
    #[error(
        "face_model {requested}: this user's templates are of {enrolled} only; enrol the user \
         under {requested} first, or send an embedding of {enrolled}"
    )]
    OtherFaceModel {
        /// The model the request named (or the default).
        requested: String,
        /// The models the user's templates are of.
        enrolled: String,
    },
    /// The user already has the maximum number of templates (of the request's face model).
    #[error("the user already has the maximum of {0} templates of this face model")]
    TemplateLimit(usize),
    /// The replay cache is full: the service cannot take more requests now.
    #[error("too many requests in flight; retry later")]
    Overloaded,
    /// Too many requests for a client or a user within the window.
    #[error("too many requests for this {}; retry after {retry_after_secs} s", scope.as_str())]
    RateLimited {
        /// Whose limit.
        scope: LimitScope,
        /// When a token is back.
        retry_after_secs: u64,
    },
    /// The storage failed (a full disk, an I/O error) and is recovering by itself; nothing
    /// of this request was acknowledged. Retry after a few seconds (with a new `rid`).
    #[error("storage is unavailable for now; retry in a few seconds with a new request id")]
    StorageUnavailable,
    /// Custodian mode before the unseal: the service holds no master key yet.
    #[error(
        "the service is sealed: it serves once its custodians have unsealed it (GET \
         /v1/custody shows how many shares it holds)"
    )]
    Sealed,
    /// A fault of the service; the cause is logged server-side, never sent.
    #[error("internal error")]
    Internal,
}

impl ServiceError {
    /// The stable machine-readable code (`docs/PROTOCOL.md` §4).
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Envelope(e) => match e {
                EnvelopeError::MalformedEnvelope => ErrorCode::MalformedEnvelope,
                EnvelopeError::BadBase64(_) => ErrorCode::BadBase64,
                EnvelopeError::BadLength { .. } => ErrorCode::BadLength,
                EnvelopeError::BadHeader(_) => ErrorCode::BadHeader,
                EnvelopeError::UnsupportedAlgorithm => ErrorCode::UnsupportedAlgorithm,
                EnvelopeError::DecryptionFailed => ErrorCode::DecryptionFailed,
            },
            ServiceError::UnknownKid => ErrorCode::UnknownKid,
            ServiceError::RetiredKid => ErrorCode::KeyRetired,
            ServiceError::StaleRequest(_) => ErrorCode::StaleRequest,
            ServiceError::AnswerEncryptionRequired => ErrorCode::AnswerEncryptionRequired,
            ServiceError::ReplayedRequest => ErrorCode::ReplayedRequest,
            ServiceError::Payload(e) => match e {
                FeatureError::MalformedPayload
                | FeatureError::MalformedErasure
                | FeatureError::MalformedIdentify => ErrorCode::MalformedPayload,
                FeatureError::WrongDimension { .. } => ErrorCode::WrongDimension,
                FeatureError::NonFinite(_) => ErrorCode::NonFiniteFeature,
                FeatureError::ZeroNorm => ErrorCode::ZeroNorm,
                FeatureError::InvalidField(_) | FeatureError::UnknownFaceModel { .. } => {
                    ErrorCode::InvalidField
                }
            },
            ServiceError::OtherFaceModel { .. } => ErrorCode::InvalidField,
            ServiceError::Forbidden(_) => ErrorCode::Forbidden,
            ServiceError::TemplateLimit(_) => ErrorCode::TemplateLimit,
            ServiceError::Overloaded => ErrorCode::Overloaded,
            ServiceError::RateLimited { .. } => ErrorCode::RateLimited,
            ServiceError::StorageUnavailable => ErrorCode::StorageUnavailable,
            ServiceError::Sealed => ErrorCode::Sealed,
            ServiceError::Internal => ErrorCode::InternalError,
        }
    }
}

/// Seconds a client should wait after `storage_unavailable` (the store retries reopening
/// every second).
pub const STORAGE_RETRY_AFTER_SECS: u64 = 2;

/// Seconds a client should wait after `sealed` (custodians work at human speed).
pub const SEALED_RETRY_AFTER_SECS: u64 = 30;

/// Logs a fault of the service with its cause and returns the opaque error.
pub(crate) fn internal(error: impl std::fmt::Display) -> ServiceError {
    tracing::error!(%error, "request failed inside the service");
    ServiceError::Internal
}

/// A vault error as the client sees it: a storage fault is `storage_unavailable` (503, it
/// will pass), anything else an opaque internal error. The cause is logged either way.
pub(crate) fn fault(error: crate::store::VaultError) -> ServiceError {
    use crate::store::{StoreError, VaultError};
    match error {
        VaultError::Store(StoreError::Backend(_) | StoreError::Unavailable(_)) => {
            tracing::error!(%error, "request failed: storage unavailable");
            ServiceError::StorageUnavailable
        }
        other => internal(other),
    }
}

//! The HTTP error contract: every refusal is `{"error": <stable code>, "detail": <sentence>}`
//! with a 4xx status (5xx only for faults of the service itself). Details never carry
//! secrets, feature values or user ids.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::envelope::request::EnvelopeError;
use crate::features::FeatureError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("the request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body could not be read completely")]
    IncompleteBody,
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("unknown key id: fetch the current keys from GET /v1/keys and encrypt again")]
    UnknownKid,
    #[error(
        "this encryption key was retired and wiped: fetch the current keys from GET /v1/keys \
         and encrypt again"
    )]
    RetiredKid,
    #[error("iat is more than {0} seconds away from the server's clock")]
    StaleRequest(i64),
    #[error("this request id was already used")]
    ReplayedRequest,
    #[error(transparent)]
    Payload(#[from] FeatureError),
    #[error("the user already has the maximum of {0} templates")]
    TemplateLimit(usize),
    #[error("too many requests in flight; retry later")]
    Overloaded,
    #[error("nonce must be a query parameter of 32 bytes in base64url without padding")]
    BadNonce,
    #[error("no such endpoint")]
    NotFound,
    #[error("this endpoint needs the operator's bearer token")]
    Unauthorized,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// No valid client signature (`docs/PROTOCOL.md`, access control).
    #[error("client authentication failed: {0}")]
    Unauthenticated(&'static str),
    /// A known client without the permission this endpoint needs.
    #[error("this client lacks the `{0}` permission")]
    Forbidden(&'static str),
    /// Too many requests for a client or a user within the window.
    #[error("too many requests for this {scope}; retry after {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    /// A fault of the service; the cause is logged server-side, never sent.
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: String,
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::IncompleteBody => "incomplete_body",
            ApiError::Envelope(e) => match e {
                EnvelopeError::MalformedEnvelope => "malformed_envelope",
                EnvelopeError::BadBase64(_) => "bad_base64",
                EnvelopeError::BadLength { .. } => "bad_length",
                EnvelopeError::BadHeader(_) => "bad_header",
                EnvelopeError::UnsupportedAlgorithm => "unsupported_algorithm",
                EnvelopeError::DecryptionFailed => "decryption_failed",
            },
            ApiError::UnknownKid => "unknown_kid",
            ApiError::RetiredKid => "key_retired",
            ApiError::StaleRequest(_) => "stale_request",
            ApiError::ReplayedRequest => "replayed_request",
            ApiError::Payload(e) => match e {
                FeatureError::MalformedPayload | FeatureError::MalformedErasure => {
                    "malformed_payload"
                }
                FeatureError::WrongDimension { .. } => "wrong_dimension",
                FeatureError::NonFinite(_) => "non_finite_feature",
                FeatureError::ZeroNorm => "zero_norm",
                FeatureError::InvalidField(_) => "invalid_field",
            },
            ApiError::TemplateLimit(_) => "template_limit",
            ApiError::Overloaded => "overloaded",
            ApiError::BadNonce => "bad_nonce",
            ApiError::NotFound => "not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::IncompleteBody
            | ApiError::Envelope(_)
            | ApiError::UnknownKid
            | ApiError::RetiredKid
            | ApiError::BadNonce
            | ApiError::StaleRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ReplayedRequest | ApiError::TemplateLimit(_) => StatusCode::CONFLICT,
            ApiError::Payload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response.insert_header((
                actix_web::http::header::RETRY_AFTER,
                retry_after_secs.to_string(),
            ));
        }
        response.json(ErrorBody {
            error: self.code(),
            detail: self.to_string(),
        })
    }
}

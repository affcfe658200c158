//! The HTTP error contract: every refusal is `{"error": <stable code>, "detail": <sentence>}`
//! with a 4xx status (5xx only for faults of the service itself). The service's refusals
//! keep their codes; this module adds those only HTTP can produce and maps each to a status.

use crate::protocol::reply::ErrorCode;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::service::ServiceError;
use crate::service::access::{AccessError, Permission};
use crate::service::cluster::JoinError;
use crate::service::custody::CustodyError;

/// A refusal as the HTTP layer answers it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A refusal or fault of the request's flow.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The body is longer than `server.max_body_bytes`.
    #[error("the request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body did not arrive whole: fewer bytes than its `Content-Length`, or the
    /// connection failed while it was read.
    #[error("the request body ended before its Content-Length: nothing was done; send it again")]
    IncompleteBody,
    /// The body did not arrive whole within `server.body_deadline_secs` (a slow or stalled
    /// sender): the same code as a cut body, with the limit in the detail.
    #[error(
        "the request body did not arrive whole within the {0} s deadline \
         ([server] body_deadline_secs): nothing was done; send the whole body at once"
    )]
    BodyDeadline(u64),
    /// A body without `Content-Length` (chunked): a cut-short chunked body cannot be told
    /// from a whole one.
    #[error("send the body with a Content-Length header; chunked bodies are refused")]
    LengthRequired,
    /// A query string on an encrypted endpoint (the client signature does not cover it).
    #[error("encrypted endpoints take no query string: the signed path is the whole target")]
    QueryNotAllowed,
    /// `GET /v1/attestation` without a valid nonce.
    #[error("nonce must be a query parameter of 32 bytes in base64url without padding")]
    BadNonce,
    /// No such endpoint (also what closed operator endpoints answer).
    #[error("no such endpoint")]
    NotFound,
    /// An operator endpoint without the operator's token.
    #[error("this endpoint needs the operator's bearer token")]
    Unauthorized,
    /// The endpoint exists, not with this method; it answers these (the `Allow` header).
    #[error("method not allowed on this endpoint (allowed: {0})")]
    MethodNotAllowed(&'static str),
    /// No valid client signature (`docs/PROTOCOL.md`, access control).
    #[error("client authentication failed: {0}")]
    Unauthenticated(&'static str),
    /// A known client without the permission this endpoint needs.
    #[error("this client lacks the `{}` permission", .0.as_str())]
    Forbidden(Permission),
    /// A join step refused (`service::cluster`; operator listener only).
    #[error("{0}")]
    Join(JoinError),
    /// A key-custody step refused (`service::custody`).
    #[error("{0}")]
    Custody(#[from] CustodyError),
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Unauthenticated(why) => ApiError::Unauthenticated(why),
            AccessError::Forbidden(permission) => ApiError::Forbidden(permission),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: ErrorCode,
    detail: String,
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Service(e) => e.code(),
            ApiError::BodyTooLarge(_) => ErrorCode::BodyTooLarge,
            ApiError::IncompleteBody | ApiError::BodyDeadline(_) => ErrorCode::IncompleteBody,
            ApiError::LengthRequired => ErrorCode::LengthRequired,
            ApiError::QueryNotAllowed => ErrorCode::QueryNotAllowed,
            ApiError::BadNonce => ErrorCode::BadNonce,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Join(JoinError::Malformed(_)) => ErrorCode::BadJoinRequest,
            ApiError::Join(JoinError::Busy) => ErrorCode::Overloaded,
            ApiError::Join(JoinError::Sealed) => ErrorCode::Sealed,
            ApiError::Join(JoinError::Unavailable(_)) => ErrorCode::JoinUnavailable,
            ApiError::Join(_) => ErrorCode::JoinRefused,
            ApiError::Custody(e) => match e {
                CustodyError::NotCustodyMode => ErrorCode::NotFound,
                CustodyError::NotSealed => ErrorCode::NotSealed,
                CustodyError::Sealed => ErrorCode::Sealed,
                CustodyError::RekeyInProgress(_) => ErrorCode::RekeyInProgress,
                CustodyError::Malformed(_) => ErrorCode::BadCustodyRequest,
                CustodyError::UnknownCustodian(_) => ErrorCode::UnknownCustodian,
                CustodyError::BadSignature(_) => ErrorCode::BadCustodianSignature,
                CustodyError::StaleAttempt => ErrorCode::StaleAttempt,
                CustodyError::ShareReplayed(_) => ErrorCode::ShareReplayed,
                CustodyError::ShareInvalid(_) => ErrorCode::ShareInvalid,
                CustodyError::ShareMismatch(_) => ErrorCode::ShareMismatch,
                CustodyError::DatabaseNotEmpty(_) => ErrorCode::DatabaseNotEmpty,
                CustodyError::NotInitialised => ErrorCode::DatabaseNotInitialised,
                CustodyError::Unavailable(_) => ErrorCode::StorageUnavailable,
                CustodyError::Internal => ErrorCode::InternalError,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Service(e) => match e {
                ServiceError::Envelope(_)
                | ServiceError::UnknownKid
                | ServiceError::RetiredKid
                | ServiceError::AnswerEncryptionRequired
                | ServiceError::StaleRequest(_) => StatusCode::BAD_REQUEST,
                ServiceError::ReplayedRequest | ServiceError::TemplateLimit(_) => {
                    StatusCode::CONFLICT
                }
                ServiceError::Payload(_) | ServiceError::OtherFaceModel { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ServiceError::Overloaded
                | ServiceError::StorageUnavailable
                | ServiceError::Sealed => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
                ServiceError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::IncompleteBody
            | ApiError::BodyDeadline(_)
            | ApiError::BadNonce
            | ApiError::QueryNotAllowed => StatusCode::BAD_REQUEST,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Join(JoinError::Malformed(_)) => StatusCode::BAD_REQUEST,
            ApiError::Join(JoinError::Busy | JoinError::Unavailable(_) | JoinError::Sealed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Join(_) => StatusCode::FORBIDDEN,
            ApiError::Custody(e) => match e {
                CustodyError::NotCustodyMode => StatusCode::NOT_FOUND,
                CustodyError::Malformed(_) | CustodyError::ShareInvalid(_) => {
                    StatusCode::BAD_REQUEST
                }
                CustodyError::UnknownCustodian(_) | CustodyError::BadSignature(_) => {
                    StatusCode::FORBIDDEN
                }
                CustodyError::NotSealed
                | CustodyError::RekeyInProgress(_)
                | CustodyError::StaleAttempt
                | CustodyError::ShareReplayed(_)
                | CustodyError::ShareMismatch(_)
                | CustodyError::DatabaseNotEmpty(_)
                | CustodyError::NotInitialised => StatusCode::CONFLICT,
                CustodyError::Unavailable(_) | CustodyError::Sealed => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                CustodyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let retry_after = match self {
            ApiError::Service(ServiceError::RateLimited {
                retry_after_secs, ..
            }) => Some(*retry_after_secs),
            ApiError::Service(ServiceError::StorageUnavailable)
            | ApiError::Custody(CustodyError::Unavailable(_)) => {
                Some(crate::service::STORAGE_RETRY_AFTER_SECS)
            }
            ApiError::Service(ServiceError::Sealed)
            | ApiError::Join(JoinError::Sealed)
            | ApiError::Custody(CustodyError::Sealed) => {
                Some(crate::service::SEALED_RETRY_AFTER_SECS)
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            response.insert_header((actix_web::http::header::ALLOW, *allow));
        }
        response.json(ErrorBody {
            error: self.code(),
            detail: self.to_string(),
        })
    }
}

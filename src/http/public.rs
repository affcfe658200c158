//! Public endpoints that need no client signature: health, keys, attestation; and the JSON
//! answers for unknown paths and methods.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use crate::attest::NONCE_LEN;
use crate::obs::unix_now;
use crate::protocol::b64_decode;
use crate::service::ServiceError;

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn keys(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.service.keys_document())
}

#[derive(serde::Deserialize)]
pub(super) struct NonceQuery {
    nonce: Option<String>,
}

/// `GET /v1/attestation?nonce=<base64url, 32 bytes>`: a report binding the nonce and the
/// identity key (`docs/ATTESTATION.md`).
pub(super) async fn attestation(
    state: web::Data<AppState>,
    query: Result<web::Query<NonceQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let nonce: [u8; NONCE_LEN] = query
        .ok()
        .and_then(|q| q.into_inner().nonce)
        .and_then(|n| b64_decode(&n))
        .and_then(|n| n.try_into().ok())
        .ok_or(ApiError::BadNonce)?;
    let (service, attester) = (state.service.clone(), state.attestation.clone());
    let evidence =
        web::block(move || attester.evidence(&nonce, service.identity_public(), unix_now()))
            .await
            .map_err(|_| ApiError::Service(ServiceError::Internal))?
            .map_err(|error| {
                tracing::error!(%error, "attestation failed");
                ApiError::Service(ServiceError::Internal)
            })?;
    Ok(HttpResponse::Ok().json(evidence))
}

pub(super) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub(super) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

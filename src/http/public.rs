//! Public endpoints that need no client signature: health, keys, attestation; and the JSON
//! answers for unknown paths and methods.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use crate::attest::NONCE_LEN;
use crate::obs::unix_now;
use crate::protocol::b64_decode;
use crate::service::ServiceError;

/// Readiness a load balancer can act on: 200 `{"status":"ok","storage":"ok"}` while the
/// store serves, 503 `{"status":"unavailable","storage":"failing"}` while it is down (the
/// probe itself drives the store's recovery; see `store::RecoveringStore`).
pub(super) async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let Ok(service) = state.gate.service() else {
        // Sealed: not ready, and a load balancer must not send it data requests.
        return HttpResponse::ServiceUnavailable()
            .insert_header((
                actix_web::http::header::RETRY_AFTER,
                crate::service::SEALED_RETRY_AFTER_SECS.to_string(),
            ))
            .json(serde_json::json!({"status": "sealed", "storage": "closed"}));
    };
    // A reopen attempt may wait on the engine's file lock: off the async executor.
    let healthy = web::block(move || service.vault().storage_healthy())
        .await
        .unwrap_or(false);
    if healthy {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok", "storage": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((
                actix_web::http::header::RETRY_AFTER,
                crate::service::STORAGE_RETRY_AFTER_SECS.to_string(),
            ))
            .json(serde_json::json!({"status": "unavailable", "storage": "failing"}))
    }
}

pub(super) async fn keys(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.gate.keys_document())
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
    let (gate, attester) = (state.gate.clone(), state.attestation.clone());
    let evidence =
        web::block(move || attester.evidence(&nonce, gate.identity_public(), unix_now()))
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

/// 405, naming the methods the resource answers.
pub(super) async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(allow))
}

//! The join endpoints (`POST /cluster/v1/challenge`, `POST /cluster/v1/join`): served only
//! on the operator listener of a cluster replica, authenticated by attestation (the
//! service's `ClusterPeer`), never by a token.

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use crate::attest::join::{ChallengeRequest, JoinRequest};
use crate::obs::unix_now;
use crate::service::ServiceError;
use crate::service::cluster::{ClusterPeer, JoinError};

/// The replica's peer side, if the request came to the operator listener of a cluster
/// replica; elsewhere the endpoints do not exist (404).
fn peer(state: &AppState, request: &HttpRequest) -> Result<std::sync::Arc<ClusterPeer>, ApiError> {
    let on_operator_listener = state
        .operator_listener
        .get()
        .is_some_and(|addr| request.app_config().local_addr() == *addr);
    match &state.cluster {
        Some(peer) if on_operator_listener => Ok(peer.clone()),
        _ => Err(ApiError::NotFound),
    }
}

/// Another method on a join endpoint: 405 where the endpoint exists, 404 elsewhere.
pub(super) async fn other_method(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    peer(&state, &request)?;
    Err(ApiError::MethodNotAllowed("POST"))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|_| ApiError::Join(JoinError::Malformed("the body is not this endpoint's JSON")))
}

/// Logs a refusal with the check that failed (a joiner's failure is the operator's concern).
fn refused(error: JoinError) -> ApiError {
    tracing::warn!(check = error.check(), %error, "join refused");
    ApiError::Join(error)
}

pub(super) async fn challenge(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let peer = peer(&state, &request)?;
    let message: ChallengeRequest = parse(&body)?;
    let (gate, attester) = (state.gate.clone(), state.attestation.clone());
    // Making evidence talks to the TEE device: off the async executor.
    let answer = web::block(move || peer.challenge(&gate, &attester, &message, unix_now()))
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))?
        .map_err(refused)?;
    Ok(HttpResponse::Ok().json(answer))
}

pub(super) async fn join(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let peer = peer(&state, &request)?;
    let message: JoinRequest = parse(&body)?;
    let gate = state.gate.clone();
    // Verifying a report chain and sealing with SM2: CPU work, off the async executor.
    let grant = web::block(move || peer.admit(&gate, &message, unix_now()))
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))?
        .map_err(refused)?;
    Ok(HttpResponse::Ok().json(grant))
}

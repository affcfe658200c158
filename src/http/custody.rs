//! The key-custody endpoints (`GET /v1/custody`, `POST /v1/custody/init`, `POST
//! /v1/custody/unseal`, `POST /v1/custody/rekey`): on the service listener, where custodians reach it; authenticated
//! by the custodians' signatures and the attempt (`service::custody`), never by a token. A
//! service that takes its key from the environment answers 404.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use crate::obs::unix_now;
use crate::protocol::custody::{Approval, CustodyFormatError, UnsealRequest};
use crate::service::ServiceError;
use crate::service::custody::CustodyError;

/// Every custody call waits on the custody state, which a rekey holds while it reopens the
/// database: off the async executor.
pub(super) async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let gate = state.gate.clone();
    let status = web::block(move || gate.status())
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))??;
    Ok(HttpResponse::Ok().json(status))
}

/// 404 unless the key comes from custodians.
fn custody_mode(state: &AppState) -> Result<(), ApiError> {
    match state.gate.custody_mode() {
        true => Ok(()),
        false => Err(CustodyError::NotCustodyMode.into()),
    }
}

pub(super) async fn init(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    custody_mode(&state)?;
    let gate = state.gate.clone();
    // Opening (creating) the database and SM2 work: off the async executor.
    let request: Approval = parse(&body)?;
    let signed = web::block(move || gate.init(&request, unix_now()))
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))??;
    Ok(HttpResponse::Ok().json(signed))
}

pub(super) async fn unseal(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    custody_mode(&state)?;
    let gate = state.gate.clone();
    let request: UnsealRequest = parse(&body)?;
    let signed = web::block(move || gate.unseal(&request, unix_now()))
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))??;
    Ok(HttpResponse::Ok().json(signed))
}

pub(super) async fn rekey(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    custody_mode(&state)?;
    let gate = state.gate.clone();
    let request: Approval = parse(&body)?;
    // Reopening the database under the new key waits for the requests in flight.
    let signed = web::block(move || gate.rekey(&request, unix_now()))
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))??;
    Ok(HttpResponse::Ok().json(signed))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|_| {
        ApiError::Custody(CustodyError::Malformed(CustodyFormatError::Share(
            "the body is not this endpoint's JSON",
        )))
    })
}

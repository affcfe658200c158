//! Operator endpoints (`/metrics`, `/admin/…`): who may reach them, and what they answer.
//! Aggregate counters and key ids only: nothing in them identifies a user or a key.

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use crate::service::ServiceError;

/// Aggregate counters only (see `metrics.rs`): nothing in them identifies a user or a key.
/// An operator endpoint (see [`check_operator`]).
pub(super) async fn metrics(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_operator(&state, &request, false)?;
    // Counters only: rendering touches no table and never waits on the store, so a scrape
    // answers at once whatever state the store is in.
    let service = state.gate.service()?;
    let text = service.metrics().render()
        + &crate::obs::metrics::Metrics::render_store_sizes(&service.vault().table_sizes());
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

/// Who may reach an operator endpoint (`/metrics`, `/admin/…`): with an operator listener
/// configured, only requests that arrived on it; with `TEE_RISK_ADMIN_TOKEN` set, only with
/// `Authorization: Bearer <token>`; with neither, `/metrics` only in dev mode and `/admin/…`
/// never (404 where closed, so a scan learns nothing).
fn check_operator(state: &AppState, request: &HttpRequest, admin: bool) -> Result<(), ApiError> {
    let operator_listener = state.operator_listener.get().copied();
    let on_operator_listener =
        operator_listener.is_some_and(|addr| request.app_config().local_addr() == addr);
    if operator_listener.is_some() && !on_operator_listener {
        return Err(ApiError::NotFound);
    }
    let Some(expected) = state.admin_token else {
        return if admin || !(state.dev || on_operator_listener) {
            Err(ApiError::NotFound)
        } else {
            Ok(())
        };
    };
    let presented = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| crate::crypto::sm3(token.as_bytes()));
    // Comparing SM3 digests: equal-length, and a timing difference reveals nothing useful.
    if presented != Some(expected) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// Another method on an operator endpoint: 405 where the endpoint is open to this request,
/// 404 where it is closed (as for its own method).
pub(super) async fn other_method(
    state: web::Data<AppState>,
    request: HttpRequest,
    admin: bool,
    allow: &'static str,
) -> Result<HttpResponse, ApiError> {
    match check_operator(&state, &request, admin) {
        Err(ApiError::NotFound) => Err(ApiError::NotFound),
        _ => Err(ApiError::MethodNotAllowed(allow)),
    }
}

/// `GET /admin/db/status`: key ids, states, rotation progress, records per key (operator
/// endpoint: see [`check_operator`]).
pub(super) async fn db_status(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_operator(&state, &request, true)?;
    let service = state.gate.service()?;
    let status = web::block(move || service.vault().status())
        .await
        .map_err(|_| ApiError::Service(ServiceError::Internal))?
        .map_err(|error| {
            tracing::error!(%error, "db status failed");
            ApiError::Service(ServiceError::Internal)
        })?;
    Ok(HttpResponse::Ok().json(status))
}

//! The encrypted endpoints (enrol, assess, erase): bounded body, client signature and rate
//! limit, then the service operation on a blocking thread, then the signed answer.

use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use super::AppState;
use super::error::ApiError;
use crate::obs::Now;
use crate::obs::metrics::{Stage, StageTimer};
use crate::service::access::{Authorized, Permission};
use crate::service::{Answer, LimitScope, Service, ServiceError};

type Operation = fn(&Service, &[u8], Now, &Authorized) -> Result<Answer, ServiceError>;

/// An encrypted endpoint: its name in metrics, the permissions of which a client needs one
/// (the operation checks what its payload asks for), and the service operation behind it.
pub(super) struct Encrypted {
    route: &'static str,
    permission: &'static [Permission],
    operation: Operation,
}

pub(super) const ENROLL: Encrypted = Encrypted {
    route: "enroll",
    permission: &[Permission::Enroll],
    operation: |service, body, now, _| service.enroll(body, now),
};

pub(super) const ASSESS: Encrypted = Encrypted {
    route: "assess",
    permission: &[Permission::Assess],
    operation: |service, body, now, _| service.assess(body, now),
};

/// Deciding needs `identify`, investigating `investigate` (`Service::identify` checks).
pub(super) const IDENTIFY: Encrypted = Encrypted {
    route: "identify",
    permission: &[Permission::Identify, Permission::Investigate],
    operation: Service::identify,
};

pub(super) const ERASE: Encrypted = Encrypted {
    route: "erase",
    permission: &[Permission::Erase],
    operation: |service, body, now, _| service.erase(body, now),
};

/// The one shape of every encrypted endpoint: bounded body, then the service operation on a
/// blocking thread, then the signed answer.
pub(super) async fn handle_encrypted(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    endpoint: Encrypted,
) -> Result<HttpResponse, ApiError> {
    let received = Instant::now();
    let result = run_encrypted(&state, &request, payload, &endpoint).await;
    // While sealed there are no metrics to count in (and nothing to count but `sealed`).
    if let Ok(service) = state.gate.service() {
        let status = match &result {
            Ok(_) => 200,
            Err(e) => {
                service.metrics().record_refusal(e.code().as_str());
                actix_web::ResponseError::status_code(e).as_u16()
            }
        };
        service
            .metrics()
            .record_request(endpoint.route, status, received.elapsed());
    }
    result
}

async fn run_encrypted(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    endpoint: &Encrypted,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(request, payload, state).await?;
    // Sealed: refused once the body is read (a connection closed on unread bytes is reset,
    // and the client might never see the answer).
    let service = state.gate.service()?;
    // The client signs the path alone (docs/PROTOCOL.md): a query string would ride along
    // unsigned, so it is refused rather than ignored. (After the body: a connection closed
    // on unread bytes is reset, and the client might never see the answer.)
    if !request.query_string().is_empty() {
        return Err(ApiError::QueryNotAllowed);
    }
    let authorization = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let (method, path) = (
        request.method().as_str().to_owned(),
        request.path().to_owned(),
    );
    let clients = state.clients.clone();
    let client_limits = state.client_limits.clone();
    let (permission, operation) = (endpoint.permission, endpoint.operation);
    let queued = Instant::now();
    let span = tracing::Span::current();
    let outcome = web::block(move || {
        let _entered = span.enter();
        let waited = queued.elapsed();
        service
            .metrics()
            .record_stage(Stage::Queue, waited, std::time::Duration::ZERO);
        let mut timer = StageTimer::start(service.metrics());
        // The signature check is an SM2 verification: CPU work, so it runs here too.
        let client =
            clients.authorize_any(authorization.as_deref(), &method, &path, &body, permission)?;
        // One reading of the clock for everything this request checks and records.
        let now = Now::read();
        client_limits
            .check(&client.id, now.precise())
            .map_err(|retry_after_secs| ServiceError::RateLimited {
                scope: LimitScope::Client,
                retry_after_secs,
            })?;
        timer.lap(Stage::ClientAuth);
        Ok::<_, ApiError>(operation(&service, &body, now, &client)?)
    })
    .await;
    let response = outcome.map_err(|_| ApiError::Service(ServiceError::Internal))??;
    Ok(HttpResponse::Ok().json(response))
}

/// Reads the whole body, refusing it as soon as it exceeds `limit` (by its declared length
/// or by what actually arrives).
///
/// The body must come with `Content-Length` and arrive whole. A chunked body is refused
/// (411): actix ends the body stream cleanly when the sender half-closes the connection, so
/// a chunked body cut short (even one missing only its final empty chunk) cannot be told
/// from a whole one; with a declared length, fewer bytes than declared is `incomplete_body`.
///
/// Bounded in time and memory: the whole body within `body_deadline` (else
/// `incomplete_body`), and its declared length reserved from the budget of bodies in flight
/// before the first byte is read (else `503 overloaded` at once), so that stalled uploads
/// can neither be held open nor pile up memory.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
) -> Result<Vec<u8>, ApiError> {
    let limit = state.max_body_bytes;
    let headers = request.headers();
    if headers.contains_key(actix_web::http::header::TRANSFER_ENCODING) {
        return Err(ApiError::LengthRequired);
    }
    // No Content-Length and no Transfer-Encoding: the body is empty (RFC 9112 §6.3).
    let declared = match headers.get(actix_web::http::header::CONTENT_LENGTH) {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or(ApiError::LengthRequired)?,
    };
    if declared > limit {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let permits = u32::try_from(declared).unwrap_or(u32::MAX);
    let _reserved = match state
        .bodies_in_flight
        .clone()
        .try_acquire_many_owned(permits)
    {
        Ok(reserved) => reserved,
        Err(_) => return Err(ApiError::Service(ServiceError::Overloaded)),
    };
    let read = async {
        let mut body = Vec::with_capacity(declared);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| ApiError::IncompleteBody)?;
            if body.len() + chunk.len() > declared {
                return Err(ApiError::BodyTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(state.body_deadline, read)
        .await
        .map_err(|_| ApiError::BodyDeadline(state.body_deadline.as_secs()))??;
    if body.len() != declared {
        return Err(ApiError::IncompleteBody);
    }
    Ok(body)
}

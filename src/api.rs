//! HTTP only: routes, body limits, error mapping. Handlers read the body, hand it to the
//! [`Service`] on a blocking thread (SM2 and fsync must not stall the async executor) and
//! return its signed answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::Instrument;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::access::{AccessError, ClientRegistry, Permission};
use crate::attest::{Attester, NONCE_LEN};
use crate::envelope::b64_decode;
use crate::envelope::response::SignedResponse;
use crate::error::ApiError;
use crate::limits::{RateLimiter, now_secs};
use crate::metrics::{Stage, StageTimer};
use crate::service::Service;
use crate::time::unix_now;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub service: Arc<Service>,
    /// Who may call the encrypted endpoints.
    pub clients: Arc<ClientRegistry>,
    /// Requests per authenticated client.
    pub client_limits: Arc<RateLimiter<String>>,
    /// Set at SIGTERM/SIGINT: answers then close their connections.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub attestation: Arc<Attester>,
    pub max_body_bytes: usize,
    /// SM3 of the operator bearer token (`TEE_RISK_ADMIN_TOKEN`).
    pub admin_token: Option<[u8; 32]>,
    /// The operator listener's address once bound (`server.operator_listen`); when set,
    /// operator endpoints answer only there.
    pub operator_listener: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Development mode: `/metrics` is open without a token.
    pub dev: bool,
}

/// Registers every route; unknown paths and methods get JSON errors too.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/db/status")
            .route(web::get().to(db_status))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/attestation")
            .route(web::get().to(attestation))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/keys")
            .route(web::get().to(keys))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/enroll")
            .route(web::post().to(|s, r, p| handle_encrypted(s, r, p, ENROLL)))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/assess")
            .route(web::post().to(|s, r, p| handle_encrypted(s, r, p, ASSESS)))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/users")
            .route(web::delete().to(|s, r, p| handle_encrypted(s, r, p, ERASE)))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

/// Around every request: an id (answered in `x-request-id`, and the span of every log line
/// the request causes), one debug-level access line naming the route pattern (never the raw
/// path or query, which a client controls), and while draining `Connection: close`, so that
/// keep-alive clients cannot hold a shutdown open.
pub fn request_context<S>(
    request: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse, actix_web::Error>> + use<S>
where
    S: actix_web::dev::Service<
            ServiceRequest,
            Response = ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let id = hex::encode(crate::crypto::random_array::<8>().unwrap_or_default());
    let span = tracing::info_span!("request", id = %id, method = %request.method());
    let draining = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.draining.clone());
    let started = Instant::now();
    let answer = {
        let _entered = span.enter();
        service.call(request)
    };
    async move {
        let mut response = answer.await?;
        let status = response.status().as_u16();
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let micros = started.elapsed().as_micros();
        if status >= 500 {
            tracing::error!(%route, status, micros, "answered");
        } else {
            tracing::debug!(%route, status, micros, "answered");
        }
        if let Ok(value) = HeaderValue::from_str(&id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
        if draining.is_some_and(|d| d.load(Ordering::SeqCst)) {
            response
                .response_mut()
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
        }
        Ok(response)
    }
    .instrument(span)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn keys(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.service.keys_document())
}

type Operation = fn(&Service, &[u8], i64) -> Result<SignedResponse, ApiError>;

/// An encrypted endpoint: its name in metrics, the permission it needs, and the service
/// operation behind it.
struct Encrypted {
    route: &'static str,
    permission: Permission,
    operation: Operation,
}

const ENROLL: Encrypted = Encrypted {
    route: "enroll",
    permission: Permission::Enroll,
    operation: Service::enroll,
};
const ASSESS: Encrypted = Encrypted {
    route: "assess",
    permission: Permission::Assess,
    operation: Service::assess,
};
const ERASE: Encrypted = Encrypted {
    route: "erase",
    permission: Permission::Erase,
    operation: Service::erase,
};

/// Aggregate counters only (see `metrics.rs`): nothing in them identifies a user or a key.
/// An operator endpoint (see [`check_operator`]).
async fn metrics(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_operator(&state, &request, false)?;
    let service = state.service.clone();
    // Counting records walks the tables: a blocking thread's work.
    let text = web::block(move || {
        service.metrics().render()
            + &crate::metrics::Metrics::render_store_sizes(&service.vault().table_sizes())
    })
    .await
    .map_err(|_| ApiError::Internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

#[derive(serde::Deserialize)]
struct NonceQuery {
    nonce: Option<String>,
}

/// `GET /v1/attestation?nonce=<base64url, 32 bytes>`: a report binding the nonce and the
/// identity key (`docs/ATTESTATION.md`).
async fn attestation(
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
            .map_err(|_| ApiError::Internal)?
            .map_err(|error| {
                tracing::error!(%error, "attestation failed");
                ApiError::Internal
            })?;
    Ok(HttpResponse::Ok().json(evidence))
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

/// `GET /admin/db/status`: key ids, states, rotation progress, records per key (operator
/// endpoint: see [`check_operator`]).
async fn db_status(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_operator(&state, &request, true)?;
    let service = state.service.clone();
    let status = web::block(move || service.vault().status())
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|error| {
            tracing::error!(%error, "db status failed");
            ApiError::Internal
        })?;
    Ok(HttpResponse::Ok().json(status))
}

/// The one shape of every encrypted endpoint: bounded body, then the service operation on a
/// blocking thread, then the signed answer.
async fn handle_encrypted(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    endpoint: Encrypted,
) -> Result<HttpResponse, ApiError> {
    let received = Instant::now();
    let result = run_encrypted(&state, &request, payload, &endpoint).await;
    let status = match &result {
        Ok(_) => 200,
        Err(e) => {
            state.service.metrics().record_refusal(e.code());
            actix_web::ResponseError::status_code(e).as_u16()
        }
    };
    state
        .service
        .metrics()
        .record_request(endpoint.route, status, received.elapsed());
    result
}

async fn run_encrypted(
    state: &AppState,
    request: &HttpRequest,
    payload: web::Payload,
    endpoint: &Encrypted,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(request, payload, state.max_body_bytes).await?;
    let authorization = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let (method, path) = (
        request.method().as_str().to_owned(),
        request.path().to_owned(),
    );
    let (service, clients) = (state.service.clone(), state.clients.clone());
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
        let client = clients
            .authorize(authorization.as_deref(), &method, &path, &body, permission)
            .map_err(|e| match e {
                AccessError::Unauthenticated(why) => ApiError::Unauthenticated(why),
                AccessError::Forbidden(p) => ApiError::Forbidden(p.as_str()),
            })?;
        client_limits
            .check(&client, now_secs())
            .map_err(|retry_after_secs| ApiError::RateLimited {
                scope: "client",
                retry_after_secs,
            })?;
        timer.lap(Stage::ClientAuth);
        operation(&service, &body, unix_now())
    })
    .await;
    let response = outcome.map_err(|_| ApiError::Internal)??;
    Ok(HttpResponse::Ok().json(response))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Reads the whole body, refusing it as soon as it exceeds `limit` (by its declared length
/// or by what actually arrives).
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::IncompleteBody)?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

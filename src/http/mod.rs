//! HTTP only: routes, body limits, the mapping of service errors to statuses. Handlers read
//! the body, hand it to the [`Service`] on a blocking thread (SM2 and fsync must not stall
//! the async executor) and return its signed answer. The service knows nothing of HTTP.

mod cluster;
mod custody;
mod encrypted;
pub mod error;
mod operator;
mod public;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::web;
use tracing::Instrument;

use crate::attest::Attester;
use crate::service::access::ClientRegistry;
use crate::service::cluster::ClusterPeer;
use crate::service::custody::Gate;
use crate::service::limits::RateLimiter;
use encrypted::{ASSESS, ENROLL, ERASE, IDENTIFY, handle_encrypted};
use operator::{db_status, metrics};
use public::{attestation, healthz, keys, method_not_allowed, not_found};

pub use error::ApiError;

/// Shared state of the HTTP layer.
pub struct AppState {
    /// The request flow, once open (custodian mode starts sealed: `service::custody`).
    pub gate: Arc<Gate>,
    /// Who may call the encrypted endpoints.
    pub clients: Arc<ClientRegistry>,
    /// Requests per authenticated client.
    pub client_limits: Arc<RateLimiter<String>>,
    /// Set at SIGTERM/SIGINT: answers then close their connections.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Where evidence comes from.
    pub attestation: Arc<Attester>,
    /// The join protocol's peer side, on a cluster replica (`[cluster]`).
    pub cluster: Option<Arc<ClusterPeer>>,
    /// Bodies longer than this are refused (`server.max_body_bytes`).
    pub max_body_bytes: usize,
    /// A body must arrive whole within this (`server.body_deadline_secs`).
    pub body_deadline: std::time::Duration,
    /// Bytes of bodies being read, all requests together (`server.bodies_in_flight_bytes`):
    /// one permit a byte.
    pub bodies_in_flight: Arc<tokio::sync::Semaphore>,
    /// SM3 of the operator bearer token (`TEE_RISK_ADMIN_TOKEN`).
    pub admin_token: Option<[u8; 32]>,
    /// The operator listener's address once bound (`server.operator_listen`); when set,
    /// operator endpoints answer only there.
    pub operator_listener: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    /// Development mode: `/metrics` is open without a token.
    pub dev: bool,
}

/// The methods a GET resource answers (HEAD is GET without the body).
const GET: &str = "GET, HEAD";

/// Registers every route; unknown paths and methods get JSON errors too. A resource asked
/// with another method answers 405 with the `Allow` header (RFC 9110 §15.5.6), except an
/// operator or join endpoint that is closed here, which answers 404 whatever the method, so
/// that a scan cannot tell it exists.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .route(web::head().to(healthz))
            .default_service(web::to(|| method_not_allowed(GET))),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .route(web::head().to(metrics))
            .default_service(web::to(|s, r| operator::other_method(s, r, false, GET))),
    )
    .service(
        web::resource("/admin/db/status")
            .route(web::get().to(db_status))
            .route(web::head().to(db_status))
            .default_service(web::to(|s, r| operator::other_method(s, r, true, GET))),
    )
    .service(
        web::resource("/cluster/v1/challenge")
            .route(web::post().to(cluster::challenge))
            .default_service(web::to(cluster::other_method)),
    )
    .service(
        web::resource("/cluster/v1/join")
            .route(web::post().to(cluster::join))
            .default_service(web::to(cluster::other_method)),
    )
    .service(
        web::resource("/v1/attestation")
            .route(web::get().to(attestation))
            .route(web::head().to(attestation))
            .default_service(web::to(|| method_not_allowed(GET))),
    )
    .service(
        web::resource("/v1/keys")
            .route(web::get().to(keys))
            .route(web::head().to(keys))
            .default_service(web::to(|| method_not_allowed(GET))),
    )
    .service(
        web::resource("/v1/custody")
            .route(web::get().to(custody::status))
            .route(web::head().to(custody::status))
            .default_service(web::to(|| method_not_allowed(GET))),
    )
    .service(
        web::resource("/v1/custody/init")
            .route(web::post().to(custody::init))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/custody/unseal")
            .route(web::post().to(custody::unseal))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/custody/rekey")
            .route(web::post().to(custody::rekey))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/enroll")
            .route(web::post().to(|s, r, p| handle_encrypted(s, r, p, ENROLL)))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/assess")
            .route(web::post().to(|s, r, p| handle_encrypted(s, r, p, ASSESS)))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/identify")
            .route(web::post().to(|s, r, p| handle_encrypted(s, r, p, IDENTIFY)))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/users")
            .route(web::delete().to(|s, r, p| handle_encrypted(s, r, p, ERASE)))
            .default_service(web::to(|| method_not_allowed("DELETE"))),
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

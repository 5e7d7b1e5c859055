//! The daemon's HTTP surfaces: the loopback HTTP listener and the Unix control socket the CLI
//! talks to. Both serve the same routes; they differ in who may call (tokens on TCP, Unix peer
//! credentials on the socket, invariant X1), and every handler checks the caller's role.
//!
//! Owns: routing, authentication ([`auth`]), the JSON error shape (`{"error": "..."}`), the
//! mapping from typed errors to HTTP status codes, and the control socket's access check.
//! Input here is untrusted: every handler validates before it calls into another module.

pub mod audit;
pub mod auth;
mod cameras;
pub mod control;
mod error;
mod io;
pub mod listener;
mod metrics;
mod outbox;
mod page;
mod system;
mod worker;
mod zones;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use cameras::{CameraView, ClipAnswer, Timeline};
pub use error::ApiError;
use error::{json_body, raw_body};
pub use system::{SystemInfo, SystemStatus};

use crate::media::Media;
use crate::outbox::Outbox;
use crate::perception::Perception;
use crate::registry::Registry;
use crate::serial::Serial;
use crate::store::Store;
use crate::uplink::UplinkHandle;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Registry,
    pub media: Media,
    pub perception: Perception,
    pub outbox: Outbox,
    pub tokens: crate::auth::Tokens,
    pub system: Arc<SystemInfo>,
    /// Absent when `[mqtt]` is not configured.
    pub uplink: Option<UplinkHandle>,
    pub serial: Serial,
    pub anonymous_audit: audit::AnonymousLimit,
    pub recent_logs: crate::recent_logs::RecentLogs,
}

/// Bodies of JSON requests other than worker posts: far above any camera or zone definition,
/// far below what would hurt the box.
pub(super) const MAX_BODY: usize = 256 * 1024;
/// Longest time an ordinary request may take; a stuck call answers 503 instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Clip exports copy footage and may take minutes on slow flash.
const CLIP_TIMEOUT: Duration = Duration::from_secs(600);

/// Answers 503 when the inner service takes longer than `limit`.
async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {}s and was abandoned",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Every API route; callers reach them through [`control_router`] or [`http_router`].
fn routes() -> Router<AppState> {
    api_routes()
        .layer(middleware::from_fn(|r, n| {
            time_limit(REQUEST_TIMEOUT, r, n)
        }))
        .route(
            "/api/v1/cameras/{id}/clip",
            post(cameras::clip).layer(middleware::from_fn(|r, n| time_limit(CLIP_TIMEOUT, r, n))),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/system", get(system::status))
        .route("/api/v1/cameras", get(cameras::list).post(cameras::put))
        .route(
            "/api/v1/cameras/{id}",
            get(cameras::get).delete(cameras::delete),
        )
        .route("/api/v1/cameras/{id}/segments", get(cameras::segments))
        .route("/api/v1/cameras/{id}/timeline", get(cameras::timeline))
        .route("/api/v1/cameras/{id}/gaps", get(cameras::gaps))
        .route("/api/v1/cameras/{id}/snapshot", get(cameras::snapshot))
        .route("/api/v1/cameras/{id}/test", post(cameras::test))
        .route("/api/v1/cameras/{id}/frame", get(worker::frame))
        .route("/api/v1/cameras/{id}/detections", get(worker::detections))
        .route("/api/v1/clips/{name}", get(cameras::clip_file))
        .route(
            "/api/v1/segments/{id}/evidence-lock",
            post(cameras::lock).delete(cameras::unlock),
        )
        .route("/api/v1/health/cameras", get(cameras::health))
        .route("/api/v1/ai/leases", post(worker::lease))
        .route(
            "/api/v1/ai/leases/{lease_id}",
            axum::routing::delete(worker::release),
        )
        .route("/api/v1/ai/tasks", get(worker::tasks))
        .route("/api/v1/ai/samplers", get(worker::samplers))
        .route(
            "/api/v1/ai/events",
            post(worker::ingest).layer(DefaultBodyLimit::max(worker::MAX_INGEST_BODY)),
        )
        .route("/api/v1/ai/embed-queries", get(worker::not_offered))
        .route("/api/v1/ai/embeddings", post(worker::not_offered))
        .route(
            "/api/v1/cameras/{id}/zones",
            get(zones::list).post(zones::create),
        )
        .route(
            "/api/v1/cameras/{id}/zones/occupancy",
            get(zones::occupancy),
        )
        .route("/api/v1/cameras/{id}/zone-events", get(zones::events))
        .route(
            "/api/v1/zones/{id}",
            axum::routing::patch(zones::patch).delete(zones::delete),
        )
        .route(
            "/api/v1/tokens",
            get(outbox::tokens).post(outbox::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(outbox::revoke_token),
        )
        .route("/api/v1/outbox", get(outbox::status))
        .route("/api/v1/events", get(outbox::events))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/io", get(io::status))
        .route("/api/v1/io/relays/{n}", post(io::relay))
        .route("/api/v1/cameras/{id}/ptz", post(io::ptz))
        .route("/api/v1/logs", get(system::logs))
        .route("/metrics", get(metrics::scrape))
}

/// Routes served on the control socket: callers were authorised by their Unix credentials and
/// act as the local admin.
pub fn control_router(state: AppState) -> Router {
    routes()
        .layer(middleware::from_fn(auth::local_admin))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .with_state(state)
}

/// Routes served on the loopback TCP listener, behind token authentication; the probes and the
/// page (which holds no data and asks for a token) are open. Serve it with [`listener::serve`] (or
/// `into_make_service_with_connect_info::<SocketAddr>()`): the client address feeds the audit
/// trail and the slow-down of token guessing.
pub fn http_router(state: AppState, auth_required: bool) -> Router {
    let layer = auth::AuthLayer {
        tokens: state.tokens.clone(),
        required: auth_required,
        failures: auth::Failures::default(),
    };
    routes()
        .layer(middleware::from_fn_with_state(layer, auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/", get(page::index))
        .with_state(state)
}

//! The daemon's HTTP surfaces: the loopback HTTP listener and the Unix control socket the CLI
//! talks to. Both serve the same handlers; they differ in who may call (tokens on TCP, Unix peer
//! credentials on the socket, invariant X1).
//!
//! Owns: routing, JSON error shape (`{"error": "..."}`), the mapping from typed errors to HTTP
//! status codes, and the control socket's access check.
//! Input here is untrusted: every handler validates before it calls into another module.

mod cameras;
pub mod control;
mod error;
mod system;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use cameras::{CameraView, ClipAnswer, Timeline};
pub use error::ApiError;
pub use system::{SystemInfo, SystemStatus};

use crate::media::Media;
use crate::registry::Registry;
use crate::store::Store;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Registry,
    pub media: Media,
    pub system: Arc<SystemInfo>,
}

/// Routes served on the control socket (callers already authorised by peer credentials).
pub fn control_router(state: AppState) -> Router {
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
        .route("/api/v1/cameras/{id}/clip", post(cameras::clip))
        .route("/api/v1/cameras/{id}/test", post(cameras::test))
        .route("/api/v1/clips/{name}", get(cameras::clip_file))
        .route(
            "/api/v1/segments/{id}/evidence-lock",
            post(cameras::lock).delete(cameras::unlock),
        )
        .route("/api/v1/health/cameras", get(cameras::health))
        .with_state(state)
}

/// Routes served on the loopback TCP listener.
///
/// Until token authentication exists only the unauthenticated probes are offered here; the
/// operator API is reachable through the control socket.
pub fn http_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .with_state(state)
}

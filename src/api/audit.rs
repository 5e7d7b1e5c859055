//! The audit middleware and `GET /api/v1/audit` (what `heldar audit` prints).
//!
//! Every change asked over HTTP or the control socket (any method but GET/HEAD/OPTIONS) leaves
//! exactly one row, written before the answer goes out, including refusals (401, 403, 4xx) so a
//! probing client shows up too. The worker contract (`/api/v1/ai/...`) is data, not change: its
//! posts arrive many times a second and are already recorded with their provenance, so they are
//! not audited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::control::Peer;
use super::{ApiError, AppState};
use crate::audit::{self, AuditEntry, What};
use crate::auth::{Principal, Role};

/// Error bodies longer than this are not kept in the audit row (ours are a line).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Refused requests without a valid token are audited one by one up to this many per client
/// address in [`ANONYMOUS_WINDOW`]; beyond it one warning says they are being dropped, so a
/// client hammering the API cannot grow the append-only table without bound.
const ANONYMOUS_PER_WINDOW: u32 = 100;
const ANONYMOUS_WINDOW: Duration = Duration::from_secs(600);

/// Counts anonymous audit rows per client address.
#[derive(Clone, Default)]
pub struct AnonymousLimit(Arc<Mutex<HashMap<String, (u32, Instant)>>>);

impl AnonymousLimit {
    /// Whether another anonymous row from `source` may be written.
    fn admit(&self, source: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 4096 {
            map.retain(|_, (_, since)| since.elapsed() < ANONYMOUS_WINDOW);
        }
        let entry = map.entry(source.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= ANONYMOUS_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        if entry.0 == ANONYMOUS_PER_WINDOW + 1 {
            tracing::warn!(
                client = source,
                "too many refused anonymous changes from one client: no longer audited one by one for 10 minutes"
            );
        }
        entry.0 <= ANONYMOUS_PER_WINDOW
    }
}

/// An answer that names what its change did ([`What`]), for the row [`record`] writes: the
/// handler knows which camera a `POST /api/v1/cameras` made, the route does not.
pub(super) struct Named<T>(pub What, pub T);

impl<T: IntoResponse> IntoResponse for Named<T> {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        response.extensions_mut().insert(self.0);
        response
    }
}

fn is_change(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !path.starts_with("/api/v1/ai/")
}

/// Where a request came from: the client address on TCP, the peer's uid on the socket.
fn source_of(request: &Request) -> String {
    if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        return addr.ip().to_string();
    }
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>() {
        return match peer.pid {
            Some(pid) => format!("control socket (uid {}, pid {pid})", peer.uid),
            None => format!("control socket (uid {})", peer.uid),
        };
    }
    "unknown".into()
}

/// Middleware: records every change with its outcome. Runs outside authentication, so the
/// principal is read from the response (the auth layers put it there).
pub(super) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !is_change(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let action = format!("{} {}", request.method(), request.uri().path());
    let source = source_of(&request);
    let response = next.run(request).await;
    let actor = response
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "anonymous".to_string(), |p| p.credential.clone());
    if actor == "anonymous" && !state.anonymous_audit.admit(&source) {
        return response;
    }
    let status = response.status();
    let what = response.extensions().get::<What>().map(|w| w.0.clone());
    let (response, detail) = if status.is_client_error() || status.is_server_error() {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        (Response::from_parts(parts, Body::from(bytes)), Some(detail))
    } else {
        (response, None)
    };
    audit::append(
        &state.store,
        AuditEntry {
            id: 0,
            at_ms: chrono::Utc::now().timestamp_millis(),
            actor,
            source,
            action,
            status: status.as_u16(),
            detail,
            what,
        },
    )
    .await;
    response
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    who.require(&[] as &[Role])?;
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    Ok(Json(
        state.store.read(move |c| audit::latest(c, limit)).await?,
    ))
}

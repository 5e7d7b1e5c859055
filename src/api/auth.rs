//! Authentication on the HTTP listener: which [`Principal`] a request is (invariant X1).
//!
//! Callers present a token (see [`crate::auth`]) as `Authorization: Bearer <token>` or
//! `X-API-Key: <token>`. With `http.auth = false` (development only) a request without a valid
//! token acts as the local admin. Callers of the control socket were already authorised by their
//! Unix credentials and act as the local admin.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::control::Peer;
use crate::auth::{Principal, Role, Tokens};

/// The token a request carries: `Authorization: Bearer` first, then `X-API-Key`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Failed token checks per client address, to slow down guessing.
///
/// The first [`FREE_FAILURES`] wrong tokens within [`FORGET_AFTER`] answer at once (a technician
/// pasting the wrong token should not wait); each further one waits twice as long as the
/// previous, up to [`MAX_DELAY`], and is logged. A valid token does not clear the count, so
/// holding a viewer token does not buy an unlimited guess at an admin one.
#[derive(Clone, Default)]
pub struct Failures(Arc<Mutex<HashMap<IpAddr, Strikes>>>);

struct Strikes {
    count: u32,
    last: Instant,
}

const FREE_FAILURES: u32 = 5;
const FORGET_AFTER: Duration = Duration::from_secs(600);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Addresses remembered at most; past it the oldest strikes are forgotten first.
const MAX_TRACKED: usize = 4096;

impl Failures {
    /// Counts a failure from `ip`; returns how many there were and how long to wait.
    fn strike(&self, ip: IpAddr) -> (u32, Duration) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, s| s.last.elapsed() < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let strikes = map.entry(ip).or_insert(Strikes {
            count: 0,
            last: Instant::now(),
        });
        if strikes.last.elapsed() >= FORGET_AFTER {
            strikes.count = 0;
        }
        strikes.count += 1;
        strikes.last = Instant::now();
        let n = strikes.count;
        let delay = match n.checked_sub(FREE_FAILURES + 1) {
            None => Duration::ZERO,
            Some(over) => {
                (Duration::from_millis(250) * 2u32.saturating_pow(over.min(6))).min(MAX_DELAY)
            }
        };
        (n, delay)
    }
}

/// Settings of the HTTP auth layer.
#[derive(Clone)]
pub struct AuthLayer {
    pub tokens: Tokens,
    pub required: bool,
    pub failures: Failures,
}

/// Middleware: resolves the caller and stores the [`Principal`] in the request's extensions
/// (for handlers) and in the response's (for the audit layer outside).
pub async fn authenticate(
    State(layer): State<AuthLayer>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match presented(request.headers()) {
        Some(token) => match layer.tokens.resolve(token).await {
            Ok(Some(p)) => Some(p),
            Ok(None) if !layer.required => Some(Principal::local_admin()),
            Ok(None) => {
                let client = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(a)| a.ip());
                return refuse_invalid(&layer, client, request.uri().path()).await;
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
        None if !layer.required => Some(Principal::local_admin()),
        None => None,
    };
    let Some(principal) = principal else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: send Authorization: Bearer <token> or X-API-Key (heldar token create)",
        )
        .into_response();
    };
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(principal);
    response
}

/// Answers a wrong or revoked token, after the delay its source has earned.
async fn refuse_invalid(layer: &AuthLayer, client: Option<IpAddr>, path: &str) -> Response {
    if let Some(ip) = client {
        let (failures, delay) = layer.failures.strike(ip);
        if failures == FREE_FAILURES + 1 || (failures > FREE_FAILURES && failures % 10 == 0) {
            tracing::warn!(
                client = %ip,
                failures,
                delay_ms = delay.as_millis() as u64,
                path,
                "repeated invalid API tokens from one client: answers are being slowed down"
            );
        }
        tokio::time::sleep(delay).await;
    }
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid or revoked token").into_response()
}

/// Middleware for the control socket: every caller there is the local admin, recorded by uid.
pub async fn local_admin(mut request: Request, next: Next) -> Response {
    let credential = match request.extensions().get::<ConnectInfo<Peer>>() {
        Some(ConnectInfo(peer)) => format!("uid:{}", peer.uid),
        None => "local".to_string(),
    };
    let principal = Principal {
        credential,
        role: Role::Admin,
    };
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(principal);
    response
}

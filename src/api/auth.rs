//! Authentication on the HTTP listener: API tokens and roles (invariant X1).
//!
//! A token is 256 random bits shown once at creation (`hld_` + 64 hex digits); only its SHA-256 is
//! stored. Callers present it as `Authorization: Bearer <token>` or `X-API-Key: <token>`.
//! Roles: `viewer` reads, `operator` also toggles and exports, `admin` also configures, `worker`
//! speaks the worker contract and nothing else. With `http.auth = false` (development only) a
//! request without a valid token acts as the local admin. Callers of the control socket were
//! already authorised by their Unix credentials and act as the local admin.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;
use super::control::Peer;
use crate::store::{Store, StoreError};

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token id (`tok_<n>`), or `local` for the control socket and auth-off callers.
    pub credential: String,
    pub role: Role,
}

impl Principal {
    pub fn local_admin() -> Principal {
        Principal {
            credential: "local".into(),
            role: Role::Admin,
        }
    }

    /// Refuses (403) unless the caller has one of `roles`; admin always passes.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a {} token may not do this", self.role.as_str()),
            ))
        }
    }
}

/// A token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// A freshly created token: the only time its text exists outside the caller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// The token store, with a cache of resolved hashes (cleared on every change).
#[derive(Clone)]
pub struct Tokens {
    store: Store,
    cache: Arc<RwLock<HashMap<String, Option<Principal>>>>,
}

fn hash(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

impl Tokens {
    pub fn new(store: Store) -> Tokens {
        Tokens {
            store,
            cache: Arc::default(),
        }
    }

    pub async fn create(&self, role: Role, name: &str) -> Result<NewToken, StoreError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!(
            "hld_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let hashed = hash(&token);
        let name = name.to_string();
        let info = self
            .store
            .write(move |c| {
                let now = chrono::Utc::now().timestamp_millis();
                let n: i64 = c.query_row("SELECT COUNT(*) + 1 FROM tokens", [], |r| r.get(0))?;
                let id = format!("tok_{n}");
                c.execute(
                    "INSERT INTO tokens (id, name, role, hash, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, name, role.as_str(), hashed, now],
                )?;
                Ok::<_, StoreError>(TokenInfo { id, name, role, created_at_ms: now, revoked: false })
            })
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(NewToken { info, token })
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.store
            .read(|c| {
                let mut stmt =
                    c.prepare("SELECT id, name, role, created_at_ms, revoked_at_ms IS NOT NULL FROM tokens ORDER BY created_at_ms")?;
                let rows = stmt.query_map([], |r| {
                    Ok(TokenInfo {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Viewer),
                        created_at_ms: r.get(3)?,
                        revoked: r.get(4)?,
                    })
                })?;
                Ok::<_, StoreError>(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Revokes a token; returns whether it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        let changed = self
            .store
            .write(move |c| {
                Ok::<_, StoreError>(c.execute(
                    "UPDATE tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?1) WHERE id = ?2",
                    params![chrono::Utc::now().timestamp_millis(), id],
                )?)
            })
            .await?;
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(changed > 0)
    }

    /// The principal behind a token, if it is valid.
    pub async fn resolve(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hashed = hash(token);
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hashed)
        {
            return Ok(hit.clone());
        }
        let key = hashed.clone();
        let found = self
            .store
            .read(move |c| {
                Ok::<_, StoreError>(
                    c.query_row(
                        "SELECT id, role FROM tokens WHERE hash = ?1 AND revoked_at_ms IS NULL",
                        [key],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    )
                    .optional()?,
                )
            })
            .await?;
        let principal = found.and_then(|(id, role)| {
            Some(Principal {
                credential: id,
                role: Role::parse(&role)?,
            })
        });
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(hashed, principal.clone());
        Ok(principal)
    }
}

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

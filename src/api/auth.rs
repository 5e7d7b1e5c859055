//! Authentication on the HTTP listener: API tokens and roles (invariant X1).
//!
//! A token is 256 random bits shown once at creation (`hld_` + 64 hex digits); only its SHA-256 is
//! stored. Callers present it as `Authorization: Bearer <token>` or `X-API-Key: <token>`.
//! Roles: `viewer` reads, `operator` also toggles and exports, `admin` also configures, `worker`
//! speaks the worker contract and nothing else. With `http.auth = false` (development only) a
//! request without a valid token acts as the local admin. Callers of the control socket were
//! already authorised by their Unix credentials and act as the local admin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;
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

/// Settings of the HTTP auth layer.
#[derive(Clone)]
pub struct AuthLayer {
    pub tokens: Tokens,
    pub required: bool,
}

/// Middleware: resolves the caller and stores the [`Principal`] in the request's extensions.
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
                return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or revoked token")
                    .into_response();
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
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Middleware for the control socket: every caller there is the local admin.
pub async fn local_admin(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Principal::local_admin());
    next.run(request).await
}

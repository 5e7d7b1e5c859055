//! Who may do what: roles, the caller ([`Principal`]) and the token store (invariant X1).
//!
//! Below every service that needs to know its caller (the worker contract records the credential
//! as provenance, invariant X2) and below the HTTP API that resolves callers: the domain never
//! sees HTTP types, and `api` maps [`Forbidden`] to 403.
//!
//! A token is 256 random bits shown once at creation (`hld_` + 64 hex digits); only its SHA-256 is
//! stored. Roles: `viewer` reads, `operator` also toggles and exports, `admin` also configures,
//! `worker` speaks the worker contract and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A caller's role does not allow what it asked; the HTTP API answers 403.
#[derive(Debug, thiserror::Error)]
#[error("a {} token may not do this", .role.as_str())]
pub struct Forbidden {
    pub role: Role,
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

    /// Refuses unless the caller has one of `roles`; admin always passes.
    pub fn require(&self, roles: &[Role]) -> Result<(), Forbidden> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Forbidden { role: self.role })
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

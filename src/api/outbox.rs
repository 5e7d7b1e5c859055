//! Tokens (`/api/v1/tokens`), the outbox's health (`/api/v1/outbox`) and its records
//! (`/api/v1/events`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::audit::Named;
use super::{ApiError, AppState, json_body};
use crate::audit::What;
use crate::auth::{NewToken, Principal, Role, TokenInfo};
use crate::outbox::{self, OutboxStatus, Record};
use crate::store::StoreError;

const VIEW: &[Role] = &[Role::Viewer, Role::Operator];
const ADMIN: &[Role] = &[];

#[derive(Debug, Deserialize)]
pub(super) struct TokenRequest {
    role: Role,
    name: Option<String>,
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<NewToken>>, ApiError> {
    who.require(ADMIN)?;
    let req: TokenRequest = json_body(body, super::MAX_BODY)?;
    let name = req.name.unwrap_or_else(|| req.role.as_str().to_string());
    if name.trim().is_empty() || name.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name: 1..64 characters",
        ));
    }
    let token = state.tokens.create(req.role, &name).await?;
    let what = What(format!(
        "token {} created: role {}, name {:?}",
        token.info.id,
        token.info.role.as_str(),
        token.info.name
    ));
    Ok(Named(what, Json(token)))
}

pub(super) async fn tokens(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    who.require(ADMIN)?;
    Ok(Json(state.tokens.list().await?))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(ADMIN)?;
    if !state.tokens.revoke(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no token {id:?}"),
        ));
    }
    Ok(Named(
        What(format!("token {id} revoked")),
        Json(serde_json::json!({ "revoked": id })),
    ))
}

pub(super) async fn status(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<OutboxStatus>, ApiError> {
    who.require(VIEW)?;
    Ok(Json(state.outbox.status().await?))
}

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// Records after this seq, oldest first; without it, the newest `limit` records.
    after_seq: Option<i64>,
    kind: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn events(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Record>>, ApiError> {
    who.require(VIEW)?;
    // A mistyped kind would otherwise match nothing, and a follower would wait for ever.
    if let Some(kind) = q.kind.as_deref()
        && kind.parse::<outbox::Kind>().is_err()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("kind {kind:?} must be detection, zone, alarm, camera or system"),
        ));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let records = state
        .store
        .read(move |c| {
            let kind = q.kind.as_deref();
            Ok::<_, StoreError>(match q.after_seq {
                Some(after) => outbox::read_after(c, after, kind, limit)?,
                None => outbox::latest(c, kind, limit)?,
            })
        })
        .await?;
    Ok(Json(records))
}

//! Serial devices over HTTP: `GET /api/v1/io`, `POST /api/v1/io/relays/{n}` and
//! `POST /api/v1/cameras/{id}/ptz` (what `heldar io` and `heldar ptz` call).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::audit::Named;
use super::{ApiError, AppState, json_body};
use crate::audit::What;
use crate::auth::{Principal, Role};
use crate::config::rules::RelayOp;
use crate::config::units::Duration;
use crate::serial::{PtzCommand, SerialStatus};

const VIEW: &[Role] = &[Role::Viewer, Role::Operator];
const OPERATE: &[Role] = &[Role::Operator];

pub(super) async fn status(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<SerialStatus>, ApiError> {
    who.require(VIEW)?;
    Ok(Json(state.serial.status()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelayRequest {
    /// `on`, `off` or `pulse`.
    state: String,
    /// With `pulse`: `2s`, `500ms`.
    duration: Option<Duration>,
}

pub(super) async fn relay(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(n): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(OPERATE)?;
    let req: RelayRequest = json_body(body, super::MAX_BODY)?;
    let relay: u16 = n.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("relay: {n:?} is not a number"),
        )
    })?;
    let op = match (req.state.as_str(), req.duration) {
        ("on", None) => RelayOp::On,
        ("off", None) => RelayOp::Off,
        ("pulse", Some(d))
            if !d.get().is_zero() && d.get() <= std::time::Duration::from_secs(3600) =>
        {
            RelayOp::Pulse(d)
        }
        ("pulse", _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "duration: a pulse needs a duration from 1ms to 1h",
            ));
        }
        ("on" | "off", Some(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "duration: only a pulse has a duration",
            ));
        }
        (other, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("state: {other:?} is not on, off or pulse"),
            ));
        }
    };
    state.serial.relay(relay, op).await?;
    Ok(Named(
        What::relay(relay, &op),
        Json(serde_json::json!({ "relay": relay, "done": op.to_string() })),
    ))
}

pub(super) async fn ptz(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(camera): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Named<Json<serde_json::Value>>, ApiError> {
    who.require(OPERATE)?;
    let command: PtzCommand = json_body(body, super::MAX_BODY)?;
    state.serial.ptz(&camera, command).await?;
    Ok(Named(
        command.audited(&camera),
        Json(serde_json::json!({ "camera": camera, "sent": command })),
    ))
}

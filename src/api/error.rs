//! One JSON error shape for every endpoint, and the one place typed errors become status codes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::Forbidden;
use crate::media::MediaError;
use crate::perception::PerceptionError;
use crate::registry::RegistryError;
use crate::serial::SerialError;
use crate::store::StoreError;

/// An error answer: `{"error": message}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            // Retryable: the client should come back (workers retry 5xx with the same body).
            StoreError::Busy
            | StoreError::Closed
            | StoreError::TransactionLost
            | StoreError::DiskFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<Forbidden> for ApiError {
    fn from(e: Forbidden) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            RegistryError::FileOwned(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RegistryError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            RegistryError::Store(s) => s.into(),
            RegistryError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            MediaError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            MediaError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
            MediaError::Store(s) => s.into(),
        }
    }
}

impl From<SerialError> for ApiError {
    fn from(e: SerialError) -> Self {
        let status = match e {
            SerialError::Store(e) => return ApiError::from(e),
            SerialError::NotConfigured(_) | SerialError::UnknownCamera(_) => StatusCode::NOT_FOUND,
            SerialError::NoSuchRelay { .. }
            | SerialError::NoPtz(_)
            | SerialError::BadCommand(_) => StatusCode::BAD_REQUEST,
            SerialError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            SerialError::Device(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<PerceptionError> for ApiError {
    fn from(e: PerceptionError) -> Self {
        let status = match &e {
            PerceptionError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PerceptionError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            PerceptionError::Forbidden(_) => StatusCode::FORBIDDEN,
            PerceptionError::NotFound(_) => StatusCode::NOT_FOUND,
            PerceptionError::Conflict(_) => StatusCode::CONFLICT,
            PerceptionError::Store(s) => return s.clone().into(),
            PerceptionError::Jpeg(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The body, or the JSON error for a body over `limit` (the route's limit, for the message).
pub fn raw_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = if limit >= 1 << 20 {
                format!("{} MiB", limit >> 20)
            } else {
                format!("{} KiB", limit >> 10)
            };
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit}"))
        } else {
            ApiError::new(e.status(), e.body_text())
        }
    })
}

/// Parses a JSON body with errors that name the field, as a 400 (not axum's 415/422, whose
/// bodies are not JSON). Handlers take the raw body and call this after their role check, so
/// a caller without the role gets 403 whatever it sent. `limit` is the route's body limit, for
/// the message.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = raw_body(body, limit)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match inner.classify() {
            serde_json::error::Category::Data if path != "." => format!("{path}: {inner}"),
            serde_json::error::Category::Data => format!("body: {inner}"),
            _ => format!("body is not valid JSON: {inner}"),
        };
        ApiError::new(StatusCode::BAD_REQUEST, message)
    })
}

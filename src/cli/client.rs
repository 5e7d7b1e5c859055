//! The CLI's side of the control socket: HTTP/1.1 over a Unix stream.
//!
//! Connection failures become one-line errors that say what to check, because the person reading
//! them is usually on an SSH session to a box that misbehaves.

use std::io::ErrorKind;
use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::CliError;

const DEFAULT_SOCKET: &str = "/run/heldar/heldar.sock";

pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// `socket` from `--socket`/`HELDAR_SOCKET`, else the packaged default.
    pub fn new(socket: Option<PathBuf>) -> Self {
        Client {
            socket: socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        }
    }

    /// GETs `path` and decodes the JSON answer; an error answer becomes its `error` text.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path, None).await
    }

    /// Sends `body` (JSON) with `method` and decodes the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CliError> {
        let (status, body) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(error_answer(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            CliError::Failed(format!(
                "unexpected answer from the daemon ({e}); is it the same heldar version?"
            ))
        })
    }

    /// GETs `path` and streams the body into `output`; returns the bytes written.
    pub async fn download(&self, path: &str, output: &std::path::Path) -> Result<u64, CliError> {
        use tokio::io::AsyncWriteExt;
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(error_answer(status, &body));
        }
        let cannot_write =
            |e: std::io::Error| CliError::Failed(format!("cannot write {}: {e}", output.display()));
        let mut file = tokio::fs::File::create(output)
            .await
            .map_err(cannot_write)?;
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| CliError::Failed(format!("download interrupted: {e}")))?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await.map_err(cannot_write)?;
                written += data.len() as u64;
            }
        }
        file.sync_all().await.map_err(cannot_write)?;
        Ok(written)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::Failed(format!("talking to the daemon: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        let socket = self.socket.display();
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            CliError::Failed(match e.kind() {
                ErrorKind::NotFound => {
                    format!("no daemon socket at {socket}: is heldar running? (systemctl status heldar; --socket or HELDAR_SOCKET to point elsewhere)")
                }
                ErrorKind::PermissionDenied => {
                    format!("permission denied on {socket}: run as root or as a member of the heldar group")
                }
                ErrorKind::ConnectionRefused => format!("nothing answers on {socket}: the daemon is not running (stale socket)"),
                _ => format!("cannot connect to {socket}: {e}"),
            })
        })?;
        let failed =
            |e: hyper::Error| CliError::Failed(format!("talking to the daemon on {socket}: {e}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        tokio::spawn(connection);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "heldar")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| CliError::Failed(e.to_string()))?;
        sender.send_request(request).await.map_err(failed)
    }
}

/// An error answer as a CLI error: what the caller asked for was wrong (exit 2), or the daemon
/// could not do it (exit 1).
fn error_answer(status: StatusCode, body: &[u8]) -> CliError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered {status}"));
    if matches!(status.as_u16(), 400 | 404 | 409 | 413 | 422) {
        CliError::BadInput(message)
    } else {
        CliError::Failed(message)
    }
}

//! The loopback HTTP listener's connection policy (issue 13, item 9).
//!
//! Any local user can open sockets to the listener. Without limits, sockets that never finish a
//! request would each hold one of the daemon's descriptors for ever, until opening a segment file
//! or a camera socket fails with `EMFILE` and recording stops. So:
//! - a connection has [`HEADER_READ_TIMEOUT`] to deliver a request head, counted from the moment
//!   it waits for one: on a fresh connection and between keep-alive requests alike, so the same
//!   bound is also the idle timeout;
//! - at most [`MAX_CONNECTIONS`] are open. One more arrives: the oldest connection with no request
//!   in flight is closed to make room, so a new client (a probe, the page, a worker) is served
//!   even while idle sockets fill the table; when every connection has a request in flight, the
//!   new one is closed at once;
//! - a failed `accept()` (out of descriptors, say) is retried after [`ACCEPT_BACKOFF`]; it never
//!   ends the service;
//! - a request answered before its body was read (refused by the role check, say) has the rest
//!   of its body read and discarded, up to [`DRAIN_LIMIT`] bytes within [`HEADER_READ_TIMEOUT`].
//!   Left to itself, hyper closes such a connection after the answer without saying
//!   `connection: close`, whenever the body had not fully arrived yet; a keep-alive client (a
//!   worker, the tests) then sends its next request into a closed socket and fails with "peer
//!   disconnected".
//!
//! The systemd unit's `LimitNOFILE=` is sized so that the table at its fullest leaves the
//! recorder most of the descriptors.
//!
//! The same router is served on the API's Unix socket (`http.socket`) when one is configured,
//! for workers on the box: the same connection table holds both kinds of connection, and a Unix
//! socket's peer counts as `127.0.0.1`, as every local client does on the TCP port.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Time a client has to send a request head, and the longest a keep-alive connection may idle:
/// far above what the CLI, the page or a worker on the same box needs.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Open HTTP connections at most: the page, the CLI's few calls and the workers' keep-alive
/// connections (one per request in flight: a task of the reference worker holds one for frames
/// and up to eight for posts under a commit linger, about two without) fit many times over.
/// The unit's `LimitNOFILE=` is sized against it.
pub const MAX_CONNECTIONS: usize = 256;
/// Pause after a failed `accept()`: long enough not to spin while descriptors are short, short
/// enough that a freed descriptor is used at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The most of an unread request body read to keep its connection: a worker's largest post fits;
/// a bigger unread body closes the connection instead of being read for nothing.
pub const DRAIN_LIMIT: u64 = 4 << 20;

/// What a Unix socket's peer is called in `ConnectInfo`: it is on this box.
const LOCAL_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Binds a Unix socket with `mode`, replacing a stale socket left by a crashed daemon, but
/// refusing to steal the socket of a daemon that still answers, or to delete anything that is
/// not a socket (a mistyped path must not cost a file).
pub async fn bind_socket(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Ok(_) => match UnixStream::connect(path).await {
            // Nobody listens: a crashed daemon's leftover.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => return Err(e),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another heldar daemon is answering on {}", path.display()),
                ));
            }
        },
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// The next connection on `socket`; never, without one.
async fn accept_local(socket: Option<&UnixListener>) -> io::Result<UnixStream> {
    match socket {
        Some(s) => s.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Serves `router` on `listener`, and on `socket` (bound at its path) when there is one, until
/// `shutdown`; then removes the socket's file at once, so nobody connects to a daemon that is
/// going, and lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    socket: Option<(UnixListener, PathBuf)>,
    router: Router,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let table = Table::default();
    let connections = TaskTracker::new();
    let mut accept_failures = 0u64;
    let mut refused = 0u64;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted.map(|(s, peer)| (Either::Left(s), peer)),
            accepted = accept_local(socket.as_ref().map(|(s, _)| s)) => accepted.map(|s| (Either::Right(s), LOCAL_PEER)),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if accept_failures == 0 {
                    tracing::warn!(error = %e, "http accept failed; retrying");
                }
                accept_failures += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if accept_failures > 0 {
            tracing::info!(failures = accept_failures, "http accepts again");
            accept_failures = 0;
        }
        let Some(entry) = table.admit() else {
            if refused == 0 {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "every http connection has a request in flight; closing new ones"
                );
            }
            refused += 1;
            continue;
        };
        refused = 0;
        // The router for this connection: the peer address for `ConnectInfo`, and each request
        // counted in flight until its response body is done.
        let service = {
            let router = TowerToHyperService::new(router.clone());
            let state = entry.state.clone();
            service_fn(move |request: Request<Incoming>| {
                let mut request = request.map(Drained::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let busy = InFlight::enter(&state);
                let answer = router.call(request);
                async move {
                    let response = answer.await?;
                    Ok::<_, Infallible>(response.map(|inner| Tracked { inner, _busy: busy }))
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    outcome = connection.as_mut() => {
                        if let Err(e) = outcome {
                            tracing::debug!(%peer, error = %e, "http connection ended");
                        }
                        break;
                    }
                    // Dropping the connection closes its socket.
                    () = entry.state.evict.cancelled() => break,
                    () = shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    if let Some((_, path)) = &socket {
        let _ = std::fs::remove_file(path);
    }
    connections.close();
    connections.wait().await;
}

/// Errors of one connection that the next `accept()` does not share.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The open connections, oldest first.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<Slots>>);

#[derive(Default)]
struct Slots {
    next: u64,
    open: BTreeMap<u64, Arc<ConnState>>,
}

struct ConnState {
    in_flight: AtomicUsize,
    evict: CancellationToken,
}

/// A connection's place in the table; leaving it (the connection ended) frees the place.
struct Entry {
    id: u64,
    state: Arc<ConnState>,
    table: Table,
}

impl Table {
    /// A place for a new connection, closing the oldest idle one when the table is full; `None`
    /// when it is full of connections with a request in flight.
    fn admit(&self) -> Option<Entry> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slots.open.len() >= MAX_CONNECTIONS {
            let idle = slots
                .open
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id)?;
            if let Some(evicted) = slots.open.remove(&idle) {
                evicted.evict.cancel();
            }
        }
        let id = slots.next;
        slots.next += 1;
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            evict: CancellationToken::new(),
        });
        slots.open.insert(id, state.clone());
        Some(Entry {
            id,
            state,
            table: self.clone(),
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut slots = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        slots.open.remove(&self.id);
    }
}

/// One request in flight on a connection, from its head until its response body is done.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request body read to its end even when the handler drops it unread (see the module doc).
struct Drained {
    inner: Option<Incoming>,
}

impl Drained {
    fn new(inner: Incoming) -> Drained {
        Drained { inner: Some(inner) }
    }
}

impl Body for Drained {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take() else {
            return;
        };
        if rest.is_end_stream() || rest.size_hint().lower() > DRAIN_LIMIT {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0u64;
                while let Some(Ok(frame)) = rest.frame().await {
                    if let Some(data) = frame.data_ref() {
                        read += data.len() as u64;
                        if read > DRAIN_LIMIT {
                            return;
                        }
                    }
                }
            };
            // Dropping `rest` unfinished (too big, too slow) lets hyper close the connection.
            let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, drain).await;
        });
    }
}

/// A response body that keeps its request counted in flight while it is being sent, so a long
/// download is never taken for an idle connection.
struct Tracked {
    inner: axum::body::Body,
    _busy: InFlight,
}

impl Body for Tracked {
    type Data = <axum::body::Body as Body>::Data;
    type Error = <axum::body::Body as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_makes_room_by_closing_the_oldest_idle_connection() {
        let table = Table::default();
        let entries: Vec<Entry> = (0..MAX_CONNECTIONS)
            .map(|_| table.admit().unwrap())
            .collect();
        // The oldest is busy: the next oldest goes.
        let busy = InFlight::enter(&entries[0].state);
        let newcomer = table.admit().expect("room made");
        assert!(!entries[0].state.evict.is_cancelled());
        assert!(entries[1].state.evict.is_cancelled());
        // All busy: no room.
        let _all: Vec<InFlight> = entries[2..]
            .iter()
            .map(|e| InFlight::enter(&e.state))
            .chain(std::iter::once(InFlight::enter(&newcomer.state)))
            .collect();
        assert!(table.admit().is_none());
        drop(busy);
        assert!(table.admit().is_some());
        assert!(entries[0].state.evict.is_cancelled());
    }
}

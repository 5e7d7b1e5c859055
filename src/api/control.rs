//! The Unix control socket (`/run/heldar/heldar.sock`): HTTP/1.1 for the `heldar` CLI, authorised
//! by the caller's Unix credentials instead of a token (invariant X1).
//!
//! Who may call: root, the daemon's own user, and members of `control.group`. The socket file is
//! also made `0660` and group-owned by that group where the daemon may do so, so the kernel refuses
//! strangers before they reach this check; the check stands on its own when it may not.

use std::io;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use nix::unistd::{Group, Uid};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::ApiError;

/// The credentials of the process at the other end of a control connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            // Unknown credentials are treated as nobody's: the access check refuses them.
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Who may use the socket.
#[derive(Clone, Debug)]
struct Policy {
    own_uid: u32,
    group_name: String,
    group_gid: Option<u32>,
}

impl Policy {
    fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        let Some(gid) = self.group_gid else {
            return false;
        };
        peer.gid == gid
            || peer
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid))
    }
}

/// The caller's supplementary groups as the kernel sees them now (not as `/etc/group` says),
/// read from `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A bound control socket, ready to serve.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    policy: Policy,
}

impl ControlListener {
    /// Binds the socket, replacing a stale file left by a crashed daemon but refusing to steal
    /// the socket of a daemon that still answers.
    pub async fn bind(path: &Path, group: &str) -> io::Result<ControlListener> {
        let listener = super::listener::bind_socket(path, 0o660).await?;
        let group_gid = match Group::from_name(group) {
            Ok(Some(g)) => {
                if let Err(e) = std::os::unix::fs::chown(path, None, Some(g.gid.as_raw())) {
                    tracing::warn!(group, error = %e, "cannot give the control socket to its group; only root and the daemon's user can use it");
                }
                Some(g.gid.as_raw())
            }
            _ => {
                tracing::warn!(
                    group,
                    "control group does not exist; only root and the daemon's user can use the CLI"
                );
                None
            }
        };
        let policy = Policy {
            own_uid: Uid::effective().as_raw(),
            group_name: group.to_string(),
            group_gid,
        };
        Ok(ControlListener {
            listener,
            path: path.to_path_buf(),
            policy,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `router` until `shutdown`, then removes the socket file.
    pub async fn serve(self, router: Router, shutdown: CancellationToken) -> io::Result<()> {
        let router = router.layer(middleware::from_fn_with_state(self.policy, authorise));
        let result = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

async fn authorise(
    State(policy): State<Policy>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if policy.allows(&peer) {
        return next.run(request).await;
    }
    tracing::warn!(uid = peer.uid, gid = peer.gid, path = %request.uri().path(), "control socket refused a caller");
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "uid {} may not use heldar: run as root or as a member of group {:?}",
            peer.uid, policy.group_name
        ),
    )
    .into_response()
}

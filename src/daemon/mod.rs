//! The composition root: `heldar run` builds every service from the config and runs them until
//! SIGTERM or SIGINT. This is the only module that knows every other one.
//!
//! Start-up, in order, with no side effect before the config is known to be valid:
//! 1. the config (already loaded and validated by the caller);
//! 2. GStreamer, the data directory, the store (opened and migrated), the boot record;
//! 3. the listeners, bound before anything is spawned so a port in use fails the start;
//! 4. each service spawned with a shutdown token; then `READY=1`.
//!
//! Shutdown: the first signal cancels the token and services stop in reverse dependency order
//! (producers first, the store writer last, after a final flush), bounded by [`GRACE`]. A second
//! signal exits at once. A service that ends on its own before shutdown is a fault: it is logged
//! by name, everything else is stopped, and the exit code is 1 so systemd restarts the daemon.

pub mod allocator;
pub mod logging;
mod notify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, SystemInfo, control::ControlListener};
use crate::auth::Tokens;
use crate::config::Config;
use crate::media::Media;
use crate::metadata_retention::MetadataRetention;
use crate::outbox::Outbox;
use crate::perception::sampler::Samplers;
use crate::perception::{FrameStore, Perception};
use crate::registry::Registry;
use crate::serial::Serial;
use crate::store::{self, Store};
use crate::uplink::{Uplink, UplinkDeps};
use crate::zones::ZoneEngine;

/// How long services get to stop after SIGTERM before the daemon exits anyway. The systemd unit's
/// `TimeoutStopSec` is larger, so systemd never has to SIGKILL a healthy daemon.
pub const GRACE: Duration = Duration::from_secs(10);

/// What a caller may override over the config when starting the daemon.
#[derive(Default)]
pub struct Overrides {
    /// `HELDAR_SOCKET` or `--socket`.
    pub socket: Option<PathBuf>,
    /// Stop on our own after this long, as if signalled (`heldar demo --duration`).
    pub stop_after: Option<Duration>,
    /// Told the HTTP address once the daemon serves (`heldar demo` starts its worker then).
    pub ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    /// Extra outbox consumers, started with the daemon's shutdown token; for embedding the
    /// daemon (the durability tests attach counting consumers this way).
    pub consumers: Option<ConsumerHook>,
}

/// Starts extra outbox consumers: gets the outbox and the shutdown token.
pub type ConsumerHook = Box<dyn FnOnce(&Outbox, CancellationToken) + Send>;

/// Runs the daemon to completion. `Ok` means a clean, signalled stop.
pub async fn run(
    config: Config,
    board_source: Option<String>,
    mut overrides: Overrides,
) -> anyhow::Result<()> {
    // Before anything else, so a SIGTERM during start-up (systemd may send one the moment
    // READY=1 is out) waits for its turn instead of killing the process with the default
    // action: no clean stop, sockets left behind, the next boot counted unclean.
    let signals = StopSignals::install()?;
    gstreamer::init()
        .context("GStreamer failed to initialise (is libgstreamer1.0-0 installed?)")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;

    let db = store::db_path(&config.data_dir);
    let store = tokio::task::spawn_blocking(move || Store::open(&db)).await??;
    store.set_commit_linger(config.database.commit_linger.get());
    let (boot, history) = store.record_boot().await?;
    let registry = Registry::open(store.clone(), &config).await?;
    let media = Media::new(store.clone(), registry.clone(), &config, boot.started_at_ms);
    let outbox = Outbox::new(store.clone(), config.outbox.clone());
    let frames = FrameStore::default();
    let samplers = Samplers::new(
        registry.clone(),
        media.clone(),
        frames.clone(),
        config.media.clone(),
        config.sampler.max_total_fps,
    );
    let perception = Perception::new(
        store.clone(),
        registry.clone(),
        outbox.clone(),
        frames,
        samplers.clone(),
        config.workers.require_tickets,
    );
    let (serial, serial_tasks) =
        Serial::new(&config, store.clone(), outbox.clone(), registry.clone());
    let uplink = config
        .mqtt
        .clone()
        .map(|mqtt| {
            Uplink::new(
                mqtt,
                UplinkDeps {
                    device_id: config.device_id.clone(),
                    registry: registry.clone(),
                    media: media.clone(),
                    store: store.clone(),
                    outbox: outbox.clone(),
                    serial: serial.clone(),
                },
            )
        })
        .transpose()?;
    if history.previous_clean == Some(false) {
        tracing::warn!(
            unclean_total = history.unclean,
            "the previous run did not stop cleanly (power cut, kill or crash)"
        );
    }

    let socket_path = overrides
        .socket
        .take()
        .unwrap_or_else(|| config.control.socket.clone());
    let control = ControlListener::bind(&socket_path, &config.control.group)
        .await
        .with_context(|| format!("cannot bind the control socket {}", socket_path.display()))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen {}", config.http.listen))?;
    let http_listen: SocketAddr = http.local_addr()?;
    let api_socket = match &config.http.socket {
        Some(path) => Some((
            api::listener::bind_socket(path, 0o666)
                .await
                .with_context(|| format!("cannot bind http.socket {}", path.display()))?,
            path.clone(),
        )),
        None => None,
    };

    let state = AppState {
        store: store.clone(),
        registry: registry.clone(),
        media: media.clone(),
        perception: perception.clone(),
        outbox: outbox.clone(),
        tokens: Tokens::new(store.clone()),
        system: Arc::new(SystemInfo {
            device_id: config.device_id.clone(),
            data_dir: config.data_dir.clone(),
            board: board_source,
            started_at: chrono::Utc::now(),
            started: Instant::now(),
            boot,
            http_listen,
            gstreamer: gstreamer::version_string().to_string(),
        }),
        uplink: uplink.as_ref().map(Uplink::handle),
        serial: serial.clone(),
        anonymous_audit: Default::default(),
        recent_logs: crate::recent_logs::RecentLogs::process(),
    };

    let shutdown = CancellationToken::new();
    let services = Services {
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
        fault: Arc::default(),
    };
    tracing::info!(path = %control.path().display(), "control socket listening");
    services.spawn("control socket", {
        let router = api::control_router(state.clone());
        let token = shutdown.clone();
        async move {
            control
                .serve(router, token)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    tracing::info!(url = %format!("http://{http_listen}/"), "http listening");
    if let Some((_, path)) = &api_socket {
        tracing::info!(path = %path.display(), "http api socket listening");
    }
    services.spawn("http", {
        let router = api::http_router(state.clone(), config.http.auth);
        let token = shutdown.clone();
        async move {
            api::listener::serve(http, api_socket, router, token).await;
            Ok(())
        }
    });
    services.spawn("outbox compaction", {
        let (outbox, token) = (outbox.clone(), shutdown.clone());
        async move { outbox.run_compaction(token).await }
    });
    services.spawn("metadata retention", {
        let pass = MetadataRetention::new(store.clone(), config.retention.clone());
        let token = shutdown.clone();
        async move { pass.run(token).await }
    });
    services.spawn("zone engine", {
        let engine = ZoneEngine::new(store.clone(), registry.clone(), outbox.clone());
        let token = shutdown.clone();
        async move { engine.run(token).await }
    });
    if let Some(uplink) = uplink {
        services.spawn("mqtt uplink", {
            let token = shutdown.clone();
            async move { uplink.run(token).await }
        });
    }
    services.spawn("serial", {
        let token = shutdown.clone();
        async move { serial_tasks.run(token).await }
    });
    services.spawn("samplers", {
        let token = shutdown.clone();
        async move { samplers.run(token).await }
    });
    services.spawn("retention", {
        let (retention, token) = (media.retention(), shutdown.clone());
        async move { retention.run(token).await }
    });
    services.spawn("media", {
        let token = shutdown.clone();
        async move { media.run(token).await }
    });
    if let Some(timeout) = notify::watchdog_interval() {
        services.spawn("watchdog", {
            let (store, token) = (store.clone(), shutdown.clone());
            async move {
                notify::watchdog(store, timeout, token).await;
                Ok(())
            }
        });
    }

    if let Some(start) = overrides.consumers.take() {
        start(&outbox, shutdown.clone());
    }
    notify::ready(&format!("serving; http on {http_listen}"));
    if let Some(ready) = overrides.ready {
        let _ = ready.send(http_listen);
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), device_id = %config.device_id, "heldar is up");

    wait_for_stop(signals, &shutdown, overrides.stop_after).await;
    let faulted = services.fault.load(Ordering::SeqCst);
    notify::stopping();
    services.tracker.close();
    if tokio::time::timeout(GRACE, services.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?GRACE, "services did not stop within the grace period; exiting anyway");
    }
    if !faulted {
        store.record_clean_stop(boot).await?;
    }
    store.close().await;
    tracing::info!("heldar stopped");
    if faulted {
        anyhow::bail!("a service stopped unexpectedly; see the log above");
    }
    Ok(())
}

/// The running services, each a named task that stops when the token is cancelled.
struct Services {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Set when a service ended before shutdown was asked for; decides the exit code.
    fault: Arc<AtomicBool>,
}

impl Services {
    /// Spawns a service. If it returns or panics before shutdown was asked for, the fault is
    /// logged by name and the whole daemon stops (systemd restarts it).
    fn spawn<F>(&self, name: &'static str, service: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (token, fault) = (self.shutdown.clone(), self.fault.clone());
        let inner = tokio::spawn(service);
        self.tracker.spawn(async move {
            let outcome = inner.await;
            if token.is_cancelled() {
                if let Ok(Err(e)) = outcome {
                    tracing::warn!(service = name, error = %e, "service reported an error while stopping");
                }
                tracing::debug!(service = name, "service stopped");
                return;
            }
            match outcome {
                Ok(Ok(())) => tracing::error!(service = name, "service stopped on its own"),
                Ok(Err(e)) => tracing::error!(service = name, error = format!("{e:#}"), "service failed"),
                Err(e) => tracing::error!(service = name, error = %e, "service panicked"),
            }
            fault.store(true, Ordering::SeqCst);
            token.cancel();
        });
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: one that arrives earlier than
/// [`wait_for_stop`] is kept for it.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Waits for SIGTERM/SIGINT or a service fault; a second signal exits the process immediately.
async fn wait_for_stop(
    signals: StopSignals,
    shutdown: &CancellationToken,
    stop_after: Option<Duration>,
) {
    let StopSignals { mut term, mut int } = signals;
    let deadline = async {
        match stop_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline => tracing::info!("demo duration reached: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now without a clean stop");
        std::process::exit(130);
    });
}

//! `heldar worker motion`: the reference inference worker. It speaks only the public worker
//! contract (leases, frames, tickets, events), exactly as a third-party worker would, so it
//! doubles as a living test of that contract.
//!
//! One supervisor renews the lease and starts or stops one runner thread per leased task; a
//! runner pulls the task's frame at its fps, skips frames it has seen or that are too old, finds
//! motion, and posts regions with stable track ids. A 5xx is retried with the same body (ingest
//! is idempotent on the frame id); a ticket problem (401 naming `frame_ticket`, or 409) drops the
//! batch and re-leases at once.

pub mod motion;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use motion::{Grey, MotionDetector, MotionSettings};

/// What the worker needs to run.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Base URL of the daemon's HTTP listener, such as `http://127.0.0.1:8000`.
    pub api: String,
    pub token: Option<String>,
    pub worker_id: String,
    /// How often the lease is renewed.
    pub poll: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
struct Task {
    id: String,
    camera_id: String,
    task_type: String,
    #[serde(default = "default_fps")]
    fps: f64,
    frame_url: String,
}

fn default_fps() -> f64 {
    5.0
}

#[derive(Debug, Deserialize)]
struct Leased {
    lease_id: String,
    tasks: Vec<Task>,
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &action)?;
        sigaction(Signal::SIGTERM, &action)?;
    }
    Ok(())
}

/// A blocking HTTP client that adds the worker's credential.
#[derive(Clone)]
struct Api {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(settings: &WorkerSettings) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .user_agent("heldar-worker/1.0")
            .build()
            .into();
        Api {
            agent,
            base: settings.api.trim_end_matches('/').to_string(),
            token: settings.token.clone(),
        }
    }

    fn get(&self, path: &str) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-API-Key", t);
        }
        req.call()
    }

    fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-API-Key", t);
        }
        req.send_json(body)
    }

    fn delete(&self, path: &str) {
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-API-Key", t);
        }
        let _ = req.call();
    }
}

struct Runner {
    task: Task,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Runs the motion worker until SIGINT/SIGTERM.
pub fn run(settings: WorkerSettings) -> anyhow::Result<()> {
    install_signal_handlers()?;
    let api = Api::new(&settings);
    let release_now = Arc::new(AtomicBool::new(false));
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut lease_id: Option<String> = None;
    tracing::info!(api = %settings.api, worker_id = %settings.worker_id, "motion worker started");
    while !STOP.load(Ordering::SeqCst) {
        let body =
            json!({ "worker_id": settings.worker_id, "ttl_secs": 60, "task_types": ["motion"] });
        let tasks = match api.post("/api/v1/ai/leases", &body) {
            Ok(mut r) if r.status().is_success() => match r.body_mut().read_json::<Leased>() {
                Ok(l) => {
                    lease_id = Some(l.lease_id);
                    Some(l.tasks)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unexpected lease answer");
                    None
                }
            },
            Ok(r) => {
                tracing::warn!(status = %r.status(), "lease refused");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the daemon");
                None
            }
        };
        if let Some(tasks) = tasks {
            reconcile(&api, &mut runners, tasks, &release_now);
        }
        let deadline = Instant::now() + settings.poll;
        while Instant::now() < deadline
            && !STOP.load(Ordering::SeqCst)
            && !release_now.swap(false, Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    tracing::info!("stopping");
    for (_, r) in runners.drain() {
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.thread.join();
    }
    if let Some(id) = lease_id {
        api.delete(&format!("/api/v1/ai/leases/{id}"));
    }
    Ok(())
}

fn reconcile(
    api: &Api,
    runners: &mut HashMap<String, Runner>,
    tasks: Vec<Task>,
    release_now: &Arc<AtomicBool>,
) {
    let wanted: HashMap<String, Task> = tasks
        .into_iter()
        .filter(|t| t.task_type == "motion")
        .map(|t| (t.id.clone(), t))
        .collect();
    let stale: Vec<String> = runners
        .iter()
        .filter(|(id, r)| wanted.get(*id) != Some(&r.task))
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(r) = runners.remove(&id) {
            r.stop.store(true, Ordering::SeqCst);
            let _ = r.thread.join();
            tracing::info!(task = %id, "stopped task");
        }
    }
    for (id, task) in wanted {
        if runners.contains_key(&id) {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (api, t, s, r) = (api.clone(), task.clone(), stop.clone(), release_now.clone());
        let thread = std::thread::spawn(move || run_task(&api, &t, &s, &r));
        tracing::info!(task = %id, fps = task.fps, "started task");
        runners.insert(id, Runner { task, stop, thread });
    }
}

/// One task's loop: frame, motion, post.
fn run_task(api: &Api, task: &Task, stop: &AtomicBool, release_now: &AtomicBool) {
    let period = Duration::from_secs_f64(1.0 / task.fps.max(0.1));
    let max_age_ms = (3.0 * period.as_millis() as f64).max(2000.0) as i64;
    let mut detector = MotionDetector::new(MotionSettings::default());
    let mut last_captured = String::new();
    while !stop.load(Ordering::SeqCst) && !STOP.load(Ordering::SeqCst) {
        let started = Instant::now();
        if let Some((captured, ticket, grey)) = fetch(api, task, &last_captured, max_age_ms) {
            last_captured = captured.clone();
            let regions = detector.detect(grey);
            if !regions.is_empty() {
                let detections: Vec<_> = regions
                    .iter()
                    .map(|r| json!({ "label": "motion", "confidence": (r.fill * 100.0).round() / 100.0, "bbox": r.bbox, "track_id": r.track_id }))
                    .collect();
                let mut body = json!({
                    "camera_id": task.camera_id,
                    "task_type": task.task_type,
                    "timestamp": captured,
                    "frame_id": format!("{}:{captured}", task.id),
                    "detections": detections,
                });
                if let Some(t) = ticket {
                    body["frame_ticket"] = t.into();
                }
                if post_batch(api, &body) == Posted::TicketProblem {
                    last_captured.clear();
                    release_now.store(true, Ordering::SeqCst);
                }
            }
        }
        let rest = period.saturating_sub(started.elapsed());
        std::thread::sleep(rest.max(Duration::from_millis(20)));
    }
}

/// The task's frame, unless it is unchanged, too old or missing: capture time, ticket, image.
fn fetch(
    api: &Api,
    task: &Task,
    last_captured: &str,
    max_age_ms: i64,
) -> Option<(String, Option<String>, Grey)> {
    if !task.frame_url.starts_with('/')
        || task.frame_url.contains("://")
        || task.frame_url.contains("..")
    {
        tracing::error!(task = %task.id, url = %task.frame_url, "refusing a frame URL that is not a plain relative path");
        return None;
    }
    let mut response = api.get(&task.frame_url).ok()?;
    if !response.status().is_success() {
        return None;
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let captured = header("x-frame-captured-at")?;
    let age: i64 = header("x-frame-age-ms")
        .and_then(|a| a.parse().ok())
        .unwrap_or(i64::MAX);
    let ticket = header("x-frame-ticket");
    if captured == last_captured || age > max_age_ms {
        return None;
    }
    let jpeg = response.body_mut().read_to_vec().ok()?;
    let mut decoder = jpeg_decoder::Decoder::new(jpeg.as_slice());
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (w, h) = (info.width as usize, info.height as usize);
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|p| [*p, *p, *p]).collect(),
        _ => return None,
    };
    Some((captured, ticket, Grey::from_rgb(&rgb, w, h, 160)))
}

#[derive(PartialEq)]
enum Posted {
    Done,
    TicketProblem,
}

/// Posts a batch; retries a 5xx or a lost connection with the same body, up to five times.
fn post_batch(api: &Api, body: &serde_json::Value) -> Posted {
    let mut backoff = Duration::from_millis(500);
    for _ in 0..5 {
        match api.post("/api/v1/ai/events", body) {
            Ok(r) if r.status().is_success() => return Posted::Done,
            Ok(mut r) if r.status().is_server_error() => {
                tracing::warn!(status = %r.status(), "ingest failed; retrying the same batch");
                let _ = r.body_mut().read_to_vec();
            }
            Ok(mut r) => {
                let status = r.status();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                if status == http::StatusCode::CONFLICT
                    || (status == http::StatusCode::UNAUTHORIZED && text.contains("frame_ticket"))
                {
                    tracing::info!(status = %status, "ticket refused; re-leasing");
                    return Posted::TicketProblem;
                }
                tracing::warn!(status = %status, answer = %text.chars().take(200).collect::<String>(), "batch refused");
                return Posted::Done;
            }
            Err(e) => tracing::warn!(error = %e, "cannot post; retrying the same batch"),
        }
        if STOP.load(Ordering::SeqCst) {
            // Stopping: the batch is dropped like any frame not yet posted.
            return Posted::Done;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
    Posted::Done
}

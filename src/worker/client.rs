//! A blocking client of the worker contract, for inference workers written in Rust.
//!
//! It holds the rules a worker must get right so that each worker does not learn them the hard
//! way: renew the lease and follow the task set it returns, skip a frame already analysed or too
//! old to matter, post with the frame's ticket and an idempotent frame id, repeat a 5xx with the
//! same body, re-lease at once when a ticket is refused, and keep a few posts in flight so the
//! next frame is analysed while the last one is made durable. [`run`] is that loop; a worker
//! supplies only the analysis, as a closure per task:
//!
//! ```no_run
//! use heldar_edge::worker::client::{Client, Detection, RunOptions, run};
//! use std::sync::atomic::AtomicBool;
//!
//! let client = Client::new("http://127.0.0.1:8000", std::env::var("HELDAR_API_KEY").ok());
//! let options = RunOptions::new("counter-1", &["object_detection"]);
//! static STOP: AtomicBool = AtomicBool::new(false);
//! run(&client, &options, &STOP, |_task| {
//!     move |frame: &heldar_edge::worker::client::Frame| {
//!         vec![Detection::new("person", 0.9, [0.1, 0.2, 0.3, 0.4]).track("7")]
//!     }
//! })?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One kind of analysis on one camera stream, as the lease answer lists it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Task {
    /// `{camera}:{task_type}:{profile}`, stable for the task's life.
    pub id: String,
    pub camera_id: String,
    pub task_type: String,
    /// `main` or `sub`.
    #[serde(default)]
    pub stream_profile: String,
    /// Frames per second the task wants analysed; the daemon may sample fewer.
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// The frame width the task asked for; frames come at the widest of a stream's tasks.
    #[serde(default)]
    pub width: Option<u32>,
    /// Opaque to the daemon: whatever the task's configuration says, for the worker to read.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The daemon's frame route for this task, relative: `/api/v1/cameras/..`.
    pub frame_url: String,
}

fn default_fps() -> f64 {
    5.0
}

/// A lease answer: the complete set of tasks this worker holds now.
#[derive(Clone, Debug, Deserialize)]
pub struct Lease {
    /// What to release on shutdown; every renewal issues a new one.
    pub lease_id: String,
    /// RFC 3339; renew well before it.
    pub expires_at: String,
    pub tasks: Vec<Task>,
}

/// How a worker wants its frames: raw pixels spare the daemon a JPEG encode and the worker a
/// decode, for a few more bytes on the loopback. (The daemon has its own type for the same
/// formats; this module imports nothing of the crate, so it stays usable on its own.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameFormat {
    #[default]
    Jpeg,
    /// Packed R, G, B.
    Rgb,
    /// 8-bit luma.
    Gray,
}

impl FrameFormat {
    fn query(self) -> Option<&'static str> {
        match self {
            FrameFormat::Jpeg => None,
            FrameFormat::Rgb => Some("rgb"),
            FrameFormat::Gray => Some("gray"),
        }
    }

    /// What `x-frame-format` says for this format (a daemon without raw frames sends none).
    fn header(self) -> &'static str {
        match self {
            FrameFormat::Jpeg => "jpeg",
            FrameFormat::Rgb => "rgb24",
            FrameFormat::Gray => "gray8",
        }
    }

    fn bytes_per_pixel(self) -> u32 {
        match self {
            FrameFormat::Rgb => 3,
            _ => 1,
        }
    }
}

/// A sampled frame and what the daemon said about it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// `x-frame-captured-at`, verbatim: it changes exactly when the frame does, and it is the
    /// batch's timestamp and the second half of its frame id.
    pub captured_at: String,
    /// Capture to answer, as the daemon measured it; the loop skips frames too old to matter.
    pub age_ms: i64,
    /// Present when the worker holds a live lease on the task.
    pub ticket: Option<String>,
    pub format: FrameFormat,
    /// Pixels; 0 when a daemon without raw frames did not say.
    pub width: u32,
    pub height: u32,
    /// Bytes per row of a raw frame; 0 for a JPEG.
    pub stride: u32,
    /// The JPEG file, or the raw rows.
    pub data: Vec<u8>,
}

/// One thing a worker saw in a frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    /// 0..1.
    pub confidence: f64,
    /// `[x, y, w, h]`, normalised to 0..1 from the top-left corner.
    pub bbox: [f64; 4],
    /// What lets zones follow one object from frame to frame (enter, dwell, exit, crossing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_id: Option<String>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    /// Free-form; the daemon adds its own provenance keys and drops any sent under them.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Detection {
    /// A detection without a track: zones then count it but cannot follow it.
    pub fn new(label: &str, confidence: f64, bbox: [f64; 4]) -> Detection {
        Detection {
            label: label.to_string(),
            confidence,
            bbox,
            track_id: None,
            attributes: serde_json::Map::new(),
        }
    }

    /// The same object's id across frames, which enter, dwell, exit and crossings need.
    pub fn track(mut self, track_id: impl Into<String>) -> Detection {
        self.track_id = Some(track_id.into());
        self
    }
}

/// The body of `POST /api/v1/ai/events` for one analysed frame.
#[derive(Clone, Debug, Serialize)]
pub struct Batch {
    pub camera_id: String,
    pub task_type: String,
    /// The frame's capture time: events are placed in the scene's time, not the post's.
    pub timestamp: String,
    /// `{task_id}:{captured_at}`: the same frame posted twice is stored once.
    pub frame_id: String,
    /// Lets the daemon take camera, task and frame id from the lease instead of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_ticket: Option<String>,
    pub detections: Vec<Detection>,
}

impl Batch {
    /// The batch for `detections` seen in `frame` of `task`.
    pub fn of(task: &Task, frame: &Frame, detections: Vec<Detection>) -> Batch {
        Batch {
            camera_id: task.camera_id.clone(),
            task_type: task.task_type.clone(),
            timestamp: frame.captured_at.clone(),
            frame_id: format!("{}:{}", task.id, frame.captured_at),
            frame_ticket: frame.ticket.clone(),
            detections,
        }
    }
}

/// How a post ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Posted {
    /// Durable on the box. `duplicate`: it already was (a repeat of a stored frame id).
    Stored { detections: u64, duplicate: bool },
    /// The ticket expired or no longer matches a lease: lease again before the next frame.
    TicketRefused,
    /// Refused for good (4xx): repeating the same body would be refused again.
    Refused { status: u16, error: String },
    /// Still failing (5xx or no connection) after every retry, or the worker is stopping.
    GaveUp,
}

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer, or an answer cut short: connection refused or lost, timeout, body too large.
    #[error("talking to the daemon failed: {0}")]
    Transport(#[from] ureq::Error),
    #[error("the daemon answered {status}: {error}")]
    Status { status: u16, error: String },
    #[error("unexpected answer from the daemon: {0}")]
    BadAnswer(String),
}

/// Talks to the daemon's worker routes with the worker's credential.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// `api` is the daemon's HTTP base URL (`http://127.0.0.1:8000`); `token` a worker token, or
    /// `None` on a box with `http.auth = false`.
    pub fn new(api: &str, token: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            // Every task's frames and posts in flight keep their connections between requests;
            // ureq's default of three per host made most posts open a new one.
            .max_idle_connections(64)
            .max_idle_connections_per_host(64)
            // Under the daemon's 10 s keep-alive, so a pooled connection is not one it is closing.
            .max_idle_age(Duration::from_secs(5))
            .http_status_as_error(false)
            .user_agent("heldar-worker/1.0")
            .build()
            .into();
        Client {
            agent,
            base: api.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// Acquires and renews: the answer is the whole set of tasks this worker holds now.
    pub fn lease(
        &self,
        worker_id: &str,
        task_types: &[String],
        ttl_secs: u32,
    ) -> Result<Lease, ClientError> {
        let body = serde_json::json!({
            "worker_id": worker_id, "ttl_secs": ttl_secs, "task_types": task_types,
        });
        let mut response = self.send(self.agent.post(self.url("/api/v1/ai/leases")), &body)?;
        if !response.status().is_success() {
            return Err(refusal(&mut response));
        }
        response
            .body_mut()
            .read_json::<Lease>()
            .map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// Gives the tasks back at once instead of letting the lease expire. Idempotent.
    pub fn release(&self, lease_id: &str) -> Result<(), ClientError> {
        let mut request = self
            .agent
            .delete(self.url(&format!("/api/v1/ai/leases/{lease_id}")));
        if let Some(t) = &self.token {
            request = request.header("X-API-Key", t);
        }
        let mut response = request.call()?;
        if !response.status().is_success() {
            return Err(refusal(&mut response));
        }
        Ok(())
    }

    /// The task's latest frame, or `None` while none has been sampled (404).
    pub fn frame(&self, task: &Task, format: FrameFormat) -> Result<Option<Frame>, ClientError> {
        // The URL comes from the daemon, but a worker holding a token should fetch nothing but
        // the daemon's own frame route with it.
        if !task.frame_url.starts_with('/')
            || task.frame_url.contains("://")
            || task.frame_url.contains("..")
        {
            return Err(ClientError::BadAnswer(format!(
                "task {} has a frame URL that is not a plain relative path",
                task.id
            )));
        }
        let mut url = self.url(&task.frame_url);
        if let Some(f) = format.query() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("format=");
            url.push_str(f);
        }
        let mut request = self.agent.get(url);
        if let Some(t) = &self.token {
            request = request.header("X-API-Key", t);
        }
        let mut response = request.call()?;
        if response.status() == http::StatusCode::NOT_FOUND {
            let _ = response.body_mut().read_to_vec();
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(refusal(&mut response));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let captured_at = header("x-frame-captured-at")
            .ok_or_else(|| ClientError::BadAnswer("a frame without x-frame-captured-at".into()))?;
        let age_ms = header("x-frame-age-ms")
            .and_then(|a| a.parse().ok())
            .unwrap_or(i64::MAX);
        let ticket = header("x-frame-ticket");
        let number = |name: &str| header(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let (width, height, stride) = (
            number("x-frame-width"),
            number("x-frame-height"),
            number("x-frame-stride"),
        );
        // A daemon without raw frames ignores format= and sends a JPEG: say so, rather than
        // hand the analysis bytes it would misread.
        let got = header("x-frame-format").unwrap_or_else(|| "jpeg".into());
        let data = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?;
        if got != format.header() {
            return Err(ClientError::BadAnswer(format!(
                "asked for {} frames, got {got}: this daemon may not offer raw frames",
                format.header()
            )));
        }
        if format != FrameFormat::Jpeg
            && (width == 0
                || height == 0
                || stride < width * format.bytes_per_pixel()
                || (data.len() as u64) < stride as u64 * height as u64)
        {
            return Err(ClientError::BadAnswer(format!(
                "a raw frame of {} bytes for {width}x{height} in rows of {stride}",
                data.len()
            )));
        }
        Ok(Some(Frame {
            captured_at,
            age_ms,
            ticket,
            format,
            width,
            height,
            stride,
            data,
        }))
    }

    /// Posts a batch. A 5xx or a lost connection is repeated with the same body (ingest is
    /// idempotent on the frame id), backing off from 0.5 s, up to five attempts, and not once
    /// `stop` is set (a backoff under way ends at once).
    pub fn post(&self, batch: &Batch, stop: &AtomicBool) -> Posted {
        let mut backoff = Duration::from_millis(500);
        for _ in 0..5 {
            match self.send(self.agent.post(self.url("/api/v1/ai/events")), batch) {
                Ok(mut r) if r.status().is_success() => {
                    let answer: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
                    return Posted::Stored {
                        detections: answer["detections_ingested"].as_u64().unwrap_or(0),
                        duplicate: answer["duplicate"].as_bool().unwrap_or(false),
                    };
                }
                Ok(mut r) if r.status().is_server_error() => {
                    tracing::warn!(status = %r.status(), "ingest failed; retrying the same batch");
                    let _ = r.body_mut().read_to_vec();
                }
                Ok(mut r) => {
                    let status = r.status();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    if status == http::StatusCode::CONFLICT
                        || (status == http::StatusCode::UNAUTHORIZED
                            && text.contains("frame_ticket"))
                    {
                        return Posted::TicketRefused;
                    }
                    return Posted::Refused {
                        status: status.as_u16(),
                        error: error_of(&text),
                    };
                }
                Err(e) => tracing::warn!(error = %e, "cannot post; retrying the same batch"),
            }
            if nap(backoff, || stop.load(Ordering::SeqCst)) {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
        Posted::GaveUp
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &impl Serialize,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let request = match &self.token {
            Some(t) => request.header("X-API-Key", t),
            None => request,
        };
        request.send_json(body)
    }
}

/// The `error` of a JSON refusal, or the start of whatever else came back.
fn error_of(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn refusal(response: &mut http::Response<ureq::Body>) -> ClientError {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    ClientError::Status {
        status,
        error: error_of(&text),
    }
}

/// How [`run`] leases.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stays the same across restarts, so a restarted worker gets its own tasks back.
    pub worker_id: String,
    /// The task types this worker can do; tasks of other types are never started.
    pub task_types: Vec<String>,
    /// How often the lease is renewed; well under `ttl_secs`.
    pub renew_every: Duration,
    /// How long the daemon keeps this worker's tasks without a renewal (15..300 s).
    pub ttl_secs: u32,
    /// What the analysis gets.
    pub format: FrameFormat,
    /// Posts of one task waiting for their answer at once. The daemon answers a post only once
    /// it is durable, after its commit linger (`database.commit_linger`) on a box tuned for
    /// flash; a task that waited for each answer would analyse one frame per linger. At least
    /// the task's fps times the linger, plus one, keeps the task at its fps.
    pub posts_in_flight: usize,
}

impl RunOptions {
    /// JPEG frames, renewed every 5 s with a 60 s TTL.
    pub fn new(worker_id: &str, task_types: &[&str]) -> RunOptions {
        RunOptions {
            worker_id: worker_id.to_string(),
            task_types: task_types.iter().map(|t| t.to_string()).collect(),
            renew_every: Duration::from_secs(5),
            ttl_secs: 60,
            format: FrameFormat::Jpeg,
            posts_in_flight: 8,
        }
    }
}

struct Runner {
    task: Task,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Leases, and runs `analyzer_for(task)` on each leased task's frames in a thread of its own,
/// with up to [`RunOptions::posts_in_flight`] of its posts waiting for their answers, until
/// `stop` is set; then releases the lease. A task whose lease answer changes is restarted
/// with a fresh analyzer; one that disappears is stopped. Only non-empty results are posted:
/// zones end a track that stops being reported on their own timeout.
pub fn run<F, A>(
    client: &Client,
    options: &RunOptions,
    stop: &'static AtomicBool,
    analyzer_for: F,
) -> anyhow::Result<()>
where
    F: Fn(&Task) -> A,
    A: FnMut(&Frame) -> Vec<Detection> + Send + 'static,
{
    let release_now = Arc::new(AtomicBool::new(false));
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut lease_id: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        match client.lease(&options.worker_id, &options.task_types, options.ttl_secs) {
            Ok(lease) => {
                lease_id = Some(lease.lease_id);
                let wanted: HashMap<String, Task> = lease
                    .tasks
                    .into_iter()
                    .filter(|t| options.task_types.contains(&t.task_type))
                    .map(|t| (t.id.clone(), t))
                    .collect();
                let changed: Vec<String> = runners
                    .iter()
                    .filter(|(id, r)| wanted.get(*id) != Some(&r.task))
                    .map(|(id, _)| id.clone())
                    .collect();
                let stopping: Vec<(String, Runner)> = changed
                    .into_iter()
                    .filter_map(|id| runners.remove(&id).map(|r| (id, r)))
                    .collect();
                stop_all(stopping);
                for (id, task) in wanted {
                    if runners.contains_key(&id) {
                        continue;
                    }
                    let runner_stop = Arc::new(AtomicBool::new(false));
                    let analyze = analyzer_for(&task);
                    let (c, t, s, r) = (
                        client.clone(),
                        task.clone(),
                        runner_stop.clone(),
                        release_now.clone(),
                    );
                    let (format, in_flight) = (options.format, options.posts_in_flight);
                    let thread = std::thread::spawn(move || {
                        let posters = Posters::start(&c, &t, in_flight, &s, &r);
                        run_task(&c, &t, format, analyze, &s, stop, &posters);
                        posters.finish();
                    });
                    tracing::info!(task = %id, fps = task.fps, "started task");
                    runners.insert(
                        id,
                        Runner {
                            task,
                            stop: runner_stop,
                            thread,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "lease failed"),
        }
        nap(options.renew_every, || {
            stop.load(Ordering::SeqCst) || release_now.swap(false, Ordering::SeqCst)
        });
    }
    stop_all(runners.drain().collect());
    if let Some(id) = lease_id
        && let Err(e) = client.release(&id)
    {
        // The lease runs out on its own within its TTL.
        tracing::warn!(error = %e, "could not release the lease");
    }
    Ok(())
}

/// Sleeps for `span` in slices of 100 ms, ending early once `wake` says so; returns whether it
/// did. A stopping worker waits a slice, not a backoff or a renewal period.
fn nap(span: Duration, mut wake: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + span;
    loop {
        if wake() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Tells every runner to stop, then waits for them: one runner's last post does not hold up
/// the others' stop.
fn stop_all(runners: Vec<(String, Runner)>) {
    for (_, r) in &runners {
        r.stop.store(true, Ordering::SeqCst);
    }
    for (id, r) in runners {
        if r.thread.join().is_err() {
            tracing::error!(task = %id, "the task's thread panicked");
        }
        tracing::info!(task = %id, "stopped task");
    }
}

/// One task's loop at its fps: frame, analysis, handing the batch to the posters.
fn run_task(
    client: &Client,
    task: &Task,
    format: FrameFormat,
    mut analyze: impl FnMut(&Frame) -> Vec<Detection>,
    task_stop: &AtomicBool,
    stop: &AtomicBool,
    posters: &Posters,
) {
    let period = Duration::from_secs_f64(1.0 / task.fps.max(0.1));
    // A frame older than this describes a scene that has moved on.
    let max_age_ms = (3.0 * period.as_millis() as f64).max(2000.0) as i64;
    let mut last_captured = String::new();
    let mut last_error = String::new();
    while !task_stop.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        if posters.ticket_refused.swap(false, Ordering::SeqCst) {
            // The next frame is fetched with the new lease's ticket, even if it is the same one.
            last_captured.clear();
        }
        match client.frame(task, format) {
            Ok(Some(frame)) if frame.captured_at != last_captured && frame.age_ms <= max_age_ms => {
                last_captured = frame.captured_at.clone();
                if let Some(batch) = analyse(task, &frame, &mut analyze) {
                    posters.post(batch);
                }
            }
            Ok(_) => last_error.clear(),
            Err(e) => {
                // Once per distinct problem, not at the task's frame rate.
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(task = %task.id, %error, "no frame");
                    last_error = error;
                }
            }
        }
        let rest = period.saturating_sub(started.elapsed());
        std::thread::sleep(rest.max(Duration::from_millis(20)));
    }
}

/// One frame's analysis; `None` when there is nothing to post. A panicking analysis loses the
/// frame, not the task: the next frame gets its chance.
fn analyse(
    task: &Task,
    frame: &Frame,
    analyze: &mut impl FnMut(&Frame) -> Vec<Detection>,
) -> Option<Batch> {
    let analysed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyze(frame)));
    match analysed {
        Ok(d) if d.is_empty() => None,
        Ok(d) => Some(Batch::of(task, frame, d)),
        Err(_) => {
            tracing::error!(task = %task.id, frame = %frame.captured_at, "the analysis panicked");
            None
        }
    }
}

/// A task's posting threads, so the task goes on analysing while its posts wait to be
/// durable. Posts leave in frame order but may be stored out of it; the daemon's zones skip a
/// track's late sightings.
struct Posters {
    queue: std::sync::mpsc::SyncSender<Batch>,
    threads: Vec<JoinHandle<()>>,
    /// Set when the daemon refused a batch's ticket, so the task fetches its frame again.
    ticket_refused: Arc<AtomicBool>,
}

impl Posters {
    /// `count` threads for `task`. A post being retried gives up once `task_stop` is set; a
    /// refused ticket sets `release_now`, so the lease is renewed at once.
    fn start(
        client: &Client,
        task: &Task,
        count: usize,
        task_stop: &Arc<AtomicBool>,
        release_now: &Arc<AtomicBool>,
    ) -> Posters {
        // No buffer: a batch waits in its task, where frames are skipped while it waits, not in
        // a queue that grows older.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(0);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let ticket_refused = Arc::new(AtomicBool::new(false));
        let threads = (0..count.max(1))
            .map(|_| {
                let (client, rx, task_id) = (client.clone(), rx.clone(), task.id.clone());
                let (stop, refused, release_now) = (
                    task_stop.clone(),
                    ticket_refused.clone(),
                    release_now.clone(),
                );
                std::thread::spawn(move || {
                    loop {
                        // Its own statement, so the lock is held while waiting for the next batch
                        // and not while posting it (a `while let` would hold it for the body).
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(batch) = next else { break };
                        match client.post(&batch, &stop) {
                            Posted::TicketRefused => {
                                tracing::info!(task = %task_id, "ticket refused; re-leasing");
                                refused.store(true, Ordering::SeqCst);
                                release_now.store(true, Ordering::SeqCst);
                            }
                            Posted::Refused { status, error } => {
                                tracing::warn!(task = %task_id, status, %error, "batch refused");
                            }
                            Posted::GaveUp => {
                                tracing::warn!(task = %task_id, "batch dropped after retries")
                            }
                            Posted::Stored { .. } => {}
                        }
                    }
                })
            })
            .collect();
        Posters {
            queue: tx,
            threads,
            ticket_refused,
        }
    }

    /// Hands `batch` to an idle poster, waiting while every one is busy: the task's frames are
    /// then skipped, as they would be behind a slow daemon.
    fn post(&self, batch: Batch) {
        // Fails only if every poster thread died, which only a panic does.
        let _ = self.queue.send(batch);
    }

    /// Waits for the posts in flight: the threads see the end of the queue once it is dropped.
    fn finish(self) {
        let Posters { queue, threads, .. } = self;
        drop(queue);
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a poster thread panicked");
            }
        }
    }
}

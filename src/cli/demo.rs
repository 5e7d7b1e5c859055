//! `heldar demo`: the box on built-in defaults in a scratch directory, for a first look and for
//! checking a machine. It writes an ordinary `heldar.toml` and runs the ordinary daemon on it, so
//! what the demo shows is what a box runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::client::Client;
use super::{CliError, load_config, render, runtime};
use crate::auth::{NewToken, Role};
use crate::daemon;
use crate::media::synthetic::{SyntheticCamera, SyntheticSpec};
use crate::outbox::Record;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its database and files [default: a new directory under /tmp]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the web page and API.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    http: SocketAddr,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Also publish to this MQTT broker, e.g. mqtt://127.0.0.1:1883 (topics under heldar/demo/).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
}

pub fn run(args: DemoArgs, socket: Option<PathBuf>) -> Result<ExitCode, CliError> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("heldar-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())))?;
    let socket = socket.unwrap_or_else(|| dir.join("heldar.sock"));
    let camera = SyntheticCamera::start(SyntheticSpec::default(), 0)
        .map_err(|e| CliError::Failed(format!("cannot start the synthetic camera: {e}")))?;
    let config_path = dir.join("heldar.toml");
    std::fs::write(
        &config_path,
        demo_config(
            &dir,
            &socket,
            args.http,
            &camera.url("main"),
            args.mqtt.as_deref(),
        ),
    )
    .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", config_path.display())))?;
    let loaded = load_config(&config_path)?;
    daemon::logging::init(&loaded.config.log_level);

    println!("Heldar Edge demo");
    println!("  data directory  {}", dir.display());
    println!("  config          {}", config_path.display());
    println!(
        "  camera          {} (synthetic, served in-process)",
        camera.url("main")
    );
    println!("  recordings      {}", dir.join("recordings").display());
    println!(
        "  database        {}",
        crate::store::db_path(&dir).display()
    );
    println!(
        "  try             heldar --socket {} status",
        socket.display()
    );
    println!(
        "                  heldar --socket {} events tail --follow",
        socket.display()
    );
    match args.duration {
        Some(s) => println!("  stops after {s}s (or Ctrl-C)"),
        None => println!("  stop with Ctrl-C"),
    }
    let (ready, addr) = tokio::sync::oneshot::channel();
    let client = Client::new(Some(socket.clone()));
    let events = Client::new(Some(socket.clone()));
    let overrides = daemon::Overrides {
        socket: Some(socket),
        stop_after: args.duration.map(Duration::from_secs),
        ready: Some(ready),
        consumers: None,
    };
    let rt = runtime()?;
    let worker = rt.spawn(async move {
        let addr = addr.await.ok()?;
        // Auth stays on, as on a box: the page gets an operator token (snapshots need one) in
        // the link's fragment (never sent to the server), the worker a worker token.
        let page = demo_token(&client, Role::Operator).await?;
        let worker = demo_token(&client, Role::Worker).await?;
        println!("  web             http://{addr}/#token={}", page.token);
        println!(
            "  metrics         curl -H 'Authorization: Bearer {}' http://{addr}/metrics",
            page.token
        );
        tokio::spawn(print_events(events));
        start_worker(addr, &worker.token)
    });
    let result = rt.block_on(daemon::run(loaded.config, loaded.board_source, overrides));
    if let Ok(Some(mut child)) = rt.block_on(worker) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    result?;
    drop(camera);
    Ok(ExitCode::SUCCESS)
}

/// Prints records as they land: every zone, camera and system record, and a count of
/// detection batches every 10 s (five a second would drown the rest).
async fn print_events(client: Client) {
    println!("  events          zone, camera and system records below; detections counted");
    let mut after = 0;
    let mut detections = 0u64;
    let mut since = std::time::Instant::now();
    loop {
        let path = format!("/api/v1/events?after_seq={after}&limit=500");
        if let Ok(records) = client.get::<Vec<Record>>(&path).await {
            for r in &records {
                after = after.max(r.seq);
                if r.kind == crate::outbox::Kind::Detection {
                    detections += 1;
                } else {
                    println!("{}", render::record(r));
                }
            }
        }
        if since.elapsed() >= Duration::from_secs(10) {
            if detections > 0 {
                println!("         {detections} detection batches in the last 10 s");
            }
            detections = 0;
            since = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn demo_token(client: &Client, role: Role) -> Option<NewToken> {
    let body = serde_json::json!({ "role": role, "name": format!("demo {}", role.as_str()) });
    match client
        .call(hyper::Method::POST, "/api/v1/tokens", Some(body))
        .await
    {
        Ok(t) => Some(t),
        Err(CliError::BadInput(e) | CliError::Failed(e)) => {
            eprintln!(
                "error: cannot create the demo's {} token: {e}",
                role.as_str()
            );
            None
        }
    }
}

/// The reference motion worker, as its own process, as on a box.
fn start_worker(addr: SocketAddr, token: &str) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok()?;
    let demo = nix::unistd::getpid();
    let mut command = std::process::Command::new(exe);
    // SAFETY: between fork and exec the closure calls only prctl(2) and getppid(2), both
    // async-signal-safe, and allocates nothing (an OS error code, not a message).
    unsafe {
        command.pre_exec(move || {
            // The worker dies with the demo, even a SIGKILLed one, instead of polling an API
            // that is gone; a demo gone before this line is caught by the parent check. The
            // signal follows the thread that forks, a runtime worker that lives as long as the
            // demo's runtime.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            if nix::unistd::getppid() != demo {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
    match command
        .args([
            "worker",
            "motion",
            "--poll",
            "2",
            "--api",
            &format!("http://{addr}"),
        ])
        // In the environment, not the arguments, so `ps` does not show it.
        .env("HELDAR_API_KEY", token)
        .spawn()
    {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("error: cannot start the motion worker: {e}");
            None
        }
    }
}

fn demo_config(
    dir: &Path,
    socket: &Path,
    http: SocketAddr,
    camera_url: &str,
    mqtt: Option<&str>,
) -> String {
    // The control group is the caller's own primary group, so the demo needs no `heldar` group.
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| "root".into());
    let quote = |s: String| toml::Value::String(s).to_string();
    let mqtt = mqtt
        .map(|url| format!("[mqtt]\nurl = {}\n\n", quote(url.to_string())))
        .unwrap_or_default();
    format!(
        "# Written by `heldar demo`: an ordinary heldar.toml.\n\
         device_id = \"demo\"\n\
         board = \"generic-x86_64\"\n\
         data_dir = {}\n\n\
         [http]\n\
         listen = {}\n\
         auth = true\n\n\
         [control]\n\
         socket = {}\n\
         group = {}\n\n\
         {mqtt}\
         [[cameras]]\n\
         id = \"demo\"\n\
         name = \"Synthetic camera\"\n\
         url = {}\n\
         segment_seconds = 10\n\n\
         [[tasks]]\n\
         camera = \"demo\"\n\
         task_type = \"motion\"\n\
         profile = \"main\"\n\
         fps = 5\n\
         width = 640\n\n\
         # The ball bounces across the picture: it enters and leaves the right half and\n\
         # crosses the middle line.\n\
         [[zones]]\n\
         camera = \"demo\"\n\
         name = \"right_half\"\n\
         kind = \"region\"\n\
         points = [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]\n\
         anchor = \"center\"\n\
         dwell_seconds = 2\n\n\
         [[zones]]\n\
         camera = \"demo\"\n\
         name = \"middle\"\n\
         kind = \"line\"\n\
         points = [[0.5, 0.0], [0.5, 1.0]]\n\
         anchor = \"center\"\n",
        quote(dir.display().to_string()),
        quote(http.to_string()),
        quote(socket.display().to_string()),
        quote(group),
        quote(camera_url.to_string()),
    )
}

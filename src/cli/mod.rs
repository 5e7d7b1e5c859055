//! `heldar <command>`: the daemon (`run`), the demo, offline commands (`config check`, `db check`)
//! and thin clients of the daemon's control socket (`status`, ...).
//!
//! Output contract (`docs/cli.md`): human-readable by default, `--json` for machines;
//! errors go to stderr as one line starting with `error:` that names the offending key or argument;
//! exit code 2 for bad input, 1 for failure to do the work.

mod cameras;
mod client;
mod demo;
mod events;
mod io;
mod keys;
mod recordings;
mod render;
mod zones;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::daemon;
use crate::media;
use crate::store;

const DEFAULT_CONFIG: &str = "/etc/heldar/heldar.toml";

#[derive(Debug, Parser)]
#[command(
    name = "heldar",
    version,
    about = "Heldar Edge: the NVR box agent and its maintenance CLI"
)]
struct Cli {
    /// Control socket of the daemon (the packaged `control.socket`) [default: /run/heldar/heldar.sock]
    #[arg(long, global = true, env = "HELDAR_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (systemd runs this).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG, value_name = "PATH")]
        config: PathBuf,
    },
    /// Run the whole box on built-in defaults in a scratch directory.
    Demo(demo::DemoArgs),
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Daemon health: uptime, database, write queue, cameras.
    Status,
    /// The camera registry.
    Cameras {
        #[command(subcommand)]
        command: cameras::CamerasCommand,
    },
    /// Zones: regions and lines the zone engine watches.
    Zones {
        #[command(subcommand)]
        command: zones::ZonesCommand,
    },
    /// The newest frame of a camera (or the one recorded at --at), as a JPEG.
    Snapshot {
        camera: String,
        #[arg(short, long, value_name = "FILE.jpg")]
        output: PathBuf,
        /// A recorded time: RFC 3339, or an age such as 15m.
        #[arg(long, value_parser = recordings::parse_time)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Export recorded footage by stream copy.
    Clip {
        camera: String,
        /// RFC 3339, now, or an age such as 15m.
        #[arg(long, value_parser = recordings::parse_time)]
        from: chrono::DateTime<chrono::Utc>,
        #[arg(long, value_parser = recordings::parse_time)]
        to: chrono::DateTime<chrono::Utc>,
        #[arg(short, long, value_name = "FILE.mkv")]
        output: PathBuf,
    },
    /// Recorded segments, gaps and evidence locks.
    Segments {
        #[command(subcommand)]
        command: recordings::SegmentsCommand,
    },
    /// API tokens for the HTTP listener and workers.
    Token {
        #[command(subcommand)]
        command: events::TokenCommand,
    },
    /// The outbox: backlog per consumer, bytes, drops.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Recent events from the outbox.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Alarm inputs and relays of the serial I/O board.
    Io {
        #[command(subcommand)]
        command: io::IoCommand,
    },
    /// PTZ cameras over serial (Pelco-D).
    Ptz {
        camera: String,
        #[command(subcommand)]
        action: io::PtzAction,
    },
    /// Signing keys for config changes and commands over MQTT (mqtt.command_keys).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Wrap an MQTT config change or command in a signed envelope, printed for mosquitto_pub -m.
    Sign(keys::SignArgs),
    /// Who changed what, newest first (HTTP, CLI and MQTT changes alike).
    Audit {
        /// How many entries.
        #[arg(long, short = 'n', default_value_t = 50)]
        limit: u32,
    },
    /// Inference workers that speak the worker contract.
    Worker {
        #[command(subcommand)]
        command: WorkerCommand,
    },
    /// Work with the database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file with its board profile and print the effective config.
    Check {
        path: PathBuf,
        /// Print nothing when the config is valid (the unit's ExecStartPre uses it).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print the systemd drop-in the board profile implies (MemoryMax); the package's systemd
    /// generator writes it next to heldar.service at boot and on daemon-reload.
    Systemd { path: PathBuf },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Backlog per consumer cursor, oldest record age, bytes, dropped count.
    Status,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print recent records; with --follow keep printing new ones.
    Tail {
        #[arg(long)]
        follow: bool,
        /// Only records of this kind.
        #[arg(long, value_parser = ["detection", "zone", "alarm", "camera", "system"])]
        kind: Option<String>,
        /// How many recent records to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
    },
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// The reference motion worker (frame differencing, tracked regions).
    Motion {
        /// Base URL of the daemon's HTTP listener.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        api: String,
        /// A worker token (heldar token create --role worker).
        #[arg(long, env = "HELDAR_API_KEY")]
        token: Option<String>,
        /// Stable id of this worker [default: <hostname>:<pid>]
        #[arg(long)]
        worker_id: Option<String>,
        /// Seconds between lease renewals.
        #[arg(long, default_value_t = 10)]
        poll: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Integrity check of the database named by the config's data_dir.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG, value_name = "PATH")]
        config: PathBuf,
    },
}

/// A command's failure, with the exit code it implies.
#[derive(Debug)]
pub enum CliError {
    /// Bad input from the caller (exit 2). May hold several lines, each printed with `error:`.
    BadInput(String),
    /// The work could not be done (exit 1).
    Failed(String),
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Failed(format!("{e:#}"))
    }
}

/// Entry point of the `heldar` binary.
pub fn main() -> ExitCode {
    daemon::allocator::set_malloc_policy();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(CliError::BadInput(msg)) => {
            print_errors(&msg);
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            print_errors(&msg);
            ExitCode::from(1)
        }
    }
}

fn print_errors(msg: &str) {
    for line in msg.lines() {
        eprintln!("error: {line}");
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run { config } => {
            let loaded = load_config(&config)?;
            daemon::logging::init(&loaded.config.log_level);
            for w in &loaded.warnings {
                tracing::warn!(key = %w.path, "{}", w.message);
            }
            let overrides = daemon::Overrides {
                socket: cli.socket,
                ..Default::default()
            };
            runtime()?.block_on(daemon::run(loaded.config, loaded.board_source, overrides))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args, cli.socket),
        Command::Config {
            command: ConfigCommand::Check { path, quiet },
        } => {
            let loaded = load_config(&path)?;
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            if quiet {
                return Ok(ExitCode::SUCCESS);
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&loaded.config.shown())
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                let board = loaded.board_source.as_deref().unwrap_or("none");
                println!(
                    "# effective config of {} (board profile: {board}); secrets are not shown",
                    path.display()
                );
                print!("{}", loaded.config.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Systemd { path },
        } => {
            let loaded = load_config(&path)?;
            println!("# Written by heldar-generator from {}", path.display());
            println!("[Service]");
            if let Some(max) = loaded.config.limits.memory_max {
                println!("MemoryMax={}", max.bytes());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cameras { command } => {
            cameras::run(command, client::Client::new(cli.socket), cli.json)
        }
        Command::Snapshot { camera, output, at } => {
            recordings::snapshot(client::Client::new(cli.socket), &camera, at, &output)
        }
        Command::Clip {
            camera,
            from,
            to,
            output,
        } => recordings::clip(
            client::Client::new(cli.socket),
            &camera,
            from,
            to,
            &output,
            cli.json,
        ),
        Command::Segments { command } => {
            recordings::segments(command, client::Client::new(cli.socket), cli.json)
        }
        Command::Zones { command } => {
            zones::run(command, client::Client::new(cli.socket), cli.json)
        }
        Command::Token { command } => {
            events::token(command, client::Client::new(cli.socket), cli.json)
        }
        Command::Outbox {
            command: OutboxCommand::Status,
        } => events::outbox_status(client::Client::new(cli.socket), cli.json),
        Command::Io { command } => io::io(command, client::Client::new(cli.socket), cli.json),
        Command::Ptz { camera, action } => {
            io::ptz(&camera, action, client::Client::new(cli.socket), cli.json)
        }
        Command::Keys { command } => keys::keys(command),
        Command::Sign(args) => keys::sign(args),
        Command::Audit { limit } => events::audit(client::Client::new(cli.socket), limit, cli.json),
        Command::Events {
            command:
                EventsCommand::Tail {
                    follow,
                    kind,
                    lines,
                },
        } => events::tail(
            client::Client::new(cli.socket),
            kind,
            lines,
            follow,
            cli.json,
        ),
        Command::Worker {
            command:
                WorkerCommand::Motion {
                    api,
                    token,
                    worker_id,
                    poll,
                },
        } => {
            daemon::logging::init("info");
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let worker_id =
                worker_id.unwrap_or_else(|| format!("{}:{}", host.trim(), std::process::id()));
            let settings = crate::worker::WorkerSettings {
                api,
                token,
                worker_id,
                poll: std::time::Duration::from_secs(poll.max(1)),
            };
            crate::worker::run(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let client = client::Client::new(cli.socket);
            let status: crate::api::SystemStatus =
                runtime()?.block_on(client.get("/api/v1/system"))?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", render::status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command: DbCommand::Check { config },
        } => {
            let loaded = load_config(&config)?;
            let db = store::db_path(&loaded.config.data_dir);
            let failed = |e: store::StoreError| CliError::Failed(e.to_string());
            let report = store::check(&db).map_err(failed)?;
            let recordings = loaded.config.data_dir.join("recordings");
            // The recordings scan reads this binary's tables; another schema is reported as such.
            let scan = if report.schema_version == store::LATEST_VERSION {
                let conn = store::open_read_only(&db).map_err(failed)?;
                Some(
                    media::reconcile::scan(&conn, &recordings)
                        .map_err(|e| CliError::Failed(e.to_string()))?,
                )
            } else {
                None
            };
            if cli.json {
                let both = serde_json::json!({ "database": report, "recordings": scan });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&both)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", render::db_check(&report, scan.as_ref()));
            }
            let ok = report.ok() && scan.is_some_and(|s| s.rows_without_files.is_empty());
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<config::Loaded, CliError> {
    config::load(path).map_err(|e| CliError::BadInput(e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

//! `heldar snapshot`, `heldar clip` and `heldar segments`: getting pictures and footage off the box.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use hyper::Method;

use super::client::Client;
use super::{CliError, render, runtime};
use crate::api::ClipAnswer;
use crate::media::index::{Gap, Segment};

/// A time on the command line: RFC 3339 (`2026-11-28T06:00:00Z`), `now`, or a duration meaning
/// that long ago (`90s`, `15m`, `2h`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if text == "now" {
        return Ok(Utc::now());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    match text.parse::<crate::config::units::Duration>() {
        Ok(ago) => {
            Ok(Utc::now() - chrono::Duration::from_std(ago.get()).map_err(|e| e.to_string())?)
        }
        Err(_) => Err(format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-28T06:00:00Z), now, or an age such as 15m"
        )),
    }
}

pub fn snapshot(
    client: Client,
    camera: &str,
    at: Option<DateTime<Utc>>,
    output: &Path,
) -> Result<ExitCode, CliError> {
    let mut path = format!("/api/v1/cameras/{camera}/snapshot");
    if let Some(at) = at {
        path.push_str(&format!(
            "?at={}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }
    let bytes = runtime()?.block_on(client.download(&path, output))?;
    eprintln!("wrote {} ({bytes} bytes)", output.display());
    Ok(ExitCode::SUCCESS)
}

pub fn clip(
    client: Client,
    camera: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    output: &Path,
    json: bool,
) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    let body = serde_json::json!({ "from": from, "to": to });
    let answer: ClipAnswer = rt.block_on(client.call(
        Method::POST,
        &format!("/api/v1/cameras/{camera}/clip"),
        Some(body),
    ))?;
    rt.block_on(client.download(&format!("/api/v1/clips/{}", answer.clip), output))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        print!("{}", render::clip(&answer, output));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// Recorded segments and gaps of a camera (default: the last hour).
    List {
        camera: String,
        #[arg(long, value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        #[arg(long, value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
    },
    /// Keep a segment as evidence: retention never deletes it.
    Lock { id: i64 },
    /// Let retention treat a segment normally again.
    Unlock { id: i64 },
}

pub fn segments(
    command: SegmentsCommand,
    client: Client,
    json: bool,
) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    match command {
        SegmentsCommand::List { camera, from, to } => {
            let to = to.unwrap_or_else(Utc::now);
            let from = from.unwrap_or(to - chrono::Duration::hours(1));
            let window = format!(
                "from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
            let segments: Vec<Segment> = rt.block_on(client.get(&format!(
                "/api/v1/cameras/{camera}/segments?{window}&limit=5000"
            )))?;
            let gaps: Vec<Gap> =
                rt.block_on(client.get(&format!("/api/v1/cameras/{camera}/gaps?{window}")))?;
            if json {
                let both = serde_json::json!({ "segments": segments, "gaps": gaps });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&both)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", render::segments(&segments, &gaps));
            }
        }
        SegmentsCommand::Lock { id } | SegmentsCommand::Unlock { id } => {
            let method = if matches!(command, SegmentsCommand::Lock { .. }) {
                Method::POST
            } else {
                Method::DELETE
            };
            let answer: serde_json::Value = rt.block_on(client.call(
                method,
                &format!("/api/v1/segments/{id}/evidence-lock"),
                None,
            ))?;
            if json {
                println!("{answer}");
            } else {
                let locked = answer["evidence_locked"].as_bool().unwrap_or(false);
                println!(
                    "segment {id} {}",
                    if locked {
                        "is kept as evidence"
                    } else {
                        "is no longer locked"
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

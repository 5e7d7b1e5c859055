//! `heldar io` (alarm inputs and relays) and `heldar ptz` (PTZ over serial).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use hyper::Method;

use super::client::Client;
use super::{CliError, render, runtime};
use crate::serial::{PtzCommand, SerialStatus};

#[derive(Debug, Subcommand)]
pub enum IoCommand {
    /// Ports with their error counts, inputs and relays.
    Status,
    /// Drive a relay: on, off, or pulse for a duration (`heldar io relay 1 pulse 2s`).
    Relay {
        /// Relay number, from 1.
        relay: u16,
        /// on, off or pulse.
        state: String,
        /// With pulse: how long (`500ms`, `2s`).
        duration: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PtzAction {
    /// Go to a preset.
    Goto { preset: u8 },
    /// Store the current position as a preset.
    Set { preset: u8 },
    /// Forget a preset.
    Clear { preset: u8 },
    /// Move at a speed from -1 to 1 per axis (right, up and zoom in are positive) until `stop`.
    Move {
        #[arg(allow_hyphen_values = true)]
        pan: f64,
        #[arg(allow_hyphen_values = true)]
        tilt: f64,
        #[arg(allow_hyphen_values = true)]
        zoom: Option<f64>,
    },
    /// Stop moving.
    Stop,
}

fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| CliError::Failed(e.to_string()))?
    );
    Ok(())
}

pub fn io(command: IoCommand, client: Client, json: bool) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    match command {
        IoCommand::Status => {
            let status: SerialStatus = rt.block_on(client.get("/api/v1/io"))?;
            if json {
                print_json(&status)?;
            } else {
                print!("{}", render(&status));
            }
        }
        IoCommand::Relay {
            relay,
            state,
            duration,
        } => {
            let body = serde_json::json!({ "state": state, "duration": duration });
            let answer: serde_json::Value = rt.block_on(client.call(
                Method::POST,
                &format!("/api/v1/io/relays/{relay}"),
                Some(body),
            ))?;
            if json {
                print_json(&answer)?;
            } else {
                println!(
                    "relay {relay}: {}",
                    answer["done"].as_str().unwrap_or("done")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ptz(
    camera: &str,
    action: PtzAction,
    client: Client,
    json: bool,
) -> Result<ExitCode, CliError> {
    let command = match action {
        PtzAction::Goto { preset } => PtzCommand::Goto { preset },
        PtzAction::Set { preset } => PtzCommand::Set { preset },
        PtzAction::Clear { preset } => PtzCommand::Clear { preset },
        PtzAction::Move { pan, tilt, zoom } => PtzCommand::Move {
            pan,
            tilt,
            zoom: zoom.unwrap_or(0.0),
        },
        PtzAction::Stop => PtzCommand::Stop,
    };
    command.check().map_err(CliError::BadInput)?;
    let body = serde_json::to_value(command).map_err(|e| CliError::Failed(e.to_string()))?;
    let answer: serde_json::Value = runtime()?.block_on(client.call(
        Method::POST,
        &format!("/api/v1/cameras/{camera}/ptz"),
        Some(body),
    ))?;
    if json {
        print_json(&answer)?;
    } else {
        println!("{camera}: sent {}", answer["sent"]);
    }
    Ok(ExitCode::SUCCESS)
}

/// An input or relay state as the status prints it: `ON` stands out among the `off`s.
fn on_off(state: Option<bool>) -> &'static str {
    match state {
        Some(true) => "ON",
        Some(false) => "off",
        None => "unknown",
    }
}

fn render(s: &SerialStatus) -> String {
    let mut out = String::new();
    if s.ports.is_empty() {
        out.push_str("no serial ports configured ([[serial]] in heldar.toml)\n");
        return out;
    }
    for p in &s.ports {
        let _ = writeln!(
            out,
            "{:<10} {} {} {}: {} ok, {} timeouts, {} bad frames, {} exceptions, {} port errors, {} opens",
            "port",
            p.name,
            p.device,
            p.state,
            p.requests_ok,
            p.timeouts,
            p.bad_frames,
            p.exceptions,
            p.port_errors,
            p.opens
        );
        if let Some(e) = &p.last_error {
            out.push_str(&render::last_error("", e, p.last_error_at));
        }
    }
    if let Some(io) = &s.io {
        for i in &io.inputs {
            let state = on_off(i.active);
            let name = i
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = writeln!(out, "{:<10} {}{name} {state}", "input", i.input);
        }
        for r in &io.relays {
            let state = on_off(r.on);
            let pulse = r
                .pulse_until
                .map(|t| format!(" (pulse until {})", t.format("%H:%M:%S%.3f")))
                .unwrap_or_default();
            let _ = writeln!(out, "{:<10} {} {state}{pulse}", "relay", r.relay);
        }
    }
    out
}

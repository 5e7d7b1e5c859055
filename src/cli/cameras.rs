//! `heldar cameras list|add|remove`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;

use super::client::Client;
use super::{CliError, render, runtime};
use crate::api::CameraView;
use crate::config::secret::Secret;
use crate::media::StreamTest;

#[derive(Debug, Subcommand)]
pub enum CamerasCommand {
    /// Every camera with its state, fps, bitrate and last segment.
    List,
    /// Add, or replace, a camera created at runtime.
    Add(AddArgs),
    /// Remove a camera created at runtime; its recordings stay until retention takes them.
    Remove { id: String },
    /// Open the camera's stream once and report codec, resolution, fps and GOP.
    Test { id: String },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Camera id: letters, digits, '-' and '_'.
    id: String,
    #[arg(long)]
    name: Option<String>,
    /// Main stream URL; rtsp://user:pass@host/... is split into the user name and the password.
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    sub_url: Option<String>,
    /// hikvision, dahua, axis, reolink, amcrest or onvif; with --address instead of --url.
    #[arg(long)]
    vendor: Option<String>,
    #[arg(long)]
    address: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    channel: Option<u32>,
    #[arg(long)]
    username: Option<String>,
    /// File holding the camera's password (read here, sent to the daemon over the socket).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[arg(long)]
    segment_seconds: Option<u32>,
    /// Register the camera without recording it.
    #[arg(long)]
    no_record: bool,
}

pub fn run(command: CamerasCommand, client: Client, json: bool) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    match command {
        CamerasCommand::List => {
            let cameras: Vec<CameraView> = rt.block_on(client.get("/api/v1/cameras"))?;
            print_json_or(json, &cameras, || render::cameras(&cameras))
        }
        CamerasCommand::Add(args) => {
            let body = add_body(args)?;
            let camera: CameraView =
                rt.block_on(client.call(Method::POST, "/api/v1/cameras", Some(body)))?;
            print_json_or(json, &camera, || format!("added camera {}\n", camera.id))
        }
        CamerasCommand::Test { id } => {
            let report: StreamTest = rt.block_on(client.call(
                Method::POST,
                &format!("/api/v1/cameras/{id}/test"),
                None,
            ))?;
            print_json_or(json, &report, || render::stream_test(&report))
        }
        CamerasCommand::Remove { id } => {
            let answer: serde_json::Value =
                rt.block_on(client.call(Method::DELETE, &format!("/api/v1/cameras/{id}"), None))?;
            print_json_or(json, &answer, || format!("removed camera {id}\n"))
        }
    }
}

fn add_body(a: AddArgs) -> Result<serde_json::Value, CliError> {
    let mut body = serde_json::json!({ "id": a.id });
    let fields = [
        ("name", a.name.map(Into::into)),
        ("url", a.url.map(Into::into)),
        ("sub_url", a.sub_url.map(Into::into)),
        ("vendor", a.vendor.map(Into::into)),
        ("address", a.address.map(Into::into)),
        ("port", a.port.map(Into::into)),
        ("channel", a.channel.map(Into::into)),
        ("username", a.username.map(Into::into)),
        ("segment_seconds", a.segment_seconds.map(Into::into)),
        ("record", a.no_record.then_some(false.into())),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    if let Some(path) = a.password_file {
        let secret = Secret::read(&path).map_err(|e| {
            CliError::BadInput(format!(
                "--password-file: cannot read {}: {e}",
                path.display()
            ))
        })?;
        body["password"] = secret.expose().into();
    }
    Ok(body)
}

fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<ExitCode, CliError> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        print!("{}", human());
    }
    Ok(ExitCode::SUCCESS)
}

//! `heldar zones list|add|remove`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;

use super::client::Client;
use super::{CliError, render, runtime};
use crate::registry::StoredZone;

#[derive(Debug, Subcommand)]
pub enum ZonesCommand {
    /// Zones of every camera, or of one, with their occupancy.
    List {
        #[arg(long)]
        camera: Option<String>,
    },
    /// Add, or replace, a zone created at runtime.
    Add(AddArgs),
    /// Remove a zone created at runtime.
    Remove { name: String },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    name: String,
    #[arg(long)]
    camera: String,
    /// region or line.
    #[arg(long, default_value = "region")]
    kind: String,
    /// Normalised points "x,y x,y ...", 0..1 from the top-left corner.
    #[arg(long)]
    points: String,
    /// Labels the zone reacts to, comma-separated; all when absent.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Seconds inside before a dwell event.
    #[arg(long)]
    dwell: Option<f64>,
    /// Lines: any, ab or ba.
    #[arg(long)]
    direction: Option<String>,
}

fn points(text: &str) -> Result<Vec<[f64; 2]>, CliError> {
    text.split_whitespace()
        .map(|pair| {
            let mut it = pair.split(',').map(|v| v.trim().parse::<f64>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(x)), Some(Ok(y)), None) => Ok([x, y]),
                _ => Err(CliError::BadInput(format!("--points: {pair:?} is not x,y"))),
            }
        })
        .collect()
}

pub fn run(command: ZonesCommand, client: Client, json: bool) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    match command {
        ZonesCommand::List { camera } => {
            let cameras: Vec<String> = match camera {
                Some(c) => vec![c],
                None => {
                    let list: Vec<crate::api::CameraView> =
                        rt.block_on(client.get("/api/v1/cameras"))?;
                    list.into_iter().map(|c| c.id).collect()
                }
            };
            let mut zones: Vec<StoredZone> = Vec::new();
            let mut occupancy = Vec::new();
            for c in &cameras {
                let z: Vec<StoredZone> =
                    rt.block_on(client.get(&format!("/api/v1/cameras/{c}/zones")))?;
                let o: Vec<crate::zones::queries::OccupancyRow> =
                    rt.block_on(client.get(&format!("/api/v1/cameras/{c}/zones/occupancy")))?;
                zones.extend(z);
                occupancy.extend(o);
            }
            if json {
                let both = serde_json::json!({ "zones": zones, "occupancy": occupancy });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&both)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", render::zones(&zones, &occupancy));
            }
        }
        ZonesCommand::Add(a) => {
            let mut body = serde_json::json!({ "name": a.name, "camera": a.camera, "kind": a.kind, "points": points(&a.points)?, "labels": a.labels });
            if let Some(d) = a.dwell {
                body["dwell_seconds"] = d.into();
            }
            if let Some(d) = a.direction {
                body["direction"] = d.into();
            }
            let zone: StoredZone = rt.block_on(client.call(
                Method::POST,
                &format!("/api/v1/cameras/{}/zones", a.camera),
                Some(body),
            ))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&zone)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                println!(
                    "added zone {} on camera {}",
                    zone.settings.name, zone.settings.camera
                );
            }
        }
        ZonesCommand::Remove { name } => {
            let answer: serde_json::Value =
                rt.block_on(client.call(Method::DELETE, &format!("/api/v1/zones/{name}"), None))?;
            if json {
                println!("{answer}");
            } else {
                println!("removed zone {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `heldar token`, `heldar outbox status`, `heldar events tail` and `heldar audit`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hyper::Method;

use super::client::Client;
use super::{CliError, render, runtime};
use crate::audit::AuditEntry;
use crate::auth::{NewToken, Role, TokenInfo};
use crate::outbox::{OutboxStatus, Record};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and never shown again.
    Create {
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        name: Option<String>,
    },
    /// Every token (never the token text).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

pub fn token(command: TokenCommand, client: Client, json: bool) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    match command {
        TokenCommand::Create { role, name } => {
            let body = serde_json::json!({ "role": role, "name": name });
            let t: NewToken =
                rt.block_on(client.call(Method::POST, "/api/v1/tokens", Some(body)))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&t)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                eprintln!(
                    "created {} ({} token {:?}); it is shown only now:",
                    t.info.id,
                    t.info.role.as_str(),
                    t.info.name
                );
                println!("{}", t.token);
            }
        }
        TokenCommand::List => {
            let tokens: Vec<TokenInfo> = rt.block_on(client.get("/api/v1/tokens"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tokens)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else {
                print!("{}", render::tokens(&tokens));
            }
        }
        TokenCommand::Revoke { id } => {
            let answer: serde_json::Value =
                rt.block_on(client.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None))?;
            if json {
                println!("{answer}");
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn outbox_status(client: Client, json: bool) -> Result<ExitCode, CliError> {
    let status: OutboxStatus = runtime()?.block_on(client.get("/api/v1/outbox"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        print!("{}", render::outbox(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// `heldar audit`.
pub fn audit(client: Client, limit: u32, json: bool) -> Result<ExitCode, CliError> {
    let entries: Vec<AuditEntry> =
        runtime()?.block_on(client.get(&format!("/api/v1/audit?limit={limit}")))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else {
        print!("{}", render::audit(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints recent records, then with `follow` new ones as they come (until interrupted).
pub fn tail(
    client: Client,
    kind: Option<String>,
    lines: u32,
    follow: bool,
    json: bool,
) -> Result<ExitCode, CliError> {
    let rt = runtime()?;
    let kind_param = kind.map(|k| format!("&kind={k}")).unwrap_or_default();
    let print = |records: &[Record]| {
        for r in records {
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            } else {
                println!("{}", render::record(r));
            }
        }
    };
    let recent: Vec<Record> =
        rt.block_on(client.get(&format!("/api/v1/events?limit={lines}{kind_param}")))?;
    print(&recent);
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut after = recent.last().map_or(0, |r| r.seq);
    if after == 0 {
        // Nothing of that kind yet: start after the newest record of any kind.
        let newest: Vec<Record> = rt.block_on(client.get("/api/v1/events?limit=1"))?;
        after = newest.last().map_or(0, |r| r.seq);
    }
    loop {
        let next: Vec<Record> = rt.block_on(client.get(&format!(
            "/api/v1/events?after_seq={after}&limit=500{kind_param}"
        )))?;
        print(&next);
        if let Some(last) = next.last() {
            after = last.seq;
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

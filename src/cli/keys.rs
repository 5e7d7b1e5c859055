//! `heldar keys` and `heldar sign`: the operator's side of signed commands over MQTT
//! (`mqtt.command_keys`, docs/mqtt.md#signed-commands). Both work offline, on the operator's
//! machine; the private key never needs to be on the box.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;

use super::CliError;
use crate::config::command_key::CommandKey;
use crate::uplink::signed;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key pair: the private key goes to FILE (PKCS#8 PEM, mode 0600), the public key to
    /// stdout, for `[mqtt] command_keys` of the boxes it may command.
    Generate {
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of a private key file (also one made by
    /// `openssl genpkey -algorithm ed25519`).
    Public {
        #[arg(value_name = "FILE")]
        key: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Private key file (from `heldar keys generate` or openssl).
    #[arg(long, env = "HELDAR_SIGNING_KEY", value_name = "FILE")]
    key: PathBuf,
    /// device_id of the box the command is for.
    #[arg(long)]
    device: String,
    /// Must be above the last counter the box accepted from this key [default: the time in
    /// milliseconds since 1970]
    #[arg(long)]
    counter: Option<u64>,
    /// The full topic it will be published on, e.g. heldar/box1/cmd/relay/1/set.
    topic: String,
    /// The payload as it would be sent unsigned; `-` reads it from stdin.
    payload: String,
}

pub fn keys(command: KeysCommand) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Generate { out } => {
            let (pem, public) = signed::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| {
                    CliError::BadInput(format!(
                        "cannot create {}: {e} (an existing key is never overwritten)",
                        out.display()
                    ))
                })?;
            file.write_all(pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", out.display())))?;
            println!("{public}");
            eprintln!(
                "private key written to {}; add the line above to [mqtt] command_keys",
                out.display()
            );
        }
        KeysCommand::Public { key } => {
            println!("{}", CommandKey::new(read_key(&key)?.verifying_key()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sign(args: SignArgs) -> Result<ExitCode, CliError> {
    let key = read_key(&args.key)?;
    let payload = if args.payload == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::BadInput(format!("cannot read the payload from stdin: {e}")))?;
        text
    } else {
        args.payload
    };
    let counter = args
        .counter
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis().max(0) as u64);
    let envelope = signed::sign(&key, &args.device, &args.topic, counter, &payload);
    println!(
        "{}",
        serde_json::to_string(&envelope).map_err(|e| CliError::Failed(e.to_string()))?
    );
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &Path) -> Result<SigningKey, CliError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| CliError::BadInput(format!("cannot read {}: {e}", path.display())))?;
    signed::read_private(&pem).map_err(|e| CliError::BadInput(format!("{}: {e}", path.display())))
}

//! `atmosphere matter …`: commission Matter devices on the local node's bridge, list and switch
//! them, and run the project's virtual OnOff light.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use atmosphere_node::api::CommissionRequest;
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum MatterCommand {
    /// Commission a device on the local node's bridge: PASE with its setup code, an operational
    /// certificate from the node's fabric, then CASE. The device becomes `matter:*` tools.
    Commission {
        /// The manual pairing code the device shows (e.g. 3497-011-2332), or its setup passcode.
        code: String,
        /// Where the device answers, IP:PORT (Matter's port is 5540).
        #[arg(long)]
        address: SocketAddr,
        /// What people call it: requests name it ("turn on the garage light").
        #[arg(long)]
        name: String,
    },
    /// Every Matter device in the mesh, with its state and the node that bridges it.
    List,
    /// Switch a device: on, off, toggle, or read its state.
    Set { device: String, action: String },
    /// Run the project's virtual Matter device (a real rs-matter OnOff light) in the foreground.
    /// Prints one JSON line when it listens (with its pairing code) and one per on/off change.
    VirtualDevice {
        /// Only `light` for now.
        #[arg(long, default_value = "light")]
        kind: String,
        /// UDP port, on every interface (IPv4 and IPv6).
        #[arg(long, default_value_t = 5540)]
        port: u16,
        #[arg(long, default_value_t = atmosphere_matter::DEFAULT_PASSCODE)]
        passcode: u32,
        #[arg(long, default_value_t = atmosphere_matter::DEFAULT_DISCRIMINATOR)]
        discriminator: u16,
        /// Where it keeps its fabrics (so it stays commissioned across restarts).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

pub async fn run(command: MatterCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        MatterCommand::Commission {
            code,
            address,
            name,
        } => {
            let device: Value = client
                .post(
                    "/v1/matter/commission",
                    &CommissionRequest {
                        code,
                        address,
                        name,
                    },
                )
                .await?;
            render::output(json, &device, |d| {
                format!(
                    "Commissioned {} (node {}) at {}: {}\n",
                    d["name"].as_str().unwrap_or_default(),
                    d["id"].as_str().unwrap_or_default(),
                    d["address"].as_str().unwrap_or_default(),
                    state(d)
                )
            })
        }
        MatterCommand::List => {
            let devices: Vec<Value> = client.get("/v1/matter/devices").await?;
            render::output(json, &devices, |list| {
                if list.is_empty() {
                    return "No Matter devices yet: `atmosphere matter commission CODE --address IP:PORT --name NAME`\n".into();
                }
                list.iter()
                    .map(|d| {
                        format!(
                            "{:24} {:4} via {:16} node {:>6}  {}\n",
                            d["name"].as_str().unwrap_or_default(),
                            state(d),
                            d["bridge"].as_str().unwrap_or_default(),
                            d["id"].as_str().unwrap_or_default(),
                            d["address"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
        }
        MatterCommand::Set { device, action } => {
            let path = format!("/v1/matter/devices/{}/{}", encode(&device), encode(&action));
            let device: Value = client.post(&path, &serde_json::json!({})).await?;
            render::output(json, &device, |d| {
                format!(
                    "{} is {}\n",
                    d["name"].as_str().unwrap_or_default(),
                    state(d)
                )
            })
        }
        MatterCommand::VirtualDevice {
            kind,
            port,
            passcode,
            discriminator,
            state_dir,
        } => {
            anyhow::ensure!(
                kind == "light",
                "--kind {kind}: the virtual devices are: light"
            );
            let state_dir = state_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("atmosphere-matter-light-{port}"))
            });
            let config = atmosphere_matter::LightConfig {
                port,
                passcode,
                discriminator,
                state_dir,
            };
            let code = atmosphere_matter::pairing_code(passcode, discriminator);
            tokio::task::spawn_blocking(move || {
                atmosphere_matter::run_light(
                    &config,
                    |on| {
                        println!("{}", serde_json::json!({"event": "on_off", "on": on}));
                    },
                    |shown| {
                        println!(
                            "{}",
                            serde_json::json!({
                                "event": "ready",
                                "kind": "light",
                                "port": port,
                                "pairing_code": code,
                                "commissioned": shown.is_empty(),
                            })
                        );
                    },
                )
            })
            .await
            .context("the device thread failed")??;
            Ok(())
        }
    }
}

fn state(device: &Value) -> &'static str {
    match device["state"]["on"].as_bool() {
        Some(true) => "ON",
        Some(false) => "OFF",
        None => "?",
    }
}

/// Percent-encodes a path segment.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! `atmosphere matter …`: discover and commission Matter devices on the local node's bridge, list
//! and switch them, and run the project's virtual devices (a light, a temperature sensor).

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
        /// Where the device answers, IP:PORT (Matter's port is 5540). Without it the bridge
        /// finds the device by mDNS, from the pairing code's discriminator.
        #[arg(long)]
        address: Option<SocketAddr>,
        /// What people call it: requests name it ("turn on the porch lamp").
        #[arg(long)]
        name: String,
        /// The room it is in: requests may name the room and the kind ("the garage lights").
        #[arg(long)]
        room: Option<String>,
    },
    /// Devices waiting to be commissioned, found by mDNS (`_matterc._udp`) on the bridge's
    /// network (set `[matter] mdns_interface` to pick the interface).
    Discover,
    /// Every Matter device in the mesh, with its state and the node that bridges it.
    List,
    /// Switch a device: on, off, toggle, or read its state.
    Set { device: String, action: String },
    /// Run one of the project's virtual Matter devices (real rs-matter devices) in the
    /// foreground. Prints one JSON line when it listens (with its pairing code) and one per
    /// change. Lines on stdin act at the device itself, as a person would: `on`, `off` (light),
    /// `celsius 23.5` (sensor).
    VirtualDevice {
        /// `light` (OnOff) or `sensor` (temperature).
        #[arg(long, default_value = "light")]
        kind: atmosphere_matter::DeviceKind,
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
        /// Announce by mDNS on this interface; `auto`: the first that can carry it; `off`.
        #[arg(long, default_value = "auto")]
        mdns: String,
        /// The sensor's first reading, °C.
        #[arg(long, default_value_t = 21.0)]
        celsius: f64,
    },
}

pub async fn run(command: MatterCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        MatterCommand::Commission {
            code,
            address,
            name,
            room,
        } => {
            let device: Value = client
                .post(
                    "/v1/matter/commission",
                    &CommissionRequest {
                        code,
                        address,
                        name,
                        room,
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
        MatterCommand::Discover => {
            let found: Vec<Value> = client.get("/v1/matter/discover").await?;
            render::output(json, &found, |list| {
                if list.is_empty() {
                    return "No device is waiting to be commissioned (none answered mDNS in 5 s).\n"
                        .into();
                }
                list.iter()
                    .map(|d| {
                        format!(
                            "{:40} instance {}\n",
                            d["address"].as_str().unwrap_or_default(),
                            d["instance"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<String>()
                    + "Commission one: atmosphere matter commission CODE --name NAME [--room ROOM]\n"
            })
        }
        MatterCommand::List => {
            let devices: Vec<Value> = client.get("/v1/matter/devices").await?;
            render::output(json, &devices, |list| {
                if list.is_empty() {
                    return "No Matter devices yet: `atmosphere matter commission CODE --name NAME [--address IP:PORT]`\n".into();
                }
                list.iter()
                    .map(|d| {
                        format!(
                            "{:20} {:12} {:18} {:8} via {:12} node {:>6}  {}\n",
                            d["name"].as_str().unwrap_or_default(),
                            d["room"].as_str().unwrap_or("-"),
                            d["kind"].as_str().unwrap_or_default(),
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
            mdns,
            celsius,
        } => {
            virtual_device(
                kind,
                port,
                passcode,
                discriminator,
                state_dir,
                &mdns,
                celsius,
            )
            .await
        }
    }
}

/// Runs a virtual device: JSON lines out (ready, then each change), local changes in on stdin.
async fn virtual_device(
    kind: atmosphere_matter::DeviceKind,
    port: u16,
    passcode: u32,
    discriminator: u16,
    state_dir: Option<PathBuf>,
    mdns: &str,
    celsius: f64,
) -> Result<()> {
    use atmosphere_matter::{Change, DeviceKind};
    let kind_name = match kind {
        DeviceKind::Light => "light",
        DeviceKind::TemperatureSensor => "sensor",
    };
    let state_dir = state_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("atmosphere-matter-{kind_name}-{port}"))
    });
    // mDNS where it can run; a device is still reachable by address without it.
    let (interface, mdns_note) = match mdns {
        "off" => (None, "off".to_owned()),
        wanted => match atmosphere_matter::mdns::interface((wanted != "auto").then_some(wanted)) {
            Ok(interface) => {
                let name = interface.name.clone();
                (Some(interface), name)
            }
            Err(e) if wanted == "auto" => (None, format!("off ({e})")),
            Err(e) => return Err(e.into()),
        },
    };
    let config = atmosphere_matter::DeviceConfig {
        kind,
        port,
        passcode,
        discriminator,
        state_dir,
        mdns: interface,
        celsius,
    };
    let code = atmosphere_matter::pairing_code(passcode, discriminator);
    let (local_tx, local_rx) = tokio::sync::mpsc::unbounded_channel();
    // A person at the device: `on`, `off`, `celsius 23.5`, one per line.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            let words: Vec<&str> = line.split_whitespace().collect();
            let change = match words.as_slice() {
                ["on"] => Change::On(true),
                ["off"] => Change::On(false),
                ["celsius", value] => match value.parse() {
                    Ok(value) => Change::Celsius(value),
                    Err(_) => {
                        eprintln!("celsius takes a number, e.g. `celsius 23.5`");
                        continue;
                    }
                },
                [] => continue,
                _ => {
                    eprintln!("unknown: {line:?}; say `on`, `off` or `celsius 23.5`");
                    continue;
                }
            };
            if local_tx.send(change).is_err() {
                return;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        atmosphere_matter::run_device(
            &config,
            |change| {
                let line = match change {
                    Change::On(on) => serde_json::json!({"event": "on_off", "on": on}),
                    Change::Celsius(c) => serde_json::json!({"event": "temperature", "celsius": c}),
                };
                println!("{line}");
            },
            |shown| {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "ready",
                        "kind": kind_name,
                        "port": port,
                        "pairing_code": code,
                        "commissioned": shown.is_empty(),
                        "mdns": mdns_note,
                    })
                );
            },
            local_rx,
        )
    })
    .await
    .context("the device thread failed")??;
    Ok(())
}

fn state(device: &Value) -> String {
    if let Some(celsius) = device["state"]["celsius"].as_f64() {
        return format!("{celsius:.1} °C");
    }
    match device["state"]["on"].as_bool() {
        Some(true) => "ON",
        Some(false) => "OFF",
        None => "?",
    }
    .into()
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

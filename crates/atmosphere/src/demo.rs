//! `atmosphere demo`: the home mesh of the spec on one machine, as three real node processes
//! that find each other by mDNS on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use atmosphere_mesh::Status;
use atmosphere_node::daemon::Ready;
use atmosphere_proto::ModelKind;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::render;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the mesh running until Ctrl-C (then `atmosphere mesh status` talks to Mac-Studio).
    #[arg(long)]
    keep_running: bool,
    /// Where the nodes keep identity, state and logs (identities persist between runs).
    /// Default: ~/.cache/atmosphere/demo
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API port of Mac-Studio; Dell-Server and Garage-Pi take the next two.
    #[arg(long, default_value_t = 7070)]
    api_port: u16,
    /// QUIC port of Mac-Studio; the others take the next two.
    #[arg(long, default_value_t = 7400)]
    quic_port: u16,
    /// Seconds to wait for the mesh to converge.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The spec's three machines and what each runs. The chat models are real and advertise their
/// real sizes: the Mac serves SmolLM2-135M, the server the larger Gemma 3 270M (the biggest
/// whole model the package registries here carry); their `llm/<size>` capabilities come from the
/// model files. Vision and Matter are declared until their subsystems land.
const NODES: [(&str, &[&str]); 3] = [
    (
        "Mac-Studio",
        &[
            "--llm",
            "smollm2",
            "--embeddings",
            "auto",
            "--capability",
            "rag",
        ],
    ),
    (
        "Dell-Server",
        &[
            "--llm",
            "gemma3",
            "--embeddings",
            "auto",
            "--capability",
            "rag",
        ],
    ),
    (
        "Garage-Pi",
        &["--capability", "vision", "--capability", "matter"],
    ),
];

struct NodeProcess {
    name: String,
    child: Child,
    ready: Ready,
    log: PathBuf,
}

/// Stops the children however the demo ends.
struct Fleet(Vec<NodeProcess>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.0 {
            let _ = node.child.start_kill();
        }
    }
}

impl Fleet {
    async fn stop(mut self) {
        for node in &self.0 {
            if let Some(pid) = node.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for node in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(5), node.child.wait())
                .await
                .is_err()
            {
                let _ = node.child.start_kill();
            }
        }
        self.0.clear();
    }
}

fn default_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("atmosphere").join("demo")
}

async fn spawn_node(
    exe: &Path,
    dir: &Path,
    name: &str,
    args: &[&str],
    quic_port: u16,
    api_port: u16,
) -> Result<NodeProcess> {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let log = data_dir.join("node.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .args(["--name", name])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &format!("127.0.0.1:{quic_port}")])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--discovery", "loopback", "--mesh", "atmosphere-demo"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    command.args(args);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from {name}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(ready) = parse_ready(&line) {
                return Ok(ready);
            }
        }
        Err(anyhow!("{name} exited before it was ready"))
    })
    .await
    .map_err(|_| anyhow!("{name} did not become ready within 20 s"))
    .and_then(|r| r);
    match ready {
        Ok(ready) => Ok(NodeProcess {
            name: name.to_owned(),
            child,
            ready,
            log,
        }),
        Err(e) => {
            let _ = child.start_kill();
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{e}\n  last lines of {}:\n    {}",
                log.display(),
                tail.join("\n    ")
            )
        }
    }
}

/// Parses the `{"event":"ready",...}` line `atmosphere serve` prints.
pub fn parse_ready(line: &str) -> Result<Ready> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    if value["event"] != "ready" {
        bail!("not a ready line");
    }
    Ok(serde_json::from_value(value)?)
}

pub async fn run(args: DemoArgs, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the atmosphere binary")?;
    let dir = args.data_dir.clone().unwrap_or_else(default_dir);
    let started = Instant::now();
    if !json {
        println!(
            "Starting the home mesh on this machine (data and logs in {}):",
            dir.display()
        );
    }
    let mut fleet = Fleet(Vec::new());
    for (i, (name, node_args)) in NODES.iter().enumerate() {
        let offset = u16::try_from(i).unwrap_or(0);
        let node = spawn_node(
            &exe,
            &dir,
            name,
            node_args,
            args.quic_port.saturating_add(offset),
            args.api_port.saturating_add(offset),
        )
        .await
        .with_context(|| {
            format!(
                "starting {name} (are ports {} / {} free? another demo may be running; \
                 choose others with --api-port / --quic-port)",
                args.api_port.saturating_add(offset),
                args.quic_port.saturating_add(offset)
            )
        })?;
        if !json {
            println!(
                "  {:<12} id {}  QUIC {}  API http://{}",
                node.name,
                &node.ready.id.short()[..8],
                node.ready
                    .quic
                    .first()
                    .map_or("-".into(), ToString::to_string),
                node.ready.api
            );
        }
        fleet.0.push(node);
    }

    let clients: Vec<Client> = fleet
        .0
        .iter()
        .map(|n| Client::for_ready(&n.ready))
        .collect::<Result<_>>()?;
    form_mesh(&clients, &fleet, json).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let converged_at = loop {
        if all_healthy(&clients).await {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = fleet
                .0
                .iter()
                .map(|n| n.log.display().to_string())
                .collect();
            bail!(
                "the mesh did not converge within {} s; see the node logs: {}",
                args.timeout,
                logs.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = clients[0].status().await?;
    if json {
        let report = serde_json::json!({
            "converged_ms": converged_at.as_millis(),
            "nodes": fleet.0.iter().map(|n| serde_json::json!({"name": n.name, "id": n.ready.id, "api": n.ready.api, "quic": n.ready.quic})).collect::<Vec<_>>(),
            "status": status,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "All three nodes found each other by mDNS and converged in {:.1} s.\n",
            converged_at.as_secs_f64()
        );
        println!("$ atmosphere mesh status   # on Mac-Studio");
        print!("{}", render::status(&status));
    }
    if args.keep_running {
        if !json {
            println!(
                "\nThe mesh keeps running. Try, in another terminal:\n  \
                 atmosphere --api 127.0.0.1:{} mesh status\n  \
                 atmosphere --api 127.0.0.1:{} mesh routes\n  \
                 atmosphere --api 127.0.0.1:{} node disconnect Dell-Server\n\
                 Ctrl-C stops it.",
                args.api_port, args.api_port, args.api_port
            );
        }
        crate::shutdown_signal().await;
    }
    fleet.stop().await;
    Ok(())
}

/// Mac-Studio creates the mesh (it holds the authority key); the others join with one-time
/// invites. Nodes that joined in an earlier run keep their tokens.
async fn form_mesh(clients: &[Client], fleet: &Fleet, json: bool) -> Result<()> {
    let authority = &clients[0];
    if !authority.auth_status().await?.member {
        authority
            .init("home")
            .await
            .context("creating the mesh on Mac-Studio")?;
        if !json {
            println!("Mac-Studio created the mesh \"home\" and holds its authority key.");
        }
    }
    for (client, node) in clients.iter().zip(&fleet.0).skip(1) {
        if client.auth_status().await?.member {
            continue;
        }
        let invite = authority.invite(Duration::from_secs(600)).await?;
        client
            .join(&invite.text)
            .await
            .with_context(|| format!("{} joining with an invite", node.name))?;
        if !json {
            println!("{} joined with a one-time invite.", node.name);
        }
    }
    Ok(())
}

/// True when every node sees all three alive and has a route to each.
async fn all_healthy(clients: &[Client]) -> bool {
    for client in clients {
        let Ok(status) = client.status().await else {
            return false;
        };
        let alive = status
            .nodes
            .iter()
            .filter(|n| n.status == Status::Alive && (n.is_self || n.hops.is_some()))
            .count();
        // Every node that runs a chat model has told the mesh about it, speed measured.
        let models_known = status
            .nodes
            .iter()
            .filter(|n| n.models.iter().any(|m| m.kind == ModelKind::Chat))
            .filter(|n| {
                n.models
                    .iter()
                    .all(|m| m.kind != ModelKind::Chat || m.tokens_per_second.is_some())
            })
            .count();
        if alive != NODES.len() || models_known != CHAT_NODES {
            return false;
        }
    }
    true
}

/// Nodes of the demo that serve a chat model.
const CHAT_NODES: usize = 2;

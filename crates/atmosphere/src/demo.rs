//! `atmosphere demo`: the spec's "Home Intelligence" scenario on one machine. Three real node
//! processes (Mac-Studio, Dell-Server, Garage-Pi) and two virtual Matter devices (a light and a
//! temperature sensor, real rs-matter devices) start, find each other by mDNS on loopback and
//! join by invite; then the nine steps of the script run in order, each checking its outcome,
//! and a pass/fail table closes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use atmosphere_mesh::{MeshStatus, Status};
use atmosphere_node::daemon::Ready;
use atmosphere_node::intent::{IntentOutcome, IntentRequest};
use atmosphere_proto::ModelKind;
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::render;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the mesh running after the script until Ctrl-C, and print the dashboard's address.
    #[arg(long)]
    keep_running: bool,
    /// Where the nodes and devices keep their state and logs; each run starts it afresh.
    /// Default: ~/.cache/atmosphere/demo
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API port of Mac-Studio; Dell-Server and Garage-Pi take the next two. 0: free ports.
    #[arg(long, default_value_t = 7070)]
    api_port: u16,
    /// QUIC port of Mac-Studio; the others take the next two. 0: free ports.
    #[arg(long, default_value_t = 7400)]
    quic_port: u16,
    /// The mesh's name on mDNS (nodes of other meshes are ignored).
    #[arg(long, default_value = "atmosphere-demo")]
    mesh: String,
    /// Seconds to wait for the mesh to converge (and to heal in step 9).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// The spec's three machines and what each runs. The chat models are real and advertise their
/// real sizes: the Mac serves SmolLM2-135M, the server the larger Gemma 3 270M (the biggest
/// whole model the package registries here carry); their `llm/<size>` capabilities come from the
/// model files. The Pi bridges the Matter devices and watches a camera (a directory of frames).
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
    ("Garage-Pi", &["--capability", "vision", "--matter"]),
];

const MAC: usize = 0;
const DELL: usize = 1;
const PI: usize = 2;

/// The household's documents the RAG step searches (the repository's `examples/home`).
const DOCUMENTS: [(&str, &[u8]); 5] = [
    (
        "iot-security-policy.md",
        include_bytes!("../../../examples/home/iot-security-policy.md"),
    ),
    (
        "garage-camera-manual.md",
        include_bytes!("../../../examples/home/garage-camera-manual.md"),
    ),
    (
        "house-network.md",
        include_bytes!("../../../examples/home/house-network.md"),
    ),
    (
        "thermostat-guide.md",
        include_bytes!("../../../examples/home/thermostat-guide.md"),
    ),
    (
        "smoke-alarms.pdf",
        include_bytes!("../../../examples/home/smoke-alarms.pdf"),
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
    args: &[String],
    mesh: &str,
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
        .args(["--discovery", "loopback", "--mesh", mesh])
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
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(ready) = parse_ready(&line) {
                return Ok(ready);
            }
        }
        Err(anyhow!("{name} exited before it was ready"))
    })
    .await
    .map_err(|_| anyhow!("{name} did not become ready within 60 s"))
    .and_then(|r| r);
    // Keep reading stdout so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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

/// A running `atmosphere matter virtual-device`: its pairing code, port and reported changes.
struct Device {
    child: Child,
    port: u16,
    code: String,
    /// Every line the device printed after `ready` (`{"event":"on_off","on":true}`, …).
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Device {
    /// Waits up to `deadline` for the device itself to report its OnOff attribute as `on`.
    async fn reports_on(&mut self, on: bool, deadline: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let event = tokio::time::timeout_at(until, self.events.recv())
                .await
                .map_err(|_| anyhow!("the light did not report OnOff = {on} within {deadline:?}"))?
                .ok_or_else(|| anyhow!("the light exited"))?;
            if event["on"].as_bool() == Some(on) {
                return Ok(());
            }
        }
    }
}

async fn spawn_device(exe: &Path, dir: &Path, kind: &str, extra: &[&str]) -> Result<Device> {
    let state = dir.join(format!("{kind}-device"));
    std::fs::create_dir_all(&state)?;
    let port = std::net::UdpSocket::bind("[::]:0")
        .and_then(|s| s.local_addr())
        .context("no free UDP port for a Matter device")?
        .port();
    let log = std::fs::File::create(state.join("device.log"))?;
    let mut child = Command::new(exe)
        .args(["matter", "virtual-device", "--kind", kind, "--mdns", "off"])
        .args(["--port", &port.to_string()])
        .arg("--state-dir")
        .arg(&state)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the virtual {kind}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from the virtual {kind}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["event"] == "ready"
            {
                return Ok(value);
            }
        }
        Err(anyhow!("the virtual {kind} exited before it was ready"))
    })
    .await
    .map_err(|_| anyhow!("the virtual {kind} was not ready within 30 s"))??;
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = tx.send(value);
            }
        }
    });
    Ok(Device {
        child,
        port,
        code: ready["pairing_code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        events,
    })
}

/// One step of the script and how it went.
#[derive(Debug, Serialize)]
struct StepReport {
    step: usize,
    title: &'static str,
    requirement: &'static str,
    passed: bool,
    ms: u128,
    /// What was checked, or why it failed.
    detail: String,
}

/// The cache the setup scripts fill: `$ATMOSPHERE_CACHE`, else `~/.cache/atmosphere`.
fn cache_root() -> PathBuf {
    std::env::var_os("ATMOSPHERE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            default_dir()
                .parent()
                .map(Path::to_owned)
                .unwrap_or_default()
        })
}

/// Writes the demo's documents and the camera's first frame under `dir`; returns the documents'
/// directory and the Garage-Pi's config file.
fn prepare(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear the last run's state in {}", dir.display()))?;
    }
    let docs = dir.join("documents");
    std::fs::create_dir_all(&docs).with_context(|| format!("cannot create {}", docs.display()))?;
    for (name, bytes) in DOCUMENTS {
        std::fs::write(docs.join(name), bytes)?;
    }
    let frames = dir.join("garage-camera");
    std::fs::create_dir_all(&frames)?;
    let photo = cache_root().join("images").join("motorcycle_left.png");
    std::fs::copy(&photo, frames.join("frame-0001.png")).with_context(|| {
        format!(
            "the camera's picture {} is missing: run scripts/setup (it fetches the images)",
            photo.display()
        )
    })?;
    let config = dir.join("garage-pi.toml");
    std::fs::write(
        &config,
        format!(
            "# The Garage-Pi's camera: a directory of frames (the newest is the current one).\n\
             [vision]\ncameras = {{ garage_cam = {:?} }}\n",
            frames.display().to_string()
        ),
    )?;
    Ok((docs, config))
}

pub async fn run(args: DemoArgs, json: bool) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the atmosphere binary")?;
    let dir = args.data_dir.clone().unwrap_or_else(default_dir);
    let started = Instant::now();
    let say = |text: String| {
        if !json {
            println!("{text}");
        }
    };
    say(format!(
        "Setting up the home mesh on this machine (state and logs in {}):",
        dir.display()
    ));
    let (docs, garage_config) = prepare(&dir)?;
    let mut light = spawn_device(&exe, &dir, "light", &[]).await?;
    let sensor = spawn_device(&exe, &dir, "sensor", &["--celsius", "19.5"]).await?;
    say(format!(
        "  virtual Matter light on UDP {} and temperature sensor on UDP {} (rs-matter devices)",
        light.port, sensor.port
    ));

    let mut fleet = Fleet(Vec::new());
    for (i, (name, node_args)) in NODES.iter().enumerate() {
        let offset = u16::try_from(i).unwrap_or(0);
        let port = |base: u16| {
            if base == 0 {
                0
            } else {
                base.saturating_add(offset)
            }
        };
        let mut extra: Vec<String> = node_args.iter().map(|a| (*a).to_owned()).collect();
        if i == PI {
            extra.push("--config".into());
            extra.push(garage_config.display().to_string());
        }
        let node = spawn_node(
            &exe,
            &dir,
            name,
            &extra,
            &args.mesh,
            port(args.quic_port),
            port(args.api_port),
        )
        .await
        .with_context(|| {
            format!(
                "starting {name} (are ports {} / {} free? another demo may be running; \
                 choose others with --api-port / --quic-port, or 0 for free ones)",
                port(args.api_port),
                port(args.quic_port)
            )
        })?;
        say(format!(
            "  {:<12} id {}  QUIC {}  API http://{}",
            node.name,
            &node.ready.id.short()[..8],
            node.ready
                .quic
                .first()
                .map_or("-".into(), ToString::to_string),
            node.ready.api
        ));
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
            bail!(
                "the mesh did not converge within {} s; see the node logs: {}",
                args.timeout,
                logs(&fleet)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(format!(
        "All three nodes found each other by mDNS and converged in {:.1} s.",
        converged_at.as_secs_f64()
    ));

    // The household: the Pi commissions its devices, the Mac adds the documents (their chunks
    // spread over the nodes), the camera agent goes to sleep on the Pi.
    for (device, name) in [(&light, "garage light"), (&sensor, "garage thermometer")] {
        let body = serde_json::json!({
            "code": device.code,
            "address": format!("127.0.0.1:{}", device.port),
            "name": name,
            "room": "garage",
        });
        let _: serde_json::Value = clients[PI]
            .post("/v1/matter/commission", &body)
            .await
            .with_context(|| format!("Garage-Pi commissioning the {name}"))?;
        say(format!("Garage-Pi commissioned the {name} (room: garage)."));
    }
    say("Mac-Studio adds the household's documents to the mesh:".into());
    let response = clients[MAC]
        .stream(
            "/v1/knowledge/add",
            &atmosphere_node::api::KnowledgeAddRequest {
                collection: "home".into(),
                paths: vec![docs.clone()],
            },
        )
        .await?;
    crate::knowledge::follow(response, json, !json)
        .await
        .context("adding the documents")?;
    let monitor = atmosphere_agents::builtin()
        .into_iter()
        .find(|d| d.name == "vision_monitor")
        .ok_or_else(|| anyhow!("the built-in vision_monitor agent is missing"))?;
    clients[MAC]
        .deploy_agent(monitor, Some("Garage-Pi".into()))
        .await
        .context("deploying vision_monitor on Garage-Pi")?;
    say("vision_monitor deployed on Garage-Pi (asleep until woken).\n".into());

    let mut reports = Vec::new();
    let heal_timeout = Duration::from_secs(args.timeout);
    for step in 1..=9 {
        let (title, requirement) = STEPS[step - 1];
        say(format!("# {step}. {title}"));
        let began = Instant::now();
        let mut shown = String::new();
        let out = &mut shown;
        let outcome = match step {
            1 => step_status(&clients, out).await,
            2 => step_simple(&clients, out).await,
            3 => step_complex(&clients, out).await,
            4 => step_rag(&clients, out).await,
            5 => step_matter(&clients, &mut light, out).await,
            6 => step_agent(&clients, out).await,
            7 => step_offline(&clients, out).await,
            8 => step_token(&clients, out).await,
            _ => step_recovery(&clients, heal_timeout, out).await,
        };
        let ms = began.elapsed().as_millis();
        say(shown.trim_end().to_owned());
        let (passed, detail) = match outcome {
            Ok(checked) => (true, checked),
            Err(e) => (false, format!("{e:#}")),
        };
        say(format!(
            "{} {requirement} ({:.1} s){}\n",
            if passed { "✓" } else { "✗" },
            ms as f64 / 1000.0,
            if passed {
                String::new()
            } else {
                format!(": {detail}")
            }
        ));
        reports.push(StepReport {
            step,
            title,
            requirement,
            passed,
            ms,
            detail,
        });
    }
    drop(sensor);

    let passed = reports.iter().filter(|r| r.passed).count();
    if json {
        let report = serde_json::json!({
            "converged_ms": converged_at.as_millis(),
            "nodes": fleet.0.iter().map(|n| serde_json::json!({"name": n.name, "id": n.ready.id, "api": n.ready.api, "quic": n.ready.quic})).collect::<Vec<_>>(),
            "steps": reports,
            "passed": passed,
            "total_ms": started.elapsed().as_millis(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("| Step | Requirement                               | Result | Time    |");
        println!("|------|-------------------------------------------|--------|---------|");
        for r in &reports {
            println!(
                "| {:<4} | {:<41} | {:<6} | {:>6.1}s |",
                r.step,
                r.requirement,
                if r.passed { "pass" } else { "FAIL" },
                r.ms as f64 / 1000.0
            );
        }
        println!(
            "\n{passed}/{} passed in {:.1} s (node logs: {}).",
            reports.len(),
            started.elapsed().as_secs_f64(),
            logs(&fleet)
        );
    }
    if args.keep_running {
        if !json {
            println!(
                "\nThe mesh keeps running. The dashboard: http://{}/\nTry, in another terminal:\n  \
                 atmosphere --api {} mesh status\n  \
                 atmosphere --api {} intent \"turn off the garage lights\"\n  \
                 atmosphere --api {} node disconnect Dell-Server\n\
                 Ctrl-C stops it.",
                fleet.0[MAC].ready.api,
                fleet.0[MAC].ready.api,
                fleet.0[MAC].ready.api,
                fleet.0[MAC].ready.api
            );
        }
        crate::shutdown_signal().await;
    }
    fleet.stop().await;
    drop(light);
    ensure!(
        passed == reports.len(),
        "{} of {} steps failed",
        reports.len() - passed,
        reports.len()
    );
    Ok(())
}

/// The script's steps: title and the spec's success criterion.
const STEPS: [(&str, &str); 9] = [
    ("MESH DISCOVERY", "3+ nodes in mesh, all healthy"),
    ("SIMPLE ROUTING", "Simple intent routes locally"),
    (
        "SEMANTIC CAPABILITY MATCHING",
        "Complex intent routes to best node",
    ),
    ("RAG QUERY", "RAG query retrieves from multiple nodes"),
    ("MATTER DEVICE CONTROL", "Matter device responds to command"),
    ("AGENT ACTIVATION", "Agent wakes and executes"),
    ("OFFLINE RESILIENCE", "Mesh continues with node failure"),
    ("TOKEN VERIFICATION", "Token verifies without network"),
    ("MESH RECOVERY", "Mesh recovers when node returns"),
];

fn logs(fleet: &Fleet) -> String {
    fleet
        .0
        .iter()
        .map(|n| n.log.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn intent(client: &Client, text: &str) -> Result<IntentOutcome> {
    client
        .intent(&IntentRequest {
            text: text.into(),
            dry_run: false,
            max_tokens: Some(48),
            messages: None,
            temperature: None,
        })
        .await
}

fn answered_by(outcome: &IntentOutcome) -> Result<(&str, &str)> {
    let result = outcome
        .result
        .as_ref()
        .ok_or_else(|| anyhow!("no result: {}", outcome.decision.reason))?;
    Ok((result.node.as_str(), result.text.as_str()))
}

async fn step_status(clients: &[Client], out: &mut String) -> Result<String> {
    let status = clients[MAC].status().await?;
    *out += &format!("$ atmosphere mesh status\n{}", render::status(&status));
    let alive = status
        .nodes
        .iter()
        .filter(|n| n.status == Status::Alive)
        .count();
    ensure!(alive >= 3, "{alive} nodes alive, not 3");
    for (capability, nodes) in [
        ("llm", &["Mac-Studio", "Dell-Server"][..]),
        ("rag", &["Mac-Studio", "Dell-Server"][..]),
        ("vision", &["Garage-Pi"][..]),
        ("matter", &["Garage-Pi"][..]),
    ] {
        for node in nodes {
            ensure!(
                offers(&status, node, capability),
                "{node} does not offer {capability}"
            );
        }
    }
    Ok(
        "3 nodes alive; llm and rag on Mac-Studio and Dell-Server, vision and matter on Garage-Pi"
            .into(),
    )
}

fn offers(status: &MeshStatus, node: &str, capability: &str) -> bool {
    status
        .nodes
        .iter()
        .any(|n| n.name == node && n.capabilities.iter().any(|c| c.name == capability))
}

async fn step_simple(clients: &[Client], out: &mut String) -> Result<String> {
    let outcome = intent(&clients[MAC], "What's 2+2?").await?;
    *out += &format!(
        "$ atmosphere intent \"What's 2+2?\"\n{}",
        render::intent(&outcome)
    );
    let (node, text) = answered_by(&outcome)?;
    ensure!(node == "Mac-Studio", "answered by {node}, not locally");
    ensure!(!text.trim().is_empty(), "an empty answer");
    Ok(format!(
        "answered on Mac-Studio in {:.0} ms",
        outcome.total_ms
    ))
}

async fn step_complex(clients: &[Client], out: &mut String) -> Result<String> {
    let text = "Analyze the security implications of our network topology";
    let outcome = intent(&clients[MAC], text).await?;
    *out += &format!(
        "$ atmosphere intent \"{text}\"\n{}",
        render::intent(&outcome)
    );
    let (node, answer) = answered_by(&outcome)?;
    ensure!(
        node == "Dell-Server",
        "answered by {node}, not by the larger model"
    );
    ensure!(!answer.trim().is_empty(), "an empty answer");
    Ok(format!(
        "the larger model on Dell-Server answered in {:.0} ms",
        outcome.total_ms
    ))
}

async fn step_rag(clients: &[Client], out: &mut String) -> Result<String> {
    let text = "What does our IoT security policy say about cameras?";
    let outcome = intent(&clients[MAC], text).await?;
    *out += &format!(
        "$ atmosphere intent \"{text}\"\n{}",
        render::intent(&outcome)
    );
    let (_, answer) = answered_by(&outcome)?;
    ensure!(
        outcome.decision.capability == "rag",
        "routed to {}, not rag",
        outcome.decision.capability
    );
    let from = answer
        .lines()
        .find_map(|l| l.strip_prefix("Chunks retrieved from: "))
        .ok_or_else(|| anyhow!("no chunks were retrieved: {answer}"))?;
    let nodes = from.split(", ").count();
    ensure!(nodes >= 2, "chunks came from one node only ({from})");
    ensure!(
        answer.contains("iot-security-policy.md"),
        "the policy is not among the sources"
    );
    Ok(format!(
        "chunks from {nodes} nodes ({from}), the policy cited"
    ))
}

async fn step_matter(clients: &[Client], light: &mut Device, out: &mut String) -> Result<String> {
    let outcome = intent(&clients[MAC], "Turn on the garage lights").await?;
    *out += &format!(
        "$ atmosphere intent \"Turn on the garage lights\"\n{}",
        render::intent(&outcome)
    );
    let (node, _) = answered_by(&outcome)?;
    ensure!(node == "Garage-Pi", "done by {node}, not the bridge");
    light.reports_on(true, Duration::from_secs(10)).await?;
    Ok("the light itself reports OnOff = true (its attribute, read from the device)".into())
}

async fn step_agent(clients: &[Client], out: &mut String) -> Result<String> {
    let activation = clients[MAC]
        .invoke_agent("vision_monitor", "Check garage camera")
        .await?;
    *out += &format!(
        "$ atmosphere agent invoke vision_monitor --input \"Check garage camera\"\n{}",
        render::activation(&activation)
    );
    ensure!(
        activation.node == "Garage-Pi",
        "the agent ran on {}",
        activation.node
    );
    ensure!(
        activation
            .tools
            .iter()
            .any(|t| t.starts_with("vision:analyze")),
        "the agent called no vision:analyze ({:?})",
        activation.tools
    );
    let said = activation.replies.join(" ");
    ensure!(
        said.contains("vehicle"),
        "the analysis does not see the motorcycle: {said}"
    );
    Ok("the agent woke on Garage-Pi, analysed the camera and saw the vehicle".into())
}

async fn step_offline(clients: &[Client], out: &mut String) -> Result<String> {
    let dell = clients[MAC].control("disconnect", "Dell-Server").await?;
    *out += &format!(
        "$ atmosphere node disconnect Dell-Server\n{}",
        render::control(&dell)
    );
    // The mesh notices: Mac-Studio sees Dell-Server down.
    wait_for(
        Duration::from_secs(30),
        "Mac-Studio to see Dell-Server down",
        || async {
            let status = clients[MAC].status().await.ok()?;
            status
                .nodes
                .iter()
                .any(|n| n.name == "Dell-Server" && n.status != Status::Alive)
                .then_some(())
        },
    )
    .await?;
    let text = "What's the weather like?";
    let outcome = intent(&clients[MAC], text).await?;
    *out += &format!(
        "\n$ atmosphere intent \"{text}\"\n{}",
        render::intent(&outcome)
    );
    let (node, answer) = answered_by(&outcome)?;
    ensure!(node == "Mac-Studio", "answered by {node}");
    ensure!(!answer.trim().is_empty(), "an empty answer");
    Ok("Dell-Server down; Mac-Studio's own model answered".into())
}

async fn step_token(clients: &[Client], out: &mut String) -> Result<String> {
    // On Dell-Server, whose network is cut since step 7.
    let status = clients[DELL].auth_status().await?;
    *out += &format!(
        "$ atmosphere auth verify   # on Dell-Server, its network cut\n{}",
        render::auth_status(&status)
    );
    ensure!(
        status.token_status == "valid",
        "the token is {}",
        status.token_status
    );
    ensure!(status.verified_offline, "not verified offline");
    Ok(format!(
        "valid, checked in {} µs with no network",
        status.verify_micros
    ))
}

async fn step_recovery(clients: &[Client], deadline: Duration, out: &mut String) -> Result<String> {
    let before = clients[DELL].status().await?.rounds;
    let began = Instant::now();
    let dell = clients[MAC].control("reconnect", "Dell-Server").await?;
    *out += &format!(
        "$ atmosphere node reconnect Dell-Server\n{}",
        render::control(&dell)
    );
    wait_for(deadline, "every node to see all three healthy", || async {
        all_alive(clients).await.then_some(())
    })
    .await?;
    let rounds = clients[DELL].status().await?.rounds.saturating_sub(before);
    wait_for(deadline, "Mac-Studio's routes to Dell-Server", || async {
        let routes = clients[MAC].routes().await.ok()?;
        routes
            .iter()
            .any(|r| r.provider_name == "Dell-Server")
            .then_some(())
    })
    .await?;
    let routes = clients[MAC].routes().await?;
    *out += &format!(
        "→ Gossip sync: {rounds} rounds ({:.1} s)\n→ Gradient tables: updated ({} routes on Mac-Studio)\n",
        began.elapsed().as_secs_f64(),
        routes.len()
    );
    let status = clients[MAC].status().await?;
    *out += &format!("$ atmosphere mesh status\n{}", render::status(&status));
    Ok(format!(
        "healed in {rounds} gossip rounds, routes to Dell-Server back"
    ))
}

/// Polls `check` until it answers or `deadline` passes.
async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await.is_some() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("gave up after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when every node sees all three alive.
async fn all_alive(clients: &[Client]) -> bool {
    for client in clients {
        let Ok(status) = client.status().await else {
            return false;
        };
        if status
            .nodes
            .iter()
            .filter(|n| n.status == Status::Alive)
            .count()
            != NODES.len()
        {
            return false;
        }
    }
    true
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

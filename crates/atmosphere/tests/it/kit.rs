//! The process test kit: start `atmosphere serve` as real OS processes, talk to their APIs, kill
//! and restart them, wait for conditions with deadlines.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use atmosphere_mesh::testkit::eventually;
use atmosphere_mesh::{MeshStatus, Status};
use atmosphere_node::daemon::Ready;
use atmosphere_proto::NodeId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_atmosphere");

/// A mesh name unique to this test run, so parallel tests never see each other over mDNS.
pub fn unique_mesh(tag: &str) -> String {
    format!("test-{tag}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish() % 1_000_000
}

/// A node process.
pub struct Proc {
    pub name: String,
    pub data_dir: PathBuf,
    pub child: Child,
    pub ready: Ready,
    pub args: Vec<String>,
}

impl Proc {
    pub fn id(&self) -> NodeId {
        self.ready.id
    }

    pub fn api(&self) -> String {
        self.ready.api.to_string()
    }

    /// `ID@ADDR` for other nodes' `--bootstrap`.
    pub fn bootstrap_line(&self) -> String {
        format!("{}@{}", self.ready.id, self.ready.quic[0])
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Starts the same node again (same data dir, same arguments), killing it first if it runs.
    pub async fn restart(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill().await;
        }
        let again = start_with(&self.name, &self.data_dir, &self.args, None).await;
        *self = again;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `atmosphere serve` with loopback listeners on free ports plus `extra` arguments.
pub async fn start(name: &str, data_dir: &Path, extra: &[String]) -> Proc {
    start_with(name, data_dir, extra, None).await
}

/// Like [`start`], optionally prefixed by a wrapper (e.g. `ip netns exec NS`).
pub async fn start_with(
    name: &str,
    data_dir: &Path,
    extra: &[String],
    wrapper: Option<&[String]>,
) -> Proc {
    let mut args: Vec<String> = vec!["--name".into(), name.into()];
    args.push("--data-dir".into());
    args.push(data_dir.display().to_string());
    args.extend(extra.iter().cloned());
    let mut command = match wrapper {
        Some(wrapper) => {
            let mut command = Command::new(&wrapper[0]);
            command.args(&wrapper[1..]).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    command
        .arg("serve")
        .args(&args)
        .env(
            "ATMOSPHERE_LOG",
            std::env::var("ATMOSPHERE_TEST_LOG").unwrap_or_else(|_| "warn,mdns_sd=error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("spawn atmosphere serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(value) => value,
                Err(_) => continue,
            };
            if value["event"] == "ready" {
                return serde_json::from_value::<Ready>(value).unwrap();
            }
        }
        panic!("{name} exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("{name} not ready within 30 s"));
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let stored: Vec<String> = extra.to_vec();
    Proc {
        name: name.into(),
        data_dir: data_dir.to_owned(),
        child,
        ready,
        args: stored,
    }
}

/// Arguments for a node on 127.0.0.1 with free ports.
pub fn loopback_args(
    mesh: &str,
    discovery: &str,
    capabilities: &[&str],
    bootstrap: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--discovery",
        discovery,
        "--mesh",
        mesh,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for capability in capabilities {
        args.push("--capability".into());
        args.push(capability.to_string());
    }
    for peer in bootstrap {
        args.push("--bootstrap".into());
        args.push(peer.clone());
    }
    args
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// GET `url` as JSON; `None` on any failure (for use inside [`eventually`]).
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    http().get(url).send().await.ok()?.json().await.ok()
}

/// POST `body` to `url`; the status and the JSON answer.
pub async fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let response = http().post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Posts `body` to `url` and reads the answer's newline-delimited JSON to its end (a transfer's
/// progress); `on_line` sees every line and may act on it. Returns the last line.
pub async fn follow_lines(
    url: &str,
    body: &serde_json::Value,
    mut on_line: impl FnMut(&serde_json::Value),
) -> serde_json::Value {
    let mut response = http()
        .post(url)
        .timeout(Duration::from_secs(600))
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let mut pending = Vec::new();
    let mut last = serde_json::Value::Null;
    while let Some(chunk) = response.chunk().await.unwrap() {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            last = serde_json::from_slice(&line).unwrap();
            on_line(&last);
        }
    }
    last
}

pub async fn status(api: &str) -> Option<MeshStatus> {
    http()
        .get(format!("http://{api}/v1/mesh/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

pub fn status_of(status: &MeshStatus, id: NodeId) -> Option<Status> {
    status.nodes.iter().find(|n| n.id == id).map(|n| n.status)
}

/// Waits until the node at each API sees every id alive; on timeout, fails with what each node
/// saw instead.
pub async fn all_alive(apis: &[String], ids: &[NodeId], deadline: Duration) {
    let view = || async {
        let mut seen = Vec::new();
        for api in apis {
            let statuses: Vec<_> = match status(api).await {
                Some(status) => ids.iter().map(|id| status_of(&status, *id)).collect(),
                None => Vec::new(),
            };
            seen.push(statuses);
        }
        seen
    };
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        let seen = view().await;
        if seen
            .iter()
            .all(|s| s.len() == ids.len() && s.iter().all(|s| *s == Some(Status::Alive)))
        {
            return;
        }
        if tokio::time::Instant::now() > give_up {
            panic!(
                "timed out after {deadline:?} waiting for every node to see every node alive \
                 (ids {ids:?}); each API saw: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /v1/auth/status` of the node at `api`.
pub async fn auth(api: &str) -> atmosphere_node::trust::AuthStatus {
    http()
        .get(format!("http://{api}/v1/auth/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the node at `api` has run `n` more gossip rounds: a positive signal that time
/// passed.
pub async fn rounds_pass(api: &str, n: u64) {
    let start = status(api).await.unwrap().rounds;
    eventually(Duration::from_secs(60), "gossip rounds pass", || async {
        (status(api).await?.rounds >= start + n).then_some(())
    })
    .await;
}

/// Runs the CLI; returns stdout, failing the test on a non-zero exit.
pub fn cli(args: &[&str]) -> String {
    let output = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "atmosphere {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs the CLI expecting failure; returns stderr.
pub fn cli_fails(args: &[&str]) -> String {
    let output = std::process::Command::new(BIN).args(args).output().unwrap();
    assert!(!output.status.success(), "atmosphere {args:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

/// Makes `nodes[0]` the authority of a new mesh and joins the others with tokens it issues.
pub fn form_mesh(nodes: &[&Proc]) {
    let authority = nodes[0].api();
    cli(&["--api", &authority, "mesh", "init", "--name", "test"]);
    for node in &nodes[1..] {
        join_with_token(&authority, node, "24h");
    }
}

/// Issues a token for `node` on `authority` with lifetime `ttl` and joins `node` with it.
pub fn join_with_token(authority: &str, node: &Proc, ttl: &str) {
    let id = node.id().to_string();
    let token = cli(&[
        "--api",
        authority,
        "token",
        "issue",
        "--node-key",
        &id,
        "--name",
        &node.name,
        "--ttl",
        ttl,
    ]);
    cli(&["--api", &node.api(), "mesh", "join", token.trim()]);
}

/// Starts nodes named `names` on 127.0.0.1 in `dir` (discovery off): the first alone, the others
/// with it as their bootstrap peer. No mesh is formed yet (see [`form_mesh`]).
pub async fn seeded(dir: &Path, mesh: &str, names: &[&str]) -> Vec<Proc> {
    let first = start(
        names[0],
        &dir.join(names[0]),
        &loopback_args(mesh, "off", &[], &[]),
    )
    .await;
    let seed = vec![first.bootstrap_line()];
    let mut nodes = vec![first];
    for name in &names[1..] {
        nodes.push(
            start(
                name,
                &dir.join(name),
                &loopback_args(mesh, "off", &[], &seed),
            )
            .await,
        );
    }
    nodes
}

/// [`seeded`], then [`form_mesh`], then waits until everyone sees everyone alive.
pub async fn seeded_mesh(dir: &Path, mesh: &str, names: &[&str]) -> Vec<Proc> {
    let nodes = seeded(dir, mesh, names).await;
    form_mesh(&nodes.iter().collect::<Vec<_>>());
    let apis: Vec<String> = nodes.iter().map(Proc::api).collect();
    let ids: Vec<NodeId> = nodes.iter().map(Proc::id).collect();
    all_alive(&apis, &ids, Duration::from_secs(20)).await;
    nodes
}

/// A lone node (its own mesh name, no discovery) serving the cached SmolLM2 and MiniLM.
pub async fn start_with_models(name: &str, data_dir: &Path) -> Proc {
    let mut args = loopback_args(&unique_mesh(name), "off", &[], &[]);
    // No warm-up: tests run many nodes on 2 cores; speed is measured from their real requests.
    args.extend(["--llm", "auto", "--embeddings", "auto", "--no-warmup"].map(String::from));
    start(name, data_dir, &args).await
}

/// A one-shot HTTP receiver on 127.0.0.1: hands over the first request's body.
pub async fn webhook_receiver() -> (String, tokio::sync::oneshot::Receiver<serde_json::Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let body = loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break body[..length].to_owned();
                }
            }
            assert!(n > 0, "connection closed early");
        };
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let _ = tx.send(serde_json::from_str(&body).unwrap());
    });
    (url, rx)
}

/// What a wave of concurrent requests gave.
#[derive(Debug, Clone)]
pub struct Wave {
    pub sent: usize,
    /// Requests answered with success and a result; the rest are in `failures`.
    pub answered: usize,
    pub failures: Vec<String>,
    /// Latency of every answered request, sorted, in milliseconds.
    pub latencies_ms: Vec<f64>,
    pub elapsed: Duration,
}

impl Wave {
    pub fn percentile(&self, p: f64) -> f64 {
        let sorted = &self.latencies_ms;
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }

    pub fn per_second(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Intents a node answers without a model: the machines' health, worded many ways.
const LOAD_INTENTS: [&str; 8] = [
    "how much free memory is there on",
    "what's the cpu usage of",
    "how full is the disk of",
    "is everything healthy on",
    "show me the status of",
    "what's the load on",
    "how long has it been running,",
    "is any machine overloaded near",
];

/// One request of a load wave: the status and the JSON answer, or why there was none.
async fn post_for_load(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Result<(reqwest::StatusCode, serde_json::Value), String> {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Sends `n` requests at once over the nodes at `apis` (round robin): even ones are intents
/// (each worded differently, so each is embedded and routed afresh), odd ones are `system:health`
/// tool calls run on the *next* node — work that crosses the mesh. Every request must come back
/// once, with its own answer.
pub async fn load_wave(apis: &[String], names: &[String], n: usize) -> Wave {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, api) = (client.clone(), apis[i % apis.len()].clone());
        let next = names[(i + 1) % names.len()].clone();
        tasks.spawn(async move {
            let sent = std::time::Instant::now();
            let outcome: Result<(), String> = async {
                if i % 2 == 0 {
                    let text = format!("{} machine {i}?", LOAD_INTENTS[i % LOAD_INTENTS.len()]);
                    let url = format!("http://{api}/v1/intent");
                    let (status, body) =
                        post_for_load(&client, &url, serde_json::json!({"text": text})).await?;
                    if !status.is_success() || body["result"]["text"].as_str().is_none() {
                        return Err(format!("intent {i}: {status} {body}"));
                    }
                    if body["decision"]["text"] != text.as_str() {
                        return Err(format!("intent {i} answered for another request: {body}"));
                    }
                } else {
                    let url = format!("http://{api}/v1/tools/system:health/call");
                    let call = serde_json::json!({"args": {}, "node": next});
                    let (status, body) = post_for_load(&client, &url, call).await?;
                    if !status.is_success() || body["node"] != next.as_str() {
                        return Err(format!("tool call {i}: {status} {body}"));
                    }
                }
                Ok(())
            }
            .await;
            (outcome, sent.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut wave = Wave {
        sent: n,
        answered: 0,
        failures: Vec::new(),
        latencies_ms: Vec::with_capacity(n),
        elapsed: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((Ok(()), ms)) => {
                wave.answered += 1;
                wave.latencies_ms.push(ms);
            }
            Ok((Err(e), _)) => wave.failures.push(e),
            Err(e) => wave.failures.push(format!("task: {e}")),
        }
    }
    wave.elapsed = started.elapsed();
    wave.latencies_ms.sort_by(f64::total_cmp);
    wave
}

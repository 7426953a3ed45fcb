//! The Matter bridge across real processes: the project's virtual light (a real rs-matter
//! device) is commissioned by node C's controller; "Turn on the garage lights" said to node A
//! routes to C, which switches the light — the device itself reports ON — and the state is
//! visible from A. Bad input: a wrong setup code, an unknown device, an unsupported action.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::kit::{self, BIN, cli, cli_fails, post_json};

/// A running `atmosphere matter virtual-device`.
pub(crate) struct Virtual {
    child: tokio::process::Child,
    pub(crate) ready: Value,
    /// Its on/off events.
    changes: tokio::sync::mpsc::UnboundedReceiver<bool>,
    /// Lines to it: changes made at the device (`on`, `off`, `celsius 23.5`).
    stdin: tokio::process::ChildStdin,
}

impl Virtual {
    async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    pub(crate) async fn next_change(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(10), self.changes.recv())
            .await
            .expect("the light reported no change")
            .expect("the light exited")
    }
}

/// Starts a virtual light (port 0: a free one) without mDNS, or with `wrapper` in front (e.g.
/// `nsenter` into a network namespace) and the extra arguments.
async fn virtual_light(state_dir: &std::path::Path, port: u16) -> Virtual {
    virtual_device_with(state_dir, port, None, &["--mdns", "off"]).await
}

pub(crate) async fn virtual_device_with(
    state_dir: &std::path::Path,
    port: u16,
    wrapper: Option<&[String]>,
    extra: &[&str],
) -> Virtual {
    let port = if port == 0 {
        std::net::UdpSocket::bind("[::]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        port
    };
    let mut command = match wrapper {
        Some(wrapper) => {
            let mut command = tokio::process::Command::new(&wrapper[0]);
            command.args(&wrapper[1..]).arg(BIN);
            command
        }
        None => tokio::process::Command::new(BIN),
    };
    let mut child = command
        .args(["matter", "virtual-device", "--kind", "light", "--port"])
        .arg(port.to_string())
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the light exited");
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["event"] == "ready"
            {
                return value;
            }
        }
    })
    .await
    .expect("the light was not ready within 30 s");
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && let Some(on) = value["on"].as_bool()
            {
                let _ = tx.send(on);
            }
        }
    });
    Virtual {
        child,
        ready,
        changes,
        stdin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_on_one_node_switches_the_light_another_node_bridges() {
    let dir = tempfile::tempdir().unwrap();
    let mut light = virtual_light(&dir.path().join("light"), 0).await;
    let port = light.ready["port"].as_u64().unwrap() as u16;
    let code = light.ready["pairing_code"].as_str().unwrap().to_owned();

    let mesh = kit::unique_mesh("matter");
    let a = kit::start(
        "a",
        &dir.path().join("a"),
        &kit::loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let seed = vec![a.bootstrap_line()];
    let b = kit::start(
        "b",
        &dir.path().join("b"),
        &kit::loopback_args(&mesh, "off", &[], &seed),
    )
    .await;
    let mut c_args = kit::loopback_args(&mesh, "off", &[], &seed);
    c_args.push("--matter".into());
    let c = kit::start("c", &dir.path().join("c"), &c_args).await;
    kit::form_mesh(&[&a, &b, &c]);
    let apis = [a.api(), b.api(), c.api()];
    kit::all_alive(&apis, &[a.id(), b.id(), c.id()], Duration::from_secs(20)).await;

    // C commissions the light with the code it printed.
    let address = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let out = cli(&[
        "--api",
        &apis[2],
        "--json",
        "matter",
        "commission",
        &code,
        "--address",
        &address,
        "--name",
        "ceiling lamp",
        "--room",
        "garage",
    ]);
    let commissioned: Value = serde_json::from_str(&out).unwrap();
    eprintln!("commissioning took {:?}", started.elapsed());
    assert_eq!(commissioned["state"]["on"], false, "{commissioned}");
    assert_eq!(
        (&commissioned["kind"], &commissioned["room"]),
        (&json!("light"), &json!("garage")),
        "{commissioned}"
    );

    // Said to A, done by C's bridge (the request names the room and the kind); the light
    // itself reports ON.
    let started = std::time::Instant::now();
    let (status, outcome) = post_json(
        &format!("http://{}/v1/intent", apis[0]),
        &json!({"text": "Turn on the garage lights"}),
    )
    .await;
    eprintln!("intent to light took {:?}", started.elapsed());
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["decision"]["capability"], "matter", "{outcome}");
    assert_eq!(outcome["result"]["node"], "c", "{outcome}");
    assert!(
        outcome["result"]["text"]
            .as_str()
            .unwrap()
            .contains("ceiling lamp is now ON"),
        "{outcome}"
    );
    assert!(light.next_change().await, "the device reports ON");

    // The state, from A, through C's tool.
    let (status, listed) = post_json(
        &format!("http://{}/v1/tools/matter:list_devices/call", apis[0]),
        &json!({"args": {}}),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["node"], "c");
    assert_eq!(
        listed["output"]["devices"][0]["state"]["on"], true,
        "{listed}"
    );

    // Off again in other words (the router is warm now: this is the steady-state latency).
    let started = std::time::Instant::now();
    let (_, outcome) = post_json(
        &format!("http://{}/v1/intent", apis[0]),
        &json!({"text": "switch the ceiling lamp off"}),
    )
    .await;
    eprintln!("second intent took {:?}", started.elapsed());
    assert!(
        outcome["result"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("is now OFF"),
        "{outcome}"
    );
    assert!(!light.next_change().await);
    // By name on C.
    let out = cli(&["--api", &apis[2], "matter", "set", "ceiling lamp", "toggle"]);
    assert!(out.contains("ceiling lamp is ON"), "{out}");
    assert!(light.next_change().await);
    let out = cli(&["--api", &apis[2], "matter", "list"]);
    assert!(
        out.contains("ceiling lamp") && out.contains("garage") && out.contains("ON"),
        "{out}"
    );

    // Bad input.
    let err = cli_fails(&["--api", &apis[2], "matter", "set", "porch light", "on"]);
    assert!(
        err.contains("no Matter device called \"porch light\""),
        "{err}"
    );
    let err = cli_fails(&["--api", &apis[2], "matter", "set", "ceiling lamp", "dim"]);
    assert!(err.contains("unknown action"), "{err}");
    let other = virtual_light(&dir.path().join("other"), 0).await;
    let other = format!("127.0.0.1:{}", other.ready["port"]);
    let err = cli_fails(&[
        "--api",
        &apis[2],
        "matter",
        "commission",
        "11111111",
        "--address",
        &other,
        "--name",
        "porch light",
    ]);
    assert!(err.contains("refused the setup code"), "{err}");
    let err = cli_fails(&["--api", &apis[0], "matter", "set", "ceiling lamp", "on"]);
    assert!(err.contains("runs no Matter controller"), "{err}");

    // Every node lists the light, its bridge and its state, from gossip.
    let a_api = apis[0].clone();
    kit::eventually(
        Duration::from_secs(15),
        "A lists the light ON via c",
        || {
            let a_api = a_api.clone();
            async move {
                let devices = kit::get_json(&format!("http://{a_api}/v1/matter/devices")).await?;
                let light = devices.as_array()?.first()?.clone();
                (light["bridge"] == "c" && light["state"]["on"] == true).then_some(())
            }
        },
    )
    .await;
    let out = cli(&["--api", &apis[1], "matter", "list"]);
    assert!(
        out.contains("ceiling lamp") && out.contains("via c"),
        "{out}"
    );

    // Someone flips the wall switch: the change shows on A without anyone asking the mesh.
    light.say("off").await;
    assert!(!light.next_change().await);
    kit::eventually(
        Duration::from_secs(20),
        "A sees the light turned OFF at the switch",
        || {
            let a_api = a_api.clone();
            async move {
                let devices = kit::get_json(&format!("http://{a_api}/v1/matter/devices")).await?;
                let light = devices.as_array()?.first()?.clone();
                (light["state"]["on"] == false).then_some(())
            }
        },
    )
    .await;

    // The light vanishes under a command: a clear error, soon, and nothing stuck — the bridge
    // still lists, and switches the light once it is back.
    let c_api = apis[2].clone();
    let command = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["--api", &c_api, "matter", "set", "ceiling lamp", "on"])
            .output()
            .unwrap()
    });
    light.child.kill().await.unwrap();
    let _ = command.await.unwrap();
    let started = std::time::Instant::now();
    let err = cli_fails(&["--api", &apis[2], "matter", "set", "ceiling lamp", "on"]);
    eprintln!(
        "a vanished light failed the command in {:?}",
        started.elapsed()
    );
    assert!(err.contains("did not answer"), "{err}");
    let out = cli(&["--api", &apis[2], "matter", "list"]);
    assert!(out.contains("ceiling lamp"), "{out}");
    let mut light = virtual_light(&dir.path().join("light"), port).await;
    assert_eq!(light.ready["commissioned"], true, "{}", light.ready);
    let out = cli(&["--api", &apis[2], "matter", "set", "ceiling lamp", "on"]);
    assert!(out.contains("ceiling lamp is ON"), "{out}");
    assert!(light.next_change().await);

    // C restarts: its fabric and devices come back from its database; the light is reached by
    // CASE again without commissioning.
    let mut c = c;
    c.restart().await;
    let out = cli(&["--api", &c.api(), "matter", "set", "ceiling lamp", "off"]);
    assert!(out.contains("ceiling lamp is OFF"), "{out}");
    assert!(!light.next_change().await);
    let _ = b;
}

/// Where `scripts/fetch-matterjs` installs matter.js.
fn matterjs_dir() -> std::path::PathBuf {
    let cache = std::env::var_os("ATMOSPHERE_CACHE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/atmosphere")
        });
    cache.join("matterjs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_built_with_matter_js_is_commissioned_and_switched_by_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let js = matterjs_dir();
    assert!(
        js.join("node_modules/@matter/main").is_dir(),
        "matter.js is not installed in {}: run scripts/fetch-matterjs",
        js.display()
    );
    // The fixture as committed (setup copies it too; a test run alone must not use a stale one).
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/matterjs/light.mjs"
        ),
        js.join("light.mjs"),
    )
    .unwrap();
    let port = std::net::UdpSocket::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new("node")
        .arg(js.join("light.mjs"))
        .args([port.to_string(), "20202021".into(), "3840".into()])
        .current_dir(&js)
        .env("MATTER_STORAGE_PATH", dir.path().join("js"))
        .env("MATTER_LOG_LEVEL", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) is needed: scripts/setup installs it");
    let mut switch = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the matter.js light exited");
            if line.contains("\"ready\"") {
                return;
            }
        }
    })
    .await
    .expect("the matter.js light was not ready within 60 s");
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && let Some(on) = value["on"].as_bool()
            {
                let _ = tx.send(on);
            }
        }
    });

    let mut args = kit::loopback_args(&kit::unique_mesh("matterjs"), "off", &[], &[]);
    args.push("--matter".into());
    let bridge = kit::start("bridge", &dir.path().join("bridge"), &args).await;
    let api = bridge.api();
    let address = format!("127.0.0.1:{port}");
    let out = cli(&[
        "--api",
        &api,
        "--json",
        "matter",
        "commission",
        "20202021",
        "--address",
        &address,
        "--name",
        "js light",
    ]);
    let device: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(device["state"]["on"], false, "{device}");
    let out = cli(&["--api", &api, "matter", "set", "js light", "on"]);
    assert!(out.contains("js light is ON"), "{out}");
    let on = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("the matter.js light reported no change");
    assert_eq!(on, Some(true), "the matter.js device itself reports ON");
    let out = cli(&["--api", &api, "matter", "set", "js light", "off"]);
    assert!(out.contains("js light is OFF"), "{out}");
    assert_eq!(changes.recv().await, Some(false));

    // Switched at the device: matter.js reports it on our subscription; nobody asks.
    use tokio::io::AsyncWriteExt;
    switch.write_all(b"on\n").await.unwrap();
    switch.flush().await.unwrap();
    assert_eq!(changes.recv().await, Some(true));
    kit::eventually(
        Duration::from_secs(10),
        "the bridge hears the matter.js light went ON",
        || {
            let api = api.clone();
            async move {
                let devices = kit::get_json(&format!("http://{api}/v1/matter/devices")).await?;
                (devices.as_array()?.first()?["state"]["on"] == true).then_some(())
            }
        },
    )
    .await;
}

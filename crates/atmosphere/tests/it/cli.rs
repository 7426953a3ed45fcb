//! The CLI against real nodes: every command, text and `--json`, and its errors.

use std::time::Duration;

use atmosphere_mesh::{MeshStatus, NodeInfo, RouteInfo, Status};

use crate::kit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_peers_routes_ping_disconnect_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("cli");
    let mac = start(
        "Mac-Studio",
        &dir.path().join("mac"),
        &loopback_args(&mesh, "off", &["llm/7B", "rag"], &[]),
    )
    .await;
    let seed = vec![mac.bootstrap_line()];
    let dell = start(
        "Dell-Server",
        &dir.path().join("dell"),
        &loopback_args(&mesh, "off", &["llm/70B", "rag"], &seed),
    )
    .await;
    let pi = start(
        "Garage-Pi",
        &dir.path().join("pi"),
        &loopback_args(&mesh, "off", &["matter", "vision"], &seed),
    )
    .await;
    form_mesh(&[&mac, &dell, &pi]);
    let ids = [mac.id(), dell.id(), pi.id()];
    let apis = [mac.api(), dell.api(), pi.api()];
    all_alive(&apis, &ids, Duration::from_secs(20)).await;
    let api = mac.api();

    let text = cli(&["--api", &api, "mesh", "status"]);
    assert!(
        text.starts_with("Nodes: 3 (Mac-Studio, Dell-Server, Garage-Pi)"),
        "{text}"
    );
    assert!(
        text.contains("  - llm: Mac-Studio (7B), Dell-Server (70B)"),
        "{text}"
    );
    assert!(text.contains("Status: Healthy"), "{text}");
    let view: MeshStatus =
        serde_json::from_str(&cli(&["--api", &api, "--json", "mesh", "status"])).unwrap();
    assert_eq!(view.nodes.len(), 3);

    let peers: Vec<NodeInfo> =
        serde_json::from_str(&cli(&["--api", &api, "mesh", "peers", "--json"])).unwrap();
    assert_eq!(peers.len(), 2);
    assert!(cli(&["--api", &api, "mesh", "peers"]).contains("Garage-Pi"));

    let routes: Vec<RouteInfo> = eventually(
        Duration::from_secs(10),
        "routes to all capabilities",
        || async {
            let routes: Vec<RouteInfo> =
                serde_json::from_str(&cli(&["--api", &api, "mesh", "routes", "--json"])).ok()?;
            (routes.iter().any(|r| r.capability.name == "matter")).then_some(routes)
        },
    )
    .await;
    let llm: Vec<&RouteInfo> = routes
        .iter()
        .filter(|r| r.capability.name == "llm")
        .collect();
    assert_eq!(llm[0].provider_name, "Mac-Studio", "local first");
    assert!(cli(&["--api", &api, "mesh", "routes"]).contains("matter"));

    let ping = cli(&["--api", &api, "mesh", "ping", "garage-pi"]);
    assert!(ping.starts_with("Reached"), "{ping}");
    let id = cli(&["--api", &api, "node", "id", "--json"]);
    assert!(id.contains(&mac.id().to_string()));

    // Step 7: disconnect Dell-Server; the others see it down; requests to it fail cleanly.
    let out = cli(&["--api", &api, "node", "disconnect", "Dell-Server"]);
    assert!(out.contains("dropped its links"), "{out}");
    let dell_id = dell.id();
    eventually(Duration::from_secs(30), "Dell-Server seen down", || async {
        let status = status(&api).await?;
        (status_of(&status, dell_id) == Some(Status::Down)).then_some(())
    })
    .await;
    let text = cli(&["--api", &api, "mesh", "status"]);
    assert!(
        text.contains("Status: Degraded (Dell-Server down)"),
        "{text}"
    );
    // Step 9: reconnect; all healthy again.
    cli(&["--api", &api, "node", "reconnect", "Dell-Server"]);
    all_alive(&apis, &ids, Duration::from_secs(20)).await;
}

#[test]
fn errors_are_clear_and_help_is_there() {
    let err = cli_fails(&["--api", "127.0.0.1:9", "mesh", "status"]);
    assert!(
        err.contains("cannot reach a node API at 127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("atmosphere serve"), "{err}");
    let help = cli(&["--help"]);
    for command in ["serve", "mesh", "node", "demo", "config"] {
        assert!(help.contains(command), "{help}");
    }
    let example = cli(&["config", "example"]);
    assert!(example.contains("[gossip]"));
    let err = cli_fails(&[
        "serve",
        "--bootstrap",
        "nonsense",
        "--data-dir",
        "/tmp/atmosphere-test-bad-peer",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("NODE_ID@IP:PORT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_names_fail_with_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        "solo",
        dir.path(),
        &loopback_args(&unique_mesh("solo"), "off", &[], &[]),
    )
    .await;
    let err = cli_fails(&["--api", &node.api(), "node", "disconnect", "Nowhere"]);
    assert!(err.contains("Nowhere"), "{err}");
    assert!(err.contains("unknown_node"), "{err}");
}

#[test]
fn the_binary_answers_a_prompt_and_embeds_text_with_real_models() {
    let out = cli(&[
        "llm",
        "chat",
        "What is the capital of France? Answer in one word.",
        "--max-tokens",
        "16",
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        answer["text"].as_str().unwrap().contains("Paris"),
        "{answer}"
    );
    assert_eq!(answer["model"]["size_label"], "135M");
    let out = cli(&[
        "llm",
        "embed",
        "--json",
        "turn on the garage lights",
        "switch the garage lights on",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let a: Vec<f64> = serde_json::from_value(rows[0]["embedding"].clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(rows[1]["embedding"].clone()).unwrap();
    assert_eq!(a.len(), 384);
    let cosine: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!(cosine > 0.7, "{cosine}");
    let err = cli_fails(&["llm", "chat", "hi", "--model", "/nonexistent.gguf"]);
    assert!(err.contains("scripts/fetch-models"), "{err}");
}

#[test]
fn model_pack_and_verify_name_the_damaged_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("weights.gguf");
    std::fs::write(&model, vec![7u8; 5 * 1024 * 1024]).unwrap();
    let package = dir.path().join("pkg");
    // No node to seal it: the package is packed, and the error says how to seal it later.
    let err = cli_fails(&[
        "--api",
        "127.0.0.1:9",
        "model",
        "pack",
        &model.display().to_string(),
        "--name",
        "weights",
        "-o",
        &package.display().to_string(),
    ]);
    assert!(err.contains("atmosphere model seal"), "{err}");
    let out = cli(&["model", "verify", &package.display().to_string()]);
    assert!(out.contains("all 2 chunks"), "{out}");
    assert!(out.contains("NOT sealed"), "{out}");
    let copy = package.join("weights.gguf");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[4 * 1024 * 1024 + 1] = 8;
    std::fs::write(&copy, bytes).unwrap();
    let err = cli_fails(&["model", "verify", &package.display().to_string()]);
    assert!(err.contains("chunk 1"), "{err}");
}

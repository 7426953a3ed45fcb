//! Agents across real processes: deployed from one node onto others, listed everywhere, woken by
//! events and by invocation; an anomaly found by one agent wakes another that notifies.

use std::time::Duration;

use crate::kit::*;

async fn publish(api: &str, value: f64) -> serde_json::Value {
    let event = serde_json::json!({
        "kind": "sensor.reading", "source": "garage-sensor", "severity": "info",
        "summary": "", "data": {"series": "garage_temp", "value": value}, "at": 0
    });
    let (status, body) = post_json(&format!("http://{api}/v1/events"), &event).await;
    assert!((200..300).contains(&status), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_deploy_across_nodes_wake_on_events_and_on_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("agents");
    let hall = start(
        "hall",
        &dir.path().join("hall"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let seed = vec![hall.bootstrap_line()];
    let garage = start(
        "garage",
        &dir.path().join("garage"),
        &loopback_args(&mesh, "off", &[], &seed),
    )
    .await;
    let (url, hook) = webhook_receiver().await;
    let config = dir.path().join("porch.toml");
    std::fs::write(&config, format!("[notify]\nwebhook = \"{url}\"\n")).unwrap();
    let mut args = loopback_args(&mesh, "off", &[], &seed);
    args.extend(["--config".into(), config.display().to_string()]);
    let porch = start("porch", &dir.path().join("porch"), &args).await;
    form_mesh(&[&hall, &garage, &porch]);
    all_alive(
        &[hall.api(), garage.api(), porch.api()],
        &[hall.id(), garage.id(), porch.id()],
        Duration::from_secs(30),
    )
    .await;
    let api = hall.api();

    // Deployed from the hall onto the other two; every node learns where they run.
    let out = cli(&[
        "--api",
        &api,
        "agent",
        "deploy",
        "anomaly_detector",
        "--node",
        "garage",
    ]);
    assert!(out.contains("on garage"), "{out}");
    // The notifier runs on the hall, which has no webhook: its critical alerts go through the
    // porch's notify:send — an agent calling a tool on another node.
    cli(&["--api", &api, "agent", "deploy", "notifier"]);
    let deployed = std::time::Instant::now();
    eventually(
        Duration::from_secs(30),
        "both agents listed on the hall",
        || async {
            let agents = get_json(&format!("http://{api}/v1/agents")).await?;
            let nodes: Vec<(String, String)> = agents
                .as_array()?
                .iter()
                .map(|a| {
                    (
                        a["def"]["name"].as_str().unwrap_or_default().to_owned(),
                        a["node"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (nodes
                == [
                    ("anomaly_detector".to_owned(), "garage".to_owned()),
                    ("notifier".to_owned(), "hall".to_owned()),
                ])
            .then_some(())
        },
    )
    .await;

    // The garage learns the hall's agent too (the registry is gossiped to every node).
    let garage_api = garage.api();
    eventually(
        Duration::from_secs(30),
        "the garage lists the hall's notifier",
        || async {
            let agent = get_json(&format!("http://{garage_api}/v1/agents/notifier")).await?;
            (agent["node"] == "hall").then_some(())
        },
    )
    .await;

    eprintln!(
        "the hall's new agent reached the garage {:?} after its deploy",
        deployed.elapsed()
    );

    // Ordinary readings wake the detector on the garage and raise nothing.
    for value in [20.9, 21.1, 21.0, 20.8, 21.2, 21.0, 20.9, 21.1, 21.0] {
        let activations = publish(&api, value).await;
        assert_eq!(activations[0]["agent"], "anomaly_detector", "{activations}");
        assert_eq!(activations[0]["node"], "garage");
        assert!(
            activations[0]["events"].as_array().unwrap().is_empty(),
            "{activations}"
        );
    }
    // An outlier: the detector explains it, and its event wakes the notifier on the hall, which
    // sends it through the porch's webhook.
    let activations = publish(&api, 31.5).await;
    let event = &activations[0]["events"][0];
    assert_eq!(event["kind"], "sensor.anomaly", "{activations}");
    assert_eq!(event["severity"], "critical");
    assert!(
        event["summary"]
            .as_str()
            .unwrap()
            .contains("above its usual"),
        "{event}"
    );
    let received = tokio::time::timeout(Duration::from_secs(30), hook)
        .await
        .expect("the notifier's webhook call")
        .unwrap();
    assert_eq!(received["node"], "porch");
    assert!(
        received["message"]
            .as_str()
            .unwrap()
            .contains("garage_temp read 31.5"),
        "{received}"
    );

    // Invoked from the hall, the detector (asleep between wake-ups) says what it has learned.
    let out = cli(&[
        "--api",
        &api,
        "agent",
        "invoke",
        "anomaly_detector",
        "--input",
        "any unusual temperatures",
    ]);
    assert!(out.contains("→ Agent: anomaly_detector (garage)"), "{out}");
    assert!(out.contains("garage_temp: usually 21.0"), "{out}");
    // An intent in people's words wakes the agent too: agents' intents are router classes.
    let request = serde_json::json!({"text": "are the sensor readings normal today?"});
    let (_, outcome) = post_json(&format!("http://{api}/v1/intent"), &request).await;
    assert_eq!(
        outcome["decision"]["capability"], "agent:anomaly_detector",
        "{outcome}"
    );
    assert_eq!(outcome["result"]["node"], "garage", "{outcome}");
    assert!(
        outcome["result"]["text"]
            .as_str()
            .unwrap()
            .contains("garage_temp: usually"),
        "{outcome}"
    );

    // Bad input: an unknown agent, an invalid definition.
    let err = cli_fails(&["--api", &api, "agent", "invoke", "nobody", "--input", "hi"]);
    assert!(err.contains("unknown agent"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "Bad Name", "base": "reactive", "version": 1, "description": "x", "intents": ["hi"]}"#).unwrap();
    let err = cli_fails(&["--api", &api, "agent", "deploy", &bad.display().to_string()]);
    assert!(err.contains("lowercase"), "{err}");
}

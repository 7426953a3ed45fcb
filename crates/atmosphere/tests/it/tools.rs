//! Tools across real processes: a tool only one node provides is announced by gossip, listed and
//! called from another node; bad calls fail clearly; notifications reach a real webhook.

use std::time::{Duration, Instant};

use crate::kit::*;

async fn call(api: &str, tool: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    post_json(&format!("http://{api}/v1/tools/{tool}/call"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_only_one_node_has_is_listed_and_called_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("tools");
    let a = start(
        "hall",
        &dir.path().join("a"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let seed = vec![a.bootstrap_line()];
    let mut args = loopback_args(&mesh, "off", &[], &seed);
    args.extend(["--llm", "smollm2", "--no-warmup"].map(String::from));
    let b = start("study", &dir.path().join("b"), &args).await;
    let (url, hook) = webhook_receiver().await;
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[notify]\nwebhook = \"{url}\"\n")).unwrap();
    // A tool added without recompiling: a manifest file mapping it to a local command.
    std::fs::create_dir_all(dir.path().join("c").join("tools")).unwrap();
    std::fs::write(
        dir.path().join("c").join("tools").join("count.json"),
        serde_json::json!({
            "name": "text:count", "capability": "text", "description": "Counts the words of a text.",
            "input": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "output": {"type": "object", "properties": {"words": {"type": "integer"}}, "required": ["words"]},
            "command": ["python3", "-c",
                "import sys, json; a = json.load(sys.stdin); print(json.dumps({'words': len(a['text'].split())}))"]
        })
        .to_string(),
    )
    .unwrap();
    let mut args = loopback_args(&mesh, "off", &[], &seed);
    args.extend(["--config".into(), config.display().to_string()]);
    let c = start("porch", &dir.path().join("c"), &args).await;
    form_mesh(&[&a, &b, &c]);
    let formed = Instant::now();
    let api = a.api();

    // llm:generate exists only on the node with a model; the hall learns it by gossip.
    let providers = eventually(
        Duration::from_secs(30),
        "llm:generate listed on the hall",
        || async {
            let tools = get_json(&format!("http://{api}/v1/tools")).await?;
            let tool = tools
                .as_array()?
                .iter()
                .find(|t| t["manifest"]["name"] == "llm:generate")?;
            Some(tool["providers"].clone())
        },
    )
    .await;
    eprintln!(
        "tool registry synced {:?} after the mesh formed",
        formed.elapsed()
    );
    assert_eq!(providers, serde_json::json!(["study"]));
    let listed = cli(&["--api", &api, "tool", "list"]);
    assert!(
        listed.contains("llm:generate") && listed.contains("system:health"),
        "{listed}"
    );

    let (status, result) = call(
        &api,
        "llm:generate",
        serde_json::json!({"args": {"prompt": "What's 2+2?", "max_tokens": 8}}),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["node"], "study");
    assert_eq!(result["output"]["model"], "smollm2-135m");
    assert!(!result["output"]["text"].as_str().unwrap().is_empty());

    // Bad calls: a schema violation names the field, unknown tools and huge arguments are refused.
    let (status, body) = call(
        &api,
        "llm:generate",
        serde_json::json!({"args": {"prompt": 5}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("/prompt"),
        "{body}"
    );
    let (status, _) = call(&api, "llm:nonsense", serde_json::json!({"args": {}})).await;
    assert_eq!(status, 404);
    let huge = "x".repeat(300 * 1024);
    let (status, _) = call(
        &api,
        "llm:generate",
        serde_json::json!({"args": {"prompt": huge}}),
    )
    .await;
    assert_eq!(status, 413);

    // system:health runs where it is asked to, with real figures.
    let out = cli(&[
        "--api",
        &api,
        "--json",
        "tool",
        "call",
        "system:health",
        "--node",
        "study",
    ]);
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(health["node"], "study");
    assert!(
        health["output"]["memory_total_mib"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(
        !health["output"]["disks"].as_array().unwrap().is_empty(),
        "{health}"
    );
    assert_eq!(health["output"]["backends"][0]["model"], "smollm2-135m");

    // notify:send through the porch's webhook reaches a real HTTP receiver; only the porch offers
    // that channel, so the call goes there.
    eventually(
        Duration::from_secs(30),
        "every node offers notify:send",
        || async {
            let tool = get_json(&format!("http://{api}/v1/tools/notify:send")).await?;
            (tool["providers"].as_array()?.len() == 3).then_some(())
        },
    )
    .await;
    let (status, sent) = call(
        &api,
        "notify:send",
        serde_json::json!({"args": {"message": "Dinner is ready", "channel": "webhook"}}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["node"], "porch");
    let received = tokio::time::timeout(Duration::from_secs(10), hook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received["message"], "Dinner is ready");
    assert_eq!(received["node"], "porch");
    // The log channel writes the node's own notification log.
    let (status, logged) = call(
        &api,
        "notify:send",
        serde_json::json!({"args": {"message": "Bins tonight", "channel": "log"}, "node": "hall"}),
    )
    .await;
    assert_eq!(status, 200, "{logged}");
    let log = std::fs::read_to_string(dir.path().join("a").join("notifications.log")).unwrap();
    assert!(log.contains("Bins tonight"), "{log}");

    // The file-defined tool, provided by the porch only, called from the hall.
    let counted = eventually(
        Duration::from_secs(30),
        "text:count called from the hall",
        || async {
            let (status, body) = call(
                &api,
                "text:count",
                serde_json::json!({"args": {"text": "turn on the garage lights"}}),
            )
            .await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert_eq!(counted["node"], "porch");
    assert_eq!(counted["output"]["words"], 5);

    // The provider goes away: the tool leaves the list and a call is a clear error.
    drop(b);
    eventually(
        Duration::from_secs(30),
        "llm:generate gone with its node",
        || async {
            let (status, _) = call(
                &api,
                "llm:generate",
                serde_json::json!({"args": {"prompt": "hi"}}),
            )
            .await;
            (status == 404 || status == 503).then_some(())
        },
    )
    .await;
}

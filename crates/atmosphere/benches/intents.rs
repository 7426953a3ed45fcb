//! Intent routing benchmark on real node processes: route decision latency (embedding included),
//! the mesh's overhead on a remote intent (route + transport, without the model's time), and how
//! many intents one node routes per second. Prints a table.
//!
//! `cargo bench -p atmosphere --profile dev --features llama-cpp --bench intents`

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/kit.rs"]
mod kit;

use std::time::{Duration, Instant};

use kit::*;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn post(api: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = http()
        .post(format!("http://{api}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

const TEXTS: [&str; 6] = [
    "turn on the porch light",
    "what does our policy say about guests",
    "is there a car in the driveway",
    "What's 2+2?",
    "notify me when the dryer finishes",
    "how much memory is free on the server",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = unique_mesh("bench");
    let mut args = loopback_args(&mesh, "off", &[], &[]);
    args.extend(["--llm", "smollm2", "--no-warmup"].map(String::from));
    let mac = start("Mac-Studio", &dir.path().join("mac"), &args).await;
    let mut args = loopback_args(&mesh, "off", &[], &[mac.bootstrap_line()]);
    args.extend(["--llm", "gemma3", "--no-warmup"].map(String::from));
    let dell = start("Dell-Server", &dir.path().join("dell"), &args).await;
    form_mesh(&[&mac, &dell]);
    all_alive(
        &[mac.api(), dell.api()],
        &[mac.id(), dell.id()],
        Duration::from_secs(30),
    )
    .await;
    let api = mac.api();
    // First use builds the router (embeds the descriptors) and loads the models.
    let started = Instant::now();
    post(&api, "/v1/route", serde_json::json!({"texts": ["warm up"]})).await;
    let router_ready = started.elapsed();
    for text in [
        "What's 2+2?",
        "Analyze the security implications of our network topology",
    ] {
        post(
            &api,
            "/v1/intent",
            serde_json::json!({"text": text, "max_tokens": 1}),
        )
        .await;
    }

    // Route decisions, one at a time, for intents the node has not seen (each embedded): time in
    // the node (embed + classify + rank) and the HTTP round trip a client sees. Then the same
    // intents again, as people repeat commands: their embeddings come from the cache.
    let unseen: Vec<String> = (0..300)
        .map(|i| {
            let verbs = [
                "turn on",
                "switch off",
                "dim",
                "check",
                "what is up with",
                "look at",
            ];
            let rooms = [
                "kitchen", "garage", "porch", "attic", "hallway", "office", "den", "shed",
            ];
            let things = [
                "lights", "camera", "heater", "fan", "door", "sensor", "plug",
            ];
            format!(
                "{} the {} {} please",
                verbs[i % verbs.len()],
                rooms[(i / verbs.len()) % rooms.len()],
                things[(i / (verbs.len() * rooms.len())) % things.len()]
            )
        })
        .collect();
    let mut server_ms = Vec::new();
    let mut client_ms = Vec::new();
    let mut cached_ms = Vec::new();
    for pass in 0..2 {
        for text in &unseen {
            let sent = Instant::now();
            let decisions = post(&api, "/v1/route", serde_json::json!({"texts": [text]})).await;
            let route_ms = decisions[0]["route_ms"].as_f64().unwrap_or(0.0);
            if pass == 0 {
                client_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                server_ms.push(route_ms);
            } else {
                cached_ms.push(route_ms);
            }
        }
    }
    server_ms.sort_by(f64::total_cmp);
    client_ms.sort_by(f64::total_cmp);
    cached_ms.sort_by(f64::total_cmp);

    // Remote intents: the mesh's share of the time (total minus routing minus the model's time
    // on the remote node), with a one-token answer.
    let mut overhead_ms = Vec::new();
    for _ in 0..30 {
        let outcome = post(
            &api,
            "/v1/intent",
            serde_json::json!({"text": "Analyze the security implications of our network topology", "max_tokens": 1}),
        )
        .await;
        assert_eq!(outcome["result"]["node"], "Dell-Server", "{outcome}");
        let total = outcome["total_ms"].as_f64().unwrap_or(0.0);
        let route = outcome["decision"]["route_ms"].as_f64().unwrap_or(0.0);
        let model = outcome["result"]["ms"].as_f64().unwrap_or(0.0);
        overhead_ms.push(total - route - model);
    }
    overhead_ms.sort_by(f64::total_cmp);

    // Throughput: route decisions with 4 clients at once, batches of one, over the six texts
    // above (after the first round, cached).
    let count = 400usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..4 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..count / 4 {
                let text = TEXTS[(i + client) % TEXTS.len()];
                post(&api, "/v1/route", serde_json::json!({"texts": [text]})).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let per_second = count as f64 / started.elapsed().as_secs_f64();

    // Tool calls: the same cheap tool (notify:send to the log file) run here and on the other
    // node; the difference is what the mesh adds (validation, routed work, QUIC, both ways).
    let tool_ms = |node: &'static str| {
        let api = api.clone();
        async move {
            let mut times = Vec::new();
            for _ in 0..100 {
                let sent = Instant::now();
                post(
                    &api,
                    "/v1/tools/notify:send/call",
                    serde_json::json!({"args": {"message": "bench", "channel": "log"}, "node": node}),
                )
                .await;
                times.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            times
        }
    };
    let local_tool = tool_ms("Mac-Studio").await;
    let remote_tool = tool_ms("Dell-Server").await;

    // Agents: a sleeping detector on this node, woken by invocation: time from the wake-up to its
    // first action (state read from the store, step), and the whole HTTP round trip.
    let def = atmosphere_agents::builtin()
        .into_iter()
        .find(|d| d.name == "anomaly_detector")
        .expect("built-in detector");
    post(&api, "/v1/agents", serde_json::json!({"def": def})).await;
    let mut first_action_us = Vec::new();
    let mut invoke_ms = Vec::new();
    for _ in 0..200 {
        let sent = Instant::now();
        let activation = post(
            &api,
            "/v1/agents/anomaly_detector/invoke",
            serde_json::json!({"input": "any unusual temperatures"}),
        )
        .await;
        invoke_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        first_action_us.push(activation["first_action_us"].as_f64().unwrap_or(0.0));
    }
    first_action_us.sort_by(f64::total_cmp);
    invoke_ms.sort_by(f64::total_cmp);

    println!("## Intent routing (2 node processes on 127.0.0.1, 2 cores)\n");
    println!("| measure | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| route decision, in the node (embed + classify + rank) | {:.2} ms | {:.2} ms |",
        percentile(&server_ms, 0.5),
        percentile(&server_ms, 0.99)
    );
    println!(
        "| route decision, repeated intent (embedding cached) | {:.2} ms | {:.2} ms |",
        percentile(&cached_ms, 0.5),
        percentile(&cached_ms, 0.99)
    );
    println!(
        "| route decision, HTTP round trip | {:.2} ms | {:.2} ms |",
        percentile(&client_ms, 0.5),
        percentile(&client_ms, 0.99)
    );
    println!(
        "| remote intent overhead (total − route − model, 1 hop) | {:.2} ms | {:.2} ms |",
        percentile(&overhead_ms, 0.5),
        percentile(&overhead_ms, 0.99)
    );
    println!(
        "| tool call notify:send, local (HTTP round trip) | {:.2} ms | {:.2} ms |",
        percentile(&local_tool, 0.5),
        percentile(&local_tool, 0.99)
    );
    println!(
        "| tool call notify:send, on the other node | {:.2} ms | {:.2} ms |",
        percentile(&remote_tool, 0.5),
        percentile(&remote_tool, 0.99)
    );
    println!(
        "| remote tool call overhead (p50 difference) | {:.2} ms | |",
        percentile(&remote_tool, 0.5) - percentile(&local_tool, 0.5)
    );
    println!(
        "| agent wake to first action, in the node (store read + step) | {:.3} ms | {:.3} ms |",
        percentile(&first_action_us, 0.5) / 1000.0,
        percentile(&first_action_us, 0.99) / 1000.0
    );
    println!(
        "| agent invoke, HTTP round trip (wake, step, store write) | {:.2} ms | {:.2} ms |",
        percentile(&invoke_ms, 0.5),
        percentile(&invoke_ms, 0.99)
    );
    println!("\n| measure | value |");
    println!("|---|---:|");
    println!(
        "| route decisions per second, one node, 4 clients, repeated intents | {per_second:.0} |"
    );
    println!("| router ready (descriptors embedded) | {router_ready:.2?} |");
    // One line per Appendix B target, gathered by scripts/bench into the report's summary.
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let local = percentile(&server_ms, 0.99);
    println!(
        "\ntarget: Routing latency, local (route decision, p99) | {local:.1} ms | < 50 ms | {}",
        verdict(local < 50.0)
    );
    let remote = percentile(&server_ms, 0.99) + percentile(&overhead_ms, 0.99);
    println!(
        "target: Routing latency, remote (decision + 1 hop, p99, model time excluded) | {remote:.1} ms | < 200 ms | {}",
        verdict(remote < 200.0)
    );
    let wake = percentile(&first_action_us, 0.99) / 1000.0;
    println!(
        "target: Agent wake time (intent match to first action, p99) | {wake:.2} ms | < 100 ms | {}",
        verdict(wake < 100.0)
    );
    drop((mac, dell));
}

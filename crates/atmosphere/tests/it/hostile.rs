//! Hostile HTTP bodies against a real node: thousands of JSON bodies mutated from valid ones (and
//! bytes that are not JSON at all) on every POST route. Each gets an answer — a success or a
//! clear error — and the node stays up.

use std::time::Duration;

use serde_json::{Value, json};

use crate::kit::*;

/// A small deterministic generator (xorshift64*): the same run every time, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Strings a hostile client likes; none names a real file or this node.
fn string(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => String::new(),
        1 => "a".into(),
        2 => "é🙂\u{202e}".into(),
        3 => "\u{0}".into(),
        4 => "x".repeat(10_000),
        5 => "-1".into(),
        6 => "null".into(),
        7 => "atmo1.AAAA".into(),
        8 => "zz/../no-such-file".into(),
        _ => "ffffffffffffffffffffffffffffffff".into(),
    }
}

fn leaf(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(u64::MAX),
        5 => json!(-9.2e18),
        6 => json!(1e308),
        7 => json!([]),
        8 => json!({}),
        9 => json!([string(rng), string(rng)]),
        _ => json!(string(rng)),
    }
}

fn mutate(value: &mut Value, rng: &mut Rng, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() && depth < 4 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys[rng.below(keys.len())].clone();
            match rng.below(5) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, leaf(rng));
                }
                2 => {
                    map.insert(string(rng), leaf(rng));
                }
                _ => mutate(map.get_mut(&key).unwrap(), rng, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 4 => {
            let i = rng.below(items.len());
            if rng.below(3) == 0 {
                items.push(leaf(rng));
            } else {
                mutate(&mut items[i], rng, depth + 1);
            }
        }
        _ => *value = leaf(rng),
    }
}

/// Every POST route with a body that is valid, or nearly.
fn seeds() -> Vec<(String, Value)> {
    let agent = json!({"name": "fuzzed", "version": 1, "description": "d", "base": "reactive",
        "intents": ["x"], "events": ["sensor.*"], "tools": ["system:health"], "params": {}});
    [
        ("/v1/mesh/ping", json!({"node": "nobody"})),
        ("/v1/node/disconnect", json!({"node": "nobody"})),
        ("/v1/node/reconnect", json!({"node": "nobody"})),
        ("/v1/mesh/init", json!({"name": "again"})),
        ("/v1/mesh/invite", json!({"ttl_secs": 60})),
        ("/v1/mesh/join", json!({"invite": "atmo-invite1.AAAA"})),
        (
            "/v1/tokens",
            json!({"node_key": "11".repeat(32), "name": "n", "ttl_secs": 60, "capabilities": ["llm"]}),
        ),
        (
            "/v1/tokens/revoke",
            json!({"target": "00112233445566778899aabbccddeeff", "reason": "r"}),
        ),
        (
            "/v1/intent",
            json!({"text": "how full is the disk", "dry_run": true, "max_tokens": 4}),
        ),
        ("/v1/route", json!({"texts": ["turn on the light", "what is 2+2"]})),
        ("/v1/tools/system:health/call", json!({"args": {}})),
        (
            "/v1/tools/notify:send/call",
            json!({"args": {"message": "m", "severity": "info"}, "node": "nobody"}),
        ),
        ("/v1/agents", json!({"def": agent, "node": "nobody"})),
        ("/v1/agents/nobody/invoke", json!({"input": "check"})),
        (
            "/v1/events",
            json!({"kind": "sensor.reading", "source": "s", "severity": "info", "summary": "",
                   "data": {"series": "t", "value": 1.0}, "at": 0}),
        ),
        (
            "/v1/matter/commission",
            json!({"code": "34970112332", "address": "127.0.0.1:9", "name": "n", "room": "r"}),
        ),
        ("/v1/matter/devices/nobody/on", json!({})),
        (
            "/v1/knowledge/add",
            json!({"collection": "c", "paths": ["zz/../no-such-file"]}),
        ),
        (
            "/v1/knowledge/query",
            json!({"query": "cameras", "collection": "c", "top_k": 3}),
        ),
        ("/v1/packages/seal", json!({"manifest": "name = \"x\"\n"})),
        ("/v1/packages/import", json!({"path": "zz/../no-such-dir"})),
        ("/v1/packages/pull", json!({"name": "nothing", "from": ["nobody"]})),
        ("/v1/packages/push", json!({"name": "nothing", "to": "nobody"})),
        ("/v1/configs", json!({"text": "name: x\nruntime:\n  models: []\n"})),
        (
            "/v1/chat/completions",
            json!({"model": "nothing", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/embeddings", json!({"input": ["hello", "world"]})),
    ]
    .into_iter()
    .map(|(path, body)| (path.to_owned(), body))
    .collect()
}

/// One hostile body: a mutated seed, a truncated one, bytes that are not JSON, or nesting
/// deeper than any parser should follow.
fn body(seed: &Value, rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let text = seed.to_string();
            text.as_bytes()[..rng.below(text.len().max(1))].to_vec()
        }
        1 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        2 => {
            let depth = 200 + rng.below(10_000);
            let mut text = "[".repeat(depth);
            text.push_str(&"]".repeat(depth));
            text.into_bytes()
        }
        _ => {
            let mut value = seed.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut value, rng, 0);
            }
            value.to_string().into_bytes()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_body_gets_an_answer_and_the_node_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = loopback_args(&unique_mesh("hostile"), "off", &[], &[]);
    args.extend(["--embeddings", "auto"].map(String::from));
    let mut node = start("solo", &dir.path().join("solo"), &args).await;
    cli(&["--api", &node.api(), "mesh", "init", "--name", "hostile"]);
    let api = node.api();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let seeds = seeds();
    // The seeds themselves are well-formed bodies: none is refused as undecodable.
    for (path, seed) in &seeds {
        let response = client
            .post(format!("http://{api}{path}"))
            .json(seed)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(!text.contains("\"bad_json\""), "{path}: {status} {text}");
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut sent, mut ok, mut client_errors, mut server_errors) = (0, 0, 0, 0);
    for _ in 0..2000 {
        let (path, seed) = &seeds[rng.below(seeds.len())];
        let bytes = body(seed, &mut rng);
        let response = client
            .post(format!("http://{api}{path}"))
            .header("content-type", "application/json")
            .body(bytes.clone())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{path}: no answer to {:?}: {e}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                )
            });
        sent += 1;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            ok += 1;
        } else if status.is_client_error() {
            client_errors += 1;
            // Refused with the API's error body: its kind and what was wrong.
            let error: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path}: {status} without an error body: {text:?}"));
            assert!(
                error["error"].is_string() && error["message"].is_string(),
                "{path}: {status} {text}"
            );
        } else {
            server_errors += 1;
            // A server-side failure is a handled one: the API's error body, never a crash.
            let error: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path}: {status} without an error body: {text:?}"));
            assert!(
                error["error"].is_string() && error["message"].is_string(),
                "{path}: {status} {text}"
            );
        }
    }
    eprintln!(
        "{sent} hostile bodies: {ok} accepted, {client_errors} refused (4xx), {server_errors} failed cleanly (5xx)"
    );
    assert!(
        client_errors > sent / 2,
        "the bodies were not hostile enough"
    );
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node exited under the fuzz"
    );
    let health = get_json(&format!("http://{api}/v1/health")).await;
    assert!(health.is_some(), "the node no longer answers");
    // And it still does real work.
    let routed = post_json(
        &format!("http://{api}/v1/route"),
        &json!({"texts": ["turn on the garage lights"]}),
    )
    .await;
    assert_eq!(routed.0, 200, "{}", routed.1);
    assert_eq!(routed.1[0]["class"], "matter", "{}", routed.1);
    node.kill().await;
}

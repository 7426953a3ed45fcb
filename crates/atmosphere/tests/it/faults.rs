//! Faults on real processes: a node killed under a request, a node cut off from the others and
//! healed, a node restarted from its data dir, and clocks five minutes apart.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::kit::*;

/// A tool that takes a few seconds: it writes `start NODE JOB` to `log`, works, then
/// `done NODE JOB`. Like any well-behaved worker it stops if the node that ran it dies (its
/// parent changes), so a crashed node leaves no half-finished work behind.
fn slow_tool(data_dir: &Path, node: &str, log: &Path) {
    let script = format!(
        r#"
import json, os, sys, time
args = json.load(sys.stdin)
parent = os.getppid()
def say(what):
    with open({log:?}, "a") as f:
        f.write(what + " {node} " + args["job"] + "\n")
say("start")
for _ in range(40):
    time.sleep(0.1)
    if os.getppid() != parent:
        sys.exit(1)
say("done")
print(json.dumps({{"node": "{node}", "job": args["job"]}}))
"#,
        log = log.display().to_string(),
    );
    let tools = data_dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(
        tools.join("job.json"),
        serde_json::json!({
            "name": "job:run", "capability": "jobs", "description": "Runs a slow job.",
            "input": {"type": "object", "properties": {"job": {"type": "string"}}, "required": ["job"]},
            "output": {"type": "object", "properties": {"node": {"type": "string"}}, "required": ["node"]},
            "timeout_ms": 30000,
            "command": ["python3", "-c", script],
        })
        .to_string(),
    )
    .unwrap();
}

/// Has the authority at `authority` issue `node` a second token and revoke it: a revocation to
/// spread that leaves `node` itself (it keeps the token it joined with) in the mesh.
fn revoke_a_spare_token(authority: &str, node: &Proc) {
    let spare = cli(&[
        "--api",
        authority,
        "token",
        "issue",
        "--node-key",
        &node.id().to_string(),
        "--name",
        &format!("{}-spare", node.name),
    ]);
    let spare_id = atmosphere_auth::Token::decode(spare.trim())
        .unwrap()
        .claims_unverified()
        .unwrap()
        .token_id
        .to_string();
    cli(&["--api", authority, "token", "revoke", &spare_id]);
}

fn lines_of(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_a_call_is_failed_over_and_the_work_is_done_once() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("failover");
    let log = dir.path().join("jobs.log");
    let hall = start(
        "hall",
        &dir.path().join("hall"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let seed = vec![hall.bootstrap_line()];
    let mut workers = Vec::new();
    for name in ["study", "porch"] {
        let data_dir = dir.path().join(name);
        slow_tool(&data_dir, name, &log);
        workers.push(start(name, &data_dir, &loopback_args(&mesh, "off", &[], &seed)).await);
    }
    form_mesh(&[&hall, &workers[0], &workers[1]]);
    let api = hall.api();
    all_alive(
        &[api.clone(), workers[0].api(), workers[1].api()],
        &[hall.id(), workers[0].id(), workers[1].id()],
        Duration::from_secs(30),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "both providers of job:run known on the hall",
        || async {
            let tool = get_json(&format!("http://{api}/v1/tools/job:run")).await?;
            (tool["providers"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;

    // The call goes to one of the two; whichever starts the job is killed under it.
    let call = tokio::spawn({
        let api = api.clone();
        async move {
            post_json(
                &format!("http://{api}/v1/tools/job:run/call"),
                &serde_json::json!({"args": {"job": "j1"}}),
            )
            .await
        }
    });
    let victim = eventually(Duration::from_secs(30), "the job starts", || async {
        lines_of(&log)
            .first()
            .and_then(|l| l.strip_prefix("start ").map(|r| r.replace(" j1", "")))
    })
    .await;
    let killed_at = Instant::now();
    let index = workers.iter().position(|w| w.name == victim).unwrap();
    workers[index].kill().await;
    let survivor = &workers[1 - index];

    let (status, result) = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call is answered")
        .unwrap();
    eprintln!(
        "{victim} killed mid-call; answered by {} {:?} later",
        result["node"],
        killed_at.elapsed()
    );
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["node"], survivor.name.as_str(), "{result}");
    assert_eq!(result["output"]["job"], "j1");
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{result}");
    assert_eq!(attempts[0]["node"], victim.as_str());
    assert!(attempts[0]["error"].is_string(), "{result}");
    assert!(attempts[1]["error"].is_null(), "{result}");
    // Once each: started where it died, started and done where it failed over, nothing else.
    let mut lines = lines_of(&log);
    lines.sort();
    let mut expected = vec![
        format!("start {victim} j1"),
        format!("start {} j1", survivor.name),
        format!("done {} j1", survivor.name),
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_heals_and_learns_the_revocation_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("partition");
    let [a, b, c, d]: [Proc; 4] = seeded_mesh(dir.path(), &mesh, &["a", "b", "c", "d"])
        .await
        .try_into()
        .ok()
        .unwrap();
    let all = [a.api(), b.api(), c.api(), d.api()];
    let ids = [a.id(), b.id(), c.id(), d.id()];

    // d is cut off from everyone: the others see it down, it sees them down.
    let cut_at = Instant::now();
    cli(&["--api", &a.api(), "node", "disconnect", "d"]);
    for api in &all[..3] {
        eventually(Duration::from_secs(20), "d seen down", || async {
            (status_of(&status(api).await?, d.id()) == Some(atmosphere_mesh::Status::Down))
                .then_some(())
        })
        .await;
    }
    let detected = cut_at.elapsed();
    eventually(
        Duration::from_secs(20),
        "d sees the others down",
        || async {
            let view = status(&d.api()).await?;
            ids[..3]
                .iter()
                .all(|id| status_of(&view, *id) == Some(atmosphere_mesh::Status::Down))
                .then_some(())
        },
    )
    .await;
    // Meanwhile the authority revokes c; the connected side drops it, d cannot know yet.
    cli(&[
        "--api",
        &a.api(),
        "token",
        "revoke",
        "c",
        "--reason",
        "stolen",
    ]);
    for api in [&all[0], &all[1]] {
        eventually(Duration::from_secs(10), "c dropped", || async {
            status_of(&status(api).await?, c.id())
                .is_none()
                .then_some(())
        })
        .await;
    }
    assert_eq!(auth(&d.api()).await.revocations, 0);

    // Healed: d takes the revocation and drops c too. One view of who is in the mesh.
    cli(&["--api", &d.api(), "node", "reconnect", "d"]);
    let healed_at = Instant::now();
    all_alive(
        &[a.api(), b.api(), d.api()],
        &[a.id(), b.id(), d.id()],
        Duration::from_secs(20),
    )
    .await;
    let rejoined = healed_at.elapsed();
    eventually(
        Duration::from_secs(10),
        "d learns the revocation and drops c",
        || async {
            let view = status(&d.api()).await?;
            (auth(&d.api()).await.revocations == 1 && status_of(&view, c.id()).is_none())
                .then_some(())
        },
    )
    .await;
    let agreed = healed_at.elapsed();
    // Routes re-converge: a reaches d again through the mesh.
    let route = eventually(Duration::from_secs(20), "a routes to d again", || async {
        let (status, body) = post_json(
            &format!("http://{}/v1/mesh/ping", a.api()),
            &serde_json::json!({"node": "d"}),
        )
        .await;
        (status == 200).then_some(body)
    })
    .await;
    eprintln!(
        "cut: seen down by all in {detected:?}; healed: all alive in {rejoined:?}, \
         revocation agreed in {agreed:?}; route to d {route}"
    );
    // c, still running, is refused by every node, d included.
    for api in [&all[0], &all[1], &all[3]] {
        assert!(status_of(&status(api).await.unwrap(), c.id()).is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_from_its_data_dir_keeps_identity_token_revocations_agents_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("restart");
    let [a, mut b, c]: [Proc; 3] = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"])
        .await
        .try_into()
        .ok()
        .unwrap();
    let apis = [a.api(), b.api(), c.api()];
    // State b builds up: a revocation it learned, an agent deployed on it, knowledge chunks.
    // The revoked token is a spare one issued to c (c keeps the one it joined with).
    revoke_a_spare_token(&a.api(), &c);
    eventually(
        Duration::from_secs(10),
        "b learns the revocation",
        || async { (auth(&apis[1]).await.revocations == 1).then_some(()) },
    )
    .await;
    cli(&[
        "--api",
        &a.api(),
        "agent",
        "deploy",
        "anomaly_detector",
        "--node",
        "b",
    ]);
    // Eight chunks, two copies each, over three nodes: b holds some of them.
    let doc = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/home/iot-security-policy.md"
    );
    cli(&[
        "--api",
        &a.api(),
        "knowledge",
        "add",
        doc,
        "--collection",
        "home",
    ]);
    // What b holds, as b itself reports it (from its database, loaded at start).
    let held_by_b = |api: String| async move {
        let status = get_json(&format!("http://{api}/v1/knowledge/status")).await?;
        status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "b" && n["error"].is_null())?["chunks"]
            .as_u64()
    };
    let before_chunks = eventually(Duration::from_secs(30), "b holds chunks", || async {
        held_by_b(b.api()).await.filter(|n| *n > 0)
    })
    .await;
    let before = auth(&apis[1]).await;
    let generation_of_b = |api: String| async move {
        let status = status(&api).await?;
        let b = status.nodes.iter().find(|n| n.name == "b")?;
        (b.status == atmosphere_mesh::Status::Alive).then_some(b.generation)
    };
    let old_generation = generation_of_b(a.api()).await.expect("a sees b");

    // kill -9 and start again from the same data dir (on new ports).
    b.kill().await;
    b.restart().await;
    let apis = [a.api(), b.api(), c.api()];
    all_alive(&apis, &[a.id(), b.id(), c.id()], Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(30),
        "a sees b's new generation",
        || async {
            generation_of_b(a.api())
                .await
                .filter(|g| *g > old_generation)
        },
    )
    .await;
    // a's first call to b's new self goes straight through: the connection a held to b's former
    // self (killed without a word) was dropped when a heard of the restart.
    let (code, call) = post_json(
        &format!("http://{}/v1/tools/system:health/call", apis[0]),
        &serde_json::json!({"args": {}, "node": "b"}),
    )
    .await;
    assert_eq!(code, 200, "{call}");
    assert_eq!(call["node"], "b", "{call}");
    assert_eq!(call["attempts"].as_array().map(Vec::len), Some(1), "{call}");
    let after = auth(&apis[1]).await;
    assert_eq!(after.node, before.node, "identity");
    assert_eq!(
        after.token_id, before.token_id,
        "the same token, no new join"
    );
    assert_eq!(after.token_status, "valid");
    assert_eq!(after.revocations, 1, "revocations");
    let agents = get_json(&format!("http://{}/v1/agents", apis[1]))
        .await
        .unwrap();
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["def"]["name"] == "anomaly_detector" && a["node"] == "b"),
        "{agents}"
    );
    let after_chunks = eventually(Duration::from_secs(30), "b's chunks counted", || async {
        held_by_b(b.api()).await
    })
    .await;
    assert_eq!(after_chunks, before_chunks, "chunks");
    // The revoked spare changed nothing for c itself.
    assert_eq!(auth(&apis[2]).await.token_status, "valid");
}

/// libfaketime, preloaded: the node runs with its wall clock moved by `offset` (monotonic time
/// stays true). Preloaded through `env`, which execs: the node is the test's own child and dies
/// with it (the `faketime` wrapper forks and would leave it behind).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn skewed(offset: &str) -> Vec<String> {
    vec![
        "env".into(),
        format!("LD_PRELOAD={LIBFAKETIME}"),
        format!("FAKETIME={offset}"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_five_minutes_either_side_of_true_time_join_and_stay_up() {
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: run scripts/setup (Debian package faketime)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("skew");
    // The authority runs five minutes fast, b five minutes slow, c on time.
    let a = start_with(
        "a",
        &dir.path().join("a"),
        &loopback_args(&mesh, "off", &[], &[]),
        Some(&skewed("+5m")),
    )
    .await;
    let seed = vec![a.bootstrap_line()];
    let b = start_with(
        "b",
        &dir.path().join("b"),
        &loopback_args(&mesh, "off", &[], &seed),
        Some(&skewed("-5m")),
    )
    .await;
    let c = start(
        "c",
        &dir.path().join("c"),
        &loopback_args(&mesh, "off", &[], &seed),
    )
    .await;
    cli(&["--api", &a.api(), "mesh", "init", "--name", "test"]);
    // b's token starts ten minutes "in the future" by b's clock (a issued it); c's five. b's
    // lives 90 s: by the token's own `issued_at` b would renew it ten minutes late, long after a
    // saw it expire; it must renew by its own clock, 60 s after it received it.
    join_with_token(&a.api(), &b, "90s");
    join_with_token(&a.api(), &c, "24h");
    let apis = [a.api(), b.api(), c.api()];
    let first_token = auth(&apis[1]).await.token_id;
    all_alive(&apis, &[a.id(), b.id(), c.id()], Duration::from_secs(30)).await;
    let mut issued = Vec::new();
    for api in &apis {
        let status = auth(api).await;
        assert_eq!(status.token_status, "valid", "{api}: {status:?}");
        issued.push(status.issued_at.unwrap_or(0));
    }
    eprintln!("issued_at of the tokens (by a's clock): {issued:?}");
    // `auth verify` on the slow node: valid, offline.
    let verify = cli(&["--api", &b.api(), "auth", "verify"]);
    assert!(verify.contains("Valid"), "{verify}");
    // A revocation signed by the fast authority takes effect on the slow node and the true one.
    revoke_a_spare_token(&a.api(), &c);
    for api in [&apis[1], &apis[2]] {
        eventually(
            Duration::from_secs(10),
            "the revocation arrives",
            || async { (auth(api).await.revocations == 1).then_some(()) },
        )
        .await;
    }
    let since = Instant::now();
    rounds_pass(&apis[1], 20).await;
    // Heartbeats are counters, not timestamps: over twenty rounds nobody was judged down.
    for api in &apis {
        let view = status(api).await.unwrap();
        for node in view.nodes.iter().filter(|n| !n.is_self) {
            assert_eq!(
                node.status,
                atmosphere_mesh::Status::Alive,
                "{api}: {node:?}"
            );
            assert!(
                u128::from(node.status_age_ms) >= since.elapsed().as_millis(),
                "{api} changed its verdict on {} during the rounds",
                node.name
            );
        }
    }
    eventually(
        Duration::from_secs(90),
        "b renews its 90 s token by its own clock",
        || async {
            let now = auth(&apis[1]).await;
            (now.token_id != first_token && now.token_status == "valid").then_some(())
        },
    )
    .await;
    all_alive(&apis, &[a.id(), b.id(), c.id()], Duration::from_secs(10)).await;
}

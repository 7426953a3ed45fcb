//! Admission with real processes: nobody joins without a token, revocation spreads and holds,
//! tokens renew by themselves, expired tokens are refused, invites are single-use.

use std::time::{Duration, Instant};

use atmosphere_mesh::MeshStatus;

use crate::kit::*;

fn knows(status: &MeshStatus, id: atmosphere_proto::NodeId) -> bool {
    status.nodes.iter().any(|n| n.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_valid_token_are_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("keepout");
    let [a, b]: [Proc; 2] = seeded_mesh(dir.path(), &mesh, &["a", "b"])
        .await
        .try_into()
        .ok()
        .unwrap();
    let seed = vec![a.bootstrap_line()];

    // A node with no token at all, and one holding a token of another mesh, both knocking.
    let tokenless = start(
        "tokenless",
        &dir.path().join("t"),
        &loopback_args(&mesh, "off", &["llm"], &seed),
    )
    .await;
    let foreign = start(
        "foreign",
        &dir.path().join("f"),
        &loopback_args(&mesh, "off", &["llm"], &seed),
    )
    .await;
    cli(&[
        "--api",
        &foreign.api(),
        "mesh",
        "init",
        "--name",
        "elsewhere",
    ]);
    // A node presenting a token issued for another key (stolen): it cannot even join with it.
    let thief = start(
        "thief",
        &dir.path().join("x"),
        &loopback_args(&mesh, "off", &[], &seed),
    )
    .await;
    let stolen = cli(&[
        "--api",
        &a.api(),
        "token",
        "issue",
        "--node-key",
        &b.id().to_string(),
        "--name",
        "b",
    ]);
    let err = cli_fails(&["--api", &thief.api(), "mesh", "join", stolen.trim()]);
    assert!(err.contains("the token is for node"), "{err}");
    // Garbage and tampered tokens are refused with a reason.
    let err = cli_fails(&["--api", &thief.api(), "mesh", "join", "atmo1.AAAA"]);
    assert!(err.contains("invalid"), "{err}");

    rounds_pass(&a.api(), 10).await;
    for api in [a.api(), b.api()] {
        let view = status(&api).await.unwrap();
        for outsider in [tokenless.id(), foreign.id(), thief.id()] {
            assert!(
                !knows(&view, outsider),
                "{api} admitted {}",
                outsider.short()
            );
        }
    }
    for outsider in [&tokenless, &foreign, &thief] {
        let view = status(&outsider.api()).await.unwrap();
        assert!(
            !knows(&view, a.id()),
            "{} got the mesh's state",
            outsider.name
        );
    }
    assert!(!auth(&tokenless.api()).await.member);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_dropped_everywhere_within_two_rounds_and_stays_out() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("revoke");
    let [a, mut b, mut c]: [Proc; 3] = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"])
        .await
        .try_into()
        .ok()
        .unwrap();

    let c_id = c.id();
    let revoked_at = Instant::now();
    let out = cli(&[
        "--api",
        &a.api(),
        "token",
        "revoke",
        "c",
        "--reason",
        "lost laptop",
    ]);
    assert!(out.contains("Revoked node"), "{out}");
    for api in [a.api(), b.api()] {
        eventually(Duration::from_secs(10), "c dropped", || async {
            (!knows(&status(&api).await?, c_id)).then_some(())
        })
        .await;
    }
    let elapsed = revoked_at.elapsed();
    eprintln!(
        "revocation enforced on every node after {elapsed:?} ({:.1} rounds of 500 ms)",
        elapsed.as_secs_f64() / 0.5
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // Restarts change nothing: c is refused at the handshake, b remembers the revocation.
    c.restart().await;
    b.restart().await;
    all_alive(
        &[a.api(), b.api()],
        &[a.id(), b.id()],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(auth(&b.api()).await.revocations, 1, "revocations persist");
    rounds_pass(&a.api(), 10).await;
    for api in [a.api(), b.api()] {
        assert!(!knows(&status(&api).await.unwrap(), c_id));
    }
    // A revocation not signed by the authority cannot be made: b is not the authority.
    let err = cli_fails(&["--api", &b.api(), "token", "revoke", "a"]);
    assert!(err.contains("only the mesh authority"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_renew_by_themselves_and_expired_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("renew");
    let [mut a, b, c]: [Proc; 3] = seeded(dir.path(), &mesh, &["a", "b", "c"])
        .await
        .try_into()
        .ok()
        .unwrap();
    cli(&["--api", &a.api(), "mesh", "init", "--name", "test"]);
    join_with_token(&a.api(), &b, "24h");
    join_with_token(&a.api(), &c, "6s");
    all_alive(
        &[a.api(), b.api(), c.api()],
        &[a.id(), b.id(), c.id()],
        Duration::from_secs(20),
    )
    .await;

    // c renews at 2/3 of its 6 s, by itself, from the authority: a new token id, still valid.
    let first = auth(&c.api()).await;
    let renewed = eventually(Duration::from_secs(15), "c renews its token", || async {
        let now = auth(&c.api()).await;
        (now.token_id != first.token_id && now.token_status == "valid").then_some(now)
    })
    .await;
    assert!(renewed.expires_at > first.expires_at);
    all_alive(
        &[a.api(), b.api(), c.api()],
        &[a.id(), b.id(), c.id()],
        Duration::from_secs(10),
    )
    .await;

    // With the authority gone, c cannot renew: once its token expires, b drops it.
    a.kill().await;
    let c_id = c.id();
    eventually(
        Duration::from_secs(20),
        "b drops c after its token expired",
        || async { (!knows(&status(&b.api()).await?, c_id)).then_some(()) },
    )
    .await;
    assert_ne!(auth(&c.api()).await.token_status, "valid");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_grant_exactly_one_join_and_verify_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = unique_mesh("invite");
    let a = start(
        "a",
        &dir.path().join("a"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let b = start(
        "b",
        &dir.path().join("b"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let c = start(
        "c",
        &dir.path().join("c"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    // Not yet a member: verify says so and fails.
    let err = cli_fails(&["--api", &a.api(), "auth", "verify"]);
    assert!(err.contains("token is none"), "{err}");
    cli(&["--api", &a.api(), "mesh", "init", "--name", "home"]);
    let invite = cli(&["--api", &a.api(), "mesh", "invite", "--ttl", "10m"]);
    assert!(invite.starts_with("atmo-invite1."), "{invite}");
    let joined = cli(&["--api", &b.api(), "mesh", "join", invite.trim()]);
    assert!(joined.contains("Token: Valid"), "{joined}");
    // The same invite a second time (a replayed join request) is refused.
    let err = cli_fails(&["--api", &c.api(), "mesh", "join", invite.trim()]);
    assert!(err.contains("already used"), "{err}");
    all_alive(
        &[a.api(), b.api()],
        &[a.id(), b.id()],
        Duration::from_secs(20),
    )
    .await;

    // Step 8 with the network gone: b drops every link, then verifies its token.
    cli(&["--api", &b.api(), "node", "disconnect", "b"]);
    let b_api = b.api();
    let b_id = b.id();
    eventually(Duration::from_secs(20), "a sees b down", || async {
        let view = status(&a.api()).await?;
        (status_of(&view, b_id) == Some(atmosphere_mesh::Status::Down)).then_some(())
    })
    .await;
    let text = cli(&["--api", &b_api, "auth", "verify"]);
    assert!(text.contains("Token: Valid (expires in 23h)"), "{text}");
    assert!(
        text.contains("Verified: Offline (no network call"),
        "{text}"
    );
}

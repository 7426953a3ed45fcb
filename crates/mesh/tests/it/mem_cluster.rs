//! Scenarios on the in-memory network: converge, fail, return, cut and heal, relay, leave.

use std::time::Duration;

use atmosphere_mesh::Status;
use atmosphere_mesh::transport::mem::MemNetwork;
use atmosphere_proto::Control;

use crate::kit::*;

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn three_nodes_converge_with_capabilities() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "Mac-Studio", &["llm/7B", "rag"], &[], 1);
    let b = start_mem(&network, 2, "Dell-Server", &["llm/70B", "rag"], &[a.id], 1);
    let c = start_mem(&network, 3, "Garage-Pi", &["matter", "vision"], &[a.id], 1);
    let ids = [a.id, b.id, c.id];
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &ids, DEADLINE).await;
    let status = c.mesh.status().await.unwrap();
    let dell = status
        .nodes
        .iter()
        .find(|n| n.name == "Dell-Server")
        .unwrap();
    assert_eq!(dell.capabilities, caps(&["llm/70B", "rag"]));
    // Every node's gradient table offers both LLMs, the local one first on Mac-Studio.
    let routes = eventually(DEADLINE, "two llm routes on Mac-Studio", || async {
        let routes = a.mesh.routes().await.ok()?;
        let llm: Vec<_> = routes
            .into_iter()
            .filter(|r| r.capability.name == "llm")
            .collect();
        (llm.len() == 2).then_some(llm)
    })
    .await;
    assert_eq!(routes[0].provider, a.id);
    assert_eq!(routes[0].hops, 0);
}

#[tokio::test]
async fn a_dead_node_is_seen_down_and_a_restart_comes_back() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    let c = start_mem(&network, 3, "c", &[], &[a.id], 1);
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;

    // Kill c: its actor stops and it vanishes from the network.
    c.mesh.shutdown();
    network.detach(c.id);
    for observer in [&a.mesh, &b.mesh] {
        eventually(DEADLINE, "c is seen down", || async {
            let status = observer.status().await.ok()?;
            (status_of(&status, c.id) == Some(Status::Down)).then_some(())
        })
        .await;
    }
    // Routes through or to c are gone.
    assert!(a.mesh.echo(c.id, vec![1]).await.is_err());

    // Restart c with a new generation.
    let c2 = start_mem(&network, 3, "c", &[], &[a.id], 2);
    all_see_alive(
        &[&a.mesh, &b.mesh, &c2.mesh],
        &[a.id, b.id, c2.id],
        DEADLINE,
    )
    .await;
    let status = b.mesh.status().await.unwrap();
    assert_eq!(
        status
            .nodes
            .iter()
            .find(|n| n.id == c2.id)
            .unwrap()
            .generation,
        2
    );
}

#[tokio::test]
async fn cut_links_route_through_a_relay_and_heal() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    let c = start_mem(&network, 3, "c", &["vision"], &[b.id], 1);
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;

    network.cut(a.id, c.id);
    // a still sees c alive (heartbeats flow through b) and routes to it in two hops.
    let route = eventually(DEADLINE, "vision reached through b", || async {
        let routes = a.mesh.routes().await.ok()?;
        routes
            .into_iter()
            .find(|r| r.capability.name == "vision" && r.hops == 2 && r.next_hop == b.id)
    })
    .await;
    assert_eq!(route.provider, c.id);
    let echo = a.mesh.echo(c.id, b"over the relay".to_vec()).await.unwrap();
    assert_eq!(echo.path, vec![a.id, b.id, c.id]);
    let status = a.mesh.status().await.unwrap();
    assert_eq!(status_of(&status, c.id), Some(Status::Alive));

    network.heal(a.id, c.id);
    eventually(DEADLINE, "direct route again", || async {
        let routes = a.mesh.routes().await.ok()?;
        routes
            .into_iter()
            .find(|r| r.capability.name == "vision" && r.hops == 1 && r.next_hop == c.id)
    })
    .await;
    let echo = a.mesh.echo(c.id, b"direct".to_vec()).await.unwrap();
    assert_eq!(echo.path, vec![a.id, c.id]);
}

#[tokio::test]
async fn a_partitioned_node_is_down_then_heals() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    let c = start_mem(&network, 3, "c", &[], &[a.id], 1);
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;
    network.isolate(c.id);
    eventually(DEADLINE, "a and b see c down, c sees both down", || async {
        let sa = a.mesh.status().await.ok()?;
        let sb = b.mesh.status().await.ok()?;
        let sc = c.mesh.status().await.ok()?;
        (status_of(&sa, c.id) == Some(Status::Down)
            && status_of(&sb, c.id) == Some(Status::Down)
            && status_of(&sc, a.id) == Some(Status::Down)
            && status_of(&sc, b.id) == Some(Status::Down))
        .then_some(())
    })
    .await;
    network.rejoin(c.id);
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;
}

#[tokio::test]
async fn disconnect_and_reconnect_by_control() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    all_see_alive(&[&a.mesh, &b.mesh], &[a.id, b.id], DEADLINE).await;
    let target = a.mesh.resolve("B").await.unwrap();
    assert_eq!(target, b.id);
    a.mesh.control(b.id, Control::Disconnect).await.unwrap();
    eventually(DEADLINE, "b is down for a", || async {
        let status = a.mesh.status().await.ok()?;
        (status_of(&status, b.id) == Some(Status::Down)).then_some(())
    })
    .await;
    assert!(b.mesh.status().await.unwrap().isolated);
    // Cut off, b in turn sees a fall silent.
    eventually(DEADLINE, "a is down for b", || async {
        let status = b.mesh.status().await.ok()?;
        (status_of(&status, a.id) == Some(Status::Down)).then_some(())
    })
    .await;
    // Requests through an isolated node fail with a clear error.
    let err = b.mesh.echo(a.id, vec![1]).await.unwrap_err();
    assert!(err.to_string().contains("disconnected"), "{err}");
    a.mesh.control(b.id, Control::Reconnect).await.unwrap();
    all_see_alive(&[&a.mesh, &b.mesh], &[a.id, b.id], DEADLINE).await;
}

#[tokio::test]
async fn a_node_that_leaves_stays_left() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    let c = start_mem(&network, 3, "c", &[], &[a.id], 1);
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;
    c.mesh.leave().await.unwrap();
    c.mesh.shutdown();
    network.detach(c.id);
    for observer in [&a.mesh, &b.mesh] {
        eventually(DEADLINE, "c is seen as left", || async {
            let status = observer.status().await.ok()?;
            (status_of(&status, c.id) == Some(Status::Left)).then_some(())
        })
        .await;
    }
    // Well past the failure-detection time it is still "left", never "down" or alive again.
    let a_rounds = a.mesh.status().await.unwrap().rounds;
    eventually(DEADLINE, "20 more rounds", || async {
        let status = a.mesh.status().await.ok()?;
        (status.rounds >= a_rounds + 20).then_some(())
    })
    .await;
    let status = a.mesh.status().await.unwrap();
    assert_eq!(status_of(&status, c.id), Some(Status::Left));
}

#[tokio::test]
async fn unknown_names_are_a_clear_error() {
    let network = MemNetwork::new();
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let err = a.mesh.resolve("nobody").await.unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
}

/// Routed work crosses a relay to the destination's service and its answer comes back the same
/// way; a node without that service says so.
#[tokio::test]
async fn work_travels_over_a_relay_to_the_destinations_service() {
    use atmosphere_proto::{Request, Response, RoutedBody, RoutedReply};
    let network = MemNetwork::new();
    let (app_tx, mut app_rx) = tokio::sync::mpsc::channel(8);
    let a = start_mem(&network, 1, "a", &[], &[], 1);
    let b = start_mem(&network, 2, "b", &[], &[a.id], 1);
    let hooks = atmosphere_mesh::Hooks {
        discovered_rx: None,
        app_tx: Some(app_tx),
    };
    let c = start_mem_with(&network, 3, "c", &["llm"], &[b.id], 1, hooks);
    // c's service: upper-cases the payload of `shout` work.
    tokio::spawn(async move {
        while let Some(incoming) = app_rx.recv().await {
            let response = match incoming.request {
                Request::Routed {
                    path,
                    body: RoutedBody::Work { kind, payload, .. },
                    ..
                } if kind == "shout" => Response::Routed {
                    path,
                    reply: RoutedReply::Work {
                        payload: payload.to_ascii_uppercase(),
                    },
                },
                _ => Response::Done,
            };
            let _ = incoming.reply_tx.send(response);
        }
    });
    all_see_alive(&[&a.mesh, &b.mesh, &c.mesh], &[a.id, b.id, c.id], DEADLINE).await;
    network.cut(a.id, c.id);
    eventually(DEADLINE, "c reached through b", || async {
        let routes = a.mesh.routes().await.ok()?;
        routes
            .into_iter()
            .find(|r| r.capability.name == "llm" && r.hops == 2)
    })
    .await;
    let result = a
        .mesh
        .work(c.id, "shout", b"hello".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(result.payload, b"HELLO");
    assert_eq!(result.path, vec![a.id, b.id, c.id]);
    // b runs no services: a clear error, not a hang.
    let err = a
        .mesh
        .work(b.id, "shout", b"x".to_vec(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no services"), "{err}");
}

//! Three nodes over real QUIC (iroh) on 127.0.0.1, in one process.

use std::net::SocketAddr;
use std::time::Duration;

use atmosphere_mesh::transport::Transport;
use atmosphere_mesh::transport::quic::{PeerPolicy, QuicConfig, QuicTransport};
use atmosphere_mesh::{Mesh, MeshConfig, PeerAddr};
use atmosphere_proto::{Request, Response};

use crate::kit::*;

async fn start_quic(name: &str, bootstrap: Vec<PeerAddr>) -> (Mesh, std::sync::Arc<QuicTransport>) {
    start_quic_with(name, bootstrap, PeerPolicy::default()).await
}

async fn start_quic_with(
    name: &str,
    bootstrap: Vec<PeerAddr>,
    policy: PeerPolicy,
) -> (Mesh, std::sync::Arc<QuicTransport>) {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let key = iroh::SecretKey::generate();
    let mut quic = QuicConfig::new(listen);
    quic.policy = policy;
    quic.generation = 1; // as MeshConfig::for_test
    let (transport, incoming_rx) = QuicTransport::bind(key, quic).await.unwrap();
    let mut config = MeshConfig::for_test(name);
    config.bootstrap = bootstrap;
    config.capabilities = caps(&["llm"]);
    let (mesh, _join) = Mesh::spawn(transport.clone(), incoming_rx, Default::default(), config);
    (mesh, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_quic_nodes_converge_and_relay() {
    let (a, ta) = start_quic("a", vec![]).await;
    let seed = PeerAddr {
        id: a.id(),
        addrs: ta.local_addrs(),
    };
    assert!(
        seed.addrs.iter().all(|addr| addr.ip().is_loopback()),
        "{:?}",
        seed.addrs
    );
    let (b, tb) = start_quic("b", vec![seed.clone()]).await;
    let (c, tc) = start_quic("c", vec![seed]).await;
    all_see_alive(
        &[&a, &b, &c],
        &[a.id(), b.id(), c.id()],
        Duration::from_secs(15),
    )
    .await;

    // Request/response over a stream.
    let response = tb
        .call(c.id(), &Request::Ping { nonce: 99 }, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(response, Response::Pong { nonce: 99 });
    let echo = eventually(Duration::from_secs(10), "a routes an echo to c", || async {
        a.echo(c.id(), b"hello".to_vec()).await.ok()
    })
    .await;
    assert_eq!(echo.path.last(), Some(&c.id()));

    for (mesh, transport) in [(a, ta), (b, tb), (c, tc)] {
        mesh.shutdown();
        transport.shutdown().await;
    }
}

/// A raw iroh client that speaks our ALPN and nothing else of ours, connected to `mesh`.
async fn raw_client(
    mesh: &Mesh,
    transport: &QuicTransport,
) -> (iroh::Endpoint, iroh::endpoint::Connection) {
    let client = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = iroh::EndpointAddr::from_parts(
        atmosphere_mesh::transport::quic::endpoint_id(&mesh.id()).unwrap(),
        transport
            .local_addrs()
            .into_iter()
            .map(iroh::TransportAddr::Ip),
    );
    let connection = client
        .connect(addr, atmosphere_mesh::transport::quic::ALPN)
        .await
        .unwrap();
    (client, connection)
}

/// Sends raw bytes as one request; returns the decoded answer, or `None` if the stream or the
/// connection was closed instead.
async fn raw_call(connection: &iroh::endpoint::Connection, bytes: &[u8]) -> Option<Response> {
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    send.write_all(bytes).await.ok()?;
    send.finish().ok()?;
    let reply = recv.read_to_end(1 << 20).await.ok()?;
    atmosphere_proto::frame::decode(&reply, 1 << 20).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_refused_then_cut_off_and_the_others_do_not_notice() {
    let policy = PeerPolicy {
        requests_per_sec: 200.0,
        burst: 200.0,
        max_refusals: 3000,
        ..PeerPolicy::default()
    };
    let (a, ta) = start_quic_with("a", vec![], policy).await;
    let seed = PeerAddr {
        id: a.id(),
        addrs: ta.local_addrs(),
    };
    let (b, tb) = start_quic("b", vec![seed]).await;
    all_see_alive(&[&a, &b], &[a.id(), b.id()], Duration::from_secs(15)).await;

    let (client, connection) = raw_client(&a, &ta).await;
    let ping = atmosphere_proto::frame::encode(&Request::Ping { nonce: 1 }, 1 << 20).unwrap();
    let (pongs, limited) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (connection, ping, pongs, limited) = (
            connection.clone(),
            ping.clone(),
            pongs.clone(),
            limited.clone(),
        );
        flooders.spawn(async move {
            // Until the node hangs up on us.
            while let Some(answer) = raw_call(&connection, &ping).await {
                let counter = match answer {
                    Response::Pong { .. } => &pongs,
                    Response::Error {
                        code: atmosphere_proto::ErrorCode::RateLimited,
                        ..
                    } => &limited,
                    other => panic!("unexpected answer to a flood: {other:?}"),
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    // While the flood lasts, an honest peer is served as usual.
    for nonce in 0..20 {
        let answer = tb
            .call(a.id(), &Request::Ping { nonce }, Duration::from_secs(2))
            .await
            .expect("an honest peer is answered during the flood");
        assert_eq!(answer, Response::Pong { nonce });
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while flooders.join_next().await.is_some() {}
    })
    .await
    .expect("the flooder is cut off");
    let closed = connection.close_reason().expect("the connection is closed");
    assert!(closed.to_string().contains("flooding"), "{closed}");
    let limited = limited.load(std::sync::atomic::Ordering::Relaxed);
    assert!(limited > 0, "no request was refused for rate");
    // Not one "down" verdict about the honest peer, before or after.
    let view = a.status().await.unwrap();
    assert!(
        view.nodes
            .iter()
            .any(|n| n.id == b.id() && n.status == atmosphere_mesh::Status::Alive),
        "{view:?}"
    );
    assert_eq!(
        tb.call(a.id(), &Request::Ping { nonce: 99 }, Duration::from_secs(2))
            .await
            .unwrap(),
        Response::Pong { nonce: 99 }
    );
    client.close().await;
    for (mesh, transport) in [(a, ta), (b, tb)] {
        mesh.shutdown();
        transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_gets_an_error_and_the_node_lives_on() {
    let (a, ta) = start_quic("a", vec![]).await;
    // A raw client that sends frames of a future protocol version, undecodable bodies, oversized
    // lengths.
    let (client, connection) = raw_client(&a, &ta).await;
    for bad in [
        vec![0, 0, 0, 3, 9, 1, 2],             // unknown version
        vec![0, 0, 0, 4, 1, 0xff, 0xff, 0xff], // undecodable body
        vec![0xff, 0xff, 0xff, 0xff],          // oversized length
    ] {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1 << 20).await.unwrap();
        let response: Response = atmosphere_proto::frame::decode(&reply, 1 << 20).unwrap();
        assert!(matches!(response, Response::Error { .. }), "{response:?}");
    }
    // Still serving.
    assert_eq!(a.status().await.unwrap().nodes.len(), 1);
    // A peer that keeps sending garbage loses its connection.
    let max_bad = PeerPolicy::default().max_bad_frames;
    for _ in 0..max_bad {
        if raw_call(&connection, &[0, 0, 0, 3, 9, 1, 2])
            .await
            .is_none()
        {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .expect("the connection is closed after too many bad frames");
    let (fresh_client, fresh) = raw_client(&a, &ta).await;
    let ping = atmosphere_proto::frame::encode(&Request::Ping { nonce: 5 }, 1 << 20).unwrap();
    assert_eq!(
        raw_call(&fresh, &ping).await,
        Some(Response::Pong { nonce: 5 }),
        "the node still serves others"
    );
    fresh_client.close().await;
    a.shutdown();
    ta.shutdown().await;
    client.close().await;
}

/// A bare endpoint (no mesh) that answers pings: `key` at `generation`, on a fresh port.
async fn pinger(key: iroh::SecretKey, generation: u64) -> std::sync::Arc<QuicTransport> {
    let mut quic = QuicConfig::new("127.0.0.1:0".parse().unwrap());
    quic.generation = generation;
    let (transport, mut incoming_rx) = QuicTransport::bind(key, quic).await.unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = incoming_rx.recv().await {
            if let Request::Ping { nonce } = incoming.request {
                let _ = incoming.reply_tx.send(Response::Pong { nonce });
            }
        }
    });
    transport
}

async fn ping(
    from: &QuicTransport,
    to: atmosphere_proto::NodeId,
    nonce: u64,
) -> Result<Response, String> {
    from.call(to, &Request::Ping { nonce }, Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())
}

/// b dies without a word (its runtime stops: no close frame, no answer, as under kill -9) while
/// a holds a connection to it, and comes back with the same key, a new generation and new ports.
/// a's very first call to b's new self must get through — whether b's new self dials a first or
/// a only hears of the restart from gossip — instead of waiting on the dead connection.
#[test]
fn a_call_to_a_restarted_peer_reaches_its_new_self_at_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for new_self_dials in [true, false] {
        let key = iroh::SecretKey::generate();
        let b_id = atmosphere_mesh::transport::quic::node_id(&key.public());
        // b's former self lives on a runtime of its own, so that it can die abruptly.
        let doomed = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let old_b = doomed.block_on(pinger(key.clone(), 1));
        let old_addrs = old_b.local_addrs();
        let a = runtime.block_on(pinger(iroh::SecretKey::generate(), 1));
        a.add_peer_addrs(b_id, &old_addrs);
        // a dials b and keeps the connection.
        assert_eq!(
            runtime.block_on(ping(&a, b_id, 1)),
            Ok(Response::Pong { nonce: 1 })
        );

        doomed.shutdown_background();
        // Dropping the endpoint outside its runtime would try to close it politely.
        std::mem::forget(old_b);

        runtime.block_on(async {
            let new_b = pinger(key.clone(), 2).await;
            let new_addrs = new_b.local_addrs();
            assert_ne!(new_addrs, old_addrs, "a new port");
            if new_self_dials {
                new_b.add_peer_addrs(a.local_id(), &a.local_addrs());
                assert_eq!(
                    ping(&new_b, a.local_id(), 2).await,
                    Ok(Response::Pong { nonce: 2 })
                );
            } else {
                // What the mesh driver does on gossip of b's new generation.
                a.add_peer_addrs(b_id, &new_addrs);
                a.peer_restarted(b_id, 2);
            }
            assert_eq!(
                ping(&a, b_id, 3).await,
                Ok(Response::Pong { nonce: 3 }),
                "new self dials first: {new_self_dials}"
            );
            new_b.shutdown().await;
            a.shutdown().await;
        });
    }
}

//! Three nodes over real QUIC (iroh) on 127.0.0.1, in one process.

use std::net::SocketAddr;
use std::time::Duration;

use atmosphere_mesh::transport::Transport;
use atmosphere_mesh::transport::quic::{QuicConfig, QuicTransport};
use atmosphere_mesh::{Mesh, MeshConfig, PeerAddr};
use atmosphere_proto::{Request, Response};

use crate::kit::*;

async fn start_quic(name: &str, bootstrap: Vec<PeerAddr>) -> (Mesh, std::sync::Arc<QuicTransport>) {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let key = iroh::SecretKey::generate();
    let (transport, incoming_rx) = QuicTransport::bind(key, QuicConfig::new(listen))
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_gets_an_error_and_the_node_lives_on() {
    let (a, ta) = start_quic("a", vec![]).await;
    // A raw iroh client that speaks our ALPN but sends a frame of a future protocol version.
    let client = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = iroh::EndpointAddr::from_parts(
        atmosphere_mesh::transport::quic::endpoint_id(&a.id()).unwrap(),
        ta.local_addrs().into_iter().map(iroh::TransportAddr::Ip),
    );
    let connection = client
        .connect(addr, atmosphere_mesh::transport::quic::ALPN)
        .await
        .unwrap();
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
    a.shutdown();
    ta.shutdown().await;
    client.close().await;
}

//! The loop every gossiped service runs (tools, agents, packages): announce this node's entries,
//! learn the peers' from their record, and serve routed work of the service's kind, each request
//! on a task of its own.

use std::future::Future;

use atmosphere_mesh::transport::Incoming;
use atmosphere_proto::{ErrorCode, NodeId, Request, Response, RoutedBody};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A service whose entries travel in one key of the gossiped record.
pub trait GossipService: Clone + Send + Sync + 'static {
    /// What the service is called in logs and errors ("tool", "agent", …).
    const NAME: &'static str;
    /// The record key it announces under.
    const RECORD_KEY: &'static str;

    fn mesh(&self) -> &atmosphere_mesh::Mesh;

    /// Publishes this node's entries.
    fn announce(&self) -> impl Future<Output = ()> + Send;

    /// A peer's entries changed.
    fn learn(&self, node: NodeId, bytes: &[u8]);

    /// Answers routed work addressed to this node.
    fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> impl Future<Output = Response> + Send;
}

/// Runs `service` until `cancel`.
pub async fn run<S: GossipService>(
    service: S,
    mut requests: mpsc::Receiver<Incoming>,
    cancel: CancellationToken,
) {
    let mut changes = service.mesh().subscribe();
    service.announce().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            change = changes.recv() => match change {
                Ok(change) if change.key == S::RECORD_KEY => {
                    service.learn(change.node, &change.value);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => warn!("{} service lagged {n} changes", S::NAME),
                Err(RecvError::Closed) => break,
            },
            Some(incoming) = requests.recv() => {
                let service = service.clone();
                tokio::spawn(async move {
                    let response = match incoming.request {
                        Request::Routed { path, body: RoutedBody::Work { payload, .. }, .. } => {
                            service.serve(path, &payload).await
                        }
                        _ => Response::Error {
                            code: ErrorCode::BadRequest,
                            message: format!("not {} work", S::NAME),
                        },
                    };
                    let _ = incoming.reply_tx.send(response);
                });
            }
        }
    }
}

//! Matter devices in the mesh: a node with a bridge gossips its devices and their state under
//! [`RECORD_KEY`] as soon as its controller hears of a change (every device reports through a
//! Matter subscription, so a change made by another controller or at the switch shows up too);
//! every node keeps the lists it hears, so `matter list` anywhere shows every device, its bridge
//! and whether it is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atmosphere_matter::Controller;
use atmosphere_mesh::{Mesh, Status};
use atmosphere_proto::NodeId;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub const RECORD_KEY: &str = "matter";
/// How often a bridge republishes its list even without a change it heard of.
const REFRESH: Duration = Duration::from_secs(5);

/// The device lists gossiped by every bridge.
#[derive(Debug, Clone, Default)]
pub struct MatterView {
    lists: Arc<Mutex<HashMap<NodeId, Vec<Value>>>>,
}

impl MatterView {
    fn learn(&self, node: NodeId, bytes: &[u8]) {
        match serde_json::from_slice::<Vec<Value>>(bytes) {
            Ok(list) if list.len() <= 512 => {
                self.lists
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(node, list);
            }
            Ok(list) => warn!(peer = %node.short(), "{} devices announced; ignored", list.len()),
            Err(e) => warn!(peer = %node.short(), "bad device list: {e}"),
        }
    }

    /// Every device of the live bridges (other than this node when `others_only`), each with
    /// `bridge` naming its node.
    pub async fn devices(&self, mesh: &Mesh, others_only: bool) -> Vec<Value> {
        let Ok(status) = mesh.status().await else {
            return Vec::new();
        };
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let wanted = |n: &&atmosphere_mesh::NodeInfo| {
            n.status == Status::Alive && !(others_only && n.is_self)
        };
        for node in status.nodes.iter().filter(wanted) {
            for device in lists.get(&node.id).into_iter().flatten() {
                let mut device = device.clone();
                device["bridge"] = Value::String(node.name.clone());
                out.push(device);
            }
        }
        out
    }
}

/// Learns the bridges' lists; on a bridge node, also publishes its own whenever a device's state
/// changes (the controller's subscriptions report it) and every few seconds in case of a missed one.
pub async fn run(
    view: MatterView,
    mesh: Mesh,
    controller: Option<Arc<Controller>>,
    cancel: CancellationToken,
) {
    let mut changes = mesh.subscribe();
    let mut ticker = tokio::time::interval(REFRESH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changed = controller.as_ref().map(|c| c.changes());
    let mut published: Option<Vec<Value>> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            change = changes.recv() => match change {
                Ok(change) if change.key == RECORD_KEY => view.learn(change.node, &change.value),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            result = async {
                match changed.as_mut() {
                    Some(changed) => changed.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !result {
                    return;
                }
            }
            _ = ticker.tick(), if controller.is_some() => {}
        }
        let Some(controller) = &controller else {
            continue;
        };
        let Ok(devices) = controller.devices().await else {
            return;
        };
        let list: Vec<Value> = devices.iter().map(crate::tools::device_json).collect();
        if published.as_ref() != Some(&list) {
            let bytes = serde_json::to_vec(&list).unwrap_or_default();
            view.learn(mesh.id(), &bytes);
            if mesh.set_value(RECORD_KEY, bytes, true).await.is_err() {
                return;
            }
            published = Some(list);
        }
    }
}

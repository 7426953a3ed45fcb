//! LAN discovery with mDNS (`_atmosphere._udp.local.`): announce this node, resolve the others.
//!
//! The TXT record carries the node id and a fingerprint of the mesh it belongs to, never a token
//! or anything that grants access: knowing an address does not admit anyone (the QUIC handshake
//! proves the key; admission is checked on top).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use atmosphere_proto::NodeId;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::peer::PeerAddr;

pub const SERVICE_TYPE: &str = "_atmosphere._udp.local.";

/// Which interfaces mDNS uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// Every interface but loopback: a real LAN.
    Lan,
    /// 127.0.0.1 only: several nodes on one machine (the demo). Never used on a LAN.
    Loopback,
    /// No mDNS; bootstrap peers only.
    Off,
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("mDNS discovery failed to start: {0}")]
pub struct DiscoveryError(String);

/// A running mDNS announcer and browser.
pub struct Discovery {
    daemon: ServiceDaemon,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Announces `id` on `port` and sends every other node resolved on the LAN to `found_tx`.
    /// `mesh_fingerprint` filters out nodes of other meshes.
    pub fn start(
        mode: DiscoveryMode,
        id: NodeId,
        name: &str,
        port: u16,
        addrs: &[IpAddr],
        mesh_fingerprint: &str,
        found_tx: mpsc::Sender<PeerAddr>,
    ) -> Result<Option<Self>, DiscoveryError> {
        if mode == DiscoveryMode::Off {
            return Ok(None);
        }
        let err = |e: mdns_sd::Error| DiscoveryError(e.to_string());
        let daemon = ServiceDaemon::new().map_err(err)?;
        let announce: Vec<IpAddr> = match mode {
            DiscoveryMode::Loopback => {
                daemon.disable_interface(IfKind::All).map_err(err)?;
                daemon.enable_interface(IfKind::LoopbackV4).map_err(err)?;
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
            }
            _ => {
                daemon.disable_interface(IfKind::LoopbackV4).map_err(err)?;
                daemon.disable_interface(IfKind::LoopbackV6).map_err(err)?;
                addrs
                    .iter()
                    .copied()
                    .filter(|a| !a.is_unspecified() && !a.is_loopback())
                    .collect()
            }
        };
        let instance = format!("{}-{}", sanitize(name), id.short());
        let host = format!("{}.local.", id.short());
        let properties = [
            ("id", id.to_string()),
            ("mesh", mesh_fingerprint.to_owned()),
            ("name", name.to_owned()),
        ];
        let service = if announce.is_empty() {
            ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), port, &properties[..])
                .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                announce.as_slice(),
                port,
                &properties[..],
            )
        }
        .map_err(err)?;
        daemon.register(service).map_err(err)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let fingerprint = mesh_fingerprint.to_owned();
        tokio::spawn(async move {
            let mut seen: HashMap<NodeId, Vec<SocketAddr>> = HashMap::new();
            loop {
                let event = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    event = events.recv_async() => event,
                };
                let Ok(event) = event else { break };
                let ServiceEvent::ServiceResolved(service) = event else {
                    continue;
                };
                let Some(peer_id) = service
                    .get_property_val_str("id")
                    .and_then(|s| s.parse::<NodeId>().ok())
                else {
                    debug!("mDNS: ignoring a service without a valid id");
                    continue;
                };
                if peer_id == id {
                    continue;
                }
                if service.get_property_val_str("mesh") != Some(fingerprint.as_str()) {
                    debug!(peer = %peer_id.short(), "mDNS: node of another mesh, ignored");
                    continue;
                }
                let port = service.get_port();
                let mut addrs: Vec<SocketAddr> = service
                    .get_addresses()
                    .iter()
                    .map(|ip| SocketAddr::new(ip.to_ip_addr(), port))
                    .filter(|a| mode == DiscoveryMode::Loopback || !a.ip().is_loopback())
                    .collect();
                addrs.sort();
                if addrs.is_empty() || seen.get(&peer_id) == Some(&addrs) {
                    continue;
                }
                info!(peer = %peer_id.short(), ?addrs, "mDNS: found node");
                seen.insert(peer_id, addrs.clone());
                if found_tx
                    .send(PeerAddr { id: peer_id, addrs })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Some(Self { daemon, cancel }))
    }

    pub fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.daemon.shutdown() {
            warn!("mDNS shutdown: {e}");
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect()
}

//! Multicast DNS for Matter: the interface to advertise and browse on, and rs-matter's builtin
//! responder bound to it. Devices announce `_matterc._udp` (commissionable) and `_matter._tcp`
//! (operational); the controller browses for them. Loopback carries no multicast: without a
//! non-loopback interface that has both IPv4 and IPv6 there is no mDNS, and devices are reached by
//! address.

use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};

use rs_matter::Matter;
use rs_matter::crypto::Crypto;
use rs_matter::error::{Error, ErrorCode};
use rs_matter::transport::network::mdns::builtin::{BuiltinMdns, Host};
use rs_matter::transport::network::mdns::{
    MDNS_IPV4_BROADCAST_ADDR, MDNS_IPV6_BROADCAST_ADDR, MDNS_SOCKET_DEFAULT_BIND_ADDR,
};
use serde::Serialize;

use crate::MatterError;

/// A network interface that can carry mDNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub ipv4: Ipv4Addr,
    pub ipv6: Vec<Ipv6Addr>,
}

/// The interface called `wanted`, or (`None`) the first that is up, not loopback and has an IPv4
/// and an IPv6 address.
pub fn interface(wanted: Option<&str>) -> Result<Interface, MatterError> {
    let all = if_addrs::get_if_addrs().map_err(|e| MatterError::Mdns(e.to_string()))?;
    let mut found: Vec<Interface> = Vec::new();
    for one in all
        .iter()
        .filter(|i| !i.is_loopback() && i.is_oper_up() && !i.is_p2p())
    {
        let Some(index) = one.index else { continue };
        let slot = match found.iter_mut().position(|f| f.name == one.name) {
            Some(at) => &mut found[at],
            None => {
                found.push(Interface {
                    name: one.name.clone(),
                    index,
                    ipv4: Ipv4Addr::UNSPECIFIED,
                    ipv6: Vec::new(),
                });
                found.last_mut().expect("just pushed")
            }
        };
        match one.ip() {
            std::net::IpAddr::V4(v4) => slot.ipv4 = v4,
            std::net::IpAddr::V6(v6) => slot.ipv6.push(v6),
        }
    }
    let usable = |i: &&Interface| !i.ipv4.is_unspecified() && !i.ipv6.is_empty();
    match wanted {
        Some(name) => {
            let named = found.iter().find(|i| i.name == name).ok_or_else(|| {
                MatterError::Mdns(format!(
                    "no interface {name:?} that is up and not loopback (have: {})",
                    names(&found)
                ))
            })?;
            usable(&named).then(|| named.clone()).ok_or_else(|| {
                MatterError::Mdns(format!(
                    "interface {name:?} needs an IPv4 and an IPv6 address for Matter's mDNS"
                ))
            })
        }
        None => found.iter().find(usable).cloned().ok_or_else(|| {
            MatterError::Mdns(format!(
                "no interface that is up, not loopback and has IPv4 and IPv6 (have: {}); \
                 commission by address instead (--address IP:PORT)",
                names(&found)
            ))
        }),
    }
}

fn names(found: &[Interface]) -> String {
    if found.is_empty() {
        "none".into()
    } else {
        found
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The mDNS socket on `[::]:5353` (shared with other responders on the host) in both groups of
/// `interface`.
fn socket(interface: &Interface) -> std::io::Result<async_io::Async<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_only_v6(false)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_loop_v6(true)?;
    socket.bind(&MDNS_SOCKET_DEFAULT_BIND_ADDR.into())?;
    let socket = UdpSocket::from(socket);
    socket.join_multicast_v6(&MDNS_IPV6_BROADCAST_ADDR, interface.index)?;
    socket.join_multicast_v4(&MDNS_IPV4_BROADCAST_ADDR, &interface.ipv4)?;
    async_io::Async::new_nonblocking(socket)
}

/// Runs rs-matter's builtin responder on `interface` for `matter`: announces its services,
/// answers queries, and serves its resolve and browse requests. Never returns unless it fails.
pub(crate) async fn run<C: Crypto>(
    matter: &Matter<'_>,
    crypto: C,
    interface: &Interface,
    hostname: &str,
) -> Result<(), Error> {
    let socket = socket(interface).map_err(|e| {
        log::warn!("mDNS on {}: {e}", interface.name);
        Error::from(ErrorCode::StdIoError)
    })?;
    let host = Host {
        hostname,
        ip: interface.ipv4,
        ipv6: &interface.ipv6,
    };
    BuiltinMdns::new()
        .run(
            &socket,
            &socket,
            &host,
            Some(interface.ipv4),
            Some(interface.index),
            matter,
            crypto,
        )
        .await
}

//! Peer addresses as people write them: `NODE_ID@HOST:PORT`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use atmosphere_proto::NodeId;

/// Where to reach a node: its id (its key, which the QUIC handshake checks) and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub id: NodeId,
    pub addrs: Vec<SocketAddr>,
}

/// Why a bootstrap peer string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad peer address {input:?}: {reason}; expected NODE_ID@IP:PORT, e.g. \
     3f9a…(64 hex digits)@192.168.1.20:7400 (`atmosphere node id` prints a node's id)"
)]
pub struct ParsePeerAddrError {
    pub input: String,
    pub reason: String,
}

impl FromStr for PeerAddr {
    type Err = ParsePeerAddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParsePeerAddrError {
            input: input.to_owned(),
            reason,
        };
        let (id, addrs) = input
            .split_once('@')
            .ok_or_else(|| err("missing '@'".into()))?;
        let id = id.trim().parse().map_err(|e| err(format!("{e}")))?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| err(format!("address {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { id, addrs })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.id)?;
        for (i, addr) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let text = format!("{}@127.0.0.1:7400,[::1]:7400", "ab".repeat(32));
        let peer: PeerAddr = text.parse().unwrap();
        assert_eq!(peer.addrs.len(), 2);
        assert_eq!(peer.to_string(), text);
        assert!("127.0.0.1:7400".parse::<PeerAddr>().is_err());
        assert!(
            format!("{}@nowhere", "ab".repeat(32))
                .parse::<PeerAddr>()
                .is_err()
        );
    }
}

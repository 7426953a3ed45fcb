//! The typed values a node publishes about itself in gossip, and the keys they live under.
//!
//! A node's gossiped state is a map from key to opaque, versioned bytes (see [`crate::gossip`]), so
//! that nodes relay keys they do not understand. The typed views below are what this version
//! of Atmosphere reads and writes under the well-known keys.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::id::NodeId;

/// A well-known key in a node's gossiped state and the type stored under it.
pub trait RecordKey {
    const KEY: &'static str;
    type Value: Serialize + DeserializeOwned;
}

/// Encodes a typed record value into the bytes gossip carries.
pub fn encode_value<K: RecordKey>(value: &K::Value) -> Vec<u8> {
    // postcard into a Vec cannot fail for our plain data types.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Decodes the bytes gossip carried for key `K`; `None` when they do not parse.
pub fn decode_value<K: RecordKey>(bytes: &[u8]) -> Option<K::Value> {
    postcard::from_bytes(bytes).ok()
}

/// The node's human name ("Mac-Studio").
#[derive(Debug)]
pub struct NameKey;
impl RecordKey for NameKey {
    const KEY: &'static str = "name";
    type Value = String;
}

/// The socket addresses the node's QUIC endpoint accepts connections on.
#[derive(Debug)]
pub struct AddrsKey;
impl RecordKey for AddrsKey {
    const KEY: &'static str = "addrs";
    type Value = Vec<SocketAddr>;
}

/// What the node offers.
#[derive(Debug)]
pub struct CapabilitiesKey;
impl RecordKey for CapabilitiesKey {
    const KEY: &'static str = "caps";
    type Value = Vec<Capability>;
}

/// How busy the node is.
#[derive(Debug)]
pub struct LoadKey;
impl RecordKey for LoadKey {
    const KEY: &'static str = "load";
    type Value = Load;
}

/// The peers the node currently reaches directly, with measured round-trip times: the edges of the
/// graph the gradient table routes over.
#[derive(Debug)]
pub struct LinksKey;
impl RecordKey for LinksKey {
    const KEY: &'static str = "links";
    type Value = Vec<Link>;
}

/// The node's current join token (binary form). Public: it is bound to the node's key.
#[derive(Debug)]
pub struct TokenKey;
impl RecordKey for TokenKey {
    const KEY: &'static str = "token";
    type Value = Vec<u8>;
}

/// The signed revocations the node knows (relayed by every node; each checks the signatures).
#[derive(Debug)]
pub struct RevocationsKey;
impl RecordKey for RevocationsKey {
    const KEY: &'static str = "revocations";
    type Value = Vec<u8>;
}

/// The authority-signed shared configs (`llamafarm.yaml` per project) the node knows, newest
/// version of each (relayed by every node; each checks the signatures).
#[derive(Debug)]
pub struct ConfigsKey;
impl RecordKey for ConfigsKey {
    const KEY: &'static str = "configs";
    type Value = Vec<u8>;
}

/// The capability descriptors a node adds to the built-in ones (description, examples and their
/// embeddings, computed once by that node); opaque to the mesh, read by the router.
#[derive(Debug)]
pub struct DescriptorsKey;
impl RecordKey for DescriptorsKey {
    const KEY: &'static str = "descriptors";
    type Value = Vec<u8>;
}

/// Present (true) once the node has announced an orderly leave.
#[derive(Debug)]
pub struct LeftKey;
impl RecordKey for LeftKey {
    const KEY: &'static str = "left";
    type Value = bool;
}

/// The models the node serves (its own and those of model servers it fronts), with health.
#[derive(Debug)]
pub struct ModelsKey;
impl RecordKey for ModelsKey {
    const KEY: &'static str = "models";
    type Value = Vec<ModelAdvert>;
}

/// A model as the mesh sees it: enough to choose between a 70B and a 7B node, and to stop sending
/// work to a backend that is failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAdvert {
    pub name: String,
    /// Architecture family from the model file ("llama", "gemma3") or the server's report.
    pub family: String,
    /// Parameter count; 0 when the backend does not say.
    pub parameters: u64,
    /// Size tier: "135M", "7B", … (from the file, else from `parameters`).
    pub size: Option<String>,
    pub quantization: Option<String>,
    pub context_length: u32,
    /// What runs it: "candle" or "llama.cpp" (in process), "ollama", "llamafarm", "openai".
    pub backend: String,
    /// Measured decode speed on this node, once it has generated.
    pub tokens_per_second: Option<f32>,
    /// Why the backend is degraded; `None` when healthy.
    pub degraded: Option<String>,
    /// What it does: "chat" or "embeddings".
    pub kind: ModelKind,
}

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embeddings,
}

/// "7B", "270M", "1.5B" from a parameter count: the tier people name models by.
pub fn size_tier(parameters: u64) -> Option<String> {
    let p = parameters as f64;
    if parameters == 0 {
        None
    } else if p >= 1e9 {
        let b = p / 1e9;
        Some(if b >= 10.0 {
            format!("{}B", b.floor())
        } else if (b - b.round()).abs() < 0.3 {
            format!("{}B", b.round())
        } else {
            format!("{b:.1}B")
        })
    } else {
        Some(format!("{}M", (p / 1e6).round()))
    }
}

/// One thing a node can do: `name` is the routing class ("llm", "vision", "matter", "rag"),
/// `detail` a short qualifier shown to people ("7B", "garage_cam").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Capability {
    pub name: String,
    pub detail: Option<String>,
}

impl Capability {
    pub fn new(name: impl Into<String>, detail: Option<String>) -> Self {
        Self {
            name: name.into(),
            detail,
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}/{}", self.name, detail),
            None => f.write_str(&self.name),
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = std::convert::Infallible;

    /// `llm/7B` → name `llm`, detail `7B`; `vision` → no detail.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.split_once('/') {
            Some((name, detail)) => Self::new(name.trim(), Some(detail.trim().to_owned())),
            None => Self::new(text.trim(), None),
        })
    }
}

/// A node's load, published every few seconds when it changes noticeably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Requests being served right now.
    pub inflight: u32,
    /// One-minute load average per core, in thousandths (1000 = every core busy).
    pub cpu_milli: u32,
}

/// A direct link from the publishing node to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub peer: NodeId,
    /// Smoothed round-trip time in microseconds.
    pub rtt_us: u32,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn values_round_trip(name in ".{0,20}", detail in prop::option::of(".{0,8}"), inflight in any::<u32>(), cpu in any::<u32>(), rtt in any::<u32>(), peer in any::<[u8; 32]>()) {
            let caps = vec![Capability { name, detail }];
            prop_assert_eq!(decode_value::<CapabilitiesKey>(&encode_value::<CapabilitiesKey>(&caps)), Some(caps));
            let load = Load { inflight, cpu_milli: cpu };
            prop_assert_eq!(decode_value::<LoadKey>(&encode_value::<LoadKey>(&load)), Some(load));
            let links = vec![Link { peer: NodeId::from_bytes(peer), rtt_us: rtt }];
            prop_assert_eq!(decode_value::<LinksKey>(&encode_value::<LinksKey>(&links)), Some(links));
        }

        /// Gossip carries these values from any peer: garbage must decode to `None`, not panic.
        #[test]
        fn arbitrary_value_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_value::<NameKey>(&bytes);
            let _ = decode_value::<AddrsKey>(&bytes);
            let _ = decode_value::<CapabilitiesKey>(&bytes);
            let _ = decode_value::<LoadKey>(&bytes);
            let _ = decode_value::<LinksKey>(&bytes);
            let _ = decode_value::<LeftKey>(&bytes);
        }
    }

    #[test]
    fn capability_text_form() {
        let cap: Capability = "llm/70B".parse().unwrap();
        assert_eq!(cap, Capability::new("llm", Some("70B".into())));
        assert_eq!(cap.to_string(), "llm/70B");
        assert_eq!("vision".parse::<Capability>().unwrap().detail, None);
    }
}

#[cfg(test)]
mod size_tests {
    use super::size_tier;

    #[test]
    fn size_tiers_read_like_model_names() {
        assert_eq!(size_tier(0), None);
        assert_eq!(size_tier(134_515_008).as_deref(), Some("135M"));
        assert_eq!(size_tier(268_098_176).as_deref(), Some("268M"));
        assert_eq!(size_tier(7_241_732_096).as_deref(), Some("7B"));
        assert_eq!(size_tier(6_980_000_000).as_deref(), Some("7B"));
        assert_eq!(size_tier(1_543_714_304).as_deref(), Some("1.5B"));
        assert_eq!(size_tier(70_553_706_496).as_deref(), Some("70B"));
    }
}

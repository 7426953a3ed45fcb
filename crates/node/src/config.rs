//! The node's configuration: one documented TOML file, every field optional, defaults good for a
//! laptop on a home LAN. Command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atmosphere_mesh::PeerAddr;
use atmosphere_mesh::discovery::DiscoveryMode;
use atmosphere_mesh::driver::MeshConfig;
use atmosphere_proto::Capability;
use serde::{Deserialize, Serialize};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("bad bootstrap peer: {0}")]
    Peer(#[from] atmosphere_mesh::peer::ParsePeerAddrError),
    #[error("{0}")]
    Invalid(String),
}

/// Everything a node needs to start. See `atmosphere config example` for the annotated file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name in the mesh ("Mac-Studio"). Default: the host name.
    pub name: String,
    /// Where identity and state live. Default: `$XDG_DATA_HOME/atmosphere` or
    /// `~/.local/share/atmosphere`.
    pub data_dir: PathBuf,
    /// QUIC address for the mesh. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTP API address; keep it on 127.0.0.1 (the CLI talks to it).
    pub api: SocketAddr,
    /// Peers to contact at start, as `NODE_ID@IP:PORT`.
    pub bootstrap: Vec<String>,
    /// mDNS discovery: "auto" (loopback when `listen` is loopback, else LAN), "lan",
    /// "loopback" or "off".
    pub discovery: String,
    /// Name of the mesh; nodes of other meshes found by mDNS are ignored.
    pub mesh: String,
    /// Capabilities this node declares, e.g. `["llm/7B", "rag"]`.
    pub capabilities: Vec<String>,
    /// Lifetime of the tokens this node issues when it is the mesh authority (joins by invite,
    /// renewals keep the lifetime of the token they replace).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    pub gossip: GossipSection,
    pub models: ModelsSection,
    pub llamafarm: LlamaFarmSection,
    /// Capabilities this node describes for the router beyond the built-in ones: a description
    /// and how people ask for it. Each is offered as a capability and its descriptor gossiped.
    pub descriptors: Vec<DescriptorSection>,
    /// Where `notify:send` delivers (its log file, an optional webhook).
    pub notify: crate::tools::NotifySettings,
    /// The object detector and the cameras of this node (`vision:detect`, `vision:analyze`).
    pub vision: crate::tools::VisionSettings,
    /// The Matter bridge: a controller on this node (`matter:list_devices`, `matter:execute`).
    pub matter: crate::tools::MatterSettings,
    /// Documents spread over the mesh (`atmosphere knowledge …`).
    pub knowledge: KnowledgeSection,
}

/// `[knowledge]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeSection {
    /// Copies of each chunk, on as many nodes (fewer while the mesh has fewer).
    pub replicas: usize,
}

impl Default for KnowledgeSection {
    fn default() -> Self {
        Self {
            replicas: crate::knowledge::place::DEFAULT_REPLICAS,
        }
    }
}

/// `[[descriptors]]`: a capability in people's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorSection {
    pub capability: String,
    pub description: String,
    pub examples: Vec<String>,
}

/// The LlamaFarm project (`llamafarm.yaml`) this node uses, kept in sync with the mesh: an edit of
/// the file, here or on any node using the same project, is signed by the authority as the next
/// version and reaches every user within seconds; each reloads its model servers from it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlamaFarmSection {
    /// The project file. Default when only `project` is set: `<data_dir>/llamafarm.yaml`.
    pub config: Option<PathBuf>,
    /// The project as `namespace/name`, for a node without the file yet (the mesh sends it).
    pub project: Option<String>,
    /// A LlamaFarm server to front for this project, e.g. `http://127.0.0.1:14345`.
    pub server: Option<String>,
}

impl LlamaFarmSection {
    /// The file this node keeps in sync, if it uses a project at all.
    pub fn path(&self, data_dir: &Path) -> Option<PathBuf> {
        match (&self.config, &self.project) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(_)) => Some(data_dir.join("llamafarm.yaml")),
            (None, None) => None,
        }
    }
}

/// The models the node runs itself, and the model servers it fronts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsSection {
    /// GGUF chat model: "" (none, the default), "auto" or "smollm2" (SmolLM2-135M from the model
    /// cache that `scripts/fetch-models` fills), "gemma3" (Gemma 3 270M, same cache) or a path.
    pub llm: String,
    /// Engine for the chat model: "auto" (llama.cpp when the build has it, else candle),
    /// "candle" or "llama.cpp".
    pub engine: String,
    /// MiniLM embeddings: "", "auto" or a directory with model.safetensors, tokenizer.json,
    /// config.json.
    pub embeddings: String,
    /// Measure the chat model's speed with a short generation at start, so the mesh learns it
    /// before the first request.
    pub warmup: bool,
    /// Model servers this node fronts; their models are advertised as this node's.
    pub servers: Vec<ServerSection>,
    /// Time between health checks of the servers.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

impl Default for ModelsSection {
    fn default() -> Self {
        Self {
            llm: String::new(),
            engine: "auto".into(),
            embeddings: String::new(),
            warmup: true,
            servers: Vec::new(),
            health_interval: Duration::from_secs(5),
        }
    }
}

/// A model server: Ollama, LlamaFarm or any OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub kind: atmosphere_backends::adapters::Kind,
    /// Base URL, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    /// LlamaFarm: the project as `namespace/name`.
    #[serde(default)]
    pub project: Option<String>,
    /// LlamaFarm: its Universal Runtime (embeddings), default `http://127.0.0.1:11540`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Time allowed for one request.
    #[serde(default = "default_server_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_server_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Timing of gossip and failure detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSection {
    /// Time between gossip rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Peers contacted per round.
    pub fanout: usize,
    /// Suspicion level at which a silent node is declared down (phi accrual).
    pub phi_threshold: f64,
    /// Silence tolerated on top of the usual heartbeat interval before suspicion rises fast.
    #[serde(with = "humantime_serde")]
    pub acceptable_pause: Duration,
    /// How long a node that is down is remembered.
    #[serde(with = "humantime_serde")]
    pub dead_node_grace: Duration,
}

impl Default for GossipSection {
    fn default() -> Self {
        let mesh = MeshConfig::new("");
        Self {
            interval: mesh.gossip_interval,
            fanout: mesh.membership.fanout,
            phi_threshold: mesh.membership.detector.phi_threshold,
            acceptable_pause: mesh.membership.detector.acceptable_pause,
            dead_node_grace: mesh.membership.dead_node_grace,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            data_dir: default_data_dir(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            api: SocketAddr::from(([127, 0, 0, 1], 7070)),
            bootstrap: Vec::new(),
            discovery: "auto".into(),
            mesh: "home".into(),
            capabilities: Vec::new(),
            token_ttl: Duration::from_secs(24 * 3600),
            gossip: GossipSection::default(),
            models: ModelsSection::default(),
            llamafarm: LlamaFarmSection::default(),
            descriptors: Vec::new(),
            notify: Default::default(),
            vision: Default::default(),
            matter: Default::default(),
            knowledge: Default::default(),
        }
    }
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "atmosphere-node".into())
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("atmosphere");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/atmosphere"),
        None => PathBuf::from(".atmosphere"),
    }
}

impl NodeConfig {
    /// Reads a TOML file; fields it does not set keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// A config for tests: everything on 127.0.0.1 with free ports, no mDNS, in `data_dir`.
    pub fn for_test(name: &str, data_dir: &Path) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            discovery: "off".into(),
            ..Self::default()
        }
    }

    pub fn discovery_mode(&self) -> Result<DiscoveryMode, ConfigError> {
        match self.discovery.as_str() {
            "auto" if self.listen.ip().is_loopback() => Ok(DiscoveryMode::Loopback),
            "auto" | "lan" => Ok(DiscoveryMode::Lan),
            "loopback" => Ok(DiscoveryMode::Loopback),
            "off" => Ok(DiscoveryMode::Off),
            other => Err(ConfigError::Invalid(format!(
                "discovery = {other:?}: use \"auto\", \"lan\", \"loopback\" or \"off\""
            ))),
        }
    }

    pub fn bootstrap_peers(&self) -> Result<Vec<PeerAddr>, ConfigError> {
        self.bootstrap
            .iter()
            .map(|p| p.parse().map_err(ConfigError::from))
            .collect()
    }

    pub fn capability_list(&self) -> Vec<Capability> {
        self.capabilities
            .iter()
            .filter(|c| !c.trim().is_empty())
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// The mesh actor's settings derived from this config.
    pub fn mesh_config(&self, generation: u64) -> Result<MeshConfig, ConfigError> {
        if self.gossip.interval < Duration::from_millis(10) {
            return Err(ConfigError::Invalid(format!(
                "gossip.interval = {:?} is too short: use at least 10ms",
                self.gossip.interval
            )));
        }
        if self.name.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "name is empty: set `name = \"...\"` or pass --name".into(),
            ));
        }
        for d in &self.descriptors {
            let valid_name = !d.capability.is_empty()
                && d.capability.len() <= 64
                && d.capability
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'));
            if !valid_name || d.examples.is_empty() || d.examples.len() > 64 {
                return Err(ConfigError::Invalid(format!(
                    "descriptor {:?}: the capability is letters, digits, '-', '_' or ':' (at most \
                     64), with 1 to 64 examples",
                    d.capability
                )));
            }
        }
        let mut mesh = MeshConfig::new(self.name.trim());
        mesh.generation = generation;
        mesh.capabilities = self.capability_list();
        for d in &self.descriptors {
            let capability = Capability::new(d.capability.clone(), None);
            if !mesh.capabilities.contains(&capability) {
                mesh.capabilities.push(capability);
            }
        }
        let matter = Capability::new("matter", None);
        if self.matter.controller && !mesh.capabilities.contains(&matter) {
            mesh.capabilities.push(matter);
        }
        mesh.bootstrap = self.bootstrap_peers()?;
        mesh.gossip_interval = self.gossip.interval;
        mesh.call_timeout = (self.gossip.interval * 2).max(Duration::from_millis(500));
        mesh.link_ttl = self.gossip.interval * 10;
        mesh.membership.fanout = self.gossip.fanout.max(1);
        mesh.membership.dead_node_grace = self.gossip.dead_node_grace;
        mesh.membership.detector.phi_threshold = self.gossip.phi_threshold;
        mesh.membership.detector.acceptable_pause = self.gossip.acceptable_pause;
        mesh.membership.detector.initial_interval = self.gossip.interval;
        Ok(mesh)
    }

    /// A short fingerprint of the mesh name, safe to announce on the LAN.
    pub fn mesh_fingerprint(&self) -> String {
        // FNV-1a: a stable, dependency-free tag; it only filters, it grants nothing.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.mesh.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

/// The annotated example printed by `atmosphere config example`.
pub const EXAMPLE: &str = r#"# Atmosphere node configuration. Every field is optional; these are the defaults
# unless noted. Flags of `atmosphere serve` override the file.

# The node's name in the mesh. Default: the host name.
name = "Mac-Studio"

# Identity (node.key, 0600) and state (node.redb) live here.
# Default: $XDG_DATA_HOME/atmosphere or ~/.local/share/atmosphere
# data_dir = "/var/lib/atmosphere"

# QUIC address for mesh traffic. Port 0 picks a free port.
listen = "0.0.0.0:7400"

# HTTP API for the CLI and local apps. Keep it on 127.0.0.1.
api = "127.0.0.1:7070"

# Peers to contact at start (`atmosphere node id` on a peer prints its line).
bootstrap = []
# bootstrap = ["<64-hex node id>@192.168.1.20:7400"]

# mDNS discovery: "auto" (loopback when `listen` is 127.0.0.1, else the LAN),
# "lan", "loopback" or "off".
discovery = "auto"

# Nodes found by mDNS that belong to another mesh are ignored.
mesh = "home"

# What this node offers, as NAME or NAME/DETAIL.
capabilities = ["llm/7B", "rag"]

# Lifetime of tokens this node issues as the mesh authority; members renew at 2/3.
token_ttl = "24h"

[models]
llm = ""          # "auto"/"smollm2": SmolLM2-135M, "gemma3": Gemma 3 270M (both from the model
                  # cache that scripts/fetch-models fills); or a GGUF path
engine = "auto"   # "auto": llama.cpp when built with `--features llama-cpp`, else "candle"
embeddings = ""   # "auto": all-MiniLM-L6-v2 from the model cache; or a directory
warmup = true     # measure tokens/s at start so the mesh knows it before the first request
health_interval = "5s"  # how often model servers are checked; a failing one is marked degraded

# Model servers this node fronts (repeat the table for several):
# [[models.servers]]
# kind = "ollama"                    # "ollama", "llamafarm" or "openai"
# url = "http://127.0.0.1:11434"
# timeout = "2m"
# # LlamaFarm only:
# # project = "default/home"
# # runtime = "http://127.0.0.1:11540"

# The LlamaFarm project this node uses, kept in sync across the mesh (signed by the authority).
# Edit the file on any node using the project, or `atmosphere config push FILE`; every user
# reloads its model servers from `runtime.models` within seconds.
[llamafarm]
# config = "/etc/atmosphere/llamafarm.yaml"
# project = "default/home"                 # without `config`: kept in <data_dir>/llamafarm.yaml
# server = "http://127.0.0.1:14345"        # a LlamaFarm server to front for the project

# Capabilities in people's words, for the router (repeat for several); gossiped with their
# embeddings so every node can route to them.
# [[descriptors]]
# capability = "garden"
# description = "Watering the garden: sprinklers, valves and soil moisture."
# examples = ["water the tomatoes", "is the soil in the greenhouse dry", "turn the sprinklers off"]

# Where the notify:send tool delivers: a log file (default <data_dir>/notifications.log), the
# node's standard output, and a webhook when set.
[notify]
# webhook = "http://127.0.0.1:8123/hook"
# log = "/var/log/atmosphere/notifications.log"

# The vision tools (offered when the detector's files are present: scripts/fetch-vision).
[vision]
# model = "/path/to/nanodet.json"
# cameras = { garage_cam = "/var/lib/atmosphere/frames/garage" }   # a directory of frames, a file or a URL

# The Matter bridge: a controller that commissions devices (`atmosphere matter commission`) and
# offers them as tools; its fabric and devices live in the node database (node.redb).
[matter]
# controller = true
# mdns_interface = "eth0"   # where `matter discover` looks; default: the first that can carry mDNS

# Documents spread over the mesh: each chunk is kept on this many nodes.
[knowledge]
replicas = 2

[gossip]
interval = "500ms"          # time between rounds
fanout = 3                  # peers per round
phi_threshold = 8.0         # suspicion at which a silent node is down
acceptable_pause = "1500ms" # silence tolerated before suspicion rises fast
dead_node_grace = "1h"      # how long a down node is remembered
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_defaults_apply() {
        let config: NodeConfig = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(config.name, "Mac-Studio");
        assert_eq!(config.gossip.interval, Duration::from_millis(500));
        assert_eq!(config.capability_list().len(), 2);
        assert_eq!(config.discovery_mode().unwrap(), DiscoveryMode::Lan);
        config.mesh_config(1).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<NodeConfig>("nmae = \"x\"").is_err());
        let config: NodeConfig = toml::from_str("discovery = \"radio\"").unwrap();
        assert!(config.discovery_mode().is_err());
        let config: NodeConfig = toml::from_str("bootstrap = [\"nope\"]").unwrap();
        let err = config.mesh_config(1).unwrap_err().to_string();
        assert!(err.contains("NODE_ID@IP:PORT"), "{err}");
    }

    #[test]
    fn loopback_listen_means_loopback_discovery() {
        let config: NodeConfig = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(config.discovery_mode().unwrap(), DiscoveryMode::Loopback);
    }
}

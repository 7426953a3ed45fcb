//! The JSON bodies of a node's HTTP API — what a client sends on each `POST` route — and the
//! checks a node makes on one before it acts: sizes, counts, ranges and syntax, each refused
//! with an error that says what is allowed. No I/O: the node (server) and the CLI (client) share
//! these types, and the fuzzer (`fuzz/fuzz_targets/http_bodies.rs`) takes every body whole.
//!
//! A body that passes [`Body::check`] can still fail later (an unknown node, an unreadable path);
//! what the check guarantees is that nothing past it has to guard against absurd sizes.

use std::net::SocketAddr;
use std::path::PathBuf;

use atmosphere_agents::{AgentDef, DefError, Event};
use atmosphere_proto::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest intent (and agent input, and routed text) accepted.
pub const MAX_INTENT_BYTES: usize = 16 * 1024;
/// Most intents routed by one `POST /v1/route`.
pub const MAX_ROUTE_BATCH: usize = 1000;
/// Longest name: a node, mesh, device, room, package, collection, capability or a node selector.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest free text carried whole: a `llamafarm.yaml`, a package manifest, an invite.
pub const MAX_TEXT_BYTES: usize = 2 * 1024 * 1024;
/// Longest tool arguments (as JSON).
pub const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Longest question put to the knowledge of the mesh.
pub const MAX_QUESTION_BYTES: usize = 4096;
/// Most passages a knowledge query returns.
pub const MAX_TOP_K: usize = 50;
/// Most messages in one conversation, and bytes in one message.
pub const MAX_MESSAGES: usize = 1024;
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most stop strings of a chat completion.
pub const MAX_STOPS: usize = 8;
/// Most texts embedded by one `POST /v1/embeddings`.
pub const MAX_EMBED_INPUTS: usize = 256;
/// Most entries of a list of names (capabilities, nodes to pull from, paths).
pub const MAX_LIST: usize = 256;
/// Longest lifetime of an invite (30 days) and of a token (10 years), in seconds.
pub const MAX_INVITE_TTL_SECS: u64 = 30 * 24 * 3600;
pub const MAX_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A request body of the node's HTTP API.
pub trait Body: Serialize + DeserializeOwned {
    /// The route it is posted to (`{…}` for a path parameter).
    const ROUTE: &'static str;

    /// What the node checks before it acts on the body.
    fn check(&self) -> Result<(), BodyError>;
}

/// Why a body was refused; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    #[error("{what} is {size}; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Agent(#[from] DefError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BodyError {
    BodyError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// At most `limit` (bytes or items).
fn at_most(what: &'static str, size: usize, limit: usize) -> Result<(), BodyError> {
    if size > limit {
        return Err(BodyError::TooLarge { what, size, limit });
    }
    Ok(())
}

/// A name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
pub fn check_name(field: &'static str, name: &str) -> Result<(), BodyError> {
    if name.trim().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    at_most(field, name.len(), MAX_NAME_BYTES)?;
    if name.chars().any(char::is_control) {
        return Err(invalid(field, "has control characters"));
    }
    Ok(())
}

/// A node: its name, its full id, or an id prefix of at least 4 hex digits.
pub fn check_node(field: &'static str, node: &str) -> Result<(), BodyError> {
    check_name(field, node)
}

fn check_names(field: &'static str, names: &[String]) -> Result<(), BodyError> {
    at_most(field, names.len(), MAX_LIST)?;
    names.iter().try_for_each(|name| check_name(field, name))
}

fn check_ttl(field: &'static str, ttl: Option<u64>, max: u64) -> Result<(), BodyError> {
    match ttl {
        Some(0) => Err(invalid(field, "is 0; give a lifetime in seconds")),
        Some(secs) if secs > max => Err(invalid(
            field,
            format!("{secs} s is more than the longest allowed, {max} s"),
        )),
        _ => Ok(()),
    }
}

fn check_text(field: &'static str, text: &str, limit: usize) -> Result<(), BodyError> {
    at_most(field, text.len(), limit)
}

// ---------------------------------------------------------------------------------------------
// The mesh and its members.

/// Body of `POST /v1/node/disconnect`, `/v1/node/reconnect` and `/v1/mesh/ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRequest {
    /// Name, full id, or an id prefix of at least 4 hex digits.
    pub node: String,
}

impl Body for NodeRequest {
    const ROUTE: &'static str = "/v1/mesh/ping";
    fn check(&self) -> Result<(), BodyError> {
        check_node("node", &self.node)
    }
}

/// Body of `POST /v1/mesh/init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRequest {
    pub name: String,
}

impl Body for InitRequest {
    const ROUTE: &'static str = "/v1/mesh/init";
    fn check(&self) -> Result<(), BodyError> {
        check_name("name", &self.name)
    }
}

/// Body of `POST /v1/mesh/invite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteRequest {
    /// How long the invite stays usable (default 1 h, at most 30 days).
    pub ttl_secs: Option<u64>,
}

impl Body for InviteRequest {
    const ROUTE: &'static str = "/v1/mesh/invite";
    fn check(&self) -> Result<(), BodyError> {
        check_ttl("ttl_secs", self.ttl_secs, MAX_INVITE_TTL_SECS)
    }
}

/// Body of `POST /v1/mesh/join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// An invite (`atmo-invite1.…`) or a token (`atmo1.…`).
    pub invite: String,
}

impl Body for JoinRequest {
    const ROUTE: &'static str = "/v1/mesh/join";
    fn check(&self) -> Result<(), BodyError> {
        if self.invite.trim().is_empty() {
            return Err(invalid("invite", "is empty; give an invite or a token"));
        }
        check_text("invite", &self.invite, MAX_TEXT_BYTES)
    }
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssueRequest {
    pub node_key: NodeId,
    pub name: String,
    /// Lifetime (default 24 h, at most 10 years).
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl Body for IssueRequest {
    const ROUTE: &'static str = "/v1/tokens";
    fn check(&self) -> Result<(), BodyError> {
        check_name("name", &self.name)?;
        check_ttl("ttl_secs", self.ttl_secs, MAX_TOKEN_TTL_SECS)?;
        check_names("capabilities", &self.capabilities)
    }
}

/// Body of `POST /v1/tokens/revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// A node name or id, or a token id (32 hex digits).
    pub target: String,
    pub reason: Option<String>,
}

impl Body for RevokeRequest {
    const ROUTE: &'static str = "/v1/tokens/revoke";
    fn check(&self) -> Result<(), BodyError> {
        check_node("target", &self.target)?;
        check_text(
            "reason",
            self.reason.as_deref().unwrap_or(""),
            MAX_NAME_BYTES,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Work: intents, tools, agents, events.

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

fn check_messages(messages: &[ChatMessage]) -> Result<(), BodyError> {
    at_most("messages", messages.len(), MAX_MESSAGES)?;
    for message in messages {
        check_name("role", &message.role)?;
        check_text("a message", &message.content, MAX_MESSAGE_BYTES)?;
    }
    Ok(())
}

/// Body of `POST /v1/intent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentRequest {
    pub text: String,
    /// Route only; do not run.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// A whole conversation for a language model (the OpenAI front door); `text` is then its last
    /// user message, used for routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl Body for IntentRequest {
    const ROUTE: &'static str = "/v1/intent";
    fn check(&self) -> Result<(), BodyError> {
        check_text("the intent", &self.text, MAX_INTENT_BYTES)?;
        check_messages(self.messages.as_deref().unwrap_or_default())
    }
}

/// Body of `POST /v1/route`: intents to route without running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteBatch {
    pub texts: Vec<String>,
}

impl Body for RouteBatch {
    const ROUTE: &'static str = "/v1/route";
    fn check(&self) -> Result<(), BodyError> {
        at_most("texts", self.texts.len(), MAX_ROUTE_BATCH)?;
        self.texts
            .iter()
            .try_for_each(|text| check_text("an intent", text, MAX_INTENT_BYTES))
    }
}

/// Body of `POST /v1/tools/{name}/call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    #[serde(default)]
    pub args: Value,
    /// Run on this node (name or id prefix) rather than the nearest provider.
    #[serde(default)]
    pub node: Option<String>,
}

impl Body for CallRequest {
    const ROUTE: &'static str = "/v1/tools/{name}/call";
    fn check(&self) -> Result<(), BodyError> {
        if let Some(node) = &self.node {
            check_node("node", node)?;
        }
        let size = serde_json::to_vec(&self.args).map_or(usize::MAX, |b| b.len());
        at_most("the arguments", size, MAX_ARGS_BYTES)
    }
}

/// Body of `POST /v1/agents`: a definition, and where to deploy it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub def: AgentDef,
    #[serde(default)]
    pub node: Option<String>,
}

impl Body for DeployRequest {
    const ROUTE: &'static str = "/v1/agents";
    fn check(&self) -> Result<(), BodyError> {
        if let Some(node) = &self.node {
            check_node("node", node)?;
        }
        Ok(self.def.check()?)
    }
}

/// Body of `POST /v1/agents/{name}/invoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeRequest {
    pub input: String,
}

impl Body for InvokeRequest {
    const ROUTE: &'static str = "/v1/agents/{name}/invoke";
    fn check(&self) -> Result<(), BodyError> {
        check_text("the input", &self.input, MAX_INTENT_BYTES)
    }
}

/// `POST /v1/events` takes an [`Event`].
impl Body for Event {
    const ROUTE: &'static str = "/v1/events";
    fn check(&self) -> Result<(), BodyError> {
        check_name("kind", &self.kind)?;
        check_name("source", &self.source)?;
        check_text("the summary", &self.summary, MAX_INTENT_BYTES)?;
        let size = serde_json::to_vec(&self.data).map_or(usize::MAX, |b| b.len());
        at_most("the data", size, MAX_ARGS_BYTES)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared configs, packages, knowledge, devices.

/// Body of `POST /v1/configs`: a `llamafarm.yaml` to sign and spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPush {
    pub text: String,
}

impl Body for ConfigPush {
    const ROUTE: &'static str = "/v1/configs";
    fn check(&self) -> Result<(), BodyError> {
        check_text("the config", &self.text, MAX_TEXT_BYTES)
    }
}

/// Body of `POST /v1/packages/seal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealRequest {
    /// The manifest's exact text.
    pub manifest: String,
}

impl Body for SealRequest {
    const ROUTE: &'static str = "/v1/packages/seal";
    fn check(&self) -> Result<(), BodyError> {
        check_text("the manifest", &self.manifest, MAX_TEXT_BYTES)
    }
}

/// Body of `POST /v1/packages/import`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRequest {
    /// A package directory on this node's machine.
    pub path: PathBuf,
}

impl Body for ImportRequest {
    const ROUTE: &'static str = "/v1/packages/import";
    fn check(&self) -> Result<(), BodyError> {
        check_path(&self.path)
    }
}

fn check_path(path: &std::path::Path) -> Result<(), BodyError> {
    if path.as_os_str().is_empty() {
        return Err(invalid("path", "is empty"));
    }
    at_most("path", path.as_os_str().len(), 4096)
}

/// Body of `POST /v1/packages/pull`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub name: String,
    /// Node names or ids to pull from; every live holder when empty.
    #[serde(default)]
    pub from: Vec<String>,
    /// Bytes per second at most.
    #[serde(default)]
    pub limit_rate: Option<u64>,
}

impl Body for PullRequest {
    const ROUTE: &'static str = "/v1/packages/pull";
    fn check(&self) -> Result<(), BodyError> {
        check_name("name", &self.name)?;
        check_names("from", &self.from)?;
        check_rate(self.limit_rate)
    }
}

fn check_rate(rate: Option<u64>) -> Result<(), BodyError> {
    match rate {
        Some(0) => Err(invalid(
            "limit_rate",
            "is 0 bytes per second; leave it out for no limit",
        )),
        _ => Ok(()),
    }
}

/// Body of `POST /v1/packages/push`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// A package this node holds.
    pub name: String,
    /// The node that should receive it.
    pub to: String,
    #[serde(default)]
    pub limit_rate: Option<u64>,
}

impl Body for PushRequest {
    const ROUTE: &'static str = "/v1/packages/push";
    fn check(&self) -> Result<(), BodyError> {
        check_name("name", &self.name)?;
        check_node("to", &self.to)?;
        check_rate(self.limit_rate)
    }
}

/// Body of `POST /v1/knowledge/add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeAddRequest {
    pub collection: String,
    /// Files or directories on this node's machine.
    pub paths: Vec<PathBuf>,
}

impl Body for KnowledgeAddRequest {
    const ROUTE: &'static str = "/v1/knowledge/add";
    fn check(&self) -> Result<(), BodyError> {
        check_name("collection", &self.collection)?;
        if self.paths.is_empty() {
            return Err(invalid("paths", "is empty; give files or directories"));
        }
        at_most("paths", self.paths.len(), MAX_LIST)?;
        self.paths.iter().try_for_each(|p| check_path(p))
    }
}

/// Body of `POST /v1/knowledge/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeQuery {
    pub query: String,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub top_k: Option<usize>,
}

impl Body for KnowledgeQuery {
    const ROUTE: &'static str = "/v1/knowledge/query";
    fn check(&self) -> Result<(), BodyError> {
        let question = self.query.trim();
        if question.is_empty() || question.len() > MAX_QUESTION_BYTES {
            return Err(invalid(
                "query",
                format!("a question is 1 to {MAX_QUESTION_BYTES} bytes"),
            ));
        }
        if let Some(collection) = &self.collection {
            check_name("collection", collection)?;
        }
        match self.top_k {
            Some(k) if k == 0 || k > MAX_TOP_K => Err(invalid(
                "top_k",
                format!("{k} passages; ask for 1 to {MAX_TOP_K}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Body of `POST /v1/matter/commission`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommissionRequest {
    /// The manual pairing code the device shows (`3497-011-2332`), or its bare setup passcode.
    pub code: String,
    /// Where the device answers (`IP:PORT`; Matter's port is 5540); without it the bridge finds
    /// the device by mDNS from the pairing code's discriminator.
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// What people call it ("garage light").
    pub name: String,
    /// The room it is in ("garage"); requests may name it instead of the device.
    #[serde(default)]
    pub room: Option<String>,
}

impl Body for CommissionRequest {
    const ROUTE: &'static str = "/v1/matter/commission";
    fn check(&self) -> Result<(), BodyError> {
        check_name("code", &self.code)?;
        check_name("name", &self.name)?;
        if let Some(room) = &self.room {
            check_name("room", room)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The OpenAI-compatible front door.

/// `POST /v1/chat/completions` body (the fields a node honours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub stream: bool,
}

/// `stop` is a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(stop) => vec![stop],
            Self::Many(stops) => stops,
        }
    }
}

impl Body for ChatRequest {
    const ROUTE: &'static str = "/v1/chat/completions";
    fn check(&self) -> Result<(), BodyError> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "is empty"));
        }
        check_messages(&self.messages)?;
        if let Some(model) = &self.model {
            check_name("model", model)?;
        }
        if let Some(stop) = &self.stop {
            let stops = match stop {
                StopField::One(stop) => std::slice::from_ref(stop),
                StopField::Many(stops) => stops.as_slice(),
            };
            at_most("stop", stops.len(), MAX_STOPS)?;
            stops
                .iter()
                .try_for_each(|s| check_text("a stop string", s, MAX_NAME_BYTES))?;
        }
        Ok(())
    }
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: EmbeddingInput,
}

/// One text or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

impl EmbeddingInput {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

impl Body for EmbeddingsRequest {
    const ROUTE: &'static str = "/v1/embeddings";
    fn check(&self) -> Result<(), BodyError> {
        let texts = match &self.input {
            EmbeddingInput::One(text) => std::slice::from_ref(text),
            EmbeddingInput::Many(texts) => texts.as_slice(),
        };
        if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
            return Err(invalid(
                "input",
                format!("must hold 1 to {MAX_EMBED_INPUTS} texts"),
            ));
        }
        texts
            .iter()
            .try_for_each(|t| check_text("a text", t, MAX_MESSAGE_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode<T: Body>(json: &str) -> Result<T, String> {
        let body: T = serde_json::from_str(json).map_err(|e| e.to_string())?;
        body.check().map_err(|e| e.to_string())?;
        Ok(body)
    }

    #[test]
    fn well_formed_bodies_pass() {
        decode::<IntentRequest>(r#"{"text": "turn on the garage lights"}"#).unwrap();
        decode::<RouteBatch>(r#"{"texts": ["a", "b"]}"#).unwrap();
        decode::<CallRequest>(r#"{"args": {"device": "garage light"}, "node": "pi"}"#).unwrap();
        decode::<KnowledgeQuery>(r#"{"query": "cameras?", "top_k": 5}"#).unwrap();
        decode::<ChatRequest>(r#"{"messages": [{"role": "user", "content": "hi"}], "stop": "\n"}"#)
            .unwrap();
        decode::<EmbeddingsRequest>(r#"{"input": ["a", "b"]}"#).unwrap();
        decode::<InviteRequest>(r#"{"ttl_secs": 3600}"#).unwrap();
    }

    #[test]
    fn absurd_bodies_are_refused_with_what_is_allowed() {
        let long = "x".repeat(MAX_INTENT_BYTES + 1);
        let error = decode::<IntentRequest>(&format!(r#"{{"text": "{long}"}}"#)).unwrap_err();
        assert!(error.contains("the limit is 16384"), "{error}");
        let error = decode::<KnowledgeQuery>(r#"{"query": "q", "top_k": 0}"#).unwrap_err();
        assert!(error.contains("ask for 1 to 50"), "{error}");
        let error = decode::<InviteRequest>(r#"{"ttl_secs": 18446744073709551615}"#).unwrap_err();
        assert!(error.contains("longest allowed"), "{error}");
        let error = decode::<ChatRequest>(r#"{"messages": []}"#).unwrap_err();
        assert_eq!(error, "messages: is empty");
        let error = decode::<NodeRequest>(r#"{"node": "a\u0000b"}"#).unwrap_err();
        assert!(error.contains("control characters"), "{error}");
        let error = decode::<PullRequest>(r#"{"name": "m", "limit_rate": 0}"#).unwrap_err();
        assert!(error.contains("leave it out"), "{error}");
        let texts = vec!["t"; MAX_ROUTE_BATCH + 1];
        let batch = RouteBatch {
            texts: texts.into_iter().map(String::from).collect(),
        };
        assert!(matches!(
            batch.check(),
            Err(BodyError::TooLarge { limit: 1000, .. })
        ));
    }

    #[test]
    fn a_bad_agent_definition_says_why() {
        let body = r#"{"def": {"name": "Bad Name", "base": "reactive", "version": 1,
            "description": "d", "intents": ["x"]}}"#;
        match serde_json::from_str::<DeployRequest>(body).map(|d| d.check()) {
            Ok(Err(BodyError::Agent(_))) => {}
            other => panic!("{other:?}"),
        }
    }
}

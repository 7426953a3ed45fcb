//! Intents end to end: embed the text once, classify it against the capability descriptors, pick
//! the provider (gradient cost, and model size by the intent's complexity for language models),
//! run it there — locally or over the mesh as routed `intent` work — and fail over to the next
//! provider when one fails. Every step is kept as a trace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atmosphere_backends::{ChatMessage, GenerateOptions};
use atmosphere_mesh::{Mesh, MeshError, Status};
use atmosphere_proto::record::{DescriptorsKey, RecordKey};
use atmosphere_proto::{ErrorCode, ModelKind, NodeId, Request, Response, RoutedBody, RoutedReply};
use atmosphere_routing::{
    Advertised, Candidate, Classifier, Complexity, Descriptor, EmbeddedDescriptor, GENERAL,
    OUT_OF_SCOPE, Params, Ranked, Scored, builtin, complexity_descriptors, rank,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use tokio::sync::OnceCell;
use tracing::{info, warn};

pub use atmosphere_api::IntentRequest;

use crate::models::LocalModels;
use crate::servers::ModelServers;

/// The `kind` of routed work this module serves.
pub const WORK_KIND: &str = "intent";
/// How many providers an intent tries before giving up.
const MAX_ATTEMPTS: usize = 3;
/// Time allowed for one provider to answer (model generation included).
const WORK_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_MAX_TOKENS: usize = 256;

/// Why an intent could not be routed or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    #[error("the router cannot embed: {0}")]
    Embed(String),
    #[error("the intent is empty")]
    Empty,
    #[error("no node in the mesh offers {capability}, nor a general language model")]
    NoProvider { capability: String },
    #[error("every provider failed: {0}")]
    AllFailed(String),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// Where an intent goes and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDecision {
    pub text: String,
    /// The capability the intent asks for (`llm` when it fell back).
    pub capability: String,
    /// The classifier's class: the capability, or `out-of-scope`.
    pub class: String,
    pub score: f32,
    pub fallback: bool,
    /// For language models: how demanding the intent is, in [0, 1].
    pub complexity: Option<f32>,
    /// The best three capabilities with their scores.
    pub ranking: Vec<Scored>,
    /// Providers, best first (the failover order).
    pub candidates: Vec<Ranked>,
    pub reason: String,
    /// Time to embed and decide.
    pub route_ms: f64,
}

impl RouteDecision {
    pub fn chosen(&self) -> Option<&Ranked> {
        self.candidates.first()
    }

    /// The class as labelled sets name it: the capability, `out-of-scope`, or `llm` when nothing
    /// fitted well.
    pub fn class_label(&self) -> &str {
        if self.fallback && self.class != OUT_OF_SCOPE {
            GENERAL
        } else {
            &self.class
        }
    }
}

/// One provider tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub node: String,
    pub hops: u8,
    pub error: Option<String>,
    pub ms: f64,
}

/// The answer to an intent, with its route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentOutcome {
    pub decision: RouteDecision,
    /// Absent on a dry run.
    pub result: Option<WorkReply>,
    /// The nodes the request passed through, the origin first.
    pub path: Vec<String>,
    pub attempts: Vec<Attempt>,
    pub total_ms: f64,
}

/// What routed intent work asks of the node that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkRequest {
    pub text: String,
    pub capability: String,
    pub class: String,
    pub max_tokens: usize,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Run this model (by its advertised name) rather than the node's default.
    #[serde(default)]
    pub model: Option<String>,
}

/// What it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkReply {
    pub node: String,
    pub capability: String,
    pub text: String,
    /// The model that answered, when one did.
    pub model: Option<String>,
    /// Embeddings: the vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub completion_tokens: usize,
    pub ms: f64,
}

struct Router {
    classifier: Classifier,
    complexity: Complexity,
}

/// What every router on this node starts from: the built-in descriptors, embedded once.
struct Base {
    builtin: Vec<(EmbeddedDescriptor, Vec<String>)>,
    complexity: Complexity,
}

/// The intent service of one node.
#[derive(Clone)]
pub struct Intents {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: Mesh,
    node_name: String,
    models: Arc<LocalModels>,
    servers: Arc<ModelServers>,
    /// This node's own descriptors (from its config).
    own: Vec<Descriptor>,
    base: OnceCell<Base>,
    /// Descriptors nodes advertise (this one included), by node.
    advertised: std::sync::Mutex<BTreeMap<NodeId, Vec<Advertised>>>,
    /// Bumped whenever `advertised` changes; the router is rebuilt when it lags.
    generation: AtomicU64,
    router: tokio::sync::RwLock<Option<(u64, Arc<Router>)>>,
    /// The node's tools, for capabilities a tool serves (set once the tool service exists).
    tools: std::sync::OnceLock<crate::tools::Tools>,
    /// The agent service: agents' intents are router classes `agent:NAME`.
    agents: std::sync::OnceLock<crate::agents::Agents>,
    matter: std::sync::OnceLock<crate::bridge::MatterView>,
    knowledge: std::sync::OnceLock<crate::knowledge::Knowledge>,
    /// Embedded descriptors of the mesh's agents, by (name, version, node).
    agent_descriptors: std::sync::Mutex<AgentCatalog>,
    /// Embeddings of recent intents.
    embed_cache: std::sync::Mutex<EmbedCache>,
    /// The agent registry generation the agents' descriptors were built from (`u64::MAX`: never).
    agents_seen: AtomicU64,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Intents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intents")
            .field("node", &self.inner.node_name)
            .field("ready", &self.inner.base.initialized())
            .finish()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Intents {
    pub fn new(
        mesh: Mesh,
        node_name: String,
        models: Arc<LocalModels>,
        servers: Arc<ModelServers>,
        own: Vec<Descriptor>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh,
                node_name,
                models,
                servers,
                own,
                base: OnceCell::new(),
                advertised: std::sync::Mutex::new(BTreeMap::new()),
                generation: AtomicU64::new(0),
                router: tokio::sync::RwLock::new(None),
                tools: std::sync::OnceLock::new(),
                agents: std::sync::OnceLock::new(),
                matter: std::sync::OnceLock::new(),
                knowledge: std::sync::OnceLock::new(),
                agent_descriptors: std::sync::Mutex::new(BTreeMap::new()),
                embed_cache: std::sync::Mutex::new(EmbedCache::default()),
                agents_seen: AtomicU64::new(u64::MAX),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Lets routing see the Matter devices of every bridge, to send a device's command to the
    /// bridge that has it.
    pub fn attach_matter(&self, view: crate::bridge::MatterView) {
        let _ = self.inner.matter.set(view);
    }

    /// Lets `rag` intents search the mesh's documents.
    pub fn attach_knowledge(&self, knowledge: crate::knowledge::Knowledge) {
        let _ = self.inner.knowledge.set(knowledge);
    }

    /// Answers `question` from the passages `found`: the largest healthy chat model in the mesh
    /// writes the answer, citing them. Returns the text with its retrieval trace and sources, the
    /// node that wrote it and its model.
    pub async fn synthesize(
        &self,
        question: &str,
        found: &crate::knowledge::QueryOutcome,
        max_tokens: usize,
    ) -> Result<(String, String, Option<String>), String> {
        let mut passages = String::new();
        for (n, hit) in found.hits.iter().enumerate() {
            let place = if hit.heading.is_empty() {
                hit.document.clone()
            } else {
                format!("{} › {}", hit.document, hit.heading)
            };
            passages.push_str(&format!("[{}] ({place})\n{}\n\n", n + 1, hit.text));
        }
        let messages = vec![
            ChatMessage {
                role: "system".into(),
                content: "You answer questions about this household from its own documents. Use \
                          only the passages given; cite them as [1], [2]. If they do not hold \
                          the answer, say so."
                    .into(),
            },
            ChatMessage::user(format!("{passages}Question: {question}")),
        ];
        let started = Instant::now();
        let status = self.inner.mesh.status().await.map_err(|e| e.to_string())?;
        let routes = self.inner.mesh.routes().await.map_err(|e| e.to_string())?;
        let candidates = candidates(&status, &routes, GENERAL);
        if candidates.is_empty() {
            return Err("no node offers a language model to write the answer".into());
        }
        // A demanding request: the largest model on offer, the network breaking ties.
        let decision = RouteDecision {
            text: question.to_owned(),
            capability: GENERAL.into(),
            class: GENERAL.into(),
            score: 1.0,
            fallback: false,
            complexity: Some(1.0),
            ranking: Vec::new(),
            candidates: rank(&candidates, Some(1.0)),
            reason: "synthesis of retrieved passages".into(),
            route_ms: ms(started),
        };
        let work = WorkRequest {
            text: question.to_owned(),
            capability: GENERAL.into(),
            class: GENERAL.into(),
            max_tokens: max_tokens.min(4096),
            messages: Some(messages),
            temperature: Some(0.0),
            model: None,
        };
        let outcome = self
            .dispatch(decision, work, started)
            .await
            .map_err(|e| e.to_string())?;
        let reply = outcome.result.ok_or("the synthesis returned nothing")?;
        let mut text = format!(
            "{}\nSynthesis on: {}\n\n{}\n\nSources:",
            found.trace(),
            reply.node,
            reply.text.trim()
        );
        for (n, hit) in found.hits.iter().enumerate() {
            text.push_str(&format!(
                "\n[{}] {}{} (chunk {}, from {}, score {:.2})",
                n + 1,
                hit.document,
                if hit.heading.is_empty() {
                    String::new()
                } else {
                    format!(" › {}", hit.heading)
                },
                hit.index,
                hit.node,
                hit.score
            ));
        }
        Ok((text, reply.node, reply.model))
    }

    /// Lets intents use the node's tools (`notify:send` for notifications).
    pub fn attach_tools(&self, tools: crate::tools::Tools) {
        let _ = self.inner.tools.set(tools);
    }

    /// The intent's embedding: from the cache when the same words were routed recently (people
    /// repeat their commands), else from MiniLM.
    async fn embed_intent(&self, text: &str) -> Result<Arc<Vec<f32>>, IntentError> {
        // MiniLM's tokenizer lowercases; spacing does not change the tokens.
        let key = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if let Some(vector) = self.embed_cache().get(&key) {
            return Ok(vector);
        }
        let vector = self
            .inner
            .models
            .embed_for_routing(vec![text.to_owned()])
            .await
            .map_err(|e| IntentError::Embed(e.to_string()))?
            .pop()
            .ok_or_else(|| IntentError::Embed("no vector".into()))?;
        let vector = Arc::new(vector);
        self.embed_cache().put(key, vector.clone());
        Ok(vector)
    }

    fn embed_cache(&self) -> std::sync::MutexGuard<'_, EmbedCache> {
        self.inner
            .embed_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Lets intents wake agents.
    pub fn attach_agents(&self, agents: crate::agents::Agents) {
        let _ = self.inner.agents.set(agents);
    }

    fn agent_descriptors(&self) -> std::sync::MutexGuard<'_, AgentCatalog> {
        self.inner
            .agent_descriptors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the agents' descriptors in step with the mesh's agents (embedding new ones once);
    /// true when the set changed.
    async fn refresh_agents(&self) -> bool {
        let Some(agents) = self.inner.agents.get() else {
            return false;
        };
        // One refresh at a time: a caller arriving mid-refresh waits for its result.
        let _one_at_a_time = self.inner.refreshing.lock().await;
        // Only when the registry changed: this runs on every route decision.
        let generation = agents.generation();
        if self
            .inner
            .agents_seen
            .swap(generation, AtomicOrdering::Relaxed)
            == generation
        {
            return false;
        }
        let never = || {
            self.inner
                .agents_seen
                .store(u64::MAX, AtomicOrdering::Relaxed)
        };
        let Ok(list) = agents.list().await else {
            never();
            return false;
        };
        if list.len() < agents.registered() {
            // Some agents' nodes are not live (yet): look again next time.
            never();
        }
        let wanted: Vec<(String, u32, String)> = list
            .iter()
            .filter(|a| !a.def.intents.is_empty())
            .map(|a| (a.def.name.clone(), a.def.version, a.node.clone()))
            .collect();
        let known: Vec<(String, u32, String)> = self.agent_descriptors().keys().cloned().collect();
        if known == wanted {
            return false;
        }
        let mut fresh = BTreeMap::new();
        for (key, agent) in wanted
            .iter()
            .zip(list.iter().filter(|a| !a.def.intents.is_empty()))
        {
            if let Some(existing) = self.agent_descriptors().get(key).cloned() {
                fresh.insert(key.clone(), existing);
                continue;
            }
            let descriptor = Descriptor {
                capability: format!("{AGENT_PREFIX}{}", agent.def.name),
                description: agent.def.description.clone(),
                examples: agent.def.intents.clone(),
            };
            match self.embed_descriptors(&[&descriptor]).await {
                Ok(mut embedded) => {
                    if let Some(one) = embedded.pop() {
                        fresh.insert(key.clone(), one);
                    }
                }
                Err(e) => warn!(agent = %agent.def.name, "agent not routable: {e}"),
            }
        }
        *self.agent_descriptors() = fresh;
        true
    }

    async fn embed_descriptors(
        &self,
        descriptors: &[&Descriptor],
    ) -> Result<Vec<(EmbeddedDescriptor, Vec<String>)>, IntentError> {
        let texts: Vec<String> = descriptors
            .iter()
            .flat_map(|d| d.texts().into_iter().map(str::to_owned))
            .collect();
        let vectors = self
            .inner
            .models
            .embed_for_routing(texts)
            .await
            .map_err(|e| IntentError::Embed(e.to_string()))?;
        let mut offset = 0;
        Ok(descriptors
            .iter()
            .map(|d| {
                let texts: Vec<String> = d.texts().into_iter().map(str::to_owned).collect();
                let n = texts.len();
                let embedded = d.embedded(&vectors[offset..offset + n]);
                offset += n;
                (embedded, texts)
            })
            .collect())
    }

    fn advertised(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<Advertised>>> {
        self.inner
            .advertised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A peer's `descriptors` value changed.
    fn learn(&self, node: NodeId, bytes: &[u8]) {
        match Advertised::decode_list(bytes, atmosphere_backends::EMBEDDING_DIM) {
            Ok(list) => {
                self.advertised().insert(node, list);
                self.inner.generation.fetch_add(1, AtomicOrdering::Relaxed);
            }
            Err(e) => warn!(peer = %node.short(), "bad descriptors: {e}"),
        }
    }

    /// The built-in descriptors, embedded once.
    async fn base(&self) -> Result<&Base, IntentError> {
        self.inner
            .base
            .get_or_try_init(|| async {
                let started = Instant::now();
                let descriptors = builtin();
                let [demanding, quick] = complexity_descriptors();
                let mut all: Vec<&Descriptor> = descriptors.iter().collect();
                all.push(&demanding);
                all.push(&quick);
                let mut embedded = self.embed_descriptors(&all).await?;
                let (quick, _) = embedded.pop().ok_or(IntentError::Empty)?;
                let (demanding, _) = embedded.pop().ok_or(IntentError::Empty)?;
                info!(
                    ms = started.elapsed().as_millis() as u64,
                    "router: built-in descriptors embedded"
                );
                Ok(Base {
                    builtin: embedded,
                    complexity: Complexity::new(&demanding, &quick),
                })
            })
            .await
    }

    /// The router over the built-in and the advertised descriptors, rebuilt when those change.
    async fn router(&self) -> Result<Arc<Router>, IntentError> {
        let base = self.base().await?;
        if self.refresh_agents().await {
            self.inner.generation.fetch_add(1, AtomicOrdering::Relaxed);
        }
        let generation = self.inner.generation.load(AtomicOrdering::Relaxed);
        if let Some((built, router)) = self.inner.router.read().await.as_ref()
            && *built == generation
        {
            return Ok(router.clone());
        }
        let mut catalog = base.builtin.clone();
        for list in self.advertised().values() {
            catalog.extend(list.iter().map(|a| (a.descriptor.clone(), a.texts.clone())));
        }
        catalog.extend(self.agent_descriptors().values().cloned());
        let classifier =
            tokio::task::spawn_blocking(move || Classifier::new(&catalog, Params::default()))
                .await
                .map_err(|e| IntentError::Embed(e.to_string()))?;
        let router = Arc::new(Router {
            classifier,
            complexity: base.complexity.clone(),
        });
        *self.inner.router.write().await = Some((generation, router.clone()));
        Ok(router)
    }

    /// Embeds this node's own descriptors and gossips them.
    async fn advertise(&self) -> Result<(), IntentError> {
        let own: Vec<&Descriptor> = self.inner.own.iter().collect();
        let embedded = self.embed_descriptors(&own).await?;
        let list: Vec<Advertised> = embedded
            .into_iter()
            .map(|(descriptor, texts)| Advertised { descriptor, texts })
            .collect();
        let bytes = Advertised::encode_list(&list);
        self.advertised().insert(self.inner.mesh.id(), list);
        self.inner.generation.fetch_add(1, AtomicOrdering::Relaxed);
        self.inner
            .mesh
            .set_value(DescriptorsKey::KEY, bytes, true)
            .await?;
        Ok(())
    }

    /// Builds the router ahead of the first intent.
    pub async fn warm_up(&self) {
        if !self.inner.own.is_empty()
            && let Err(e) = self.advertise().await
        {
            warn!("descriptors not advertised: {e}");
        }
        if let Err(e) = self.router().await {
            warn!("router not ready: {e}");
        }
    }

    /// Routes without running.
    pub async fn route(&self, text: &str) -> Result<RouteDecision, IntentError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(IntentError::Empty);
        }
        let started = Instant::now();
        let router = self.router().await?;
        let vector = self.embed_intent(text).await?;
        let classification = router.classifier.classify(&vector);
        let mut capability = if classification.fallback {
            GENERAL.to_owned()
        } else {
            classification.capability.clone()
        };
        let mut reason = classification.reason.clone();
        let status = self.inner.mesh.status().await?;
        let routes = self.inner.mesh.routes().await?;
        let mut candidates = match capability.strip_prefix(AGENT_PREFIX) {
            // An agent runs on one node: the one that announced it.
            Some(agent) => self
                .agent_descriptors()
                .keys()
                .filter(|(name, _, _)| name == agent)
                .filter_map(|(_, _, node)| {
                    let info = status
                        .nodes
                        .iter()
                        .find(|n| &n.name == node && n.status == Status::Alive)?;
                    Some(Candidate {
                        node: node.clone(),
                        hops: if info.is_self {
                            0
                        } else {
                            info.hops.unwrap_or(1)
                        },
                        cost: 0.0,
                        parameters: None,
                    })
                })
                .collect(),
            None => candidates(&status, &routes, &capability),
        };
        if candidates.is_empty() && capability != GENERAL {
            reason = format!("{reason}; no node offers {capability}, so the general LLM answers");
            capability = GENERAL.to_owned();
            candidates = self::candidates(&status, &routes, GENERAL);
        }
        let mut bridging = None;
        if capability == MATTER
            && let Some(view) = self.inner.matter.get()
        {
            // The bridge that has the device the request names goes first.
            let devices = view.devices(&self.inner.mesh, false).await;
            let named: Vec<crate::tools::Named> = devices
                .iter()
                .filter_map(crate::tools::Named::from_json)
                .collect();
            if let Some(name) = crate::tools::device_in(text, &named)
                && let Some(bridge) = devices
                    .iter()
                    .find(|d| d["name"] == name)
                    .and_then(|d| d["bridge"].as_str())
                && candidates.iter().any(|c| c.node == bridge)
            {
                reason = format!("{reason}; {bridge} bridges {name:?}");
                bridging = Some(bridge.to_owned());
            }
        }
        let complexity = (capability == GENERAL).then(|| {
            router
                .complexity
                .of(&vector, text.split_whitespace().count())
        });
        let mut ranked = rank(&candidates, complexity);
        if let Some(at) = bridging.and_then(|b| ranked.iter().position(|r| r.candidate.node == b)) {
            let chosen = ranked.remove(at);
            ranked.insert(0, chosen);
        }
        Ok(RouteDecision {
            text: text.to_owned(),
            capability,
            class: classification.capability,
            score: classification.score,
            fallback: classification.fallback,
            complexity,
            ranking: classification.ranking.into_iter().take(3).collect(),
            candidates: ranked,
            reason,
            route_ms: ms(started),
        })
    }

    /// Routes and runs, failing over along the candidates.
    pub async fn run(&self, request: &IntentRequest) -> Result<IntentOutcome, IntentError> {
        let started = Instant::now();
        let decision = self.route(&request.text).await?;
        if request.dry_run {
            return Ok(IntentOutcome {
                decision,
                result: None,
                path: Vec::new(),
                attempts: Vec::new(),
                total_ms: ms(started),
            });
        }
        if decision.candidates.is_empty() {
            return Err(IntentError::NoProvider {
                capability: decision.capability.clone(),
            });
        }
        let work = WorkRequest {
            text: decision.text.clone(),
            capability: decision.capability.clone(),
            class: decision.class.clone(),
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(4096),
            messages: request.messages.clone(),
            temperature: request.temperature,
            model: None,
        };
        self.dispatch(decision, work, started).await
    }

    /// Runs a language-model request on a node that advertises `model` (healthy), nearest first.
    pub async fn run_model(
        &self,
        model: &str,
        request: &IntentRequest,
    ) -> Result<IntentOutcome, IntentError> {
        let started = Instant::now();
        let status = self.inner.mesh.status().await?;
        let routes = self.inner.mesh.routes().await?;
        let mut candidates: Vec<Candidate> = candidates(&status, &routes, GENERAL)
            .into_iter()
            .filter(|c| {
                status.nodes.iter().any(|n| {
                    n.name == c.node
                        && n.models
                            .iter()
                            .any(|m| m.name == model && m.degraded.is_none())
                })
            })
            .collect();
        candidates.iter_mut().for_each(|c| c.parameters = None);
        if candidates.is_empty() {
            return Err(IntentError::NoProvider {
                capability: format!("model {model:?}"),
            });
        }
        let decision = RouteDecision {
            text: request.text.clone(),
            capability: GENERAL.into(),
            class: GENERAL.into(),
            score: 1.0,
            fallback: false,
            complexity: None,
            ranking: Vec::new(),
            candidates: rank(&candidates, None),
            reason: format!("the request names the model {model:?}"),
            route_ms: ms(started),
        };
        let work = WorkRequest {
            text: request.text.clone(),
            capability: GENERAL.into(),
            class: GENERAL.into(),
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(4096),
            messages: request.messages.clone(),
            temperature: request.temperature,
            model: Some(model.to_owned()),
        };
        self.dispatch(decision, work, started).await
    }

    /// Sends the work to the decision's candidates in order until one answers.
    async fn dispatch(
        &self,
        decision: RouteDecision,
        work: WorkRequest,
        started: Instant,
    ) -> Result<IntentOutcome, IntentError> {
        let payload = serde_json::to_vec(&work).unwrap_or_default();
        let status = self.inner.mesh.status().await?;
        let mut attempts = Vec::new();
        for ranked in decision.candidates.iter().take(MAX_ATTEMPTS) {
            let Some(node) = status
                .nodes
                .iter()
                .find(|n| n.name == ranked.candidate.node && n.status == Status::Alive)
            else {
                continue;
            };
            let tried = Instant::now();
            let outcome = self
                .inner
                .mesh
                .work(node.id, WORK_KIND, payload.clone(), WORK_TIMEOUT)
                .await;
            let error = match outcome {
                Ok(result) => match serde_json::from_slice::<WorkReply>(&result.payload) {
                    Ok(reply) => {
                        attempts.push(Attempt {
                            node: node.name.clone(),
                            hops: ranked.candidate.hops,
                            error: None,
                            ms: ms(tried),
                        });
                        let path = result.path.iter().map(|id| name_of(&status, id)).collect();
                        return Ok(IntentOutcome {
                            decision,
                            result: Some(reply),
                            path,
                            attempts,
                            total_ms: ms(started),
                        });
                    }
                    Err(e) => format!("unreadable answer: {e}"),
                },
                Err(e) => e.to_string(),
            };
            warn!(node = %node.name, "intent failed there, trying the next provider: {error}");
            attempts.push(Attempt {
                node: node.name.clone(),
                hops: ranked.candidate.hops,
                error: Some(error),
                ms: ms(tried),
            });
        }
        let errors: Vec<String> = attempts
            .iter()
            .filter_map(|a| a.error.as_ref().map(|e| format!("{}: {e}", a.node)))
            .collect();
        Err(IntentError::AllFailed(errors.join("; ")))
    }

    /// Serves routed `intent` work addressed to this node.
    pub async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        let refuse = |code, message: String| Response::Error { code, message };
        let request: WorkRequest = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => return refuse(ErrorCode::BadRequest, format!("intent work: {e}")),
        };
        match self.execute(&request).await {
            Ok(reply) => Response::Routed {
                path,
                reply: RoutedReply::Work {
                    payload: serde_json::to_vec(&reply).unwrap_or_default(),
                },
            },
            Err(message) => refuse(ErrorCode::Internal, message),
        }
    }

    /// Runs an intent here.
    async fn execute(&self, request: &WorkRequest) -> Result<WorkReply, String> {
        let started = Instant::now();
        let node = self.inner.node_name.clone();
        let reply = |text: String, model: Option<String>, vector: Option<Vec<f32>>| WorkReply {
            node: node.clone(),
            capability: request.capability.clone(),
            text,
            model,
            vector,
            prompt_tokens: 0,
            completion_tokens: 0,
            ms: ms(started),
        };
        match request.capability.as_str() {
            GENERAL => {
                let mut messages = Vec::new();
                if request.class == OUT_OF_SCOPE {
                    messages.push(ChatMessage {
                        role: "system".into(),
                        content: "No device or service in this home mesh can carry out the \
                                  user's request. Say so in one sentence, then help if you can."
                            .into(),
                    });
                }
                match &request.messages {
                    Some(conversation) => messages.extend(conversation.iter().cloned()),
                    None => messages.push(ChatMessage::user(request.text.clone())),
                }
                let options = GenerateOptions {
                    max_tokens: request.max_tokens,
                    temperature: request.temperature.unwrap_or(0.0).clamp(0.0, 2.0),
                    ..GenerateOptions::default()
                };
                let chat = self
                    .chat(messages, options, request.model.as_deref())
                    .await?;
                Ok(WorkReply {
                    prompt_tokens: chat.prompt_tokens,
                    completion_tokens: chat.completion_tokens,
                    ..reply(chat.text, Some(chat.model), None)
                })
            }
            "embeddings" => {
                let mut vectors = self
                    .inner
                    .models
                    .embed(vec![request.text.clone()])
                    .await
                    .map_err(|e| e.to_string())?;
                let vector = vectors.pop().unwrap_or_default();
                let head: Vec<String> = vector.iter().take(4).map(|x| format!("{x:.4}")).collect();
                Ok(reply(
                    format!(
                        "{}-dimensional embedding [{}, …]",
                        vector.len(),
                        head.join(", ")
                    ),
                    Some(crate::models::MINILM_NAME.into()),
                    Some(vector),
                ))
            }
            "system" => Ok(reply(self.system_report().await?, None, None)),
            "notification" => {
                let tools = self
                    .inner
                    .tools
                    .get()
                    .ok_or("no tool service on this node")?;
                let args = serde_json::json!({"message": request.text, "channel": "log"});
                let output = tools
                    .run_local("notify:send", args)
                    .await
                    .map_err(|e| e.to_string())?;
                let detail = output["detail"].as_str().unwrap_or("delivered");
                Ok(reply(format!("Notification sent: {detail}"), None, None))
            }
            "routing" => Ok(reply(self.routing_report().await?, None, None)),
            MATTER => Ok(reply(self.matter_command(&request.text).await?, None, None)),
            RAG => {
                let knowledge = self
                    .inner
                    .knowledge
                    .get()
                    .ok_or("no knowledge service on this node")?;
                let found = match knowledge
                    .query(&request.text, None, crate::knowledge::DEFAULT_TOP_K)
                    .await
                {
                    Ok(found) => found,
                    Err(crate::knowledge::KnowledgeError::Nothing(_)) => {
                        // No documents anywhere: the language model answers alone, and says so.
                        let chat = self
                            .chat(
                                vec![ChatMessage::user(request.text.clone())],
                                GenerateOptions {
                                    max_tokens: request.max_tokens,
                                    ..GenerateOptions::default()
                                },
                                None,
                            )
                            .await?;
                        return Ok(reply(
                            format!(
                                "(No documents in the mesh yet — `atmosphere knowledge add` — so \
                                 the model answers alone.)\n{}",
                                chat.text
                            ),
                            Some(chat.model),
                            None,
                        ));
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let (text, _, model) = self
                    .synthesize(&request.text, &found, request.max_tokens)
                    .await?;
                Ok(reply(text, model, None))
            }
            other if other.starts_with(AGENT_PREFIX) => {
                let name = &other[AGENT_PREFIX.len()..];
                let agents = self
                    .inner
                    .agents
                    .get()
                    .ok_or("no agent service on this node")?;
                let activation = agents
                    .invoke(name, &request.text)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut text = activation.replies.join("\n");
                for event in &activation.events {
                    text.push_str(&format!(
                        "\n{} ({:?}): {}",
                        event.kind, event.severity, event.summary
                    ));
                }
                Ok(reply(text, None, None))
            }
            other => Err(format!(
                "{} declares {other}, but no executor for {other} runs on it yet",
                self.inner.node_name
            )),
        }
    }

    /// A spoken device request carried out by this node's Matter bridge: which device (its name
    /// in the words), what to do (on, off, toggle; a question reads the state).
    async fn matter_command(&self, text: &str) -> Result<String, String> {
        let tools = self
            .inner
            .tools
            .get()
            .ok_or("no tool service on this node")?;
        let listed = tools
            .run_local("matter:list_devices", serde_json::json!({}))
            .await
            .map_err(|e| e.to_string())?;
        let named: Vec<crate::tools::Named> = listed["devices"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(crate::tools::Named::from_json)
                    .collect()
            })
            .unwrap_or_default();
        let device = crate::tools::device_in(text, &named).ok_or_else(|| {
            let names: Vec<&str> = named.iter().map(|n| n.name.as_str()).collect();
            format!(
                "{} controls {names:?}; which one did you mean?",
                self.inner.node_name
            )
        })?;
        let action = crate::tools::action_in(text);
        let verb = match action {
            Some(atmosphere_matter::Action::On) => "on",
            Some(atmosphere_matter::Action::Off) => "off",
            Some(atmosphere_matter::Action::Toggle) => "toggle",
            None => "read",
        };
        let output = tools
            .run_local(
                "matter:execute",
                serde_json::json!({"device": device, "action": verb}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(celsius) = output["state"]["celsius"].as_f64() {
            return Ok(format!(
                "{device} reads {celsius:.1} °C (Matter, via {})",
                self.inner.node_name
            ));
        }
        let state = match output["state"]["on"].as_bool() {
            Some(true) => "ON",
            Some(false) => "OFF",
            None => "in an unknown state",
        };
        Ok(match action {
            Some(_) => format!(
                "{device} is now {state} (Matter, via {})",
                self.inner.node_name
            ),
            None => format!("{device} is {state} (Matter, via {})", self.inner.node_name),
        })
    }

    /// Chat on this node: the named model (own or a fronted server's), else the own model, else
    /// the first healthy server model.
    async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
        model: Option<&str>,
    ) -> Result<Chat, String> {
        let models = &self.inner.models;
        let local = match model {
            Some(wanted) if models.serves(wanted) => Some(wanted.to_owned()),
            _ => models.default_chat(),
        };
        let server = match model {
            Some(wanted) if local.as_deref() != Some(wanted) => {
                match self.inner.servers.find(wanted) {
                    Some(adapter) => Some((adapter, wanted.to_owned())),
                    None => {
                        return Err(format!(
                            "{} does not serve {wanted:?} (or it is degraded)",
                            self.inner.node_name
                        ));
                    }
                }
            }
            _ if local.is_some() => None,
            _ => self.inner.servers.default_chat(),
        };
        if let Some((adapter, model)) = server {
            let output = adapter
                .chat(&model, &messages, &options)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Chat {
                text: output.text.trim().to_owned(),
                model,
                prompt_tokens: output.prompt_tokens.unwrap_or(0) as usize,
                completion_tokens: output.completion_tokens.unwrap_or(0) as usize,
            });
        }
        let Some(name) = local else {
            return Err(format!("{} has no chat model", self.inner.node_name));
        };
        let generation = self
            .inner
            .models
            .chat(Some(name.clone()), messages, options)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Chat {
            text: generation.text.trim().to_owned(),
            model: name,
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
        })
    }

    /// This node's health and the mesh's, from the kernel and the gossiped state.
    async fn system_report(&self) -> Result<String, String> {
        let status = self.inner.mesh.status().await.map_err(|e| e.to_string())?;
        let alive = status
            .nodes
            .iter()
            .filter(|n| n.status == Status::Alive)
            .count();
        let degraded: Vec<String> = status
            .nodes
            .iter()
            .flat_map(|n| {
                n.models
                    .iter()
                    .filter(|m| m.degraded.is_some())
                    .map(move |m| format!("{} on {}", m.name, n.name))
            })
            .collect();
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let load = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let uptime_h = read("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0.0, |s| s / 3600.0);
        let meminfo = read("/proc/meminfo");
        let kib = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (total, available) = (kib("MemTotal:"), kib("MemAvailable:"));
        Ok(format!(
            "{}: load {load}, memory {:.1} of {:.1} GiB free, up {uptime_h:.1} h. Mesh: {alive} of {} nodes alive{}.",
            self.inner.node_name,
            available as f64 / 1_048_576.0,
            total as f64 / 1_048_576.0,
            status.nodes.len(),
            if degraded.is_empty() {
                ", all model backends healthy".to_owned()
            } else {
                format!(", degraded: {}", degraded.join(", "))
            }
        ))
    }

    /// The gradient table as this node sees it, by capability.
    async fn routing_report(&self) -> Result<String, String> {
        let routes = self.inner.mesh.routes().await.map_err(|e| e.to_string())?;
        let mut by_capability: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for route in routes {
            by_capability
                .entry(route.capability.to_string())
                .or_default()
                .push(format!("{} ({} hops)", route.provider_name, route.hops));
        }
        let lines: Vec<String> = by_capability
            .iter()
            .map(|(capability, providers)| format!("{capability} → {}", providers.join(", ")))
            .collect();
        Ok(format!(
            "Routes from {}: {}",
            self.inner.node_name,
            lines.join("; ")
        ))
    }
}

/// A chat answer on this node.
struct Chat {
    text: String,
    model: String,
    prompt_tokens: usize,
    completion_tokens: usize,
}

fn name_of(status: &atmosphere_mesh::MeshStatus, id: &NodeId) -> String {
    status
        .nodes
        .iter()
        .find(|n| n.id == *id)
        .map_or_else(|| id.short(), |n| n.name.clone())
}

/// Intents remembered with their embeddings (least recently used out first).
const EMBED_CACHE: usize = 512;

/// A small LRU of intent embeddings.
#[derive(Debug, Default)]
struct EmbedCache {
    vectors: std::collections::HashMap<String, (Arc<Vec<f32>>, u64)>,
    clock: u64,
}

impl EmbedCache {
    fn get(&mut self, key: &str) -> Option<Arc<Vec<f32>>> {
        self.clock += 1;
        let clock = self.clock;
        self.vectors.get_mut(key).map(|(vector, used)| {
            *used = clock;
            vector.clone()
        })
    }

    fn put(&mut self, key: String, vector: Arc<Vec<f32>>) {
        self.clock += 1;
        if self.vectors.len() >= EMBED_CACHE
            && let Some(oldest) = self
                .vectors
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.vectors.remove(&oldest);
        }
        self.vectors.insert(key, (vector, self.clock));
    }
}

/// Agents' embedded descriptors (with their texts), by (name, version, node).
type AgentCatalog = BTreeMap<(String, u32, String), (EmbeddedDescriptor, Vec<String>)>;

/// Router classes of agents: `agent:NAME`.
const AGENT_PREFIX: &str = "agent:";

/// Capabilities every node's intent service provides, without advertising them (notifications
/// through its `notify:send` tool).
/// The capability of Matter bridges.
const MATTER: &str = "matter";
/// Questions over the household's documents: every node can gather passages from the mesh.
const RAG: &str = "rag";
const BUILT_IN: [&str; 4] = ["system", "routing", "notification", RAG];

/// Providers of `capability` from the gradient table, one per node; language models carry the
/// size of the node's largest healthy chat model.
fn candidates(
    status: &atmosphere_mesh::MeshStatus,
    routes: &[atmosphere_mesh::RouteInfo],
    capability: &str,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    if BUILT_IN.contains(&capability) {
        // Every node runs these; reachable nodes are candidates, nearest first.
        for node in status.nodes.iter().filter(|n| n.status == Status::Alive) {
            let Some(hops) = node.hops.or(node.is_self.then_some(0)) else {
                continue;
            };
            out.push(Candidate {
                node: node.name.clone(),
                hops,
                cost: f64::from(hops),
                parameters: None,
            });
        }
        return out;
    }
    for route in routes.iter().filter(|r| r.capability.name == capability) {
        if out.iter().any(|c| c.node == route.provider_name) {
            continue;
        }
        let parameters = status
            .nodes
            .iter()
            .find(|n| n.id == route.provider)
            .and_then(|n| {
                n.models
                    .iter()
                    .filter(|m| m.kind == ModelKind::Chat && m.degraded.is_none())
                    .map(|m| m.parameters)
                    .max()
            })
            .filter(|p| *p > 0)
            .or_else(|| {
                route
                    .capability
                    .detail
                    .as_deref()
                    .and_then(atmosphere_routing::choose::parse_size_label)
            });
        out.push(Candidate {
            node: route.provider_name.clone(),
            hops: route.hops,
            cost: route.cost,
            parameters: (capability == GENERAL).then_some(parameters).flatten(),
        });
    }
    out
}

/// Routed work for this node's intent service, handed over by the daemon's dispatcher.
pub async fn run(
    intents: Intents,
    mut requests: tokio::sync::mpsc::Receiver<atmosphere_mesh::transport::Incoming>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let warm = intents.clone();
    tokio::spawn(async move { warm.warm_up().await });
    let mut changes = intents.inner.mesh.subscribe();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            change = changes.recv() => match change {
                Ok(change) if change.key == DescriptorsKey::KEY => {
                    intents.learn(change.node, &change.value);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!("intent service lagged {n} changes");
                }
                Err(_) => break,
            },
            Some(incoming) = requests.recv() => {
                let intents = intents.clone();
                tokio::spawn(async move {
                    let response = match incoming.request {
                        Request::Routed { path, body: RoutedBody::Work { payload, .. }, .. } => {
                            intents.serve(path, &payload).await
                        }
                        _ => Response::Error {
                            code: ErrorCode::BadRequest,
                            message: "not intent work".into(),
                        },
                    };
                    let _ = incoming.reply_tx.send(response);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedding_cache_keeps_the_most_recently_used() {
        let mut cache = EmbedCache::default();
        for i in 0..EMBED_CACHE {
            cache.put(format!("intent {i}"), Arc::new(vec![i as f32]));
        }
        // Touch the oldest so the second oldest is the one to go.
        assert_eq!(cache.get("intent 0").unwrap()[0], 0.0);
        cache.put("one more".into(), Arc::new(vec![-1.0]));
        assert_eq!(cache.vectors.len(), EMBED_CACHE);
        assert!(cache.get("intent 1").is_none());
        assert!(cache.get("intent 0").is_some() && cache.get("one more").is_some());
    }
}

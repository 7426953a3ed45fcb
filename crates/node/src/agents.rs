//! The agent service: agents deployed on this node sleep as definition + state in the store,
//! with no task running; the mesh learns every node's agents by gossip (`agents`). An agent
//! wakes when it is invoked (from any node, as routed `agent` work) or when an event it
//! subscribes to is published; it runs its base's steps — calling tools anywhere in the mesh,
//! emitting events to the agents that subscribe to them, replying — then its state is stored
//! and it sleeps again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atmosphere_agents::{Action, AgentDef, Event, Trigger, step};
use atmosphere_mesh::{Mesh, MeshError, Status};
use atmosphere_proto::{ErrorCode, NodeId, Response, RoutedReply};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::store::Store;
use crate::tools::{CallRequest, Tools};

/// The `kind` of routed work this module serves, and the gossip key of the registry.
pub const WORK_KIND: &str = "agent";
pub const RECORD_KEY: &str = "agents";
/// Steps one wake-up may take (tool calls feed back into the agent).
const MAX_STEPS: usize = 8;
const WORK_TIMEOUT: Duration = Duration::from_secs(180);

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Def(#[from] atmosphere_agents::DefError),
    #[error("unknown agent {0:?}; `atmosphere agent list` shows the mesh's agents")]
    Unknown(String),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("agent {agent} on {node}: {reason}")]
    Remote {
        agent: String,
        node: String,
        reason: String,
    },
    #[error("cannot store the agent: {0}")]
    Store(String),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// An agent as the mesh knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub def: AgentDef,
    /// The node it runs on.
    pub node: String,
    /// Wake-ups so far (for agents on this node; 0 for others).
    #[serde(default)]
    pub runs: u64,
}

/// What one wake-up did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub agent: String,
    pub node: String,
    /// Tools called, with where they ran.
    pub tools: Vec<String>,
    pub events: Vec<Event>,
    pub replies: Vec<String>,
    /// From the wake-up to the agent's first action.
    pub first_action_us: u64,
    pub ms: f64,
}

/// A stored agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    def: AgentDef,
    state: Value,
    #[serde(default)]
    runs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Work {
    Deploy { def: AgentDef },
    Invoke { name: String, input: String },
    Event { event: Event },
}

/// The agent service of one node.
#[derive(Clone)]
pub struct Agents {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: Mesh,
    node_name: String,
    store: Arc<Store>,
    tools: Tools,
    /// Agents of other nodes, by node.
    remote: Mutex<BTreeMap<NodeId, Vec<AgentDef>>>,
    /// One wake-up at a time per agent (its state is read, stepped, written).
    running: tokio::sync::Mutex<()>,
    /// Bumped whenever the mesh's set of agent definitions may have changed.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("node", &self.inner.node_name)
            .finish_non_exhaustive()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Agents {
    pub fn new(mesh: Mesh, node_name: String, store: Arc<Store>, tools: Tools) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh,
                node_name,
                store,
                tools,
                remote: Mutex::new(BTreeMap::new()),
                running: tokio::sync::Mutex::new(()),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Changes whenever a definition is deployed here or learned from a peer, so readers of
    /// [`Agents::list`] (the router) redo their work only then.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many definitions the registry holds, live nodes or not.
    pub fn registered(&self) -> usize {
        self.local().len() + self.remote().values().map(Vec::len).sum::<usize>()
    }

    fn changed(&self) {
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<AgentDef>>> {
        self.inner.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn local(&self) -> Vec<Stored> {
        match self.inner.store.agents() {
            Ok(rows) => rows
                .into_iter()
                .filter_map(
                    |(name, bytes)| match serde_json::from_slice::<Stored>(&bytes) {
                        Ok(stored) => Some(stored),
                        Err(e) => {
                            warn!(agent = %name, "stored agent unreadable: {e}");
                            None
                        }
                    },
                )
                .collect(),
            Err(e) => {
                warn!("cannot read agents: {e}");
                Vec::new()
            }
        }
    }

    fn save(&self, stored: &Stored) -> Result<(), AgentError> {
        let bytes = serde_json::to_vec(stored).map_err(|e| AgentError::Store(e.to_string()))?;
        self.inner
            .store
            .put_agent(&stored.def.name, &bytes)
            .map_err(|e| AgentError::Store(e.to_string()))
    }

    /// Announces the definitions of the agents deployed here.
    pub async fn announce(&self) {
        let defs: Vec<AgentDef> = self.local().into_iter().map(|s| s.def).collect();
        let bytes = serde_json::to_vec(&defs).unwrap_or_default();
        let _ = self.inner.mesh.set_value(RECORD_KEY, bytes, true).await;
    }

    /// A peer's `agents` value changed.
    fn learn(&self, node: NodeId, bytes: &[u8]) {
        match serde_json::from_slice::<Vec<Value>>(bytes) {
            Ok(list) if list.len() <= 256 => {
                let defs: Vec<AgentDef> = list
                    .into_iter()
                    .filter_map(|v| AgentDef::from_bytes(&serde_json::to_vec(&v).ok()?).ok())
                    .collect();
                self.remote().insert(node, defs);
                self.changed();
            }
            Ok(list) => warn!(peer = %node.short(), "{} agents announced; ignored", list.len()),
            Err(e) => warn!(peer = %node.short(), "bad agent registry: {e}"),
        }
    }

    /// Every agent of the mesh on a live node.
    pub async fn list(&self) -> Result<Vec<AgentInfo>, AgentError> {
        let status = self.inner.mesh.status().await?;
        let mut agents: Vec<AgentInfo> = self
            .local()
            .into_iter()
            .map(|s| AgentInfo {
                def: s.def,
                node: self.inner.node_name.clone(),
                runs: s.runs,
            })
            .collect();
        for (node, defs) in self.remote().iter() {
            let Some(name) = status
                .nodes
                .iter()
                .find(|n| n.id == *node && !n.is_self && n.status == Status::Alive)
                .map(|n| n.name.clone())
            else {
                continue;
            };
            agents.extend(defs.iter().map(|def| AgentInfo {
                def: def.clone(),
                node: name.clone(),
                runs: 0,
            }));
        }
        agents.sort_by(|a, b| a.def.name.cmp(&b.def.name).then(a.node.cmp(&b.node)));
        Ok(agents)
    }

    pub async fn info(&self, name: &str) -> Result<AgentInfo, AgentError> {
        self.list()
            .await?
            .into_iter()
            .find(|a| a.def.name == name)
            .ok_or_else(|| AgentError::Unknown(name.to_owned()))
    }

    async fn node_id(&self, name: &str) -> Result<NodeId, AgentError> {
        self.inner
            .mesh
            .resolve(name)
            .await
            .map_err(|_| AgentError::UnknownNode(name.to_owned()))
    }

    async fn send(&self, node: NodeId, work: &Work) -> Result<Value, AgentError> {
        let payload = serde_json::to_vec(work).unwrap_or_default();
        let result = self
            .inner
            .mesh
            .work(node, WORK_KIND, payload, WORK_TIMEOUT)
            .await?;
        serde_json::from_slice(&result.payload).map_err(|e| AgentError::Remote {
            agent: String::new(),
            node: node.short(),
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// Deploys `def` on `node` (this node when `None`); a redeploy keeps the agent's state.
    pub async fn deploy(&self, def: AgentDef, node: Option<&str>) -> Result<AgentInfo, AgentError> {
        def.check()?;
        let node = match node {
            Some(node) => self.node_id(node).await?,
            None => self.inner.mesh.id(),
        };
        let value = self.send(node, &Work::Deploy { def }).await?;
        serde_json::from_value(value).map_err(|e| AgentError::Store(e.to_string()))
    }

    fn deploy_here(&self, def: AgentDef) -> Result<AgentInfo, AgentError> {
        def.check()?;
        let previous = self.local().into_iter().find(|s| s.def.name == def.name);
        let stored = Stored {
            state: previous.as_ref().map_or(Value::Null, |p| p.state.clone()),
            runs: previous.as_ref().map_or(0, |p| p.runs),
            def,
        };
        self.save(&stored)?;
        self.changed();
        info!(agent = %stored.def.name, version = stored.def.version, "agent deployed");
        Ok(AgentInfo {
            def: stored.def,
            node: self.inner.node_name.clone(),
            runs: stored.runs,
        })
    }

    /// Wakes `name` (wherever it runs) with `input`, and returns what it did.
    pub async fn invoke(&self, name: &str, input: &str) -> Result<Activation, AgentError> {
        let info = self.info(name).await?;
        let node = self.node_id(&info.node).await?;
        let value = self
            .send(
                node,
                &Work::Invoke {
                    name: name.to_owned(),
                    input: input.to_owned(),
                },
            )
            .await?;
        serde_json::from_value(value).map_err(|e| AgentError::Store(e.to_string()))
    }

    /// Publishes an event to every agent of the mesh that subscribes to it.
    pub async fn publish(&self, event: &Event) -> Vec<Result<Activation, AgentError>> {
        let mut out = Vec::new();
        let Ok(agents) = self.list().await else {
            return out;
        };
        let mut nodes: Vec<String> = agents
            .iter()
            .filter(|a| a.def.wakes_on(event))
            .map(|a| a.node.clone())
            .collect();
        nodes.dedup();
        for node in nodes {
            let result = match self.node_id(&node).await {
                Ok(id) => {
                    self.send(
                        id,
                        &Work::Event {
                            event: event.clone(),
                        },
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(Value::Array(activations)) => out.extend(
                    activations
                        .into_iter()
                        .filter_map(|a| serde_json::from_value(a).ok())
                        .map(Ok),
                ),
                Ok(_) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    /// One wake-up of a local agent: steps until it stops asking for tools, carrying out its
    /// actions, then stores its state.
    async fn wake(&self, name: &str, trigger: Trigger) -> Result<Activation, AgentError> {
        let woke = Instant::now();
        let _one_at_a_time = self.inner.running.lock().await;
        let mut stored = self
            .local()
            .into_iter()
            .find(|s| s.def.name == name)
            .ok_or_else(|| AgentError::Unknown(name.to_owned()))?;
        let mut activation = Activation {
            agent: name.to_owned(),
            node: self.inner.node_name.clone(),
            tools: Vec::new(),
            events: Vec::new(),
            replies: Vec::new(),
            first_action_us: 0,
            ms: 0.0,
        };
        let mut pending = vec![trigger];
        let mut steps = 0;
        while let Some(trigger) = pending.pop() {
            steps += 1;
            if steps > MAX_STEPS {
                activation
                    .replies
                    .push(format!("stopped after {MAX_STEPS} steps"));
                break;
            }
            let now = atmosphere_auth::unix_now();
            let next = step(&stored.def, &stored.state, &trigger, now);
            if activation.first_action_us == 0 {
                activation.first_action_us = woke.elapsed().as_micros() as u64;
            }
            stored.state = next.state;
            for action in next.actions {
                match action {
                    Action::CallTool { tool, args } => {
                        let request = CallRequest { args, node: None };
                        match self.inner.tools.call(&tool, &request).await {
                            Ok(result) => {
                                activation.tools.push(format!("{tool} on {}", result.node));
                                pending.push(Trigger::ToolResult {
                                    tool,
                                    output: result.output,
                                });
                            }
                            Err(e) => activation.replies.push(format!("{tool} failed: {e}")),
                        }
                    }
                    Action::Emit(mut event) => {
                        event.source = format!("{name}@{}", self.inner.node_name);
                        activation.events.push(event);
                    }
                    Action::Reply(text) => activation.replies.push(text),
                }
            }
        }
        stored.runs += 1;
        self.save(&stored)?;
        // Events go out after the state is safe; subscribers wake in their own time.
        for event in activation.events.clone() {
            let this = self.clone();
            tokio::spawn(async move {
                for result in this.publish(&event).await {
                    if let Err(e) = result {
                        warn!("event {} not delivered: {e}", event.kind);
                    }
                }
            });
        }
        activation.ms = ms(woke);
        Ok(activation)
    }

    async fn serve_work(&self, work: Work) -> Result<Value, AgentError> {
        match work {
            Work::Deploy { def } => {
                let info = self.deploy_here(def)?;
                self.announce().await;
                Ok(serde_json::to_value(info).unwrap_or_default())
            }
            Work::Invoke { name, input } => {
                let activation = self.wake(&name, Trigger::Intent { text: input }).await?;
                Ok(serde_json::to_value(activation).unwrap_or_default())
            }
            Work::Event { event } => {
                let names: Vec<String> = self
                    .local()
                    .into_iter()
                    .filter(|s| s.def.wakes_on(&event))
                    .map(|s| s.def.name)
                    .collect();
                let mut activations = Vec::new();
                for name in names {
                    match self.wake(&name, Trigger::Event(event.clone())).await {
                        Ok(activation) => activations.push(activation),
                        Err(e) => warn!(agent = %name, "event wake failed: {e}"),
                    }
                }
                Ok(serde_json::to_value(activations).unwrap_or_default())
            }
        }
    }

    /// Serves routed `agent` work addressed to this node.
    pub async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        let work: Work = match serde_json::from_slice(payload) {
            Ok(work) => work,
            Err(e) => {
                return Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("agent work: {e}"),
                };
            }
        };
        match self.serve_work(work).await {
            Ok(value) => Response::Routed {
                path,
                reply: RoutedReply::Work {
                    payload: serde_json::to_vec(&value).unwrap_or_default(),
                },
            },
            Err(e) => Response::Error {
                code: match e {
                    AgentError::Def(_) | AgentError::Unknown(_) => ErrorCode::BadRequest,
                    _ => ErrorCode::Internal,
                },
                message: e.to_string(),
            },
        }
    }
}

impl crate::service::GossipService for Agents {
    const NAME: &'static str = "agent";
    const RECORD_KEY: &'static str = RECORD_KEY;

    fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    async fn announce(&self) {
        Agents::announce(self).await;
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        Agents::learn(self, node, bytes);
    }

    async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        Agents::serve(self, path, payload).await
    }
}

//! The tool system: tools with JSON-Schema contracts, announced by the node that provides them and
//! synced by gossip (`tools`), called locally in-process (with a timeout; a panicking tool is
//! isolated) or remotely as routed `tool` work on a provider chosen by distance, failing over to
//! the next one. Arguments are validated before anything runs, results before they leave.

mod builtin;
mod external;
mod matter;
mod vision;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atmosphere_mesh::{Mesh, MeshError, Status};
use atmosphere_proto::{ErrorCode, NodeId, Response, RoutedReply};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

pub use atmosphere_api::CallRequest;
pub use builtin::{NotifySettings, builtin_tools, pending_contracts};
pub use external::load_dir;
pub use matter::{MatterSettings, Named, action_in, device_in, device_json, matter_tools};
pub use vision::{VisionSettings, vision_tools};

/// The `kind` of routed work this module serves, and the gossip key of the manifests.
pub const WORK_KIND: &str = "tool";
pub const RECORD_KEY: &str = "tools";
/// Largest arguments accepted (serialised JSON), from any caller: the HTTP API, an intent, an agent.
pub use atmosphere_api::MAX_ARGS_BYTES;
/// Limits on what a peer may announce.
const MAX_TOOLS_PER_NODE: usize = 128;
const MAX_MANIFEST_BYTES: usize = 64 * 1024;
const MAX_ATTEMPTS: usize = 3;

/// A tool's contract, as announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `namespace:verb`, e.g. `llm:generate`.
    pub name: String,
    /// The capability it serves (routing class), e.g. `llm`.
    pub capability: String,
    pub description: String,
    #[serde(default)]
    pub examples: Vec<String>,
    /// JSON Schema of the arguments.
    pub input: Value,
    /// JSON Schema of the result.
    pub output: Value,
    pub version: String,
    /// Longest a call may run.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    60_000
}

impl Manifest {
    /// Checks the name and compiles both schemas.
    pub fn check(&self) -> Result<(), String> {
        let valid_part = |part: &str| {
            !part.is_empty()
                && part.len() <= 48
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        };
        match self.name.split_once(':') {
            Some((ns, verb)) if valid_part(ns) && valid_part(verb) => {}
            _ => {
                return Err(format!(
                    "tool name {:?}: use namespace:verb in lowercase letters, digits, '_' or '-'",
                    self.name
                ));
            }
        }
        for (what, schema) in [("input", &self.input), ("output", &self.output)] {
            jsonschema::validator_for(schema).map_err(|e| {
                format!("{}: {what} schema is not valid JSON Schema: {e}", self.name)
            })?;
        }
        Ok(())
    }
}

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    #[error("unknown tool {0:?}; `atmosphere tool list` shows the tools of the mesh")]
    Unknown(String),
    #[error("arguments for {tool} are invalid: {reason}")]
    Invalid { tool: String, reason: String },
    #[error("arguments are {0} bytes; the limit is {MAX_ARGS_BYTES}")]
    TooLarge(usize),
    #[error("{tool} did not finish within {ms} ms")]
    Timeout { tool: String, ms: u64 },
    #[error("{tool} failed: {reason}")]
    Failed { tool: String, reason: String },
    #[error("{tool} crashed; the node carries on")]
    Panicked { tool: String },
    #[error("{tool} answered something its output schema does not allow: {reason}")]
    BadOutput { tool: String, reason: String },
    #[error("no live node provides {0}")]
    NoProvider(String),
    #[error("every provider of {tool} failed: {reasons}")]
    AllFailed { tool: String, reasons: String },
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// What a local tool does with its (validated) arguments.
pub type Handler =
    Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send>> + Send + Sync>;

/// A tool this node runs.
#[derive(Clone)]
pub struct LocalTool {
    pub manifest: Manifest,
    pub handler: Handler,
}

impl std::fmt::Debug for LocalTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTool")
            .field("name", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

/// A tool as `tool list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub manifest: Manifest,
    /// Nodes that provide it, this one first when it does.
    pub providers: Vec<String>,
}

/// One provider tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallAttempt {
    pub node: String,
    pub error: Option<String>,
    pub ms: f64,
}

/// A tool's result, with where it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    pub tool: String,
    pub node: String,
    pub output: Value,
    pub attempts: Vec<CallAttempt>,
    pub ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkRequest {
    name: String,
    args: Value,
}

/// The tool service of one node.
#[derive(Clone)]
pub struct Tools {
    inner: Arc<Inner>,
}

struct Inner {
    mesh: Mesh,
    node_name: String,
    local: BTreeMap<String, LocalTool>,
    /// Manifests other nodes announce, by node.
    remote: Mutex<BTreeMap<NodeId, Vec<Manifest>>>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("local", &self.inner.local.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Tools {
    /// The service over `local` tools (manifests already checked).
    pub fn new(mesh: Mesh, node_name: String, local: Vec<LocalTool>) -> Self {
        let local = local
            .into_iter()
            .filter_map(|tool| match tool.manifest.check() {
                Ok(()) => Some((tool.manifest.name.clone(), tool)),
                Err(e) => {
                    warn!("tool not offered: {e}");
                    None
                }
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                mesh,
                node_name,
                local,
                remote: Mutex::new(BTreeMap::new()),
                validators: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Vec<Manifest>>> {
        self.inner.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces this node's tools (under `tools`).
    pub async fn announce(&self) {
        let manifests: Vec<&Manifest> = self.inner.local.values().map(|t| &t.manifest).collect();
        let bytes = serde_json::to_vec(&manifests).unwrap_or_default();
        let _ = self.inner.mesh.set_value(RECORD_KEY, bytes, true).await;
    }

    /// A peer's `tools` value changed.
    pub fn learn(&self, node: NodeId, bytes: &[u8]) {
        let list: Vec<Manifest> = match serde_json::from_slice(bytes) {
            Ok(list) => list,
            Err(e) => return warn!(peer = %node.short(), "bad tool manifests: {e}"),
        };
        if list.len() > MAX_TOOLS_PER_NODE {
            return warn!(peer = %node.short(), "{} tools announced; ignored", list.len());
        }
        let list: Vec<Manifest> = list
            .into_iter()
            .filter(|m| {
                serde_json::to_vec(m).map_or(0, |b| b.len()) <= MAX_MANIFEST_BYTES
                    && m.check().is_ok()
            })
            .collect();
        self.remote().insert(node, list);
    }

    /// Every tool of the mesh with its live providers.
    pub async fn list(&self) -> Result<Vec<ToolInfo>, ToolError> {
        let status = self.inner.mesh.status().await?;
        Ok(self.list_with(&status))
    }

    /// The tools of the mesh as `status` sees it.
    fn list_with(&self, status: &atmosphere_mesh::MeshStatus) -> Vec<ToolInfo> {
        let alive = |id: &NodeId| {
            status
                .nodes
                .iter()
                .find(|n| n.id == *id && n.status == Status::Alive)
                .map(|n| n.name.clone())
        };
        let mut tools: BTreeMap<String, ToolInfo> = BTreeMap::new();
        for tool in self.inner.local.values() {
            tools.insert(
                tool.manifest.name.clone(),
                ToolInfo {
                    manifest: tool.manifest.clone(),
                    providers: vec![self.inner.node_name.clone()],
                },
            );
        }
        for (node, manifests) in self.remote().iter() {
            let Some(name) = alive(node) else { continue };
            if *node == self.inner.mesh.id() {
                continue;
            }
            for manifest in manifests {
                tools
                    .entry(manifest.name.clone())
                    .or_insert_with(|| ToolInfo {
                        manifest: manifest.clone(),
                        providers: Vec::new(),
                    })
                    .providers
                    .push(name.clone());
            }
        }
        tools.into_values().collect()
    }

    pub async fn info(&self, name: &str) -> Result<ToolInfo, ToolError> {
        self.list()
            .await?
            .into_iter()
            .find(|t| t.manifest.name == name)
            .ok_or_else(|| ToolError::Unknown(name.to_owned()))
    }

    fn validator(&self, key: String, schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
        let mut cache = self
            .inner
            .validators
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(validator) = cache.get(&key) {
            return Ok(validator.clone());
        }
        let validator = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
        cache.insert(key, validator.clone());
        Ok(validator)
    }

    /// Checks `value` against a schema; the error names the offending field.
    fn check(&self, manifest: &Manifest, which: &str, value: &Value) -> Result<(), String> {
        let schema = if which == "input" {
            &manifest.input
        } else {
            &manifest.output
        };
        // Keyed by the schema itself: providers of one tool may announce different contracts.
        let key = serde_json::to_string(schema).unwrap_or_default();
        let validator = self.validator(key, schema)?;
        let errors: Vec<String> = validator
            .iter_errors(value)
            .take(3)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Calls a tool: validates, then runs it here or on the nearest live provider, failing over.
    pub async fn call(&self, name: &str, request: &CallRequest) -> Result<CallResult, ToolError> {
        let started = Instant::now();
        let size = serde_json::to_vec(&request.args).map_or(0, |b| b.len());
        if size > MAX_ARGS_BYTES {
            return Err(ToolError::TooLarge(size));
        }
        let status = self.inner.mesh.status().await?;
        let info = self
            .list_with(&status)
            .into_iter()
            .find(|t| t.manifest.name == name)
            .ok_or_else(|| ToolError::Unknown(name.to_owned()))?;
        let args = if request.args.is_null() {
            Value::Object(Default::default())
        } else {
            request.args.clone()
        };
        let routes = self.inner.mesh.routes().await?;
        // The gradient table's cost of reaching each provider (its cheapest route), then hops.
        let cost = |id: &NodeId| {
            routes
                .iter()
                .filter(|r| r.provider == *id)
                .map(|r| r.cost)
                .fold(f64::INFINITY, f64::min)
        };
        let mut providers: Vec<(NodeId, String, u8)> = info
            .providers
            .iter()
            .filter_map(|provider| {
                status
                    .nodes
                    .iter()
                    .find(|n| &n.name == provider && n.status == Status::Alive)
                    .map(|n| {
                        (
                            n.id,
                            n.name.clone(),
                            if n.is_self {
                                0
                            } else {
                                n.hops.unwrap_or(u8::MAX)
                            },
                        )
                    })
            })
            .collect();
        providers.sort_by(|a, b| {
            let self_first = (b.0 == self.inner.mesh.id()).cmp(&(a.0 == self.inner.mesh.id()));
            self_first
                .then(cost(&a.0).total_cmp(&cost(&b.0)))
                .then(a.2.cmp(&b.2))
        });
        if let Some(wanted) = &request.node {
            // A name wins; otherwise an id prefix of at least 4 hex digits (a short name such as
            // "b" is also the start of some ids).
            if providers.iter().any(|(_, name, _)| name == wanted) {
                providers.retain(|(_, name, _)| name == wanted);
            } else {
                providers.retain(|(id, _, _)| {
                    wanted.len() >= 4 && id.to_string().starts_with(wanted.as_str())
                });
            }
        }
        if providers.is_empty() {
            return Err(ToolError::NoProvider(name.to_owned()));
        }
        // Each provider's own contract decides (a channel one node has may be missing on
        // another); a call no provider accepts is refused before anything runs.
        let mut refusal = None;
        providers.retain(|(id, _, _)| {
            let Some(manifest) = self.manifest_of(*id, name) else {
                return false;
            };
            match self.check(&manifest, "input", &args) {
                Ok(()) => true,
                Err(reason) => {
                    refusal.get_or_insert(reason);
                    false
                }
            }
        });
        if providers.is_empty() {
            return Err(match refusal {
                Some(reason) => ToolError::Invalid {
                    tool: name.to_owned(),
                    reason,
                },
                None => ToolError::NoProvider(name.to_owned()),
            });
        }
        let payload = serde_json::to_vec(&WorkRequest {
            name: name.to_owned(),
            args: args.clone(),
        })
        .unwrap_or_default();
        let timeout = Duration::from_millis(info.manifest.timeout_ms.clamp(100, 600_000));
        let mut attempts = Vec::new();
        for (id, node, _) in providers.into_iter().take(MAX_ATTEMPTS) {
            let tried = Instant::now();
            let outcome = if id == self.inner.mesh.id() {
                self.run_local(name, args.clone()).await
            } else {
                match self
                    .inner
                    .mesh
                    .work(
                        id,
                        WORK_KIND,
                        payload.clone(),
                        timeout + Duration::from_secs(1),
                    )
                    .await
                {
                    Ok(result) => serde_json::from_slice::<Value>(&result.payload).map_err(|e| {
                        ToolError::Failed {
                            tool: name.to_owned(),
                            reason: format!("unreadable answer: {e}"),
                        }
                    }),
                    Err(e) => Err(e.into()),
                }
            };
            match outcome {
                Ok(output) => {
                    attempts.push(CallAttempt {
                        node: node.clone(),
                        error: None,
                        ms: ms(tried),
                    });
                    return Ok(CallResult {
                        tool: name.to_owned(),
                        node,
                        output,
                        attempts,
                        ms: ms(started),
                    });
                }
                // The tool itself refused or broke: another provider would do the same.
                Err(
                    e @ (ToolError::Invalid { .. }
                    | ToolError::BadOutput { .. }
                    | ToolError::Failed { .. }),
                ) if id == self.inner.mesh.id() => return Err(e),
                Err(e) => {
                    warn!(%node, tool = name, "tool call failed, trying the next provider: {e}");
                    attempts.push(CallAttempt {
                        node,
                        error: Some(e.to_string()),
                        ms: ms(tried),
                    });
                }
            }
        }
        Err(ToolError::AllFailed {
            tool: name.to_owned(),
            reasons: attempts
                .iter()
                .filter_map(|a| a.error.as_ref().map(|e| format!("{}: {e}", a.node)))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// The manifest `node` announced for `name`.
    fn manifest_of(&self, node: NodeId, name: &str) -> Option<Manifest> {
        if node == self.inner.mesh.id() {
            return self.inner.local.get(name).map(|t| t.manifest.clone());
        }
        self.remote()
            .get(&node)
            .and_then(|list| list.iter().find(|m| m.name == name).cloned())
    }

    /// Runs a local tool: in its own task (a panic stays there), bounded by its timeout, its
    /// result checked against its output schema.
    pub async fn run_local(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        let tool = self
            .inner
            .local
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.to_owned()))?;
        self.check(&tool.manifest, "input", &args)
            .map_err(|reason| ToolError::Invalid {
                tool: name.to_owned(),
                reason,
            })?;
        let timeout = Duration::from_millis(tool.manifest.timeout_ms.clamp(100, 600_000));
        let task = tokio::spawn((tool.handler)(args));
        // Stops the tool when its caller goes away (an HTTP client hanging up, a timeout).
        let _cancel_on_drop = AbortOnDrop(task.abort_handle());
        let output = match tokio::time::timeout(timeout, task).await {
            Err(_) => {
                return Err(ToolError::Timeout {
                    tool: name.to_owned(),
                    ms: timeout.as_millis() as u64,
                });
            }
            Ok(Err(join)) if join.is_panic() => {
                warn!(tool = name, "a tool panicked");
                return Err(ToolError::Panicked {
                    tool: name.to_owned(),
                });
            }
            Ok(Err(join)) => {
                return Err(ToolError::Failed {
                    tool: name.to_owned(),
                    reason: join.to_string(),
                });
            }
            Ok(Ok(Err(reason))) => {
                return Err(ToolError::Failed {
                    tool: name.to_owned(),
                    reason,
                });
            }
            Ok(Ok(Ok(output))) => output,
        };
        self.check(&tool.manifest, "output", &output)
            .map_err(|reason| ToolError::BadOutput {
                tool: name.to_owned(),
                reason,
            })?;
        Ok(output)
    }

    /// Serves routed `tool` work addressed to this node.
    pub async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        let request: WorkRequest = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => {
                return Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("tool work: {e}"),
                };
            }
        };
        match self.run_local(&request.name, request.args).await {
            Ok(output) => Response::Routed {
                path,
                reply: RoutedReply::Work {
                    payload: serde_json::to_vec(&output).unwrap_or_default(),
                },
            },
            Err(e) => Response::Error {
                code: match e {
                    ToolError::Unknown(_) | ToolError::Invalid { .. } => ErrorCode::BadRequest,
                    _ => ErrorCode::Internal,
                },
                message: e.to_string(),
            },
        }
    }
}

/// Aborts a task when dropped (a finished task is not affected).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl crate::service::GossipService for Tools {
    const NAME: &'static str = "tool";
    const RECORD_KEY: &'static str = RECORD_KEY;

    fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    async fn announce(&self) {
        Tools::announce(self).await;
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        Tools::learn(self, node, bytes);
    }

    async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        Tools::serve(self, path, payload).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atmosphere_mesh::MeshConfig;
    use atmosphere_mesh::transport::mem::MemNetwork;
    use serde_json::json;

    fn tool(name: &str, timeout_ms: u64, handler: Handler) -> LocalTool {
        LocalTool {
            manifest: Manifest {
                name: name.into(),
                capability: "test".into(),
                description: "a test tool".into(),
                examples: vec![],
                input: json!({
                    "type": "object",
                    "properties": {"n": {"type": "integer", "minimum": 0}},
                    "required": ["n"],
                    "additionalProperties": false
                }),
                output: json!({"type": "object", "required": ["n"]}),
                version: "1".into(),
                timeout_ms,
            },
            handler,
        }
    }

    fn solo(tools: Vec<LocalTool>) -> Tools {
        let network = MemNetwork::new();
        let (transport, incoming_rx) = network.endpoint(NodeId::from_bytes([1; 32]));
        let (mesh, _join) = Mesh::spawn(
            Arc::clone(&transport),
            incoming_rx,
            Default::default(),
            MeshConfig::for_test("solo"),
        );
        Tools::new(mesh, "solo".into(), tools)
    }

    fn call(n: Value) -> CallRequest {
        CallRequest {
            args: json!({ "n": n }),
            node: None,
        }
    }

    #[tokio::test]
    async fn bad_calls_fail_clearly_and_the_node_lives_on() {
        let tools = solo(vec![
            tool(
                "test:double",
                1000,
                Arc::new(|args| {
                    Box::pin(async move { Ok(json!({"n": args["n"].as_i64().unwrap_or(0) * 2})) })
                }),
            ),
            tool(
                "test:hang",
                200,
                Arc::new(|_| Box::pin(std::future::pending())),
            ),
            tool(
                "test:panic",
                1000,
                Arc::new(|_| Box::pin(async { panic!("tool bug") })),
            ),
            tool(
                "test:liar",
                1000,
                Arc::new(|_| Box::pin(async { Ok(json!({"m": 1})) })),
            ),
        ]);
        // A good call, validated and run here.
        let result = tools.call("test:double", &call(json!(21))).await.unwrap();
        assert_eq!(
            (result.output["n"].as_i64(), result.node.as_str()),
            (Some(42), "solo")
        );
        // The schema violation names the field.
        let err = tools
            .call("test:double", &call(json!("x")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ToolError::Invalid { .. }) && err.to_string().contains("/n"),
            "{err}"
        );
        let err = tools.call("test:nope", &call(json!(1))).await.unwrap_err();
        assert!(matches!(err, ToolError::Unknown(_)), "{err}");
        let huge = CallRequest {
            args: json!({"n": "x".repeat(MAX_ARGS_BYTES)}),
            node: None,
        };
        assert!(matches!(
            tools.call("test:double", &huge).await.unwrap_err(),
            ToolError::TooLarge(_)
        ));
        // A hanging tool times out, a panicking one is contained, a lying one is caught.
        assert!(matches!(
            tools
                .run_local("test:hang", json!({"n": 1}))
                .await
                .unwrap_err(),
            ToolError::Timeout { .. }
        ));
        assert!(matches!(
            tools
                .run_local("test:panic", json!({"n": 1}))
                .await
                .unwrap_err(),
            ToolError::Panicked { .. }
        ));
        assert!(matches!(
            tools
                .run_local("test:liar", json!({"n": 1}))
                .await
                .unwrap_err(),
            ToolError::BadOutput { .. }
        ));
        // And the service still works.
        assert!(tools.call("test:double", &call(json!(1))).await.is_ok());
    }

    #[test]
    fn manifests_with_bad_names_or_schemas_are_refused() {
        let mut manifest = tool(
            "test:ok",
            1,
            Arc::new(|_| Box::pin(async { Ok(json!({})) })),
        )
        .manifest;
        assert!(manifest.check().is_ok());
        manifest.name = "NoNamespace".into();
        assert!(manifest.check().unwrap_err().contains("namespace:verb"));
        manifest.name = "test:ok".into();
        manifest.input = json!({"type": "no-such-type"});
        assert!(manifest.check().unwrap_err().contains("input schema"));
    }
}

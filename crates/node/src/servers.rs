//! Model servers a node fronts (Ollama, LlamaFarm, OpenAI-compatible) and what the node tells the
//! mesh about its models: every `health_interval` each server is asked for its health and its
//! models; the node's own models and the servers' are gossiped under `models`, and the
//! capabilities derived from the healthy ones (`llm/<size>`, `embeddings/<name>`) replace the
//! node's advertised set, so a failing server stops attracting work within one interval.
//! Servers come from the node's config (fixed) and from the LlamaFarm project it uses (replaced
//! whenever a new signed version of the project arrives, without a restart).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atmosphere_backends::adapters::{Adapter, AdapterError, Kind, ServerModel};
use atmosphere_mesh::Mesh;
use atmosphere_proto::record::{ModelsKey, RecordKey, encode_value, size_tier};
use atmosphere_proto::{Capability, ModelAdvert, ModelKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ServerSection;
use crate::models::LocalModels;

/// One configured server and what was last learned about it.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub url: String,
    pub project: Option<String>,
    adapter: Adapter,
    state: Mutex<ServerState>,
}

#[derive(Debug, Clone, Default)]
struct ServerState {
    models: Vec<ServerModel>,
    /// Why the last check failed; `Some` before the first check too.
    degraded: Option<String>,
}

/// The servers of one node.
#[derive(Debug, Default)]
pub struct ModelServers {
    fixed: Vec<Arc<Server>>,
    /// From the LlamaFarm project the node uses; swapped on each new version.
    synced: RwLock<Vec<Arc<Server>>>,
    /// Wakes the health loop when the set changes, so new servers are checked at once.
    changed: tokio::sync::Notify,
}

impl ModelServers {
    pub fn from_config(sections: &[ServerSection]) -> Result<Self, AdapterError> {
        Ok(Self {
            fixed: build(sections)?,
            ..Self::default()
        })
    }

    /// Replaces the project's servers (a new version of `llamafarm.yaml`); servers already known
    /// by kind and URL keep their state.
    pub fn replace_synced(&self, sections: &[ServerSection]) -> Result<(), AdapterError> {
        let fresh = build(sections)?;
        let mut synced = self.synced.write().unwrap_or_else(|e| e.into_inner());
        let kept: Vec<Arc<Server>> = fresh
            .into_iter()
            .map(|new| {
                synced
                    .iter()
                    .find(|old| {
                        old.kind == new.kind && old.url == new.url && old.project == new.project
                    })
                    .cloned()
                    .unwrap_or(new)
            })
            .collect();
        *synced = kept;
        drop(synced);
        self.changed.notify_one();
        Ok(())
    }

    /// Every server, fixed first.
    fn all(&self) -> Vec<Arc<Server>> {
        let synced = self.synced.read().unwrap_or_else(|e| e.into_inner());
        self.fixed.iter().chain(synced.iter()).cloned().collect()
    }

    /// Resolves when the set of servers changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

fn build(sections: &[ServerSection]) -> Result<Vec<Arc<Server>>, AdapterError> {
    sections
        .iter()
        .map(|section| {
            let adapter = match section.kind {
                Kind::Ollama => Adapter::ollama(&section.url, section.timeout),
                Kind::OpenAi => Adapter::openai(&section.url, section.timeout),
                Kind::LlamaFarm => Adapter::llamafarm(
                    &section.url,
                    section.project.as_deref().unwrap_or("default/default"),
                    section
                        .runtime
                        .as_deref()
                        .unwrap_or("http://127.0.0.1:11540"),
                    section.timeout,
                ),
            }?;
            Ok(Arc::new(Server {
                kind: section.kind,
                url: section.url.clone(),
                project: section.project.clone(),
                adapter,
                state: Mutex::new(ServerState {
                    models: Vec::new(),
                    degraded: Some("not checked yet".into()),
                }),
            }))
        })
        .collect()
}

impl ModelServers {
    pub fn is_empty(&self) -> bool {
        self.all().is_empty()
    }

    /// Asks every server for its health and models (concurrently, each bounded by its timeout).
    pub async fn check(&self) {
        let mut checks = tokio::task::JoinSet::new();
        for server in self.all() {
            checks.spawn(async move {
                let outcome = match server.adapter.health().await {
                    Ok(()) => server.adapter.list_model_details().await,
                    Err(e) => Err(e),
                };
                let mut state = server.state.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(mut models) => {
                        // Another Atmosphere node lists its router as `auto`: not a model.
                        models.retain(|m| m.name != "auto");
                        if state.degraded.is_some() {
                            info!(url = %server.url, models = models.len(), "model server healthy");
                        }
                        state.models = models;
                        state.degraded = None;
                    }
                    Err(e) => {
                        if state.degraded.as_deref() != Some(&e.to_string()) {
                            warn!(url = %server.url, "model server degraded: {e}");
                        }
                        state.degraded = Some(e.to_string());
                    }
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }

    /// The servers' models as the mesh sees them; a degraded server's models carry the reason.
    pub fn adverts(&self) -> Vec<ModelAdvert> {
        let mut adverts = Vec::new();
        for server in &self.all() {
            let state = server.state.lock().unwrap_or_else(|e| e.into_inner());
            for model in &state.models {
                let parameters = model.parameters.unwrap_or(0);
                adverts.push(ModelAdvert {
                    name: model.name.clone(),
                    family: model.family.clone().unwrap_or_else(|| "unknown".into()),
                    parameters,
                    size: size_tier(parameters),
                    quantization: model.quantization.clone(),
                    context_length: 0,
                    backend: backend_name(server.kind).into(),
                    tokens_per_second: None,
                    degraded: state.degraded.clone(),
                    kind: kind_of(model),
                });
            }
            if state.models.is_empty()
                && let Some(reason) = &state.degraded
            {
                // A server never reached still shows, so `mesh status` can say why.
                adverts.push(ModelAdvert {
                    name: server.url.clone(),
                    family: "unknown".into(),
                    parameters: 0,
                    size: None,
                    quantization: None,
                    context_length: 0,
                    backend: backend_name(server.kind).into(),
                    tokens_per_second: None,
                    degraded: Some(reason.clone()),
                    kind: ModelKind::Chat,
                });
            }
        }
        adverts
    }

    /// The healthy server that offers `model`.
    pub fn find(&self, model: &str) -> Option<Adapter> {
        self.all().iter().find_map(|server| {
            let state = server.state.lock().unwrap_or_else(|e| e.into_inner());
            (state.degraded.is_none() && state.models.iter().any(|m| m.name == model))
                .then(|| server.adapter.clone())
        })
    }

    /// The first healthy chat model, for requests that name none.
    pub fn default_chat(&self) -> Option<(Adapter, String)> {
        self.all().iter().find_map(|server| {
            let state = server.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.degraded.is_some() {
                return None;
            }
            state
                .models
                .iter()
                .find(|m| kind_of(m) == ModelKind::Chat)
                .map(|m| (server.adapter.clone(), m.name.clone()))
        })
    }
}

fn backend_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Ollama => "ollama",
        Kind::LlamaFarm => "llamafarm",
        Kind::OpenAi => "openai",
    }
}

/// Servers do not say what a model is for; embedding models are known by their families' names.
fn kind_of(model: &ServerModel) -> ModelKind {
    let name = format!(
        "{} {}",
        model.name.to_lowercase(),
        model.family.as_deref().unwrap_or_default().to_lowercase()
    );
    let embedding = ["embed", "minilm", "bge", "e5-", "gte", "bert"]
        .iter()
        .any(|marker| name.contains(marker));
    if embedding {
        ModelKind::Embeddings
    } else {
        ModelKind::Chat
    }
}

/// Capabilities from healthy models: `llm/<size>` per chat model, `embeddings/<name>`.
pub fn derived_capabilities(adverts: &[ModelAdvert]) -> Vec<Capability> {
    let mut capabilities: Vec<Capability> = Vec::new();
    for advert in adverts.iter().filter(|a| a.degraded.is_none()) {
        let capability = match advert.kind {
            ModelKind::Chat => Capability::new("llm", advert.size.clone()),
            ModelKind::Embeddings => Capability::new(
                "embeddings",
                Some(if advert.name == crate::models::MINILM_NAME {
                    "minilm".into()
                } else {
                    advert.name.clone()
                }),
            ),
        };
        if !capabilities.contains(&capability) {
            capabilities.push(capability);
        }
    }
    capabilities
}

/// Keeps the mesh's view of this node's models true: warms the local model up (measuring its
/// speed), then checks the servers every `interval`, publishing `models` and the capabilities
/// whenever they change.
pub async fn run(
    mesh: Mesh,
    local: Arc<LocalModels>,
    servers: Arc<ModelServers>,
    declared: Vec<Capability>,
    warmup: bool,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut published: Option<Vec<ModelAdvert>> = None;
    let mut warmed = !warmup;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
            () = servers.changed() => {}
            () = local.changed() => {}
        }
        servers.check().await;
        let mut adverts = local.adverts();
        adverts.extend(servers.adverts());
        if published.as_ref() != Some(&adverts) {
            let mut capabilities = declared.clone();
            for capability in derived_capabilities(&adverts) {
                if !capabilities.contains(&capability) {
                    capabilities.push(capability);
                }
            }
            let value = encode_value::<ModelsKey>(&adverts);
            let sent = mesh.set_value(ModelsKey::KEY, value, true).await.is_ok()
                && mesh.set_capabilities(capabilities).await.is_ok();
            if !sent {
                return; // the mesh has stopped
            }
            published = Some(adverts);
        }
        if !warmed {
            warmed = true;
            if let Err(e) = local.warm_up().await {
                warn!("warm-up generation failed: {e}");
            }
            ticker.reset_immediately();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(name: &str, kind: ModelKind, size: Option<&str>, degraded: bool) -> ModelAdvert {
        ModelAdvert {
            name: name.into(),
            family: "llama".into(),
            parameters: 0,
            size: size.map(str::to_owned),
            quantization: None,
            context_length: 0,
            backend: "ollama".into(),
            tokens_per_second: None,
            degraded: degraded.then(|| "connection refused".into()),
            kind,
        }
    }

    #[test]
    fn degraded_models_lose_their_capabilities() {
        let adverts = [
            advert("llama3.1:70b", ModelKind::Chat, Some("70B"), true),
            advert("qwen2.5:7b", ModelKind::Chat, Some("7B"), false),
            advert("all-minilm", ModelKind::Embeddings, Some("22M"), false),
        ];
        let capabilities: Vec<String> = derived_capabilities(&adverts)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(capabilities, ["llm/7B", "embeddings/all-minilm"]);
    }

    #[test]
    fn embedding_models_are_told_from_chat_models() {
        let model = |name: &str| ServerModel {
            name: name.into(),
            ..ServerModel::default()
        };
        assert_eq!(kind_of(&model("all-minilm:latest")), ModelKind::Embeddings);
        assert_eq!(kind_of(&model("nomic-embed-text")), ModelKind::Embeddings);
        assert_eq!(kind_of(&model("llama3.1:70b")), ModelKind::Chat);
    }
}

//! The models this node runs itself: a GGUF chat model and MiniLM embeddings, loaded lazily on
//! first use (a node starts in milliseconds; the first request pays the load), run on blocking
//! threads so inference never stalls the async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use atmosphere_backends::models::{MINILM_DIR, cache_dir, gemma3_path, smollm2_path};
use atmosphere_backends::{
    ChatMessage, ChatModel, EmbedError, Embedder, Engine, GenerateOptions, Generation, LlmError,
    ModelInfo,
};
use atmosphere_proto::record::size_tier;
use atmosphere_proto::{Capability, ModelAdvert, ModelKind};

/// Why a model request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "this node serves no chat model: set `[models] llm = \"auto\"` (or a GGUF path) in its config, or pass --llm auto"
    )]
    NoLlm,
    #[error(
        "this node serves no embeddings: set `[models] embeddings = \"auto\"` in its config, or pass --embeddings auto"
    )]
    NoEmbeddings,
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("the model task failed: {0}")]
    Task(String),
    #[error("[models] engine: {0}")]
    Engine(String),
    #[error("this node does not run a model called {0:?}; see `atmosphere model list`")]
    Unknown(String),
}

/// Resolves a config value: "" → none, "auto" → the default file in the model cache, else a path.
fn resolve(value: &str, default: impl FnOnce() -> PathBuf) -> Option<PathBuf> {
    match value.trim() {
        "" => None,
        "auto" => Some(default()),
        path => Some(PathBuf::from(path)),
    }
}

/// The chat model a config value names: "smollm2" and "gemma3" are the cached models.
fn resolve_llm(value: &str) -> Option<PathBuf> {
    match value.trim() {
        "smollm2" => Some(smollm2_path()),
        "gemma3" => Some(gemma3_path()),
        other => resolve(other, smollm2_path),
    }
}

/// The name the in-process MiniLM is served under.
pub const MINILM_NAME: &str = "all-minilm-l6-v2";

/// The node's own models.
#[derive(Debug, Default)]
pub struct LocalModels {
    llm_path: Option<PathBuf>,
    llm_info: Option<ModelInfo>,
    engine: Option<Engine>,
    /// The engine installed models run on (the configured one, or the best built).
    install_engine: Option<Engine>,
    llm: Mutex<Option<ChatModel>>,
    embed_dir: Option<PathBuf>,
    embedder: OnceLock<Embedder>,
    /// Where the router's MiniLM lives when the node does not serve embeddings itself.
    router_dir: PathBuf,
    /// Decode speed measured on this node (moving average over generations).
    tokens_per_second: Mutex<Option<f32>>,
    /// Chat models installed from packages at run time, besides the configured one.
    installed: RwLock<Vec<Arc<Installed>>>,
    changed: tokio::sync::Notify,
}

/// A chat model installed from a package.
#[derive(Debug)]
struct Installed {
    path: PathBuf,
    info: ModelInfo,
    engine: Engine,
    model: Mutex<Option<ChatModel>>,
    tokens_per_second: Mutex<Option<f32>>,
}

impl LocalModels {
    /// Checks the configured files (headers only) so the node can advertise what it serves.
    pub fn configure(llm: &str, engine: &str, embeddings: &str) -> Result<Self, ModelError> {
        let engine = Engine::parse(engine).map_err(ModelError::Engine)?;
        let llm_path = resolve_llm(llm);
        let llm_info = match &llm_path {
            Some(path) => Some(ChatModel::inspect(engine, path)?),
            None => None,
        };
        let embed_dir = resolve(embeddings, || cache_dir().join(MINILM_DIR));
        if let Some(dir) = &embed_dir {
            let missing: Vec<&str> = ["model.safetensors", "tokenizer.json", "config.json"]
                .into_iter()
                .filter(|f| !dir.join(f).is_file())
                .collect();
            if !missing.is_empty() {
                return Err(EmbedError::Missing {
                    dir: dir.clone(),
                    missing: missing.join(", "),
                }
                .into());
            }
        }
        Ok(Self {
            engine: llm_path.as_ref().map(|_| engine),
            install_engine: Some(engine),
            llm_path,
            llm_info,
            router_dir: embed_dir
                .clone()
                .unwrap_or_else(|| cache_dir().join(MINILM_DIR)),
            embed_dir,
            ..Self::default()
        })
    }

    /// Capabilities derived from the models: `llm/<size>` and `embeddings/minilm`.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut capabilities = Vec::new();
        if let Some(info) = &self.llm_info {
            let size = info
                .size_label
                .clone()
                .or_else(|| size_tier(info.parameters));
            capabilities.push(Capability::new("llm", size));
        }
        for installed in self.installed_models() {
            let info = &installed.info;
            let size = info
                .size_label
                .clone()
                .or_else(|| size_tier(info.parameters));
            let capability = Capability::new("llm", size);
            if !capabilities.contains(&capability) {
                capabilities.push(capability);
            }
        }
        if self.embed_dir.is_some() {
            capabilities.push(Capability::new("embeddings", Some("minilm".into())));
        }
        capabilities
    }

    /// What this node serves in process, as the mesh sees it.
    pub fn adverts(&self) -> Vec<ModelAdvert> {
        let mut adverts = Vec::new();
        let chat = |info: &ModelInfo, engine: Engine, speed: &Mutex<Option<f32>>| ModelAdvert {
            name: info.name.clone(),
            family: info.architecture.clone(),
            parameters: info.parameters,
            size: info
                .size_label
                .clone()
                .or_else(|| size_tier(info.parameters)),
            quantization: Some(info.quantization.clone()),
            context_length: u32::try_from(info.context_length).unwrap_or(u32::MAX),
            backend: engine.name().into(),
            tokens_per_second: *speed.lock().unwrap_or_else(|e| e.into_inner()),
            degraded: None,
            kind: ModelKind::Chat,
        };
        if let Some(info) = &self.llm_info {
            adverts.push(chat(
                info,
                self.engine.unwrap_or(Engine::Candle),
                &self.tokens_per_second,
            ));
        }
        for installed in self.installed_models() {
            adverts.push(chat(
                &installed.info,
                installed.engine,
                &installed.tokens_per_second,
            ));
        }
        if self.embed_dir.is_some() {
            adverts.push(ModelAdvert {
                name: MINILM_NAME.into(),
                family: "bert".into(),
                parameters: 22_713_216,
                size: Some("22M".into()),
                quantization: Some("F32".into()),
                context_length: 512,
                backend: "candle".into(),
                tokens_per_second: None,
                degraded: None,
                kind: ModelKind::Embeddings,
            });
        }
        adverts
    }

    fn installed_models(&self) -> Vec<Arc<Installed>> {
        self.installed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers the GGUF chat model at `path` (an installed package) with the engine, replacing
    /// an installed model of the same name; it is advertised from the next publication on.
    pub fn install(&self, path: &Path) -> Result<ModelInfo, ModelError> {
        let engine = self.install_engine.unwrap_or_else(Engine::best);
        let info = ChatModel::inspect(engine, path)?;
        let installed = Arc::new(Installed {
            path: path.to_owned(),
            info: info.clone(),
            engine,
            model: Mutex::new(None),
            tokens_per_second: Mutex::new(None),
        });
        {
            let mut all = self.installed.write().unwrap_or_else(|e| e.into_inner());
            all.retain(|m| m.info.name != info.name && m.path != path);
            all.push(installed);
        }
        self.changed.notify_one();
        Ok(info)
    }

    /// Forgets an installed model (its package is being replaced or removed).
    pub fn uninstall(&self, path: &Path) {
        self.installed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| m.path != path);
        self.changed.notify_one();
    }

    /// Resolves when the set of models changes (an install).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether this node runs a chat model called `name` itself.
    pub fn serves(&self, name: &str) -> bool {
        self.llm_info.as_ref().is_some_and(|i| i.name == name)
            || self.installed_models().iter().any(|m| m.info.name == name)
    }

    /// The chat model a request without a model name gets: the configured one, else the first
    /// installed one.
    pub fn default_chat(&self) -> Option<String> {
        self.llm_info
            .as_ref()
            .map(|i| i.name.clone())
            .or_else(|| self.installed_models().first().map(|m| m.info.name.clone()))
    }

    fn record_speed(&self, generation: &Generation) {
        Self::record_into(&self.tokens_per_second, generation);
    }

    fn record_into(speed: &Mutex<Option<f32>>, generation: &Generation) {
        let measured = generation.tokens_per_second() as f32;
        if generation.completion_tokens < 4 || measured <= 0.0 {
            return;
        }
        let mut speed = speed.lock().unwrap_or_else(|e| e.into_inner());
        *speed = Some(match *speed {
            Some(previous) => 0.7 * previous + 0.3 * measured,
            None => measured,
        });
    }

    /// The engine that runs the chat model, if the node serves one.
    pub fn engine(&self) -> Option<Engine> {
        self.engine
    }

    pub fn llm_info(&self) -> Option<&ModelInfo> {
        self.llm_info.as_ref()
    }

    pub fn serves_embeddings(&self) -> bool {
        self.embed_dir.is_some()
    }

    fn chat_blocking(
        &self,
        model: Option<&str>,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_token: impl FnMut(&str),
    ) -> Result<Generation, ModelError> {
        let primary = self.llm_info.as_ref().map(|i| i.name.as_str());
        let installed = match model {
            Some(name) if Some(name) != primary => Some(
                self.installed_models()
                    .into_iter()
                    .find(|m| m.info.name == name)
                    .ok_or_else(|| ModelError::Unknown(name.to_owned()))?,
            ),
            None if primary.is_none() => self.installed_models().into_iter().next(),
            _ => None,
        };
        if let Some(installed) = installed {
            let mut slot = installed.model.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(ChatModel::load(installed.engine, &installed.path)?);
            }
            let model = slot.as_mut().ok_or(ModelError::NoLlm)?;
            let generation = model.chat(messages, options, on_token)?;
            Self::record_into(&installed.tokens_per_second, &generation);
            return Ok(generation);
        }
        let path = self.llm_path.as_deref().ok_or(ModelError::NoLlm)?;
        let engine = self.engine.unwrap_or(Engine::Candle);
        let mut slot = self.llm.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(ChatModel::load(engine, path)?);
        }
        let model = slot.as_mut().ok_or(ModelError::NoLlm)?;
        let generation = model.chat(messages, options, on_token)?;
        self.record_speed(&generation);
        Ok(generation)
    }

    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let dir: &Path = self.embed_dir.as_deref().ok_or(ModelError::NoEmbeddings)?;
        self.embed_with(dir, texts)
    }

    fn embed_with(&self, dir: &Path, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let embedder = match self.embedder.get() {
            Some(embedder) => embedder,
            None => {
                let loaded = Embedder::load(dir)?;
                self.embedder.get_or_init(|| loaded)
            }
        };
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(embedder.embed_batch(&refs)?)
    }

    /// Chat with `model` (`None`: the default) on a blocking thread (one generation at a time
    /// per model: each has one KV cache).
    pub async fn chat(
        self: &Arc<Self>,
        model: Option<String>,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
    ) -> Result<Generation, ModelError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.chat_blocking(model.as_deref(), &messages, &options, |_| {})
        })
        .await
        .map_err(|e| ModelError::Task(e.to_string()))?
    }

    /// Chat with each new piece of text sent to `pieces` as it is generated.
    pub async fn chat_stream(
        self: &Arc<Self>,
        model: Option<String>,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
        pieces: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Generation, ModelError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.chat_blocking(model.as_deref(), &messages, &options, |piece| {
                let _ = pieces.send(piece.to_owned());
            })
        })
        .await
        .map_err(|e| ModelError::Task(e.to_string()))?
    }

    /// A short greedy generation that loads the model and measures its speed.
    pub async fn warm_up(self: &Arc<Self>) -> Result<(), ModelError> {
        if self.llm_path.is_none() {
            return Ok(());
        }
        let options = GenerateOptions {
            max_tokens: 24,
            ..GenerateOptions::default()
        };
        self.chat(
            None,
            vec![ChatMessage::user("Name three colours of the rainbow.")],
            options,
        )
        .await
        .map(|_| ())
    }

    /// Embeddings for the router: every node routes, so MiniLM is loaded from the model cache
    /// even where the node does not serve embeddings.
    pub async fn embed_for_routing(
        self: &Arc<Self>,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let dir = this
                .embed_dir
                .clone()
                .unwrap_or_else(|| this.router_dir.clone());
            this.embed_with(&dir, &texts)
        })
        .await
        .map_err(|e| ModelError::Task(e.to_string()))?
    }

    pub async fn embed(self: &Arc<Self>, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
            .await
            .map_err(|e| ModelError::Task(e.to_string()))?
    }
}

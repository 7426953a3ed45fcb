//! The models this node runs itself: a GGUF chat model and MiniLM embeddings, loaded lazily on
//! first use (a node starts in milliseconds; the first request pays the load), run on blocking
//! threads so inference never stalls the async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use atmosphere_backends::models::{MINILM_DIR, SMOLLM2_DIR, cache_dir};
use atmosphere_backends::{
    ChatMessage, EmbedError, Embedder, GenerateOptions, Generation, GgufModel, LlmError, ModelInfo,
};
use atmosphere_proto::Capability;

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
}

/// Resolves a config value: "" → none, "auto" → the default file in the model cache, else a path.
fn resolve(value: &str, default: impl FnOnce() -> PathBuf) -> Option<PathBuf> {
    match value.trim() {
        "" => None,
        "auto" => Some(default()),
        path => Some(PathBuf::from(path)),
    }
}

/// The node's own models.
#[derive(Debug, Default)]
pub struct LocalModels {
    llm_path: Option<PathBuf>,
    llm_info: Option<ModelInfo>,
    llm: Mutex<Option<GgufModel>>,
    embed_dir: Option<PathBuf>,
    embedder: OnceLock<Embedder>,
}

impl LocalModels {
    /// Checks the configured files (headers only) so the node can advertise what it serves.
    pub fn configure(llm: &str, embeddings: &str) -> Result<Self, ModelError> {
        let llm_path = resolve(llm, || {
            cache_dir()
                .join(SMOLLM2_DIR)
                .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        let llm_info = match &llm_path {
            Some(path) => Some(GgufModel::inspect(path)?),
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
            llm_path,
            llm_info,
            embed_dir,
            ..Self::default()
        })
    }

    /// Capabilities derived from the models: `llm/<size>` and `embeddings/minilm`.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut capabilities = Vec::new();
        if let Some(info) = &self.llm_info {
            capabilities.push(Capability::new("llm", info.size_label.clone()));
        }
        if self.embed_dir.is_some() {
            capabilities.push(Capability::new("embeddings", Some("minilm".into())));
        }
        capabilities
    }

    pub fn llm_info(&self) -> Option<&ModelInfo> {
        self.llm_info.as_ref()
    }

    pub fn serves_embeddings(&self) -> bool {
        self.embed_dir.is_some()
    }

    fn chat_blocking(
        &self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
    ) -> Result<Generation, ModelError> {
        let path = self.llm_path.as_deref().ok_or(ModelError::NoLlm)?;
        let mut slot = self.llm.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(GgufModel::load(path)?);
        }
        let model = slot.as_mut().ok_or(ModelError::NoLlm)?;
        Ok(model.chat(messages, options, |_| {})?)
    }

    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let dir: &Path = self.embed_dir.as_deref().ok_or(ModelError::NoEmbeddings)?;
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

    /// Chat on a blocking thread (one generation at a time: the model has one KV cache).
    pub async fn chat(
        self: &Arc<Self>,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
    ) -> Result<Generation, ModelError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.chat_blocking(&messages, &options))
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

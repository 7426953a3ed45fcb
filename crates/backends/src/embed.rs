//! Sentence embeddings with all-MiniLM-L6-v2, in process: candle's BERT over the safetensors
//! weights, the model's own tokenizer, mean pooling over the attention mask, L2 normalisation.
//! One embedding space for routing and RAG (the same model as Ollama's `all-minilm`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::models::FETCH_HINT;

/// Dimensions of a MiniLM embedding.
pub const EMBEDDING_DIM: usize = 384;
/// Longest input in tokens; longer text is truncated (the model was trained on ≤ 256).
pub const MAX_TOKENS: usize = 256;

/// Why embedding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    #[error("MiniLM model files missing in {dir}: {missing}; {FETCH_HINT}")]
    Missing { dir: PathBuf, missing: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("model files in {dir} are corrupt or of another model: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// A loaded MiniLM model. Cheap to share behind an `Arc`; `embed` takes `&self`.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    dir: PathBuf,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let files = ["model.safetensors", "tokenizer.json", "config.json"];
        let missing: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(EmbedError::Missing {
                dir: dir.to_owned(),
                missing: missing.join(", "),
            });
        }
        let corrupt = |reason: String| EmbedError::Corrupt {
            dir: dir.to_owned(),
            reason,
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| EmbedError::Read {
                path,
                reason: e.to_string(),
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| corrupt(format!("config.json: {e}")))?;
        if config.hidden_size != EMBEDDING_DIM {
            return Err(corrupt(format!(
                "hidden size {} is not MiniLM's {EMBEDDING_DIM}",
                config.hidden_size
            )));
        }
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| corrupt(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens; padding to the longest input of a
        // batch (and masking it out) is both faster and what keeps unrelated sentences apart.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| corrupt(format!("truncation: {e}")))?;
        let weights = VarBuilder::from_buffered_safetensors(
            read("model.safetensors")?,
            DType::F32,
            &Device::Cpu,
        )
        .map_err(|e| corrupt(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(weights, &config).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            dir: dir.to_owned(),
        })
    }

    /// Loads from the model cache (see [`crate::models::cache_dir`]).
    pub fn load_default() -> Result<Self, EmbedError> {
        Self::load(&crate::models::cache_dir().join(crate::models::MINILM_DIR))
    }

    /// Embeds one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut batch = self.embed_batch(&[text])?;
        batch
            .pop()
            .ok_or_else(|| EmbedError::Tokenize("empty batch".into()))
    }

    /// Embeds several texts in one forward pass; each vector is 384 floats of unit length.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let n = encodings.len();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().copied());
            mask.extend(encoding.get_attention_mask().iter().copied());
        }
        let device = Device::Cpu;
        let ids = Tensor::from_vec(ids, (n, len), &device)?;
        let mask = Tensor::from_vec(mask, (n, len), &device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over real tokens only: padding must not dilute short sentences.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        let normalised = mean.broadcast_div(&norms)?;
        Ok(normalised.to_vec2::<f32>()?)
    }
}

/// Cosine similarity of two unit vectors (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

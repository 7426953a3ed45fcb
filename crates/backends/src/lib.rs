//! Atmosphere model backends: what runs the models a node offers. In-process MiniLM sentence
//! embeddings (candle + tokenizers) and GGUF chat models (candle quantized llama); the HTTP
//! adapters follow.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod adapters;
pub mod embed;
pub mod llm;
pub mod models;
pub mod spm;

pub use embed::{EMBEDDING_DIM, EmbedError, Embedder};
pub use llm::{
    ChatMessage, GenerateOptions, Generation, GgufModel, LlmError, ModelInfo, StopReason,
};

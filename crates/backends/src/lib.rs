//! Atmosphere model backends: what runs the models a node offers. In-process MiniLM sentence
//! embeddings (candle + tokenizers), GGUF chat models (candle, or llama.cpp with the `llama-cpp`
//! feature), and adapters for the model servers a node fronts (Ollama, LlamaFarm, OpenAI).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod adapters;
pub mod embed;
pub mod engine;
#[cfg(feature = "llama-cpp")]
pub mod llamacpp;
pub mod llm;
pub mod models;
pub mod package;
pub mod spm;

pub use embed::{EMBEDDING_DIM, EmbedError, Embedder};
pub use engine::{ChatModel, Engine};
pub use llm::{
    ChatMessage, GenerateOptions, Generation, GgufModel, LlmError, ModelInfo, StopReason,
};

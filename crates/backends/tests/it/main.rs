//! Backends against the real model files (fetched by `scripts/fetch-models`).

mod adapters;
mod embeddings;
mod llama_server;
#[cfg(feature = "llama-cpp")]
mod llamacpp;
mod llm;

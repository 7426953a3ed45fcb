//! Atmosphere model backends: what runs the models a node offers. In-process MiniLM sentence
//! embeddings (candle + tokenizers); GGUF inference and the HTTP adapters follow.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod embed;
pub mod models;

pub use embed::{EMBEDDING_DIM, EmbedError, Embedder};

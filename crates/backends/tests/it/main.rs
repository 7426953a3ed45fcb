//! Backends against the real model files (fetched by `scripts/fetch-models`).

mod embeddings;
mod llm;

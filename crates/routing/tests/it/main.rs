//! The router against the real MiniLM embeddings (fetched by `scripts/fetch-models`).

mod accuracy;

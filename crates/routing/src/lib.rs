//! Atmosphere's semantic router, without I/O: capability descriptors (a description and example
//! utterances per capability, embedded once), the scoring of an intent's embedding against them
//! with a threshold below which the intent falls back to the best general LLM, and the reasons
//! for each decision. Embedding is the caller's job (MiniLM, 384 dimensions, unit length).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod choose;
pub mod classify;
pub mod descriptor;
pub mod eval;
pub mod summary;
pub mod vector;

pub use choose::{Candidate, Complexity, Ranked, complexity_descriptors, rank};
pub use classify::{Classification, Classifier, Params, Scored};
pub use descriptor::{Advertised, Descriptor, EmbeddedDescriptor, builtin};
pub use vector::QVec;

/// The class of requests no capability in the mesh serves (shopping, calls, playback, …): they go
/// to the best general LLM, flagged, which can at least say so.
pub const OUT_OF_SCOPE: &str = "out-of-scope";
/// The general language-model capability, where intents that fit nothing well go.
pub const GENERAL: &str = "llm";

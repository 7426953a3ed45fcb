//! Atmosphere's vision. The object detector is NanoDet (COCO 80 classes), which the package
//! registries carry only as a TF.js graph model; [`tfjs`] reads such a model — its graph and its
//! weights (float16-quantised floats, int32 constants) — into plain Rust values.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod detect;
pub mod detector;
pub mod graph;
pub mod ops;
pub mod tfjs;

/// Where `scripts/fetch-vision` puts the NanoDet files, below the model cache.
pub const NANODET_DIR: &str = "nanodet";

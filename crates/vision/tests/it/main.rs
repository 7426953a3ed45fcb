//! The vision crate against the real NanoDet files (fetched by `scripts/fetch-vision`).

mod tfjs;

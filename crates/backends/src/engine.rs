//! Which engine runs a GGUF chat model in process: candle (pure Rust, always built) or llama.cpp
//! (the `llama-cpp` cargo feature, 2–3× faster here). One face for both, so the node and the CLI
//! never care which one they hold.

use std::path::Path;

use crate::llm::{ChatMessage, GenerateOptions, Generation, GgufModel, LlmError, ModelInfo};

/// An in-process inference engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    Candle,
    #[serde(rename = "llama.cpp")]
    LlamaCpp,
}

impl Engine {
    /// llama.cpp when this build has it, else candle.
    pub fn best() -> Self {
        if cfg!(feature = "llama-cpp") {
            Self::LlamaCpp
        } else {
            Self::Candle
        }
    }

    /// `"auto"` (or empty), `"candle"` or `"llama.cpp"`; llama.cpp only in builds that have it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "auto" => Ok(Self::best()),
            "candle" => Ok(Self::Candle),
            "llama.cpp" | "llamacpp" | "llama-cpp" if cfg!(feature = "llama-cpp") => {
                Ok(Self::LlamaCpp)
            }
            "llama.cpp" | "llamacpp" | "llama-cpp" => Err(
                "this build has no llama.cpp engine: rebuild with `--features llama-cpp` \
                 (needs cmake, clang and libclang-dev; scripts/setup installs them), or use \
                 \"candle\""
                    .into(),
            ),
            other => Err(format!(
                "engine {other:?}: use \"auto\", \"candle\" or \"llama.cpp\""
            )),
        }
    }

    /// The name the mesh sees as the model's backend.
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::LlamaCpp => "llama.cpp",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A chat model loaded by one engine. Generation needs `&mut self`; share it behind a mutex.
#[derive(Debug)]
pub enum ChatModel {
    Candle(Box<GgufModel>),
    #[cfg(feature = "llama-cpp")]
    LlamaCpp(Box<crate::llamacpp::LlamaCppModel>),
}

impl ChatModel {
    pub fn load(engine: Engine, path: &Path) -> Result<Self, LlmError> {
        match engine {
            Engine::Candle => GgufModel::load(path).map(|m| Self::Candle(Box::new(m))),
            #[cfg(feature = "llama-cpp")]
            Engine::LlamaCpp => {
                crate::llamacpp::LlamaCppModel::load(path).map(|m| Self::LlamaCpp(Box::new(m)))
            }
            #[cfg(not(feature = "llama-cpp"))]
            Engine::LlamaCpp => Err(LlmError::Engine(
                "this build has no llama.cpp engine (`--features llama-cpp`)".into(),
            )),
        }
    }

    /// Reads only the file's header: what the model is, and whether `engine` can run it.
    pub fn inspect(engine: Engine, path: &Path) -> Result<ModelInfo, LlmError> {
        match engine {
            Engine::Candle => GgufModel::inspect(path),
            Engine::LlamaCpp => crate::llm::read_header(path).map(|(_, _, info)| info),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Candle(_) => Engine::Candle,
            #[cfg(feature = "llama-cpp")]
            Self::LlamaCpp(_) => Engine::LlamaCpp,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        match self {
            Self::Candle(model) => model.info(),
            #[cfg(feature = "llama-cpp")]
            Self::LlamaCpp(model) => model.info(),
        }
    }

    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_token: impl FnMut(&str),
    ) -> Result<Generation, LlmError> {
        match self {
            Self::Candle(model) => model.chat(messages, options, on_token),
            #[cfg(feature = "llama-cpp")]
            Self::LlamaCpp(model) => model.chat(messages, options, on_token),
        }
    }

    pub fn generate(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        on_token: impl FnMut(&str),
    ) -> Result<Generation, LlmError> {
        match self {
            Self::Candle(model) => model.generate(prompt, options, on_token),
            #[cfg(feature = "llama-cpp")]
            Self::LlamaCpp(model) => model.generate(prompt, options, on_token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_parse_and_missing_engines_say_how_to_get_them() {
        assert_eq!(Engine::parse("candle"), Ok(Engine::Candle));
        assert_eq!(Engine::parse("auto"), Ok(Engine::best()));
        assert!(
            Engine::parse("tensorrt")
                .unwrap_err()
                .contains("\"candle\"")
        );
        match Engine::parse("llama.cpp") {
            Ok(engine) => assert_eq!(engine, Engine::LlamaCpp),
            Err(e) => assert!(e.contains("--features llama-cpp"), "{e}"),
        }
    }
}

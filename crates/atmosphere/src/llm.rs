//! `atmosphere llm`: the node's in-process models, run directly from the CLI (no node needed):
//! chat with the GGUF model, embed text with MiniLM, show what a model file is.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use atmosphere_backends::models::{MINILM_DIR, cache_dir};
use atmosphere_backends::{ChatMessage, ChatModel, Embedder, Engine, GenerateOptions};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// Answer a prompt with the GGUF model, streaming tokens as they come.
    Chat {
        prompt: String,
        /// "smollm2" (default) or "gemma3" from the model cache, or a GGUF file.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// 0 = greedy (deterministic).
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// A system message to put first.
        #[arg(long)]
        system: Option<String>,
        /// "auto" (llama.cpp when this build has it, else candle), "candle" or "llama.cpp".
        #[arg(long, default_value = "auto")]
        engine: String,
    },
    /// Embed text with all-MiniLM-L6-v2 (384 dimensions, unit length).
    Embed {
        /// One or more texts.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Directory with model.safetensors, tokenizer.json, config.json.
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// What a GGUF model file is (name, size, quantisation, context).
    Info {
        /// "smollm2" (default) or "gemma3" from the model cache, or a GGUF file.
        #[arg(long)]
        model: Option<String>,
    },
}

/// A cached model by name, or a path.
fn gguf(model: Option<String>) -> PathBuf {
    match model.as_deref() {
        None | Some("smollm2" | "auto") => atmosphere_backends::models::smollm2_path(),
        Some("gemma3") => atmosphere_backends::models::gemma3_path(),
        Some(path) => PathBuf::from(path),
    }
}

pub fn run(command: LlmCommand, json: bool) -> Result<()> {
    match command {
        LlmCommand::Chat {
            prompt,
            model,
            max_tokens,
            temperature,
            system,
            engine,
        } => {
            let path = gguf(model);
            let engine = Engine::parse(&engine).map_err(anyhow::Error::msg)?;
            let mut model = ChatModel::load(engine, &path)?;
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: system,
                });
            }
            messages.push(ChatMessage::user(prompt));
            let options = GenerateOptions {
                max_tokens,
                temperature,
                ..GenerateOptions::default()
            };
            let mut stdout = std::io::stdout();
            let generation = model.chat(&messages, &options, |piece| {
                if !json {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
            })?;
            if json {
                let value = serde_json::json!({
                    "model": model.info(),
                    "engine": model.engine(),
                    "text": generation.text,
                    "prompt_tokens": generation.prompt_tokens,
                    "completion_tokens": generation.completion_tokens,
                    "stop_reason": generation.stop_reason,
                    "first_token_ms": generation.first_token.as_secs_f64() * 1000.0,
                    "tokens_per_second": generation.tokens_per_second(),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!();
                eprintln!(
                    "[{} on {}: {} tokens, first after {:.0} ms, {:.1} tokens/s]",
                    model.info().name,
                    model.engine(),
                    generation.completion_tokens,
                    generation.first_token.as_secs_f64() * 1000.0,
                    generation.tokens_per_second()
                );
            }
            Ok(())
        }
        LlmCommand::Embed { texts, model_dir } => {
            let dir = model_dir.unwrap_or_else(|| cache_dir().join(MINILM_DIR));
            let embedder = Embedder::load(&dir)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder.embed_batch(&refs).context("embedding")?;
            if json {
                let rows: Vec<_> = texts
                    .iter()
                    .zip(&vectors)
                    .map(|(text, vector)| serde_json::json!({"text": text, "embedding": vector}))
                    .collect();
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for (text, vector) in texts.iter().zip(&vectors) {
                    let head: Vec<String> =
                        vector.iter().take(6).map(|x| format!("{x:.4}")).collect();
                    println!("{} dims [{}, …]  {text:?}", vector.len(), head.join(", "));
                }
                if vectors.len() > 1 {
                    for i in 1..vectors.len() {
                        let cosine = atmosphere_backends::embed::cosine(&vectors[0], &vectors[i]);
                        println!("cosine(1, {}) = {cosine:.3}", i + 1);
                    }
                }
            }
            Ok(())
        }
        LlmCommand::Info { model } => {
            let path = gguf(model);
            let info = &ChatModel::inspect(Engine::best(), &path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                println!(
                    "{}: {} {} ({} parameters), {}, context {} tokens, {:.0} MiB",
                    path.display(),
                    info.name,
                    info.size_label.as_deref().unwrap_or("?"),
                    info.parameters,
                    info.quantization,
                    info.context_length,
                    info.file_bytes as f64 / (1024.0 * 1024.0)
                );
            }
            Ok(())
        }
    }
}

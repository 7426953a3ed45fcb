//! GGUF language models run in-process by llama.cpp (`llama-cpp-2`, vendored C++; the cargo
//! feature `llama-cpp`). Same face as the candle [`GgufModel`](crate::GgufModel): the model's
//! description, chat template and stop handling come from the same GGUF reader, so both engines
//! name, prompt and stop a model alike; llama.cpp does the tokenising, the network and sampling.
//! Built for `x86-64-v3` (AVX2/FMA/F16C/BMI2, never native detection), one thread per decode.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::llm::{
    ChatFormat, ChatMessage, Completion, GenerateOptions, Generation, LlmError, ModelInfo,
    REPEAT_WINDOW, StopReason, read_header,
};

/// Threads per decode step: on 2 cores one thread leaves the other to the node (spinning
/// workers slowed everything down when both were busy).
const THREADS: i32 = 1;
/// Prompt tokens per `decode` call.
const BATCH: usize = 512;

/// llama.cpp's process-wide state, set up once.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // Its log lines (every tensor at load) would drown the node's own.
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(false),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LlmError::Engine(format!("llama.cpp did not start: {e}")))
}

/// A GGUF model loaded by llama.cpp. A context (the KV cache) is made per generation, sized to
/// the prompt and the token budget.
pub struct LlamaCppModel {
    model: LlamaModel,
    info: ModelInfo,
    format: ChatFormat,
}

impl std::fmt::Debug for LlamaCppModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaCppModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LlamaCppModel {
    /// Loads a GGUF file (any architecture llama.cpp knows).
    pub fn load(path: &Path) -> Result<Self, LlmError> {
        let (_, content, info) = read_header(path)?;
        let format = ChatFormat::from_gguf(&content, &info);
        drop(content);
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| LlmError::Corrupt {
                path: path.to_owned(),
                reason: format!("llama.cpp cannot load it: {e}"),
            })?;
        Ok(Self {
            model,
            info,
            format,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids of `text` as llama.cpp splits it (control tokens recognised; no BOS added).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        self.format.render(messages)
    }

    /// Chat: renders the template, then generates.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_token: impl FnMut(&str),
    ) -> Result<Generation, LlmError> {
        let prompt = self.render_chat(messages)?;
        self.generate(&prompt, options, on_token)
    }

    /// Generates from a raw prompt, calling `on_token` with each new piece of text.
    pub fn generate(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        mut on_token: impl FnMut(&str),
    ) -> Result<Generation, LlmError> {
        let started = Instant::now();
        let backend = backend()?;
        let vocab = self.model.vocab();
        let prompt_ids = vocab.tokenize(prompt.as_bytes(), true, true);
        let budget = prompt_ids.len() + options.max_tokens;
        if prompt_ids.is_empty() || budget > self.info.context_length {
            return Err(LlmError::TooLong {
                tokens: budget,
                context: self.info.context_length,
            });
        }
        let engine =
            |what: &str, e: &dyn std::fmt::Display| LlmError::Engine(format!("{what}: {e}"));
        // The KV cache holds exactly this request, rounded up to llama.cpp's 256-token cells.
        let n_ctx = u32::try_from(budget.div_ceil(256) * 256).unwrap_or(u32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(BATCH as u32)
            .with_n_ubatch(BATCH as u32)
            .with_n_threads(THREADS)
            .with_n_threads_batch(THREADS);
        let mut context = self
            .model
            .new_context(backend, params)
            .map_err(|e| engine("context", &e))?;

        let mut batch = LlamaBatch::new(BATCH, 1);
        for (chunk_index, chunk) in prompt_ids.chunks(BATCH).enumerate() {
            batch.clear();
            let offset = chunk_index * BATCH;
            for (i, token) in chunk.iter().enumerate() {
                let position = offset + i;
                let last = position + 1 == prompt_ids.len();
                batch
                    .add(*token, position as i32, &[0], last)
                    .map_err(|e| engine("batch", &e))?;
            }
            context
                .decode(&mut batch)
                .map_err(|e| engine("prompt", &e))?;
        }

        let mut chain = Vec::new();
        if options.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                REPEAT_WINDOW as i32,
                options.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        let mut sampler = if options.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
            LlamaSampler::chain_simple(chain)
        } else {
            if let Some(p) = options.top_p {
                chain.push(LlamaSampler::top_p(p as f32, 1));
            }
            chain.push(LlamaSampler::temp(options.temperature as f32));
            chain.push(LlamaSampler::dist(options.seed as u32));
            LlamaSampler::chain_simple(chain)
        };

        let mut first_token = None;
        let mut generated: Vec<LlamaToken> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut completion = Completion::new(&options.stop);
        let mut stop_reason = StopReason::MaxTokens;
        let mut logits_index = batch.n_tokens() - 1;
        while generated.len() < options.max_tokens {
            // `sample` also accepts the token into the sampler's state.
            let next = sampler.sample(&context, logits_index);
            first_token.get_or_insert_with(|| started.elapsed());
            if vocab.is_eog(next) {
                stop_reason = StopReason::EndOfText;
                break;
            }
            generated.push(next);
            bytes.extend(vocab.token_to_piece(next, false, None));
            // Pieces can split a character: the completion emits only whole UTF-8 text.
            if completion.advance(&String::from_utf8_lossy(&bytes), &mut on_token) {
                stop_reason = StopReason::StopSequence;
                break;
            }
            batch.clear();
            let position = prompt_ids.len() + generated.len() - 1;
            batch
                .add(next, position as i32, &[0], true)
                .map_err(|e| engine("batch", &e))?;
            context
                .decode(&mut batch)
                .map_err(|e| engine("decode", &e))?;
            logits_index = 0;
        }
        let text = if stop_reason == StopReason::StopSequence {
            completion.into_text()
        } else {
            completion.finish(&String::from_utf8_lossy(&bytes), &mut on_token)
        };
        Ok(Generation {
            text,
            prompt_tokens: prompt_ids.len(),
            completion_tokens: generated.len(),
            stop_reason,
            first_token: first_token.unwrap_or_default(),
            total: started.elapsed(),
        })
    }
}

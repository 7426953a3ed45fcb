//! GGUF language models served by the node itself, in pure Rust: candle's quantized llama and
//! gemma3, a tokenizer rebuilt from the GGUF metadata (byte-level BPE or SentencePiece scores),
//! the model's own chat template.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_gemma3, quantized_llama};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::BPE;
use tokenizers::{AddedToken, Tokenizer};

use crate::models::FETCH_HINT;
use crate::spm::SpmTokenizer;

/// Architectures this module runs (`general.architecture`).
pub const ARCHITECTURES: [&str; 2] = ["llama", "gemma3"];

/// The network, by architecture.
enum Weights {
    Llama(quantized_llama::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
}

impl Weights {
    fn forward(&mut self, input: &Tensor, position: usize) -> candle_core::Result<Tensor> {
        match self {
            Self::Llama(w) => w.forward(input, position),
            // gemma3 restarts its KV cache whenever position is 0.
            Self::Gemma3(w) => w.forward(input, position),
        }
    }

    fn reset(&mut self) {
        match self {
            Self::Llama(w) => w.clear_kv_cache(),
            Self::Gemma3(_) => {}
        }
    }
}

/// The vocabulary, by the GGUF's `tokenizer.ggml.model`.
enum TextTokenizer {
    /// `gpt2`: byte-level BPE with merges.
    Bpe(Box<Tokenizer>),
    /// `llama`: SentencePiece pieces with scores.
    Spm(Box<SpmTokenizer>),
}

impl TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        match self {
            Self::Bpe(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| LlmError::Tokenize(e.to_string())),
            Self::Spm(t) => Ok(t.encode(text)),
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        match self {
            Self::Bpe(t) => t
                .decode(ids, true)
                .map_err(|e| LlmError::Tokenize(e.to_string())),
            Self::Spm(t) => Ok(t.decode(ids, true)),
        }
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Bpe(t) => t.token_to_id(token),
            Self::Spm(t) => t.token_to_id(token),
        }
    }
}

/// Why loading or generating failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    #[error("model file {path} not found; {FETCH_HINT}")]
    Missing { path: PathBuf },
    #[error("{path} is not a usable GGUF model: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("prompt of {tokens} tokens does not fit the {context}-token context")]
    TooLong { tokens: usize, context: usize },
    #[error("chat template failed: {0}")]
    Template(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("llama.cpp failed: {0}")]
    Engine(String),
}

/// What a model is, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    /// "135M", "7B", … as the file states it.
    pub size_label: Option<String>,
    pub parameters: u64,
    pub quantization: String,
    pub context_length: usize,
    pub file_bytes: u64,
}

/// One chat message (the HTTP API's type: what a client sends is what a model is given).
pub use atmosphere_api::ChatMessage;

/// Sampling and stopping.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 means greedy (deterministic).
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Divides (or, for negative logits, multiplies) the logit of each token among the last
    /// [`REPEAT_WINDOW`] generated ones: 1.0 turns it off. Small models decoding greedily loop on
    /// a phrase without it (Gemma 3 270M repeats its first sentence to the token limit).
    pub repeat_penalty: f32,
}

/// How many of the last generated tokens the repeat penalty looks at (llama.cpp's and Ollama's
/// default window).
pub const REPEAT_WINDOW: usize = 64;

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: 299_792_458,
            stop: Vec::new(),
            repeat_penalty: 1.1,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfText,
    StopSequence,
    MaxTokens,
}

/// A finished generation with its timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop_reason: StopReason,
    pub first_token: Duration,
    pub total: Duration,
}

impl Generation {
    /// Decode speed after the first token.
    pub fn tokens_per_second(&self) -> f64 {
        let decode = self.total.saturating_sub(self.first_token).as_secs_f64();
        if self.completion_tokens <= 1 || decode <= 0.0 {
            return 0.0;
        }
        (self.completion_tokens - 1) as f64 / decode
    }
}

/// A loaded GGUF model. Generation needs `&mut self` (the KV cache); share it behind a mutex.
pub struct GgufModel {
    weights: Weights,
    tokenizer: TextTokenizer,
    info: ModelInfo,
    stop_ids: Vec<u32>,
    /// Prepended to every prompt when the file asks for it (`tokenizer.ggml.add_bos_token`).
    bos_id: Option<u32>,
    format: ChatFormat,
}

/// How a model wants a conversation written: its GGUF chat template (Jinja, rendered with
/// minijinja), or its family's turn format when the file has none.
#[derive(Debug, Clone)]
pub(crate) struct ChatFormat {
    template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    architecture: String,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn meta_str(content: &gguf_file::Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn meta_u32(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

fn meta_strings(content: &gguf_file::Content, key: &str) -> Option<Vec<String>> {
    let values = content.metadata.get(key)?.to_vec().ok()?;
    values.iter().map(|v| v.to_string().ok().cloned()).collect()
}

impl GgufModel {
    /// Loads a GGUF file: weights, tokenizer and template all come from the file itself.
    pub fn load(path: &Path) -> Result<Self, LlmError> {
        let (mut file, content, info) = open(path)?;
        let corrupt = |reason: String| LlmError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let tokenizer = tokenizer_from_gguf(&content).map_err(corrupt)?;
        let add_bos = content
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos_id = meta_u32(&content, "tokenizer.ggml.bos_token_id").filter(|_| add_bos);
        let format = ChatFormat::from_gguf(&content, &info);
        let mut stop_ids: Vec<u32> = meta_u32(&content, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        for marker in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "</s>",
            "<end_of_turn>",
        ] {
            if let Some(id) = tokenizer.token_to_id(marker)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        let weights = match info.architecture.as_str() {
            "gemma3" => quantized_gemma3::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
                .map(Weights::Gemma3),
            _ => quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
                .map(Weights::Llama),
        }
        .map_err(|e| corrupt(e.to_string()))?;
        Ok(Self {
            weights,
            tokenizer,
            info,
            stop_ids,
            bos_id,
            format,
        })
    }

    /// Reads only the file's header: what the model is, without loading its weights.
    pub fn inspect(path: &Path) -> Result<ModelInfo, LlmError> {
        open(path).map(|(_, _, info)| info)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids of `text` (control tokens written in it are recognised; no BOS added).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer.encode(text)
    }

    /// Renders `messages` with the model's chat template; when the file has none, the turn
    /// format of its family (Gemma's turns, else ChatML).
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
        let mut prompt_ids: Vec<u32> = self.bos_id.into_iter().collect();
        prompt_ids.extend(self.tokenizer.encode(prompt)?);
        let budget = prompt_ids.len() + options.max_tokens;
        if prompt_ids.is_empty() || budget > self.info.context_length {
            return Err(LlmError::TooLong {
                tokens: budget,
                context: self.info.context_length,
            });
        }
        let sampling = if options.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match options.top_p {
                Some(p) => Sampling::TopP {
                    p,
                    temperature: options.temperature,
                },
                None => Sampling::All {
                    temperature: options.temperature,
                },
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(options.seed, sampling);
        self.weights.reset();
        let device = Device::Cpu;
        let input = Tensor::new(prompt_ids.as_slice(), &device)?.unsqueeze(0)?;
        let mut logits = self.weights.forward(&input, 0)?.squeeze(0)?;
        let mut first_token = None;
        let mut generated: Vec<u32> = Vec::new();
        let mut completion = Completion::new(&options.stop);
        let mut stop_reason = StopReason::MaxTokens;
        while generated.len() < options.max_tokens {
            if options.repeat_penalty != 1.0 && !generated.is_empty() {
                let window = &generated[generated.len().saturating_sub(REPEAT_WINDOW)..];
                logits = candle_transformers::utils::apply_repeat_penalty(
                    &logits,
                    options.repeat_penalty,
                    window,
                )?;
            }
            let next = sampler.sample(&logits)?;
            first_token.get_or_insert_with(|| started.elapsed());
            if self.stop_ids.contains(&next) {
                stop_reason = StopReason::EndOfText;
                break;
            }
            generated.push(next);
            // Decode the whole completion: multi-byte characters can span tokens, so a token
            // alone may not be valid text yet.
            let decoded = self.tokenizer.decode(&generated)?;
            if completion.advance(&decoded, &mut on_token) {
                stop_reason = StopReason::StopSequence;
                break;
            }
            let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
            let position = prompt_ids.len() + generated.len() - 1;
            logits = self.weights.forward(&input, position)?.squeeze(0)?;
        }
        let text = if stop_reason == StopReason::StopSequence {
            completion.into_text()
        } else {
            completion.finish(&self.tokenizer.decode(&generated)?, &mut on_token)
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

impl ChatFormat {
    pub(crate) fn from_gguf(content: &gguf_file::Content, info: &ModelInfo) -> Self {
        let tokens = meta_strings(content, "tokenizer.ggml.tokens").unwrap_or_default();
        let token_text =
            |key: &str| meta_u32(content, key).and_then(|id| tokens.get(id as usize).cloned());
        Self {
            template: meta_str(content, "tokenizer.chat_template"),
            bos: token_text("tokenizer.ggml.bos_token_id"),
            eos: token_text("tokenizer.ggml.eos_token_id"),
            architecture: info.architecture.clone(),
        }
    }

    pub(crate) fn render(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let Some(template) = &self.template else {
            let mut prompt = String::new();
            if self.architecture == "gemma3" {
                // Gemma has no system role: a system message opens the first user turn.
                let mut pending_system = String::new();
                for message in messages {
                    match message.role.as_str() {
                        "system" => {
                            pending_system.push_str(&message.content);
                            pending_system.push_str("\n\n");
                        }
                        role => {
                            let role = if role == "assistant" { "model" } else { "user" };
                            prompt.push_str(&format!(
                                "<start_of_turn>{role}\n{}{}<end_of_turn>\n",
                                std::mem::take(&mut pending_system),
                                message.content.trim()
                            ));
                        }
                    }
                }
                prompt.push_str("<start_of_turn>model\n");
                return Ok(prompt);
            }
            for message in messages {
                prompt.push_str(&format!(
                    "<|im_start|>{}\n{}<|im_end|>\n",
                    message.role, message.content
                ));
            }
            prompt.push_str("<|im_start|>assistant\n");
            return Ok(prompt);
        };
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| LlmError::Template(e.to_string()))?;
        let rendered = env
            .get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                    add_generation_prompt => true,
                    bos_token => self.bos.clone().unwrap_or_default(),
                    eos_token => self.eos.clone().unwrap_or_default(),
                })
            })
            .map_err(|e| LlmError::Template(e.to_string()))?;
        // Templates that open with `{{ bos_token }}` (Gemma's) would put a second BOS after the
        // one both engines add when tokenizing; a doubled BOS derails small models (Gemma 3
        // 270M echoed the question, then looped).
        match self.bos.as_deref().filter(|b| !b.is_empty()) {
            Some(bos) => Ok(rendered
                .strip_prefix(bos)
                .map_or_else(|| rendered.clone(), str::to_owned)),
            None => Ok(rendered),
        }
    }
}

/// A completion's text as it grows, shared by both engines: only whole new characters are
/// emitted, and the text ends before the first stop sequence.
pub(crate) struct Completion<'a> {
    text: String,
    stop: &'a [String],
}

impl<'a> Completion<'a> {
    pub(crate) fn new(stop: &'a [String]) -> Self {
        Self {
            text: String::new(),
            stop,
        }
    }

    /// `decoded` is the whole completion so far; emits what is new. True when a stop sequence
    /// ends the completion (the text is cut before it).
    pub(crate) fn advance(&mut self, decoded: &str, on_token: &mut impl FnMut(&str)) -> bool {
        if let Some(cut) = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| decoded.find(s.as_str()))
            .min()
        {
            if cut > self.text.len() {
                on_token(&decoded[self.text.len()..cut]);
            }
            self.text = decoded[..cut].to_owned();
            return true;
        }
        if decoded.len() > self.text.len()
            && decoded.is_char_boundary(self.text.len())
            && !decoded.ends_with('\u{fffd}')
        {
            on_token(&decoded[self.text.len()..]);
            self.text = decoded.to_owned();
        }
        false
    }

    /// The completion ended (end of text or budget): emits the rest, a partial character too.
    pub(crate) fn finish(self, decoded: &str, on_token: &mut impl FnMut(&str)) -> String {
        if decoded.len() > self.text.len() && decoded.is_char_boundary(self.text.len()) {
            on_token(&decoded[self.text.len()..]);
        }
        decoded.to_owned()
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }
}

/// Opens a GGUF file and reads its header: the model's description, checked to be runnable.
fn open(path: &Path) -> Result<(std::fs::File, gguf_file::Content, ModelInfo), LlmError> {
    let (file, content, info) = read_header(path)?;
    if !ARCHITECTURES.contains(&info.architecture.as_str()) {
        return Err(LlmError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "architecture {:?}: the in-process candle backend runs {}; build with \
                 `--features llama-cpp`, or serve it with llama.cpp or Ollama and add that server \
                 as an adapter",
                info.architecture,
                ARCHITECTURES.join(", ")
            ),
        });
    }
    Ok((file, content, info))
}

/// Opens a GGUF file and reads its header (any architecture).
pub(crate) fn read_header(
    path: &Path,
) -> Result<(std::fs::File, gguf_file::Content, ModelInfo), LlmError> {
    let corrupt = |reason: String| LlmError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LlmError::Missing {
            path: path.to_owned(),
        },
        _ => corrupt(e.to_string()),
    })?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let content = gguf_file::Content::read(&mut file).map_err(|e| corrupt(e.to_string()))?;
    let architecture = meta_str(&content, "general.architecture").unwrap_or_default();
    let context_length =
        meta_u32(&content, &format!("{architecture}.context_length")).map_or(2048, |n| n as usize);
    let parameters: u64 = content
        .tensor_infos
        .values()
        .map(|t| t.shape.elem_count() as u64)
        .sum();
    let quantization = meta_u32(&content, "general.file_type")
        .and_then(file_type_name)
        .map(str::to_owned)
        .or_else(|| {
            content
                .tensor_infos
                .get("blk.0.ffn_down.weight")
                .map(|t| format!("{:?}", t.ggml_dtype))
        })
        .unwrap_or_else(|| "unknown".into());
    let info = ModelInfo {
        // "smollm2-135m", "gemma-3-270m": the family and size people use, when the file says;
        // else its free-form `general.name`, else the file name.
        name: match (
            meta_str(&content, "general.basename"),
            meta_str(&content, "general.size_label"),
        ) {
            (Some(base), Some(size)) => Some(format!("{base}-{size}").to_lowercase()),
            _ => meta_str(&content, "general.name"),
        }
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
        architecture,
        size_label: meta_str(&content, "general.size_label"),
        parameters,
        quantization,
        context_length,
        file_bytes,
    };
    Ok((file, content, info))
}

/// llama.cpp's names for `general.file_type` (its `llama_ftype` enumeration).
fn file_type_name(file_type: u32) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

/// Rebuilds the tokenizer a GGUF file describes: byte-level BPE (`gpt2`) or SentencePiece
/// pieces with scores (`llama`).
fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<TextTokenizer, String> {
    let model = meta_str(content, "tokenizer.ggml.model").unwrap_or_default();
    let types: Vec<i32> = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    match model.as_str() {
        "gpt2" => bpe_from_gguf(content, &types).map(|t| TextTokenizer::Bpe(Box::new(t))),
        "llama" => {
            let tokens =
                meta_strings(content, "tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
            let scores: Vec<f32> = content
                .metadata
                .get("tokenizer.ggml.scores")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.iter().map(|s| s.to_f32().unwrap_or(0.0)).collect())
                .unwrap_or_default();
            let unknown = meta_u32(content, "tokenizer.ggml.unknown_token_id").unwrap_or(0);
            let add_space_prefix = content
                .metadata
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true);
            SpmTokenizer::new(tokens, scores, types, unknown, add_space_prefix)
                .map(|t| TextTokenizer::Spm(Box::new(t)))
        }
        other => Err(format!(
            "tokenizer {other:?}: byte-level BPE (gpt2) and SentencePiece (llama) vocabularies are rebuilt"
        )),
    }
}

fn bpe_from_gguf(content: &gguf_file::Content, types: &[i32]) -> Result<Tokenizer, String> {
    let tokens =
        meta_strings(content, "tokenizer.ggml.tokens").ok_or("no tokenizer.ggml.tokens")?;
    let merges =
        meta_strings(content, "tokenizer.ggml.merges").ok_or("no tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    // Control tokens (type 3) are matched whole, never split by BPE.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .filter(|(_, kind)| **kind == 3)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| format!("special tokens: {e}"))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_opening_with_bos_leaves_the_bos_to_the_tokenizer() {
        let format = ChatFormat {
            template: Some(
                "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n\
                 {{ m['content'] }}<end_of_turn>\n{% endfor %}"
                    .into(),
            ),
            bos: Some("<bos>".into()),
            eos: None,
            architecture: "gemma3".into(),
        };
        let prompt = format.render(&[ChatMessage::user("hi")]).unwrap();
        assert_eq!(prompt, "<start_of_turn>user\nhi<end_of_turn>\n");
    }
}

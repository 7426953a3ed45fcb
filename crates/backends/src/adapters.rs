//! HTTP adapters to model servers a node can front: Ollama, LlamaFarm and any OpenAI-compatible
//! server. One [`Adapter`] type with the same operations for each; wire formats follow each
//! server's documentation (cited per function).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::llm::{ChatMessage, GenerateOptions, StopReason};

/// Why a call to a model server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    #[error("{server} at {url} is unreachable: {reason}")]
    Unreachable {
        server: &'static str,
        url: String,
        reason: String,
    },
    #[error("{server} answered HTTP {status}: {body}")]
    Status {
        server: &'static str,
        status: u16,
        body: String,
    },
    #[error("{server} answered something that is not its documented format: {reason}")]
    Garbage {
        server: &'static str,
        reason: String,
    },
}

/// Which server an adapter talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ollama,
    LlamaFarm,
    OpenAi,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Ollama => "Ollama",
            Self::LlamaFarm => "LlamaFarm",
            Self::OpenAi => "OpenAI-compatible server",
        }
    }
}

/// A chat answer from a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatOutput {
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub stop_reason: StopReason,
}

/// A model server.
#[derive(Debug, Clone)]
pub struct Adapter {
    kind: Kind,
    base: String,
    /// LlamaFarm: `namespace/project`; its embeddings live on a second server (Universal Runtime).
    project: Option<String>,
    embeddings_base: Option<String>,
    http: reqwest::Client,
}

impl Adapter {
    fn new(kind: Kind, base: &str, timeout: Duration) -> Result<Self, AdapterError> {
        // reqwest is built with rustls but no crypto provider in this workspace (iroh's choice);
        // ring is ours. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| AdapterError::Unreachable {
                server: kind.label(),
                url: base.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            kind,
            base: base.trim_end_matches('/').to_owned(),
            project: None,
            embeddings_base: None,
            http,
        })
    }

    /// Ollama (default `http://127.0.0.1:11434`).
    pub fn ollama(base: &str, timeout: Duration) -> Result<Self, AdapterError> {
        Self::new(Kind::Ollama, base, timeout)
    }

    /// Any server speaking OpenAI's `/v1` API (llama.cpp server, vLLM, an Atmosphere node).
    pub fn openai(base: &str, timeout: Duration) -> Result<Self, AdapterError> {
        Self::new(Kind::OpenAi, base, timeout)
    }

    /// LlamaFarm (default `http://127.0.0.1:14345`, project `namespace/name`), embeddings from its
    /// Universal Runtime (default `http://127.0.0.1:11540`).
    pub fn llamafarm(
        base: &str,
        project: &str,
        runtime: &str,
        timeout: Duration,
    ) -> Result<Self, AdapterError> {
        let mut adapter = Self::new(Kind::LlamaFarm, base, timeout)?;
        adapter.project = Some(project.trim_matches('/').to_owned());
        adapter.embeddings_base = Some(runtime.trim_end_matches('/').to_owned());
        Ok(adapter)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn garbage(&self, reason: impl Into<String>) -> AdapterError {
        AdapterError::Garbage {
            server: self.kind.label(),
            reason: reason.into(),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Value, AdapterError> {
        let response = request
            .send()
            .await
            .map_err(|e| AdapterError::Unreachable {
                server: self.kind.label(),
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.garbage(e.to_string()))?;
        if !status.is_success() {
            return Err(AdapterError::Status {
                server: self.kind.label(),
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| self.garbage(format!("not JSON: {e}")))
    }

    async fn get(&self, url: String) -> Result<Value, AdapterError> {
        self.send(self.http.get(&url), &url).await
    }

    async fn post(&self, url: String, body: &Value) -> Result<Value, AdapterError> {
        self.send(self.http.post(&url).json(body), &url).await
    }

    /// Whether the server answers. Ollama: `GET /api/version`; LlamaFarm: `GET /health`;
    /// OpenAI-compatible: `GET /v1/models`.
    pub async fn health(&self) -> Result<(), AdapterError> {
        let url = match self.kind {
            Kind::Ollama => format!("{}/api/version", self.base),
            Kind::LlamaFarm => format!("{}/health", self.base),
            Kind::OpenAi => format!("{}/v1/models", self.base),
        };
        self.get(url).await.map(|_| ())
    }

    /// Model names. Ollama: `GET /api/tags` → `models[].name`; OpenAI and LlamaFarm's project
    /// API: `GET /v1/models` → `data[].id`.
    pub async fn list_models(&self) -> Result<Vec<String>, AdapterError> {
        let (url, list, field) = match self.kind {
            Kind::Ollama => (format!("{}/api/tags", self.base), "models", "name"),
            Kind::OpenAi | Kind::LlamaFarm => (format!("{}/v1/models", self.base), "data", "id"),
        };
        let value = self.get(url).await?;
        value[list]
            .as_array()
            .ok_or_else(|| self.garbage(format!("no `{list}` array")))?
            .iter()
            .map(|m| {
                m[field]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.garbage(format!("a model without `{field}`")))
            })
            .collect()
    }

    /// Chat, non-streaming. Ollama: `POST /api/chat` with `stream: false` and `options`
    /// (`temperature`, `num_predict`, `stop`, `seed`) → `message.content`, `prompt_eval_count`,
    /// `eval_count`, `done_reason`. OpenAI and LlamaFarm
    /// (`POST /v1/projects/{ns}/{project}/chat/completions`, with `X-No-Session`):
    /// `choices[0].message.content`, `usage`, `finish_reason`.
    pub async fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        options: &GenerateOptions,
    ) -> Result<ChatOutput, AdapterError> {
        match self.kind {
            Kind::Ollama => {
                let body = json!({
                    "model": model,
                    "messages": messages,
                    "stream": false,
                    "options": {
                        "temperature": options.temperature,
                        "num_predict": options.max_tokens,
                        "stop": options.stop,
                        "seed": options.seed,
                    },
                });
                let value = self.post(format!("{}/api/chat", self.base), &body).await?;
                let text = value["message"]["content"]
                    .as_str()
                    .ok_or_else(|| self.garbage("no message.content"))?;
                Ok(ChatOutput {
                    text: text.to_owned(),
                    prompt_tokens: value["prompt_eval_count"].as_u64(),
                    completion_tokens: value["eval_count"].as_u64(),
                    stop_reason: match value["done_reason"].as_str() {
                        Some("length") => StopReason::MaxTokens,
                        _ => StopReason::EndOfText,
                    },
                })
            }
            Kind::OpenAi | Kind::LlamaFarm => {
                let url = match (&self.kind, &self.project) {
                    (Kind::LlamaFarm, Some(project)) => {
                        format!("{}/v1/projects/{project}/chat/completions", self.base)
                    }
                    _ => format!("{}/v1/chat/completions", self.base),
                };
                let mut body = json!({
                    "model": model,
                    "messages": messages,
                    "stream": false,
                    "max_tokens": options.max_tokens,
                    "temperature": options.temperature,
                    "seed": options.seed,
                });
                if !options.stop.is_empty() {
                    body["stop"] = json!(options.stop);
                }
                let mut request = self.http.post(&url).json(&body);
                if self.kind == Kind::LlamaFarm {
                    request = request.header("X-No-Session", "true");
                }
                let value = self.send(request, &url).await?;
                let choice = &value["choices"][0];
                let text = choice["message"]["content"]
                    .as_str()
                    .ok_or_else(|| self.garbage("no choices[0].message.content"))?;
                Ok(ChatOutput {
                    text: text.to_owned(),
                    prompt_tokens: value["usage"]["prompt_tokens"].as_u64(),
                    completion_tokens: value["usage"]["completion_tokens"].as_u64(),
                    stop_reason: match choice["finish_reason"].as_str() {
                        Some("length") => StopReason::MaxTokens,
                        _ => StopReason::EndOfText,
                    },
                })
            }
        }
    }

    /// Embeddings. Ollama: `POST /api/embed` `{model, input: [..]}` → `embeddings`. OpenAI and
    /// LlamaFarm's Universal Runtime: `POST /v1/embeddings` → `data[].embedding` by `index`.
    pub async fn embed(
        &self,
        model: &str,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, AdapterError> {
        let vectors: Vec<Vec<f32>> = match self.kind {
            Kind::Ollama => {
                let body = json!({"model": model, "input": texts});
                let value = self.post(format!("{}/api/embed", self.base), &body).await?;
                serde_json::from_value(value["embeddings"].clone())
                    .map_err(|e| self.garbage(format!("embeddings: {e}")))?
            }
            Kind::OpenAi | Kind::LlamaFarm => {
                let base = self.embeddings_base.as_deref().unwrap_or(&self.base);
                let body = json!({"model": model, "input": texts});
                let value = self.post(format!("{base}/v1/embeddings"), &body).await?;
                let mut rows: Vec<(usize, Vec<f32>)> = value["data"]
                    .as_array()
                    .ok_or_else(|| self.garbage("no `data` array"))?
                    .iter()
                    .enumerate()
                    .map(|(i, row)| {
                        let index = row["index"].as_u64().map_or(i, |x| x as usize);
                        serde_json::from_value(row["embedding"].clone())
                            .map(|v| (index, v))
                            .map_err(|e| self.garbage(format!("embedding: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                rows.sort_by_key(|(index, _)| *index);
                rows.into_iter().map(|(_, v)| v).collect()
            }
        };
        if vectors.len() != texts.len() {
            return Err(self.garbage(format!(
                "{} embeddings for {} inputs",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }
}

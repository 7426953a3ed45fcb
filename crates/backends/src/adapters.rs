//! HTTP adapters to model servers a node can front: Ollama, LlamaFarm and any OpenAI-compatible
//! server. One [`Adapter`] type with the same operations for each; wire formats follow each
//! server's documentation (cited per function).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::llm::{ChatMessage, GenerateOptions, StopReason};

/// The longest streamed line accepted before the stream is called garbage.
const MAX_STREAM_LINE: usize = 1 << 20;

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
    #[error("{server} has no {what}")]
    Unsupported { server: &'static str, what: String },
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

/// A model a server offers, with what it reports about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerModel {
    pub name: String,
    pub family: Option<String>,
    pub parameters: Option<u64>,
    pub quantization: Option<String>,
}

/// One passage a RAG query found (LlamaFarm's `QueryResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RagHit {
    pub content: String,
    pub score: f32,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub chunk_id: Option<String>,
    #[serde(default)]
    pub document_id: Option<String>,
}

/// "7.6B" → 7_600_000_000, "135M" → 135_000_000.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.chars().last()? {
        'B' | 'b' => (&text[..text.len() - 1], 1e9),
        'M' | 'm' => (&text[..text.len() - 1], 1e6),
        'K' | 'k' => (&text[..text.len() - 1], 1e3),
        _ => (text, 1.0),
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value > 0.0).then_some((value * scale) as u64)
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

/// An HTTP client for calls the node makes (rustls on ring, installed here first: reqwest in
/// this workspace has no crypto provider of its own, and building a client without one panics).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()
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

    /// Models with what the server says about them. Ollama's `/api/tags` gives
    /// `details.family`, `details.parameter_size` ("7.6B") and `details.quantization_level`;
    /// OpenAI-compatible servers give ids only.
    pub async fn list_model_details(&self) -> Result<Vec<ServerModel>, AdapterError> {
        if self.kind != Kind::Ollama {
            return Ok(self
                .list_models()
                .await?
                .into_iter()
                .map(|name| ServerModel {
                    name,
                    ..ServerModel::default()
                })
                .collect());
        }
        let value = self.get(format!("{}/api/tags", self.base)).await?;
        let models = value["models"]
            .as_array()
            .ok_or_else(|| self.garbage("no `models` array"))?;
        models
            .iter()
            .map(|m| {
                let name = m["name"]
                    .as_str()
                    .ok_or_else(|| self.garbage("a model without `name`"))?;
                let details = &m["details"];
                Ok(ServerModel {
                    name: name.to_owned(),
                    family: details["family"].as_str().map(str::to_owned),
                    parameters: details["parameter_size"].as_str().and_then(parse_size),
                    quantization: details["quantization_level"].as_str().map(str::to_owned),
                })
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
        let (url, request) = self.chat_request(model, messages, options, false);
        let value = self.send(request, &url).await?;
        match self.kind {
            Kind::Ollama => {
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

    /// The chat request in the server's own format: URL, body and headers, streamed or not.
    fn chat_request(
        &self,
        model: &str,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        stream: bool,
    ) -> (String, reqwest::RequestBuilder) {
        let (url, body) = match self.kind {
            Kind::Ollama => (
                format!("{}/api/chat", self.base),
                json!({
                    "model": model,
                    "messages": messages,
                    "stream": stream,
                    "options": {
                        "temperature": options.temperature,
                        "num_predict": options.max_tokens,
                        "stop": options.stop,
                        "seed": options.seed,
                    },
                }),
            ),
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
                    "stream": stream,
                    "max_tokens": options.max_tokens,
                    "temperature": options.temperature,
                    "seed": options.seed,
                });
                if stream {
                    body["stream_options"] = json!({"include_usage": true});
                }
                if !options.stop.is_empty() {
                    body["stop"] = json!(options.stop);
                }
                (url, body)
            }
        };
        let mut request = self.http.post(&url).json(&body);
        if self.kind == Kind::LlamaFarm {
            request = request.header("X-No-Session", "true");
        }
        (url, request)
    }

    /// Chat, streamed: `on_token` gets each piece as the server sends it. Ollama: `POST
    /// /api/chat` with `stream: true` answers NDJSON, one `{"message":{"content"},"done":false}`
    /// per piece and a final `{"done":true, "prompt_eval_count", "eval_count", "done_reason"}`.
    /// OpenAI and LlamaFarm: `stream: true` answers server-sent events, `data: {chunk}` with
    /// `choices[0].delta.content` and `finish_reason`, closed by `data: [DONE]`; usage comes in a
    /// last chunk when asked for with `stream_options.include_usage`.
    pub async fn chat_stream(
        &self,
        model: &str,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        mut on_token: impl FnMut(&str),
    ) -> Result<ChatOutput, AdapterError> {
        let (url, request) = self.chat_request(model, messages, options, true);
        let unreachable = |e: reqwest::Error| AdapterError::Unreachable {
            server: self.kind.label(),
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(AdapterError::Status {
                server: self.kind.label(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let mut output = ChatOutput {
            text: String::new(),
            prompt_tokens: None,
            completion_tokens: None,
            stop_reason: StopReason::EndOfText,
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut finished = false;
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            pending.extend_from_slice(&chunk);
            if pending.len() > MAX_STREAM_LINE {
                return Err(self.garbage("a streamed line longer than 1 MiB"));
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                if self.stream_line(line.trim(), &mut output, &mut on_token)? {
                    finished = true;
                }
            }
        }
        let rest = String::from_utf8_lossy(&pending).into_owned();
        if self.stream_line(rest.trim(), &mut output, &mut on_token)? {
            finished = true;
        }
        if !finished {
            return Err(self.garbage("the stream ended without its closing message"));
        }
        Ok(output)
    }

    /// Folds one streamed line into `output`; true when it is the stream's closing message.
    fn stream_line(
        &self,
        line: &str,
        output: &mut ChatOutput,
        on_token: &mut impl FnMut(&str),
    ) -> Result<bool, AdapterError> {
        if line.is_empty() || line.starts_with(':') {
            return Ok(false);
        }
        let mut piece = |text: &str| {
            if !text.is_empty() {
                on_token(text);
                output.text.push_str(text);
            }
        };
        match self.kind {
            Kind::Ollama => {
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| self.garbage(format!("NDJSON line: {e}")))?;
                if let Some(error) = value["error"].as_str() {
                    return Err(self.garbage(format!("error in stream: {error}")));
                }
                piece(value["message"]["content"].as_str().unwrap_or_default());
                if value["done"].as_bool() == Some(true) {
                    output.prompt_tokens = value["prompt_eval_count"].as_u64();
                    output.completion_tokens = value["eval_count"].as_u64();
                    if value["done_reason"].as_str() == Some("length") {
                        output.stop_reason = StopReason::MaxTokens;
                    }
                    return Ok(true);
                }
                Ok(false)
            }
            Kind::OpenAi | Kind::LlamaFarm => {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    return Ok(false); // `event:`, `id:`, `retry:` fields
                };
                if data == "[DONE]" {
                    return Ok(true);
                }
                let value: Value = serde_json::from_str(data)
                    .map_err(|e| self.garbage(format!("SSE data: {e}")))?;
                if let Some(error) = value["error"]["message"].as_str() {
                    return Err(self.garbage(format!("error in stream: {error}")));
                }
                let choice = &value["choices"][0];
                piece(choice["delta"]["content"].as_str().unwrap_or_default());
                if choice["finish_reason"].as_str() == Some("length") {
                    output.stop_reason = StopReason::MaxTokens;
                }
                if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
                    output.prompt_tokens = usage["prompt_tokens"].as_u64();
                    output.completion_tokens = usage["completion_tokens"].as_u64();
                }
                Ok(false)
            }
        }
    }

    /// LlamaFarm: the projects of `namespace` (`GET /v1/projects/{namespace}` →
    /// `projects[].name`; a bare array of projects is accepted too, its API moves).
    pub async fn projects(&self, namespace: &str) -> Result<Vec<String>, AdapterError> {
        self.require(Kind::LlamaFarm, "projects")?;
        let value = self
            .get(format!("{}/v1/projects/{namespace}", self.base))
            .await?;
        let list = value
            .get("projects")
            .unwrap_or(&value)
            .as_array()
            .ok_or_else(|| self.garbage("no `projects` array"))?;
        list.iter()
            .map(|p| {
                p["name"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.garbage("a project without `name`"))
            })
            .collect()
    }

    /// LlamaFarm: semantic search in the project's RAG database
    /// (`POST /v1/projects/{ns}/{project}/rag/query` `{query, database?, top_k}` →
    /// `results[] {content, score, metadata, chunk_id, document_id}`).
    pub async fn rag_query(
        &self,
        query: &str,
        database: Option<&str>,
        top_k: usize,
    ) -> Result<Vec<RagHit>, AdapterError> {
        self.require(Kind::LlamaFarm, "RAG queries")?;
        let project = self
            .project
            .as_deref()
            .ok_or_else(|| self.garbage("no project configured"))?;
        let mut body = json!({"query": query, "top_k": top_k});
        if let Some(database) = database {
            body["database"] = json!(database);
        }
        let value = self
            .post(
                format!("{}/v1/projects/{project}/rag/query", self.base),
                &body,
            )
            .await?;
        serde_json::from_value(value["results"].clone())
            .map_err(|e| self.garbage(format!("results: {e}")))
    }

    fn require(&self, kind: Kind, what: &str) -> Result<(), AdapterError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(AdapterError::Unsupported {
                server: self.kind.label(),
                what: what.to_owned(),
            })
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
                        pooled(&row["embedding"])
                            .map(|v| (index, v))
                            .ok_or_else(|| self.garbage("an embedding that is not numbers"))
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

/// An embedding as a vector: servers that do not pool (llama.cpp on a model without a pooling
/// type) send one vector per token; those are mean-pooled here.
fn pooled(value: &Value) -> Option<Vec<f32>> {
    let rows = value.as_array()?;
    if rows.first().is_some_and(Value::is_array) {
        let rows: Vec<Vec<f32>> = rows.iter().map(pooled).collect::<Option<_>>()?;
        let width = rows.first()?.len();
        if rows.iter().any(|r| r.len() != width) {
            return None;
        }
        let mut mean = vec![0.0f32; width];
        for row in &rows {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x;
            }
        }
        let n = rows.len() as f32;
        mean.iter_mut().for_each(|m| *m /= n);
        return Some(mean);
    }
    rows.iter().map(|x| x.as_f64().map(|x| x as f32)).collect()
}

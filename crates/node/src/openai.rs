//! OpenAI-compatible endpoints over the node's own models: `/v1/models`, `/v1/chat/completions`,
//! `/v1/embeddings` (non-streaming for now), so any OpenAI client can use a node.

use atmosphere_backends::{ChatMessage, GenerateOptions, StopReason};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::models::ModelError;

impl From<ModelError> for ApiError {
    fn from(error: ModelError) -> Self {
        let (status, kind) = match &error {
            ModelError::NoLlm | ModelError::NoEmbeddings => (StatusCode::NOT_FOUND, "no_model"),
            ModelError::Llm(atmosphere_backends::LlmError::TooLong { .. }) => {
                (StatusCode::BAD_REQUEST, "context_length_exceeded")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "model_unavailable"),
        };
        Self {
            status,
            kind,
            message: error.to_string(),
        }
    }
}

/// `POST /v1/chat/completions` body (the fields this node honours).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default)]
    pub stream: bool,
}

/// `stop` is a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    pub message: ChatMessage,
    pub finish_reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid_request",
        message: message.into(),
    }
}

pub async fn chat_completions(
    State(state): State<ApiState>,
    Json(request): Json<ChatRequest>,
) -> Result<Json<ChatResponse>, ApiError> {
    if request.stream {
        return Err(bad_request(
            "streaming is not served yet; send \"stream\": false",
        ));
    }
    if request.messages.is_empty() {
        return Err(bad_request("messages is empty"));
    }
    let info = state.models.llm_info().cloned().ok_or(ModelError::NoLlm)?;
    let options = GenerateOptions {
        max_tokens: request.max_tokens.unwrap_or(256).clamp(1, 4096),
        temperature: request.temperature.unwrap_or(0.0).clamp(0.0, 2.0),
        top_p: request.top_p,
        seed: request.seed.unwrap_or(299_792_458),
        stop: match request.stop {
            Some(StopField::One(stop)) => vec![stop],
            Some(StopField::Many(stops)) => stops.into_iter().take(8).collect(),
            None => Vec::new(),
        },
    };
    let generation = state.models.chat(request.messages, options).await?;
    let created = atmosphere_auth::unix_now();
    Ok(Json(ChatResponse {
        id: format!(
            "chatcmpl-{created:x}{:x}",
            generation.total.as_nanos() & 0xffff
        ),
        object: "chat.completion".into(),
        created,
        model: request.model.unwrap_or(info.name),
        choices: vec![Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant".into(),
                content: generation.text,
            },
            finish_reason: match generation.stop_reason {
                StopReason::MaxTokens => "length".into(),
                _ => "stop".into(),
            },
        }],
        usage: Usage {
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            total_tokens: generation.prompt_tokens + generation.completion_tokens,
        },
    }))
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: EmbeddingInput,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

pub async fn embeddings(
    State(state): State<ApiState>,
    Json(request): Json<EmbeddingsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    if texts.is_empty() || texts.len() > 256 {
        return Err(bad_request("input must hold 1 to 256 texts"));
    }
    let vectors = state.models.embed(texts).await?;
    let data: Vec<serde_json::Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": data,
        "model": request.model.unwrap_or_else(|| "all-minilm-l6-v2".into()),
    })))
}

pub async fn models(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let mut data = Vec::new();
    if let Some(info) = state.models.llm_info() {
        data.push(serde_json::json!({
            "id": info.name, "object": "model", "owned_by": "atmosphere",
            "parameters": info.parameters, "quantization": info.quantization,
            "context_length": info.context_length,
        }));
    }
    if state.models.serves_embeddings() {
        data.push(serde_json::json!({"id": "all-minilm-l6-v2", "object": "model", "owned_by": "atmosphere"}));
    }
    Json(serde_json::json!({"object": "list", "data": data}))
}

//! OpenAI-compatible endpoints over the node's own models: `/v1/models`, `/v1/chat/completions`,
//! `/v1/embeddings` (chat streams as server-sent events on request), so any OpenAI client can use
//! a node; requests naming a model of a server the node fronts go to that server.

use atmosphere_backends::{ChatMessage, GenerateOptions, StopReason};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use serde::{Deserialize, Serialize};

pub use atmosphere_api::{ChatRequest, EmbeddingInput, EmbeddingsRequest, StopField};

use crate::api::{ApiError, ApiState, Checked};
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
        Self::new(status, kind, error.to_string())
    }
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

impl ChatResponse {
    /// A finished chat in OpenAI's shape.
    fn new(id: String, created: u64, model: String, finish: &str, done: Finished) -> Self {
        Self {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![Choice {
                index: 0,
                message: ChatMessage {
                    role: "assistant".into(),
                    content: done.text,
                },
                finish_reason: finish.into(),
            }],
            usage: Usage {
                prompt_tokens: done.prompt_tokens,
                completion_tokens: done.completion_tokens,
                total_tokens: done.prompt_tokens + done.completion_tokens,
            },
        }
    }
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

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

/// Where a chat request runs: the node's own model or a model server it fronts.
enum Runner {
    Local(std::sync::Arc<crate::models::LocalModels>, String),
    Server(atmosphere_backends::adapters::Adapter, String),
}

/// A finished chat, whichever backend ran it.
struct Finished {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    stop_reason: StopReason,
}

impl From<atmosphere_backends::adapters::AdapterError> for ApiError {
    fn from(error: atmosphere_backends::adapters::AdapterError) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "model_server_failed",
            error.to_string(),
        )
    }
}

impl Runner {
    /// The backend for `model`: the local model when it is named (or none is), else the healthy
    /// server offering it.
    fn choose(state: &ApiState, model: Option<&str>) -> Result<(Self, String), ApiError> {
        let local = match model {
            Some(wanted) if state.models.serves(wanted) => Some(wanted.to_owned()),
            _ => state.models.default_chat(),
        };
        match (model, local) {
            (None, Some(name)) => Ok((Self::Local(state.models.clone(), name.clone()), name)),
            (Some(wanted), Some(name)) if wanted == name => {
                Ok((Self::Local(state.models.clone(), name.clone()), name))
            }
            (Some(wanted), local) => match state.servers.find(wanted) {
                Some(adapter) => Ok((Self::Server(adapter.clone(), wanted.into()), wanted.into())),
                // An unknown name falls back to the local model, as OpenAI clients often send
                // their own default model name.
                None => match local {
                    Some(name) => Ok((Self::Local(state.models.clone(), name.clone()), name)),
                    None => Err(ApiError {
                        status: StatusCode::NOT_FOUND,
                        kind: "model_not_found",
                        message: format!(
                            "no healthy backend on this node serves {wanted:?}; see GET /v1/models"
                        ),
                    }),
                },
            },
            (None, None) => match state.servers.default_chat() {
                Some((adapter, name)) => Ok((Self::Server(adapter.clone(), name.clone()), name)),
                None => Err(ModelError::NoLlm.into()),
            },
        }
    }

    async fn run(
        self,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
        pieces: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Finished, ApiError> {
        match self {
            Self::Local(models, name) => {
                let g = models
                    .chat_stream(Some(name), messages, options, pieces)
                    .await?;
                Ok(Finished {
                    text: g.text,
                    prompt_tokens: g.prompt_tokens,
                    completion_tokens: g.completion_tokens,
                    stop_reason: g.stop_reason,
                })
            }
            Self::Server(adapter, model) => {
                let out = adapter
                    .chat_stream(&model, &messages, &options, |piece| {
                        let _ = pieces.send(piece.to_owned());
                    })
                    .await?;
                Ok(Finished {
                    prompt_tokens: out.prompt_tokens.unwrap_or(0) as usize,
                    completion_tokens: out.completion_tokens.unwrap_or(0) as usize,
                    text: out.text,
                    stop_reason: out.stop_reason,
                })
            }
        }
    }
}

fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::MaxTokens => "length",
        _ => "stop",
    }
}

/// `POST /v1/chat/completions`: one JSON answer, or with `"stream": true` server-sent events
/// (`chat.completion.chunk` deltas, a usage chunk, `data: [DONE]`) as OpenAI sends them.
pub async fn chat_completions(
    State(state): State<ApiState>,
    Checked(request): Checked<ChatRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if let Some(response) = through_the_mesh(&state, &request).await? {
        return Ok(response);
    }
    let (runner, model) = Runner::choose(&state, request.model.as_deref())?;
    let options = GenerateOptions {
        max_tokens: request.max_tokens.unwrap_or(256).clamp(1, 4096),
        temperature: request.temperature.unwrap_or(0.0).clamp(0.0, 2.0),
        top_p: request.top_p,
        seed: request.seed.unwrap_or(299_792_458),
        stop: request.stop.map(StopField::into_vec).unwrap_or_default(),
        // The in-process engines' repeat penalty (OpenAI's API has no such field).
        ..GenerateOptions::default()
    };
    let created = atmosphere_auth::unix_now();
    let id = format!("chatcmpl-{created:x}{:04x}", rand::random::<u16>());
    let (piece_tx, mut piece_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if !request.stream {
        let done = runner.run(request.messages, options, piece_tx).await?;
        let reason = finish_reason(done.stop_reason);
        return Ok(Json(ChatResponse::new(id, created, model, reason, done)).into_response());
    }
    let (event_tx, event_rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Event, std::convert::Infallible>>();
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        Event::default().data(
            serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string(),
        )
    };
    tokio::spawn(async move {
        let send = |event: Event| event_tx.send(Ok(event)).is_ok();
        send(chunk(serde_json::json!({"role": "assistant"}), None));
        let generation = runner.run(request.messages, options, piece_tx);
        tokio::pin!(generation);
        let result = loop {
            tokio::select! {
                biased;
                Some(piece) = piece_rx.recv() => {
                    send(chunk(serde_json::json!({"content": piece}), None));
                }
                result = &mut generation => break result,
            }
        };
        while let Ok(piece) = piece_rx.try_recv() {
            send(chunk(serde_json::json!({"content": piece}), None));
        }
        match result {
            Ok(done) => {
                send(chunk(
                    serde_json::json!({}),
                    Some(finish_reason(done.stop_reason)),
                ));
                send(Event::default().data(
                    serde_json::json!({"object": "chat.completion.chunk", "choices": [], "usage": {
                        "prompt_tokens": done.prompt_tokens,
                        "completion_tokens": done.completion_tokens,
                        "total_tokens": done.prompt_tokens + done.completion_tokens,
                    }})
                    .to_string(),
                ));
            }
            Err(error) => {
                send(Event::default().data(
                    serde_json::json!({"error": {"type": error.kind, "message": error.message}})
                        .to_string(),
                ));
            }
        }
        send(Event::default().data("[DONE]"));
    });
    Ok(
        Sse::new(tokio_stream::wrappers::UnboundedReceiverStream::new(
            event_rx,
        ))
        .into_response(),
    )
}

/// The header that tells a client where the mesh ran its request.
pub const ROUTE_HEADER: &str = "x-atmosphere-route";

/// `model: "auto"` (route by the last user message, any capability) or a model that only other
/// nodes serve: run through the intent service, answer in OpenAI's shape (streamed as one piece
/// when asked), with the route in [`ROUTE_HEADER`]. `None` when the request stays on this node.
async fn through_the_mesh(
    state: &ApiState,
    request: &ChatRequest,
) -> Result<Option<axum::response::Response>, ApiError> {
    use axum::response::IntoResponse;
    let Some(intents) = state.intents.as_ref() else {
        return Ok(None);
    };
    let wanted = request.model.as_deref();
    let auto = wanted == Some("auto");
    let elsewhere = match wanted {
        Some(name) if !auto && !state.models.serves(name) && state.servers.find(name).is_none() => {
            let status = state.mesh.status().await?;
            status.nodes.iter().any(|n| {
                !n.is_self
                    && n.models
                        .iter()
                        .any(|m| m.name == name && m.degraded.is_none())
            })
        }
        _ => false,
    };
    if !auto && !elsewhere {
        return Ok(None);
    }
    let text = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .ok_or_else(|| bad_request("no user message to route"))?;
    let intent = crate::intent::IntentRequest {
        text,
        dry_run: false,
        max_tokens: Some(request.max_tokens.unwrap_or(256).clamp(1, 4096)),
        messages: Some(request.messages.clone()),
        temperature: request.temperature,
    };
    let outcome = match wanted {
        Some(name) if !auto => intents.run_model(name, &intent).await?,
        _ => intents.run(&intent).await?,
    };
    let Some(result) = outcome.result else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "no_result",
            "the mesh returned no result",
        ));
    };
    let hops = outcome.path.len().saturating_sub(1);
    let route = format!(
        "{}; {}; {hops} hop{}",
        result.node,
        result.capability,
        if hops == 1 { "" } else { "s" }
    );
    let model = result
        .model
        .clone()
        .unwrap_or_else(|| result.capability.clone());
    let created = atmosphere_auth::unix_now();
    let id = format!("chatcmpl-{created:x}{:04x}", rand::random::<u16>());
    let header = [(ROUTE_HEADER, route)];
    if !request.stream {
        let done = Finished {
            text: result.text,
            prompt_tokens: result.prompt_tokens,
            completion_tokens: result.completion_tokens,
            stop_reason: StopReason::EndOfText,
        };
        let body = ChatResponse::new(id, created, model, "stop", done);
        return Ok(Some((header, Json(body)).into_response()));
    }
    let chunk =
        |delta: serde_json::Value, finish: Option<&str>| {
            Ok::<_, std::convert::Infallible>(Event::default().data(
            serde_json::json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string(),
        ))
        };
    let events = vec![
        chunk(serde_json::json!({"role": "assistant"}), None),
        chunk(serde_json::json!({"content": result.text}), None),
        chunk(serde_json::json!({}), Some("stop")),
        Ok(Event::default().data("[DONE]")),
    ];
    Ok(Some(
        (header, Sse::new(tokio_stream::iter(events))).into_response(),
    ))
}

impl From<crate::intent::IntentError> for ApiError {
    fn from(error: crate::intent::IntentError) -> Self {
        use crate::intent::IntentError;
        let (status, kind) = match &error {
            IntentError::Empty => (StatusCode::BAD_REQUEST, "invalid"),
            IntentError::Embed(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_embeddings"),
            IntentError::NoProvider { .. } => (StatusCode::NOT_FOUND, "model_not_found"),
            IntentError::AllFailed(_) => (StatusCode::BAD_GATEWAY, "all_failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, kind, error.to_string())
    }
}

pub async fn embeddings(
    State(state): State<ApiState>,
    Checked(request): Checked<EmbeddingsRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let texts = request.input.into_vec();
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
    let mut adverts: Vec<(String, atmosphere_proto::ModelAdvert)> = Vec::new();
    adverts.extend(
        state
            .models
            .adverts()
            .into_iter()
            .map(|m| (state.node_name.clone(), m)),
    );
    adverts.extend(
        state
            .servers
            .adverts()
            .into_iter()
            .map(|m| (state.node_name.clone(), m)),
    );
    // The rest of the mesh's healthy models: a request naming one is run on its node.
    if state.intents.is_some()
        && let Ok(status) = state.mesh.status().await
    {
        for node in status
            .nodes
            .iter()
            .filter(|n| !n.is_self && n.status == atmosphere_mesh::Status::Alive)
        {
            for model in node.models.iter().filter(|m| m.degraded.is_none()) {
                if !adverts.iter().any(|(_, m)| m.name == model.name) {
                    adverts.push((node.name.clone(), model.clone()));
                }
            }
        }
    }
    let mut data: Vec<serde_json::Value> = adverts
        .into_iter()
        .map(|(node, m)| {
            serde_json::json!({
                "id": m.name, "object": "model", "owned_by": m.backend, "node": node,
                "kind": m.kind, "family": m.family, "parameters": m.parameters, "size": m.size,
                "quantization": m.quantization, "context_length": m.context_length,
                "tokens_per_second": m.tokens_per_second, "degraded": m.degraded,
            })
        })
        .collect();
    if state.intents.is_some() {
        data.push(serde_json::json!({
            "id": "auto", "object": "model", "owned_by": "atmosphere", "node": state.node_name,
            "kind": "router", "description": "routes each request by intent to the node and model that fit",
        }));
    }
    Json(serde_json::json!({"object": "list", "data": data}))
}

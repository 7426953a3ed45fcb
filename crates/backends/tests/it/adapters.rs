//! The adapters against servers that speak Ollama's and LlamaFarm's documented wire formats,
//! answering with the real in-process models (no canned text), plus broken servers.
//! Ollama API: https://github.com/ollama/ollama/blob/main/docs/api.md (`/api/chat`,
//! `/api/embed`, `/api/tags`, `/api/version`). LlamaFarm: `GET /health`,
//! `POST /v1/projects/{ns}/{project}/chat/completions` (OpenAI-shaped),
//! `GET /v1/projects/{ns}`, `POST /v1/projects/{ns}/{project}/rag/query` (`QueryRequest` →
//! `QueryResponse` in its server's `api/routers/rag/rag_query.py`), Universal Runtime
//! `POST /v1/embeddings` (OpenAI-shaped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atmosphere_backends::adapters::{Adapter, AdapterError};
use atmosphere_backends::models::{MINILM_DIR, SMOLLM2_DIR, cache_dir};
use atmosphere_backends::{ChatMessage, Embedder, GenerateOptions, GgufModel, StopReason};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Clone)]
struct Models {
    llm: Arc<Mutex<GgufModel>>,
    embedder: Arc<Embedder>,
}

fn models() -> Models {
    let llm = GgufModel::load(
        &cache_dir()
            .join(SMOLLM2_DIR)
            .join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    let embedder = Embedder::load(&cache_dir().join(MINILM_DIR)).unwrap();
    Models {
        llm: Arc::new(Mutex::new(llm)),
        embedder: Arc::new(embedder),
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn run_chat(
    models: &Models,
    messages: Vec<ChatMessage>,
    max_tokens: usize,
) -> (String, usize, usize, StopReason) {
    let (pieces, prompt, completion, stop) = run_chat_pieces(models, messages, max_tokens);
    (pieces.concat(), prompt, completion, stop)
}

/// The real model's answer as the pieces it streamed.
fn run_chat_pieces(
    models: &Models,
    messages: Vec<ChatMessage>,
    max_tokens: usize,
) -> (Vec<String>, usize, usize, StopReason) {
    let options = GenerateOptions {
        max_tokens,
        ..GenerateOptions::default()
    };
    let mut pieces = Vec::new();
    let g = models
        .llm
        .lock()
        .unwrap()
        .chat(&messages, &options, |p| pieces.push(p.to_owned()))
        .unwrap();
    (pieces, g.prompt_tokens, g.completion_tokens, g.stop_reason)
}

/// Ollama's streamed `/api/chat` body: one JSON object per line, the last with `done: true`.
fn ollama_ndjson(
    model: &Value,
    pieces: &[String],
    prompt: usize,
    completion: usize,
    stop: StopReason,
) -> String {
    let mut body = String::new();
    for piece in pieces {
        body.push_str(
            &json!({"model": model, "created_at": "2026-11-25T00:00:00Z",
            "message": {"role": "assistant", "content": piece}, "done": false})
            .to_string(),
        );
        body.push('\n');
    }
    body.push_str(
        &json!({"model": model, "created_at": "2026-11-25T00:00:00Z",
        "message": {"role": "assistant", "content": ""}, "done": true,
        "done_reason": if stop == StopReason::MaxTokens { "length" } else { "stop" },
        "prompt_eval_count": prompt, "eval_count": completion})
        .to_string(),
    );
    body.push('\n');
    body
}

/// OpenAI-style server-sent events: `data: {chunk}` per piece, a finish chunk, a usage chunk,
/// then `data: [DONE]`.
fn openai_sse(
    model: &Value,
    pieces: &[String],
    prompt: usize,
    completion: usize,
    stop: StopReason,
) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut body = String::from(": keep-alive comment\n\n");
    body.push_str(&format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant"}), Value::Null)
    ));
    for piece in pieces {
        body.push_str(&format!(
            "data: {}\n\n",
            chunk(json!({"content": piece}), Value::Null)
        ));
    }
    let finish = if stop == StopReason::MaxTokens {
        "length"
    } else {
        "stop"
    };
    body.push_str(&format!("data: {}\n\n", chunk(json!({}), json!(finish))));
    body.push_str(&format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}})
    ));
    body.push_str("data: [DONE]\n\n");
    body
}

fn ollama_server(models: Models) -> Router {
    Router::new()
        .route("/api/version", get(|| async { Json(json!({"version": "0.6.0"})) }))
        .route("/api/tags", get(|| async { Json(json!({"models": [{"name": "smollm2:135m", "size": 98362432}]})) }))
        .route(
            "/api/chat",
            post(|State(m): State<Models>, Json(body): Json<Value>| async move {
                let messages: Vec<ChatMessage> = serde_json::from_value(body["messages"].clone()).unwrap();
                let max = body["options"]["num_predict"].as_u64().unwrap() as usize;
                if body["stream"] == true {
                    let (pieces, prompt, completion, stop) =
                        tokio::task::spawn_blocking(move || run_chat_pieces(&m, messages, max)).await.unwrap();
                    return ollama_ndjson(&body["model"], &pieces, prompt, completion, stop).into_response();
                }
                let (text, prompt, completion, stop) =
                    tokio::task::spawn_blocking(move || run_chat(&m, messages, max)).await.unwrap();
                Json(json!({
                    "model": body["model"], "created_at": "2026-11-25T00:00:00Z",
                    "message": {"role": "assistant", "content": text},
                    "done": true, "done_reason": if stop == StopReason::MaxTokens { "length" } else { "stop" },
                    "prompt_eval_count": prompt, "eval_count": completion,
                }))
                .into_response()
            }),
        )
        .route(
            "/api/embed",
            post(|State(m): State<Models>, Json(body): Json<Value>| async move {
                let input: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
                let refs: Vec<&str> = input.iter().map(String::as_str).collect();
                let embeddings = m.embedder.embed_batch(&refs).unwrap();
                Json(json!({"model": body["model"], "embeddings": embeddings}))
            }),
        )
        .with_state(models)
}

/// The test project's RAG database: passages searched with real MiniLM embeddings.
const PASSAGES: [&str; 4] = [
    "Cameras must record only inside the house and keep footage for at most 30 days.",
    "The garage door opener is paired with the hub in the hallway.",
    "Guests get a separate Wi-Fi network without access to the smart devices.",
    "The thermostat keeps 19 degrees at night and 21 degrees during the day.",
];

fn llamafarm_server(models: Models) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "healthy"})) }))
        .route(
            "/v1/projects/{ns}",
            get(|axum::extract::Path(ns): axum::extract::Path<String>| async move {
                Json(json!({"total": 1, "projects": [{"namespace": ns, "name": "home"}]}))
            }),
        )
        .route(
            "/v1/projects/{ns}/{project}/rag/query",
            post(|State(m): State<Models>, Json(body): Json<Value>| async move {
                let query = body["query"].as_str().unwrap().to_owned();
                let top_k = body["top_k"].as_u64().unwrap() as usize;
                let mut texts = vec![query.as_str()];
                texts.extend(PASSAGES);
                let vectors = m.embedder.embed_batch(&texts).unwrap();
                let mut results: Vec<Value> = PASSAGES
                    .iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let score: f32 = vectors[0].iter().zip(&vectors[i + 1]).map(|(a, b)| a * b).sum();
                        json!({"content": text, "score": score, "metadata": {"source": "policy.md"},
                               "chunk_id": format!("c{i}"), "document_id": "policy"})
                    })
                    .collect();
                results.sort_by(|a, b| b["score"].as_f64().partial_cmp(&a["score"].as_f64()).unwrap());
                results.truncate(top_k);
                Json(json!({"query": query, "total_results": results.len(), "results": results,
                            "retrieval_strategy_used": "basic_search", "database_used": body["database"]}))
            }),
        )
        .route("/v1/models", get(|| async { Json(json!({"object": "list", "data": [{"id": "smollm2"}]})) }))
        .route(
            "/v1/projects/{ns}/{project}/chat/completions",
            post(|State(m): State<Models>, headers: HeaderMap, Json(body): Json<Value>| async move {
                assert_eq!(headers.get("x-no-session").unwrap(), "true");
                let messages: Vec<ChatMessage> = serde_json::from_value(body["messages"].clone()).unwrap();
                let max = body["max_tokens"].as_u64().unwrap() as usize;
                if body["stream"] == true {
                    let (pieces, prompt, completion, stop) =
                        tokio::task::spawn_blocking(move || run_chat_pieces(&m, messages, max)).await.unwrap();
                    let sse = openai_sse(&body["model"], &pieces, prompt, completion, stop);
                    return ([("content-type", "text/event-stream")], sse).into_response();
                }
                let (text, prompt, completion, stop) =
                    tokio::task::spawn_blocking(move || run_chat(&m, messages, max)).await.unwrap();
                Json(json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": if stop == StopReason::MaxTokens { "length" } else { "stop" }}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
                }))
                .into_response()
            }),
        )
        .with_state(models)
}

fn runtime_server(models: Models) -> Router {
    Router::new()
        .route(
            "/v1/embeddings",
            post(
                |State(m): State<Models>, Json(body): Json<Value>| async move {
                    let input: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
                    let refs: Vec<&str> = input.iter().map(String::as_str).collect();
                    let vectors = m.embedder.embed_batch(&refs).unwrap();
                    // Out of order on purpose: clients must use `index`.
                    let data: Vec<Value> = vectors
                        .into_iter()
                        .enumerate()
                        .rev()
                        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                        .collect();
                    Json(json!({"object": "list", "data": data, "model": body["model"]}))
                },
            ),
        )
        .with_state(models)
}

fn question() -> Vec<ChatMessage> {
    vec![ChatMessage::user(
        "What is the capital of France? Answer in one word.",
    )]
}

fn options() -> GenerateOptions {
    GenerateOptions {
        max_tokens: 16,
        ..GenerateOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_adapter_speaks_its_wire_format() {
    let base = serve(ollama_server(models())).await;
    let ollama = Adapter::ollama(&base, Duration::from_secs(60)).unwrap();
    ollama.health().await.unwrap();
    assert_eq!(ollama.list_models().await.unwrap(), ["smollm2:135m"]);
    let answer = ollama
        .chat("smollm2:135m", &question(), &options())
        .await
        .unwrap();
    assert!(answer.text.contains("Paris"), "{answer:?}");
    assert!(answer.completion_tokens.unwrap() <= 16);
    let mut pieces = Vec::new();
    let streamed = ollama
        .chat_stream("smollm2:135m", &question(), &options(), |p| {
            pieces.push(p.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(streamed.text, answer.text);
    assert!(
        pieces.len() > 1 && pieces.concat() == answer.text,
        "{pieces:?}"
    );
    assert_eq!(streamed.completion_tokens, answer.completion_tokens);
    let vectors = ollama
        .embed(
            "all-minilm",
            &["turn on the lights".into(), "switch the lights on".into()],
        )
        .await
        .unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].len(), 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamafarm_adapter_uses_projects_and_the_universal_runtime() {
    let models = models();
    let base = serve(llamafarm_server(models.clone())).await;
    let runtime = serve(runtime_server(models)).await;
    let farm =
        Adapter::llamafarm(&base, "default/home", &runtime, Duration::from_secs(60)).unwrap();
    farm.health().await.unwrap();
    let answer = farm.chat("smollm2", &question(), &options()).await.unwrap();
    assert!(answer.text.contains("Paris"), "{answer:?}");
    let mut pieces = Vec::new();
    let streamed = farm
        .chat_stream("smollm2", &question(), &options(), |p| {
            pieces.push(p.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        (streamed.text.as_str(), streamed.prompt_tokens),
        (answer.text.as_str(), answer.prompt_tokens)
    );
    assert!(pieces.len() > 1, "{pieces:?}");
    let texts: Vec<String> = vec!["cameras".into(), "policy".into(), "garage".into()];
    let vectors = farm.embed("all-minilm", &texts).await.unwrap();
    // Reordered by index: the first vector is the embedding of the first text.
    let direct = Embedder::load(&cache_dir().join(MINILM_DIR))
        .unwrap()
        .embed("cameras")
        .unwrap();
    let cosine: f32 = vectors[0].iter().zip(&direct).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.999, "{cosine}");

    assert_eq!(farm.projects("default").await.unwrap(), ["home"]);
    let hits = farm
        .rag_query(
            "What does the policy say about cameras?",
            Some("policies"),
            2,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits[0].content.starts_with("Cameras"), "{hits:?}");
    assert!(hits[0].score > hits[1].score);
    assert_eq!(hits[0].chunk_id.as_deref(), Some("c0"));
    // Other servers have no RAG endpoint: a clear error, no request sent.
    let ollama = Adapter::ollama("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let err = ollama.rag_query("cameras", None, 2).await.unwrap_err();
    assert!(err.to_string().contains("has no RAG queries"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_failing_and_garbage_servers_are_clear_errors() {
    // Nothing listens on port 9.
    let gone = Adapter::ollama("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
    assert!(matches!(
        gone.health().await,
        Err(AdapterError::Unreachable { .. })
    ));
    let broken = serve(
        Router::new()
            .route(
                "/api/version",
                get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
            )
            .route("/api/tags", get(|| async { "<html>not json</html>" }))
            .route(
                "/api/chat",
                post(|| async { Json(json!({"unexpected": true})) }),
            )
            .route(
                "/api/embed",
                post(|| async { Json(json!({"embeddings": [[0.1, 0.2]]})) }),
            ),
    )
    .await;
    let ollama = Adapter::ollama(&broken, Duration::from_secs(5)).unwrap();
    let err = ollama.health().await.unwrap_err();
    assert!(
        matches!(err, AdapterError::Status { status: 500, .. }),
        "{err}"
    );
    assert!(matches!(
        ollama.list_models().await,
        Err(AdapterError::Garbage { .. })
    ));
    assert!(matches!(
        ollama.chat("m", &question(), &options()).await,
        Err(AdapterError::Garbage { .. })
    ));
    // A stream that stops before its closing message, or carries non-JSON, is garbage.
    let err = ollama
        .chat_stream("m", &question(), &options(), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("without its closing message"),
        "{err}"
    );
    let truncated = serve(Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            "data: {\"choices\":[{\"delta\":{\"content\":\"Par\"}}]}\n\ndata: {not json"
        }),
    ))
    .await;
    let openai = Adapter::openai(&truncated, Duration::from_secs(5)).unwrap();
    let mut seen = String::new();
    let err = openai
        .chat_stream("m", &question(), &options(), |p| seen.push_str(p))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Garbage { .. }), "{err}");
    assert_eq!(seen, "Par", "pieces before the garbage were delivered");
    let err = ollama
        .embed("m", &["a".into(), "b".into()])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("1 embeddings for 2 inputs"),
        "{err}"
    );
}

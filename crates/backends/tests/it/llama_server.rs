//! The OpenAI adapter against a real llama.cpp server (llama-cpp-python[server] 0.3.36, built by
//! `scripts/fetch-llama-server`) serving the same SmolLM2 GGUF the node serves itself.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atmosphere_backends::adapters::{Adapter, AdapterError};
use atmosphere_backends::models::smollm2_path;
use atmosphere_backends::{ChatMessage, GenerateOptions, StopReason};

/// A llama.cpp server process, killed on drop.
struct LlamaServer {
    child: Child,
    base: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let cache = std::env::var_os("ATMOSPHERE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache")
                .join("atmosphere")
        });
    let python = cache.join("llama-server").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/fetch-llama-server (scripts/setup runs it)",
        python.display()
    );
    python
}

/// Starts the server on a free loopback port and waits (with a deadline) until it answers.
async fn start(embedding: bool) -> LlamaServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python())
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(smollm2_path())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_threads", "1", "--n_ctx", "2048", "--verbose", "false"])
        .args(["--embedding", if embedding { "true" } else { "false" }])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama.cpp server");
    let server = LlamaServer {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let adapter = Adapter::openai(&server.base, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while adapter.health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "llama.cpp server did not answer within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_adapter_against_a_real_llama_cpp_server() {
    let server = start(false).await;
    let adapter = Adapter::openai(&server.base, Duration::from_secs(120)).unwrap();
    let models = adapter.list_models().await.unwrap();
    assert_eq!(models.len(), 1, "{models:?}");
    assert!(
        models[0].ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{models:?}"
    );

    let question = [ChatMessage::user(
        "What is the capital of France? Answer in one word.",
    )];
    let greedy = GenerateOptions {
        max_tokens: 24,
        ..GenerateOptions::default()
    };
    let answer = adapter.chat(&models[0], &question, &greedy).await.unwrap();
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert!(answer.prompt_tokens.unwrap_or(0) > 10, "{answer:?}");

    // Streaming: the pieces arrive one by one and add up to the same greedy answer.
    let mut pieces = Vec::new();
    let streamed = adapter
        .chat_stream(&models[0], &question, &greedy, |p| {
            pieces.push(p.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(streamed.text, answer.text);
    assert_eq!(pieces.concat(), streamed.text);
    assert!(pieces.len() > 1, "{pieces:?}");

    // Max tokens and stop sequences are honoured by the server.
    let story = [ChatMessage::user(
        "Write a long story about a lighthouse keeper.",
    )];
    let short = GenerateOptions {
        max_tokens: 3,
        ..GenerateOptions::default()
    };
    let cut = adapter.chat(&models[0], &story, &short).await.unwrap();
    assert_eq!(cut.stop_reason, StopReason::MaxTokens);
    assert_eq!(cut.completion_tokens, Some(3));
    let cut = adapter
        .chat_stream(&models[0], &story, &short, |_| {})
        .await
        .unwrap();
    assert_eq!(cut.stop_reason, StopReason::MaxTokens);

    // A request the server refuses (a prompt beyond its 2048-token context) is a status error.
    let huge = [ChatMessage::user("lighthouse ".repeat(3000))];
    let err = adapter.chat(&models[0], &huge, &greedy).await.unwrap_err();
    assert!(matches!(err, AdapterError::Status { .. }), "{err}");

    // Embeddings from the same GGUF in embedding mode: 576 dimensions (SmolLM2's width), and
    // related sentences closer than unrelated ones.
    let embedder = start(true).await;
    let adapter = Adapter::openai(&embedder.base, Duration::from_secs(60)).unwrap();
    let texts: Vec<String> = [
        "Turn on the garage lights",
        "Switch the lights in the garage on",
        "The stock market fell sharply today",
    ]
    .map(String::from)
    .to_vec();
    let vectors = adapter.embed("smollm2", &texts).await.unwrap();
    assert_eq!(vectors.len(), 3);
    assert!(
        vectors.iter().all(|v| v.len() == 576),
        "{}",
        vectors[0].len()
    );
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    };
    assert!(
        cosine(&vectors[0], &vectors[1]) > cosine(&vectors[0], &vectors[2]),
        "related {} unrelated {}",
        cosine(&vectors[0], &vectors[1]),
        cosine(&vectors[0], &vectors[2])
    );
}

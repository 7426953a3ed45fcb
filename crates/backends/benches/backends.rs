//! Backend benchmark: `cargo bench -p atmosphere-backends` prints a table (needs
//! `scripts/fetch-models` first).

use std::time::{Duration, Instant};

use atmosphere_backends::models::cache_dir;
use atmosphere_backends::{ChatMessage, ChatModel, Embedder, Engine, GenerateOptions};

/// Resident memory of this process, from /proc (Linux).
fn rss_mib() -> f64 {
    rss_mib_of("self")
}

/// Resident memory of process `pid` ("self" for this one), from /proc (Linux).
fn rss_mib_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn time(n: u32, mut f: impl FnMut()) -> Duration {
    f();
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn main() {
    let rss_start = rss_mib();
    let started = Instant::now();
    let embedder = match Embedder::load_default() {
        Ok(embedder) => embedder,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let load = started.elapsed();
    let sentence = "What does our IoT security policy say about cameras?";
    let single = time(50, || {
        std::hint::black_box(embedder.embed(sentence).expect("embed"));
    });
    let texts: Vec<String> = (0..32)
        .map(|i| format!("Turn on light number {i} in the garage and report its state"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = time(10, || {
        std::hint::black_box(embedder.embed_batch(&refs).expect("embed"));
    });
    println!("## Embeddings: all-MiniLM-L6-v2 in process (candle, CPU)\n");
    println!("| operation | time |");
    println!("|---|---:|");
    println!("| load (safetensors + tokenizer) | {load:?} |");
    println!("| one sentence (12 tokens) | {single:?} |");
    println!(
        "| batch of 32 sentences | {batch:?} ({:?} each) |",
        batch / 32
    );
    println!(
        "| resident memory after load | +{:.0} MiB |",
        rss_mib() - rss_start
    );
    drop(embedder);

    println!("\n## Chat models: one row per backend (2 cores, 1 request at a time)\n");
    println!(
        "| backend | model | quant | load | resident memory | prompt tokens | first token | decode speed |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let messages = [ChatMessage::user(
        "Explain in a few sentences why the sky is blue.",
    )];
    for path in [
        atmosphere_backends::models::smollm2_path(),
        atmosphere_backends::models::gemma3_path(),
    ] {
        engine_row(Engine::Candle, &path, &messages);
        if cfg!(feature = "llama-cpp") {
            engine_row(Engine::LlamaCpp, &path, &messages);
        }
    }
    llama_cpp_row(&messages);
}

const MAX_TOKENS: usize = 128;

/// An engine in this process: load time and memory, then best of 3 greedy generations.
fn engine_row(engine: Engine, path: &std::path::Path, messages: &[ChatMessage]) {
    let rss_before = rss_mib();
    let started = Instant::now();
    let mut model = ChatModel::load(engine, path).expect("load model (run scripts/fetch-models)");
    let load = started.elapsed();
    let rss_model = rss_mib() - rss_before;
    let options = GenerateOptions {
        max_tokens: MAX_TOKENS,
        ..GenerateOptions::default()
    };
    let runs: Vec<_> = (0..3)
        .map(|_| model.chat(messages, &options, |_| {}).expect("generate"))
        .collect();
    let best = runs
        .iter()
        .max_by(|a, b| a.tokens_per_second().total_cmp(&b.tokens_per_second()))
        .expect("runs");
    let info = model.info();
    println!(
        "| {engine} (in process) | {} | {} | {load:.0?} | +{rss_model:.0} MiB | {} | {:.0?} | {:.1} tok/s ({} tokens) |",
        info.name,
        info.quantization,
        best.prompt_tokens,
        best.first_token,
        best.tokens_per_second(),
        best.completion_tokens
    );
}

/// The llama.cpp server (scripts/fetch-llama-server) on the same SmolLM2 file, through the
/// OpenAI adapter with streaming: first token and decode speed as a client sees them.
fn llama_cpp_row(messages: &[ChatMessage]) {
    let cache = std::env::var_os("ATMOSPHERE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().parent().map(Into::into).unwrap_or_default());
    let python = cache.join("llama-server/bin/python");
    if !python.is_file() {
        println!(
            "| llama.cpp server | not installed: run scripts/fetch-llama-server | | | | | | |"
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let started = Instant::now();
    let mut child = std::process::Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(atmosphere_backends::models::smollm2_path())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_threads", "2", "--n_ctx", "2048", "--verbose", "false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start llama.cpp server");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = format!("http://127.0.0.1:{port}");
    runtime.block_on(async {
        let adapter = atmosphere_backends::adapters::Adapter::openai(&base, Duration::from_secs(120))
            .expect("adapter");
        while adapter.health().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(90), "server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let load = started.elapsed();
        let rss = rss_mib_of(&child.id().to_string());
        let options = GenerateOptions {
            max_tokens: MAX_TOKENS,
            ..GenerateOptions::default()
        };
        let mut best: Option<(Duration, f64, u64, u64)> = None;
        for _ in 0..3 {
            let sent = Instant::now();
            let mut first = None;
            let mut last = sent;
            let mut pieces = 0u64;
            let out = adapter
                .chat_stream("smollm2", messages, &options, |_| {
                    first.get_or_insert_with(|| sent.elapsed());
                    last = Instant::now();
                    pieces += 1;
                })
                .await
                .expect("chat");
            let first = first.unwrap_or_default();
            // llama-cpp-python sends no usage in streams; it sends one chunk per token.
            let tokens = out.completion_tokens.unwrap_or(pieces);
            let decode = last.duration_since(sent).saturating_sub(first).as_secs_f64();
            let speed = if tokens > 1 && decode > 0.0 {
                (tokens - 1) as f64 / decode
            } else {
                0.0
            };
            if best.is_none_or(|b| speed > b.1) {
                best = Some((first, speed, out.prompt_tokens.unwrap_or(0), tokens));
            }
        }
        let (first, speed, prompt, tokens) = best.expect("runs");
        println!(
            "| llama.cpp server 0.3.36 (HTTP, 2 threads) | smollm2-135m | Q4_1 | {load:.0?} (process start) | {rss:.0} MiB (process) | {prompt} | {first:.0?} | {speed:.1} tok/s ({tokens} tokens) |"
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}

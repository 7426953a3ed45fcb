//! Backend benchmark: `cargo bench -p atmosphere-backends` prints a table (needs
//! `scripts/fetch-models` first).

use std::time::{Duration, Instant};

use atmosphere_backends::models::{SMOLLM2_DIR, cache_dir};
use atmosphere_backends::{ChatMessage, Embedder, GenerateOptions, GgufModel};

/// Resident memory of this process, from /proc (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
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

    let rss_before = rss_mib();
    let path = cache_dir()
        .join(SMOLLM2_DIR)
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let started = Instant::now();
    let mut model = GgufModel::load(&path).expect("load SmolLM2");
    let load = started.elapsed();
    let rss_model = rss_mib() - rss_before;
    let options = GenerateOptions {
        max_tokens: 128,
        ..GenerateOptions::default()
    };
    let messages = [ChatMessage::user(
        "Explain in a few sentences why the sky is blue.",
    )];
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(model.chat(&messages, &options, |_| {}).expect("generate"));
    }
    let best = runs
        .iter()
        .max_by(|a, b| a.tokens_per_second().total_cmp(&b.tokens_per_second()))
        .expect("runs");
    let info = model.info();
    println!(
        "\n## LLM: {} ({}, candle quantized llama, CPU)\n",
        info.name, info.quantization
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| load | {load:?} |");
    println!("| resident memory after load | +{rss_model:.0} MiB |");
    println!("| prompt tokens | {} |", best.prompt_tokens);
    println!(
        "| first token (prompt + 1 token) | {:?} |",
        best.first_token
    );
    println!(
        "| decode speed (best of 3, {} tokens) | {:.1} tokens/s |",
        best.completion_tokens,
        best.tokens_per_second()
    );
}

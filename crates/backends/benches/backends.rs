//! Backend benchmark: `cargo bench -p atmosphere-backends` prints a table (needs
//! `scripts/fetch-models` first).

use std::time::{Duration, Instant};

use atmosphere_backends::Embedder;

fn time(n: u32, mut f: impl FnMut()) -> Duration {
    f();
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

fn main() {
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
}

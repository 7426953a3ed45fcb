//! Knowledge benchmark on three real node processes: ingest throughput of a generated household
//! corpus (the project's documents, varied, hundreds of times over), then scatter-gather query
//! latency over the labelled questions (retrieval only: embedding the question, asking the nodes,
//! merging — no language model), and the bytes each query moves over the mesh. Prints a table.
//!
//! `cargo bench -p atmosphere --profile dev --bench knowledge` (`KNOWLEDGE_COPIES` sets the corpus
//! size: copies of the four Markdown documents, 250 by default).

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/kit.rs"]
mod kit;
#[allow(dead_code)]
#[path = "common/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use kit::*;
use procs::{cpu_seconds, settle};
use serde_json::{Value, json};

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/home");
const QUESTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/knowledge/questions.jsonl"
);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let copies: usize = std::env::var("KNOWLEDGE_COPIES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(250);
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut corpus_bytes = 0u64;
    for entry in std::fs::read_dir(DOCS).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        for copy in 0..copies {
            // Each copy differs (a flat number, a date), so its chunks are distinct.
            let varied = format!(
                "# Copy {copy}: flat {} of building {}\n\n{}",
                copy % 40 + 1,
                copy / 40 + 1,
                text.replace("March", ["March", "April", "May", "June"][copy % 4])
            );
            let file = corpus.join(format!("{stem}-{copy:04}.md"));
            corpus_bytes += varied.len() as u64;
            std::fs::write(file, varied).unwrap();
        }
    }
    let mesh = unique_mesh("kbench");
    let nodes = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    settle(&nodes.iter().collect::<Vec<_>>()).await;
    println!(
        "machine: {} cores; corpus: {} documents, {:.2} MiB",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        copies * 4,
        corpus_bytes as f64 / (1 << 20) as f64
    );

    let cpu_before: Vec<f64> = nodes
        .iter()
        .map(|n| cpu_seconds(n.child.id().unwrap()))
        .collect();
    let started = Instant::now();
    let out = cli(&[
        "--api",
        &nodes[0].api(),
        "--json",
        "knowledge",
        "add",
        corpus.to_str().unwrap(),
        "--collection",
        "home",
    ]);
    let secs = started.elapsed().as_secs_f64();
    let chunks: u64 = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "done")
        .map(|e| e["chunks"].as_u64().unwrap_or(0))
        .sum();
    let cpu: Vec<String> = nodes
        .iter()
        .zip(cpu_before)
        .map(|(n, b)| format!("{} {:.1}", n.name, cpu_seconds(n.child.id().unwrap()) - b))
        .collect();
    println!("{:52} {}", "ingest: chunks", chunks);
    println!(
        "{:52} {:.1} s, {:.0} chunks/s, {:.3} MiB/s",
        "ingest: time (3 nodes, 2 copies each)",
        secs,
        chunks as f64 / secs,
        corpus_bytes as f64 / (1 << 20) as f64 / secs
    );
    println!("{:52} {}", "ingest: CPU seconds per node", cpu.join(", "));
    let api = nodes[0].api();
    eventually(
        Duration::from_secs(120),
        "two copies of every chunk",
        || {
            let api = api.clone();
            async move {
                let s = get_json(&format!("http://{api}/v1/knowledge/status")).await?;
                (s["healthy"] == true && s["copies"].as_u64() == Some(2 * chunks)).then_some(())
            }
        },
    )
    .await;

    let questions: Vec<Value> = std::fs::read_to_string(QUESTIONS)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let url = format!("http://{}/v1/knowledge/query", nodes[1].api());
    let (mut total, mut gather, mut wall, mut bytes, mut asked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut found = 0;
    for round in 0..3 {
        for q in &questions {
            let started = Instant::now();
            let (status, outcome) = post_json(
                &url,
                &json!({"query": q["q"], "collection": "home", "top_k": 5}),
            )
            .await;
            wall.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{outcome}");
            let ms = outcome["ms"].as_f64().unwrap();
            total.push(ms);
            gather.push(ms - outcome["embed_ms"].as_f64().unwrap());
            bytes.push(
                (outcome["bytes_out"].as_u64().unwrap() + outcome["bytes_in"].as_u64().unwrap())
                    as f64,
            );
            asked.push(outcome["asked"].as_array().unwrap().len() as f64);
            if round == 0
                && outcome["hits"].as_array().unwrap().iter().any(|h| {
                    h["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(q["expect"].as_str().unwrap())
                })
            {
                found += 1;
            }
        }
    }
    for list in [&mut total, &mut gather, &mut wall] {
        list.sort_by(f64::total_cmp);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{:52} p50 {:.1} ms, p95 {:.1} ms",
        "query: on the node (embed + scatter-gather + merge)",
        percentile(&total, 0.5),
        percentile(&total, 0.95)
    );
    println!(
        "{:52} p50 {:.1} ms, p95 {:.1} ms",
        "query: scatter-gather + merge (after embedding)",
        percentile(&gather, 0.5),
        percentile(&gather, 0.95)
    );
    println!(
        "{:52} p50 {:.1} ms, p95 {:.1} ms",
        "query: HTTP round trip from the client",
        percentile(&wall, 0.5),
        percentile(&wall, 0.95)
    );
    println!(
        "{:52} {:.0} bytes, {:.1} nodes asked",
        "query: bytes over the mesh per query (mean)",
        mean(&bytes),
        mean(&asked)
    );
    println!(
        "{:52} {found}/{} (the answer's phrase in the top 5)",
        "query: recall@5 on this corpus",
        questions.len()
    );
}

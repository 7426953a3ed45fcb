//! Load benchmark on three real node processes: waves of 1 000 concurrent intents and tool calls
//! (latency percentiles, throughput, none lost), then a soak of back-to-back waves with each
//! node's memory sampled, to show it stays flat. Prints tables.
//!
//! `cargo bench -p atmosphere --profile dev --features llama-cpp --bench load`
//! (`SOAK_SECS=600` for the ten-minute soak; the default is 60.)

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/kit.rs"]
mod kit;

#[allow(dead_code)]
#[path = "common/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use kit::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = unique_mesh("load-bench");
    let nodes = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    let apis: Vec<String> = nodes.iter().map(Proc::api).collect();
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    for api in &apis {
        eventually(Duration::from_secs(30), "tools known", || async {
            let tool = get_json(&format!("http://{api}/v1/tools/system:health")).await?;
            (tool["providers"].as_array()?.len() == 3).then_some(())
        })
        .await;
    }
    let warm = load_wave(&apis, &names, 6).await;
    assert!(warm.failures.is_empty(), "{:?}", warm.failures);
    procs::settle(&nodes.iter().collect::<Vec<_>>()).await;

    println!("## 1 000 concurrent requests over 3 nodes (half intents, half remote tool calls)\n");
    println!("| wave | answered | lost | wall | throughput | p50 | p90 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut wave_lost, mut warm_p99) = (0usize, 0.0f64);
    for round in 1..=3 {
        let wave = load_wave(&apis, &names, 1000).await;
        wave_lost += wave.failures.len();
        warm_p99 = wave.percentile(0.99);
        println!(
            "| {round} | {} | {} | {:.2} s | {:.0}/s | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            wave.answered,
            wave.failures.len(),
            wave.elapsed.as_secs_f64(),
            wave.per_second(),
            wave.percentile(0.5),
            wave.percentile(0.9),
            wave.percentile(0.99),
            wave.percentile(1.0),
        );
        if let Some(failure) = wave.failures.first() {
            println!("\nfirst failure: {failure}\n");
        }
    }

    // Our goals, gathered by scripts/bench into the report's summary beside Appendix B.
    println!(
        "\ntarget: Load: 3 waves of 1 000 concurrent intents and tool calls, lost (our goal) | {wave_lost} of 3000 | 0 | {}",
        if wave_lost == 0 { "met" } else { "MISSED" }
    );
    println!(
        "target: Load: p99 of the last 1 000-request wave, 3 nodes on 2 cores (our goal) | {warm_p99:.0} ms | < 1 000 ms | {}",
        if warm_p99 < 1000.0 { "met" } else { "MISSED" }
    );

    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!("\n## Soak: back-to-back waves of 200 for {secs} s, resident memory per node (MiB)\n");
    println!("| at | requests answered | lost | a | b | c |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let pids: Vec<u32> = nodes.iter().filter_map(|n| n.child.id()).collect();
    let rss_now = || -> Vec<f64> { pids.iter().map(|p| procs::rss(*p).unwrap_or(0.0)).collect() };
    let started = Instant::now();
    let (mut answered, mut lost) = (0usize, 0usize);
    let mut samples: Vec<(u64, Vec<f64>)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let every = Duration::from_secs((secs / 10).max(5));
    while started.elapsed() < Duration::from_secs(secs) {
        if started.elapsed() >= next_sample {
            let rss = rss_now();
            let at = started.elapsed().as_secs();
            println!(
                "| {at} s | {answered} | {lost} | {:.0} | {:.0} | {:.0} |",
                rss[0], rss[1], rss[2]
            );
            samples.push((at, rss));
            next_sample += every;
        }
        let wave = load_wave(&apis, &names, 200).await;
        answered += wave.answered;
        lost += wave.failures.len();
    }
    let end = rss_now();
    println!(
        "| {} s | {answered} | {lost} | {:.0} | {:.0} | {:.0} |",
        started.elapsed().as_secs(),
        end[0],
        end[1],
        end[2]
    );
    // Growth after the first sample that followed a full wave (allocators settle in the first).
    if let Some((at, first)) = samples.get(1).or(samples.first()) {
        let growth: Vec<String> = first
            .iter()
            .zip(&end)
            .map(|(f, e)| format!("{:+.1}", e - f))
            .collect();
        println!(
            "\nmemory change from {at} s to the end (MiB, a/b/c): {}",
            growth.join(" / ")
        );
        let worst = first
            .iter()
            .zip(&end)
            .map(|(f, e)| e - f)
            .fold(f64::MIN, f64::max);
        println!(
            "\ntarget: Soak: resident memory growth over {secs} s, worst node (our goal) | {worst:+.1} MiB | < 16 MiB | {}",
            if worst < 16.0 { "met" } else { "MISSED" }
        );
    }
    println!(
        "target: Soak: requests lost over {secs} s (our goal) | {lost} of {} | 0 | {}",
        answered + lost,
        if lost == 0 { "met" } else { "MISSED" }
    );
}

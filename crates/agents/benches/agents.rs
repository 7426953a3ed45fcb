//! Sleeping agents: resident memory per agent held as definition + state (10 000 of them), and
//! the time from a match to the agent's first action (its step, without the node's I/O).
//!
//! `cargo bench -p atmosphere-agents --profile dev`

use std::time::Instant;

use atmosphere_agents::{AgentDef, Event, Severity, Trigger, builtin, step};
use serde_json::{Value, json};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A sleeping agent as the node keeps it: its definition and its state, nothing running.
struct Sleeping {
    def: AgentDef,
    state: Value,
}

fn main() {
    const N: usize = 10_000;
    let bases = builtin();
    let before = rss_kib();
    let mut sleeping: Vec<Sleeping> = Vec::with_capacity(N);
    for i in 0..N {
        let mut def = bases[i % bases.len()].clone();
        def.name = format!("{}_{i}", def.name);
        sleeping.push(Sleeping {
            def,
            state: json!({"runs": 0}),
        });
    }
    let per_agent = (rss_kib().saturating_sub(before)) as f64 * 1024.0 / N as f64;
    let serialised: usize = sleeping
        .iter()
        .map(|s| s.def.to_bytes().len())
        .sum::<usize>()
        / N;

    // Wake: a matching event to the anomaly detector with 60 readings of history, and an intent
    // to the vision monitor; time to the first action.
    let detector = sleeping
        .iter_mut()
        .find(|s| s.def.name.starts_with("anomaly_detector"))
        .expect("a detector");
    for i in 0..60 {
        let reading = Trigger::Event(Event {
            kind: "sensor.reading".into(),
            source: "bench".into(),
            severity: Severity::Info,
            summary: String::new(),
            data: json!({"series": "t", "value": 20.0 + (i % 5) as f64 * 0.1}),
            at: i,
        });
        detector.state = step(&detector.def, &detector.state, &reading, i).state;
    }
    let mut wake_us = Vec::new();
    for i in 0..2000u64 {
        let reading = Trigger::Event(Event {
            kind: "sensor.reading".into(),
            source: "bench".into(),
            severity: Severity::Info,
            summary: String::new(),
            data: json!({"series": "t", "value": 20.2}),
            at: i,
        });
        let started = Instant::now();
        let woke = step(&detector.def, &detector.state, &reading, i);
        wake_us.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(woke);
    }
    wake_us.sort_by(f64::total_cmp);
    println!("## Sleeping agents\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| resident memory per sleeping agent ({N} agents) | {per_agent:.0} B |");
    println!("| serialised definition (mean) | {serialised} B |");
    println!(
        "| wake to first action, anomaly detector with 60 readings (p50 / p99) | {:.1} µs / {:.1} µs |",
        wake_us[wake_us.len() / 2],
        wake_us[wake_us.len() * 99 / 100]
    );
    // One line per Appendix B target, gathered by scripts/bench into the report's summary.
    println!(
        "\ntarget: Sleeping agent memory | {per_agent:.0} B | < 1 MB | {}",
        if per_agent < 1024.0 * 1024.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    std::hint::black_box(&sleeping);
}

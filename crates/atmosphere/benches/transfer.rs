//! Model package benchmark on real node processes: packing (time, peak memory), a mesh pull
//! compared with a plain local copy of the same bytes, a pull from two holders, the receiving
//! node's memory during a pull, and the cost of resuming after the sender was killed halfway.
//! Two sizes, to show memory does not grow with the model. Prints a table.
//!
//! `cargo bench -p atmosphere --profile dev --features llama-cpp --bench transfer`

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/kit.rs"]
mod kit;
#[allow(dead_code)]
#[path = "common/procs.rs"]
mod procs;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kit::*;
use procs::{cpu_seconds, peak_rss, rss, settle};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn write_model(path: &Path, size: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..size / MIB {
        for byte in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

/// Runs the CLI, sampling its peak memory; returns (seconds, peak MiB, stdout).
fn run_measured(args: &[&str]) -> (f64, f64, String) {
    let started = Instant::now();
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak: f64 = 0.0;
    loop {
        if let Some(m) = peak_rss(pid) {
            peak = peak.max(m);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{args:?} failed");
    (
        started.elapsed().as_secs_f64(),
        peak,
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// Follows a pull's progress lines; `on_line` may act on each; samples `watch`'s memory.
async fn pull(api: &str, body: Value, watch: u32, mut on_line: impl FnMut(&Value)) -> (Value, f64) {
    let mut peak: f64 = 0.0;
    let url = format!("http://{api}/v1/packages/pull");
    let last = follow_lines(&url, &body, |line| {
        if let Some(m) = rss(watch) {
            peak = peak.max(m);
        }
        on_line(line);
    })
    .await;
    (last, peak)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir_in(
        std::env::var("ATMOSPHERE_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()),
    )
    .unwrap();
    let mesh = unique_mesh("transfer");
    let mut nodes = seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |what: String, value: String| {
        println!("{what:58} {value}");
        rows.push((what, value));
    };
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );

    for (round, size) in [128 * MIB, 512 * MIB].into_iter().enumerate() {
        let label = format!("{} MiB", size / MIB);
        let name = format!("bench{}", size / MIB);
        let model = dir.path().join(format!("{name}.bin"));
        write_model(&model, size);

        // A plain local copy of the same bytes, page cache warm.
        let _ = std::fs::read(&model).map(|b| b.len());
        let copy = dir.path().join("copy.bin");
        let started = Instant::now();
        std::fs::copy(&model, &copy).unwrap();
        let copy_secs = started.elapsed().as_secs_f64();
        std::fs::remove_file(&copy).unwrap();
        row(
            format!("{label}: local file copy (cp)"),
            format!("{:.2} s  {:.0} MiB/s", copy_secs, mbps(size, copy_secs)),
        );

        // Pack (streamed, sealed by A).
        let a_api = nodes[0].api();
        let package = dir.path().join(format!("{name}-pkg"));
        let (secs, peak, _) = run_measured(&[
            "--api",
            &a_api,
            "model",
            "pack",
            &model.display().to_string(),
            "--name",
            &name,
            "-o",
            &package.display().to_string(),
        ]);
        row(
            format!("{label}: pack (hash + copy + seal)"),
            format!(
                "{secs:.2} s  {:.0} MiB/s  peak RSS {peak:.0} MiB",
                mbps(size, secs)
            ),
        );
        let (secs, _, _) = run_measured(&[
            "--api",
            &a_api,
            "model",
            "import",
            &package.display().to_string(),
        ]);
        row(
            format!("{label}: import on A (verified copy)"),
            format!("{secs:.2} s  {:.0} MiB/s", mbps(size, secs)),
        );
        let _ = std::fs::remove_dir_all(&package);
        std::fs::remove_file(&model).unwrap();

        // B pulls from A over the mesh.
        settle(&nodes.iter().collect::<Vec<_>>()).await;
        let b_pid = nodes[1].child.id().unwrap();
        let before = rss(b_pid).unwrap_or(0.0);
        let a_pid = nodes[0].child.id().unwrap();
        let cpu_before = (cpu_seconds(a_pid), cpu_seconds(b_pid));
        let (done, peak) = pull(
            &nodes[1].api(),
            json!({"name": name, "from": ["a"]}),
            b_pid,
            |_| {},
        )
        .await;
        assert_eq!(done["state"], "done", "{done}");
        let secs = done["elapsed_ms"].as_f64().unwrap() / 1000.0;
        row(
            format!("{label}: mesh pull A→B (QUIC, every chunk checked)"),
            format!(
                "{secs:.2} s  {:.0} MiB/s  = {:.0}% of cp",
                mbps(size, secs),
                100.0 * copy_secs / secs
            ),
        );
        row(
            format!("{label}: CPU time during the pull"),
            format!(
                "sender {:.2} s, receiver {:.2} s (of {:.2} s wall on 2 cores)",
                cpu_seconds(a_pid) - cpu_before.0,
                cpu_seconds(b_pid) - cpu_before.1,
                secs
            ),
        );
        row(
            format!("{label}: receiving node RSS during pull"),
            format!("{before:.0} MiB before, {peak:.0} MiB peak"),
        );

        // C pulls from A and B at once.
        let (done, _) = pull(
            &nodes[2].api(),
            json!({"name": name, "from": ["a", "b"]}),
            b_pid,
            |_| {},
        )
        .await;
        assert_eq!(done["state"], "done", "{done}");
        let secs = done["elapsed_ms"].as_f64().unwrap() / 1000.0;
        row(
            format!("{label}: pull from two holders A+B→C"),
            format!(
                "{secs:.2} s  {:.0} MiB/s  (bytes by source {}; refused {})",
                mbps(size, secs),
                done["sources"],
                done["rejected"]
            ),
        );

        if round == 1 {
            // Resume: a fresh receiver pulls from A at a capped rate; A is killed halfway, comes
            // back, and the pull resumes.
            let d = start(
                "d",
                &dir.path().join("d"),
                &loopback_args(&mesh, "off", &[], &[nodes[0].bootstrap_line()]),
            )
            .await;
            join_with_token(&a_api, &d, "1h");
            let ids: Vec<_> = nodes.iter().map(|n| n.id()).chain([d.id()]).collect();
            let apis: Vec<String> = nodes.iter().map(|n| n.api()).chain([d.api()]).collect();
            all_alive(&apis, &ids, Duration::from_secs(30)).await;
            let a_pid = nodes[0].child.id().unwrap();
            let mut killed = false;
            settle(&nodes.iter().chain([&d]).collect::<Vec<_>>()).await;
            let (failed, _) = pull(
                &d.api(),
                json!({"name": name, "from": ["a"], "limit_rate": 128 * MIB}),
                b_pid,
                |p| {
                    if !killed && p["received_bytes"].as_u64().unwrap_or(0) >= size / 2 {
                        killed = true;
                        let _ = std::process::Command::new("kill")
                            .args(["-9", &a_pid.to_string()])
                            .status();
                    }
                },
            )
            .await;
            assert_eq!(failed["state"], "failed", "{failed}");
            nodes[0].restart().await;
            let apis: Vec<String> = nodes.iter().map(|n| n.api()).chain([d.api()]).collect();
            all_alive(&apis, &ids, Duration::from_secs(30)).await;
            settle(&nodes.iter().chain([&d]).collect::<Vec<_>>()).await;
            let (resumed, _) = pull(
                &d.api(),
                json!({"name": name, "from": ["a"]}),
                b_pid,
                |_| {},
            )
            .await;
            assert_eq!(resumed["state"], "done", "{resumed}");
            let secs = resumed["elapsed_ms"].as_f64().unwrap() / 1000.0;
            let fetched = resumed["received_bytes"].as_u64().unwrap();
            let reused = resumed["reused_bytes"].as_u64().unwrap();
            row(
                format!("{label}: resume after the sender died"),
                format!(
                    "{:.0} MiB kept, {:.0} MiB fetched in {secs:.2} s ({:.0} MiB/s incl. re-checking what was kept)",
                    reused as f64 / MIB as f64,
                    fetched as f64 / MIB as f64,
                    mbps(fetched, secs)
                ),
            );
        }
    }
    println!("\n| measure | result |\n|---|---|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}

//! What the process benchmarks measure of a node process: its memory and CPU time from
//! `/proc`, and waiting until the nodes are idle before a measurement.

use std::time::Duration;

use crate::kit::{Proc, eventually};

/// Peak resident memory of a process so far, in MiB (VmHWM).
pub fn peak_rss(pid: u32) -> Option<f64> {
    field(pid, "VmHWM:")
}

pub fn rss(pid: u32) -> Option<f64> {
    field(pid, "VmRSS:")
}

fn field(pid: u32, name: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds a process has used (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits until the nodes are idle (a node embeds the router's descriptors after it starts): under
/// 5% of a core each over half a second, so a measurement does not share the CPU with start-up.
pub async fn settle(nodes: &[&Proc]) {
    let pids: Vec<u32> = nodes.iter().filter_map(|n| n.child.id()).collect();
    eventually(Duration::from_secs(120), "the nodes are idle", || {
        let pids = pids.clone();
        async move {
            let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let busy = pids
                .iter()
                .zip(&before)
                .any(|(p, b)| cpu_seconds(*p) - b > 0.025);
            (!busy).then_some(())
        }
    })
    .await;
}

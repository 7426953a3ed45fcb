//! The spec's "Home Intelligence" demo, end to end, exactly as `scripts/demo` runs it: three node
//! processes with real models, a virtual Matter light and sensor, the nine steps each checking its
//! outcome. Only the ports (free ones) and the mDNS mesh name (unique) differ.

use serde_json::Value;

use crate::kit::{BIN, unique_mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_intelligence_demo_passes_its_nine_steps() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BIN)
        .args(["--json", "demo", "--api-port", "0", "--quic-port", "0"])
        .args(["--mesh", &unique_mesh("demo")])
        .arg("--data-dir")
        .arg(dir.path().join("demo"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the demo printed no report ({e}):\n{stdout}\n{stderr}"));
    let steps = report["steps"].as_array().unwrap();
    let failed: Vec<&Value> = steps.iter().filter(|s| s["passed"] != true).collect();
    assert!(failed.is_empty(), "failed steps: {failed:#?}");
    assert_eq!(steps.len(), 9);
    assert_eq!(report["passed"], 9);
    assert!(output.status.success(), "{stderr}");
    for step in steps {
        eprintln!(
            "step {} {:<45} {:>6} ms  {}",
            step["step"], step["requirement"], step["ms"], step["detail"]
        );
    }
}

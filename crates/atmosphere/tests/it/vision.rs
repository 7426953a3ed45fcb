//! Vision across real processes: a camera (a directory of real photographs) on one node, its
//! tools called from another, and the vision_monitor agent noticing what changes.

use std::path::PathBuf;
use std::time::Duration;

use crate::kit::*;

fn photo(name: &str) -> PathBuf {
    let cache = std::env::var_os("ATMOSPHERE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/atmosphere"),
        PathBuf::from,
    );
    cache.join("images").join(format!("{name}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_on_one_node_is_watched_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(photo("brick"), frames.join("frame-0001.png")).unwrap();
    let config = dir.path().join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "[vision]\ncameras = {{ garage_cam = \"{}\" }}\n",
            frames.display()
        ),
    )
    .unwrap();
    let mesh = unique_mesh("vision");
    let hall = start(
        "hall",
        &dir.path().join("hall"),
        &loopback_args(&mesh, "off", &[], &[]),
    )
    .await;
    let mut args = loopback_args(&mesh, "off", &["vision"], &[hall.bootstrap_line()]);
    args.extend(["--config".into(), config.display().to_string()]);
    let garage = start("garage", &dir.path().join("garage"), &args).await;
    form_mesh(&[&hall, &garage]);
    all_alive(
        &[hall.api(), garage.api()],
        &[hall.id(), garage.id()],
        Duration::from_secs(30),
    )
    .await;
    let api = hall.api();
    // Every node has the detector here, but only the garage has the camera: ask it there.
    eventually(
        Duration::from_secs(30),
        "the garage's vision tools listed",
        || async {
            let tool = get_json(&format!("http://{api}/v1/tools/vision:analyze")).await?;
            tool["providers"]
                .as_array()?
                .iter()
                .any(|p| p == "garage")
                .then_some(())
        },
    )
    .await;
    let on_garage = |tool: &'static str, args: serde_json::Value| {
        let api = api.clone();
        async move {
            let request = serde_json::json!({ "args": args, "node": "garage" });
            let url = format!("http://{api}/v1/tools/{tool}/call");
            let (status, body) = post_json(&url, &request).await;
            assert!((200..300).contains(&status), "{tool}: {body}");
            body
        }
    };

    // An empty scene, then a person walks in.
    let quiet = on_garage(
        "vision:analyze",
        serde_json::json!({"source": "garage_cam"}),
    )
    .await;
    assert_eq!(quiet["output"]["objects"], serde_json::json!([]), "{quiet}");
    assert_eq!(quiet["node"], "garage");
    std::fs::copy(photo("astronaut"), frames.join("frame-0002.png")).unwrap();
    let detected = on_garage("vision:detect", serde_json::json!({"source": "garage_cam"})).await;
    assert_eq!(
        detected["output"]["detections"][0]["label"], "person",
        "{detected}"
    );
    let changed = on_garage(
        "vision:analyze",
        serde_json::json!({"source": "garage_cam"}),
    )
    .await;
    let anomalies = changed["output"]["anomalies"].to_string();
    assert!(anomalies.contains("a person appeared"), "{changed}");
    assert!(anomalies.contains("sudden scene change"), "{changed}");

    // The vision_monitor agent on the garage: invoked from the hall, it analyses the camera and
    // raises an anomaly event when something appears.
    cli(&[
        "--api",
        &api,
        "agent",
        "deploy",
        "vision_monitor",
        "--node",
        "garage",
    ]);
    std::fs::copy(photo("motorcycle_left"), frames.join("frame-0003.png")).unwrap();
    let out = cli(&[
        "--api",
        &api,
        "agent",
        "invoke",
        "vision_monitor",
        "--input",
        "Check garage camera",
    ]);
    assert!(out.contains("→ Agent: vision_monitor (garage)"), "{out}");
    assert!(out.contains("→ Tool: vision:analyze on garage"), "{out}");
    assert!(out.contains("→ Event: vision.anomaly"), "{out}");
    assert!(out.contains("a vehicle appeared (motorcycle)"), "{out}");
    // A bad source is a clear error naming the cameras.
    let request = serde_json::json!({"args": {"source": "attic_cam"}, "node": "garage"});
    let url = format!("http://{api}/v1/tools/vision:detect/call");
    let (_, body) = post_json(&url, &request).await;
    assert!(
        body["message"].as_str().unwrap().contains("garage_cam"),
        "{body}"
    );
}

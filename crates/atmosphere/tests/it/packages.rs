//! Model packages between real node processes: pack and seal on one node, move over the mesh
//! (push, pull from several holders, resume after the sender is killed) and on a "USB stick"
//! (export, import with the receiver's network cut), serve the installed model offline; and
//! every kind of bad package refused with nothing half-installed.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::kit::{self, Proc, cli, cli_fails, eventually, post_json};

fn json_lines_last(out: &str) -> Value {
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn pack(api: &str, model: &Path, name: &str, out: &Path) -> Value {
    let out = cli(&[
        "--api",
        api,
        "--json",
        "model",
        "pack",
        &model.display().to_string(),
        "--name",
        name,
        "-o",
        &out.display().to_string(),
    ]);
    serde_json::from_str(&out).unwrap()
}

async fn chat(node: &Proc, model: &str) -> (u16, Value) {
    post_json(
        &format!("http://{}/v1/chat/completions", node.api()),
        &json!({
            "model": model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
        }),
    )
    .await
}

async fn held(node: &Proc) -> Vec<String> {
    let view = kit::get_json(&format!("http://{}/v1/packages", node.api()))
        .await
        .unwrap();
    view["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_travels_by_mesh_and_by_stick_and_serves_with_the_network_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = kit::unique_mesh("packages");
    let mut nodes = kit::seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    let (a_api, b_api, c_api) = (nodes[0].api(), nodes[1].api(), nodes[2].api());

    // A packs SmolLM2 (sealed with A's key) and takes it into its own store.
    let smollm2 = atmosphere_backends::models::smollm2_path();
    let package = dir.path().join("smollm2-pkg");
    let packed = pack(&a_api, &smollm2, "smollm2", &package);
    assert_eq!(packed["seal"]["signer_name"], "a", "{packed}");
    let size = packed["manifest"]["size"].as_u64().unwrap();
    let out = cli(&[
        "--api",
        &a_api,
        "--json",
        "model",
        "import",
        &package.display().to_string(),
    ]);
    let imported = json_lines_last(&out);
    assert_eq!(imported["state"], "done", "{imported}");
    let model = imported["model"].as_str().unwrap().to_owned();
    assert_eq!(held(&nodes[0]).await, ["smollm2"]);

    // C pulls it from A, slowly; A is killed a quarter of the way in. The pull fails, saying
    // what it kept.
    let mut killed = false;
    let a_pid = nodes[0].child.id().unwrap();
    let failed = kit::follow_lines(
        &format!("http://{c_api}/v1/packages/pull"),
        &json!({"name": "smollm2", "from": ["a"], "limit_rate": 12 << 20}),
        |p| {
            if !killed && p["received_bytes"].as_u64().unwrap_or(0) > size / 4 {
                killed = true;
                std::process::Command::new("kill")
                    .args(["-9", &a_pid.to_string()])
                    .status()
                    .unwrap();
            }
        },
    )
    .await;
    assert!(
        killed,
        "the pull finished before A could be killed: {failed}"
    );
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("kept for a resume"),
        "{failed}"
    );
    let got_before = failed["received_bytes"].as_u64().unwrap();

    // A comes back with its packages; B receives the package by push from A.
    nodes[0].restart().await;
    let ids: Vec<_> = nodes.iter().map(Proc::id).collect();
    let apis: Vec<String> = nodes.iter().map(Proc::api).collect();
    kit::all_alive(&apis, &ids, Duration::from_secs(60)).await;
    let a_api = nodes[0].api();
    assert_eq!(held(&nodes[0]).await, ["smollm2"]);
    let out = cli(&[
        "--api", &a_api, "--json", "model", "push", "smollm2", "--to", "b",
    ]);
    let pushed = json_lines_last(&out);
    assert_eq!(pushed["state"], "done", "{pushed}");
    assert_eq!(pushed["sources"]["a"].as_u64(), Some(size), "{pushed}");

    // C resumes from every holder (A and B): only the missing chunks travel, from both.
    eventually(
        Duration::from_secs(20),
        "C sees A and B holding smollm2",
        || async {
            let view = kit::get_json(&format!("http://{c_api}/v1/packages")).await?;
            let holders = view["holders"]["smollm2"].as_array()?.len();
            (holders == 2).then_some(())
        },
    )
    .await;
    let out = cli(&["--api", &c_api, "--json", "model", "pull", "smollm2"]);
    let resumed = json_lines_last(&out);
    assert_eq!(resumed["state"], "done", "{resumed}");
    let reused = resumed["reused_bytes"].as_u64().unwrap();
    assert!(reused > 0 && reused <= got_before, "{resumed}");
    assert_eq!(resumed["received_bytes"].as_u64().unwrap() + reused, size);
    assert!(resumed["sources"]["a"].as_u64().unwrap() > 0, "{resumed}");
    assert!(resumed["sources"]["b"].as_u64().unwrap() > 0, "{resumed}");
    let installed = nodes[2].data_dir.join("packages").join("smollm2");
    let verified = cli(&[
        "--json",
        "model",
        "verify",
        &installed.display().to_string(),
    ]);
    assert!(verified.contains("\"sealed_by\": \"a\""), "{verified}");

    // C's network is cut: it still answers with the model it received.
    cli(&["--api", &c_api, "node", "disconnect", "c"]);
    let (status, answer) = chat(&nodes[2], &model).await;
    assert_eq!(
        (status, answer["model"].as_str()),
        (200, Some(model.as_str())),
        "{answer}"
    );
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim()
            .is_empty(),
        "{answer}"
    );

    // The stick: A exports; copies with a tampered manifest or a truncated model are refused
    // by C (still offline), which keeps serving; the good copy installs over the old one.
    let usb = dir.path().join("usb");
    let out = cli(&[
        "--api",
        &a_api,
        "--json",
        "model",
        "export",
        "smollm2",
        &usb.display().to_string(),
    ]);
    let exported: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported["bytes"].as_u64(), Some(size));
    let stick = usb.join("smollm2");

    let tampered = dir.path().join("tampered");
    copy_dir(&stick, &tampered);
    let manifest_path = tampered.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, text.replace("\"gguf\"", "\"bin\"")).unwrap();
    let err = cli_fails(&[
        "--api",
        &c_api,
        "model",
        "import",
        &tampered.display().to_string(),
    ]);
    assert!(
        err.contains("signature does not match its manifest"),
        "{err}"
    );

    let truncated = dir.path().join("truncated");
    copy_dir(&stick, &truncated);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .unwrap();
    file.set_len(size / 2).unwrap();
    let err = cli_fails(&[
        "--api",
        &c_api,
        "model",
        "import",
        &truncated.display().to_string(),
    ]);
    assert!(err.contains("the manifest says"), "{err}");
    assert_eq!(chat(&nodes[2], &model).await.0, 200);

    let out = cli(&[
        "--api",
        &c_api,
        "--json",
        "model",
        "import",
        &stick.display().to_string(),
    ]);
    assert_eq!(json_lines_last(&out)["state"], "done", "{out}");
    let (status, answer) = chat(&nodes[2], &model).await;
    assert_eq!(status, 200, "{answer}");

    // Back online, the mesh sees C serving the model.
    cli(&["--api", &c_api, "node", "reconnect", "c"]);
    let c_id = nodes[2].id();
    eventually(
        Duration::from_secs(30),
        "A sees C advertise the model",
        || async {
            let status = kit::status(&a_api).await?;
            let c = status.nodes.iter().find(|n| n.id == c_id)?;
            c.models.iter().any(|m| m.name == model).then_some(())
        },
    )
    .await;
    let _ = b_api;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_bad_models_and_a_full_disk_install_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = kit::unique_mesh("badpkg");
    let nodes = kit::seeded_mesh(dir.path(), &mesh, &["a", "b", "c"]).await;
    let (a_api, b_api, c_api) = (nodes[0].api(), nodes[1].api(), nodes[2].api());

    // A packs a 14 MiB data file (four chunks) and hands it to B.
    let blob = dir.path().join("weights.bin");
    let bytes: Vec<u8> = (0..14u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&blob, &bytes).unwrap();
    let package = dir.path().join("blob-pkg");
    pack(&a_api, &blob, "blob", &package);
    cli(&[
        "--api",
        &a_api,
        "model",
        "import",
        &package.display().to_string(),
    ]);
    let out = cli(&[
        "--api", &a_api, "--json", "model", "push", "blob", "--to", "b",
    ]);
    assert_eq!(json_lines_last(&out)["state"], "done", "{out}");

    // A's copy rots: a flipped byte in every chunk. C pulls from both: A is dropped at its first
    // chunk, B delivers; what C installs verifies.
    let rotten = nodes[0].data_dir.join("packages/blob/weights.bin");
    let mut rot = std::fs::read(&rotten).unwrap();
    for chunk in 0..4 {
        rot[chunk * (4 << 20) + 17] ^= 0x20;
    }
    std::fs::write(&rotten, rot).unwrap();
    let pulled = kit::follow_lines(
        &format!("http://{c_api}/v1/packages/pull"),
        &json!({"name": "blob", "from": ["a", "b"]}),
        |_| {},
    )
    .await;
    assert_eq!(pulled["state"], "done", "{pulled}");
    let rejected = pulled["rejected"].to_string();
    assert!(rejected.contains("a sent a bad chunk"), "{pulled}");
    assert_eq!(pulled["sources"]["b"].as_u64(), Some(14 << 20), "{pulled}");
    let installed = nodes[2].data_dir.join("packages/blob/weights.bin");
    assert_eq!(std::fs::read(installed).unwrap(), bytes);

    // A package whose "gguf" is not a model: sealed and intact, but nothing gets installed.
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"GGUF but not really a model").unwrap();
    let fake_pkg = dir.path().join("fake-pkg");
    pack(&a_api, &fake, "fake", &fake_pkg);
    let err = cli_fails(&[
        "--api",
        &b_api,
        "model",
        "import",
        &fake_pkg.display().to_string(),
    ]);
    assert!(err.contains("cannot load"), "{err}");
    assert_eq!(held(&nodes[1]).await, ["blob"]);
    assert!(!nodes[1].data_dir.join("packages/fake").exists());

    // An unsealed package is refused.
    let unsealed = dir.path().join("unsealed");
    copy_dir(&package, &unsealed);
    std::fs::remove_file(unsealed.join("seal.json")).unwrap();
    let err = cli_fails(&[
        "--api",
        &b_api,
        "model",
        "import",
        &unsealed.display().to_string(),
    ]);
    assert!(err.contains("no seal.json"), "{err}");

    // A node whose disk is a 24 MiB tmpfs: the 14 MiB blob fits, SmolLM2 (94 MiB) does not; it
    // is refused before a byte moves and the blob stays installed.
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=24m tmpfs {} && exec \"$0\" \"$@\"",
        small.display()
    );
    let wrapper: Vec<String> = ["unshare", "-m", "sh", "-c", &script]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let args = kit::loopback_args(&mesh, "off", &[], &[nodes[0].bootstrap_line()]);
    let d = kit::start_with("d", &small, &args, Some(&wrapper)).await;
    let mounts =
        std::fs::read_to_string(format!("/proc/{}/mounts", d.child.id().unwrap())).unwrap();
    assert!(
        mounts.contains(&format!("tmpfs {} tmpfs", small.display())),
        "the test could not give node d a small disk (needs mount namespaces)"
    );
    kit::join_with_token(&a_api, &d, "1h");
    let smollm2 = dir.path().join("smollm2-pkg");
    pack(
        &a_api,
        &atmosphere_backends::models::smollm2_path(),
        "smollm2",
        &smollm2,
    );
    cli(&[
        "--api",
        &a_api,
        "model",
        "import",
        &smollm2.display().to_string(),
    ]);
    let out = cli(&[
        "--api",
        &d.api(),
        "--json",
        "model",
        "pull",
        "blob",
        "--from",
        "b",
    ]);
    assert_eq!(json_lines_last(&out)["state"], "done", "{out}");
    let err = cli_fails(&["--api", &d.api(), "model", "pull", "smollm2", "--from", "a"]);
    assert!(err.contains("not enough disk space"), "{err}");
    assert_eq!(held(&d).await, ["blob"]);
}

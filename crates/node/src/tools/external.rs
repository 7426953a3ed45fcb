//! Tools added without recompiling: JSON files in `<data_dir>/tools/`, each a manifest (as
//! announced) plus where the work happens — `"http": URL` (the arguments are POSTed as JSON, the
//! JSON answer is the result) or `"command": [PROGRAM, ARGS…]` (the arguments on stdin, one JSON
//! document on stdout). The same schema checks, timeout and isolation as built-in tools.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{LocalTool, Manifest};

/// Largest answer read from an external tool.
const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    name: String,
    capability: String,
    description: String,
    #[serde(default)]
    examples: Vec<String>,
    input: Value,
    output: Value,
    #[serde(default = "default_version")]
    version: String,
    #[serde(default = "super::default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
}

fn default_version() -> String {
    "1.0.0".into()
}

/// Loads every `*.json` tool file in `dir`; files that do not hold a valid tool are reported,
/// not fatal.
pub fn load_dir(dir: &Path) -> (Vec<LocalTool>, Vec<String>) {
    let mut tools = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (tools, errors);
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        match load_file(&path) {
            Ok(tool) => tools.push(tool),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    (tools, errors)
}

fn load_file(path: &Path) -> Result<LocalTool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: ToolFile = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let manifest = Manifest {
        name: file.name,
        capability: file.capability,
        description: file.description,
        examples: file.examples,
        input: file.input,
        output: file.output,
        version: file.version,
        timeout_ms: file.timeout_ms,
    };
    manifest.check()?;
    let timeout = Duration::from_millis(manifest.timeout_ms.clamp(100, 600_000));
    let handler: super::Handler = match (file.http, file.command) {
        (Some(url), None) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("http {url:?} is not an http(s) URL"));
            }
            let http =
                atmosphere_backends::adapters::http_client(timeout).map_err(|e| e.to_string())?;
            Arc::new(move |args| {
                let (http, url) = (http.clone(), url.clone());
                Box::pin(async move { call_http(&http, &url, &args).await })
            })
        }
        (None, Some(argv)) if !argv.is_empty() => Arc::new(move |args| {
            let argv = argv.clone();
            Box::pin(async move { run_command(&argv, &args).await })
        }),
        _ => {
            return Err(
                "give exactly one of \"http\" (a URL) or \"command\" (a non-empty list)".into(),
            );
        }
    };
    Ok(LocalTool { manifest, handler })
}

async fn call_http(http: &reqwest::Client, url: &str, args: &Value) -> Result<Value, String> {
    let response = http
        .post(url)
        .json(args)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if body.len() > MAX_OUTPUT_BYTES {
        return Err(format!("{url} answered {} bytes", body.len()));
    }
    if !status.is_success() {
        return Err(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} did not answer JSON: {e}"))
}

async fn run_command(argv: &[String], args: &Value) -> Result<Value, String> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let input = serde_json::to_vec(args).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .await
            .map_err(|e| format!("{}: {e}", argv[0]))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if !output.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            argv[0],
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    if output.stdout.len() > MAX_OUTPUT_BYTES {
        return Err(format!("{} wrote {} bytes", argv[0], output.stdout.len()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{} did not print JSON: {e}", argv[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncReadExt;

    fn write(dir: &Path, name: &str, value: Value) {
        std::fs::write(dir.join(name), serde_json::to_vec(&value).unwrap()).unwrap();
    }

    fn contract() -> (Value, Value) {
        (
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
            json!({"type": "object", "properties": {"words": {"type": "integer"}}, "required": ["words"]}),
        )
    }

    #[tokio::test]
    async fn command_and_http_tools_load_from_files_and_run() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = contract();
        write(
            dir.path(),
            "count.json",
            json!({
                "name": "text:count", "capability": "text", "description": "Counts words.",
                "input": input, "output": output,
                "command": ["python3", "-c",
                    "import sys, json; a = json.load(sys.stdin); print(json.dumps({'words': len(a['text'].split())}))"]
            }),
        );
        // A real HTTP endpoint on 127.0.0.1 that counts the words it is sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/count", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = socket.read(&mut chunk).await.unwrap();
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer).to_string();
                if let Some((_, body)) = text.split_once("\r\n\r\n")
                    && let Ok(args) = serde_json::from_str::<Value>(body)
                {
                    let words = args["text"].as_str().unwrap().split_whitespace().count();
                    let body = json!({"words": words}).to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(reply.as_bytes()).await.unwrap();
                    return;
                }
            }
        });
        let (input, output) = contract();
        write(
            dir.path(),
            "remote-count.json",
            json!({
                "name": "text:count-http", "capability": "text", "description": "Counts words.",
                "input": input, "output": output, "http": url
            }),
        );
        write(dir.path(), "broken.json", json!({"name": "x"}));
        write(
            dir.path(),
            "both.json",
            json!({"name": "a:b", "capability": "c", "description": "d", "input": {}, "output": {}}),
        );
        let (tools, errors) = load_dir(dir.path());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("exactly one")),
            "{errors:?}"
        );
        let names: Vec<&str> = tools.iter().map(|t| t.manifest.name.as_str()).collect();
        assert_eq!(names, ["text:count", "text:count-http"]);
        for tool in &tools {
            let out = (tool.handler)(json!({"text": "water the tomatoes now"}))
                .await
                .unwrap();
            assert_eq!(out["words"], 4, "{}", tool.manifest.name);
        }
        // A command that fails says so, with its stderr.
        let failing = load_file_for_test(
            dir.path(),
            json!(["python3", "-c", "import sys; sys.exit('no luck')"]),
        );
        let err = (failing.handler)(json!({"text": "x"})).await.unwrap_err();
        assert!(err.contains("no luck"), "{err}");
    }

    fn load_file_for_test(dir: &Path, command: Value) -> LocalTool {
        let (input, output) = contract();
        write(
            dir,
            "failing.json",
            json!({"name": "text:fail", "capability": "text", "description": "Fails.",
                   "input": input, "output": output, "command": command}),
        );
        load_file(&dir.join("failing.json")).unwrap()
    }
}

//! The core tools every node can offer, each doing real work on the node that runs it:
//! `llm:generate` and `llm:embed` (only where a chat model / embeddings are served),
//! `system:health`, `mesh:route`, `notify:send`. The contracts of `rag:query`, `vision:*` and
//! `matter:*` are here too; their subsystems attach the handlers and announce them.

use std::path::PathBuf;
use std::sync::Arc;

use atmosphere_backends::{ChatMessage, GenerateOptions};
use atmosphere_mesh::Mesh;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Handler, LocalTool, Manifest};
use crate::intent::Intents;
use crate::models::LocalModels;
use crate::servers::ModelServers;

/// Where `notify:send` delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// Webhook URL for the `webhook` channel (POST of a JSON message); unset: no webhook channel.
    pub webhook: Option<String>,
    /// File the `log` channel appends to. Default: `<data_dir>/notifications.log`.
    pub log: Option<PathBuf>,
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
{
    Arc::new(move |args| Box::pin(f(args)))
}

fn manifest(
    name: &str,
    capability: &str,
    description: &str,
    examples: &[&str],
    input: Value,
    output: Value,
    timeout_ms: u64,
) -> Manifest {
    Manifest {
        name: name.into(),
        capability: capability.into(),
        description: description.into(),
        examples: examples.iter().map(|e| (*e).to_owned()).collect(),
        input,
        output,
        version: "1.0.0".into(),
        timeout_ms,
    }
}

/// The core tools this node can run, given what it serves.
pub fn builtin_tools(
    mesh: Mesh,
    node_name: String,
    models: Arc<LocalModels>,
    servers: Arc<ModelServers>,
    intents: Intents,
    notify: NotifySettings,
    data_dir: PathBuf,
) -> Vec<LocalTool> {
    let mut tools = Vec::new();
    if models.llm_info().is_some() {
        let models = models.clone();
        tools.push(LocalTool {
            manifest: manifest(
                "llm:generate",
                "llm",
                "Generate text with this node's language model.",
                &["write a haiku about rain", "answer: what is 2+2"],
                json!({
                    "type": "object",
                    "properties": {
                        "prompt": {"type": "string", "minLength": 1, "maxLength": 32768},
                        "system": {"type": "string", "maxLength": 8192},
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2}
                    },
                    "required": ["prompt"],
                    "additionalProperties": false
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "model": {"type": "string"},
                        "completion_tokens": {"type": "integer", "minimum": 0}
                    },
                    "required": ["text", "model", "completion_tokens"]
                }),
                120_000,
            ),
            handler: handler(move |args| {
                let models = models.clone();
                async move {
                    let mut messages = Vec::new();
                    if let Some(system) = args["system"].as_str() {
                        messages.push(ChatMessage {
                            role: "system".into(),
                            content: system.into(),
                        });
                    }
                    messages.push(ChatMessage::user(
                        args["prompt"].as_str().unwrap_or_default(),
                    ));
                    let options = GenerateOptions {
                        max_tokens: args["max_tokens"].as_u64().unwrap_or(256) as usize,
                        temperature: args["temperature"].as_f64().unwrap_or(0.0),
                        ..GenerateOptions::default()
                    };
                    let model = models
                        .llm_info()
                        .map(|i| i.name.clone())
                        .unwrap_or_default();
                    let generation = models
                        .chat(None, messages, options)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(json!({
                        "text": generation.text.trim(),
                        "model": model,
                        "completion_tokens": generation.completion_tokens,
                    }))
                }
            }),
        });
    }
    if models.serves_embeddings() {
        let models = models.clone();
        tools.push(LocalTool {
            manifest: manifest(
                "llm:embed",
                "embeddings",
                "Embed texts with all-MiniLM-L6-v2 (384 dimensions, unit length).",
                &["embed these sentences", "vectors for my notes"],
                json!({
                    "type": "object",
                    "properties": {
                        "texts": {
                            "type": "array", "minItems": 1, "maxItems": 64,
                            "items": {"type": "string", "maxLength": 8192}
                        }
                    },
                    "required": ["texts"],
                    "additionalProperties": false
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "dimensions": {"type": "integer"},
                        "vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
                    },
                    "required": ["model", "dimensions", "vectors"]
                }),
                60_000,
            ),
            handler: handler(move |args| {
                let models = models.clone();
                async move {
                    let texts: Vec<String> =
                        serde_json::from_value(args["texts"].clone()).map_err(|e| e.to_string())?;
                    let vectors = models.embed(texts).await.map_err(|e| e.to_string())?;
                    Ok(json!({
                        "model": crate::models::MINILM_NAME,
                        "dimensions": vectors.first().map_or(0, Vec::len),
                        "vectors": vectors,
                    }))
                }
            }),
        });
    }
    {
        let mesh = mesh.clone();
        let node_name = node_name.clone();
        let models = models.clone();
        let servers = servers.clone();
        let data_dir = data_dir.clone();
        tools.push(LocalTool {
            manifest: manifest(
                "system:health",
                "system",
                "CPU, memory, disk, load, uptime and model-backend health of the node it runs on.",
                &["how is the server doing", "free memory and disk"],
                json!({"type": "object", "additionalProperties": false}),
                json!({
                    "type": "object",
                    "properties": {
                        "node": {"type": "string"},
                        "cpu_percent": {"type": "number"},
                        "load": {"type": "array", "items": {"type": "number"}},
                        "memory_total_mib": {"type": "integer"},
                        "memory_available_mib": {"type": "integer"},
                        "disks": {"type": "array"},
                        "uptime_s": {"type": "integer"},
                        "backends": {"type": "array"},
                        "mesh_alive": {"type": "integer"}
                    },
                    "required": ["node", "cpu_percent", "load", "memory_total_mib",
                                 "memory_available_mib", "disks", "uptime_s", "backends"]
                }),
                10_000,
            ),
            handler: handler(move |_args| {
                let (mesh, node_name, models, servers, data_dir) = (
                    mesh.clone(),
                    node_name.clone(),
                    models.clone(),
                    servers.clone(),
                    data_dir.clone(),
                );
                async move {
                    let report = tokio::task::spawn_blocking(move || host_report(&data_dir))
                        .await
                        .map_err(|e| e.to_string())??;
                    let mut adverts = models.adverts();
                    adverts.extend(servers.adverts());
                    let backends: Vec<Value> = adverts
                        .iter()
                        .map(|m| {
                            json!({"model": m.name, "backend": m.backend,
                                   "healthy": m.degraded.is_none(), "reason": m.degraded})
                        })
                        .collect();
                    let alive = mesh.status().await.map_or(0, |s| {
                        s.nodes
                            .iter()
                            .filter(|n| n.status == atmosphere_mesh::Status::Alive)
                            .count()
                    });
                    let mut report = report;
                    report["node"] = json!(node_name);
                    report["backends"] = json!(backends);
                    report["mesh_alive"] = json!(alive);
                    Ok(report)
                }
            }),
        });
    }
    {
        let intents = intents.clone();
        tools.push(LocalTool {
            manifest: manifest(
                "mesh:route",
                "routing",
                "Route an intent and return the decision, without running it.",
                &[
                    "where would 'dim the lights' go",
                    "which node handles camera questions",
                ],
                json!({
                    "type": "object",
                    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 16384}},
                    "required": ["text"],
                    "additionalProperties": false
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "capability": {"type": "string"},
                        "class": {"type": "string"},
                        "node": {"type": ["string", "null"]},
                        "score": {"type": "number"},
                        "fallback": {"type": "boolean"},
                        "reason": {"type": "string"}
                    },
                    "required": ["capability", "class", "node", "score", "fallback", "reason"]
                }),
                30_000,
            ),
            handler: handler(move |args| {
                let intents = intents.clone();
                async move {
                    let text = args["text"].as_str().unwrap_or_default();
                    let decision = intents.route(text).await.map_err(|e| e.to_string())?;
                    Ok(json!({
                        "capability": decision.capability,
                        "class": decision.class_label(),
                        "node": decision.chosen().map(|c| c.candidate.node.clone()),
                        "score": decision.score,
                        "fallback": decision.fallback,
                        "reason": decision.reason,
                    }))
                }
            }),
        });
    }
    {
        let node_name = node_name.clone();
        let log = notify
            .log
            .clone()
            .unwrap_or_else(|| data_dir.join("notifications.log"));
        let webhook = notify.webhook.clone();
        let mut channels = vec!["log", "stdout"];
        if webhook.is_some() {
            channels.push("webhook");
        }
        let http =
            atmosphere_backends::adapters::http_client(std::time::Duration::from_secs(10)).ok();
        tools.push(LocalTool {
            manifest: manifest(
                "notify:send",
                "notification",
                "Send a notification: to this node's log file, its standard output (one JSON line), \
                 or its configured webhook.",
                &["tell me when the washing is done", "send an alert to my phone"],
                json!({
                    "type": "object",
                    "properties": {
                        "message": {"type": "string", "minLength": 1, "maxLength": 4000},
                        "title": {"type": "string", "maxLength": 200},
                        "channel": {"enum": channels}
                    },
                    "required": ["message"],
                    "additionalProperties": false
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "channel": {"type": "string"},
                        "delivered": {"type": "boolean"},
                        "detail": {"type": "string"}
                    },
                    "required": ["channel", "delivered", "detail"]
                }),
                15_000,
            ),
            handler: handler(move |args| {
                let (node_name, log, webhook, http) =
                    (node_name.clone(), log.clone(), webhook.clone(), http.clone());
                async move {
                    let channel = args["channel"].as_str().unwrap_or("log").to_owned();
                    let message = json!({
                        "event": "notification",
                        "node": node_name,
                        "title": args["title"].as_str().unwrap_or("Atmosphere"),
                        "message": args["message"],
                        "at": atmosphere_auth::unix_now(),
                    });
                    let detail = match channel.as_str() {
                        "stdout" => {
                            println!("{message}");
                            "written to the node's standard output".to_owned()
                        }
                        "webhook" => {
                            let url = webhook.ok_or("no webhook is configured on this node")?;
                            let http = http.ok_or("no HTTP client")?;
                            let response = http
                                .post(&url)
                                .json(&message)
                                .send()
                                .await
                                .map_err(|e| format!("webhook {url}: {e}"))?;
                            if !response.status().is_success() {
                                return Err(format!("webhook {url} answered {}", response.status()));
                            }
                            format!("posted to {url} ({})", response.status())
                        }
                        _ => {
                            let line = format!("{message}\n");
                            let path = log.clone();
                            tokio::task::spawn_blocking(move || {
                                use std::io::Write;
                                if let Some(dir) = path.parent() {
                                    std::fs::create_dir_all(dir)?;
                                }
                                std::fs::OpenOptions::new()
                                    .create(true)
                                    .append(true)
                                    .open(&path)?
                                    .write_all(line.as_bytes())
                            })
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| format!("{}: {e}", log.display()))?;
                            format!("appended to {}", log.display())
                        }
                    };
                    Ok(json!({"channel": channel, "delivered": true, "detail": detail}))
                }
            }),
        });
    }
    tools
}

/// CPU, memory, disks, load and uptime of this host.
fn host_report(data_dir: &std::path::Path) -> Result<Value, String> {
    use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};
    let mut system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::everything()),
    )
    .map_err(|e| format!("system information: {e}"))?;
    // CPU usage is a difference between two readings.
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    system.refresh_cpu_usage();
    let load = System::load_average().map_err(|e| format!("load average: {e}"))?;
    let disks = Disks::new_with_refreshed_list().map_err(|e| format!("disks: {e}"))?;
    let uptime = System::uptime().map_err(|e| format!("uptime: {e}"))?;
    let mib = |bytes: u64| bytes / (1024 * 1024);
    let gib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    // The disk holding the data dir first, then the others (pseudo file systems skipped).
    let mut rows: Vec<(usize, Value)> = disks
        .iter()
        .filter(|d| d.total_space() > 0)
        .map(|d| {
            let holds_data = data_dir.starts_with(d.mount_point());
            (
                if holds_data {
                    d.mount_point().as_os_str().len()
                } else {
                    0
                },
                json!({
                    "mount": d.mount_point().display().to_string(),
                    "total_gib": (gib(d.total_space()) * 10.0).round() / 10.0,
                    "available_gib": (gib(d.available_space()) * 10.0).round() / 10.0,
                    "holds_data_dir": holds_data,
                }),
            )
        })
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.0));
    Ok(json!({
        "cpu_percent": (f64::from(system.global_cpu_usage()) * 10.0).round() / 10.0,
        "load": [load.one, load.five, load.fifteen],
        "memory_total_mib": mib(system.total_memory()),
        "memory_available_mib": mib(system.available_memory()),
        "disks": rows.into_iter().map(|(_, v)| v).take(8).collect::<Vec<_>>(),
        "uptime_s": uptime,
    }))
}

/// The contracts of the core tools whose subsystems are still to come (knowledge, vision,
/// Matter). Fixed now so callers and agents can be written against them; no node announces them
/// until it can run them.
pub fn pending_contracts() -> Vec<Manifest> {
    let text = |max: u64| json!({"type": "string", "minLength": 1, "maxLength": max});
    let source = json!({
        "description": "camera name, image URL or path of a frames directory",
        "type": "string", "minLength": 1, "maxLength": 2048
    });
    vec![
        manifest(
            "rag:query",
            "rag",
            "Answer from the household's documents: retrieve passages and cite them.",
            &["what does our IoT policy say about cameras"],
            json!({
                "type": "object",
                "properties": {
                    "query": text(4096),
                    "collection": text(128),
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 50}
                },
                "required": ["query"], "additionalProperties": false
            }),
            json!({
                "type": "object",
                "properties": {
                    "answer": {"type": "string"},
                    "passages": {"type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "document": {"type": "string"}, "chunk": {"type": "integer"},
                            "text": {"type": "string"}, "score": {"type": "number"},
                            "node": {"type": "string"}
                        },
                        "required": ["document", "chunk", "text", "score"]
                    }}
                },
                "required": ["passages"]
            }),
            120_000,
        ),
        manifest(
            "vision:analyze",
            "vision",
            "Describe what a camera or image shows, with anomalies.",
            &["check the garage camera"],
            json!({
                "type": "object",
                "properties": {"source": source.clone(), "question": text(2048)},
                "required": ["source"], "additionalProperties": false
            }),
            json!({
                "type": "object",
                "properties": {
                    "summary": {"type": "string"},
                    "objects": {"type": "array", "items": {"type": "string"}},
                    "anomalies": {"type": "array", "items": {"type": "string"}}
                },
                "required": ["summary", "objects", "anomalies"]
            }),
            60_000,
        ),
        manifest(
            "vision:detect",
            "vision",
            "Detect objects (people, vehicles, animals, …) in an image with boxes and scores.",
            &["is there a car in the driveway"],
            json!({
                "type": "object",
                "properties": {
                    "source": source,
                    "min_score": {"type": "number", "minimum": 0, "maximum": 1}
                },
                "required": ["source"], "additionalProperties": false
            }),
            json!({
                "type": "object",
                "properties": {"detections": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "label": {"type": "string"},
                        "score": {"type": "number"},
                        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
                    },
                    "required": ["label", "score", "box"]
                }}},
                "required": ["detections"]
            }),
            60_000,
        ),
        manifest(
            "matter:list_devices",
            "matter",
            "The Matter devices this node controls, with their rooms and current state.",
            &["which lights are on"],
            json!({"type": "object", "additionalProperties": false}),
            json!({
                "type": "object",
                "properties": {"devices": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"}, "name": {"type": "string"},
                        "room": {"type": "string"}, "kind": {"type": "string"},
                        "state": {"type": "object"}
                    },
                    "required": ["id", "name", "kind", "state"]
                }}},
                "required": ["devices"]
            }),
            10_000,
        ),
        manifest(
            "matter:execute",
            "matter",
            "Command a Matter device: on, off, toggle, level, …",
            &["turn on the garage lights"],
            json!({
                "type": "object",
                "properties": {
                    "device": text(256),
                    "action": {"enum": ["on", "off", "toggle", "level", "read"]},
                    "value": {"type": "number"}
                },
                "required": ["device", "action"], "additionalProperties": false
            }),
            json!({
                "type": "object",
                "properties": {
                    "device": {"type": "string"},
                    "done": {"type": "boolean"},
                    "state": {"type": "object"}
                },
                "required": ["device", "done", "state"]
            }),
            15_000,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_contracts_are_valid_and_cover_the_five_remaining_core_tools() {
        let names: Vec<String> = pending_contracts()
            .iter()
            .map(|m| {
                m.check().unwrap();
                m.name.clone()
            })
            .collect();
        assert_eq!(
            names,
            [
                "rag:query",
                "vision:analyze",
                "vision:detect",
                "matter:list_devices",
                "matter:execute"
            ]
        );
    }
}

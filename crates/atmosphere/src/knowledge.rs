//! `atmosphere knowledge …`: add documents to the mesh (chunked, embedded and placed on their
//! owners), search them, and see where the chunks live and whether each has its copies.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use atmosphere_node::api::{KnowledgeAddRequest, KnowledgeQuery};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum KnowledgeCommand {
    /// Add Markdown, text and PDF files (or directories of them) to a collection: each is cut
    /// into chunks on its headings and paragraphs, embedded, and stored on `replicas` nodes.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = "default")]
        collection: String,
    },
    /// The passages nearest a question, from the nodes likely to hold them (no answer is
    /// written: `atmosphere intent` does that).
    Query {
        text: String,
        #[arg(long)]
        collection: Option<String>,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
    },
    /// Where the chunks live, and how many lack copies.
    Status,
}

pub async fn run(command: KnowledgeCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        KnowledgeCommand::Add { paths, collection } => {
            let mut absolute = Vec::new();
            for path in paths {
                absolute.push(
                    std::fs::canonicalize(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                );
            }
            let response = client
                .stream(
                    "/v1/knowledge/add",
                    &KnowledgeAddRequest {
                        collection,
                        paths: absolute,
                    },
                )
                .await?;
            follow(response, json, true).await
        }
        KnowledgeCommand::Query {
            text,
            collection,
            top_k,
        } => {
            let outcome: Value = client
                .post(
                    "/v1/knowledge/query",
                    &KnowledgeQuery {
                        query: text,
                        collection,
                        top_k: Some(top_k),
                    },
                )
                .await?;
            render::output(json, &outcome, |o| {
                let mut out = String::new();
                for (n, hit) in o["hits"].as_array().into_iter().flatten().enumerate() {
                    let heading = hit["heading"].as_str().unwrap_or_default();
                    out += &format!(
                        "[{}] {:.2}  {}{} (chunk {}, from {})\n    {}\n",
                        n + 1,
                        hit["score"].as_f64().unwrap_or_default(),
                        hit["document"].as_str().unwrap_or_default(),
                        if heading.is_empty() {
                            String::new()
                        } else {
                            format!(" › {heading}")
                        },
                        hit["index"],
                        hit["node"].as_str().unwrap_or_default(),
                        hit["text"]
                            .as_str()
                            .unwrap_or_default()
                            .chars()
                            .take(200)
                            .collect::<String>()
                            .replace('\n', " ")
                    );
                }
                let asked: Vec<String> = o["asked"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match a["error"].as_str() {
                        Some(e) => {
                            format!("{} failed ({e})", a["node"].as_str().unwrap_or_default())
                        }
                        None => format!(
                            "{} {} of {}",
                            a["node"].as_str().unwrap_or_default(),
                            a["used"],
                            a["returned"]
                        ),
                    })
                    .collect();
                out += &format!(
                    "asked: {}; {:.0} ms, {} bytes over the mesh\n",
                    asked.join(", "),
                    o["ms"].as_f64().unwrap_or_default(),
                    o["bytes_out"].as_u64().unwrap_or(0) + o["bytes_in"].as_u64().unwrap_or(0)
                );
                out
            })
        }
        KnowledgeCommand::Status => {
            let status: Value = client.get("/v1/knowledge/status").await?;
            render::output(json, &status, |s| {
                let mut out = format!(
                    "{} chunks, {} copies on {} live nodes (replicas {}); {}\n",
                    s["chunks"],
                    s["copies"],
                    s["live_nodes"],
                    s["replicas"],
                    if s["healthy"] == true {
                        "every chunk has its copies".to_owned()
                    } else {
                        format!(
                            "{} chunks lack copies (being re-replicated)",
                            s["under_replicated"]
                        )
                    }
                );
                for node in s["nodes"].as_array().into_iter().flatten() {
                    let collections: Vec<String> = node["collections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            format!(
                                "{} ({} chunks of {} documents)",
                                c["collection"].as_str().unwrap_or_default(),
                                c["chunks"],
                                c["documents"]
                            )
                        })
                        .collect();
                    out += &format!(
                        "  {:16} {:>6} chunks  {}{}\n",
                        node["node"].as_str().unwrap_or_default(),
                        node["chunks"],
                        collections.join(", "),
                        node["error"]
                            .as_str()
                            .map(|e| format!("  (unreachable: {e})"))
                            .unwrap_or_default()
                    );
                }
                out
            })
        }
    }
}

/// Follows an `add`: a bar per document on stderr (or each event on stdout with `--json`), a
/// line per document done; fails if any document failed.
/// Reads an add's progress to its end: a bar per document and a line when each is placed (or
/// the events as JSON lines with `json`; nothing at all unless `echo`).
pub(crate) async fn follow(mut response: reqwest::Response, json: bool, echo: bool) -> Result<()> {
    let mut pending = Vec::new();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut failed = Vec::new();
    let mut done = 0usize;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the node stopped answering mid-add")?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line)
                .context("the node's progress is not what this CLI expects")?;
            if json && echo {
                println!("{}", String::from_utf8_lossy(&line).trim_end());
            }
            match event["event"].as_str() {
                Some("reading") if !json && echo => {
                    let total = event["total"].as_u64().unwrap_or(0);
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::with_draw_target(
                            Some(total),
                            indicatif::ProgressDrawTarget::stderr_with_hz(10),
                        );
                        if let Ok(style) = indicatif::ProgressStyle::with_template(
                            "{msg:24} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                        ) {
                            b.set_style(style.progress_chars("=> "));
                        }
                        b
                    });
                    b.set_length(total);
                    b.set_message(event["document"].as_str().unwrap_or_default().to_owned());
                    b.set_position(event["bytes"].as_u64().unwrap_or(0));
                }
                Some("done") => {
                    done += 1;
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    if !json && echo {
                        let placed: Vec<String> = event["placed"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(node, n)| format!("{node} {n}"))
                            .collect();
                        println!(
                            "{}: {} chunks in {:.0} ms → {}",
                            event["document"].as_str().unwrap_or_default(),
                            event["chunks"],
                            event["ms"].as_f64().unwrap_or_default(),
                            placed.join(", ")
                        );
                    }
                }
                Some("failed") => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    let error = event["error"].as_str().unwrap_or_default().to_owned();
                    if !json && echo {
                        eprintln!("failed: {error}");
                    }
                    failed.push(error);
                }
                _ => {}
            }
        }
    }
    if done == 0 && failed.is_empty() {
        return Err(anyhow!("the node sent no progress"));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} documents failed: {}",
            failed.len(),
            failed.len() + done,
            failed.join("; ")
        );
    }
    Ok(())
}

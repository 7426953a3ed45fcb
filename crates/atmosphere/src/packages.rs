//! `atmosphere model …`: pack and seal a model, verify a package, move it between nodes over the
//! mesh (push, pull) or on a stick (export, import), with a progress bar or `--json` events.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use atmosphere_backends::package::{self, Manifest};
use atmosphere_node::api::{ImportRequest, PackagesView, PullRequest, PushRequest, SealRequest};
use atmosphere_node::packages::Progress;
use clap::Subcommand;

use crate::client::Client;
use crate::render;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Pack a model file (and its llamafarm.yaml) into a package directory with a manifest of
    /// BLAKE3 hashes per 4 MiB chunk and of the whole, sealed by the local node's key; streamed,
    /// never held in memory.
    Pack {
        model: PathBuf,
        /// The LlamaFarm project file that travels with it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The package directory to create.
        #[arg(short, long)]
        out: PathBuf,
        /// Name in the manifest (default: from the GGUF header, else the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Seal an existing package with the local node's key (what `pack` does at the end).
    Seal { package: PathBuf },
    /// Check every chunk of a package against its manifest; says which chunk is damaged.
    Verify { package: PathBuf },
    /// The packages the local node holds, who holds which in the mesh, and recent transfers.
    List,
    /// Install a package directory (e.g. from a USB stick) on the local node: its seal and every
    /// chunk are checked before anything is installed. Needs no network.
    Import { dir: PathBuf },
    /// Copy a package (a directory, or the name of one the local node holds) into DIR/NAME,
    /// checking every chunk on the way: for a USB stick.
    Export { package: String, dir: PathBuf },
    /// Send a package the local node holds (or a package directory, imported first) to NODE
    /// over the mesh; NODE pulls it, checks each chunk, installs and serves it.
    Push {
        package: String,
        #[arg(long)]
        to: String,
        /// At most this many bytes per second (e.g. 20M, 512K).
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
    },
    /// Fetch a package by name from the nodes that hold it (several at once when more than one
    /// does); resumes an interrupted pull, fetching only the missing chunks.
    Pull {
        name: String,
        /// Pull from these nodes only (repeatable; default: every live holder).
        #[arg(long)]
        from: Vec<String>,
        /// At most this many bytes per second (e.g. 20M, 512K).
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
    },
}

/// `20M`, `512K`, `1G` or plain bytes → bytes per second.
fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, scale) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1u64 << 10),
        Some((at, 'm' | 'M')) => (&text[..at], 1 << 20),
        Some((at, 'g' | 'G')) => (&text[..at], 1 << 30),
        _ => (text, 1),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate; use e.g. 20M, 512K or 1048576"))?;
    if value <= 0.0 {
        return Err("the rate must be positive".into());
    }
    Ok((value * scale as f64) as u64)
}

pub async fn run(command: ModelCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        ModelCommand::Pack {
            model,
            config,
            out,
            name,
        } => pack(client, model, config, out, name, json).await,
        ModelCommand::Seal { package } => {
            let seal = seal(client, &package).await?;
            let out = serde_json::json!({"package": package, "seal": seal});
            render::output(json, &out, |o| {
                format!(
                    "Sealed {} by {}.\n",
                    o["package"].as_str().unwrap_or_default(),
                    o["seal"]["signer_name"].as_str().unwrap_or_default()
                )
            })
        }
        ModelCommand::Verify { package } => {
            let dir = package.clone();
            let manifest = tokio::task::spawn_blocking(move || package::verify(&dir))
                .await
                .context("the verifying task failed")??;
            let sealed_by = std::fs::read(package.join(package::SEAL))
                .ok()
                .and_then(|b| serde_json::from_slice::<atmosphere_auth::Seal>(&b).ok())
                .map(|s| s.signer_name);
            let out = serde_json::json!({"manifest": manifest, "sealed_by": sealed_by});
            render::output(json, &out, |o| {
                format!(
                    "{}: all {} chunks and the whole file verify; {}.\n",
                    o["manifest"]["name"].as_str().unwrap_or_default(),
                    o["manifest"]["chunks"].as_array().map_or(0, Vec::len),
                    match o["sealed_by"].as_str() {
                        Some(by) => format!("sealed by {by} (the seal is checked on import)"),
                        None => "NOT sealed: run `atmosphere model seal`".into(),
                    }
                )
            })
        }
        ModelCommand::List => {
            let view: PackagesView = client.get("/v1/packages").await?;
            render::output(json, &view, list_text)
        }
        ModelCommand::Import { dir } => {
            let path = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let response = client
                .stream("/v1/packages/import", &ImportRequest { path })
                .await?;
            follow(response, json).await
        }
        ModelCommand::Export { package, dir } => export(client, &package, &dir, json).await,
        ModelCommand::Push {
            package,
            to,
            limit_rate,
        } => {
            let name = if Path::new(&package).is_dir() {
                let path = std::path::absolute(&package)?;
                let manifest = package::read_manifest(&path)?;
                let response = client
                    .stream("/v1/packages/import", &ImportRequest { path })
                    .await?;
                follow(response, json).await?;
                manifest.name
            } else {
                package
            };
            let response = client
                .stream(
                    "/v1/packages/push",
                    &PushRequest {
                        name,
                        to,
                        limit_rate,
                    },
                )
                .await?;
            follow(response, json).await
        }
        ModelCommand::Pull {
            name,
            from,
            limit_rate,
        } => {
            let response = client
                .stream(
                    "/v1/packages/pull",
                    &PullRequest {
                        name,
                        from,
                        limit_rate,
                    },
                )
                .await?;
            follow(response, json).await
        }
    }
}

async fn pack(
    client: &Client,
    model: PathBuf,
    config: Option<PathBuf>,
    out: PathBuf,
    name: Option<String>,
    json: bool,
) -> Result<()> {
    let name = name.unwrap_or_else(|| {
        atmosphere_backends::ChatModel::inspect(atmosphere_backends::Engine::best(), &model)
            .map(|info| info.name)
            .unwrap_or_else(|_| {
                model
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
    });
    let target = out.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        package::pack(&model, config.as_deref(), &name, &target)
    })
    .await
    .context("the packing task failed")??;
    let seal = seal(client, &out).await.with_context(|| {
        format!(
            "packed into {} but could not seal it; seal it with `atmosphere model seal {}` once the node is up and joined",
            out.display(),
            out.display()
        )
    })?;
    let packed = serde_json::json!({"package": out, "manifest": manifest, "seal": seal});
    render::output(json, &packed, |p| {
        format!(
            "Packed {} ({}, {} chunks, BLAKE3 {}) into {}, sealed by {}\n",
            p["manifest"]["name"].as_str().unwrap_or_default(),
            bytes(p["manifest"]["size"].as_u64().unwrap_or(0)),
            p["manifest"]["chunks"].as_array().map_or(0, Vec::len),
            p["manifest"]["blake3"].as_str().unwrap_or_default(),
            p["package"].as_str().unwrap_or_default(),
            p["seal"]["signer_name"].as_str().unwrap_or_default(),
        )
    })
}

/// Asks the local node to seal the package in `dir`, and writes `seal.json`.
async fn seal(client: &Client, dir: &Path) -> Result<atmosphere_auth::Seal> {
    let manifest = std::fs::read_to_string(dir.join(package::MANIFEST))
        .with_context(|| format!("{} is not a package", dir.display()))?;
    let seal: atmosphere_auth::Seal = client
        .post("/v1/packages/seal", &SealRequest { manifest })
        .await?;
    let path = dir.join(package::SEAL);
    std::fs::write(&path, serde_json::to_vec_pretty(&seal)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(seal)
}

async fn export(client: &Client, package: &str, dir: &Path, json: bool) -> Result<()> {
    let from = if Path::new(package).is_dir() {
        PathBuf::from(package)
    } else {
        let view: PackagesView = client.get("/v1/packages").await?;
        view.held
            .into_iter()
            .find(|h| h.name == package)
            .map(|h| h.dir)
            .ok_or_else(|| {
                anyhow!("{package:?} is neither a package directory nor a package the local node holds; see `atmosphere model list`")
            })?
    };
    let manifest: Manifest = package::read_manifest(&from)?;
    if !from.join(package::SEAL).is_file() {
        bail!(
            "{} is not sealed; the importing node would refuse it: run `atmosphere model seal {}` first",
            from.display(),
            from.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let to = dir.join(&manifest.name);
    let bar = bar(json, manifest.size);
    let (bar_in, target) = (bar.clone(), to.clone());
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        package::copy_verified(&from, &target, |copied| bar_in.set_position(copied))
    })
    .await
    .context("the copying task failed")??;
    bar.finish_and_clear();
    let out = serde_json::json!({
        "exported": to,
        "name": manifest.name,
        "bytes": manifest.size,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    render::output(json, &out, |o| {
        format!(
            "Exported {} ({}) to {} in {} ms, every chunk checked.\n",
            o["name"].as_str().unwrap_or_default(),
            bytes(o["bytes"].as_u64().unwrap_or(0)),
            o["exported"].as_str().unwrap_or_default(),
            o["elapsed_ms"]
        )
    })
}

fn bar(json: bool, total: u64) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:12} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Follows a transfer's NDJSON progress: a bar on stderr (or every event on stdout with
/// `--json`), then a summary; fails when the transfer failed.
async fn follow(mut response: reqwest::Response, json: bool) -> Result<()> {
    let mut pending = Vec::new();
    let mut last: Option<Progress> = None;
    let mut progress_bar: Option<indicatif::ProgressBar> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the node stopped answering mid-transfer")?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let state: Progress = serde_json::from_slice(&line)
                .context("the node's progress is not what this CLI expects")?;
            if json {
                println!("{}", String::from_utf8_lossy(&line).trim_end());
            } else if state.total_bytes > 0 {
                let bar = progress_bar.get_or_insert_with(|| bar(false, state.total_bytes));
                bar.set_message(state.state.clone());
                bar.set_position(state.received_bytes + state.reused_bytes);
            }
            last = Some(state);
        }
    }
    if let Some(bar) = progress_bar {
        bar.finish_and_clear();
    }
    let last = last.ok_or_else(|| anyhow!("the node sent no progress"))?;
    if last.state != "done" {
        bail!(
            "{}",
            last.error
                .clone()
                .unwrap_or_else(|| format!("the transfer ended in state {:?}", last.state))
        );
    }
    if !json {
        print!("{}", summary(&last));
    }
    Ok(())
}

fn summary(p: &Progress) -> String {
    let secs = p.elapsed_ms as f64 / 1000.0;
    let mut out = format!(
        "Installed {} (model {}): {} in {secs:.2} s",
        p.name,
        p.model.as_deref().unwrap_or("-"),
        bytes(p.received_bytes),
    );
    if p.received_bytes > 0 {
        out += &format!(" ({}/s)", bytes(p.bytes_per_second));
    }
    if !p.sources.is_empty() {
        let sources: Vec<String> = p
            .sources
            .iter()
            .map(|(node, n)| format!("{node} {}", bytes(*n)))
            .collect();
        out += &format!(" from {}", sources.join(", "));
    }
    if p.chunks_reused > 0 {
        out += &format!(
            "; {} of {} chunks ({}) were already here",
            p.chunks_reused,
            p.chunks,
            bytes(p.reused_bytes)
        );
    }
    out.push('\n');
    for rejected in &p.rejected {
        out += &format!("  refused: {rejected}\n");
    }
    out
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn list_text(view: &PackagesView) -> String {
    let mut out = String::new();
    if view.held.is_empty() {
        out += "This node holds no packages.\n";
    } else {
        out += "Packages here:\n";
        for h in &view.held {
            out += &format!(
                "  {:24} {:>10}  packed by {}  {}\n",
                h.name,
                bytes(h.size),
                h.packed_by,
                h.dir.display()
            );
        }
    }
    if !view.holders.is_empty() {
        out += "Held in the mesh:\n";
        for (name, nodes) in &view.holders {
            out += &format!("  {name:24} {}\n", nodes.join(", "));
        }
    }
    for t in &view.transfers {
        out += &format!(
            "Transfer {}: {} ({} received{})\n",
            t.name,
            t.state,
            bytes(t.received_bytes),
            t.error
                .as_ref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_read_like_curl() {
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("512k"), Ok(512 << 10));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1M").is_err());
    }
}

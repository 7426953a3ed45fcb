//! Model packages on a node: the packages it holds (`<data_dir>/packages/<name>/`), sealing a
//! package with this node's key, importing one from a directory (a USB stick), pulling one from
//! the nodes that hold it — several at once, resumable, throttle-able, every chunk checked against
//! the signed manifest as it lands — and installing it: the model is registered with the node's
//! engine and advertised. Nothing is installed until everything checked out; a failed or
//! interrupted install leaves the previous version untouched.
//!
//! Wire: routed work of kind [`WORK_KIND`]; requests are JSON, a chunk's answer is its raw bytes.
//! Holders announce their packages in the gossiped record under [`RECORD_KEY`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atmosphere_auth::Seal;
use atmosphere_backends::package::{self, Manifest, PackageError, Receiving};
use atmosphere_mesh::{Mesh, Status};
use atmosphere_proto::{ErrorCode, NodeId, Response, RoutedReply};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::models::LocalModels;
use crate::trust::Trust;

pub const WORK_KIND: &str = "package";
pub const RECORD_KEY: &str = "packages";
/// Chunk requests in flight per source: enough to keep a QUIC stream busy while the last chunk
/// is checked and written.
const WINDOW_PER_SOURCE: usize = 6;
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
const INCOMING: &str = ".incoming";

/// Why a package operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackagesError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("the package is not sealed by a member of this mesh: {0}")]
    Seal(String),
    #[error("{0} has no seal.json: pack it with `atmosphere model pack` on a node of this mesh")]
    Unsealed(PathBuf),
    #[error("no package called {0:?} here; see `atmosphere model list`")]
    Unknown(String),
    #[error("no live node holds a package called {0:?}; see `atmosphere model list`")]
    NoSource(String),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("the transfer failed: {0}")]
    Transfer(String),
    #[error("the package holds a model this node cannot load: {0}; nothing was installed")]
    Load(String),
    #[error("this node has no token yet, so it cannot seal a package: join a mesh first")]
    NoToken,
    #[error("{0}")]
    Io(String),
}

/// A package this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub name: String,
    pub dir: PathBuf,
    pub size: u64,
    pub blake3: String,
    pub file: String,
    /// Who packed it (from the seal).
    pub packed_by: String,
    pub signed_at: u64,
}

/// What a holder announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    pub name: String,
    pub blake3: String,
    pub size: u64,
}

/// How a transfer (pull, push or import) is going; the last one says `done` or `failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub name: String,
    /// `starting`, `receiving`, `installing`, `done`, `failed`.
    pub state: String,
    pub total_bytes: u64,
    /// Bytes already on disk from an interrupted attempt, kept and not fetched again.
    pub reused_bytes: u64,
    /// Bytes received (or copied) in this attempt.
    pub received_bytes: u64,
    pub chunks: usize,
    pub chunks_reused: usize,
    /// Bytes received from each source, by node name.
    pub sources: BTreeMap<String, u64>,
    /// Chunks refused and sources dropped, with the reason.
    pub rejected: Vec<String>,
    pub elapsed_ms: u64,
    pub bytes_per_second: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model registered on completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Progress {
    pub fn finished(&self) -> bool {
        self.state == "done" || self.state == "failed"
    }
}

/// Requests between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Work {
    /// The manifest (exact text), seal and config of a package held here.
    Describe { name: String },
    /// Chunk `index` of package `name` whose model hashes to `blake3`; answered with raw bytes.
    Chunk {
        name: String,
        blake3: String,
        index: usize,
    },
    /// Pull `name` from `from` (what `push` asks of its target); answered at once.
    Pull {
        name: String,
        from: Vec<NodeId>,
        limit: Option<u64>,
    },
    /// The state of this node's latest transfer of `name`.
    Progress { name: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Description {
    manifest: String,
    seal: Seal,
    config: Option<String>,
}

/// The node's package service; cheap to clone.
#[derive(Debug, Clone)]
pub struct Packages {
    inner: Arc<Inner>,
}

/// A package held: what is shown, what is sent on `describe`, the parsed manifest (read once,
/// not per chunk served).
type HeldEntry = (Held, Description, Arc<Manifest>);

#[derive(Debug)]
struct Inner {
    mesh: Mesh,
    dir: PathBuf,
    secret: [u8; 32],
    trust: Arc<Trust>,
    models: Arc<LocalModels>,
    held: RwLock<BTreeMap<String, HeldEntry>>,
    remote: Mutex<HashMap<NodeId, Vec<Announced>>>,
    transfers: Mutex<HashMap<String, watch::Receiver<Progress>>>,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> PackagesError {
    PackagesError::Io(format!("{what} {}: {error}", path.display()))
}

impl Packages {
    /// Opens the package store under `data_dir` and registers every package it holds with
    /// `models` (they were checked when they were installed).
    pub fn open(
        mesh: Mesh,
        data_dir: &Path,
        secret: [u8; 32],
        trust: Arc<Trust>,
        models: Arc<LocalModels>,
    ) -> Result<Self, PackagesError> {
        let dir = data_dir.join("packages");
        std::fs::create_dir_all(dir.join(INCOMING)).map_err(|e| io_error("create", &dir, e))?;
        let this = Self {
            inner: Arc::new(Inner {
                mesh,
                dir: dir.clone(),
                secret,
                trust,
                models,
                held: RwLock::new(BTreeMap::new()),
                remote: Mutex::new(HashMap::new()),
                transfers: Mutex::new(HashMap::new()),
            }),
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error("read", &dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            match this.load_held(&path) {
                Ok(()) => {}
                Err(e) => warn!("package {} skipped: {e}", path.display()),
            }
        }
        Ok(this)
    }

    fn load_held(&self, path: &Path) -> Result<(), PackagesError> {
        let (manifest, description) = describe_dir(path)?;
        let model = path.join(&manifest.file);
        let size = std::fs::metadata(&model)
            .map_err(|e| io_error("read", &model, e))?
            .len();
        if size != manifest.size {
            return Err(PackageError::Size {
                file: manifest.file,
                expected: manifest.size,
                actual: size,
            }
            .into());
        }
        let model_name = if manifest.format == "gguf" {
            Some(
                self.inner
                    .models
                    .install(&model)
                    .map_err(|e| PackagesError::Load(e.to_string()))?
                    .name,
            )
        } else {
            None
        };
        info!(package = %manifest.name, model = ?model_name, "package loaded");
        self.remember(path, &manifest, description);
        Ok(())
    }

    fn remember(&self, path: &Path, manifest: &Manifest, description: Description) {
        let held = Held {
            name: manifest.name.clone(),
            dir: path.to_owned(),
            size: manifest.size,
            blake3: manifest.blake3.clone(),
            file: manifest.file.clone(),
            packed_by: description.seal.signer_name.clone(),
            signed_at: description.seal.signed_at,
        };
        self.inner
            .held
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                manifest.name.clone(),
                (held, description, Arc::new(manifest.clone())),
            );
    }

    /// The packages held here.
    pub fn held(&self) -> Vec<Held> {
        self.inner
            .held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(h, _, _)| h.clone())
            .collect()
    }

    /// Which live nodes announce each package (this node included).
    pub async fn holders(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Ok(status) = self.inner.mesh.status().await else {
            return out;
        };
        let remote = self.inner.remote.lock().unwrap_or_else(|e| e.into_inner());
        for node in status.nodes.iter().filter(|n| n.status == Status::Alive) {
            let names: Vec<String> = if node.is_self {
                self.held().into_iter().map(|h| h.name).collect()
            } else {
                remote
                    .get(&node.id)
                    .map(|list| list.iter().map(|a| a.name.clone()).collect())
                    .unwrap_or_default()
            };
            for name in names {
                out.entry(name).or_default().push(node.name.clone());
            }
        }
        out
    }

    /// Transfers this node ran or runs, newest state of each.
    pub fn transfers(&self) -> Vec<Progress> {
        self.inner
            .transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|rx| rx.borrow().clone())
            .collect()
    }

    /// Seals a manifest with this node's key and token.
    pub fn seal(&self, manifest: &str) -> Result<Seal, PackagesError> {
        Manifest::parse(manifest.as_bytes()).map_err(|reason| {
            PackagesError::Package(PackageError::NotAPackage(PathBuf::from("manifest"), reason))
        })?;
        let token = self
            .inner
            .trust
            .credential_token()
            .ok_or(PackagesError::NoToken)?;
        Seal::sign(
            &self.inner.secret,
            &token,
            manifest.as_bytes(),
            atmosphere_auth::unix_now(),
        )
        .map_err(|e| PackagesError::Seal(e.to_string()))
    }

    fn check_seal(&self, manifest: &str, seal: &Seal) -> Result<(), PackagesError> {
        self.inner
            .trust
            .check_seal(seal, manifest.as_bytes())
            .map(|_| ())
            .map_err(PackagesError::Seal)
    }

    /// Announces the packages held here.
    pub async fn announce(&self) {
        let list: Vec<Announced> = self
            .held()
            .into_iter()
            .map(|h| Announced {
                name: h.name,
                blake3: h.blake3,
                size: h.size,
            })
            .collect();
        let bytes = serde_json::to_vec(&list).unwrap_or_default();
        let _ = self.inner.mesh.set_value(RECORD_KEY, bytes, true).await;
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        match serde_json::from_slice::<Vec<Announced>>(bytes) {
            Ok(list) if list.len() <= 1024 => {
                self.inner
                    .remote
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(node, list);
            }
            Ok(list) => warn!(peer = %node.short(), "{} packages announced; ignored", list.len()),
            Err(e) => warn!(peer = %node.short(), "bad package list: {e}"),
        }
    }

    /// A transfer's progress channel, registered so peers and the API can follow it.
    fn track(&self, name: &str) -> watch::Sender<Progress> {
        let (tx, rx) = watch::channel(Progress {
            name: name.to_owned(),
            state: "starting".into(),
            ..Progress::default()
        });
        self.inner
            .transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), rx);
        tx
    }

    fn running(&self, name: &str) -> Option<watch::Receiver<Progress>> {
        self.inner
            .transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|rx| !rx.borrow().finished())
            .cloned()
    }

    /// Imports the package in directory `from` (a USB stick): checks its seal and every chunk
    /// while copying it in, then installs it. Works with no network at all.
    pub fn import(&self, from: PathBuf) -> watch::Receiver<Progress> {
        let name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "package".into());
        let tx = self.track(&format!("import:{name}"));
        let rx = tx.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = this.import_inner(&from, &tx, started).await;
            finish(&tx, result, started);
        });
        rx
    }

    async fn import_inner(
        &self,
        from: &Path,
        tx: &watch::Sender<Progress>,
        started: Instant,
    ) -> Result<String, PackagesError> {
        let from_owned = from.to_owned();
        let (manifest, description) =
            tokio::task::spawn_blocking(move || describe_dir(&from_owned))
                .await
                .map_err(|e| PackagesError::Io(e.to_string()))??;
        self.check_seal(&description.manifest, &description.seal)?;
        tx.send_modify(|p| {
            p.name = manifest.name.clone();
            p.state = "receiving".into();
            p.total_bytes = manifest.size;
            p.chunks = manifest.chunks.len();
        });
        let staged = self
            .inner
            .dir
            .join(INCOMING)
            .join(format!("{}.import", manifest.name));
        let (from_owned, staged_owned, progress) = (from.to_owned(), staged.clone(), tx.clone());
        tokio::task::spawn_blocking(move || {
            package::copy_verified(&from_owned, &staged_owned, |copied| {
                progress.send_modify(|p| {
                    p.received_bytes = copied;
                    p.elapsed_ms = started.elapsed().as_millis() as u64;
                    p.bytes_per_second = rate(copied, started);
                });
            })
        })
        .await
        .map_err(|e| PackagesError::Io(e.to_string()))??;
        tx.send_modify(|p| p.state = "installing".into());
        self.install(&staged, &manifest, description).await
    }

    /// Moves the checked package `staged` into place and registers its model; on any failure the
    /// previous version (if any) is back in place and nothing new is installed.
    async fn install(
        &self,
        staged: &Path,
        manifest: &Manifest,
        description: Description,
    ) -> Result<String, PackagesError> {
        let final_dir = self.inner.dir.join(&manifest.name);
        let old = self
            .inner
            .dir
            .join(INCOMING)
            .join(format!("{}.previous", manifest.name));
        let _ = std::fs::remove_dir_all(&old);
        let had_previous = final_dir.exists();
        if had_previous {
            std::fs::rename(&final_dir, &old).map_err(|e| io_error("move aside", &final_dir, e))?;
        }
        let restore = |error: PackagesError| {
            let _ = std::fs::remove_dir_all(&final_dir);
            if had_previous {
                let _ = std::fs::rename(&old, &final_dir);
                let _ = self.inner.models.install(&final_dir.join(&manifest.file));
            }
            error
        };
        if let Err(e) = std::fs::rename(staged, &final_dir) {
            return Err(restore(io_error("install", &final_dir, e)));
        }
        let model = final_dir.join(&manifest.file);
        let registered = if manifest.format == "gguf" {
            match self.inner.models.install(&model) {
                Ok(info) => Some(info.name),
                Err(e) => return Err(restore(PackagesError::Load(e.to_string()))),
            }
        } else {
            None
        };
        let _ = std::fs::remove_dir_all(&old);
        self.remember(&final_dir, manifest, description);
        self.announce().await;
        info!(package = %manifest.name, model = ?registered, "package installed");
        Ok(registered.unwrap_or_else(|| manifest.name.clone()))
    }

    /// Pulls package `name` from `from` (node names or ids; every live holder when empty),
    /// at most `limit` bytes per second. Joins a pull of the same package already running.
    pub async fn pull(
        &self,
        name: &str,
        from: &[String],
        limit: Option<u64>,
    ) -> Result<watch::Receiver<Progress>, PackagesError> {
        let mut sources = Vec::new();
        for node in from {
            let id = self
                .inner
                .mesh
                .resolve(node)
                .await
                .map_err(|_| PackagesError::UnknownNode(node.clone()))?;
            sources.push(id);
        }
        Ok(self.pull_from(name, sources, limit))
    }

    fn pull_from(
        &self,
        name: &str,
        sources: Vec<NodeId>,
        limit: Option<u64>,
    ) -> watch::Receiver<Progress> {
        if let Some(rx) = self.running(name) {
            return rx;
        }
        let tx = self.track(name);
        let rx = tx.subscribe();
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = this.pull_inner(&name, sources, limit, &tx, started).await;
            finish(&tx, result, started);
        });
        rx
    }

    /// Live nodes (not this one) announcing `name`.
    async fn announced_holders(&self, name: &str) -> Vec<NodeId> {
        let Ok(status) = self.inner.mesh.status().await else {
            return Vec::new();
        };
        let remote = self.inner.remote.lock().unwrap_or_else(|e| e.into_inner());
        status
            .nodes
            .iter()
            .filter(|n| !n.is_self && n.status == Status::Alive)
            .filter(|n| {
                remote
                    .get(&n.id)
                    .is_some_and(|list| list.iter().any(|a| a.name == name))
            })
            .map(|n| n.id)
            .collect()
    }

    async fn node_name(&self, id: NodeId) -> String {
        self.inner
            .mesh
            .status()
            .await
            .ok()
            .and_then(|s| s.nodes.into_iter().find(|n| n.id == id).map(|n| n.name))
            .unwrap_or_else(|| id.short())
    }

    async fn pull_inner(
        &self,
        name: &str,
        mut sources: Vec<NodeId>,
        limit: Option<u64>,
        tx: &watch::Sender<Progress>,
        started: Instant,
    ) -> Result<String, PackagesError> {
        if sources.is_empty() {
            sources = self.announced_holders(name).await;
        }
        sources.retain(|s| *s != self.inner.mesh.id());
        if sources.is_empty() {
            return Err(PackagesError::NoSource(name.to_owned()));
        }
        // Ask every source to describe the package; keep those holding the same one.
        let mut description: Option<(Manifest, Description)> = None;
        let mut agreeing = Vec::new();
        let mut refusals = Vec::new();
        for source in &sources {
            match self.describe_remote(*source, name).await {
                Ok(got) => {
                    let got_manifest = Manifest::parse(got.manifest.as_bytes()).map_err(|reason| {
                        PackagesError::Transfer(format!(
                            "{}: bad manifest: {reason}",
                            source.short()
                        ))
                    });
                    let got_manifest = match got_manifest {
                        Ok(m) => m,
                        Err(e) => {
                            refusals.push(e.to_string());
                            continue;
                        }
                    };
                    if let Err(e) = self.check_seal(&got.manifest, &got.seal) {
                        refusals.push(format!("{}: {e}", self.node_name(*source).await));
                        continue;
                    }
                    match &description {
                        None => {
                            description = Some((got_manifest, got));
                            agreeing.push(*source);
                        }
                        Some((m, _)) if m.blake3 == got_manifest.blake3 => agreeing.push(*source),
                        Some(_) => refusals.push(format!(
                            "{} holds another version of {name}",
                            self.node_name(*source).await
                        )),
                    }
                }
                Err(e) => refusals.push(format!("{}: {e}", self.node_name(*source).await)),
            }
        }
        let Some((manifest, description)) = description else {
            return Err(PackagesError::Transfer(format!(
                "no source could describe {name}: {}",
                refusals.join("; ")
            )));
        };
        tx.send_modify(|p| p.rejected.extend(refusals.iter().cloned()));
        if self
            .held()
            .iter()
            .any(|h| h.name == manifest.name && h.blake3 == manifest.blake3)
        {
            tx.send_modify(|p| {
                p.total_bytes = manifest.size;
                p.reused_bytes = manifest.size;
                p.chunks = manifest.chunks.len();
                p.chunks_reused = manifest.chunks.len();
            });
            return Ok(manifest.name.clone());
        }

        let partial = self.inner.dir.join(INCOMING).join(&manifest.name);
        let (partial_owned, manifest_text, seal_text) = (
            partial.clone(),
            description.manifest.clone(),
            serde_json::to_vec_pretty(&description.seal).unwrap_or_default(),
        );
        let receiving = tokio::task::spawn_blocking(move || {
            Receiving::open(&partial_owned, manifest_text.as_bytes(), &seal_text)
        })
        .await
        .map_err(|e| PackagesError::Io(e.to_string()))??;
        let missing = receiving.missing();
        let reused: u64 = (0..manifest.chunks.len())
            .filter(|i| !missing.contains(i))
            .map(|i| {
                let r = manifest.chunk_range(i);
                r.end - r.start
            })
            .sum();
        tx.send_modify(|p| {
            p.name = manifest.name.clone();
            p.state = "receiving".into();
            p.total_bytes = manifest.size;
            p.reused_bytes = reused;
            p.chunks = manifest.chunks.len();
            p.chunks_reused = manifest.chunks.len() - missing.len();
        });
        let receiving = Arc::new(Mutex::new(receiving));
        let queue = Arc::new(Queue::new(missing));
        let throttle = limit.map(|bps| Arc::new(Throttle::new(bps)));
        let mut workers = tokio::task::JoinSet::new();
        for source in &agreeing {
            let source_name = self.node_name(*source).await;
            for _ in 0..WINDOW_PER_SOURCE {
                let fetch = Fetch {
                    mesh: self.inner.mesh.clone(),
                    source: *source,
                    source_name: source_name.clone(),
                    manifest: manifest.clone(),
                    queue: queue.clone(),
                    receiving: receiving.clone(),
                    throttle: throttle.clone(),
                    tx: tx.clone(),
                    started,
                };
                workers.spawn(fetch.run());
            }
        }
        let mut failures = Vec::new();
        while let Some(result) = workers.join_next().await {
            if let Ok(Err(reason)) = result
                && !failures.contains(&reason)
            {
                failures.push(reason);
            }
        }
        let left = queue.left();
        let still_missing = receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .missing()
            .len();
        if left > 0 || still_missing > 0 {
            return Err(PackagesError::Transfer(format!(
                "{still_missing} of {} chunks still missing (kept for a resume: run the same pull again): {}",
                manifest.chunks.len(),
                failures.join("; ")
            )));
        }
        tx.send_modify(|p| p.state = "installing".into());
        let receiving = Arc::try_unwrap(receiving)
            .map_err(|_| PackagesError::Transfer("a chunk writer is still running".into()))?
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let config = description.config.clone();
        tokio::task::spawn_blocking(move || {
            let mut receiving = receiving;
            if let Some(text) = config {
                receiving.put_config(text.as_bytes())?;
            }
            receiving.finish()
        })
        .await
        .map_err(|e| PackagesError::Io(e.to_string()))??;
        self.install(&partial, &manifest, description).await
    }

    async fn describe_remote(&self, source: NodeId, name: &str) -> Result<Description, String> {
        let payload = serde_json::to_vec(&Work::Describe { name: name.into() }).unwrap_or_default();
        let result = work_retrying(&self.inner.mesh, source, payload, DESCRIBE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&result.payload).map_err(|e| format!("unreadable answer: {e}"))
    }

    /// Asks `target` to pull `name` from this node, and follows its progress.
    pub async fn push(
        &self,
        name: &str,
        target: &str,
        limit: Option<u64>,
    ) -> Result<watch::Receiver<Progress>, PackagesError> {
        if !self.held().iter().any(|h| h.name == name) {
            return Err(PackagesError::Unknown(name.to_owned()));
        }
        let target = self
            .inner
            .mesh
            .resolve(target)
            .await
            .map_err(|_| PackagesError::UnknownNode(target.to_owned()))?;
        let work = Work::Pull {
            name: name.to_owned(),
            from: vec![self.inner.mesh.id()],
            limit,
        };
        let payload = serde_json::to_vec(&work).unwrap_or_default();
        self.inner
            .mesh
            .work(target, WORK_KIND, payload, DESCRIBE_TIMEOUT)
            .await
            .map_err(|e| PackagesError::Transfer(e.to_string()))?;
        let tx = self.track(&format!("push:{name}"));
        let rx = tx.subscribe();
        let (this, name) = (self.clone(), name.to_owned());
        tokio::spawn(async move {
            let progress = serde_json::to_vec(&Work::Progress { name }).unwrap_or_default();
            let mut misses = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let answer = this
                    .inner
                    .mesh
                    .work(target, WORK_KIND, progress.clone(), DESCRIBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        serde_json::from_slice::<Progress>(&r.payload).map_err(|e| e.to_string())
                    });
                match answer {
                    Ok(state) => {
                        misses = 0;
                        let done = state.finished();
                        tx.send_replace(state);
                        if done {
                            return;
                        }
                    }
                    Err(e) => {
                        misses += 1;
                        if misses >= 10 {
                            tx.send_modify(|p| {
                                p.state = "failed".into();
                                p.error = Some(format!("lost track of the target: {e}"));
                            });
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Serves routed package work addressed to this node.
    async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        let reply = |payload: Vec<u8>| Response::Routed {
            path: path.clone(),
            reply: RoutedReply::Work { payload },
        };
        let bad = |message: String| Response::Error {
            code: ErrorCode::BadRequest,
            message,
        };
        let work: Work = match serde_json::from_slice(payload) {
            Ok(work) => work,
            Err(e) => return bad(format!("package work: {e}")),
        };
        match work {
            Work::Describe { name } => {
                let held = self.inner.held.read().unwrap_or_else(|e| e.into_inner());
                match held.get(&name) {
                    Some((_, description, _)) => {
                        reply(serde_json::to_vec(description).unwrap_or_default())
                    }
                    None => bad(PackagesError::Unknown(name).to_string()),
                }
            }
            Work::Chunk {
                name,
                blake3,
                index,
            } => {
                let found = self
                    .inner
                    .held
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .filter(|(h, _, _)| h.blake3 == blake3)
                    .map(|(h, _, manifest)| (h.dir.clone(), manifest.clone()));
                let Some((dir, manifest)) = found else {
                    return bad(PackagesError::Unknown(name).to_string());
                };
                let read = tokio::task::spawn_blocking(move || {
                    package::read_chunk(&dir, &manifest, index)
                })
                .await;
                match read {
                    Ok(Ok(bytes)) => reply(bytes),
                    Ok(Err(e)) => Response::Error {
                        code: ErrorCode::Internal,
                        message: e.to_string(),
                    },
                    Err(e) => Response::Error {
                        code: ErrorCode::Internal,
                        message: e.to_string(),
                    },
                }
            }
            Work::Pull { name, from, limit } => {
                let rx = self.pull_from(&name, from, limit);
                let state = rx.borrow().clone();
                reply(serde_json::to_vec(&state).unwrap_or_default())
            }
            Work::Progress { name } => {
                let state = self
                    .inner
                    .transfers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .map(|rx| rx.borrow().clone());
                match state {
                    Some(state) => reply(serde_json::to_vec(&state).unwrap_or_default()),
                    None => bad(format!("no transfer of {name:?} here")),
                }
            }
        }
    }
}

/// Routed package work, tried a second time after a transport failure: a connection that died
/// with its peer (which has since restarted) is only noticed when used, and is then redialled.
async fn work_retrying(
    mesh: &Mesh,
    dest: NodeId,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<atmosphere_mesh::WorkResult, atmosphere_mesh::MeshError> {
    match mesh.work(dest, WORK_KIND, payload.clone(), timeout).await {
        Err(atmosphere_mesh::MeshError::Transport(_)) => {
            mesh.work(dest, WORK_KIND, payload, timeout).await
        }
        other => other,
    }
}

/// The manifest and seal of the package in `dir`, and its config.
fn describe_dir(dir: &Path) -> Result<(Manifest, Description), PackagesError> {
    let manifest = package::read_manifest(dir)?;
    let manifest_text = std::fs::read_to_string(dir.join(package::MANIFEST))
        .map_err(|e| io_error("read", &dir.join(package::MANIFEST), e))?;
    let seal_path = dir.join(package::SEAL);
    if !seal_path.is_file() {
        return Err(PackagesError::Unsealed(dir.to_owned()));
    }
    let seal_text = std::fs::read(&seal_path).map_err(|e| io_error("read", &seal_path, e))?;
    let seal: Seal = serde_json::from_slice(&seal_text)
        .map_err(|e| PackagesError::Seal(format!("seal.json does not decode: {e}")))?;
    let config = match &manifest.config_blake3 {
        Some(_) => Some(
            std::fs::read_to_string(dir.join(package::CONFIG))
                .map_err(|e| io_error("read", &dir.join(package::CONFIG), e))?,
        ),
        None => None,
    };
    Ok((
        manifest,
        Description {
            manifest: manifest_text,
            seal,
            config,
        },
    ))
}

fn rate(bytes: u64, started: Instant) -> u64 {
    let secs = started.elapsed().as_secs_f64();
    if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    }
}

fn finish(tx: &watch::Sender<Progress>, result: Result<String, PackagesError>, started: Instant) {
    tx.send_modify(|p| {
        p.elapsed_ms = started.elapsed().as_millis() as u64;
        p.bytes_per_second = rate(p.received_bytes, started);
        match result {
            Ok(model) => {
                p.state = "done".into();
                p.model = Some(model);
            }
            Err(e) => {
                warn!(package = %p.name, "transfer failed: {e}");
                p.state = "failed".into();
                p.error = Some(e.to_string());
            }
        }
    });
}

/// A token bucket shared by a pull's workers: at most `rate` bytes per second, bursts of one
/// second.
#[derive(Debug)]
struct Throttle {
    rate: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Throttle {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            state: tokio::sync::Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `bytes` may be fetched.
    async fn take(&self, bytes: u64) {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = &mut *state;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens < 0.0 {
            // Hold the lock while waiting: the others queue behind, in order.
            tokio::time::sleep(Duration::from_secs_f64(-*tokens / self.rate)).await;
        }
    }
}

/// One worker of a pull: takes chunk indices from the shared queue and fetches them from one
/// source until the queue is empty or the source fails.
struct Fetch {
    mesh: Mesh,
    source: NodeId,
    source_name: String,
    manifest: Manifest,
    queue: Arc<Queue>,
    receiving: Arc<Mutex<Receiving>>,
    throttle: Option<Arc<Throttle>>,
    tx: watch::Sender<Progress>,
    started: Instant,
}

/// The chunks a pull still needs, shared by its workers. A worker whose queue is empty waits
/// while others have chunks in flight: one of those may come back (its source failed).
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<(VecDeque<usize>, usize)>,
    changed: tokio::sync::Notify,
}

enum Take {
    Chunk(usize),
    Wait,
    Done,
}

impl Queue {
    fn new(chunks: Vec<usize>) -> Self {
        Self {
            state: Mutex::new((chunks.into(), 0)),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<usize>, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Take {
        let mut state = self.lock();
        match state.0.pop_front() {
            Some(index) => {
                state.1 += 1;
                Take::Chunk(index)
            }
            None if state.1 > 0 => Take::Wait,
            None => Take::Done,
        }
    }

    /// A chunk in flight is done (`None`) or must be fetched again.
    fn settle(&self, retry: Option<usize>) {
        {
            let mut state = self.lock();
            state.1 = state.1.saturating_sub(1);
            if let Some(index) = retry {
                state.0.push_front(index);
            }
        }
        self.changed.notify_waiters();
    }

    /// The next chunk for a worker, or `None` when there is nothing left to do.
    async fn next(&self) -> Option<usize> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.take() {
                Take::Chunk(index) => return Some(index),
                Take::Done => return None,
                Take::Wait => changed.await,
            }
        }
    }

    fn left(&self) -> usize {
        self.lock().0.len()
    }
}

impl Fetch {
    fn give_back(&self, index: usize) {
        self.queue.settle(Some(index));
    }

    async fn run(self) -> Result<(), String> {
        while let Some(index) = self.queue.next().await {
            let range = self.manifest.chunk_range(index);
            if let Some(throttle) = &self.throttle {
                throttle.take(range.end - range.start).await;
            }
            let work = Work::Chunk {
                name: self.manifest.name.clone(),
                blake3: self.manifest.blake3.clone(),
                index,
            };
            let payload = serde_json::to_vec(&work).unwrap_or_default();
            let bytes = match work_retrying(&self.mesh, self.source, payload, CHUNK_TIMEOUT).await {
                Ok(result) => result.payload,
                Err(e) => {
                    self.give_back(index);
                    return Err(format!("{}: {e}", self.source_name));
                }
            };
            let receiving = self.receiving.clone();
            let written = tokio::task::spawn_blocking(move || {
                receiving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(index, &bytes)
                    .map(|()| bytes.len() as u64)
            })
            .await;
            let written = match written {
                Ok(written) => written,
                Err(e) => {
                    self.give_back(index);
                    return Err(e.to_string());
                }
            };
            match written {
                Ok(len) => {
                    self.queue.settle(None);
                    let started = self.started;
                    self.tx.send_modify(|p| {
                        p.received_bytes += len;
                        *p.sources.entry(self.source_name.clone()).or_default() += len;
                        p.elapsed_ms = started.elapsed().as_millis() as u64;
                        p.bytes_per_second = rate(p.received_bytes, started);
                    });
                }
                Err(e @ PackageError::Chunk { .. }) => {
                    self.give_back(index);
                    let reason = format!(
                        "{} sent a bad chunk ({e}); source dropped",
                        self.source_name
                    );
                    self.tx.send_modify(|p| {
                        if !p.rejected.contains(&reason) {
                            p.rejected.push(reason.clone());
                        }
                    });
                    return Err(reason);
                }
                Err(e) => {
                    self.give_back(index);
                    return Err(e.to_string());
                }
            }
        }
        Ok(())
    }
}

impl crate::service::GossipService for Packages {
    const NAME: &'static str = "package";
    const RECORD_KEY: &'static str = RECORD_KEY;

    fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    async fn announce(&self) {
        Packages::announce(self).await;
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        Packages::learn(self, node, bytes);
    }

    async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        Packages::serve(self, path, payload).await
    }
}

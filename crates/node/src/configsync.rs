//! Config sync: LlamaFarm project files (`llamafarm.yaml`) shared across the mesh. An edit — of the
//! file on any node that uses the project, or sent with `atmosphere config push` — is signed by the
//! authority as the project's next version and gossiped under `configs` (every node relays the
//! newest version of each project; each checks the signature). A node that uses the project
//! writes the new text to its file and reloads its model servers from `runtime.models`, without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atmosphere_auth::{ConfigBook, ConfigDoc, SignedConfig};
use atmosphere_mesh::Mesh;
use atmosphere_mesh::transport::Incoming;
use atmosphere_proto::record::{ConfigsKey, RecordKey};
use atmosphere_proto::{ErrorCode, NodeId, Request, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::llamafarm::{Project, ProjectError};
use crate::servers::ModelServers;
use crate::store::Store;
use crate::trust::Trust;

/// How often the project file is read for edits.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
const STORE_KEY: &str = "configs";

/// Why an edit could not be synced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(
        "this node is not in a mesh: run `atmosphere mesh init` or `atmosphere mesh join TOKEN` first"
    )]
    NoMesh,
    #[error(
        "no mesh authority reachable to sign the edit ({0}); it is retried while the file differs"
    )]
    NoAuthority(String),
    #[error("the authority refused the edit: {0}")]
    Refused(String),
    #[error("signed config invalid: {0}")]
    Signature(#[from] atmosphere_auth::ConfigError),
}

/// A project as `atmosphere config list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConfigInfo {
    pub project: String,
    pub version: u64,
    pub signed_at: u64,
    pub bytes: usize,
    /// Whether this node uses the project (and fronts its models).
    pub used_here: bool,
}

/// The file a node keeps in sync.
#[derive(Debug, Clone)]
pub struct Usage {
    pub path: PathBuf,
    /// The project named in the node's config, when the file may not exist yet.
    pub project: Option<String>,
    /// A LlamaFarm server to front for the project.
    pub server: Option<String>,
}

#[derive(Debug, Default)]
struct FileState {
    /// The text last read from or written to the file.
    seen: Option<String>,
    /// The project the file declares.
    project: Option<String>,
    /// The file holds an edit the mesh has not signed yet.
    unsynced: bool,
    last_warning: Option<String>,
}

/// The config-sync service of one node.
#[derive(Debug, Clone)]
pub struct ConfigSync {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    trust: Arc<Trust>,
    store: Arc<Store>,
    mesh: Mesh,
    servers: Arc<ModelServers>,
    usage: Option<Usage>,
    book: Mutex<ConfigBook>,
    file: Mutex<FileState>,
}

impl ConfigSync {
    pub fn new(
        trust: Arc<Trust>,
        store: Arc<Store>,
        mesh: Mesh,
        servers: Arc<ModelServers>,
        usage: Option<Usage>,
    ) -> Self {
        let mut book = ConfigBook::default();
        if let (Some(mesh_id), Ok(Some(bytes))) = (trust.mesh_id(), store.auth_get(STORE_KEY))
            && let Err(e) = book.merge_bytes(&mesh_id, &bytes)
        {
            warn!("stored configs unusable: {e}");
        }
        Self {
            inner: Arc::new(Inner {
                trust,
                store,
                mesh,
                servers,
                usage,
                book: Mutex::new(book),
                file: Mutex::new(FileState::default()),
            }),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ConfigBook> {
        self.inner.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.inner.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The project this node uses: as its config names it, else as its file declares it.
    pub fn used_project(&self) -> Option<String> {
        let usage = self.inner.usage.as_ref()?;
        usage
            .project
            .clone()
            .or_else(|| self.file().project.clone())
    }

    /// Every project the node knows, newest version each.
    pub fn list(&self) -> Vec<ConfigInfo> {
        let used = self.used_project();
        self.book()
            .docs()
            .map(|doc| ConfigInfo {
                project: doc.project.clone(),
                version: doc.version,
                signed_at: doc.signed_at,
                bytes: doc.text.len(),
                used_here: used.as_deref() == Some(doc.project.as_str()),
            })
            .collect()
    }

    /// The newest text of `project`.
    pub fn get(&self, project: &str) -> Option<ConfigDoc> {
        self.book().get(project).cloned()
    }

    async fn publish(&self, push: bool) {
        let bytes = self.book().to_bytes();
        let _ = self
            .inner
            .mesh
            .set_value(ConfigsKey::KEY, bytes, push)
            .await;
    }

    fn persist(&self) {
        let bytes = self.book().to_bytes();
        if let Err(e) = self.inner.store.auth_put(&[(STORE_KEY, &bytes)]) {
            warn!("could not store configs: {e}");
        }
    }

    /// Stores, relays and applies newly adopted versions.
    async fn adopted(&self, docs: Vec<ConfigDoc>) {
        if docs.is_empty() {
            return;
        }
        self.persist();
        self.publish(true).await;
        for doc in docs {
            info!(project = %doc.project, version = doc.version, "config version adopted");
            self.apply(&doc);
        }
    }

    /// Writes a project this node uses to its file and reloads the servers.
    fn apply(&self, doc: &ConfigDoc) {
        let Some(usage) = &self.inner.usage else {
            return;
        };
        if self.used_project().as_deref() != Some(doc.project.as_str()) {
            return;
        }
        let project = match Project::parse(&doc.text) {
            Ok(project) => project,
            Err(e) => return warn!(project = %doc.project, "signed config does not parse: {e}"),
        };
        {
            let mut file = self.file();
            file.seen = Some(doc.text.clone());
            file.project = Some(project.key());
            file.unsynced = false;
        }
        if std::fs::read_to_string(&usage.path).ok().as_deref() != Some(doc.text.as_str())
            && let Err(e) = write_atomically(&usage.path, &doc.text)
        {
            warn!(path = %usage.path.display(), "could not write the synced config: {e}");
        }
        self.reload(&project);
    }

    fn reload(&self, project: &Project) {
        let server = self.inner.usage.as_ref().and_then(|u| u.server.as_deref());
        match self.inner.servers.replace_synced(&project.servers(server)) {
            Ok(()) => info!(project = %project.key(), "model servers reloaded from llamafarm.yaml"),
            Err(e) => warn!(project = %project.key(), "cannot use the project's servers: {e}"),
        }
    }

    /// Has `text` signed as the next version of the project it declares, and adopts it.
    pub async fn submit(&self, text: &str) -> Result<ConfigDoc, SyncError> {
        let project = Project::parse(text)?;
        let key = project.key();
        let mesh = self.inner.trust.mesh_id().ok_or(SyncError::NoMesh)?;
        if let Some(held) = self.get(&key)
            && held.text == text
        {
            return Ok(held);
        }
        let signed = if self.inner.trust.is_authority() {
            self.sign(&key, text)?
        } else {
            self.ask_authority(text).await?
        };
        let adopted = self.book().insert(&mesh, signed)?;
        let doc = match adopted {
            Some(doc) => doc,
            // A newer version arrived meanwhile; ours lost.
            None => return self.get(&key).ok_or(SyncError::NoMesh),
        };
        self.adopted(vec![doc.clone()]).await;
        Ok(doc)
    }

    fn sign(&self, key: &str, text: &str) -> Result<SignedConfig, SyncError> {
        let version = self.book().next_version(key);
        match self.inner.trust.sign_config(key, version, text) {
            Some(signed) => Ok(signed?),
            None => Err(SyncError::Refused(
                "this node is not the mesh authority".into(),
            )),
        }
    }

    async fn ask_authority(&self, text: &str) -> Result<SignedConfig, SyncError> {
        let authorities = self.inner.trust.authority_peers();
        if authorities.is_empty() {
            return Err(SyncError::NoAuthority(
                "the authority is not among this node's peers".into(),
            ));
        }
        let mut last = String::new();
        for authority in authorities {
            let request = Request::SignConfig { text: text.into() };
            match self.inner.mesh.call(authority, request).await {
                Ok(Response::Config { signed }) => return Ok(SignedConfig::from_bytes(&signed)?),
                Ok(Response::Error {
                    code: ErrorCode::BadRequest,
                    message,
                }) => return Err(SyncError::Refused(message)),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(SyncError::NoAuthority(last))
    }

    /// The authority's side of [`Request::SignConfig`].
    pub async fn answer(&self, from: NodeId, text: String) -> Response {
        if !self.inner.trust.is_authority() {
            return Response::Error {
                code: ErrorCode::Unauthorized,
                message: "this node is not the mesh authority".into(),
            };
        }
        match self.submit(&text).await {
            Ok(doc) => {
                info!(peer = %from.short(), project = %doc.project, version = doc.version, "signed a config edit");
                match self.book().signed(&doc.project) {
                    Some(signed) => Response::Config {
                        signed: signed.to_bytes(),
                    },
                    None => Response::Error {
                        code: ErrorCode::Internal,
                        message: "signed config vanished".into(),
                    },
                }
            }
            Err(e) => Response::Error {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
            },
        }
    }

    /// A peer's `configs` value changed: adopt what is newer.
    async fn on_change(&self, change: atmosphere_mesh::ValueChanged) {
        if change.key != ConfigsKey::KEY {
            return;
        }
        let Some(mesh) = self.inner.trust.mesh_id() else {
            return;
        };
        let adopted = self.book().merge_bytes(&mesh, &change.value);
        match adopted {
            Ok(docs) => self.adopted(docs).await,
            Err(e) => warn!(peer = %change.node.short(), "bad config list: {e}"),
        }
    }

    /// Reads the project file: a new text is applied here at once and sent for signing.
    async fn poll_file(&self) {
        let Some(usage) = self.inner.usage.clone() else {
            return;
        };
        let text = match std::fs::read_to_string(&usage.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not written yet: the mesh may already hold the project.
                if let Some(doc) = usage.project.as_deref().and_then(|p| self.get(p))
                    && self.file().seen.is_none()
                {
                    self.apply(&doc);
                }
                return;
            }
            Err(e) => return self.warn_once(format!("cannot read {}: {e}", usage.path.display())),
        };
        let unsynced = {
            let mut file = self.file();
            if file.seen.as_deref() == Some(text.as_str()) {
                file.unsynced
            } else {
                file.seen = Some(text.clone());
                match Project::parse(&text) {
                    Ok(project) => {
                        file.project = Some(project.key());
                        drop(file);
                        self.reload(&project);
                        let held = self.get(&project.key()).map(|d| d.text);
                        let unsynced = held.as_deref() != Some(text.as_str());
                        self.file().unsynced = unsynced;
                        unsynced
                    }
                    Err(e) => {
                        file.unsynced = false;
                        drop(file);
                        self.warn_once(format!("{}: {e}", usage.path.display()));
                        false
                    }
                }
            }
        };
        if !unsynced || self.inner.trust.mesh_id().is_none() {
            return;
        }
        match self.submit(&text).await {
            Ok(doc) => {
                info!(project = %doc.project, version = doc.version, "local edit synced to the mesh");
                let mut file = self.file();
                file.unsynced = false;
                file.last_warning = None;
            }
            Err(e @ SyncError::NoAuthority(_)) => self.warn_once(e.to_string()),
            Err(e) => {
                self.file().unsynced = false;
                self.warn_once(format!("{}: {e}", usage.path.display()));
            }
        }
    }

    fn warn_once(&self, message: String) {
        let mut file = self.file();
        if file.last_warning.as_deref() != Some(message.as_str()) {
            warn!("config sync: {message}");
            file.last_warning = Some(message);
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so readers never see half.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("yaml.partial");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Runs config sync: publishes what the node holds, merges peers' versions, watches the file and
/// answers signing requests (on the authority).
pub async fn run(
    sync: ConfigSync,
    mut requests: mpsc::Receiver<Incoming>,
    cancel: CancellationToken,
) {
    sync.publish(false).await;
    let used = sync.used_project().and_then(|p| sync.get(&p));
    if let Some(doc) = used {
        sync.apply(&doc);
    }
    let mut changes = sync.inner.mesh.subscribe();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(incoming) = requests.recv() => {
                let response = match incoming.request {
                    Request::SignConfig { text } => sync.answer(incoming.from, text).await,
                    _ => Response::Error { code: ErrorCode::BadRequest, message: "not a config request".into() },
                };
                let _ = incoming.reply_tx.send(response);
            }
            change = changes.recv() => match change {
                Ok(change) => sync.on_change(change).await,
                // A missed version comes back when the next node adopts and relays it.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => warn!("config sync lagged {n} changes"),
                Err(_) => break,
            },
            _ = ticker.tick() => sync.poll_file().await,
        }
    }
}

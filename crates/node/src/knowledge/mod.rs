//! Knowledge spread over the mesh. A document added on a node is read line by line, cut into
//! chunks ([`chunk`]), embedded there with MiniLM, and each chunk — text and embedding — is
//! stored on the `replicas` nodes rendezvous hashing picks among the live ones ([`place`]). Every
//! node gossips a summary per collection (`atmosphere_routing::summary`: counts and centroids); a query embeds the
//! question, asks the nodes whose centroids come near it, merges their best passages by score
//! and says which node gave what. A maintenance loop keeps each chunk on its owners as nodes
//! come and go, and drops surplus copies once every owner has confirmed its own.

pub mod chunk;
pub mod place;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atmosphere_mesh::{Mesh, Status};
use atmosphere_proto::{ErrorCode, NodeId, Response, RoutedReply};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tracing::{info, warn};

use crate::models::LocalModels;
use crate::store::Store;
use atmosphere_routing::summary::{self, Summary};
use place::{ChunkId, owners};

pub const WORK_KIND: &str = "knowledge";
pub const RECORD_KEY: &str = "knowledge";
/// MiniLM's dimensions: every stored embedding has them.
pub const DIMS: usize = 384;
pub const DEFAULT_TOP_K: usize = 5;
/// Chunks per `store` request, and per embedding batch.
const BATCH: usize = 64;
/// The most chunks a peer may send in one request, and the longest chunk text it may send.
const MAX_BATCH: usize = 256;
const MAX_TEXT: usize = 64 * 1024;
const MAX_NAME: usize = 256;
/// Ids per `missing` request of the rebalancer.
const ID_BATCH: usize = 4096;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const SEARCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Nodes whose summaries come within this of the best are asked.
const MARGIN: f32 = 0.25;
/// How often the maintenance loop checks placement even without a membership change.
const REBALANCE_EVERY: Duration = Duration::from_secs(15);
/// How long the summary waits after a change before it is computed and announced.
const ANNOUNCE_DEBOUNCE: Duration = Duration::from_secs(1);
/// How often it looks at membership.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// The largest PDF read (its text is extracted in memory).
const MAX_PDF: u64 = 256 << 20;

/// A chunk as stored and sent: text, embedding and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredChunk {
    pub collection: String,
    pub document: String,
    pub index: u32,
    pub heading: String,
    pub text: String,
    pub embedding: Vec<f32>,
}

impl StoredChunk {
    /// Content-addressed: a peer cannot make a chunk take another's id.
    pub fn id(&self) -> ChunkId {
        let mut hasher = blake3::Hasher::new();
        for part in [&self.collection, &self.document, &self.heading, &self.text] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(&self.index.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        id
    }

    /// What a peer may send: names and text within bounds, a finite embedding of [`DIMS`].
    fn check(&self) -> Result<(), String> {
        if self.collection.is_empty() || self.collection.len() > MAX_NAME {
            return Err("a collection name is 1 to 256 bytes".into());
        }
        if self.document.is_empty() || self.document.len() > MAX_NAME {
            return Err("a document name is 1 to 256 bytes".into());
        }
        if self.text.is_empty() || self.text.len() > MAX_TEXT || self.heading.len() > MAX_TEXT {
            return Err(format!("a chunk's text is 1 to {MAX_TEXT} bytes"));
        }
        if self.embedding.len() != DIMS || !self.embedding.iter().all(|x| x.is_finite()) {
            return Err(format!("an embedding is {DIMS} finite numbers"));
        }
        Ok(())
    }
}

/// A passage found by a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    #[serde(with = "hex_id")]
    pub id: ChunkId,
    pub collection: String,
    pub document: String,
    pub index: u32,
    pub heading: String,
    pub text: String,
    pub score: f32,
    /// The node it came from (filled by the querier).
    #[serde(default)]
    pub node: String,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&data_encoding::HEXLOWER.encode(id))
        } else {
            s.serialize_bytes(id)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let bytes: Vec<u8> = if d.is_human_readable() {
            let text = String::deserialize(d)?;
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(serde::de::Error::custom)?
        } else {
            serde_bytes_vec(d)?
        };
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a chunk id is 16 bytes"))
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// Routed `knowledge` work (postcard on the wire).
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Store {
        chunks: Vec<StoredChunk>,
    },
    Search {
        collection: Option<String>,
        vector: Vec<f32>,
        k: u32,
    },
    Missing {
        ids: Vec<ChunkId>,
    },
    Ids,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Stored { new: u32 },
    Hits(Vec<Hit>),
    Missing(Vec<ChunkId>),
    Ids(Vec<ChunkId>),
}

/// Why knowledge work failed; each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    #[error("cannot read {path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path} has no text to index")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not UTF-8 text (line {line}); convert it, or give a PDF, Markdown or text file"
    )]
    NotText { path: PathBuf, line: usize },
    #[error("{path} is {size} bytes; PDFs up to {max} bytes are read (split it)")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "no node holds knowledge{}: add documents with `atmosphere knowledge add PATH… --collection NAME`",
        .0.as_deref().map(|c| format!(" in collection {c:?}")).unwrap_or_default()
    )]
    Nothing(Option<String>),
    #[error("every node asked failed: {0}")]
    AllFailed(String),
    #[error("embedding: {0}")]
    Model(String),
    #[error("knowledge store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("mesh: {0}")]
    Mesh(#[from] atmosphere_mesh::MeshError),
}

/// A chunk held here, as searched (its text stays in the database).
#[derive(Debug)]
struct Held {
    id: ChunkId,
    collection: Arc<str>,
    document: Arc<str>,
    vector: Vec<f32>,
}

/// What ingesting a document did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DocReport {
    pub document: String,
    pub collection: String,
    pub bytes: u64,
    pub chunks: u64,
    /// Copies stored per node (name → chunks).
    pub placed: BTreeMap<String, u64>,
    /// Copies kept here because their owner did not take them (the maintenance loop moves them).
    pub kept_here: u64,
    pub ms: f64,
}

/// Progress of an `add`, one JSON line each (the CLI draws bars from them).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AddEvent {
    Reading {
        document: String,
        bytes: u64,
        total: u64,
        chunks: u64,
    },
    Done(DocReport),
    Failed {
        document: String,
        error: String,
    },
}

/// The `k` best of the chunks the nodes returned, best first, each credited to one node that
/// returned it: the one credited least so far, then the first in rendezvous order. Replicas share
/// the serving, so an answer names the nodes that served it rather than whichever happens to hold
/// the first copies of all its passages.
fn merge_copies(copies: HashMap<ChunkId, Vec<(NodeId, Hit)>>, k: usize) -> Vec<Hit> {
    let best = |found: &[(NodeId, Hit)]| {
        found
            .iter()
            .map(|(_, hit)| hit.score)
            .fold(f32::NEG_INFINITY, f32::max)
    };
    let mut chunks: Vec<(ChunkId, Vec<(NodeId, Hit)>)> = copies.into_iter().collect();
    chunks.sort_by(|a, b| best(&b.1).total_cmp(&best(&a.1)).then(a.0.cmp(&b.0)));
    chunks.truncate(k);
    let mut credited: HashMap<NodeId, usize> = HashMap::new();
    chunks
        .into_iter()
        .filter_map(|(chunk, mut found)| {
            let holders: Vec<NodeId> = found.iter().map(|(id, _)| *id).collect();
            // `min_by_key` keeps the first of equals: the rendezvous order breaks ties.
            let pick = owners(&chunk, &holders, holders.len())
                .into_iter()
                .min_by_key(|id| credited.get(id).copied().unwrap_or(0))?;
            *credited.entry(pick).or_default() += 1;
            let at = found.iter().position(|(id, _)| *id == pick)?;
            Some(found.swap_remove(at).1)
        })
        .collect()
}

/// A node asked by a query.
#[derive(Debug, Clone, Serialize)]
pub struct Asked {
    pub node: String,
    /// Its nearest centroid's similarity to the question.
    pub relevance: f32,
    /// Passages it returned, and how many of them made the final list.
    pub returned: usize,
    pub used: usize,
    pub ms: f64,
    pub error: Option<String>,
}

/// A query's passages and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    pub query: String,
    pub collection: Option<String>,
    pub hits: Vec<Hit>,
    pub asked: Vec<Asked>,
    /// Nodes with knowledge that were not asked (their summaries were far from the question).
    pub skipped: Vec<String>,
    /// Bytes of requests sent and replies received over the mesh.
    pub bytes_out: usize,
    pub bytes_in: usize,
    pub embed_ms: f64,
    pub ms: f64,
}

impl QueryOutcome {
    /// "a (2 chunks), b (1 chunk)"; and which nodes failed, answered from replicas.
    pub fn trace(&self) -> String {
        let from: Vec<String> = self
            .asked
            .iter()
            .filter(|a| a.used > 0)
            .map(|a| {
                format!(
                    "{} ({} chunk{})",
                    a.node,
                    a.used,
                    if a.used == 1 { "" } else { "s" }
                )
            })
            .collect();
        let mut trace = format!("Chunks retrieved from: {}", from.join(", "));
        for failed in self.asked.iter().filter(|a| a.error.is_some()) {
            trace.push_str(&format!(
                "\n{} did not answer ({}); its chunks came from their replicas",
                failed.node,
                failed.error.as_deref().unwrap_or_default()
            ));
        }
        trace
    }
}

#[derive(Debug)]
struct Inner {
    mesh: Mesh,
    name: String,
    store: Arc<Store>,
    models: Arc<LocalModels>,
    replicas: usize,
    held: RwLock<Vec<Held>>,
    peers: Mutex<HashMap<NodeId, Vec<Summary>>>,
    /// This node's summaries, computed when first needed after a change.
    own: Mutex<Option<Arc<Vec<Summary>>>>,
    /// Set when the chunks held here changed: the summary is announced again.
    dirty: tokio::sync::Notify,
}

/// The knowledge service of a node.
#[derive(Debug, Clone)]
pub struct Knowledge {
    inner: Arc<Inner>,
}

fn decode(bytes: &[u8]) -> Option<StoredChunk> {
    postcard::from_bytes(bytes).ok()
}

fn encode(chunk: &StoredChunk) -> Vec<u8> {
    postcard::to_allocvec(chunk).unwrap_or_default()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Knowledge {
    /// Opens the service over the chunks in `store`.
    pub fn open(
        mesh: Mesh,
        name: String,
        store: Arc<Store>,
        models: Arc<LocalModels>,
        replicas: usize,
    ) -> Result<Self, KnowledgeError> {
        let mut held = Vec::new();
        let mut damaged = 0usize;
        store.each_chunk(|id, bytes| match decode(bytes) {
            Some(chunk) => held.push(Held {
                id,
                collection: chunk.collection.into(),
                document: chunk.document.into(),
                vector: chunk.embedding,
            }),
            None => damaged += 1,
        })?;
        if damaged > 0 {
            warn!("{damaged} stored chunks do not decode; ignored");
        }
        if !held.is_empty() {
            info!("{} knowledge chunks held", held.len());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                mesh,
                name,
                store,
                models,
                replicas: replicas.max(1),
                held: RwLock::new(held),
                peers: Mutex::new(HashMap::new()),
                own: Mutex::new(None),
                dirty: tokio::sync::Notify::new(),
            }),
        })
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Vec<Held>> {
        self.inner.held.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores chunks here (those not held yet); returns how many were new.
    fn keep(&self, chunks: Vec<StoredChunk>) -> Result<usize, KnowledgeError> {
        let rows: Vec<(ChunkId, Vec<u8>)> = chunks.iter().map(|c| (c.id(), encode(c))).collect();
        // The database says which are new: a batch may repeat chunks already held.
        let fresh = self.inner.store.put_chunks(&rows)?;
        let added: Vec<Held> = chunks
            .into_iter()
            .zip(rows)
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|((chunk, (id, _)), _)| Held {
                id,
                collection: chunk.collection.into(),
                document: chunk.document.into(),
                vector: chunk.embedding,
            })
            .collect();
        let new = added.len();
        if new > 0 {
            self.inner
                .held
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(added);
            self.changed();
        }
        Ok(new)
    }

    /// The live members, this node included.
    async fn live(&self) -> Result<Vec<(NodeId, String)>, KnowledgeError> {
        let status = self.inner.mesh.status().await?;
        Ok(status
            .nodes
            .iter()
            .filter(|n| n.status == Status::Alive)
            .map(|n| (n.id, n.name.clone()))
            .collect())
    }

    async fn call(
        &self,
        node: NodeId,
        op: &Op,
        timeout: Duration,
    ) -> Result<(Reply, usize, usize), String> {
        let payload = postcard::to_allocvec(op).map_err(|e| e.to_string())?;
        let sent = payload.len();
        let result = self
            .inner
            .mesh
            .work(node, WORK_KIND, payload, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let reply = postcard::from_bytes(&result.payload)
            .map_err(|e| format!("unreadable knowledge reply: {e}"))?;
        Ok((reply, sent, result.payload.len()))
    }

    /// Reads `path` (Markdown, text or PDF) into `collection`: chunks, embeds and places them.
    /// Progress goes to `events`.
    pub async fn add(
        &self,
        collection: &str,
        path: &Path,
        events: &tokio::sync::mpsc::UnboundedSender<AddEvent>,
    ) -> Result<DocReport, KnowledgeError> {
        let started = Instant::now();
        let collection = collection.trim();
        if collection.is_empty() || collection.len() > MAX_NAME {
            return Err(KnowledgeError::BadRequest(
                "a collection name is 1 to 256 bytes".into(),
            ));
        }
        let unreadable = |detail: String| KnowledgeError::Unreadable {
            path: path.to_owned(),
            detail,
        };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        if !meta.is_file() {
            return Err(unreadable("not a file".into()));
        }
        let document = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let total = meta.len();
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let mut report = DocReport {
            document: document.clone(),
            collection: collection.to_owned(),
            bytes: total,
            ..DocReport::default()
        };
        let live = self.live().await?;
        let mut placer = Placer {
            knowledge: self,
            collection: collection.to_owned(),
            document: document.clone(),
            live,
            next_index: 0,
            pending: Vec::new(),
            report: &mut report,
        };
        let markdown = matches!(extension.as_str(), "md" | "markdown");
        let mut chunker = chunk::Chunker::new(markdown);
        if extension == "pdf" {
            if total > MAX_PDF {
                return Err(KnowledgeError::TooLarge {
                    path: path.to_owned(),
                    size: total,
                    max: MAX_PDF,
                });
            }
            let text = pdf_text(path).await?;
            for line in text.lines() {
                chunker.push_line(line);
            }
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            let mut lines = tokio::io::BufReader::with_capacity(1 << 16, file).lines();
            let mut read = 0u64;
            let mut line_no = 0usize;
            let mut last_event = Instant::now();
            loop {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return Err(KnowledgeError::NotText {
                            path: path.to_owned(),
                            line: line_no + 1,
                        });
                    }
                    Err(e) => return Err(unreadable(e.to_string())),
                };
                line_no += 1;
                read += line.len() as u64 + 1;
                chunker.push_line(&line);
                let ready = chunker.ready();
                if !ready.is_empty() {
                    placer.push(ready).await?;
                }
                if last_event.elapsed() > Duration::from_millis(200) {
                    last_event = Instant::now();
                    let _ = events.send(AddEvent::Reading {
                        document: document.clone(),
                        bytes: read.min(total),
                        total,
                        chunks: placer.next_index as u64,
                    });
                }
            }
        }
        placer.push(chunker.finish()).await?;
        placer.flush().await?;
        let chunks = placer.next_index as u64;
        if chunks == 0 {
            return Err(KnowledgeError::Empty {
                path: path.to_owned(),
            });
        }
        report.chunks = chunks;
        report.ms = ms(started);
        Ok(report)
    }

    /// Searches the chunks held here.
    fn search_here(&self, collection: Option<&str>, vector: &[f32], k: usize) -> Vec<Hit> {
        let mut scored: Vec<(f32, ChunkId)> = self
            .held()
            .iter()
            .filter(|h| collection.is_none_or(|c| &*h.collection == c))
            .map(|h| (summary::dot(&h.vector, vector), h.id))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let ids: Vec<ChunkId> = scored.iter().map(|(_, id)| *id).collect();
        let rows = self.inner.store.chunks(&ids).unwrap_or_default();
        let texts: HashMap<ChunkId, StoredChunk> = rows
            .into_iter()
            .filter_map(|(id, bytes)| decode(&bytes).map(|c| (id, c)))
            .collect();
        scored
            .into_iter()
            .filter_map(|(score, id)| {
                let chunk = texts.get(&id)?;
                Some(Hit {
                    id,
                    collection: chunk.collection.clone(),
                    document: chunk.document.clone(),
                    index: chunk.index,
                    heading: chunk.heading.clone(),
                    text: chunk.text.clone(),
                    score,
                    node: self.inner.name.clone(),
                })
            })
            .collect()
    }

    /// The chunks held here changed: summaries are computed afresh and announced.
    fn changed(&self) {
        *self.inner.own.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.inner.dirty.notify_one();
    }

    /// This node's summaries of what it holds (cached until the chunks change).
    fn summaries(&self) -> Arc<Vec<Summary>> {
        let mut own = self.inner.own.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(summaries) = own.as_ref() {
            return summaries.clone();
        }
        let fresh = Arc::new(self.compute_summaries());
        *own = Some(fresh.clone());
        fresh
    }

    fn compute_summaries(&self) -> Vec<Summary> {
        let held = self.held();
        let mut by_collection: BTreeMap<&str, (Vec<&[f32]>, HashSet<&str>)> = BTreeMap::new();
        for h in held.iter() {
            let entry = by_collection.entry(&h.collection).or_default();
            entry.0.push(&h.vector);
            entry.1.insert(&h.document);
        }
        by_collection
            .into_iter()
            .map(|(collection, (vectors, documents))| Summary {
                collection: collection.to_owned(),
                chunks: vectors.len() as u64,
                documents: documents.len() as u64,
                centroids: summary::centroids(&vectors, summary::CENTROIDS)
                    .iter()
                    .map(|c| summary::quantize(c))
                    .collect(),
            })
            .collect()
    }

    /// Finds the passages nearest `question`: asks the nodes whose summaries come near it and
    /// merges their answers.
    pub async fn query(
        &self,
        question: &str,
        collection: Option<&str>,
        k: usize,
    ) -> Result<QueryOutcome, KnowledgeError> {
        let started = Instant::now();
        let question = question.trim();
        if question.is_empty() || question.len() > 4096 {
            return Err(KnowledgeError::BadRequest(
                "a question is 1 to 4096 bytes".into(),
            ));
        }
        let k = k.clamp(1, 50);
        let vector = self
            .inner
            .models
            .embed_for_routing(vec![question.to_owned()])
            .await
            .map_err(|e| KnowledgeError::Model(e.to_string()))?
            .pop()
            .unwrap_or_default();
        let embed_ms = ms(started);
        let live = self.live().await?;
        let own = self.summaries();
        let relevance = |summaries: &[Summary]| {
            summaries
                .iter()
                .filter(|s| collection.is_none_or(|c| s.collection == c))
                .filter_map(|s| s.relevance(&vector))
                .max_by(f32::total_cmp)
        };
        let mut candidates: Vec<(NodeId, String, f32)> = Vec::new();
        {
            let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
            for (id, name) in &live {
                let score = if *id == self.inner.mesh.id() {
                    relevance(&own)
                } else {
                    peers.get(id).and_then(|s| relevance(s))
                };
                if let Some(score) = score {
                    candidates.push((*id, name.clone(), score));
                }
            }
        }
        let Some(best) = candidates.iter().map(|c| c.2).max_by(f32::total_cmp) else {
            return Err(KnowledgeError::Nothing(collection.map(str::to_owned)));
        };
        let (chosen, mut skipped): (Vec<_>, Vec<_>) =
            candidates.into_iter().partition(|c| c.2 >= best - MARGIN);
        let op = Op::Search {
            collection: collection.map(str::to_owned),
            vector: vector.clone(),
            k: k as u32,
        };
        let ask = |nodes: Vec<(NodeId, String, f32)>| {
            let (op, vector) = (&op, &vector);
            futures_util::future::join_all(nodes.into_iter().map(|(id, name, score)| async move {
                let asked_at = Instant::now();
                let result = if id == self.inner.mesh.id() {
                    Ok((self.search_here(collection, vector, k), 0, 0))
                } else {
                    match self.call(id, op, SEARCH_TIMEOUT).await {
                        Ok((Reply::Hits(hits), sent, received)) => Ok((hits, sent, received)),
                        Ok(_) => Err("unexpected reply".to_owned()),
                        Err(e) => Err(e),
                    }
                };
                (id, name, score, ms(asked_at), result)
            }))
        };
        let mut answers = ask(chosen).await;
        // A node that failed may have held the only copy near the question that the others
        // asked lack: the second copy of each of its chunks lives on another node, perhaps one
        // whose summary was further off. Ask those too.
        if answers.iter().any(|a| a.4.is_err()) && !skipped.is_empty() {
            answers.extend(ask(std::mem::take(&mut skipped)).await);
        }
        let mut asked = Vec::new();
        // Every copy each node returned; see `merge_copies` for which node a chunk is credited to.
        let mut copies: HashMap<ChunkId, Vec<(NodeId, Hit)>> = HashMap::new();
        let (mut bytes_out, mut bytes_in) = (0, 0);
        for (id, node, relevance, took, result) in answers {
            match result {
                Ok((hits, sent, received)) => {
                    bytes_out += sent;
                    bytes_in += received;
                    asked.push(Asked {
                        node: node.clone(),
                        relevance,
                        returned: hits.len(),
                        used: 0,
                        ms: took,
                        error: None,
                    });
                    for mut hit in hits.into_iter().take(k) {
                        if !hit.score.is_finite() {
                            continue;
                        }
                        hit.node = node.clone();
                        copies.entry(hit.id).or_default().push((id, hit));
                    }
                }
                Err(error) => asked.push(Asked {
                    node,
                    relevance,
                    returned: 0,
                    used: 0,
                    ms: took,
                    error: Some(error),
                }),
            }
        }
        if asked.iter().all(|a| a.error.is_some()) {
            let errors: Vec<String> = asked
                .iter()
                .map(|a| format!("{}: {}", a.node, a.error.as_deref().unwrap_or_default()))
                .collect();
            return Err(KnowledgeError::AllFailed(errors.join("; ")));
        }
        let hits = merge_copies(copies, k);
        for hit in &hits {
            if let Some(a) = asked.iter_mut().find(|a| a.node == hit.node) {
                a.used += 1;
            }
        }
        Ok(QueryOutcome {
            query: question.to_owned(),
            collection: collection.map(str::to_owned),
            hits,
            asked,
            skipped: skipped.into_iter().map(|(_, name, _)| name).collect(),
            bytes_out,
            bytes_in,
            embed_ms,
            ms: ms(started),
        })
    }

    /// Placement and health: what each live node holds, and how many chunks have fewer copies
    /// than they should.
    pub async fn status(&self) -> Result<serde_json::Value, KnowledgeError> {
        let live = self.live().await?;
        let mut copies: HashMap<ChunkId, usize> = HashMap::new();
        let mut nodes = Vec::new();
        let own: Vec<ChunkId> = self.held().iter().map(|h| h.id).collect();
        let peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, name) in &live {
            let (ids, error) = if *id == self.inner.mesh.id() {
                (own.clone(), None)
            } else {
                match self.call(*id, &Op::Ids, CALL_TIMEOUT).await {
                    Ok((Reply::Ids(ids), _, _)) => (ids, None),
                    Ok(_) => (Vec::new(), Some("unexpected reply".to_owned())),
                    Err(e) => (Vec::new(), Some(e)),
                }
            };
            for chunk in &ids {
                *copies.entry(*chunk).or_default() += 1;
            }
            let summaries = if *id == self.inner.mesh.id() {
                self.summaries().to_vec()
            } else {
                peers.get(id).cloned().unwrap_or_default()
            };
            let collections: Vec<serde_json::Value> = summaries
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "collection": s.collection, "chunks": s.chunks, "documents": s.documents,
                    })
                })
                .collect();
            nodes.push(serde_json::json!({
                "node": name, "chunks": ids.len(), "collections": collections, "error": error,
            }));
        }
        let wanted = self.inner.replicas.min(live.len());
        let under = copies.values().filter(|c| **c < wanted).count();
        Ok(serde_json::json!({
            "replicas": self.inner.replicas,
            "live_nodes": live.len(),
            "chunks": copies.len(),
            "copies": copies.values().sum::<usize>(),
            "under_replicated": under,
            "healthy": under == 0,
            "nodes": nodes,
        }))
    }

    /// Moves chunks to their owners under the current membership; drops copies this node no
    /// longer owns once every owner has confirmed it holds them.
    async fn rebalance(&self) -> Result<(), KnowledgeError> {
        let live = self.live().await?;
        let me = self.inner.mesh.id();
        let ids: Vec<NodeId> = live.iter().map(|(id, _)| *id).collect();
        let mut wanted_by: HashMap<NodeId, Vec<ChunkId>> = HashMap::new();
        let mut surplus: Vec<(ChunkId, Vec<NodeId>)> = Vec::new();
        for held in self.held().iter() {
            let owners = owners(&held.id, &ids, self.inner.replicas);
            for owner in owners.iter().filter(|o| **o != me) {
                wanted_by.entry(*owner).or_default().push(held.id);
            }
            if !owners.contains(&me) {
                surplus.push((held.id, owners));
            }
        }
        let mut confirmed: HashMap<NodeId, HashSet<ChunkId>> = HashMap::new();
        let mut moved = 0usize;
        for (node, wanted) in wanted_by {
            let mut ok: HashSet<ChunkId> = HashSet::new();
            for ids in wanted.chunks(ID_BATCH) {
                let missing = match self
                    .call(node, &Op::Missing { ids: ids.to_vec() }, CALL_TIMEOUT)
                    .await
                {
                    Ok((Reply::Missing(missing), _, _)) => missing,
                    _ => continue,
                };
                let missing_set: HashSet<ChunkId> = missing.iter().copied().collect();
                ok.extend(ids.iter().filter(|id| !missing_set.contains(*id)));
                for batch in missing.chunks(BATCH) {
                    let chunks: Vec<StoredChunk> = self
                        .inner
                        .store
                        .chunks(batch)?
                        .into_iter()
                        .filter_map(|(_, bytes)| decode(&bytes))
                        .collect();
                    let n = chunks.len();
                    if let Ok((Reply::Stored { .. }, _, _)) =
                        self.call(node, &Op::Store { chunks }, CALL_TIMEOUT).await
                    {
                        ok.extend(batch.iter().copied());
                        moved += n;
                    }
                }
            }
            confirmed.insert(node, ok);
        }
        let drop: Vec<ChunkId> = surplus
            .into_iter()
            .filter(|(id, owners)| {
                owners
                    .iter()
                    .all(|o| confirmed.get(o).is_some_and(|ok| ok.contains(id)))
            })
            .map(|(id, _)| id)
            .collect();
        if !drop.is_empty() {
            self.inner.store.remove_chunks(&drop)?;
            let gone: HashSet<ChunkId> = drop.iter().copied().collect();
            self.inner
                .held
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|h| !gone.contains(&h.id));
            self.changed();
        }
        if moved > 0 || !drop.is_empty() {
            info!(
                "knowledge rebalanced: {moved} chunk copies sent, {} surplus copies dropped",
                drop.len()
            );
        }
        Ok(())
    }

    /// Keeps placement right and the summary announced, until `cancel`.
    pub async fn maintain(self, cancel: tokio_util::sync::CancellationToken) {
        let mut last_members: Vec<NodeId> = Vec::new();
        let mut last_run = Instant::now();
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.inner.dirty.notified() => {
                    // While chunks keep arriving, announce at most every second.
                    tokio::time::sleep(ANNOUNCE_DEBOUNCE).await;
                    self.announce().await;
                    continue;
                }
                _ = watch.tick() => {}
            }
            let Ok(live) = self.live().await else { return };
            let mut members: Vec<NodeId> = live.iter().map(|(id, _)| *id).collect();
            members.sort_unstable();
            let changed = members != last_members;
            if changed || last_run.elapsed() >= REBALANCE_EVERY {
                last_members = members;
                last_run = Instant::now();
                if !self.held().is_empty()
                    && let Err(e) = self.rebalance().await
                {
                    warn!("knowledge rebalance: {e}");
                }
            }
        }
    }

    async fn announce(&self) {
        let this = self.clone();
        let summaries = tokio::task::spawn_blocking(move || this.summaries())
            .await
            .unwrap_or_default();
        let bytes = serde_json::to_vec(&*summaries).unwrap_or_default();
        if let Err(e) = self.inner.mesh.set_value(RECORD_KEY, bytes, false).await {
            warn!("cannot announce knowledge: {e}");
        }
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        match serde_json::from_slice::<Vec<Summary>>(bytes) {
            Ok(list) if list.len() <= 1024 => {
                self.inner
                    .peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(node, list);
            }
            Ok(_) => warn!(peer = %node.short(), "too many knowledge collections announced"),
            Err(e) => warn!(peer = %node.short(), "bad knowledge summary: {e}"),
        }
    }

    async fn serve_op(&self, payload: &[u8]) -> Result<Reply, String> {
        let op: Op =
            postcard::from_bytes(payload).map_err(|e| format!("bad knowledge request: {e}"))?;
        match op {
            Op::Store { chunks } => {
                if chunks.len() > MAX_BATCH {
                    return Err(format!("at most {MAX_BATCH} chunks per request"));
                }
                for chunk in &chunks {
                    chunk.check()?;
                }
                let this = self.clone();
                let new = tokio::task::spawn_blocking(move || this.keep(chunks))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(Reply::Stored { new: new as u32 })
            }
            Op::Search {
                collection,
                vector,
                k,
            } => {
                if vector.len() != DIMS || !vector.iter().all(|x| x.is_finite()) {
                    return Err(format!("a query vector is {DIMS} finite numbers"));
                }
                let this = self.clone();
                let k = (k as usize).clamp(1, 50);
                tokio::task::spawn_blocking(move || {
                    Reply::Hits(this.search_here(collection.as_deref(), &vector, k))
                })
                .await
                .map_err(|e| e.to_string())
            }
            Op::Missing { ids } => {
                if ids.len() > ID_BATCH {
                    return Err(format!("at most {ID_BATCH} ids per request"));
                }
                let held: HashSet<ChunkId> = self.held().iter().map(|h| h.id).collect();
                Ok(Reply::Missing(
                    ids.into_iter().filter(|id| !held.contains(id)).collect(),
                ))
            }
            Op::Ids => Ok(Reply::Ids(self.held().iter().map(|h| h.id).collect())),
        }
    }
}

/// The documents under `path`: the file itself, or the Markdown, text and PDF files in the
/// directory and below (sorted), others skipped.
pub fn files_in(path: &Path) -> Result<Vec<PathBuf>, KnowledgeError> {
    let unreadable = |detail: String| KnowledgeError::Unreadable {
        path: path.to_owned(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| unreadable(e.to_string()))? {
            let entry = entry.map_err(|e| unreadable(e.to_string()))?;
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            } else if path.extension().is_some_and(|e| {
                matches!(
                    e.to_string_lossy().to_ascii_lowercase().as_str(),
                    "md" | "markdown" | "txt" | "text" | "pdf"
                )
            }) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The `rag:query` tool: passages from the mesh, and an answer written from them.
pub fn rag_tool(
    knowledge: Knowledge,
    intents: crate::intent::Intents,
) -> Option<crate::tools::LocalTool> {
    let manifest = crate::tools::pending_contracts()
        .into_iter()
        .find(|m| m.name == "rag:query")?;
    let handler: crate::tools::Handler = Arc::new(move |args: serde_json::Value| {
        let knowledge = knowledge.clone();
        let intents = intents.clone();
        Box::pin(async move {
            let query = args["query"].as_str().unwrap_or_default().to_owned();
            let collection = args["collection"].as_str().map(str::to_owned);
            let k = args["top_k"].as_u64().map_or(DEFAULT_TOP_K, |k| k as usize);
            let found = knowledge
                .query(&query, collection.as_deref(), k)
                .await
                .map_err(|e| e.to_string())?;
            let answer = if found.hits.is_empty() {
                "No passage in the mesh's documents comes near the question.".to_owned()
            } else {
                intents.synthesize(&query, &found, 256).await?.0
            };
            let passages: Vec<serde_json::Value> = found
                .hits
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "document": h.document, "chunk": h.index, "text": h.text,
                        "score": h.score, "node": h.node,
                    })
                })
                .collect();
            Ok(serde_json::json!({"answer": answer, "passages": passages}))
        })
    });
    Some(crate::tools::LocalTool { manifest, handler })
}

/// Gathers a document's chunks, embeds them in batches and sends each to its owners.
struct Placer<'k, 'r> {
    knowledge: &'k Knowledge,
    collection: String,
    document: String,
    live: Vec<(NodeId, String)>,
    next_index: u32,
    pending: Vec<chunk::Piece>,
    report: &'r mut DocReport,
}

impl Placer<'_, '_> {
    async fn push(&mut self, pieces: Vec<chunk::Piece>) -> Result<(), KnowledgeError> {
        self.pending.extend(pieces);
        if self.pending.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), KnowledgeError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pieces = std::mem::take(&mut self.pending);
        let texts: Vec<String> = pieces.iter().map(chunk::Piece::for_embedding).collect();
        let vectors = self
            .knowledge
            .inner
            .models
            .embed_for_routing(texts)
            .await
            .map_err(|e| KnowledgeError::Model(e.to_string()))?;
        let mut chunks = Vec::with_capacity(pieces.len());
        for (piece, embedding) in pieces.into_iter().zip(vectors) {
            chunks.push(StoredChunk {
                collection: self.collection.clone(),
                document: self.document.clone(),
                index: self.next_index,
                heading: piece.heading,
                text: piece.text,
                embedding,
            });
            self.next_index += 1;
        }
        let me = self.knowledge.inner.mesh.id();
        let ids: Vec<NodeId> = self.live.iter().map(|(id, _)| *id).collect();
        let mut per_node: HashMap<NodeId, Vec<StoredChunk>> = HashMap::new();
        for chunk in chunks {
            for owner in owners(&chunk.id(), &ids, self.knowledge.inner.replicas) {
                per_node.entry(owner).or_default().push(chunk.clone());
            }
        }
        for (node, chunks) in per_node {
            let name = self
                .live
                .iter()
                .find(|(id, _)| *id == node)
                .map(|(_, n)| n.clone())
                .unwrap_or_default();
            let n = chunks.len() as u64;
            if node == me {
                let this = self.knowledge.clone();
                tokio::task::spawn_blocking(move || this.keep(chunks))
                    .await
                    .map_err(|e| KnowledgeError::Model(e.to_string()))??;
                *self.report.placed.entry(name).or_default() += n;
                continue;
            }
            match self
                .knowledge
                .call(
                    node,
                    &Op::Store {
                        chunks: chunks.clone(),
                    },
                    CALL_TIMEOUT,
                )
                .await
            {
                Ok((Reply::Stored { .. }, _, _)) => {
                    *self.report.placed.entry(name).or_default() += n;
                }
                outcome => {
                    // Kept here so no copy is lost; the maintenance loop moves it on.
                    warn!(node = %name, "chunks not placed ({outcome:?}); kept here for now");
                    let this = self.knowledge.clone();
                    tokio::task::spawn_blocking(move || this.keep(chunks))
                        .await
                        .map_err(|e| KnowledgeError::Model(e.to_string()))??;
                    self.report.kept_here += n;
                }
            }
        }
        Ok(())
    }
}

/// A PDF's text, pages separated by form feeds. The PDF parser runs on a blocking thread, and a
/// document that makes it panic is reported as unreadable.
async fn pdf_text(path: &Path) -> Result<String, KnowledgeError> {
    let owned = path.to_owned();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| KnowledgeError::Unreadable {
            path: owned.clone(),
            detail: e.to_string(),
        })?;
    let result = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(&bytes))
    })
    .await
    .map_err(|e| KnowledgeError::Model(e.to_string()))?;
    let unreadable = |detail: String| KnowledgeError::Unreadable {
        path: owned.clone(),
        detail,
    };
    match result {
        Ok(Ok(pages)) => Ok(pages.join("\n\u{c}\n")),
        Ok(Err(e)) => Err(unreadable(format!("not a readable PDF ({e})"))),
        Err(_) => Err(unreadable("the PDF parser gave up on it".into())),
    }
}

impl crate::service::GossipService for Knowledge {
    const NAME: &'static str = "knowledge";
    const RECORD_KEY: &'static str = RECORD_KEY;

    fn mesh(&self) -> &Mesh {
        &self.inner.mesh
    }

    async fn announce(&self) {
        Knowledge::announce(self).await;
    }

    fn learn(&self, node: NodeId, bytes: &[u8]) {
        Knowledge::learn(self, node, bytes);
    }

    async fn serve(&self, path: Vec<NodeId>, payload: &[u8]) -> Response {
        match self.serve_op(payload).await {
            Ok(reply) => Response::Routed {
                path,
                reply: RoutedReply::Work {
                    payload: postcard::to_allocvec(&reply).unwrap_or_default(),
                },
            },
            Err(message) => Response::Error {
                code: ErrorCode::BadRequest,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(chunk: u8, score: f32, node: &str) -> Hit {
        Hit {
            id: [chunk; 16],
            collection: "home".into(),
            document: "policy.md".into(),
            index: u32::from(chunk),
            heading: String::new(),
            text: format!("passage {chunk}"),
            score,
            node: node.into(),
        }
    }

    #[test]
    fn replicas_share_the_credit_and_the_best_chunks_come_first() {
        let (a, b, c) = (
            NodeId::from_bytes([1; 32]),
            NodeId::from_bytes([2; 32]),
            NodeId::from_bytes([3; 32]),
        );
        let mut copies: HashMap<ChunkId, Vec<(NodeId, Hit)>> = HashMap::new();
        // Six chunks, each held by a and b; a seventh only by c, the weakest.
        for chunk in 0..6u8 {
            let score = 0.9 - f32::from(chunk) / 100.0;
            for (id, name) in [(a, "a"), (b, "b")] {
                copies
                    .entry([chunk; 16])
                    .or_default()
                    .push((id, hit(chunk, score, name)));
            }
        }
        copies.insert([9; 16], vec![(c, hit(9, 0.1, "c"))]);

        let merged = merge_copies(copies.clone(), 5);
        let chunks: Vec<u8> = merged.iter().map(|h| h.id[0]).collect();
        assert_eq!(chunks, [0, 1, 2, 3, 4], "the five best, best first");
        let count = |node: &str| merged.iter().filter(|h| h.node == node).count();
        // Two holders of every chunk: neither serves all five, the credit alternates.
        assert_eq!(count("a") + count("b"), 5);
        assert!(count("a") >= 2 && count("b") >= 2, "{merged:?}");

        // Asked for more, the chunk only c holds is credited to c.
        let merged = merge_copies(copies, 50);
        assert_eq!(merged.len(), 7);
        assert_eq!(merged.last().map(|h| h.node.as_str()), Some("c"));
    }
}

//! `atmosphere serve`: start identity, storage, transport, discovery, mesh and API; stop them in
//! order on shutdown (announcing the leave first).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use atmosphere_mesh::discovery::{Discovery, DiscoveryMode};
use atmosphere_mesh::transport::quic::{QuicConfig, QuicTransport};
use atmosphere_mesh::transport::{Incoming, Transport};
use atmosphere_mesh::{Hooks, Mesh, PeerAddr, Status};
use atmosphere_proto::{Request, RoutedBody};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{ApiState, router};
use crate::config::{ConfigError, NodeConfig};
use crate::configsync::ConfigSync;
use crate::identity::{self, IdentityError};
use crate::servers::ModelServers;
use crate::store::{Store, StoreError};
use crate::trust::{self, TrustError, TrustService};

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] atmosphere_mesh::transport::quic::BindError),
    #[error(transparent)]
    Discovery(#[from] atmosphere_mesh::discovery::DiscoveryError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Models(#[from] crate::models::ModelError),
    #[error("Matter controller: {0}")]
    Matter(atmosphere_matter::MatterError),
    #[error("model packages: {0}")]
    Packages(#[from] crate::packages::PackagesError),
    #[error("knowledge: {0}")]
    Knowledge(#[from] crate::knowledge::KnowledgeError),
    #[error("model server: {0}")]
    Server(#[from] atmosphere_backends::adapters::AdapterError),
    #[error(
        "cannot serve the API on {addr}: {source} (is another node using the port? set `api` or --api)"
    )]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The bearer key of an API bound beyond 127.0.0.1 (hex, 0600).
pub const API_KEY_FILE: &str = "api.key";

/// What a started node tells its caller (the CLI prints it as the `ready` line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Ready {
    pub id: atmosphere_proto::NodeId,
    pub name: String,
    pub generation: u64,
    pub quic: Vec<SocketAddr>,
    pub api: SocketAddr,
    pub data_dir: std::path::PathBuf,
}

/// Runs a node until `shutdown` resolves. `on_ready` is called once everything listens.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), NodeError> {
    let discovery_mode = config.discovery_mode()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| IdentityError::Io {
        action: "create",
        path: config.data_dir.clone(),
        source,
    })?;
    let (secret_key, created) = identity::load_or_create(&config.data_dir)?;
    let store = Store::open(&config.data_dir)?;
    let generation = store.next_generation()?;
    let mut mesh_config = config.mesh_config(generation)?;
    let models = Arc::new(crate::models::LocalModels::configure(
        &config.models.llm,
        &config.models.engine,
        &config.models.embeddings,
    )?);
    let servers = Arc::new(ModelServers::from_config(&config.models.servers)?);
    let declared = mesh_config.capabilities.clone();
    for capability in models.capabilities() {
        if !mesh_config.capabilities.contains(&capability) {
            mesh_config.capabilities.push(capability);
        }
    }
    // Peers remembered from the last run help a restarted node find the mesh again.
    for peer in store.load_peers()? {
        if !mesh_config.bootstrap.iter().any(|p| p.id == peer.id) {
            mesh_config.bootstrap.push(peer);
        }
    }

    let self_id = atmosphere_mesh::transport::quic::node_id(&secret_key.public());
    let secret_bytes = secret_key.to_bytes();
    let store = Arc::new(store);
    let (trust, readmitted_rx, loaded) = TrustService::load(
        self_id,
        store.clone(),
        config.data_dir.clone(),
        config.token_ttl,
    )?;
    let mut quic = QuicConfig::new(config.listen);
    quic.generation = generation;
    let (transport, incoming_rx) =
        QuicTransport::bind_with_gate(secret_key, quic, Some(trust.clone())).await?;
    let id = transport.local_id();
    let quic_addrs = transport.local_addrs();
    if created {
        info!(id = %id, "created a new node identity");
    }

    let (found_tx, found_rx) = mpsc::channel(64);
    let port = quic_addrs
        .first()
        .map_or(config.listen.port(), SocketAddr::port);
    let ips: Vec<_> = quic_addrs.iter().map(SocketAddr::ip).collect();
    let discovery = Discovery::start(
        discovery_mode,
        id,
        &mesh_config.name,
        port,
        &ips,
        &config.mesh_fingerprint(),
        found_tx,
    )?;
    if discovery_mode == DiscoveryMode::Lan && config.listen.ip().is_loopback() {
        warn!("LAN discovery with a loopback listen address: peers will not be able to connect");
    }

    let (app_tx, app_rx) = mpsc::channel(64);
    let (mesh, mesh_task) = Mesh::spawn(
        transport.clone(),
        incoming_rx,
        Hooks {
            discovered_rx: discovery.is_some().then_some(found_rx),
            app_tx: Some(app_tx),
        },
        mesh_config.clone(),
    );
    let trust_service = loaded.into_service(trust.clone(), mesh.clone());
    let trust_cancel = tokio_util::sync::CancellationToken::new();
    let (trust_tx, trust_rx) = mpsc::channel(64);
    let (config_tx, config_rx) = mpsc::channel(16);
    let (intent_tx, intent_rx) = mpsc::channel(64);
    let (tool_tx, tool_rx) = mpsc::channel(64);
    let (agent_tx, agent_rx) = mpsc::channel(64);
    let (package_tx, package_rx) = mpsc::channel(256);
    let (knowledge_tx, knowledge_rx) = mpsc::channel(256);
    let dispatcher = tokio::spawn(dispatch(
        app_rx,
        trust_tx,
        config_tx,
        [
            (crate::intent::WORK_KIND, intent_tx),
            (crate::tools::WORK_KIND, tool_tx),
            (crate::agents::WORK_KIND, agent_tx),
            (crate::packages::WORK_KIND, package_tx),
            (crate::knowledge::WORK_KIND, knowledge_tx),
        ],
    ));
    let trust_task = tokio::spawn(trust::run(
        trust_service.clone(),
        trust_rx,
        readmitted_rx,
        trust_cancel.clone(),
    ));
    let usage = config
        .llamafarm
        .path(&config.data_dir)
        .map(|path| crate::configsync::Usage {
            path,
            project: config.llamafarm.project.clone(),
            server: config.llamafarm.server.clone(),
        });
    let configs = ConfigSync::new(
        trust.clone(),
        store.clone(),
        mesh.clone(),
        servers.clone(),
        usage,
    );
    let configs_task = tokio::spawn(crate::configsync::run(
        configs.clone(),
        config_rx,
        trust_cancel.clone(),
    ));
    let intents = crate::intent::Intents::new(
        mesh.clone(),
        mesh_config.name.clone(),
        models.clone(),
        servers.clone(),
        config
            .descriptors
            .iter()
            .map(|d| atmosphere_routing::Descriptor {
                capability: d.capability.clone(),
                description: d.description.clone(),
                examples: d.examples.clone(),
            })
            .collect(),
    );
    let knowledge = crate::knowledge::Knowledge::open(
        mesh.clone(),
        mesh_config.name.clone(),
        store.clone(),
        models.clone(),
        config.knowledge.replicas,
    )?;
    intents.attach_knowledge(knowledge.clone());
    let knowledge_task = tokio::spawn(crate::service::run(
        knowledge.clone(),
        knowledge_rx,
        trust_cancel.clone(),
    ));
    let knowledge_upkeep = tokio::spawn(knowledge.clone().maintain(trust_cancel.clone()));
    let intents_task = tokio::spawn(crate::intent::run(
        intents.clone(),
        intent_rx,
        trust_cancel.clone(),
    ));
    let mut local_tools = crate::tools::builtin_tools(
        mesh.clone(),
        mesh_config.name.clone(),
        models.clone(),
        servers.clone(),
        intents.clone(),
        config.notify.clone(),
        config.data_dir.clone(),
    );
    // Tools added without recompiling: manifest files in <data_dir>/tools/.
    let (external, errors) = crate::tools::load_dir(&config.data_dir.join("tools"));
    for error in errors {
        warn!("tool file skipped: {error}");
    }
    local_tools.extend(external);
    let matter = if config.matter.controller {
        let state = Arc::new(crate::store::MatterState(store.clone()));
        let controller =
            atmosphere_matter::Controller::start(state, config.matter.mdns_interface.clone())
                .map_err(NodeError::Matter)?;
        info!("Matter controller running");
        Some(Arc::new(controller))
    } else {
        None
    };
    if let Some(controller) = &matter {
        local_tools.extend(crate::tools::matter_tools(controller.clone()));
    }
    local_tools.extend(crate::tools::vision_tools(
        &config.vision,
        &atmosphere_backends::models::cache_dir(),
    ));
    local_tools.extend(crate::knowledge::rag_tool(
        knowledge.clone(),
        intents.clone(),
    ));
    let tools = crate::tools::Tools::new(mesh.clone(), mesh_config.name.clone(), local_tools);
    intents.attach_tools(tools.clone());
    let agents = crate::agents::Agents::new(
        mesh.clone(),
        mesh_config.name.clone(),
        store.clone(),
        tools.clone(),
    );
    intents.attach_agents(agents.clone());
    let agents_task = tokio::spawn(crate::service::run(
        agents.clone(),
        agent_rx,
        trust_cancel.clone(),
    ));
    let tools_task = tokio::spawn(crate::service::run(
        tools.clone(),
        tool_rx,
        trust_cancel.clone(),
    ));
    let matter_view = crate::bridge::MatterView::default();
    intents.attach_matter(matter_view.clone());
    let bridge_task = tokio::spawn(crate::bridge::run(
        matter_view.clone(),
        mesh.clone(),
        matter.clone(),
        trust_cancel.clone(),
    ));
    let packages = crate::packages::Packages::open(
        mesh.clone(),
        &config.data_dir,
        secret_bytes,
        trust.clone(),
        models.clone(),
    )?;
    let packages_task = tokio::spawn(crate::service::run(
        packages.clone(),
        package_rx,
        trust_cancel.clone(),
    ));
    let models_task = tokio::spawn(crate::servers::run(
        mesh.clone(),
        models.clone(),
        servers.clone(),
        declared,
        config.models.warmup,
        config.models.health_interval,
        trust_cancel.clone(),
    ));

    let listener = TcpListener::bind(config.api)
        .await
        .map_err(|source| NodeError::Api {
            addr: config.api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| NodeError::Api {
        addr: config.api,
        source,
    })?;
    let peer_addrs = quic_addrs
        .iter()
        .map(|addr| {
            PeerAddr {
                id,
                addrs: vec![*addr],
            }
            .to_string()
        })
        .collect();
    let api_key = if config.api.ip().is_loopback() {
        None
    } else {
        let key = match identity::load_key(&config.data_dir, API_KEY_FILE)? {
            Some(key) => key,
            None => {
                let key: [u8; 32] = rand::random();
                identity::store_key(&config.data_dir, API_KEY_FILE, &key)?;
                key
            }
        };
        info!(
            "the API listens beyond 127.0.0.1: clients need the key in {}",
            config.data_dir.join(API_KEY_FILE).display()
        );
        Some(key.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let app = router(ApiState {
        mesh: mesh.clone(),
        peer_addrs,
        trust: Some(trust_service),
        node_name: mesh_config.name.clone(),
        api_key,
        models,
        servers,
        configs: Some(configs),
        intents: Some(intents),
        tools: Some(tools),
        agents: Some(agents),
        packages: Some(packages),
        knowledge: Some(knowledge),
        matter,
        matter_view,
        recent_intents: Default::default(),
    });

    let saver = tokio::spawn(remember_peers(mesh.clone(), store.clone()));

    on_ready(&Ready {
        id,
        name: mesh_config.name.clone(),
        generation,
        quic: quic_addrs.clone(),
        api: api_addr,
        data_dir: config.data_dir.clone(),
    });
    info!(name = %mesh_config.name, %id, generation, ?quic_addrs, %api_addr, "node started");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stopped = async {
            let _ = stop_rx.await;
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    });
    shutdown.await;

    info!("shutting down: announcing leave");
    if tokio::time::timeout(Duration::from_secs(2), mesh.leave())
        .await
        .is_err()
    {
        warn!("leave announcement timed out");
    }
    saver.abort();
    trust_cancel.cancel();
    let _ = trust_task.await;
    let _ = configs_task.await;
    let _ = intents_task.await;
    let _ = tools_task.await;
    let _ = agents_task.await;
    let _ = packages_task.await;
    let _ = knowledge_task.await;
    let _ = knowledge_upkeep.await;
    let _ = bridge_task.await;
    dispatcher.abort();
    let _ = models_task.await;
    let _ = stop_tx.send(());
    let _ = server.await;
    mesh.shutdown();
    let _ = mesh_task.await;
    if let Some(discovery) = discovery {
        discovery.shutdown();
    }
    transport.shutdown().await;
    Ok(())
}

/// Hands each request the mesh does not answer itself to the service that does.
async fn dispatch(
    mut app_rx: mpsc::Receiver<Incoming>,
    trust_tx: mpsc::Sender<Incoming>,
    config_tx: mpsc::Sender<Incoming>,
    services: [(&'static str, mpsc::Sender<Incoming>); 5],
) {
    while let Some(incoming) = app_rx.recv().await {
        let service = match &incoming.request {
            Request::Routed {
                body: RoutedBody::Work { kind, .. },
                ..
            } => services.iter().find(|(k, _)| k == kind).map(|(_, tx)| tx),
            _ => None,
        };
        let to = match (&incoming.request, service) {
            (Request::SignConfig { .. }, _) => &config_tx,
            (Request::Routed { .. }, Some(service)) => service,
            (Request::Routed { .. }, None) => {
                let _ = incoming.reply_tx.send(atmosphere_proto::Response::Error {
                    code: atmosphere_proto::ErrorCode::BadRequest,
                    message: "no service for that work on this node".into(),
                });
                continue;
            }
            (_, _) => &trust_tx,
        };
        if to.send(incoming).await.is_err() {
            return;
        }
    }
}

/// Remembers the live peers whenever they change (checked every second), so a restart can rejoin
/// without mDNS or bootstrap even when the node dies seconds after joining.
async fn remember_peers(mesh: Mesh, store: Arc<Store>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut saved_set: Vec<PeerAddr> = Vec::new();
    loop {
        ticker.tick().await;
        let Ok(status) = mesh.status().await else {
            return;
        };
        let mut peers: Vec<PeerAddr> = status
            .nodes
            .iter()
            .filter(|n| !n.is_self && n.status == Status::Alive && !n.addrs.is_empty())
            .map(|n| PeerAddr {
                id: n.id,
                addrs: n.addrs.clone(),
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        if peers.is_empty() || peers == saved_set {
            continue;
        }
        let store = store.clone();
        let to_save = peers.clone();
        match tokio::task::spawn_blocking(move || store.save_peers(&to_save)).await {
            Ok(Ok(())) => saved_set = peers,
            Ok(Err(e)) => warn!("could not remember peers: {e}"),
            Err(_) => return,
        }
    }
}

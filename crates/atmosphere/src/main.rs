//! `atmosphere`: run a node, and inspect and steer the mesh through the local node's HTTP API.

mod client;
mod demo;
mod knowledge;
mod llm;
mod matter;
mod packages;
mod render;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use atmosphere_node::NodeConfig;
use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::packages::ModelCommand;

/// Atmosphere, the Internet of Intent: a mesh of home and edge machines that routes what people
/// ask for to the node able to do it.
#[derive(Debug, Parser)]
#[command(name = "atmosphere", version, propagate_version = true)]
struct Cli {
    /// API address of the local node the command talks to.
    #[arg(
        long,
        global = true,
        env = "ATMOSPHERE_API",
        default_value = "127.0.0.1:7070"
    )]
    api: SocketAddr,
    /// Bearer key of a node API bound beyond 127.0.0.1 (the contents of its DATA_DIR/api.key).
    #[arg(
        long,
        global = true,
        env = "ATMOSPHERE_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node in the foreground until Ctrl-C or SIGTERM (announces its leave first).
    ///
    /// On start it prints one JSON line on stdout: {"event":"ready","id":..,"api":..,"quic":[..]}.
    Serve(Box<ServeArgs>),
    /// Look at the mesh.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Steer nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Node configuration help, and LlamaFarm project files shared across the mesh.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Issue and revoke join tokens (on the mesh authority).
    #[command(subcommand)]
    Token(TokenCommand),
    /// This node's credentials.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Run the in-process models directly: chat with the GGUF model, embed with MiniLM.
    #[command(subcommand)]
    Llm(llm::LlmCommand),
    /// Start a three-node home mesh on this machine (Mac-Studio, Dell-Server, Garage-Pi), wait for
    /// it to converge over mDNS and show its status.
    Demo(demo::DemoArgs),
    /// Say what you want: the mesh finds the capability and the node, runs it there and answers
    /// (`→ Routed to: NODE (capability, N hops)`, `← Result: …`; --json gives the whole trace).
    Intent {
        text: String,
        /// Decide the route and show it; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Longest answer, in tokens.
        #[arg(long)]
        max_tokens: Option<usize>,
    },
    /// The mesh's tools: list them, read their contracts, call them (here or on a provider).
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Agents: deploy them on a node, list them, wake them with an input.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// The Matter bridge: discover and commission devices, list and switch them, run a
    /// virtual light or temperature sensor.
    #[command(subcommand)]
    Matter(matter::MatterCommand),
    /// Documents spread over the mesh: add them, search them, see where their chunks live.
    #[command(subcommand)]
    Knowledge(knowledge::KnowledgeCommand),
    /// Model packages for offline distribution: pack and seal, verify, push and pull over the
    /// mesh, export to and import from a directory (USB stick); imported models are served.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Run a node as a systemd service: write the unit, or print it.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Route intents without running them: one per line on stdin, one JSON line per intent out
    /// (`text`, `capability`, `class`, `node`, `score`, `fallback`), using this node's live catalog.
    Route {
        /// Score a labelled set instead (JSON lines with `text` and `capability`): accuracy per
        /// capability and the confusion matrix.
        #[arg(long, value_name = "FILE")]
        eval: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (see `atmosphere config example`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Node name in the mesh.
    #[arg(long)]
    name: Option<String>,
    /// Directory for identity and state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC listen address, e.g. 0.0.0.0:7400.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP API listen address (serve's own; not the global --api of client commands).
    #[arg(long = "api-listen")]
    api_listen: Option<SocketAddr>,
    /// Bootstrap peer NODE_ID@IP:PORT (repeatable).
    #[arg(long = "bootstrap")]
    bootstrap: Vec<String>,
    /// mDNS discovery: auto, lan, loopback or off.
    #[arg(long)]
    discovery: Option<String>,
    /// Mesh name (nodes of other meshes are ignored).
    #[arg(long)]
    mesh: Option<String>,
    /// Capability to declare, NAME or NAME/DETAIL (repeatable).
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// Chat model this node serves: "auto"/"smollm2" (SmolLM2-135M from the model cache),
    /// "gemma3" (Gemma 3 270M) or a GGUF path.
    #[arg(long)]
    llm: Option<String>,
    /// Engine for the chat model: "auto" (llama.cpp when this build has it, else candle),
    /// "candle" or "llama.cpp".
    #[arg(long)]
    engine: Option<String>,
    /// Embeddings this node serves: "auto" (MiniLM from the model cache) or a directory.
    #[arg(long)]
    embeddings: Option<String>,
    /// Model server this node fronts, KIND=URL with KIND ollama, openai or llamafarm
    /// (repeatable; LlamaFarm projects and runtimes are set in the config file).
    #[arg(long = "model-server", value_name = "KIND=URL")]
    model_servers: Vec<String>,
    /// Skip the short generation that measures the chat model's speed at start.
    #[arg(long)]
    no_warmup: bool,
    /// Run a Matter controller (bridge) on this node; its fabric lives in the node database.
    #[arg(long)]
    matter: bool,
    /// The LlamaFarm project file this node uses and keeps in sync with the mesh.
    #[arg(long, value_name = "PATH")]
    llamafarm_config: Option<PathBuf>,
    /// A LlamaFarm project (NAMESPACE/NAME) to use before this node has its file.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    llamafarm_project: Option<String>,
    /// A LlamaFarm server to front for the project, e.g. http://127.0.0.1:14345.
    #[arg(long, value_name = "URL")]
    llamafarm_server: Option<String>,
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Nodes, their health and capabilities (the spec's demo step 1).
    Status,
    /// Other nodes with address, health, hops and load.
    Peers,
    /// The gradient table: capability → provider, next hop, hops, cost.
    Routes,
    /// Send an echo to a node along the gradient table and show the path.
    Ping {
        /// Node name, id, or id prefix.
        node: String,
    },
    /// Create a new mesh: this node becomes its authority (holds the signing key) and first member.
    Init {
        /// The mesh's name.
        #[arg(long)]
        name: String,
    },
    /// Make a one-time invite for a new node (run on the authority); paste it into `mesh join`.
    Invite {
        /// How long the invite stays usable, e.g. 30m, 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Join a mesh with an invite (asks the authority) or a token (`token issue` output; offline).
    Join {
        /// `atmo-invite1.…` or `atmo1.…`
        invite: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token for a node's key (its `atmosphere node id`).
    Issue {
        /// The node's id (64 hex digits).
        #[arg(long)]
        node_key: atmosphere_proto::NodeId,
        /// The node's name in the mesh.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 24h; the node renews it at 2/3 by itself.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Capability classes the node may offer (repeatable; none means any).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
    /// Revoke a node (name or id) or a token (its 32-hex-digit id); spreads at once by gossip.
    Revoke {
        target: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Check this node's token, offline (the spec's demo step 8).
    Verify,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// This node's id and the bootstrap line peers can use to reach it.
    Id,
    /// Make a node drop all its links, as if its network failed (the spec's step 7).
    Disconnect {
        /// Node name, id, or id prefix.
        node: String,
    },
    /// Bring a disconnected node back (the spec's step 9).
    Reconnect {
        /// Node name, id, or id prefix.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Every agent of the mesh and the node it runs on.
    List,
    /// An agent's definition (its diff on its base).
    Info { name: String },
    /// Deploy an agent: a JSON definition file, or the name of a built-in agent
    /// (vision_monitor, anomaly_detector, notifier). A redeploy keeps its state.
    Deploy {
        file_or_name: String,
        /// The node to run it on (name or id prefix); default: this one.
        #[arg(long)]
        node: Option<String>,
    },
    /// Wake an agent with an input and show what it did.
    Invoke {
        name: String,
        #[arg(long)]
        input: String,
    },
}

#[derive(Debug, Subcommand)]
enum ToolCommand {
    /// Every tool of the mesh and the nodes that provide it.
    List,
    /// A tool's contract: description, input and output JSON Schema, providers.
    Info { name: String },
    /// Call a tool; the arguments are checked against its schema before anything runs.
    Call {
        name: String,
        /// The arguments, a JSON object, e.g. '{"prompt": "hello"}'.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Run on this node (name or id prefix) rather than the nearest provider.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print an annotated example config file.
    Example,
    /// Sign a `llamafarm.yaml` as its project's next version and spread it: every node that uses
    /// the project rewrites its copy and reloads its model servers. Signed by the mesh authority
    /// (this node, or the authority it reaches).
    Push {
        /// The project file (its `namespace` and `name` say which project it is).
        file: PathBuf,
    },
    /// The shared project files this node knows: project, version, size, whether it uses it.
    List,
    /// Print a project's newest text.
    Show {
        /// NAMESPACE/NAME, e.g. default/home.
        project: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // iroh builds reqwest with rustls but no crypto provider; ours is ring (no C toolchain needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let client = Client::with_key(cli.api, cli.api_key.as_deref())?;
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => Box::pin(serve(*args)).await,
        Command::Mesh(MeshCommand::Status) => {
            let status = client.status().await?;
            render::output(json, &status, render::status)
        }
        Command::Mesh(MeshCommand::Peers) => {
            let peers = client.peers().await?;
            render::output(json, &peers, render::peers)
        }
        Command::Mesh(MeshCommand::Routes) => {
            let routes = client.routes().await?;
            render::output(json, &routes, render::routes)
        }
        Command::Mesh(MeshCommand::Ping { node }) => {
            let result = client.ping(&node).await?;
            render::output(json, &result, render::ping)
        }
        Command::Node(NodeCommand::Id) => {
            let identity = client.identity().await?;
            render::output(json, &identity, render::identity)
        }
        Command::Node(NodeCommand::Disconnect { node }) => {
            let result = client.control("disconnect", &node).await?;
            render::output(json, &result, render::control)
        }
        Command::Node(NodeCommand::Reconnect { node }) => {
            let result = client.control("reconnect", &node).await?;
            render::output(json, &result, render::control)
        }
        Command::Mesh(MeshCommand::Init { name }) => {
            let status = client.init(&name).await?;
            render::output(json, &status, render::auth_status)
        }
        Command::Mesh(MeshCommand::Invite { ttl }) => {
            let issued = client.invite(ttl).await?;
            render::output(json, &issued, |i| format!("{}\n", i.text))
        }
        Command::Mesh(MeshCommand::Join { invite }) => {
            let status = client.join(&invite).await?;
            render::output(json, &status, render::auth_status)
        }
        Command::Token(TokenCommand::Issue {
            node_key,
            name,
            ttl,
            capabilities,
        }) => {
            let issued = client.issue(node_key, &name, ttl, capabilities).await?;
            render::output(json, &issued, |i| format!("{}\n", i.text))
        }
        Command::Token(TokenCommand::Revoke { target, reason }) => {
            let revoked = client.revoke(&target, reason).await?;
            render::output(json, &revoked, |r| {
                format!(
                    "Revoked {}; every node drops it within two gossip rounds.\n",
                    r.revoked
                )
            })
        }
        Command::Auth(AuthCommand::Verify) => {
            let status = client.auth_status().await?;
            render::output(json, &status, render::auth_status)?;
            if status.token_status != "valid" {
                anyhow::bail!("token is {}", status.token_status);
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Example) => {
            print!("{}", atmosphere_node::config::EXAMPLE);
            Ok(())
        }
        Command::Config(ConfigCommand::Push { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let version = client.config_push(text).await?;
            render::output(json, &version, |v| {
                format!(
                    "Pushed {} version {}; nodes using it reload within seconds.\n",
                    v.project, v.version
                )
            })
        }
        Command::Config(ConfigCommand::List) => {
            let list = client.config_list().await?;
            render::output(json, &list, render::configs)
        }
        Command::Config(ConfigCommand::Show { project }) => {
            let version = client.config_show(&project).await?;
            render::output(json, &version, |v| v.text.clone())
        }
        Command::Demo(args) => demo::run(args, json).await,
        Command::Service(command) => service::run(command, json),
        Command::Intent {
            text,
            dry_run,
            max_tokens,
        } => {
            let outcome = client
                .intent(&atmosphere_node::intent::IntentRequest {
                    text,
                    dry_run,
                    max_tokens,
                    messages: None,
                    temperature: None,
                })
                .await?;
            render::output(json, &outcome, render::intent)
        }
        Command::Route { eval } => route(&client, eval, json).await,
        Command::Model(command) => packages::run(command, &client, json).await,
        Command::Matter(command) => matter::run(command, &client, json).await,
        Command::Knowledge(command) => knowledge::run(command, &client, json).await,
        Command::Agent(AgentCommand::List) => {
            let agents = client.agents().await?;
            render::output(json, &agents, render::agents)
        }
        Command::Agent(AgentCommand::Info { name }) => {
            let agent = client.agent(&name).await?;
            render::output(json, &agent, |a| {
                serde_json::to_string_pretty(a).unwrap_or_default() + "\n"
            })
        }
        Command::Agent(AgentCommand::Deploy { file_or_name, node }) => {
            let def = match atmosphere_agents::builtin()
                .into_iter()
                .find(|d| d.name == file_or_name)
            {
                Some(def) => def,
                None => {
                    let bytes = std::fs::read(&file_or_name).with_context(|| {
                        format!("{file_or_name} is neither a built-in agent nor a readable file")
                    })?;
                    atmosphere_agents::AgentDef::from_bytes(&bytes)
                        .with_context(|| file_or_name.clone())?
                }
            };
            let info = client.deploy_agent(def, node).await?;
            render::output(json, &info, |i| {
                format!(
                    "Deployed {} (version {}) on {}.\n",
                    i.def.name, i.def.version, i.node
                )
            })
        }
        Command::Agent(AgentCommand::Invoke { name, input }) => {
            let activation = client.invoke_agent(&name, &input).await?;
            render::output(json, &activation, render::activation)
        }
        Command::Tool(ToolCommand::List) => {
            let tools = client.tools().await?;
            render::output(json, &tools, render::tools)
        }
        Command::Tool(ToolCommand::Info { name }) => {
            let tool = client.tool(&name).await?;
            render::output(json, &tool, |t| {
                serde_json::to_string_pretty(t).unwrap_or_default() + "\n"
            })
        }
        Command::Tool(ToolCommand::Call { name, args, node }) => {
            let args: serde_json::Value = serde_json::from_str(&args)
                .with_context(|| format!("--args is not JSON: {args}"))?;
            let result = client
                .call_tool(&name, &atmosphere_node::tools::CallRequest { args, node })
                .await?;
            render::output(json, &result, |r| {
                format!(
                    "→ {} ran on {} in {:.0} ms\n{}\n",
                    r.tool,
                    r.node,
                    r.ms,
                    serde_json::to_string_pretty(&r.output).unwrap_or_default()
                )
            })
        }
        Command::Llm(command) => tokio::task::spawn_blocking(move || llm::run(command, json))
            .await
            .context("the model task failed")?,
    }
}

/// `atmosphere route`: stdin lines → JSON lines, or a labelled file → accuracy report.
async fn route(client: &Client, eval: Option<PathBuf>, json: bool) -> Result<()> {
    use std::io::BufRead;
    if let Some(path) = eval {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let rows = atmosphere_routing::eval::parse_jsonl(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut decisions = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(200) {
            let texts = chunk.iter().map(|r| r.text.clone()).collect();
            decisions.extend(client.route(texts).await?);
        }
        let report = atmosphere_routing::eval::Report::new(
            rows.iter()
                .zip(&decisions)
                .map(|(row, d)| (row.capability.as_str(), d.class_label())),
        );
        return render::output(json, &report, |r| r.to_string());
    }
    let lines: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<_, _>>()
        .context("reading stdin")?;
    let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    for chunk in lines.chunks(200) {
        for decision in client.route(chunk.to_vec()).await? {
            let line = serde_json::json!({
                "text": decision.text,
                "capability": decision.capability,
                "class": decision.class_label(),
                "node": decision.chosen().map(|c| c.candidate.node.clone()),
                "score": decision.score,
                "fallback": decision.fallback,
            });
            println!("{line}");
        }
    }
    Ok(())
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("ATMOSPHERE_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,iroh=warn,noq=warn,mdns_sd=warn")
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: ServeArgs) -> Result<()> {
    init_logging();
    let mut config = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    if let Some(name) = args.name {
        config.name = name;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(api) = args.api_listen {
        config.api = api;
    }
    if !args.bootstrap.is_empty() {
        config.bootstrap = args.bootstrap;
    }
    if let Some(discovery) = args.discovery {
        config.discovery = discovery;
    }
    if let Some(mesh) = args.mesh {
        config.mesh = mesh;
    }
    if !args.capabilities.is_empty() {
        config.capabilities = args.capabilities;
    }
    if let Some(llm) = args.llm {
        config.models.llm = llm;
    }
    if let Some(engine) = args.engine {
        config.models.engine = engine;
    }
    if let Some(embeddings) = args.embeddings {
        config.models.embeddings = embeddings;
    }
    if args.no_warmup {
        config.models.warmup = false;
    }
    if args.matter {
        config.matter.controller = true;
    }
    if let Some(path) = args.llamafarm_config {
        config.llamafarm.config = Some(path);
    }
    if let Some(project) = args.llamafarm_project {
        config.llamafarm.project = Some(project);
    }
    if let Some(server) = args.llamafarm_server {
        config.llamafarm.server = Some(server);
    }
    for server in args.model_servers {
        let Some((kind, url)) = server.split_once('=') else {
            anyhow::bail!(
                "--model-server {server:?}: expected KIND=URL, e.g. ollama=http://127.0.0.1:11434"
            );
        };
        let kind = match kind {
            "ollama" => atmosphere_backends::adapters::Kind::Ollama,
            "openai" => atmosphere_backends::adapters::Kind::OpenAi,
            "llamafarm" => atmosphere_backends::adapters::Kind::LlamaFarm,
            other => anyhow::bail!(
                "--model-server: unknown kind {other:?}; use ollama, openai or llamafarm"
            ),
        };
        config
            .models
            .servers
            .push(atmosphere_node::config::ServerSection {
                kind,
                url: url.to_owned(),
                project: None,
                runtime: None,
                timeout: std::time::Duration::from_secs(120),
            });
    }
    atmosphere_node::run(config, shutdown_signal(), |ready| {
        let line = serde_json::json!({
            "event": "ready",
            "id": ready.id,
            "name": ready.name,
            "generation": ready.generation,
            "quic": ready.quic,
            "api": ready.api,
            "data_dir": ready.data_dir,
        });
        println!("{line}");
    })
    .await
    .context("the node stopped with an error")
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

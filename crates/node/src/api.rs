//! The node's HTTP API (axum), bound to 127.0.0.1 by default: what the CLI and local apps use.
//! Only this module knows HTTP.

use atmosphere_mesh::{EchoResult, Mesh, MeshError, MeshStatus, NodeInfo, RouteInfo};
use atmosphere_proto::{Control, ErrorCode, NodeId};
use std::time::Duration;

use crate::trust::{AuthStatus, TrustError, TrustService};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub use atmosphere_api::{
    Body, BodyError, CommissionRequest, ConfigPush, DeployRequest, ImportRequest, InitRequest,
    InviteRequest, InvokeRequest, IssueRequest, JoinRequest, KnowledgeAddRequest, KnowledgeQuery,
    NodeRequest, PullRequest, PushRequest, RevokeRequest, RouteBatch, SealRequest,
};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub mesh: Mesh,
    /// This node's `NODE_ID@IP:PORT` lines, for `atmosphere node id`.
    pub peer_addrs: Vec<String>,
    /// The trust layer (absent in API tests over the in-memory transport).
    pub trust: Option<TrustService>,
    pub node_name: String,
    /// Required as `Authorization: Bearer KEY` when set (the API is bound beyond 127.0.0.1).
    pub api_key: Option<String>,
    /// The models this node runs itself (OpenAI-compatible endpoints).
    pub models: std::sync::Arc<crate::models::LocalModels>,
    /// Model servers this node fronts.
    pub servers: std::sync::Arc<crate::servers::ModelServers>,
    /// Shared LlamaFarm project files (absent in API tests over the in-memory transport).
    pub configs: Option<crate::configsync::ConfigSync>,
    /// The intent router and executor (absent in API tests over the in-memory transport).
    pub intents: Option<crate::intent::Intents>,
    /// The tool service (absent in API tests over the in-memory transport).
    pub tools: Option<crate::tools::Tools>,
    /// The agent service (absent in API tests over the in-memory transport).
    pub agents: Option<crate::agents::Agents>,
    /// Model packages (absent in API tests over the in-memory transport).
    pub packages: Option<crate::packages::Packages>,
    /// Knowledge spread over the mesh (absent in API tests over the in-memory transport).
    pub knowledge: Option<crate::knowledge::Knowledge>,
    /// The Matter controller, when this node runs one.
    pub matter: Option<std::sync::Arc<atmosphere_matter::Controller>>,
    /// Every bridge's devices, as gossiped.
    pub matter_view: crate::bridge::MatterView,
    /// The last intents said here, for the dashboard.
    pub recent_intents: crate::dashboard::RecentIntents,
}

/// An API error: a status code and a JSON body `{ "error": kind, "message": text }`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// A JSON body of type `T`, checked ([`Body::check`]) before the handler sees it. A body that
/// does not decode is answered `400 bad_json`, one that fails its check `400 invalid` (or `413
/// too_large`), each with what was wrong.
#[derive(Debug)]
pub struct Checked<T>(pub T);

impl<S: Send + Sync, T: Body> axum::extract::FromRequest<S> for Checked<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(body) = Json::<T>::from_request(request, state)
            .await
            .map_err(|rejection| ApiError {
                status: rejection.status(),
                kind: "bad_json",
                message: format!(
                    "{} (see docs/API.md for {})",
                    rejection.body_text(),
                    T::ROUTE
                ),
            })?;
        body.check()?;
        Ok(Self(body))
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        let (status, kind) = match &error {
            BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyError::Agent(_) => (StatusCode::BAD_REQUEST, "invalid_agent"),
            _ => (StatusCode::BAD_REQUEST, "invalid"),
        };
        Self::new(status, kind, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind.into(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<MeshError> for ApiError {
    fn from(error: MeshError) -> Self {
        let (status, kind) = match &error {
            MeshError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
            MeshError::NoRoute(_) => (StatusCode::BAD_GATEWAY, "no_route"),
            MeshError::Isolated => (StatusCode::SERVICE_UNAVAILABLE, "isolated"),
            MeshError::Transport(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
            MeshError::Remote {
                code: ErrorCode::Isolated,
                ..
            } => (StatusCode::BAD_GATEWAY, "peer_isolated"),
            MeshError::Remote { .. } | MeshError::Protocol(_) => {
                (StatusCode::BAD_GATEWAY, "peer_error")
            }
            MeshError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, kind, error.to_string())
    }
}

impl From<TrustError> for ApiError {
    fn from(error: TrustError) -> Self {
        let (status, kind) = match &error {
            TrustError::AlreadyMember { .. } => (StatusCode::CONFLICT, "already_member"),
            TrustError::NotMember => (StatusCode::CONFLICT, "not_member"),
            TrustError::NotAuthority => (StatusCode::FORBIDDEN, "not_authority"),
            TrustError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            TrustError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
            TrustError::Token(_)
            | TrustError::BadInvite(_)
            | TrustError::NotForThisNode { .. }
            | TrustError::BadTarget(_) => (StatusCode::BAD_REQUEST, "invalid"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, kind, error.to_string())
    }
}

fn trust(state: &ApiState) -> Result<&TrustService, ApiError> {
    state.trust.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_trust",
        "this node runs without a trust layer",
    ))
}

/// Answer of `POST /v1/mesh/invite` and `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub text: String,
}

/// Answer of `POST /v1/tokens/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: String,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: NodeId,
    pub name: String,
    pub peer_addrs: Vec<String>,
}

/// Answer of the steering endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResult {
    pub node: NodeId,
    pub action: String,
    pub ok: bool,
}

/// Answer of `POST /v1/mesh/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingResult {
    pub node: NodeId,
    #[serde(flatten)]
    pub echo: EchoResult,
}

/// Refuses requests without the bearer key, when one is configured.
async fn require_key(
    State(state): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), key.as_bytes()) {
        next.run(request).await
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: "this API is bound beyond 127.0.0.1 and needs its key: pass the contents of \
                      DATA_DIR/api.key with --api-key or ATMOSPHERE_API_KEY"
                .into(),
        }
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/v1/dashboard/stream", get(crate::dashboard::stream))
        .route("/v1/health", get(health))
        .route("/v1/node", get(node))
        .route("/v1/mesh/status", get(status))
        .route("/v1/mesh/peers", get(peers))
        .route("/v1/mesh/routes", get(routes))
        .route("/v1/mesh/ping", post(ping))
        .route("/v1/node/disconnect", post(disconnect))
        .route("/v1/node/reconnect", post(reconnect))
        .route("/v1/auth/status", get(auth_status))
        .route("/v1/mesh/init", post(init))
        .route("/v1/mesh/invite", post(invite))
        .route("/v1/mesh/join", post(join))
        .route("/v1/tokens", post(issue))
        .route("/v1/tokens/revoke", post(revoke))
        .route("/v1/intent", post(intent))
        .route("/v1/matter/devices", get(matter_devices))
        .route("/v1/matter/commission", post(matter_commission))
        .route("/v1/matter/discover", get(matter_discover))
        .route("/v1/knowledge/add", post(knowledge_add))
        .route("/v1/knowledge/query", post(knowledge_query))
        .route("/v1/knowledge/status", get(knowledge_status))
        .route("/v1/matter/devices/{name}/{action}", post(matter_act))
        .route("/v1/packages", get(packages_list))
        .route("/v1/packages/seal", post(packages_seal))
        .route("/v1/packages/import", post(packages_import))
        .route("/v1/packages/pull", post(packages_pull))
        .route("/v1/packages/push", post(packages_push))
        .route("/v1/agents", get(agents_list).post(agents_deploy))
        .route("/v1/agents/{name}", get(agents_info))
        .route("/v1/agents/{name}/invoke", post(agents_invoke))
        .route("/v1/events", post(events_publish))
        .route("/v1/tools", get(tools_list))
        .route("/v1/tools/{name}", get(tools_info))
        .route("/v1/tools/{name}/call", post(tools_call))
        .route("/v1/route", post(route))
        .route("/v1/configs", get(configs_list).post(configs_push))
        .route("/v1/configs/{namespace}/{name}", get(configs_get))
        .route("/v1/models", get(crate::openai::models))
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route("/v1/embeddings", post(crate::openai::embeddings))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

async fn health(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let status = state.mesh.status().await?;
    Ok(Json(serde_json::json!({
        "ok": true,
        "id": status.self_id,
        "name": status.name,
        "isolated": status.isolated,
    })))
}

async fn node(State(state): State<ApiState>) -> Result<Json<NodeIdentity>, ApiError> {
    let status = state.mesh.status().await?;
    Ok(Json(NodeIdentity {
        id: status.self_id,
        name: status.name,
        peer_addrs: state.peer_addrs.clone(),
    }))
}

async fn status(State(state): State<ApiState>) -> Result<Json<MeshStatus>, ApiError> {
    Ok(Json(state.mesh.status().await?))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    let status = state.mesh.status().await?;
    Ok(Json(
        status.nodes.into_iter().filter(|n| !n.is_self).collect(),
    ))
}

async fn routes(State(state): State<ApiState>) -> Result<Json<Vec<RouteInfo>>, ApiError> {
    Ok(Json(state.mesh.routes().await?))
}

async fn ping(
    State(state): State<ApiState>,
    Checked(request): Checked<NodeRequest>,
) -> Result<Json<PingResult>, ApiError> {
    let node = state.mesh.resolve(&request.node).await?;
    let echo = state.mesh.echo(node, b"atmosphere ping".to_vec()).await?;
    Ok(Json(PingResult { node, echo }))
}

async fn auth_status(State(state): State<ApiState>) -> Result<Json<AuthStatus>, ApiError> {
    Ok(Json(trust(&state)?.status()))
}

async fn init(
    State(state): State<ApiState>,
    Checked(request): Checked<InitRequest>,
) -> Result<Json<AuthStatus>, ApiError> {
    Ok(Json(
        trust(&state)?.init(&request.name, &state.node_name).await?,
    ))
}

async fn invite(
    State(state): State<ApiState>,
    Checked(request): Checked<InviteRequest>,
) -> Result<Json<Issued>, ApiError> {
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(3600));
    Ok(Json(Issued {
        text: trust(&state)?.invite(ttl).await?,
    }))
}

async fn join(
    State(state): State<ApiState>,
    Checked(request): Checked<JoinRequest>,
) -> Result<Json<AuthStatus>, ApiError> {
    Ok(Json(
        trust(&state)?
            .join(&request.invite, &state.node_name)
            .await?,
    ))
}

async fn issue(
    State(state): State<ApiState>,
    Checked(request): Checked<IssueRequest>,
) -> Result<Json<Issued>, ApiError> {
    let ttl = Duration::from_secs(request.ttl_secs.unwrap_or(24 * 3600));
    Ok(Json(Issued {
        text: trust(&state)?.issue(request.node_key, &request.name, ttl, request.capabilities)?,
    }))
}

async fn revoke(
    State(state): State<ApiState>,
    Checked(request): Checked<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let reason = request
        .reason
        .as_deref()
        .unwrap_or("revoked by the authority");
    let target = trust(&state)?.revoke(&request.target, reason).await?;
    Ok(Json(Revoked {
        revoked: target.to_string(),
    }))
}

fn intents(state: &ApiState) -> Result<&crate::intent::Intents, ApiError> {
    state.intents.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_router",
        "this node runs without the intent router",
    ))
}

fn tools(state: &ApiState) -> Result<&crate::tools::Tools, ApiError> {
    state.tools.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_tools",
        "this node runs without the tool service",
    ))
}

impl From<crate::tools::ToolError> for ApiError {
    fn from(error: crate::tools::ToolError) -> Self {
        use crate::tools::ToolError;
        let (status, kind) = match &error {
            ToolError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_tool"),
            ToolError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_arguments"),
            ToolError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ToolError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ToolError::NoProvider(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_provider"),
            ToolError::AllFailed { .. } => (StatusCode::BAD_GATEWAY, "all_failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "tool_failed"),
        };
        Self::new(status, kind, error.to_string())
    }
}

async fn tools_list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<crate::tools::ToolInfo>>, ApiError> {
    Ok(Json(tools(&state)?.list().await?))
}

async fn tools_info(
    State(state): State<ApiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<crate::tools::ToolInfo>, ApiError> {
    Ok(Json(tools(&state)?.info(&name).await?))
}

async fn tools_call(
    State(state): State<ApiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Checked(request): Checked<crate::tools::CallRequest>,
) -> Result<Json<crate::tools::CallResult>, ApiError> {
    Ok(Json(tools(&state)?.call(&name, &request).await?))
}

fn agents(state: &ApiState) -> Result<&crate::agents::Agents, ApiError> {
    state.agents.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_agents",
        "this node runs without the agent service",
    ))
}

impl From<crate::agents::AgentError> for ApiError {
    fn from(error: crate::agents::AgentError) -> Self {
        use crate::agents::AgentError;
        let (status, kind) = match &error {
            AgentError::Def(_) => (StatusCode::BAD_REQUEST, "invalid_agent"),
            AgentError::Unknown(_) | AgentError::UnknownNode(_) => {
                (StatusCode::NOT_FOUND, "unknown")
            }
            AgentError::Mesh(_) | AgentError::Remote { .. } => (StatusCode::BAD_GATEWAY, "remote"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, kind, error.to_string())
    }
}

async fn agents_list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<crate::agents::AgentInfo>>, ApiError> {
    Ok(Json(agents(&state)?.list().await?))
}

async fn agents_info(
    State(state): State<ApiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<crate::agents::AgentInfo>, ApiError> {
    Ok(Json(agents(&state)?.info(&name).await?))
}

async fn agents_deploy(
    State(state): State<ApiState>,
    Checked(request): Checked<DeployRequest>,
) -> Result<Json<crate::agents::AgentInfo>, ApiError> {
    Ok(Json(
        agents(&state)?
            .deploy(request.def, request.node.as_deref())
            .await?,
    ))
}

async fn agents_invoke(
    State(state): State<ApiState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Checked(request): Checked<InvokeRequest>,
) -> Result<Json<crate::agents::Activation>, ApiError> {
    Ok(Json(agents(&state)?.invoke(&name, &request.input).await?))
}

/// `POST /v1/events`: publishes an event to the agents that subscribe to it; answers with
/// what they did.
async fn events_publish(
    State(state): State<ApiState>,
    Checked(event): Checked<atmosphere_agents::Event>,
) -> Result<Json<Vec<crate::agents::Activation>>, ApiError> {
    let results = agents(&state)?.publish(&event).await;
    let mut activations = Vec::new();
    for result in results {
        activations.push(result?);
    }
    Ok(Json(activations))
}

async fn intent(
    State(state): State<ApiState>,
    Checked(request): Checked<crate::intent::IntentRequest>,
) -> Result<Json<crate::intent::IntentOutcome>, ApiError> {
    let outcome = intents(&state)?.run(&request).await?;
    if !request.dry_run {
        state.recent_intents.record(&outcome, &request.text);
    }
    Ok(Json(outcome))
}

async fn route(
    State(state): State<ApiState>,
    Checked(batch): Checked<RouteBatch>,
) -> Result<Json<Vec<crate::intent::RouteDecision>>, ApiError> {
    let intents = intents(&state)?;
    let mut decisions = Vec::with_capacity(batch.texts.len());
    for text in &batch.texts {
        decisions.push(intents.route(text).await?);
    }
    Ok(Json(decisions))
}

/// A project's newest version, with its text (`GET /v1/configs/NS/NAME`, `POST /v1/configs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub project: String,
    pub version: u64,
    pub signed_at: u64,
    pub text: String,
}

impl From<atmosphere_auth::ConfigDoc> for ConfigVersion {
    fn from(doc: atmosphere_auth::ConfigDoc) -> Self {
        Self {
            project: doc.project,
            version: doc.version,
            signed_at: doc.signed_at,
            text: doc.text,
        }
    }
}

fn configs(state: &ApiState) -> Result<&crate::configsync::ConfigSync, ApiError> {
    state.configs.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_config_sync",
        "this node runs without config sync",
    ))
}

async fn configs_list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<crate::configsync::ConfigInfo>>, ApiError> {
    Ok(Json(configs(&state)?.list()))
}

async fn configs_get(
    State(state): State<ApiState>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> Result<Json<ConfigVersion>, ApiError> {
    let project = format!("{namespace}/{name}");
    configs(&state)?
        .get(&project)
        .map(|doc| Json(doc.into()))
        .ok_or(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "unknown_project",
            message: format!(
                "no config for {project:?} in this mesh; see `atmosphere config list`"
            ),
        })
}

async fn configs_push(
    State(state): State<ApiState>,
    Checked(request): Checked<ConfigPush>,
) -> Result<Json<ConfigVersion>, ApiError> {
    use crate::configsync::SyncError;
    match configs(&state)?.submit(&request.text).await {
        Ok(doc) => Ok(Json(doc.into())),
        Err(error) => {
            let (status, kind) = match &error {
                SyncError::Project(_) => (StatusCode::BAD_REQUEST, "invalid"),
                SyncError::NoMesh => (StatusCode::CONFLICT, "not_member"),
                SyncError::NoAuthority(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
                SyncError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
                _ => (StatusCode::BAD_GATEWAY, "peer_error"),
            };
            Err(ApiError::new(status, kind, error.to_string()))
        }
    }
}

async fn disconnect(
    State(state): State<ApiState>,
    Checked(request): Checked<NodeRequest>,
) -> Result<Json<ControlResult>, ApiError> {
    steer(&state, &request.node, Control::Disconnect).await
}

async fn reconnect(
    State(state): State<ApiState>,
    Checked(request): Checked<NodeRequest>,
) -> Result<Json<ControlResult>, ApiError> {
    steer(&state, &request.node, Control::Reconnect).await
}

async fn steer(
    state: &ApiState,
    node: &str,
    control: Control,
) -> Result<Json<ControlResult>, ApiError> {
    let node = state.mesh.resolve(node).await?;
    state.mesh.control(node, control).await?;
    Ok(Json(ControlResult {
        node,
        action: match control {
            Control::Disconnect => "disconnect".into(),
            Control::Reconnect => "reconnect".into(),
        },
        ok: true,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atmosphere_mesh::MeshConfig;
    use atmosphere_mesh::transport::mem::MemNetwork;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        app_with_key(None)
    }

    fn app_with_key(api_key: Option<String>) -> Router {
        let network = MemNetwork::new();
        let (transport, incoming_rx) = network.endpoint(NodeId::from_bytes([1; 32]));
        let (mesh, _join) = Mesh::spawn(
            Arc::clone(&transport),
            incoming_rx,
            Default::default(),
            MeshConfig::for_test("solo"),
        );
        router(ApiState {
            mesh,
            peer_addrs: vec![],
            trust: None,
            node_name: "solo".into(),
            api_key,
            models: Default::default(),
            servers: Default::default(),
            configs: None,
            intents: None,
            tools: None,
            agents: None,
            packages: None,
            knowledge: None,
            matter: None,
            matter_view: Default::default(),
            recent_intents: Default::default(),
        })
    }

    async fn call(
        app: Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn status_lists_this_node() {
        let (code, body) = call(app(), "GET", "/v1/mesh/status", "").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["name"], "solo");
        assert_eq!(body["nodes"][0]["status"], "alive");
    }

    #[tokio::test]
    async fn unknown_node_is_404_with_a_message() {
        let (code, body) = call(app(), "POST", "/v1/node/disconnect", r#"{"node":"ghost"}"#).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "unknown_node");
        assert!(body["message"].as_str().unwrap().contains("ghost"));
    }

    #[tokio::test]
    async fn a_configured_key_is_required() {
        let app = app_with_key(Some("sesame".into()));
        let (code, body) = call(app.clone(), "GET", "/v1/mesh/status", "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(body["message"].as_str().unwrap().contains("api.key"));
        let request = Request::builder()
            .uri("/v1/mesh/status")
            .header("authorization", "Bearer sesame")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(request).await.unwrap().status(),
            StatusCode::OK
        );
        let request = Request::builder()
            .uri("/v1/mesh/status")
            .header("authorization", "Bearer sesamE")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.oneshot(request).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn malformed_json_is_a_client_error() {
        let (code, _) = call(app(), "POST", "/v1/node/disconnect", "{not json").await;
        assert!(code.is_client_error(), "{code}");
    }
}

fn packages(state: &ApiState) -> Result<&crate::packages::Packages, ApiError> {
    state.packages.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_packages",
        "this node runs without the package service",
    ))
}

impl From<crate::packages::PackagesError> for ApiError {
    fn from(error: crate::packages::PackagesError) -> Self {
        use crate::packages::PackagesError as E;
        let (status, kind) = match &error {
            E::Unknown(_) | E::UnknownNode(_) | E::NoSource(_) => {
                (StatusCode::NOT_FOUND, "unknown")
            }
            E::Seal(_) | E::Unsealed(_) => (StatusCode::FORBIDDEN, "bad_seal"),
            E::NoToken => (StatusCode::CONFLICT, "not_joined"),
            E::Package(_) | E::Load(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_package"),
            _ => (StatusCode::BAD_GATEWAY, "transfer_failed"),
        };
        Self::new(status, kind, error.to_string())
    }
}

/// `GET /v1/packages`: what this node holds, who holds what, and transfers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackagesView {
    pub held: Vec<crate::packages::Held>,
    pub holders: std::collections::BTreeMap<String, Vec<String>>,
    pub transfers: Vec<crate::packages::Progress>,
}

async fn packages_list(State(state): State<ApiState>) -> Result<Json<PackagesView>, ApiError> {
    let packages = packages(&state)?;
    Ok(Json(PackagesView {
        held: packages.held(),
        holders: packages.holders().await,
        transfers: packages.transfers(),
    }))
}

async fn packages_seal(
    State(state): State<ApiState>,
    Checked(request): Checked<SealRequest>,
) -> Result<Json<atmosphere_auth::Seal>, ApiError> {
    Ok(Json(packages(&state)?.seal(&request.manifest)?))
}

/// The progress of a transfer as newline-delimited JSON, one line per update (at most ten a
/// second), the last one `done` or `failed`.
fn progress_lines(mut rx: tokio::sync::watch::Receiver<crate::packages::Progress>) -> Response {
    let (tx, lines) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(8);
    tokio::spawn(async move {
        loop {
            let state = rx.borrow_and_update().clone();
            let mut line = serde_json::to_string(&state).unwrap_or_default();
            line.push('\n');
            if tx.send(Ok(line)).await.is_err() || state.finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if rx.changed().await.is_err() {
                let mut last = serde_json::to_string(&*rx.borrow()).unwrap_or_default();
                last.push('\n');
                let _ = tx.send(Ok(last)).await;
                return;
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(lines)),
    )
        .into_response()
}

async fn packages_import(
    State(state): State<ApiState>,
    Checked(request): Checked<ImportRequest>,
) -> Result<Response, ApiError> {
    Ok(progress_lines(packages(&state)?.import(request.path)))
}

async fn packages_pull(
    State(state): State<ApiState>,
    Checked(request): Checked<PullRequest>,
) -> Result<Response, ApiError> {
    let rx = packages(&state)?
        .pull(&request.name, &request.from, request.limit_rate)
        .await?;
    Ok(progress_lines(rx))
}

async fn packages_push(
    State(state): State<ApiState>,
    Checked(request): Checked<PushRequest>,
) -> Result<Response, ApiError> {
    let rx = packages(&state)?
        .push(&request.name, &request.to, request.limit_rate)
        .await?;
    Ok(progress_lines(rx))
}

fn matter(state: &ApiState) -> Result<&atmosphere_matter::Controller, ApiError> {
    state.matter.as_deref().ok_or(ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "no_matter",
        message: format!(
            "{} runs no Matter controller: set `[matter] controller = true` in its config or pass --matter",
            state.node_name
        ),
    })
}

impl From<atmosphere_matter::MatterError> for ApiError {
    fn from(error: atmosphere_matter::MatterError) -> Self {
        use atmosphere_matter::MatterError as E;
        let (status, kind) = match &error {
            E::BadCode(_) | E::Duplicate(_) | E::Unsupported { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "no_device_found"),
            E::WrongCode(_) => (StatusCode::FORBIDDEN, "wrong_code"),
            E::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            E::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
            _ => (StatusCode::BAD_GATEWAY, "matter_failed"),
        };
        Self::new(status, kind, error.to_string())
    }
}

fn knowledge(state: &ApiState) -> Result<&crate::knowledge::Knowledge, ApiError> {
    state.knowledge.as_ref().ok_or(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_knowledge",
        "this node runs without the knowledge service",
    ))
}

impl From<crate::knowledge::KnowledgeError> for ApiError {
    fn from(error: crate::knowledge::KnowledgeError) -> Self {
        use crate::knowledge::KnowledgeError as E;
        let (status, kind) = match &error {
            E::Unreadable { .. } | E::Empty { .. } | E::NotText { .. } | E::TooLarge { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "bad_document")
            }
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Nothing(_) => (StatusCode::NOT_FOUND, "no_knowledge"),
            _ => (StatusCode::BAD_GATEWAY, "knowledge_failed"),
        };
        Self::new(status, kind, error.to_string())
    }
}

/// `POST /v1/knowledge/add`: reads, chunks, embeds and places each document; one JSON line per
/// progress event (`reading`, `done`, `failed`). A bad document fails alone.
async fn knowledge_add(
    State(state): State<ApiState>,
    Checked(request): Checked<KnowledgeAddRequest>,
) -> Result<Response, ApiError> {
    let knowledge = knowledge(&state)?.clone();
    let mut files = Vec::new();
    for path in &request.paths {
        files.extend(crate::knowledge::files_in(path)?);
    }
    if files.is_empty() {
        return Err(crate::openai::bad_request(
            "no Markdown, text or PDF file in the paths given",
        ));
    }
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for file in files {
            let event = match knowledge.add(&request.collection, &file, &events).await {
                Ok(report) => crate::knowledge::AddEvent::Done(report),
                Err(e) => crate::knowledge::AddEvent::Failed {
                    document: file.display().to_string(),
                    error: e.to_string(),
                },
            };
            let _ = events.send(event);
        }
    });
    let (tx, lines) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(8);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let mut line = serde_json::to_string(&event).unwrap_or_default();
            line.push('\n');
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(lines)),
    )
        .into_response())
}

/// `POST /v1/knowledge/query`: the passages nearest the question, from the nodes likely to hold
/// them, with the trace of who was asked (no answer is written: see `rag:query` and intents).
async fn knowledge_query(
    State(state): State<ApiState>,
    Checked(request): Checked<KnowledgeQuery>,
) -> Result<Json<crate::knowledge::QueryOutcome>, ApiError> {
    let outcome = knowledge(&state)?
        .query(
            &request.query,
            request.collection.as_deref(),
            request.top_k.unwrap_or(crate::knowledge::DEFAULT_TOP_K),
        )
        .await?;
    Ok(Json(outcome))
}

/// `GET /v1/knowledge/status`: placement and replication health.
async fn knowledge_status(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(knowledge(&state)?.status().await?))
}

/// `GET /v1/matter/discover`: the devices answering mDNS as commissionable, seen from this
/// node's bridge.
async fn matter_discover(
    State(state): State<ApiState>,
) -> Result<Json<Vec<atmosphere_matter::Commissionable>>, ApiError> {
    Ok(Json(matter(&state)?.discover().await?))
}

/// `GET /v1/matter/devices`: every device in the mesh, each with the node that bridges it; this
/// node's own first and fresh, the others as gossiped.
async fn matter_devices(
    State(state): State<ApiState>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let mut out = Vec::new();
    if let Some(controller) = &state.matter {
        for device in controller.devices().await? {
            let mut device = crate::tools::device_json(&device);
            device["bridge"] = serde_json::Value::String(state.node_name.clone());
            out.push(device);
        }
    }
    let others_only = state.matter.is_some();
    out.extend(state.matter_view.devices(&state.mesh, others_only).await);
    Ok(Json(out))
}

async fn matter_commission(
    State(state): State<ApiState>,
    Checked(request): Checked<CommissionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let controller = matter(&state)?;
    let setup = atmosphere_matter::Setup::parse(&request.code)?;
    let device = controller
        .commission(
            setup,
            request.address,
            &request.name,
            request.room.as_deref(),
        )
        .await?;
    Ok(Json(crate::tools::device_json(&device)))
}

async fn matter_act(
    State(state): State<ApiState>,
    axum::extract::Path((name, action)): axum::extract::Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let controller = matter(&state)?;
    let device = match action.as_str() {
        "read" => controller.read(&name).await?,
        other => {
            let action = other
                .parse()
                .map_err(|e: String| crate::openai::bad_request(e))?;
            controller.act(&name, action).await?
        }
    };
    Ok(Json(crate::tools::device_json(&device)))
}

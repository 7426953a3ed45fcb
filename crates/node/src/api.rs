//! The node's HTTP API (axum), bound to 127.0.0.1 by default: what the CLI and local apps use.
//! Only this module knows HTTP.

use atmosphere_mesh::{EchoResult, Mesh, MeshError, MeshStatus, NodeInfo, RouteInfo};
use atmosphere_proto::{Control, ErrorCode, NodeId};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub mesh: Mesh,
    /// This node's `NODE_ID@IP:PORT` lines, for `atmosphere node id`.
    pub peer_addrs: Vec<String>,
}

/// An API error: a status code and a JSON body `{ "error": kind, "message": text }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
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
        Self {
            status,
            kind,
            message: error.to_string(),
        }
    }
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub id: NodeId,
    pub name: String,
    pub peer_addrs: Vec<String>,
}

/// Body of `POST /v1/node/disconnect`, `/v1/node/reconnect` and `/v1/mesh/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRequest {
    /// Name, full id, or an id prefix of at least 4 hex digits.
    pub node: String,
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

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/node", get(node))
        .route("/v1/mesh/status", get(status))
        .route("/v1/mesh/peers", get(peers))
        .route("/v1/mesh/routes", get(routes))
        .route("/v1/mesh/ping", post(ping))
        .route("/v1/node/disconnect", post(disconnect))
        .route("/v1/node/reconnect", post(reconnect))
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
    Json(request): Json<NodeRequest>,
) -> Result<Json<PingResult>, ApiError> {
    let node = state.mesh.resolve(&request.node).await?;
    let echo = state.mesh.echo(node, b"atmosphere ping".to_vec()).await?;
    Ok(Json(PingResult { node, echo }))
}

async fn disconnect(
    State(state): State<ApiState>,
    Json(request): Json<NodeRequest>,
) -> Result<Json<ControlResult>, ApiError> {
    steer(&state, &request.node, Control::Disconnect).await
}

async fn reconnect(
    State(state): State<ApiState>,
    Json(request): Json<NodeRequest>,
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
        let network = MemNetwork::new();
        let (transport, incoming_rx) = network.endpoint(NodeId::from_bytes([1; 32]));
        let (mesh, _join) = Mesh::spawn(
            Arc::clone(&transport),
            incoming_rx,
            None,
            MeshConfig::for_test("solo"),
        );
        router(ApiState {
            mesh,
            peer_addrs: vec![],
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
    async fn malformed_json_is_a_client_error() {
        let (code, _) = call(app(), "POST", "/v1/node/disconnect", "{not json").await;
        assert!(code.is_client_error(), "{code}");
    }
}

//! The CLI's client for the local node's HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use atmosphere_node::api::{
    ControlResult, ErrorBody, InitRequest, InviteRequest, IssueRequest, Issued, JoinRequest,
    NodeIdentity, NodeRequest, PingResult, RevokeRequest, Revoked,
};
use atmosphere_node::daemon::Ready;
use atmosphere_node::trust::AuthStatus;
use atmosphere_proto::NodeId;
use serde::de::DeserializeOwned;

pub use atmosphere_mesh::{MeshStatus, NodeInfo, RouteInfo};

/// Talks to one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    api: SocketAddr,
    http: reqwest::Client,
}

impl Client {
    pub fn new(api: SocketAddr) -> Result<Self> {
        Self::with_key(api, None)
    }

    /// A client that presents `key` as a bearer token (APIs bound beyond 127.0.0.1).
    pub fn with_key(api: SocketAddr, key: Option<&str>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                .context("the API key contains characters not allowed in a header")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base: format!("http://{api}"),
            api,
            http,
        })
    }

    pub fn for_ready(ready: &Ready) -> Result<Self> {
        Self::new(ready.api)
    }

    async fn decode<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("reading the node's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .context("the node's answer is not what this CLI expects (version mismatch?)");
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(anyhow!("{} ({})", body.message, body.error)),
            Err(_) => Err(anyhow!("the node answered HTTP {status}")),
        }
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        anyhow!(
            "cannot reach a node API at {}: {error}\n  start one with `atmosphere serve` (or `atmosphere demo --keep-running`), \
             or point at another with --api / ATMOSPHERE_API",
            self.api
        )
    }

    /// POSTs `body` and hands back the open response of a long-running call (a transfer's
    /// progress lines), after checking its status.
    pub async fn stream(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<reqwest::Response> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(24 * 3600))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self
            .decode::<serde_json::Value>(response)
            .await
            .err()
            .unwrap_or_else(|| anyhow!("the node refused the request")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.decode(response).await
    }

    pub async fn status(&self) -> Result<MeshStatus> {
        self.get("/v1/mesh/status").await
    }

    pub async fn peers(&self) -> Result<Vec<NodeInfo>> {
        self.get("/v1/mesh/peers").await
    }

    pub async fn routes(&self) -> Result<Vec<RouteInfo>> {
        self.get("/v1/mesh/routes").await
    }

    pub async fn identity(&self) -> Result<NodeIdentity> {
        self.get("/v1/node").await
    }

    pub async fn ping(&self, node: &str) -> Result<PingResult> {
        self.post("/v1/mesh/ping", &NodeRequest { node: node.into() })
            .await
    }

    pub async fn control(&self, action: &str, node: &str) -> Result<ControlResult> {
        self.post(
            &format!("/v1/node/{action}"),
            &NodeRequest { node: node.into() },
        )
        .await
    }

    pub async fn auth_status(&self) -> Result<AuthStatus> {
        self.get("/v1/auth/status").await
    }

    pub async fn init(&self, name: &str) -> Result<AuthStatus> {
        self.post("/v1/mesh/init", &InitRequest { name: name.into() })
            .await
    }

    pub async fn invite(&self, ttl: Duration) -> Result<Issued> {
        self.post(
            "/v1/mesh/invite",
            &InviteRequest {
                ttl_secs: Some(ttl.as_secs()),
            },
        )
        .await
    }

    pub async fn join(&self, invite: &str) -> Result<AuthStatus> {
        self.post(
            "/v1/mesh/join",
            &JoinRequest {
                invite: invite.trim().into(),
            },
        )
        .await
    }

    pub async fn issue(
        &self,
        node_key: NodeId,
        name: &str,
        ttl: Duration,
        capabilities: Vec<String>,
    ) -> Result<Issued> {
        self.post(
            "/v1/tokens",
            &IssueRequest {
                node_key,
                name: name.into(),
                ttl_secs: Some(ttl.as_secs()),
                capabilities,
            },
        )
        .await
    }

    pub async fn revoke(&self, target: &str, reason: Option<String>) -> Result<Revoked> {
        self.post(
            "/v1/tokens/revoke",
            &RevokeRequest {
                target: target.into(),
                reason,
            },
        )
        .await
    }

    pub async fn config_push(&self, text: String) -> Result<atmosphere_node::api::ConfigVersion> {
        self.post("/v1/configs", &atmosphere_node::api::ConfigPush { text })
            .await
    }

    pub async fn config_list(&self) -> Result<Vec<atmosphere_node::configsync::ConfigInfo>> {
        self.get("/v1/configs").await
    }

    pub async fn config_show(&self, project: &str) -> Result<atmosphere_node::api::ConfigVersion> {
        let Some((namespace, name)) = project.split_once('/') else {
            anyhow::bail!("project {project:?}: expected NAMESPACE/NAME, e.g. default/home");
        };
        self.get(&format!("/v1/configs/{namespace}/{name}")).await
    }

    pub async fn intent(
        &self,
        request: &atmosphere_node::intent::IntentRequest,
    ) -> Result<atmosphere_node::intent::IntentOutcome> {
        self.post("/v1/intent", request).await
    }

    pub async fn route(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<atmosphere_node::intent::RouteDecision>> {
        self.post("/v1/route", &atmosphere_node::api::RouteBatch { texts })
            .await
    }

    pub async fn tools(&self) -> Result<Vec<atmosphere_node::tools::ToolInfo>> {
        self.get("/v1/tools").await
    }

    pub async fn tool(&self, name: &str) -> Result<atmosphere_node::tools::ToolInfo> {
        self.get(&format!("/v1/tools/{name}")).await
    }

    pub async fn call_tool(
        &self,
        name: &str,
        request: &atmosphere_node::tools::CallRequest,
    ) -> Result<atmosphere_node::tools::CallResult> {
        self.post(&format!("/v1/tools/{name}/call"), request).await
    }

    pub async fn agents(&self) -> Result<Vec<atmosphere_node::agents::AgentInfo>> {
        self.get("/v1/agents").await
    }

    pub async fn agent(&self, name: &str) -> Result<atmosphere_node::agents::AgentInfo> {
        self.get(&format!("/v1/agents/{name}")).await
    }

    pub async fn deploy_agent(
        &self,
        def: atmosphere_agents::AgentDef,
        node: Option<String>,
    ) -> Result<atmosphere_node::agents::AgentInfo> {
        self.post(
            "/v1/agents",
            &atmosphere_node::api::DeployRequest { def, node },
        )
        .await
    }

    pub async fn invoke_agent(
        &self,
        name: &str,
        input: &str,
    ) -> Result<atmosphere_node::agents::Activation> {
        self.post(
            &format!("/v1/agents/{name}/invoke"),
            &atmosphere_node::api::InvokeRequest {
                input: input.to_owned(),
            },
        )
        .await
    }
}

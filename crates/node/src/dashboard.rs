//! The web dashboard each node serves at `/`: one static page embedded in the binary, fed once a
//! second by a server-sent event stream (`GET /v1/dashboard/stream`) carrying a snapshot of the
//! mesh as this node sees it — nodes and health, the gradient table, tools, agents, Matter devices
//! and the recent intents said here. The page acts through the ordinary API (intents, tool calls).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use futures_util::Stream;
use serde_json::{Value, json};

use crate::api::ApiState;

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("../assets/dashboard.html");
/// How many intents the dashboard remembers.
const RECENT: usize = 20;
/// How often the stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// The last intents said to this node's API, newest last.
#[derive(Debug, Clone, Default)]
pub struct RecentIntents(Arc<Mutex<VecDeque<Value>>>);

impl RecentIntents {
    /// Remembers an intent's route and result (the oldest beyond [`RECENT`] is forgotten).
    pub fn record(&self, outcome: &crate::intent::IntentOutcome, text: &str) {
        let entry = json!({
            "at": atmosphere_auth::unix_now(),
            "text": text,
            "capability": outcome.decision.capability,
            "node": outcome.result.as_ref().map(|r| r.node.clone()),
            "answer": outcome.result.as_ref().map(|r| r.text.chars().take(400).collect::<String>()),
            "path": outcome.path,
            "ms": outcome.total_ms,
        });
        let mut recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    fn list(&self) -> Vec<Value> {
        let recent = self.0.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }
}

pub async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

/// A snapshot of what this node sees; parts it does not run (tools, agents) are left empty.
pub async fn snapshot(state: &ApiState) -> Value {
    let status = state.mesh.status().await.ok();
    let routes = state.mesh.routes().await.unwrap_or_default();
    let tools = match &state.tools {
        Some(tools) => tools.list().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let agents = match &state.agents {
        Some(agents) => agents.list().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut devices = Vec::new();
    if let Some(controller) = &state.matter
        && let Ok(own) = controller.devices().await
    {
        for device in own {
            let mut device = crate::tools::device_json(&device);
            device["bridge"] = Value::String(state.node_name.clone());
            devices.push(device);
        }
    }
    devices.extend(
        state
            .matter_view
            .devices(&state.mesh, state.matter.is_some())
            .await,
    );
    json!({
        "node": state.node_name,
        "status": status,
        "routes": routes,
        "tools": tools.iter().map(|t| json!({
            "name": t.manifest.name,
            "capability": t.manifest.capability,
            "description": t.manifest.description,
            "providers": t.providers,
        })).collect::<Vec<_>>(),
        "agents": agents,
        "devices": devices,
        "intents": state.recent_intents.list(),
    })
}

/// `GET /v1/dashboard/stream`: a `snapshot` event now and then once a second.
pub async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticker = tokio::time::interval(EVERY);
    let events = futures_util::stream::unfold((state, ticker), |(state, mut ticker)| async move {
        ticker.tick().await;
        let data = snapshot(&state).await.to_string();
        let event = Event::default().event("snapshot").data(data);
        Some((Ok(event), (state, ticker)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

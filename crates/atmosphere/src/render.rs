//! Text rendering of the CLI's answers (`--json` prints the same data as JSON).

use std::fmt::Write;

use anyhow::Result;
use atmosphere_mesh::{MeshStatus, NodeInfo, RouteInfo, Status};
use atmosphere_node::api::{ControlResult, NodeIdentity, PingResult};
use atmosphere_node::trust::AuthStatus;
use serde::Serialize;

/// Prints `value` as JSON or through `text`.
pub fn output<T: Serialize>(json: bool, value: &T, text: fn(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Alive => "healthy",
        Status::Down => "down",
        Status::Left => "left",
    }
}

/// The spec's demo step 1 layout, then a table of nodes.
pub fn status(status: &MeshStatus) -> String {
    let mut out = String::new();
    // This node first, then by name.
    let mut nodes: Vec<&NodeInfo> = status.nodes.iter().collect();
    nodes.sort_by(|a, b| b.is_self.cmp(&a.is_self).then_with(|| a.name.cmp(&b.name)));
    let members: Vec<&NodeInfo> = nodes
        .iter()
        .copied()
        .filter(|n| n.status != Status::Left)
        .collect();
    let names: Vec<&str> = members.iter().map(|n| n.name.as_str()).collect();
    let _ = writeln!(out, "Nodes: {} ({})", members.len(), names.join(", "));
    // Capability classes in first-seen order.
    let ordered = &members;
    let mut classes: Vec<(String, Vec<String>)> = Vec::new();
    for node in ordered {
        for capability in &node.capabilities {
            let label = match &capability.detail {
                Some(detail) => format!("{} ({detail})", node.name),
                None => node.name.clone(),
            };
            match classes
                .iter_mut()
                .find(|(name, _)| *name == capability.name)
            {
                Some((_, providers)) => providers.push(label),
                None => classes.push((capability.name.clone(), vec![label])),
            }
        }
    }
    if classes.is_empty() {
        let _ = writeln!(out, "Capabilities: none declared");
    } else {
        let _ = writeln!(out, "Capabilities:");
        for (name, providers) in &classes {
            let _ = writeln!(out, "  - {name}: {}", providers.join(", "));
        }
    }
    let unhealthy: Vec<String> = members
        .iter()
        .filter(|n| n.status != Status::Alive)
        .map(|n| format!("{} {}", n.name, status_word(n.status)))
        .collect();
    if status.isolated {
        let _ = writeln!(
            out,
            "Status: Disconnected (this node dropped its links; `atmosphere node reconnect {}`)",
            status.name
        );
    } else if unhealthy.is_empty() {
        let _ = writeln!(out, "Status: Healthy");
    } else {
        let _ = writeln!(out, "Status: Degraded ({})", unhealthy.join(", "));
    }
    let serving: Vec<&&NodeInfo> = members.iter().filter(|n| !n.models.is_empty()).collect();
    if !serving.is_empty() {
        let _ = writeln!(out, "Models:");
        for node in serving {
            for model in &node.models {
                let mut facts: Vec<String> = Vec::new();
                facts.extend(model.size.clone());
                facts.extend(model.quantization.clone());
                facts.push(model.backend.clone());
                if let Some(speed) = model.tokens_per_second {
                    facts.push(format!("{speed:.0} tok/s"));
                }
                let health = match &model.degraded {
                    Some(reason) => format!(" DEGRADED: {reason}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  - {}: {} ({}){health}",
                    node.name,
                    model.name,
                    facts.join(", ")
                );
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<14} {:<10} {:<8} {:>4} {:>9} {:>6} {:>4}",
        "NODE", "ID", "STATUS", "HOPS", "HEARTBEAT", "PHI", "GEN"
    );
    for node in &nodes {
        let hops = if node.is_self {
            "self".to_owned()
        } else {
            node.hops.map_or("-".into(), |h| h.to_string())
        };
        let _ = writeln!(
            out,
            "  {:<14} {:<10} {:<8} {:>4} {:>7}ms {:>6.2} {:>4}",
            truncate(&node.name, 14),
            &node.id.short()[..8],
            status_word(node.status),
            hops,
            node.last_heartbeat_ms,
            node.phi.min(999.0),
            node.generation
        );
    }
    out
}

pub fn peers(peers: &Vec<NodeInfo>) -> String {
    let mut out = String::new();
    if peers.is_empty() {
        return "No peers known yet. Peers are found by mDNS on the LAN or from `bootstrap` in the config.\n".into();
    }
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:>4} {:>7} {:>9} ADDRESSES",
        "NODE", "STATUS", "HOPS", "LOAD", "INFLIGHT"
    );
    for peer in peers {
        let addrs: Vec<String> = peer.addrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "{:<14} {:<8} {:>4} {:>7.2} {:>9} {}",
            truncate(&peer.name, 14),
            status_word(peer.status),
            peer.hops.map_or("-".into(), |h| h.to_string()),
            f64::from(peer.load.cpu_milli) / 1000.0,
            peer.load.inflight,
            addrs.join(", ")
        );
    }
    out
}

pub fn routes(routes: &Vec<RouteInfo>) -> String {
    let mut out = String::new();
    if routes.is_empty() {
        return "The gradient table is empty: no reachable node declares a capability.\n".into();
    }
    let _ = writeln!(
        out,
        "{:<16} {:<14} {:<10} {:>4} {:>10} {:>8}",
        "CAPABILITY", "PROVIDER", "NEXT HOP", "HOPS", "LATENCY", "COST"
    );
    for route in routes {
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:<10} {:>4} {:>8}µs {:>8.2}",
            truncate(&route.capability.to_string(), 16),
            truncate(&route.provider_name, 14),
            &route.next_hop.short()[..8],
            route.hops,
            route.latency_us,
            route.cost
        );
    }
    out
}

pub fn configs(configs: &Vec<atmosphere_node::configsync::ConfigInfo>) -> String {
    if configs.is_empty() {
        return "No shared project files yet: `atmosphere config push llamafarm.yaml` adds one.\n"
            .into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>7} {:>8} {:<5}",
        "PROJECT", "VERSION", "BYTES", "USED"
    );
    for config in configs {
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>8} {:<5}",
            truncate(&config.project, 32),
            config.version,
            config.bytes,
            if config.used_here { "yes" } else { "no" }
        );
    }
    out
}

/// `atmosphere intent`, as the spec's demo prints it.
pub fn intent(outcome: &atmosphere_node::intent::IntentOutcome) -> String {
    let decision = &outcome.decision;
    let mut out = String::new();
    let label = |ranked: &atmosphere_routing::Ranked| {
        let capability = match ranked.candidate.parameters {
            Some(p) if decision.capability == "llm" => atmosphere_proto::record::size_tier(p)
                .map_or_else(|| "llm".to_owned(), |s| format!("llm/{s}")),
            _ => decision.capability.clone(),
        };
        let hops = ranked.candidate.hops;
        if hops == 0 {
            format!("local, {capability}, 0 hops")
        } else {
            format!(
                "{capability}, {hops} hop{}",
                if hops == 1 { "" } else { "s" }
            )
        }
    };
    if decision.fallback {
        let _ = writeln!(out, "→ No capability fits: {}", decision.reason);
    }
    let Some(result) = &outcome.result else {
        match decision.chosen() {
            Some(chosen) => {
                let _ = writeln!(
                    out,
                    "→ Would route to: {} ({})",
                    chosen.candidate.node,
                    label(chosen)
                );
                let _ = writeln!(
                    out,
                    "  score {:.2}{}; {}",
                    decision.score,
                    decision
                        .complexity
                        .map(|c| format!(", complexity {c:.2}"))
                        .unwrap_or_default(),
                    chosen.why
                );
            }
            None => {
                let _ = writeln!(out, "→ No node offers {}", decision.capability);
            }
        }
        return out;
    };
    for attempt in outcome.attempts.iter().filter(|a| a.error.is_some()) {
        let _ = writeln!(
            out,
            "→ {} failed ({}); trying the next provider",
            attempt.node,
            attempt.error.as_deref().unwrap_or_default()
        );
    }
    let ranked = decision
        .candidates
        .iter()
        .find(|c| c.candidate.node == result.node);
    let _ = writeln!(
        out,
        "→ Routed to: {} ({})",
        result.node,
        ranked.map_or_else(|| decision.capability.clone(), label)
    );
    let text = result.text.trim();
    if text.contains('\n') {
        // A trace and an answer (RAG: where the chunks came from, the answer, its sources).
        let _ = writeln!(out, "← Result:");
        for line in text.lines() {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        let _ = writeln!(out, "← Result: {text:?}");
    }
    out
}

pub fn tools(tools: &Vec<atmosphere_node::tools::ToolInfo>) -> String {
    if tools.is_empty() {
        return "No tools yet.\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<13} {:<28} DESCRIPTION",
        "TOOL", "CAPABILITY", "PROVIDERS"
    );
    for tool in tools {
        let _ = writeln!(
            out,
            "{:<20} {:<13} {:<28} {}",
            tool.manifest.name,
            truncate(&tool.manifest.capability, 13),
            truncate(&tool.providers.join(", "), 28),
            tool.manifest.description
        );
    }
    out
}

pub fn agents(agents: &Vec<atmosphere_node::agents::AgentInfo>) -> String {
    if agents.is_empty() {
        return "No agents deployed: `atmosphere agent deploy notifier` deploys one.\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<13} {:<14} {:>5}  WAKES ON",
        "AGENT", "BASE", "NODE", "RUNS"
    );
    for agent in agents {
        let wakes: Vec<&str> = agent
            .def
            .events
            .iter()
            .map(String::as_str)
            .chain(agent.def.intents.first().map(|_| "intents"))
            .collect();
        let _ = writeln!(
            out,
            "{:<20} {:<13} {:<14} {:>5}  {}",
            truncate(&agent.def.name, 20),
            format!("{:?}", agent.def.base).to_lowercase(),
            truncate(&agent.node, 14),
            agent.runs,
            wakes.join(", ")
        );
    }
    out
}

/// `agent invoke`, as the spec's demo step 6 prints it.
pub fn activation(activation: &atmosphere_node::agents::Activation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "→ Agent: {} ({})", activation.agent, activation.node);
    for tool in &activation.tools {
        let _ = writeln!(out, "→ Tool: {tool}");
    }
    for event in &activation.events {
        let _ = writeln!(
            out,
            "→ Event: {} ({:?}): {}",
            event.kind, event.severity, event.summary
        );
    }
    for reply in &activation.replies {
        let _ = writeln!(out, "← {reply}");
    }
    out
}

pub fn ping(result: &PingResult) -> String {
    let path: Vec<String> = result.echo.path.iter().map(|id| id.short()).collect();
    format!(
        "Reached {} in {:.2} ms via {} ({} hop{})\n",
        result.node.short(),
        result.echo.elapsed_us as f64 / 1000.0,
        path.join(" → "),
        result.echo.path.len().saturating_sub(1),
        if result.echo.path.len() == 2 { "" } else { "s" }
    )
}

pub fn identity(identity: &NodeIdentity) -> String {
    let mut out = format!("Node: {}\nId:   {}\n", identity.name, identity.id);
    if !identity.peer_addrs.is_empty() {
        out.push_str("Bootstrap lines for other nodes' configs:\n");
        for line in &identity.peer_addrs {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

pub fn control(result: &ControlResult) -> String {
    match result.action.as_str() {
        "disconnect" => format!(
            "→ {} dropped its links; the mesh will see it down within seconds.\n",
            result.node.short()
        ),
        _ => format!(
            "→ {} is reconnecting; gossip resyncs it within a few rounds.\n",
            result.node.short()
        ),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars().take(max - 1).chain(['…']).collect()
    }
}

/// The spec's demo step 8.
pub fn auth_status(status: &AuthStatus) -> String {
    if !status.member {
        return "Token: none (this node has not joined a mesh: `atmosphere mesh init --name NAME` or `atmosphere mesh join INVITE`)\n".into();
    }
    let mut out = String::new();
    let state = match status.token_status.as_str() {
        "valid" => format!(
            "Valid (expires in {})",
            human_secs(status.expires_in_secs.unwrap_or(0))
        ),
        "expired" => "Expired (the node renews while it can reach the authority)".into(),
        "revoked" => "Revoked".into(),
        other => format!("Invalid ({other})"),
    };
    let _ = writeln!(out, "Token: {state}");
    let _ = writeln!(
        out,
        "Verified: Offline (no network call, {} µs)",
        status.verify_micros
    );
    let _ = writeln!(
        out,
        "Mesh: {} ({}){}",
        status.mesh_name.as_deref().unwrap_or("-"),
        status
            .mesh_id
            .as_deref()
            .map_or("-", |id| &id[..16.min(id.len())]),
        if status.authority {
            ", this node is the authority"
        } else {
            ""
        }
    );
    if let Some(name) = &status.name {
        let _ = writeln!(out, "Node: {name} ({})", status.node.short());
    }
    out
}

fn human_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

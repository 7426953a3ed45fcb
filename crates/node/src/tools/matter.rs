//! The Matter bridge as tools: `matter:list_devices` and `matter:execute` over this node's
//! controller, and the reading of a spoken request ("turn on the garage lights") into a device
//! and an action.

use std::sync::Arc;

use atmosphere_matter::{Action, Controller, Device};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Handler, LocalTool, pending_contracts};

/// `[matter]` in the node's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatterSettings {
    /// Run a Matter controller on this node (its fabric and devices live in the node database).
    pub controller: bool,
}

/// A device as the tools and the API show it.
pub fn device_json(device: &Device) -> Value {
    json!({
        "id": device.node_id.to_string(),
        "name": device.name,
        "kind": "light",
        "address": device.addr.to_string(),
        "state": {"on": device.on},
    })
}

/// What a request asks of a device: on, off, toggle, or (`None`) just its state.
pub fn action_in(text: &str) -> Option<Action> {
    let words: Vec<String> = words(text);
    let has = |w: &str| words.iter().any(|x| x == w);
    let question = matches!(
        words.first().map(String::as_str),
        Some("is" | "are" | "what" | "which")
    );
    if question {
        None
    } else if has("toggle") || has("flip") {
        Some(Action::Toggle)
    } else if has("off") || has("deactivate") || has("disable") {
        Some(Action::Off)
    } else if has("on") || has("activate") || has("enable") || has("light") && has("up") {
        Some(Action::On)
    } else {
        None
    }
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.strip_suffix('s')
                .filter(|s| s.len() > 2)
                .unwrap_or(w)
                .to_owned()
        })
        .collect()
}

/// The device a request names: every word of its name in the request (plurals folded), the
/// longest name winning; else the only device, when there is one.
pub fn device_in<'n>(text: &str, names: &'n [String]) -> Option<&'n str> {
    let said = words(text);
    let named = names
        .iter()
        .filter(|name| {
            let name = words(name);
            !name.is_empty() && name.iter().all(|w| said.contains(w))
        })
        .max_by_key(|name| words(name).len());
    named
        .or(match names {
            [only] => Some(only),
            _ => None,
        })
        .map(String::as_str)
}

/// `matter:list_devices` and `matter:execute` over `controller`.
pub fn matter_tools(controller: Arc<Controller>) -> Vec<LocalTool> {
    let mut tools = Vec::new();
    for manifest in pending_contracts()
        .into_iter()
        .filter(|m| m.name.starts_with("matter:"))
    {
        let controller = controller.clone();
        let execute = manifest.name == "matter:execute";
        let handler: Handler = Arc::new(move |args: Value| {
            let controller = controller.clone();
            Box::pin(async move {
                if !execute {
                    let devices = controller.devices().await.map_err(|e| e.to_string())?;
                    let list: Vec<Value> = devices.iter().map(device_json).collect();
                    return Ok(json!({"devices": list}));
                }
                let wanted = args["device"].as_str().unwrap_or_default();
                let devices = controller.devices().await.map_err(|e| e.to_string())?;
                let names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
                let name = names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(wanted.trim()))
                    .map(String::as_str)
                    .or_else(|| device_in(wanted, &names))
                    .ok_or_else(|| {
                        format!("no Matter device matches {wanted:?}; this node has {names:?}")
                    })?;
                let device = devices
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or("the device list changed")?;
                let action = match args["action"].as_str().unwrap_or_default() {
                    "read" => None,
                    "level" => {
                        return Err(format!(
                            "{} is an OnOff light: it has no level control",
                            device.name
                        ));
                    }
                    other => Some(other.parse::<Action>()?),
                };
                let result = match action {
                    Some(action) => controller.act(&device.name, action).await,
                    None => controller.read(&device.name).await,
                }
                .map_err(|e| e.to_string())?;
                Ok(json!({
                    "device": result.name,
                    "done": true,
                    "state": {"on": result.on},
                }))
            })
        });
        tools.push(LocalTool { manifest, handler });
    }
    tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_a_device_and_an_action() {
        let devices: Vec<String> = ["garage light", "porch light", "kitchen"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            device_in("Turn on the garage lights", &devices),
            Some("garage light")
        );
        assert_eq!(
            device_in("switch the porch light off", &devices),
            Some("porch light")
        );
        assert_eq!(device_in("turn on the lights", &devices), None);
        assert_eq!(device_in("lights on", &devices[..1]), Some("garage light"));
        assert_eq!(action_in("Turn on the garage lights"), Some(Action::On));
        assert_eq!(action_in("switch the porch light off"), Some(Action::Off));
        assert_eq!(action_in("toggle the kitchen"), Some(Action::Toggle));
        assert_eq!(action_in("is the garage light on?"), None);
    }
}

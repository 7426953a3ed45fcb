//! The Matter bridge as tools: `matter:list_devices` and `matter:execute` over this node's
//! controller, and the reading of a spoken request ("turn on the garage lights") into a device
//! and an action.

use std::sync::Arc;

use atmosphere_matter::controller::cluster;
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
    /// The interface to discover devices on by mDNS; unset: the first that can carry it.
    pub mdns_interface: Option<String>,
}

/// A device as the tools and the API show it.
pub fn device_json(device: &Device) -> Value {
    let mut state = serde_json::Map::new();
    if device.has(cluster::ON_OFF) {
        state.insert("on".into(), json!(device.on));
    }
    if device.has(cluster::TEMPERATURE_MEASUREMENT) {
        state.insert("celsius".into(), json!(device.celsius));
    }
    json!({
        "id": device.node_id.to_string(),
        "name": device.name,
        "room": device.room,
        "kind": device.kind(),
        "address": device.addr.to_string(),
        "state": state,
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

/// A device as a request can name it: by its name ("porch lamp"), or by its room and kind
/// ("garage light", "kitchen sensor").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub phrases: Vec<String>,
}

impl Named {
    pub fn new(name: &str, room: Option<&str>, kind: &str) -> Self {
        let mut phrases = vec![name.to_owned()];
        if let Some(room) = room.filter(|r| !r.trim().is_empty()) {
            phrases.push(format!("{room} {kind}"));
            if let Some(last) = kind.split_whitespace().last() {
                phrases.push(format!("{room} {last}"));
            }
        }
        Self {
            name: name.to_owned(),
            phrases,
        }
    }

    /// From a device as the API and the gossip show it (`name`, `room`, `kind`).
    pub fn from_json(device: &Value) -> Option<Self> {
        Some(Self::new(
            device["name"].as_str()?,
            device["room"].as_str(),
            device["kind"].as_str().unwrap_or("device"),
        ))
    }

    /// How many words of the request its best matching phrase covers (all of that phrase's
    /// words must be said, plurals folded); 0 when none matches.
    fn matched(&self, said: &[String]) -> usize {
        self.phrases
            .iter()
            .map(|phrase| words(phrase))
            .filter(|phrase| !phrase.is_empty() && phrase.iter().all(|w| said.contains(w)))
            .map(|phrase| phrase.len())
            .max()
            .unwrap_or(0)
    }
}

/// The device a request names: every word of one of its phrases in the request, the longest
/// match winning; else the only device, when there is one.
pub fn device_in<'n>(text: &str, devices: &'n [Named]) -> Option<&'n str> {
    let said = words(text);
    let best = devices
        .iter()
        .map(|d| (d.matched(&said), d))
        .filter(|(score, _)| *score > 0)
        .max_by_key(|(score, _)| *score)
        .map(|(_, d)| d);
    best.or(match devices {
        [only] => Some(only),
        _ => None,
    })
    .map(|d| d.name.as_str())
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
                let named: Vec<Named> = devices
                    .iter()
                    .map(|d| Named::new(&d.name, d.room.as_deref(), d.kind()))
                    .collect();
                let name = devices
                    .iter()
                    .find(|d| d.name.eq_ignore_ascii_case(wanted.trim()))
                    .map(|d| d.name.as_str())
                    .or_else(|| device_in(wanted, &named))
                    .ok_or_else(|| {
                        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                        format!("no Matter device matches {wanted:?}; this node has {names:?}")
                    })?;
                let device = devices
                    .iter()
                    .find(|d| d.name == name)
                    .ok_or("the device list changed")?;
                let action = match args["action"].as_str().unwrap_or_default() {
                    "read" => None,
                    "level" if !device.has(cluster::LEVEL_CONTROL) => {
                        return Err(format!(
                            "{} is a {}: it has no level control",
                            device.name,
                            device.kind()
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
                    "state": device_json(&result)["state"],
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
        let devices: Vec<Named> = ["garage light", "porch light", "kitchen"]
            .map(|name| Named::new(name, None, "light"))
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

        // A room names a device too, with its kind; the longer match wins.
        let devices = vec![
            Named::new("ceiling lamp", Some("garage"), "light"),
            Named::new("thermo 1", Some("garage"), "temperature sensor"),
            Named::new("porch light", None, "light"),
        ];
        assert_eq!(
            device_in("Turn on the garage lights", &devices),
            Some("ceiling lamp")
        );
        assert_eq!(
            device_in("what does the garage temperature sensor read", &devices),
            Some("thermo 1")
        );
        assert_eq!(device_in("porch light off", &devices), Some("porch light"));
        assert_eq!(device_in("the garage", &devices), None);
    }
}

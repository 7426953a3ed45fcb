//! Agent definitions: a diff on a base — name, version, description, the intents and events that
//! wake it, the tools it may use, and the parameters its base reads. Serialised as compact JSON
//! (a few hundred bytes), checked before it is deployed or accepted from a peer.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Largest serialised definition accepted.
pub const MAX_DEF_BYTES: usize = 16 * 1024;

/// The behaviours implemented in the node; an agent picks one and configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// A trigger leads to tool calls; rules over the results decide what to emit.
    Reactive,
    /// Keeps a model of what it has seen (robust statistics per series) and speaks when the
    /// newest observation does not fit it.
    Deliberative,
}

/// An agent: the diff on its base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    pub name: String,
    pub base: Base,
    pub version: u32,
    pub description: String,
    /// Example requests that wake it (routed like capability descriptors).
    #[serde(default)]
    pub intents: Vec<String>,
    /// Event kinds it subscribes to (`sensor.reading`, `vision.*`).
    #[serde(default)]
    pub events: Vec<String>,
    /// Tools it may call; anything else it asks for is refused.
    #[serde(default)]
    pub tools: Vec<String>,
    /// What its base reads (see [`crate::base`]).
    #[serde(default)]
    pub params: Value,
}

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefError {
    #[error("agent definition does not decode: {0}")]
    Malformed(String),
    #[error("agent definition is {0} bytes; the limit is {MAX_DEF_BYTES}")]
    TooLarge(usize),
    #[error("agent {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

impl AgentDef {
    /// Checks the name, the triggers and the tool names.
    pub fn check(&self) -> Result<(), DefError> {
        let invalid = |reason: String| DefError::Invalid {
            name: self.name.clone(),
            reason,
        };
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            return Err(invalid(
                "the name is lowercase letters, digits and '_' (at most 64)".into(),
            ));
        }
        if self.intents.is_empty() && self.events.is_empty() {
            return Err(invalid(
                "nothing wakes it: give intents, events or both".into(),
            ));
        }
        if let Some(tool) = self.tools.iter().find(|t| !t.contains(':')) {
            return Err(invalid(format!("tool {tool:?} is not namespace:verb")));
        }
        let size = self.to_bytes().len();
        if size > MAX_DEF_BYTES {
            return Err(DefError::TooLarge(size));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a definition (from a file, the API or a peer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DefError> {
        if bytes.len() > MAX_DEF_BYTES {
            return Err(DefError::TooLarge(bytes.len()));
        }
        let def: Self =
            serde_json::from_slice(bytes).map_err(|e| DefError::Malformed(e.to_string()))?;
        def.check()?;
        Ok(def)
    }

    /// Whether it may call `tool`.
    pub fn may_use(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t == tool)
    }

    /// Whether an event of this kind wakes it.
    pub fn wakes_on(&self, event: &crate::Event) -> bool {
        self.events.iter().any(|pattern| event.matches(pattern))
    }
}

/// The spec's three MVP agents, as diffs on the two bases.
pub fn builtin() -> Vec<AgentDef> {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    vec![
        AgentDef {
            name: "vision_monitor".into(),
            base: Base::Reactive,
            version: 1,
            description: "Watches a camera and reports what it sees; raises an anomaly when a \
                          person or vehicle appears or the scene changes suddenly."
                .into(),
            intents: strings(&[
                "check the garage camera",
                "is anything happening on the camera",
                "look at the driveway",
            ]),
            events: strings(&["camera.frame"]),
            tools: strings(&["vision:analyze"]),
            params: json!({
                "call": {"tool": "vision:analyze", "args": {"source": "garage_cam"}},
                "emit": {
                    "kind": "vision.anomaly",
                    "when_any": {"anomalies": "non_empty"},
                    "severity": "warning"
                }
            }),
        },
        AgentDef {
            name: "anomaly_detector".into(),
            base: Base::Deliberative,
            version: 1,
            description:
                "Learns what each sensor's readings usually are and raises an event, with \
                          an explanation, when a reading does not fit."
                    .into(),
            intents: strings(&["are the sensor readings normal", "any unusual temperatures"]),
            events: strings(&["sensor.reading"]),
            tools: Vec::new(),
            params: json!({"window": 60, "threshold": 3.5, "min_samples": 8, "kind": "sensor.anomaly"}),
        },
        AgentDef {
            name: "notifier".into(),
            base: Base::Reactive,
            version: 1,
            description: "Routes alerts to the right notification channel by severity.".into(),
            intents: strings(&["send an alert to everyone", "notify the family"]),
            events: strings(&["vision.anomaly", "sensor.anomaly"]),
            tools: strings(&["notify:send"]),
            params: json!({
                "rules": [
                    {"min_severity": "critical", "tool": "notify:send", "args": {"channel": "webhook"}},
                    {"min_severity": "warning", "tool": "notify:send", "args": {"channel": "log"}}
                ]
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_agents_are_valid_and_small() {
        for def in builtin() {
            def.check().unwrap();
            let bytes = def.to_bytes();
            assert!(bytes.len() < 1024, "{}: {} bytes", def.name, bytes.len());
            assert_eq!(AgentDef::from_bytes(&bytes).unwrap(), def);
        }
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let mut def = builtin().remove(0);
        def.name = "Vision Monitor".into();
        assert!(def.check().unwrap_err().to_string().contains("lowercase"));
        let mut def = builtin().remove(0);
        def.intents.clear();
        def.events.clear();
        assert!(
            def.check()
                .unwrap_err()
                .to_string()
                .contains("nothing wakes it")
        );
        let mut def = builtin().remove(0);
        def.tools.push("shell".into());
        assert!(
            def.check()
                .unwrap_err()
                .to_string()
                .contains("namespace:verb")
        );
        assert!(matches!(
            AgentDef::from_bytes(b"{\"name\": 1}"),
            Err(DefError::Malformed(_))
        ));
        assert!(matches!(
            AgentDef::from_bytes(&vec![b' '; MAX_DEF_BYTES + 1]),
            Err(DefError::TooLarge(_))
        ));
    }
}

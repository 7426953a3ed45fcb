//! Events agents emit and subscribe to: a kind (`vision.anomaly`, `sensor.reading`, …), a
//! severity, a one-line summary and structured data.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Something that happened, as agents see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: String,
    /// Who said so: `agent@node` or a tool.
    pub source: String,
    pub severity: Severity,
    pub summary: String,
    #[serde(default)]
    pub data: Value,
    /// Unix seconds.
    pub at: u64,
}

impl Event {
    /// Whether a subscription pattern matches this event's kind: exact, or a prefix ending in
    /// `*` (`sensor.*`).
    pub fn matches(&self, pattern: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => self.kind.starts_with(prefix),
            None => self.kind == pattern,
        }
    }
}

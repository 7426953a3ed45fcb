//! The two bases. [`step`] is everything an agent does when awake: given its definition, its
//! state and what woke it, it returns actions for the node to carry out and its next state.
//!
//! - **Reactive** (`params.call`, `params.emit`, `params.rules`): a trigger calls `call.tool`
//!   (the event's `data` overrides the configured arguments); the tool's result is reported, and
//!   emitted as an event of kind `emit.kind` when a field named in `emit.when_any` is non-empty.
//!   With `rules` (a list of `{min_severity, tool, args}`), an event goes to the first rule its
//!   severity reaches, the event's summary as the message.
//! - **Deliberative** (`params.window`, `threshold`, `min_samples`, `kind`): each
//!   `{series, value}` reading is compared with the last `window` readings of its series by a
//!   robust z-score (0.6745 · (x − median) / MAD); beyond `threshold` it emits an event that says
//!   by how much and which way. Asked by intent, it reports what it has learned.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::def::{AgentDef, Base};
use crate::event::{Event, Severity};

/// What woke the agent, or what it asked for coming back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Intent { text: String },
    Event(Event),
    ToolResult { tool: String, output: Value },
}

/// What the node should do for the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Call a tool (one the definition allows); its result comes back as a trigger.
    CallTool { tool: String, args: Value },
    /// Publish an event to the agents that subscribe to it.
    Emit(Event),
    /// Answer whoever invoked the agent.
    Reply(String),
}

/// One wake-up's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub actions: Vec<Action>,
    pub state: Value,
}

/// Runs `def` once on `trigger`.
pub fn step(def: &AgentDef, state: &Value, trigger: &Trigger, now: u64) -> Step {
    match def.base {
        Base::Reactive => reactive(def, state, trigger, now),
        Base::Deliberative => deliberative(def, state, trigger, now),
    }
}

fn source(def: &AgentDef) -> String {
    def.name.clone()
}

fn merge(base: &Value, overrides: &Value) -> Value {
    let mut merged = base.clone();
    if let (Some(target), Some(extra)) = (merged.as_object_mut(), overrides.as_object()) {
        for (key, value) in extra {
            target.insert(key.clone(), value.clone());
        }
    }
    merged
}

fn call(def: &AgentDef, tool: &str, args: Value) -> Action {
    if def.may_use(tool) {
        Action::CallTool {
            tool: tool.to_owned(),
            args,
        }
    } else {
        Action::Reply(format!("{} may not use {tool}", def.name))
    }
}

fn reactive(def: &AgentDef, state: &Value, trigger: &Trigger, now: u64) -> Step {
    let params = &def.params;
    let mut actions = Vec::new();
    match trigger {
        Trigger::Intent { text } => {
            if let Some(tool) = params["call"]["tool"].as_str() {
                actions.push(call(def, tool, params["call"]["args"].clone()));
            } else if let Some(rule) = params["rules"].as_array().and_then(|r| r.last()) {
                let args = merge(&rule["args"], &json!({"message": text}));
                actions.push(call(def, rule["tool"].as_str().unwrap_or_default(), args));
            }
        }
        Trigger::Event(event) => {
            if let Some(tool) = params["call"]["tool"].as_str() {
                let args = merge(&params["call"]["args"], &event.data);
                actions.push(call(def, tool, args));
            } else if let Some(rules) = params["rules"].as_array() {
                let rule = rules.iter().find(|rule| {
                    serde_json::from_value::<Severity>(rule["min_severity"].clone())
                        .is_ok_and(|min| event.severity >= min)
                });
                if let Some(rule) = rule {
                    let args = merge(
                        &rule["args"],
                        &json!({"message": event.summary, "title": event.kind}),
                    );
                    actions.push(call(def, rule["tool"].as_str().unwrap_or_default(), args));
                }
            }
        }
        Trigger::ToolResult { tool, output } => {
            let summary = output["summary"]
                .as_str()
                .or(output["detail"].as_str())
                .map_or_else(|| output.to_string(), str::to_owned);
            let emit = &params["emit"];
            let fires = emit["when_any"].as_object().is_some_and(|conditions| {
                conditions
                    .keys()
                    .any(|field| match &output[field.as_str()] {
                        Value::Array(items) => !items.is_empty(),
                        Value::String(text) => !text.is_empty(),
                        Value::Bool(flag) => *flag,
                        _ => false,
                    })
            });
            if fires {
                let severity =
                    serde_json::from_value(emit["severity"].clone()).unwrap_or(Severity::Warning);
                actions.push(Action::Emit(Event {
                    kind: emit["kind"].as_str().unwrap_or("agent.event").to_owned(),
                    source: source(def),
                    severity,
                    summary: summary.clone(),
                    data: output.clone(),
                    at: now,
                }));
            }
            actions.push(Action::Reply(format!("{tool}: {summary}")));
        }
    }
    let runs = state["runs"].as_u64().unwrap_or(0) + 1;
    Step {
        actions,
        state: json!({"runs": runs, "last_trigger_at": now}),
    }
}

/// A series' recent readings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Series {
    values: Vec<f64>,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Median and median absolute deviation.
fn robust(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let m = median(&sorted);
    let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - m).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    (m, median(&deviations))
}

fn deliberative(def: &AgentDef, state: &Value, trigger: &Trigger, now: u64) -> Step {
    let params = &def.params;
    let window = params["window"].as_u64().unwrap_or(60).clamp(4, 10_000) as usize;
    let threshold = params["threshold"].as_f64().unwrap_or(3.5).max(0.5);
    let min_samples = params["min_samples"].as_u64().unwrap_or(8).max(3) as usize;
    let kind = params["kind"].as_str().unwrap_or("sensor.anomaly");
    let mut series: BTreeMap<String, Series> =
        serde_json::from_value(state["series"].clone()).unwrap_or_default();
    let mut actions = Vec::new();
    match trigger {
        Trigger::Event(event) => {
            let name = event.data["series"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            if let Some(value) = event.data["value"].as_f64().filter(|v| v.is_finite()) {
                let entry = series.entry(name.clone()).or_default();
                if entry.values.len() >= min_samples {
                    let (m, mad) = robust(&entry.values);
                    // A flat series has no spread: any change is a deviation of its own size.
                    let spread = if mad > 0.0 { mad / 0.6745 } else { 1e-9 };
                    let z = (value - m) / spread;
                    if z.abs() > threshold {
                        let severity = if z.abs() > 2.0 * threshold {
                            Severity::Critical
                        } else {
                            Severity::Warning
                        };
                        let direction = if z > 0.0 { "above" } else { "below" };
                        actions.push(Action::Emit(Event {
                            kind: kind.to_owned(),
                            source: source(def),
                            severity,
                            summary: format!(
                                "{name} read {value}, {:.1} robust deviations {direction} its usual {m:.2} (last {} readings)",
                                z.abs(),
                                entry.values.len()
                            ),
                            data: json!({"series": name, "value": value, "median": m, "mad": mad, "z": z}),
                            at: now,
                        }));
                    }
                }
                entry.values.push(value);
                if entry.values.len() > window {
                    let excess = entry.values.len() - window;
                    entry.values.drain(..excess);
                }
            }
        }
        Trigger::Intent { .. } => {
            let lines: Vec<String> = series
                .iter()
                .map(|(name, s)| {
                    let (m, mad) = robust(&s.values);
                    format!(
                        "{name}: usually {m:.2} (± {mad:.2}) over {} readings",
                        s.values.len()
                    )
                })
                .collect();
            actions.push(Action::Reply(if lines.is_empty() {
                "no readings yet".into()
            } else {
                lines.join("; ")
            }));
        }
        Trigger::ToolResult { .. } => {}
    }
    Step {
        actions,
        state: json!({"series": series}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::def::builtin;

    fn agent(name: &str) -> AgentDef {
        builtin().into_iter().find(|d| d.name == name).unwrap()
    }

    fn reading(series: &str, value: f64) -> Trigger {
        Trigger::Event(Event {
            kind: "sensor.reading".into(),
            source: "garage-sensor".into(),
            severity: Severity::Info,
            summary: String::new(),
            data: json!({"series": series, "value": value}),
            at: 0,
        })
    }

    #[test]
    fn the_anomaly_detector_learns_a_series_and_explains_an_outlier() {
        let def = agent("anomaly_detector");
        let mut state = Value::Null;
        for (i, value) in [20.9, 21.1, 21.0, 20.8, 21.2, 21.0, 20.9, 21.1, 21.0, 21.05]
            .iter()
            .enumerate()
        {
            let step = step(&def, &state, &reading("garage_temp", *value), i as u64);
            assert!(
                step.actions.is_empty(),
                "ordinary reading {value}: {:?}",
                step.actions
            );
            state = step.state;
        }
        let outlier = step(&def, &state, &reading("garage_temp", 29.5), 99);
        let [Action::Emit(event)] = outlier.actions.as_slice() else {
            panic!("{:?}", outlier.actions);
        };
        assert_eq!(event.kind, "sensor.anomaly");
        assert_eq!(event.severity, Severity::Critical);
        assert!(
            event.summary.contains("above its usual 21.0"),
            "{}",
            event.summary
        );
        // Other series are independent; asked by intent, it says what it has learned.
        let asked = step(
            &def,
            &outlier.state,
            &Trigger::Intent {
                text: "any unusual temperatures".into(),
            },
            100,
        );
        assert!(
            matches!(&asked.actions[0], Action::Reply(text) if text.contains("garage_temp: usually 21.0")),
            "{:?}",
            asked.actions
        );
    }

    #[test]
    fn vision_monitor_calls_its_tool_and_emits_when_the_result_has_anomalies() {
        let def = agent("vision_monitor");
        let woke = step(
            &def,
            &Value::Null,
            &Trigger::Intent {
                text: "Check garage camera".into(),
            },
            1,
        );
        assert_eq!(
            woke.actions,
            [Action::CallTool {
                tool: "vision:analyze".into(),
                args: json!({"source": "garage_cam"})
            }]
        );
        let quiet = json!({"summary": "No anomalies detected. 1 vehicle present.", "objects": ["car"], "anomalies": []});
        let result = step(
            &def,
            &woke.state,
            &Trigger::ToolResult {
                tool: "vision:analyze".into(),
                output: quiet,
            },
            2,
        );
        assert_eq!(
            result.actions,
            [Action::Reply(
                "vision:analyze: No anomalies detected. 1 vehicle present.".into()
            )]
        );
        let alarming = json!({"summary": "A person appeared.", "objects": ["person"], "anomalies": ["person appeared"]});
        let result = step(
            &def,
            &result.state,
            &Trigger::ToolResult {
                tool: "vision:analyze".into(),
                output: alarming,
            },
            3,
        );
        assert!(
            matches!(&result.actions[0], Action::Emit(e) if e.kind == "vision.anomaly"),
            "{:?}",
            result.actions
        );
        assert_eq!(result.state["runs"], 3);
    }

    #[test]
    fn the_notifier_routes_by_severity_and_refuses_tools_it_may_not_use() {
        let def = agent("notifier");
        let event = |severity| {
            Trigger::Event(Event {
                kind: "vision.anomaly".into(),
                source: "vision_monitor".into(),
                severity,
                summary: "A person appeared.".into(),
                data: Value::Null,
                at: 0,
            })
        };
        let channel = |step: Step| match &step.actions[..] {
            [Action::CallTool { tool, args }] if tool == "notify:send" => {
                args["channel"].as_str().map(str::to_owned)
            }
            [] => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            channel(step(&def, &Value::Null, &event(Severity::Critical), 0)).as_deref(),
            Some("webhook")
        );
        assert_eq!(
            channel(step(&def, &Value::Null, &event(Severity::Warning), 0)).as_deref(),
            Some("log")
        );
        assert_eq!(
            channel(step(&def, &Value::Null, &event(Severity::Info), 0)),
            None
        );
        let mut rogue = def.clone();
        rogue.params["rules"][0]["tool"] = json!("matter:execute");
        let refused = step(&rogue, &Value::Null, &event(Severity::Critical), 0);
        assert!(
            matches!(&refused.actions[0], Action::Reply(text) if text.contains("may not use matter:execute")),
            "{:?}",
            refused.actions
        );
    }
}

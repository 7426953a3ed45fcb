//! Fuzzes two HTTP JSON bodies through the code they drive: `POST /v1/agents` (a deploy: an
//! agent definition, checked, then woken) and `POST /v1/events` (an event, which wakes the
//! built-in agents that subscribe to it, each stepping its state). Bad bodies are refused with
//! an error, never a panic; whatever is accepted runs.
#![no_main]

use atmosphere_agents::{AgentDef, Event, Trigger, builtin, step};
use atmosphere_api::{Body, DeployRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn reading(value: f64, at: u64) -> Trigger {
    Trigger::Event(Event {
        kind: "sensor.reading".into(),
        source: "fuzz".into(),
        severity: atmosphere_agents::Severity::Info,
        summary: String::new(),
        data: serde_json::json!({"series": "t", "value": value}),
        at,
    })
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(deploy) = serde_json::from_slice::<DeployRequest>(bytes)
        && deploy.check().is_ok()
    {
        let def = deploy.def;
        // Round trip as the registry stores it (parameters are free JSON whose floats serde_json
        // may re-round by an ulp, so those are not compared).
        let stored = AgentDef::from_bytes(&def.to_bytes()).expect("a checked definition reloads");
        assert_eq!(
            (
                &stored.name,
                stored.base,
                stored.version,
                &stored.intents,
                &stored.events,
                &stored.tools
            ),
            (
                &def.name,
                def.base,
                def.version,
                &def.intents,
                &def.events,
                &def.tools
            )
        );
        let mut state = Value::Null;
        for (i, trigger) in [
            Trigger::Intent {
                text: "check".into(),
            },
            reading(20.0, 1),
            reading(f64::MAX, 2),
            reading(-0.0, 3),
            Trigger::ToolResult {
                tool: "vision:analyze".into(),
                output: serde_json::json!({"summary": "x", "anomalies": [1]}),
            },
        ]
        .iter()
        .enumerate()
        {
            state = step(&def, &state, trigger, i as u64).state;
        }
    }
    if let Ok(event) = serde_json::from_slice::<Event>(bytes) {
        let trigger = Trigger::Event(event);
        for def in builtin() {
            // Twenty of the same reading, then the fuzzed one again: the statistics see it.
            let mut state = Value::Null;
            for at in 0..20 {
                state = step(&def, &state, &reading(21.5, at), at).state;
            }
            let _ = step(&def, &state, &trigger, u64::MAX);
        }
    }
});

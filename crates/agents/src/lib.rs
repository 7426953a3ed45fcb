//! Atmosphere's agents, without I/O. An agent is a *diff* on one of two bases implemented here —
//! reactive (a trigger leads to tool calls and rules over their results) and deliberative (a
//! model of what it has seen, updated on each event, that decides when to speak) — so a
//! definition is a few hundred bytes of JSON, versioned and gossiped, and a sleeping agent is its
//! definition plus its state. The node wakes an agent when an intent or event matches it, feeds
//! it [`Trigger`]s and tool results, and carries out the [`Action`]s it returns.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod base;
pub mod def;
pub mod event;

pub use base::{Action, Step, Trigger, step};
pub use def::{AgentDef, Base, DefError, builtin};
pub use event::{Event, Severity};

//! Which node runs an intent once its capability is known. Every provider comes with the
//! gradient table's cost (latency, load, suspicion, recent failures); for language models the
//! intent's complexity moves the choice along the model sizes: a demanding request pays to reach
//! a larger model, a simple one stays on the nearest. Complexity is read from the intent itself —
//! its similarity to examples of demanding and of quick requests, and its length — not from
//! keywords.

use serde::{Deserialize, Serialize};

use crate::descriptor::{Descriptor, EmbeddedDescriptor};

/// Examples of requests that need a strong model, and of ones any model handles.
pub fn complexity_descriptors() -> [Descriptor; 2] {
    let make = |capability: &str, description: &str, examples: &[&str]| Descriptor {
        capability: capability.into(),
        description: description.into(),
        examples: examples.iter().map(|e| (*e).to_owned()).collect(),
    };
    [
        make(
            "demanding",
            "Open-ended analysis, multi-step reasoning, design, critique and long-form writing.",
            &[
                "evaluate the risks and trade-offs of this architecture",
                "analyse the implications of changing our backup strategy",
                "design a fault-tolerant system for our home automation",
                "write a detailed report comparing three approaches",
                "reason step by step through this scheduling problem",
                "assess the threats to a network with exposed services",
                "critique this proposal and suggest improvements",
                "plan a migration with risks, steps and rollback",
                "explain in depth how these components interact and where it can fail",
                "develop a strategy for reducing our energy costs over five years",
            ],
        ),
        make(
            "quick",
            "Short factual questions, small sums, greetings and one-line answers.",
            &[
                "what's 5 plus 3",
                "hello",
                "what is the capital of italy",
                "how many minutes in an hour",
                "spell necessary",
                "what day comes after tuesday",
                "thanks",
                "is a tomato a fruit",
                "what colour is grass",
                "how old is the earth roughly",
            ],
        ),
    ]
}

/// How demanding an intent is, in [0, 1].
#[derive(Debug, Clone)]
pub struct Complexity {
    demanding: Vec<crate::QVec>,
    quick: Vec<crate::QVec>,
}

impl Complexity {
    /// From the embedded [`complexity_descriptors`] (demanding first).
    pub fn new(demanding: &EmbeddedDescriptor, quick: &EmbeddedDescriptor) -> Self {
        Self {
            demanding: demanding.vectors.clone(),
            quick: quick.vectors.clone(),
        }
    }

    /// Similarity margin towards demanding requests, plus a little for length (long requests
    /// carry more to do), squashed to [0, 1].
    pub fn of(&self, intent: &[f32], words: usize) -> f32 {
        let best = |vectors: &[crate::QVec]| {
            let mut sims: Vec<f32> = vectors.iter().map(|v| v.dot(intent)).collect();
            sims.sort_by(|a, b| b.total_cmp(a));
            let k = sims.len().clamp(1, 3);
            sims.iter().take(k).sum::<f32>() / k as f32
        };
        let margin = best(&self.demanding) - best(&self.quick);
        let length = (words as f32 - 8.0) / 16.0;
        1.0 / (1.0 + (-(8.0 * margin + length)).exp())
    }
}

/// A node that can serve the capability, as the gradient table and gossip describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: String,
    pub hops: u8,
    /// The gradient table's cost (lower is better).
    pub cost: f64,
    /// For language models: the largest healthy chat model's parameter count, if known.
    pub parameters: Option<u64>,
}

/// A candidate with the cost the choice used and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub candidate: Candidate,
    pub cost: f64,
    pub why: String,
}

/// What model size is worth, in gradient-cost units, across the sizes on offer (smallest to
/// largest): a demanding intent pays up to this much for the smallest model, a simple one up to
/// the second for the largest. Larger than the cost differences a hop and ordinary load make on a
/// LAN (the gradient table weighs one unit of load per core at 10), so the intent decides the
/// tier and the network decides among equals or when a node is swamped.
const TIER_DEMANDING: f64 = 10.0;
const TIER_SIMPLE: f64 = 10.0;

/// Orders the candidates, best first. `complexity` is `None` for capabilities that are not
/// language models (the gradient cost alone decides).
pub fn rank(candidates: &[Candidate], complexity: Option<f32>) -> Vec<Ranked> {
    let sizes: Vec<f64> = candidates
        .iter()
        .filter_map(|c| c.parameters)
        .filter(|p| *p > 0)
        .map(|p| (p as f64).log10())
        .collect();
    let largest = sizes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let smallest = sizes.iter().copied().fold(f64::INFINITY, f64::min);
    let mut ranked: Vec<Ranked> = candidates
        .iter()
        .map(|candidate| {
            let (extra, why) = match (complexity, candidate.parameters) {
                (Some(c), Some(p)) if p > 0 && largest > smallest => {
                    // Where this model sits between the smallest and the largest on offer (log
                    // scale), 0 to 1.
                    let position = ((p as f64).log10() - smallest) / (largest - smallest);
                    let c = f64::from(c.clamp(0.0, 1.0));
                    let extra =
                        c * TIER_DEMANDING * (1.0 - position) + (1.0 - c) * TIER_SIMPLE * position;
                    (
                        extra,
                        format!("model tier {:+.2} (complexity {c:.2})", extra),
                    )
                }
                _ => (0.0, String::new()),
            };
            let cost = candidate.cost + extra;
            let why = format!(
                "cost {:.2}{}{}",
                candidate.cost,
                if why.is_empty() { "" } else { ", " },
                why
            );
            Ranked {
                candidate: candidate.clone(),
                cost,
                why,
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(a.candidate.hops.cmp(&b.candidate.hops))
    });
    ranked
}

/// "135M" → 135 000 000, "7B" → 7 000 000 000.
pub fn parse_size_label(label: &str) -> Option<u64> {
    let label = label.trim();
    let (number, scale) = match label.chars().last()? {
        'B' | 'b' => (&label[..label.len() - 1], 1e9),
        'M' | 'm' => (&label[..label.len() - 1], 1e6),
        'K' | 'k' => (&label[..label.len() - 1], 1e3),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value > 0.0).then_some((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(node: &str, hops: u8, cost: f64, parameters: u64) -> Candidate {
        Candidate {
            node: node.into(),
            hops,
            cost,
            parameters: Some(parameters),
        }
    }

    #[test]
    fn demanding_intents_pay_for_the_larger_model_and_simple_ones_stay_near() {
        let candidates = [
            candidate("mac", 0, 0.0, 7_000_000_000),
            candidate("server", 1, 0.6, 70_000_000_000),
        ];
        assert_eq!(rank(&candidates, Some(0.9))[0].candidate.node, "server");
        assert_eq!(rank(&candidates, Some(0.1))[0].candidate.node, "mac");
        // Without a complexity (not an LLM), the gradient cost decides.
        assert_eq!(rank(&candidates, None)[0].candidate.node, "mac");
        // With one model size there is nothing to trade.
        assert_eq!(rank(&candidates[..1], Some(1.0))[0].cost, 0.0);
    }

    #[test]
    fn size_labels_parse() {
        assert_eq!(parse_size_label("135M"), Some(135_000_000));
        assert_eq!(parse_size_label("7B"), Some(7_000_000_000));
        assert_eq!(parse_size_label("1.5B"), Some(1_500_000_000));
        assert_eq!(parse_size_label("big"), None);
    }
}

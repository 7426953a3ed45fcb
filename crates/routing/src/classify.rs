//! Which capability an intent asks for: its embedding is scored against every capability's
//! vectors (the mean of the `top_k` best cosines among the description and examples); the best
//! capability wins unless it is the out-of-scope class (a request nothing here serves) or scores
//! under the threshold (nothing fits well: a question for the general LLM); both fall back to the
//! general LLM and say so.

use serde::{Deserialize, Serialize};

use crate::descriptor::EmbeddedDescriptor;
use crate::{GENERAL, OUT_OF_SCOPE};

/// Tuning of the classifier (chosen on the external development set; see the crate's tests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// How many of a capability's best-matching vectors are averaged.
    pub top_k: usize,
    /// Below this score nothing fits well and the intent goes to the general LLM.
    pub threshold: f32,
    /// Weight of the similarity to the capability's centroid (the mean of its vectors) against
    /// the top-k mean: 0 is pure nearest-examples, 1 pure centroid.
    pub centroid_weight: f32,
    /// Weight of a softmax classifier trained on the descriptors' vectors (0 = none): its class
    /// probability is blended with the similarity score.
    pub head_weight: f32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            top_k: 3,
            threshold: 0.20,
            centroid_weight: 0.0,
            head_weight: 0.3,
        }
    }
}

/// One capability's score for an intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub capability: String,
    pub score: f32,
    /// The text (description or example) that matched best, for the trace.
    pub nearest: String,
}

/// The decision for one intent, with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The capability chosen, [`GENERAL`] when nothing fits well, or [`OUT_OF_SCOPE`].
    pub capability: String,
    pub score: f32,
    /// True when no capability fits: the intent goes to the best general LLM.
    pub fallback: bool,
    /// Every capability, best first.
    pub ranking: Vec<Scored>,
    pub reason: String,
}

/// The classifier over a catalog of embedded descriptors.
#[derive(Debug, Clone)]
pub struct Classifier {
    classes: Vec<Class>,
    params: Params,
    /// Softmax regression over the classes (one weight row and bias per class), when trained.
    head: Option<(Vec<Vec<f32>>, Vec<f32>)>,
}

#[derive(Debug, Clone)]
struct Class {
    capability: String,
    /// Unit-length mean of the vectors.
    centroid: Vec<f32>,
    /// (vector, the text it embeds) — descriptions and examples of every descriptor of this
    /// capability.
    vectors: Vec<(crate::QVec, String)>,
}

impl Classifier {
    /// `texts[i]` are the texts behind `descriptors[i].vectors` (for the trace); descriptors of
    /// the same capability pool their vectors, identical descriptors count once.
    pub fn new(descriptors: &[(EmbeddedDescriptor, Vec<String>)], params: Params) -> Self {
        let mut classes: Vec<Class> = Vec::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (descriptor, texts) in descriptors {
            let key = (
                descriptor.capability.as_str(),
                descriptor.description.as_str(),
            );
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let class = match classes
                .iter_mut()
                .find(|c| c.capability == descriptor.capability)
            {
                Some(class) => class,
                None => {
                    classes.push(Class {
                        capability: descriptor.capability.clone(),
                        centroid: Vec::new(),
                        vectors: Vec::new(),
                    });
                    let last = classes.len() - 1;
                    &mut classes[last]
                }
            };
            for (i, vector) in descriptor.vectors.iter().enumerate() {
                let text = texts.get(i).cloned().unwrap_or_default();
                class.vectors.push((vector.clone(), text));
            }
        }
        for class in &mut classes {
            class.centroid = centroid(&class.vectors);
        }
        let head = (params.head_weight > 0.0).then(|| train_head(&classes));
        Self {
            head,
            classes,
            params: Params {
                top_k: params.top_k.max(1),
                ..params
            },
        }
    }

    pub fn params(&self) -> Params {
        self.params
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.capability.as_str())
    }

    /// Every capability's score for `intent` (a unit vector), best first.
    pub fn scores(&self, intent: &[f32]) -> Vec<Scored> {
        let probabilities = self.head.as_ref().map(|(w, b)| softmax(w, b, intent));
        let mut scored: Vec<Scored> = self
            .classes
            .iter()
            .enumerate()
            .map(|(index, class)| {
                let mut sims: Vec<(f32, &str)> = class
                    .vectors
                    .iter()
                    .map(|(v, text)| (v.dot(intent), text.as_str()))
                    .collect();
                sims.sort_by(|a, b| b.0.total_cmp(&a.0));
                let k = self.params.top_k.min(sims.len()).max(1);
                let nearest = if sims.is_empty() {
                    0.0
                } else {
                    sims[..k].iter().map(|(s, _)| s).sum::<f32>() / k as f32
                };
                let to_centroid: f32 = class.centroid.iter().zip(intent).map(|(c, x)| c * x).sum();
                let w = self.params.centroid_weight.clamp(0.0, 1.0);
                let mut score = (1.0 - w) * nearest + w * to_centroid;
                if let Some(p) = &probabilities {
                    let h = self.params.head_weight.clamp(0.0, 1.0);
                    score = (1.0 - h) * score + h * p[index];
                }
                Scored {
                    capability: class.capability.clone(),
                    score,
                    nearest: sims
                        .first()
                        .map(|(_, t)| (*t).to_owned())
                        .unwrap_or_default(),
                }
            })
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored
    }

    /// The capability `intent` asks for, or a fallback with the reason.
    pub fn classify(&self, intent: &[f32]) -> Classification {
        let ranking = self.scores(intent);
        let Some(best) = ranking.first() else {
            return Classification {
                capability: OUT_OF_SCOPE.into(),
                score: 0.0,
                fallback: true,
                ranking,
                reason: "no capability descriptors are known yet".into(),
            };
        };
        let (capability, fallback, reason) = if best.capability == OUT_OF_SCOPE {
            (
                OUT_OF_SCOPE.to_owned(),
                true,
                format!(
                    "closest to requests no capability serves ({:.2}, like {:?}); falling back to the general LLM",
                    best.score, best.nearest
                ),
            )
        } else if best.score < self.params.threshold {
            (
                GENERAL.to_owned(),
                true,
                format!(
                    "best match {} scores {:.2}, under the threshold {:.2}; falling back to the general LLM",
                    best.capability, best.score, self.params.threshold
                ),
            )
        } else {
            let runner_up = ranking
                .get(1)
                .map(|r| format!("; next {} {:.2}", r.capability, r.score))
                .unwrap_or_default();
            (
                best.capability.clone(),
                false,
                format!(
                    "{} scores {:.2} (nearest: {:?}){runner_up}",
                    best.capability, best.score, best.nearest
                ),
            )
        };
        Classification {
            capability,
            score: best.score,
            fallback,
            ranking,
            reason,
        }
    }
}

fn dequantise(vector: &crate::QVec) -> Vec<f32> {
    vector
        .values
        .iter()
        .map(|q| f32::from(*q) * vector.scale)
        .collect()
}

fn softmax(weights: &[Vec<f32>], bias: &[f32], x: &[f32]) -> Vec<f32> {
    let logits: Vec<f32> = weights
        .iter()
        .zip(bias)
        .map(|(w, b)| w.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b)
        .collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// Trains softmax regression on every class's vectors (full-batch gradient descent with L2;
/// deterministic: same catalog, same weights on every node).
fn train_head(classes: &[Class]) -> (Vec<Vec<f32>>, Vec<f32>) {
    const EPOCHS: usize = 300;
    const RATE: f32 = 4.0;
    const L2: f32 = 1e-4;
    let samples: Vec<(usize, Vec<f32>)> = classes
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.vectors.iter().map(move |(v, _)| (i, dequantise(v))))
        .collect();
    let width = samples.first().map_or(0, |(_, x)| x.len());
    let mut weights = vec![vec![0.0f32; width]; classes.len()];
    let mut bias = vec![0.0f32; classes.len()];
    if samples.is_empty() {
        return (weights, bias);
    }
    let n = samples.len() as f32;
    for _ in 0..EPOCHS {
        let mut grad_w = vec![vec![0.0f32; width]; classes.len()];
        let mut grad_b = vec![0.0f32; classes.len()];
        for (label, x) in &samples {
            let p = softmax(&weights, &bias, x);
            for (c, pc) in p.iter().enumerate() {
                let error = pc - if c == *label { 1.0 } else { 0.0 };
                grad_b[c] += error;
                for (g, xi) in grad_w[c].iter_mut().zip(x) {
                    *g += error * xi;
                }
            }
        }
        for c in 0..classes.len() {
            bias[c] -= RATE * grad_b[c] / n;
            for (w, g) in weights[c].iter_mut().zip(&grad_w[c]) {
                *w -= RATE * (g / n + L2 * *w);
            }
        }
    }
    (weights, bias)
}

/// The unit-length mean of quantised vectors.
fn centroid(vectors: &[(crate::QVec, String)]) -> Vec<f32> {
    let Some(width) = vectors.first().map(|(v, _)| v.len()) else {
        return Vec::new();
    };
    let mut sum = vec![0.0f32; width];
    for (vector, _) in vectors.iter().filter(|(v, _)| v.len() == width) {
        for (s, q) in sum.iter_mut().zip(&vector.values) {
            *s += f32::from(*q) * vector.scale;
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        sum.iter_mut().for_each(|v| *v /= norm);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QVec;

    fn descriptor(capability: &str, vectors: &[[f32; 2]]) -> (EmbeddedDescriptor, Vec<String>) {
        (
            EmbeddedDescriptor {
                capability: capability.into(),
                description: format!("{capability} things"),
                vectors: vectors.iter().map(|v| QVec::quantise(v)).collect(),
            },
            (0..vectors.len())
                .map(|i| format!("{capability} {i}"))
                .collect(),
        )
    }

    #[test]
    fn the_nearest_capability_wins_and_weak_or_unserved_intents_fall_back() {
        let catalog = [
            descriptor("matter", &[[1.0, 0.0], [0.9, 0.436]]),
            descriptor("llm", &[[0.0, 1.0]]),
            descriptor(OUT_OF_SCOPE, &[[-1.0, 0.0]]),
        ];
        let classifier = Classifier::new(
            &catalog,
            Params {
                top_k: 2,
                threshold: 0.5,
                centroid_weight: 0.0,
                head_weight: 0.0,
            },
        );
        let lights = classifier.classify(&[0.995, 0.0998]);
        assert_eq!(
            (lights.capability.as_str(), lights.fallback),
            ("matter", false)
        );
        assert!(lights.reason.contains("next llm"), "{}", lights.reason);
        let music = classifier.classify(&[-0.99, 0.141]);
        assert_eq!(
            (music.capability.as_str(), music.fallback),
            (OUT_OF_SCOPE, true)
        );
        // Equally far from everything: under the threshold.
        let vague = classifier.classify(&[0.3, -0.954]);
        assert!(
            vague.fallback && vague.reason.contains("threshold"),
            "{vague:?}"
        );
        assert_eq!(vague.capability, GENERAL);
        assert!(
            Classifier::new(&[], Params::default())
                .classify(&[1.0])
                .fallback
        );
    }

    #[test]
    fn identical_descriptors_from_several_nodes_count_once() {
        let one = descriptor("llm", &[[0.0, 1.0]]);
        let classifier = Classifier::new(&[one.clone(), one], Params::default());
        assert_eq!(classifier.classes[0].vectors.len(), 1);
    }
}

//! Unit vectors quantised to one signed byte per dimension, for gossip (384 bytes per example
//! instead of 1536) and fast dot products. The scale is per vector, so cosine similarity with a
//! full-precision query loses well under 0.01.

use serde::{Deserialize, Serialize};

/// A quantised embedding: `values[i] * scale ≈ x[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QVec {
    pub scale: f32,
    pub values: Vec<i8>,
}

impl QVec {
    /// Quantises `x` (any length; unit length expected).
    pub fn quantise(x: &[f32]) -> Self {
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if max == 0.0 || !max.is_finite() {
            return Self {
                scale: 0.0,
                values: vec![0; x.len()],
            };
        }
        let scale = max / 127.0;
        let values = x
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Self { scale, values }
    }

    /// Dot product with a full-precision vector (the cosine when both are unit length);
    /// 0 when the lengths differ.
    pub fn dot(&self, x: &[f32]) -> f32 {
        if x.len() != self.values.len() {
            return 0.0;
        }
        let sum: f32 = self
            .values
            .iter()
            .zip(x)
            .map(|(q, v)| f32::from(*q) * v)
            .sum();
        sum * self.scale
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u32, n: usize) -> Vec<f32> {
        let mut state = seed;
        let raw: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        raw.iter().map(|v| v / norm).collect()
    }

    #[test]
    fn quantised_cosine_stays_within_a_hundredth() {
        for seed in 0..50 {
            let (a, b) = (unit(seed, 384), unit(seed + 1000, 384));
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let approx = QVec::quantise(&a).dot(&b);
            assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
            assert!((QVec::quantise(&a).dot(&a) - 1.0).abs() < 0.01);
        }
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        assert_eq!(QVec::quantise(&[0.0; 4]).dot(&[1.0; 4]), 0.0);
        assert!(
            QVec::quantise(&[f32::NAN, 1.0])
                .dot(&[1.0, 1.0])
                .is_finite()
        );
        assert_eq!(QVec::quantise(&[1.0]).dot(&[1.0, 2.0]), 0.0);
    }
}

//! Routing knowledge queries: what a node tells the mesh about the chunks it holds, per
//! collection — how many chunks and documents, and up to [`CENTROIDS`] centroids of their
//! embeddings (spherical k-means, each quantised to one signed byte per dimension: 384 bytes) —
//! so a querier sends its question only to the nodes whose centroids come near it. No I/O; built
//! optimised even in test builds, since the node runs it over every chunk it holds.

use serde::{Deserialize, Serialize};

/// Centroids per collection and node.
pub const CENTROIDS: usize = 8;
const ROUNDS: usize = 8;

/// One collection as a node holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub collection: String,
    pub chunks: u64,
    pub documents: u64,
    /// Unit vectors, i8-quantised (×127), base64.
    pub centroids: Vec<String>,
}

impl Summary {
    /// Cosine similarity of `query` (a unit vector) to the nearest centroid; `None` without any.
    pub fn relevance(&self, query: &[f32]) -> Option<f32> {
        self.centroids
            .iter()
            .filter_map(|c| dequantize(c))
            .filter(|c| c.len() == query.len())
            .map(|c| dot(&c, query))
            .max_by(f32::total_cmp)
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalise(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Spherical k-means over unit vectors: the first centre is the first vector, each next the one
/// farthest from the centres so far, then [`ROUNDS`] rounds of assignment and re-centring.
pub fn centroids(vectors: &[&[f32]], k: usize) -> Vec<Vec<f32>> {
    let Some(first) = vectors.first() else {
        return Vec::new();
    };
    let k = k.min(vectors.len()).max(1);
    let mut centres: Vec<Vec<f32>> = vec![first.to_vec()];
    let mut nearest: Vec<f32> = vectors.iter().map(|v| dot(v, first)).collect();
    while centres.len() < k {
        let Some((far, _)) = nearest.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)) else {
            break;
        };
        let centre = vectors[far].to_vec();
        for (i, v) in vectors.iter().enumerate() {
            nearest[i] = nearest[i].max(dot(v, &centre));
        }
        centres.push(centre);
    }
    let dims = first.len();
    for _ in 0..ROUNDS {
        let mut sums = vec![vec![0f32; dims]; centres.len()];
        for v in vectors {
            let best = (0..centres.len())
                .max_by(|a, b| dot(v, &centres[*a]).total_cmp(&dot(v, &centres[*b])))
                .unwrap_or(0);
            sums[best]
                .iter_mut()
                .zip(v.iter())
                .for_each(|(s, x)| *s += x);
        }
        for (centre, mut sum) in centres.iter_mut().zip(sums) {
            if sum.iter().any(|x| *x != 0.0) {
                normalise(&mut sum);
                *centre = sum;
            }
        }
    }
    centres
}

pub fn quantize(v: &[f32]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .map(|x| ((x * 127.0).round().clamp(-127.0, 127.0) as i8) as u8)
        .collect();
    data_encoding::BASE64.encode(&bytes)
}

pub fn dequantize(text: &str) -> Option<Vec<f32>> {
    let bytes = data_encoding::BASE64.decode(text.as_bytes()).ok()?;
    let mut v: Vec<f32> = bytes.iter().map(|b| f32::from(*b as i8) / 127.0).collect();
    normalise(&mut v);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        normalise(&mut v);
        v
    }

    #[test]
    fn centroids_find_the_clusters_and_relevance_ranks_by_them() {
        let a = [unit(&[1.0, 0.1, 0.0]), unit(&[0.9, 0.0, 0.1])];
        let b = [unit(&[0.0, 1.0, 0.1]), unit(&[0.1, 0.9, 0.0])];
        let all: Vec<&[f32]> = a.iter().chain(&b).map(Vec::as_slice).collect();
        let found = centroids(&all, 2);
        assert_eq!(found.len(), 2);
        let summary = Summary {
            collection: "c".into(),
            chunks: 4,
            documents: 1,
            centroids: found.iter().map(|c| quantize(c)).collect(),
        };
        let near_a = summary.relevance(&unit(&[1.0, 0.0, 0.0])).unwrap();
        assert!(near_a > 0.95, "{near_a}");
        let only_a = Summary {
            centroids: vec![quantize(&centroids(&[a[0].as_slice(), &a[1]], 1)[0])],
            ..summary.clone()
        };
        let query_b = unit(&[0.0, 1.0, 0.0]);
        assert!(only_a.relevance(&query_b).unwrap() < summary.relevance(&query_b).unwrap() - 0.5);
        assert!(centroids(&[], 3).is_empty());
        assert_eq!(centroids(&all, 10).len(), 4);
        // A damaged centroid is ignored, not a panic.
        let bad = Summary {
            centroids: vec!["***".into()],
            ..summary
        };
        assert_eq!(bad.relevance(&query_b), None);
    }
}

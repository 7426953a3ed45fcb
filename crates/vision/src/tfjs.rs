//! TF.js graph models (`model.json` + weight shards): the graph's nodes (op, inputs, attributes),
//! its signature, and its weights decoded from the shards in manifest order — float32, int32,
//! and floats stored as float16 ("quantised" to halve the download).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Why a model could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("cannot read {path}: {source}; scripts/fetch-vision fetches the detector")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a TF.js graph model: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// A tensor of the graph's constants.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I32 { shape: Vec<usize>, data: Vec<i32> },
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::F32 { shape, .. } | Self::I32 { shape, .. } => shape,
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: String,
    #[serde(default)]
    pub input: Vec<String>,
    #[serde(default)]
    pub attr: Value,
}

/// A loaded graph model.
#[derive(Debug, Clone)]
pub struct GraphModel {
    pub nodes: Vec<Node>,
    /// Inputs by name, with their shapes (`-1` where free).
    pub inputs: Vec<(String, Vec<i64>)>,
    /// Outputs by name, with their shapes.
    pub outputs: Vec<(String, Vec<i64>)>,
    pub weights: HashMap<String, Tensor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelJson {
    format: Option<String>,
    model_topology: Topology,
    weights_manifest: Vec<Manifest>,
    #[serde(default)]
    signature: Value,
}

#[derive(Deserialize)]
struct Topology {
    node: Vec<Node>,
}

#[derive(Deserialize)]
struct Manifest {
    paths: Vec<String>,
    weights: Vec<WeightSpec>,
}

#[derive(Deserialize)]
struct WeightSpec {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Deserialize)]
struct Quantization {
    dtype: String,
}

fn shapes(signature: &Value, which: &str) -> Vec<(String, Vec<i64>)> {
    let mut out: Vec<(String, Vec<i64>)> = signature[which]
        .as_object()
        .map(|entries| {
            entries
                .iter()
                .map(|(name, spec)| {
                    let dims = spec["tensorShape"]["dim"]
                        .as_array()
                        .map(|dims| {
                            dims.iter()
                                .map(|d| {
                                    d["size"]
                                        .as_str()
                                        .and_then(|s| s.parse().ok())
                                        .unwrap_or(-1)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (name.trim_end_matches(":0").to_owned(), dims)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

impl GraphModel {
    /// Reads `model.json` and the weight shards beside it.
    pub fn load(json_path: &Path) -> Result<Self, ModelError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ModelError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let format = |reason: String| ModelError::Format {
            path: json_path.to_owned(),
            reason,
        };
        let model: ModelJson =
            serde_json::from_slice(&read(json_path)?).map_err(|e| format(e.to_string()))?;
        if model.format.as_deref() != Some("graph-model") {
            return Err(format(format!("format is {:?}", model.format)));
        }
        let dir = json_path.parent().unwrap_or(Path::new("."));
        let mut weights = HashMap::new();
        for manifest in &model.weights_manifest {
            let mut bytes = Vec::new();
            for shard in &manifest.paths {
                if shard.contains('/') || shard.contains("..") {
                    return Err(format(format!("weight shard path {shard:?}")));
                }
                bytes.extend(read(&dir.join(shard))?);
            }
            let mut offset = 0usize;
            for spec in &manifest.weights {
                let count: usize = spec.shape.iter().product();
                let stored = spec
                    .quantization
                    .as_ref()
                    .map_or(spec.dtype.as_str(), |q| q.dtype.as_str());
                let width = match stored {
                    "float32" | "int32" => 4,
                    "float16" => 2,
                    other => return Err(format(format!("{}: dtype {other}", spec.name))),
                };
                let end = offset + count * width;
                let raw = bytes
                    .get(offset..end)
                    .ok_or_else(|| format(format!("{}: the shards end early", spec.name)))?;
                let tensor = match (stored, spec.dtype.as_str()) {
                    ("float16", "float32") => Tensor::F32 {
                        shape: spec.shape.clone(),
                        data: raw
                            .chunks_exact(2)
                            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                            .collect(),
                    },
                    ("float32", "float32") => Tensor::F32 {
                        shape: spec.shape.clone(),
                        data: raw
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    },
                    ("int32", "int32") => Tensor::I32 {
                        shape: spec.shape.clone(),
                        data: raw
                            .chunks_exact(4)
                            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    },
                    (stored, wanted) => {
                        return Err(format(format!(
                            "{}: {stored} stored as {wanted}",
                            spec.name
                        )));
                    }
                };
                weights.insert(spec.name.clone(), tensor);
                offset = end;
            }
            if offset != bytes.len() {
                return Err(format(format!(
                    "the shards hold {} bytes, the manifest describes {offset}",
                    bytes.len()
                )));
            }
        }
        Ok(Self {
            nodes: model.model_topology.node,
            inputs: shapes(&model.signature, "inputs"),
            outputs: shapes(&model.signature, "outputs"),
            weights,
        })
    }
}

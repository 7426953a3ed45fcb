//! Runs a TF.js graph model: each node needed by the requested outputs is evaluated once, in
//! dependency order, with the kernels of [`crate::ops`]; integer tensors (shapes, paddings) are
//! carried alongside float ones. Only the ops NanoDet uses are implemented; any other is a clear
//! error naming it.

use std::collections::HashMap;

use serde_json::Value;

use crate::ops::{self, Array, OpError};
use crate::tfjs::{GraphModel, Node, Tensor};

/// A value flowing through the graph.
#[derive(Debug, Clone)]
enum Val {
    F(Array),
    I { shape: Vec<usize>, data: Vec<i64> },
}

fn fail<T>(node: &Node, reason: impl Into<String>) -> Result<T, OpError> {
    Err(OpError {
        op: "graph",
        reason: format!("{} ({}): {}", node.name, node.op, reason.into()),
    })
}

fn ints(attr: &Value, key: &str) -> Vec<usize> {
    attr[key]["list"]["i"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .or(v.as_u64().map(|n| n as usize))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn text(attr: &Value, key: &str) -> String {
    // Strings in TF.js JSON are base64.
    attr[key]["s"]
        .as_str()
        .and_then(decode_base64)
        .unwrap_or_default()
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A model ready to run.
#[derive(Debug)]
pub struct Runner<'m> {
    model: &'m GraphModel,
    nodes: HashMap<&'m str, &'m Node>,
}

impl<'m> Runner<'m> {
    pub fn new(model: &'m GraphModel) -> Self {
        Self {
            model,
            nodes: model.nodes.iter().map(|n| (n.name.as_str(), n)).collect(),
        }
    }

    /// Evaluates `outputs` for the given input (the model's first input).
    pub fn run(&self, input: Array, outputs: &[&str]) -> Result<Vec<Array>, OpError> {
        let mut values: HashMap<String, Vec<Val>> = HashMap::new();
        let placeholder = self
            .model
            .nodes
            .iter()
            .find(|n| n.op == "Placeholder")
            .map(|n| n.name.clone())
            .unwrap_or_default();
        values.insert(placeholder, vec![Val::F(input)]);
        let mut results = Vec::new();
        for output in outputs {
            let val = self.eval(output, &mut values)?;
            match val {
                Val::F(array) => results.push(array),
                Val::I { .. } => {
                    return Err(OpError {
                        op: "graph",
                        reason: format!("{output} is an integer tensor"),
                    });
                }
            }
        }
        Ok(results)
    }

    /// The value named `reference` (`node` or `node:k`), evaluating what it needs first.
    fn eval(
        &self,
        reference: &str,
        values: &mut HashMap<String, Vec<Val>>,
    ) -> Result<Val, OpError> {
        let (name, index) = match reference.rsplit_once(':') {
            Some((name, k)) if k.chars().all(|c| c.is_ascii_digit()) => {
                (name, k.parse::<usize>().unwrap_or(0))
            }
            _ => (reference, 0),
        };
        // Depth-first with an explicit stack: graphs can be deep.
        let mut stack = vec![(name.to_owned(), false)];
        while let Some((current, expanded)) = stack.pop() {
            if values.contains_key(&current) {
                continue;
            }
            let node = *self.nodes.get(current.as_str()).ok_or_else(|| OpError {
                op: "graph",
                reason: format!("no node {current}"),
            })?;
            let inputs: Vec<String> = node
                .input
                .iter()
                .filter(|i| !i.starts_with('^'))
                .map(|i| i.split(':').next().unwrap_or_default().to_owned())
                .collect();
            if !expanded {
                stack.push((current.clone(), true));
                for input in inputs.iter().rev() {
                    if !values.contains_key(input) {
                        stack.push((input.clone(), false));
                    }
                }
                continue;
            }
            let args: Vec<Val> = node
                .input
                .iter()
                .filter(|i| !i.starts_with('^'))
                .map(|i| {
                    let (n, k) = match i.rsplit_once(':') {
                        Some((n, k)) if k.chars().all(|c| c.is_ascii_digit()) => {
                            (n, k.parse::<usize>().unwrap_or(0))
                        }
                        _ => (i.as_str(), 0),
                    };
                    values
                        .get(n)
                        .and_then(|v| v.get(k))
                        .cloned()
                        .ok_or_else(|| OpError {
                            op: "graph",
                            reason: format!("{} needs {i}, which has no value", node.name),
                        })
                })
                .collect::<Result<_, _>>()?;
            let out = self.apply(node, args)?;
            values.insert(current, out);
        }
        values
            .get(name)
            .and_then(|v| v.get(index))
            .cloned()
            .ok_or_else(|| OpError {
                op: "graph",
                reason: format!("{reference} has no value"),
            })
    }

    fn apply(&self, node: &Node, args: Vec<Val>) -> Result<Vec<Val>, OpError> {
        let float = |i: usize| -> Result<&Array, OpError> {
            match args.get(i) {
                Some(Val::F(a)) => Ok(a),
                _ => fail(node, format!("input {i} should be a float tensor")),
            }
        };
        let integers = |i: usize| -> Result<(Vec<usize>, Vec<i64>), OpError> {
            match args.get(i) {
                Some(Val::I { shape, data }) => Ok((shape.clone(), data.clone())),
                _ => fail(node, format!("input {i} should be an integer tensor")),
            }
        };
        let attr = &node.attr;
        Ok(match node.op.as_str() {
            "Const" => match self.model.weights.get(&node.name) {
                Some(Tensor::F32 { shape, data }) => {
                    vec![Val::F(Array::new(shape.clone(), data.clone())?)]
                }
                Some(Tensor::I32 { shape, data }) => vec![Val::I {
                    shape: shape.clone(),
                    data: data.iter().map(|&v| i64::from(v)).collect(),
                }],
                None => return fail(node, "no weight"),
            },
            "Identity" => vec![args.into_iter().next().ok_or_else(|| OpError {
                op: "graph",
                reason: format!("{} has no input", node.name),
            })?],
            "Transpose" => {
                let (_, perm) = integers(1)?;
                let perm: Vec<usize> = perm.iter().map(|&p| p.max(0) as usize).collect();
                vec![Val::F(ops::transpose(float(0)?, &perm)?)]
            }
            "Add" | "AddV2" => match (&args[..], args.len()) {
                ([Val::F(a), Val::F(b)], 2) => vec![Val::F(ops::add(a, b)?)],
                ([Val::I { shape: sa, data: a }, Val::I { data: b, .. }], 2) => {
                    if a.len() != b.len() && b.len() != 1 {
                        return fail(node, "integer add of different lengths");
                    }
                    let data = a
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x + b[if b.len() == 1 { 0 } else { i }])
                        .collect();
                    vec![Val::I {
                        shape: sa.clone(),
                        data,
                    }]
                }
                _ => return fail(node, "mixed or missing operands"),
            },
            "ConcatV2" => {
                let (_, axis) = integers(args.len() - 1)?;
                let parts: Vec<&Array> =
                    (0..args.len() - 1).map(float).collect::<Result<_, _>>()?;
                vec![Val::F(ops::concat(
                    &parts,
                    axis.first().copied().unwrap_or(0),
                )?)]
            }
            "Reshape" => {
                let (_, shape) = integers(1)?;
                vec![Val::F(ops::reshape(float(0)?, &shape)?)]
            }
            "Pad" | "PadV2" => {
                let (_, paddings) = integers(1)?;
                let pairs: Vec<(usize, usize)> = paddings
                    .chunks_exact(2)
                    .map(|p| (p[0].max(0) as usize, p[1].max(0) as usize))
                    .collect();
                let value = if node.op == "PadV2" {
                    float(2)?.data.first().copied().unwrap_or(0.0)
                } else {
                    0.0
                };
                vec![Val::F(ops::pad(float(0)?, &pairs, value)?)]
            }
            "LeakyRelu" => {
                let alpha = attr["alpha"]["f"].as_f64().unwrap_or(0.2) as f32;
                vec![Val::F(ops::leaky_relu(float(0)?, alpha))]
            }
            "Sigmoid" => vec![Val::F(ops::sigmoid(float(0)?))],
            "SplitV" => {
                let (_, sizes) = integers(1)?;
                let (_, axis) = integers(2)?;
                let x = float(0)?;
                let rank = x.shape.len() as i64;
                let axis = axis.first().copied().unwrap_or(0);
                let axis = if axis < 0 { axis + rank } else { axis };
                let sizes: Vec<usize> = sizes.iter().map(|&s| s.max(0) as usize).collect();
                ops::split(x, &sizes, axis.max(0) as usize)?
                    .into_iter()
                    .map(Val::F)
                    .collect()
            }
            "MaxPool" => {
                let (k, s) = (ints(attr, "ksize"), ints(attr, "strides"));
                if text(attr, "padding") != "VALID" || k.len() != 4 || s.len() != 4 {
                    return fail(node, "only NHWC VALID pooling is implemented");
                }
                vec![Val::F(ops::max_pool(
                    float(0)?,
                    (k[1], k[2]),
                    (s[1], s[2]),
                )?)]
            }
            "Conv2D" => {
                let (s, d) = (ints(attr, "strides"), ints(attr, "dilations"));
                if text(attr, "padding") != "VALID" || text(attr, "data_format") != "NHWC" {
                    return fail(node, "only NHWC VALID convolution is implemented");
                }
                let dilation = if d.len() == 4 { (d[1], d[2]) } else { (1, 1) };
                if s.len() != 4 {
                    return fail(node, "strides");
                }
                vec![Val::F(ops::conv2d(
                    float(0)?,
                    float(1)?,
                    (s[1], s[2]),
                    dilation,
                )?)]
            }
            "ResizeBilinear" => {
                let (_, size) = integers(1)?;
                let [h, w] = size[..] else {
                    return fail(node, "size is not [height, width]");
                };
                let align = attr["align_corners"]["b"].as_bool().unwrap_or(false);
                let half = attr["half_pixel_centers"]["b"].as_bool().unwrap_or(false);
                vec![Val::F(ops::resize_bilinear(
                    float(0)?,
                    (h.max(1) as usize, w.max(1) as usize),
                    align,
                    half,
                )?)]
            }
            "SparseToDense" => {
                let (index_shape, indices) = integers(0)?;
                let (_, dense_shape) = integers(1)?;
                let (_, values) = integers(2)?;
                let (_, default) = integers(3)?;
                let shape: Vec<usize> = dense_shape.iter().map(|&d| d.max(0) as usize).collect();
                let total: usize = shape.iter().product();
                let mut data = vec![default.first().copied().unwrap_or(0); total];
                let rank = index_shape.get(1).copied().unwrap_or(1).max(1);
                for (i, index) in indices.chunks(rank).enumerate() {
                    let mut offset = 0usize;
                    for (axis, &at) in index.iter().enumerate() {
                        offset =
                            offset * shape.get(axis).copied().unwrap_or(1) + at.max(0) as usize;
                    }
                    if let Some(slot) = data.get_mut(offset) {
                        *slot = values
                            .get(if values.len() == 1 { 0 } else { i })
                            .copied()
                            .unwrap_or(0);
                    }
                }
                vec![Val::I { shape, data }]
            }
            other => return fail(node, format!("op {other} is not implemented")),
        })
    }
}

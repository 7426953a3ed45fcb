//! NanoDet's TF.js graph model read whole: graph, signature and every weight.

use std::collections::BTreeSet;
use std::path::PathBuf;

use atmosphere_vision::tfjs::{GraphModel, ModelError, Tensor};

fn nanodet() -> PathBuf {
    let cache = std::env::var_os("ATMOSPHERE_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache")
                .join("atmosphere")
        },
        PathBuf::from,
    );
    cache
        .join("models")
        .join(atmosphere_vision::NANODET_DIR)
        .join("nanodet.json")
}

#[test]
fn nanodet_loads_with_its_signature_ops_and_weights() {
    let model = GraphModel::load(&nanodet()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.nodes.len(), 489);
    assert_eq!(model.inputs, [("input_1".to_owned(), vec![1, 3, 416, 416])]);
    let outputs: Vec<(String, Vec<i64>)> = model.outputs.clone();
    assert_eq!(outputs.len(), 6);
    for cells in [2704, 676, 169] {
        assert!(
            outputs.iter().any(|(_, s)| s == &[1, cells, 80]),
            "{outputs:?}"
        );
        assert!(
            outputs.iter().any(|(_, s)| s == &[1, cells, 44]),
            "{outputs:?}"
        );
    }
    let ops: BTreeSet<&str> = model.nodes.iter().map(|n| n.op.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "Add",
        "AddV2",
        "ConcatV2",
        "Const",
        "Conv2D",
        "Identity",
        "LeakyRelu",
        "MaxPool",
        "Pad",
        "PadV2",
        "Placeholder",
        "Reshape",
        "ResizeBilinear",
        "Sigmoid",
        "SparseToDense",
        "SplitV",
        "Transpose",
    ]
    .into_iter()
    .collect();
    assert_eq!(ops, expected);
    // Every Const is a weight, decoded to finite numbers — but for the padding value before the
    // max-pool, which is −∞ on purpose.
    let consts = model.nodes.iter().filter(|n| n.op == "Const").count();
    assert_eq!(model.weights.len(), consts);
    assert_eq!(
        model.weights["PartitionedCall/PadV2/constant_values"],
        Tensor::F32 {
            shape: vec![],
            data: vec![f32::NEG_INFINITY]
        }
    );
    let floats: usize = model
        .weights
        .iter()
        .filter(|(name, _)| !name.ends_with("PadV2/constant_values"))
        .map(|(name, t)| match t {
            Tensor::F32 { data, .. } => {
                assert!(data.iter().all(|x| x.is_finite()), "{name}");
                data.len()
            }
            Tensor::I32 { .. } => 0,
        })
        .sum();
    assert!(floats > 3_000_000, "{floats} float parameters");
}

#[test]
fn missing_and_broken_models_are_clear_errors() {
    let err = GraphModel::load(std::path::Path::new("/nonexistent/model.json")).unwrap_err();
    assert!(matches!(err, ModelError::Read { .. }) && err.to_string().contains("fetch-vision"));
    let dir = std::env::temp_dir().join(format!("atmosphere-tfjs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("model.json");
    std::fs::write(
        &json,
        r#"{"format": "layers-model", "modelTopology": {"node": []}, "weightsManifest": []}"#,
    )
    .unwrap();
    assert!(matches!(
        GraphModel::load(&json),
        Err(ModelError::Format { .. })
    ));
    // A manifest that describes more bytes than the shard holds.
    std::fs::write(dir.join("w.bin"), [0u8; 6]).unwrap();
    std::fs::write(
        &json,
        r#"{"format": "graph-model", "modelTopology": {"node": []},
            "weightsManifest": [{"paths": ["w.bin"], "weights": [{"name": "k", "shape": [4], "dtype": "float32"}]}]}"#,
    )
    .unwrap();
    let err = GraphModel::load(&json).unwrap_err();
    assert!(err.to_string().contains("end early"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

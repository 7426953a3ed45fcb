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

/// The whole graph on a uniform grey image, against what TensorFlow.js itself computes for the
/// same files (`@tensorflow/tfjs@4`, CPU backend, `model.execute(tf.fill([1,3,416,416], 0.5))`):
/// the largest value of each output.
#[test]
fn nanodet_runs_and_agrees_with_tensorflow_js() {
    use atmosphere_vision::graph::Runner;
    use atmosphere_vision::ops::Array;
    let model = GraphModel::load(&nanodet()).unwrap_or_else(|e| panic!("{e}"));
    let input = Array::new(vec![1, 3, 416, 416], vec![0.5; 3 * 416 * 416]).unwrap();
    let names: Vec<String> = model.outputs.iter().map(|(n, _)| n.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let outputs = Runner::new(&model)
        .run(input, &refs)
        .unwrap_or_else(|e| panic!("{e}"));
    // (shape, max, min, sum) as TensorFlow.js prints them.
    let reference: [(&[usize], f32, f32, f32); 6] = [
        (&[1, 169, 80], 0.019_159_108, 0.004_746_783, 126.346_78),
        (&[1, 169, 44], 1.270_275_2, -1.434_507_8, -0.216_809),
        (&[1, 676, 80], 0.010_800_16, 0.002_739_532, 312.250_85),
        (&[1, 2704, 80], 0.012_431_798, 0.000_894_556_8, 810.284_8),
        (&[1, 676, 44], 1.080_805_3, -1.158_643_2, -0.481_404_4),
        (&[1, 2704, 44], 3.804_880_4, -1.751_535_9, -0.996_078_5),
    ];
    let close = |ours: f32, theirs: f32, scale: f32| (ours - theirs).abs() <= 1e-3 * scale;
    // A uniform grey image holds nothing.
    assert!(atmosphere_vision::detect::decode(&outputs, 416, 0.3, 0.6).is_empty());
    for (shape, max, min, sum) in reference {
        let output = outputs
            .iter()
            .find(|o| o.shape == shape)
            .unwrap_or_else(|| panic!("no output of shape {shape:?}"));
        let ours_max = output
            .data
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let ours_min = output.data.iter().copied().fold(f32::INFINITY, f32::min);
        let ours_sum: f32 = output.data.iter().sum();
        assert!(
            close(ours_max, max, 1.0),
            "{shape:?} max: ours {ours_max}, TF.js {max}"
        );
        assert!(
            close(ours_min, min, 1.0),
            "{shape:?} min: ours {ours_min}, TF.js {min}"
        );
        // Sums of thousands of values: compared relative to their count.
        let count = output.data.len() as f32;
        assert!(
            close(ours_sum, sum, count / 100.0),
            "{shape:?} sum: ours {ours_sum}, TF.js {sum}"
        );
    }
}

fn photo(name: &str) -> atmosphere_vision::detector::Rgb {
    let cache = nanodet()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    atmosphere_vision::detector::Rgb::open(&cache.join("images").join(format!("{name}.png")))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Real photographs (from the scikit-image wheel): a person, a motorcycle, a cup, a cat, and two
/// textures with nothing in them.
#[test]
fn real_photographs_show_what_they_show() {
    use atmosphere_vision::detector::Detector;
    let detector = Detector::load(&nanodet()).unwrap();
    let found = |name: &str| {
        let found = detector.detect(&photo(name), 0.35).unwrap();
        eprintln!("{name}: {found:?}");
        found
    };
    let astronaut = found("astronaut");
    assert_eq!(astronaut[0].label, "person", "{astronaut:?}");
    assert!(astronaut[0].score > 0.6);
    // The box is in the photograph's pixels (512×512) and holds its centre.
    let [x0, y0, x1, y1] = astronaut[0].bbox;
    assert!(
        x0 < 256.0 && 256.0 < x1 && y0 < 256.0 && 256.0 < y1 && x1 <= 512.0,
        "{:?}",
        astronaut[0].bbox
    );
    let motorcycle = found("motorcycle_left");
    assert_eq!(motorcycle[0].label, "motorcycle", "{motorcycle:?}");
    assert_eq!(found("coffee")[0].label, "cup");
    // NanoDet-m is small: it sees the cat, less surely than it should.
    assert!(found("chelsea").iter().any(|d| d.label == "cat"));
    assert!(found("grass").is_empty());
    assert!(found("brick").is_empty());
}

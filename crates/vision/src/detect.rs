//! NanoDet's outputs turned into detections: for each stride (8, 16, 32) a grid of cells with 80
//! class scores and, per side of the box, a distribution over 11 distances (generalised focal
//! loss): the distance is the distribution's expectation times the stride, measured from the
//! cell's centre. Candidates above a score go through class-wise non-maximum suppression.

use serde::{Deserialize, Serialize};

use crate::ops::Array;

/// The COCO classes NanoDet was trained on, in its output order.
pub const COCO: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// Bins per side of the box distribution (`reg_max + 1`).
const BINS: usize = 11;
const STRIDES: [usize; 3] = [8, 16, 32];

/// One object found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub label: String,
    pub class: usize,
    pub score: f32,
    /// `[x0, y0, x1, y1]` in input pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// The expected distance of one side: Σ softmax(bins)ᵢ · i.
fn expectation(bins: &[f32]) -> f32 {
    let max = bins.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = bins.iter().map(|b| (b - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.iter()
        .enumerate()
        .map(|(i, e)| i as f32 * e)
        .sum::<f32>()
        / total
}

/// Detections from NanoDet's six outputs (any order) for a square input of `size` pixels.
pub fn decode(
    outputs: &[Array],
    size: usize,
    min_score: f32,
    iou_threshold: f32,
) -> Vec<Detection> {
    let mut candidates: Vec<Detection> = Vec::new();
    for stride in STRIDES {
        let grid = size / stride;
        let cells = grid * grid;
        let find = |width: usize| outputs.iter().find(|o| o.shape == [1, cells, width]);
        let (Some(scores), Some(boxes)) = (find(COCO.len()), find(4 * BINS)) else {
            continue;
        };
        for cell in 0..cells {
            let row = &scores.data[cell * COCO.len()..(cell + 1) * COCO.len()];
            let mut decoded: Option<[f32; 4]> = None;
            for (class, &score) in row.iter().enumerate() {
                if score < min_score {
                    continue;
                }
                let bbox = *decoded.get_or_insert_with(|| {
                    let (cx, cy) = (
                        ((cell % grid) as f32 + 0.5) * stride as f32,
                        ((cell / grid) as f32 + 0.5) * stride as f32,
                    );
                    let dist = &boxes.data[cell * 4 * BINS..(cell + 1) * 4 * BINS];
                    let side =
                        |k: usize| expectation(&dist[k * BINS..(k + 1) * BINS]) * stride as f32;
                    let clamp = |v: f32| v.clamp(0.0, size as f32);
                    [
                        clamp(cx - side(0)),
                        clamp(cy - side(1)),
                        clamp(cx + side(2)),
                        clamp(cy + side(3)),
                    ]
                });
                candidates.push(Detection {
                    label: COCO[class].to_owned(),
                    class,
                    score,
                    bbox,
                });
            }
        }
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in candidates {
        let overlaps = kept
            .iter()
            .any(|k| k.class == candidate.class && iou(&k.bbox, &candidate.bbox) > iou_threshold);
        if !overlaps {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs for a 64-pixel input with one confident "car" at a known cell of stride 8.
    fn outputs(score: f32) -> Vec<Array> {
        let size = 64;
        let mut out = Vec::new();
        for stride in STRIDES {
            let cells = (size / stride) * (size / stride);
            let mut scores = vec![0.01; cells * 80];
            let mut boxes = vec![0.0; cells * 44];
            if stride == 8 {
                // Cell (row 2, col 3): centre (28, 20). Distances peak at bins 1, 2, 3, 4 → 8, 16,
                // 24, 32 pixels.
                let cell = 2 * 8 + 3;
                scores[cell * 80 + 2] = score;
                for (side, bin) in [1usize, 2, 3, 4].iter().enumerate() {
                    boxes[cell * 44 + side * 11 + bin] = 30.0;
                }
            }
            out.push(Array::new(vec![1, cells, 80], scores).unwrap());
            out.push(Array::new(vec![1, cells, 44], boxes).unwrap());
        }
        out
    }

    #[test]
    fn a_confident_cell_becomes_a_box_of_the_expected_distances() {
        let found = decode(&outputs(0.9), 64, 0.3, 0.6);
        assert_eq!(found.len(), 1, "{found:?}");
        let car = &found[0];
        assert_eq!((car.label.as_str(), car.class), ("car", 2));
        let expected = [28.0 - 8.0, 20.0 - 16.0, 28.0 + 24.0, 20.0 + 32.0];
        for (got, want) in car.bbox.iter().zip(expected) {
            assert!((got - want).abs() < 0.01, "{:?}", car.bbox);
        }
        assert!(decode(&outputs(0.2), 64, 0.3, 0.6).is_empty());
    }

    #[test]
    fn overlapping_boxes_of_one_class_are_suppressed() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert!((iou(&a, &[0.0, 0.0, 10.0, 5.0]) - 0.5).abs() < 1e-6);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
    }
}

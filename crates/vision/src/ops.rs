//! The tensor kernels NanoDet's graph needs, with TensorFlow's semantics (row-major, NHWC where
//! TF is NHWC): transpose, broadcasting add, concat, reshape, pad, leaky ReLU, sigmoid, split,
//! max-pool and 2-D convolution. Plain loops the compiler vectorises; shapes are checked and a
//! mismatch is an error, never a panic.

/// A dense f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Why a kernel refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {reason}")]
pub struct OpError {
    pub op: &'static str,
    pub reason: String,
}

fn fail<T>(op: &'static str, reason: impl Into<String>) -> Result<T, OpError> {
    Err(OpError {
        op,
        reason: reason.into(),
    })
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Array {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, OpError> {
        if shape.iter().product::<usize>() != data.len() {
            return fail(
                "Array",
                format!(
                    "shape {shape:?} needs {} values, got {}",
                    shape.iter().product::<usize>(),
                    data.len()
                ),
            );
        }
        Ok(Self { shape, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Permutes the axes: output axis `i` is input axis `perm[i]`.
pub fn transpose(x: &Array, perm: &[usize]) -> Result<Array, OpError> {
    let rank = x.shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || perm
            .iter()
            .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
    {
        return fail("Transpose", format!("perm {perm:?} for rank {rank}"));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let in_strides = strides(&x.shape);
    let walk: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut data = Vec::with_capacity(x.len());
    let mut index = vec![0usize; rank];
    for _ in 0..x.len() {
        let offset: usize = index.iter().zip(&walk).map(|(i, s)| i * s).sum();
        data.push(x.data[offset]);
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Array::new(shape, data)
}

/// Element-wise `a + b` with NumPy broadcasting.
pub fn add(a: &Array, b: &Array) -> Result<Array, OpError> {
    let rank = a.shape.len().max(b.shape.len());
    let padded = |shape: &[usize]| {
        let mut full = vec![1; rank - shape.len()];
        full.extend_from_slice(shape);
        full
    };
    let (sa, sb) = (padded(&a.shape), padded(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (x, y) in sa.iter().zip(&sb) {
        match (x, y) {
            (x, y) if x == y => shape.push(*x),
            (1, y) => shape.push(*y),
            (x, 1) => shape.push(*x),
            _ => {
                return fail(
                    "Add",
                    format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape),
                );
            }
        }
    }
    if sa == sb {
        let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
        return Array::new(shape, data);
    }
    let (ta, tb) = (strides(&sa), strides(&sb));
    let wa: Vec<usize> = sa
        .iter()
        .zip(&ta)
        .map(|(d, s)| if *d == 1 { 0 } else { *s })
        .collect();
    let wb: Vec<usize> = sb
        .iter()
        .zip(&tb)
        .map(|(d, s)| if *d == 1 { 0 } else { *s })
        .collect();
    let total: usize = shape.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut index = vec![0usize; rank];
    for _ in 0..total {
        let oa: usize = index.iter().zip(&wa).map(|(i, s)| i * s).sum();
        let ob: usize = index.iter().zip(&wb).map(|(i, s)| i * s).sum();
        data.push(a.data[oa] + b.data[ob]);
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Array::new(shape, data)
}

/// Joins arrays along `axis` (negative counts from the end).
pub fn concat(parts: &[&Array], axis: i64) -> Result<Array, OpError> {
    let Some(first) = parts.first() else {
        return fail("ConcatV2", "nothing to join");
    };
    let rank = first.shape.len();
    let axis = if axis < 0 { axis + rank as i64 } else { axis };
    let Ok(axis) = usize::try_from(axis) else {
        return fail("ConcatV2", format!("axis {axis}"));
    };
    if axis >= rank {
        return fail("ConcatV2", format!("axis {axis} for rank {rank}"));
    }
    for part in parts {
        let same = part.shape.len() == rank
            && part
                .shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same {
            return fail(
                "ConcatV2",
                format!(
                    "{:?} does not join {:?} on axis {axis}",
                    part.shape, first.shape
                ),
            );
        }
    }
    let outer: usize = first.shape[..axis].iter().product();
    let mut shape = first.shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for part in parts {
            let chunk: usize = part.shape[axis..].iter().product();
            data.extend_from_slice(&part.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Array::new(shape, data)
}

/// The same values under a new shape; one dimension may be `-1`.
pub fn reshape(x: &Array, shape: &[i64]) -> Result<Array, OpError> {
    let known: i64 = shape.iter().filter(|&&d| d >= 0).product();
    let free = shape.iter().filter(|&&d| d == -1).count();
    let resolved: Vec<usize> = match free {
        0 => shape.iter().map(|&d| d.max(0) as usize).collect(),
        1 if known > 0 && x.len() as i64 % known == 0 => shape
            .iter()
            .map(|&d| {
                if d == -1 {
                    (x.len() as i64 / known) as usize
                } else {
                    d.max(0) as usize
                }
            })
            .collect(),
        _ => return fail("Reshape", format!("{shape:?} for {} values", x.len())),
    };
    Array::new(resolved, x.data.clone()).or_else(|e| fail("Reshape", e.reason))
}

/// Pads each axis with `before`/`after` copies of `value`.
pub fn pad(x: &Array, paddings: &[(usize, usize)], value: f32) -> Result<Array, OpError> {
    if paddings.len() != x.shape.len() {
        return fail(
            "Pad",
            format!("{} paddings for rank {}", paddings.len(), x.shape.len()),
        );
    }
    let shape: Vec<usize> = x
        .shape
        .iter()
        .zip(paddings)
        .map(|(d, (b, a))| d + b + a)
        .collect();
    let total: usize = shape.iter().product();
    let mut data = vec![value; total];
    let out_strides = strides(&shape);
    let rank = x.shape.len();
    let mut index = vec![0usize; rank];
    for &v in &x.data {
        let offset: usize = (0..rank)
            .map(|i| (index[i] + paddings[i].0) * out_strides[i])
            .sum();
        data[offset] = v;
        for axis in (0..rank).rev() {
            index[axis] += 1;
            if index[axis] < x.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Array::new(shape, data)
}

pub fn leaky_relu(x: &Array, alpha: f32) -> Array {
    Array {
        shape: x.shape.clone(),
        data: x
            .data
            .iter()
            .map(|&v| if v >= 0.0 { v } else { alpha * v })
            .collect(),
    }
}

pub fn sigmoid(x: &Array) -> Array {
    Array {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
    }
}

/// Splits along `axis` into parts of the given sizes.
pub fn split(x: &Array, sizes: &[usize], axis: usize) -> Result<Vec<Array>, OpError> {
    if axis >= x.shape.len() || sizes.iter().sum::<usize>() != x.shape[axis] {
        return fail(
            "SplitV",
            format!("sizes {sizes:?} on axis {axis} of {:?}", x.shape),
        );
    }
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut start = 0;
    let mut parts = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let mut shape = x.shape.clone();
        shape[axis] = size;
        let mut data = Vec::with_capacity(outer * size * inner);
        for o in 0..outer {
            let base = (o * x.shape[axis] + start) * inner;
            data.extend_from_slice(&x.data[base..base + size * inner]);
        }
        parts.push(Array::new(shape, data)?);
        start += size;
    }
    Ok(parts)
}

/// Max-pool over an NHWC array with VALID windows (the graph pads before pooling).
pub fn max_pool(
    x: &Array,
    window: (usize, usize),
    stride: (usize, usize),
) -> Result<Array, OpError> {
    let [n, h, w, c] = x.shape[..] else {
        return fail("MaxPool", format!("NHWC input expected, got {:?}", x.shape));
    };
    if window.0 == 0
        || window.1 == 0
        || stride.0 == 0
        || stride.1 == 0
        || h < window.0
        || w < window.1
    {
        return fail(
            "MaxPool",
            format!("window {window:?} stride {stride:?} on {h}×{w}"),
        );
    }
    let (oh, ow) = ((h - window.0) / stride.0 + 1, (w - window.1) / stride.1 + 1);
    let mut data = vec![f32::NEG_INFINITY; n * oh * ow * c];
    for b in 0..n {
        for y in 0..oh {
            for xx in 0..ow {
                let out = ((b * oh + y) * ow + xx) * c;
                for ky in 0..window.0 {
                    for kx in 0..window.1 {
                        let at = ((b * h + y * stride.0 + ky) * w + xx * stride.1 + kx) * c;
                        for ch in 0..c {
                            data[out + ch] = data[out + ch].max(x.data[at + ch]);
                        }
                    }
                }
            }
        }
    }
    Array::new(vec![n, oh, ow, c], data)
}

/// 2-D convolution, NHWC input, HWIO filter, VALID windows (the graph pads explicitly), with
/// strides and dilations.
pub fn conv2d(
    x: &Array,
    filter: &Array,
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<Array, OpError> {
    let [n, h, w, c] = x.shape[..] else {
        return fail("Conv2D", format!("NHWC input expected, got {:?}", x.shape));
    };
    let [kh, kw, fc, oc] = filter.shape[..] else {
        return fail(
            "Conv2D",
            format!("HWIO filter expected, got {:?}", filter.shape),
        );
    };
    if fc != c || stride.0 == 0 || stride.1 == 0 || dilation.0 == 0 || dilation.1 == 0 {
        return fail(
            "Conv2D",
            format!("filter {:?} on input {:?}", filter.shape, x.shape),
        );
    }
    let (span_h, span_w) = ((kh - 1) * dilation.0 + 1, (kw - 1) * dilation.1 + 1);
    if h < span_h || w < span_w {
        return fail("Conv2D", format!("{kh}×{kw} window larger than {h}×{w}"));
    }
    let (oh, ow) = ((h - span_h) / stride.0 + 1, (w - span_w) / stride.1 + 1);
    let mut data = vec![0.0f32; n * oh * ow * oc];
    for b in 0..n {
        for y in 0..oh {
            for xx in 0..ow {
                let out = &mut data[((b * oh + y) * ow + xx) * oc..][..oc];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = y * stride.0 + ky * dilation.0;
                        let ix = xx * stride.1 + kx * dilation.1;
                        let input = &x.data[((b * h + iy) * w + ix) * c..][..c];
                        let weights = &filter.data[(ky * kw + kx) * c * oc..][..c * oc];
                        for (ci, &v) in input.iter().enumerate() {
                            if v == 0.0 {
                                continue;
                            }
                            for (o, wv) in out.iter_mut().zip(&weights[ci * oc..(ci + 1) * oc]) {
                                *o += v * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    Array::new(vec![n, oh, ow, oc], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape.to_vec(), data.to_vec()).unwrap()
    }

    #[test]
    fn transpose_add_concat_reshape_follow_numpy() {
        let x = arr(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            transpose(&x, &[1, 0]).unwrap(),
            arr(&[3, 2], &[1., 4., 2., 5., 3., 6.])
        );
        assert!(transpose(&x, &[0, 0]).is_err());
        let row = arr(&[3], &[10., 20., 30.]);
        assert_eq!(
            add(&x, &row).unwrap(),
            arr(&[2, 3], &[11., 22., 33., 14., 25., 36.])
        );
        let col = arr(&[2, 1], &[100., 200.]);
        assert_eq!(
            add(&x, &col).unwrap().data,
            [101., 102., 103., 204., 205., 206.]
        );
        assert!(add(&x, &arr(&[2], &[1., 2.])).is_err());
        let joined = concat(&[&x, &arr(&[2, 1], &[7., 8.])], -1).unwrap();
        assert_eq!(joined, arr(&[2, 4], &[1., 2., 3., 7., 4., 5., 6., 8.]));
        assert_eq!(reshape(&x, &[3, -1]).unwrap().shape, [3, 2]);
        assert!(reshape(&x, &[4, -1]).is_err());
    }

    #[test]
    fn pad_split_activations_and_pooling() {
        let x = arr(&[1, 2], &[1., -2.]);
        assert_eq!(
            pad(&x, &[(0, 0), (1, 2)], 0.0).unwrap(),
            arr(&[1, 5], &[0., 1., -2., 0., 0.])
        );
        assert_eq!(leaky_relu(&x, 0.1).data, [1., -0.2]);
        assert!((sigmoid(&arr(&[1], &[0.])).data[0] - 0.5).abs() < 1e-6);
        let parts = split(&arr(&[1, 5], &[1., 2., 3., 4., 5.]), &[2, 3], 1).unwrap();
        assert_eq!(
            (parts[0].data.as_slice(), parts[1].data.as_slice()),
            (&[1., 2.][..], &[3., 4., 5.][..])
        );
        // 1×4×4×1, 2×2 windows, stride 2.
        let image = arr(
            &[1, 4, 4, 1],
            &(0..16).map(|v| v as f32).collect::<Vec<_>>(),
        );
        assert_eq!(
            max_pool(&image, (2, 2), (2, 2)).unwrap().data,
            [5., 7., 13., 15.]
        );
    }

    #[test]
    fn convolution_matches_a_hand_computed_case() {
        // 1×3×3×1 input, 2×2×1×2 filter (one summing, one taking the top-left), stride 1.
        let image = arr(&[1, 3, 3, 1], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let filter = arr(&[2, 2, 1, 2], &[1., 1., 1., 0., 1., 0., 1., 0.]);
        let out = conv2d(&image, &filter, (1, 1), (1, 1)).unwrap();
        assert_eq!(out.shape, [1, 2, 2, 2]);
        assert_eq!(out.data, [12., 1., 16., 2., 24., 4., 28., 5.]);
        // Stride 2 and dilation 2 on a 5×5 input.
        let image = arr(
            &[1, 5, 5, 1],
            &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
        );
        let ones = arr(&[2, 2, 1, 1], &[1., 1., 1., 1.]);
        let dilated = conv2d(&image, &ones, (2, 2), (2, 2)).unwrap();
        assert_eq!(dilated.shape, [1, 2, 2, 1]);
        assert_eq!(dilated.data[0], 0. + 2. + 10. + 12.);
        assert!(conv2d(&image, &arr(&[2, 2, 3, 1], &[0.; 12]), (1, 1), (1, 1)).is_err());
    }
}

/// Bilinear resize of an NHWC array to `size` (height, width), TensorFlow's rules for
/// `align_corners` and `half_pixel_centers`.
pub fn resize_bilinear(
    x: &Array,
    size: (usize, usize),
    align_corners: bool,
    half_pixel_centers: bool,
) -> Result<Array, OpError> {
    let [n, h, w, c] = x.shape[..] else {
        return fail(
            "ResizeBilinear",
            format!("NHWC input expected, got {:?}", x.shape),
        );
    };
    let (oh, ow) = size;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return fail("ResizeBilinear", format!("{h}×{w} to {oh}×{ow}"));
    }
    let scale = |input: usize, output: usize| {
        if align_corners && output > 1 {
            (input - 1) as f32 / (output - 1) as f32
        } else {
            input as f32 / output as f32
        }
    };
    // For each output coordinate: lower and upper source index and the weight of the upper.
    let axis = |input: usize, output: usize| -> Vec<(usize, usize, f32)> {
        let s = scale(input, output);
        (0..output)
            .map(|o| {
                let at = if half_pixel_centers {
                    (o as f32 + 0.5) * s - 0.5
                } else {
                    o as f32 * s
                };
                let floor = at.floor();
                let lower = (floor.max(0.0) as usize).min(input - 1);
                let upper = (at.ceil().max(0.0) as usize).min(input - 1);
                (lower, upper, at - floor)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, oh), axis(w, ow));
    let mut data = Vec::with_capacity(n * oh * ow * c);
    for b in 0..n {
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let at = |y: usize, xx: usize, ch: usize| x.data[((b * h + y) * w + xx) * c + ch];
                for ch in 0..c {
                    let top = at(y0, x0, ch) + (at(y0, x1, ch) - at(y0, x0, ch)) * fx;
                    let bottom = at(y1, x0, ch) + (at(y1, x1, ch) - at(y1, x0, ch)) * fx;
                    data.push(top + (bottom - top) * fy);
                }
            }
        }
    }
    Array::new(vec![n, oh, ow, c], data)
}

#[cfg(test)]
mod resize_tests {
    use super::*;

    #[test]
    fn bilinear_resize_doubles_with_half_pixel_centres() {
        // 1×1×2×1 [0, 1] to width 4, half-pixel centres: source x = (o + 0.5) / 2 − 0.5.
        let x = Array::new(vec![1, 1, 2, 1], vec![0., 1.]).unwrap();
        let out = resize_bilinear(&x, (1, 4), false, true).unwrap();
        assert_eq!(out.data, [0., 0.25, 0.75, 1.]);
        // Align corners: the ends map to the ends.
        let out = resize_bilinear(&x, (1, 3), true, false).unwrap();
        assert_eq!(out.data, [0., 0.5, 1.]);
    }
}

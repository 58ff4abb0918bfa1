//! [`Upsample`]: nearest-neighbour upsampling of the two last axes by integer factors (YOLOX's
//! feature pyramid), and its rule.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::resize::NearestUpsample;

use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// `y[p, i, j] = x[p, i / sh, j / sw]` over the planes `p` of an `H × W` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upsample {
    height: usize,
    width: usize,
    /// (rows, columns) per input value.
    scale: (usize, usize),
    pub(super) output: Output,
}

reidcam_op!(Upsample, "ReidcamUpsample");

impl Upsample {
    fn describe(&self) -> String {
        format!(
            "{}x{} x{}x{}",
            self.height, self.width, self.scale.0, self.scale.1
        )
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let (h, w, (sh, sw)) = (self.height, self.width, self.scale);
        let ow = w * sw;
        assert_eq!(x.len() % (h * w), 0, "upsample input length");
        assert_eq!(y.len(), x.len() * sh * sw, "upsample output length");
        // Input rows to threads (each writes its `sh` output rows).
        split_units(y, ow * sh, x.len() / w, y.len(), |rows, y| {
            let x = &x[rows.start * w..rows.end * w];
            for (x_row, y_rows) in x.chunks_exact(w).zip(y.chunks_exact_mut(ow * sh)) {
                let (first, rest) = y_rows.split_at_mut(ow);
                if sw == 2 {
                    // YOLOX's ×2: pairs, which LLVM turns into vector shuffles (a `fill` call
                    // per pixel cost more than the copy).
                    for (&v, out) in x_row.iter().zip(first.chunks_exact_mut(2)) {
                        out[0] = v;
                        out[1] = v;
                    }
                } else {
                    for (&v, out) in x_row.iter().zip(first.chunks_exact_mut(sw)) {
                        out.fill(v);
                    }
                }
                for row in rest.chunks_exact_mut(ow) {
                    row.copy_from_slice(first);
                }
            }
        });
    }
}

/// tract's `NearestUpsample` scaling only the two last axes, of an f32 value.
pub(crate) fn upsample_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(op) = node.op_as::<NearestUpsample>() else {
        return Ok(None);
    };
    let data = model.outlet_fact(node.inputs[0])?;
    let out = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(shape), Some(out_shape)) = (data.shape.as_concrete(), out.shape.as_concrete()) else {
        return Ok(None);
    };
    let r = shape.len();
    if data.datum_type != f32::datum_type()
        || r < 2
        || op.scales.len() != r
        || op.scales[..r - 2].iter().any(|&s| s != 1)
        || op.scales[r - 2..].contains(&0)
        || shape[r - 2] * shape[r - 1] == 0
    {
        return Ok(None);
    }
    let up = Upsample {
        height: shape[r - 2],
        width: shape[r - 1],
        scale: (op.scales[r - 2], op.scales[r - 1]),
        output: Output::new(out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[node.inputs[0]], OutletId::new(id, 0), up)?,
        1,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_fills_its_block() {
        let op = Upsample {
            height: 2,
            width: 3,
            scale: (2, 3),
            output: Output::new(tvec![2, 4, 9]),
        };
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut y = vec![f32::NAN; 72];
        op.compute(&[&x], &mut y);
        for p in 0..2 {
            for i in 0..4 {
                for j in 0..9 {
                    let want = x[p * 6 + (i / 2) * 3 + j / 3];
                    assert_eq!(y[p * 36 + i * 9 + j], want, "plane {p} ({i}, {j})");
                }
            }
        }
    }
}

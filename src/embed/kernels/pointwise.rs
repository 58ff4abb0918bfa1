//! 1×1 convolution on NCHW planes, with the folded batch-norm as a bias, an optional residual
//! added before an optional ReLU: `out[o][p] = act(bias[o] + Σₖ w[o][k]·x[k][p] + res[o][p])`.
//!
//! No im2col: a 1×1 convolution is already a matrix product whose right-hand side (the input
//! planes) has unit stride along the pixels, so each image is one run of the register tiles in
//! `tile` with row offsets `k · pixels`; only the weights are packed, once, at load. Bias, residual and ReLU are applied as the tiles
//! are stored, so OSNet's `conv + BN (+ add) + ReLU` is one pass over memory.

use super::tile::Product;
use super::{Act, Isa};

/// One layer: `inputs → outputs` channels over `pixels` (H·W) per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub inputs: usize,
    pub outputs: usize,
    pub pixels: usize,
}

/// The most inputs one layer reads its channels from (YOLOX's SPP concatenates four).
pub const MAX_PARTS: usize = 4;

impl Shape {
    /// The row offsets the tiles read the inputs with (`k · pixels` within each of the `parts`,
    /// the channel counts of the inputs, whose sum is `inputs`), made once per layer.
    pub fn offsets(&self, parts: &[usize]) -> Vec<usize> {
        assert_eq!(
            parts.iter().sum::<usize>(),
            self.inputs,
            "parts of {self:?}"
        );
        parts
            .iter()
            .flat_map(|&channels| (0..channels).map(|k| k * self.pixels))
            .collect()
    }
}

/// Images `images` of each input (`[batch][parts[i]][pixels]` each): the inputs of those images,
/// as [`pointwise`] takes them (the first `parts.len()` entries).
pub fn images_of<'a>(
    inputs: &[&'a [f32]],
    parts: &[usize],
    pixels: usize,
    images: std::ops::Range<usize>,
) -> [&'a [f32]; MAX_PARTS] {
    let mut of: [&[f32]; MAX_PARTS] = [&[]; MAX_PARTS];
    for ((one, x), &channels) in of.iter_mut().zip(inputs).zip(parts) {
        let len = channels * pixels;
        *one = &x[images.start * len..images.end * len];
    }
    of
}

/// Runs the layer on `batch` images. Its input channels come from `inputs`, one per entry of
/// `parts` (how many channels each has, at most [`MAX_PARTS`]; one input but for a convolution
/// of a concatenation), each `[batch][parts[i]][pixels]`; `weights` are `[outputs][inputs]`
/// (the parts' channels in order) packed for `isa` ([`pack_weights`](super::pack_weights)),
/// `residual` and `out` `[batch][outputs][pixels]`, the residual added before the activation or,
/// `residual_after_act`, after it; `offsets` are [`Shape::offsets`].
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    isa: Isa,
    shape: Shape,
    parts: &[usize],
    offsets: &[usize],
    inputs: &[&[f32]],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    residual_after_act: bool,
    act: Act,
    out: &mut [f32],
) {
    let y_len = shape.outputs * shape.pixels;
    assert!(
        shape.inputs > 0 && y_len > 0,
        "empty pointwise layer {shape:?}"
    );
    assert!(
        (1..=MAX_PARTS).contains(&parts.len()) && inputs.len() == parts.len(),
        "pointwise inputs: {} for {} parts",
        inputs.len(),
        parts.len()
    );
    let batch = out.len() / y_len;
    assert_eq!(out.len(), batch * y_len, "pointwise output length");
    for (x, &channels) in inputs.iter().zip(parts) {
        assert_eq!(
            x.len(),
            batch * channels * shape.pixels,
            "pointwise input length"
        );
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), out.len(), "pointwise residual length");
    }
    for (n, y) in out.chunks_exact_mut(y_len).enumerate() {
        let image = images_of(inputs, parts, shape.pixels, n..n + 1);
        let res = residual.map(|r| &r[n * y_len..][..y_len]);
        // SAFETY: `y` is this image's output, borrowed mutably for the call.
        unsafe {
            pointwise_pixels(
                isa,
                shape,
                parts,
                offsets,
                &image[..parts.len()],
                weights,
                bias,
                res,
                residual_after_act,
                act,
                0..shape.pixels,
                y.as_mut_ptr(),
            )
        }
    }
}

/// The layer on pixels `range` of one image (`inputs` `[parts[i]][pixels]` each, `residual`
/// `[outputs][pixels]`) into `out`, the `outputs × pixels` floats of the image's output, of which
/// other threads may write other pixels meanwhile (the threads of one layer split its pixels:
/// each keeps its part of every plane in its own cache from layer to layer). The same sums as
/// [`pointwise`].
///
/// # Safety
/// `out` is valid for reads and writes of `outputs × pixels` floats, and while this runs no
/// other thread reads or writes pixels `range` of any of its channels.
#[allow(clippy::too_many_arguments)]
pub unsafe fn pointwise_pixels(
    isa: Isa,
    shape: Shape,
    parts: &[usize],
    offsets: &[usize],
    inputs: &[&[f32]],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    residual_after_act: bool,
    act: Act,
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    let y_len = shape.outputs * shape.pixels;
    assert_eq!(inputs.len(), parts.len(), "one input per part");
    for (x, &channels) in inputs.iter().zip(parts) {
        assert_eq!(x.len(), channels * shape.pixels, "pointwise input length");
    }
    assert!(range.end <= shape.pixels, "pixels {range:?} of {shape:?}");
    assert_eq!(offsets.len(), shape.inputs, "one offset per input channel");
    assert_eq!(bias.len(), shape.outputs, "pointwise bias length");
    if let Some(r) = residual {
        assert_eq!(r.len(), y_len, "pointwise residual length");
    }
    let product = Product {
        weights,
        bias,
        offsets,
        x: inputs,
        parts,
        y_stride: shape.pixels,
        res: residual,
        res_after_act: residual_after_act,
        act,
        copy_rows: true,
    };
    // SAFETY: as the caller promised; `run_shared` checks the bounds.
    unsafe { product.run_shared(isa, range.start, range.start, range.len(), out, y_len) }
}

/// The naive reference, in `f64`: the output and, per element, `Σ|terms|` (for error bounds).
#[allow(clippy::too_many_arguments)]
pub fn reference(
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    residual_after_act: bool,
    act: Act,
) -> (Vec<f32>, Vec<f32>) {
    let Shape {
        inputs,
        outputs,
        pixels,
    } = shape;
    let mut out = vec![0.0; batch * outputs * pixels];
    let mut magnitude = vec![0.0; out.len()];
    for n in 0..batch {
        for o in 0..outputs {
            for p in 0..pixels {
                let at = (n * outputs + o) * pixels + p;
                let mut acc = f64::from(bias[o]);
                let mut mag = acc.abs();
                for k in 0..inputs {
                    let t = f64::from(weights[o * inputs + k])
                        * f64::from(input[(n * inputs + k) * pixels + p]);
                    acc += t;
                    mag += t.abs();
                }
                match residual {
                    Some(r) if residual_after_act => acc = act.reference(acc) + f64::from(r[at]),
                    Some(r) => acc = act.reference(acc + f64::from(r[at])),
                    None => acc = act.reference(acc),
                }
                if let Some(r) = residual {
                    mag += f64::from(r[at]).abs();
                }
                out[at] = acc as f32;
                magnitude[at] = mag as f32;
            }
        }
    }
    (out, magnitude)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Rng, assert_close_after};
    use super::*;

    fn check(isa: Isa, shape: Shape, batch: usize, with_res: bool, act: Act, rng: &mut Rng) {
        // A residual is added after the activation (YOLOX) or before it (ResNet), at random.
        let after = with_res && rng.below(2) == 1;
        let input = rng.vec(batch * shape.inputs * shape.pixels);
        let weights = rng.vec(shape.outputs * shape.inputs);
        let bias = rng.vec(shape.outputs);
        let residual = with_res.then(|| rng.vec(batch * shape.outputs * shape.pixels));
        let (want, magnitude) = reference(
            shape,
            batch,
            &input,
            &weights,
            &bias,
            residual.as_deref(),
            after,
            act,
        );
        let mut got = vec![f32::NAN; want.len()];
        let packed = super::super::pack_weights(isa, &weights, shape.outputs);
        // The input channels as one tensor or, as a 1×1 convolution of a concatenation reads
        // them, in up to MAX_PARTS tensors of consecutive channels each.
        let mut parts = vec![];
        let mut left = shape.inputs;
        while left > 0 {
            let channels = if parts.len() + 1 == MAX_PARTS {
                left
            } else {
                1 + rng.below(left)
            };
            parts.push(channels);
            left -= channels;
        }
        let split: Vec<Vec<f32>> = (0..parts.len())
            .map(|i| {
                let (from, channels) = (parts[..i].iter().sum::<usize>(), parts[i]);
                input
                    .chunks_exact(shape.inputs * shape.pixels)
                    .flat_map(|image| &image[from * shape.pixels..][..channels * shape.pixels])
                    .copied()
                    .collect()
            })
            .collect();
        let inputs: Vec<&[f32]> = split.iter().map(Vec::as_slice).collect();
        let offsets = shape.offsets(&parts);
        pointwise(
            isa,
            shape,
            &parts,
            &offsets,
            &inputs,
            &packed,
            &bias,
            residual.as_deref(),
            after,
            act,
            &mut got,
        );
        // The same values bit for bit when the pixels are computed in parts (as threads do), on
        // the last image.
        let y_len = shape.outputs * shape.pixels;
        let mut parted = vec![f32::NAN; y_len];
        for pixels in super::super::test_support::parts(rng, shape.pixels, super::super::MAX_LANES)
        {
            // SAFETY: `parted` is one image's output; the parts run one after the other.
            unsafe {
                pointwise_pixels(
                    isa,
                    shape,
                    &parts,
                    &offsets,
                    &inputs
                        .iter()
                        .zip(&parts)
                        .map(|(x, c)| &x[x.len() - c * shape.pixels..])
                        .collect::<Vec<_>>(),
                    &packed,
                    &bias,
                    residual.as_deref().map(|r| &r[r.len() - y_len..]),
                    after,
                    act,
                    pixels,
                    parted.as_mut_ptr(),
                )
            };
        }
        super::super::test_support::assert_same_bits(
            &parted,
            &got[got.len() - y_len..],
            &format!("{isa} {shape:?} inputs {parts:?}: pixels in parts"),
        );
        assert_close_after(
            act,
            &got,
            &want,
            &magnitude,
            shape.inputs + 2,
            &format!(
                "{isa} {shape:?} inputs {parts:?} batch {batch} residual {with_res} after {after}"
            ),
        );
    }

    /// SiLU as every instruction set stores it (a 1×1 identity layer), against `f64`, from
    /// values whose exponential would overflow or underflow to ones near 0.
    #[test]
    fn silu_is_within_a_few_ulp_on_every_isa() {
        // Every 1/1024 from −100 to 100, every f32 magnitude's binade at eight points, and the
        // ends.
        let mut x: Vec<f32> = (-102_400..=102_400).map(|i| i as f32 / 1024.0).collect();
        for e in -126..=127 {
            for m in 0..8 {
                let v = f32::from_bits(((e + 127) << 23) as u32 | (m << 20));
                x.extend([v, -v]);
            }
        }
        x.extend([
            0.0, -0.0, 1e-30, -1e-30, 87.5, -87.5, 88.8, -88.8, 1e4, -1e4, 3e38, -3e38,
        ]);
        let shape = Shape {
            inputs: 1,
            outputs: 1,
            pixels: x.len(),
        };
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; x.len()];
            pointwise(
                isa,
                shape,
                &[1],
                &[0],
                &[&x],
                &[1.0],
                &[0.0],
                None,
                false,
                Act::Silu,
                &mut got,
            );
            for (&v, &g) in x.iter().zip(&got) {
                let want = Act::Silu.reference(f64::from(v));
                let error = (f64::from(g) - want).abs();
                assert!(
                    error <= 4.0 * f64::from(f32::EPSILON) * want.abs() + 1e-35,
                    "{isa}: silu({v}) = {g}, want {want}"
                );
            }
        }
    }

    #[test]
    fn every_isa_matches_the_reference_on_random_shapes() {
        let mut rng = Rng::new(0x0b5e_55ed);
        for isa in Isa::available() {
            // OSNet x0.25 layers at 256×128, then random shapes (tails in both directions).
            for (i, o, p) in [
                (16, 64, 2048),
                (64, 16, 2048),
                (96, 24, 512),
                (128, 32, 128),
                // Rows that are not a whole number of vectors apart, in inputs large enough
                // for the blocks to go through an aligned copy (`tile::copies_blocks`); the
                // second in chunks of `k` on AVX-512.
                (64, 64, 299),
                (256, 24, 299),
            ] {
                let shape = Shape {
                    inputs: i,
                    outputs: o,
                    pixels: p,
                };
                check(isa, shape, 1, true, Act::Relu, &mut rng);
                check(isa, shape, 1, false, Act::Silu, &mut rng);
            }
            for _ in 0..80 {
                let shape = Shape {
                    inputs: 1 + rng.below(70),
                    outputs: 1 + rng.below(40),
                    pixels: 1 + rng.below(300),
                };
                let batch = 1 + rng.below(3);
                let (residual, act) =
                    (rng.below(2) == 1, super::super::test_support::act(&mut rng));
                check(isa, shape, batch, residual, act, &mut rng);
            }
        }
    }
}

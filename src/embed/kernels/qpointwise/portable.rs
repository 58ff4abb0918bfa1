//! The portable product: plain integer arithmetic on the u8 codes, with the same words and
//! corrections as VNNI (`Layer::words`, `Layer::corr_u8`), on any CPU. It exists so that every
//! CPU can make the same integers (and so check the vector products against something that is
//! not itself a vector product); LLVM vectorises its pixel loop where the target lets it.

use super::Layer;

/// Pixels per block (their sums live on the stack).
const BLOCK: usize = 32;

/// `words` is `[groups][pixels]` of u8 codes, `out` (and `residual`) `[outputs][pixels]` with
/// the layer's output stride (lengths checked by `Layer::product`).
pub(super) fn product(
    layer: &Layer,
    words: &[u32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    with_store_variants!(outputs_of, layer, words, residual, relu, out)
}

fn outputs_of<const RES: bool, const RELU: bool>(
    layer: &Layer,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let (outputs, pixels, groups) = (layer.shape.outputs, layer.shape.pixels, layer.groups);
    for o in 0..outputs {
        let weights = &layer.words[o * groups..][..groups];
        for p0 in (0..pixels).step_by(BLOCK) {
            let n = BLOCK.min(pixels - p0);
            let mut acc = [layer.corr_u8[o]; BLOCK];
            for (g, &w) in weights.iter().enumerate() {
                let w = w.to_le_bytes().map(|b| i32::from(b as i8));
                for (a, &x) in acc.iter_mut().zip(&words[g * pixels + p0..][..n]) {
                    let x = x.to_le_bytes().map(i32::from);
                    *a += x[0] * w[0] + x[1] * w[1] + x[2] * w[2] + x[3] * w[3];
                }
            }
            for (i, &a) in acc[..n].iter().enumerate() {
                let at = o * layer.y_stride + p0 + i;
                let r = RES.then(|| residual[at]);
                out[at] = layer.store(a as f32, o, r, RELU);
            }
        }
    }
}

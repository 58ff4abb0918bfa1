//! Full (one-group) `kh × kw` convolution with stride `s` and zero padding, e.g. the 7×7/2 stem
//! of OSNet, with bias and an activation (ReLU, SiLU), without im2col.
//!
//! Each image is copied once into a zero-padded, phase-split buffer: padded row `r` of channel
//! `c` is stored as `s` phase rows, phase `φ` holding columns `φ, φ+s, φ+2s…`. Output pixel
//! `(oy, ox)`'s tap `(c, ky, kx)` is then padded `(s·oy+ky, s·ox+kx)` = phase `kx mod s`,
//! position `ox + kx div s` — contiguous in `ox`. So output row `oy` is one run of the register
//! tiles in `tile`, with one row offset per tap, the same for every output row up to
//! `oy · row_step`.

use super::tile::Product;
use super::{Act, Isa};

/// One layer's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub inputs: usize,
    pub outputs: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    /// Zero padding (top, left, bottom, right).
    pub padding: (usize, usize, usize, usize),
}

impl Shape {
    fn padded(&self) -> (usize, usize) {
        let (t, l, b, r) = self.padding;
        (self.height + t + b, self.width + l + r)
    }

    /// Length of a phase row.
    fn phase_len(&self) -> usize {
        self.padded().1.div_ceil(self.stride)
    }

    /// Output (height, width); `None` if the kernel does not fit or the stride is 0.
    pub fn output(&self) -> Option<(usize, usize)> {
        let (hp, wp) = self.padded();
        let (kh, kw) = self.kernel;
        (self.stride > 0 && kh > 0 && kw > 0 && hp >= kh && wp >= kw)
            .then(|| ((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1))
    }

    /// Padded rows of all channels in the phase-split buffer (`inputs × padded height`), each
    /// [`phase_row_len`](Self::phase_row_len) values: the units [`phase_split_rows`] fills.
    pub fn phase_rows(&self) -> usize {
        self.inputs * self.padded().0
    }

    /// The geometry of `padded_rows` consecutive padded rows of this input taken as an image
    /// of their own, without padding above and below: the convolution of a band of rows. Its
    /// phase-split buffer holds those rows of each channel in turn, as [`phase_split_rows`]
    /// makes them from this shape's rows `c · padded height + r` (one call per channel); its
    /// output row `i` is this shape's output row `i + first / stride` for a band from padded row
    /// `first` (a multiple of the stride).
    pub fn band(&self, padded_rows: usize) -> Shape {
        let (_, left, _, right) = self.padding;
        Shape {
            height: padded_rows,
            padding: (0, left, 0, right),
            ..*self
        }
    }

    /// The padded input's height (rows per channel of the phase-split buffer).
    pub fn padded_height(&self) -> usize {
        self.padded().0
    }

    /// Values per padded row of the phase-split buffer (its `stride` phase rows).
    pub fn phase_row_len(&self) -> usize {
        self.stride * self.phase_len()
    }

    /// Where output row `oy + 1`'s taps start relative to row `oy`'s in the phase-split buffer.
    pub(super) fn row_step(&self) -> usize {
        self.stride * self.stride * self.phase_len()
    }

    /// Floats of the phase-split buffer of one image.
    pub fn scratch_len(&self) -> usize {
        self.inputs * self.padded().0 * self.stride * self.phase_len()
    }

    /// The tiles' row offsets, one per tap in OIHW weight order `(c, ky, kx)`.
    pub fn offsets(&self) -> Vec<usize> {
        let (hp, _) = self.padded();
        let (s, l) = (self.stride, self.phase_len());
        let (kh, kw) = self.kernel;
        let mut offsets = Vec::with_capacity(self.inputs * kh * kw);
        for c in 0..self.inputs {
            for ky in 0..kh {
                for kx in 0..kw {
                    offsets.push(((c * hp + ky) * s + kx % s) * l + kx / s);
                }
            }
        }
        offsets
    }
}

/// `out[n][o] = act(bias[o] + Σ weights[o] ⋆ input[n])` for images `[n][inputs][height][width]`,
/// weights OIHW packed for `isa` ([`pack_weights`](super::pack_weights)), `out` `[n][outputs][oh][ow]`. `offsets` are [`Shape::offsets`]; `scratch`
/// grows to [`Shape::scratch_len`] once.
#[allow(clippy::too_many_arguments)]
pub fn conv(
    isa: Isa,
    shape: Shape,
    offsets: &[usize],
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (oh, ow) = shape.output().expect("the kernel fits the padded input");
    let x_len = shape.inputs * shape.height * shape.width;
    let y_len = shape.outputs * oh * ow;
    assert!(x_len > 0 && y_len > 0, "empty convolution {shape:?}");
    assert_eq!(input.len() % x_len, 0, "conv input length");
    assert_eq!(out.len(), input.len() / x_len * y_len, "conv output length");
    for (x, y) in input.chunks_exact(x_len).zip(out.chunks_exact_mut(y_len)) {
        let phases = phase_split(isa, shape, x, scratch);
        convolve(isa, shape, offsets, phases, weights, bias, act, y);
    }
}

/// Copies one image into the zero-padded, phase-split layout (the first [`Shape::scratch_len`]
/// floats of `scratch`, grown once) and returns that part.
pub fn phase_split<'s>(
    isa: Isa,
    shape: Shape,
    image: &[f32],
    scratch: &'s mut Vec<f32>,
) -> &'s [f32] {
    phase_split_as(isa, shape, image, 0.0, |v| v, scratch)
}

/// [`phase_split`] into values of another type: each image value through `map`, the padding
/// `pad` (the int8 convolution's codes: `qconv`).
pub(super) fn phase_split_as<'s, S: Copy, T: Copy>(
    isa: Isa,
    shape: Shape,
    image: &[S],
    pad: T,
    map: impl Fn(S) -> T,
    scratch: &'s mut Vec<T>,
) -> &'s [T] {
    let phases = phase_buffer(shape, pad, scratch);
    phase_split_rows(isa, shape, image, 0..shape.phase_rows(), pad, map, phases);
    phases
}

/// The first [`Shape::scratch_len`] values of `scratch` (grown once, new values `pad`), for
/// [`phase_split_rows`] to fill.
pub fn phase_buffer<T: Copy>(shape: Shape, pad: T, scratch: &mut Vec<T>) -> &mut [T] {
    if scratch.len() < shape.scratch_len() {
        scratch.resize(shape.scratch_len(), pad);
    }
    &mut scratch[..shape.scratch_len()]
}

/// Fills padded rows `rows` (numbered `c · padded height + r`, see [`Shape::phase_rows`]) of
/// the phase-split buffer, `out` being exactly those rows: zero padding `pad`, image values
/// through `map`. Parts of one buffer can be filled by different threads. `isa` only says which
/// vector instructions the copy may use (the values are the same).
pub fn phase_split_rows<S: Copy, T: Copy>(
    isa: Isa,
    shape: Shape,
    image: &[S],
    rows: std::ops::Range<usize>,
    pad: T,
    map: impl Fn(S) -> T,
    out: &mut [T],
) {
    assert_eq!(
        image.len(),
        shape.inputs * shape.height * shape.width,
        "conv image length"
    );
    assert!(rows.end <= shape.phase_rows(), "phase rows {rows:?}");
    assert_eq!(
        out.len(),
        rows.len() * shape.phase_row_len(),
        "phase rows length"
    );
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    match isa {
        // SAFETY: the CPU has AVX-512F (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::split_avx512(shape, image, rows, pad, &map, out) },
        // SAFETY: the CPU has AVX2 (checked above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::split_avx2(shape, image, rows, pad, &map, out) },
        _ => split_rows(shape, image, rows, pad, &map, out),
    }
}

/// [`phase_split_rows`] compiled for the x86 vector extensions: the same loops, which LLVM
/// vectorises (the stride-2 split into `vpermt2ps` with AVX-512).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Shape, split_rows};

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split_avx512<S: Copy, T: Copy>(
        shape: Shape,
        image: &[S],
        rows: std::ops::Range<usize>,
        pad: T,
        map: &impl Fn(S) -> T,
        out: &mut [T],
    ) {
        split_rows(shape, image, rows, pad, map, out)
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn split_avx2<S: Copy, T: Copy>(
        shape: Shape,
        image: &[S],
        rows: std::ops::Range<usize>,
        pad: T,
        map: &impl Fn(S) -> T,
        out: &mut [T],
    ) {
        split_rows(shape, image, rows, pad, map, out)
    }
}

/// The body of [`phase_split_rows`] (lengths checked by it).
#[inline(always)]
fn split_rows<S: Copy, T: Copy>(
    shape: Shape,
    image: &[S],
    rows: std::ops::Range<usize>,
    pad: T,
    map: &impl Fn(S) -> T,
    out: &mut [T],
) {
    let (hp, _) = shape.padded();
    let (s, l) = (shape.stride, shape.phase_len());
    let (t, left, _, _) = shape.padding;
    for (unit, dst_row) in rows.zip(out.chunks_exact_mut(s * l)) {
        dst_row.fill(pad);
        let (c, r) = (unit / hp, unit % hp);
        let Some(iy) = r.checked_sub(t).filter(|&iy| iy < shape.height) else {
            continue;
        };
        let row = &image[(c * shape.height + iy) * shape.width..][..shape.width];
        if s == 2 {
            // One pass over the row (every stem we know has stride 2): image column 2j goes
            // to padded column 2j + left (phase left mod 2, position j + left / 2), column
            // 2j + 1 to the other phase at position j + (left + 1) / 2.
            let (p0, p1) = dst_row.split_at_mut(l);
            let (even, odd) = if left % 2 == 0 { (p0, p1) } else { (p1, p0) };
            let (n_even, n_odd) = (row.len().div_ceil(2), row.len() / 2);
            let even = &mut even[left / 2..][..n_even];
            let odd = &mut odd[left.div_ceil(2)..][..n_odd];
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                *e = map(pair[0]);
                *o = map(pair[1]);
            }
            if let [.., last] = row
                && n_even > n_odd
            {
                even[n_even - 1] = map(*last);
            }
            continue;
        }
        // Phase φ holds padded columns φ, φ+s…; the first image column there is the first
        // ix ≥ 0 with (ix + left) ≡ φ (mod s).
        for phase in 0..s {
            let ix0 = (phase + s - left % s) % s;
            if ix0 >= row.len() {
                continue;
            }
            let j0 = (ix0 + left) / s;
            let dst = &mut dst_row[phase * l + j0..(phase + 1) * l];
            copy_strided(dst, &row[ix0..], s, map);
        }
    }
}

/// `dst[i] = map(src[i·s])` while both last (stride 1 in a loop LLVM vectorises).
#[inline(always)]
fn copy_strided<S: Copy, T: Copy>(dst: &mut [T], src: &[S], s: usize, map: &impl Fn(S) -> T) {
    if s == 1 {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = map(v));
    } else {
        dst.iter_mut()
            .zip(src.iter().step_by(s))
            .for_each(|(d, &v)| *d = map(v));
    }
}

/// The convolution of one phase-split image for the output channels whose `weights` (OIHW,
/// packed for `isa`; a range of outputs from a multiple of [`panel_width`](super::panel_width) on)
/// and `bias` are given: `y` holds those channels' `oh × ow` planes.
#[allow(clippy::too_many_arguments)]
pub fn convolve(
    isa: Isa,
    shape: Shape,
    offsets: &[usize],
    phases: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    y: &mut [f32],
) {
    let (oh, ow) = shape.output().expect("the kernel fits the padded input");
    assert_eq!(y.len(), bias.len() * oh * ow, "conv output length");
    // SAFETY: `y` is borrowed mutably for the call: nothing else touches it.
    unsafe {
        convolve_rows(
            isa,
            shape,
            offsets,
            phases,
            weights,
            bias,
            act,
            0..oh,
            y.as_mut_ptr(),
        )
    }
}

/// [`convolve`] for output rows `rows` only, into `y` (those channels' `oh × ow` planes), of
/// which other threads may write other rows meanwhile (the threads of one layer split its
/// rows).
///
/// # Safety
/// `y` is valid for reads and writes of `bias.len() · oh · ow` floats, and while this runs no
/// other thread reads or writes rows `rows` of any of its planes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn convolve_rows(
    isa: Isa,
    shape: Shape,
    offsets: &[usize],
    phases: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    rows: std::ops::Range<usize>,
    y: *mut f32,
) {
    let (oh, ow) = shape.output().expect("the kernel fits the padded input");
    assert_eq!(
        offsets.len(),
        shape.inputs * shape.kernel.0 * shape.kernel.1,
        "one offset per tap"
    );
    assert!(rows.end <= oh, "output rows {rows:?} of {oh}");
    let product = Product {
        weights,
        bias,
        offsets,
        x: &[phases],
        parts: &[offsets.len()],
        y_stride: oh * ow,
        res: None,
        res_after_act: false,
        act,
        copy_rows: false,
    };
    // SAFETY: as the caller promised (`run_rows` checks the bounds): this writes rows `rows`
    // of every plane.
    unsafe {
        product.run_rows(
            isa,
            rows.start * shape.row_step(),
            shape.row_step(),
            rows.start * ow,
            ow,
            rows.len(),
            y,
            bias.len() * oh * ow,
        )
    }
}

/// The naive reference, in `f64`: the output and, per element, `Σ|terms|` (for error bounds).
pub fn reference(
    shape: Shape,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = shape.output().expect("the kernel fits");
    let (h, w) = (shape.height, shape.width);
    let (kh, kw) = shape.kernel;
    let (t, l, _, _) = shape.padding;
    let batch = input.len() / (shape.inputs * h * w);
    let mut out = vec![0.0; batch * shape.outputs * oh * ow];
    let mut magnitude = vec![0.0; out.len()];
    for n in 0..batch {
        for o in 0..shape.outputs {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = f64::from(bias[o]);
                    let mut mag = acc.abs();
                    for c in 0..shape.inputs {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * shape.stride + ky) as isize - t as isize;
                                let ix = (ox * shape.stride + kx) as isize - l as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = input
                                    [((n * shape.inputs + c) * h + iy as usize) * w + ix as usize];
                                let p = f64::from(
                                    weights[((o * shape.inputs + c) * kh + ky) * kw + kx],
                                ) * f64::from(v);
                                acc += p;
                                mag += p.abs();
                            }
                        }
                    }
                    let at = ((n * shape.outputs + o) * oh + oy) * ow + ox;
                    out[at] = act.reference(acc) as f32;
                    magnitude[at] = mag as f32;
                }
            }
        }
    }
    (out, magnitude)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Rng, assert_close_after};
    use super::*;

    fn check(isa: Isa, shape: Shape, batch: usize, act: Act, rng: &mut Rng) {
        let input = rng.vec(batch * shape.inputs * shape.height * shape.width);
        let (kh, kw) = shape.kernel;
        let weights = rng.vec(shape.outputs * shape.inputs * kh * kw);
        let bias = rng.vec(shape.outputs);
        let (want, magnitude) = reference(shape, &input, &weights, &bias, act);
        let mut got = vec![f32::NAN; want.len()];
        let mut scratch = vec![f32::NAN; 5];
        conv(
            isa,
            shape,
            &shape.offsets(),
            &input,
            &super::super::pack_weights(isa, &weights, shape.outputs),
            &bias,
            act,
            &mut got,
            &mut scratch,
        );
        // The same values bit for bit when the phase-split rows and the output rows are made in
        // parts (as threads do), on the last image.
        let image = &input[input.len() - shape.inputs * shape.height * shape.width..];
        let packed = super::super::pack_weights(isa, &weights, shape.outputs);
        let mut phases = vec![f32::NAN; shape.scratch_len()];
        for rows in super::super::test_support::parts(rng, shape.phase_rows(), 1) {
            let part =
                &mut phases[rows.start * shape.phase_row_len()..rows.end * shape.phase_row_len()];
            phase_split_rows(isa, shape, image, rows, 0.0, |v| v, part);
        }
        let (oh, ow) = shape.output().unwrap();
        let mut parted = vec![f32::NAN; shape.outputs * oh * ow];
        for rows in super::super::test_support::parts(rng, oh, 1) {
            // SAFETY: `parted` is one image's output; the parts run one after the other.
            unsafe {
                convolve_rows(
                    isa,
                    shape,
                    &shape.offsets(),
                    &phases,
                    &packed,
                    &bias,
                    act,
                    rows,
                    parted.as_mut_ptr(),
                )
            };
        }
        super::super::test_support::assert_same_bits(
            &parted,
            &got[got.len() - parted.len()..],
            &format!("{isa} {shape:?}: rows in parts"),
        );
        let terms = shape.inputs * kh * kw + 2;
        assert_close_after(
            act,
            &got,
            &want,
            &magnitude,
            terms,
            &format!("{isa} {shape:?} batch {batch}"),
        );
    }

    #[test]
    fn every_isa_matches_the_reference_on_random_shapes() {
        let mut rng = Rng::new(0xc04e_7777);
        for isa in Isa::available() {
            // The stems of the models we ship and the references; at 160×80 an output row is 40
            // pixels, not a whole number of vectors (the overlapping last vector of `tile`), and
            // with 32 outputs on AVX-512 its rows go four at a time through a gathered copy
            // (`Product::run_rows`).
            for (h, w, outputs) in [(256, 128, 16), (160, 80, 16), (160, 80, 32), (128, 64, 32)] {
                let stem = Shape {
                    inputs: 3,
                    outputs,
                    height: h,
                    width: w,
                    kernel: (7, 7),
                    stride: 2,
                    padding: (3, 3, 3, 3),
                };
                check(isa, stem, 1, Act::Relu, &mut rng);
                check(isa, stem, 1, Act::Silu, &mut rng);
            }
            for _ in 0..60 {
                let kernel = (1 + rng.below(5), 1 + rng.below(5));
                let padding = (rng.below(3), rng.below(3), rng.below(3), rng.below(3));
                let shape = Shape {
                    inputs: 1 + rng.below(6),
                    outputs: 1 + rng.below(20),
                    height: kernel.0 + rng.below(20),
                    width: kernel.1 + rng.below(40),
                    kernel,
                    stride: 1 + rng.below(3),
                    padding,
                };
                let act = super::super::test_support::act(&mut rng);
                check(isa, shape, 1 + rng.below(2), act, &mut rng);
            }
        }
    }
}

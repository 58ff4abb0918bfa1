//! Depthwise 3×3 convolution, zero padding 1, stride 1 (OSNet's `LightConv3x3`, SCL-net's dw
//! layers) or 2 (YOLOX's downsampling), with the folded batch-norm as a per-channel bias and an
//! activation (ReLU, SiLU).
//!
//! Each channel plane is copied once into a zero-bordered `(H+2) × (W+2)` scratch plane (rows a
//! whole number of vectors apart: `Shape::pitch`), so that every tap of an output row is a plain
//! (unaligned) vector load. For stride 2 each padded row is
//! stored as its even columns then its odd ones: the taps of output column `x` are then even
//! `x`, odd `x` and even `x + 1`, consecutive in `x` like stride 1's. Output rows are computed four
//! at a time (four independent chains of nine FMAs, not one waiting on the FMA latency), a row's
//! last vector written with a lane mask when the width is not a multiple of the vector (OSNet's
//! late stages are 8 or 4 pixels wide, less than one AVX-512 register). Copies go through masked
//! vector moves too: `copy_from_slice` calls `memcpy` per row, which costs more than the row.
//! On aarch64 four stride-1 rows (ReLU or none) go through one `asm!` loop (`arm.rs`) that adds
//! the taps in the same order: the same bits.

#[cfg(target_arch = "aarch64")]
mod arm;

#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::simd::{Lanes, copy};
use super::{Act, Isa, MAX_LANES};

/// One depthwise layer: `channels` planes of `height × width`, weights `[channels][3][3]`,
/// stride 1 or 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub stride: usize,
}

impl Shape {
    /// Output height and width.
    pub fn output(&self) -> (usize, usize) {
        output_size(self.height, self.width, self.stride)
    }

    /// Scratch floats one call needs: the padded plane, one vector of slack that the last
    /// row's masked-off lanes may read, and up to a vector's worth before the plane to align it
    /// (see [`Shape::pitch`]).
    pub fn scratch_len(&self) -> usize {
        (self.height + 2) * self.pitch().0 + 2 * MAX_LANES
    }

    /// Floats per padded row, and where its odd columns start (stride 2; stride 1: 1).
    ///
    /// Each row's copied values start on a whole vector ([`MAX_LANES`] floats, 64 bytes): the
    /// plane starts a float before a 64-byte boundary, the pitch is a whole number of vectors,
    /// and a stride-2 row's odd columns (padded column 1 on, after its `(w + 3) / 2` even ones)
    /// start a float past one. With rows `w + 2` floats apart, most copied vectors were stored
    /// across two cache lines: YOLOX-Nano's 32×104×104 stride-2 layer took 0.125 ms, now 0.11
    /// (stride 1: no change measured; Intel Xeon model 207).
    ///
    /// Only on x86 and for rows of two vectors or more: narrower ones (OSNet's late stages) gain
    /// nothing from it, and on ARM, whose cost is counted in instructions, the longer rows to
    /// zero cost OSNet x0.25 2.5% more on cortex-a72. There rows are `w + 2` floats apart.
    pub fn pitch(&self) -> (usize, usize) {
        let w = self.width;
        let lanes = self.align_lanes();
        if self.stride == 1 {
            ((w + 2).next_multiple_of(lanes), 1)
        } else {
            let odd = ((w + 3) / 2 - 1).next_multiple_of(lanes) + 1;
            ((odd + (w + 2) / 2).next_multiple_of(lanes), odd)
        }
    }

    /// The floats [`Shape::pitch`] aligns to: a vector, or 1 (none).
    fn align_lanes(&self) -> usize {
        if cfg!(target_arch = "x86_64") && self.width + 2 >= 2 * MAX_LANES {
            MAX_LANES
        } else {
            1
        }
    }
}

/// `out[n][c] = act(bias[c] + Σ weights[c] ⋆ input[n][c])` (every `stride`-th row and column)
/// for `batch` images laid out `[batch][channels][height][width]`. `scratch` grows to
/// [`Shape::scratch_len`] once.
#[allow(clippy::too_many_arguments)]
pub fn depthwise3x3(
    isa: Isa,
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (oh, ow) = shape.output();
    assert_eq!(
        out.len(),
        batch * shape.channels * oh * ow,
        "depthwise output length"
    );
    // SAFETY: `out` is borrowed mutably for the call and has the length asserted above.
    unsafe {
        depthwise3x3_rows(
            isa,
            shape,
            batch,
            input,
            weights,
            bias,
            act,
            0..oh,
            out.as_mut_ptr(),
            scratch,
        )
    }
}

/// [`depthwise3x3`] for output rows `rows` of every plane only, into `out` (`batch · channels
/// · oh · ow` floats), of which other threads may write other rows meanwhile (the threads of
/// one layer split its rows: each reads only the input rows around its own, which it wrote in
/// the layer before). Only the padded rows these output rows read are copied.
///
/// # Safety
/// `out` is valid for reads and writes of `batch · channels · oh · ow` floats, and while this
/// runs no other thread reads or writes rows `rows` of any of its planes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise3x3_rows(
    isa: Isa,
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: the caller's contract, passed on (the whole input is a band of every row).
    unsafe {
        depthwise3x3_band(
            isa,
            shape,
            batch,
            input,
            0,
            shape.height,
            weights,
            bias,
            act,
            rows,
            out,
            scratch,
        )
    }
}

/// [`depthwise3x3_rows`] from a band of the input rows: `band` holds `band_rows` rows from
/// `band_first` on of each of the `batch · channels` planes (`band_rows · width` floats per
/// plane), which must include every row output rows `rows` read (`stride · y − 1` to
/// `stride · y + 1`, inside the image). The same values, bit for bit, as from the whole input.
///
/// # Safety
/// As [`depthwise3x3_rows`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise3x3_band(
    isa: Isa,
    shape: Shape,
    batch: usize,
    band: &[f32],
    band_first: usize,
    band_rows: usize,
    weights: &[f32],
    bias: &[f32],
    act: Act,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    scratch: &mut Vec<f32>,
) {
    assert_eq!(
        band.len(),
        batch * shape.channels * band_rows * shape.width,
        "depthwise band length"
    );
    if let Some((first, last)) = input_rows(shape, &rows) {
        assert!(
            band_first <= first && last <= band_first + band_rows,
            "depthwise band rows {band_first}..{} for output rows {rows:?}",
            band_first + band_rows
        );
    }
    let args = Args {
        shape,
        batch,
        input: band,
        input_first: band_first,
        input_rows: band_rows,
        weights,
        bias,
        act,
        rows,
    };
    // SAFETY: the caller's contract, passed on.
    unsafe { run(isa, &args, out, scratch) }
}

/// The input rows `first..last` output rows `rows` read (none for no rows).
fn input_rows(shape: Shape, rows: &std::ops::Range<usize>) -> Option<(usize, usize)> {
    (!rows.is_empty()).then(|| {
        (
            (rows.start * shape.stride).saturating_sub(1),
            ((rows.end - 1) * shape.stride + 2).min(shape.height),
        )
    })
}

/// # Safety
/// As [`depthwise3x3_rows`], for `args`.
unsafe fn run(isa: Isa, args: &Args, out: *mut f32, scratch: &mut Vec<f32>) {
    let shape = args.shape;
    assert!(
        matches!(shape.stride, 1 | 2),
        "depthwise stride {}",
        shape.stride
    );
    assert_eq!(
        args.input.len(),
        args.batch * shape.channels * args.input_rows * shape.width,
        "depthwise input length"
    );
    assert_eq!(
        args.weights.len(),
        shape.channels * 9,
        "depthwise weights length"
    );
    assert_eq!(args.bias.len(), shape.channels, "depthwise bias length");
    assert!(
        args.rows.end <= shape.output().0,
        "depthwise rows {:?}",
        args.rows
    );
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    if scratch.len() < shape.scratch_len() {
        scratch.resize(shape.scratch_len(), 0.0);
    }
    match isa {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `is_available` checked the CPU's features; the lengths are asserted above.
        Isa::Baseline => unsafe { body::<std::arch::aarch64::float32x4_t>(args, out, scratch) },
        #[cfg(not(target_arch = "aarch64"))]
        // SAFETY: `is_available` checked the CPU's features; the lengths are asserted above.
        Isa::Baseline => unsafe { body::<Portable>(args, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked the CPU's features; the lengths are asserted above.
        Isa::Avx2Fma => unsafe { x86::avx2(args, out, scratch) },
        // Planes of 8 or fewer columns fill half an AVX-512 vector: 8-lane AVX2 does them faster
        // (2.7 vs 3.6 µs for OSNet x0.25's 32×16×8 layer).
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked the CPU's features; the lengths are asserted above.
        Isa::Avx512 if shape.width <= 8 => unsafe { x86::avx2(args, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked the CPU's features; the lengths are asserted above.
        Isa::Avx512 => unsafe { x86::avx512(args, out, scratch) },
    }
}

struct Args<'a> {
    shape: Shape,
    batch: usize,
    /// Input rows `input_first..input_first + input_rows` of every plane (all of them but for a
    /// band: [`depthwise3x3_band`]).
    input: &'a [f32],
    input_first: usize,
    input_rows: usize,
    weights: &'a [f32],
    bias: &'a [f32],
    act: Act,
    /// The output rows to compute, in every plane.
    rows: std::ops::Range<usize>,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    use super::{Args, body};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(args: &Args, out: *mut f32, scratch: &mut [f32]) {
        // SAFETY: the caller checked AVX2 + FMA.
        unsafe { body::<__m256>(args, out, scratch) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(args: &Args, out: *mut f32, scratch: &mut [f32]) {
        // SAFETY: the caller checked AVX-512F.
        unsafe { body::<__m512>(args, out, scratch) }
    }
}

/// # Safety
/// The CPU must support `V`.
#[inline(always)]
unsafe fn body<V: Lanes>(args: &Args, out: *mut f32, scratch: &mut [f32]) {
    // SAFETY: forwarded. The stride is a constant in each copy, so that stride 1's taps are
    // constant offsets from a row (a run-time choice of tap columns cost OSNet x0.25 7% more
    // instructions on cortex-a72).
    unsafe {
        if args.shape.stride == 1 {
            strided::<V, 1>(args, out, scratch)
        } else {
            strided::<V, 2>(args, out, scratch)
        }
    }
}

/// [`body`] for stride `STRIDE`.
///
/// # Safety
/// As `body`.
#[inline(always)]
unsafe fn strided<V: Lanes, const STRIDE: usize>(args: &Args, out: *mut f32, scratch: &mut [f32]) {
    let Shape {
        channels, width: w, ..
    } = args.shape;
    let stride = STRIDE;
    let (oh, ow) = args.shape.output();
    // Stride 2: where a padded row's odd columns start (after its (w + 3) / 2 even ones).
    let (pw, odd) = args.shape.pitch();
    // The plane from a float before a 64-byte boundary (see `Shape::pitch`).
    let lanes = args.shape.align_lanes();
    let lead = (scratch.as_ptr().align_offset(64) + lanes - 1) % lanes;
    let padded = &mut scratch[lead..args.shape.scratch_len()];
    // Column `dx` of a tap row, as an offset from output column `x`'s.
    let columns = if stride == 1 { [0, 1, 2] } else { [0, odd, 1] };
    // The input rows the output rows read: padded rows `rows.start · stride` to
    // `(rows.end − 1) · stride + 2`, input row `y` being padded row `y + 1`.
    let rows = args.rows.clone();
    let Some((first, last)) = input_rows(args.shape, &rows) else {
        return;
    };
    // Zero the padded rows these output rows read (padded rows `rows.start · stride` to
    // `(rows.end − 1) · stride + 2`: their borders, and the padding rows above and below the
    // image); the copies below fill the rest, the same rows in every plane.
    padded[rows.start * stride * pw..((rows.end - 1) * stride + 3) * pw].fill(0.0);
    let plane = args.input_rows * w;
    for (image, src) in args.input.chunks_exact(plane).enumerate() {
        let c = image % channels;
        // SAFETY: plane `image` of the output (`batch · channels` planes of oh × ow, the
        // caller's contract).
        let dst = unsafe { out.add(image * oh * ow) };
        let src = &src[(first - args.input_first) * w..(last - args.input_first) * w];
        if stride == 1 {
            for (y, row) in (first..).zip(src.chunks_exact(w)) {
                // SAFETY: `V` is supported; `row` has w floats, padded row y + 1 from its column
                // 1 has w + 1.
                unsafe { copy::<V>(row.as_ptr(), padded.as_mut_ptr().add((y + 1) * pw + 1), w) };
            }
        } else {
            for (y, row) in (first..).zip(src.chunks_exact(w)) {
                // Padded column x + 1: odd inputs to the even columns (from column 2, index 1),
                // even inputs to the odd columns (from column 1, index `odd`): `2N` inputs at a
                // time split by `Lanes::deinterleave`, then the rest in pairs (LLVM vectorised
                // the pairs itself, behind some 50 instructions per row checking that the two
                // halves did not overlap).
                let (even, odd_columns) = padded[(y + 1) * pw..][..pw].split_at_mut(odd);
                let whole = w / (2 * V::N) * V::N;
                for j in (0..whole).step_by(V::N) {
                    // SAFETY: `V` is supported; inputs `2j..2j + 2N` of the row, outputs
                    // `j..j + N` of each half (`j + N ≤ w / 2`, and each half holds w / 2 + 1).
                    unsafe {
                        let src = row.as_ptr().add(2 * j);
                        let (e, o) = V::load(src).deinterleave(V::load(src.add(V::N)));
                        e.store(odd_columns.as_mut_ptr().add(j));
                        o.store(even.as_mut_ptr().add(1 + j));
                    }
                }
                let rest = w - 2 * whole;
                if V::N >= 8 && rest > 0 {
                    // x86: the last `rest < 2N` inputs through masked lanes too (YOLOX-Nano's
                    // 26- and 46-wide rows had no whole `2N` at all, and their scalar pairs cost
                    // more than the layer's products). Not on NEON, where a masked move is a copy
                    // through the stack and the tail is under four pairs.
                    // SAFETY: `V` is supported; inputs `2·whole..w` of the row; outputs
                    // `whole..w / 2 + 1` of each half (`(rest + 1) / 2` and `rest / 2` values).
                    unsafe {
                        let src = row.as_ptr().add(2 * whole);
                        let first = load_up_to::<V>(src, rest.min(V::N));
                        let second = load_up_to::<V>(src.add(V::N), rest.saturating_sub(V::N));
                        let (e, o) = first.deinterleave(second);
                        store_up_to(e, odd_columns.as_mut_ptr().add(whole), rest.div_ceil(2));
                        store_up_to(o, even.as_mut_ptr().add(1 + whole), rest / 2);
                    }
                    continue;
                }
                let pairs = row[2 * whole..].chunks_exact(2);
                if let [last] = pairs.remainder() {
                    odd_columns[w / 2] = *last;
                }
                for ((e, o), pair) in even[1 + whole..]
                    .iter_mut()
                    .zip(&mut odd_columns[whole..])
                    .zip(pairs)
                {
                    (*o, *e) = (pair[0], pair[1]);
                }
            }
        }
        let k: &[f32; 9] = args.weights[c * 9..][..9].try_into().expect("9 taps");
        // SAFETY: `V` is supported.
        let (kv, bias) = unsafe {
            (
                std::array::from_fn(|t| V::splat(k[t])),
                V::splat(args.bias[c]),
            )
        };
        let plane_rows = Rows {
            padded: padded.as_ptr(),
            dst,
            pw,
            w: ow,
            kv,
            columns,
            bias,
            taps: *k,
            bias_value: args.bias[c],
        };
        // SAFETY: `V` is supported; output row y's taps start at y·stride·pw ≤ (h − 1)·pw and
        // reach at most 2·pw + (w + 1) + N − 1 beyond (stride 2: the even column ow ≤ (w + 1) / 2,
        // then the odd half-row), inside the scratch ((h + 2)·pw + N), all of them copied above
        // for these rows; stores stay inside `dst`'s rows `rows` of ow. Each activation compiled
        // apart (SiLU's code and constants out of the other copies; a test of the activation per
        // vector, its operand reloaded from the stack, cost OSNet x0.25 0.2 M instructions on
        // cortex-a72).
        unsafe {
            match args.act {
                Act::Silu => plane_rows.all::<STRIDE, { Act::Silu as u8 }>(rows.clone()),
                Act::Relu => plane_rows.all::<STRIDE, { Act::Relu as u8 }>(rows.clone()),
                Act::Identity => plane_rows.all::<STRIDE, { Act::Identity as u8 }>(rows.clone()),
            }
        }
    }
    debug_assert_eq!(args.input.len() / plane, args.batch * channels);
}

/// The first `n ≤ N` lanes from `p`, the others zero (none read for `n` = 0).
///
/// # Safety
/// The CPU must support `V`; `p` valid for `n` floats.
#[inline(always)]
unsafe fn load_up_to<V: Lanes>(p: *const f32, n: usize) -> V {
    // SAFETY: as the caller's.
    unsafe {
        match n {
            0 => V::splat(0.0),
            n if n == V::N => V::load(p),
            n => V::load_n(p, n),
        }
    }
}

/// Writes the first `n ≤ N` lanes of `v` to `p`, and nothing else.
///
/// # Safety
/// The CPU must support `V`; `p` valid for `n` floats.
#[inline(always)]
unsafe fn store_up_to<V: Lanes>(v: V, p: *mut f32, n: usize) {
    // SAFETY: as the caller's.
    unsafe {
        match n {
            0 => {}
            n if n == V::N => v.store(p),
            n => v.store_n(p, n),
        }
    }
}

/// One plane's operands for [`Rows::compute`].
struct Rows<V> {
    padded: *const f32,
    dst: *mut f32,
    /// Scratch floats per padded row.
    pw: usize,
    /// Output width.
    w: usize,
    kv: [V; 9],
    /// Where a tap row's three columns are, from output column `x`'s (see `strided`).
    columns: [usize; 3],
    bias: V,
    /// `kv` and `bias` as floats (ARM's assembly step, [`arm::four_rows`]).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    taps: [f32; 9],
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    bias_value: f32,
}

impl<V: Lanes> Rows<V> {
    /// Output rows `rows` of the plane, four at a time.
    ///
    /// # Safety
    /// As in `body`.
    #[inline(always)]
    unsafe fn all<const STRIDE: usize, const ACT: u8>(&self, rows: std::ops::Range<usize>) {
        let (mut y, h) = (rows.start, rows.end);
        // SAFETY: as the caller's.
        unsafe {
            while y + 4 <= h {
                #[cfg(target_arch = "aarch64")]
                if STRIDE == 1 && ACT != Act::Silu as u8 && self.w >= 4 {
                    self.four_rows_neon(y, ACT == Act::Relu as u8);
                    y += 4;
                    continue;
                }
                self.compute::<4, STRIDE, ACT>(y);
                y += 4;
            }
            while y < h {
                self.compute::<1, STRIDE, ACT>(y);
                y += 1;
            }
        }
    }

    /// [`Rows::compute`] of four stride-1 rows from `y` (ReLU or none) in [`arm::four_rows`]:
    /// the row's whole vectors, then, when the width is not a multiple of four, its last four
    /// pixels again (the same sums).
    ///
    /// # Safety
    /// As in `body`, with `w ≥ 4`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn four_rows_neon(&self, y: usize, relu: bool) {
        let (w, pw) = (self.w, self.pw);
        // SAFETY: as the caller's: output rows y..y + 4 read padded rows y..y + 6 (stride 1),
        // columns up to w + 1 < pw, copied or zeroed in `strided`; the stores stay in the
        // output rows (`at + 4 ≤ w`).
        unsafe {
            let (top, dst) = (self.padded.add(y * pw), self.dst.add(y * w));
            let run = |at: usize, vectors: usize| {
                arm::four_rows(
                    top.add(at),
                    pw,
                    dst.add(at),
                    w,
                    vectors,
                    &self.taps,
                    self.bias_value,
                    relu,
                )
            };
            run(0, w / 4);
            if w % 4 != 0 {
                run(w - 4, 1);
            }
        }
    }

    /// Output rows `y..y+R`, all vectors of each. Each padded row the `R` rows read is loaded
    /// once per vector (its three columns) and added into every output row that takes a tap
    /// from it (three at stride 1, two at stride 2): 18 loads for 36 FMAs at `R` = 4, stride 1,
    /// where a load per tap and row took 36 (on cortex-a72 our default model's depthwise layers
    /// cost 9.4 M guest instructions for 6.9 M multiply-adds). Each output still adds its taps
    /// in the order `dy`, then `dx`: the same sums, bit for bit.
    ///
    /// # Safety
    /// As in `body`.
    #[inline(always)]
    unsafe fn compute<const R: usize, const STRIDE: usize, const ACT: u8>(&self, y: usize) {
        let mut x = 0;
        while x < self.w {
            // A row's last pixels as a whole vector ending where the row ends, when the row is
            // at least a vector wide: it stores some pixels again with the same sums. Masked
            // loads and stores cost NEON a copy through the stack (a `memcpy` call each way):
            // on cortex-a72 the 10- and 5-pixel rows of our default model's late stages cost
            // more in those than in their products.
            let (at, n) = if x + V::N <= self.w {
                (x, V::N)
            } else if self.w >= V::N {
                (self.w - V::N, V::N)
            } else {
                (x, self.w - x)
            };
            // SAFETY: as the caller's: `V` is supported, every load and store in bounds (see
            // `body`): padded rows y·STRIDE .. y·STRIDE + (R − 1)·STRIDE + 3, as before.
            unsafe {
                let mut acc = [self.bias; R];
                let base = self.padded.add(y * STRIDE * self.pw + at);
                for i in 0..(R - 1) * STRIDE + 3 {
                    let row = base.add(i * self.pw);
                    let v: [V; 3] = std::array::from_fn(|c| V::load(row.add(self.columns[c])));
                    for (u, a) in acc.iter_mut().enumerate() {
                        // Output row u's tap row `dy` is padded row u·STRIDE + dy.
                        if i >= u * STRIDE && i - u * STRIDE < 3 {
                            let dy = i - u * STRIDE;
                            for (c, v) in v.iter().enumerate() {
                                *a = V::fma(self.kv[dy * 3 + c], *v, *a);
                            }
                        }
                    }
                }
                for (u, a) in acc.iter().enumerate() {
                    let a = if ACT == Act::Silu as u8 {
                        a.silu()
                    } else if ACT == Act::Relu as u8 {
                        a.relu()
                    } else {
                        *a
                    };
                    let to = self.dst.add((y + u) * self.w + at);
                    if n == V::N {
                        a.store(to);
                    } else {
                        a.store_n(to, n);
                    }
                }
            }
            x += V::N;
        }
    }
}

/// Output height and width of a 3×3, padding-1 convolution with `stride` over `h × w`.
pub fn output_size(h: usize, w: usize, stride: usize) -> (usize, usize) {
    let out = |n: usize| n.saturating_sub(1) / stride.max(1) + 1;
    (out(h), out(w))
}

/// The naive reference: direct loops with bounds tests, in `f64`; the output and the sum of the
/// terms' magnitudes.
pub fn reference(
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
) -> (Vec<f32>, Vec<f32>) {
    let Shape {
        channels,
        height: h,
        width: w,
        stride,
    } = shape;
    let (oh, ow) = shape.output();
    let mut out = vec![0.0; batch * channels * oh * ow];
    let mut magnitude = vec![0.0; out.len()];
    for image in 0..batch * channels {
        let c = image % channels;
        let (src, dst) = (image * h * w, image * oh * ow);
        for y in 0..oh {
            for x in 0..ow {
                let mut acc = f64::from(bias[c]);
                let mut mag = f64::from(bias[c]).abs();
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (sy, sx) = (
                            (y * stride + dy) as isize - 1,
                            (x * stride + dx) as isize - 1,
                        );
                        if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                            continue;
                        }
                        let p = f64::from(weights[c * 9 + dy * 3 + dx])
                            * f64::from(input[src + sy as usize * w + sx as usize]);
                        acc += p;
                        mag += p.abs();
                    }
                }
                out[dst + y * ow + x] = act.reference(acc) as f32;
                magnitude[dst + y * ow + x] = mag as f32;
            }
        }
    }
    (out, magnitude)
}

#[cfg(test)]
mod tests;

//! The register-tile matrix product under the 1×1 and the full convolutions:
//!
//! `y[o][yb + i] = act(bias[o] + Σₖ w[o][k] · x[xb + offsets[k] + i] (+ res[o][yb + i]))`
//! for `i` in one run of contiguous pixels.
//!
//! `offsets` says where row `k` of the right-hand side starts: `k · pixels` for a 1×1
//! convolution (the input planes as they are), or a tap of a phase-split padded image for a
//! strided `kh × kw` convolution (see `conv`), so neither needs packing nor im2col. The run is
//! cut into `OB` output channels × `NV` vectors tiles held in registers while `k` streams; bias,
//! residual and the activation (ReLU, SiLU) are applied as a tile is stored.
//!
//! The weights are packed once, at load ([`pack`]), in panels of [`panel_width`] outputs (the
//! x86 tiles' `OB`), each panel `k`-major: a tile's `OB` weights for one `k` are then
//! consecutive, one pointer that steps by `OB` floats per `k`, each weight a broadcast at a
//! constant displacement from it (AVX-512 folds it into the FMA; NEON loads the eight in two
//! vectors and multiplies by lane). Read from `OB` rows `k_len` apart, as before, each `k` cost
//! eight broadcasts from eight row pointers and their address arithmetic beside 16 FMAs. The
//! portable tiles keep the rows (panel width 1).
//!
//! Tiles per instruction set (sums in registers + input vectors): AVX-512 8×48 (24 + 3 zmm),
//! AVX2 6×16 (12 + 2 ymm), NEON 8×8 (16 + 2 q), portable 4×8 (eight 4-lane arrays); outputs
//! left over by those are done in tiles of 4, 2 and 1. (AVX2 4×24, which would leave nothing
//! over at OSNet's widths, measured 1.4× slower than 6×16: spills.)

use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::{Act, Isa};

mod copy;
use copy::{copies_blocks, copy_block, scratch};

/// How a vector type takes the products of a tile: one `k` at a time, each weight broadcast
/// (AVX-512 folds the broadcast into the FMA's memory operand, AVX2 loads it with
/// `vbroadcastss`), or — NEON, whose FMA can take its multiplier from a lane of another
/// register — the eight weights of a `k` in two loads and the FMAs by lane, four `k` per
/// iteration: 17 other instructions beside 64 FMAs, where reading the weights from rows (four
/// `k` of a row per load, one row pointer per output) took 29.
trait Accumulate: Lanes {
    /// Adds `w[j][k] · x[offsets[k] + v·N + i]` to `acc[j][v]` for all `k`, the tile's weights a
    /// whole panel of `OB` outputs (`w[k·OB + j]`), and returns `k_len`; or returns 0 where the
    /// type has no such product (the caller does every `k` one by one).
    ///
    /// # Safety
    /// As `tile`: every access in bounds, the type's instructions available.
    #[inline(always)]
    unsafe fn accumulate_panel<const OB: usize, const NV: usize>(
        _acc: &mut [[Self; NV]; OB],
        _w: *const f32,
        _k_len: usize,
        _x: *const f32,
        _offsets: *const usize,
    ) -> usize {
        0
    }
}

#[cfg(not(target_arch = "aarch64"))]
impl Accumulate for Portable {}

#[cfg(target_arch = "x86_64")]
impl Accumulate for std::arch::x86_64::__m256 {}

#[cfg(target_arch = "x86_64")]
impl Accumulate for std::arch::x86_64::__m512 {}

#[cfg(target_arch = "aarch64")]
impl Accumulate for std::arch::aarch64::float32x4_t {
    #[inline(always)]
    unsafe fn accumulate_panel<const OB: usize, const NV: usize>(
        acc: &mut [[Self; NV]; OB],
        w: *const f32,
        k_len: usize,
        x: *const f32,
        offsets: *const usize,
    ) -> usize {
        use std::arch::aarch64::{float32x4_t, vfmaq_laneq_f32, vld1q_f32};
        if OB != 8 {
            return 0;
        }
        /// The products of one `k`: `x` its row of the input, `w` its 8 weights.
        #[inline(always)]
        unsafe fn step<const OB: usize, const NV: usize>(
            acc: &mut [[float32x4_t; NV]; OB],
            x: *const f32,
            w: *const f32,
        ) {
            // SAFETY: as `accumulate_panel`'s caller's: `x` has NV vectors, `w` 8 floats.
            unsafe {
                let xs: [float32x4_t; NV] = std::array::from_fn(|v| vld1q_f32(x.add(v * 4)));
                let ws = [vld1q_f32(w), vld1q_f32(w.add(4))];
                for (j, row) in acc.iter_mut().enumerate() {
                    let wj = ws[j / 4];
                    for (a, xv) in row.iter_mut().zip(&xs) {
                        *a = match j % 4 {
                            0 => vfmaq_laneq_f32::<0>(*a, *xv, wj),
                            1 => vfmaq_laneq_f32::<1>(*a, *xv, wj),
                            2 => vfmaq_laneq_f32::<2>(*a, *xv, wj),
                            _ => vfmaq_laneq_f32::<3>(*a, *xv, wj),
                        };
                    }
                }
            }
        }
        let blocks = k_len / 4 * 4;
        let mut k = 0;
        // The sums in a local copy: with the caller's array behind the reference, LLVM stored
        // all 16 registers back to the stack after every `k` in the SiLU tiles (the detector's
        // 1×1 layers cost 16% more instructions on cortex-a72).
        let mut sums = *acc;
        // SAFETY: `k < k_len`: the rows and weights the tile reads one by one; every output's
        // `k`s still added in order.
        unsafe {
            while k < blocks {
                for l in 0..4 {
                    step(&mut sums, x.add(*offsets.add(k + l)), w.add((k + l) * 8));
                }
                k += 4;
            }
            while k < k_len {
                step(&mut sums, x.add(*offsets.add(k)), w.add(k * 8));
                k += 1;
            }
        }
        *acc = sums;
        k_len
    }
}

/// Outputs per full tile, and per panel of packed weights, of each instruction set's tiles: both
/// [`panel_width`] (the packing) and `Product::run_shared` (the tiles) read them from here.
#[cfg(target_arch = "x86_64")]
const AVX512_OB: usize = 8;
#[cfg(target_arch = "x86_64")]
const AVX2_OB: usize = 6;
#[cfg(target_arch = "aarch64")]
const NEON_OB: usize = 8;

/// How many outputs share a panel of packed weights on `isa` (see the module docs): the tile's
/// `OB` (x86, NEON), or 1 (rows as they are: the portable tiles). Work split between threads by output channels
/// must cut at multiples of it.
pub fn panel_width(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => AVX512_OB,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => AVX2_OB,
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => NEON_OB,
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => 1,
    }
}

/// Vectors of pixels per full tile (the tiles' `NV`) but on AVX-512.
const TILE_VECTORS: usize = 2;

/// AVX-512's `NV`: its 32 registers hold 8 × 3 sums beside the three vectors of a row, so each
/// `k` takes 11 loads (three of the row, eight weights) for 24 FMAs where 8 × 2 took 10 for 16.
/// Alone (Intel Xeon model 106, SiLU layers, alternating in one process), YOLOX's 1×1 layers
/// ran 5–15% faster (64 → 64 over 4,784 pixels 429 → 377 µs, 256 → 64 over 1,196 486 → 398)
/// and OSNet's late ones 12–24% (48 → 48 over 200 pixels 8.3 → 7.1 µs).
#[cfg(target_arch = "x86_64")]
const AVX512_VECTORS: usize = 3;

/// Floats of two vectors of `isa`: the unit [`k_chunk`] measures a block's rows in, and with it
/// the ops' rule for taking a concatenation's parts into one product (`ops::pointwise`). (A full
/// tile reads `NV` vectors of each row: two, three on AVX-512.)
pub fn block_floats(isa: Isa) -> usize {
    2 * super::simd::lanes(isa)
}

/// `outputs × k_len` row-major weights in the layout `isa`'s tiles read: panels of
/// [`panel_width`] outputs (the last one narrower), each stored `k`-major. A panel of `w`
/// outputs from output `s` on starts where row `s` did (`s · k_len`), so the weights of a range
/// of outputs that starts at a multiple of the width are the same slice as in the rows.
pub fn pack(isa: Isa, rows: &[f32], outputs: usize) -> Vec<f32> {
    assert!(
        outputs > 0 && rows.len().is_multiple_of(outputs),
        "weights are outputs × k"
    );
    let k_len = rows.len() / outputs;
    let width = panel_width(isa);
    let mut packed = vec![0.0; rows.len()];
    for start in (0..outputs).step_by(width) {
        let w = width.min(outputs - start);
        let panel = &mut packed[start * k_len..(start + w) * k_len];
        for j in 0..w {
            for (k, &v) in rows[(start + j) * k_len..][..k_len].iter().enumerate() {
                panel[k * w + j] = v;
            }
        }
    }
    packed
}

/// The `outputs × k_len` row-major weights `packed` holds ([`pack`]'s inverse).
pub fn unpack(isa: Isa, packed: &[f32], outputs: usize) -> Vec<f32> {
    assert!(
        outputs > 0 && packed.len().is_multiple_of(outputs),
        "weights are outputs × k"
    );
    let k_len = packed.len() / outputs;
    let width = panel_width(isa);
    let mut rows = vec![0.0; packed.len()];
    for start in (0..outputs).step_by(width) {
        let w = width.min(outputs - start);
        let panel = &packed[start * k_len..(start + w) * k_len];
        for j in 0..w {
            for (k, v) in rows[(start + j) * k_len..][..k_len].iter_mut().enumerate() {
                *v = panel[k * w + j];
            }
        }
    }
    rows
}

/// The operands of a product; see the module docs.
#[derive(Clone, Copy)]
pub(super) struct Product<'a> {
    /// `outputs × k`, packed for the instruction set the product runs on ([`pack`]).
    pub weights: &'a [f32],
    /// One per output.
    pub bias: &'a [f32],
    /// One per `k`: where that row starts in its input, relative to a run's base.
    pub offsets: &'a [usize],
    /// The inputs the rows are read from: the first `parts[0]` rows from `x[0]`, the next
    /// `parts[1]` from `x[1]`… (a 1×1 convolution of a concatenation, whose parts tract keeps
    /// apart; one input for everything else).
    pub x: &'a [&'a [f32]],
    pub parts: &'a [usize],
    /// Distance between output channels in `y` (and `res`).
    pub y_stride: usize,
    pub res: Option<&'a [f32]>,
    /// The residual added after the activation (YOLOX's bottlenecks: `act(Σ) + r`), not before
    /// it (ResNet's, OSNet's: `act(Σ + r)`).
    pub res_after_act: bool,
    pub act: Act,
    /// Whether a block whose rows are not aligned to a vector may go through an aligned copy
    /// ([`copies_blocks`]): for a 1×1 convolution, each row a plane of its own; not for a
    /// strided convolution, whose taps read the same lines again.
    pub copy_rows: bool,
}

impl Product<'_> {
    fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// The start of the input row `k` is read from.
    fn row_base(&self, k: usize) -> *const f32 {
        let mut k0 = 0;
        for (x, &rows) in self.x.iter().zip(self.parts) {
            if k < k0 + rows {
                return x.as_ptr();
            }
            k0 += rows;
        }
        unreachable!("row {k} of {k0}")
    }

    /// Where weight `(o, k)` is in `weights`, packed in panels of `width` outputs.
    fn weight_at(&self, width: usize, o: usize, k: usize) -> usize {
        let k_len = self.offsets.len();
        let start = o / width * width;
        start * k_len + k * width.min(self.outputs() - start) + (o - start)
    }

    /// All outputs for the `len` pixels of one run: `x` from `xb`, `y` from `yb`, into the
    /// `y_len` floats at `y`, of which other threads may write other pixels meanwhile: this run
    /// writes only pixels `yb..yb + len` of each output channel (`o · y_stride + yb + i`; the
    /// last vector of a run overlaps pixels of the same run, never the pixels beyond it).
    ///
    /// Panics if any access would fall outside `x`, `y` or `res` (checked once, up front).
    ///
    /// # Safety
    /// `y` is valid for reads and writes of `y_len` floats, and while this runs no other thread
    /// reads or writes those pixels of any output channel.
    pub unsafe fn run_shared(
        &self,
        isa: Isa,
        xb: usize,
        yb: usize,
        len: usize,
        y: *mut f32,
        y_len: usize,
    ) {
        let k_len = self.offsets.len();
        assert_eq!(
            self.weights.len(),
            self.outputs() * k_len,
            "weights are outputs × k"
        );
        if len == 0 || self.outputs() == 0 {
            return;
        }
        assert_eq!(self.x.len(), self.parts.len(), "one row count per input");
        assert_eq!(
            self.parts.iter().sum::<usize>(),
            k_len,
            "one offset per row"
        );
        let mut k0 = 0;
        for (x, &rows) in self.x.iter().zip(self.parts) {
            let offsets = &self.offsets[k0..k0 + rows];
            let last_x = xb + offsets.iter().max().copied().unwrap_or(0) + len;
            assert!(rows == 0 || last_x <= x.len(), "x run out of bounds");
            k0 += rows;
        }
        let last_y = (self.outputs() - 1) * self.y_stride + yb + len;
        assert!(last_y <= y_len, "y run out of bounds");
        if let Some(r) = self.res {
            assert!(last_y <= r.len(), "residual run out of bounds");
        }
        assert!(isa.is_available(), "{isa} is not available on this CPU");
        // SAFETY: bounds checked above; the instruction set is available; `y` as the caller
        // promised.
        unsafe {
            match isa {
                #[cfg(target_arch = "aarch64")]
                Isa::Baseline => {
                    drive::<std::arch::aarch64::float32x4_t, NEON_OB, TILE_VECTORS, true>(
                        self, xb, yb, len, y,
                    )
                }
                #[cfg(not(target_arch = "aarch64"))]
                Isa::Baseline => drive::<Portable, 4, TILE_VECTORS, false>(self, xb, yb, len, y),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => x86::avx2(self, xb, yb, len, y),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::avx512(self, xb, yb, len, y),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    use super::{AVX2_OB, AVX512_OB, AVX512_VECTORS, Product, TILE_VECTORS, drive};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(p: &Product, xb: usize, yb: usize, len: usize, y: *mut f32) {
        // SAFETY: forwarded from `Product::run_shared`.
        unsafe { drive::<__m256, AVX2_OB, TILE_VECTORS, true>(p, xb, yb, len, y) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(p: &Product, xb: usize, yb: usize, len: usize, y: *mut f32) {
        // SAFETY: forwarded from `Product::run_shared`.
        unsafe { drive::<__m512, AVX512_OB, AVX512_VECTORS, true>(p, xb, yb, len, y) }
    }
}

/// The run's tiles with SiLU (`p.act`) or without, compiled apart so that its code and constants
/// stay out of the other tiles (a run-time choice among three activations per stored vector cost
/// OSNet x0.25 11% more instructions on cortex-a72). `PANEL`: the weights are packed in panels
/// of `OB` outputs ([`pack`], [`panel_width`] is `OB`), else rows.
///
/// # Safety
/// As `Product::run_shared` checked: every access in bounds, `V` supported.
#[inline(always)]
unsafe fn drive<V: Accumulate, const OB: usize, const NV: usize, const PANEL: bool>(
    p: &Product,
    xb: usize,
    yb: usize,
    len: usize,
    y: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match p.act {
            Act::Silu => tiles::<V, OB, NV, true, PANEL>(p, xb, yb, len, y),
            _ => tiles::<V, OB, NV, false, PANEL>(p, xb, yb, len, y),
        }
    }
}

/// Full `OB × NV` tiles, then single-vector tiles, then the last pixels as one vector that
/// overlaps the stored ones; one pixel at a time only in runs shorter than a vector. Where the
/// rows of a block are not each a whole number of vectors from an aligned address
/// ([`copies_blocks`]), each block's rows are first copied into an aligned scratch, which its
/// tiles read instead.
///
/// # Safety
/// As `drive`.
#[inline(always)]
unsafe fn tiles<
    V: Accumulate,
    const OB: usize,
    const NV: usize,
    const SILU: bool,
    const PANEL: bool,
>(
    p: &Product,
    xb: usize,
    yb: usize,
    len: usize,
    y: *mut f32,
) {
    let outputs = p.outputs();
    let full_o = outputs / OB * OB;
    let mut i = 0;
    let input_bytes = p.x.iter().map(|x| x.len()).sum::<usize>() * size_of::<f32>();
    let far = cfg!(target_arch = "x86_64") && input_bytes >= PREFETCH_FROM_BYTES;
    let chunk = k_chunk::<V, NV>(p);
    let floats = NV * V::N;
    let k_len = p.offsets.len();
    // The blocks' rows copied into the thread's scratch first, where `copies_blocks` says so.
    let copied = (len >= floats && copies_blocks::<V>(p, xb, OB, input_bytes))
        // SAFETY: used by this run only.
        .then(|| unsafe { scratch(k_len, floats) });
    let parts = [k_len];
    // SAFETY: as the caller's: `Product::run_shared` checked the bounds and the instruction set;
    // the scratch holds `k_len · floats` floats, and nothing else uses it while this runs (a
    // product runs no other product).
    unsafe {
        while i + floats <= len {
            if far {
                prefetch_block::<V, NV>(p, xb + i + floats);
            }
            if let Some((rows, offsets)) = copied {
                copy_block::<V, NV>(p, xb + i, rows);
                let xs = [std::slice::from_raw_parts(
                    rows.cast_const(),
                    k_len * floats,
                )];
                let view = Product {
                    offsets,
                    x: &xs,
                    parts: &parts,
                    ..*p
                };
                block::<V, OB, NV, SILU, PANEL>(&view, 0, yb + i, y, chunk, full_o);
            } else {
                block::<V, OB, NV, SILU, PANEL>(p, xb + i, yb + i, y, chunk, full_o);
            }
            i += floats;
        }
        let all = Ks::all(p);
        while i + V::N <= len {
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, 1, SILU, PANEL, false>(p, o0, (o0, OB), xb + i, yb + i, y, all);
            }
            rest::<V, OB, 1, SILU, PANEL, false>(p, full_o, xb + i, yb + i, y, all);
            i += V::N;
        }
        if i < len && len >= V::N {
            // The last pixels as one vector that ends where the run ends: it overlaps pixels
            // stored above and stores them again with the same sums (each output's `k`s in the
            // same order), instead of a scalar tail for every output. A stem whose rows are not
            // a whole number of vectors (40 pixels at a 160×80 input) spent 14× its time there.
            let last = len - V::N;
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, 1, SILU, PANEL, false>(p, o0, (o0, OB), xb + last, yb + last, y, all);
            }
            rest::<V, OB, 1, SILU, PANEL, false>(p, full_o, xb + last, yb + last, y, all);
            i = len;
        }
        while i < len {
            for o in 0..outputs {
                single(p, if PANEL { OB } else { 1 }, o, xb + i, yb + i, y);
            }
            i += 1;
        }
    }
}

/// Every output's `NV` vectors of pixels from `xb` (into `yb`): its `OB`-output tiles, then the
/// outputs left over; in chunks of `k` where `chunk` is less than all of it (see [`k_chunk`]).
///
/// # Safety
/// As `drive`, for this block.
#[inline(always)]
unsafe fn block<
    V: Accumulate,
    const OB: usize,
    const NV: usize,
    const SILU: bool,
    const PANEL: bool,
>(
    p: &Product,
    xb: usize,
    yb: usize,
    y: *mut f32,
    chunk: usize,
    full_o: usize,
) {
    let all = Ks::all(p);
    // SAFETY: forwarded.
    unsafe {
        if chunk < all.end {
            // Long `k`: the block's rows a chunk at a time, every tile's sums kept in the
            // output between chunks (see `k_chunk`).
            let mut ks = Ks { start: 0, end: 0 };
            while ks.end < all.end {
                ks.start = ks.end;
                ks.end = (ks.start + chunk).min(all.end);
                for o0 in (0..full_o).step_by(OB) {
                    tile::<V, OB, NV, SILU, PANEL, true>(p, o0, (o0, OB), xb, yb, y, ks);
                }
                rest::<V, OB, NV, SILU, PANEL, true>(p, full_o, xb, yb, y, ks);
            }
        } else {
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, NV, SILU, PANEL, false>(p, o0, (o0, OB), xb, yb, y, all);
            }
            rest::<V, OB, NV, SILU, PANEL, false>(p, full_o, xb, yb, y, all);
        }
    }
}

/// The least input (all parts, bytes) of a product whose blocks [`prefetch_block`] asks for:
/// OSNet x0.25's layers (at most 0.5 MiB, kept in the L2 cache between layers) took 1.58 →
/// 1.68 ms per crop with every block's rows prefetched; the detector's first stages and stem
/// (1.2–3.7 MiB) gained as much from 1 MiB on as from 256 KiB on, and less from 2 MiB on.
const PREFETCH_FROM_BYTES: usize = 1 << 20;

/// On x86, for a product's input of at least [`PREFETCH_FROM_BYTES`], asks for the next block's input (`NV` vectors from `xb` of every row `k`) to be brought
/// into the L1 cache while this block's tiles run. A block's first tile reads `k_len` rows a plane
/// apart, and the hardware's prefetchers do not follow that many streams: at YOLOX's early
/// resolutions (planes of 19,136 pixels, 16–32 of them, beyond the L2 cache) the tiles waited on
/// those loads (`perf annotate`: the loads of the rows the hottest instructions). The detector's
/// 1×1 layers and stem took 6% and 15% less time with this (Intel Xeon, AVX-512). ARM is left
/// as it was: its cost here is counted in instructions under QEMU, where a prefetch is one more
/// and a stall is none, so there is nothing to measure it by. A prefetch never faults: the
/// addresses, past the end of `x` for the last block, are formed without being dereferenced.
#[inline(always)]
fn prefetch_block<V: Lanes, const NV: usize>(p: &Product, xb: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut offsets = p.offsets.iter();
        for (x, &rows) in p.x.iter().zip(p.parts) {
            for &offset in offsets.by_ref().take(rows) {
                let row = x.as_ptr().wrapping_add(xb + offset);
                // One prefetch per 64-byte line (16 floats) of the block.
                for line in (0..NV * V::N).step_by(16) {
                    // SAFETY: SSE's `prefetcht0` (x86-64's baseline) only hints; any address
                    // will do.
                    unsafe {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            row.wrapping_add(line).cast(),
                        )
                    };
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, xb);
}

/// The outputs from `o0` on that do not fill an `OB` tile, in tiles of 4, 2 and 1: one output
/// at a time reloads the pixels for every output, and AVX2's 6-output tiles leave 4 of 16 and
/// 64 and 2 of 32 and 128 outputs (OSNet's widths) over. Measured on AVX2 (AMD EPYC, our
/// default model, per crop): 2.06–2.25 ms with single-output tails, 1.77–1.84 ms so. The sums
/// are the same either way: each output's `k`s are added in the same order whatever the tile.
/// With packed weights these outputs are the last panel, `outputs − o0` wide.
#[inline(always)]
unsafe fn rest<
    V: Accumulate,
    const OB: usize,
    const NV: usize,
    const SILU: bool,
    const PANEL: bool,
    const CHUNKED: bool,
>(
    p: &Product,
    mut o0: usize,
    xb: usize,
    yb: usize,
    y: *mut f32,
    ks: Ks,
) {
    let outputs = p.outputs();
    let panel = (o0, outputs - o0);
    // SAFETY: as the caller's: `Product::run_shared` checked the bounds and the instruction set.
    unsafe {
        while outputs - o0 >= 4 {
            tile::<V, 4, NV, SILU, PANEL, CHUNKED>(p, o0, panel, xb, yb, y, ks);
            o0 += 4;
        }
        if outputs - o0 >= 2 {
            tile::<V, 2, NV, SILU, PANEL, CHUNKED>(p, o0, panel, xb, yb, y, ks);
            o0 += 2;
        }
        if o0 < outputs {
            tile::<V, 1, NV, SILU, PANEL, CHUNKED>(p, o0, panel, xb, yb, y, ks);
        }
    }
}

/// The rows `start..end` of the product's `k` a tile adds: all of them, or a chunk
/// ([`k_chunk`]).
#[derive(Clone, Copy)]
struct Ks {
    start: usize,
    end: usize,
}

impl Ks {
    fn all(p: &Product) -> Self {
        Ks {
            start: 0,
            end: p.offsets.len(),
        }
    }
}

/// The rows of `k` a block's tiles take at a time: all of them, unless a block of them would
/// not stay in the L1 cache beside the weights streaming past (x86). Then the tiles of a block
/// go through `k` in chunks of [`K_CHUNK_BYTES`] of the block (128 rows at AVX-512's 32 floats
/// a row), each tile's sums stored in the output after a chunk and loaded again for the next:
/// the sums of every output still add its `k`s in order, so the values are the same, bit for
/// bit. YOLOX's 256-row layers (each block's rows 32 KiB) ran at 52 (256→64 over 1,196 pixels)
/// and 61 (256→256 over 299) G multiply-adds/s, where 64-row ones ran at 70; in chunks 65 and
/// 73.5 (Intel Xeon model 207, AVX-512, SiLU layers alone). Chunks of 8 KiB made 128-row layers
/// slower (55 → 47). ARM keeps whole blocks: no cache is counted under QEMU. Nor does AVX2: its
/// 8-float rows make a 512-row block 32 KiB, and in chunks of 256 rows YOLOX's SPP layer (512 →
/// 256 over 299 pixels, four parts) ran at 18 G multiply-adds/s, whole at 34 (the same Xeon
/// as an AVX2 machine). With 16 vector registers (AVX-512 has 32) the chunked tile's 12 sums
/// went through the stack between chunks and parts: the AVX2 tile code had 116 vector stores
/// to the stack and 59 loads from it with chunks, 25 and 1 without.
#[inline(always)]
fn k_chunk<V: Lanes, const NV: usize>(p: &Product) -> usize {
    if cfg!(target_arch = "x86_64")
        && V::N >= 16
        && 2 * V::N * size_of::<f32>() * p.offsets.len() > K_CHUNK_BYTES
    {
        K_CHUNK_BYTES / (2 * V::N * size_of::<f32>())
    } else {
        p.offsets.len()
    }
}

/// A chunk of a block's rows, in bytes (see [`k_chunk`]).
const K_CHUNK_BYTES: usize = 16 << 10;

/// Outputs `o0..o0+OB` × pixels `xb..xb + NV·V::N`; with `PANEL`, all in the panel of
/// `panel.1` outputs from `panel.0` on.
#[inline(always)]
unsafe fn tile<
    V: Accumulate,
    const OB: usize,
    const NV: usize,
    const SILU: bool,
    const PANEL: bool,
    const CHUNKED: bool,
>(
    p: &Product,
    o0: usize,
    panel: (usize, usize),
    xb: usize,
    yb: usize,
    y: *mut f32,
    ks: Ks,
) {
    let k_len = p.offsets.len();
    let (w, offsets) = (p.weights.as_ptr(), p.offsets.as_ptr());
    // The first chunk (or all of `k`) starts from the bias, a later one from the sums the one
    // before stored; the last adds the residual and the activation.
    let (first, last) = (!CHUNKED || ks.start == 0, !CHUNKED || ks.end == k_len);
    // SAFETY: as the caller's: `Product::run_shared` checked the bounds and the instruction set.
    unsafe {
        let mut acc = [[V::splat(0.0); NV]; OB];
        for (j, row) in acc.iter_mut().enumerate() {
            if first {
                *row = [V::splat(*p.bias.get_unchecked(o0 + j)); NV];
            } else {
                let at = (o0 + j) * p.y_stride + yb;
                *row = std::array::from_fn(|v| V::load(y.add(at + v * V::N)));
            }
        }
        let w = w.add(if PANEL {
            panel.0 * k_len + (o0 - panel.0)
        } else {
            o0 * k_len
        });
        let k_step = if PANEL { panel.1 } else { 1 };
        if let [x] = p.x {
            // One input (all but a concatenation's product), straight: in a loop over the
            // parts LLVM kept the sums in memory between parts, and OSNet x0.25 cost 1.4% more
            // instructions on cortex-a72.
            let (w, offsets) = (w.add(ks.start * k_step), offsets.add(ks.start));
            let n = ks.end - ks.start;
            acc = rows::<V, OB, NV, PANEL>(acc, panel.1, (x.as_ptr(), xb), w, offsets, n, k_len);
        } else {
            let mut k0 = 0;
            for (x, &n) in p.x.iter().zip(p.parts) {
                // This part's rows `k0..k0 + n`, those of them in the chunk.
                let (s, e) = (k0.max(ks.start), (k0 + n).min(ks.end));
                if s < e {
                    let (w, offsets) = (w.add(s * k_step), offsets.add(s));
                    acc = rows::<V, OB, NV, PANEL>(
                        acc,
                        panel.1,
                        (x.as_ptr(), xb),
                        w,
                        offsets,
                        e - s,
                        k_len,
                    );
                }
                k0 += n;
            }
        }
        // The residual, added before the activation or after it.
        let res = p.res.map(|r| r.as_ptr());
        let (before, after) = if p.res_after_act {
            (None, res)
        } else {
            (res, None)
        };
        for (j, row) in acc.iter().enumerate() {
            let at = (o0 + j) * p.y_stride + yb;
            for (v, a) in row.iter().enumerate() {
                let mut a = *a;
                if !last {
                    a.store(y.add(at + v * V::N));
                    continue;
                }
                if let Some(r) = before {
                    a = a.add(V::load(r.add(at + v * V::N)));
                }
                a = a.activate::<SILU>(p.act);
                if let Some(r) = after {
                    a = a.add(V::load(r.add(at + v * V::N)));
                }
                a.store(y.add(at + v * V::N));
            }
        }
    }
}

/// Adds the products of `n` rows of one input to a tile's sums: row `k` at `x.0 + x.1 +
/// offsets[k]`, the weight of the tile's output `j` at `w + j·j_step + k·k_step` (`PANEL`: the
/// weights in a panel of `width` outputs, `k`-major; else rows of the whole `k`). The sums go in
/// and out by value, so that they stay in registers.
///
/// # Safety
/// As `tile`'s.
#[inline(always)]
unsafe fn rows<V: Accumulate, const OB: usize, const NV: usize, const PANEL: bool>(
    mut acc: [[V; NV]; OB],
    width: usize,
    x: (*const f32, usize),
    w: *const f32,
    offsets: *const usize,
    n: usize,
    k_len: usize,
) -> [[V; NV]; OB] {
    let (j_step, k_step) = if PANEL { (1, width) } else { (k_len, 1) };
    // SAFETY: as the caller's.
    unsafe {
        // NEON's product by lane takes a whole panel's weights per `k`.
        let done = if PANEL && width == OB {
            V::accumulate_panel(&mut acc, w, n, x.0.add(x.1), offsets)
        } else {
            0
        };
        for k in done..n {
            let xk = x.0.add(x.1 + *offsets.add(k));
            let xv: [V; NV] = std::array::from_fn(|v| V::load(xk.add(v * V::N)));
            for (j, row) in acc.iter_mut().enumerate() {
                let wjk = V::splat(*w.add(j * j_step + k * k_step));
                for (a, xv) in row.iter_mut().zip(&xv) {
                    *a = V::fma(wjk, *xv, *a);
                }
            }
        }
    }
    acc
}

/// One output, one pixel; the weights in panels of `width` outputs (1: rows).
#[inline(always)]
unsafe fn single(p: &Product, width: usize, o: usize, xb: usize, yb: usize, y: *mut f32) {
    let k_len = p.offsets.len();
    // SAFETY: as the caller's: `Product::run_shared` checked the bounds and the instruction set.
    unsafe {
        let mut acc = *p.bias.get_unchecked(o);
        for k in 0..k_len {
            acc += p.weights.get_unchecked(p.weight_at(width, o, k))
                * *p.row_base(k).add(xb + *p.offsets.get_unchecked(k));
        }
        let at = o * p.y_stride + yb;
        match p.res {
            Some(r) if p.res_after_act => *y.add(at) = p.act.apply(acc) + r.get_unchecked(at),
            Some(r) => *y.add(at) = p.act.apply(acc + r.get_unchecked(at)),
            None => *y.add(at) = p.act.apply(acc),
        }
    }
}

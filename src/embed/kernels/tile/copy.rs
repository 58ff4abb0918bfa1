//! What the tiles read through a copy (x86): a block of a 1×1 layer's rows that do not start on
//! a whole vector, copied into an aligned scratch first ([`copies_blocks`], [`copy_block`]), and
//! a convolution's short output rows, whose input rows are copied side by side so that the
//! tiles run across several of them ([`Product::run_rows`], `gathered`). Both give the sums of
//! the plain runs in the same order: the same bits.

use super::super::simd::Lanes;
use super::super::{Isa, MAX_LANES};
use super::Product;
#[cfg(target_arch = "x86_64")]
use super::{AVX512_OB, AVX512_VECTORS, Accumulate, drive};

impl Product<'_> {
    /// `rows` runs of `len` pixels — a convolution's output rows: run `r` from `xb + r ·
    /// x_step` in the input into `yb + r · len` of the output (the output's rows one after the
    /// other) — as [`Product::run_shared`] runs each. With AVX-512, rows of 16 to [`GATHER_MAX`]
    /// pixels that are not a whole number of a tile's blocks go `GATHER_ROWS` at a time through a
    /// copy of their input rows side by side (`gathered`), so that the tiles run across them.
    ///
    /// Panics if any access would fall outside `x` or `y` (checked once, up front).
    ///
    /// # Safety
    /// As `run_shared`, for those rows' pixels.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_rows(
        &self,
        isa: Isa,
        xb: usize,
        x_step: usize,
        yb: usize,
        len: usize,
        rows: usize,
        y: *mut f32,
        y_len: usize,
    ) {
        if rows == 0 {
            return;
        }
        // Rows of at least a vector, so that a row alone would also run in vectors (the same
        // sums, bit for bit, however the rows are grouped: threads cut them anywhere).
        #[cfg(target_arch = "x86_64")]
        let avx512 = isa == Isa::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        let gathers = avx512
            && rows > 1
            && self.x.len() == 1
            && self.outputs() >= GATHER_MIN_OUTPUTS
            && (MAX_LANES..=GATHER_MAX).contains(&len)
            && !len.is_multiple_of(GATHERED_BLOCK);
        if !gathers {
            for r in 0..rows {
                // SAFETY: forwarded; `run_shared` checks each row's bounds.
                unsafe { self.run_shared(isa, xb + r * x_step, yb + r * len, len, y, y_len) };
            }
            return;
        }
        // The bounds of every row's reads and of all the rows' writes, as `run_shared` checks
        // them for one run.
        let k_len = self.offsets.len();
        assert_eq!(
            self.weights.len(),
            self.outputs() * k_len,
            "weights are outputs × k"
        );
        assert_eq!(self.parts, [k_len], "one input");
        let last_x =
            xb + (rows - 1) * x_step + self.offsets.iter().max().copied().unwrap_or(0) + len;
        assert!(last_x <= self.x[0].len(), "x rows out of bounds");
        let last_y = (self.outputs() - 1) * self.y_stride + yb + rows * len;
        assert!(last_y <= y_len, "y rows out of bounds");
        assert!(isa.is_available(), "{isa} is not available on this CPU");
        // SAFETY: bounds checked above; the instruction set (AVX-512: `gathers`) is available.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::avx512_rows(self, xb, x_step, yb, len, rows, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("gathered rows on AVX-512 only");
    }
}

/// Rows a gathered run takes at a time ([`Product::run_rows`]): our default model's stem, 40
/// pixels a row, then runs 160 — three whole blocks and a vector, where a row alone ran in
/// single-vector tiles (8 FMAs for 9 loads) and its last vector overlapped the one before.
/// Alone (Intel Xeon model 106, alternating in one process) that stem, 3 → 32 channels 7×7/2
/// at 160×80, took 488 → 270 µs, 64 outputs at 256×128 1,562 → 1,315; the model 2.615 → 2.385
/// ms a crop, the same bits. AVX2 (16-pixel blocks: 40 is two and a half) gained nothing
/// (354 / 354 µs): it runs rows one by one.
#[cfg(target_arch = "x86_64")]
const GATHER_ROWS: usize = 4;

/// The longest rows [`Product::run_rows`] gathers.
const GATHER_MAX: usize = 128;

/// The fewest outputs a gathered run has: four AVX-512 tiles' worth, over which the copy is
/// spread (with 16, OSNet x0.25's stem, it took 386 → 431 µs).
const GATHER_MIN_OUTPUTS: usize = 32;

/// The floats of a full AVX-512 tile's block.
const GATHERED_BLOCK: usize = 3 * MAX_LANES;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(GATHERED_BLOCK == AVX512_VECTORS * MAX_LANES);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::__m512;

    use super::{AVX512_OB, AVX512_VECTORS, Product, gathered};

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512_rows(
        p: &Product,
        xb: usize,
        x_step: usize,
        yb: usize,
        len: usize,
        rows: usize,
        y: *mut f32,
    ) {
        // SAFETY: forwarded from `Product::run_rows`.
        unsafe { gathered::<__m512, AVX512_OB, AVX512_VECTORS>(p, (xb, x_step), yb, len, rows, y) }
    }
}

/// [`Product::run_rows`]' gathered runs: up to [`GATHER_ROWS`] rows at a time, each row `k` of
/// those rows' input copied side by side into the thread's scratch ([`scratch`]), then one run
/// of tiles across them into the output rows, which follow one another. The same sums: each
/// output's `k`s in the same order.
///
/// # Safety
/// As `Product::run_rows` checked: every access in bounds, `V` supported; one input.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gathered<V: Accumulate, const OB: usize, const NV: usize>(
    p: &Product,
    (xb, x_step): (usize, usize),
    yb: usize,
    len: usize,
    rows: usize,
    y: *mut f32,
) {
    let k_len = p.offsets.len();
    let x = p.x[0].as_ptr();
    let mut r0 = 0;
    while r0 < rows {
        let n = GATHER_ROWS.min(rows - r0);
        let run = n * len;
        // SAFETY: used in this iteration only.
        let (to, offsets) = unsafe { scratch(k_len, run) };
        // SAFETY: the scratch holds `k_len · run` floats and nothing else uses it meanwhile
        // (the view below does not copy). Every read is inside `x` as `run_rows` checked.
        unsafe {
            for (k, &offset) in p.offsets.iter().enumerate() {
                for r in 0..n {
                    let from = x.add(xb + (r0 + r) * x_step + offset);
                    super::super::simd::copy::<V>(from, to.add(k * run + r * len), len);
                }
            }
            let xs = [std::slice::from_raw_parts(to.cast_const(), k_len * run)];
            let parts = [k_len];
            let view = Product {
                offsets,
                x: &xs,
                parts: &parts,
                copy_rows: false,
                ..*p
            };
            drive::<V, OB, NV, true>(&view, 0, yb + r0 * len, run, y);
        }
        r0 += n;
    }
}

/// Whether a run's blocks go through an aligned copy ([`copy_block`]): on x86, for a product
/// that allows it (`Product::copy_rows`) with at least two full tiles of outputs and an input
/// (`input_bytes`, all parts) beyond the L1 cache ([`COPY_FROM_BYTES`]), where some row of a block does not start on a
/// whole vector — a 1×1 layer whose planes are not a whole number of vectors, YOLOX's 26×46 and
/// 13×23. Unaligned, every AVX-512 load of a row there crossed two cache lines; copied, the
/// tiles read one aligned, contiguous block. Alone (Intel Xeon model 106, alternating in one
/// process), 128 → 128 over 1,196 pixels with SiLU took 440 → 336 µs on AVX-512 and 509 → 454
/// on AVX2, 256 → 256 over 299 375 → 321 and 480 → 423; the detector at 736×416 25.4 → 24.0 ms
/// (AVX-512), the same bits. Not for YOLOX's stem, whose taps read the same lines nine times
/// (its band op took 3.9 → 4.3 ms copied), nor for inputs within the L1 cache (OSNet's
/// 48 × 200 and 64 × 50 layers took 4–8% more).
#[inline(always)]
pub(super) fn copies_blocks<V: Lanes>(
    p: &Product,
    xb: usize,
    ob: usize,
    input_bytes: usize,
) -> bool {
    if !cfg!(target_arch = "x86_64")
        || !p.copy_rows
        || p.outputs() < 2 * ob
        || input_bytes < COPY_FROM_BYTES
    {
        return false;
    }
    let align = V::N * size_of::<f32>();
    let mut offsets = p.offsets.iter();
    p.x.iter().zip(p.parts).any(|(x, &rows)| {
        offsets.by_ref().take(rows).any(|&offset| {
            !x.as_ptr()
                .wrapping_add(xb + offset)
                .cast::<u8>()
                .addr()
                .is_multiple_of(align)
        })
    })
}

/// The least input (all parts, bytes) whose blocks [`copies_blocks`] copies: more than an L1
/// data cache (32–48 KiB) holds.
const COPY_FROM_BYTES: usize = 64 << 10;

/// Copies the `NV` vectors from `xb` of every row of the product, in order, to `to` (rows
/// `NV · V::N` floats apart).
///
/// # Safety
/// As `drive`; `to` holds `k · NV · V::N` floats and is aligned to a vector.
#[inline(always)]
pub(super) unsafe fn copy_block<V: Lanes, const NV: usize>(p: &Product, xb: usize, to: *mut f32) {
    let mut offsets = p.offsets.iter();
    let mut to = to;
    // SAFETY: forwarded; the rows as `Product::run_shared` checked them.
    unsafe {
        for (x, &rows) in p.x.iter().zip(p.parts) {
            for &offset in offsets.by_ref().take(rows) {
                let from = x.as_ptr().add(xb + offset);
                for v in 0..NV {
                    V::load(from.add(v * V::N)).store(to.add(v * V::N));
                }
                to = to.add(NV * V::N);
            }
        }
    }
}

/// A thread's scratch for [`copy_block`] and `gathered`: the copied rows, and their offsets.
#[derive(Default)]
pub(super) struct Copied {
    rows: Vec<f32>,
    offsets: Vec<usize>,
}

impl Copied {
    /// Room for `k_len` rows of `floats` (aligned to 64 bytes), and the rows' offsets in it
    /// (`k · floats`).
    pub(super) fn get(&mut self, k_len: usize, floats: usize) -> (&mut [f32], &[usize]) {
        const ALIGN: usize = 64 / size_of::<f32>();
        let len = k_len * floats;
        if self.rows.len() < len + ALIGN {
            self.rows.resize(len + ALIGN, 0.0);
        }
        let skip = self.rows.as_ptr().align_offset(64).min(ALIGN);
        if self.offsets.len() < k_len || self.offsets.get(1).is_some_and(|&o| o != floats) {
            self.offsets.clear();
            self.offsets.extend((0..k_len.max(2)).map(|k| k * floats));
        }
        (&mut self.rows[skip..skip + len], &self.offsets[..k_len])
    }
}

thread_local! {
    static COPIED: std::cell::RefCell<Copied> = std::cell::RefCell::new(Copied::default());
}

/// The thread's scratch for `k_len` rows of `floats` ([`Copied::get`]), as a pointer to the
/// rows and their offsets. Taken out of `with_borrow_mut`'s closure: a closure does not take
/// its caller's target features, and tiles run inside one ran 40× slower.
///
/// # Safety
/// The caller uses the results only until its next call on this thread (the offsets are not
/// `'static`: the next call may move them): a product copies through them and runs no other
/// product meanwhile.
pub(super) unsafe fn scratch(k_len: usize, floats: usize) -> (*mut f32, &'static [usize]) {
    COPIED.with_borrow_mut(|copied| {
        let (rows, offsets) = copied.get(k_len, floats);
        // SAFETY: the offsets live in the thread's scratch, which lives as long as the thread;
        // they change only at the next call, before which the caller is done with them.
        let offsets = unsafe { std::slice::from_raw_parts(offsets.as_ptr(), offsets.len()) };
        (rows.as_mut_ptr(), offsets)
    })
}

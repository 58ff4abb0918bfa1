//! A block of a transposition: `y[c·len + i] = x[c + i·step]` for `c < columns`, `i < len`
//! (YOLOX-Nano's head moves its 85 scores × 3,549 cells to 3,549 × 85 in such blocks: `ops::gather`).
//!
//! On x86 with AVX2 the block goes in tiles of 8 × 8: eight rows of `x` loaded, transposed in
//! registers (unpacks, shuffles and lane swaps, 24 instructions for 64 values), stored as eight
//! rows of `y`; the rest value by value, as everywhere else. A value is moved, never changed, so
//! every way gives the same bits. Value by value, the head's 301,665 moves took 0.31 ms of a
//! 416×416 frame (Intel Xeon model 207).

use super::Isa;

/// Copies the block (see the module docs). Panics if `x` or `y` is too short for it.
pub fn transpose_block(
    isa: Isa,
    x: &[f32],
    step: usize,
    columns: usize,
    len: usize,
    y: &mut [f32],
) {
    transpose_into(isa, x, step, columns, len, y, len)
}

/// [`transpose_block`] into rows `y_step` apart (`≥ len`): `y[c·y_step + i] = x[c + i·step]`
/// (an NHWC run of `len` pixels into its place in NCHW planes of `y_step`).
pub fn transpose_into(
    isa: Isa,
    x: &[f32],
    step: usize,
    columns: usize,
    len: usize,
    y: &mut [f32],
    y_step: usize,
) {
    if columns == 0 || len == 0 {
        return;
    }
    assert!(
        y.len() >= (columns - 1) * y_step + len,
        "transpose destination"
    );
    // SAFETY: `y` is borrowed mutably and holds every value written (asserted above).
    unsafe { transpose_to(isa, x, step, columns, len, y.as_mut_ptr(), y_step) }
}

/// [`transpose_into`] through a pointer: writes `y[c·y_step + i]` for `c < columns`, `i < len`
/// and nothing else (other threads may write the values between, as the parts of an op split
/// its pixels).
///
/// # Safety
/// `y` is valid for writes of those values, and no one else reads or writes them meanwhile.
pub unsafe fn transpose_to(
    isa: Isa,
    x: &[f32],
    step: usize,
    columns: usize,
    len: usize,
    y: *mut f32,
    y_step: usize,
) {
    if columns == 0 || len == 0 {
        return;
    }
    assert!(columns <= step, "columns {columns} of rows {step} apart");
    assert!(len <= y_step, "rows of {len} values {y_step} apart");
    assert!(x.len() > (len - 1) * step + columns - 1, "transpose source");
    // SAFETY: the caller's for `y`; `x` holds the block (asserted above).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // The CPU has AVX2 (`Isa::Avx2Fma`; AVX-512 machines have it too, as
            // `is_available` checks).
            Isa::Avx2Fma | Isa::Avx512 if isa.is_available() => {
                x86::tiles(x, step, columns, len, y, y_step)
            }
            _ => scalar(x, step, (0, columns), (0, len), y, y_step),
        }
    }
}

/// The values of columns `c.0..c.1` and rows `i.0..i.1`, one by one (`y`'s columns `y_step`
/// apart).
///
/// # Safety
/// As `transpose_to`'s.
unsafe fn scalar(
    x: &[f32],
    step: usize,
    c: (usize, usize),
    i: (usize, usize),
    y: *mut f32,
    y_step: usize,
) {
    for column in c.0..c.1 {
        for row in i.0..i.1 {
            // SAFETY: the caller's.
            unsafe { *y.add(column * y_step + row) = x[column + row * step] };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Whole 8 × 8 tiles, then the edges by [`super::scalar`].
    ///
    /// # Safety
    /// The CPU has AVX2; `x` holds the block (as `transpose_to` asserts), `y` as its caller's.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tiles(
        x: &[f32],
        step: usize,
        columns: usize,
        len: usize,
        y: *mut f32,
        y_step: usize,
    ) {
        let (c8, i8) = (columns / 8 * 8, len / 8 * 8);
        for c in (0..c8).step_by(8) {
            for i in (0..i8).step_by(8) {
                // SAFETY: rows `i..i + 8` of `x` from column `c` (8 values each, `c + 8 ≤
                // columns ≤ step`) and rows `c..c + 8` of `y` from `i` are inside the block.
                unsafe {
                    let src = x.as_ptr().add(c + i * step);
                    let r: [__m256; 8] =
                        std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * step)));
                    let t = transpose8(r);
                    let dst = y.add(c * y_step + i);
                    for (k, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(k * y_step), *v);
                    }
                }
            }
        }
        // SAFETY: the caller's.
        unsafe {
            super::scalar(x, step, (0, c8), (i8, len), y, y_step);
            super::scalar(x, step, (c8, columns), (0, len), y, y_step);
        }
    }

    /// Rows `r` of an 8 × 8 tile as its columns.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: the caller's: the CPU has AVX2.
        unsafe {
            // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
            let a = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let b = [
                _mm256_shuffle_ps::<0x44>(a[0], a[2]),
                _mm256_shuffle_ps::<0xee>(a[0], a[2]),
                _mm256_shuffle_ps::<0x44>(a[1], a[3]),
                _mm256_shuffle_ps::<0xee>(a[1], a[3]),
                _mm256_shuffle_ps::<0x44>(a[4], a[6]),
                _mm256_shuffle_ps::<0xee>(a[4], a[6]),
                _mm256_shuffle_ps::<0x44>(a[5], a[7]),
                _mm256_shuffle_ps::<0xee>(a[5], a[7]),
            ];
            [
                _mm256_permute2f128_ps::<0x20>(b[0], b[4]),
                _mm256_permute2f128_ps::<0x20>(b[1], b[5]),
                _mm256_permute2f128_ps::<0x20>(b[2], b[6]),
                _mm256_permute2f128_ps::<0x20>(b[3], b[7]),
                _mm256_permute2f128_ps::<0x31>(b[0], b[4]),
                _mm256_permute2f128_ps::<0x31>(b[1], b[5]),
                _mm256_permute2f128_ps::<0x31>(b[2], b[6]),
                _mm256_permute2f128_ps::<0x31>(b[3], b[7]),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Rng;
    use super::*;

    #[test]
    fn every_isa_moves_each_value_to_its_place() {
        let mut rng = Rng::new(0x7a5e);
        let mut cases = vec![(2704, 16, 85), (169, 9, 85), (85, 85, 16), (8, 8, 8)];
        for _ in 0..60 {
            let step = 1 + rng.below(40);
            cases.push((step, 1 + rng.below(step), 1 + rng.below(40)));
        }
        for (step, columns, len) in cases {
            let spare = rng.below(3);
            let x = rng.vec((len - 1) * step + columns + spare);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; columns * len + 2];
                transpose_block(isa, &x, step, columns, len, &mut y);
                for c in 0..columns {
                    for i in 0..len {
                        assert_eq!(
                            y[c * len + i].to_bits(),
                            x[c + i * step].to_bits(),
                            "{isa}: step {step}, {columns} columns, {len} rows: ({c}, {i})"
                        );
                    }
                }
                assert!(
                    y[columns * len..].iter().all(|v| v.is_nan()),
                    "{isa}: wrote past"
                );
                // Into rows further apart: only each row's first `len` values written.
                let y_step = len + rng.below(9);
                let mut y = vec![f32::NAN; columns * y_step];
                transpose_into(isa, &x, step, columns, len, &mut y, y_step);
                for c in 0..columns {
                    for i in 0..y_step {
                        let got = y[c * y_step + i];
                        if i < len {
                            assert_eq!(
                                got.to_bits(),
                                x[c + i * step].to_bits(),
                                "{isa}: ({c}, {i}) of rows {y_step} apart"
                            );
                        } else {
                            assert!(got.is_nan(), "{isa}: wrote ({c}, {i}) past a row of {len}");
                        }
                    }
                }
            }
        }
    }
}

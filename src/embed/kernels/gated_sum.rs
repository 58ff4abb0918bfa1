//! A sum of same-shape NCHW tensors, each scaled per channel by a gate or taken as it is:
//! `out[n][c][p] = Σₜ gₜ[n][c] · xₜ[n][c][p]` (gₜ = 1 for an ungated term). This is OSNet's
//! aggregation of its four streams, `Σₜ gate(xₜ) ⊙ xₜ`, which tract runs as three broadcast
//! multiplications and a multiply-add chain, each writing a new tensor; here it is one pass that
//! reads every term once and writes the output once, the terms' sums held in registers.

use super::Isa;
use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;

/// Terms one call may take (OSNet has four).
pub const MAX_TERMS: usize = 8;

/// The layout shared by every term: `channels` planes of `pixels` per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub channels: usize,
    pub pixels: usize,
}

/// `out = Σₜ gates[t] ⊙ tensors[t]`: every tensor and `out` are `[batch][channels][pixels]`, a
/// gate `batch × channels` values (one per plane), `None` for an ungated term.
pub fn gated_sum(
    isa: Isa,
    shape: Shape,
    tensors: &[&[f32]],
    gates: &[Option<&[f32]>],
    out: &mut [f32],
) {
    assert!(
        tensors.iter().all(|x| x.len() == out.len()),
        "gated sum terms and output of different lengths"
    );
    // SAFETY: `out` is borrowed mutably for the call.
    unsafe {
        gated_sum_pixels(
            isa,
            shape,
            tensors,
            gates,
            0..shape.pixels,
            out.as_mut_ptr(),
        )
    }
}

/// [`gated_sum`] for pixels `range` of every plane only, into `out` (as long as every term), of
/// which other threads may write other pixels meanwhile (the threads of one op split its
/// pixels).
///
/// # Safety
/// `out` is valid for reads and writes of as many floats as each term has, and while this runs
/// no other thread reads or writes pixels `range` of any of its planes.
pub unsafe fn gated_sum_pixels(
    isa: Isa,
    shape: Shape,
    tensors: &[&[f32]],
    gates: &[Option<&[f32]>],
    range: std::ops::Range<usize>,
    out: *mut f32,
) {
    let terms = tensors.len();
    assert!(
        (1..=MAX_TERMS).contains(&terms),
        "{terms} terms (1 to {MAX_TERMS})"
    );
    assert_eq!(gates.len(), terms, "one gate (or none) per term");
    let image = shape.channels * shape.pixels;
    let len = tensors[0].len();
    assert!(image > 0, "empty gated sum {shape:?}");
    assert_eq!(len % image, 0, "gated sum length");
    assert!(range.end <= shape.pixels, "pixels {range:?} of {shape:?}");
    let planes = len / shape.pixels;
    for (t, (x, gate)) in tensors.iter().zip(gates).enumerate() {
        assert_eq!(x.len(), len, "term {t} length");
        if let Some(gate) = gate {
            assert_eq!(gate.len(), planes, "gate {t} length");
        }
    }
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    let args = Args {
        pixels: shape.pixels,
        range,
        planes,
        tensors,
        scales: gates,
    };
    // SAFETY: lengths checked above; `is_available` checked the CPU's features; `out` as the
    // caller promised.
    unsafe {
        match isa {
            #[cfg(target_arch = "aarch64")]
            Isa::Baseline => body::<std::arch::aarch64::float32x4_t>(&args, out),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Baseline => body::<Portable>(&args, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => x86::avx2(&args, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::avx512(&args, out),
        }
    }
}

struct Args<'a> {
    pixels: usize,
    /// The pixels of each plane to compute.
    range: std::ops::Range<usize>,
    planes: usize,
    tensors: &'a [&'a [f32]],
    /// Per term, its gate (one value per plane), if it has one.
    scales: &'a [Option<&'a [f32]>],
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    use super::{Args, body};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(args: &Args, out: *mut f32) {
        // SAFETY: forwarded from `gated_sum`.
        unsafe { body::<__m256>(args, out) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(args: &Args, out: *mut f32) {
        // SAFETY: forwarded from `gated_sum`.
        unsafe { body::<__m512>(args, out) }
    }
}

/// Plane by plane: each vector of the output is the terms' multiply-adds in registers, the
/// last vector of a plane through a lane mask.
///
/// # Safety
/// As `gated_sum_pixels` checked: every term as long as `out`, gates one value per plane, the
/// range within a plane, `V` supported; `out` writable there.
#[inline(always)]
unsafe fn body<V: Lanes>(args: &Args, out: *mut f32) {
    let terms = args.tensors.len();
    let pixels = args.range.len();
    let full = pixels / V::N * V::N;
    // SAFETY: `V` is supported (the caller's contract).
    let mut scale = [unsafe { V::splat(1.0) }; MAX_TERMS];
    let mut from = [std::ptr::null::<f32>(); MAX_TERMS];
    for plane in 0..args.planes {
        let at = plane * args.pixels + args.range.start;
        for t in 0..terms {
            // SAFETY: `at` is inside every term (each as long as `out`).
            from[t] = unsafe { args.tensors[t].as_ptr().add(at) };
            // SAFETY: `V` is supported (the caller's contract).
            scale[t] = unsafe { V::splat(args.scales[t].map_or(1.0, |g| g[plane])) };
        }
        // SAFETY: the range's pixels of this plane (the caller's contract).
        let y = unsafe { out.add(at) };
        // SAFETY: `i + V::N <= pixels` in the loop, `pixels - full < V::N` in the tail.
        unsafe {
            let mut i = 0;
            while i < full {
                let mut acc = V::fma(scale[0], V::load(from[0].add(i)), V::splat(0.0));
                for t in 1..terms {
                    acc = V::fma(scale[t], V::load(from[t].add(i)), acc);
                }
                acc.store(y.add(i));
                i += V::N;
            }
            if full < pixels {
                let n = pixels - full;
                let mut acc = V::fma(scale[0], V::load_n(from[0].add(full), n), V::splat(0.0));
                for t in 1..terms {
                    acc = V::fma(scale[t], V::load_n(from[t].add(full), n), acc);
                }
                acc.store_n(y.add(full), n);
            }
        }
    }
}

/// The naive reference, in `f64`: the output and, per element, `Σ|terms|` (for error bounds).
pub fn reference(
    shape: Shape,
    tensors: &[&[f32]],
    gates: &[Option<&[f32]>],
) -> (Vec<f32>, Vec<f32>) {
    let len = tensors[0].len();
    let mut out = vec![0.0f64; len];
    let mut magnitude = vec![0.0f64; len];
    for (x, gate) in tensors.iter().zip(gates) {
        for (i, (o, m)) in out.iter_mut().zip(&mut magnitude).enumerate() {
            let s = gate.map_or(1.0, |gate| f64::from(gate[i / shape.pixels]));
            let term = s * f64::from(x[i]);
            *o += term;
            *m += term.abs();
        }
    }
    (
        out.iter().map(|&v| v as f32).collect(),
        magnitude.iter().map(|&v| v as f32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Rng, assert_close};
    use super::*;

    fn check(isa: Isa, shape: Shape, batch: usize, gated: &[bool], rng: &mut Rng) {
        let len = batch * shape.channels * shape.pixels;
        let tensors: Vec<Vec<f32>> = gated.iter().map(|_| rng.vec(len)).collect();
        let gates: Vec<Option<Vec<f32>>> = gated
            .iter()
            .map(|g| g.then(|| rng.vec(batch * shape.channels)))
            .collect();
        let tensors: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
        let gates: Vec<Option<&[f32]>> = gates.iter().map(Option::as_deref).collect();
        let (want, magnitude) = reference(shape, &tensors, &gates);
        let mut got = vec![f32::NAN; len];
        gated_sum(isa, shape, &tensors, &gates, &mut got);
        // The same values bit for bit when the pixels are computed in parts (as threads do).
        let mut parted = vec![f32::NAN; len];
        for pixels in super::super::test_support::parts(rng, shape.pixels, 1) {
            // SAFETY: `parted` is the whole output; the parts run one after the other.
            unsafe { gated_sum_pixels(isa, shape, &tensors, &gates, pixels, parted.as_mut_ptr()) };
        }
        super::super::test_support::assert_same_bits(
            &parted,
            &got,
            &format!("{isa} {shape:?}: pixels in parts"),
        );
        assert_close(
            &got,
            &want,
            &magnitude,
            gated.len(),
            &format!("{isa} {shape:?} batch {batch} gated {gated:?}"),
        );
    }

    #[test]
    fn every_isa_matches_the_reference_on_random_shapes() {
        let mut rng = Rng::new(0x6a7e_d5a0);
        for isa in Isa::available() {
            // OSNet x0.25's aggregations at 256×128 and 128×64, four gated streams.
            for (channels, pixels) in [(16, 2048), (24, 512), (32, 128), (16, 512), (32, 32)] {
                check(isa, Shape { channels, pixels }, 1, &[true; 4], &mut rng);
            }
            for _ in 0..100 {
                let shape = Shape {
                    channels: 1 + rng.below(40),
                    pixels: 1 + rng.below(300),
                };
                let gated: Vec<bool> = (0..1 + rng.below(MAX_TERMS))
                    .map(|_| rng.below(3) > 0)
                    .collect();
                check(isa, shape, 1 + rng.below(3), &gated, &mut rng);
            }
        }
    }

    #[test]
    #[should_panic(expected = "gate 1 length")]
    fn a_short_gate_is_refused() {
        let x = [1.0; 8];
        let mut out = [0.0; 8];
        let shape = Shape {
            channels: 2,
            pixels: 4,
        };
        let gates = [Some(&[0.5, 2.0][..]), Some(&[1.0][..])];
        gated_sum(Isa::Baseline, shape, &[&x, &x], &gates, &mut out);
    }
}

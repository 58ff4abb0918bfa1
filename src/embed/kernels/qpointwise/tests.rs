//! The int8 1×1 layer's tests: every product kind against the integer reference, bit for bit; the
//! quantisers on special values; the pair bound; grids and sums that could overflow refused.

use super::super::test_support::Rng;
use super::*;

/// Random weights within `Layer::paired`'s bound, often at its edge: each pair's
/// same-sign weights add up to at most 128 in magnitude.
fn paired_weights(n: usize, rng: &mut Rng) -> Vec<i8> {
    let mut w = Vec::with_capacity(n + 1);
    while w.len() < n {
        let a = rng.below(256) as i32 - 128;
        // b's range: [−128, 128 − a] when a ≥ 0, [−128 − a, 127] when a < 0.
        let (lo, hi) = if a >= 0 {
            (-128, 127.min(128 - a))
        } else {
            (-128 - a, 127)
        };
        let b = match rng.below(4) {
            0 => hi,
            1 => lo,
            _ => lo + rng.below((hi - lo + 1) as usize) as i32,
        };
        w.extend([a as i8, b as i8]);
    }
    w.truncate(n);
    w
}

fn check(dot: Dot, shape: Shape, with_res: bool, relu: bool, rng: &mut Rng) {
    let paired = rng.below(2) == 0;
    let x = Grid {
        scale: 0.01 + rng.below(100) as f32 * 1e-3,
        zero: rng.below(256) as i32,
    };
    // Inputs spread over more than the grid's range, so that both clamps are exercised; now
    // and then every code 255 (the largest pair sums of paired weights: 255 · 128).
    let top = paired && rng.below(4) == 0;
    let input: Vec<f32> = rng
        .vec(shape.inputs * shape.pixels)
        .iter()
        .map(|v| if top { 1e9 } else { v * 3.0 })
        .collect();
    let mut weights: Vec<i8> = if paired {
        (0..shape.outputs)
            .flat_map(|_| paired_weights(shape.inputs, rng))
            .collect()
    } else {
        (0..shape.inputs * shape.outputs)
            .map(|_| (rng.below(255) as i32 - 127) as i8)
            .collect()
    };
    // Now and then a −128 (not `narrow`: the widening NEON product's other loop).
    if !paired && rng.below(3) == 0 {
        let at = rng.below(weights.len());
        weights[at] = i8::MIN;
    }
    // Biases up to 2²⁶: a dead channel's tiny weight scale makes its int32 bias huge.
    let bias: Vec<i32> = (0..shape.outputs)
        .map(|_| (rng.below(20_001) as i32 - 10_000) << (2 * rng.below(9)))
        .collect();
    let w_scales: Vec<f32> = (0..shape.outputs)
        .map(|_| 1e-4 + rng.below(100) as f32 * 1e-5)
        .collect();
    let residual = with_res.then(|| rng.vec(shape.outputs * shape.pixels));
    let layer = Layer::new(shape, &weights, &bias, x, &w_scales).expect("valid layer");
    assert!(
        !paired || layer.paired,
        "{shape:?}: weights not taken as paired"
    );
    let want = reference(&layer, &weights, &bias, &input, residual.as_deref(), relu);
    let mut got = vec![f32::NAN; want.len()];
    // Scratch from an earlier use: the slack after the words keeps what it held.
    let mut words = vec![0xdead_beef; layer.scratch_words()];
    layer.run(dot, &input, residual.as_deref(), relu, &mut got, &mut words);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{dot} {shape:?} residual {with_res} relu {relu}: element {i}: got {g}, want {w}"
        );
    }
    // The same values from the layer cut into parts by outputs, on the same words (as the
    // threads of one image run it), the parts 8, 16 or 24 outputs long.
    let mut parted = vec![f32::NAN; want.len()];
    let mut start = 0;
    while start < shape.outputs {
        let end = (start + PART_ALIGN * (1 + rng.below(3))).min(shape.outputs);
        let rows = start * shape.pixels..end * shape.pixels;
        let res = residual.as_ref().map(|r| &r[rows.clone()]);
        let part = layer.part(start..end);
        part.product(dot, &words, res, relu, &mut parted[rows]);
        start = end;
    }
    for (i, (g, w)) in parted.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{dot} {shape:?} in parts: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn every_dot_kind_equals_the_integer_reference() {
    let mut rng = Rng::new(0x1e7_c0de);
    if Dot::available().is_empty() {
        eprintln!("no int8 dot-product instructions on this CPU: nothing to check here");
    }
    for dot in Dot::available() {
        // Our default model's layers at 128×64, a wide one, then random shapes (tails
        // everywhere).
        for (i, o, p) in [
            (16, 64, 512),
            (64, 16, 512),
            (96, 24, 128),
            (128, 32, 32),
            (600, 12, 40),
        ] {
            let shape = Shape {
                inputs: i,
                outputs: o,
                pixels: p,
            };
            check(dot, shape, true, true, &mut rng);
        }
        for _ in 0..100 {
            let shape = Shape {
                inputs: 1 + rng.below(70),
                outputs: 1 + rng.below(40),
                pixels: 1 + rng.below(300),
            };
            check(dot, shape, rng.below(2) == 1, rng.below(2) == 1, &mut rng);
        }
    }
}

#[test]
fn every_quantiser_makes_the_plain_codes_of_special_values() {
    // NaN, infinities, signed zeros, ties (the scale a power of two: x / s exactly k + ½),
    // values just inside and far outside the grid, in rows of every length around the
    // vector quantisers' steps (4, 16 pixels) and their tails.
    let grid = Grid {
        scale: 0.25,
        zero: 100,
    };
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        0.125,
        -0.125,
        0.375,
        -24.875,
        -25.125,
        38.625,
        38.875,
        1e9,
        -1e9,
        3e38,
        -3e38,
        1e-30,
        f32::MIN_POSITIVE,
    ];
    let mut rng = Rng::new(0x9a_17);
    for pixels in (1..=40).chain([50, 64, 65]) {
        let shape = Shape {
            inputs: 8,
            outputs: 4,
            pixels,
        };
        let layer = Layer::new(shape, &[1i8; 32], &[0; 4], grid, &[1.0; 4]).expect("layer");
        let input: Vec<f32> = (0..8 * pixels)
            .map(|_| match rng.below(3) {
                0 => special[rng.below(special.len())],
                _ => (rng.below(1000) as f32 - 500.0) * 0.0625,
            })
            .collect();
        // NaN counts as 0.0: the zero point's code.
        assert_eq!(layer.quantise(f32::NAN), grid.zero);
        assert_eq!(layer.quantise(f32::NEG_INFINITY), 0);
        assert_eq!(layer.quantise(f32::INFINITY), 255);
        for dot in Dot::available() {
            // Two groups of words; the slack after them is not the quantiser's.
            let mut want = vec![0u32; 2 * pixels];
            quantise_words(&layer, &input, &mut want, 0, layer.flip(dot));
            let mut got = vec![0xdead_beef; layer.scratch_words()];
            layer.quantise_into(dot, &input, &mut got);
            assert_eq!(got[..2 * pixels], want, "{dot}, {pixels} pixels");
            // Group by group, as threads make them: the same words.
            let mut parts = vec![0xdead_beef; 2 * pixels];
            let (first, second) = parts.split_at_mut(pixels);
            layer.quantise_groups(dot, &input, second, 1..2);
            layer.quantise_groups(dot, &input, first, 0..1);
            assert_eq!(parts, want, "{dot}, {pixels} pixels, by groups");
        }
    }
}

#[test]
fn pairs_fit_an_i16_up_to_128_per_sign() {
    for (pair, fits) in [
        (&[64i8, 64][..], true),
        (&[65, 64], false),
        (&[127, 1], true),
        (&[127, 2], false),
        (&[-128, 0], true),
        (&[-128, -1], false),
        (&[-64, -64], true),
        (&[127, -128], true),
        (&[-128], true),
    ] {
        assert_eq!(pair_fits_i16(pair), fits, "{pair:?}");
    }
}

#[test]
fn rejects_grids_and_sums_that_could_overflow() {
    // Regression: the bound once counted the bias against 2²⁴ and refused a real layer of
    // our default model (a dead channel's bias of 2·10⁷ in int32 units).
    let real = Shape {
        inputs: 16,
        outputs: 1,
        pixels: 1,
    };
    let g = Grid {
        scale: 0.1,
        zero: 3,
    };
    assert!(Layer::new(real, &[1i8; 16], &[20_000_000], g, &[1.0]).is_some());
    let shape = Shape {
        inputs: 4,
        outputs: 1,
        pixels: 1,
    };
    let ok = Grid {
        scale: 0.1,
        zero: 3,
    };
    let w = [1i8; 4];
    assert!(Layer::new(shape, &w, &[0], ok, &[1.0]).is_some());
    let bad = Grid {
        scale: 0.0,
        zero: 3,
    };
    assert!(Layer::new(shape, &w, &[0], bad, &[1.0]).is_none());
    let bad = Grid {
        scale: 0.1,
        zero: 300,
    };
    assert!(Layer::new(shape, &w, &[0], bad, &[1.0]).is_none());
    assert!(Layer::new(shape, &w, &[i32::MAX - 100], ok, &[1.0]).is_none());
    // 70,000 input channels: Σ 128·255 alone passes 2³¹.
    let wide = Shape {
        inputs: 70_000,
        outputs: 1,
        pixels: 1,
    };
    assert!(Layer::new(wide, &[1i8; 70_000], &[0], ok, &[1.0]).is_none());
}

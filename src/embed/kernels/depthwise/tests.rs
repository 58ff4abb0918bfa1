//! The depthwise kernels against the f64 reference, and ARM's assembly step against the
//! generic one.

use super::super::test_support::{Rng, assert_close, assert_close_after};
use super::*;

fn check(isa: Isa, shape: Shape, batch: usize, act: Act, rng: &mut Rng) {
    let input = rng.vec(batch * shape.channels * shape.height * shape.width);
    let weights = rng.vec(shape.channels * 9);
    let bias = rng.vec(shape.channels);
    let (want, magnitude) = reference(shape, batch, &input, &weights, &bias, act);
    let mut got = vec![f32::NAN; want.len()];
    let mut scratch = Vec::new();
    depthwise3x3(
        isa,
        shape,
        batch,
        &input,
        &weights,
        &bias,
        act,
        &mut got,
        &mut scratch,
    );
    // The same values bit for bit when the rows are computed in parts (as threads do).
    let mut parted = vec![f32::NAN; want.len()];
    for rows in super::super::test_support::parts(rng, shape.output().0, 1) {
        // SAFETY: `parted` is the whole output; the parts run one after the other.
        unsafe {
            depthwise3x3_rows(
                isa,
                shape,
                batch,
                &input,
                &weights,
                &bias,
                act,
                rows,
                parted.as_mut_ptr(),
                &mut scratch,
            )
        };
    }
    super::super::test_support::assert_same_bits(
        &parted,
        &got,
        &format!("{isa} {shape:?} batch {batch}: rows in parts"),
    );
    assert_close_after(
        act,
        &got,
        &want,
        &magnitude,
        10,
        &format!("{isa} {shape:?} batch {batch}"),
    );
}

/// ARM's assembly step gives the generic step's values, bit for bit (so int8 models, which
/// quantise the depthwise layers' outputs, give the same embeddings as on x86), special
/// values among the inputs, every width from one vector to past two, with and without the
/// ReLU.
#[cfg(target_arch = "aarch64")]
#[test]
fn the_assembly_step_is_the_generic_step_bit_for_bit() {
    use std::arch::aarch64::float32x4_t;
    let mut rng = Rng::new(0x5eed_a5a5);
    for w in 4..=11 {
        for relu in [false, true] {
            let pw = w + 2;
            let mut padded = rng.vec(6 * pw + 4);
            for (i, special) in [f32::NAN, f32::INFINITY, -0.0, f32::NEG_INFINITY, 0.0]
                .into_iter()
                .enumerate()
            {
                padded[(7 * i + w) % (6 * pw)] = special;
            }
            let taps: [f32; 9] = rng.vec(9).try_into().unwrap();
            let bias = if w % 2 == 0 { -0.0 } else { rng.vec(1)[0] };
            let mut outputs = [vec![1.5; 4 * w], vec![1.5; 4 * w]];
            let [assembly, generic] = &mut outputs;
            let rows = |dst: *mut f32| Rows::<float32x4_t> {
                padded: padded.as_ptr(),
                dst,
                pw,
                w,
                // SAFETY: register-only.
                kv: taps.map(|t| unsafe { float32x4_t::splat(t) }),
                columns: [0, 1, 2],
                // SAFETY: register-only.
                bias: unsafe { float32x4_t::splat(bias) },
                taps,
                bias_value: bias,
            };
            // SAFETY: rows 0..4 read padded rows 0..6 (6·pw + 4 floats: the generic step's
            // last vector reads up to 4 floats past a row's w + 2), write 4·w floats.
            unsafe {
                rows(assembly.as_mut_ptr()).four_rows_neon(0, relu);
                if relu {
                    rows(generic.as_mut_ptr()).compute::<4, 1, { Act::Relu as u8 }>(0);
                } else {
                    rows(generic.as_mut_ptr()).compute::<4, 1, { Act::Identity as u8 }>(0);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(assembly),
                bits(generic),
                "width {w}, relu {relu}: {assembly:?} vs {generic:?}"
            );
        }
    }
}

#[test]
fn every_isa_matches_the_reference_on_random_shapes() {
    let mut rng = Rng::new(0x5eed_d3d3);
    for isa in Isa::available() {
        // The shapes of the models we ship and the references (YOLOX-Nano's stride-2 layers
        // at 736×416 and 416×416 among them), then random ones, odd and even down to 1×1.
        for (c, h, w, stride) in [
            (16, 64, 32, 1),
            (24, 32, 16, 1),
            (32, 16, 8, 1),
            (8, 8, 4, 1),
            (3, 1, 1, 1),
            (32, 104, 184, 2),
            (64, 52, 92, 2),
            (128, 13, 23, 2),
            (128, 26, 26, 2),
            (3, 1, 1, 2),
            // Stride-2 rows whose last inputs (after whole pairs of vectors) fill a half
            // vector exactly, all but one lane of it, or one lane past it.
            (4, 5, 63, 2),
            (4, 5, 31, 2),
            (4, 5, 17, 2),
            (4, 5, 15, 2),
        ] {
            let shape = Shape {
                channels: c,
                height: h,
                width: w,
                stride,
            };
            check(isa, shape, 1, Act::Relu, &mut rng);
        }
        for _ in 0..120 {
            let shape = Shape {
                channels: 1 + rng.below(40),
                height: 1 + rng.below(40),
                width: 1 + rng.below(40),
                stride: 1 + rng.below(2),
            };
            let batch = 1 + rng.below(3);
            let act = super::super::test_support::act(&mut rng);
            check(isa, shape, batch, act, &mut rng);
        }
    }
}

#[test]
fn the_output_is_centred_on_every_stride_th_pixel() {
    // ONNX's 3×3, padding 1: output (y, x) centred on input (s·y, s·x).
    for (h, w) in [(1, 1), (2, 3), (5, 4), (7, 9), (8, 8)] {
        assert_eq!(output_size(h, w, 1), (h, w));
        assert_eq!(output_size(h, w, 2), (h.div_ceil(2), w.div_ceil(2)));
    }
    let shape = Shape {
        channels: 1,
        height: 5,
        width: 7,
        stride: 2,
    };
    let input: Vec<f32> = (0..35).map(|v| v as f32).collect();
    let mut centre = [0.0; 9];
    centre[4] = 1.0;
    let mut got = vec![f32::NAN; 12];
    let mut scratch = Vec::new();
    let isa = Isa::detect();
    depthwise3x3(
        isa,
        shape,
        1,
        &input,
        &centre,
        &[0.0],
        Act::Identity,
        &mut got,
        &mut scratch,
    );
    let want: Vec<f32> = [0, 2, 4, 6, 14, 16, 18, 20, 28, 30, 32, 34]
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn scratch_from_a_larger_layer_is_reused_with_clean_borders() {
    let mut rng = Rng::new(7);
    let isa = Isa::detect();
    for stride in [1, 2] {
        let mut scratch = vec![f32::NAN; 10_000];
        let shape = Shape {
            channels: 2,
            height: 5,
            width: 3,
            stride,
        };
        let input = rng.vec(30);
        let (weights, bias) = (rng.vec(18), rng.vec(2));
        let (want, magnitude) = reference(shape, 1, &input, &weights, &bias, Act::Identity);
        let mut got = vec![0.0; want.len()];
        depthwise3x3(
            isa,
            shape,
            1,
            &input,
            &weights,
            &bias,
            Act::Identity,
            &mut got,
            &mut scratch,
        );
        assert_close(
            &got,
            &want,
            &magnitude,
            10,
            &format!("dirty scratch, stride {stride}"),
        );
    }
}

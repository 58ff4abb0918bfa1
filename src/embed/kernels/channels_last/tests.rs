//! Each kernel against its NCHW counterpart on the same operands: the same values, bit for bit,
//! once moved to the other layout.

use super::super::pointwise as nchw_pointwise;
use super::super::test_support::{Rng, assert_same_bits};
use super::super::{
    depthwise as nchw_depthwise, gated_sum as nchw_gated_sum, pack_weights, unpack_weights,
};
use super::*;

const ACTS: [Act; 3] = [Act::Identity, Act::Relu, Act::Silu];

/// `[channels][pixels]` as `[pixels][channels]` inside `plane`'s border (left as `fill`).
fn to_plane(x: &[f32], plane: Plane, fill: f32) -> Vec<f32> {
    let mut out = vec![fill; plane.len()];
    let pixels = plane.height * plane.width;
    for c in 0..plane.channels {
        for p in 0..pixels {
            out[plane.at(p / plane.width, p % plane.width) + c] = x[c * pixels + p];
        }
    }
    out
}

/// The pixels of `plane` as `[channels][pixels]`.
fn from_plane(x: &[f32], plane: Plane) -> Vec<f32> {
    let pixels = plane.height * plane.width;
    let mut out = vec![0.0; plane.channels * pixels];
    for c in 0..plane.channels {
        for p in 0..pixels {
            out[c * pixels + p] = x[plane.at(p / plane.width, p % plane.width) + c];
        }
    }
    out
}

/// Whether every value of `plane`'s border in `x` is +0.0.
fn border_is_zero(x: &[f32], plane: Plane) -> bool {
    let inner = Plane { pad: 0, ..plane };
    let mut pixel = vec![false; plane.len()];
    for y in 0..inner.height {
        for x in 0..inner.width {
            let at = plane.at(y, x);
            pixel[at..at + plane.channels].fill(true);
        }
    }
    (0..plane.len()).all(|i| pixel[i] || x[i].to_bits() == 0)
}

#[test]
fn pointwise_gives_the_planar_kernels_values() {
    let mut rng = Rng::new(0xc1a5);
    for isa in Isa::available() {
        let n = lanes(isa);
        for case in 0..24 {
            // At least a vector of pixels: the planar kernel does narrower planes pixel by
            // pixel, unfused.
            let (height, width) = (2 + rng.below(8), 8 + rng.below(11));
            let outputs = n * (1 + rng.below(8));
            let k = 1 + rng.below(70);
            let pad = case % 2;
            let act = ACTS[case % 3];
            let plane = Plane {
                height,
                width,
                channels: outputs,
                pad,
            };
            let pixels = height * width;
            let x = rng.vec(k * pixels);
            let rows = rng.vec(outputs * k);
            let packed_rows = pack_weights(isa, &rows, outputs);
            assert_eq!(
                unpack_weights(isa, &packed_rows, outputs),
                rows,
                "{isa}: unpacked"
            );
            let bias = rng.vec(outputs);
            let shape = nchw_pointwise::Shape {
                inputs: k,
                outputs,
                pixels,
            };
            let mut want = vec![0.0; outputs * pixels];
            nchw_pointwise::pointwise(
                isa,
                shape,
                &[k],
                &shape.offsets(&[k]),
                &[&x],
                &pack_weights(isa, &rows, outputs),
                &bias,
                None,
                false,
                act,
                &mut want,
            );
            let by_k: Vec<f32> = (0..k * outputs)
                .map(|i| rows[(i % outputs) * k + i / outputs])
                .collect();
            let what = format!("{isa} {plane:?} k {k} {act:?}");
            let packed = to_plane(
                &x,
                Plane {
                    height,
                    width,
                    channels: k,
                    pad: 0,
                },
                0.0,
            );
            for source in [Source::Planar(&x), Source::Packed(&packed)] {
                let mut got = vec![f32::NAN; plane.len() + 3];
                pointwise(isa, source, k, &by_k, &bias, act, plane, &mut got);
                assert!(border_is_zero(&got, plane), "{what}: border");
                assert!(
                    got[plane.len()..].iter().all(|v| v.is_nan()),
                    "{what}: past the end"
                );
                assert_same_bits(
                    &from_plane(&got, plane),
                    &want,
                    &format!("{what} {source:?}"),
                );
            }
        }
    }
}

#[test]
fn depthwise_gives_the_planar_kernels_values() {
    let mut rng = Rng::new(0xd3e9);
    for isa in Isa::available() {
        let n = lanes(isa);
        for case in 0..24 {
            let (height, width) = (1 + rng.below(12), 1 + rng.below(23));
            let channels = n * (1 + rng.below(6));
            // The planar kernel does AVX-512's planes of 8 columns or fewer with AVX2's SiLU,
            // an ulp away from AVX-512's at times (the streams' layers have no SiLU).
            let act = match ACTS[case % 3] {
                Act::Silu if width <= 8 && n > 8 => Act::Relu,
                act => act,
            };
            let shape = nchw_depthwise::Shape {
                channels,
                height,
                width,
                stride: 1,
            };
            let x = rng.vec(channels * height * width);
            let weights = rng.vec(9 * channels);
            let bias = rng.vec(channels);
            let mut want = vec![0.0; x.len()];
            nchw_depthwise::depthwise3x3(
                isa,
                shape,
                1,
                &x,
                &weights,
                &bias,
                act,
                &mut want,
                &mut Vec::new(),
            );
            let taps: Vec<f32> = (0..9 * channels)
                .map(|i| weights[(i % channels) * 9 + i / channels])
                .collect();
            let input = Plane {
                height,
                width,
                channels,
                pad: 1,
            };
            let padded = to_plane(&x, input, 0.0);
            let plane = Plane {
                pad: case % 2,
                ..input
            };
            let mut got = vec![f32::NAN; plane.len()];
            depthwise(isa, &padded, &taps, &bias, act, plane, &mut got);
            let what = format!("{isa} {plane:?} {act:?}");
            assert!(border_is_zero(&got, plane), "{what}: border");
            assert_same_bits(&from_plane(&got, plane), &want, &what);
        }
    }
}

#[test]
fn gated_sum_gives_the_planar_kernels_values() {
    let mut rng = Rng::new(0x9a7e);
    for isa in Isa::available() {
        let n = lanes(isa);
        for terms in 1..=4 {
            let channels = n * (1 + rng.below(6));
            let pixels = 1 + rng.below(90);
            let plane = Plane {
                height: 1,
                width: pixels,
                channels,
                pad: 0,
            };
            let planar: Vec<Vec<f32>> = (0..terms).map(|_| rng.vec(channels * pixels)).collect();
            let gates: Vec<Vec<f32>> = (0..terms).map(|_| rng.vec(channels)).collect();
            let mut want = vec![0.0; channels * pixels];
            let views: Vec<&[f32]> = planar.iter().map(Vec::as_slice).collect();
            let gate_views: Vec<Option<&[f32]>> =
                gates.iter().map(|g| Some(g.as_slice())).collect();
            nchw_gated_sum::gated_sum(
                isa,
                nchw_gated_sum::Shape { channels, pixels },
                &views,
                &gate_views,
                &mut want,
            );
            let packed: Vec<Vec<f32>> = planar.iter().map(|t| to_plane(t, plane, 0.0)).collect();
            let views: Vec<&[f32]> = packed.iter().map(Vec::as_slice).collect();
            let gate_views: Vec<&[f32]> = gates.iter().map(Vec::as_slice).collect();
            let mut got = vec![f32::NAN; channels * pixels];
            for range in super::super::test_support::parts(&mut rng, pixels, 1) {
                let run = range.start * channels..range.end * channels;
                let part: Vec<&[f32]> = views.iter().map(|t| &t[run.clone()]).collect();
                gated_sum(isa, &part, &gate_views, channels, &mut got[run]);
            }
            assert_same_bits(
                &from_plane(&got, plane),
                &want,
                &format!("{isa} {terms} terms"),
            );
        }
    }
}

#[test]
fn channel_sums_add_as_sixteen_lanes() {
    let mut rng = Rng::new(0x5u64);
    for isa in Isa::available() {
        let channels = lanes(isa) * 3;
        for pixels in [1, 15, 16, 17, 50, 200, 803] {
            let x = rng.vec(pixels * channels);
            let mut got = vec![f32::NAN; channels];
            channel_sums(isa, &x, channels, &mut got);
            for c in 0..channels {
                let mut lanes = [0.0f32; 16];
                let full = pixels / 16 * 16;
                for p in 0..full {
                    lanes[p % 16] += x[p * channels + c];
                }
                let tail: f32 = (full..pixels).map(|p| x[p * channels + c]).sum();
                let want = lanes.iter().sum::<f32>() + tail;
                assert_eq!(
                    got[c].to_bits(),
                    want.to_bits(),
                    "{isa} {pixels} pixels channel {c}"
                );
            }
        }
    }
}

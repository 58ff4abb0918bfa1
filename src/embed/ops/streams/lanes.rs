//! [`InLanes`]: a block's streams run with channels in lanes (`kernels::channels_last`), and
//! [`Streams::compute_in_lanes`].

use std::cell::RefCell;

use crate::embed::kernels::channels_last::{self, Plane, Source};
use crate::embed::kernels::transpose::transpose_to;
use crate::embed::kernels::{Act, Isa};

use super::super::gated_sum::GatedSum;
use super::super::graph::Floats;
use super::super::parallel::{PIXEL_ALIGN, fork, split_shared};
use super::{BETWEEN, GATES, MAX_STREAMS, Step, Streams, TERMS, Terms, at_least};

thread_local! {
    /// The gated sum with channels in lanes, before it is moved to NCHW (as `TERMS`).
    static SUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A term's channel sums, on the thread that runs the stream.
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A block's streams as `kernels::channels_last` runs them: each stream's planes pixel by pixel
/// (`[y][x][c]`) from its first layer, which reads the block's NCHW input, to its gate; the
/// gated sum writes NCHW again. The same values, bit for bit, as the NCHW layers (each kernel
/// adds in their order), in less time where the planes are narrow: our default model's
/// 32-channel 40×20 depthwise layer 10.1 → 6.6 µs, the 64-channel 10×5 one 2.5 → 1.3 µs (AVX2).
/// Used on x86 (AVX2, AVX-512) when every stream is 1×1 and stride-1 depthwise float layers
/// whose channels are whole vectors, starting with a 1×1 layer, and every gate a plain mean.
/// Not for int8 streams: an int8 product with its outputs in lanes was tried and made our
/// default int8 model slower (docs/speed.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct InLanes {
    isa: Isa,
    height: usize,
    width: usize,
    streams: Vec<Vec<LaneStep>>,
    /// Floats of the largest plane between two layers of a stream (its border included).
    most: usize,
}

/// One layer of a stream in [`InLanes`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum LaneStep {
    /// A 1×1 layer: weights `[inputs][outputs]`.
    Pointwise {
        inputs: usize,
        outputs: usize,
        weights: Floats,
        bias: Floats,
        act: Act,
    },
    /// A 3×3 stride-1 depthwise layer: taps `[9][channels]`.
    Depthwise {
        channels: usize,
        taps: Floats,
        bias: Floats,
        act: Act,
    },
}

impl LaneStep {
    fn channels(&self) -> usize {
        match self {
            LaneStep::Pointwise { outputs, .. } => *outputs,
            LaneStep::Depthwise { channels, .. } => *channels,
        }
    }
}

impl InLanes {
    /// `streams` with channels in lanes, if they can run so (see [`InLanes`]); `shape` is the
    /// block's output shape.
    pub(super) fn of(streams: &[Vec<Step>], sum: &GatedSum, shape: &[usize]) -> Option<InLanes> {
        let Step::Pointwise(first) = streams.first()?.first()? else {
            return None;
        };
        let isa = first.isa();
        if !cfg!(target_arch = "x86_64") || isa == Isa::Baseline {
            return None;
        }
        let &[_, channels, height, width] = shape else {
            return None;
        };
        let n = channels_last::lanes(isa);
        let gates_fit = sum.gates.iter().all(|g| {
            g.as_ref()
                .is_some_and(|g| g.sums_only() && g.channels() == channels)
        });
        if !gates_fit {
            return None;
        }
        let mut lanes = Vec::with_capacity(streams.len());
        let mut most = 0;
        for stream in streams {
            if !matches!(stream.first(), Some(Step::Pointwise(_))) {
                return None;
            }
            let mut steps = Vec::with_capacity(stream.len());
            for step in stream {
                let lane = match step {
                    Step::Pointwise(op) if op.isa() == isa => {
                        let (inputs, outputs, weights, bias, act) = op.by_input();
                        LaneStep::Pointwise {
                            inputs,
                            outputs,
                            weights,
                            bias,
                            act,
                        }
                    }
                    Step::Depthwise(op) => {
                        let (shape, taps, bias, act) = op.by_tap();
                        if shape.stride != 1
                            || (shape.height, shape.width) != (height, width)
                            || op.isa != isa
                        {
                            return None;
                        }
                        LaneStep::Depthwise {
                            channels: shape.channels,
                            taps,
                            bias,
                            act,
                        }
                    }
                    _ => return None,
                };
                if lane.channels() % n != 0 {
                    return None;
                }
                most = most.max((height + 2) * (width + 2) * lane.channels());
                steps.push(lane);
            }
            if steps.last().map(LaneStep::channels) != Some(channels) {
                return None;
            }
            lanes.push(steps);
        }
        Some(InLanes {
            isa,
            height,
            width,
            streams: lanes,
            most,
        })
    }

    /// The plane of `channels` between layers, with a border when a depthwise layer reads it.
    fn plane(&self, channels: usize, pad: usize) -> Plane {
        Plane {
            height: self.height,
            width: self.width,
            channels,
            pad,
        }
    }

    /// Stream `s` on one image: from `x` (NCHW) to `term` (`[pixels][channels]`).
    fn run(&self, s: usize, x: &[f32], term: &mut [f32]) {
        let steps = &self.streams[s];
        BETWEEN.with_borrow_mut(|between| {
            at_least(between, 2 * self.most);
            let (mut done, mut next) = between.split_at_mut(self.most);
            let mut done_len = 0;
            for (i, step) in steps.iter().enumerate() {
                let last = i + 1 == steps.len();
                let pad = match steps.get(i + 1) {
                    Some(LaneStep::Depthwise { .. }) => 1,
                    _ => 0,
                };
                let plane = self.plane(step.channels(), pad);
                let out: &mut [f32] = if last {
                    &mut *term
                } else {
                    &mut next[..plane.len()]
                };
                match step {
                    LaneStep::Pointwise {
                        inputs,
                        weights,
                        bias,
                        act,
                        ..
                    } => {
                        let source = if i == 0 {
                            Source::Planar(x)
                        } else {
                            Source::Packed(&done[..done_len])
                        };
                        debug_assert!(i == 0 || steps[i - 1].channels() == *inputs);
                        channels_last::pointwise(
                            self.isa, source, *inputs, &weights.0, &bias.0, *act, plane, out,
                        );
                    }
                    LaneStep::Depthwise {
                        taps, bias, act, ..
                    } => {
                        channels_last::depthwise(
                            self.isa,
                            &done[..done_len],
                            &taps.0,
                            &bias.0,
                            *act,
                            plane,
                            out,
                        );
                    }
                }
                done_len = plane.len();
                if !last {
                    std::mem::swap(&mut done, &mut next);
                }
            }
        });
    }
}

impl Streams {
    /// [`Streams::compute`] with channels in lanes: each stream's thread runs it image by image
    /// and makes its gate from the channel sums; the sum is made pixel by pixel, split between
    /// the threads by pixels, each part moved into the NCHW output as it is done.
    pub(super) fn compute_in_lanes(&self, lanes: &InLanes, x: &[f32], y: &mut [f32]) {
        let (count, len) = (self.streams.len(), y.len());
        let (channels, pixels) = (self.sum.shape.channels, self.sum.shape.pixels);
        let batch = len / (channels * pixels);
        let (image, x_image) = (channels * pixels, x.len() / batch);
        let planes = batch * channels;
        TERMS.with_borrow_mut(|terms| {
            GATES.with_borrow_mut(|gates| {
                SUM.with_borrow_mut(|sum| {
                    at_least(terms, count * len);
                    at_least(gates, count * planes);
                    at_least(sum, len);
                    let (base, gate_base) = (Terms(terms.as_mut_ptr()), Terms(gates.as_mut_ptr()));
                    fork(count, self.work * batch, |part, parts| {
                        for s in 0..count {
                            if usize::from(self.groups[parts - 1][s]) != part {
                                continue;
                            }
                            // SAFETY: as in `compute`: each stream is run by exactly one part,
                            // which alone writes its term and its gate values.
                            let (out, gate) =
                                unsafe { (base.term(s, len), gate_base.term(s, planes)) };
                            for n in 0..batch {
                                let term = &mut out[n * image..][..image];
                                lanes.run(s, &x[n * x_image..][..x_image], term);
                                let Some(pooled) = &self.sum.gates[s] else {
                                    continue;
                                };
                                SUMS.with_borrow_mut(|sums| {
                                    sums.resize(channels, 0.0);
                                    channels_last::channel_sums(lanes.isa, term, channels, sums);
                                    pooled.of_sums(sums, &mut gate[n * channels..][..channels]);
                                });
                            }
                        }
                    });
                    let sum_base = Terms(sum.as_mut_ptr());
                    let terms = &terms[..count * len];
                    let gates = &gates[..count * planes];
                    split_shared(y, pixels, PIXEL_ALIGN, len * count, |range, out| {
                        let (y_base, _) = out.raw();
                        let run = range.start * channels..range.end * channels;
                        for n in 0..batch {
                            let mut views: [&[f32]; MAX_STREAMS] = [&[]; MAX_STREAMS];
                            let mut gate_views: [&[f32]; MAX_STREAMS] = [&[]; MAX_STREAMS];
                            for s in 0..count {
                                views[s] = &terms[s * len + n * image..][run.clone()];
                                gate_views[s] = &gates[s * planes + n * channels..][..channels];
                            }
                            // SAFETY: `sum` holds `len` floats; the parts' pixel runs are
                            // disjoint, each writes only its own.
                            let part = unsafe {
                                std::slice::from_raw_parts_mut(
                                    sum_base.ptr().add(n * image + run.start),
                                    run.len(),
                                )
                            };
                            channels_last::gated_sum(
                                lanes.isa,
                                &views[..count],
                                &gate_views[..count],
                                channels,
                                part,
                            );
                            // SAFETY: image `n`'s pixels `range` of every channel of `y`, which
                            // only this part writes.
                            unsafe {
                                transpose_to(
                                    lanes.isa,
                                    part,
                                    channels,
                                    channels,
                                    range.len(),
                                    y_base.add(n * image + range.start),
                                    pixels,
                                )
                            }
                        }
                    });
                })
            })
        });
    }
}

//! Per-thread resources of a run: the kernel pool a large layer's work is split with, and the
//! kernels' scratch buffer.

use std::cell::RefCell;
use std::sync::Arc;

use crate::embed::spin_pool::SpinPool;

/// Below this many multiply-adds (or pooled values) an op of a detector frame runs on one
/// thread: handing a part to a spinning worker costs little (`spin_pool`), but a part has to be
/// large enough to pay for the hand-off. With layers split by pixels and rows (each thread's
/// part of the planes stays in its cache), YOLOX-Nano at 736×416 on 2 threads (Intel Xeon, 2
/// vCPUs, time in operators, three runs each): 15.6 / 17.9 / 16.4 ms at 1 M, 13.8 / 14.2 / 14.9
/// at 256 K, 14.2 / 14.7 / 14.4 at 64 K. (Split by output channels, the AMD EPYC gave 10.8 ms at
/// 8 M, 8.0 at 1 M, 8.2 at 256 K.)
pub(crate) const FRAME_WORK: usize = 1 << 18;

/// The same for a crop's layers (the embedder): its small layers gain nothing from a second
/// thread, and an int8 model's 1×1 layers run on the calling thread (but with AVX2's product:
/// `quant::splits_by_outputs`), so its float layers shared around them only move their planes
/// between caches. A single crop on 2 threads (Intel Xeon, before AVX2's int8 split):
/// our default model 1.87 ms at 1 M, 1.94 at 256 K; osnet_x0_25_msmt17 in int8 1.21–1.23 ms at
/// 1 M, 1.42–1.43 at 256 K (1.22–1.25 on one thread). Again on 2026-12-07 (medians of 8
/// alternating turns, 1 M → 64 K): our default model on the AVX2 path 3.14 → 2.63 ms, but
/// natively (AVX-512) 1.65 → 1.66 and OSNet x0.25 1.17 → 1.26; int8 models no change.
pub(crate) const CROP_WORK: usize = 1 << 20;

/// [`CROP_WORK`] for a float model whose layers run on AVX2's kernels (an AVX2-only CPU, or
/// `REIDCAM_KERNELS=avx2+fma`): a layer takes them about twice AVX-512's time, so a smaller one
/// pays for the hand-off (figures in [`crop_work`]).
#[cfg(target_arch = "x86_64")]
const CROP_WORK_AVX2: usize = 1 << 16;

/// The least work of a crop's layer that is shared with the kernel pool: [`CROP_WORK`], or
/// `CROP_WORK_AVX2` (64 K, x86) for a float model on AVX2's kernels. Measured 2026-12-07 (Intel Xeon model
/// 207 with `REIDCAM_KERNELS=avx2+fma`, `reidcam bench`, one crop on 2 threads, least and
/// median p50 of 10 alternating turns, 1 M → 256 K → 64 K): our default model 2.34 / 2.71 →
/// 2.19 / 2.40 → 2.13 / 2.53 ms, OSNet x0.25 1.88 / 2.07 → 1.69 / 2.00 → 1.70 / 1.88;
/// retail-0267 (8 turns, 1 M → 64 K) 7.75 / 8.52 → 7.68 / 8.01. Not for int8 models, whose
/// float layers between the int8 products only move their planes between caches: our default
/// int8 model 1.93 / 2.15 → 2.01 / 2.32 ms. Natively (AVX-512) 64 K made OSNet x0.25 slower
/// (1.17 → 1.26 ms, the figures on [`CROP_WORK`]).
pub(crate) fn crop_work(isa: crate::embed::Isa, quantised: bool) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        crate::embed::Isa::Avx2Fma if !quantised => CROP_WORK_AVX2,
        _ => {
            let _ = quantised;
            CROP_WORK
        }
    }
}

/// Parts of a split by pixels start at multiples of this: whole tiles of every instruction set
/// (AVX-512's are 32 pixels wide) and whole cache lines.
pub(super) const PIXEL_ALIGN: usize = 64;

thread_local! {
    /// The pool the current run may share its layers of at least so much work with (see
    /// [`with_kernel_pool`]).
    static KERNEL_POOL: RefCell<Option<(Arc<SpinPool>, usize)>> = const { RefCell::new(None) };
}

/// Runs `f` (a model run on this thread) with `pool` available to our ops' [`split_units`] for
/// layers of at least `min_work` ([`FRAME_WORK`], [`CROP_WORK`]).
pub(crate) fn with_kernel_pool<R>(
    pool: Option<&Arc<SpinPool>>,
    min_work: usize,
    f: impl FnOnce() -> R,
) -> R {
    let previous = KERNEL_POOL.replace(pool.map(|p| (Arc::clone(p), min_work)));
    let result = f();
    KERNEL_POOL.set(previous);
    result
}

/// The current run's pool, if it shares a layer of `work_size` split in `units` units aligned to
/// `align`.
fn pool_for(work_size: usize, units: usize, align: usize) -> Option<Arc<SpinPool>> {
    KERNEL_POOL.with_borrow(|current| match current {
        Some((pool, min_work)) if work_size >= *min_work && units > align => Some(Arc::clone(pool)),
        _ => None,
    })
}

/// Runs `work` over `units` units of `out` (`unit` floats each): in as many contiguous parts of
/// equal size (±1 unit) as the pool has threads, this one included, each claimed by whichever is
/// free, when a kernel pool is set for this run and the op's `work_size` reaches
/// the run's least work; else all at once on this thread. `work` gets the unit range and its part of
/// `out`.
pub(super) fn split_units(
    out: &mut [f32],
    unit: usize,
    units: usize,
    work_size: usize,
    work: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    split_aligned(out, unit, units, 1, work_size, work);
}

/// [`split_units`] with every part starting at a multiple of `align` units (output channels
/// whose packed weights come in panels of `align`: `kernels::panel_width`); a part that would
/// then be empty is not run.
pub(super) fn split_aligned(
    out: &mut [f32],
    unit: usize,
    units: usize,
    align: usize,
    work_size: usize,
    work: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    debug_assert_eq!(out.len(), unit * units);
    let Some(pool) = pool_for(work_size, units, align) else {
        return work(0..units, out);
    };
    let parts = aligned_parts_of(&pool, units, align);
    let (base, len) = (Base(out.as_mut_ptr()), out.len());
    pool.run(parts, &|part| {
        let range = part_range(units, align, parts, part);
        if range.is_empty() {
            return;
        }
        let (start, end) = (range.start * unit, range.end * unit);
        assert!(end <= len);
        // SAFETY: the parts' ranges are disjoint and within `out`, which outlives the job
        // (`run` returns when every part is done) and is not used meanwhile.
        let mine = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
        work(range, mine);
    });
}

/// How many parts [`split_aligned`] cuts `units` into with `pool`.
fn aligned_parts_of(pool: &SpinPool, units: usize, align: usize) -> usize {
    (pool.workers() + 1).min(units.div_ceil(align))
}

/// How many parts [`split_aligned`] would cut `units` into for an op of `work_size` in this
/// run (1: it runs them all at once on this thread), and the units of each: part `i` is
/// `part_range(units, align, parts, i)` (empty ones are not run).
pub(super) fn aligned_parts(units: usize, align: usize, work_size: usize) -> usize {
    pool_for(work_size, units, align).map_or(1, |pool| aligned_parts_of(&pool, units, align))
}

/// The units of part `part` of `parts` (see [`aligned_parts`]).
pub(super) fn part_range(
    units: usize,
    align: usize,
    parts: usize,
    part: usize,
) -> std::ops::Range<usize> {
    boundary(units, align, parts, part)..boundary(units, align, parts, part + 1)
}

/// Where part `part` of `parts` of `units` starts: the even split's boundary rounded to the
/// nearest multiple of `align` (the last part ends at `units`).
fn boundary(units: usize, align: usize, parts: usize, part: usize) -> usize {
    if part == parts {
        units
    } else {
        ((part * units / parts + align / 2) / align * align).min(units)
    }
}

/// A buffer the parts of one job write different elements of, each its own (which elements is
/// the job's business: the pixels of every channel a part computes, say).
#[derive(Clone, Copy)]
pub(super) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: handed to the parts of one job, which write disjoint elements (the contract of
// `split_shared`'s callers) while the buffer's owner waits for the job.
unsafe impl Sync for Shared {}

impl Shared {
    /// The buffer's start and length, for a kernel that writes only its part's elements.
    pub(super) fn raw(self) -> (*mut f32, usize) {
        (self.ptr, self.len)
    }
}

/// Runs `work` over `0..units` in contiguous parts (as [`split_aligned`]: each starting at a
/// multiple of `align`, only when a pool is set and the work is large enough; each at least
/// `align / 2` long) with `out` shared between them: each part must write only the elements of
/// `out` that belong to its units (e.g. its pixels of every output channel).
pub(super) fn split_shared(
    out: &mut [f32],
    units: usize,
    align: usize,
    work_size: usize,
    work: impl Fn(std::ops::Range<usize>, Shared) + Sync,
) {
    let shared = Shared {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let Some(pool) = pool_for(work_size, units, align) else {
        return work(0..units, shared);
    };
    // At most one part per `align` units, so that every part is at least `align / 2` long (the
    // last one included: it starts at most `align / 2` past its even share's start). A pixel
    // part is then never shorter than a vector (`kernels::MAX_LANES`).
    let parts = (pool.workers() + 1).min(units / align).max(1);
    pool.run(parts, &|part| {
        let range = boundary(units, align, parts, part)..boundary(units, align, parts, part + 1);
        if !range.is_empty() {
            work(range, shared);
        }
    });
}

/// Runs `job(part, parts)` for each of `parts` parts — as many as the run's pool has threads, at
/// most `most` — one per thread of the pool (the calling thread's last), when a kernel pool is
/// set for this run and `work_size` reaches its least work; else `job(0, 1)` on this thread.
/// Inside the parts of a fork no op shares its work again (each part is one thread's).
pub(super) fn fork(most: usize, work_size: usize, job: impl Fn(usize, usize) + Sync) {
    let Some(pool) = pool_for(work_size, most, 1) else {
        return job(0, 1);
    };
    let parts = (pool.workers() + 1).min(most);
    pool.run(parts, &|part| {
        with_kernel_pool(None, usize::MAX, || job(part, parts))
    });
}

/// `out`'s start, shared with the pool's threads (each writes its own part).
#[derive(Clone, Copy)]
struct Base(*mut f32);

// SAFETY: only used by `split_units` to hand disjoint parts of one buffer to its parts.
unsafe impl Sync for Base {}

impl Base {
    /// The address `offset` floats in.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

thread_local! {
    /// Our kernels' scratch (padded planes, phase-split images, pooled rows): grown to the
    /// largest layer once per thread, then reused.
    pub(super) static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Parts start at multiples of the panel width, cover every unit once, and stay near even.
    #[test]
    fn aligned_parts_start_at_panel_boundaries_and_cover_every_unit_once() {
        let pool = Arc::new(SpinPool::new(1, "test-split").unwrap());
        for (units, align) in [(20, 6), (16, 8), (12, 8), (9, 8), (256, 8), (7, 1), (40, 6)] {
            let seen = Mutex::new(Vec::new());
            let mut out = vec![0.0f32; units * 3];
            with_kernel_pool(Some(&pool), FRAME_WORK, || {
                split_aligned(&mut out, 3, units, align, FRAME_WORK, |range, part| {
                    assert_eq!(part.len(), range.len() * 3);
                    part.iter_mut().for_each(|v| *v += 1.0);
                    seen.lock().unwrap().push(range);
                });
            });
            let mut ranges = seen.into_inner().unwrap();
            ranges.sort_by_key(|r| r.start);
            assert!(
                out.iter().all(|&v| v == 1.0),
                "{units}/{align}: a unit run twice or never"
            );
            assert!(ranges.iter().all(|r| r.start % align == 0 && !r.is_empty()));
            if units > align {
                let largest = ranges.iter().map(|r| r.len()).max().unwrap();
                assert!(
                    largest <= units.div_ceil(2) + align,
                    "{units}/{align}: {ranges:?}"
                );
            }
        }
    }

    /// A fork runs each of its parts once, as many as the pool has threads (at most `most`),
    /// none of them sharing its work again; below the least work, or without a pool, one part.
    #[test]
    fn a_fork_runs_each_part_once_and_its_parts_share_nothing() {
        for workers in 1..=3 {
            let pool = Arc::new(SpinPool::new(workers, "test-fork").unwrap());
            for most in 1..=5 {
                let seen = Mutex::new(Vec::new());
                with_kernel_pool(Some(&pool), FRAME_WORK, || {
                    fork(most, FRAME_WORK, |part, parts| {
                        let inner = pool_for(usize::MAX, 8, 1).is_some();
                        seen.lock().unwrap().push((part, parts, inner));
                    });
                });
                let mut seen = seen.into_inner().unwrap();
                seen.sort();
                let parts = (workers + 1).min(most);
                // A part of a real fork shares nothing; a lone part may (the pool is idle).
                let want: Vec<_> = (0..parts).map(|p| (p, parts, parts == 1)).collect();
                assert_eq!(seen, want, "{workers} workers, at most {most}");
            }
            let seen = Mutex::new(Vec::new());
            with_kernel_pool(Some(&pool), FRAME_WORK, || {
                fork(4, FRAME_WORK - 1, |part, parts| {
                    seen.lock().unwrap().push((part, parts))
                });
            });
            assert_eq!(seen.into_inner().unwrap(), [(0, 1)]);
        }
        let seen = Mutex::new(Vec::new());
        fork(4, usize::MAX, |part, parts| {
            seen.lock().unwrap().push((part, parts))
        });
        assert_eq!(seen.into_inner().unwrap(), [(0, 1)]);
    }

    /// Shared-output parts cover every unit once, start at multiples of `align` and are at
    /// least `align / 2` long, on pools of 1 to 7 workers.
    #[test]
    fn shared_parts_cover_every_unit_once_and_are_never_short() {
        for workers in 1..=7 {
            let pool = Arc::new(SpinPool::new(workers, "test-shared").unwrap());
            for (units, align) in [
                (256, 64),
                (300, 64),
                (19136, 64),
                (130, 64),
                (13, 1),
                (2, 1),
            ] {
                let seen = Mutex::new(Vec::new());
                let mut out = vec![0.0f32; units];
                with_kernel_pool(Some(&pool), FRAME_WORK, || {
                    split_shared(&mut out, units, align, FRAME_WORK, |range, out| {
                        let (ptr, len) = out.raw();
                        assert_eq!(len, units);
                        for i in range.clone() {
                            // SAFETY: each part writes its own units (what this test checks).
                            unsafe { *ptr.add(i) += 1.0 };
                        }
                        seen.lock().unwrap().push(range);
                    });
                });
                let ranges = seen.into_inner().unwrap();
                assert!(
                    out.iter().all(|&v| v == 1.0),
                    "{workers} workers, {units}/{align}: a unit run twice or never"
                );
                for r in &ranges {
                    assert!(
                        r.start % align == 0 && r.len() >= align / 2,
                        "{workers} workers, {units}/{align}: {ranges:?}"
                    );
                }
            }
        }
    }
}

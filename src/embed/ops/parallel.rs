//! Per-thread resources of a run: the kernel pool a large layer's work is split with, and the
//! kernels' scratch buffer.

use std::cell::RefCell;
use std::sync::Arc;

/// Below this many multiply-adds (or pooled values) an op runs on one thread: waking a pool
/// thread and waiting for it costs tens of microseconds (measured on the 2-core CI machine:
/// splitting every layer of OSNet x0.25 made a crop 30% slower), more than a small layer takes.
pub(super) const PARALLEL_WORK: usize = 8 << 20;

thread_local! {
    /// The pool the current run may share its largest layers with (see [`with_kernel_pool`]).
    static KERNEL_POOL: RefCell<Option<Arc<rayon::ThreadPool>>> = const { RefCell::new(None) };
}

/// Runs `f` (a model run on this thread) with `pool` available to our ops' [`split_units`].
pub(crate) fn with_kernel_pool<R>(
    pool: Option<&Arc<rayon::ThreadPool>>,
    f: impl FnOnce() -> R,
) -> R {
    let previous = KERNEL_POOL.replace(pool.cloned());
    let result = f();
    KERNEL_POOL.set(previous);
    result
}

/// Runs `work` over `units` units of `out` (`unit` floats each): in contiguous parts, this thread
/// taking the first and each pool worker one more, when a kernel pool is set for this run and the
/// op's `work_size` reaches [`PARALLEL_WORK`]; else all at once on this thread. `work` gets the
/// unit range and its part of `out`.
pub(super) fn split_units(
    out: &mut [f32],
    unit: usize,
    units: usize,
    work_size: usize,
    work: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    debug_assert_eq!(out.len(), unit * units);
    let pool = match KERNEL_POOL.with_borrow(Clone::clone) {
        Some(pool) if work_size >= PARALLEL_WORK && units > 1 => pool,
        _ => return work(0..units, out),
    };
    let parts = (pool.current_num_threads() + 1).min(units);
    let work = &work;
    let first = units / parts;
    let (mine, mut rest) = out.split_at_mut(first * unit);
    pool.in_place_scope(|scope| {
        let mut start = first;
        for part in 1..parts {
            let end = (part + 1) * units / parts;
            let (theirs, tail) = rest.split_at_mut((end - start) * unit);
            rest = tail;
            let range = start..end;
            scope.spawn(move |_| work(range, theirs));
            start = end;
        }
        work(0..first, mine);
    });
}

thread_local! {
    /// Our kernels' scratch (padded planes, phase-split images, pooled rows): grown to the
    /// largest layer once per thread, then reused.
    pub(super) static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A stride-2 depthwise convolution's stride-1 planes before subsampling (`ops::conv`).
    pub(super) static FULL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

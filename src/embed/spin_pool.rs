//! The extra threads a model run shares its work with: workers that spin for a while after each
//! job before they sleep, so that the next layer's job, posted microseconds later, starts at
//! once.
//!
//! A pool that puts its workers to sleep between jobs (rayon's, which this replaces) pays a
//! wake-up per layer — tens of microseconds on the 2-core machines here, more than many layers
//! take: with it, YOLOX-Nano at 736×416 ran slower on 2 threads than on 1 (16.2 vs 13.0 ms per
//! frame, AMD EPYC), and sharing OSNet's layers did not pay at all. onnxruntime's pool spins the
//! same way. A worker sleeps (parks) after [`SPIN`] without work, so an idle camera costs no CPU.
//!
//! One job at a time: [`SpinPool::run`] posts its parts, runs the last one on the calling thread
//! while the workers claim the others one by one (so a job's part `k` stays on one thread from
//! job to job, with its data in that thread's cache), takes any a worker has not claimed by then
//! (a worker the system has not scheduled leaves its share to the others), and returns when
//! every part is done. Nothing is allocated per job.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a worker looks for the next job before it sleeps.
pub const SPIN: Duration = Duration::from_micros(200);

/// A job: called with the part number.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped for each job, to wake the workers: they look for parts to claim until it changes
    /// again.
    epoch: AtomicU64,
    /// The current job's parts (high 32 bits) and the next part to claim (low 32 bits): one
    /// `fetch_add` claims a part and says whether it exists, whichever job a late worker sees.
    claim: AtomicU64,
    /// The current job, written by `run` before it publishes `claim` (Release) and read only by
    /// whoever claimed one of its parts (Acquire); valid until every part is `done`.
    job: UnsafeCell<Option<*const Job>>,
    done: AtomicUsize,
    sleeping: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by `run` while no part of the previous job is unclaimed or
// running, and read only after a successful claim of the current job's part, which
// synchronises with the write (Release/Acquire on `claim`); `run` waits until every claimed part
// is done before the job can go away. The job itself is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    /// Claims and runs parts of the current job until none is left.
    fn run_parts(&self) {
        loop {
            let claim = self.claim.fetch_add(1, Ordering::AcqRel);
            let (parts, part) = ((claim >> 32) as usize, (claim & 0xffff_ffff) as usize);
            if part >= parts {
                return;
            }
            // SAFETY: a part was claimed (see `Shared`): the job is published and alive.
            let job = unsafe { (*self.job.get()).expect("a job is posted before its parts") };
            // SAFETY: as above.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(part) }));
            if result.is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

pub struct SpinPool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    /// Held by the running job: a second `run` meanwhile (another thread, or a part calling
    /// back in) runs its parts on its own thread instead.
    busy: Mutex<()>,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpinPool({} workers)", self.threads.len())
    }
}

impl SpinPool {
    /// `workers` threads named `name-N`.
    pub fn new(workers: usize, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut pool = SpinPool {
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(workers),
            handles: Vec::with_capacity(workers),
            busy: Mutex::new(()),
        };
        for n in 1..=workers {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || work(&shared))?;
            pool.threads.push(handle.thread().clone());
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Worker threads (the calling thread of [`run`](Self::run) is one more).
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Runs `job(part)` for every part in `0..parts`, each once, on this thread and the workers
    /// — this thread runs the last part, the workers claim the others, and this thread takes
    /// what is still unclaimed when it is done, so a worker the system has not scheduled leaves
    /// its parts to the others — and returns when all are done. A panic in any part panics
    /// here.
    pub fn run(&self, parts: usize, job: &(dyn Fn(usize) + Sync)) {
        self.post(parts, job, true);
    }

    /// [`run`](Self::run), but the calling thread leaves every part but the last to the workers
    /// (waits for them, however late they start): a part that keeps per-thread state — the
    /// recycled tensors of a model's own ops — then runs on the same worker every time. The pool
    /// must have a worker per such part (checked). As with `run`, a job posted while another
    /// runs (from another thread, or from inside a part) runs all its parts on the calling
    /// thread: a pool that pins its parts is for one caller.
    pub fn run_pinned(&self, parts: usize, job: &(dyn Fn(usize) + Sync)) {
        assert!(
            parts <= self.workers() + 1,
            "{parts} parts pinned to {} workers",
            self.workers()
        );
        self.post(parts, job, false);
    }

    fn post(&self, parts: usize, job: &(dyn Fn(usize) + Sync), take_unclaimed: bool) {
        if parts <= 1 {
            // Nothing to share: the workers are not woken.
            (0..parts).for_each(job);
            return;
        }
        let Ok(_busy) = self.busy.try_lock() else {
            (0..parts).for_each(job);
            return;
        };
        assert!(parts < 1 << 31, "{parts} parts");
        let shared = &*self.shared;
        shared.panicked.store(false, Ordering::Relaxed);
        // SAFETY: the pointer is only used until every part of this job is done, which this
        // function waits for (`Wait`, also when a part on this thread panics) before `job` can
        // go away.
        let erased: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(job) };
        // SAFETY: no part of the previous job is unclaimed or running (see `Shared`).
        unsafe { *shared.job.get() = Some(erased) };
        shared.done.store(0, Ordering::Relaxed);
        // The workers claim every part but the last, which is this thread's: so part `k` of a
        // job runs on the same thread from job to job while the workers keep up, and a layer
        // split like the one before it finds its part of the input in that thread's cache.
        let claimable = parts - 1;
        shared
            .claim
            .store((claimable as u64) << 32, Ordering::Release);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleeping.load(Ordering::SeqCst) > 0 {
            self.threads.iter().for_each(Thread::unpark);
        }
        struct Wait<'a>(&'a Shared, usize, bool);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                // Parts nobody has claimed yet are taken here (unless pinned to the workers);
                // then the claimed ones waited for.
                if self.2 {
                    self.0.run_parts();
                }
                let started = Instant::now();
                while self.0.done.load(Ordering::Acquire) < self.1 {
                    if started.elapsed() < SPIN {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let wait = Wait(shared, claimable, take_unclaimed);
        if catch_unwind(AssertUnwindSafe(|| job(parts - 1))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        drop(wait);
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a part of a kernel pool job panicked");
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.threads.iter().for_each(Thread::unpark);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A worker: waits for each new epoch (spinning, then parked), claims parts of its job.
fn work(shared: &Shared) {
    let mut seen = 0;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            if shared.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            shared.sleeping.fetch_add(1, Ordering::SeqCst);
            if shared.epoch.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            shared.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        seen = shared.epoch.load(Ordering::Acquire);
        shared.run_parts();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job_across_many_jobs_and_sleeps() {
        let pool = SpinPool::new(3, "test").unwrap();
        let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..2000 {
            pool.run(4, &|part| {
                counts[part].fetch_add(1, Ordering::Relaxed);
            });
            if round % 500 == 0 {
                // Long enough for the workers to park: the next job must wake them.
                std::thread::sleep(SPIN * 3);
            }
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 2000);
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = SpinPool::new(1, "test").unwrap();
        for _ in 0..50 {
            let hit = catch_unwind(AssertUnwindSafe(|| {
                pool.run(2, &|part| assert!(part == 0, "part {part} fails"));
            }));
            assert!(hit.is_err());
            let ran = AtomicUsize::new(0);
            pool.run(2, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 2);
        }
    }

    #[test]
    fn pinned_parts_run_on_the_worker_even_when_it_starts_late() {
        let pool = SpinPool::new(1, "test").unwrap();
        let caller = std::thread::current().id();
        for round in 0..200 {
            let on_worker = AtomicBool::new(false);
            pool.run_pinned(2, &|part| {
                if part == 0 {
                    on_worker.store(std::thread::current().id() != caller, Ordering::Relaxed);
                }
            });
            assert!(
                on_worker.load(Ordering::Relaxed),
                "round {round}: part 0 ran here"
            );
            if round % 50 == 0 {
                // The worker parks: it starts the next job late, after the caller's part.
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn a_nested_run_does_its_parts_on_the_calling_thread() {
        let pool = SpinPool::new(1, "test").unwrap();
        let ran = AtomicUsize::new(0);
        pool.run(2, &|_| {
            pool.run(3, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(ran.load(Ordering::Relaxed), 6);
    }
}

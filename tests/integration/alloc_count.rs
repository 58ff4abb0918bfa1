//! A global allocator that counts allocations per thread, to prove that hot paths allocate
//! nothing after start-up; and in the whole process, for a test run alone in a child process
//! (see [`run_alone`]) whose work spans threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations by every thread of the process.
static PROCESS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // const-initialised and without Drop: safe to touch from inside the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

pub struct Counting;

fn count(bytes: usize) {
    PROCESS.fetch_add(1, Ordering::Relaxed);
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

// SAFETY: every method forwards to `System` unchanged; counting touches only a thread-local and
// an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged from the caller, who upholds `GlobalAlloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged from the caller, who upholds `GlobalAlloc`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: forwarded unchanged from the caller, who upholds `GlobalAlloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged from the caller, who upholds `GlobalAlloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the number of allocations this thread made meanwhile.
pub fn allocations_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = f();
    (result, ALLOCATIONS.with(Cell::get) - before)
}

/// Runs `f` and returns its result with the bytes this thread requested meanwhile (reallocations
/// count their growth).
pub fn bytes_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = BYTES.with(Cell::get);
    let result = f();
    (result, BYTES.with(Cell::get) - before)
}

/// Held by the allocation tests whose count depends on other threads keeping up (a sink's pump,
/// a server's clients): run side by side, under emulation, one starved the other.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn alone() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns its result with the allocations every thread of the process made
/// meanwhile: meaningful only in a process running nothing else (see [`run_alone`]).
pub fn process_allocations_during<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = PROCESS.load(Ordering::SeqCst);
    let result = f();
    (result, PROCESS.load(Ordering::SeqCst) - before)
}

/// Runs the ignored test `name` alone in a child process of this test binary (one test thread,
/// nothing else running), with `REIDCAM_RUN_ALONE` set; fails with its output if it fails or did
/// not run.
pub fn run_alone(name: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    // Through the emulator under qemu-user (`common::command`).
    let out = crate::common::command(&exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("REIDCAM_RUN_ALONE", "1")
        .output()
        .expect("the test binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "{name} in a child process: {}\n{stdout}\n{stderr}",
        out.status
    );
    // What the child printed (its measurements), for the log.
    eprint!("{stderr}");
}

/// Whether this process is a child started by [`run_alone`]: the only kind in which the
/// ignored tests it runs may count the process's allocations.
pub fn alone_in_process() -> bool {
    std::env::var_os("REIDCAM_RUN_ALONE").is_some()
}

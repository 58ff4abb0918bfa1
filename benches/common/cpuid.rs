//! `--cpuid avx2-only`: this process sees an x86 CPU without AVX-512, AVX-VNNI or AMX, so that
//! both engines — onnxruntime's MLAS, which reads CPUID itself, and our kernels — pick the code an
//! AVX2-only CPU (AMD EPYC before Zen 4, Intel before Ice Lake) runs, on this machine.
//!
//! Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, CPUs with the `cpuid_fault` flag, KVM
//! guests included) makes every `cpuid` instruction of this thread, and of the threads it starts
//! afterwards, raise SIGSEGV; the handler runs the real `cpuid` (faulting off for that one
//! instruction), clears the bits below, and steps over the instruction. Only what runs later sees
//! it: the C library chose its string functions before `main`, which is why the benchmarks call
//! this first.
//!
//! Same core, same caches and clock as the AVX-512 runs: this measures the AVX2 code of both
//! engines against each other, not an AMD core (its ratios can differ).

use std::sync::atomic::{AtomicBool, Ordering};

/// `arch_prctl`'s code for CPUID faulting (asm/prctl.h): 0 faults, 1 runs.
const ARCH_SET_CPUID: libc::c_int = 0x1012;

/// The bits cleared, by leaf and subleaf, register: (leaf, subleaf, ebx, ecx, edx, eax).
/// Leaf 7.0: EBX AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31; ECX VBMI 1,
/// VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14; EDX 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22,
/// FP16 23, AMX-TILE 24, AMX-INT8 25. Leaf 7.1: EAX AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21,
/// AVX-IFMA 23; EDX AVX-VNNI-INT8 4, AVX-NE-CONVERT 5, AVX10 19.
const HIDDEN: [(u32, u32, u32, u32, u32, u32); 2] = [
    (
        7,
        0,
        1 << 16 | 1 << 17 | 1 << 21 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 30 | 1 << 31,
        1 << 1 | 1 << 6 | 1 << 11 | 1 << 12 | 1 << 14,
        1 << 2 | 1 << 3 | 1 << 8 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25,
        0,
    ),
    (
        7,
        1,
        0,
        0,
        1 << 4 | 1 << 5 | 1 << 19,
        1 << 4 | 1 << 5 | 1 << 21 | 1 << 23,
    ),
];

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Runs `cpuid` with faulting off for this one instruction; async-signal-safe.
fn real_cpuid(leaf: u32, subleaf: u32) -> std::arch::x86_64::CpuidResult {
    // SAFETY: arch_prctl with ARCH_SET_CPUID only flips this thread's faulting flag.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1) };
    let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0) };
    r
}

extern "C" fn on_fault(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid ucontext_t for an SA_SIGINFO handler; rip points at the
    // faulting instruction, readable since the CPU just fetched it.
    unsafe {
        let gregs = &mut (*(context as *mut libc::ucontext_t)).uc_mcontext.gregs;
        let rip = gregs[libc::REG_RIP as usize] as *const u8;
        if *rip != 0x0f || *rip.add(1) != 0xa2 {
            // Not a cpuid: a real fault. Back to the default action, which the instruction's
            // second fault (on return) takes.
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            return;
        }
        let (leaf, subleaf) = (
            gregs[libc::REG_RAX as usize] as u32,
            gregs[libc::REG_RCX as usize] as u32,
        );
        let mut r = real_cpuid(leaf, subleaf);
        for &(l, s, ebx, ecx, edx, eax) in &HIDDEN {
            if leaf == l && subleaf == s {
                r.eax &= !eax;
                r.ebx &= !ebx;
                r.ecx &= !ecx;
                r.edx &= !edx;
            }
        }
        gregs[libc::REG_RAX as usize] = r.eax as i64;
        gregs[libc::REG_RBX as usize] = r.ebx as i64;
        gregs[libc::REG_RCX as usize] = r.ecx as i64;
        gregs[libc::REG_RDX as usize] = r.edx as i64;
        gregs[libc::REG_RIP as usize] += 2;
    }
}

/// Whether [`avx2_only`] ran.
pub fn hidden() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Hides AVX-512, AVX-VNNI and AMX from this thread and the threads it starts from now on.
/// On a CPU that has none of them there is nothing to hide, and nothing is done. Exits (a visible
/// skip, status 0) if the CPU has them but cannot fault on `cpuid`; panics if our kernels already
/// chose AVX-512 (std caches what it detects: call this before anything else).
pub fn avx2_only() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let anything_to_hide = HIDDEN.iter().any(|&(l, s, ebx, ecx, edx, eax)| {
        let r = std::arch::x86_64::__cpuid_count(l, s);
        r.ebx & ebx != 0 || r.ecx & ecx != 0 || r.edx & edx != 0 || r.eax & eax != 0
    });
    if !anything_to_hide {
        println!("--cpuid avx2-only: this CPU has no AVX-512, AVX-VNNI or AMX: nothing to hide");
        INSTALLED.store(false, Ordering::SeqCst);
        return;
    }
    // SAFETY: a plain sigaction with a handler that only touches its own ucontext and makes
    // async-signal-safe system calls; arch_prctl only sets this thread's CPUID faulting.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()) != 0 {
            panic!("--cpuid avx2-only: cannot install the SIGSEGV handler");
        }
        if libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0 {
            println!(
                "skipped: --cpuid avx2-only: this CPU has AVX-512 or AVX-VNNI and cannot fault on \
                 cpuid (no `cpuid_fault` in /proc/cpuinfo: {}), so it cannot pass for an \
                 AVX2-only one",
                std::io::Error::last_os_error()
            );
            std::process::exit(0);
        }
    }
    assert!(
        !std::arch::is_x86_feature_detected!("avx512f"),
        "--cpuid avx2-only: AVX-512 was detected before the flag took effect"
    );
    assert!(
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
        "--cpuid avx2-only: this CPU has no AVX2 and FMA to run"
    );
}

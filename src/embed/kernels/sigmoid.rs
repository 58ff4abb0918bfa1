//! The logistic sigmoid over a slice, in place (YOLOX's objectness and class scores).

use super::{Isa, exp};

/// `1 / (1 + e^(−x))` with [`exp`] (its argument clamped, so never 0 / 0 and never above 1).
#[inline(always)]
pub fn sigmoid_one(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// [`sigmoid_one`] on every value: a plain loop that LLVM vectorises for each instruction set.
pub fn sigmoid(isa: Isa, values: &mut [f32]) {
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX2 + FMA.
        Isa::Avx2Fma => unsafe { x86::avx2(values) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX-512F.
        Isa::Avx512 => unsafe { x86::avx512(values) },
        Isa::Baseline => body(values),
    }
}

#[inline(always)]
fn body(values: &mut [f32]) {
    for v in values {
        *v = sigmoid_one(*v);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(values: &mut [f32]) {
        super::body(values)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(values: &mut [f32]) {
        super::body(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_is_within_a_few_ulp_and_bounded() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        xs.extend([f32::MIN, -1e30, -100.0, -88.0, 88.0, 100.0, 1e30, f32::MAX]);
        for isa in Isa::available() {
            let mut got = xs.clone();
            sigmoid(isa, &mut got);
            for (&x, &s) in xs.iter().zip(&got) {
                assert!((0.0..=1.0).contains(&s), "{isa}: sigmoid({x}) = {s}");
                let want = 1.0 / (1.0 + (-f64::from(x)).exp());
                let tolerance = 4.0 * f64::from(f32::EPSILON) * want.max(1e-37);
                assert!(
                    (f64::from(s) - want).abs() <= tolerance.max(2e-38),
                    "{isa}: sigmoid({x}) = {s}, want {want}"
                );
            }
        }
    }
}

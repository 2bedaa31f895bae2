//! Runtime CPU dispatch for resgrad's own loops. The crate is compiled for
//! the baseline x86-64 target (SSE2), so its pointwise, BatchNorm and
//! im2col loops ran on 128-bit vectors (the `gemm` crate dispatches its own
//! AVX-512 kernels). [`fast`] runs a closure inside a function compiled
//! with AVX-512 (or AVX2 + FMA) enabled when the CPU has it: the closure is
//! inlined there and LLVM vectorises it for the wider registers. The math is
//! the same code either way; only the instruction set differs, and results
//! are bitwise the same (Rust never contracts `a * b + c` into an FMA nor
//! reorders floating-point sums on its own).

/// Runs `f` with the widest vector instruction set the CPU supports.
#[inline(always)]
pub fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_returns_the_closure_value() {
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let s = super::fast(|| v.iter().map(|x| x * 2.0).sum::<f32>());
        assert_eq!(s, v.iter().map(|x| x * 2.0).sum::<f32>());
    }
}

//! Runtime CPU dispatch for resgrad's own loops. The crate is compiled for
//! the baseline x86-64 target (SSE2), so its pointwise, BatchNorm and
//! im2col loops ran on 128-bit vectors (the `gemm` crate dispatches its own
//! AVX-512 kernels). [`fast`] runs a closure inside a function compiled
//! with AVX-512 (or AVX2 + FMA) enabled when the CPU has it: the closure is
//! inlined there and LLVM vectorises it for the wider registers. The math is
//! the same code either way; only the instruction set differs, and results
//! are bitwise the same (Rust never contracts `a * b + c` into an FMA nor
//! reorders floating-point sums on its own).

/// The widest vector instruction set this CPU offers resgrad's loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (16 f32 lanes)
    Avx512,
    /// AVX2 with FMA (8 f32 lanes)
    Avx2Fma,
    /// the compile target's baseline
    Baseline,
}

impl Isa {
    /// The CPU's (a cached feature check).
    #[inline(always)]
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }
}

/// Runs `f` with the widest vector instruction set the CPU supports.
#[inline(always)]
pub fn fast<R>(f: impl FnOnce() -> R) -> R {
    match Isa::detect() {
        // SAFETY: the CPU supports AVX-512F (detected).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(f) },
        // SAFETY: the CPU supports AVX2 and FMA (detected).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { run_avx2(f) },
        _ => f(),
    }
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

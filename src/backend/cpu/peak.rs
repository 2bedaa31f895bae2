//! `resgrad peak`: the machine's measured f32 multiply-add peak, the
//! denominator of every "share of peak" in BENCHMARKS.md, and its bf16
//! dot-product peak (the denominator for `--precision bf16` runs).
//!
//! Each of the rayon pool's threads runs a loop of independent fused
//! multiply-adds on the widest vectors the CPU has (AVX-512: 16 lanes,
//! AVX2+FMA: 8 lanes, otherwise scalar `mul_add`), with enough accumulators
//! in flight to hide the FMA latency on two FMA ports (12 chains: latency 4-6
//! cycles x 2 ports). All threads start together and the slowest finishes
//! the round; the best of several rounds is reported, since turbo clocks and
//! other tenants make single rounds vary. A nominal peak (cores x GHz x
//! lanes x 2 ports x 2) is not used: turbo makes it wrong both ways.
//!
//! The bf16 loop is the same with `vdpbf16ps` (AVX512-BF16) in place of the
//! FMA: each instruction multiplies 32 bf16 pairs and adds them into 16 f32
//! lanes, 32 multiply-adds = 64 FLOPs per zmm. It runs where the CPU has
//! AVX512-BF16 (`bf16_gflops` is absent otherwise).

use crate::ops::simd::Isa;
use serde::Serialize;
use std::time::Instant;

/// Independent accumulator chains per thread.
const CHAINS: usize = 12;

/// The measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PeakResult {
    pub threads: usize,
    /// "avx512" | "avx2+fma" | "scalar"
    pub isa: &'static str,
    /// best round, all threads together
    pub gflops: f64,
    /// every round, in order
    pub rounds_gflops: Vec<f64>,
    /// the bf16 dot-product peak (`vdpbf16ps`, 2 FLOPs per multiply-add),
    /// best round; `None` without AVX512-BF16
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16_gflops: Option<f64>,
    /// every bf16 round, in order (empty without AVX512-BF16)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bf16_rounds_gflops: Vec<f64>,
}

/// One thread's loop: `iters` x [`CHAINS`] x `lanes` FMAs; returns a value
/// that depends on every accumulator so the loop cannot be removed.
fn spin(iters: u64) -> (f32, &'static str, usize) {
    match Isa::detect() {
        // SAFETY: the CPU has AVX-512F (detected).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => return (unsafe { spin_avx512(iters) }, "avx512", 16),
        // SAFETY: the CPU has AVX2 and FMA (detected).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => return (unsafe { spin_avx2(iters) }, "avx2+fma", 8),
        _ => {}
    }
    let mut acc = [0f32; CHAINS];
    let (a, b) = (std::hint::black_box(1.000_000_1f32), 0.999_999_9f32);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(a, b);
        }
    }
    (acc.iter().sum(), "scalar", 1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn spin_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    let a = _mm512_set1_ps(std::hint::black_box(1.000_000_1));
    let b = _mm512_set1_ps(0.999_999_9);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn spin_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    let a = _mm256_set1_ps(std::hint::black_box(1.000_000_1));
    let b = _mm256_set1_ps(0.999_999_9);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = 0.0;
    for x in acc {
        let mut v = [0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), x);
        s += v.iter().sum::<f32>();
    }
    s
}

/// One thread's bf16 loop: `iters` x [`CHAINS`] `vdpbf16ps`.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn spin_bf16(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    // 1.0 and -0.5 as bf16 pairs: the sums stay small and exact
    let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(std::hint::black_box(
        0x3f80_3f80,
    )));
    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0xbf00_3f00u32 as i32));
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_dpbf16_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

/// The bf16 dot-product peak of the current rayon pool, GFLOP/s per round
/// (empty without AVX512-BF16).
fn measure_bf16(rounds: usize, iters: u64) -> Vec<f64> {
    if !crate::gemm_bf16::supported() {
        return Vec::new();
    }
    let threads = rayon::current_num_threads();
    let mut out = Vec::with_capacity(rounds.clamp(1, 1 << 16));
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX512-BF16 checked above.
        let runs: Vec<f32> = rayon::broadcast(|_| unsafe { spin_bf16(iters) });
        #[cfg(not(target_arch = "x86_64"))]
        let runs: Vec<f32> = Vec::new();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(runs.iter().sum::<f32>());
        // 32 multiply-adds per vdpbf16ps, 2 FLOPs each
        let flops = 2.0 * 32.0 * (threads * CHAINS) as f64 * iters as f64;
        out.push(flops / secs * 1e-9);
    }
    out
}

/// Measures the f32 FMA peak of the current rayon pool: `rounds` rounds of
/// `iters` loop trips per thread (20M trips at 16 lanes is ~0.1 s per round
/// on a 3 GHz core).
pub fn measure_peak(rounds: usize, iters: u64) -> PeakResult {
    let threads = rayon::current_num_threads();
    let mut isa = "scalar";
    let mut rounds_gflops = Vec::with_capacity(rounds.clamp(1, 1 << 16));
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        // broadcast: exactly one loop on every thread of the pool
        let runs: Vec<(f32, &'static str, usize)> = rayon::broadcast(|_| spin(iters));
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(runs.iter().map(|r| r.0).sum::<f32>());
        let lanes = runs[0].2;
        isa = runs[0].1;
        let flops = 2.0 * (threads * CHAINS * lanes) as f64 * iters as f64;
        rounds_gflops.push(flops / secs * 1e-9);
    }
    let gflops = rounds_gflops.iter().cloned().fold(0.0, f64::max);
    // half the trips: each instruction does twice an FMA's work
    let bf16_rounds_gflops = measure_bf16(rounds, iters / 2);
    let bf16_gflops = (!bf16_rounds_gflops.is_empty())
        .then(|| bf16_rounds_gflops.iter().cloned().fold(0.0, f64::max));
    PeakResult {
        threads,
        isa,
        gflops,
        rounds_gflops,
        bf16_gflops,
        bf16_rounds_gflops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_every_round_and_is_positive() {
        let r = measure_peak(2, 1000);
        assert_eq!(r.rounds_gflops.len(), 2);
        assert!(r.gflops > 0.0 && r.gflops.is_finite());
        assert_eq!(
            r.gflops,
            r.rounds_gflops.iter().cloned().fold(0.0, f64::max)
        );
        assert!(["avx512", "avx2+fma", "scalar"].contains(&r.isa));
        if crate::gemm_bf16::supported() {
            assert_eq!(r.bf16_rounds_gflops.len(), 2);
            let b = r.bf16_gflops.unwrap();
            assert!(b > 0.0 && b.is_finite());
        } else {
            assert!(r.bf16_gflops.is_none());
        }
    }
}

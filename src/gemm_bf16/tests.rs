use super::*;
use crate::gemm::matmul;
use crate::gemm::tests::{check_degenerate, transposed};

/// A GEMM with the views of [`matmul`] on f32.
type Gemm = fn(MatMut<'_, f32>, Mat<'_, f32>, Mat<'_, f32>, bool);

/// `init (+)= a · b` by `gemm`, every buffer row-major: `a` (m, k), `b`
/// (k, n), `init` and the result (m, n).
fn rm_product(
    gemm: Gemm,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    init: &[f32],
    accumulate: bool,
) -> Vec<f32> {
    let mut c = init.to_vec();
    gemm(
        MatMut::rm(&mut c, m, n),
        Mat::rm(a, m, k),
        Mat::rm(b, k, n),
        accumulate,
    );
    c
}

/// Asserts `|got[i] - want[i]| <= bound(i)` for every `i`; the errors.
fn assert_within(what: &str, got: &[f32], want: &[f32], bound: impl Fn(usize) -> f64) -> Vec<f64> {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    (0..got.len())
        .map(|i| {
            let (err, bound) = ((got[i] as f64 - want[i] as f64).abs(), bound(i));
            assert!(
                err <= bound,
                "{what} [{i}]: {} vs {}, err {err:e} > {bound:e}",
                got[i],
                want[i]
            );
            err
        })
        .collect()
}

/// Asserts `got` and `want` hold the same bits.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what} [{i}]: {x:e} vs {y:e}");
    }
}

/// Deterministic values of mixed magnitude and sign (no RNG crate needed).
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let u = (s >> 8) as f32 / (1u32 << 24) as f32; // [0, 1)
            let mag = [1.0, 1e-3, 37.0, 0.5][(s & 3) as usize];
            (2.0 * u - 1.0) * mag
        })
        .collect()
}

/// Row-major `(m, k) x (k, n)` in f64: the products' absolute sums.
fn abs_products(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut s = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for t in 0..k {
                s[i * n + j] += (a[i * k + t] as f64 * b[t * n + j] as f64).abs();
            }
        }
    }
    s
}

/// Whether this CPU lacks AVX512-BF16 (said on stderr): the kernel's tests
/// then pass without running.
fn skipped() -> bool {
    if !supported() {
        eprintln!("skipped: no AVX512-BF16");
    }
    !supported()
}

const U: f64 = 1.0 / (1u64 << 24) as f64;
const C: f64 = 2.01;

#[test]
fn rounding_matches_vcvtne2ps2bf16() {
    if skipped() {
        return;
    }
    let mut xs = values(4096, 7);
    xs.extend([
        0.0,
        -0.0,
        1.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,  // denormal
        -1e-40, // denormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0x3f80_8000), // tie, even: stays 0x3f80
        f32::from_bits(0x3f81_8000), // tie, odd: up to 0x3f82
        f32::from_bits(0x7f7f_ffff), // rounds to infinity
    ]);
    xs.resize(xs.len().next_multiple_of(32), 0.5);
    #[cfg(target_arch = "x86_64")]
    for chunk in xs.chunks_exact(32) {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn hw(x: &[f32]) -> [u16; 32] {
            let v = _mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(x.as_ptr().add(16)),
                _mm512_loadu_ps(x.as_ptr()),
            );
            std::mem::transmute::<__m512bh, [u16; 32]>(v)
        }
        // SAFETY: AVX512-BF16 checked above; the chunk holds 32 values.
        let want = unsafe { hw(chunk) };
        for (x, w) in chunk.iter().zip(want) {
            assert_eq!(to_bf16(*x), w, "{x:e} ({:#x})", x.to_bits());
        }
    }
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(to_bf16(1e-40), 0);
}

/// Shapes that cross every blocking edge: ragged MR / NR tiles, odd K,
/// K > KC, M > MC, N > NC.
const SHAPES: [(usize, usize, usize); 11] = [
    (144, 16, 1024),
    (7, 9, 33),
    (576, 64, 64),
    (1, 1, 1),
    (8, 32, 2),
    (7, 33, 5),
    (16, 1024, 144),
    (9, 40, 1031),
    (70, 530, 64),
    (144, 256, 16),
    (3, 600, 17),
];

#[test]
fn matches_f32_gemm_on_bf16_rounded_inputs() {
    if skipped() {
        return;
    }
    for (seed, &(m, n, k)) in SHAPES.iter().enumerate() {
        let a = values(m * k, seed as u32);
        let b = values(k * n, 100 + seed as u32);
        let (ar, br): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| round_bf16(x)).collect(),
            b.iter().map(|&x| round_bf16(x)).collect(),
        );
        let bound_sum = abs_products(m, n, k, &ar, &br);
        for accumulate in [false, true] {
            let init = values(m * n, 200 + seed as u32);
            let want = rm_product(matmul, (m, n, k), &ar, &br, &init, accumulate);
            // the unrounded operands: the kernel rounds them as it packs
            let got = rm_product(matmul_bf16, (m, n, k), &a, &b, &init, accumulate);
            let what = format!("({m},{n},{k}) acc={accumulate}");
            assert_within(&what, &got, &want, |i| {
                let d = if accumulate {
                    init[i].abs() as f64
                } else {
                    0.0
                };
                C * (k as f64 + 1.0) * U * (bound_sum[i] + d) + k as f64 * 2f64.powi(-125)
            });
        }
    }
}

#[test]
fn matches_f32_gemm_within_the_bf16_rounding_bound() {
    if skipped() {
        return;
    }
    let mut worst = 0f64;
    for (seed, &(m, n, k)) in SHAPES.iter().enumerate() {
        let a = values(m * k, 300 + seed as u32);
        let b = values(k * n, 400 + seed as u32);
        let sum = abs_products(m, n, k, &a, &b);
        let zeros = vec![0f32; m * n];
        let want = rm_product(matmul, (m, n, k), &a, &b, &zeros, false);
        let got = rm_product(matmul_bf16, (m, n, k), &a, &b, &zeros, false);
        let rel = 2f64.powi(-7) + 2f64.powi(-16) + C * (k as f64 + 1.0) * U;
        let errs = assert_within(&format!("({m},{n},{k})"), &got, &want, |i| {
            rel * sum[i] + k as f64 * 2f64.powi(-125)
        });
        for (err, sum) in errs.iter().zip(&sum) {
            worst = worst.max(err / sum.max(f64::MIN_POSITIVE));
        }
    }
    // the kernel really rounds: an f32 GEMM would be ~1e-7 relative here
    assert!(worst > 1e-5, "no bf16 rounding visible: {worst:e}");
}

/// Asserts that `matmul_bf16` through other views of the operands gives
/// the bits of the row-major call: `through(a, b)` takes `a` (m, k) and
/// `b` (k, n) row-major (values of `seed`) and returns the row-major result.
fn same_bits_as_row_major(
    what: &str,
    (m, n, k): (usize, usize, usize),
    seed: u32,
    through: impl Fn(&[f32], &[f32]) -> Vec<f32>,
) {
    let a = values(m * k, seed);
    let b = values(k * n, seed + 1);
    let want = rm_product(matmul_bf16, (m, n, k), &a, &b, &vec![0f32; m * n], false);
    // same pairs, same order within each tile: the same bits
    assert_same_bits(what, &through(&a, &b), &want);
}

#[test]
fn strided_views_match_row_major() {
    if skipped() {
        return;
    }
    // the conv passes' views: a^T (rs = 1), b^T (rs = 1), dst^T (rs = 1)
    let (m, n, k) = (21, 45, 67);
    same_bits_as_row_major("transposed views", (m, n, k), 1, |a, b| {
        let (at, bt) = (transposed(a, m, k), transposed(b, k, n));
        let mut got_t = vec![0f32; n * m];
        matmul_bf16(
            MatMut::rm_t(&mut got_t, m, n),
            Mat::rm_t(&at, m, k),
            Mat::rm_t(&bt, k, n),
            false,
        );
        transposed(&got_t, n, m)
    });
}

#[test]
fn matmul_in_f32_is_the_f32_gemm() {
    let (m, n, k) = (5, 6, 7);
    let a = values(m * k, 3);
    let b = values(k * n, 4);
    let zeros = vec![0f32; m * n];
    let x = rm_product(matmul, (m, n, k), &a, &b, &zeros, false);
    let in_f32: Gemm = |d, a, b, acc| matmul_in(false, d, a, b, acc);
    let y = rm_product(in_f32, (m, n, k), &a, &b, &zeros, false);
    assert_same_bits("matmul_in(f32)", &y, &x);
}

#[test]
fn general_strides_match_row_major() {
    if skipped() {
        return;
    }
    // every operand a view with both strides > 1 (the packing's plain loops)
    let (m, n, k) = (11, 37, 19);
    // a row-major (rows, cols) buffer spread to every other row and column
    let spread = |v: &[f32], rows: usize, cols: usize| {
        let mut w = vec![f32::NAN; 2 * rows * 2 * cols];
        for i in 0..rows {
            for j in 0..cols {
                w[2 * i * 2 * cols + 2 * j] = v[i * cols + j];
            }
        }
        w
    };
    fn view(d: &[f32], rows: usize, cols: usize) -> Mat<'_, f32> {
        Mat {
            data: d,
            rows,
            cols,
            rs: 4 * cols,
            cs: 2,
        }
    }
    same_bits_as_row_major("strided views", (m, n, k), 5, |a, b| {
        let (a2, b2) = (spread(a, m, k), spread(b, k, n));
        let mut got = vec![0f32; m * n];
        let (a, b) = (view(&a2, m, k), view(&b2, k, n));
        matmul_bf16(MatMut::rm(&mut got, m, n), a, b, false);
        got
    });
}

#[test]
fn degenerate_products() {
    if skipped() {
        return;
    }
    check_degenerate("matmul_bf16", matmul_bf16);
    check_degenerate("matmul_bf16_packed", |d, a, b, acc| {
        matmul_bf16_packed(d, &PackedA::new(a), b, acc)
    });
}

//! A bf16 matrix multiply with f32 accumulation on AVX512-BF16: the GEMM of
//! [`crate::precision::Precision::Bf16`]. Same views and the same
//! `dst = (accumulate ? dst : 0) + a * b` as [`crate::gemm::matmul`]; the
//! operands are f32 and are rounded to bf16 (round to nearest even) while
//! they are packed, so no bf16 copy of any activation is ever stored.
//!
//! Layout (Goto / BLIS style, llm.c-sized): `b` is packed per `(KC, NC)`
//! block into panels of [`NR`] = 32 columns, `a` per `(MC, KC)` block into
//! panels of [`MR`] = 8 rows, both as *K-pairs*: one `u32` holds the bf16 of
//! `k = 2q` (low half) and `k = 2q + 1` (high half), the operand layout of
//! `vdpbf16ps`, which multiplies 16 such pairs and adds both products to 16
//! f32 lanes. The micro-kernel keeps an 8 x 32 f32 tile in 16 zmm
//! registers; per pair it loads two `b` vectors and broadcasts eight `a`
//! pairs (16 `vdpbf16ps`, 512 multiply-adds). An odd `K` is padded with a
//! zero pair half, ragged `M` / `N` edges with zero rows / columns.
//!
//! # Error bound (the tests check it)
//!
//! Let `â`, `b̂` be the operands rounded to bf16 ([`round_bf16`]: 8
//! significant bits, `|â - a| <= 2^-8 |a|`, denormals flushed to zero as
//! `vcvtne2ps2bf16` does). A product of two bf16 values has at most 16
//! significant bits, so it is exact in f32; both this kernel and
//! [`crate::gemm::matmul`] on `(â, b̂)` therefore sum the same `K` exact
//! products `p_t = â_it b̂_tj` (plus `dst` when accumulating), only in a
//! different order and grouping. Any order of `n` f32 additions rounded to
//! nearest errs by at most `γ_(n-1) Σ|p_t|`, `γ_n = n u / (1 - n u)`,
//! `u = 2^-24`, and `vdpbf16ps` (which flushes denormal products and sums to
//! zero) adds at most `2^-126` per product on top. Hence, per output,
//!
//! ```text
//! |C_bf16 - C_f32(â, b̂)| <= c (K + 1) 2^-24 (Σ_t |â_it| |b̂_tj| + |dst_ij|) + K 2^-125,   c = 2.01
//! ```
//!
//! (two such error terms, one per side, `γ` rounded up for `K <= 2^16`).
//! Against the f32 product of the *unrounded* operands, each product also
//! carries the rounding of both factors, `|â b̂ - a b| <= (2^-7 + 2^-16) |a b|`:
//!
//! ```text
//! |C_bf16 - C_f32(a, b)| <= (2^-7 + 2^-16 + c (K + 1) 2^-24) (Σ_t |a_it| |b_tj| + |dst_ij|) + K 2^-125
//! ```

use crate::gemm::{Mat, MatMut};
use crate::scalar::Scalar;
use std::any::TypeId;
use std::cell::RefCell;

/// Rows of the micro-kernel's tile (and of a packed `a` panel).
pub const MR: usize = 8;
/// Columns of the micro-kernel's tile (two zmm of 16 f32).
pub const NR: usize = 32;
/// `K` per packed block (even, so K-pairs never straddle blocks).
const KC: usize = 512;
/// Rows of `a` per packed block (8 panels: 8 * 256 pairs * 32 B = 64 KiB).
const MC: usize = 64;
/// Columns of `b` per packed block (256 pairs * 512 * 4 B = 512 KiB, in L2).
const NC: usize = 512;

/// Whether this CPU has AVX512-BF16 (a cached feature check).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 bits of `x`, rounded to nearest even exactly as
/// `vcvtne2ps2bf16` rounds: a denormal or zero becomes a zero of the same
/// sign, a NaN a quiet NaN, an overflow infinity.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let r = if b & 0x7f80_0000 == 0 {
        (b >> 16) & 0x8000
    } else if b & 0x7fff_ffff > 0x7f80_0000 {
        (b >> 16) | 0x0040
    } else {
        rounded
    };
    r as u16
}

/// `x` rounded to bf16 and back to f32 (what the kernel multiplies).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// One K-pair: `lo` in the low half, `hi` in the high half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | ((to_bf16(hi) as u32) << 16)
}

/// Packs `a[rows, k0 .. k0 + kc]` into `MR`-row panels of K-pairs:
/// `dst[(panel * kc2 + q) * MR + i] = pair(a[row, k0 + 2q], a[row, k0 + 2q + 1])`
/// with `row = rows.start + panel * MR + i`, zero outside `a`.
#[inline(always)]
fn pack_a(dst: &mut [u32], a: &Mat<f32>, rows: (usize, usize), k0: usize, kc: usize) {
    let kc2 = kc.div_ceil(2);
    let (r0, mc) = rows;
    for (p, panel) in dst.chunks_exact_mut(kc2 * MR).take(mc.div_ceil(MR)).enumerate() {
        for i in 0..MR {
            let r = p * MR + i;
            if r >= mc {
                for q in 0..kc2 {
                    panel[q * MR + i] = 0;
                }
                continue;
            }
            let row = &a.data[(r0 + r) * a.rs..];
            let at = |k: usize| if k < kc { row[(k0 + k) * a.cs] } else { 0.0 };
            for q in 0..kc2 {
                panel[q * MR + i] = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
}

/// Packs `b[k0 .. k0 + kc, cols]` into `NR`-column panels of K-pairs:
/// `dst[(panel * kc2 + q) * NR + j] = pair(b[k0 + 2q, col], b[k0 + 2q + 1, col])`
/// with `col = cols.start + panel * NR + j`, zero outside `b`.
#[inline(always)]
fn pack_b(dst: &mut [u32], b: &Mat<f32>, k0: usize, kc: usize, cols: (usize, usize)) {
    let kc2 = kc.div_ceil(2);
    let (c0, nc) = cols;
    for (p, panel) in dst.chunks_exact_mut(kc2 * NR).take(nc.div_ceil(NR)).enumerate() {
        let j0 = c0 + p * NR;
        let w = NR.min(nc - p * NR);
        for q in 0..kc2 {
            let out = &mut panel[q * NR..][..NR];
            let (k_lo, k_hi) = (k0 + 2 * q, k0 + 2 * q + 1);
            let has_hi = 2 * q + 1 < kc;
            if b.cs == 1 {
                // rows of b are contiguous: two row slices, vectorisable
                let lo = &b.data[k_lo * b.rs + j0..][..w];
                if has_hi {
                    let hi = &b.data[k_hi * b.rs + j0..][..w];
                    for ((o, &x), &y) in out.iter_mut().zip(lo).zip(hi) {
                        *o = pair(x, y);
                    }
                } else {
                    for (o, &x) in out.iter_mut().zip(lo) {
                        *o = pair(x, 0.0);
                    }
                }
            } else {
                for (j, o) in out[..w].iter_mut().enumerate() {
                    let col = &b.data[(j0 + j) * b.cs..];
                    let y = if has_hi { col[k_hi * b.rs] } else { 0.0 };
                    *o = pair(col[k_lo * b.rs], y);
                }
            }
            out[w..].fill(0);
        }
    }
}

/// Where one micro-kernel tile goes: `MR x NR` at `c`, of which the
/// top-left `mr x nr` is inside the matrix.
struct Tile {
    c: *mut f32,
    rs: usize,
    cs: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
}

/// `tile (+)= a_panel · b_panel` over `kc2` K-pairs.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `a` holds `kc2 * MR` and `b`
/// `kc2 * NR` values; every `(i < mr, j < nr)` of the tile is a valid,
/// exclusively borrowed `f32` at `c + i * rs + j * cs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(kc2: usize, a: *const u32, b: *const u32, t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for q in 0..kc2 {
        let bp = b.add(q * NR);
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const __m512i));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16) as *const __m512i));
        let ap = a.add(q * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
    }
    if t.mr == MR && t.nr == NR && t.cs == 1 {
        for (i, acc) in acc.iter().enumerate() {
            let row = t.c.add(i * t.rs);
            for (h, &v) in acc.iter().enumerate() {
                let p = row.add(16 * h);
                let v = if t.accumulate {
                    _mm512_add_ps(_mm512_loadu_ps(p), v)
                } else {
                    v
                };
                _mm512_storeu_ps(p, v);
            }
        }
        return;
    }
    let mut buf = [0f32; MR * NR];
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(buf.as_mut_ptr().add(i * NR), acc[0]);
        _mm512_storeu_ps(buf.as_mut_ptr().add(i * NR + 16), acc[1]);
    }
    for i in 0..t.mr {
        for j in 0..t.nr {
            let p = t.c.add(i * t.rs + j * t.cs);
            let v = buf[i * NR + j];
            *p = if t.accumulate { *p + v } else { v };
        }
    }
}

thread_local! {
    /// This thread's packed `a` and `b` blocks, reused across calls.
    static PACKED: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst = (accumulate ? dst : 0) + bf16(a) * bf16(b)`, f32 accumulation,
/// single-threaded, the views of [`crate::gemm::matmul`] (see the module
/// doc for the rounding and its error bound).
///
/// Panics if the views are inconsistent or the CPU lacks AVX512-BF16: both
/// are bugs in resgrad, never a consequence of user input (the CLI checks
/// the CPU with `Precision::check_supported` before it builds a model).
pub fn matmul_bf16(dst: MatMut<'_, f32>, a: Mat<'_, f32>, b: Mat<'_, f32>, accumulate: bool) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matmul_bf16: inconsistent dims"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, n, dst.rs, dst.cs) < dst.data.len(),
        "matmul_bf16: dst view out of bounds"
    );
    assert!(
        last(m, k, a.rs, a.cs) < a.data.len(),
        "matmul_bf16: lhs view out of bounds"
    );
    assert!(
        last(k, n, b.rs, b.cs) < b.data.len(),
        "matmul_bf16: rhs view out of bounds"
    );
    assert!(supported(), "matmul_bf16 needs AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    PACKED.with_borrow_mut(|(ap, bp)| {
        let kc_max = KC.min(k.next_multiple_of(2));
        let want_a = MC.min(m).next_multiple_of(MR) * kc_max / 2;
        let want_b = NC.min(n).next_multiple_of(NR) * kc_max / 2;
        if ap.len() < want_a {
            ap.resize(want_a, 0);
        }
        if bp.len() < want_b {
            bp.resize(want_b, 0);
        }
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let kc2 = kc.div_ceil(2);
                crate::ops::simd::fast(
                    #[inline(always)]
                    || pack_b(bp, &b, pc, kc, (jc, nc)),
                );
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    crate::ops::simd::fast(
                        #[inline(always)]
                        || pack_a(ap, &a, (ic, mc), pc, kc),
                    );
                    for jr in (0..nc).step_by(NR) {
                        for ir in (0..mc).step_by(MR) {
                            let (i, j) = (ic + ir, jc + jr);
                            let t = Tile {
                                // SAFETY: (i, j) is inside dst (i < m, j < n),
                                // bounds-checked above.
                                c: unsafe { dst.data.as_mut_ptr().add(i * dst.rs + j * dst.cs) },
                                rs: dst.rs,
                                cs: dst.cs,
                                mr: MR.min(m - i),
                                nr: NR.min(n - j),
                                accumulate: accumulate || pc > 0,
                            };
                            // SAFETY: AVX512-BF16 checked above; the panels
                            // hold kc2 pairs of MR rows / NR columns; the
                            // tile's mr x nr entries are inside dst, which
                            // this function borrows uniquely.
                            unsafe {
                                kernel(
                                    kc2,
                                    ap.as_ptr().add(ir / MR * kc2 * MR),
                                    bp.as_ptr().add(jr / NR * kc2 * NR),
                                    &t,
                                )
                            }
                        }
                    }
                }
            }
        }
    });
}

/// [`crate::gemm::matmul`] or, when `bf16` is set, [`matmul_bf16`]: the
/// GEMM of a layer whose precision is known at run time. `bf16` needs `T`
/// to be `f32` (a model checks that when its precision is set).
pub fn matmul_in<T: Scalar>(
    bf16: bool,
    dst: MatMut<'_, T>,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
) {
    if !bf16 {
        return crate::gemm::matmul(dst, a, b, accumulate);
    }
    assert!(
        TypeId::of::<T>() == TypeId::of::<f32>(),
        "bf16 GEMM on non-f32 tensors"
    );
    let cast = |m: Mat<'_, T>| Mat {
        // SAFETY: T is f32 (same TypeId, asserted above).
        data: unsafe { std::slice::from_raw_parts(m.data.as_ptr() as *const f32, m.data.len()) },
        rows: m.rows,
        cols: m.cols,
        rs: m.rs,
        cs: m.cs,
    };
    let d = MatMut {
        // SAFETY: T is f32 (same TypeId, asserted above).
        data: unsafe {
            std::slice::from_raw_parts_mut(dst.data.as_mut_ptr() as *mut f32, dst.data.len())
        },
        rows: dst.rows,
        cols: dst.cols,
        rs: dst.rs,
        cs: dst.cs,
    };
    matmul_bf16(d, cast(a), cast(b), accumulate)
}

#[cfg(test)]
mod tests;

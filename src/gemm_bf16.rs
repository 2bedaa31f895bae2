//! A bf16 matrix multiply with f32 accumulation on AVX512-BF16: the GEMM of
//! [`crate::precision::Precision::Bf16`]. Same views and the same
//! `dst = (accumulate ? dst : 0) + a * b` as [`crate::gemm::matmul`]; the
//! operands are f32 and are rounded to bf16 (round to nearest even) while
//! they are packed, so no bf16 copy of any activation is ever stored.
//!
//! Layout (Goto / BLIS style, llm.c-sized): `b` is packed per `(KC, NC)`
//! block into panels of 32 columns (16 when `N <= 16`: the weight
//! gradient's `cout = 16`), `a` per `(MC, KC)` block into panels of
//! [`MR`] = 8 rows, both as *K-pairs*: one `u32` holds the bf16 of `k = 2q`
//! (low half) and `k = 2q + 1` (high half), the operand layout of
//! `vdpbf16ps`, which multiplies 16 such pairs and adds both products to
//! 16 f32 lanes. A row of `a` packed is its own run of pairs (so a
//! row-major `a` packs with one `vcvtne2ps2bf16` per 32 values); a `b`
//! panel holds, per pair, its 32 columns side by side (two rows of a
//! row-major `b` interleaved with `vpermt2w`). The micro-kernel keeps an
//! 8 x 32 f32 tile in 16 zmm registers; per pair it loads two `b` vectors
//! and broadcasts eight `a` pairs (16 `vdpbf16ps`, 512 multiply-adds). An
//! odd `K` is padded with a zero pair half, ragged `M` / `N` edges with
//! zero rows / columns.
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

use crate::gemm::{prologue, Mat, MatMut};
use crate::scalar::Scalar;
use std::any::TypeId;
use std::cell::RefCell;

/// Rows of the micro-kernel's tile (and of a packed `a` panel).
pub const MR: usize = 8;
/// Columns of the micro-kernel's tile (two zmm of 16 f32).
pub const NR: usize = 32;
/// `K` per packed block (even, so K-pairs never straddle blocks).
const KC: usize = 512;
/// Columns of `b` per packed block (256 pairs * 512 * 4 B = 512 KiB, in L2).
const NC: usize = 512;

/// Whether this CPU has AVX512-BF16 (and the AVX-512F/BW the packing
/// uses; every CPU with AVX512-BF16 has them). A cached feature check.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
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

/// `dst[q] = pair(src[2q], src[2q + 1])` (`src[2q + 1]` = 0 past its end):
/// a contiguous run of K is its own pair stream, 32 values per
/// `vcvtne2ps2bf16`.
///
/// # Safety
/// The CPU has AVX-512F/BW and AVX512-BF16; `dst.len() == src.len().div_ceil(2)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_of_run(dst: &mut [u32], src: &[f32]) {
    use std::arch::x86_64::*;
    let full = src.len() / 32;
    for v in 0..full {
        let s = src.as_ptr().add(32 * v);
        let h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s.add(16)), _mm512_loadu_ps(s));
        _mm512_storeu_si512(
            dst.as_mut_ptr().add(16 * v) as *mut __m512i,
            std::mem::transmute::<__m512bh, __m512i>(h),
        );
    }
    for (q, d) in dst.iter_mut().enumerate().skip(16 * full) {
        let hi = src.get(2 * q + 1).copied().unwrap_or(0.0);
        *d = pair(src[2 * q], hi);
    }
}

/// `dst[j] = pair(lo[j], hi[j])` for `j < lo.len() <= 32`, zero past it:
/// two rows of K interleaved, 32 columns per two conversions and two
/// `vpermt2w`.
///
/// # Safety
/// The CPU has AVX-512F/BW and AVX512-BF16; `dst.len() == 32`,
/// `hi.len() == lo.len()` (or `hi` empty: zeros).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_rows(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
    use std::arch::x86_64::*;
    if lo.len() == 32 && hi.len() == 32 {
        let (l, h) = (lo.as_ptr(), hi.as_ptr());
        let lb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(l.add(16)), _mm512_loadu_ps(l));
        let hb = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(h.add(16)), _mm512_loadu_ps(h));
        let (lb, hb) = (
            std::mem::transmute::<__m512bh, __m512i>(lb),
            std::mem::transmute::<__m512bh, __m512i>(hb),
        );
        // 16-bit lanes: lo[j] from `lb` (index j), hi[j] from `hb` (32 + j)
        let mut idx = [0i16; 64];
        for (t, x) in idx.iter_mut().enumerate() {
            *x = ((t / 2) + 32 * (t % 2)) as i16;
        }
        let i0 = _mm512_loadu_si512(idx.as_ptr() as *const __m512i);
        let i1 = _mm512_add_epi16(i0, _mm512_set1_epi16(16));
        let d = dst.as_mut_ptr() as *mut __m512i;
        _mm512_storeu_si512(d, _mm512_permutex2var_epi16(lb, i0, hb));
        _mm512_storeu_si512(d.add(1), _mm512_permutex2var_epi16(lb, i1, hb));
        return;
    }
    for (j, d) in dst.iter_mut().enumerate() {
        *d = match lo.get(j) {
            Some(&x) => pair(x, hi.get(j).copied().unwrap_or(0.0)),
            None => 0,
        };
    }
}

/// Packs `a[rows, k0 .. k0 + kc]` into `MR`-row panels, each row its own
/// run of K-pairs: `dst[(panel * MR + i) * kc2 + q] = pair(a[row, k0 + 2q],
/// a[row, k0 + 2q + 1])` with `row = rows.0 + panel * MR + i`, zero outside `a`.
///
/// # Safety
/// As [`pairs_of_run`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a(dst: &mut [u32], a: &Mat<f32>, rows: (usize, usize), k0: usize, kc: usize) {
    let kc2 = kc.div_ceil(2);
    let (r0, mc) = rows;
    for (r, out) in dst
        .chunks_exact_mut(kc2)
        .take(mc.next_multiple_of(MR))
        .enumerate()
    {
        if r >= mc {
            out.fill(0);
            continue;
        }
        let row = &a.data[(r0 + r) * a.rs..];
        if a.cs == 1 {
            pairs_of_run(out, &row[k0..k0 + kc]);
        } else {
            let at = |k: usize| if k < kc { row[(k0 + k) * a.cs] } else { 0.0 };
            for (q, o) in out.iter_mut().enumerate() {
                *o = pair(at(2 * q), at(2 * q + 1));
            }
        }
    }
}

/// Packs `b[k0 .. k0 + kc, cols]` into panels of `nr` columns:
/// `dst[(panel * kc2 + q) * nr + j] = pair(b[k0 + 2q, col], b[k0 + 2q + 1, col])`
/// with `col = cols.0 + panel * nr + j`, zero outside `b`.
///
/// # Safety
/// As [`pairs_of_run`]; `nr` is 16 or 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b(
    dst: &mut [u32],
    b: &Mat<f32>,
    k0: usize,
    kc: usize,
    cols: (usize, usize),
    nr: usize,
) {
    let kc2 = kc.div_ceil(2);
    let (c0, nc) = cols;
    let mut tmp = [0u32; 32];
    for (p, panel) in dst
        .chunks_exact_mut(kc2 * nr)
        .take(nc.div_ceil(nr))
        .enumerate()
    {
        let j0 = c0 + p * nr;
        let w = nr.min(nc - p * nr);
        if b.cs == 1 {
            // rows of b are contiguous: interleave two row slices
            for q in 0..kc2 {
                let lo = &b.data[(k0 + 2 * q) * b.rs + j0..][..w];
                let hi: &[f32] = if 2 * q + 1 < kc {
                    &b.data[(k0 + 2 * q + 1) * b.rs + j0..][..w]
                } else {
                    &[]
                };
                if nr == 32 {
                    interleave_rows(&mut panel[q * 32..][..32], lo, hi);
                } else {
                    interleave_rows(&mut tmp, lo, hi);
                    panel[q * nr..][..nr].copy_from_slice(&tmp[..nr]);
                }
            }
        } else if b.rs == 1 {
            // columns of b are contiguous: each is its own pair stream
            let mut run = vec![0u32; kc2];
            for j in 0..nr {
                if j < w {
                    pairs_of_run(&mut run, &b.data[(j0 + j) * b.cs + k0..][..kc]);
                } else {
                    run.fill(0);
                }
                for (q, &x) in run.iter().enumerate() {
                    panel[q * nr + j] = x;
                }
            }
        } else {
            for q in 0..kc2 {
                for j in 0..nr {
                    panel[q * nr + j] = if j < w {
                        let col = &b.data[(j0 + j) * b.cs..];
                        let y = if 2 * q + 1 < kc {
                            col[(k0 + 2 * q + 1) * b.rs]
                        } else {
                            0.0
                        };
                        pair(col[(k0 + 2 * q) * b.rs], y)
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// Where one micro-kernel tile goes: `MR x 16 NV` at `c`, of which the
/// top-left `mr x nr` is inside the matrix.
struct Tile {
    c: *mut f32,
    rs: usize,
    cs: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
}

/// `tile (+)= a_panel · b_panel` over `kc2` K-pairs, `NV` zmm of columns.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `a` holds `MR * kc2` and `b`
/// `kc2 * 16 NV` values; every `(i < mr, j < nr)` of the tile is a valid,
/// exclusively borrowed `f32` at `c + i * rs + j * cs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const NV: usize>(kc2: usize, a: *const u32, b: *const u32, t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for q in 0..kc2 {
        let bp = b.add(q * 16 * NV);
        let mut bv: [__m512bh; NV] =
            [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                bp.add(16 * v) as *const __m512i
            ));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                *a.add(i * kc2 + q) as i32,
            ));
            for (x, &y) in acc.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, av, y);
            }
        }
    }
    if t.mr == MR && t.nr == 16 * NV && t.cs == 1 {
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
        for (h, &v) in acc.iter().enumerate() {
            _mm512_storeu_ps(buf.as_mut_ptr().add(i * NR + 16 * h), v);
        }
    }
    for i in 0..t.mr {
        for j in 0..t.nr {
            let p = t.c.add(i * t.rs + j * t.cs);
            let v = buf[i * NR + j];
            *p = if t.accumulate { *p + v } else { v };
        }
    }
}

/// A left operand packed once and multiplied many times (a convolution's
/// weights, shared by every image of the batch): per `KC` block of K, all
/// its rows (padded to a multiple of [`MR`]) as runs of K-pairs.
#[derive(Default)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<u32>,
}

impl PackedA {
    /// `a` (m, k) packed (bf16, round to nearest even).
    ///
    /// Panics if the view is out of bounds or the CPU lacks AVX512-BF16
    /// (bugs, as in [`matmul_bf16`]).
    pub fn new(a: Mat<'_, f32>) -> Self {
        let mut p = PackedA::default();
        p.pack(a);
        p
    }

    /// Repacks `a` into this buffer (grown on demand).
    pub fn pack(&mut self, a: Mat<'_, f32>) {
        assert!(supported(), "PackedA needs AVX512-BF16");
        (self.m, self.k) = (a.rows, a.cols);
        if a.rows == 0 || a.cols == 0 {
            return;
        }
        assert!(
            (a.rows - 1) * a.rs + (a.cols - 1) * a.cs < a.data.len(),
            "PackedA: view out of bounds"
        );
        let rows = a.rows.next_multiple_of(MR);
        let len = rows * a.cols.next_multiple_of(2) / 2;
        if self.data.len() < len {
            self.data.resize(len, 0);
        }
        for pc in (0..a.cols).step_by(KC) {
            let kc = KC.min(a.cols - pc);
            let at = rows * pc / 2;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-BF16 (and AVX-512F/BW) checked above.
            unsafe {
                pack_a(&mut self.data[at..], &a, (0, a.rows), pc, kc)
            };
        }
    }

    /// The block of K `pc..pc + KC`: `rows x kc2` pairs.
    fn block(&self, pc: usize) -> &[u32] {
        &self.data[self.m.next_multiple_of(MR) * pc / 2..]
    }
}

thread_local! {
    /// This thread's packed `a` and `b` blocks, reused across calls.
    static PACKED: RefCell<(PackedA, Vec<u32>)> = RefCell::new((PackedA::default(), Vec::new()));
}

/// `dst = (accumulate ? dst : 0) + bf16(a) * bf16(b)`, f32 accumulation,
/// single-threaded, the views of [`crate::gemm::matmul`] (see the module
/// doc for the rounding and its error bound).
///
/// Panics if the views are inconsistent or the CPU lacks AVX512-BF16: both
/// are bugs in resgrad, never a consequence of user input (the CLI checks
/// the CPU with `Precision::check_supported` before it builds a model).
pub fn matmul_bf16(dst: MatMut<'_, f32>, a: Mat<'_, f32>, b: Mat<'_, f32>, accumulate: bool) {
    assert!(
        a.rows == dst.rows && a.cols == b.rows,
        "matmul_bf16: inconsistent dims"
    );
    PACKED.with_borrow_mut(|(ap, bp)| {
        ap.pack(a);
        matmul_packed_with(dst, ap, b, accumulate, bp)
    })
}

/// [`matmul_bf16`] with `a` packed beforehand ([`PackedA`]).
pub fn matmul_bf16_packed(dst: MatMut<'_, f32>, a: &PackedA, b: Mat<'_, f32>, accumulate: bool) {
    PACKED.with_borrow_mut(|(_, bp)| matmul_packed_with(dst, a, b, accumulate, bp))
}

fn matmul_packed_with(
    mut dst: MatMut<'_, f32>,
    a: &PackedA,
    b: Mat<'_, f32>,
    accumulate: bool,
    bp: &mut Vec<u32>,
) {
    let Some((m, n, k)) = prologue("matmul_bf16", &mut dst, (a.m, a.k), None, &b, accumulate)
    else {
        return;
    };
    assert!(supported(), "matmul_bf16 needs AVX512-BF16");
    // a narrow product (the weight gradient's cout = 16 columns) takes
    // the one-zmm tile instead of wasting half of the two-zmm one
    let nr = if n <= 16 { 16 } else { NR };
    let want_b = NC.min(n).next_multiple_of(nr) * KC.min(k.next_multiple_of(2)) / 2;
    if bp.len() < want_b {
        bp.resize(want_b, 0);
    }
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let kc2 = kc.div_ceil(2);
        let ap = a.block(pc);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-BF16 (and AVX-512F/BW) checked above.
            unsafe {
                pack_b(bp, &b, pc, kc, (jc, nc), nr)
            };
            for jr in (0..nc).step_by(nr) {
                for i in (0..m).step_by(MR) {
                    let j = jc + jr;
                    let t = Tile {
                        // SAFETY: (i, j) is inside dst (i < m, j < n),
                        // bounds-checked above.
                        c: unsafe { dst.data.as_mut_ptr().add(i * dst.rs + j * dst.cs) },
                        rs: dst.rs,
                        cs: dst.cs,
                        mr: MR.min(m - i),
                        nr: nr.min(n - j),
                        accumulate: accumulate || pc > 0,
                    };
                    let (pa, pb) = (&ap[i * kc2..], &bp[jr * kc2..]);
                    assert!(pa.len() >= MR * kc2 && pb.len() >= nr * kc2);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX512-BF16 checked above; the panels hold
                    // kc2 pairs of MR rows / nr columns (asserted); the
                    // tile's mr x nr entries are inside dst, which this
                    // function borrows uniquely.
                    unsafe {
                        if nr == 16 {
                            kernel::<1>(kc2, pa.as_ptr(), pb.as_ptr(), &t)
                        } else {
                            kernel::<2>(kc2, pa.as_ptr(), pb.as_ptr(), &t)
                        }
                    }
                }
            }
        }
    }
}

/// `a` as f32 (`T` must be `f32`: asserted).
fn cast<'a, T: 'static>(m: Mat<'a, T>) -> Mat<'a, f32> {
    assert!(
        TypeId::of::<T>() == TypeId::of::<f32>(),
        "bf16 GEMM on non-f32 tensors"
    );
    Mat {
        // SAFETY: T is f32 (same TypeId, asserted above).
        data: unsafe { std::slice::from_raw_parts(m.data.as_ptr() as *const f32, m.data.len()) },
        rows: m.rows,
        cols: m.cols,
        rs: m.rs,
        cs: m.cs,
    }
}

/// `dst` as f32 (`T` must be `f32`: asserted).
fn cast_mut<'a, T: 'static>(dst: MatMut<'a, T>) -> MatMut<'a, f32> {
    assert!(
        TypeId::of::<T>() == TypeId::of::<f32>(),
        "bf16 GEMM on non-f32 tensors"
    );
    MatMut {
        // SAFETY: T is f32 (same TypeId, asserted above).
        data: unsafe {
            std::slice::from_raw_parts_mut(dst.data.as_mut_ptr() as *mut f32, dst.data.len())
        },
        rows: dst.rows,
        cols: dst.cols,
        rs: dst.rs,
        cs: dst.cs,
    }
}

/// A left operand of a layer whose precision is known at run time: packed
/// once for the bf16 GEMM, or the plain view for [`crate::gemm::matmul`].
pub enum Lhs<'a, T> {
    F32(Mat<'a, T>),
    Bf16(PackedA),
}

impl<'a, T: Scalar> Lhs<'a, T> {
    /// `a` for the GEMMs of precision `bf16` (`T` must then be `f32`).
    pub fn new(bf16: bool, a: Mat<'a, T>) -> Self {
        if bf16 {
            Lhs::Bf16(PackedA::new(cast(a)))
        } else {
            Lhs::F32(a)
        }
    }

    /// `dst (+)= self · b`, as [`matmul_in`].
    pub fn matmul(&self, dst: MatMut<'_, T>, b: Mat<'_, T>, accumulate: bool) {
        match self {
            Lhs::F32(a) => crate::gemm::matmul(dst, *a, b, accumulate),
            Lhs::Bf16(p) => matmul_bf16_packed(cast_mut(dst), p, cast(b), accumulate),
        }
    }
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
    matmul_bf16(cast_mut(dst), cast(a), cast(b), accumulate)
}

#[cfg(test)]
mod tests;

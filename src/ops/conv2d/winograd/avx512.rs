//! The AVX-512 kernels of the Winograd path (the sums: see `mod.rs`). The
//! caller asserts every bound these rely on.

// the transforms index 4x4 arrays by row and column, as written in the sums
#![allow(clippy::needless_range_loop)]
use super::{Source, Tiles};
use crate::ops::conv2d::direct::avx512::{bn_relu_vec, splat3};
use crate::ops::conv2d::direct::Store;
use std::arch::x86_64::*;

/// Lane `l` of `lo` interleaved with lane `l` of `hi`: tiles 0..8 of a
/// vector's two output columns, then tiles 8..16.
const ZIP_LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const ZIP_HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];
/// The even then the odd entries of 32 (two vectors).
const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
/// One row of 16: evens in lanes 0..8, odds in 8..16.
const SPLIT16: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15];
/// Two rows of 8: row 0's evens, its odds, row 1's evens, its odds (4 each).
const SPLIT8: [i32; 16] = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];

#[inline(always)]
unsafe fn idx(i: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(i.as_ptr() as *const _)
}

/// See [`super::conv_image`]: the quarter planes of every input plane,
/// `V`, then per 16 tiles and 8 output channels the products and the
/// output transform.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_image(
    dst: &mut [f32],
    (src, (stride, first), bn): Source,
    u: &[f32],
    n_in: usize,
    n_out: usize,
    tl: &Tiles,
    store: Store,
    q: &mut [f32],
    v: &mut [f32],
) {
    assert!(q.len() >= n_in * 4 * tl.qs && v.len() >= 16 * n_in * 32);
    for i in 0..n_in {
        let (qi, p) = (
            q.as_mut_ptr().add(i * 4 * tl.qs),
            src.as_ptr().add(i * stride + first),
        );
        match bn {
            None => quarters::<false>(qi, p, tl, [_mm512_setzero_ps(); 3]),
            Some([m, k, b]) => quarters::<true>(qi, p, tl, splat3([m[i], k[i], b[i]])),
        }
    }
    let (add, res) = match store {
        Store::Set => (false, dst.as_ptr()),
        Store::Add => (true, dst.as_ptr()),
        Store::Plus(r) => (true, r.as_ptr()),
    };
    // register tiles of the products: 8 output channels x 2 vectors of
    // tiles (16 sums, 10 loads per 16 FMAs); a plane of one vector (8x8)
    // 16 channels x 1 vector where it has them; else (a last odd
    // vector) 8 x 1
    let nt = tl.t / 16;
    let (d, r) = (dst.as_mut_ptr(), res);
    let (q, u) = (q.as_ptr(), u.as_ptr());
    let mut tv = 0;
    while tv < nt {
        // V of these tiles, (16, n_in, 16 nv): in L1 (n_in <= 24) or L2
        let nv = (nt - tv).min(2);
        for j in 0..nv {
            for i in 0..n_in {
                let at = v.as_mut_ptr().add(i * 16 * nv + 16 * j);
                input_tiles(at, n_in * 16 * nv, q.add(i * 4 * tl.qs), tl, tv + j);
            }
        }
        let v = v.as_ptr();
        if nv == 2 {
            for o0 in (0..n_out).step_by(8) {
                block::<8, 2>(d, r, v, u, n_in, n_out, tl, tv, o0, add);
            }
            tv += 2;
        } else if n_out.is_multiple_of(16) {
            for o0 in (0..n_out).step_by(16) {
                block::<16, 1>(d, r, v, u, n_in, n_out, tl, tv, o0, add);
            }
            tv += 1;
        } else {
            for o0 in (0..n_out).step_by(8) {
                block::<8, 1>(d, r, v, u, n_in, n_out, tl, tv, o0, add);
            }
            tv += 1;
        }
    }
}

/// Output channels `o0 .. o0 + KO`, vectors of tiles `tv .. tv + V` (their
/// `V` at `v`): the 16 products ([`products`]) and each plane's output
/// transform.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const KO: usize, const V: usize>(
    dst: *mut f32,
    res: *const f32,
    v: *const f32,
    u: *const f32,
    n_in: usize,
    n_out: usize,
    tl: &Tiles,
    tv: usize,
    o0: usize,
    add: bool,
) {
    let hw = tl.h * tl.w;
    let m = products::<KO, V>(v, u.add(o0), n_in, n_out);
    for (k, mk) in m.iter().enumerate() {
        let at = (o0 + k) * hw;
        let (d, r) = (dst.add(at), res.add(at));
        for (j, mv) in mk.iter().enumerate() {
            if add {
                output_tiles::<true>(mv, d, r, tl, tv + j);
            } else {
                output_tiles::<false>(mv, d, r, tl, tv + j);
            }
        }
    }
}

/// The four quarter planes of one input plane `p` (h x w) at `q` (4, qs),
/// quarter `(pr, pc)` at `2 pr + pc`, its row `a` at `16 + a tw`: `Q[pr][pc][a][b]
/// = p[2a + pr - 1][2b + pc]`, rows `a = 0` of `pr = 0` and `a = h/2` of
/// `pr = 1` zero (the padding rows). With `BN`, `p` is a BN-ReLU's input
/// and its output `max(0, (p - m) k + b)` (`bn = [m, k, b]`, the direct
/// path's expression, so the same bits) is what is split.
#[inline(always)]
unsafe fn quarters<const BN: bool>(q: *mut f32, p: *const f32, tl: &Tiles, bn: [__m512; 3]) {
    let (h, w, tw, qs) = (tl.h, tl.w, tl.tw, tl.qs);
    let z = _mm512_setzero_ps();
    let load = |at: *const f32| {
        let x = _mm512_loadu_ps(at);
        if BN {
            bn_relu_vec(x, bn, z)
        } else {
            x
        }
    };
    let row = |pr: usize, pc: usize, a: usize| q.add((2 * pr + pc) * qs + 16 + a * tw);
    for pc in 0..2 {
        std::ptr::write_bytes(row(0, pc, 0), 0, tw);
        std::ptr::write_bytes(row(1, pc, h / 2), 0, tw);
    }
    // input row y goes to quarter row pr = (y + 1) % 2, a = (y + 1) / 2
    if w == 8 {
        // two rows (y even, y + 1) per vector: 4 entries per quarter row
        let ix = idx(&SPLIT8);
        for y in (0..h).step_by(2) {
            let x = _mm512_permutexvar_ps(ix, load(p.add(y * 8)));
            let a = y / 2;
            _mm512_mask_storeu_ps(row(1, 0, a), 0x000F, x);
            _mm512_mask_storeu_ps(row(1, 1, a).wrapping_sub(4), 0x00F0, x);
            _mm512_mask_storeu_ps(row(0, 0, a + 1).wrapping_sub(8), 0x0F00, x);
            _mm512_mask_storeu_ps(row(0, 1, a + 1).wrapping_sub(12), 0xF000, x);
        }
        return;
    }
    let (ie, io, i16) = (idx(&EVEN), idx(&ODD), idx(&SPLIT16));
    for y in 0..h {
        let (pr, a) = ((y + 1) % 2, y.div_ceil(2));
        let (de, d_o) = (row(pr, 0, a), row(pr, 1, a));
        let s = p.add(y * w);
        let mut x = 0;
        while x + 32 <= w {
            let (lo, hi) = (load(s.add(x)), load(s.add(x + 16)));
            _mm512_storeu_ps(de.add(x / 2), _mm512_permutex2var_ps(lo, ie, hi));
            _mm512_storeu_ps(d_o.add(x / 2), _mm512_permutex2var_ps(lo, io, hi));
            x += 32;
        }
        if x < w {
            // 16 left (w % 16 == 0)
            let v = _mm512_permutexvar_ps(i16, load(s.add(x)));
            _mm512_mask_storeu_ps(de.add(x / 2), 0x00FF, v);
            _mm512_mask_storeu_ps(d_o.add(x / 2).wrapping_sub(8), 0xFF00, v);
        }
    }
}

/// `V[xi][i][t]` of 16 tiles `16 tv ..` of one input channel: `v` points at
/// `V[0][i][16 tv]`, entries `xi` `xstride` apart; `q` the channel's
/// quarter planes. `d[r][s]` = quarter `(r % 2, pc(s))` at `16 tv + (r/2)
/// tw + ds(s)` (module docs), the row ends masked to 0; then `B^T d B`.
#[inline(always)]
unsafe fn input_tiles(v: *mut f32, xstride: usize, q: *const f32, tl: &Tiles, tv: usize) {
    let (m0, m3) = tl.masks[tv];
    let t0 = 16 * tv;
    // in the forward pass of the identity this is B^T d B; here d B first,
    // a row of d at a time (so 16 vectors live, not 32):
    // x B = [x0 - x2, x1 + x2, x2 - x1, x1 - x3], and B^T the same on columns
    let bt = |x: [__m512; 4]| {
        [
            _mm512_sub_ps(x[0], x[2]),
            _mm512_add_ps(x[1], x[2]),
            _mm512_sub_ps(x[2], x[1]),
            _mm512_sub_ps(x[1], x[3]),
        ]
    };
    let mut f = [[_mm512_setzero_ps(); 4]; 4];
    for (r, fr) in f.iter_mut().enumerate() {
        let at = 16 + t0 + (r / 2) * tl.tw;
        let (qe, qo) = (
            q.add((r % 2) * 2 * tl.qs + at),
            q.add(((r % 2) * 2 + 1) * tl.qs + at),
        );
        *fr = bt([
            _mm512_maskz_loadu_ps(m0, qo.wrapping_sub(1)),
            _mm512_loadu_ps(qe),
            _mm512_loadu_ps(qo),
            _mm512_maskz_loadu_ps(m3, qe.wrapping_add(1)),
        ]);
    }
    for j in 0..4 {
        let col = bt([f[0][j], f[1][j], f[2][j], f[3][j]]);
        for (i, x) in col.iter().enumerate() {
            _mm512_storeu_ps(v.add((4 * i + j) * xstride), *x);
        }
    }
}

/// `M[xi][k][j]` (16 lanes of tiles) `= sum_i U[xi][i][o0 + k] * V[xi][i][16
/// j ..]` for `KO` output channels `o0 ..` and `V` vectors of tiles: `v`
/// holds their `V` (16, n_in, 16 V), `u` points at `U[0][0][o0]`.
/// Per entry `xi`, `KO x V` sums in registers over the input channels (`V`
/// vector loads and `KO` broadcasts per `KO V` FMAs).
#[inline(always)]
unsafe fn products<const KO: usize, const V: usize>(
    v: *const f32,
    u: *const f32,
    n_in: usize,
    n_out: usize,
) -> [[[__m512; 16]; V]; KO] {
    let t = 16 * V;
    // every entry written below: no zero fill (16 KiB a call, measured
    // as a memset of 3% of the kernel)
    let mut m = std::mem::MaybeUninit::<[[[__m512; 16]; V]; KO]>::uninit();
    let mp = m.as_mut_ptr() as *mut __m512;
    for xi in 0..16 {
        let mut acc = [[_mm512_setzero_ps(); V]; KO];
        let (vx, ux) = (v.add(xi * n_in * t), u.add(xi * n_in * n_out));
        for i in 0..n_in {
            let mut a = [_mm512_setzero_ps(); V];
            for (j, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(vx.add(i * t + 16 * j));
            }
            let ui = ux.add(i * n_out);
            for (k, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*ui.add(k));
                for j in 0..V {
                    acc[j] = _mm512_fmadd_ps(b, a[j], acc[j]);
                }
            }
        }
        for k in 0..KO {
            for j in 0..V {
                mp.add((k * V + j) * 16 + xi).write(acc[k][j]);
            }
        }
    }
    // SAFETY: the loops above wrote all KO x V x 16 entries
    m.assume_init()
}

/// `A^T M A` of 16 tiles `16 tv ..` of one output plane, `m[xi]` its 16
/// entries: the 2x2 outputs, stored to `dst` (one plane) as `(res +) y`
/// (`ADD`: `res` the same positions of the residual, or `dst` itself).
#[inline(always)]
unsafe fn output_tiles<const ADD: bool>(
    m: &[__m512; 16],
    dst: *mut f32,
    res: *const f32,
    tl: &Tiles,
    tv: usize,
) {
    let (zl, zh) = (idx(&ZIP_LO), idx(&ZIP_HI));
    // A^T M (rows): t0 = m0 + m1 + m2, t1 = m1 - m2 - m3; then . A (columns)
    let at = |x0: __m512, x1: __m512, x2: __m512, x3: __m512| {
        (
            _mm512_add_ps(_mm512_add_ps(x0, x1), x2),
            _mm512_sub_ps(_mm512_sub_ps(x1, x2), x3),
        )
    };
    let mut rows = [[_mm512_setzero_ps(); 4]; 2];
    for s in 0..4 {
        let (a, b) = at(m[s], m[4 + s], m[8 + s], m[12 + s]);
        rows[0][s] = a;
        rows[1][s] = b;
    }
    for (uu, r) in rows.iter().enumerate() {
        let (y0, y1) = at(r[0], r[1], r[2], r[3]);
        // output columns 2tx and 2tx + 1 side by side
        for (half, z) in [zl, zh].into_iter().enumerate() {
            let y = _mm512_permutex2var_ps(y0, z, y1);
            let tt = 16 * tv + 8 * half;
            let (ty, tx) = (tt / tl.tw, tt % tl.tw);
            let pos = (2 * ty + uu) * tl.w + 2 * tx;
            if tl.w == 8 {
                // two tile rows of 4: 8 outputs of row 2ty + u, 8 of row 2ty + 2 + u
                put::<ADD>(dst.add(pos), res.add(pos), 0x00FF, y);
                let (d2, r2) = (dst.add(pos + 8), res.add(pos + 8));
                put::<ADD>(d2, r2, 0xFF00, y);
            } else {
                put::<ADD>(dst.add(pos), res.add(pos), 0xFFFF, y);
            }
        }
    }
}

/// Stores the lanes `mask` of `y` at `dst` (`res + y` with `ADD`).
#[inline(always)]
unsafe fn put<const ADD: bool>(dst: *mut f32, res: *const f32, mask: __mmask16, y: __m512) {
    let y = if ADD {
        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, res), y)
    } else {
        y
    };
    _mm512_mask_storeu_ps(dst, mask, y);
}

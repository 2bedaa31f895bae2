//! The AVX-512 kernels of the Winograd path (the sums: see `mod.rs`). The
//! caller asserts every bound these rely on.

// the transforms index 4x4 arrays by row and column, as written in the sums
#![allow(clippy::needless_range_loop)]
use super::{xs, Source, Tiles};
use crate::ops::conv2d::ahead::{self, Queue};
use crate::ops::conv2d::direct::avx512::{bn_relu_vec, lanes, splat3};
use crate::ops::conv2d::direct::Store;
use std::arch::x86_64::*;

/// Lane `l` of `lo` interleaved with lane `l` of `hi`: tiles 0..8 of a
/// vector's two output columns, then tiles 8..16.
const ZIP_LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const ZIP_HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];
/// Of 32 consecutive entries `e` (two vectors), lane `l` takes `e[2l + s
/// - 1]`: the four columns `s` of 16 tiles' input rows (lane 0 of `s = 0`
/// and lane 15 of `s = 3` fall outside: masked, as every row end is).
const COL: [[i32; 16]; 4] = [
    [0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29],
    [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30],
    [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31],
    [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 0],
];

#[inline(always)]
unsafe fn idx(i: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(i.as_ptr() as *const _)
}

/// See [`super::conv_image`]: per 1 or 2 vectors of 16 tiles, their `V`
/// for every input channel ([`input_tiles`]), then per 8 (or 16) output
/// channels the products and the output transform ([`block`]).
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
    v: &mut [f32],
) {
    assert!(v.len() >= 16 * xs(n_in, 2));
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
    let (d, r, u) = (dst.as_mut_ptr(), res, u.as_ptr());
    let mut q = ahead::take();
    let mut tv = 0;
    while tv < nt {
        // V of these tiles, (16, n_in, 16 nv): in L1 (n_in <= 24) or L2
        let nv = (nt - tv).min(2);
        for j in 0..nv {
            for i in 0..n_in {
                let at = v.as_mut_ptr().add(i * 16 * nv + 16 * j);
                let p = src.as_ptr().add(i * stride + first);
                match bn {
                    None => input_tiles::<false>(
                        at,
                        xs(n_in, nv),
                        p,
                        tl,
                        tv + j,
                        [_mm512_setzero_ps(); 3],
                    ),
                    Some([m, k, b]) => {
                        let bn = splat3([m[i], k[i], b[i]]);
                        input_tiles::<true>(at, xs(n_in, nv), p, tl, tv + j, bn)
                    }
                }
            }
        }
        let v = v.as_ptr();
        if nv == 2 {
            for o0 in (0..n_out).step_by(8) {
                block::<8, 2>(d, r, v, u, n_in, n_out, tl, tv, o0, add, &mut q);
            }
            tv += 2;
        } else if n_out.is_multiple_of(16) {
            for o0 in (0..n_out).step_by(16) {
                block::<16, 1>(d, r, v, u, n_in, n_out, tl, tv, o0, add, &mut q);
            }
            tv += 1;
        } else {
            for o0 in (0..n_out).step_by(8) {
                block::<8, 1>(d, r, v, u, n_in, n_out, tl, tv, o0, add, &mut q);
            }
            tv += 1;
        }
    }
    ahead::put(q);
}

/// Input row `r` (0..4) of the 16 tiles `16 tv ..` of plane `p`, as 32
/// consecutive entries `(lo, hi)`: the tiles' rows `2 ty - 1 + r` one
/// after the other (one row of 32, two of 16 or four of 8: the tile rows
/// the vector spans), 0 for a row outside the image (the padding). With
/// `BN`, the BN-ReLU of what is read (`bn = [m, k, b]`, the direct path's
/// expression), the padding left 0.
#[inline(always)]
unsafe fn input_row<const BN: bool>(
    p: *const f32,
    tl: &Tiles,
    tv: usize,
    r: usize,
    bn: [__m512; 3],
) -> (__m512, __m512) {
    let (h, w) = (tl.h as isize, tl.w);
    // `n` entries of image row y from column `col` into lanes `at..` of x
    let part = |x: __m512, y: isize, col: usize, at: usize, n: usize| {
        if y < 0 || y >= h {
            return x;
        }
        let m = lanes(n) << at;
        let v = _mm512_mask_loadu_ps(x, m, p.add(y as usize * w + col).wrapping_sub(at));
        if BN {
            _mm512_mask_mov_ps(x, m, bn_relu_vec(v, bn, _mm512_setzero_ps()))
        } else {
            v
        }
    };
    let z = _mm512_setzero_ps();
    let y = 2 * (16 * tv / tl.tw) as isize - 1 + r as isize;
    match w {
        32 => (part(z, y, 0, 0, 16), part(z, y, 16, 0, 16)),
        16 => (part(z, y, 0, 0, 16), part(z, y + 2, 0, 0, 16)),
        _ => (
            part(part(z, y, 0, 0, 8), y + 2, 0, 8, 8),
            part(part(z, y + 4, 0, 0, 8), y + 6, 0, 8, 8),
        ),
    }
}

/// `V[xi][i][t]` of 16 tiles `16 tv ..` of one input plane `p`: `v` points
/// at `V[0][i][16 tv]`, entries `xi` `xstride` apart. `d[r][s]` of the 16
/// tiles is lane `l` <- entry `2l + s - 1` of their input row `r`
/// ([`input_row`], one permute), the row ends masked to 0 (the padding
/// columns); then `B^T d B`.
#[inline(always)]
unsafe fn input_tiles<const BN: bool>(
    v: *mut f32,
    xstride: usize,
    p: *const f32,
    tl: &Tiles,
    tv: usize,
    bn: [__m512; 3],
) {
    let (m0, m3) = tl.masks[tv];
    let c = [idx(&COL[0]), idx(&COL[1]), idx(&COL[2]), idx(&COL[3])];
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
        let (lo, hi) = input_row::<BN>(p, tl, tv, r, bn);
        *fr = bt([
            _mm512_maskz_permutex2var_ps(m0, lo, c[0], hi),
            _mm512_permutex2var_ps(lo, c[1], hi),
            _mm512_permutex2var_ps(lo, c[2], hi),
            _mm512_maskz_permutex2var_ps(m3, lo, c[3], hi),
        ]);
    }
    for j in 0..4 {
        let col = bt([f[0][j], f[1][j], f[2][j], f[3][j]]);
        for (i, x) in col.iter().enumerate() {
            _mm512_storeu_ps(v.add((4 * i + j) * xstride), *x);
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
    q: &mut Queue,
) {
    let hw = tl.h * tl.w;
    let m = products::<KO, V>(v, u.add(o0), n_in, n_out, q);
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
    q: &mut Queue,
) -> [[[__m512; 16]; V]; KO] {
    let t = 16 * V;
    // every entry written below: no zero fill (16 KiB a call, measured
    // as a memset of 3% of the kernel)
    let mut m = std::mem::MaybeUninit::<[[[__m512; 16]; V]; KO]>::uninit();
    let mp = m.as_mut_ptr() as *mut __m512;
    for xi in 0..16 {
        q.step();
        let mut acc = [[_mm512_setzero_ps(); V]; KO];
        let (vx, ux) = (v.add(xi * xs(n_in, V)), u.add(xi * n_in * n_out));
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

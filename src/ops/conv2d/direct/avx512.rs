//! The AVX-512 kernels of the direct path (see the module docs in
//! `mod.rs` for the sums). Callers assert every bound these rely on.

use super::{Grid, Stats, Store, TILE_O, TILE_V};
use crate::ops::conv2d::ahead;
use std::arch::x86_64::*;

/// A `__m512i` of `u32` bf16 pairs as the `__m512bh` `vdpbf16ps` takes.
macro_rules! bh {
    ($x:expr) => {
        std::mem::transmute::<__m512i, __m512bh>($x)
    };
}

/// Mask of the first `n` (<= 16) lanes.
#[inline(always)]
pub(in crate::ops::conv2d) fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// See [`super::conv_planes`]: tiles of up to [`TILE_V`] vectors, split so
/// that no tile is left with a single vector when it can be avoided.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_planes(
    dst: &mut [f32],
    src: &[f32],
    wk: &[f32],
    n_in: usize,
    n_out: usize,
    g: &Grid,
    edges: &[(u16, u16)],
    store: Store,
    stats: Option<&mut Stats>,
) {
    // what the sums are added to: nothing, dst itself, or a residual
    let (add, res) = match store {
        Store::Set => (false, dst.as_ptr()),
        Store::Add => (true, dst.as_ptr()),
        Store::Plus(r) => (true, r.as_ptr()),
    };
    let mut v0 = 0;
    while v0 < g.nv {
        let left = g.nv - v0;
        // 4 vectors left: two tiles of 2, not 3 + 1
        let v = if left == 4 { 2 } else { left.min(TILE_V) };
        let (d, s, w) = (dst.as_mut_ptr(), src.as_ptr(), wk.as_ptr());
        let st = stats.as_deref().map(Stats::ptrs);
        match (v, add, st) {
            (3, false, None) => {
                conv_tile::<3, false, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (3, true, None) => {
                conv_tile::<3, true, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (2, false, None) => {
                conv_tile::<2, false, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (2, true, None) => {
                conv_tile::<2, true, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (_, false, None) => {
                conv_tile::<1, false, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (_, true, None) => {
                conv_tile::<1, true, false>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (3, _, Some(_)) => {
                conv_tile::<3, false, true>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (2, _, Some(_)) => {
                conv_tile::<2, false, true>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
            (_, _, Some(_)) => {
                conv_tile::<1, false, true>(d, res, s, w, n_in, n_out, g, edges, v0, st)
            }
        }
        v0 += v;
    }
}

/// The output vectors `v0 .. v0 + V` of every output plane. Bounds (from
/// the caller's asserts): the loads of input plane `i` read
/// `src[i*ps + lead - 1 + 16 v + off(k) .. + 16]` with `v < nv`, inside the
/// plane since `lead - 1 + 16 nv + off(8) <= ps`; the stores write
/// `dst[o*hw + 16 v ..]`, masked to positions `< hw`, and with `ADD` read
/// `res` (as long as `dst`, or `dst` itself) at the same places. With
/// `STATS` (and not `ADD`), the stored values also feed the BN-ReLU
/// reduction's lanes (see [`Stats`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv_tile<const V: usize, const ADD: bool, const STATS: bool>(
    dst: *mut f32,
    res: *const f32,
    src: *const f32,
    wk: *const f32,
    n_in: usize,
    n_out: usize,
    g: &Grid,
    edges: &[(u16, u16)],
    v0: usize,
    st: Option<StatPtrs>,
) {
    let (ps, hw, w) = (g.ps, g.hw, g.w);
    let j0 = 16 * v0;
    // edge masks of the taps kx = 0 and kx = 2, store masks of a plane's
    // last (partial) vector
    let mut ml = [0 as __mmask16; V];
    let mut mr = [0 as __mmask16; V];
    let mut ms = [0 as __mmask16; V];
    for v in 0..V {
        (ml[v], mr[v]) = edges[v0 + v];
        ms[v] = lanes(hw - (j0 + 16 * v));
    }
    let s0 = src.add(g.lead - 1 + j0);
    let mut ahead = ahead::take();
    for o0 in (0..n_out).step_by(TILE_O) {
        prefetch_tile::<V, ADD, STATS>(dst, res, hw, o0, j0 + 16 * V, st);
        let mut acc = [[_mm512_setzero_ps(); V]; TILE_O];
        for i in 0..n_in {
            ahead.step();
            let s = s0.add(i * ps);
            let wi = wk.add(i * 9 * n_out + o0);
            for ky in 0..3 {
                let sr = s.add(ky * w);
                for kx in 0..3 {
                    // whole-vector loads (in bounds, see above); the
                    // lanes a tap kx = 0 / 2 must not read (outside the
                    // row) are left out by the FMA's mask instead: a
                    // masked FMA costs no more than a plain one, a masked
                    // load costs an extra uop on the FMA ports
                    let mut a = [_mm512_setzero_ps(); V];
                    for (v, a) in a.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(sr.add(kx + 16 * v));
                    }
                    let wkk = wi.add((ky * 3 + kx) * n_out);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*wkk.add(c));
                        for v in 0..V {
                            acc[v] = match kx {
                                0 => _mm512_mask3_fmadd_ps(a[v], b, acc[v], ml[v]),
                                2 => _mm512_mask3_fmadd_ps(a[v], b, acc[v], mr[v]),
                                _ => _mm512_fmadd_ps(a[v], b, acc[v]),
                            };
                        }
                    }
                }
            }
        }
        store_tile::<V, ADD, STATS>(&acc, dst, res, hw, o0, j0, &ms, v0, st);
    }
    ahead::put(ahead);
}

/// Asks for the lines [`store_tile`] will touch for output channels `o0 ..
/// o0 + 8`, vectors `v0 .. v0 + V`: `dst` (to be written), and `res` with
/// `ADD`, the BN input `x` with `STATS` (to be read). In a training step
/// these planes were written long before and their 8 channels are 8
/// streams per tile, which the hardware prefetcher does not follow: issued
/// before the tile's sums, the misses overlap the sums instead of stalling
/// the stores after them. A prefetch never faults, so the addresses are
/// formed with `wrapping_add` and may lie past a plane's end.
#[inline(always)]
unsafe fn prefetch_tile<const V: usize, const ADD: bool, const STATS: bool>(
    dst: *mut f32,
    res: *const f32,
    hw: usize,
    o0: usize,
    j0: usize,
    st: Option<StatPtrs>,
) {
    for c in 0..TILE_O {
        let at = (o0 + c) * hw + j0;
        for v in 0..V {
            let off = at + 16 * v;
            _mm_prefetch::<_MM_HINT_T1>(dst.wrapping_add(off) as *const i8);
            if ADD {
                _mm_prefetch::<_MM_HINT_T1>(res.wrapping_add(off) as *const i8);
            }
            if let (true, Some(st)) = (STATS, st) {
                _mm_prefetch::<_MM_HINT_T1>(st.x.wrapping_add(off) as *const i8);
            }
        }
    }
}

/// Stores one tile of sums `acc` (output channels `o0 .. o0 + 8`, vectors
/// `v0 .. v0 + V` of the plane, `j0 = 16 v0`): `dst = (res +) acc`, masked
/// to positions `< hw` by `ms`, and with `STATS` the BN-ReLU reduction's
/// lanes. The f32 and the bf16 kernels share it (bounds: see [`conv_tile`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile<const V: usize, const ADD: bool, const STATS: bool>(
    acc: &[[__m512; V]; TILE_O],
    dst: *mut f32,
    res: *const f32,
    hw: usize,
    o0: usize,
    j0: usize,
    ms: &[__mmask16; V],
    v0: usize,
    st: Option<StatPtrs>,
) {
    for (c, acc) in acc.iter().enumerate() {
        let at = (o0 + c) * hw + j0;
        let d = dst.add(at);
        // with STATS, the channel's lanes (a0, a1 of both halves) in
        // registers over the tile's vectors: each lane takes the same
        // additions in the same order as through memory
        let mut lanes = [[_mm512_setzero_ps(); 2]; 2];
        if let (true, Some(st)) = (STATS, st) {
            lanes = stat_lanes_load(&st, o0 + c);
        }
        for v in 0..V {
            let dv = d.add(16 * v);
            let mut r = acc[v];
            if ADD {
                let rv = _mm512_maskz_loadu_ps(ms[v], res.add(at + 16 * v));
                r = _mm512_add_ps(rv, r);
            }
            if let (true, Some(st)) = (STATS, st) {
                // only vectors of whole 32-position chunks: the rest
                // of the plane is summed by the caller, in f64
                let vv = v0 + v;
                if vv < st.lane_vecs {
                    stat_lanes(&st, o0 + c, at + 16 * v, &mut lanes[vv % 2], r);
                }
            }
            _mm512_mask_storeu_ps(dv, ms[v], r);
        }
        if let (true, Some(st)) = (STATS, st) {
            stat_lanes_store(&st, o0 + c, &lanes);
        }
    }
}

/// See [`super::conv_planes_bf16`]: [`conv_planes`] over channel pairs,
/// the same tiles and the same stores.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_planes_bf16(
    dst: &mut [f32],
    src: &[u32],
    wk: &[u32],
    n_pairs: usize,
    n_out: usize,
    g: &Grid,
    edges: &[(u16, u16)],
    store: Store,
    stats: Option<&mut Stats>,
) {
    let (add, res) = match store {
        Store::Set => (false, dst.as_ptr()),
        Store::Add => (true, dst.as_ptr()),
        Store::Plus(r) => (true, r.as_ptr()),
    };
    let mut v0 = 0;
    while v0 < g.nv {
        let left = g.nv - v0;
        let v = if left == 4 { 2 } else { left.min(TILE_V) };
        let (d, s, w, n) = (dst.as_mut_ptr(), src.as_ptr(), wk.as_ptr(), n_pairs);
        let st = stats.as_deref().map(Stats::ptrs);
        match (v, add, st) {
            (3, false, None) => {
                bf16_tile::<3, false, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (3, true, None) => {
                bf16_tile::<3, true, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (2, false, None) => {
                bf16_tile::<2, false, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (2, true, None) => {
                bf16_tile::<2, true, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (_, false, None) => {
                bf16_tile::<1, false, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (_, true, None) => {
                bf16_tile::<1, true, false>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (3, _, Some(_)) => {
                bf16_tile::<3, false, true>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (2, _, Some(_)) => {
                bf16_tile::<2, false, true>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
            (_, _, Some(_)) => {
                bf16_tile::<1, false, true>(d, res, s, w, n, n_out, g, edges, v0, st)
            }
        }
        v0 += v;
    }
}

/// [`conv_tile`] over channel pairs: per pair `q` and tap `k`, one load of
/// 16 positions' `u32` pairs at the tap's offset, and per output channel
/// one `vdpbf16ps` with the broadcast weight pair `wk[q, k, o]` (both
/// channels' products added to the f32 lane), masked by the tap's edge
/// mask exactly as the f32 FMA is (a masked lane keeps its sum). Bounds:
/// [`conv_tile`]'s, with `n_pairs` planes of `ps` `u32` in `src` and
/// `n_pairs * 9 * n_out` weight pairs.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_tile<const V: usize, const ADD: bool, const STATS: bool>(
    dst: *mut f32,
    res: *const f32,
    src: *const u32,
    wk: *const u32,
    n_pairs: usize,
    n_out: usize,
    g: &Grid,
    edges: &[(u16, u16)],
    v0: usize,
    st: Option<StatPtrs>,
) {
    let (ps, hw, w) = (g.ps, g.hw, g.w);
    let j0 = 16 * v0;
    let mut ml = [0 as __mmask16; V];
    let mut mr = [0 as __mmask16; V];
    let mut ms = [0 as __mmask16; V];
    for v in 0..V {
        (ml[v], mr[v]) = edges[v0 + v];
        ms[v] = lanes(hw - (j0 + 16 * v));
    }
    let s0 = src.add(g.lead - 1 + j0);
    let mut ahead = ahead::take();
    for o0 in (0..n_out).step_by(TILE_O) {
        prefetch_tile::<V, ADD, STATS>(dst, res, hw, o0, j0 + 16 * V, st);
        let mut acc = [[_mm512_setzero_ps(); V]; TILE_O];
        for q in 0..n_pairs {
            ahead.step();
            let s = s0.add(q * ps);
            let wq = wk.add(q * 9 * n_out + o0);
            for ky in 0..3 {
                let sr = s.add(ky * w);
                for kx in 0..3 {
                    let mut a = [bh!(_mm512_setzero_si512()); V];
                    for (v, a) in a.iter_mut().enumerate() {
                        *a = bh!(_mm512_loadu_si512(sr.add(kx + 16 * v) as *const __m512i));
                    }
                    let wkk = wq.add((ky * 3 + kx) * n_out);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let b = bh!(_mm512_set1_epi32(*wkk.add(c) as i32));
                        for v in 0..V {
                            acc[v] = match kx {
                                0 => _mm512_mask_dpbf16_ps(acc[v], ml[v], a[v], b),
                                2 => _mm512_mask_dpbf16_ps(acc[v], mr[v], a[v], b),
                                _ => _mm512_dpbf16_ps(acc[v], a[v], b),
                            };
                        }
                    }
                }
            }
        }
        store_tile::<V, ADD, STATS>(&acc, dst, res, hw, o0, j0, &ms, v0, st);
    }
    ahead::put(ahead);
}

/// `dst[j] = lo[j]` rounded to bf16 in the low half, `hi[j]` in the high
/// half (`vcvtne2ps2bf16`: round to nearest even, denormals to zero), for
/// `j < dst.len()`; `lo` and `hi` at least as long. With `lo_bn = Some([m,
/// k, b])` the low half is `max(0, (lo[j] - m) * k + b)` instead (a BN-ReLU
/// input plane, made as it is paired: [`bn_relu`]'s bits), `hi_bn` the
/// same for the high half.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pair_bf16(
    dst: &mut [u32],
    (lo, lo_bn): (&[f32], Option<[f32; 3]>),
    (hi, hi_bn): (&[f32], Option<[f32; 3]>),
) {
    let (lb, hb) = (lo_bn.unwrap_or_default(), hi_bn.unwrap_or_default());
    match (lo_bn.is_some(), hi_bn.is_some()) {
        (false, false) => pair_bf16_with::<false, false>(dst, lo, hi, lb, hb),
        (true, false) => pair_bf16_with::<true, false>(dst, lo, hi, lb, hb),
        (false, true) => pair_bf16_with::<false, true>(dst, lo, hi, lb, hb),
        (true, true) => pair_bf16_with::<true, true>(dst, lo, hi, lb, hb),
    }
}

/// [`pair_bf16`] with the BN-ReLU of each half known at compile time.
#[inline(always)]
unsafe fn pair_bf16_with<const LO: bool, const HI: bool>(
    dst: &mut [u32],
    lo: &[f32],
    hi: &[f32],
    lo_bn: [f32; 3],
    hi_bn: [f32; 3],
) {
    let n = dst.len();
    assert!(lo.len() >= n && hi.len() >= n);
    let (lbn, hbn, z) = (splat3(lo_bn), splat3(hi_bn), _mm512_setzero_ps());
    // halves of cvtne2ps: lanes 0..16 = lo, 16..32 = hi; interleave them
    let mut idx = [0i16; 32];
    for l in 0..16 {
        idx[2 * l] = l as i16;
        idx[2 * l + 1] = 16 + l as i16;
    }
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const __m512i);
    let (l, h, d) = (lo.as_ptr(), hi.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let mask = lanes(n - i);
        let mut a = _mm512_maskz_loadu_ps(mask, l.add(i));
        let mut b = _mm512_maskz_loadu_ps(mask, h.add(i));
        if LO {
            a = bn_relu_vec(a, lbn, z);
        }
        if HI {
            b = bn_relu_vec(b, hbn, z);
        }
        let p = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
        let p = _mm512_permutexvar_epi16(idx, p);
        _mm512_mask_storeu_epi32(d.add(i) as *mut i32, mask, p);
        i += 16;
    }
}

/// See [`super::weight_grad_planes_bf16`]: [`weight_grad_planes`] over
/// pairs of adjacent positions. Bounds: `d` holds `imgs` images of `n_out`
/// runs of `dl = 16 nv2` pairs (`nv2 = masks.len()`), `dq_stride(n_out,
/// dl)` apart, `pe` `imgs * n_in` runs of
/// `ph` pairs (`2 ph` 16-bit entries) with `lead + 2w + 1 + 2 dl <= 2 ph`
/// (the caller asserts it), so every load of tap `(ky, kx)` from 16-bit
/// entry `b = lead - 1 + ky w + kx` on (`dl` pairs) stays in its run.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weight_grad_planes_bf16(
    dwv: &mut [f32],
    first: bool,
    d: &[u32],
    pe: &[u32],
    n_in: usize,
    n_out: usize,
    imgs: usize,
    g: &Grid,
    ph: usize,
    masks: &[(u32, u32)],
) {
    let w = g.w;
    let dl = 16 * masks.len();
    let dstride = super::dq_stride(n_out, dl);
    let lanes = dwv.as_mut_ptr();
    let mut ahead = ahead::take();
    for o0 in (0..n_out).step_by(TILE_O) {
        for i in 0..n_in {
            for ky in 0..3 {
                ahead.step();
                // tap kx reads P from b = lead - 1 + ky w + kx on: pairs
                // (P[b + 2m], P[b + 2m + 1]) start at 16-bit entry b of
                // pe, the bf16 values of P in order (for an odd b, the
                // vector loads below are a half off the pairs' grid)
                let mut tap = [pe.as_ptr(); 3];
                for (kx, t) in tap.iter_mut().enumerate() {
                    let b = g.lead - 1 + ky * w + kx;
                    *t = (pe.as_ptr() as *const u16).add(b) as *const u32;
                }
                let mut acc = [[_mm512_setzero_ps(); 3]; TILE_O];
                for n in 0..imgs {
                    let at = (n * n_in + i) * ph;
                    let (t0, t1, t2) = (tap[0].add(at), tap[1].add(at), tap[2].add(at));
                    let drow = d.as_ptr().add(n * dstride + o0 * dl);
                    for (v, &(ml, mr)) in masks.iter().enumerate() {
                        let j = 16 * v;
                        // the edge masks per position (per 16-bit half)
                        // on the input taps, once for the 8 channels
                        let p0 = _mm512_loadu_si512(t0.add(j) as *const __m512i);
                        let p0 = bh!(_mm512_maskz_mov_epi16(ml, p0));
                        let p1 = bh!(_mm512_loadu_si512(t1.add(j) as *const __m512i));
                        let p2 = _mm512_loadu_si512(t2.add(j) as *const __m512i);
                        let p2 = bh!(_mm512_maskz_mov_epi16(mr, p2));
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let dv =
                                bh!(_mm512_loadu_si512(drow.add(c * dl + j) as *const __m512i));
                            acc[0] = _mm512_dpbf16_ps(acc[0], dv, p0);
                            acc[1] = _mm512_dpbf16_ps(acc[1], dv, p1);
                            acc[2] = _mm512_dpbf16_ps(acc[2], dv, p2);
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    let at = ((o0 + c) * n_in + i) * 9 + ky * 3;
                    for (kx, &v) in acc.iter().enumerate() {
                        let l = lanes.add(16 * (at + kx));
                        let v = if first {
                            v
                        } else {
                            _mm512_add_ps(_mm512_loadu_ps(l), v)
                        };
                        _mm512_storeu_ps(l, v);
                    }
                }
            }
        }
    }
    ahead::put(ahead);
}

/// `dst[t] = (src[2t], src[2t + 1])` rounded to bf16 (low, high half),
/// `src[i]` read as 0 for `i >= n` (`n <= src.len()`), for every `t <
/// dst.len()` (a multiple of 16): a run of values as its own pairs of
/// adjacent values, one `vcvtne2ps2bf16` per 32.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn run_pairs_bf16(dst: &mut [u32], src: &[f32], n: usize) {
    assert!(n <= src.len() && dst.len().is_multiple_of(16));
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for t in (0..dst.len()).step_by(16) {
        let i = 2 * t;
        let m0 = lanes(n.saturating_sub(i));
        let m1 = lanes(n.saturating_sub(i + 16));
        let lo = _mm512_maskz_loadu_ps(m0, s.add(i.min(n)));
        let hi = _mm512_maskz_loadu_ps(m1, s.add((i + 16).min(n)));
        let p = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(d.add(t) as *mut __m512i, p);
    }
}

/// See [`super::weight_grad_planes`]. Bounds: loads read `d[o*ps + lead +
/// w + 16 v .. + 16]` and `p[i*ps + lead - 1 + ky*w + kx + 16 v .. + 16]`
/// with `v < nv`, both inside a plane since `lead - 1 + 16 nv + off(8) <= ps`;
/// `dwv` holds 16 floats per entry of `dw` (n_out, n_in, 9).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weight_grad_planes(
    dwv: &mut [f32],
    first: bool,
    d: &[f32],
    p: &[f32],
    n_in: usize,
    n_out: usize,
    imgs: usize,
    g: &Grid,
    edges: &[(u16, u16)],
) {
    let (ps, w) = (g.ps, g.w);
    let dp0 = d.as_ptr().add(g.first());
    let pp0 = p.as_ptr().add(g.lead - 1);
    let lanes = dwv.as_mut_ptr();
    let mut ahead = ahead::take();
    for o0 in (0..n_out).step_by(TILE_O) {
        for i in 0..n_in {
            for ky in 0..3 {
                ahead.step();
                let mut acc = [[_mm512_setzero_ps(); 3]; TILE_O];
                for n in 0..imgs {
                    let prow = pp0.add((n * n_in + i) * ps + ky * w);
                    let drow = dp0.add((n * n_out + o0) * ps);
                    for (v, &(ml, mr)) in edges.iter().enumerate() {
                        let j = 16 * v;
                        // masks on the FMAs, not the loads (see conv_tile)
                        let p0 = _mm512_loadu_ps(prow.add(j));
                        let p1 = _mm512_loadu_ps(prow.add(j + 1));
                        let p2 = _mm512_loadu_ps(prow.add(j + 2));
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let dv = _mm512_loadu_ps(drow.add(c * ps + j));
                            acc[0] = _mm512_mask3_fmadd_ps(dv, p0, acc[0], ml);
                            acc[1] = _mm512_fmadd_ps(dv, p1, acc[1]);
                            acc[2] = _mm512_mask3_fmadd_ps(dv, p2, acc[2], mr);
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    let at = ((o0 + c) * n_in + i) * 9 + ky * 3;
                    for (kx, &v) in acc.iter().enumerate() {
                        let l = lanes.add(16 * (at + kx));
                        let v = if first {
                            v
                        } else {
                            _mm512_add_ps(_mm512_loadu_ps(l), v)
                        };
                        _mm512_storeu_ps(l, v);
                    }
                }
            }
        }
    }
    ahead::put(ahead);
}

/// See [`super::reduce_lanes`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn reduce_lanes(dw: &mut [f32], dwv: &[f32]) {
    for (e, d) in dw.iter_mut().enumerate() {
        *d = _mm512_reduce_add_ps(_mm512_loadu_ps(dwv.as_ptr().add(16 * e)));
    }
}

/// `dst[i] = max(0, (src[i] - m) * k + b)` over `dst.len()` entries
/// (`src` at least as long): the BN-ReLU forward's expression, operation by
/// operation (no FMA), with `v <= 0` (NaN excluded) sent to +0 as there.
#[target_feature(enable = "avx512f")]
pub(in crate::ops::conv2d) unsafe fn bn_relu(dst: &mut [f32], src: &[f32], m: f32, k: f32, b: f32) {
    let n = dst.len();
    assert!(src.len() >= n);
    let (vm, vk, vb, z) = (
        _mm512_set1_ps(m),
        _mm512_set1_ps(k),
        _mm512_set1_ps(b),
        _mm512_setzero_ps(),
    );
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let mask = lanes(n - i);
        let x = _mm512_maskz_loadu_ps(mask, s.add(i));
        _mm512_mask_storeu_ps(d.add(i), mask, bn_relu_vec(x, [vm, vk, vb], z));
        i += 16;
    }
}

/// `max(0, (x - m) * k + b)` of 16 lanes, `bn = [m, k, b]` broadcast, `z`
/// zero: [`bn_relu`]'s expression, which the pairing kernels apply as they
/// read a BN-ReLU input (so the same bits as pairing its stored output).
#[inline(always)]
pub(in crate::ops::conv2d) unsafe fn bn_relu_vec(x: __m512, bn: [__m512; 3], z: __m512) -> __m512 {
    let [vm, vk, vb] = bn;
    let v = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(x, vm), vk), vb);
    let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, z);
    _mm512_mask_mov_ps(v, le, z)
}

/// `[m, k, b]` broadcast to 16 lanes each.
#[inline(always)]
pub(in crate::ops::conv2d) unsafe fn splat3(bn: [f32; 3]) -> [__m512; 3] {
    bn.map(|v| _mm512_set1_ps(v))
}

/// `dst[i] = k * (g' - a - (x[i] - mu) * b)` with `(k, a, b) = coef`, `g' =
/// dy[i]`, or 0 where `(x[i] - mu) * k + beta <= 0` when `relu = Some(beta)`:
/// the BN backward's input gradient, operation by operation as in its own
/// pass (so the same bits).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn bn_dx(
    dst: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mu: f32,
    coef: (f32, f32, f32),
    relu: Option<f32>,
) {
    let n = dst.len();
    assert!(dy.len() >= n && x.len() >= n);
    let (k, a, b) = coef;
    let (vm, vk, va, vb) = (
        _mm512_set1_ps(mu),
        _mm512_set1_ps(k),
        _mm512_set1_ps(a),
        _mm512_set1_ps(b),
    );
    let (vbeta, z) = (_mm512_set1_ps(relu.unwrap_or(0.0)), _mm512_setzero_ps());
    let (gp, xp, d) = (dy.as_ptr(), x.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let mask = lanes(n - i);
        let g = _mm512_maskz_loadu_ps(mask, gp.add(i));
        let xm = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, xp.add(i)), vm);
        let g = if relu.is_some() {
            let v = _mm512_add_ps(_mm512_mul_ps(xm, vk), vbeta);
            let off = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, z);
            _mm512_mask_mov_ps(g, off, z)
        } else {
            g
        };
        let r = _mm512_mul_ps(
            vk,
            _mm512_sub_ps(_mm512_sub_ps(g, va), _mm512_mul_ps(xm, vb)),
        );
        _mm512_mask_storeu_ps(d.add(i), mask, r);
        i += 16;
    }
}

/// [`Stats`] as raw pointers for the kernel.
#[derive(Clone, Copy)]
pub(super) struct StatPtrs {
    pub x: *const f32,
    pub mean: *const f32,
    pub k: *const f32,
    pub beta: *const f32,
    pub lanes: *mut f32,
    /// vectors of a plane in whole 32-position chunks: 2 * (hw / 32)
    pub lane_vecs: usize,
}

/// Adds one stored vector `g` (channel `c`, plane offset `at`) to one lane
/// half `[a0, a1]` of the BN-ReLU reduction: `dy = g` masked where `(x -
/// mean) * k + beta <= 0`, `a0 += dy`, `a1 += dy * (x - mean)` (the
/// expressions of `batchnorm::plane_sums`, operation by operation).
#[inline(always)]
unsafe fn stat_lanes(st: &StatPtrs, c: usize, at: usize, a: &mut [__m512; 2], g: __m512) {
    let xm = _mm512_sub_ps(
        _mm512_loadu_ps(st.x.add(at)),
        _mm512_set1_ps(*st.mean.add(c)),
    );
    let v = _mm512_add_ps(
        _mm512_mul_ps(xm, _mm512_set1_ps(*st.k.add(c))),
        _mm512_set1_ps(*st.beta.add(c)),
    );
    let off = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, _mm512_setzero_ps());
    let dy = _mm512_mask_mov_ps(g, off, _mm512_setzero_ps());
    a[0] = _mm512_add_ps(a[0], dy);
    a[1] = _mm512_add_ps(a[1], _mm512_mul_ps(dy, xm));
}

/// The BN-ReLU reduction's lanes of `n_out` planes of `hw` already stored
/// at `dst`: what [`store_tile`] with `STATS` adds, in its order (per
/// plane, its vectors ascending, vector `vv` into lane half `vv % 2`), so
/// a kernel that stores first and reduces after gives the same bits.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stats_of(dst: &[f32], st: &StatPtrs, n_out: usize, hw: usize) {
    for c in 0..n_out {
        let mut lanes = stat_lanes_load(st, c);
        for vv in 0..st.lane_vecs {
            let at = c * hw + 16 * vv;
            let g = _mm512_loadu_ps(dst.as_ptr().add(at));
            stat_lanes(st, c, at, &mut lanes[vv % 2], g);
        }
        stat_lanes_store(st, c, &lanes);
    }
}

/// Channel `c`'s lanes of the BN-ReLU reduction, `[half][a0, a1]`: 64
/// floats at `lanes + 64 c` laid out `a0` half 0, half 1, `a1` half 0,
/// half 1.
#[inline(always)]
unsafe fn stat_lanes_load(st: &StatPtrs, c: usize) -> [[__m512; 2]; 2] {
    let l = st.lanes.add(c * 64);
    [
        [_mm512_loadu_ps(l), _mm512_loadu_ps(l.add(32))],
        [_mm512_loadu_ps(l.add(16)), _mm512_loadu_ps(l.add(48))],
    ]
}

/// Writes back what [`stat_lanes_load`] read.
#[inline(always)]
unsafe fn stat_lanes_store(st: &StatPtrs, c: usize, a: &[[__m512; 2]; 2]) {
    let l = st.lanes.add(c * 64);
    _mm512_storeu_ps(l, a[0][0]);
    _mm512_storeu_ps(l.add(32), a[0][1]);
    _mm512_storeu_ps(l.add(16), a[1][0]);
    _mm512_storeu_ps(l.add(48), a[1][1]);
}

// ---- helpers of the passes around the kernels (stop 17) ----

/// 16 lanes of a run of zeros holding `src[..n]` from index 0: lane `l`
/// is `src[i0 + l]` when `0 <= i0 + l < n`, else +0, with the mask of the
/// lanes inside. The lanes outside are masked off the load (no access; the
/// address is formed with `wrapping_offset`, never dereferenced there).
#[inline(always)]
unsafe fn load_in_run(src: &[f32], n: usize, i0: isize) -> (__mmask16, __m512) {
    // lanes [from, to) read src: from = the first with i0 + l >= 0, to =
    // the first with i0 + l >= n
    let from = (-i0).clamp(0, 16) as usize;
    let to = (n as isize - i0).clamp(0, 16) as usize;
    if from >= to {
        return (0, _mm512_setzero_ps());
    }
    let mask = lanes(to) & !lanes(from);
    (
        mask,
        _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_offset(i0)),
    )
}

/// `dst[t] = (S[2t - shift], S[2t + 1 - shift])` rounded to bf16 (low,
/// high half; `vcvtne2ps2bf16`, as [`run_pairs_bf16`]), where `S[i] =
/// src[i]` for `0 <= i < n` (`n <= src.len()`) and +0 elsewhere, for every
/// `t < dst.len()` (a multiple of 16): [`run_pairs_bf16`] over `src` placed
/// at index `shift` of a run of zeros, without writing that run out (the
/// bf16 weight gradient's input pairs straight from an input plane).
/// With `bn = Some([m, k, b])`, `S[i] = max(0, (src[i] - m) * k + b)` in
/// the run (a BN-ReLU input plane, made as it is paired: [`bn_relu`]'s
/// bits), still +0 outside it.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn run_pairs_at_bf16(
    dst: &mut [u32],
    src: &[f32],
    n: usize,
    shift: usize,
    bn: Option<[f32; 3]>,
) {
    match bn {
        None => run_pairs_at_with::<false>(dst, src, n, shift, [0.0; 3]),
        Some(bn) => run_pairs_at_with::<true>(dst, src, n, shift, bn),
    }
}

/// [`run_pairs_at_bf16`] with the BN-ReLU known at compile time.
#[inline(always)]
unsafe fn run_pairs_at_with<const BN: bool>(
    dst: &mut [u32],
    src: &[f32],
    n: usize,
    shift: usize,
    bn: [f32; 3],
) {
    assert!(n <= src.len() && dst.len().is_multiple_of(16));
    let (d, shift) = (dst.as_mut_ptr(), shift as isize);
    let (vbn, z) = (splat3(bn), _mm512_setzero_ps());
    // the BN-ReLU of the run's lanes; +0 stays outside it
    let act = |(m, x): (__mmask16, __m512)| {
        if BN {
            _mm512_maskz_mov_ps(m, bn_relu_vec(x, vbn, z))
        } else {
            x
        }
    };
    for t in (0..dst.len()).step_by(16) {
        let i = 2 * t as isize - shift;
        let lo = act(load_in_run(src, n, i));
        let hi = act(load_in_run(src, n, i + 16));
        let p = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(d.add(t) as *mut __m512i, p);
    }
}

//! Direct 3x3 / stride 1 / pad 1 convolution for f32 on AVX-512: the same
//! three sums as [`super`], computed without im2col. It is the fast path of
//! the convolutions that make up almost all of a CIFAR ResNet's FLOPs; every
//! other shape (and f64, and CPUs without AVX-512) takes the im2col path in
//! `cpu.rs`, which is also the reference these kernels are tested against.
//!
//! ## The trick: a padded image read at shifted offsets
//!
//! Copy each input plane into a zero-padded plane `P` of width `wp = w + 2`
//! (one zero column each side, one zero row above and below):
//! `P[c, (y+1)*wp + (x+1)] = inp[c, y, x]`. Number the output positions on
//! the same grid, `j = y*wp + x` (the two positions per row with `x >= w`
//! are computed and thrown away). Then a tap `(ky, kx)` of the kernel reads
//! `P` at the constant offset `off(ky, kx) = ky*wp + kx`:
//!
//! ```text
//! out[o, y, x] = sum_{c, ky, kx} w[o, c, ky, kx] * inp[c, y+ky-1, x+kx-1]
//!              = sum_{c, k} w[o, c, k] * P[c, j + off(k)]               (j = y*wp + x)
//! ```
//!
//! so for a fixed `(c, k)` the inputs of consecutive `j` are consecutive in
//! memory: a 16-lane vector load, no gather and no im2col. The kernel keeps
//! an 8-channel x 48-position tile of outputs in 24 registers and adds one
//! broadcast weight times one loaded vector per FMA.
//!
//! **Input gradient.** From the forward sum, `d out[o,y,x] / d inp[c,a,b] =
//! w[o, c, a-y+1, b-x+1]`, so with `dout` zero-padded the same way
//! (`D[o, (y+1)*wp + (x+1)] = dout[o, y, x]`):
//!
//! ```text
//! dinp[c, a, b] += sum_{o, ky, kx} w[o, c, ky, kx] * dout[o, a+1-ky, b+1-kx]
//!                = sum_{o, k} w[o, c, 8-k] * D[o, j + off(k)]            (j = a*wp + b)
//! ```
//!
//! (tap `k = (ky, kx)` of the flipped kernel reads offset `(2-ky)*wp +
//! (2-kx)`): the forward kernel again, with `D` as input and the weight
//! transposed to `(o -> c)` and flipped.
//!
//! **Weight gradient.** `d out[o,y,x] / d w[o,c,ky,kx] = inp[c, y+ky-1, x+kx-1]`:
//!
//! ```text
//! dw[o, c, k] += sum_{y, x} dout[o, y, x] * P[c, y*wp + x + off(k)]
//!              = sum_j D[o, j + wp + 1] * P[c, j + off(k)]
//! ```
//!
//! where the sum may run over every `j` of the grid, because `D[o, j + wp +
//! 1]` is zero exactly at the thrown-away positions `x >= w` (they land on
//! `D`'s padding columns) and past the last row. One dot product per
//! `(o, c, k)`, 24 of them in registers at a time (8 output channels x the
//! 3 taps of one kernel row).
//!
//! Buffers: each padded plane has `ps = js + 2*wp + 2` entries, where `js`
//! is `h*wp` rounded up to the 48-position tile, so every vector load of a
//! tile (at most `js - 1 + 2*wp + 2`) stays inside its plane; the entries
//! past the image are zero.

use std::any::TypeId;
use std::sync::OnceLock;

use super::Conv2dShape;
use crate::ops::Accum;

/// Output channels per register tile.
const TILE_O: usize = 8;
/// Output positions per register tile (3 vectors of 16 lanes).
const TILE_J: usize = 48;

/// Which convolutions take the direct path, from `RESGRAD_CONV` (for A/B
/// measurements): `im2col` none, `direct` every applicable one, anything
/// else (or unset) the measured choice of [`use_for_data`] and
/// [`use_for_weight`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Off,
    Auto,
    All,
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        match std::env::var("RESGRAD_CONV").as_deref() {
            _ if !cpu => Mode::Off,
            Ok("im2col") => Mode::Off,
            Ok("direct") => Mode::All,
            _ => Mode::Auto,
        }
    })
}

/// Whether the kernels may run at all (AVX-512F present, not switched off).
fn enabled() -> bool {
    mode() != Mode::Off
}

/// True when the direct kernels can compute `s` for element type `T`:
/// f32, 3x3, stride 1, pad 1, channels in multiples of 8, AVX-512F.
pub(super) fn applies<T: 'static>(s: &Conv2dShape) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
        && s.kh == 3
        && s.kw == 3
        && s.stride == 1
        && s.pad == 1
        && s.cin.is_multiple_of(TILE_O)
        && s.cout.is_multiple_of(TILE_O)
        && enabled()
}

/// Smallest plane (h*w) for which the direct forward and input gradient
/// beat im2col + GEMM. Measured at batch 128, 2 threads (BENCHMARKS.md):
/// 16->16 at 32x32 240 vs 163 GFLOP/s, 32->32 at 16x16 254 vs 190, but
/// 64->64 at 8x8 198 vs 199: an 8x8 plane on the 10-wide padded grid
/// wastes a third of each tile.
const MIN_PLANE_DATA: usize = 16 * 16;
/// Smallest plane for the direct weight gradient. With `D`'s rows aligned
/// to 64-byte lines (no split loads), minimum of 40 runs at batch 128, 2
/// threads: 222 vs 101 GFLOP/s (im2col) at 32x32, 208 vs 144 at 16x16, 164
/// vs 151-165 at 8x8 (unaligned it was 187, 176, 142).
const MIN_PLANE_WEIGHT: usize = 16 * 16;

/// Forward and input gradient of `s` on the direct path?
pub(super) fn use_for_data<T: 'static>(s: &Conv2dShape) -> bool {
    applies::<T>(s) && (mode() == Mode::All || s.h * s.w >= MIN_PLANE_DATA)
}

/// Weight gradient of `s` on the direct path?
pub(super) fn use_for_weight<T: 'static>(s: &Conv2dShape) -> bool {
    applies::<T>(s) && (mode() == Mode::All || s.h * s.w >= MIN_PLANE_WEIGHT)
}

/// `x` as `&[f32]`; `None` unless `T` is `f32`.
pub(super) fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32 (same TypeId), so the slice is a slice of f32.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// `x` as `&mut [f32]`; `None` unless `T` is `f32`.
pub(super) fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32 (same TypeId), so the slice is a slice of f32.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The padded grid of one 3x3 / stride-1 / pad-1 convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    pub h: usize,
    pub w: usize,
    /// padded row width, w + 2
    pub wp: usize,
    /// output positions computed per plane: h*wp rounded up to TILE_J
    pub js: usize,
    /// entries per padded plane: js + 2*wp + 2
    pub ps: usize,
    /// tap offsets in the padded plane: off[ky*3 + kx] = ky*wp + kx
    pub off: [usize; 9],
}

impl Grid {
    pub fn of(s: &Conv2dShape) -> Self {
        let wp = s.w + 2;
        let js = (s.h * wp).div_ceil(TILE_J) * TILE_J;
        let mut off = [0; 9];
        for (k, o) in off.iter_mut().enumerate() {
            *o = (k / 3) * wp + k % 3;
        }
        Grid {
            h: s.h,
            w: s.w,
            wp,
            js,
            // a multiple of 16 floats: every plane of a buffer then has the
            // same alignment (see `aligned_from`)
            ps: (js + 2 * wp + 2).next_multiple_of(16),
            off,
        }
    }
}

/// Writes the padded planes of one image: `dst` (c, ps) from `src`
/// (c, h, w), interior at `(y+1)*wp + (x+1)`, zeros everywhere else.
pub(super) fn pad_image(dst: &mut [f32], src: &[f32], g: &Grid) {
    let planes = src.len() / (g.h * g.w);
    assert!(src.len() == planes * g.h * g.w && dst.len() >= planes * g.ps);
    assert!((g.h + 2) * g.wp <= g.ps);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "pad_image without AVX-512");
        // SAFETY: AVX-512F available; lengths asserted above (see the kernel).
        unsafe { avx512::pad_image(dst, src, planes, g) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// `dst[c, y, x] (+)= ext[c, y*wp + x]` for `x < w`: one image's result
/// planes (c, js) on the padded grid back to (c, h, w); `add` accumulates.
pub(super) fn unpad_image(dst: &mut [f32], ext: &[f32], g: &Grid, add: bool) {
    let planes = dst.len() / (g.h * g.w);
    assert!(dst.len() == planes * g.h * g.w && ext.len() >= planes * g.js);
    assert!(g.h * g.wp <= g.js);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "unpad_image without AVX-512");
        // SAFETY: AVX-512F available; lengths asserted above.
        unsafe { avx512::unpad_image(dst, ext, planes, g, add) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// Forward weights repacked as `wf[c, k, o] = w[o, c, k]` (one tap of eight
/// output channels is then eight consecutive floats).
pub(super) fn pack_forward(wf: &mut Vec<f32>, w: &[f32], cin: usize, cout: usize) {
    wf.clear();
    wf.resize(cin * 9 * cout, 0.0);
    for o in 0..cout {
        for c in 0..cin {
            for k in 0..9 {
                wf[(c * 9 + k) * cout + o] = w[(o * cin + c) * 9 + k];
            }
        }
    }
}

/// Input-gradient weights, transposed and flipped: `wb[o, k, c] = w[o, c, 8 - k]`.
pub(super) fn pack_backward(wb: &mut Vec<f32>, w: &[f32], cin: usize, cout: usize) {
    wb.clear();
    wb.resize(cout * 9 * cin, 0.0);
    for o in 0..cout {
        for c in 0..cin {
            for k in 0..9 {
                wb[(o * 9 + k) * cin + c] = w[(o * cin + c) * 9 + 8 - k];
            }
        }
    }
}

/// `dst[o, j] = sum_{i, k} wk[i, k, o] * src[i, j + off(k)]` for every
/// `o < n_out` and `j < js`: the forward pass (src = P) and the input
/// gradient (src = D, wk = the flipped weights) alike. `src` holds `n_in`
/// padded planes, `dst` `n_out` planes of `js` entries.
pub(super) fn conv_planes(
    dst: &mut [f32],
    src: &[f32],
    wk: &[f32],
    n_in: usize,
    n_out: usize,
    g: &Grid,
) {
    assert!(n_out.is_multiple_of(TILE_O) && g.js.is_multiple_of(TILE_J));
    assert!(dst.len() >= n_out * g.js, "conv_planes: dst too short");
    assert!(
        wk.len() >= n_in * 9 * n_out,
        "conv_planes: weights too short"
    );
    assert!(src.len() >= n_in * g.ps, "conv_planes: src too short");
    assert!(g.off[8] + g.js <= g.ps);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "conv_planes without AVX-512");
        // SAFETY: AVX-512F is available (enabled() checked it), and the
        // asserts above bound every load and store (see the kernel).
        unsafe { avx512::conv_planes(dst, src, wk, n_in, n_out, g) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// `dw[o, i, k] += sum_{n < imgs} sum_{j < js} d[n, o, j + wp + 1] * p[n, i, j + off(k)]`:
/// the weight gradient of a group of `imgs` images, `d` = their padded `dout`
/// planes (imgs, n_out, ps), `p` = their padded input planes (imgs, n_in,
/// ps), `dw` (n_out, n_in, 9). Summing over several images before the
/// horizontal reductions keeps those rare when the images are small.
pub(super) fn weight_grad_planes(
    dw: &mut [f32],
    d: &[f32],
    p: &[f32],
    n_in: usize,
    n_out: usize,
    imgs: usize,
    g: &Grid,
) {
    assert!(n_out.is_multiple_of(TILE_O) && g.js.is_multiple_of(16));
    assert!(
        dw.len() >= n_out * n_in * 9,
        "weight_grad_planes: dw too short"
    );
    assert!(
        d.len() >= imgs * n_out * g.ps,
        "weight_grad_planes: d too short"
    );
    assert!(
        p.len() >= imgs * n_in * g.ps,
        "weight_grad_planes: p too short"
    );
    assert!(g.wp + 1 + g.js <= g.ps && g.off[8] + g.js <= g.ps);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "weight_grad_planes without AVX-512");
        // SAFETY: as in conv_planes.
        unsafe { avx512::weight_grad_planes(dw, d, p, n_in, n_out, imgs, g) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Grid, TILE_J, TILE_O};
    use std::arch::x86_64::*;

    /// Mask of the first `n` (< 16) lanes.
    #[inline(always)]
    fn tail(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `dst[..n] = 0`.
    #[inline(always)]
    unsafe fn zero(dst: *mut f32, n: usize) {
        let z = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(dst.add(i), z);
            i += 16;
        }
        if i < n {
            _mm512_mask_storeu_ps(dst.add(i), tail(n - i), z);
        }
    }

    /// `dst[..n] = src[..n]` (or `+=` when `ADD`), in 16-lane pieces with
    /// a masked tail: rows are short (8 to 32 floats), too short for memcpy.
    #[inline(always)]
    unsafe fn copy<const ADD: bool>(dst: *mut f32, src: *const f32, n: usize) {
        let mut i = 0;
        while i + 16 <= n {
            let mut v = _mm512_loadu_ps(src.add(i));
            if ADD {
                v = _mm512_add_ps(_mm512_loadu_ps(dst.add(i)), v);
            }
            _mm512_storeu_ps(dst.add(i), v);
            i += 16;
        }
        if i < n {
            let m = tail(n - i);
            let mut v = _mm512_maskz_loadu_ps(m, src.add(i));
            if ADD {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst.add(i)), v);
            }
            _mm512_mask_storeu_ps(dst.add(i), m, v);
        }
    }

    /// See [`super::pad_image`]. Per plane (caller-asserted `src` = planes
    /// x h x w, `dst` >= planes x ps, (h+2)*wp <= ps): writes exactly
    /// `dst[c*ps .. (c+1)*ps]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pad_image(dst: &mut [f32], src: &[f32], planes: usize, g: &Grid) {
        let (h, w, wp, ps) = (g.h, g.w, g.wp, g.ps);
        for c in 0..planes {
            let d = dst.as_mut_ptr().add(c * ps);
            let s = src.as_ptr().add(c * h * w);
            // top padding row and the left pad of row 1
            zero(d, wp + 1);
            for y in 0..h {
                let at = (y + 1) * wp + 1;
                copy::<false>(d.add(at), s.add(y * w), w);
                // right pad of this row, left pad of the next
                *d.add(at + w) = 0.0;
                *d.add(at + w + 1) = 0.0;
            }
            // the rest of the bottom row and the slack
            zero(d.add((h + 1) * wp + 1), ps - (h + 1) * wp - 1);
        }
    }

    /// See [`super::unpad_image`]: reads `ext[c*js + y*wp .. + w]`, writes
    /// `dst[c*h*w + y*w .. + w]` (caller-asserted lengths).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn unpad_image(
        dst: &mut [f32],
        ext: &[f32],
        planes: usize,
        g: &Grid,
        add: bool,
    ) {
        let (h, w, wp, js) = (g.h, g.w, g.wp, g.js);
        for c in 0..planes {
            let d = dst.as_mut_ptr().add(c * h * w);
            let e = ext.as_ptr().add(c * js);
            for y in 0..h {
                if add {
                    copy::<true>(d.add(y * w), e.add(y * wp), w);
                } else {
                    copy::<false>(d.add(y * w), e.add(y * wp), w);
                }
            }
        }
    }

    /// See [`super::conv_planes`]. Bounds (asserted by the caller): the
    /// loads of tile (j0, i, k) read `src[i*ps + j0 + off(k) .. + 48]`, and
    /// `j0 + 48 <= js`, `off(k) <= off(8)`, `off(8) + js <= ps`; the stores
    /// write `dst[o*js + j0 .. + 48]` with `o < n_out`, `j0 + 48 <= js`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn conv_planes(
        dst: &mut [f32],
        src: &[f32],
        wk: &[f32],
        n_in: usize,
        n_out: usize,
        g: &Grid,
    ) {
        let (js, ps) = (g.js, g.ps);
        let sp0 = src.as_ptr();
        let wp0 = wk.as_ptr();
        let dp0 = dst.as_mut_ptr();
        // positions outside, channels inside: one tile column of the
        // input (n_in x (48 + 2 wp + 2) floats) stays in L1 while every
        // output-channel block reads it
        for j0 in (0..js).step_by(TILE_J) {
            for o0 in (0..n_out).step_by(TILE_O) {
                let mut acc = [[_mm512_setzero_ps(); 3]; TILE_O];
                for i in 0..n_in {
                    let s = sp0.add(i * ps + j0);
                    let wi = wp0.add(i * 9 * n_out + o0);
                    for k in 0..9 {
                        let sk = s.add(g.off[k]);
                        let a0 = _mm512_loadu_ps(sk);
                        let a1 = _mm512_loadu_ps(sk.add(16));
                        let a2 = _mm512_loadu_ps(sk.add(32));
                        let wkk = wi.add(k * n_out);
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*wkk.add(c));
                            acc[0] = _mm512_fmadd_ps(a0, b, acc[0]);
                            acc[1] = _mm512_fmadd_ps(a1, b, acc[1]);
                            acc[2] = _mm512_fmadd_ps(a2, b, acc[2]);
                        }
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    let d = dp0.add((o0 + c) * js + j0);
                    _mm512_storeu_ps(d, acc[0]);
                    _mm512_storeu_ps(d.add(16), acc[1]);
                    _mm512_storeu_ps(d.add(32), acc[2]);
                }
            }
        }
    }

    /// See [`super::weight_grad_planes`]. Bounds: loads read
    /// `d[o*ps + wp + 1 + j .. + 16]` and `p[i*ps + ky*wp + kx + j .. + 16]`
    /// with `j + 16 <= js`, `wp + 1 + js <= ps`, `2*wp + 2 + js <= ps`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad_planes(
        dw: &mut [f32],
        d: &[f32],
        p: &[f32],
        n_in: usize,
        n_out: usize,
        imgs: usize,
        g: &Grid,
    ) {
        let (js, ps, wp) = (g.js, g.ps, g.wp);
        let dp0 = d.as_ptr().add(wp + 1);
        let pp0 = p.as_ptr();
        for o0 in (0..n_out).step_by(TILE_O) {
            for i in 0..n_in {
                for ky in 0..3 {
                    let mut acc = [[_mm512_setzero_ps(); 3]; TILE_O];
                    for n in 0..imgs {
                        let prow = pp0.add((n * n_in + i) * ps + ky * wp);
                        let drow = dp0.add((n * n_out + o0) * ps);
                        for j in (0..js).step_by(16) {
                            let p0 = _mm512_loadu_ps(prow.add(j));
                            let p1 = _mm512_loadu_ps(prow.add(j + 1));
                            let p2 = _mm512_loadu_ps(prow.add(j + 2));
                            for (c, acc) in acc.iter_mut().enumerate() {
                                let dv = _mm512_loadu_ps(drow.add(c * ps + j));
                                acc[0] = _mm512_fmadd_ps(dv, p0, acc[0]);
                                acc[1] = _mm512_fmadd_ps(dv, p1, acc[1]);
                                acc[2] = _mm512_fmadd_ps(dv, p2, acc[2]);
                            }
                        }
                    }
                    for (c, acc) in acc.iter().enumerate() {
                        let at = ((o0 + c) * n_in + i) * 9 + ky * 3;
                        for (kx, &v) in acc.iter().enumerate() {
                            dw[at + kx] += _mm512_reduce_add_ps(v);
                        }
                    }
                }
            }
        }
    }
}

/// One parallel chunk's buffers for the direct path, grown on demand.
#[derive(Default)]
pub(super) struct Scratch {
    /// padded input planes P (cin, ps)
    p: Vec<f32>,
    /// padded output-gradient planes D (cout, ps)
    d: Vec<f32>,
    /// one image's output (or input gradient) on the padded grid (c, js)
    ext: Vec<f32>,
    /// this chunk's partial weight gradient (cout, cin, 9)
    dw: Vec<f32>,
}

/// The direct path's workspace: repacked weights and per-chunk scratch.
#[derive(Default)]
pub(super) struct Workspace {
    wf: Vec<f32>,
    wb: Vec<f32>,
    chunks: Vec<Scratch>,
}

/// The first index `i < 16` of `buf` such that `buf[i + shift]` starts a
/// 64-byte line (16 floats), for buffers with 16 floats of slack.
fn aligned_from(buf: &[f32], shift: usize) -> usize {
    let at = buf.as_ptr() as usize / std::mem::size_of::<f32>() + shift;
    (16 - at % 16) % 16
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Forward of a batch: per image, pad, [`conv_planes`], unpad.
/// Shapes as validated by `mod.rs`; `applies(s)` must hold.
pub(super) fn forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    s: &Conv2dShape,
    ws: &mut Workspace,
) {
    let g = Grid::of(s);
    let (img, oimg) = (s.cin * s.h * s.w, s.cout * s.h * s.w);
    pack_forward(&mut ws.wf, w, s.cin, s.cout);
    let wf = &ws.wf;
    super::cpu::for_each_chunk(
        &mut ws.chunks,
        s.n,
        out,
        oimg,
        &|imgs, sc: &mut Scratch, out| {
            grow(&mut sc.p, s.cin * g.ps);
            grow(&mut sc.ext, s.cout * g.js);
            for (i, out_img) in imgs.zip(out.chunks_exact_mut(oimg)) {
                pad_image(&mut sc.p, &inp[i * img..][..img], &g);
                conv_planes(&mut sc.ext, &sc.p, wf, s.cin, s.cout, &g);
                unpad_image(out_img, &sc.ext, &g, false);
            }
        },
    );
}

/// Backward of a batch, both gradients from one pass over the images (the
/// padded `dout` of an image is made once and read by both): `dinp +=`
/// (`=` with [`Accum::Set`]) when given, `dweight +=` (when given; chunk partials reduced in chunk
/// order, so a fixed thread count gives bit-identical results).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    accum: Accum,
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    s: &Conv2dShape,
    ws: &mut Workspace,
) {
    let g = Grid::of(s);
    let (img, oimg) = (s.cin * s.h * s.w, s.cout * s.h * s.w);
    let want_dinp = dinp.is_some();
    let want_dw = dweight.is_some();
    if !want_dinp && !want_dw {
        return;
    }
    if want_dinp {
        pack_backward(&mut ws.wb, w, s.cin, s.cout);
    }
    let wb = &ws.wb;
    let nw = s.cout * s.cin * 9;
    let (dst, per_img): (&mut [f32], usize) = match dinp {
        Some(d) => (d, img),
        None => (&mut [], 0),
    };
    // images per weight-gradient group: enough positions (~768) per
    // horizontal reduction, one image for 32x32 planes, 8 for 8x8
    // (measured: larger groups, 1536 or 3072 positions, ran 20-50% slower
    // on 16x16 and 8x8 planes, their D rows no longer staying in L1)
    let group = (768 / g.js).clamp(1, 16);
    let (dimg_len, pimg_len) = (s.cout * g.ps, s.cin * g.ps);
    let used = super::cpu::for_each_chunk(
        &mut ws.chunks,
        s.n,
        dst,
        per_img,
        &|imgs, sc: &mut Scratch, dinp| {
            // D's rows are read from `wp + 1` on by the weight gradient (8 of
            // its 11 loads per step): start them on a 64-byte line, so no
            // load splits across two lines (measured below)
            grow(&mut sc.d, group * dimg_len + 16);
            let dofs = aligned_from(&sc.d, g.wp + 1);
            let dbuf = &mut sc.d[dofs..];
            if want_dinp {
                grow(&mut sc.ext, s.cin * g.js);
            }
            if want_dw {
                grow(&mut sc.p, group * pimg_len);
                grow(&mut sc.dw, nw);
                sc.dw[..nw].fill(0.0);
            }
            let first = imgs.start;
            for (t, i) in imgs.clone().enumerate() {
                // slot of this image in its group
                let slot = (i - first) % group;
                let dslot = &mut dbuf[slot * dimg_len..][..dimg_len];
                pad_image(dslot, &dout[i * oimg..][..oimg], &g);
                if want_dinp {
                    conv_planes(
                        &mut sc.ext,
                        &dbuf[slot * dimg_len..][..dimg_len],
                        wb,
                        s.cout,
                        s.cin,
                        &g,
                    );
                    unpad_image(
                        &mut dinp[t * img..][..img],
                        &sc.ext,
                        &g,
                        accum == Accum::Add,
                    );
                }
                if want_dw {
                    let pslot = &mut sc.p[slot * pimg_len..][..pimg_len];
                    pad_image(pslot, &inp[i * img..][..img], &g);
                    // a full group, or the chunk's last images
                    if slot + 1 == group || i + 1 == imgs.end {
                        let n = slot + 1;
                        weight_grad_planes(&mut sc.dw, dbuf, &sc.p, s.cin, s.cout, n, &g);
                    }
                }
            }
        },
    );
    if let Some(dweight) = dweight {
        // fixed-order reduction of the per-chunk partial sums
        for sc in used.iter() {
            for (d, &p) in dweight.iter_mut().zip(&sc.dw[..nw]) {
                *d += p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The direct kernels against the im2col path (the plain one, itself
    //! checked by finite differences and the loop-by-loop definition) and
    //! against an f64 evaluation of the same f32 data.
    use super::super::{
        conv2d_backward, conv2d_backward_input, conv2d_backward_to, conv2d_backward_weight,
        conv2d_forward, cpu, Conv2dShape, ConvWorkspace,
    };
    use super::*;
    use crate::gradcheck::Rand;

    fn shape(n: usize, cin: usize, h: usize, w: usize, cout: usize) -> Conv2dShape {
        Conv2dShape {
            n,
            cin,
            h,
            w,
            cout,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        }
    }

    /// Largest |a - b| relative to the largest |b| (norm-wise, as f32 sums
    /// of different orders differ by rounding only).
    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let scale = b.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
        diff / scale.max(1e-30)
    }

    #[test]
    fn direct_matches_im2col_path() {
        if !enabled() {
            println!(
                "SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused"
            );
            return;
        }
        let mut r = Rand::new(11);
        let mut ws = ConvWorkspace::<f32>::default();
        let mut dws = Workspace::default();
        let mut plain = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                // odd sizes, a single row/column, batch 1, the CIFAR shapes
                for s in [
                    shape(3, 8, 5, 7, 16),
                    shape(1, 16, 1, 1, 8),
                    shape(2, 8, 1, 9, 8),
                    shape(4, 24, 9, 4, 8),
                    shape(5, 16, 32, 32, 16),
                    shape(3, 32, 16, 16, 32),
                    shape(2, 64, 8, 8, 64),
                ] {
                    assert!(applies::<f32>(&s) && !applies::<f64>(&s));
                    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                    let inp = f(r.normal_vec(s.n * s.cin * s.h * s.w));
                    let w = f(r.normal_vec(s.cout * s.cin * 9));
                    let dout = f(r.normal_vec(s.n * s.cout * s.h * s.w));
                    let dinp0 = f(r.normal_vec(inp.len())); // += onto non-zero buffers
                    let dw0 = f(r.normal_vec(w.len()));

                    // the direct kernels, whatever the size policy says
                    let mut out = vec![f32::NAN; dout.len()];
                    forward(&mut out, &inp, &w, &s, &mut dws);
                    let (mut dinp, mut dw) = (dinp0.clone(), dw0.clone());
                    backward(
                        Accum::Add,
                        Some(&mut dinp),
                        Some(&mut dw),
                        &dout,
                        &inp,
                        &w,
                        &s,
                        &mut dws,
                    );
                    // the two halves separately give the same bits
                    let (mut dinp_h, mut dw_h) = (dinp0.clone(), dw0.clone());
                    backward(
                        Accum::Add,
                        Some(&mut dinp_h),
                        None,
                        &dout,
                        &inp,
                        &w,
                        &s,
                        &mut dws,
                    );
                    backward(
                        Accum::Add,
                        None,
                        Some(&mut dw_h),
                        &dout,
                        &inp,
                        &[],
                        &s,
                        &mut dws,
                    );
                    assert_eq!(dinp_h, dinp, "{s:?}");
                    assert_eq!(dw_h, dw, "{s:?}");
                    // Accum::Set overwrites whatever was there (NaN here): the
                    // same values as adding onto zeros, direct and public paths
                    let (mut set, mut zeros) = (vec![f32::NAN; inp.len()], vec![0.0; inp.len()]);
                    backward(
                        Accum::Set,
                        Some(&mut set),
                        None,
                        &dout,
                        &inp,
                        &w,
                        &s,
                        &mut dws,
                    );
                    backward(
                        Accum::Add,
                        Some(&mut zeros),
                        None,
                        &dout,
                        &inp,
                        &w,
                        &s,
                        &mut dws,
                    );
                    assert_eq!(set, zeros, "{s:?}");
                    let (mut set, mut zeros) = (vec![f32::NAN; inp.len()], vec![0.0; inp.len()]);
                    let mut dw_s = dw0.clone();
                    let dw_set = &mut dw_s;
                    conv2d_backward_to(
                        Accum::Set,
                        Some(&mut set),
                        dw_set,
                        &dout,
                        &inp,
                        &w,
                        &s,
                        &mut ws,
                    )
                    .unwrap();
                    conv2d_backward_input(&mut zeros, &dout, &w, &s, &mut ws).unwrap();
                    assert_eq!(set, zeros, "{s:?}");

                    // the public entry points (direct or im2col per pass, by size)
                    let mut out_r = vec![f32::NAN; dout.len()];
                    conv2d_forward(&mut out_r, &inp, &w, &s, &mut ws).unwrap();
                    let (mut dinp_r, mut dw_r) = (dinp0.clone(), dw0.clone());
                    conv2d_backward(Some(&mut dinp_r), &mut dw_r, &dout, &inp, &w, &s, &mut ws)
                        .unwrap();
                    let (mut dinp_rh, mut dw_rh) = (dinp0.clone(), dw0.clone());
                    conv2d_backward_input(&mut dinp_rh, &dout, &w, &s, &mut ws).unwrap();
                    conv2d_backward_weight(&mut dw_rh, &dout, &inp, &s, &mut ws).unwrap();
                    assert_eq!(dinp_rh, dinp_r, "{s:?}");
                    assert_eq!(dw_rh, dw_r, "{s:?}");

                    // plain im2col path, same data
                    let mut out_p = vec![f32::NAN; dout.len()];
                    cpu::forward(&mut out_p, &inp, &w, &s, &mut plain);
                    let (mut dinp_p, mut dw_p) = (dinp0.clone(), dw0.clone());
                    cpu::backward_input(&mut dinp_p, &dout, &w, &s, &mut plain);
                    cpu::backward_weight(&mut dw_p, &dout, &inp, &s, &mut plain);
                    for (name, a, b) in [
                        ("out", &out, &out_p),
                        ("dinp", &dinp, &dinp_p),
                        ("dw", &dw, &dw_p),
                        ("out (routed)", &out_r, &out_p),
                        ("dinp (routed)", &dinp_r, &dinp_p),
                        ("dw (routed)", &dw_r, &dw_p),
                    ] {
                        let e = rel(a, b);
                        assert!(e < 1e-5, "{threads} threads {s:?} {name}: rel err {e:e}");
                    }
                    // reproducible for a fixed thread count
                    let mut out2 = vec![0.0; out.len()];
                    forward(&mut out2, &inp, &w, &s, &mut dws);
                    assert_eq!(out2, out);
                }
            });
        }
    }

    #[test]
    fn direct_matches_f64_definition() {
        if !enabled() {
            println!(
                "SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused"
            );
            return;
        }
        // the sums written out loop by loop, in f64, on f32 data
        let s = shape(2, 8, 6, 5, 8);
        let mut r = Rand::new(5);
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let inp = f(r.normal_vec(s.n * s.cin * s.h * s.w));
        let w = f(r.normal_vec(s.cout * s.cin * 9));
        let dout = f(r.normal_vec(s.n * s.cout * s.h * s.w));
        let (h, wd) = (s.h as isize, s.w as isize);
        let at = |n: usize, c: usize, y: isize, x: isize| {
            if y < 0 || x < 0 || y >= h || x >= wd {
                0.0
            } else {
                inp[((n * s.cin + c) * s.h + y as usize) * s.w + x as usize] as f64
            }
        };
        let mut out = vec![0f64; dout.len()];
        let mut dinp = vec![0f64; inp.len()];
        let mut dw = vec![0f64; w.len()];
        for n in 0..s.n {
            for o in 0..s.cout {
                for y in 0..h {
                    for x in 0..wd {
                        let oi = ((n * s.cout + o) * s.h + y as usize) * s.w + x as usize;
                        for c in 0..s.cin {
                            for k in 0..9 {
                                let (iy, ix) = (y + (k / 3) as isize - 1, x + (k % 3) as isize - 1);
                                let wi = (o * s.cin + c) * 9 + k;
                                out[oi] += w[wi] as f64 * at(n, c, iy, ix);
                                dw[wi] += dout[oi] as f64 * at(n, c, iy, ix);
                                if iy >= 0 && ix >= 0 && iy < h && ix < wd {
                                    dinp[((n * s.cin + c) * s.h + iy as usize) * s.w
                                        + ix as usize] += dout[oi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut ws = Workspace::default();
        let mut got_out = vec![0f32; out.len()];
        forward(&mut got_out, &inp, &w, &s, &mut ws);
        let (mut got_dinp, mut got_dw) = (vec![0f32; inp.len()], vec![0f32; w.len()]);
        backward(
            Accum::Add,
            Some(&mut got_dinp),
            Some(&mut got_dw),
            &dout,
            &inp,
            &w,
            &s,
            &mut ws,
        );
        for (name, a, b) in [
            ("out", &got_out, &out),
            ("dinp", &got_dinp, &dinp),
            ("dw", &got_dw, &dw),
        ] {
            for (i, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (x as f64 - y).abs() <= 1e-5 * y.abs().max(1.0),
                    "{name}[{i}]: {x} vs {y}"
                );
            }
        }
    }
}

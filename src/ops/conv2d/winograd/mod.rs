//! Winograd F(2x2, 3x3) for the f32 forward and input gradient of the 3x3 /
//! stride 1 / pad 1 convolutions: the same sums as [`super::direct`]'s
//! [`conv_planes`](super::direct::conv_planes), with 16 multiplications
//! per 2x2 outputs and channel pair instead of 36 (2.25x fewer), the rest
//! additions. The weight gradient stays on the direct kernels.
//!
//! ## The identity (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016)
//!
//! Cut each output plane into 2x2 tiles: tile `(ty, tx)` holds `out[2ty+u,
//! 2tx+v]`, `u, v in {0, 1}`, and reads the 4x4 input tile `d[r][s] =
//! inp[2ty-1+r, 2tx-1+s]` (0 outside the image). Per input channel `c` and
//! output channel `o`, with `g = w[o, c]` (3x3),
//!
//! ```text
//! out[o, 2ty+u, 2tx+v] = sum_c sum_{ky,kx} g[ky][kx] * d_c[u+ky][v+kx]          (the convolution)
//!                      = sum_c ( A^T [ (G g G^T) (.) (B^T d_c B) ] A )[u][v]    (.) elementwise
//!
//!       | 1  0  0 |          | 1  0 -1  0 |
//!   G = |.5 .5 .5 |    B^T = | 0  1  1  0 |    A^T = | 1  1  1  0 |
//!       |.5 -.5 .5|          | 0 -1  1  0 |          | 0  1 -1 -1 |
//!       | 0  0  1 |          | 0  1  0 -1 |
//! ```
//!
//! In one dimension the two outputs `y0 = g0 d0 + g1 d1 + g2 d2` and
//! `y1 = g0 d1 + g1 d2 + g2 d3` are `m0 + m1 + m2` and `m1 - m2 - m3`, with
//! `m0 = (d0 - d2) g0`, `m1 = (d1 + d2) (g0 + g1 + g2) / 2`,
//! `m2 = (d2 - d1) (g0 - g1 + g2) / 2` and `m3 = (d1 - d3) g2`: expand, and
//! every `g_i d_j` term but the right ones cancels. The 2-D form applies it
//! along rows and columns. Because the transforms are linear and the sum
//! over `c` commutes with `A^T . A`, with `U[xi][c][o] = (G g G^T)[xi]` and
//! `V[xi][c][t] = (B^T d_c B)[xi]` (`xi` one of the 16 entries of a 4x4,
//! `t` the tile):
//!
//! ```text
//! M[xi][o][t] = sum_c U[xi][c][o] * V[xi][c][t]      16 matrix products (the multiplications)
//! out[o, tile t] = A^T M[.][o][t] A                   (additions)
//! ```
//!
//! The input gradient is the forward with `dout` as input and the flipped,
//! transposed weights (`super::direct`'s module docs derive it), so the
//! same kernel computes it from `U` of `w'[c][o] = flip(w[o][c])`.
//!
//! The backward of this pass needs nothing new: it computes the same
//! function of `inp` and `w` as the direct sum (the identity above holds
//! for every input), so its derivatives are the convolution's, which
//! `super::direct` evaluates (weight gradient) and this kernel (input
//! gradient). Only the rounding differs: the transforms add up to 4
//! inputs with coefficients +-1 and the weights with +-1/2 before the
//! products, so each output is the exact sum plus a few more roundings of
//! terms as large as the inputs' (bounded and measured in `tests.rs`).
//!
//! ## Layout: the tiles as 16-lane vectors
//!
//! Tiles are numbered row-major, `t = ty * tw + tx` (`tw = w/2`), and the
//! kernels work on 16 consecutive tiles at once (one vector per entry of
//! `d`, `V`, `M`): one tile row of a 32-wide plane, two of a 16-wide, four
//! of an 8-wide. Row `r` of their input tiles is the image rows `2ty - 1 +
//! r` of those tile rows, 32 entries `e` in two vectors (0 for a padding
//! row), and entry `d[r][s]` of tile lane `l` is `e[2l + s - 1]`: one
//! two-vector permute per `(r, s)`, no copy of the input:
//!
//! ```text
//! d[r][s] of the 16 tiles = permute(e_r, [2l + s - 1 for l in 0..16])
//! ```
//!
//! `s = 0` of a row's first tile and `s = 3` of its last would take the
//! neighbouring row's entry: masked to 0 (the padding columns), as the
//! direct kernel masks its edge taps. Per 16 or 32 tiles: `V` (16, n_in,
//! 16 or 32) of every input channel (in L1 for up to 24 channels), then
//! per 8 output channels the 16 products into `M` (16, 8, 16 or 32 lanes,
//! on the stack) and straight through `A^T . A` into the output planes,
//! with the direct kernel's stores ([`Store`]) and BN-ReLU reduction
//! ([`Stats`], in a pass over the image's stored planes, in the kernel's
//! lane order).
//!
//! Applies to f32 planes 32, 16 or 8 wide (so a vector's 16 tiles are
//! whole tile rows, and 8 tiles one output row's run, or two rows' for
//! `w = 8`) with `h` even and `h*w/4` a multiple of 16: the CIFAR planes
//! 32x32, 16x16 and 8x8.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

use super::direct::{aligned_from, grow, Stats, Store};
use super::Conv2dShape;

/// The output channels a block of the products takes (8 x 2 vectors of
/// tiles, or 16 x 1 on a one-vector plane where there are 16): `n_out`
/// must be a multiple.
pub(super) const TILE_O: usize = 8;

/// The geometry of one plane size: tiles, edge masks.
#[derive(Clone, Debug)]
pub(super) struct Tiles {
    pub h: usize,
    pub w: usize,
    /// tiles per row, per plane: w/2, h*w/4
    pub tw: usize,
    pub t: usize,
    /// per vector of 16 tiles: bit `l` clear where tile `16v + l` is a
    /// row's first (`s = 0` masked), and (`.1`) its last (`s = 3`)
    pub masks: Vec<(u16, u16)>,
}

impl Tiles {
    pub fn of(h: usize, w: usize) -> Self {
        let (tw, t) = (w / 2, h * w / 4);
        let masks = (0..t / 16)
            .map(|v| {
                let (mut first, mut last) = (u16::MAX, u16::MAX);
                for l in 0..16 {
                    let tx = (16 * v + l) % tw;
                    if tx == 0 {
                        first &= !(1 << l);
                    }
                    if tx == tw - 1 {
                        last &= !(1 << l);
                    }
                }
                (first, last)
            })
            .collect();
        Tiles { h, w, tw, t, masks }
    }
}

/// Whether the Winograd kernels take plane size `h x w` (see the module
/// docs: the CIFAR planes).
pub(super) fn fits(h: usize, w: usize) -> bool {
    h >= 2 && h.is_multiple_of(2) && matches!(w, 8 | 16 | 32) && (h * w / 4).is_multiple_of(16)
}

/// Whether `s` (3x3, stride 1, pad 1 already checked by the caller) takes
/// the Winograd kernels: a plane they fit, unless `RESGRAD_WINOGRAD=0`
/// (the direct kernels instead, for A/B measurements). Measured against
/// the direct kernel (`winograd_rates`: one image, one thread) 1.20x on
/// 32x32 planes of 16 channels, 1.55x on 16x16 of 32 and 1.64x on 8x8 of
/// 64 (BENCHMARKS.md, stop 20).
pub(super) fn applies(s: &Conv2dShape) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("RESGRAD_WINOGRAD").as_deref() != Ok("0"));
    on && fits(s.h, s.w)
}

/// How many times [`conv_image`] steps the prefetch queue
/// ([`super::ahead`]) over one image of `tl` with `n_out` output channels:
/// once per entry of each block's 16 products.
pub(super) fn steps(tl: &Tiles, n_out: usize) -> usize {
    let nt = tl.t / 16;
    let odd = if nt.is_multiple_of(2) {
        0
    } else if n_out.is_multiple_of(16) {
        n_out / 16
    } else {
        n_out.div_ceil(8)
    };
    16 * ((nt / 2) * n_out.div_ceil(8) + odd)
}

/// `U = G g G^T` of every 3x3 kernel `g = w[o, c]` (w: (cout, cin, 9)),
/// laid out `u[xi][i][o]` (16, n_in, n_out): for the forward (`flip =
/// false`) `i = c`, `o = o`; for the input gradient (`flip = true`) the
/// flipped kernel `w'[c][o][k] = w[o][c][8 - k]` with `i = o`, `o = c`.
/// Computed in f64 and rounded once (the `/2` of `G` is exact, the sums
/// of three are not).
#[allow(clippy::needless_range_loop)] // G's rows and columns, as in the sums
pub(super) fn transform_weights(u: &mut Vec<f32>, w: &[f32], cin: usize, cout: usize, flip: bool) {
    let (n_in, n_out) = if flip { (cout, cin) } else { (cin, cout) };
    assert!(
        w.len() == cin * cout * 9,
        "winograd: weights of the wrong size"
    );
    u.clear();
    u.resize(16 * n_in * n_out, 0.0);
    for o in 0..cout {
        for c in 0..cin {
            let wk = &w[(o * cin + c) * 9..][..9];
            let g = |ky: usize, kx: usize| -> f64 {
                let k = ky * 3 + kx;
                (if flip { wk[8 - k] } else { wk[k] }) as f64
            };
            // G g: (4, 3)
            let mut gg = [[0f64; 3]; 4];
            for kx in 0..3 {
                let (g0, g1, g2) = (g(0, kx), g(1, kx), g(2, kx));
                gg[0][kx] = g0;
                gg[1][kx] = (g0 + g1 + g2) * 0.5;
                gg[2][kx] = (g0 - g1 + g2) * 0.5;
                gg[3][kx] = g2;
            }
            // (G g) G^T: (4, 4)
            let (i, oo) = if flip { (o, c) } else { (c, o) };
            for (r, row) in gg.iter().enumerate() {
                let t = [
                    row[0],
                    (row[0] + row[1] + row[2]) * 0.5,
                    (row[0] - row[1] + row[2]) * 0.5,
                    row[2],
                ];
                for (s, &v) in t.iter().enumerate() {
                    u[((r * 4 + s) * n_in + i) * n_out + oo] = v as f32;
                }
            }
        }
    }
}

/// Floats between the entries `xi` of `V` (16, n_in, 16 nv): one 64-byte
/// line more than `n_in` rows, so that the 16 entries of a tile do not
/// fall on the same L1 sets (`n_in 16 nv` floats is a multiple of 4 KiB
/// for 64 channels, or 32 with 2 vectors: measured 1.3-1.5x slower).
fn xs(n_in: usize, nv: usize) -> usize {
    n_in * 16 * nv + 16
}

/// One chunk's buffer: `V` (16, n_in, 32, each entry `xi` a line apart
/// more) of 2 vectors of tiles, with 16 floats of slack for alignment.
#[derive(Default)]
pub(super) struct Scratch {
    v: Vec<f32>,
}

/// One image's input planes as [`conv_image`] reads them: `n_in` planes
/// of `h*w`, plane `i` at `planes[i * stride + first..]` (a stored tensor:
/// `stride = hw, first = 0`; the direct path's padded planes: `stride =
/// ps, first = first()`), and for a BN-ReLU input its `[mean, k, beta]`
/// (per plane), applied as the planes are read.
pub(super) type Source<'a> = (&'a [f32], (usize, usize), Option<[&'a [f32]; 3]>);

/// `dst[o, j] = (r[o, j] +) sum_{i, ky, kx} g_{o,i}[ky][kx] * src_i[y+ky-1,
/// x+kx-1]` for one image, by the identity above: `src` the input planes
/// ([`Source`]), `u` the transformed weights ([`transform_weights`]),
/// `dst` `n_out` planes; `store` and `stats` as for `conv_planes`.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_image(
    dst: &mut [f32],
    (src, (stride, first), bn): Source,
    u: &[f32],
    n_in: usize,
    n_out: usize,
    tl: &Tiles,
    store: Store,
    stats: Option<&mut Stats>,
    sc: &mut Scratch,
) {
    let hw = tl.h * tl.w;
    assert!(fits(tl.h, tl.w) && tl.masks.len() == tl.t / 16);
    assert!(n_out.is_multiple_of(TILE_O), "winograd: n_out % 8 != 0");
    assert!(n_in > 0 && stride >= hw && first + hw <= stride);
    assert!(
        src.len() >= (n_in - 1) * stride + first + hw,
        "winograd: src too short"
    );
    assert!(u.len() >= 16 * n_in * n_out, "winograd: weights too short");
    if let Some(bn) = bn {
        assert!(
            bn.iter().all(|p| p.len() == n_in),
            "winograd: BN of the wrong size"
        );
    }
    assert!(dst.len() >= n_out * hw, "winograd: dst too short");
    if let Store::Plus(r) = store {
        assert!(r.len() >= n_out * hw, "winograd: residual too short");
    }
    // (the stats' sizes: checked by direct::stats_of)
    assert!(
        stats.is_none() || matches!(store, Store::Set),
        "winograd: stats of a plain store only"
    );
    grow(&mut sc.v, 16 * xs(n_in, 2) + 16);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::arch::is_x86_feature_detected!("avx512f"));
        let vo = aligned_from(&sc.v);
        // SAFETY: AVX-512F is available (checked above); the asserts above
        // and the buffer sizes bound every load and store (see the kernels).
        unsafe {
            avx512::conv_image(
                dst,
                (src, (stride, first), bn),
                u,
                n_in,
                n_out,
                tl,
                store,
                &mut sc.v[vo..],
            )
        }
        if let Some(st) = stats {
            super::direct::stats_of(dst, st, n_out, hw);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the Winograd kernels are only used on x86_64")
}

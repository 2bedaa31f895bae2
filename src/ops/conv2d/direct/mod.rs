//! Direct 3x3 / stride 1 / pad 1 convolution for f32 on AVX-512: the same
//! three sums as [`super`], computed without im2col. It is the fast path of
//! the convolutions that make up almost all of a CIFAR ResNet's FLOPs; every
//! other shape (and f64, and CPUs without AVX-512) takes the im2col path in
//! `cpu.rs`, which is also the reference these kernels are tested against.
//! In f32 on the CIFAR planes (32, 16 and 8 wide) the forward and the
//! input gradient are computed by Winograd F(2x2, 3x3) instead
//! ([`super::winograd`], called from [`forward`] and [`backward`] below,
//! with these kernels' stores and BN-ReLU reduction); the weight gradient
//! and bf16 stay here.
//!
//! ## The trick: the image read at shifted offsets, its edges masked
//!
//! Number the output positions of a plane row-major, `j = y*w + x`, exactly
//! as NCHW stores them. Copy each input plane into a plane `P` with one zero
//! row above and one below (and zeros before and after):
//! `P[c, lead + (y+1)*w + x] = inp[c, y, x]`. A tap `(ky, kx)` of the kernel
//! then reads `P` at a constant offset from `j`:
//!
//! ```text
//! out[o, y, x] = sum_{c, ky, kx} w[o, c, ky, kx] * inp[c, y+ky-1, x+kx-1]
//!              = sum_{c, k} w[o, c, k] * P[c, lead - 1 + j + off(k)] * e_kx(x)    off(k) = ky*w + kx
//! ```
//!
//! where `e_kx(x)` is 0 when `x + kx - 1` falls outside the row (`x = 0` for
//! `kx = 0`, `x = w - 1` for `kx = 2`) and 1 otherwise: those reads land on
//! the neighbouring row's last or first pixel, so they are masked out: the
//! load is a whole, in-bounds 16-lane load and the mask sits on the FMA
//! (`_mm512_mask3_fmadd_ps`: a masked lane adds nothing, so a value beside
//! the edge, an inf say, never enters a sum). Rows above and below the
//! image read `P`'s zero rows. So for a fixed `(c, k)` the inputs of 16
//! consecutive `j` are one 16-lane vector load:
//! no gather, no im2col, no padded columns to compute and throw away, and
//! the result lands at its NCHW place. The kernel keeps an 8-channel x
//! 48-position tile of outputs in 24 registers and adds one broadcast weight
//! times one loaded vector per FMA.
//!
//! **Input gradient.** From the forward sum, `d out[o,y,x] / d inp[c,a,b] =
//! w[o, c, a-y+1, b-x+1]`, so with `dout` padded the same way (`D[o, lead +
//! (y+1)*w + x] = dout[o, y, x]`):
//!
//! ```text
//! dinp[c, a, b] += sum_{o, ky, kx} w[o, c, ky, kx] * dout[o, a+1-ky, b+1-kx]
//!                = sum_{o, k} w[o, c, 8-k] * D[o, lead - 1 + j + off(k)] * e_kx(b)   (j = a*w + b)
//! ```
//!
//! (tap `k = (ky, kx)` of the flipped kernel reads `dout[o, a+ky-1, b+kx-1]`,
//! so the edge masks are the forward's): the forward kernel again, with `D`
//! as input and the weight transposed to `(o -> c)` and flipped.
//!
//! **Weight gradient.** `d out[o,y,x] / d w[o,c,ky,kx] = inp[c, y+ky-1, x+kx-1]`:
//!
//! ```text
//! dw[o, c, k] += sum_{y, x} dout[o, y, x] * inp[c, y+ky-1, x+kx-1]
//!              = sum_j D[o, lead + w + j] * P[c, lead - 1 + j + off(k)] * e_kx(x)
//! ```
//!
//! one dot product per `(o, c, k)`, 24 of them in registers at a time (8
//! output channels x the 3 taps of one kernel row). The sum may run over
//! whole vectors past the last position `h*w - 1`, because `D` is zero there.
//!
//! Buffers: each padded plane has `ps` entries (a multiple of 16), enough for
//! every vector load of the last vector of the plane (`lead - 1 + 16 nv - 1
//! + off(8) + 1 <= ps`, with `nv = ceil(h*w / 16)`); `lead >= 1` is chosen
//! so that the image rows start at `lead + w`, a multiple of 16, and the
//! weight gradient's `D` loads are aligned to 64-byte lines.
//!
//! ## Register tiles, and what bounds them (stop 17)
//!
//! Forward and input gradient ([`conv_planes`], [`conv_planes_bf16`]): a
//! tile is `TILE_O = 8` output channels x `V <= TILE_V = 3` vectors of 16
//! positions, `8 V` accumulators (24), kept over the whole reduction (every
//! input channel or pair, every tap) and stored once. Per (input channel or
//! pair, tap) it loads `V` vectors and broadcasts 8 weights (32-bit
//! `vbroadcastss` loads) for `8 V` FMAs / `vdpbf16ps`: 11 loads per 24 FMAs,
//! below the load ports' rate, so the tile is bound by the FMA port alone.
//! A plane's vectors are tiled 3, 3, ..., with a last 4 split 2 + 2 (16
//! accumulators, still more independent sums than the FMA and `vdpbf16ps`
//! latencies need at one per cycle): a 16x16 plane is 3,3,3,3,2,2 and an
//! 8x8 plane 2,2.
//!
//! Measured (`kernel_rates` in `tests.rs`: the kernel alone, one thread, on
//! the project's current VM, an AMD EPYC of family 25 model 17 — Zen 4, one
//! 512-bit FMA or `vdpbf16ps` per cycle, 32 KiB L1d): this tile runs at
//! 93-99% of the one-thread f32 FMA peak and 94-105% of the `vdpbf16ps`
//! peak (`resgrad peak`; above 100%: the peak loop is itself a little
//! short of the port's rate) on the 32x32, 16x16 and 8x8 CIFAR planes. So
//! the other tile shapes one would try (6 channels x 4 vectors, fewer
//! broadcasts per FMA; 4 vectors for the 4-vector 8x8 plane) have nothing
//! left to win on this CPU, and were not pursued; a software prefetch of
//! the tile's output lines (a pass writes a new image's output each call)
//! was tried and dropped (within the noise). What the passes lose against
//! the kernel is around it: the padding and pairing passes (in bf16 at
//! 32x32 a third of the pass), and on a shared 2-core VM the other core.
//!
//! Weight gradient ([`weight_grad_planes`], [`weight_grad_planes_bf16`]):
//! 8 output channels x the 3 taps of one kernel row (24 accumulators),
//! reduced over a group of images' positions, then added to 16 lanes per
//! entry. Per vector of positions: 3 input-tap loads and 8 dout loads for 24
//! FMAs / `vdpbf16ps`. f32: 84-94% of peak in `kernel_rates`; bf16 73-92%,
//! after stop 17 moved its edge masks from each channel's dout pairs (16
//! `vmovdqu16` per 24 `vdpbf16ps`) to the two masked input taps (2 per 24;
//! +11-13% on the kernel, see the bf16 section). The 8x8 plane is the
//! slowest (a group of 12 images, 2 vectors each: short inner loops and
//! each image's input runs new to L1); groups of 4, 8 and 16 images were no
//! better than 12 on this CPU, and a software prefetch of the next image's
//! input runs was within the noise. (Stop 22 found why in bf16: the dout
//! pairs of consecutive images lay a multiple of 4 KiB apart, all in the
//! same L1 sets; with [`DQ_PAD`] between images the bf16 groups take
//! twice the positions, 1.06-1.13x on 16x16 and 8x8. What the kernel
//! still loses is the flush of its 24 sums into the lanes: with the flush
//! replaced by register adds, a bound, it runs at ~90% of a core's peak.)
//!
//! ## bf16 ([`Precision::Bf16`]): the same sums over channel pairs
//!
//! With AVX512-BF16, the forward and the input gradient have bf16 kernels
//! (used when the workspace's precision is bf16), and so does the weight
//! gradient (pairs along positions, below). `vdpbf16ps` multiplies
//! 16 lanes of *pairs* of bf16 values and adds both products to 16 f32
//! lanes: `acc[l] += a[l].lo * b[l].lo + a[l].hi * b[l].hi`. The forward
//! sum regrouped by input-channel pairs `(2q, 2q + 1)` is
//!
//! ```text
//! out[o, j] = sum_{q, k} ( w[o, 2q, k] * P[2q, s] + w[o, 2q+1, k] * P[2q+1, s] ) * e_kx(j)
//!             s = lead - 1 + j + off(k)
//! ```
//!
//! so the padded input is written as *paired planes* ([`pad_pair_planes`]): one
//! `u32` per position, `PP[q, s] = (bf16(P[2q, s]), bf16(P[2q+1, s]))`
//! (low, high half), the same [`Grid`] (`ps` entries per pair plane), zeros
//! around the image, and an odd `cin` padded with a zero channel (whose
//! weights are zero too). The weights are packed once per call as pairs
//! `WP[q, k, o] = (bf16(w[o, 2q, k]), bf16(w[o, 2q+1, k]))`
//! ([`pack_forward_bf16`]). Per pair `q` and tap `k` the kernel loads 16
//! positions' pairs at the tap's shifted offset (one 64-byte load, as the
//! f32 kernel loads 16 floats) and, per output channel of its 8 x 48 tile,
//! issues one `vdpbf16ps` with the broadcast `WP[q, k, o]`, under the same
//! kx edge mask (a masked lane keeps its sum; both channels of a pair sit
//! at the same position, so the mask is the f32 one): 2x the multiply-adds
//! per instruction and half the loads. The sums are f32 and go through the
//! f32 kernel's store code (`Store::{Set, Add, Plus}` and the BN-ReLU
//! reduction lanes), and the forward's output plane sums are taken as in
//! f32. The rounding (round to nearest even, denormals to zero, as
//! [`crate::gemm_bf16::to_bf16`] and `vcvtne2ps2bf16`) happens while
//! padding: two f32 planes are rounded and interleaved into one paired
//! plane (`vcvtne2ps2bf16` + `vpermw`), the same f32 values the f32 path
//! reads ([`pad_pairs`]). Every bf16 site takes its f32 planes from
//! [`planes_of`]: a stored input (or output gradient) is paired straight
//! from its planes where it lies; a computed one is first made as f32
//! planes exactly as the f32 path makes them (BN-ReLU normalised, or the
//! BN's input gradient: [`fill_input`], [`fill_grad`]), two planes at a
//! time, or, for the BN's input gradient that both backward layouts read,
//! one image at a time. No bf16 copy outlives the call; activations stay
//! f32 everywhere else.
//!
//! **Input gradient:** the f32 derivation above with `D` paired along the
//! *output* channels, `DP[p, s] = (bf16(D[2p, s]), bf16(D[2p+1, s]))`, and
//! the flipped, transposed weights paired the same way, `WPB[p, k, c] =
//! (bf16(w[2p, c, 8-k]), bf16(w[2p+1, c, 8-k]))` ([`pack_backward_bf16`]):
//! the same kernel ([`conv_planes_bf16`]).
//!
//! **Weight gradient:** its sum runs over positions, so the pairs are two
//! *adjacent positions* `j = 2m, 2m + 1` (dout and the shifted input rows
//! are both contiguous runs):
//!
//! ```text
//! dw[o, c, k] += sum_m DQ[o, m] . PQ_k[c, m]
//! DQ[o, m]   = (bf16(D[o, first + 2m]), bf16(D[o, first + 2m + 1]))
//! PQ_k[c, m] = (bf16(P[c, b + 2m]) e_kx(2m), bf16(P[c, b + 2m + 1]) e_kx(2m + 1)),   b = lead - 1 + off(k)
//! ```
//!
//! The two positions of a pair may lie on different rows, so the kx edge
//! mask is now per position, i.e. per bf16 *half* of a pair: dout and the
//! input are stored once as pairs (zero past `hw`) and the kernel zeroes
//! the masked halves of the input taps `kx = 0, 2` with a 32-bit mask over
//! 16-bit lanes (`vmovdqu16` zero-masking, [`pair_masks`]) before the
//! `vdpbf16ps`: once per tap and 32 positions, shared by the tile's 8
//! output channels (stop 17; masking the dout pairs instead took two
//! `vmovdqu16` per channel, 16 per 24 `vdpbf16ps`, and ran 10-20% slower).
//! A masked half is an exact zero factor, as the im2col path's padding
//! zero is, so the sums of finite values are the same bits either way. The
//! tap's start `b` is even or odd with `kx`; the pairs `(P[2t], P[2t+1])`
//! (`pe`) are the plane's bf16 values in order, so the pairs from an odd
//! start, `(P[b + 2m], P[b + 2m + 1])`, are the same 16-bit values read one
//! half later: tap `k` loads its pairs from 16-bit entry `b` of `pe`,
//! aligned or not (stop 19; a second copy paired from odd entries, `po`,
//! was made before). The register tile is the f32 one (8 output
//! channels x the 3 taps of a kernel row), each `vdpbf16ps` covering 32
//! positions, and the lanes are added up as in f32 ([`reduce_lanes`]). The
//! padded input `P` is never written: `pe` is paired straight
//! from each input plane as if it lay at `first()` in zeros
//! ([`run_pairs_at`]: masked loads, the zeros from the mask), a BN-ReLU
//! input plane computed first by the f32 code ([`fill_input`]); dout's
//! pairs come from its f32 planes (stored, or the BN's input gradient made
//! once per image, [`fill_grad`]) by [`run_pairs`]. So every input and
//! output-gradient kind fuses as in f32.
//! Every 3x3 / stride-1 / pad-1 pass therefore takes the same path in both
//! precisions (`use_for_*(s, F32) == use_for_*(s, Bf16)` where bf16 can
//! run), and the plan's fusion choices (`conv2d_fuses_*`) hold for both.
//!
//! **Error bound (tested).** A product of two bf16 values is exact in f32,
//! so on the same operands rounded to bf16 (`â`, `ŵ`) this kernel and the
//! f32 path sum the same `K` exact products (`K = 9 cin` forward, `9 cout`
//! input gradient; the zero channel adds exact zeros) in different orders:
//! per output, with `r` the added term (residual or `dinp` itself),
//!
//! ```text
//! |out_bf16 - out_f32(â, ŵ)| <= 2.01 (K + 1) 2^-24 (Σ|â||ŵ| + |r|) + K 2^-125
//! ```
//!
//! and for the weight gradient `K = N h w` (the positions of the batch),
//! the bound of [`crate::gemm_bf16`] (whose doc derives it; `vdpbf16ps`
//! flushes denormals, the `K 2^-125` term). Against f32 on the unrounded
//! values each product also carries the two roundings, `(2^-7 + 2^-16)
//! Σ|a||w|` more.

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;
#[cfg(test)]
pub(super) mod tests;

use std::any::TypeId;
use std::ops::Range;
use std::sync::OnceLock;

use super::ahead;
use super::winograd::{self, Tiles};
use super::{Conv2dShape, ConvGradOut, ConvInput};
use crate::gemm_bf16::to_bf16;
use crate::ops::batchnorm::bn_plane_sums;
use crate::ops::Accum;
use crate::precision::Precision;

/// Output channels per register tile.
const TILE_O: usize = 8;
/// 16-lane vectors of output positions per register tile (48 positions).
const TILE_V: usize = 3;

/// Which convolutions take the direct path, from `RESGRAD_CONV` (for A/B
/// measurements): `im2col` none, `direct` every applicable one, anything
/// else (or unset) the measured choice of [`use_for_forward`],
/// [`use_for_input_grad`] and [`use_for_weight`].
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

/// f32, 3x3, stride 1, pad 1, AVX-512F: the kernels' geometry.
fn geometry<T: 'static>(s: &Conv2dShape) -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>()
        && s.kh == 3
        && s.kw == 3
        && s.stride == 1
        && s.pad == 1
        && enabled()
}

/// True when the direct kernels can compute all three passes of `s` for
/// element type `T`: the geometry, and channels in multiples of 8 (a pass
/// tiles its output channels by 8: the forward and the weight gradient
/// `cout`, the input gradient `cin`).
#[cfg(test)]
pub(super) fn applies<T: 'static>(s: &Conv2dShape) -> bool {
    geometry::<T>(s) && s.cin.is_multiple_of(TILE_O) && s.cout.is_multiple_of(TILE_O)
}

/// Smallest plane (h*w) for which the direct forward and input gradient
/// are used: measured faster than im2col + GEMM at 32x32, 16x16 and 8x8
/// (BENCHMARKS.md has the numbers and the machine). Smaller planes (a 4x4
/// last stage of a 32x32 net's deeper variants) were not measured and
/// stay on im2col.
const MIN_PLANE_DATA: usize = 8 * 8;
/// Smallest plane for the direct weight gradient (measured from 8x8 on).
const MIN_PLANE_WEIGHT: usize = 8 * 8;

fn big_enough(s: &Conv2dShape, min: usize) -> bool {
    mode() == Mode::All || s.h * s.w >= min
}

/// Whether the bf16 kernels may run: the direct path enabled and the CPU
/// has AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`).
fn bf16_enabled() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    enabled() && *BF16.get_or_init(crate::gemm_bf16::supported)
}

/// The kernels' geometry in precision `p` (bf16 also needs AVX512-BF16).
fn geometry_in<T: 'static>(s: &Conv2dShape, p: Precision) -> bool {
    geometry::<T>(s) && (p == Precision::F32 || bf16_enabled())
}

/// Forward of `s` in precision `p` on the direct path? (Any `cin`: a CIFAR
/// stem's 3, in bf16 one channel pair with a zero channel.)
pub(super) fn use_for_forward<T: 'static>(s: &Conv2dShape, p: Precision) -> bool {
    geometry_in::<T>(s, p) && s.cout.is_multiple_of(TILE_O) && big_enough(s, MIN_PLANE_DATA)
}

/// Input gradient of `s` in precision `p` on the direct path? (Any
/// `cout`: in bf16 the output channels are paired, an odd one with zero.)
pub(super) fn use_for_input_grad<T: 'static>(s: &Conv2dShape, p: Precision) -> bool {
    geometry_in::<T>(s, p) && s.cin.is_multiple_of(TILE_O) && big_enough(s, MIN_PLANE_DATA)
}

/// Weight gradient of `s` in precision `p` on the direct path?
pub(super) fn use_for_weight<T: 'static>(s: &Conv2dShape, p: Precision) -> bool {
    geometry_in::<T>(s, p) && s.cout.is_multiple_of(TILE_O) && big_enough(s, MIN_PLANE_WEIGHT)
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

/// `x` as `&[(f32, f32, f32)]`; `None` unless `T` is `f32`.
pub(super) fn as_f32_tuples<T: 'static>(x: &[(T, T, T)]) -> Option<&[(f32, f32, f32)]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (same TypeId), so (T, T, T) is (f32, f32, f32).
        unsafe { std::slice::from_raw_parts(x.as_ptr() as *const (f32, f32, f32), x.len()) }
    })
}

/// The padded planes of one 3x3 / stride-1 / pad-1 convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    pub w: usize,
    /// positions per plane, h*w
    pub hw: usize,
    /// 16-lane vectors covering a plane's positions: ceil(hw / 16)
    pub nv: usize,
    /// zeros before the top padding row: >= 1, and `lead + w` (the first
    /// image entry) is a multiple of 16
    pub lead: usize,
    /// entries per padded plane: a multiple of 16, >= lead + 16 nv + 2w + 1
    pub ps: usize,
    /// tap offsets, read from `lead - 1 + j`: off[ky*3 + kx] = ky*w + kx
    pub off: [usize; 9],
}

impl Grid {
    pub fn of(s: &Conv2dShape) -> Self {
        let (w, hw) = (s.w, s.h * s.w);
        let nv = hw.div_ceil(16);
        let lead = (w + 1).next_multiple_of(16) - w;
        let mut off = [0; 9];
        for (k, o) in off.iter_mut().enumerate() {
            *o = (k / 3) * w + k % 3;
        }
        Grid {
            w,
            hw,
            nv,
            lead,
            ps: (lead + 16 * nv + 2 * w + 1).next_multiple_of(16),
            off,
        }
    }

    /// Index in a padded plane of image position 0.
    pub fn first(&self) -> usize {
        self.lead + self.w
    }
}

/// The edge masks of every vector of a plane: for vector `v`, bit `l` of
/// `.0` is clear when position `16v + l` is a row's first (`x = 0`: tap
/// `kx = 0` reads outside the row) and of `.1` when it is a row's last
/// (`x = w - 1`, tap `kx = 2`).
pub(super) fn edge_masks(edges: &mut Vec<(u16, u16)>, g: &Grid) {
    edges.clear();
    edges.extend((0..g.nv).map(|v| {
        let (mut left, mut right) = (u16::MAX, u16::MAX);
        for l in 0..16 {
            let x = (16 * v + l) % g.w;
            if x == 0 {
                left &= !(1 << l);
            }
            if x == g.w - 1 {
                right &= !(1 << l);
            }
        }
        (left, right)
    }));
}

/// The first `planes` padded planes of `dst` (planes, ps): zeros around
/// each image (written only when `zero`: see [`Zeroed`]), whose `hw`
/// entries `fill(c, image)` writes for plane `c`.
fn pad_planes(
    dst: &mut [f32],
    planes: usize,
    g: &Grid,
    zero: bool,
    mut fill: impl FnMut(usize, &mut [f32]),
) {
    assert!(dst.len() >= planes * g.ps);
    let (a, b) = (g.first(), g.first() + g.hw);
    for (c, d) in dst.chunks_exact_mut(g.ps).take(planes).enumerate() {
        if zero {
            d[..a].fill(0.0);
            d[b..].fill(0.0);
        }
        fill(c, &mut d[a..b]);
    }
}

/// Which planes of a scratch buffer of padded planes already hold their
/// zeros: planes `..planes` of the buffer starting at address `key.0`,
/// laid out with `(ps, first, hw) = key.1..`. Only [`pad_planes`] writes
/// these buffers, always the same zeros around an image, so a buffer
/// reused for the same layout (every image of a chunk, every conv of the
/// same plane size) needs them only once (measured: the zero fills were
/// ~2% of a training step, two short `memset`s per plane).
#[derive(Default)]
struct Zeroed {
    key: (usize, usize, usize, usize),
    planes: usize,
}

impl Zeroed {
    /// Whether planes `from .. from + n` of the buffer at `base` (layout
    /// `g`) need their zeros written; records that they will have them.
    fn need(&mut self, base: *const f32, g: &Grid, from: usize, n: usize) -> bool {
        let key = (base as usize, g.ps, g.first(), g.hw);
        if key == self.key && from + n <= self.planes {
            return false;
        }
        if key != self.key {
            (self.key, self.planes) = (key, 0);
        }
        if from <= self.planes {
            self.planes = self.planes.max(from + n);
        }
        true
    }
}

/// Plane `c` of image `i` of `inp` (cin planes of hw) into `d` (hw): a
/// copy, or for a [`ConvInput::BnRelu`] input `max(0, (x - mean[c]) *
/// k[c] + beta[c])` of `x`'s plane (the BN-ReLU output, as the
/// convolution reads it).
fn fill_input(d: &mut [f32], inp: &ConvInput<f32>, i: usize, cin: usize, g: &Grid, c: usize) {
    let at = (i * cin + c) * g.hw;
    match *inp {
        ConvInput::Plain(x) => d.copy_from_slice(&x[at..][..g.hw]),
        ConvInput::BnRelu { x, mean, k, beta } => {
            assert!(mean.len() == cin && k.len() == cin && beta.len() == cin);
            let s = &x[at..][..g.hw];
            assert!(d.len() == g.hw);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F available (the direct path is enabled);
            // the kernel touches only d and s, both hw long.
            unsafe {
                avx512::bn_relu(d, s, mean[c], k[c], beta[c])
            }
        }
    }
}

/// Plane `c` of image `i` of the output gradient `dout` (cout planes of
/// hw) into `d` (hw): a copy, or for a [`ConvGradOut::Bn`] gradient the
/// BN's input gradient `k * (dy' - a - (x - mean) * b)`, computed here from
/// `dy` and `x`.
fn fill_grad(d: &mut [f32], dout: &ConvGradOut<f32>, i: usize, cout: usize, g: &Grid, c: usize) {
    let at = (i * cout + c) * g.hw;
    match *dout {
        ConvGradOut::Plain(x) => d.copy_from_slice(&x[at..][..g.hw]),
        ConvGradOut::Bn {
            dy,
            x,
            mean,
            beta,
            coef,
        } => {
            assert!(mean.len() == cout && coef.len() == cout);
            assert!(beta.is_none_or(|b| b.len() == cout));
            let (gy, gx) = (&dy[at..][..g.hw], &x[at..][..g.hw]);
            assert!(d.len() == g.hw);
            let relu = beta.map(|b| b[c]);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F available (the direct path is enabled);
            // the kernel touches only d, gy and gx, hw long each.
            unsafe {
                avx512::bn_dx(d, gy, gx, mean[c], coef[c], relu)
            }
        }
    }
}

/// The padded planes of image `i` of `inp`: `dst` (cin, ps), [`fill_input`]'s
/// plane `c` at `first() + y*w + x` of plane `c`, zeros everywhere else.
fn pad_input(dst: &mut [f32], inp: &ConvInput<f32>, i: usize, cin: usize, g: &Grid, zero: bool) {
    pad_planes(dst, cin, g, zero, |c, d| fill_input(d, inp, i, cin, g, c));
}

/// The padded planes of image `i` of the output gradient `dout`: `dst`
/// (cout, ps), [`fill_grad`]'s planes, zeros around them.
fn pad_grad(dst: &mut [f32], dout: &ConvGradOut<f32>, i: usize, cout: usize, g: &Grid, zero: bool) {
    pad_planes(dst, cout, g, zero, |c, d| fill_grad(d, dout, i, cout, g, c));
}

/// Channel pairs of `planes` channels: `ceil(planes / 2)`.
fn pairs(planes: usize) -> usize {
    planes.div_ceil(2)
}

/// The bf16 kernels' padded planes: the first `pairs(planes)` paired planes
/// of `dst` (pairs, ps), entry `first() + j` of pair `q` holding channel
/// `2q` at position `j` rounded to bf16 in its low half and channel `2q + 1`
/// in its high half (0 past the last channel), zeros around each image
/// (written only when `zero`, see [`Zeroed`]). `pair(q, d)` writes pair
/// `q`'s `hw` image entries `d` ([`pad_pairs`]).
fn pad_pair_planes(
    dst: &mut [u32],
    planes: usize,
    g: &Grid,
    zero: bool,
    mut pair: impl FnMut(usize, &mut [u32]),
) {
    assert!(bf16_enabled(), "bf16 padding without AVX512-BF16");
    assert!(dst.len() >= pairs(planes) * g.ps);
    let (a, b) = (g.first(), g.first() + g.hw);
    for (q, d) in dst.chunks_exact_mut(g.ps).take(pairs(planes)).enumerate() {
        if zero {
            d[..a].fill(0);
            d[b..].fill(0);
        }
        pair(q, &mut d[a..b]);
    }
}

/// `d[j] = (bf16(lo[j]), bf16(hi[j]))` (low, high half), rounded to
/// nearest even as `vcvtne2ps2bf16` rounds ([`crate::gemm_bf16::to_bf16`]),
/// for `j < d.len()`; `lo`, `hi` at least as long. A half given with
/// `Some([mean, k, beta])` is a BN-ReLU input plane, paired as its output
/// `max(0, (x - mean) k + beta)` (the bits of [`fill_input`]'s).
fn pair_planes(d: &mut [u32], lo: Half, hi: Half) {
    assert!(lo.0.len() >= d.len() && hi.0.len() >= d.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F/BW and AVX512-BF16 available (the callers'
    // pad_pair_planes asserts bf16_enabled); the kernel reads lo and hi
    // below d.len() and writes only d.
    unsafe {
        avx512::pair_bf16(d, lo, hi)
    }
}

/// One half of a pair of planes: the plane, and the BN-ReLU to apply to it
/// as it is paired (`[mean, k, beta]`), if any.
type Half<'a> = (&'a [f32], Option<[f32; 3]>);

/// A convolution operand as the bf16 path reads it, `n` planes of hw per
/// image: the input ([`ConvInput`]) or the output gradient
/// ([`ConvGradOut`]), either stored or computed plane by plane.
trait Operand {
    /// The stored tensor (N, n, hw), or `None` for a computed operand.
    fn stored(&self) -> Option<&[f32]>;
    /// Plane `c` of image `i` into `d` (hw), as the f32 path makes it.
    fn fill(&self, d: &mut [f32], i: usize, n: usize, g: &Grid, c: usize);
    /// Plane `c` of image `i` as a stored plane and the BN-ReLU that makes
    /// it (`[mean, k, beta]`), for a pairing kernel that applies it as it
    /// reads ([`fill`](Operand::fill) made with the same bits); `None` where
    /// the operand is not a BN-ReLU input.
    fn bn_relu_plane(&self, _i: usize, _n: usize, _g: &Grid, _c: usize) -> Option<Half<'_>> {
        None
    }
}

impl Operand for ConvInput<'_, f32> {
    fn stored(&self) -> Option<&[f32]> {
        match *self {
            ConvInput::Plain(x) => Some(x),
            ConvInput::BnRelu { .. } => None,
        }
    }
    fn fill(&self, d: &mut [f32], i: usize, n: usize, g: &Grid, c: usize) {
        fill_input(d, self, i, n, g, c)
    }
    fn bn_relu_plane(&self, i: usize, n: usize, g: &Grid, c: usize) -> Option<Half<'_>> {
        match *self {
            ConvInput::Plain(_) => None,
            ConvInput::BnRelu { x, mean, k, beta } => {
                assert!(mean.len() == n && k.len() == n && beta.len() == n);
                let plane = &x[(i * n + c) * g.hw..][..g.hw];
                Some((plane, Some([mean[c], k[c], beta[c]])))
            }
        }
    }
}

impl Operand for ConvGradOut<'_, f32> {
    fn stored(&self) -> Option<&[f32]> {
        match *self {
            ConvGradOut::Plain(x) => Some(x),
            ConvGradOut::Bn { .. } => None,
        }
    }
    fn fill(&self, d: &mut [f32], i: usize, n: usize, g: &Grid, c: usize) {
        fill_grad(d, self, i, n, g, c)
    }
}

/// Planes `cs` of image `i` of `op` (`n` planes per image) as one slice
/// (cs.len(), hw): where they lie for a stored operand (no copy), else
/// each computed into `tmp` (at least cs.len() hw). The same f32 values
/// either way, so whatever reads them gives the same bits.
fn planes_of<'a>(
    op: &'a impl Operand,
    i: usize,
    n: usize,
    g: &Grid,
    cs: Range<usize>,
    tmp: &'a mut [f32],
) -> &'a [f32] {
    let hw = g.hw;
    match op.stored() {
        Some(x) => &x[(i * n + cs.start) * hw..][..cs.len() * hw],
        None => {
            let t = &mut tmp[..cs.len() * hw];
            for (c, d) in cs.zip(t.chunks_exact_mut(hw)) {
                op.fill(d, i, n, g, c);
            }
            t
        }
    }
}

/// Plane `c` of image `i` of `op` as a pairing kernel reads it: a
/// BN-ReLU input's stored plane and its BN-ReLU, else [`planes_of`] (a
/// stored plane where it lies, another computed one made in `tmp`).
fn half_of<'a>(
    op: &'a impl Operand,
    i: usize,
    n: usize,
    g: &Grid,
    c: usize,
    tmp: &'a mut [f32],
) -> Half<'a> {
    match op.bn_relu_plane(i, n, g, c) {
        Some(h) => h,
        None => (planes_of(op, i, n, g, c..c + 1, tmp), None),
    }
}

/// [`pad_pair_planes`] of the `n` planes of image `i` of `op`: channels
/// `2q` and `2q + 1` (a stored operand paired where it lies, a BN-ReLU
/// input made by the pairing kernel as it reads, another computed one made
/// in `tmp` first by [`planes_of`]), an odd last pair's zero channel in
/// `tmp` (at least 2 hw).
fn pad_pairs(
    dst: &mut [u32],
    op: &impl Operand,
    i: usize,
    n: usize,
    g: &Grid,
    zero: bool,
    tmp: &mut [f32],
) {
    assert!(tmp.len() >= 2 * g.hw);
    let (lo_tmp, hi_tmp) = tmp[..2 * g.hw].split_at_mut(g.hw);
    pad_pair_planes(dst, n, g, zero, |q, d| {
        let lo = half_of(op, i, n, g, 2 * q, lo_tmp);
        let hi = if 2 * q + 1 < n {
            half_of(op, i, n, g, 2 * q + 1, hi_tmp)
        } else {
            hi_tmp.fill(0.0);
            (&*hi_tmp, None)
        };
        pair_planes(d, lo, hi)
    });
}

/// Weights as bf16 pairs along one side: `wp[p, k, c]` (pairs(np), 9,
/// nc) holds `w[at(2p, c, k)]` (low half) and `w[at(2p + 1, c, k)]` (high
/// half, 0 past `np`), rounded to nearest even: one broadcast per channel
/// `c` of the other side, pair and tap. `at(paired, other, tap)` is the
/// index in `w` (cout, cin, 9).
fn pack_pairs_bf16(
    wp: &mut Vec<u32>,
    w: &[f32],
    np: usize,
    nc: usize,
    at: impl Fn(usize, usize, usize) -> usize,
) {
    wp.clear();
    wp.resize(pairs(np) * 9 * nc, 0);
    for p in 0..np {
        for c in 0..nc {
            for k in 0..9 {
                let b = to_bf16(w[at(p, c, k)]) as u32;
                wp[((p / 2) * 9 + k) * nc + c] |= b << (16 * (p % 2));
            }
        }
    }
}

/// Forward weights as bf16 pairs of input channels: `wp[q, k, o]` holds
/// `w[o, 2q, k]` (low half) and `w[o, 2q + 1, k]` (high half, 0 past
/// `cin`).
pub(super) fn pack_forward_bf16(wp: &mut Vec<u32>, w: &[f32], cin: usize, cout: usize) {
    pack_pairs_bf16(wp, w, cin, cout, |c, o, k| (o * cin + c) * 9 + k);
}

/// Input-gradient weights as bf16 pairs of output channels, transposed and
/// flipped: `wp[p, k, c]` holds `w[2p, c, 8 - k]` (low half) and `w[2p + 1,
/// c, 8 - k]` (high half, 0 past `cout`).
pub(super) fn pack_backward_bf16(wp: &mut Vec<u32>, w: &[f32], cin: usize, cout: usize) {
    pack_pairs_bf16(wp, w, cout, cin, |o, c, k| (o * cin + c) * 9 + 8 - k);
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

/// What [`conv_planes`] adds its sums to.
#[derive(Clone, Copy, Debug)]
pub(super) enum Store<'a> {
    /// nothing: `dst = sums`
    Set,
    /// `dst` itself: `dst += sums`
    Add,
    /// a residual as long as `dst`: `dst = res + sums`
    Plus(&'a [f32]),
}

/// The BN-ReLU backward's reduction over the planes [`conv_planes`]
/// stores, when its `dst` is the gradient of a BN-ReLU's output: `x` the
/// BN's input (the same planes as `dst`), `mean`, `k`, `beta` per plane.
/// `lanes` (n_out x 64) receives, per plane, the 32 f32 lanes of `sum dy`
/// and then of `sum dy * (x - mean)` over the plane's whole 32-position
/// chunks, in the lane order of `batchnorm::plane_sums` (so the sums match
/// it bit for bit once [`finish_stats`] adds the rest); the caller zeroes
/// them per image.
pub(super) struct Stats<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub k: &'a [f32],
    pub beta: &'a [f32],
    pub lanes: &'a mut [f32],
}

impl Stats<'_> {
    #[cfg(target_arch = "x86_64")]
    fn ptrs(&self) -> avx512::StatPtrs {
        avx512::StatPtrs {
            x: self.x.as_ptr(),
            mean: self.mean.as_ptr(),
            k: self.k.as_ptr(),
            beta: self.beta.as_ptr(),
            lanes: self.lanes.as_ptr() as *mut f32,
            lane_vecs: 2 * (self.x.len() / self.mean.len() / 32),
        }
    }
}

/// [`Stats`]'s lanes of the `n_out` planes of `hw` already stored in
/// `dst`, as [`conv_planes`] adds them while it stores (the same bits):
/// for a kernel that stores whole images first (the Winograd path).
pub(super) fn stats_of(dst: &[f32], st: &mut Stats, n_out: usize, hw: usize) {
    assert!(dst.len() >= n_out * hw, "stats_of: dst too short");
    assert!(st.x.len() == n_out * hw && st.lanes.len() >= n_out * 64);
    assert!(st.mean.len() == n_out && st.k.len() == n_out && st.beta.len() == n_out);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "stats_of without AVX-512");
        // SAFETY: AVX-512F available (enabled() checked it); the asserts
        // bound every plane and lane read and written.
        unsafe { avx512::stats_of(dst, &st.ptrs(), n_out, hw) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// `(sum dy, sum dy * (x - mean))` of plane `c` as `batchnorm::plane_sums`
/// computes it: the positions past the whole 32-position chunks in f64, in
/// order, then the 32 lanes that [`conv_planes`] filled.
fn finish_stats(st: &Stats, dst: &[f32], c: usize, hw: usize) -> (f64, f64) {
    let (mu, k, b) = (st.mean[c], st.k[c], st.beta[c]);
    let (mut t0, mut t1) = (0f64, 0f64);
    for p in 32 * (hw / 32)..hw {
        let (g, x) = (dst[c * hw + p], st.x[c * hw + p]);
        let g = if (x - mu) * k + b <= 0.0 { 0.0 } else { g };
        t0 += g as f64;
        t1 += (g * (x - mu)) as f64;
    }
    let lanes = &st.lanes[c * 64..][..64];
    for l in 0..32 {
        t0 += lanes[l] as f64;
        t1 += lanes[32 + l] as f64;
    }
    (t0, t1)
}

/// `dst[o, j] = (r[o, j] +) sum_{i, k} wk[i, k, o] * src[i, lead - 1 + j +
/// off(k)] * e_kx(j)` for every `o < n_out` and `j < hw`: the forward pass
/// (src = P) and the input gradient (src = D, wk = the flipped weights)
/// alike. `src` holds `n_in` padded planes, `dst` `n_out` planes of `hw`
/// entries (one image in NCHW); `store` says what `r` is.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_planes(
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
    check_planes(
        "conv_planes",
        (dst.len(), src.len(), wk.len()),
        (n_in, n_out),
        g,
        edges,
        &store,
        stats.as_deref(),
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "conv_planes without AVX-512");
        // SAFETY: AVX-512F is available (enabled() checked it), and the
        // asserts above bound every load and store (see the kernel).
        unsafe { avx512::conv_planes(dst, src, wk, n_in, n_out, g, edges, store, stats) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// The bounds [`conv_planes`] and [`conv_planes_bf16`] rely on: `lens` =
/// (dst, src, weights) lengths, `planes` = (input planes or plane pairs,
/// output planes); a violation panics naming `what`.
fn check_planes(
    what: &str,
    lens: (usize, usize, usize),
    planes: (usize, usize),
    g: &Grid,
    edges: &[(u16, u16)],
    store: &Store,
    stats: Option<&Stats>,
) {
    let ((dst, src, wk), (n_in, n_out)) = (lens, planes);
    assert!(n_out.is_multiple_of(TILE_O));
    if let Some(st) = stats {
        assert!(
            matches!(store, Store::Set),
            "{what}: stats of a plain store only"
        );
        assert!(st.x.len() == n_out * g.hw && st.lanes.len() >= n_out * 64);
        assert!(st.mean.len() == n_out && st.k.len() == n_out && st.beta.len() == n_out);
    }
    assert!(dst >= n_out * g.hw, "{what}: dst too short");
    if let Store::Plus(r) = store {
        assert!(r.len() >= n_out * g.hw, "{what}: residual too short");
    }
    assert!(wk >= n_in * 9 * n_out, "{what}: weights too short");
    assert!(src >= n_in * g.ps, "{what}: src too short");
    assert!(g.lead >= 1 && g.lead - 1 + 16 * g.nv + g.off[8] <= g.ps);
    assert!(edges.len() == g.nv && g.nv * 16 >= g.hw);
}

/// [`conv_planes`] in bf16: `src` holds `n_pairs` paired planes (see
/// [`pad_pairs`]), `wk` the weight pairs `(n_pairs, 9, n_out)`
/// ([`pack_forward_bf16`] / [`pack_backward_bf16`]), and each `vdpbf16ps`
/// adds the two products of a pair to the f32 sum; the stores are
/// [`conv_planes`]'s.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_planes_bf16(
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
    check_planes(
        "conv_planes_bf16",
        (dst.len(), src.len(), wk.len()),
        (n_pairs, n_out),
        g,
        edges,
        &store,
        stats.as_deref(),
    );
    #[cfg(target_arch = "x86_64")]
    {
        assert!(bf16_enabled(), "conv_planes_bf16 without AVX512-BF16");
        // SAFETY: AVX-512F and AVX512-BF16 are available (bf16_enabled
        // checked them), and the asserts above bound every load and store.
        unsafe { avx512::conv_planes_bf16(dst, src, wk, n_pairs, n_out, g, edges, store, stats) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// `dwv[o, i, k, l] (+)= sum_{n < imgs} sum_{j < hw, j = l mod 16} d[n, o,
/// first + j] * p[n, i, lead - 1 + j + off(k)] * e_kx(j)`: the weight
/// gradient of a group of `imgs` images in 16 lanes per entry (the sum over
/// a lane's positions; `=` for a chunk's first group, `+=` after), `d` =
/// their padded `dout` planes (imgs, n_out, ps), `p` = their padded input
/// planes (imgs, n_in, ps), `dwv` (n_out, n_in, 9, 16). The lanes are added
/// up once per chunk ([`reduce_lanes`]), not once per group: a vector add
/// per entry and group instead of a horizontal reduction.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad_planes(
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
    assert!(n_out.is_multiple_of(TILE_O));
    assert!(
        dwv.len() >= n_out * n_in * 9 * 16,
        "weight_grad_planes: dwv too short"
    );
    assert!(
        d.len() >= imgs * n_out * g.ps,
        "weight_grad_planes: d too short"
    );
    assert!(
        p.len() >= imgs * n_in * g.ps,
        "weight_grad_planes: p too short"
    );
    assert!(g.lead >= 1 && g.lead - 1 + 16 * g.nv + g.off[8] <= g.ps);
    assert!(edges.len() == g.nv);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "weight_grad_planes without AVX-512");
        // SAFETY: as in conv_planes.
        unsafe { avx512::weight_grad_planes(dwv, first, d, p, n_in, n_out, imgs, g, edges) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// `dw[e] = sum_l dwv[e, l]` for every entry `e` of `dw` (the lanes of
/// [`weight_grad_planes`], in `_mm512_reduce_add_ps`'s order).
fn reduce_lanes(dw: &mut [f32], dwv: &[f32]) {
    assert!(dwv.len() >= dw.len() * 16);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(enabled(), "reduce_lanes without AVX-512");
        // SAFETY: AVX-512F available; dwv holds 16 floats per dw entry.
        unsafe { avx512::reduce_lanes(dw, dwv) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// [`edge_masks`] per 32 positions (one vector of 16 position pairs):
/// `.0` / `.1` of vectors `2v` (low 16 bits) and `2v + 1` (high 16 bits),
/// one bit per position, i.e. per bf16 half of a pair (past the plane's
/// last vector: all set; dout is zero there).
pub(super) fn pair_masks(pm: &mut Vec<(u32, u32)>, edges: &[(u16, u16)]) {
    pm.clear();
    pm.extend(edges.chunks(2).map(|e| {
        let hi = e.get(1).copied().unwrap_or((u16::MAX, u16::MAX));
        (
            e[0].0 as u32 | (hi.0 as u32) << 16,
            e[0].1 as u32 | (hi.1 as u32) << 16,
        )
    }));
}

/// `dst[t] = (bf16(src[2t]), bf16(src[2t + 1]))`, `src[i]` = 0 for `i >= n`,
/// every `t < dst.len()` (a multiple of 16).
fn run_pairs(dst: &mut [u32], src: &[f32], n: usize) {
    assert!(bf16_enabled(), "bf16 pairs without AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F/BW and AVX512-BF16 available; the kernel asserts
    // n <= src.len() and reads only below n, writes only dst.
    unsafe {
        avx512::run_pairs_bf16(dst, src, n)
    }
}

/// `dst[t] = (bf16(S[2t - shift]), bf16(S[2t + 1 - shift]))`, `S[i] =
/// src[i]` for `0 <= i < n` and 0 elsewhere, every `t < dst.len()` (a
/// multiple of 16): [`run_pairs`] of a padded plane `S` (`src` at index
/// `shift`, zeros around it) without making that plane. With a BN-ReLU
/// (`Some([mean, k, beta])`), `S[i] = max(0, (src[i] - mean) k + beta)`
/// inside (the bits of [`fill_input`]'s plane), 0 still outside.
fn run_pairs_at(dst: &mut [u32], (src, bn): Half, n: usize, shift: usize) {
    assert!(bf16_enabled(), "bf16 pairs without AVX512-BF16");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F/BW and AVX512-BF16 available; the kernel asserts
    // n <= src.len(), reads only src[..n] (masked loads), writes only dst.
    unsafe {
        avx512::run_pairs_at_bf16(dst, src, n, shift, bn)
    }
}

/// The weight gradient's lanes in bf16 (see [`weight_grad_planes`], which
/// this is over pairs of adjacent positions, `j = 2m, 2m + 1`):
///
/// ```text
/// dwv[o, i, k, l] (+)= sum_{n, m = l mod 16} DQ[n, o, m] . PQ_k[n, i, m]
/// DQ[o, m]   = (bf16(D[o, first + 2m]), bf16(D[o, first + 2m + 1]))
/// PQ_k[i, m] = (bf16(P[i, b + 2m]) e_kx(2m), bf16(P[i, b + 2m + 1]) e_kx(2m + 1)),   b = lead - 1 + off(k)
/// ```
///
/// `d` holds the dout pairs `DQ` (imgs, n_out, dl = 16 nv2), image `n` at
/// `n * dq_stride(n_out, dl)` ([`DQ_PAD`] entries after each image); `pe` holds
/// the input pairs without masks, and the kernel zeroes the positions the
/// masks `pmasks` (nv2 = ceil(hw / 32) entries) clear, per bf16 half, in
/// the taps `kx = 0, 2` it loads; `pe` (imgs, n_in, ph) holds the padded
/// input's pairs from even entries (`pe[t] = (P[2t], P[2t + 1])`), i.e.
/// the bf16 values of `P` in order, so `PQ_k` is read from 16-bit entry
/// `b` of each plane of `pe`, for an odd `b` too.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grad_planes_bf16(
    dwv: &mut [f32],
    first: bool,
    d: &[u32],
    pe: &[u32],
    n_in: usize,
    n_out: usize,
    imgs: usize,
    g: &Grid,
    ph: usize,
    pmasks: &[(u32, u32)],
) {
    let dl = 16 * pmasks.len();
    assert!(n_out.is_multiple_of(TILE_O));
    assert!(pmasks.len() == g.hw.div_ceil(32));
    assert!(
        dwv.len() >= n_out * n_in * 9 * 16,
        "weight_grad_planes_bf16: dwv too short"
    );
    assert!(
        imgs == 0 || d.len() >= (imgs - 1) * dq_stride(n_out, dl) + n_out * dl,
        "weight_grad_planes_bf16: d too short"
    );
    assert!(pe.len() >= imgs * n_in * ph);
    // the last tap's start (16-bit entry b = lead + 2w + 1), whole vectors
    // of dl pairs past it, inside its plane of 2 ph entries
    assert!(g.lead >= 1 && g.lead + 2 * g.w + 1 + 2 * dl <= 2 * ph);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(
            bf16_enabled(),
            "weight_grad_planes_bf16 without AVX512-BF16"
        );
        // SAFETY: AVX-512F/BW and AVX512-BF16 available; the asserts above
        // bound every load (see the kernel) and dwv's stores.
        unsafe {
            avx512::weight_grad_planes_bf16(dwv, first, d, pe, n_in, n_out, imgs, g, ph, pmasks)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the direct path is only enabled on x86_64")
}

/// Entries (`u32` pairs) between two images' dout pairs in the bf16
/// weight gradient's scratch (`Scratch.dq`): the image's `n_out * dl`, then
/// [`DQ_PAD`].
pub(super) fn dq_stride(n_out: usize, dl: usize) -> usize {
    n_out * dl + DQ_PAD
}

/// 1 KiB between two images' dout pairs. Without it an image's pairs
/// span a multiple of 4 KiB on 8x8 planes of 64 channels (64 x 32 pairs,
/// 8 KiB), so the 8 channels' rows the kernel reads lie in the same 16 of
/// L1's 64 sets for every image of a group: 12 images filled those sets'
/// 12 ways, and a group of 18 (the data the kernel reads per flush of its
/// sums grown by half) ran 25% slower instead of faster. With the pad
/// consecutive images' rows fall a quarter of the sets apart; groups of
/// twice the positions gain instead (`kernel_rates`, one thread: 8x8
/// 378-390 -> 414-425 GFLOP/s, 16x16 406-423 -> 436-438; BENCHMARKS.md,
/// stop 22).
const DQ_PAD: usize = 256;

/// Images per weight-gradient group on planes of `g`: enough positions
/// per flush of the kernel's accumulators into the lanes, 768 in f32 (one
/// image for 32x32 planes, 12 for 8x8; measured: larger groups, 1536 or
/// 3072 positions, ran 20-50% slower on 16x16 and 8x8 planes, their D
/// rows no longer staying in L1; with the lanes, 256 or 512 ran 3-14%
/// slower on 16x16 and 8x8, 1024 ran 11% slower on 8x8), twice that in
/// bf16, whose dout rows [`DQ_PAD`] keeps apart in L1's sets (1.06-1.13x
/// on 16x16 and 8x8 planes at 2 threads, stop 22).
fn weight_grad_group(bf16: bool, g: &Grid) -> usize {
    let (positions, most) = if bf16 { (1536, 32) } else { (768, 16) };
    (positions / (16 * g.nv)).clamp(1, most)
}

/// The tiles [`conv_planes`] and [`conv_planes_bf16`] compute over a
/// plane of `g` with `n_out` output channels (each steps the prefetch
/// queue, [`ahead`], once per input channel or pair).
fn conv_tiles(g: &Grid, n_out: usize) -> usize {
    g.nv.div_ceil(TILE_V) * n_out.div_ceil(TILE_O)
}

/// How often the kernel of one image's `n_in -> n_out` pass steps the
/// prefetch queue: [`conv_planes_bf16`]'s tiles per input pair in bf16,
/// [`winograd::steps`] where Winograd computes it, else [`conv_planes`]'s
/// tiles per input channel.
fn conv_steps(bf16: bool, wino: Option<&Tiles>, g: &Grid, n_in: usize, n_out: usize) -> usize {
    match wino {
        _ if bf16 => conv_tiles(g, n_out) * pairs(n_in),
        Some(tl) => winograd::steps(tl, n_out),
        None => conv_tiles(g, n_out) * n_in,
    }
}

/// One parallel chunk's buffers for the direct path, grown on demand.
#[derive(Default)]
pub(super) struct Scratch {
    /// f32: padded input planes P (group, cin, ps), 16 floats of slack for
    /// alignment (bf16 pairs its inputs without them)
    p: Vec<f32>,
    /// padded output-gradient planes D (group, cout, ps), same slack
    d: Vec<f32>,
    /// this chunk's partial weight gradient (cout, cin, 9), and its 16
    /// lanes per entry (cout, cin, 9, 16) before they are added up
    dw: Vec<f32>,
    dwv: Vec<f32>,
    /// BN-ReLU reduction lanes of one image (cin, 64), and the plane sums of
    /// this chunk's images (imgs, cin), its first image `first`
    lanes: Vec<f32>,
    sums: Vec<(f64, f64)>,
    first: usize,
    /// the forward's output plane sums of this chunk's images (imgs, cout)
    osums: Vec<f64>,
    /// which planes of `p` and `d` hold their zeros
    p_zeroed: Zeroed,
    d_zeroed: Zeroed,
    /// bf16: the paired planes of the input (forward) or of the output
    /// gradient (input gradient), (pairs, ps) with 16 entries of slack, and
    /// which pairs hold their zeros; `tmp` (2, hw): the two f32 planes a
    /// pair of BN-ReLU planes is computed into (a stored input is paired
    /// where it lies), the zero channel of an odd last pair, one BN-ReLU
    /// input plane of the weight gradient
    pp: Vec<u32>,
    tmp: Vec<f32>,
    pp_zeroed: Zeroed,
    /// bf16 backward: one image of a BN's input gradient as dout, in f32
    /// (cout, hw), computed once for both layouts (a stored dout is read
    /// where it lies); for the weight gradient the position pairs of a
    /// group's dout (group, cout, dl) and of its padded inputs from even
    /// entries (group, cin, ph), each with 16 entries of slack
    gimg: Vec<f32>,
    dq: Vec<u32>,
    pe: Vec<u32>,
    /// the Winograd path's transformed input tiles
    wg: winograd::Scratch,
}

/// The direct path's workspace: repacked weights, edge masks and per-chunk
/// scratch.
#[derive(Default)]
pub(super) struct Workspace {
    wf: Vec<f32>,
    wb: Vec<f32>,
    /// the bf16 weight pairs: forward (pairs(cin), 9, cout), input
    /// gradient (pairs(cout), 9, cin)
    wpf: Vec<u32>,
    wpb: Vec<u32>,
    /// the Winograd path's transformed weights: forward (16, cin, cout),
    /// input gradient (16, cout, cin)
    uf: Vec<f32>,
    ub: Vec<f32>,
    /// the edge masks per 32 positions, per position ([`pair_masks`])
    pmasks: Vec<(u32, u32)>,
    edges: Vec<(u16, u16)>,
    chunks: Vec<Scratch>,
}

/// The first index `i < 16` of `buf` that starts a 64-byte line (16
/// floats), for buffers with 16 floats of slack: planes whose stride is a
/// multiple of 16 then all start on a line.
pub(super) fn aligned_from<E>(buf: &[E]) -> usize {
    assert!(std::mem::size_of::<E>() == 4);
    let at = buf.as_ptr() as usize / 4;
    (16 - at % 16) % 16
}

pub(super) fn grow<E: Copy + Default>(v: &mut Vec<E>, len: usize) {
    if v.len() < len {
        v.resize(len, E::default());
    }
}

/// Forward of a batch: per image, pad, then [`conv_planes`] straight into
/// the output (`out = res + conv` with a residual `res`); with
/// `plane_sums` (N, cout), each image's output plane sums, taken while the
/// image is in cache. In [`Precision::Bf16`] the image is padded as bf16
/// channel pairs ([`pad_pairs`]: a stored input where it lies, a BN-ReLU
/// one computed) and [`conv_planes_bf16`] computes the sums, stored the
/// same way. Shapes as validated by `mod.rs`; `use_for_forward(s, p)` must
/// hold.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    out: &mut [f32],
    res: Option<&[f32]>,
    inp: ConvInput<f32>,
    w: &[f32],
    s: &Conv2dShape,
    p: Precision,
    ws: &mut Workspace,
    plane_sums: Option<&mut [f64]>,
) {
    let want_sums = plane_sums.is_some();
    let bf16 = p == Precision::Bf16;
    let g = Grid::of(s);
    let oimg = s.cout * g.hw;
    // f32 on the CIFAR planes: Winograd F(2x2, 3x3) (`super::winograd`)
    let wino = (!bf16 && winograd::applies(s)).then(|| Tiles::of(s.h, s.w));
    if bf16 {
        pack_forward_bf16(&mut ws.wpf, w, s.cin, s.cout);
    } else if wino.is_some() {
        winograd::transform_weights(&mut ws.uf, w, s.cin, s.cout, false);
    } else {
        pack_forward(&mut ws.wf, w, s.cin, s.cout);
    }
    edge_masks(&mut ws.edges, &g);
    let (wf, wpf, uf, edges) = (&ws.wf, &ws.wpf, &ws.uf, &ws.edges);
    let used = super::cpu::for_each_chunk(
        &mut ws.chunks,
        s.n,
        out,
        oimg,
        &|imgs, sc: &mut Scratch, out| {
            // (the Winograd kernel reads the input where it lies)
            if bf16 {
                grow(&mut sc.pp, pairs(s.cin) * g.ps + 16);
                grow(&mut sc.tmp, 2 * g.hw);
            } else if wino.is_none() {
                grow(&mut sc.p, s.cin * g.ps + 16);
            }
            if want_sums {
                sc.osums.clear();
                sc.osums.resize(imgs.len() * s.cout, 0.0);
                sc.first = imgs.start;
            }
            let end = imgs.end;
            for (t, (i, out_img)) in imgs.zip(out.chunks_exact_mut(oimg)).enumerate() {
                // the next image's input, into L2 while this one's kernel
                // computes
                if i + 1 < end {
                    let steps = conv_steps(bf16, wino.as_ref(), &g, s.cin, s.cout);
                    let x = inp.tensor();
                    ahead::set(&[&x[(i + 1) * s.cin * g.hw..][..s.cin * g.hw]], steps);
                }
                let store = match res {
                    Some(r) => Store::Plus(&r[i * oimg..][..oimg]),
                    None => Store::Set,
                };
                if bf16 {
                    let ofs = aligned_from(&sc.pp);
                    let pp = &mut sc.pp[ofs..];
                    let np = pairs(s.cin);
                    let zero = sc.pp_zeroed.need(pp.as_ptr() as *const f32, &g, 0, np);
                    pad_pairs(pp, &inp, i, s.cin, &g, zero, &mut sc.tmp);
                    conv_planes_bf16(out_img, pp, wpf, np, s.cout, &g, edges, store, None);
                } else if let Some(tl) = &wino {
                    // a BN-ReLU input made as the kernel reads it
                    let (x, bn) = match inp {
                        ConvInput::Plain(x) => (x, None),
                        ConvInput::BnRelu { x, mean, k, beta } => (x, Some([mean, k, beta])),
                    };
                    let src = (&x[i * s.cin * g.hw..][..s.cin * g.hw], (g.hw, 0), bn);
                    let (n_in, n_out, wg) = (s.cin, s.cout, &mut sc.wg);
                    winograd::conv_image(out_img, src, uf, n_in, n_out, tl, store, None, wg);
                } else {
                    let pofs = aligned_from(&sc.p);
                    let p = &mut sc.p[pofs..];
                    let zero = sc.p_zeroed.need(p.as_ptr(), &g, 0, s.cin);
                    pad_input(p, &inp, i, s.cin, &g, zero);
                    conv_planes(out_img, p, wf, s.cin, s.cout, &g, edges, store, None);
                }
                if want_sums {
                    bn_plane_sums(&mut sc.osums[t * s.cout..][..s.cout], out_img, g.hw);
                }
            }
            ahead::clear();
        },
    );
    if let Some(plane_sums) = plane_sums {
        for sc in used.iter() {
            plane_sums[sc.first * s.cout..][..sc.osums.len()].copy_from_slice(&sc.osums);
        }
    }
}

/// Backward of a batch, both gradients from one pass over the images (the
/// padded `dout` of an image is made once and read by both): `dinp +=`
/// (`=` with [`Accum::Set`], `= res +` with a residual `res`) when given,
/// `dweight +=` (when given; chunk partials reduced in chunk order, so a
/// fixed thread count gives bit-identical results). With `plane_sums` (N, cin;
/// `inp` a BN-ReLU input, `dinp` overwritten): the plane sums of that
/// BN-ReLU's backward reduction over `dinp`, computed as it is stored.
///
/// In [`Precision::Bf16`]: `dout` padded as bf16 pairs of output channels,
/// the flipped weights as pairs, [`conv_planes_bf16`]; the weight gradient
/// over position pairs, [`weight_grad_planes_bf16`].
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    accum: Accum,
    res: Option<&[f32]>,
    dinp: Option<&mut [f32]>,
    dweight: Option<&mut [f32]>,
    dout: ConvGradOut<f32>,
    inp: ConvInput<f32>,
    w: &[f32],
    s: &Conv2dShape,
    p: Precision,
    ws: &mut Workspace,
    plane_sums: Option<&mut [(f64, f64)]>,
) {
    let bf16 = p == Precision::Bf16;
    let g = Grid::of(s);
    // bf16 weight gradient: position pairs of dout (runs of dl pairs) and
    // of the padded input (runs of ph pairs, two parities)
    let (dl, ph) = (16 * g.hw.div_ceil(32), (g.ps / 2 + 16).next_multiple_of(16));
    let img = s.cin * g.hw;
    let want_dinp = dinp.is_some();
    let want_dw = dweight.is_some();
    if !want_dinp && !want_dw {
        return;
    }
    // f32 input gradient on the CIFAR planes: Winograd
    let wino = (want_dinp && !bf16 && winograd::applies(s)).then(|| Tiles::of(s.h, s.w));
    if want_dinp && bf16 {
        pack_backward_bf16(&mut ws.wpb, w, s.cin, s.cout);
    } else if wino.is_some() {
        winograd::transform_weights(&mut ws.ub, w, s.cin, s.cout, true);
    } else if want_dinp {
        pack_backward(&mut ws.wb, w, s.cin, s.cout);
    }
    edge_masks(&mut ws.edges, &g);
    pair_masks(&mut ws.pmasks, &ws.edges);
    let (wb, wpb, edges, pmasks) = (&ws.wb, &ws.wpb, &ws.edges, &ws.pmasks);
    let ub = &ws.ub;
    let nw = s.cout * s.cin * 9;
    let (dst, per_img): (&mut [f32], usize) = match dinp {
        Some(d) => (d, img),
        None => (&mut [], 0),
    };
    let group = weight_grad_group(bf16, &g);
    let (dimg_len, pimg_len) = (s.cout * g.ps, s.cin * g.ps);
    // the BN-ReLU whose output gradient dinp is, when its sums are wanted
    let bn = match (&plane_sums, inp) {
        (Some(p), ConvInput::BnRelu { x, mean, k, beta }) => {
            assert!(p.len() == s.n * s.cin && want_dinp && res.is_none() && accum == Accum::Set);
            Some((x, mean, k, beta))
        }
        (Some(_), ConvInput::Plain(_)) => panic!("plane sums need a BN-ReLU input"),
        (None, _) => None,
    };
    let used = super::cpu::for_each_chunk(
        &mut ws.chunks,
        s.n,
        dst,
        per_img,
        &|imgs, sc: &mut Scratch, dinp| {
            // D's image rows are read by the weight gradient (8 of its 11
            // loads per step): start them on a 64-byte line, so no load
            // splits across two lines
            if bf16 {
                grow(&mut sc.pp, pairs(s.cout) * g.ps + 16);
                grow(&mut sc.tmp, 2 * g.hw);
                if matches!(dout, ConvGradOut::Bn { .. }) {
                    grow(&mut sc.gimg, s.cout * g.hw);
                }
                if want_dw {
                    grow(&mut sc.dq, group * dq_stride(s.cout, dl) + 16);
                    grow(&mut sc.pe, group * s.cin * ph + 16);
                }
            } else {
                grow(&mut sc.d, group * dimg_len + 16);
            }
            // (bf16: D unused, maybe empty)
            let dofs = aligned_from(&sc.d).min(sc.d.len());
            let dbuf = &mut sc.d[dofs..];
            if want_dw {
                if !bf16 {
                    grow(&mut sc.p, group * pimg_len + 16);
                }
                grow(&mut sc.dw, nw);
                grow(&mut sc.dwv, nw * 16 + 16);
            }
            let vofs = aligned_from(&sc.dwv);
            let pofs = aligned_from(&sc.p);
            let first = imgs.start;
            if bn.is_some() {
                grow(&mut sc.lanes, s.cin * 64);
                sc.sums.clear();
                sc.sums.resize(imgs.len() * s.cin, (0.0, 0.0));
                sc.first = first;
            }
            for (t, i) in imgs.clone().enumerate() {
                // slot of this image in its group
                let slot = (i - first) % group;
                let ppofs = aligned_from(&sc.pp);
                let (dqofs, peofs) = (
                    aligned_from(&sc.dq).min(sc.dq.len()),
                    aligned_from(&sc.pe).min(sc.pe.len()),
                );
                // the next image's operands (dout, or a BN's dy and x; the
                // input the weight gradient reads), into L2 while this
                // one's kernels compute
                if i + 1 < imgs.end {
                    let steps = if want_dinp {
                        conv_steps(bf16, wino.as_ref(), &g, s.cout, s.cin)
                    } else {
                        s.cout.div_ceil(TILE_O) * s.cin * 3
                    };
                    let (at, len) = ((i + 1) * s.cout * g.hw, s.cout * g.hw);
                    let (a, b) = match dout {
                        ConvGradOut::Plain(d) => (&d[at..][..len], &[][..]),
                        ConvGradOut::Bn { dy, x, .. } => (&dy[at..][..len], &x[at..][..len]),
                    };
                    let x = inp.tensor();
                    let c = if want_dw {
                        &x[(i + 1) * img..][..img]
                    } else {
                        &[]
                    };
                    ahead::set(&[a, b, c], steps);
                }
                if bf16 {
                    // dout's image in f32 (cout, hw), read by both
                    // layouts: a stored dout where it lies, a BN's input
                    // gradient computed once into gimg
                    let gimg = planes_of(&dout, i, s.cout, &g, 0..s.cout, &mut sc.gimg);
                    if want_dinp {
                        // gimg as a stored gradient of one image
                        let (pp, np) = (&mut sc.pp[ppofs..], pairs(s.cout));
                        let zero = sc.pp_zeroed.need(pp.as_ptr() as *const f32, &g, 0, np);
                        let one = ConvGradOut::Plain(gimg);
                        pad_pairs(pp, &one, 0, s.cout, &g, zero, &mut sc.tmp);
                    }
                    if want_dw {
                        let dq = &mut sc.dq[dqofs + slot * dq_stride(s.cout, dl)..][..s.cout * dl];
                        for (d, src) in dq.chunks_exact_mut(dl).zip(gimg.chunks_exact(g.hw)) {
                            run_pairs(d, src, g.hw);
                        }
                    }
                } else {
                    let zero = sc.d_zeroed.need(dbuf.as_ptr(), &g, slot * s.cout, s.cout);
                    let dslot = &mut dbuf[slot * dimg_len..][..dimg_len];
                    pad_grad(dslot, &dout, i, s.cout, &g, zero);
                }
                if want_dinp {
                    let mut stats = bn.map(|(x, mean, k, beta)| Stats {
                        x: &x[i * img..][..img],
                        mean,
                        k,
                        beta,
                        lanes: &mut sc.lanes[..s.cin * 64],
                    });
                    if let Some(st) = &mut stats {
                        st.lanes.fill(0.0);
                    }
                    let dinp_img = &mut dinp[t * img..][..img];
                    let store = match (accum, res) {
                        (_, Some(r)) => Store::Plus(&r[i * img..][..img]),
                        (Accum::Add, None) => Store::Add,
                        (Accum::Set, None) => Store::Set,
                    };
                    if bf16 {
                        let (pp, np) = (&sc.pp[ppofs..], pairs(s.cout));
                        let st = stats.as_mut();
                        conv_planes_bf16(dinp_img, pp, wpb, np, s.cin, &g, edges, store, st);
                    } else if let Some(tl) = &wino {
                        let d = &dbuf[slot * dimg_len..][..dimg_len];
                        let (src, wg) = ((d, (g.ps, g.first()), None), &mut sc.wg);
                        let st = stats.as_mut();
                        winograd::conv_image(dinp_img, src, ub, s.cout, s.cin, tl, store, st, wg);
                    } else {
                        let d = &dbuf[slot * dimg_len..][..dimg_len];
                        let st = stats.as_mut();
                        conv_planes(dinp_img, d, wb, s.cout, s.cin, &g, edges, store, st);
                    }
                    if let Some(st) = &stats {
                        for c in 0..s.cin {
                            sc.sums[t * s.cin + c] = finish_stats(st, dinp_img, c, g.hw);
                        }
                    }
                }
                if want_dw && bf16 {
                    // the padded input's pairs of adjacent entries from
                    // even entries (pe[t] = (P[2t], P[2t + 1])), paired
                    // straight from each input plane placed at first() in
                    // zeros (P itself is never written): a stored input
                    // where it lies, a BN-ReLU one made as it is paired;
                    // the taps from odd entries read the same values one
                    // half on
                    let at = slot * s.cin * ph;
                    let pe = &mut sc.pe[peofs + at..][..s.cin * ph];
                    for (c, e) in pe.chunks_exact_mut(ph).enumerate() {
                        let src = half_of(&inp, i, s.cin, &g, c, &mut sc.tmp);
                        run_pairs_at(e, src, g.hw, g.first());
                    }
                    if slot + 1 == group || i + 1 == imgs.end {
                        let (n, first_group) = (slot + 1, i + 1 - first <= group);
                        weight_grad_planes_bf16(
                            &mut sc.dwv[vofs..],
                            first_group,
                            &sc.dq[dqofs..],
                            &sc.pe[peofs..],
                            s.cin,
                            s.cout,
                            n,
                            &g,
                            ph,
                            pmasks,
                        );
                    }
                } else if want_dw {
                    let pbuf = &mut sc.p[pofs..];
                    let zero = sc.p_zeroed.need(pbuf.as_ptr(), &g, slot * s.cin, s.cin);
                    pad_input(
                        &mut pbuf[slot * pimg_len..][..pimg_len],
                        &inp,
                        i,
                        s.cin,
                        &g,
                        zero,
                    );
                    // a full group, or the chunk's last images
                    if slot + 1 == group || i + 1 == imgs.end {
                        let (n, first_group) = (slot + 1, i + 1 - first <= group);
                        let dwv = &mut sc.dwv[vofs..];
                        weight_grad_planes(
                            dwv,
                            first_group,
                            dbuf,
                            pbuf,
                            s.cin,
                            s.cout,
                            n,
                            &g,
                            edges,
                        );
                    }
                }
            }
            if want_dw {
                reduce_lanes(&mut sc.dw[..nw], &sc.dwv[vofs..]);
            }
            ahead::clear();
        },
    );
    if let (Some(plane_sums), Some(_)) = (plane_sums, bn) {
        for sc in used.iter() {
            plane_sums[sc.first * s.cin..][..sc.sums.len()].copy_from_slice(&sc.sums);
        }
    }
    if let Some(dweight) = dweight {
        // fixed-order reduction of the per-chunk partial sums
        for sc in used.iter() {
            for (d, &p) in dweight.iter_mut().zip(&sc.dw[..nw]) {
                *d += p;
            }
        }
    }
}

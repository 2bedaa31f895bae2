//! The reductions of BatchNorm: a channel's planes summed in the element
//! type's lanes and added up in f64 (the statistics' first pass, the
//! backward's two sums), in a fixed order, so a result does not depend on
//! the thread count; and the per-channel / per-plane drivers over the rayon
//! pool. The direct convolution reproduces [`plane_sums`] and
//! [`bn_plane_sums`] bit for bit while it stores a tensor, so their lane
//! order is part of the contract.

use super::{BnShape, OP};
use crate::error::{check_len, Result};
use crate::ops::simd::fast;
use crate::scalar::Scalar;
use rayon::prelude::*;

/// `f(c)` for every channel, in channel order; on the rayon pool if
/// `parallel`. Each call is sequential inside, so the result does not depend
/// on the split.
pub(super) fn per_channel<R: Send>(
    c: usize,
    parallel: bool,
    f: impl Fn(usize) -> R + Sync + Send,
) -> Vec<R> {
    if parallel {
        (0..c)
            .into_par_iter()
            .map(|c| {
                fast(
                    #[inline(always)]
                    || f(c),
                )
            })
            .collect()
    } else {
        (0..c)
            .map(|c| {
                fast(
                    #[inline(always)]
                    || f(c),
                )
            })
            .collect()
    }
}

/// `f(i, block)` for every (n, c) block of `hw` values of `buf` (N, C, HW),
/// `i = n * C + c` (so the channel is `i % C`); on the rayon pool if
/// `parallel`.
pub(super) fn per_block<T: Send>(
    buf: &mut [T], // (N, C, HW)
    s: BnShape,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if parallel {
        buf.par_chunks_mut(s.hw)
            .with_min_len((4096 / s.hw).max(1))
            .enumerate()
            .for_each(|(i, b)| {
                fast(
                    #[inline(always)]
                    || f(i, b),
                )
            });
    } else {
        buf.chunks_mut(s.hw).enumerate().for_each(|(i, b)| {
            fast(
                #[inline(always)]
                || f(i, b),
            )
        });
    }
}

/// The `hw` values of channel `c` in sample `n`.
#[inline]
pub(super) fn block<T>(x: &[T], s: BnShape, n: usize, c: usize) -> &[T] {
    let at = (n * s.c + c) * s.hw;
    &x[at..at + s.hw]
}

/// Element-type lanes of [`block_sum2`]: two 16-lane f32 registers per sum.
pub(super) const T_LANES: usize = 32;

/// `(sum_i f(x_i, y_i).0, sum_i f(x_i, y_i).1)` over one plane (one
/// sample's `hw` values of a channel), accumulated in the element type in
/// [`T_LANES`] interleaved lanes and returned in f64; the caller adds the
/// planes up in f64. A plane has at most a few thousand values, so each f32
/// lane sums a few dozen (f64 lanes, as before, ran at half the vector
/// width and made BatchNorm's backward compute-bound). The order is fixed,
/// so the result does not depend on the thread count.
#[inline(always)]
pub(super) fn block_sum2<T: Scalar>(x: &[T], y: &[T], f: impl Fn(T, T) -> (T, T)) -> (f64, f64) {
    fast(
        #[inline(always)]
        || {
            let mut a0 = [T::zero(); T_LANES];
            let mut a1 = [T::zero(); T_LANES];
            let mut ix = x.chunks_exact(T_LANES);
            let mut iy = y.chunks_exact(T_LANES);
            for (cx, cy) in (&mut ix).zip(&mut iy) {
                let cx: &[T; T_LANES] = cx.try_into().expect("T_LANES long");
                let cy: &[T; T_LANES] = cy.try_into().expect("T_LANES long");
                for l in 0..T_LANES {
                    let (p, q) = f(cx[l], cy[l]);
                    a0[l] += p;
                    a1[l] += q;
                }
            }
            let (mut t0, mut t1) = (0.0f64, 0.0f64);
            for (&u, &v) in ix.remainder().iter().zip(iy.remainder()) {
                let (p, q) = f(u, v);
                t0 += p.f64();
                t1 += q.f64();
            }
            for l in 0..T_LANES {
                t0 += a0[l].f64();
                t1 += a1[l].f64();
            }
            (t0, t1)
        },
    )
}

/// `sum_i f(x_i)` over one plane, in the element type's lanes, as
/// [`block_sum2`].
#[inline(always)]
pub(super) fn block_sum<T: Scalar>(x: &[T], f: impl Fn(T) -> T) -> f64 {
    fast(
        #[inline(always)]
        || {
            let mut acc = [T::zero(); T_LANES];
            let mut it = x.chunks_exact(T_LANES);
            for ch in &mut it {
                let ch: &[T; T_LANES] = ch.try_into().expect("T_LANES long");
                for l in 0..T_LANES {
                    acc[l] += f(ch[l]);
                }
            }
            let mut t = 0.0f64;
            for &v in it.remainder() {
                t += f(v).f64();
            }
            for a in acc {
                t += a.f64();
            }
            t
        },
    )
}

/// The stat sums of `x`: `sums[p] = sum of plane p` for the planes of `hw`
/// values of `x` (one image's, say): the first pass of the batch
/// statistics, plane by plane, bitwise as `batch_stats` computes it.
pub fn bn_plane_sums<T: Scalar>(sums: &mut [f64], x: &[T], hw: usize) {
    assert!(
        hw > 0 && x.len() == sums.len() * hw,
        "bn_plane_sums: lengths"
    );
    for (sum, plane) in sums.iter_mut().zip(x.chunks_exact(hw)) {
        *sum = block_sum(plane, |v| v);
    }
}

/// dL/d(BN output): `dout`, or `dout` masked where the forward's ReLU was
/// off (the forward's own expression, so the mask is bitwise the forward's).
#[inline(always)]
pub(super) fn dy<T: Scalar, const RELU: bool>(g: T, x: T, mu: T, k: T, b: T) -> T {
    if RELU && (x - mu) * k + b <= T::zero() {
        T::zero()
    } else {
        g
    }
}

/// One plane's `(sum dy, sum dy * (x - mu))` of the backward's reduction
/// ([`block_sum2`] over `dout` and `inp`, `dy` masked by the ReLU when
/// `RELU`): the exact sums that a caller computing them elsewhere (the
/// direct convolution, while it stores `dout`) must reproduce bit for bit.
#[inline(always)]
pub(super) fn plane_sums<T: Scalar, const RELU: bool>(
    dout: &[T],
    inp: &[T],
    mt: T,
    kc: T,
    bc: T,
) -> (f64, f64) {
    block_sum2(dout, inp, |g, x| {
        let g = dy::<T, RELU>(g, x, mt, kc, bc);
        (g, g * (x - mt))
    })
}

/// The grad sums of a BN-ReLU backward (the per-plane sums of its
/// reduction), `grad_sums[n * C + c] = (sum dy, sum dy * (x - mean))` over plane `(n, c)` with `dy` =
/// `dout` masked where `(x - mean) * k + beta <= 0`: what
/// [`batchnorm_backward_coefs`] and `fused::bn_relu_backward_plus` accept
/// precomputed.
pub fn bn_relu_plane_sums<T: Scalar>(
    grad_sums: &mut [(f64, f64)], // (N, C)
    dout: &[T],                   // (N, C, HW)
    inp: &[T],                    // (N, C, HW)
    mean: &[T],                   // (C)
    k: &[T],                      // (C)
    beta: &[T],                   // (C)
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "grad sums", grad_sums, &[s.n, s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    for (what, v) in [("mean", mean), ("scale", k), ("beta", beta)] {
        check_len(OP, what, v, &[s.c])?;
    }
    let per_c = per_channel(s.c, s.parallel(), |c| {
        (0..s.n)
            .map(|n| {
                let (d, x) = (block(dout, s, n, c), block(inp, s, n, c));
                plane_sums::<T, true>(d, x, mean[c], k[c], beta[c])
            })
            .collect::<Vec<_>>()
    });
    for (c, col) in per_c.iter().enumerate() {
        for (n, &v) in col.iter().enumerate() {
            grad_sums[n * s.c + c] = v;
        }
    }
    Ok(())
}

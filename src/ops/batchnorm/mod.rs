//! Batch normalisation over (N, C, HW) -- BatchNorm1d is HW = 1, BatchNorm2d
//! is HW = H * W. PyTorch semantics throughout.
//!
//! Forward (training mode), for each channel c independently, over its
//! `M = N * HW` values `x_i` (i runs over every n and every position p):
//!
//! ```text
//! mu     = (1/M) sum_i x_i
//! var    = (1/M) sum_i (x_i - mu)^2           (biased: this is what normalises)
//! rstd   = 1 / sqrt(var + eps)
//! xhat_i = (x_i - mu) * rstd
//! y_i    = gamma * xhat_i + beta               inp/out (N, C, HW), gamma/beta/mu/rstd (C)
//! ```
//!
//! and the running statistics move towards the batch ones with momentum m
//! (the *unbiased* variance `var * M / (M - 1)` goes into `running_var`, as
//! PyTorch does; with `M == 1` it is undefined, and PyTorch refuses to train
//! on one value per channel -- so do we, `Error::InvalidParam`):
//!
//! ```text
//! running_mean = (1 - m) * running_mean + m * mu
//! running_var  = (1 - m) * running_var  + m * var * M / (M - 1)
//! ```
//!
//! Eval mode: `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`.
//!
//! Backward (training mode), per channel, with `dy_i = dL/dy_i`. The
//! parameters enter once per value:
//!
//! ```text
//! d y_i / d beta  = 1        =>  dbeta  += sum_i dy_i
//! d y_i / d gamma = xhat_i   =>  dgamma += sum_i dy_i * xhat_i
//! d y_i / d xhat_i = gamma   =>  g_i := dL/dxhat_i = gamma * dy_i
//! ```
//!
//! The input enters every `xhat_j` through `x_j` itself, `mu` and `rstd`:
//!
//! ```text
//! d mu / d x_i   = 1/M
//! d var / d x_i  = (2/M) (x_i - mu) - (2/M) sum_j (x_j - mu) * (1/M)
//!                = (2/M) (x_i - mu)                    (sum_j (x_j - mu) = 0)
//! d rstd / d x_i = -1/2 (var + eps)^(-3/2) * d var / d x_i
//!                = -rstd^3 (x_i - mu) / M = -rstd^2 xhat_i / M
//! d xhat_j / d x_i = rstd (delta_ij - 1/M) + (x_j - mu) * d rstd / d x_i
//!                  = rstd (delta_ij - 1/M - xhat_j xhat_i / M)
//! ```
//!
//! so, summing over every `j` that `x_i` reaches,
//!
//! ```text
//! dx_i = sum_j g_j d xhat_j / d x_i
//!      = rstd (g_i - (1/M) sum_j g_j - xhat_i (1/M) sum_j g_j xhat_j)
//!      = gamma * rstd / M * (M dy_i - sum_j dy_j - xhat_i * sum_j dy_j xhat_j)
//! ```
//!
//! (the two sums are exactly `dbeta`'s and `dgamma`'s). In eval mode the
//! statistics are constants and `dx_i = gamma * rstd_running * dy_i`
//! ([`batchnorm_backward_eval`]).
//!
//! Numerics: the statistics and the two backward sums are accumulated in f64
//! even for f32 (two passes: the mean first, then the squared deviations from
//! it), so a channel with a large mean and a small spread loses nothing to
//! cancellation. Each channel's sums run in a fixed order, so the result is
//! bitwise the same whatever the number of threads; the work is split over
//! channels (reductions) and over (n, c) blocks (elementwise passes) with
//! rayon once the tensor is big enough to pay for it.

use crate::error::{check_len, check_nonzero, Error, Result};
use crate::ops::simd::fast;
use crate::ops::Accum;
use crate::scalar::Scalar;
use rayon::prelude::*;

/// PyTorch's defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

const OP: &str = "batchnorm";

/// From this many elements on, the passes run on the rayon pool.
const PAR_MIN: usize = 1 << 14;

/// Sizes: N samples, C channels, HW positions per channel (1 for 1d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnShape {
    fn validate(&self) -> Result<()> {
        check_nonzero(OP, "batch size", self.n)?;
        check_nonzero(OP, "channels", self.c)?;
        check_nonzero(OP, "positions per channel (HW)", self.hw)
    }
    /// Values per channel, `M = N * HW`.
    fn m(&self) -> usize {
        self.n * self.hw
    }
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub(crate) fn parallel(&self) -> bool {
        self.len() >= PAR_MIN
    }
}

fn check_eps(eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!("eps must be finite and >= 0, got {eps}"),
        });
    }
    Ok(())
}

/// `f(c)` for every channel, in channel order; on the rayon pool if
/// `parallel`. Each call is sequential inside, so the result does not depend
/// on the split.
fn per_channel<R: Send>(c: usize, parallel: bool, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
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
fn per_block<T: Send>(
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
fn block<T>(x: &[T], s: BnShape, n: usize, c: usize) -> &[T] {
    let at = (n * s.c + c) * s.hw;
    &x[at..at + s.hw]
}

/// Element-type lanes of [`block_sum2`]: two 16-lane f32 registers per sum.
const T_LANES: usize = 32;

/// `(sum_i f(x_i, y_i).0, sum_i f(x_i, y_i).1)` over one plane (one
/// sample's `hw` values of a channel), accumulated in the element type in
/// [`T_LANES`] interleaved lanes and returned in f64; the caller adds the
/// planes up in f64. A plane has at most a few thousand values, so each f32
/// lane sums a few dozen (f64 lanes, as before, ran at half the vector
/// width and made BatchNorm's backward compute-bound). The order is fixed,
/// so the result does not depend on the thread count.
#[inline(always)]
fn block_sum2<T: Scalar>(x: &[T], y: &[T], f: impl Fn(T, T) -> (T, T)) -> (f64, f64) {
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
fn block_sum<T: Scalar>(x: &[T], f: impl Fn(T) -> T) -> f64 {
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

/// Batch mean and biased variance of every channel (two passes: the mean,
/// then the centred sum of squares; a channel's planes are re-read from
/// cache). Each plane is summed in the element type ([`block_sum`]), the
/// planes in f64.
fn batch_stats<T: Scalar>(inp: &[T], s: BnShape, parallel: bool) -> Vec<(f64, f64)> {
    let m = s.m() as f64;
    per_channel(s.c, parallel, |c| {
        let mut sum = 0.0f64;
        for n in 0..s.n {
            sum += block_sum(block(inp, s, n, c), |v| v);
        }
        let mu = sum / m;
        let mt = T::of(mu);
        // centred on the mean rounded to T, then corrected for that rounding:
        // sum (x - mu)^2 = sum (x - mt)^2 - M (mu - mt)^2
        let mut sq = 0.0f64;
        for n in 0..s.n {
            sq += block_sum(block(inp, s, n, c), |v| {
                let d = v - mt;
                d * d
            });
        }
        let e = mu - mt.f64();
        (mu, (sq / m - e * e).max(0.0))
    })
}

/// `out[n,c,p] = (inp[n,c,p] - mu[c]) * k[c] + beta[c]`, i.e. `k = gamma * rstd`.
fn normalise<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    mu: &[T],
    k: &[T],
    beta: &[T],
    s: BnShape,
    parallel: bool,
) {
    normalise_act::<T, false>(out, inp, mu, k, beta, s, parallel)
}

/// [`normalise`], then `max(0, .)` when `RELU` (the fused BN-ReLU forward).
pub(crate) fn normalise_act<T: Scalar, const RELU: bool>(
    out: &mut [T],
    inp: &[T],
    mu: &[T],
    k: &[T],
    beta: &[T],
    s: BnShape,
    parallel: bool,
) {
    per_block(
        out,
        s,
        parallel,
        #[inline(always)]
        |i, o| {
            let c = i % s.c;
            let (mc, kc, bc) = (mu[c], k[c], beta[c]);
            for (y, &x) in o.iter_mut().zip(&inp[i * s.hw..(i + 1) * s.hw]) {
                let v = (x - mc) * kc + bc;
                *y = if RELU && v <= T::zero() { T::zero() } else { v };
            }
        },
    );
}

/// Training mode: normalise with the batch statistics, save `mean` and
/// `rstd` (C) for the backward, update the running statistics (momentum `m`:
/// `running = (1 - m) running + m batch`, the unbiased variance into
/// `running_var`). `out` is overwritten. Errors with `InvalidParam` when
/// `N * HW == 1` (no variance to estimate) or `momentum` is not in [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<T: Scalar>(
    out: &mut [T],          // (N, C, HW)
    mean: &mut [T],         // (C)   saved batch mean
    rstd: &mut [T],         // (C)   saved 1 / sqrt(var + eps)
    inp: &[T],              // (N, C, HW)
    gamma: &[T],            // (C)
    beta: &[T],             // (C)
    running_mean: &mut [T], // (C)
    running_var: &mut [T],  // (C)
    momentum: f64,
    eps: f64,
    s: BnShape,
) -> Result<()> {
    forward_train_act::<T, false>(
        out,
        mean,
        rstd,
        inp,
        gamma,
        beta,
        running_mean,
        running_var,
        momentum,
        eps,
        s,
    )
}

/// [`batchnorm_forward_train`], with `out = max(0, y)` when `RELU`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_train_act<T: Scalar, const RELU: bool>(
    out: &mut [T],          // (N, C, HW)
    mean: &mut [T],         // (C)   saved batch mean
    rstd: &mut [T],         // (C)   saved 1 / sqrt(var + eps)
    inp: &[T],              // (N, C, HW)
    gamma: &[T],            // (C)
    beta: &[T],             // (C)
    running_mean: &mut [T], // (C)
    running_var: &mut [T],  // (C)
    momentum: f64,
    eps: f64,
    s: BnShape,
) -> Result<()> {
    check_len(OP, "output", out, &[s.n, s.c, s.hw])?;
    let k = train_stats(
        mean,
        rstd,
        inp,
        gamma,
        beta,
        running_mean,
        running_var,
        momentum,
        eps,
        s,
    )?;
    normalise_act::<T, RELU>(out, inp, mean, &k, beta, s, s.parallel());
    Ok(())
}

/// The statistics half of the training-mode forward: saves the batch
/// `mean` and `rstd`, updates the running statistics, and returns the
/// per-channel scale `k = gamma * rstd` of `y = (x - mean) * k + beta`, for
/// a caller that applies the normalisation inside its own pass
/// ([`normalise_add_act`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_stats<T: Scalar>(
    mean: &mut [T],         // (C)   saved batch mean
    rstd: &mut [T],         // (C)   saved 1 / sqrt(var + eps)
    inp: &[T],              // (N, C, HW)
    gamma: &[T],            // (C)
    beta: &[T],             // (C)
    running_mean: &mut [T], // (C)
    running_var: &mut [T],  // (C)
    momentum: f64,
    eps: f64,
    s: BnShape,
) -> Result<Vec<T>> {
    s.validate()?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", mean, &[s.c])?;
    check_len(OP, "rstd", rstd, &[s.c])?;
    check_len(OP, "gamma", gamma, &[s.c])?;
    check_len(OP, "beta", beta, &[s.c])?;
    check_len(OP, "running_mean", running_mean, &[s.c])?;
    check_len(OP, "running_var", running_var, &[s.c])?;
    check_eps(eps)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!("momentum must be in [0, 1], got {momentum}"),
        });
    }
    let m = s.m();
    if m < 2 {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!(
                "expected more than 1 value per channel when training, got input of shape {:?}",
                [s.n, s.c, s.hw]
            ),
        });
    }
    let stats = batch_stats(inp, s, s.parallel());
    let unbias = m as f64 / (m - 1) as f64;
    let mut k = vec![T::zero(); s.c];
    for (c, &(mu, var)) in stats.iter().enumerate() {
        let r = 1.0 / (var + eps).sqrt();
        mean[c] = T::of(mu);
        rstd[c] = T::of(r);
        k[c] = gamma[c] * rstd[c];
        running_mean[c] = T::of((1.0 - momentum) * running_mean[c].f64() + momentum * mu);
        running_var[c] = T::of((1.0 - momentum) * running_var[c].f64() + momentum * var * unbias);
    }
    Ok(k)
}

/// `out = h + ((x - mean) * k + beta)`, then `max(0, .)` when `RELU`: a
/// normalisation whose statistics [`train_stats`] computed, the residual
/// addition and the ReLU after it in one pass (the original unit's last
/// BN, `+` and ReLU; the BN output is never stored). Each operation is the
/// plain ops' own expression in their order, so the result is bitwise
/// theirs. Lengths are the caller's (`out`, `h`, `x`: (N, C, HW)).
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalise_add_act<T: Scalar, const RELU: bool>(
    out: &mut [T],
    h: &[T],
    x: &[T],
    mean: &[T],
    k: &[T],
    beta: &[T],
    s: BnShape,
) {
    per_block(
        out,
        s,
        s.parallel(),
        #[inline(always)]
        |i, o| {
            let c = i % s.c;
            let (mc, kc, bc) = (mean[c], k[c], beta[c]);
            let range = i * s.hw..(i + 1) * s.hw;
            for ((y, &xv), &hv) in o.iter_mut().zip(&x[range.clone()]).zip(&h[range]) {
                let v = hv + ((xv - mc) * kc + bc);
                *y = if !RELU || v > T::zero() { v } else { T::zero() };
            }
        },
    );
}

/// Eval mode: normalise with the running statistics (which stay as they are);
/// `out` is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval<T: Scalar>(
    out: &mut [T],      // (N, C, HW)
    inp: &[T],          // (N, C, HW)
    gamma: &[T],        // (C)
    beta: &[T],         // (C)
    running_mean: &[T], // (C)
    running_var: &[T],  // (C)
    eps: f64,
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "output", out, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "gamma", gamma, &[s.c])?;
    check_len(OP, "beta", beta, &[s.c])?;
    check_len(OP, "running_mean", running_mean, &[s.c])?;
    check_len(OP, "running_var", running_var, &[s.c])?;
    check_eps(eps)?;
    let k: Vec<T> = gamma
        .iter()
        .zip(running_var)
        .map(|(&g, &v)| T::of(g.f64() / (v.f64() + eps).sqrt()))
        .collect();
    normalise(out, inp, running_mean, &k, beta, s, s.parallel());
    Ok(())
}

/// Backward of the training-mode forward, through the batch statistics (see
/// the module doc for the derivation):
/// `dx += gamma*rstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat))`,
/// `dgamma += sum(dy*xhat)`, `dbeta += sum(dy)`; all three accumulate (`+=`).
/// `mean` and `rstd` are the ones the forward saved.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Scalar>(
    dinp: &mut [T],   // (N, C, HW)
    dgamma: &mut [T], // (C)
    dbeta: &mut [T],  // (C)
    dout: &[T],       // (N, C, HW)
    inp: &[T],        // (N, C, HW)
    mean: &[T],       // (C)
    rstd: &[T],       // (C)
    gamma: &[T],      // (C)
    s: BnShape,
) -> Result<()> {
    batchnorm_backward_to(
        Accum::Add,
        dinp,
        dgamma,
        dbeta,
        dout,
        inp,
        mean,
        rstd,
        gamma,
        s,
    )
}

/// [`batchnorm_backward`] with `dinp` written as `accum` says
/// ([`Accum::Set`] overwrites it); `dgamma`, `dbeta` accumulate.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_to<T: Scalar>(
    accum: Accum,
    dinp: &mut [T],   // (N, C, HW)
    dgamma: &mut [T], // (C)
    dbeta: &mut [T],  // (C)
    dout: &[T],       // (N, C, HW)
    inp: &[T],        // (N, C, HW)
    mean: &[T],       // (C)
    rstd: &[T],       // (C)
    gamma: &[T],      // (C)
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "dinp", dinp, &[s.n, s.c, s.hw])?;
    check_len(OP, "dgamma", dgamma, &[s.c])?;
    check_len(OP, "dbeta", dbeta, &[s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", mean, &[s.c])?;
    check_len(OP, "rstd", rstd, &[s.c])?;
    check_len(OP, "gamma", gamma, &[s.c])?;
    batchnorm_backward_unchecked(
        accum,
        dinp,
        dgamma,
        dbeta,
        dout,
        inp,
        mean,
        rstd,
        gamma,
        s,
        s.parallel(),
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn batchnorm_backward_unchecked<T: Scalar>(
    accum: Accum,
    dinp: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    dout: &[T],
    inp: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    s: BnShape,
    par: bool,
) {
    let f = match accum {
        Accum::Add => backward_act::<T, false, false>,
        Accum::Set => backward_act::<T, false, true>,
    };
    f(
        dinp,
        &[],
        dgamma,
        dbeta,
        dout,
        inp,
        mean,
        rstd,
        gamma,
        &[],
        None,
        s,
        par,
    )
}

/// The training-mode backward; with `RELU`, of BN followed by ReLU: the
/// gradient reaching the BN output is `dout * [y > 0]`, where the ReLU's
/// input `y = (x - mean) * (gamma * rstd) + beta` is recomputed from `inp`
/// by the forward's own expression (so the mask is bitwise the forward's,
/// and the ReLU output is never read; `beta` is ignored without `RELU`).
/// `dinp` is added to, or overwritten when `SET` ([`crate::ops::Accum::Set`]);
/// with `SET` and a non-empty `res`, `dinp = res + ...` (a residual unit's
/// shortcut gradient, written in the same pass instead of copied first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_act<T: Scalar, const RELU: bool, const SET: bool>(
    dinp: &mut [T],
    res: &[T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    dout: &[T],
    inp: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    beta: &[T],
    planes: Option<&[(f64, f64)]>,
    s: BnShape,
    par: bool,
) {
    let coef = backward_coefs::<T, RELU>(
        dgamma, dbeta, dout, inp, mean, rstd, gamma, beta, planes, s, par,
    );
    dx_pass::<T, RELU, SET>(dinp, res, dout, inp, mean, beta, &coef, s, par);
}

/// dL/d(BN output): `dout`, or `dout` masked where the forward's ReLU was
/// off (the forward's own expression, so the mask is bitwise the forward's).
#[inline(always)]
fn dy<T: Scalar, const RELU: bool>(g: T, x: T, mu: T, k: T, b: T) -> T {
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
fn plane_sums<T: Scalar, const RELU: bool>(
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

/// The per-plane sums of the BN-ReLU backward's reduction, `planes[n * C +
/// c] = (sum dy, sum dy * (x - mean))` over plane `(n, c)` with `dy` =
/// `dout` masked where `(x - mean) * k + beta <= 0`: what
/// [`batchnorm_backward_coefs`] and `fused::bn_relu_backward_plus` accept
/// precomputed.
#[allow(clippy::too_many_arguments)]
pub fn bn_relu_plane_sums<T: Scalar>(
    planes: &mut [(f64, f64)], // (N, C)
    dout: &[T],                // (N, C, HW)
    inp: &[T],                 // (N, C, HW)
    mean: &[T],                // (C)
    k: &[T],                   // (C)
    beta: &[T],                // (C)
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "plane sums", planes, &[s.n, s.c])?;
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
            planes[n * s.c + c] = v;
        }
    }
    Ok(())
}

/// The reduction half of [`backward_act`]: adds `dgamma`, `dbeta` and
/// returns, per channel, `(k, a, b)` of `dx = k * (dy - a - (x - mu) * b)`.
/// With `planes`, the per-plane sums are taken from there.
#[allow(clippy::too_many_arguments)]
fn backward_coefs<T: Scalar, const RELU: bool>(
    dgamma: &mut [T],
    dbeta: &mut [T],
    dout: &[T],
    inp: &[T],
    mean: &[T],
    rstd: &[T],
    gamma: &[T],
    beta: &[T],
    planes: Option<&[(f64, f64)]>,
    s: BnShape,
    par: bool,
) -> Vec<(T, T, T)> {
    // k = gamma * rstd, exactly as the forward's normalise_act computed it
    let k: Vec<T> = gamma.iter().zip(rstd).map(|(&g, &r)| g * r).collect();
    let m = s.m() as f64;
    let b_of = |c: usize| if RELU { beta[c] } else { T::zero() };
    // per channel: (sum dy, sum dy * xhat), in f64
    let sums = per_channel(s.c, par, |c| {
        let r = rstd[c].f64();
        let (mt, kc, bc) = (mean[c], k[c], b_of(c));
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for n in 0..s.n {
            // sum dy and sum dy * (x - mu); the rstd factor once at the end
            let (a, b) = match planes {
                Some(p) => p[n * s.c + c],
                None => {
                    plane_sums::<T, RELU>(block(dout, s, n, c), block(inp, s, n, c), mt, kc, bc)
                }
            };
            sdy += a;
            sdyx += b;
        }
        (sdy, sdyx * r)
    });
    // dx = k * (dy - a - (x - mu) * b) with k = gamma * rstd, a = sum(dy) / M,
    // b = rstd * sum(dy * xhat) / M  (the xhat_i of the formula is (x - mu) * rstd)
    let mut coef = Vec::with_capacity(s.c);
    for (c, &(sdy, sdyx)) in sums.iter().enumerate() {
        dbeta[c] += T::of(sdy);
        dgamma[c] += T::of(sdyx);
        let r = rstd[c].f64();
        coef.push((k[c], T::of(sdy / m), T::of(r * sdyx / m)));
    }
    coef
}

/// The elementwise half of [`backward_act`]: `dinp (+)= k * (dy - a - (x -
/// mu) * b)` (`dinp = res + ...` with a non-empty `res` when `SET`).
#[allow(clippy::too_many_arguments)]
fn dx_pass<T: Scalar, const RELU: bool, const SET: bool>(
    dinp: &mut [T],
    res: &[T],
    dout: &[T],
    inp: &[T],
    mean: &[T],
    beta: &[T],
    coef: &[(T, T, T)],
    s: BnShape,
    par: bool,
) {
    let b_of = |c: usize| if RELU { beta[c] } else { T::zero() };
    per_block(
        dinp,
        s,
        par,
        #[inline(always)]
        |i, d| {
            let c = i % s.c;
            let (kc, a, b) = coef[c];
            let (mu, bc) = (mean[c], b_of(c));
            let range = i * s.hw..(i + 1) * s.hw;
            let (g, xs) = (&dout[range.clone()], &inp[range.clone()]);
            if SET && !res.is_empty() {
                for (((dx, &g), &x), &r0) in d.iter_mut().zip(g).zip(xs).zip(&res[range]) {
                    let g = dy::<T, RELU>(g, x, mu, kc, bc);
                    *dx = r0 + kc * (g - a - (x - mu) * b);
                }
            } else {
                for ((dx, &g), &x) in d.iter_mut().zip(g).zip(xs) {
                    let g = dy::<T, RELU>(g, x, mu, kc, bc);
                    put::<T, SET>(dx, kc * (g - a - (x - mu) * b));
                }
            }
        },
    );
}

/// The reduction half of the training-mode backward of BN (`beta` given:
/// of BN followed by ReLU, the mask recomputed from `inp`): adds `dgamma`
/// and `dbeta`, and returns per channel `(k, a, b)` such that
/// `dinp = k * (dy - a - (inp - mean) * b)` (see [`batchnorm_backward_dx`];
/// `dy` is `dout` masked by the ReLU). The two halves are bitwise
/// [`batchnorm_backward_to`] (`fused::bn_relu_backward_to`) with
/// [`Accum::Set`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_coefs<T: Scalar>(
    dgamma: &mut [T],              // (C)
    dbeta: &mut [T],               // (C)
    dout: &[T],                    // (N, C, HW)
    inp: &[T],                     // (N, C, HW)
    mean: &[T],                    // (C)
    rstd: &[T],                    // (C)
    gamma: &[T],                   // (C)
    beta: Option<&[T]>,            // (C), with the ReLU
    planes: Option<&[(f64, f64)]>, // (N, C), from bn_relu_plane_sums (with the ReLU)
    s: BnShape,
) -> Result<Vec<(T, T, T)>> {
    s.validate()?;
    check_len(OP, "dgamma", dgamma, &[s.c])?;
    check_len(OP, "dbeta", dbeta, &[s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", mean, &[s.c])?;
    check_len(OP, "rstd", rstd, &[s.c])?;
    check_len(OP, "gamma", gamma, &[s.c])?;
    let par = s.parallel();
    if let Some(p) = planes {
        check_len(OP, "plane sums", p, &[s.n, s.c])?;
    }
    Ok(match beta {
        Some(beta) => {
            check_len(OP, "beta", beta, &[s.c])?;
            backward_coefs::<T, true>(
                dgamma, dbeta, dout, inp, mean, rstd, gamma, beta, planes, s, par,
            )
        }
        None => backward_coefs::<T, false>(
            dgamma,
            dbeta,
            dout,
            inp,
            mean,
            rstd,
            gamma,
            &[],
            planes,
            s,
            par,
        ),
    })
}

/// The elementwise half: `dinp = k * (dy - a - (inp - mean) * b)` with
/// `coef` from [`batchnorm_backward_coefs`] (`dinp` overwritten).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_dx<T: Scalar>(
    dinp: &mut [T],     // (N, C, HW)
    dout: &[T],         // (N, C, HW)
    inp: &[T],          // (N, C, HW)
    mean: &[T],         // (C)
    beta: Option<&[T]>, // (C), with the ReLU
    coef: &[(T, T, T)], // (C)
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "dinp", dinp, &[s.n, s.c, s.hw])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", mean, &[s.c])?;
    check_len(OP, "coefficients", coef, &[s.c])?;
    let par = s.parallel();
    match beta {
        Some(beta) => {
            check_len(OP, "beta", beta, &[s.c])?;
            dx_pass::<T, true, true>(dinp, &[], dout, inp, mean, beta, coef, s, par)
        }
        None => dx_pass::<T, false, true>(dinp, &[], dout, inp, mean, &[], coef, s, par),
    }
    Ok(())
}

/// `*d = v` when `SET`, else `*d += v`.
#[inline(always)]
fn put<T: Scalar, const SET: bool>(d: &mut T, v: T) {
    if SET {
        *d = v;
    } else {
        *d += v;
    }
}

/// Backward of the eval-mode forward: the running statistics are constants,
/// so with `rstd = 1/sqrt(running_var + eps)` and
/// `xhat = (x - running_mean) * rstd`:
/// `dx += gamma * rstd * dy`, `dgamma += sum(dy * xhat)`, `dbeta += sum(dy)`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_eval<T: Scalar>(
    dinp: &mut [T],     // (N, C, HW)
    dgamma: &mut [T],   // (C)
    dbeta: &mut [T],    // (C)
    dout: &[T],         // (N, C, HW)
    inp: &[T],          // (N, C, HW)
    gamma: &[T],        // (C)
    running_mean: &[T], // (C)
    running_var: &[T],  // (C)
    eps: f64,
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "dinp", dinp, &[s.n, s.c, s.hw])?;
    check_len(OP, "dgamma", dgamma, &[s.c])?;
    check_len(OP, "dbeta", dbeta, &[s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "gamma", gamma, &[s.c])?;
    check_len(OP, "running_mean", running_mean, &[s.c])?;
    check_len(OP, "running_var", running_var, &[s.c])?;
    check_eps(eps)?;
    let par = s.parallel();
    let rs: Vec<f64> = running_var
        .iter()
        .map(|v| 1.0 / (v.f64() + eps).sqrt())
        .collect();
    let sums = per_channel(s.c, par, |c| {
        let (mu, r) = (running_mean[c].f64(), rs[c]);
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for n in 0..s.n {
            for (&g, &x) in block(dout, s, n, c).iter().zip(block(inp, s, n, c)) {
                sdy += g.f64();
                sdyx += g.f64() * (x.f64() - mu) * r;
            }
        }
        (sdy, sdyx)
    });
    for (c, &(sdy, sdyx)) in sums.iter().enumerate() {
        dbeta[c] += T::of(sdy);
        dgamma[c] += T::of(sdyx);
    }
    let k: Vec<T> = gamma
        .iter()
        .zip(&rs)
        .map(|(&g, &r)| T::of(g.f64() * r))
        .collect();
    per_block(
        dinp,
        s,
        par,
        #[inline(always)]
        |i, d| {
            let kc = k[i % s.c];
            for (dx, &g) in d.iter_mut().zip(&dout[i * s.hw..(i + 1) * s.hw]) {
                *dx += kc * g;
            }
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    /// Training forward into fresh buffers: (out, mean, rstd, running_mean, running_var).
    #[allow(clippy::type_complexity)]
    fn train<T: Scalar>(
        inp: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        s: BnShape,
    ) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
        let mut out = vec![T::zero(); s.len()];
        let (mut mean, mut rstd) = (vec![T::zero(); s.c], vec![T::zero(); s.c]);
        let (mut rm, mut rv) = (vec![T::zero(); s.c], vec![T::one(); s.c]);
        batchnorm_forward_train(
            &mut out,
            &mut mean,
            &mut rstd,
            inp,
            gamma,
            beta,
            &mut rm,
            &mut rv,
            BN_MOMENTUM,
            eps,
            s,
        )
        .unwrap();
        (out, mean, rstd, rm, rv)
    }

    #[test]
    fn hand_computed_case() {
        // N=2, C=1, HW=1, x = [1, 3]: mean 2, biased var ((1-2)^2 + (3-2)^2)/2 = 1,
        // rstd = 1/sqrt(1 + eps), xhat = [-1, 1] * rstd; gamma 1, beta 0 => y = xhat
        let s = BnShape { n: 2, c: 1, hw: 1 };
        let r = 1.0 / (1.0 + BN_EPS).sqrt();
        let (out, mean, rstd, rm, rv) = train(&[1.0f64, 3.0], &[1.0], &[0.0], BN_EPS, s);
        assert_eq!(mean, [2.0]);
        assert!((rstd[0] - r).abs() < 1e-15);
        assert!(
            (out[0] + r).abs() < 1e-15 && (out[1] - r).abs() < 1e-15,
            "{out:?}"
        );
        // running: 0.9 * 0 + 0.1 * 2 = 0.2; 0.9 * 1 + 0.1 * (1 * 2/1) = 1.1 (unbiased var 2)
        assert!(
            (rm[0] - 0.2).abs() < 1e-15 && (rv[0] - 1.1).abs() < 1e-15,
            "{rm:?} {rv:?}"
        );
        // gamma 2, beta 0.5: y = 2 xhat + 0.5
        let (out, ..) = train(&[1.0f64, 3.0], &[2.0], &[0.5], BN_EPS, s);
        assert!(
            (out[0] - (0.5 - 2.0 * r)).abs() < 1e-15 && (out[1] - (0.5 + 2.0 * r)).abs() < 1e-15
        );

        // Backward with eps = 1 for round numbers: rstd = 1/sqrt(2) =: r, xhat = [-r, r].
        // dy = [1, 0], gamma = 1, M = 2: sum dy = 1, sum dy xhat = -r
        // dx_0 = r/2 (2*1 - 1 - (-r)(-r)) = r/2 (1 - 1/2) = r/4
        // dx_1 = r/2 (2*0 - 1 - ( r)(-r)) = r/2 (-1 + 1/2) = -r/4
        // dgamma = -r, dbeta = 1
        let (_, mean, rstd, ..) = train(&[1.0f64, 3.0], &[1.0], &[0.0], 1.0, s);
        let r = 0.5f64.sqrt();
        let (mut dx, mut dg, mut db) = ([0.0f64; 2], [0.0], [0.0]);
        batchnorm_backward(
            &mut dx,
            &mut dg,
            &mut db,
            &[1.0, 0.0],
            &[1.0, 3.0],
            &mean,
            &rstd,
            &[1.0],
            s,
        )
        .unwrap();
        assert!(
            (dx[0] - r / 4.0).abs() < 1e-15 && (dx[1] + r / 4.0).abs() < 1e-15,
            "{dx:?}"
        );
        assert!((dg[0] + r).abs() < 1e-15 && db[0] == 1.0, "{dg:?} {db:?}");
    }

    #[test]
    fn running_stats_match_hand_computed_values() {
        // N=2, C=2, HW=2; x[n][c][p]:
        //   n0: c0 [1, 2], c1 [0,  0]
        //   n1: c0 [3, 6], c1 [4, -4]
        // c0 values 1,2,3,6: mean 3, biased var (4+1+0+9)/4 = 3.5, unbiased 14/3
        // c1 values 0,0,4,-4: mean 0, biased var 32/4 = 8, unbiased 32/3
        let s = BnShape { n: 2, c: 2, hw: 2 };
        let x = [1.0, 2.0, 0.0, 0.0, 3.0, 6.0, 4.0, -4.0];
        let (g, b) = ([1.0, 1.0], [0.0, 0.0]);
        let mut out = [0.0f64; 8];
        let (mut mean, mut rstd) = ([0.0; 2], [0.0; 2]);
        let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
        batchnorm_forward_train(
            &mut out, &mut mean, &mut rstd, &x, &g, &b, &mut rm, &mut rv, 0.1, BN_EPS, s,
        )
        .unwrap();
        assert_eq!(mean, [3.0, 0.0]);
        assert!((rstd[0] - 1.0 / (3.5 + BN_EPS).sqrt()).abs() < 1e-15);
        assert!((rstd[1] - 1.0 / (8.0 + BN_EPS).sqrt()).abs() < 1e-15);
        // running_mean = 0.9 * [0.5, 0] + 0.1 * [3, 0] = [0.75, 0]
        // running_var  = 0.9 * [1, 2] + 0.1 * [14/3, 32/3] = [0.9 + 1.4/3, 1.8 + 3.2/3]
        assert!((rm[0] - 0.75).abs() < 1e-15 && rm[1] == 0.0, "{rm:?}");
        assert!((rv[0] - (0.9 + 1.4 / 3.0)).abs() < 1e-14, "{rv:?}");
        assert!((rv[1] - (1.8 + 3.2 / 3.0)).abs() < 1e-14, "{rv:?}");
        // the same in f32, to f32 precision
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut out32 = [0.0f32; 8];
        let (mut mean32, mut rstd32) = ([0.0f32; 2], [0.0f32; 2]);
        let (mut rm32, mut rv32) = ([0.5f32, 0.0], [1.0f32, 2.0]);
        batchnorm_forward_train(
            &mut out32,
            &mut mean32,
            &mut rstd32,
            &x32,
            &[1.0f32; 2],
            &[0.0f32; 2],
            &mut rm32,
            &mut rv32,
            0.1,
            BN_EPS,
            s,
        )
        .unwrap();
        for (a, b) in rv32.iter().zip(&rv) {
            assert!((a.f64() - b).abs() < 1e-6, "{rv32:?}");
        }
        for (a, b) in out32.iter().zip(&out) {
            assert!((a.f64() - b).abs() < 1e-6, "{out32:?}");
        }
        // momentum 1 replaces the running stats; momentum 0 keeps them
        let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
        batchnorm_forward_train(
            &mut out, &mut mean, &mut rstd, &x, &g, &b, &mut rm, &mut rv, 1.0, BN_EPS, s,
        )
        .unwrap();
        assert!(
            rm == [3.0, 0.0]
                && (rv[0] - 14.0 / 3.0).abs() < 1e-15
                && (rv[1] - 32.0 / 3.0).abs() < 1e-14
        );
        let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
        batchnorm_forward_train(
            &mut out, &mut mean, &mut rstd, &x, &g, &b, &mut rm, &mut rv, 0.0, BN_EPS, s,
        )
        .unwrap();
        assert!(rm == [0.5, 0.0] && rv == [1.0, 2.0]);
    }

    #[test]
    fn eval_mode_uses_running_stats() {
        // eps = 1 for round numbers: rm = 1, rv = 3 => rstd = 1/sqrt(4) = 1/2
        // gamma 2, beta -1: y = 2 (x - 1) / 2 - 1 = x - 2  => x = [1, 5] gives [-1, 3]
        let s = BnShape { n: 2, c: 1, hw: 1 };
        let mut out = [0.0f64; 2];
        batchnorm_forward_eval(
            &mut out,
            &[1.0, 5.0],
            &[2.0],
            &[-1.0],
            &[1.0],
            &[3.0],
            1.0,
            s,
        )
        .unwrap();
        assert_eq!(out, [-1.0, 3.0]);
        // C=2, HW=3, N=1 (one sample is fine in eval mode): channel c uses its own stats
        let s = BnShape { n: 1, c: 2, hw: 3 };
        let x = [0.0, 1.0, 2.0, 10.0, 20.0, 30.0];
        let (rm, rv) = ([1.0, 20.0], [0.25, 100.0]);
        let mut out = [0.0f64; 6];
        batchnorm_forward_eval(&mut out, &x, &[1.0, 1.0], &[0.0, 0.0], &rm, &rv, BN_EPS, s)
            .unwrap();
        for (i, &o) in out.iter().enumerate() {
            let c = i / 3;
            let want = (x[i] - rm[c]) / (rv[c] + BN_EPS).sqrt();
            assert!((o - want).abs() < 1e-14, "{out:?}");
        }
        // eval after a training step with momentum 1 normalises like the training step
        // did, up to the biased/unbiased variance: here check eval(rm, rv) == train output
        // when rv is set to the biased batch variance
        let mut r = Rand::new(11);
        let s = BnShape { n: 4, c: 3, hw: 5 };
        let x = r.normal_vec(s.len());
        let (g, b) = (r.normal_vec(3), r.normal_vec(3));
        let (out_t, mean, rstd, ..) = train(&x, &g, &b, BN_EPS, s);
        let var: Vec<f64> = rstd.iter().map(|r| 1.0 / (r * r) - BN_EPS).collect();
        let mut out_e = vec![0.0; s.len()];
        batchnorm_forward_eval(&mut out_e, &x, &g, &b, &mean, &var, BN_EPS, s).unwrap();
        for (a, e) in out_t.iter().zip(&out_e) {
            assert!((a - e).abs() < 1e-12);
        }
    }

    #[test]
    fn gradcheck_train() {
        let mut r = Rand::new(3);
        // batch 1 with HW > 1; odd sizes; 1d with N > 1; the smallest batch (M = 2).
        // With M = 2, xhat = +-sqrt(var / (var + eps)) whatever x is, so dx is O(eps):
        // at eps = 1e-5 finite differences would measure only their own round-off;
        // a large eps makes it O(1) (and checks the eps inside rstd).
        for &(n, c, hw, eps) in &[
            (1, 2, 5, BN_EPS),
            (3, 3, 7, BN_EPS),
            (5, 4, 1, BN_EPS),
            (4, 2, 9, BN_EPS),
            (3, 2, 3, 0.3),
            (2, 1, 1, 0.5),
            (1, 3, 2, 0.5),
        ] {
            let s = BnShape { n, c, hw };
            let mut params = vec![r.normal_vec(s.len()), r.normal_vec(c), r.normal_vec(c)];
            // a non-zero mean and non-unit spread, as real activations have
            params[0]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = 3.0 * *v + (i % c) as f64);
            let err = check_layer(
                &mut params,
                s.len(),
                |p, out| out.copy_from_slice(&train(&p[0], &p[1], &p[2], eps, s).0),
                |p, dout, g| {
                    let (_, mean, rstd, ..) = train(&p[0], &p[1], &p[2], eps, s);
                    let (gx, rest) = g.split_at_mut(1);
                    let (gg, gb) = rest.split_at_mut(1);
                    batchnorm_backward(
                        &mut gx[0], &mut gg[0], &mut gb[0], dout, &p[0], &mean, &rstd, &p[1], s,
                    )
                    .unwrap()
                },
                &mut r,
            );
            assert!(err < 1e-6, "batchnorm {s:?} eps {eps}: max rel err {err:e}");
        }
    }

    #[test]
    fn gradcheck_eval() {
        let mut r = Rand::new(4);
        for &(n, c, hw) in &[(1, 1, 1), (2, 3, 4), (5, 2, 1)] {
            let s = BnShape { n, c, hw };
            let rm = r.normal_vec(c);
            let rv = r.uniform_vec(c, 0.5, 2.0);
            let mut params = vec![r.normal_vec(s.len()), r.normal_vec(c), r.normal_vec(c)];
            let err = check_layer(
                &mut params,
                s.len(),
                |p, out| {
                    batchnorm_forward_eval(out, &p[0], &p[1], &p[2], &rm, &rv, BN_EPS, s).unwrap()
                },
                |p, dout, g| {
                    let (gx, rest) = g.split_at_mut(1);
                    let (gg, gb) = rest.split_at_mut(1);
                    batchnorm_backward_eval(
                        &mut gx[0], &mut gg[0], &mut gb[0], dout, &p[0], &p[1], &rm, &rv, BN_EPS, s,
                    )
                    .unwrap()
                },
                &mut r,
            );
            assert!(err < 1e-6, "batchnorm eval {s:?}: max rel err {err:e}");
        }
    }

    #[test]
    fn parallel_path_is_bitwise_the_serial_one() {
        let mut r = Rand::new(5);
        let s = BnShape {
            n: 8,
            c: 16,
            hw: 256,
        }; // 32768 elements >= PAR_MIN
        assert!(s.parallel());
        let x: Vec<f32> = r.normal_vec(s.len()).iter().map(|&v| v as f32).collect();
        let dy: Vec<f32> = r.normal_vec(s.len()).iter().map(|&v| v as f32).collect();
        let g: Vec<f32> = r.normal_vec(s.c).iter().map(|&v| v as f32).collect();
        assert_eq!(batch_stats(&x, s, false), batch_stats(&x, s, true));
        let (_, mean, rstd, ..) = train(&x, &g, &g, BN_EPS, s);
        let mut out = [vec![0.0f32; s.len()], vec![0.0f32; s.len()]];
        let mut dx = [vec![0.5f32; s.len()], vec![0.5f32; s.len()]];
        let mut dg = [vec![0.0f32; s.c], vec![0.0f32; s.c]];
        let mut db = [vec![0.0f32; s.c], vec![0.0f32; s.c]];
        for (k, par) in [false, true].into_iter().enumerate() {
            normalise(&mut out[k], &x, &mean, &rstd, &g, s, par);
            batchnorm_backward_unchecked(
                Accum::Add,
                &mut dx[k],
                &mut dg[k],
                &mut db[k],
                &dy,
                &x,
                &mean,
                &rstd,
                &g,
                s,
                par,
            );
        }
        assert!(out[0] == out[1] && dx[0] == dx[1] && dg[0] == dg[1] && db[0] == db[1]);
    }

    #[test]
    fn normalise_add_relu_is_bitwise_the_three_plain_passes() {
        let mut r = Rand::new(12);
        for &(n, c, hw) in &[(2, 3, 5), (16, 8, 256), (1, 4, 1)] {
            let s = BnShape { n, c, hw };
            let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
            let (x, h) = (f(r.normal_vec(s.len())), f(r.normal_vec(s.len())));
            let (mean, k, beta) = (f(r.normal_vec(c)), f(r.normal_vec(c)), f(r.normal_vec(c)));
            // plain: y = BN(x); sum = h + y; out = relu(sum)
            let mut y = vec![0.0f32; s.len()];
            normalise(&mut y, &x, &mean, &k, &beta, s, false);
            let sum: Vec<f32> = h.iter().zip(&y).map(|(&a, &b)| a + b).collect();
            let mut plain = vec![0.0f32; s.len()];
            crate::ops::activation::relu_forward(&mut plain, &sum).unwrap();
            let mut fused = vec![f32::NAN; s.len()];
            normalise_add_act::<f32, true>(&mut fused, &h, &x, &mean, &k, &beta, s);
            assert_eq!(plain, fused);
            assert!(plain.contains(&0.0) && plain.iter().any(|&v| v > 0.0));
        }
    }

    #[test]
    fn f32_with_large_mean_matches_f64() {
        // a channel at 1000 with spread 0.01: a one-pass f32 E[x^2] - E[x]^2 would be noise
        let mut r = Rand::new(6);
        let s = BnShape {
            n: 16,
            c: 2,
            hw: 64,
        };
        let x64: Vec<f64> = r
            .normal_vec(s.len())
            .iter()
            .map(|v| 1000.0 + 0.01 * v)
            .collect();
        let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        // the reference is the f64 pass on the f32-rounded input
        let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let (o64, _, rstd64, _, rv64) = train(&x64, &[1.0; 2], &[0.0; 2], BN_EPS, s);
        let (o32, _, rstd32, _, rv32) = train(&x32, &[1.0; 2], &[0.0; 2], BN_EPS, s);
        for c in 0..2 {
            assert!(
                (rstd32[c].f64() / rstd64[c] - 1.0).abs() < 1e-6,
                "{rstd32:?} {rstd64:?}"
            );
            assert!((rv32[c].f64() / rv64[c] - 1.0).abs() < 1e-6);
        }
        let worst = o32
            .iter()
            .zip(&o64)
            .map(|(a, b)| (a.f64() - b).abs())
            .fold(0.0, f64::max);
        // x - mean is exact in f32 here; what is left is 1000 * f32 ulp of the mean * rstd
        assert!(worst < 1e-2, "worst {worst}");
    }

    #[test]
    fn one_value_per_channel_is_refused_in_training() {
        let s = BnShape { n: 1, c: 3, hw: 1 };
        let mut out = [0.0f64; 3];
        let (mut mean, mut rstd, mut rm, mut rv) = ([0.0; 3], [0.0; 3], [0.0; 3], [1.0; 3]);
        let e = batchnorm_forward_train(
            &mut out, &mut mean, &mut rstd, &[1.0; 3], &[1.0; 3], &[0.0; 3], &mut rm, &mut rv, 0.1,
            BN_EPS, s,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParam {
                    op: "batchnorm",
                    ..
                }
            ),
            "{e}"
        );
        // nothing was touched
        assert!(rm == [0.0; 3] && rv == [1.0; 3]);
        // eval mode is fine with one value
        batchnorm_forward_eval(
            &mut out, &[1.0; 3], &[1.0; 3], &[0.0; 3], &rm, &rv, BN_EPS, s,
        )
        .unwrap();
        // bad momentum / eps
        let s = BnShape { n: 2, c: 3, hw: 1 };
        let mut out = [0.0f64; 6];
        for (m, eps) in [
            (1.5, BN_EPS),
            (-0.1, BN_EPS),
            (f64::NAN, BN_EPS),
            (0.1, -1.0),
            (0.1, f64::NAN),
        ] {
            let e = batchnorm_forward_train(
                &mut out, &mut mean, &mut rstd, &[1.0; 6], &[1.0; 3], &[0.0; 3], &mut rm, &mut rv,
                m, eps, s,
            )
            .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidParam {
                        op: "batchnorm",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn shape_errors_name_the_layer() {
        let s = BnShape { n: 2, c: 3, hw: 4 };
        let (big, c) = (vec![0.0f64; 24], vec![1.0f64; 3]);
        let (mut o, mut m, mut r, mut rm, mut rv) =
            (big.clone(), c.clone(), c.clone(), c.clone(), c.clone());
        let short = vec![0.0f64; 23];
        let check = |e: Error, what: &str| {
            let msg = e.to_string();
            assert!(msg.contains("batchnorm") && msg.contains(what), "{msg}");
        };
        check(
            batchnorm_forward_train(
                &mut o, &mut m, &mut r, &short, &c, &c, &mut rm, &mut rv, 0.1, BN_EPS, s,
            )
            .unwrap_err(),
            "input",
        );
        check(
            batchnorm_forward_train(
                &mut o,
                &mut m,
                &mut r,
                &big,
                &c[..2],
                &c,
                &mut rm,
                &mut rv,
                0.1,
                BN_EPS,
                s,
            )
            .unwrap_err(),
            "gamma",
        );
        check(
            batchnorm_forward_train(
                &mut o,
                &mut m,
                &mut r,
                &big,
                &c,
                &c,
                &mut rm[..2],
                &mut rv,
                0.1,
                BN_EPS,
                s,
            )
            .unwrap_err(),
            "running_mean",
        );
        check(
            batchnorm_forward_eval(&mut o, &big, &c, &c, &c, &c[..1], BN_EPS, s).unwrap_err(),
            "running_var",
        );
        check(
            batchnorm_forward_eval(&mut o[..3], &big, &c, &c, &c, &c, BN_EPS, s).unwrap_err(),
            "output",
        );
        let (mut dx, mut dg, mut db) = (big.clone(), c.clone(), c.clone());
        check(
            batchnorm_backward(&mut dx, &mut dg, &mut db, &short, &big, &c, &c, &c, s).unwrap_err(),
            "dout",
        );
        check(
            batchnorm_backward(&mut dx, &mut dg[..1], &mut db, &big, &big, &c, &c, &c, s)
                .unwrap_err(),
            "dgamma",
        );
        check(
            batchnorm_backward(&mut dx, &mut dg, &mut db, &big, &big, &c, &c[..2], &c, s)
                .unwrap_err(),
            "rstd",
        );
        check(
            batchnorm_backward_eval(
                &mut dx[..1],
                &mut dg,
                &mut db,
                &big,
                &big,
                &c,
                &c,
                &c,
                BN_EPS,
                s,
            )
            .unwrap_err(),
            "dinp",
        );
        check(
            batchnorm_backward_eval(
                &mut dx,
                &mut dg,
                &mut db,
                &big,
                &big,
                &c,
                &c,
                &c[..2],
                BN_EPS,
                s,
            )
            .unwrap_err(),
            "running_var",
        );
        // zero sizes are InvalidParam, not a panic
        let z = BnShape { n: 0, c: 3, hw: 4 };
        check(
            batchnorm_forward_eval(&mut o, &big, &c, &c, &c, &c, BN_EPS, z).unwrap_err(),
            "batch size",
        );
    }
}

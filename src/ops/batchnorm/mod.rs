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
use crate::ops::Accum;
use crate::scalar::Scalar;
use std::cell::RefCell;
use std::sync::Arc;

mod reduce;
use reduce::{block, block_sum, dy, per_block, per_channel, plane_sums};
pub use reduce::{bn_plane_sums, bn_relu_plane_sums};

/// One plane's `(sum dy, sum dy * (x - mean))`, the per-plane sums of a BN
/// backward's reduction without a ReLU, bitwise as
/// [`batchnorm_backward_coefs`] takes them itself: for a pass that writes
/// `dy` a plane at a time and sums it while the plane is in cache
/// (`ops::mix::add_relu_backward_sums`). `dy`, `x`: one plane (hw).
#[inline(always)]
pub fn bn_grad_plane_sums<T: Scalar>(dy: &[T], x: &[T], mean: T) -> (f64, f64) {
    plane_sums::<T, false>(dy, x, mean, T::zero(), T::zero())
}

/// PyTorch's defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

const OP: &str = "batchnorm";

/// From this many elements on, the passes run on the rayon pool.
const PAR_MIN: usize = 1 << 14;

/// Completes per-channel partial sums over the shards of one batch that
/// several processes hold (data-parallel training with sync-BN): replaces
/// every value by its sum over the processes (an MPI allreduce).
pub type ShardSum = Arc<dyn Fn(&mut [f64]) + Send + Sync>;

thread_local! {
    static SHARDS: RefCell<Option<ShardSum>> = const { RefCell::new(None) };
}

/// Runs `f` with the batch spread over several processes: every
/// training-mode BatchNorm that `f` runs on this thread takes its
/// statistics (and its backward's two sums) over the whole batch, not the
/// local shard, by completing each per-channel sum with `sum` -- the mean's
/// sums and the value count, then the centred sums of squares about the
/// global mean, then `sum dy` and `sum dy * xhat`. The result is the math
/// of one process holding the whole batch (up to the order of the f64
/// additions). `dgamma`/`dbeta` keep the *local* sums: the caller averages
/// parameter gradients over the processes as for any other parameter.
/// Every training-mode path goes through the two functions that consult
/// this (the statistics and the backward coefficients), fused or not.
pub fn across_shards<R>(sum: ShardSum, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ShardSum>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            SHARDS.with(|s| *s.borrow_mut() = prev);
        }
    }
    let _restore = Restore(SHARDS.with(|s| s.borrow_mut().replace(sum)));
    f()
}

/// The shard sum of an enclosing [`across_shards`] on this thread.
fn shard_sum() -> Option<ShardSum> {
    SHARDS.with(|s| s.borrow().clone())
}

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

/// A BN's affine parameters (C each).
#[derive(Clone, Copy, Debug)]
pub struct BnAffine<'a, T> {
    pub gamma: &'a [T],
    pub beta: &'a [T],
}

/// The running statistics (C each) that a training forward updates with
/// `momentum` (`running = (1 - m) running + m batch`, the unbiased
/// variance into `var`), and the normalisation's `eps`.
#[derive(Debug)]
pub struct BnRunning<'a, T> {
    pub mean: &'a mut [T],
    pub var: &'a mut [T],
    pub momentum: f64,
    pub eps: f64,
}

/// The batch statistics a training forward saves for its backward (C
/// each): `mean` and `rstd = 1 / sqrt(var + eps)`.
#[derive(Debug)]
pub struct BnBatchStats<'a, T> {
    pub mean: &'a mut [T],
    pub rstd: &'a mut [T],
}

/// What a training BN's backward reads of its forward: the input `inp`
/// (N, C, HW), the saved batch statistics and the parameters (C each;
/// `beta` is read only with a ReLU after the BN and may be empty without).
#[derive(Clone, Copy, Debug)]
pub struct BnSaved<'a, T> {
    pub inp: &'a [T],
    pub mean: &'a [T],
    pub rstd: &'a [T],
    pub gamma: &'a [T],
    pub beta: &'a [T],
}

/// The parameter gradients a BN backward adds to (`+=`, C each).
#[derive(Debug)]
pub struct BnParamGrads<'a, T> {
    pub dgamma: &'a mut [T],
    pub dbeta: &'a mut [T],
}

/// The argument structs built from positional parts, for the tests.
#[cfg(test)]
pub(crate) mod test_args {
    use super::{BnAffine, BnBatchStats, BnParamGrads, BnRunning, BnSaved};

    pub fn stats<'a, T>(mean: &'a mut [T], rstd: &'a mut [T]) -> BnBatchStats<'a, T> {
        BnBatchStats { mean, rstd }
    }
    pub fn aff<'a, T>(gamma: &'a [T], beta: &'a [T]) -> BnAffine<'a, T> {
        BnAffine { gamma, beta }
    }
    pub fn run<'a, T>(
        mean: &'a mut [T],
        var: &'a mut [T],
        momentum: f64,
        eps: f64,
    ) -> BnRunning<'a, T> {
        BnRunning {
            mean,
            var,
            momentum,
            eps,
        }
    }
    pub fn grads<'a, T>(dgamma: &'a mut [T], dbeta: &'a mut [T]) -> BnParamGrads<'a, T> {
        BnParamGrads { dgamma, dbeta }
    }
    pub fn saved<'a, T>(
        inp: &'a [T],
        mean: &'a [T],
        rstd: &'a [T],
        gamma: &'a [T],
        beta: &'a [T],
    ) -> BnSaved<'a, T> {
        BnSaved {
            inp,
            mean,
            rstd,
            gamma,
            beta,
        }
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

/// Batch mean and biased variance of every channel (two passes: the mean,
/// then the centred sum of squares; a channel's planes are re-read from
/// cache). Each plane is summed in the element type ([`block_sum`]), the
/// planes in f64.
///
/// With `stat_sums`, the first pass's per-plane sums (`stat_sums[n * C + c]`, as
/// [`bn_plane_sums`] computes them) are taken from there: a convolution
/// that just wrote `inp` sums each image's planes while they are in cache.
fn batch_stats<T: Scalar>(
    inp: &[T],
    s: BnShape,
    parallel: bool,
    stat_sums: Option<&[f64]>,
) -> Vec<(f64, f64)> {
    let m = s.m() as f64;
    per_channel(s.c, parallel, |c| {
        let mut sum = 0.0f64;
        for n in 0..s.n {
            sum += match stat_sums {
                Some(p) => p[n * s.c + c],
                None => block_sum(block(inp, s, n, c), |v| v),
            };
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

/// [`batch_stats`] over a batch spread over several processes
/// ([`across_shards`]): the same two passes, each pass's per-channel sums
/// completed by `sum` (with the value count after the first), so the
/// squares are centred on the global mean. Returns the statistics and the
/// global count `M`.
fn batch_stats_across<T: Scalar>(
    inp: &[T],
    s: BnShape,
    parallel: bool,
    stat_sums: Option<&[f64]>,
    sum: &ShardSum,
) -> (Vec<(f64, f64)>, usize) {
    let mut tot: Vec<f64> = per_channel(s.c, parallel, |c| {
        let mut t = 0.0f64;
        for n in 0..s.n {
            t += match stat_sums {
                Some(p) => p[n * s.c + c],
                None => block_sum(block(inp, s, n, c), |v| v),
            };
        }
        t
    });
    tot.push(s.m() as f64);
    sum(&mut tot);
    let m = tot[s.c];
    let mu: Vec<f64> = tot[..s.c].iter().map(|t| t / m).collect();
    let mut sq: Vec<f64> = per_channel(s.c, parallel, |c| {
        let mt = T::of(mu[c]);
        let mut q = 0.0f64;
        for n in 0..s.n {
            q += block_sum(block(inp, s, n, c), |v| {
                let d = v - mt;
                d * d
            });
        }
        q
    });
    sum(&mut sq);
    let stats = (0..s.c)
        .map(|c| {
            let e = mu[c] - T::of(mu[c]).f64();
            (mu[c], (sq[c] / m - e * e).max(0.0))
        })
        .collect();
    (stats, m as usize)
}

/// `out[n,c,p] = (inp[n,c,p] - mu[c]) * k[c] + beta[c]`, i.e. `k = gamma *
/// rstd`, then `max(0, .)` when `RELU` (the fused BN-ReLU forward).
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
pub fn batchnorm_forward_train<T: Scalar>(
    out: &mut [T], // (N, C, HW)
    stats: BnBatchStats<T>,
    inp: &[T], // (N, C, HW)
    p: BnAffine<T>,
    running: BnRunning<T>,
    s: BnShape,
) -> Result<()> {
    forward_train_act::<T, false>(out, stats, inp, p, running, s)
}

/// [`batchnorm_forward_train`], with `out = max(0, y)` when `RELU`.
pub(crate) fn forward_train_act<T: Scalar, const RELU: bool>(
    out: &mut [T], // (N, C, HW)
    stats: BnBatchStats<T>,
    inp: &[T], // (N, C, HW)
    p: BnAffine<T>,
    running: BnRunning<T>,
    s: BnShape,
) -> Result<()> {
    check_len(OP, "output", out, &[s.n, s.c, s.hw])?;
    let BnBatchStats { mean, rstd } = stats;
    let stats = BnBatchStats {
        mean: &mut *mean,
        rstd,
    };
    let k = train_stats(stats, inp, p, running, None, s)?;
    normalise_act::<T, RELU>(out, inp, mean, &k, p.beta, s, s.parallel());
    Ok(())
}

/// The statistics half of the training-mode forward: saves the batch
/// `mean` and `rstd`, updates the running statistics, and returns the
/// per-channel scale `k = gamma * rstd` of `y = (x - mean) * k + beta`, for
/// a caller that applies the normalisation inside its own pass
/// ([`normalise_add_act`]).
pub(crate) fn train_stats<T: Scalar>(
    stats: BnBatchStats<T>,
    inp: &[T], // (N, C, HW)
    p: BnAffine<T>,
    running: BnRunning<T>,
    stat_sums: Option<&[f64]>, // (N, C): bn_plane_sums of inp, when known
    s: BnShape,
) -> Result<Vec<T>> {
    let (BnBatchStats { mean, rstd }, BnAffine { gamma, beta }) = (stats, p);
    let BnRunning {
        mean: running_mean,
        var: running_var,
        momentum,
        eps,
    } = running;
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
    if let Some(p) = stat_sums {
        check_len(OP, "stat sums", p, &[s.n, s.c])?;
    }
    let (stats, m) = match shard_sum() {
        Some(sum) => batch_stats_across(inp, s, s.parallel(), stat_sums, &sum),
        None => (batch_stats(inp, s, s.parallel(), stat_sums), m),
    };
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
pub fn batchnorm_forward_eval<T: Scalar>(
    out: &mut [T], // (N, C, HW)
    inp: &[T],     // (N, C, HW)
    p: BnAffine<T>,
    running_mean: &[T], // (C)
    running_var: &[T],  // (C)
    eps: f64,
    s: BnShape,
) -> Result<()> {
    batchnorm_forward_eval_act::<T, false>(out, inp, p, (running_mean, running_var), eps, s)
}

/// [`batchnorm_forward_eval`], and with `RELU` the ReLU after it in the
/// same pass (parallel, as the normalisation is): `out = max(0, BN(inp))`,
/// the bits of the two passes (`v <= 0` sent to +0, NaN kept).
pub fn batchnorm_forward_eval_act<T: Scalar, const RELU: bool>(
    out: &mut [T],
    inp: &[T],
    p: BnAffine<T>,
    (running_mean, running_var): (&[T], &[T]),
    eps: f64,
    s: BnShape,
) -> Result<()> {
    let BnAffine { gamma, beta } = p;
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
    normalise_act::<T, RELU>(out, inp, running_mean, &k, beta, s, s.parallel());
    Ok(())
}

/// Backward of the training-mode forward, through the batch statistics (see
/// the module doc for the derivation):
/// `dx += gamma*rstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat))`,
/// `dgamma += sum(dy*xhat)`, `dbeta += sum(dy)`; all three accumulate (`+=`).
/// `mean` and `rstd` are the ones the forward saved.
pub fn batchnorm_backward<T: Scalar>(
    dinp: &mut [T], // (N, C, HW)
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)
    x: BnSaved<T>,
    s: BnShape,
) -> Result<()> {
    batchnorm_backward_to(Accum::Add, dinp, g, dout, x, s)
}

/// [`batchnorm_backward`] with `dinp` written as `accum` says
/// ([`Accum::Set`] overwrites it); `dgamma`, `dbeta` accumulate.
pub fn batchnorm_backward_to<T: Scalar>(
    accum: Accum,
    dinp: &mut [T], // (N, C, HW)
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)
    x: BnSaved<T>,
    s: BnShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "dinp", dinp, &[s.n, s.c, s.hw])?;
    check_len(OP, "dgamma", g.dgamma, &[s.c])?;
    check_len(OP, "dbeta", g.dbeta, &[s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", x.inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", x.mean, &[s.c])?;
    check_len(OP, "rstd", x.rstd, &[s.c])?;
    check_len(OP, "gamma", x.gamma, &[s.c])?;
    batchnorm_backward_unchecked(accum, dinp, g, dout, x, s, s.parallel());
    Ok(())
}

fn batchnorm_backward_unchecked<T: Scalar>(
    accum: Accum,
    dinp: &mut [T],
    g: BnParamGrads<T>,
    dout: &[T],
    x: BnSaved<T>,
    s: BnShape,
    par: bool,
) {
    let f = match accum {
        Accum::Add => backward_act::<T, false, false>,
        Accum::Set => backward_act::<T, false, true>,
    };
    f((dinp, &[]), g, dout, x, None, s, par)
}

/// The training-mode backward; with `RELU`, of BN followed by ReLU: the
/// gradient reaching the BN output is `dout * [y > 0]`, where the ReLU's
/// input `y = (x - mean) * (gamma * rstd) + beta` is recomputed from `inp`
/// by the forward's own expression (so the mask is bitwise the forward's,
/// and the ReLU output is never read; `beta` is ignored without `RELU`).
/// `dinp` is added to, or overwritten when `SET` ([`crate::ops::Accum::Set`]);
/// with `SET` and a non-empty `res`, `dinp = res + ...` (a residual unit's
/// shortcut gradient, written in the same pass instead of copied first).
pub(crate) fn backward_act<T: Scalar, const RELU: bool, const SET: bool>(
    (dinp, res): (&mut [T], &[T]),
    g: BnParamGrads<T>,
    dout: &[T],
    x: BnSaved<T>,
    grad_sums: Option<&[(f64, f64)]>,
    s: BnShape,
    par: bool,
) {
    let coef = backward_coefs::<T, RELU>(g, dout, x, grad_sums, s, par);
    dx_pass::<T, RELU, SET>((dinp, res), dout, x, &coef, s, par);
}

/// The reduction half of [`backward_act`]: adds `dgamma`, `dbeta` and
/// returns, per channel, `(k, a, b)` of `dx = k * (dy - a - (x - mu) * b)`.
/// With `grad_sums`, the per-plane sums are taken from there.
fn backward_coefs<T: Scalar, const RELU: bool>(
    g: BnParamGrads<T>,
    dout: &[T],
    x: BnSaved<T>,
    grad_sums: Option<&[(f64, f64)]>,
    s: BnShape,
    par: bool,
) -> Vec<(T, T, T)> {
    let BnParamGrads { dgamma, dbeta } = g;
    let BnSaved {
        inp,
        mean,
        rstd,
        gamma,
        beta,
    } = x;
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
            let (a, b) = match grad_sums {
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
    // (across shards: the parameter gradients take the local sums, the
    // input gradient the sums over the whole batch)
    let global = shard_sum().map(|sum| {
        let mut v: Vec<f64> = sums.iter().flat_map(|&(a, b)| [a, b]).collect();
        v.push(m);
        sum(&mut v);
        v
    });
    let mut coef = Vec::with_capacity(s.c);
    for (c, &(sdy, sdyx)) in sums.iter().enumerate() {
        dbeta[c] += T::of(sdy);
        dgamma[c] += T::of(sdyx);
        let (sdy, sdyx, m) = match &global {
            Some(v) => (v[2 * c], v[2 * c + 1], v[2 * s.c]),
            None => (sdy, sdyx, m),
        };
        let r = rstd[c].f64();
        coef.push((k[c], T::of(sdy / m), T::of(r * sdyx / m)));
    }
    coef
}

/// The elementwise half of [`backward_act`]: `dinp (+)= k * (dy - a - (x -
/// mu) * b)` (`dinp = res + ...` with a non-empty `res` when `SET`).
fn dx_pass<T: Scalar, const RELU: bool, const SET: bool>(
    (dinp, res): (&mut [T], &[T]),
    dout: &[T],
    x: BnSaved<T>,
    coef: &[(T, T, T)],
    s: BnShape,
    par: bool,
) {
    let BnSaved {
        inp, mean, beta, ..
    } = x;
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

/// The reduction half of the training-mode backward of BN (with `relu`:
/// of BN followed by ReLU, the mask recomputed from `inp`): adds `dgamma`
/// and `dbeta`, and returns per channel `(k, a, b)` such that
/// `dinp = k * (dy - a - (inp - mean) * b)` (see [`batchnorm_backward_dx`];
/// `dy` is `dout` masked by the ReLU). The two halves are bitwise
/// [`batchnorm_backward_to`] (`fused::bn_relu_backward_to`) with
/// [`Accum::Set`].
pub fn batchnorm_backward_coefs<T: Scalar>(
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)
    x: BnSaved<T>,
    relu: bool,
    grad_sums: Option<&[(f64, f64)]>, // (N, C), from bn_relu_plane_sums (with the ReLU)
    s: BnShape,
) -> Result<Vec<(T, T, T)>> {
    s.validate()?;
    check_len(OP, "dgamma", g.dgamma, &[s.c])?;
    check_len(OP, "dbeta", g.dbeta, &[s.c])?;
    check_len(OP, "dout", dout, &[s.n, s.c, s.hw])?;
    check_len(OP, "input", x.inp, &[s.n, s.c, s.hw])?;
    check_len(OP, "mean", x.mean, &[s.c])?;
    check_len(OP, "rstd", x.rstd, &[s.c])?;
    check_len(OP, "gamma", x.gamma, &[s.c])?;
    let par = s.parallel();
    if let Some(p) = grad_sums {
        check_len(OP, "grad sums", p, &[s.n, s.c])?;
    }
    Ok(if relu {
        check_len(OP, "beta", x.beta, &[s.c])?;
        backward_coefs::<T, true>(g, dout, x, grad_sums, s, par)
    } else {
        backward_coefs::<T, false>(g, dout, x, grad_sums, s, par)
    })
}

/// The elementwise half: `dinp = k * (dy - a - (inp - mean) * b)` with
/// `coef` from [`batchnorm_backward_coefs`] (`dinp` overwritten).
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
            let x = BnSaved {
                inp,
                mean,
                rstd: &[],
                gamma: &[],
                beta,
            };
            dx_pass::<T, true, true>((dinp, &[]), dout, x, coef, s, par)
        }
        None => {
            let x = BnSaved {
                inp,
                mean,
                rstd: &[],
                gamma: &[],
                beta: &[],
            };
            dx_pass::<T, false, true>((dinp, &[]), dout, x, coef, s, par)
        }
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
mod tests;

//! Finite-difference gradient checking, in f64.
//!
//! A layer is checked by turning it into a scalar function: with a fixed
//! random tensor `r` of the output's shape, `L = sum(out * r)`, so
//! `dL/dout = r` exactly. The layer's backward, fed `dout = r`, must then
//! give the same gradient as central differences
//! `(L(x + eps) - L(x - eps)) / (2 eps)` for every element of every input and
//! every parameter.
//!
//! Error measure: for each element, `|a - n| / max(|a|, |n|, floor)` where
//! `floor = 1e-3 * max_j |n_j|` over the same tensor (so elements a thousand
//! times smaller than the largest are judged against 1e-3 of it rather than
//! against their own rounding noise). The result is the maximum over all
//! elements of all tensors.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Step used for central differences in f64: truncation error ~eps^2,
/// round-off ~1e-16/eps; both far below 1e-8 for smooth layers.
pub const EPS: f64 = 1e-5;

/// A small seeded RNG for tests and checks.
pub struct Rand(pub ChaCha8Rng);

impl Rand {
    pub fn new(seed: u64) -> Self {
        Rand(ChaCha8Rng::seed_from_u64(seed))
    }
    /// Standard normal samples.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.0.sample(StandardNormal)).collect()
    }
    /// Uniform samples in [lo, hi).
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.0.gen_range(lo..hi)).collect()
    }
    /// Normal samples pushed at least `gap` away from zero (for inputs of
    /// kinks such as ReLU, where finite differences are meaningless).
    pub fn away_from_zero(&mut self, n: usize, gap: f64) -> Vec<f64> {
        self.normal_vec(n)
            .into_iter()
            .map(|v| {
                if v.abs() < gap {
                    v.signum() * gap + v
                } else {
                    v
                }
            })
            .collect()
    }
    pub fn usize_below(&mut self, n: usize) -> usize {
        self.0.gen_range(0..n)
    }
}

/// Max relative error between an analytic and a numeric gradient (see the
/// module doc for the measure).
pub fn max_rel_err(analytic: &[f64], numeric: &[f64]) -> f64 {
    max_rel_err_atol(analytic, numeric, 1e-300)
}

/// [`max_rel_err`] with an absolute floor `atol` as well: entries below
/// `atol` are compared absolutely. For tensors that are analytically zero
/// (a bias feeding a BatchNorm, whose gradient cancels exactly), where both
/// sides are rounding noise.
pub fn max_rel_err_atol(analytic: &[f64], numeric: &[f64], atol: f64) -> f64 {
    assert_eq!(analytic.len(), numeric.len());
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(atol);
    analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).abs() / a.abs().max(n.abs()).max(floor))
        .fold(0.0, f64::max)
}

/// Central-difference gradient of `f` with respect to `xs[which]`.
pub fn numeric_grad(
    xs: &mut [Vec<f64>],
    which: usize,
    eps: f64,
    mut f: impl FnMut(&[Vec<f64>]) -> f64,
) -> Vec<f64> {
    let mut g = vec![0.0; xs[which].len()];
    for i in 0..g.len() {
        let orig = xs[which][i];
        xs[which][i] = orig + eps;
        let lp = f(xs);
        xs[which][i] = orig - eps;
        let lm = f(xs);
        xs[which][i] = orig;
        g[i] = (lp - lm) / (2.0 * eps);
    }
    g
}

/// Check one layer: `forward(inputs, out)` computes the output from the
/// tensors in `inputs` (inputs and parameters alike); `backward(inputs,
/// dout, grads)` must *accumulate* (`+=`) the gradient of each input into
/// the matching `grads` entry. The grads are pre-filled with 1.0 and the 1.0
/// is subtracted afterwards, so a backward that overwrites instead of
/// accumulating fails the check. Returns the max relative error over all
/// tensors (see [`max_rel_err`]).
pub fn check_layer(
    inputs: &mut [Vec<f64>],
    out_len: usize,
    mut forward: impl FnMut(&[Vec<f64>], &mut [f64]),
    mut backward: impl FnMut(&[Vec<f64>], &[f64], &mut [Vec<f64>]),
    rng: &mut Rand,
) -> f64 {
    let r = rng.normal_vec(out_len);
    let mut out = vec![0.0; out_len];
    forward(inputs, &mut out);
    let mut grads: Vec<Vec<f64>> = inputs.iter().map(|x| vec![1.0; x.len()]).collect();
    backward(inputs, &r, &mut grads);
    for g in grads.iter_mut() {
        g.iter_mut().for_each(|v| *v -= 1.0);
    }
    let mut worst = 0.0f64;
    for (which, analytic) in grads.iter().enumerate() {
        let numeric = numeric_grad(inputs, which, EPS, |xs| {
            let mut o = vec![0.0; out_len];
            forward(xs, &mut o);
            o.iter().zip(&r).map(|(a, b)| a * b).sum()
        });
        worst = worst.max(max_rel_err(analytic, &numeric));
    }
    worst
}

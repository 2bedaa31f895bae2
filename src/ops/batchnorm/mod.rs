//! Batch normalisation over (N, C, HW) -- BatchNorm1d is HW = 1.
//! (STUB: signatures fixed; the implementation lands with the BN work.)

use crate::error::Result;
use crate::scalar::Scalar;

/// PyTorch's defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// Sizes: N samples, C channels, HW positions per channel (1 for 1d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

/// Training mode: normalise with the batch statistics, save `mean` and
/// `rstd` (C) for the backward, update the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_train<T: Scalar>(
    _out: &mut [T],
    _mean: &mut [T],
    _rstd: &mut [T],
    _inp: &[T],
    _gamma: &[T],
    _beta: &[T],
    _running_mean: &mut [T],
    _running_var: &mut [T],
    _momentum: f64,
    _eps: f64,
    _s: BnShape,
) -> Result<()> {
    todo!()
}

/// Eval mode: normalise with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_eval<T: Scalar>(
    _out: &mut [T],
    _inp: &[T],
    _gamma: &[T],
    _beta: &[T],
    _running_mean: &[T],
    _running_var: &[T],
    _eps: f64,
    _s: BnShape,
) -> Result<()> {
    todo!()
}

/// Backward of the training-mode forward, through the batch statistics;
/// `dinp`, `dgamma`, `dbeta` accumulate (`+=`).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Scalar>(
    _dinp: &mut [T],
    _dgamma: &mut [T],
    _dbeta: &mut [T],
    _dout: &[T],
    _inp: &[T],
    _mean: &[T],
    _rstd: &[T],
    _gamma: &[T],
    _s: BnShape,
) -> Result<()> {
    todo!()
}

//! Inverted dropout. (STUB: signatures fixed.)

use crate::error::Result;
use crate::scalar::Scalar;
use rand::Rng;

/// Training: `mask[i] = 0` with probability p, else `1/(1-p)`;
/// `out = inp * mask`. Eval (`train == false`): `out = inp`, mask all ones.
pub fn dropout_forward<T: Scalar, R: Rng>(
    _out: &mut [T],
    _mask: &mut [T],
    _inp: &[T],
    _p: f64,
    _train: bool,
    _rng: &mut R,
) -> Result<()> {
    todo!()
}

/// `dinp += dout * mask`.
pub fn dropout_backward<T: Scalar>(_dinp: &mut [T], _dout: &[T], _mask: &[T]) -> Result<()> {
    todo!()
}

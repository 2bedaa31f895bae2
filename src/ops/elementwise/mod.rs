//! Scale by a constant, elementwise add and multiply, per-channel bias add.
//! (STUB: signatures fixed.)

use crate::error::Result;
use crate::scalar::Scalar;

/// `out = a * inp`.
pub fn scale_forward<T: Scalar>(_out: &mut [T], _inp: &[T], _a: T) -> Result<()> {
    todo!()
}
/// `dinp += a * dout`.
pub fn scale_backward<T: Scalar>(_dinp: &mut [T], _dout: &[T], _a: T) -> Result<()> {
    todo!()
}
/// `out = a + b`.
pub fn add_forward<T: Scalar>(_out: &mut [T], _a: &[T], _b: &[T]) -> Result<()> {
    todo!()
}
/// `da += dout; db += dout`.
pub fn add_backward<T: Scalar>(_da: &mut [T], _db: &mut [T], _dout: &[T]) -> Result<()> {
    todo!()
}
/// `out = a * b` (elementwise).
pub fn mul_forward<T: Scalar>(_out: &mut [T], _a: &[T], _b: &[T]) -> Result<()> {
    todo!()
}
/// `da += dout * b; db += dout * a`.
pub fn mul_backward<T: Scalar>(
    _da: &mut [T],
    _db: &mut [T],
    _dout: &[T],
    _a: &[T],
    _b: &[T],
) -> Result<()> {
    todo!()
}
/// In place: `x[n, c, p] += bias[c]` for x (N, C, HW).
pub fn bias_add_forward<T: Scalar>(
    _x: &mut [T],
    _bias: &[T],
    _n: usize,
    _c: usize,
    _hw: usize,
) -> Result<()> {
    todo!()
}
/// `dbias[c] += sum_{n,p} dout[n, c, p]`.
pub fn bias_add_backward<T: Scalar>(
    _dbias: &mut [T],
    _dout: &[T],
    _n: usize,
    _c: usize,
    _hw: usize,
) -> Result<()> {
    todo!()
}

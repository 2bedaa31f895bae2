//! Global average pooling (N, C, HW) -> (N, C). (STUB: signatures fixed.)

use crate::error::Result;
use crate::scalar::Scalar;

pub fn avgpool_forward<T: Scalar>(
    _out: &mut [T],
    _inp: &[T],
    _n: usize,
    _c: usize,
    _hw: usize,
) -> Result<()> {
    todo!()
}

/// `dinp[n,c,p] += dout[n,c] / HW`.
pub fn avgpool_backward<T: Scalar>(
    _dinp: &mut [T],
    _dout: &[T],
    _n: usize,
    _c: usize,
    _hw: usize,
) -> Result<()> {
    todo!()
}

//! 2-D convolution, no bias, any kernel size, stride and zero padding.
//! (STUB: signatures fixed; the implementation lands with the conv work.)

use crate::error::Result;
use crate::scalar::Scalar;

/// Sizes of one convolution applied to a batch (NCHW input, OIHW weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dShape {
    /// Output height: `(h + 2 pad - kh) / stride + 1`.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
}

/// Scratch space reused across calls (im2col columns, per-thread dW).
#[derive(Default)]
pub struct ConvWorkspace<T> {
    _bufs: Vec<Vec<T>>,
}

/// `out = conv(inp, weight)`; out (N, cout, oh, ow) is overwritten.
pub fn conv2d_forward<T: Scalar>(
    _out: &mut [T],
    _inp: &[T],
    _weight: &[T],
    _s: &Conv2dShape,
    _ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    todo!("conv2d_forward")
}

/// Backward of [`conv2d_forward`]; `dinp` and `dweight` accumulate (`+=`).
pub fn conv2d_backward<T: Scalar>(
    _dinp: Option<&mut [T]>,
    _dweight: &mut [T],
    _dout: &[T],
    _inp: &[T],
    _weight: &[T],
    _s: &Conv2dShape,
    _ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    todo!("conv2d_backward")
}

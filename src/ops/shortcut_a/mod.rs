//! The option-A shortcut: strided subsampling plus zero-padded channels.
//! (STUB: signatures fixed.)

use crate::error::Result;
use crate::scalar::Scalar;

/// Input (N, cin, h, w) -> output (N, cout, ceil(h/stride), ceil(w/stride)),
/// with `cout >= cin`; input channel c lands in output channel
/// `c + (cout - cin) / 2` (PyTorch's `F.pad(x, (.., pad//2, pad - pad//2))`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortcutAShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub stride: usize,
}

impl ShortcutAShape {
    pub fn oh(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn ow(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
}

pub fn shortcut_a_forward<T: Scalar>(
    _out: &mut [T],
    _inp: &[T],
    _s: &ShortcutAShape,
) -> Result<()> {
    todo!()
}

/// `dinp += ` the subsampled, channel-cropped `dout`.
pub fn shortcut_a_backward<T: Scalar>(
    _dinp: &mut [T],
    _dout: &[T],
    _s: &ShortcutAShape,
) -> Result<()> {
    todo!()
}

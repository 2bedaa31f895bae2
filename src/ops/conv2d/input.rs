//! What a convolution reads: its input ([`ConvInput`]: a stored tensor,
//! or a training BN-ReLU's output that is never stored) and its output
//! gradient ([`ConvGradOut`]: a stored tensor, or a BN's input gradient
//! that is never stored). The direct kernels apply either while they copy
//! into their padded planes; the im2col path writes it out first.

use super::{direct, Conv2dShape, OP};
use crate::error::{check_len, Result};
use crate::ops::batchnorm::{batchnorm_backward_dx, normalise_act, BnShape};
use crate::scalar::Scalar;

/// What a convolution reads as its input (N, cin, h, w).
#[derive(Clone, Copy, Debug)]
pub enum ConvInput<'a, T> {
    /// A stored tensor.
    Plain(&'a [T]),
    /// The output of a training-mode BN-ReLU, never stored:
    /// `inp[n, c, i] = max(0, (x[n, c, i] - mean[c]) * k[c] + beta[c])`, the
    /// same expression (and so the same bits) as `ops::fused`'s forward.
    /// The direct kernels apply it while they copy the input into their
    /// padded planes; the im2col path writes it out into the workspace.
    BnRelu {
        x: &'a [T],
        mean: &'a [T],
        k: &'a [T],
        beta: &'a [T],
    },
}

impl<'a, T: Scalar> ConvInput<'a, T> {
    pub(super) fn check(&self, s: &Conv2dShape) -> Result<()> {
        match *self {
            ConvInput::Plain(x) => s.check_input("input", x),
            ConvInput::BnRelu { x, mean, k, beta } => {
                s.check_input("BN input", x)?;
                check_len(OP, "BN mean", mean, &[s.cin])?;
                check_len(OP, "BN scale", k, &[s.cin])?;
                check_len(OP, "BN shift", beta, &[s.cin])
            }
        }
    }

    /// The input as a stored tensor: itself, or written into `buf`.
    pub(super) fn stored<'b>(&self, buf: &'b mut Vec<T>, s: &Conv2dShape) -> &'b [T]
    where
        'a: 'b,
    {
        match *self {
            ConvInput::Plain(x) => x,
            ConvInput::BnRelu { x, mean, k, beta } => {
                buf.clear();
                buf.resize(x.len(), T::zero());
                let bs = BnShape {
                    n: s.n,
                    c: s.cin,
                    hw: s.h * s.w,
                };
                normalise_act::<T, true>(buf, x, mean, k, beta, bs, bs.parallel());
                buf
            }
        }
    }

    /// The stored tensor the input is read from: itself, or the BN-ReLU's
    /// input `x`.
    pub(super) fn tensor(&self) -> &'a [T] {
        match *self {
            ConvInput::Plain(x) | ConvInput::BnRelu { x, .. } => x,
        }
    }

    /// The same input over f32 (`None` unless `T` is f32).
    pub(super) fn as_f32(&self) -> Option<ConvInput<'a, f32>> {
        Some(match *self {
            ConvInput::Plain(x) => ConvInput::Plain(direct::as_f32(x)?),
            ConvInput::BnRelu { x, mean, k, beta } => ConvInput::BnRelu {
                x: direct::as_f32(x)?,
                mean: direct::as_f32(mean)?,
                k: direct::as_f32(k)?,
                beta: direct::as_f32(beta)?,
            },
        })
    }
}

/// What a convolution's backward reads as `dL/d(output)` (N, cout, oh, ow).
#[derive(Clone, Copy, Debug)]
pub enum ConvGradOut<'a, T> {
    /// A stored gradient.
    Plain(&'a [T]),
    /// The input gradient of a training-mode BN that reads this
    /// convolution's output `x` (followed by a ReLU when `beta` is given),
    /// never stored: `dx = k * (dy' - a - (x - mean) * b)` with
    /// `(k, a, b) = coef[c]` from `batchnorm::batchnorm_backward_coefs` and
    /// `dy'` = `dy`, masked where `(x - mean) * k + beta <= 0` with the
    /// ReLU. The same expression (so the same bits) as the BN's own pass.
    Bn {
        dy: &'a [T],
        x: &'a [T],
        mean: &'a [T],
        beta: Option<&'a [T]>,
        coef: &'a [(T, T, T)],
    },
}

impl<'a, T: Scalar> ConvGradOut<'a, T> {
    pub(super) fn check(&self, s: &Conv2dShape) -> Result<()> {
        match *self {
            ConvGradOut::Plain(d) => s.check_output("dout", d),
            ConvGradOut::Bn {
                dy,
                x,
                mean,
                beta,
                coef,
            } => {
                s.check_output("BN dout", dy)?;
                s.check_output("BN input", x)?;
                check_len(OP, "BN mean", mean, &[s.cout])?;
                check_len(OP, "BN coefficients", coef, &[s.cout])?;
                if let Some(b) = beta {
                    check_len(OP, "BN shift", b, &[s.cout])?;
                }
                Ok(())
            }
        }
    }

    /// The gradient as a stored tensor: itself, or written into `buf`.
    pub(super) fn stored<'b>(&self, buf: &'b mut Vec<T>, s: &Conv2dShape) -> &'b [T]
    where
        'a: 'b,
    {
        match *self {
            ConvGradOut::Plain(d) => d,
            ConvGradOut::Bn {
                dy,
                x,
                mean,
                beta,
                coef,
            } => {
                buf.clear();
                buf.resize(dy.len(), T::zero());
                let bs = BnShape {
                    n: s.n,
                    c: s.cout,
                    hw: s.oh() * s.ow(),
                };
                batchnorm_backward_dx(buf, dy, x, mean, beta, coef, bs)
                    .expect("shapes checked by ConvGradOut::check");
                buf
            }
        }
    }

    /// The same gradient over f32 (`None` unless `T` is f32).
    pub(super) fn as_f32(&self) -> Option<ConvGradOut<'a, f32>> {
        Some(match *self {
            ConvGradOut::Plain(d) => ConvGradOut::Plain(direct::as_f32(d)?),
            ConvGradOut::Bn {
                dy,
                x,
                mean,
                beta,
                coef,
            } => ConvGradOut::Bn {
                dy: direct::as_f32(dy)?,
                x: direct::as_f32(x)?,
                mean: direct::as_f32(mean)?,
                beta: match beta {
                    Some(b) => Some(direct::as_f32(b)?),
                    None => None,
                },
                coef: direct::as_f32_tuples(coef)?,
            },
        })
    }
}

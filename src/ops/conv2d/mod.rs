//! 2-D convolution (cross-correlation, as PyTorch's `Conv2d`), no bias, any
//! kernel size, stride `>= 1` and zero padding `pad` on all four sides.
//!
//! Forward, NCHW input, OIHW weight, with `inp` read as zero outside the image:
//!
//! ```text
//! out[n, o, y, x] = sum_{c, i, j} w[o, c, i, j] * inp[n, c, y*stride + i - pad, x*stride + j - pad]
//!
//! inp (N, cin, h, w), w (cout, cin, kh, kw), out (N, cout, oh, ow)
//! oh = floor((h + 2 pad - kh) / stride) + 1,  ow = floor((w + 2 pad - kw) / stride) + 1
//! ```
//!
//! As a matrix product (im2col), per image n: gather the patches into the
//! column matrix `col_n` (cin*kh*kw, oh*ow),
//!
//! ```text
//! col_n[(c, i, j), (y, x)] = inp[n, c, y*stride + i - pad, x*stride + j - pad]   (0 in the padding)
//! out_n = W · col_n        W = w viewed as (cout, cin*kh*kw), out_n = out[n] as (cout, oh*ow)
//! ```
//!
//! Backward, with `dout = dL/dout`:
//!
//! ```text
//! d out[n,o,y,x] / d w[o,c,i,j] = col_n[(c,i,j), (y,x)]
//!   =>  dw[o, (c,i,j)] += sum_n sum_{y,x} dout[n,o,y,x] * col_n[(c,i,j), (y,x)]
//!   =>  dW += sum_n dout_n · col_n^T
//!
//! d out[n,o,y,x] / d col_n[(c,i,j), (y,x)] = W[o, (c,i,j)]
//!   =>  dcol_n = W^T · dout_n
//! and col_n[(c,i,j),(y,x)] is a copy of inp[n, c, y*stride+i-pad, x*stride+j-pad] (or a
//! constant 0 in the padding), so by the chain rule each input element collects the
//! gradient of every column entry that copied it (col2im, the adjoint of im2col):
//!   =>  dinp[n, c, a, b] += sum over (i, j, y, x) with y*stride+i-pad = a, x*stride+j-pad = b
//!                           of dcol_n[(c,i,j), (y,x)]
//! ```
//!
//! The three GEMMs, per image (K = cin*kh*kw, P = oh*ow):
//!
//! ```text
//! forward:      (cout, K) x (K, P)    -> (cout, P)    out_n  = W · col_n
//! input grad:   (K, cout) x (cout, P) -> (K, P)       dcol_n = W^T · dout_n, then col2im
//! weight grad:  (cout, P) x (P, K)    -> (cout, K)    dW    += dout_n · col_n^T
//! ```
//!
//! A 1x1, stride-1, unpadded convolution needs no im2col: the image
//! (cin, h*w) already is its column matrix, and col2im is the identity.
//! The kernels (and the threading over images) live in `cpu.rs`.

mod cpu;
mod direct;

use crate::error::{check_len, check_nonzero, Error, Result};
use crate::ops::batchnorm::{batchnorm_backward_dx, bn_relu_plane_sums, normalise_act, BnShape};
use crate::ops::par::{par_pieces, par_zero};
use crate::ops::Accum;
use crate::scalar::Scalar;

const OP: &str = "conv2d";

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
    /// Output height: `(h + 2 pad - kh) / stride + 1`. Only meaningful for a
    /// shape that passed [`Conv2dShape::validate`].
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width. Only meaningful for a validated shape.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }

    /// Multiply-adds of one pass (forward, input grad or weight grad are
    /// all the same count): `N*cout*oh*ow*cin*kh*kw`; FLOPs are twice this.
    pub fn macs(&self) -> usize {
        self.n * self.cout * self.oh() * self.ow() * self.cin * self.kh * self.kw
    }

    /// Checks every size: non-zero, stride >= 1, the kernel fits the padded
    /// input, and no buffer size overflows `usize`.
    pub fn validate(&self) -> Result<()> {
        check_nonzero(OP, "batch size", self.n)?;
        check_nonzero(OP, "in_channels", self.cin)?;
        check_nonzero(OP, "input height", self.h)?;
        check_nonzero(OP, "input width", self.w)?;
        check_nonzero(OP, "out_channels", self.cout)?;
        check_nonzero(OP, "kernel height", self.kh)?;
        check_nonzero(OP, "kernel width", self.kw)?;
        check_nonzero(OP, "stride", self.stride)?;
        let overflow = || Error::InvalidParam {
            op: OP,
            msg: format!("sizes overflow: {self:?}"),
        };
        let padded = |len: usize| self.pad.checked_mul(2).and_then(|p| p.checked_add(len));
        for (what, len, k) in [("height", self.h, self.kh), ("width", self.w, self.kw)] {
            let p = padded(len).ok_or_else(overflow)?;
            if k > p {
                return Err(Error::InvalidParam {
                    op: OP,
                    msg: format!(
                        "kernel {what} {k} exceeds the padded input {what} {p} ({len} + 2*pad {})",
                        self.pad
                    ),
                });
            }
        }
        let prod = |xs: &[usize]| xs.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let (oh, ow) = (self.oh(), self.ow());
        let k = prod(&[self.cin, self.kh, self.kw]).ok_or_else(overflow)?;
        for dims in [
            &[self.n, self.cin, self.h, self.w][..],
            &[self.n, self.cout, oh, ow],
            &[self.cout, k],
            &[k, oh, ow],
            &[self.n, self.cout, oh, ow, k],
        ] {
            prod(dims).ok_or_else(overflow)?;
        }
        Ok(())
    }

    fn check_input(&self, what: &'static str, buf: &[impl Sized]) -> Result<()> {
        check_len(OP, what, buf, &[self.n, self.cin, self.h, self.w])
    }
    fn check_output(&self, what: &'static str, buf: &[impl Sized]) -> Result<()> {
        check_len(OP, what, buf, &[self.n, self.cout, self.oh(), self.ow()])
    }
    fn check_weight(&self, what: &'static str, buf: &[impl Sized]) -> Result<()> {
        check_len(OP, what, buf, &[self.cout, self.cin, self.kh, self.kw])
    }
}

/// Scratch space reused across calls: per parallel chunk of the batch, the
/// im2col columns of one image and a partial weight gradient. Grown on
/// demand; after the first call of the largest shape, no allocation.
pub struct ConvWorkspace<T> {
    chunks: Vec<cpu::Scratch<T>>,
    /// the direct 3x3 path's buffers (f32 only)
    direct: direct::Workspace,
    /// a [`ConvInput::BnRelu`] input written out, for the im2col path
    act: Vec<T>,
    /// a [`ConvGradOut::Bn`] gradient written out, for the im2col path
    grad: Vec<T>,
}

impl<T> Default for ConvWorkspace<T> {
    fn default() -> Self {
        ConvWorkspace {
            chunks: Vec::new(),
            direct: direct::Workspace::default(),
            act: Vec::new(),
            grad: Vec::new(),
        }
    }
}

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
    fn check(&self, s: &Conv2dShape) -> Result<()> {
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
    fn stored<'b>(&self, buf: &'b mut Vec<T>, s: &Conv2dShape) -> &'b [T]
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

    /// The same input over f32 (`None` unless `T` is f32).
    fn as_f32(&self) -> Option<ConvInput<'a, f32>> {
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
    fn check(&self, s: &Conv2dShape) -> Result<()> {
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
    fn stored<'b>(&self, buf: &'b mut Vec<T>, s: &Conv2dShape) -> &'b [T]
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
    fn as_f32(&self) -> Option<ConvGradOut<'a, f32>> {
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

/// Whether a [`ConvInput::BnRelu`] input costs no pass of its own for `s`:
/// both passes that read the input (forward, weight gradient) take the
/// direct path, which normalises while it pads. Otherwise the input is
/// written out in each of them.
pub fn conv2d_fuses_input_act<T: 'static>(s: &Conv2dShape) -> bool {
    direct::use_for_forward::<T>(s) && direct::use_for_weight::<T>(s)
}

/// Whether a [`ConvGradOut::Bn`] gradient costs no pass of its own for `s`:
/// both passes that read the output gradient (input and weight gradient)
/// take the direct path, which computes it while it pads.
pub fn conv2d_fuses_grad_out<T: 'static>(s: &Conv2dShape) -> bool {
    direct::use_for_input_grad::<T>(s) && direct::use_for_weight::<T>(s)
}

/// `out = conv(inp, weight)`; out (N, cout, oh, ow) is overwritten.
pub fn conv2d_forward<T: Scalar>(
    out: &mut [T], // (N, cout, oh, ow)
    inp: &[T],     // (N, cin, h, w)
    weight: &[T],  // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    conv2d_forward_from(out, None, ConvInput::Plain(inp), weight, s, ws)
}

/// [`conv2d_forward`] of any [`ConvInput`]; with a residual `res` (N, cout,
/// oh, ow), `out = res + conv(inp, weight)` (a residual unit's addition, in
/// the direct kernels' own store: `res[i] + sum`, the same bits as adding
/// afterwards).
pub fn conv2d_forward_from<T: Scalar>(
    out: &mut [T],     // (N, cout, oh, ow)
    res: Option<&[T]>, // (N, cout, oh, ow)
    inp: ConvInput<T>,
    weight: &[T], // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    s.validate()?;
    s.check_output("output", out)?;
    if let Some(r) = res {
        s.check_output("residual", r)?;
    }
    inp.check(s)?;
    s.check_weight("weight", weight)?;
    if direct::use_for_forward::<T>(s) {
        let r32 = res.map(|r| direct::as_f32(r));
        if let (Some(out), Some(inp), Some(weight), None | Some(Some(_))) = (
            direct::as_f32_mut(out),
            inp.as_f32(),
            direct::as_f32(weight),
            r32,
        ) {
            direct::forward(out, r32.flatten(), inp, weight, s, &mut ws.direct);
            return Ok(());
        }
    }
    let inp = inp.stored(&mut ws.act, s);
    cpu::forward(out, inp, weight, s, &mut ws.chunks);
    if let Some(r) = res {
        par_pieces(out, |at, o| {
            for (y, &a) in o.iter_mut().zip(&r[at..]) {
                *y = a + *y;
            }
        });
    }
    Ok(())
}

/// Backward of [`conv2d_forward`]; `dinp` and `dweight` accumulate (`+=`).
/// `dinp` may be `None` when nobody needs the input gradient (the first
/// layer). All buffers are checked before either gradient is touched.
pub fn conv2d_backward<T: Scalar>(
    dinp: Option<&mut [T]>, // (N, cin, h, w)
    dweight: &mut [T],      // (cout, cin, kh, kw)
    dout: &[T],             // (N, cout, oh, ow)
    inp: &[T],              // (N, cin, h, w)
    weight: &[T],           // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    conv2d_backward_to(Accum::Add, dinp, dweight, dout, inp, weight, s, ws)
}

/// [`conv2d_backward`] with the input gradient written as `accum` says:
/// [`Accum::Set`] overwrites `dinp` (the direct kernels write it instead of
/// adding; the im2col path zeroes it first), `dweight` always accumulates.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_to<T: Scalar>(
    accum: Accum,
    dinp: Option<&mut [T]>, // (N, cin, h, w)
    dweight: &mut [T],      // (cout, cin, kh, kw)
    dout: &[T],             // (N, cout, oh, ow)
    inp: &[T],              // (N, cin, h, w)
    weight: &[T],           // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    let (dout, inp) = (ConvGradOut::Plain(dout), ConvInput::Plain(inp));
    conv2d_backward_from(accum, None, dinp, dweight, dout, inp, weight, s, ws, None)
}

/// [`conv2d_backward_to`] of any [`ConvInput`] (the forward's) and any
/// [`ConvGradOut`].
///
/// With a residual `res` (N, cin, h, w), `dinp = res + (its gradient)`
/// (`accum` must then be [`Accum::Set`]): a residual unit's shortcut term
/// joining the first conv's input gradient in the direct kernels' store.
///
/// With `planes` (N, cin) and a [`ConvInput::BnRelu`] input (`dinp` given,
/// overwritten, no residual): the per-plane sums of that BN-ReLU's backward
/// reduction over `dinp` (`batchnorm::bn_relu_plane_sums`, bit for bit),
/// which the direct kernels compute as they store `dinp`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_from<T: Scalar>(
    accum: Accum,
    res: Option<&[T]>,      // (N, cin, h, w)
    dinp: Option<&mut [T]>, // (N, cin, h, w)
    dweight: &mut [T],      // (cout, cin, kh, kw)
    dout: ConvGradOut<T>,
    inp: ConvInput<T>,
    weight: &[T], // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
    planes: Option<&mut [(f64, f64)]>, // (N, cin)
) -> Result<()> {
    s.validate()?;
    dout.check(s)?;
    inp.check(s)?;
    if let Some(p) = &planes {
        check_len(OP, "plane sums", p, &[s.n, s.cin])?;
        let bn_input = matches!(inp, ConvInput::BnRelu { .. });
        if !bn_input || accum != Accum::Set || res.is_some() || dinp.is_none() {
            return Err(Error::InvalidParam {
                op: OP,
                msg: "plane sums need a BN-ReLU input and an overwritten input gradient".into(),
            });
        }
    }
    s.check_weight("weight", weight)?;
    s.check_weight("dweight", dweight)?;
    if let Some(dinp) = &dinp {
        s.check_input("dinp", dinp)?;
    }
    if let Some(r) = res {
        s.check_input("residual", r)?;
        if accum != Accum::Set || dinp.is_none() {
            return Err(Error::InvalidParam {
                op: OP,
                msg: "a residual needs an input gradient that is overwritten (Accum::Set)".into(),
            });
        }
    }
    backward_checked(
        accum,
        res,
        dinp,
        Some(dweight),
        dout,
        inp,
        weight,
        s,
        ws,
        planes,
    );
    Ok(())
}

/// The input half of [`conv2d_backward`]: `dinp += col2im(W^T · dout_n)` per image.
pub fn conv2d_backward_input<T: Scalar>(
    dinp: &mut [T], // (N, cin, h, w)
    dout: &[T],     // (N, cout, oh, ow)
    weight: &[T],   // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    s.validate()?;
    s.check_input("dinp", dinp)?;
    s.check_output("dout", dout)?;
    s.check_weight("weight", weight)?;
    // the input half never reads the forward's input
    let (dout, none) = (ConvGradOut::Plain(dout), ConvInput::Plain(&[][..]));
    backward_checked(
        Accum::Add,
        None,
        Some(dinp),
        None,
        dout,
        none,
        weight,
        s,
        ws,
        None,
    );
    Ok(())
}

/// The weight half of [`conv2d_backward`]: `dW += sum_n dout_n · col_n^T`.
pub fn conv2d_backward_weight<T: Scalar>(
    dweight: &mut [T], // (cout, cin, kh, kw)
    dout: &[T],        // (N, cout, oh, ow)
    inp: &[T],         // (N, cin, h, w)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    s.validate()?;
    s.check_weight("dweight", dweight)?;
    s.check_output("dout", dout)?;
    s.check_input("input", inp)?;
    // the weight half never reads the weights
    let (dout, inp) = (ConvGradOut::Plain(dout), ConvInput::Plain(inp));
    backward_checked(
        Accum::Add,
        None,
        None,
        Some(dweight),
        dout,
        inp,
        &[],
        s,
        ws,
        None,
    );
    Ok(())
}

/// Both halves of the backward on validated buffers (a `None` half is
/// skipped; `inp` is only read for `dweight`, `weight` only for `dinp`).
/// Each half takes the path measured faster for this shape: the direct f32
/// kernels, or im2col + GEMM.
#[allow(clippy::too_many_arguments)]
fn backward_checked<T: Scalar>(
    accum: Accum,
    res: Option<&[T]>,
    dinp: Option<&mut [T]>,
    dweight: Option<&mut [T]>,
    dout: ConvGradOut<T>,
    inp: ConvInput<T>,
    weight: &[T],
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
    planes: Option<&mut [(f64, f64)]>,
) {
    let data = direct::use_for_input_grad::<T>(s);
    let wgt = direct::use_for_weight::<T>(s);
    let (dinp_direct, dinp_rest) = if data { (dinp, None) } else { (None, dinp) };
    let (dw_direct, dw_rest) = if wgt {
        (dweight, None)
    } else {
        (None, dweight)
    };
    // the plane sums go with the input gradient
    let (direct_planes, planes) = if data { (planes, None) } else { (None, planes) };
    if dinp_direct.is_some() || dw_direct.is_some() {
        direct_backward(
            accum,
            res,
            dinp_direct,
            dw_direct,
            dout,
            inp,
            weight,
            s,
            ws,
            direct_planes,
        );
    }
    if dinp_rest.is_none() && dw_rest.is_none() {
        return;
    }
    let dout = dout.stored(&mut ws.grad, s);
    if let Some(dinp) = dinp_rest {
        match res {
            Some(r) => par_pieces(dinp, |at, d| d.copy_from_slice(&r[at..at + d.len()])),
            None if accum == Accum::Set => par_zero(dinp),
            None => {}
        }
        cpu::backward_input(dinp, dout, weight, s, &mut ws.chunks);
        if let (Some(p), ConvInput::BnRelu { x, mean, k, beta }) = (planes, inp) {
            let bs = BnShape {
                n: s.n,
                c: s.cin,
                hw: s.h * s.w,
            };
            bn_relu_plane_sums(p, dinp, x, mean, k, beta, bs).expect("shapes checked");
        }
    }
    if let Some(dweight) = dw_rest {
        let inp = inp.stored(&mut ws.act, s);
        cpu::backward_weight(dweight, dout, inp, s, &mut ws.chunks);
    }
}

/// Hands a backward to the direct f32 kernels (`direct::applies::<T>` holds,
/// so `T` is `f32` and every cast succeeds); `None` halves are skipped.
#[allow(clippy::too_many_arguments)]
fn direct_backward<T: Scalar>(
    accum: Accum,
    res: Option<&[T]>,
    dinp: Option<&mut [T]>,
    dweight: Option<&mut [T]>,
    dout: ConvGradOut<T>,
    inp: ConvInput<T>,
    weight: &[T],
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
    planes: Option<&mut [(f64, f64)]>,
) {
    let f32s = "direct path applies only to f32";
    direct::backward(
        accum,
        res.map(|r| direct::as_f32(r).expect(f32s)),
        dinp.map(|d| direct::as_f32_mut(d).expect(f32s)),
        dweight.map(|d| direct::as_f32_mut(d).expect(f32s)),
        dout.as_f32().expect(f32s),
        inp.as_f32().expect(f32s),
        direct::as_f32(weight).expect(f32s),
        s,
        &mut ws.direct,
        planes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[allow(clippy::too_many_arguments)]
    fn shape(
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            n,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad,
        }
    }

    /// `inp[n, c, y, x]`, or 0 in the padding.
    fn at(inp: &[f64], s: &Conv2dShape, n: usize, c: usize, y: isize, x: isize) -> f64 {
        if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
            return 0.0;
        }
        inp[((n * s.cin + c) * s.h + y as usize) * s.w + x as usize]
    }

    /// The defining sums, loop by loop: returns (out, dinp, dw) for `dout`.
    fn naive(
        inp: &[f64],
        w: &[f64],
        dout: &[f64],
        s: &Conv2dShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (oh, ow) = (s.oh(), s.ow());
        let mut out = vec![0.0; s.n * s.cout * oh * ow];
        let mut dinp = vec![0.0; inp.len()];
        let mut dw = vec![0.0; w.len()];
        for n in 0..s.n {
            for o in 0..s.cout {
                for y in 0..oh {
                    for x in 0..ow {
                        let oi = ((n * s.cout + o) * oh + y) * ow + x;
                        for c in 0..s.cin {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let iy = (y * s.stride + i) as isize - s.pad as isize;
                                    let ix = (x * s.stride + j) as isize - s.pad as isize;
                                    let wi = ((o * s.cin + c) * s.kh + i) * s.kw + j;
                                    let v = at(inp, s, n, c, iy, ix);
                                    out[oi] += w[wi] * v;
                                    dw[wi] += dout[oi] * v;
                                    if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize
                                    {
                                        dinp[((n * s.cin + c) * s.h + iy as usize) * s.w
                                            + ix as usize] += dout[oi] * w[wi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, dinp, dw)
    }

    #[test]
    fn hand_computed_stride1() {
        // inp = [[1, 2, 3],      w = [[1, 2],
        //        [4, 5, 6],           [3, 4]]
        //        [7, 8, 9]]
        // out[y, x] = w00 x[y,x] + w01 x[y,x+1] + w10 x[y+1,x] + w11 x[y+1,x+1]
        // out[0,0] = 1 + 4 + 12 + 20 = 37    out[0,1] = 2 + 6 + 15 + 24 = 47
        // out[1,0] = 4 + 10 + 21 + 32 = 67   out[1,1] = 5 + 12 + 24 + 36 = 77
        let inp: Vec<f64> = (1..=9).map(f64::from).collect();
        let w = [1.0, 2.0, 3.0, 4.0];
        let s = shape(1, 1, 3, 3, 1, 2, 2, 1, 0);
        let mut ws = ConvWorkspace::default();
        let mut out = [0.0; 4];
        conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
        assert_eq!(out, [37.0, 47.0, 67.0, 77.0]);
        // dout = all ones: dinp[a, b] = sum of the w taps whose window covers (a, b)
        //   = [[w00, w00+w01, w01], [w00+w10, w00+w01+w10+w11, w01+w11], [w10, w10+w11, w11]]
        //   = [[1, 3, 2], [4, 10, 6], [3, 7, 4]]
        // dw[i, j] = sum over the 4 windows of x[y+i, x+j]:
        //   dw00 = 1+2+4+5 = 12, dw01 = 2+3+5+6 = 16, dw10 = 4+5+7+8 = 24, dw11 = 5+6+8+9 = 28
        // (added onto 0.5 to check accumulation)
        let mut dinp = [0.5; 9];
        let mut dw = [0.5; 4];
        conv2d_backward(Some(&mut dinp), &mut dw, &[1.0; 4], &inp, &w, &s, &mut ws).unwrap();
        assert_eq!(dinp, [1.5, 3.5, 2.5, 4.5, 10.5, 6.5, 3.5, 7.5, 4.5]);
        assert_eq!(dw, [12.5, 16.5, 24.5, 28.5]);
    }

    #[test]
    fn hand_computed_stride2_pad1() {
        // same inp and w; stride 2, pad 1: oh = floor((3 + 2 - 2) / 2) + 1 = 2 (floor drops
        // the last padded row/column). Output (y, x) reads rows 2y + i - 1, cols 2x + j - 1:
        // out[0,0] = w11 x00                           = 4*1               = 4
        // out[0,1] = w10 x01 + w11 x02                 = 3*2 + 4*3         = 18
        // out[1,0] = w01 x10 + w11 x20                 = 2*4 + 4*7         = 36
        // out[1,1] = w00 x11 + w01 x12 + w10 x21 + w11 x22 = 5 + 12 + 24 + 36 = 77
        let inp: Vec<f64> = (1..=9).map(f64::from).collect();
        let w = [1.0, 2.0, 3.0, 4.0];
        let s = shape(1, 1, 3, 3, 1, 2, 2, 2, 1);
        assert_eq!((s.oh(), s.ow()), (2, 2));
        let mut ws = ConvWorkspace::default();
        let mut out = [0.0; 4];
        conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
        assert_eq!(out, [4.0, 18.0, 36.0, 77.0]);
        // dout = [g00, g01, g10, g11] = [1, 2, 3, 4]; each term above sends g * w to its x:
        // dinp: x00 += 1*4; x01 += 2*3, x02 += 2*4; x10 += 3*2, x20 += 3*4;
        //       x11 += 4*1, x12 += 4*2, x21 += 4*3, x22 += 4*4
        //   = [4, 6, 8, 6, 4, 8, 12, 12, 16]
        // dw: w00 = 4*x11 = 20; w01 = 3*x10 + 4*x12 = 12 + 24 = 36;
        //     w10 = 2*x01 + 4*x21 = 4 + 32 = 36; w11 = 1*x00 + 2*x02 + 3*x20 + 4*x22 = 1+6+21+36 = 64
        let mut dinp = [0.0; 9];
        let mut dw = [0.0; 4];
        conv2d_backward(
            Some(&mut dinp),
            &mut dw,
            &[1.0, 2.0, 3.0, 4.0],
            &inp,
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        assert_eq!(dinp, [4.0, 6.0, 8.0, 6.0, 4.0, 8.0, 12.0, 12.0, 16.0]);
        assert_eq!(dw, [20.0, 36.0, 36.0, 64.0]);
    }

    #[test]
    fn gradcheck_random_shapes() {
        let mut r = Rand::new(3);
        // (n, cin, h, w, cout, kh, kw, stride, pad): fixed structural cases ...
        let mut cases = vec![
            shape(1, 1, 3, 3, 1, 2, 2, 1, 0),
            shape(2, 3, 7, 6, 4, 3, 3, 1, 1), // 3x3 "same", odd height
            shape(3, 2, 9, 8, 3, 3, 3, 2, 1), // stride 2, odd sizes
            shape(1, 5, 5, 5, 6, 1, 1, 1, 0), // 1x1 fast path, batch 1
            shape(3, 4, 7, 8, 5, 1, 1, 2, 0), // 1x1 stride-2 projection
            shape(2, 2, 6, 5, 3, 3, 1, 1, 2), // non-square 3x1, pad 2
            shape(2, 3, 5, 7, 2, 1, 3, 2, 2), // 1x3, stride 2, pad 2
            shape(2, 2, 4, 4, 3, 3, 3, 3, 0), // stride 3 leaves a remainder
            shape(2, 2, 5, 6, 3, 1, 3, 1, 1), // 1x3 pad 1: ow == w (contiguous im2col), oh = h + 2
            shape(1, 2, 4, 5, 2, 5, 5, 1, 2), // 5x5 pad 2: wrap-around by 2 columns
        ];
        // ... plus random ones
        for _ in 0..4 {
            let (kh, kw) = (1 + r.usize_below(3), 1 + r.usize_below(3));
            let pad = r.usize_below(3);
            cases.push(shape(
                1 + r.usize_below(3),
                1 + r.usize_below(3),
                kh + r.usize_below(6),
                kw + r.usize_below(6),
                1 + r.usize_below(3),
                kh,
                kw,
                1 + r.usize_below(2),
                pad,
            ));
        }
        let mut worst = 0.0f64;
        for s in cases {
            let out_len = s.n * s.cout * s.oh() * s.ow();
            let mut params = vec![
                r.normal_vec(s.n * s.cin * s.h * s.w),
                r.normal_vec(s.cout * s.cin * s.kh * s.kw),
            ];
            let (mut wsf, mut wsb) = (ConvWorkspace::default(), ConvWorkspace::default());
            let err = check_layer(
                &mut params,
                out_len,
                |p, out| conv2d_forward(out, &p[0], &p[1], &s, &mut wsf).unwrap(),
                |p, dout, g| {
                    let (gx, gw) = g.split_at_mut(1);
                    conv2d_backward(
                        Some(&mut gx[0]),
                        &mut gw[0],
                        dout,
                        &p[0],
                        &p[1],
                        &s,
                        &mut wsb,
                    )
                    .unwrap()
                },
                &mut r,
            );
            assert!(err < 1e-6, "conv2d {s:?}: max rel err {err:e}");
            worst = worst.max(err);
        }
        println!("conv2d gradcheck (input and weight): max rel err {worst:e}");
    }

    #[test]
    fn threaded_matches_naive_reference() {
        let mut r = Rand::new(4);
        let mut ws = ConvWorkspace::default(); // one workspace across shapes and pools
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for s in [
                shape(5, 3, 9, 7, 4, 3, 3, 1, 1),
                shape(7, 4, 8, 9, 3, 3, 3, 2, 1),
                shape(4, 6, 6, 6, 5, 1, 1, 1, 0),
                shape(5, 4, 9, 8, 6, 1, 1, 2, 0),
                shape(1, 2, 5, 6, 3, 3, 2, 1, 2),
                shape(3, 3, 6, 7, 2, 5, 5, 1, 2),
                shape(5, 2, 4, 6, 3, 2, 3, 1, 1),
                // images smaller than the kernel (once an im2col panic)
                shape(2, 3, 1, 1, 2, 3, 3, 1, 1),
                shape(2, 2, 1, 5, 3, 3, 3, 1, 1),
                shape(3, 2, 2, 1, 2, 3, 3, 2, 1),
            ] {
                let inp = r.normal_vec(s.n * s.cin * s.h * s.w);
                let w = r.normal_vec(s.cout * s.cin * s.kh * s.kw);
                let dout = r.normal_vec(s.n * s.cout * s.oh() * s.ow());
                let (want_out, want_dinp, want_dw) = naive(&inp, &w, &dout, &s);
                let run = |ws: &mut ConvWorkspace<f64>| {
                    pool.install(|| {
                        assert_eq!(rayon::current_num_threads(), threads);
                        let mut out = vec![f64::NAN; want_out.len()];
                        conv2d_forward(&mut out, &inp, &w, &s, ws).unwrap();
                        let (mut dinp, mut dw) = (vec![0.0; inp.len()], vec![0.0; w.len()]);
                        conv2d_backward(Some(&mut dinp), &mut dw, &dout, &inp, &w, &s, ws).unwrap();
                        (out, dinp, dw)
                    })
                };
                let got = run(&mut ws);
                for (name, a, b) in [
                    ("out", &got.0, &want_out),
                    ("dinp", &got.1, &want_dinp),
                    ("dw", &got.2, &want_dw),
                ] {
                    for (x, y) in a.iter().zip(b.iter()) {
                        assert!(
                            (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                            "{threads} threads {s:?} {name}: {x} vs {y}"
                        );
                    }
                }
                // bit-reproducible for a fixed thread count
                assert_eq!(
                    run(&mut ws),
                    got,
                    "{threads} threads {s:?}: not reproducible"
                );
            }
        }
    }

    fn is_shape_err(e: Error, what: &str) -> bool {
        matches!(&e, Error::Shape { op: "conv2d", what: w, .. } if *w == what)
    }

    #[test]
    fn bad_params_are_errors_not_panics() {
        let good = shape(2, 3, 5, 5, 4, 3, 3, 1, 1);
        let mut ws = ConvWorkspace::<f32>::default();
        let bad = [
            Conv2dShape { n: 0, ..good },
            Conv2dShape { cin: 0, ..good },
            Conv2dShape { h: 0, ..good },
            Conv2dShape { w: 0, ..good },
            Conv2dShape { cout: 0, ..good },
            Conv2dShape { kh: 0, ..good },
            Conv2dShape { kw: 0, ..good },
            Conv2dShape { stride: 0, ..good },
            Conv2dShape { kh: 8, ..good }, // 8 > 5 + 2*1
            Conv2dShape {
                kw: 4,
                pad: 0,
                h: 9,
                w: 3,
                ..good
            }, // 4 > 3
            Conv2dShape {
                pad: usize::MAX,
                ..good
            },
            Conv2dShape {
                n: usize::MAX / 2,
                ..good
            },
        ];
        for s in bad {
            let e = s.validate().unwrap_err();
            assert!(
                matches!(e, Error::InvalidParam { op: "conv2d", .. }),
                "{s:?}: {e}"
            );
            let e = conv2d_forward(&mut [0.0], &[0.0], &[0.0], &s, &mut ws).unwrap_err();
            assert!(e.to_string().starts_with("conv2d"), "{e}");
            let e =
                conv2d_backward(None, &mut [0.0], &[0.0], &[0.0], &[0.0], &s, &mut ws).unwrap_err();
            assert!(e.to_string().starts_with("conv2d"), "{e}");
        }
        // a kernel exactly the padded size is fine: 7 = 5 + 2*1, one output
        let s = Conv2dShape {
            kh: 7,
            kw: 7,
            ..good
        };
        s.validate().unwrap();
        assert_eq!((s.oh(), s.ow()), (1, 1));
    }

    #[test]
    fn wrong_buffer_lengths_name_the_buffer() {
        let s = shape(2, 3, 5, 5, 4, 3, 3, 2, 1); // oh = ow = 3
        let (ni, nw, no) = (2 * 3 * 25, 4 * 3 * 9, 2 * 4 * 9);
        let (inp, w, out) = (vec![0.0f32; ni], vec![0.0f32; nw], vec![0.0f32; no]);
        let mut ws = ConvWorkspace::default();
        let mut o = out.clone();
        assert!(is_shape_err(
            conv2d_forward(&mut o[1..], &inp, &w, &s, &mut ws).unwrap_err(),
            "output"
        ));
        assert!(is_shape_err(
            conv2d_forward(&mut o, &inp[1..], &w, &s, &mut ws).unwrap_err(),
            "input"
        ));
        assert!(is_shape_err(
            conv2d_forward(&mut o, &inp, &w[1..], &s, &mut ws).unwrap_err(),
            "weight"
        ));
        conv2d_forward(&mut o, &inp, &w, &s, &mut ws).unwrap();
        let (mut dinp, mut dw) = (vec![7.0f32; ni], vec![7.0f32; nw]);
        let e = conv2d_backward(Some(&mut dinp), &mut dw, &out[1..], &inp, &w, &s, &mut ws)
            .unwrap_err();
        assert!(is_shape_err(e, "dout"));
        let e = conv2d_backward(Some(&mut dinp[1..]), &mut dw, &out, &inp, &w, &s, &mut ws)
            .unwrap_err();
        assert!(is_shape_err(e, "dinp"));
        // a bad dweight is caught before dinp is touched
        let e = conv2d_backward(Some(&mut dinp), &mut dw[1..], &out, &inp, &w, &s, &mut ws)
            .unwrap_err();
        assert!(is_shape_err(e, "dweight"));
        assert!(dinp.iter().all(|&v| v == 7.0));
        let e = conv2d_backward_input(&mut dinp, &out, &w[1..], &s, &mut ws).unwrap_err();
        assert!(is_shape_err(e, "weight"));
        let e = conv2d_backward_weight(&mut dw, &out, &inp[1..], &s, &mut ws).unwrap_err();
        assert!(is_shape_err(e, "input"));
        let msg = conv2d_backward_weight(&mut dw, &out, &inp[2..], &s, &mut ws)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("conv2d") && msg.contains("input"), "{msg}");
    }
}

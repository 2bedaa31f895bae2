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

pub(crate) mod ahead;
mod cpu;
mod direct;
mod input;
mod phase;
mod winograd;

pub use input::{ConvGradOut, ConvInput};

use crate::error::{check_len, check_nonzero, Error, Result};
use crate::ops::batchnorm::{bn_plane_sums, bn_relu_plane_sums, BnShape};
use crate::ops::par::{par_pieces, par_zero};
use crate::ops::Accum;
use crate::precision::Precision;
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
    /// the GEMMs' precision; in [`Precision::Bf16`] the 3x3 / stride-1
    /// passes take the direct bf16 kernels (`direct`'s docs), every other
    /// pass im2col + [`crate::gemm_bf16`]
    precision: Precision,
}

impl<T> ConvWorkspace<T> {
    /// The precision of every convolution run with this workspace (and of
    /// the linear layers of a model that shares it). Callers check the CPU
    /// (`Precision::check_supported`) and that `T` is `f32` for bf16.
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    fn bf16(&self) -> bool {
        self.precision == Precision::Bf16
    }
}

impl<T> Default for ConvWorkspace<T> {
    fn default() -> Self {
        ConvWorkspace {
            chunks: Vec::new(),
            direct: direct::Workspace::default(),
            act: Vec::new(),
            grad: Vec::new(),
            precision: Precision::F32,
        }
    }
}

/// Whether a [`ConvInput::BnRelu`] input costs no pass of its own for `s`:
/// both passes that read the input (forward, weight gradient) take the
/// direct path, which normalises while it pads. Otherwise the input is
/// written out in each of them. The same answer in both precisions: the
/// bf16 direct kernels cover exactly the f32 ones' shapes (and bf16 runs
/// only where they can: `Precision::check_supported`).
pub fn conv2d_fuses_input_act<T: 'static>(s: &Conv2dShape) -> bool {
    let p = Precision::F32;
    direct::use_for_forward::<T>(s, p) && direct::use_for_weight::<T>(s, p)
}

/// Whether a [`ConvGradOut::Bn`] gradient costs no pass of its own for `s`:
/// both passes that read the output gradient (input and weight gradient)
/// take the direct path, which computes it while it pads. The same answer
/// in both precisions (see [`conv2d_fuses_input_act`]).
pub fn conv2d_fuses_grad_out<T: 'static>(s: &Conv2dShape) -> bool {
    let p = Precision::F32;
    direct::use_for_input_grad::<T>(s, p) && direct::use_for_weight::<T>(s, p)
}

/// `out = conv(inp, weight)`; out (N, cout, oh, ow) is overwritten.
pub fn conv2d_forward<T: Scalar>(
    out: &mut [T], // (N, cout, oh, ow)
    inp: &[T],     // (N, cin, h, w)
    weight: &[T],  // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    let pass = ConvForward {
        out,
        res: None,
        inp: ConvInput::Plain(inp),
        plane_sums: None,
    };
    conv2d_forward_from(pass, weight, s, ws)
}

/// One forward pass of a convolution ([`conv2d_forward_from`]): what it
/// reads and what it writes besides the weights.
pub struct ConvForward<'a, T> {
    /// (N, cout, oh, ow), overwritten
    pub out: &'a mut [T],
    /// (N, cout, oh, ow): `out = res + conv(inp)`
    pub res: Option<&'a [T]>,
    pub inp: ConvInput<'a, T>,
    /// (N, cout): the per-plane sums of `out`
    pub plane_sums: Option<&'a mut [f64]>,
}

/// [`conv2d_forward`] of any [`ConvInput`]; with a residual `res` (N, cout,
/// oh, ow), `out = res + conv(inp, weight)` (a residual unit's addition, in
/// the direct kernels' own store: `res[i] + sum`, the same bits as adding
/// afterwards). With `plane_sums` (N, cout), also the sum of each output
/// plane `(n, c)` in `plane_sums[n * cout + c]` (`batchnorm::bn_plane_sums`,
/// bit for bit): the first pass of the statistics of a training BN that
/// reads `out`, which the direct kernels take while each image's output is
/// in cache.
pub fn conv2d_forward_from<T: Scalar>(
    pass: ConvForward<T>,
    weight: &[T], // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    let ConvForward {
        out,
        res,
        inp,
        plane_sums,
    } = pass;
    s.validate()?;
    s.check_output("output", out)?;
    if let Some(r) = res {
        s.check_output("residual", r)?;
    }
    inp.check(s)?;
    s.check_weight("weight", weight)?;
    if let Some(p) = &plane_sums {
        check_len(OP, "plane sums", p, &[s.n, s.cout])?;
    }
    if direct::use_for_forward::<T>(s, ws.precision) {
        let r32 = res.map(|r| direct::as_f32(r));
        if let (Some(out), Some(inp), Some(weight), None | Some(Some(_))) = (
            direct::as_f32_mut(out),
            inp.as_f32(),
            direct::as_f32(weight),
            r32,
        ) {
            let (p, dws) = (ws.precision, &mut ws.direct);
            direct::forward(out, r32.flatten(), inp, weight, s, p, dws, plane_sums);
            return Ok(());
        }
    }
    let bf16 = ws.bf16();
    let inp = inp.stored(&mut ws.act, s);
    cpu::forward(out, inp, weight, s, &mut ws.chunks, bf16);
    if let Some(r) = res {
        par_pieces(out, |at, o| {
            for (y, &a) in o.iter_mut().zip(&r[at..]) {
                *y = a + *y;
            }
        });
    }
    if let Some(p) = plane_sums {
        let ohw = s.oh() * s.ow();
        for (img, p) in out
            .chunks_exact(s.cout * ohw)
            .zip(p.chunks_exact_mut(s.cout))
        {
            bn_plane_sums(p, img, ohw);
        }
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
    let pass = ConvBackward {
        accum,
        res: None,
        dinp,
        dout: ConvGradOut::Plain(dout),
        inp: ConvInput::Plain(inp),
        plane_sums: None,
    };
    conv2d_backward_from(pass, dweight, weight, s, ws)
}

/// One backward pass of a convolution ([`conv2d_backward_from`]): what it
/// reads and what it writes besides the weight gradient.
pub struct ConvBackward<'a, T> {
    /// how `dinp` is written
    pub accum: Accum,
    /// (N, cin, h, w): `dinp = res + ...`
    pub res: Option<&'a [T]>,
    /// (N, cin, h, w); `None` when nobody needs it
    pub dinp: Option<&'a mut [T]>,
    pub dout: ConvGradOut<'a, T>,
    /// the forward's input
    pub inp: ConvInput<'a, T>,
    /// (N, cin): the plane sums of the BN-ReLU backward over `dinp`
    pub plane_sums: Option<&'a mut [(f64, f64)]>,
}

/// [`conv2d_backward_to`] of any [`ConvInput`] (the forward's) and any
/// [`ConvGradOut`].
///
/// With a residual `res` (N, cin, h, w), `dinp = res + (its gradient)`
/// (`accum` must then be [`Accum::Set`]): a residual unit's shortcut term
/// joining the first conv's input gradient in the direct kernels' store.
///
/// With `plane_sums` (N, cin) and a [`ConvInput::BnRelu`] input (`dinp`
/// given, overwritten, no residual): the per-plane sums of that BN-ReLU's
/// backward reduction over `dinp` (`batchnorm::bn_relu_plane_sums`, bit
/// for bit), which the direct kernels compute as they store `dinp`.
pub fn conv2d_backward_from<T: Scalar>(
    pass: ConvBackward<T>,
    dweight: &mut [T], // (cout, cin, kh, kw)
    weight: &[T],      // (cout, cin, kh, kw)
    s: &Conv2dShape,
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    let ConvBackward {
        accum,
        res,
        dinp,
        dout,
        inp,
        plane_sums,
    } = pass;
    s.validate()?;
    dout.check(s)?;
    inp.check(s)?;
    if let Some(p) = &plane_sums {
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
        plane_sums,
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
    plane_sums: Option<&mut [(f64, f64)]>,
) {
    let data = direct::use_for_input_grad::<T>(s, ws.precision);
    let wgt = direct::use_for_weight::<T>(s, ws.precision);
    let bf16 = ws.bf16();
    let (dinp_direct, dinp_rest) = if data { (dinp, None) } else { (None, dinp) };
    let (dw_direct, dw_rest) = if wgt {
        (dweight, None)
    } else {
        (None, dweight)
    };
    // the plane sums go with the input gradient
    let (direct_plane_sums, plane_sums) = if data {
        (plane_sums, None)
    } else {
        (None, plane_sums)
    };
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
            direct_plane_sums,
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
        cpu::backward_input(dinp, dout, weight, s, &mut ws.chunks, bf16);
        if let (Some(p), ConvInput::BnRelu { x, mean, k, beta }) = (plane_sums, inp) {
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
        cpu::backward_weight(dweight, dout, inp, s, &mut ws.chunks, bf16);
    }
}

/// Hands a backward to the direct f32 kernels (the caller checked
/// `direct::use_for_*::<T>`, so `T` is `f32` and every cast succeeds);
/// `None` halves are skipped.
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
    plane_sums: Option<&mut [(f64, f64)]>,
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
        ws.precision,
        &mut ws.direct,
        plane_sums,
    );
}

#[cfg(test)]
mod tests;

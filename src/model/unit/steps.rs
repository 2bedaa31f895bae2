//! One branch step at a time: forward, backward, and the backward of a
//! run of steps (a branch, or a prefix of it), with the unstored BN-ReLU
//! outputs and BN input gradients that the convolutions around them
//! compute as they read (the plan's `unstored` and `unstored_grad`).

use super::Step;
use crate::backend::{Backend, BnBackwardPass, ConvBackwardPass, ConvGradSource, ConvSource};
use crate::error::Result;
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::Accum;
use crate::scalar::Scalar;

/// The layers a step runs on, and the conv workspace.
pub(super) struct Layers<'a, T: Scalar, B: Backend> {
    pub convs: &'a mut [WeightLayer<T, B>],
    pub bns: &'a mut [BnLayer<T, B>],
    pub ws: &'a mut B::Workspace<T>,
}

/// Run one step forward: `out = step(inp)`.
pub(super) fn step_forward<T: Scalar, B: Backend>(
    step: Step,
    out: &mut B::Buf<T>,
    inp: &B::Buf<T>,
    (n, gin): (usize, Geom),
    train: bool,
    l: Layers<T, B>,
) -> Result<()> {
    match step {
        Step::Conv(i) => B::weight_forward(&l.convs[i], out, inp, n, gin, l.ws),
        Step::Bn(i) => B::bn_forward(&mut l.bns[i], out, inp, (n, gin), train, false),
        Step::Relu => B::relu_forward(out, inp),
        Step::BnRelu(i) => B::bn_forward(&mut l.bns[i], out, inp, (n, gin), train, true),
    }
}

/// What a step's backward reads of its forward: its input (of geometry
/// `gin`) and its output.
pub(super) struct Saved<'a, T: Scalar, B: Backend> {
    pub inp: &'a B::Buf<T>,
    pub out: &'a B::Buf<T>,
    pub gin: Geom,
}

/// Run one step backward: `dinp += step'(inp)^T dout` (`=` with
/// [`Accum::Set`]).
pub(super) fn step_backward<T: Scalar, B: Backend>(
    step: Step,
    accum: Accum,
    dinp: &mut B::Buf<T>,
    dout: &B::Buf<T>,
    saved: Saved<T, B>,
    n: usize,
    l: Layers<T, B>,
) -> Result<()> {
    let Saved { inp, out, gin } = saved;
    match step {
        Step::Conv(i) => {
            let conv = &mut l.convs[i];
            B::weight_backward(conv, accum, Some(dinp), dout, inp, (n, gin), l.ws)
        }
        Step::Relu => B::relu_backward(accum, dinp, dout, out),
        Step::Bn(i) | Step::BnRelu(i) => {
            let pass = BnBackwardPass {
                relu: matches!(step, Step::BnRelu(_)),
                accum,
                res: None,
                dinp,
                dout,
                inp,
                grad_sums: None,
            };
            B::bn_backward(&mut l.bns[i], pass, n, gin)
        }
    }
}

/// The BN layer of a BN or BN-ReLU step, and whether a ReLU follows it.
pub(super) fn bn_of(step: Step) -> (usize, bool) {
    match step {
        Step::Bn(i) => (i, false),
        Step::BnRelu(i) => (i, true),
        _ => unreachable!("only BN steps go unstored"),
    }
}

/// What a backward through branch steps reads: the steps, the plan's
/// flags for them (all false after an evaluation forward), the forward's
/// activations and geometries, and the unit's input.
pub(super) struct StepsBackward<'a, T: Scalar, B: Backend> {
    pub steps: &'a [Step],
    /// outputs the forward left unstored
    pub unstored: &'a [bool],
    /// input gradients the conv before computes as it reads them
    pub unstored_grad: &'a [bool],
    /// convs that take the grad sums of the BN-ReLU before them
    pub grad_sums_in_conv: &'a [bool],
    pub acts: &'a [B::Buf<T>],
    pub geoms: &'a [Geom],
    pub in_geom: Geom,
    pub x: &'a B::Buf<T>,
    pub n: usize,
}

impl<'a, T: Scalar, B: Backend> StepsBackward<'a, T, B> {
    /// The first `len` steps.
    pub fn prefix(&self, len: usize) -> StepsBackward<'a, T, B> {
        StepsBackward {
            steps: &self.steps[..len],
            unstored: &self.unstored[..len],
            unstored_grad: &self.unstored_grad[..len],
            grad_sums_in_conv: &self.grad_sums_in_conv[..len],
            ..*self
        }
    }
}

/// The gradients a backward through steps reads and writes: the top
/// step's output gradient, every other step's, and `dx`.
pub(super) type Through<'a, T, B> = (
    &'a <B as Backend>::Buf<T>,
    &'a mut [<B as Backend>::Buf<T>],
    &'a mut <B as Backend>::Buf<T>,
);

/// Backward through `b.steps` (a prefix of the branch) from `dtop`, the
/// gradient of the last step's output, down to `dx += ...`. `dacts[s]`
/// receives the gradient of step `s`'s output (`s < steps.len() - 1`),
/// overwritten by its one writer except at `shared`, which already holds a
/// projection's share and is added to. With `res`, `dx` is overwritten
/// with `res + ...` instead of added to: by the first step's own pass (a
/// BN-ReLU's backward, or a conv's input-gradient store). With `top_sums`,
/// `grad_sums` already holds the per-plane sums of the last step's BN
/// reduction over `dtop` (written with it), which that BN then takes.
pub(super) fn backward_steps<T: Scalar, B: Backend>(
    b: &StepsBackward<T, B>,
    l: &mut Layers<T, B>,
    (dtop, dacts, dx): Through<T, B>,
    shared: Option<usize>,
    res: Option<&B::Buf<T>>,
    (grad_sums, top_sums): (&mut B::Buf<(f64, f64)>, bool),
) -> Result<()> {
    let (steps, n, x) = (b.steps, b.n, b.x);
    let last = steps.len() - 1;
    // the step whose BN(-ReLU) grad sums (per plane) a pass computed while
    // it wrote that BN's output gradient: a conv (the BN-ReLU before it),
    // or with `top_sums` the pass that wrote `dtop` (the last step's BN,
    // `ops::mix::add_relu_backward_sums`)
    let mut grad_sums_for: Option<usize> = top_sums.then_some(last);
    for s in (0..steps.len()).rev() {
        let (lo, hi) = dacts.split_at_mut(s);
        let dout: &B::Buf<T> = if s == last { dtop } else { &hi[0] };
        if let (0, Some(r), Step::BnRelu(i)) = (s, res, steps[0]) {
            // the first BN-ReLU writes dx = res + ...
            let pass = BnBackwardPass {
                relu: true,
                accum: Accum::Set,
                res: Some(r),
                dinp: dx,
                dout,
                inp: x,
                grad_sums: (grad_sums_for == Some(0)).then_some(&*grad_sums),
            };
            B::bn_backward(&mut l.bns[i], pass, n, b.in_geom)?;
            continue;
        }
        // the first conv writes dx = res + ...
        let conv_res = match (s, steps[s]) {
            (0, Step::Conv(_)) => res,
            _ => None,
        };
        let (dinp, inp, gin, accum): (&mut B::Buf<T>, &B::Buf<T>, Geom, Accum) = if s == 0 {
            (&mut *dx, x, b.in_geom, Accum::Add)
        } else if shared == Some(s - 1) {
            (&mut lo[s - 1], &b.acts[s - 1], b.geoms[s - 1], Accum::Add)
        } else {
            (&mut lo[s - 1], &b.acts[s - 1], b.geoms[s - 1], Accum::Set)
        };
        if b.unstored_grad[s] {
            // a BN whose input gradient the conv before it computes as it
            // reads it (below): only the reduction here
            let (i, relu) = bn_of(steps[s]);
            let grad_sums = (grad_sums_for == Some(s)).then_some(&*grad_sums);
            B::bn_backward_coefs(&mut l.bns[i], dout, inp, (n, gin), relu, grad_sums)?;
            continue;
        }
        let vin = s > 0 && b.unstored[s - 1];
        let vout = s < last && b.unstored_grad[s + 1];
        if let (true, Step::Conv(j)) = (vin || vout || conv_res.is_some(), steps[s]) {
            // in the forward pass this conv read BN-ReLU(x_bn) as it
            // normalised it, so now its weight gradient does the same
            let inp = if vin {
                let x_bn = if s == 1 { x } else { &b.acts[s - 2] };
                let bn = &l.bns[bn_of(steps[s - 1]).0];
                ConvSource::BnRelu { x: x_bn, bn }
            } else {
                ConvSource::Plain(inp)
            };
            // ... and the BN after it hands over its reduction, not dL/d(out)
            let dout = if vout {
                let dy: &B::Buf<T> = if s + 1 == last { dtop } else { &hi[1] };
                let (i, relu) = bn_of(steps[s + 1]);
                let (x, bn) = (&b.acts[s], &l.bns[i]);
                ConvGradSource::Bn { dy, x, bn, relu }
            } else {
                ConvGradSource::Plain(dout)
            };
            let accum = if conv_res.is_some() {
                Accum::Set
            } else {
                accum
            };
            // the BN-ReLU before it takes its reduction from grad sums this conv
            // computes while it writes dinp (= that BN-ReLU's dL/d(out))
            let grad_sums = if b.grad_sums_in_conv[s] {
                zeroed::<B, _>(grad_sums, n * gin.c);
                grad_sums_for = Some(s - 1);
                Some(&mut *grad_sums)
            } else {
                None
            };
            let pass = ConvBackwardPass {
                accum,
                res: conv_res,
                dinp: Some(dinp),
                dout,
                inp,
                grad_sums,
            };
            B::conv_backward(&mut l.convs[j], pass, n, gin, l.ws)?;
            continue;
        }
        let layers = Layers {
            convs: &mut *l.convs,
            bns: &mut *l.bns,
            ws: &mut *l.ws,
        };
        let saved = Saved {
            inp,
            out: &b.acts[s],
            gin,
        };
        step_backward(steps[s], accum, dinp, dout, saved, n, layers)?;
    }
    Ok(())
}

/// `v` as `len` zeros (the storage kept when it fits).
pub(super) fn zeroed<B: Backend, X: crate::backend::Elem>(v: &mut B::Buf<X>, len: usize) {
    B::resize(v, 0);
    B::resize(v, len);
}

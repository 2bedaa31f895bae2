//! One branch step at a time: forward, backward, and the backward of a
//! run of steps (a branch, or a prefix of it), with the unstored BN-ReLU
//! outputs and BN input gradients that the convolutions around them
//! compute as they read (the plan's `unstored` and `unstored_grad`).

use super::Step;
use crate::error::Result;
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::activation::{relu_backward, relu_forward};
use crate::ops::conv2d::{ConvBackward, ConvGradOut, ConvInput, ConvWorkspace};
use crate::ops::par::par_zero;
use crate::ops::Accum;
use crate::scalar::Scalar;

/// The layers a step runs on, and the conv workspace.
pub(super) struct Layers<'a, T> {
    pub convs: &'a mut [WeightLayer<T>],
    pub bns: &'a mut [BnLayer<T>],
    pub ws: &'a mut ConvWorkspace<T>,
}

/// Run one step forward: `out = step(inp)`.
pub(super) fn step_forward<T: Scalar>(
    step: Step,
    out: &mut [T],
    inp: &[T],
    n: usize,
    gin: Geom,
    train: bool,
    l: Layers<T>,
) -> Result<()> {
    match step {
        Step::Conv(i) => l.convs[i].forward(out, inp, n, gin, l.ws),
        Step::Bn(i) => l.bns[i].forward(out, inp, n, gin, train),
        Step::Relu => relu_forward(out, inp),
        Step::BnRelu(i) => l.bns[i].forward_relu(out, inp, n, gin, train),
    }
}

/// What a step's backward reads of its forward: its input (of geometry
/// `gin`) and its output.
pub(super) struct Saved<'a, T> {
    pub inp: &'a [T],
    pub out: &'a [T],
    pub gin: Geom,
}

/// Run one step backward: `dinp += step'(inp)^T dout` (`=` with
/// [`Accum::Set`]).
pub(super) fn step_backward<T: Scalar>(
    step: Step,
    accum: Accum,
    dinp: &mut [T],
    dout: &[T],
    saved: Saved<T>,
    n: usize,
    l: Layers<T>,
) -> Result<()> {
    let Saved { inp, out, gin } = saved;
    match step {
        Step::Conv(i) => l.convs[i].backward_to(accum, Some(dinp), dout, inp, n, gin, l.ws),
        Step::Bn(i) => l.bns[i].backward_to(accum, dinp, dout, inp, n, gin),
        Step::Relu => {
            if accum == Accum::Set {
                par_zero(dinp);
            }
            relu_backward(dinp, dout, out)
        }
        Step::BnRelu(i) => l.bns[i].backward_relu_to(accum, dinp, dout, inp, n, gin),
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
pub(super) struct StepsBackward<'a, T> {
    pub steps: &'a [Step],
    /// outputs the forward left unstored
    pub unstored: &'a [bool],
    /// input gradients the conv before computes as it reads them
    pub unstored_grad: &'a [bool],
    /// convs that sum the reduction planes of the BN-ReLU before them
    pub sums_in_conv: &'a [bool],
    pub acts: &'a [Vec<T>],
    pub geoms: &'a [Geom],
    pub in_geom: Geom,
    pub x: &'a [T],
    pub n: usize,
}

impl<'a, T> StepsBackward<'a, T> {
    /// The first `len` steps.
    pub fn prefix(&self, len: usize) -> StepsBackward<'a, T> {
        StepsBackward {
            steps: &self.steps[..len],
            unstored: &self.unstored[..len],
            unstored_grad: &self.unstored_grad[..len],
            sums_in_conv: &self.sums_in_conv[..len],
            ..*self
        }
    }
}

/// Backward through `b.steps` (a prefix of the branch) from `dtop`, the
/// gradient of the last step's output, down to `dx += ...`. `dacts[s]`
/// receives the gradient of step `s`'s output (`s < steps.len() - 1`),
/// overwritten by its one writer except at `shared`, which already holds a
/// projection's share and is added to. With `res`, `dx` is overwritten
/// with `res + ...` instead of added to: by the first step's own pass (a
/// BN-ReLU's backward, or a conv's input-gradient store).
pub(super) fn backward_steps<T: Scalar>(
    b: &StepsBackward<T>,
    l: &mut Layers<T>,
    (dtop, dacts, dx): (&[T], &mut [Vec<T>], &mut [T]),
    shared: Option<usize>,
    res: Option<&[T]>,
    sums: &mut Vec<(f64, f64)>,
) -> Result<()> {
    let (steps, n, x) = (b.steps, b.n, b.x);
    let last = steps.len() - 1;
    // the step whose BN-ReLU reduction sums (per plane) a conv computed
    // while it wrote that BN-ReLU's output gradient
    let mut sums_for: Option<usize> = None;
    for s in (0..steps.len()).rev() {
        let (lo, hi) = dacts.split_at_mut(s);
        let dout: &[T] = if s == last { dtop } else { &hi[0] };
        if let (0, Some(r), Step::BnRelu(i)) = (s, res, steps[0]) {
            // the first BN-ReLU writes dx = res + ...
            let planes = (sums_for == Some(0)).then_some(sums.as_slice());
            l.bns[i].backward_relu_plus(dx, r, dout, x, n, b.in_geom, planes)?;
            continue;
        }
        // the first conv writes dx = res + ...
        let conv_res = match (s, steps[s]) {
            (0, Step::Conv(_)) => res,
            _ => None,
        };
        let (dinp, inp, gin, accum): (&mut [T], &[T], Geom, Accum) = if s == 0 {
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
            let planes = (sums_for == Some(s)).then_some(sums.as_slice());
            l.bns[i].backward_coefs(dout, inp, n, gin, relu, planes)?;
            continue;
        }
        let vin = s > 0 && b.unstored[s - 1];
        let vout = s < last && b.unstored_grad[s + 1];
        if let (true, Step::Conv(j)) = (vin || vout || conv_res.is_some(), steps[s]) {
            // in the forward pass this conv read BN-ReLU(x_bn) as it
            // normalised it, so now its weight gradient does the same
            let inp = if vin {
                let x_bn = if s == 1 { x } else { &b.acts[s - 2] };
                l.bns[bn_of(steps[s - 1]).0].relu_input(x_bn)
            } else {
                ConvInput::Plain(inp)
            };
            // ... and the BN after it hands over its reduction, not dL/d(out)
            let dout = if vout {
                let dy: &[T] = if s + 1 == last { dtop } else { &hi[1] };
                let (i, relu) = bn_of(steps[s + 1]);
                l.bns[i].grad_out(dy, &b.acts[s], relu)
            } else {
                ConvGradOut::Plain(dout)
            };
            let accum = if conv_res.is_some() {
                Accum::Set
            } else {
                accum
            };
            // the BN-ReLU before it takes its reduction from sums this conv
            // computes while it writes dinp (= that BN-ReLU's dL/d(out))
            let planes = if b.sums_in_conv[s] {
                sums.clear();
                sums.resize(n * gin.c, (0.0, 0.0));
                sums_for = Some(s - 1);
                Some(sums.as_mut_slice())
            } else {
                None
            };
            let pass = ConvBackward {
                accum,
                res: conv_res,
                dinp: Some(dinp),
                dout,
                inp,
                planes,
            };
            l.convs[j].backward_from(pass, n, gin, l.ws)?;
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

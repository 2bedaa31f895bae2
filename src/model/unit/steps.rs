//! One branch step at a time: forward, backward, and the backward of a
//! run of steps (a branch, or a prefix of it), with the unstored BN-ReLU
//! outputs and BN input gradients that the convolutions around them
//! compute as they read (see `Unit`'s `virt` and `dvirt`).

use super::Step;
use crate::error::Result;
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::activation::{relu_backward, relu_forward};
use crate::ops::conv2d::{ConvGradOut, ConvInput, ConvWorkspace};
use crate::ops::par::par_zero;
use crate::ops::Accum;
use crate::scalar::Scalar;

/// Run one step forward: `out = step(inp)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_forward<T: Scalar>(
    step: Step,
    out: &mut [T],
    inp: &[T],
    n: usize,
    gin: Geom,
    train: bool,
    convs: &mut [WeightLayer<T>],
    bns: &mut [BnLayer<T>],
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    match step {
        Step::Conv(i) => convs[i].forward(out, inp, n, gin, ws),
        Step::Bn(i) => bns[i].forward(out, inp, n, gin, train),
        Step::Relu => relu_forward(out, inp),
        Step::BnRelu(i) => bns[i].forward_relu(out, inp, n, gin, train),
    }
}

/// Run one step backward: `dinp += step'(inp)^T dout` (`=` with [`Accum::Set`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_backward<T: Scalar>(
    step: Step,
    accum: Accum,
    dinp: &mut [T],
    dout: &[T],
    inp: &[T],
    out: &[T],
    n: usize,
    gin: Geom,
    convs: &mut [WeightLayer<T>],
    bns: &mut [BnLayer<T>],
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    match step {
        Step::Conv(i) => convs[i].backward_to(accum, Some(dinp), dout, inp, n, gin, ws),
        Step::Bn(i) => bns[i].backward_to(accum, dinp, dout, inp, n, gin),
        Step::Relu => {
            if accum == Accum::Set {
                par_zero(dinp);
            }
            relu_backward(dinp, dout, out)
        }
        Step::BnRelu(i) => bns[i].backward_relu_to(accum, dinp, dout, inp, n, gin),
    }
}

/// The BN layer of a BN or BN-ReLU step, and whether a ReLU follows it.
pub(super) fn bn_of(step: Step) -> (usize, bool) {
    match step {
        Step::Bn(i) => (i, false),
        Step::BnRelu(i) => (i, true),
        _ => unreachable!("only BN steps are virtual"),
    }
}

/// Backward through `steps` (a prefix of the branch), from `dtop`, the
/// gradient of the last step's output, down to `dx += ...`. `dacts[s]`
/// receives the gradient of step `s`'s output (`s < steps.len() - 1`),
/// overwritten by its one writer except at `shared`, which already holds a
/// projection's share and is added to. With `res`, `dx` is overwritten
/// with `res + ...` instead of added to (in the BN-ReLU's own pass when
/// step 0 is one).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_steps<T: Scalar>(
    steps: &[Step],
    (virt, dvirt): (&[bool], &[bool]),
    dtop: &[T],
    dacts: &mut [Vec<T>],
    shared: Option<usize>,
    res: Option<&[T]>,
    acts: &[Vec<T>],
    geoms: &[Geom],
    in_geom: Geom,
    x: &[T],
    dx: &mut [T],
    n: usize,
    convs: &mut [WeightLayer<T>],
    bns: &mut [BnLayer<T>],
    ws: &mut ConvWorkspace<T>,
    sums: &mut Vec<(f64, f64)>,
) -> Result<()> {
    let last = steps.len() - 1;
    // the step whose BN-ReLU reduction sums (per plane) a conv computed
    // while it wrote that BN-ReLU's output gradient
    let mut sums_for: Option<usize> = None;
    for s in (0..steps.len()).rev() {
        let (lo, hi) = dacts.split_at_mut(s);
        let dout: &[T] = if s == last { dtop } else { &hi[0] };
        if let (0, Some(r)) = (s, res) {
            match steps[0] {
                Step::BnRelu(i) => {
                    let planes = (sums_for == Some(0)).then_some(sums.as_slice());
                    bns[i].backward_relu_plus(dx, r, dout, x, n, in_geom, planes)?;
                    continue;
                }
                Step::Conv(_) => {}         // below, as the conv's residual
                _ => dx.copy_from_slice(r), // any other first step: copy, then add
            }
        }
        // the first conv writes dx = res + ...
        let conv_res = match (s, steps[s]) {
            (0, Step::Conv(_)) => res,
            _ => None,
        };
        let (dinp, inp, gin, accum): (&mut [T], &[T], Geom, Accum) = if s == 0 {
            (&mut *dx, x, in_geom, Accum::Add)
        } else if shared == Some(s - 1) {
            (&mut lo[s - 1], &acts[s - 1], geoms[s - 1], Accum::Add)
        } else {
            (&mut lo[s - 1], &acts[s - 1], geoms[s - 1], Accum::Set)
        };
        if dvirt[s] {
            // a BN whose input gradient the conv before it computes as it
            // reads it (below): only the reduction here
            let (i, relu) = bn_of(steps[s]);
            let planes = (sums_for == Some(s)).then_some(sums.as_slice());
            bns[i].backward_coefs(dout, inp, n, gin, relu, planes)?;
            continue;
        }
        let vin = s > 0 && virt[s - 1];
        let vout = s < last && dvirt[s + 1];
        if let (true, Step::Conv(j)) = (vin || vout || conv_res.is_some(), steps[s]) {
            // in the forward pass this conv read BN-ReLU(x_bn) as it
            // normalised it, so now its weight gradient does the same
            let inp = if vin {
                let x_bn = if s == 1 { x } else { &acts[s - 2] };
                bns[bn_of(steps[s - 1]).0].relu_input(x_bn)
            } else {
                ConvInput::Plain(inp)
            };
            // ... and the BN after it hands over its reduction, not dL/d(out)
            let dout = if vout {
                let dy: &[T] = if s + 1 == last { dtop } else { &hi[1] };
                let (i, relu) = bn_of(steps[s + 1]);
                bns[i].grad_out(dy, &acts[s], relu)
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
            let bn_sums = vin
                && accum == Accum::Set
                && conv_res.is_none()
                && (dvirt[s - 1] || (s == 1 && res.is_some()));
            let planes = if bn_sums {
                sums.clear();
                sums.resize(n * gin.c, (0.0, 0.0));
                sums_for = Some(s - 1);
                Some(sums.as_mut_slice())
            } else {
                None
            };
            convs[j].backward_from(accum, conv_res, Some(dinp), dout, inp, n, gin, ws, planes)?;
            continue;
        }
        step_backward(
            steps[s], accum, dinp, dout, inp, &acts[s], n, gin, convs, bns, ws,
        )?;
    }
    Ok(())
}

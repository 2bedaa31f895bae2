//! Fused BatchNorm + ReLU (training mode), the pair that follows most convs
//! in a residual unit. Running them as two ops costs an extra tensor (the BN
//! output, only ever read by the ReLU) and, in the backward, an extra
//! gradient tensor plus two passes over memory; fused, the ReLU is applied
//! as BN writes its output, and the backward masks `dout` by `[y > 0]`
//! inside BatchNorm's own two passes:
//!
//! ```text
//! forward:   y = max(0, BN(x))                       (BN's output is never stored)
//! backward:  dBN = dout * [BN(x) > 0]   (ReLU backward; BN(x) recomputed from x by
//!                                        the forward's expression, y is not read)
//!            dx, dgamma, dbeta = BN backward of dBN  (see ops::batchnorm)
//! ```
//!
//! The math is the two plain ops' (`ops::batchnorm`, `ops::activation`),
//! which stay the reference: the tests check the fused pair against them,
//! bitwise (the same operations in the same order).

use crate::error::{check_len, Result};
use crate::ops::batchnorm::{
    backward_act, forward_train_act, BnAffine, BnBatchStats, BnParamGrads, BnRunning, BnSaved,
    BnShape,
};
use crate::ops::Accum;
use crate::scalar::Scalar;

const OP: &str = "batchnorm_relu";

/// `out = max(0, batchnorm_train(inp))`; saves `mean` and `rstd` and
/// updates the running statistics exactly as
/// [`crate::ops::batchnorm::batchnorm_forward_train`].
pub fn bn_relu_forward_train<T: Scalar>(
    out: &mut [T], // (N, C, HW)  the ReLU's output
    stats: BnBatchStats<T>,
    inp: &[T], // (N, C, HW)
    p: BnAffine<T>,
    running: BnRunning<T>,
    s: BnShape,
) -> Result<()> {
    forward_train_act::<T, true>(out, stats, inp, p, running, s)
}

/// Backward of [`bn_relu_forward_train`]: `dinp`, `dgamma`, `dbeta`
/// accumulate (`+=`). The ReLU mask is recomputed from `x.inp` with the
/// saved `mean`, `rstd` and the forward's `gamma`, `beta` (bitwise the
/// forward's mask), so the ReLU output is not needed.
pub fn bn_relu_backward<T: Scalar>(
    dinp: &mut [T], // (N, C, HW)
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)  dL/d(ReLU output)
    x: BnSaved<T>,
    s: BnShape,
) -> Result<()> {
    bn_relu_backward_to(Accum::Add, dinp, g, dout, x, s)
}

/// [`bn_relu_backward`] with `dinp` written as `accum` says
/// ([`Accum::Set`] overwrites it); `dgamma`, `dbeta` accumulate.
pub fn bn_relu_backward_to<T: Scalar>(
    accum: Accum,
    dinp: &mut [T], // (N, C, HW)
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)  dL/d(ReLU output)
    x: BnSaved<T>,
    s: BnShape,
) -> Result<()> {
    backward_checked(accum == Accum::Set, (dinp, &[]), g, dout, x, None, s)
}

/// [`bn_relu_backward`] writing `dinp = res + (its gradient)`: the input
/// gradient of a pre-activation unit, whose shortcut term `res` (= dL/dy
/// through the identity) joins in the same pass instead of being copied
/// into `dinp` first. Bitwise the copy followed by [`bn_relu_backward`].
/// With `grad_sums` (N, C), the per-plane sums of the reduction are taken
/// from there (`batchnorm::bn_relu_plane_sums`, or a convolution that
/// computed them while it wrote `dout`) instead of read off `dout`.
pub fn bn_relu_backward_plus<T: Scalar>(
    (dinp, res): (&mut [T], &[T]), // (N, C, HW) each
    g: BnParamGrads<T>,
    dout: &[T], // (N, C, HW)  dL/d(ReLU output)
    x: BnSaved<T>,
    grad_sums: Option<&[(f64, f64)]>,
    s: BnShape,
) -> Result<()> {
    check_len(OP, "residual", res, &[s.n * s.c * s.hw])?;
    if let Some(p) = grad_sums {
        check_len(OP, "grad sums", p, &[s.n, s.c])?;
    }
    backward_checked(true, (dinp, res), g, dout, x, grad_sums, s)
}

fn backward_checked<T: Scalar>(
    set: bool,
    (dinp, res): (&mut [T], &[T]),
    g: BnParamGrads<T>,
    dout: &[T],
    x: BnSaved<T>,
    grad_sums: Option<&[(f64, f64)]>,
    s: BnShape,
) -> Result<()> {
    let len = s.n * s.c * s.hw;
    for (what, b) in [("dinp", &*dinp), ("dout", dout), ("input", x.inp)] {
        check_len(OP, what, b, &[len])?;
    }
    for (what, b) in [
        ("dgamma", &*g.dgamma),
        ("dbeta", &*g.dbeta),
        ("mean", x.mean),
        ("rstd", x.rstd),
        ("gamma", x.gamma),
        ("beta", x.beta),
    ] {
        check_len(OP, what, b, &[s.c])?;
    }
    if len == 0 {
        return Ok(());
    }
    let f = if set {
        backward_act::<T, true, true>
    } else {
        backward_act::<T, true, false>
    };
    f((dinp, res), g, dout, x, grad_sums, s, s.parallel());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::Rand;
    use crate::ops::activation::{relu_backward, relu_forward};
    use crate::ops::batchnorm::test_args::{aff, grads, run, saved, stats};
    use crate::ops::batchnorm::{batchnorm_backward, batchnorm_forward_train};

    fn check<T: Scalar>(n: usize, c: usize, hw: usize, seed: u64) {
        let s = BnShape { n, c, hw };
        let len = n * c * hw;
        let mut r = Rand::new(seed);
        let conv = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::of).collect() };
        let x = conv(r.normal_vec(len));
        let gamma = conv(r.uniform_vec(c, 0.5, 1.5));
        let beta = conv(r.uniform_vec(c, -0.5, 0.5));
        let dout = conv(r.normal_vec(len));
        let dinp0 = conv(r.normal_vec(len)); // accumulate on top of something
                                             // reference: the two plain ops
        let (mut m1, mut r1) = (vec![T::zero(); c], vec![T::zero(); c]);
        let (mut rm1, mut rv1) = (vec![T::zero(); c], vec![T::one(); c]);
        let mut bn = vec![T::zero(); len];
        batchnorm_forward_train(
            &mut bn,
            stats(&mut m1, &mut r1),
            &x,
            aff(&gamma, &beta),
            run(&mut rm1, &mut rv1, 0.1, 1e-5),
            s,
        )
        .unwrap();
        let mut y1 = vec![T::zero(); len];
        relu_forward(&mut y1, &bn).unwrap();
        let mut dbn = vec![T::zero(); len];
        relu_backward(&mut dbn, &dout, &y1).unwrap();
        let mut dx1 = dinp0.clone();
        let (mut dg1, mut db1) = (vec![T::one(); c], vec![T::one(); c]);
        batchnorm_backward(
            &mut dx1,
            grads(&mut dg1, &mut db1),
            &dbn,
            saved(&x, &m1, &r1, &gamma, &[]),
            s,
        )
        .unwrap();
        // fused
        let (mut m2, mut r2) = (vec![T::zero(); c], vec![T::zero(); c]);
        let (mut rm2, mut rv2) = (vec![T::zero(); c], vec![T::one(); c]);
        let mut y2 = vec![T::zero(); len];
        bn_relu_forward_train(
            &mut y2,
            stats(&mut m2, &mut r2),
            &x,
            aff(&gamma, &beta),
            run(&mut rm2, &mut rv2, 0.1, 1e-5),
            s,
        )
        .unwrap();
        let mut dx2 = dinp0.clone();
        let (mut dg2, mut db2) = (vec![T::one(); c], vec![T::one(); c]);
        bn_relu_backward(
            &mut dx2,
            grads(&mut dg2, &mut db2),
            &dout,
            saved(&x, &m2, &r2, &gamma, &beta),
            s,
        )
        .unwrap();
        // the residual form: dinp = res + gradient over whatever dinp held
        let mut dx3 = vec![T::of(f64::NAN); len];
        let (mut dg3, mut db3) = (vec![T::one(); c], vec![T::one(); c]);
        bn_relu_backward_plus(
            (&mut dx3, &dinp0),
            grads(&mut dg3, &mut db3),
            &dout,
            saved(&x, &m2, &r2, &gamma, &beta),
            None,
            s,
        )
        .unwrap();
        assert_eq!((&dx3, &dg3, &db3), (&dx2, &dg2, &db2));
        // ... and with the reduction's plane sums given (as a conv computes them)
        let k: Vec<T> = gamma.iter().zip(&r2).map(|(&g, &r)| g * r).collect();
        let mut planes = vec![(0.0, 0.0); s.n * s.c];
        crate::ops::batchnorm::bn_relu_plane_sums(&mut planes, &dout, &x, &m2, &k, &beta, s)
            .unwrap();
        let mut dx4 = vec![T::of(f64::NAN); len];
        let (mut dg4, mut db4) = (vec![T::one(); c], vec![T::one(); c]);
        bn_relu_backward_plus(
            (&mut dx4, &dinp0),
            grads(&mut dg4, &mut db4),
            &dout,
            saved(&x, &m2, &r2, &gamma, &beta),
            Some(&planes),
            s,
        )
        .unwrap();
        assert_eq!((&dx4, &dg4, &db4), (&dx2, &dg2, &db2));
        assert_eq!(y1, y2);
        assert_eq!((m1, r1, rm1, rv1), (m2, r2, rm2, rv2));
        assert_eq!(dg1, dg2);
        assert_eq!(db1, db2);
        assert_eq!(dx1, dx2);
    }

    #[test]
    fn fused_bn_relu_is_bitwise_the_two_plain_ops() {
        // odd sizes, batch 1 with hw > 1, big enough for the parallel path
        for (i, &(n, c, hw)) in [
            (2, 3, 1),
            (1, 5, 7),
            (3, 4, 9),
            (8, 16, 64),
            (5, 3, 33),
            (16, 8, 256),
        ]
        .iter()
        .enumerate()
        {
            check::<f64>(n, c, hw, i as u64);
            check::<f32>(n, c, hw, 100 + i as u64);
        }
    }

    #[test]
    fn shape_errors_name_the_op() {
        let s = BnShape { n: 2, c: 2, hw: 2 };
        let mut d = vec![0.0f64; 7];
        let (mut dg, mut db) = (vec![0.0; 2], vec![0.0; 2]);
        let e = bn_relu_backward(
            &mut d,
            grads(&mut dg, &mut db),
            &[0.0; 8],
            saved(&[0.0; 8], &[0.0; 2], &[1.0; 2], &[1.0; 2], &[0.0; 2]),
            s,
        );
        assert!(e.unwrap_err().to_string().contains(OP));
    }
}

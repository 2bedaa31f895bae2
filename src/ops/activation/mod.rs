//! Pointwise activations: ReLU and Sigmoid.
//!
//! Both backward passes read the forward *output*, which the forward stores
//! anyway; so the input buffer may be reused.

use crate::error::{check_len, Error, Result};
use crate::ops::par::par_pieces;
use crate::scalar::Scalar;

fn same_len<T>(op: &'static str, what: &'static str, a: &[T], b: &[T]) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::Shape {
            op,
            what,
            expected: vec![b.len()],
            got: vec![a.len()],
        });
    }
    Ok(())
}

/// ReLU forward: `out = max(0, inp)`.
pub fn relu_forward<T: Scalar>(out: &mut [T], inp: &[T]) -> Result<()> {
    same_len("relu", "output", out, inp)?;
    par_pieces(
        out,
        #[inline(always)]
        |at, out| {
            for (o, &x) in out.iter_mut().zip(&inp[at..]) {
                *o = if x > T::zero() { x } else { T::zero() };
            }
        },
    );
    Ok(())
}

/// ReLU backward. Forward: `out = max(0, x)`, so `d out / d x = 1` where
/// `x > 0` and `0` elsewhere (the subgradient 0 at `x = 0`, as PyTorch).
/// `out > 0` exactly when `x > 0`, so the mask is read from `out`:
/// `dinp += dout * [out > 0]`.
pub fn relu_backward<T: Scalar>(dinp: &mut [T], dout: &[T], out: &[T]) -> Result<()> {
    same_len("relu", "dinp", dinp, out)?;
    check_len("relu", "dout", dout, &[out.len()])?;
    // branchless, so it vectorises (a conditional store does not)
    par_pieces(
        dinp,
        #[inline(always)]
        |at, dinp| {
            for ((d, &g), &o) in dinp.iter_mut().zip(&dout[at..]).zip(&out[at..]) {
                *d += if o > T::zero() { g } else { T::zero() };
            }
        },
    );
    Ok(())
}

/// ReLU in place: `x = max(0, x)`.
pub fn relu_inplace<T: Scalar>(x: &mut [T]) {
    for v in x.iter_mut() {
        if *v <= T::zero() {
            *v = T::zero();
        }
    }
}

/// Sigmoid forward: `out = 1 / (1 + exp(-inp))`, computed without overflow
/// for large negative inputs.
pub fn sigmoid_forward<T: Scalar>(out: &mut [T], inp: &[T]) -> Result<()> {
    same_len("sigmoid", "output", out, inp)?;
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = if x >= T::zero() {
            T::one() / (T::one() + (-x).exp())
        } else {
            let e = x.exp();
            e / (T::one() + e)
        };
    }
    Ok(())
}

/// Sigmoid backward. Forward: `s = 1 / (1 + e^{-x})`, so
/// `ds/dx = e^{-x} / (1 + e^{-x})^2 = s (1 - s)`:
/// `dinp += dout * out * (1 - out)`.
pub fn sigmoid_backward<T: Scalar>(dinp: &mut [T], dout: &[T], out: &[T]) -> Result<()> {
    same_len("sigmoid", "dinp", dinp, out)?;
    check_len("sigmoid", "dout", dout, &[out.len()])?;
    for ((d, &g), &s) in dinp.iter_mut().zip(dout).zip(out) {
        *d += g * s * (T::one() - s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[test]
    fn hand_computed_cases() {
        // relu([-1, 0, 2]) = [0, 0, 2]; backward of dout = [5, 5, 5] passes only x > 0
        let mut out = [0.0f64; 3];
        relu_forward(&mut out, &[-1.0, 0.0, 2.0]).unwrap();
        assert_eq!(out, [0.0, 0.0, 2.0]);
        let mut d = [0.0; 3];
        relu_backward(&mut d, &[5.0; 3], &out).unwrap();
        assert_eq!(d, [0.0, 0.0, 5.0]);
        // sigmoid(0) = 1/2, slope 1/2 * 1/2 = 1/4; sigmoid(ln 3) = 3/4, slope 3/16
        let mut s = [0.0f64; 2];
        sigmoid_forward(&mut s, &[0.0, 3f64.ln()]).unwrap();
        assert!((s[0] - 0.5).abs() < 1e-15 && (s[1] - 0.75).abs() < 1e-15);
        let mut ds = [0.0; 2];
        sigmoid_backward(&mut ds, &[1.0, 1.0], &s).unwrap();
        assert!((ds[0] - 0.25).abs() < 1e-15 && (ds[1] - 3.0 / 16.0).abs() < 1e-15);
        // no overflow far out
        sigmoid_forward(&mut s, &[-1000.0, 1000.0]).unwrap();
        assert_eq!(s, [0.0, 1.0]);
    }

    #[test]
    fn gradcheck() {
        let mut r = Rand::new(2);
        for &n in &[1usize, 7, 64] {
            let mut xs = vec![r.away_from_zero(n, 1e-2)];
            let e = check_layer(
                &mut xs,
                n,
                |p, out| relu_forward(out, &p[0]).unwrap(),
                |p, dout, g| {
                    let mut out = vec![0.0; n];
                    relu_forward(&mut out, &p[0]).unwrap();
                    relu_backward(&mut g[0], dout, &out).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "relu n={n}: {e:e}");
            let mut xs = vec![r.normal_vec(n)];
            let e = check_layer(
                &mut xs,
                n,
                |p, out| sigmoid_forward(out, &p[0]).unwrap(),
                |p, dout, g| {
                    let mut out = vec![0.0; n];
                    sigmoid_forward(&mut out, &p[0]).unwrap();
                    sigmoid_backward(&mut g[0], dout, &out).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "sigmoid n={n}: {e:e}");
        }
    }
}

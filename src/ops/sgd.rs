//! One SGD step with momentum (optionally Nesterov) and weight decay on one
//! parameter tensor, exactly as `torch.optim.SGD` (dampening 0), per
//! element:
//!
//! ```text
//! d = g + wd * w               (the decayed gradient: the gradient of
//!                               L + wd/2 ||w||^2)
//! v = mu * v + d               (v starts at 0, so the first v is d)
//! step = d + mu * v  (Nesterov)   or   v  (classical)
//! w -= lr * step
//! ```
//!
//! An update, not a differentiated function: nothing here has a gradient.
//! `train::optim` keeps the state and the per-parameter options.

use crate::error::{check_len, Result};
use crate::scalar::Scalar;

/// The hyper-parameters of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// `w` and its velocity `v` updated in place from the gradient `g`.
pub fn sgd_update<T: Scalar>(w: &mut [T], v: &mut [T], g: &[T], h: SgdStep) -> Result<()> {
    check_len("sgd", "gradient", g, &[w.len()])?;
    check_len("sgd", "velocity", v, &[w.len()])?;
    let (mu, lr, wd) = (T::of(h.momentum), T::of(h.lr), T::of(h.weight_decay));
    for ((w, &g), vi) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        let d = g + wd * *w;
        *vi = mu * *vi + d;
        let step = if h.nesterov { d + mu * *vi } else { *vi };
        *w -= lr * step;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        // w = 1, g = 0.5, lr 0.1, mu 0.9, wd 0.01:
        // step 1: d = 0.51, v = 0.51, w = 1 - 0.051 = 0.949
        // step 2: d = 0.5 + 0.00949 = 0.50949, v = 0.459 + 0.50949 = 0.96849,
        //         w = 0.949 - 0.096849 = 0.852151
        let h = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov: false,
        };
        let (mut w, mut v) = ([1.0f64], [0.0]);
        sgd_update(&mut w, &mut v, &[0.5], h).unwrap();
        assert!((w[0] - 0.949).abs() < 1e-15 && (v[0] - 0.51).abs() < 1e-15);
        sgd_update(&mut w, &mut v, &[0.5], h).unwrap();
        assert!((w[0] - 0.852151).abs() < 1e-12);
        // Nesterov, no decay: d = 0.5, v = 0.5, step = 0.5 + 0.45 = 0.95
        let h = SgdStep {
            weight_decay: 0.0,
            nesterov: true,
            ..h
        };
        let (mut w, mut v) = ([1.0f64], [0.0]);
        sgd_update(&mut w, &mut v, &[0.5], h).unwrap();
        assert!((w[0] - 0.905).abs() < 1e-15);
        assert!(sgd_update(&mut w, &mut [0.0; 2], &[0.5], h).is_err());
    }
}

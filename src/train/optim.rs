//! SGD with momentum (optionally Nesterov) and weight decay, exactly as
//! `torch.optim.SGD` (dampening 0); the per-element update is
//! `ops::sgd::sgd_update`:
//!
//! ```text
//! d = grad + wd * p            (wd = 0 for exempt parameters)
//! v = mu * v + d               (v starts at 0, so the first v is d)
//! step = d + mu * v  (Nesterov)   or   v  (classical)
//! p -= lr * step
//! ```

use crate::backend::{Backend, Cpu};
use crate::model::{Param, ParamKind};
use crate::ops::sgd::SgdStep;
use crate::scalar::Scalar;
use serde::{Deserialize, Serialize};

/// Optimiser settings; the defaults are He et al.'s (momentum 0.9, weight
/// decay 1e-4, decay on every parameter).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// exempt BatchNorm weights/biases and all biases from weight decay
    pub no_decay_bn_bias: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            no_decay_bn_bias: false,
        }
    }
}

/// SGD state: one velocity buffer per parameter (allocated on the first step).
#[derive(Clone, Debug, Default)]
pub struct Sgd<T> {
    pub cfg: SgdConfig,
    pub velocity: Vec<Vec<T>>,
}

impl<T: Scalar> Sgd<T> {
    pub fn new(cfg: SgdConfig) -> Self {
        Sgd {
            cfg,
            velocity: Vec::new(),
        }
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn step(&mut self, params: &mut [&mut Param<T>], lr: f64) {
        let fits = self.velocity.len() == params.len()
            && (params.iter().zip(&self.velocity)).all(|(p, v)| p.value.len() == v.len());
        if !fits {
            self.velocity = params
                .iter()
                .map(|p| vec![T::zero(); p.value.len()])
                .collect();
        }
        for (p, v) in params.iter_mut().zip(self.velocity.iter_mut()) {
            let exempt = self.cfg.no_decay_bn_bias && p.kind != ParamKind::Weight;
            let h = SgdStep {
                lr,
                momentum: self.cfg.momentum,
                weight_decay: if exempt { 0.0 } else { self.cfg.weight_decay },
                nesterov: self.cfg.nesterov,
            };
            Cpu::sgd_update(&mut p.value, v, &p.grad, h).expect("velocities sized above");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(v: f64, g: f64, kind: ParamKind) -> Param<f64> {
        let mut p = Param::new("p".into(), vec![1], kind, vec![v]);
        p.grad[0] = g;
        p
    }

    #[test]
    fn matches_torch_sgd_by_hand() {
        // p = 1, g = 0.5, lr 0.1, mu 0.9, wd 0.01:
        // step 1: d = 0.5 + 0.01 = 0.51, v = 0.51, p = 1 - 0.051 = 0.949
        // step 2 (same grad): d = 0.5 + 0.00949 = 0.50949, v = 0.9*0.51 + 0.50949 = 0.96849,
        //         p = 0.949 - 0.096849 = 0.852151
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.01,
            no_decay_bn_bias: false,
        });
        let mut p = param(1.0, 0.5, ParamKind::Weight);
        opt.step(&mut [&mut p], 0.1);
        assert!((p.value[0] - 0.949).abs() < 1e-15);
        opt.step(&mut [&mut p], 0.1);
        assert!((p.value[0] - 0.852151).abs() < 1e-12);
        // Nesterov, no decay: d = 0.5, v = 0.5, step = 0.5 + 0.45 = 0.95
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            no_decay_bn_bias: false,
        });
        let mut p = param(1.0, 0.5, ParamKind::Weight);
        opt.step(&mut [&mut p], 0.1);
        assert!((p.value[0] - 0.905).abs() < 1e-15);
    }

    #[test]
    fn bn_and_bias_exemption() {
        let cfg = SgdConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.5,
            no_decay_bn_bias: true,
        };
        let mut opt = Sgd::new(cfg);
        let mut w = param(1.0, 0.0, ParamKind::Weight);
        let mut b = param(1.0, 0.0, ParamKind::BnWeight);
        opt.step(&mut [&mut w, &mut b], 1.0);
        assert_eq!(w.value[0], 0.5);
        assert_eq!(b.value[0], 1.0);
    }
}

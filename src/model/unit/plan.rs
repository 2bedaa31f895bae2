//! A unit's plan: which passes it fuses and which intermediates it leaves
//! unstored, decided once per batch size from its kind (shortcut, mix,
//! post) and from what its convolutions can absorb, and the buffers sized
//! accordingly ([`Unit::ensure`]). Every choice here gives the same bits as
//! storing everything (`store_every_activation(true)`; `tests.rs`).

use super::{resize, Mix, ShortcutPath, Step, Unit};
use crate::scalar::Scalar;

impl<T: Scalar> Unit<T> {
    /// Identity shortcut with a plain addition: the backward adds `dsum`
    /// to `dx` and to `dF` in one pass, without materialising `dh`.
    pub(super) fn fused_identity_add(&self) -> bool {
        matches!(self.path, ShortcutPath::Identity) && self.mix == Mix::Add
    }

    /// `post` is a single ReLU after a plain addition (the original unit):
    /// the forward writes `max(0, h + F)` in one pass (the sum itself is
    /// never stored) and the backward masks `dy` in one pass.
    pub(super) fn fused_relu_post(&self) -> bool {
        self.mix == Mix::Add && self.post == [Step::Relu]
    }

    /// The branch step whose output gradient has two writers: the step above
    /// it and a projection shortcut that reads the pre-activation (pre-act
    /// B projections); it is zeroed and accumulated, every other branch
    /// gradient is overwritten by its one writer.
    pub(super) fn shared_grad(&self) -> Option<usize> {
        match (&self.path, self.pre_idx) {
            (
                ShortcutPath::Projection {
                    reads_pre: true, ..
                },
                Some(p),
            ) => Some(p),
            _ => None,
        }
    }

    /// Whether branch step `s` is a BN-ReLU that a training forward need
    /// not store: its one reader is the next step, a convolution that
    /// normalises while it reads at no cost of its own (not a pre-activation
    /// projection, which reads it too).
    pub(super) fn is_virtual(&self, s: usize, n: usize) -> bool {
        if self.store_all {
            return false;
        }
        let read_by_shortcut = self.pre_idx == Some(s)
            && matches!(
                self.path,
                ShortcutPath::Projection {
                    reads_pre: true,
                    ..
                }
            );
        match (self.steps[s], self.steps.get(s + 1)) {
            (Step::BnRelu(_), Some(&Step::Conv(j))) => {
                !read_by_shortcut && self.convs[j].fuses_input_act(n, self.geoms[s])
            }
            _ => false,
        }
    }

    /// Whether branch step `s` is a BN (or BN-ReLU) whose input gradient
    /// the backward need not store: its one reader is the conv before it,
    /// which computes it while it reads at no cost of its own (not where a
    /// pre-activation projection adds to the same gradient).
    pub(super) fn grad_is_virtual(&self, s: usize, n: usize) -> bool {
        if self.store_all || s == 0 || self.shared_grad() == Some(s - 1) {
            return false;
        }
        let gin = if s == 1 {
            self.in_geom
        } else {
            self.geoms[s - 2]
        };
        match (self.steps[s - 1], self.steps[s]) {
            (Step::Conv(j), Step::Bn(_) | Step::BnRelu(_)) => self.convs[j].fuses_grad_out(n, gin),
            _ => false,
        }
    }

    /// Whether the branch's last step is a conv that can add the identity
    /// shortcut in its own store (a plain addition, no ReLU after it).
    pub(super) fn folds_add(&self, n: usize) -> bool {
        let last = self.steps.len() - 1;
        let gin = if last == 0 {
            self.in_geom
        } else {
            self.geoms[last - 1]
        };
        !self.store_all
            && self.mix == Mix::Add
            && matches!(self.path, ShortcutPath::Identity)
            && !self.fused_relu_post()
            && match self.steps[last] {
                Step::Conv(j) => self.convs[j].fuses_input_act(n, gin),
                _ => false,
            }
    }

    pub(super) fn ensure(&mut self, n: usize) {
        if self.n == n {
            return;
        }
        self.n = n;
        let out = self.out_geom.len(n);
        self.virt = (0..self.steps.len())
            .map(|s| self.is_virtual(s, n))
            .collect();
        self.dvirt = (0..self.steps.len())
            .map(|s| self.grad_is_virtual(s, n))
            .collect();
        self.fold_add = self.folds_add(n);
        let last = self.steps.len() - 1;
        self.acts = (self.geoms.iter().zip(&self.virt).enumerate())
            .map(|(s, (g, &v))| {
                let unstored = v || (s == last && self.fold_add);
                vec![T::zero(); if unstored { 0 } else { g.len(n) }]
            })
            .collect();
        let needs_h = !matches!(self.path, ShortcutPath::Identity | ShortcutPath::None)
            || matches!(self.mix, Mix::Dropout { .. });
        resize(&mut self.h, if needs_h { out } else { 0 });
        // with a plain addition dh = dF = dsum: no buffer of its own
        let no_dh = matches!(self.path, ShortcutPath::None) || self.mix == Mix::Add;
        resize(&mut self.dh, if no_dh { 0 } else { out });
        let drop = matches!(self.mix, Mix::Dropout { .. });
        resize(&mut self.hd, if drop { out } else { 0 });
        resize(&mut self.mask, if drop { out } else { 0 });
        let gated = self.gate.is_some();
        resize(&mut self.g, if gated { out } else { 0 });
        resize(&mut self.dz, if gated { out } else { 0 });
        let sum_len = if self.fused_relu_post() { 0 } else { out };
        resize(&mut self.sum, sum_len);
        self.post_acts = self.post.iter().map(|_| vec![T::zero(); out]).collect();
        if let ShortcutPath::OptionA(s) = &mut self.path {
            s.n = n;
        }
    }
}

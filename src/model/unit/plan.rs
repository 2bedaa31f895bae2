//! A unit's plan: every fusion and storage decision of its forward and
//! backward, made once per batch size (and, for the backward, per probe
//! setting) from the unit's kind (steps, shortcut, mix, post) and from what
//! its convolutions can absorb, in [`Plan::new`]. The forward and the
//! backward only read it. [`Plan::reference`] turns every decision off (no
//! fused step, every intermediate stored, every term written by its own
//! pass): the fast plan gives the same bits (`tests.rs`), and the
//! reference unit (`reference.rs`, plain ops) the same values to 1e-12.
//!
//! Names: an *unstored* tensor is one the plan never writes, because its
//! only reader computes it while it reads (a BN-ReLU output read by a conv,
//! a BN's input gradient read by the conv before it, a branch output `F`
//! the last conv adds into the sum). *Plane sums* are the per-(image,
//! channel) sums a conv takes of the tensor it writes, the first pass of
//! the BN statistics (or reduction) that reads that tensor.

use super::{resize, Mix, ShortcutPath, Step, Unit};
use crate::backend::Backend;
use crate::model::layers::Geom;
use crate::scalar::Scalar;

/// Where the fast backward writes the shortcut's term of `dL/dx`. The
/// shortcut gradient of the fast unit is written in `Unit::backward_inner`,
/// in the one `match` on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortcutGrad {
    /// By its own pass, first (`dx = h'(x)^T dh`; the identity: a copy of
    /// `dh`), the branch term added to it; with the probe, into its own
    /// buffer.
    Own,
    /// The original unit's ReLU backward writes `dx = dsum = dy [out > 0]`
    /// in the same pass as `dsum` (identity shortcut, plain addition).
    WithReluMask,
    /// The first step, a BN-ReLU, writes `dx = dh + J^T ...` in its own
    /// backward pass.
    InFirstBnRelu,
    /// The first step, a direct conv, writes `dx = dh + W^T ...` in its
    /// input gradient's store.
    InFirstConv,
}

/// Every fusion and storage decision of one unit at one batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    /// the batch size planned for (0: not planned yet)
    pub n: usize,
    /// the branch, `Bn, Relu` pairs fused into `BnRelu` (fast plan)
    pub steps: Vec<Step>,
    /// output geometry of each of `steps`
    pub geoms: Vec<Geom>,
    /// the step whose output a pre-activation projection reads
    pub pre_idx: Option<usize>,
    /// after the addition, fused as `steps`
    pub post: Vec<Step>,
    // ---- forward (training only, except `add_in_conv`)
    /// branch steps whose output is unstored: a BN-ReLU whose one reader,
    /// the next conv, normalises as it reads (`BnLayer::relu_input`)
    pub unstored: Vec<bool>,
    /// branch steps that are a conv taking its output's stat sums (each
    /// plane's sum) for the statistics of the BN after it
    pub stat_sums_in_conv: Vec<bool>,
    /// the original unit's last BN applied inside the add + ReLU pass
    /// (`out = max(0, h + BN(x))`; neither `F` nor the sum stored)
    pub bn_in_add: bool,
    /// the ReLU after a plain addition in the addition's pass (forward) and
    /// its mask in one pass (backward); the sum is not stored
    pub add_relu: bool,
    /// the last conv writes `sum = x + F` (identity, plain addition), `F`
    /// unstored (training and evaluation)
    pub add_in_conv: bool,
    // ---- backward
    /// branch steps (BN, BN-ReLU) whose input gradient is unstored: the
    /// conv before them computes it as it reads it (`BnLayer::grad_out`)
    pub unstored_grad: Vec<bool>,
    /// the branch gradient with two writers (the step above it and a
    /// projection reading the pre-activation): zeroed and added to; every
    /// other branch gradient is overwritten by its one writer
    pub shared: Option<usize>,
    /// where the shortcut term goes, `[probe off, probe on]`
    pub shortcut_grad: [ShortcutGrad; 2],
    /// branch steps that are a conv taking, as it writes the BN-ReLU
    /// before it its output gradient, that BN-ReLU's grad sums (each
    /// plane's reduction sums); `[probe off, probe on]`
    pub grad_sums_in_conv: [Vec<bool>; 2],
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            n: 0,
            steps: vec![],
            geoms: vec![],
            pre_idx: None,
            post: vec![],
            unstored: vec![],
            stat_sums_in_conv: vec![],
            bn_in_add: false,
            add_relu: false,
            add_in_conv: false,
            unstored_grad: vec![],
            shared: None,
            shortcut_grad: [ShortcutGrad::Own; 2],
            grad_sums_in_conv: [vec![], vec![]],
        }
    }
}

/// Merges every `Bn(i), Relu` pair into `BnRelu(i)`; `pre_idx` (an index
/// into `steps`) follows: a pointer at a merged pair's ReLU now points at
/// the fused step.
fn fuse_bn_relu(steps: &[Step], pre_idx: Option<usize>) -> (Vec<Step>, Option<usize>) {
    let mut out = Vec::with_capacity(steps.len());
    let mut map = Vec::with_capacity(steps.len()); // old index -> new index
    let mut i = 0;
    while i < steps.len() {
        if let (Step::Bn(j), Some(Step::Relu)) = (steps[i], steps.get(i + 1)) {
            out.push(Step::BnRelu(j));
            map.push(out.len() - 1);
            map.push(out.len() - 1);
            i += 2;
        } else {
            out.push(steps[i]);
            map.push(out.len() - 1);
            i += 1;
        }
    }
    (out, pre_idx.map(|p| map[p]))
}

impl Plan {
    /// The fast plan of `u` at batch size `n`.
    pub fn new<T: Scalar, B: Backend>(u: &Unit<T, B>, n: usize) -> Plan {
        Plan::make(u, n, true)
    }

    /// Every fusion off: `Bn, Relu` run as two steps, every intermediate
    /// stored, every term of `dL/dx` written by its own pass.
    pub fn reference<T: Scalar, B: Backend>(u: &Unit<T, B>, n: usize) -> Plan {
        Plan::make(u, n, false)
    }

    fn make<T: Scalar, B: Backend>(u: &Unit<T, B>, n: usize, fused: bool) -> Plan {
        let (steps, pre_idx) = if fused {
            fuse_bn_relu(&u.steps, u.pre_idx)
        } else {
            (u.steps.clone(), u.pre_idx)
        };
        let post = if fused {
            fuse_bn_relu(&u.post, None).0
        } else {
            u.post.clone()
        };
        let mut geoms = Vec::with_capacity(steps.len());
        let mut g = u.in_geom;
        for s in &steps {
            if let Step::Conv(i) = s {
                g = u.convs[*i].out_geom(g);
            }
            geoms.push(g);
        }
        let (len, last) = (steps.len(), steps.len() - 1);
        // input geometry of step s
        let gin = |s: usize| if s == 0 { u.in_geom } else { geoms[s - 1] };
        // step s is a conv that reads a BN-ReLU input / a BN output
        // gradient at no cost of its own
        let conv_reads_act = |s: usize| match steps[s] {
            Step::Conv(j) => fused && B::conv_fuses_input_act(&u.convs[j], n, gin(s)),
            _ => false,
        };
        let conv_reads_grad = |s: usize| match steps[s] {
            Step::Conv(j) => fused && B::conv_fuses_grad_out(&u.convs[j], n, gin(s)),
            _ => false,
        };
        let identity = matches!(u.path, ShortcutPath::Identity);
        let identity_add = identity && u.mix == Mix::Add;
        let shared = match (&u.path, pre_idx) {
            (
                ShortcutPath::Projection {
                    reads_pre: true, ..
                },
                Some(p),
            ) => Some(p),
            _ => None,
        };
        let add_relu = fused && u.mix == Mix::Add && post == [Step::Relu];
        let bn_in_add = add_relu && matches!(steps[last], Step::Bn(_));
        // a BN-ReLU read only by the next conv (not by a projection too)
        let unstored: Vec<bool> = (0..len)
            .map(|s| {
                matches!(steps[s], Step::BnRelu(_))
                    && s < last
                    && shared != Some(s)
                    && conv_reads_act(s + 1)
            })
            .collect();
        let stat_sums_in_conv = (0..len)
            .map(|s| {
                let bn_next = s < last && (unstored[s + 1] || (bn_in_add && s + 1 == last));
                bn_next && conv_reads_act(s)
            })
            .collect();
        let add_in_conv = fused && identity_add && !add_relu && conv_reads_act(last);
        // a BN whose input gradient only the conv before it reads
        let unstored_grad: Vec<bool> = (0..len)
            .map(|s| {
                s > 0
                    && shared != Some(s - 1)
                    && matches!(steps[s], Step::Bn(_) | Step::BnRelu(_))
                    && conv_reads_grad(s - 1)
            })
            .collect();
        let shortcut_grad = [false, true].map(|probe| {
            if !fused || !identity_add || probe {
                ShortcutGrad::Own
            } else if conv_reads_grad(0) {
                ShortcutGrad::InFirstConv
            } else if add_relu {
                ShortcutGrad::WithReluMask
            } else if matches!(steps[0], Step::BnRelu(_)) {
                ShortcutGrad::InFirstBnRelu
            } else {
                ShortcutGrad::Own
            }
        });
        let grad_sums_in_conv = shortcut_grad.map(|sg| {
            (0..len)
                .map(|s| {
                    // the conv overwrites the unstored BN-ReLU's gradient
                    // (its one writer) whose reduction the next pass takes
                    s > 0
                        && matches!(steps[s], Step::Conv(_))
                        && unstored[s - 1]
                        && shared != Some(s - 1)
                        && (unstored_grad[s - 1] || (s == 1 && sg == ShortcutGrad::InFirstBnRelu))
                })
                .collect()
        });
        Plan {
            n,
            steps,
            geoms,
            pre_idx,
            post,
            unstored,
            stat_sums_in_conv,
            bn_in_add,
            add_relu,
            add_in_conv,
            unstored_grad,
            shared,
            shortcut_grad,
            grad_sums_in_conv,
        }
    }

    /// How many tensors the plan leaves unstored (tests).
    #[cfg(test)]
    pub fn unstored_count(&self) -> usize {
        let flags = self.unstored.iter().chain(&self.unstored_grad);
        flags.filter(|&&v| v).count() + usize::from(self.add_in_conv)
    }
}

impl<T: Scalar, B: Backend> Unit<T, B> {
    /// Plans for batch size `n` (the fast plan, or the reference plan after
    /// `use_reference_plan(true)`) and sizes the activation buffers.
    pub(super) fn ensure(&mut self, n: usize) {
        if self.plan.n == n {
            return;
        }
        self.plan = if self.reference_plan {
            Plan::reference(self, n)
        } else {
            Plan::new(self, n)
        };
        let plan = &self.plan;
        let out = self.out_geom.len(n);
        let last = plan.steps.len() - 1;
        let a = &mut self.act;
        a.branch = (plan.geoms.iter().zip(&plan.unstored).enumerate())
            .map(|(s, (g, &v))| {
                let unstored = v || (s == last && plan.add_in_conv);
                B::zeros(if unstored { 0 } else { g.len(n) })
            })
            .collect();
        let needs_h = !matches!(self.path, ShortcutPath::Identity | ShortcutPath::None)
            || matches!(self.mix, Mix::Dropout { .. });
        resize::<B, T>(&mut a.h, if needs_h { out } else { 0 });
        let drop = matches!(self.mix, Mix::Dropout { .. });
        resize::<B, T>(&mut a.hd, if drop { out } else { 0 });
        resize::<B, T>(&mut a.mask, if drop { out } else { 0 });
        let gated = self.gate.is_some();
        resize::<B, T>(&mut a.g, if gated { out } else { 0 });
        resize::<B, T>(&mut a.sum, if plan.add_relu { 0 } else { out });
        a.post = plan.post.iter().map(|_| B::zeros(out)).collect();
        // with a plain addition dh = dF = dsum: no buffer of its own
        let no_dh = matches!(self.path, ShortcutPath::None) || self.mix == Mix::Add;
        resize::<B, T>(&mut self.dh, if no_dh { 0 } else { out });
        resize::<B, T>(&mut self.dz, if gated { out } else { 0 });
        if let ShortcutPath::OptionA(s) = &mut self.path {
            s.n = n;
        }
    }
}

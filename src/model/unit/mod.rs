//! One residual unit: `y = post(mix(h(x), F(x)))`, every placement of Fig. 4
//! and every shortcut kind of Table 1 of He et al. 2016.
//!
//! The branch `F` is a list of steps (conv, BN, ReLU) run in order; the
//! shortcut `h` is the identity, option A, or a 1x1 projection; `mix`
//! combines them; `post` is what follows the addition (ReLU for the original
//! unit, BN + ReLU for bn_after_add, nothing for the others).
//!
//! ## Backward of the addition (the "gradient highway")
//!
//! With `s = dL/d(mix output)` (the unit's output gradient carried back
//! through `post`), each mix and its local derivatives:
//!
//! ```text
//! add:             y = h + F            dh = s            dF = s
//! scale:           y = a h + b F        dh = a s          dF = b s
//! exclusive gate:  y = (1-g) h + g F    dh = (1-g) s      dF = g s      dg = (F - h) s
//! shortcut gate:   y = (1-g) h + F      dh = (1-g) s      dF = s        dg = -h s
//! dropout:         y = m h + F          dh = m s          dF = s        (m: the mask)
//! none:            y = F                                  dF = s
//! ```
//!
//! with `g = sigmoid(z)`, `z = W_g x + b_g`, so `dz = dg g (1 - g)`. Then
//! `dL/dx = h'(x)^T dh + J_F(x)^T dF (+ W_g^T dz)`: the first term is the
//! *shortcut term* (for the identity, exactly `dh`, the gradient highway),
//! the rest the *branch term* (a gate's own path counts with the branch).
//! The probe (`UnitFlow`) records both and their cosine; they add up to
//! `dL/dx` exactly.

//!
//! Two executors run a unit: the fast one here (`forward`, `backward`,
//! with `steps.rs`), which reads every fusion and storage decision from the
//! unit's [`Plan`] (`plan.rs`), and the reference unit ([`Reference`],
//! `reference.rs`: plain ops, every intermediate stored), the oracle the
//! fast one is tested against (`tests.rs`). The fast unit runs on any
//! [`Backend`] (`crate::backend`): its tensors are the backend's buffers
//! and every pass is a call of the backend's; the reference unit runs on
//! the CPU.

use super::layers::{BnLayer, Geom, Param, WeightLayer};
use super::spec::UnitKind;
use crate::backend::{Backend, ConvForwardPass, ConvSource, Cpu, MixSource, MixTarget};
use crate::error::Result;
use crate::ops::shortcut_a::ShortcutAShape;
use crate::ops::Accum;
use crate::scalar::Scalar;
use rand::Rng;

mod build;
mod plan;
mod reference;
mod steps;
#[cfg(test)]
mod tests;

pub use crate::ops::mix::Mix;
pub use plan::{Plan, ShortcutGrad};
pub use reference::Reference;
use steps::{backward_steps, bn_of, zeroed, Layers, Saved, StepsBackward};
use steps::{step_backward, step_forward};

/// One step of a branch (or of `post`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Conv(usize),
    Bn(usize),
    Relu,
    /// `Bn(i)` then `Relu`, fused (`ops::fused`): one output tensor, no
    /// stored BN output
    BnRelu(usize),
}

/// The shortcut path `h(x)`.
#[derive(Clone, Debug)]
pub enum ShortcutPath<T: Scalar, B: Backend = Cpu> {
    Identity,
    /// strided subsampling + zero-padded channels
    OptionA(ShortcutAShape),
    /// 1x1 conv (or Linear): a B projection or the conv1x1 shortcut kind;
    /// `reads_pre`: it reads the pre-activated input (pre-act B projections)
    Projection {
        layer: Box<WeightLayer<T, B>>,
        reads_pre: bool,
    },
    /// no shortcut: a plain net
    None,
}

/// The gradient split of one unit, recorded during its backward.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UnitFlow {
    /// ||dL/dx_l||
    pub grad_norm: f64,
    /// ||h'(x)^T dh||: the shortcut term
    pub shortcut_norm: f64,
    /// ||J_F^T dF (+ gate path)||: the branch term
    pub branch_norm: f64,
    /// cosine between the two terms (0 where either is zero)
    pub cosine: f64,
}

/// The gradient scratch of a unit's backward (branch steps, post steps,
/// the probe's two terms, grad sums): alive only during one unit's
/// backward, so a network shares one set between the units of a stage.
#[derive(Clone, Default)]
pub struct UnitGrads<T: Scalar, B: Backend = Cpu> {
    /// `dacts[s]`: dL/d(output of branch step s); the last one is dF
    dacts: Vec<B::Buf<T>>,
    /// dL/d(mix output), when post steps follow the addition
    dsum: B::Buf<T>,
    /// `dpost[i]`: dL/d(output of post step i), for i < last
    dpost: Vec<B::Buf<T>>,
    /// the probe's shortcut and branch terms of dL/dx
    dx_short: B::Buf<T>,
    dx_branch: B::Buf<T>,
    /// grad sums: per-plane sums of a BN-ReLU backward's reduction, taken by the conv
    /// that writes that BN-ReLU's output gradient (N, C)
    grad_sums: B::Buf<(f64, f64)>,
}

/// The activations of a unit's last forward, sized by its plan.
#[derive(Clone, Default)]
struct Acts<T: Scalar, B: Backend> {
    /// output of each branch step (empty where unstored)
    branch: Vec<B::Buf<T>>,
    /// shortcut output (unused for the identity: h = x)
    h: B::Buf<T>,
    /// dropped-out shortcut (dropout kind) and its mask
    hd: B::Buf<T>,
    mask: B::Buf<T>,
    /// gate sigmoid(z)
    g: B::Buf<T>,
    /// mix output (empty when the plan fuses the ReLU after it)
    sum: B::Buf<T>,
    /// output of each post step
    post: Vec<B::Buf<T>>,
    /// stat sums: per-plane sums of a BN's input, taken by the conv that writes it
    /// (N, C): the first pass of the BN's training statistics
    stat_sums: B::Buf<f64>,
    /// the last forward was a training one (the plan's unstored tensors
    /// were left unstored)
    trained: bool,
}

/// One residual unit: its parameters, its plan, its activations and its
/// gradient buffers.
#[derive(Clone)]
pub struct Unit<T: Scalar, B: Backend = Cpu> {
    pub index: usize,
    pub kind: UnitKind,
    pub in_geom: Geom,
    pub out_geom: Geom,
    // ---- parameters
    pub convs: Vec<WeightLayer<T, B>>,
    pub bns: Vec<BnLayer<T, B>>,
    pub path: ShortcutPath<T, B>,
    pub mix: Mix,
    pub gate: Option<WeightLayer<T, B>>,
    // ---- the unit as the spec describes it (nothing fused)
    /// the branch, in the placement's order
    steps: Vec<Step>,
    /// what follows the addition
    post: Vec<Step>,
    /// the step whose output a pre-activation projection reads
    pre_idx: Option<usize>,
    // ---- the plan: every fusion and storage decision, per batch size
    plan: Plan,
    /// plan with [`Plan::reference`] instead of [`Plan::new`]
    reference_plan: bool,
    // ---- activations
    act: Acts<T, B>,
    // ---- gradients: the mix's (the unit's own; `dz` holds the gate's
    // logits z between forward and backward), and the shared scratch
    // (swapped in from the net's `UnitGrads` during backward)
    dh: B::Buf<T>,
    dz: B::Buf<T>,
    grad: UnitGrads<T, B>,
}

impl<T: Scalar> Unit<T> {
    /// The direct-path factor of this unit's shortcut: 1 for the identity,
    /// `s` for scale, 0 for none; `None` where the shortcut is not a scalar
    /// multiple of the identity (gates, convs, projections, option A,
    /// dropout masks).
    pub fn direct_factor(&self) -> Option<f64> {
        match (&self.path, self.mix) {
            (ShortcutPath::None, _) | (_, Mix::None) => Some(0.0),
            (ShortcutPath::Identity, Mix::Add) => Some(1.0),
            (ShortcutPath::Identity, Mix::Scale { shortcut, .. }) => Some(shortcut),
            _ => None,
        }
    }

    /// Multiply the output of the branch by `f` at initialisation: the
    /// weights of its last conv/Linear, or the affine parameters of its last
    /// BN when a BN ends the branch (a conv scaled before a BN would be
    /// normalised away). `f < 1` lets the shortcut's direct term dominate.
    pub fn scale_branch_output(&mut self, f: f64) {
        let f = T::of(f);
        for step in self.steps.iter().rev() {
            match *step {
                Step::Relu => continue,
                Step::Bn(j) | Step::BnRelu(j) => {
                    for p in self.bns[j].params_mut() {
                        Cpu::scale(&mut p.value, f);
                    }
                }
                Step::Conv(i) => {
                    for p in self.convs[i].params_mut() {
                        Cpu::scale(&mut p.value, f);
                    }
                }
            }
            return;
        }
    }

    /// All learnable parameters, in state-dict order.
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v: Vec<&mut Param<T>> = Vec::new();
        for c in self.convs.iter_mut() {
            v.extend(c.params_mut());
        }
        for b in self.bns.iter_mut() {
            v.extend(b.params_mut());
        }
        if let ShortcutPath::Projection { layer, .. } = &mut self.path {
            v.extend(layer.params_mut());
        }
        if let Some(g) = self.gate.as_mut() {
            v.extend(g.params_mut());
        }
        v
    }
}

/// The fast unit, on any backend.
impl<T: Scalar, B: Backend> Unit<T, B> {
    /// The unit's output (valid after `forward`).
    pub fn output(&self) -> &B::Buf<T> {
        self.act.post.last().unwrap_or(&self.act.sum)
    }

    /// Runs with [`Plan::reference`] (`true`: nothing fused, every
    /// intermediate stored) or the fast [`Plan::new`] (`false`, the
    /// default): the two give the same bits.
    pub fn use_reference_plan(&mut self, yes: bool) {
        self.reference_plan = yes;
        self.plan.n = 0; // re-plan at the next forward
    }

    /// The plan of the last forward.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Forward: fills every activation buffer; the result is `output()`.
    pub fn forward<R: Rng>(
        &mut self,
        x: &B::Buf<T>,
        n: usize,
        train: bool,
        ws: &mut B::Workspace<T>,
        rng: &mut R,
    ) -> Result<()> {
        self.ensure(n);
        let (plan, a) = (&self.plan, &mut self.act);
        // the original unit's last BN is applied inside the add + ReLU pass
        let bn_in_add = train && plan.bn_in_add;
        let nbranch = plan.steps.len() - usize::from(bn_in_add);
        a.trained = train;
        // the step whose BN statistics' first pass (its stat sums) the conv
        // before it took while writing its input
        let mut stat_sums_for: Option<usize> = None;
        // the branch F(x), step by step
        for s in 0..nbranch {
            let (done, rest) = a.branch.split_at_mut(s);
            let (inp, gin) = if s == 0 {
                (x, self.in_geom)
            } else {
                (&done[s - 1], plan.geoms[s - 1])
            };
            if plan.unstored[s] {
                match (train, plan.steps[s]) {
                    // a BN-ReLU read by the next conv: statistics only
                    (true, Step::BnRelu(i)) => {
                        let stat_sums = (stat_sums_for == Some(s)).then_some(&a.stat_sums);
                        B::bn_stats_train(&mut self.bns[i], inp, n, gin, stat_sums)?;
                        continue;
                    }
                    // evaluation stores it as usual
                    _ => resize::<B, T>(&mut rest[0], plan.geoms[s].len(n)),
                }
            }
            // a conv that reads the unstored BN-ReLU before it ...
            let vin = train && s > 0 && plan.unstored[s - 1];
            // ... writes sum = x + F ...
            let into_sum = plan.add_in_conv && s + 1 == nbranch;
            // ... or takes its output's stat sums for the BN after it
            let stat_sums_next = train && plan.stat_sums_in_conv[s];
            if let (true, Step::Conv(j)) = (vin || into_sum || stat_sums_next, plan.steps[s]) {
                let inp = if vin {
                    let x_bn = if s == 1 { x } else { &done[s - 2] };
                    let bn = &self.bns[bn_of(plan.steps[s - 1]).0];
                    ConvSource::BnRelu { x: x_bn, bn }
                } else {
                    ConvSource::Plain(inp)
                };
                let (out, res) = if into_sum {
                    (&mut a.sum, Some(x))
                } else {
                    (&mut rest[0], None)
                };
                let stat_sums = if stat_sums_next {
                    zeroed::<B, _>(&mut a.stat_sums, n * plan.geoms[s].c);
                    stat_sums_for = Some(s + 1);
                    Some(&mut a.stat_sums)
                } else {
                    None
                };
                let pass = ConvForwardPass {
                    out,
                    res,
                    inp,
                    stat_sums,
                };
                B::conv_forward(&self.convs[j], pass, n, gin, ws)?;
                continue;
            }
            let layers = Layers {
                convs: &mut self.convs,
                bns: &mut self.bns,
                ws,
            };
            step_forward(plan.steps[s], &mut rest[0], inp, (n, gin), train, layers)?;
        }
        // the shortcut h(x)
        match &self.path {
            ShortcutPath::Identity | ShortcutPath::None => {}
            ShortcutPath::OptionA(s) => B::shortcut_a_forward(&mut a.h, x, s)?,
            ShortcutPath::Projection { layer, reads_pre } => {
                let (inp, gin) = match (reads_pre, plan.pre_idx) {
                    (true, Some(p)) => (&a.branch[p], plan.geoms[p]),
                    _ => (x, self.in_geom),
                };
                B::weight_forward(layer, &mut a.h, inp, n, gin, ws)?;
            }
        }
        let drop = matches!(self.mix, Mix::Dropout { .. });
        let identity = matches!(self.path, ShortcutPath::Identity);
        if drop && identity {
            B::copy(&mut a.h, x)?;
        }
        let h: &B::Buf<T> = if identity && !drop { x } else { &a.h };
        // the mix
        match self.mix {
            // ... with the last BN inside: out = max(0, h + BN(x_bn))
            Mix::Add if bn_in_add => {
                let (i, s) = (bn_of(plan.steps[nbranch]).0, nbranch);
                let (x_bn, g_bn) = if s == 0 {
                    (x, self.in_geom)
                } else {
                    (&a.branch[s - 1], plan.geoms[s - 1])
                };
                let stat_sums = (stat_sums_for == Some(s)).then_some(&a.stat_sums);
                let (bn, out) = (&mut self.bns[i], &mut a.post[0]);
                B::bn_add_relu_train(bn, out, h, x_bn, (n, g_bn), stat_sums)?;
            }
            // ... and the ReLU after it, in the same pass: out = max(0, h + F)
            Mix::Add if plan.add_relu => {
                let f = a.branch.last().expect("branch has steps");
                B::add_relu_forward(&mut a.post[0], h, f)?;
            }
            // ... done by the last conv
            Mix::Add if plan.add_in_conv => {}
            mix => {
                let f = a.branch.last().expect("branch has steps");
                let mut h = h;
                if let Mix::Dropout { p } = mix {
                    B::dropout_forward(&mut a.hd, &mut a.mask, h, (p, train), rng)?;
                    h = &a.hd;
                }
                if let Some(gate) = &self.gate {
                    // z = W_g x + b_g (into dz, which the backward overwrites), g = sigmoid(z)
                    B::weight_forward(gate, &mut self.dz, x, n, self.in_geom, ws)?;
                    B::sigmoid_forward(&mut a.g, &self.dz)?;
                }
                let inputs = MixSource {
                    h,
                    f,
                    g: &a.g,
                    mask: &a.mask,
                };
                B::mix_forward(&mut a.sum, mix, inputs)?;
            }
        }
        // after the addition (a fused ReLU is done)
        let first_post = usize::from(plan.add_relu);
        for i in first_post..plan.post.len() {
            let (done, rest) = a.post.split_at_mut(i);
            let inp = if i == 0 { &a.sum } else { &done[i - 1] };
            let layers = Layers {
                convs: &mut self.convs,
                bns: &mut self.bns,
                ws,
            };
            let ng = (n, self.out_geom);
            step_forward(plan.post[i], &mut rest[0], inp, ng, train, layers)?;
        }
        Ok(())
    }

    /// Backward: `dx = dL/dx` (overwritten: the unit is `x`'s only
    /// consumer) given `dy = dL/d(output)`, accumulating every parameter
    /// gradient. With `flow`, the shortcut and branch terms are kept apart
    /// and recorded.
    ///
    /// The gradient buffers of the branch and of `post` live only during this
    /// call, so they come from `grads`, one set the net shares between the
    /// units of a stage: swapped in here, swapped back at the end.
    pub fn backward(
        &mut self,
        dx: &mut B::Buf<T>,
        dy: &B::Buf<T>,
        x: &B::Buf<T>,
        ws: &mut B::Workspace<T>,
        grads: &mut UnitGrads<T, B>,
        flow: Option<&mut UnitFlow>,
    ) -> Result<()> {
        std::mem::swap(&mut self.grad, grads);
        self.fit_grads(flow.is_some());
        let r = self.backward_inner(dx, dy, x, ws, flow);
        std::mem::swap(&mut self.grad, grads);
        r
    }

    /// Sizes the (swapped-in) gradient buffers for this unit; after the first
    /// step every size fits the capacity already there (no allocation).
    fn fit_grads(&mut self, probe: bool) {
        let (n, nsteps, np) = (self.plan.n, self.plan.steps.len(), self.plan.post.len());
        let out = self.out_geom.len(n);
        let d = &mut self.grad;
        if d.dacts.len() < nsteps {
            d.dacts.resize_with(nsteps, Default::default);
        }
        // the last one is dF, which a plain addition aliases to dsum: no buffer
        let add = self.mix == Mix::Add;
        for (s, (da, g)) in d.dacts.iter_mut().zip(&self.plan.geoms).enumerate() {
            let len = if add && s + 1 == nsteps { 0 } else { g.len(n) };
            B::resize(da, len);
        }
        // dsum only when post steps follow the addition (else dsum is dy);
        // dpost[i] holds the gradient of post step i's output for i < last
        // (the last one's is dy)
        B::resize(&mut d.dsum, if np > 0 { out } else { 0 });
        if d.dpost.len() < np {
            d.dpost.resize_with(np, Default::default);
        }
        for (i, dp) in d.dpost.iter_mut().enumerate().take(np) {
            B::resize(dp, if i + 1 < np { out } else { 0 });
        }
        let probe_len = if probe { self.in_geom.len(n) } else { 0 };
        B::resize(&mut d.dx_short, probe_len);
        B::resize(&mut d.dx_branch, probe_len);
    }

    fn backward_inner(
        &mut self,
        dx: &mut B::Buf<T>,
        dy: &B::Buf<T>,
        x: &B::Buf<T>,
        ws: &mut B::Workspace<T>,
        flow: Option<&mut UnitFlow>,
    ) -> Result<()> {
        let (plan, a, d) = (&self.plan, &self.act, &mut self.grad);
        let n = plan.n;
        let probe = flow.is_some();
        let nsteps = plan.steps.len();
        let sg = plan.shortcut_grad[usize::from(probe)];
        // the unstored tensors of a training forward (none after evaluation)
        let none = vec![false; if a.trained { 0 } else { nsteps }];
        let (unstored, unstored_grad, grad_sums_in_conv): (&[bool], &[bool], &[bool]) = if a.trained
        {
            let grad_sums = &plan.grad_sums_in_conv[usize::from(probe)];
            (&plan.unstored, &plan.unstored_grad, grad_sums)
        } else {
            (&none, &none, &none)
        };
        if probe {
            B::zero(&mut d.dx_branch);
        }
        if let Some(p) = plan.shared {
            B::zero(&mut d.dacts[p]);
        }
        // dacts[s] is dL/d(output of branch step s); the last one is dF
        let (dacts, dacts_top) = d.dacts[..nsteps].split_at_mut(nsteps - 1);
        // in the forward pass post came after the addition, so now carry dy back through it
        // a plain addition hands dsum on as dF: when the branch ends in a BN
        // that only reduces here (its input gradient made by the conv
        // before it), the pass that writes dsum takes that reduction's
        // per-plane sums too (not with the probe, whose shortcut prefix
        // may reuse the grad sums buffer first)
        let last = nsteps - 1;
        let top_sums = match plan.steps[last] {
            Step::Bn(i)
                if plan.add_relu && self.mix == Mix::Add && unstored_grad[last] && !probe =>
            {
                Some(i)
            }
            _ => None,
        };
        if plan.add_relu {
            // the forward was out = max(0, sum), so now dsum = dy [out > 0]
            let with_dx = (sg == ShortcutGrad::WithReluMask).then_some(&mut *dx);
            match top_sums {
                Some(i) => {
                    // unstored_grad[last]: a conv step before the BN
                    let (x_bn, ng) = (&a.branch[last - 1], (n, plan.geoms[last - 1]));
                    let (bn, sums) = (&self.bns[i], &mut d.grad_sums);
                    B::add_relu_backward_sums(
                        &mut d.dsum,
                        with_dx,
                        dy,
                        &a.post[0],
                        bn,
                        x_bn,
                        ng,
                        sums,
                    )?
                }
                None => B::add_relu_backward(&mut d.dsum, with_dx, dy, &a.post[0])?,
            }
        } else if !plan.post.is_empty() {
            B::zero(&mut d.dsum);
            for dp in d.dpost[..plan.post.len()].iter_mut() {
                B::zero(dp);
            }
            for i in (0..plan.post.len()).rev() {
                let (lo, hi) = d.dpost.split_at_mut(i);
                let dout = if i + 1 == plan.post.len() { dy } else { &hi[0] };
                let dinp = if i == 0 { &mut d.dsum } else { &mut lo[i - 1] };
                let inp = if i == 0 { &a.sum } else { &a.post[i - 1] };
                let layers = Layers {
                    convs: &mut self.convs,
                    bns: &mut self.bns,
                    ws,
                };
                let saved = Saved {
                    inp,
                    out: &a.post[i],
                    gin: self.out_geom,
                };
                step_backward(plan.post[i], Accum::Add, dinp, dout, saved, n, layers)?;
            }
        }
        let dsum: &B::Buf<T> = if plan.post.is_empty() { dy } else { &d.dsum };
        // the addition splits the gradient into the shortcut's dh and the
        // branch's dF (overwritten: their only writer); a plain addition
        // passes dsum to both: dh = dF = dsum, no copy
        let (dh, df): (&B::Buf<T>, &B::Buf<T>) = if self.mix == Mix::Add {
            (dsum, dsum)
        } else {
            let identity_h = matches!(self.path, ShortcutPath::Identity)
                && !matches!(self.mix, Mix::Dropout { .. });
            let inputs = MixSource {
                h: if identity_h { x } else { &a.h },
                f: &a.branch[nsteps - 1],
                g: &a.g,
                mask: &a.mask,
            };
            let grads = MixTarget {
                dh: &mut self.dh,
                df: &mut dacts_top[0],
                dz: &mut self.dz,
            };
            B::mix_backward(grads, dsum, self.mix, inputs)?;
            (&self.dh, &dacts_top[0])
        };
        let branch = StepsBackward {
            steps: &plan.steps,
            unstored,
            unstored_grad,
            grad_sums_in_conv,
            acts: &a.branch,
            geoms: &plan.geoms,
            in_geom: self.in_geom,
            x,
            n,
        };
        // the shortcut term of dL/dx, h'(x)^T dh (the identity: dh, the
        // gradient highway): written first, the branch term added to it;
        // or, where the plan joins it to a pass of the branch, handed on
        let short_target: &mut B::Buf<T> = if probe { &mut d.dx_short } else { dx };
        let mut res = None;
        match (sg, &mut self.path) {
            (ShortcutGrad::WithReluMask, _) => {} // dx = dsum, written with it above
            (ShortcutGrad::InFirstBnRelu | ShortcutGrad::InFirstConv, _) => res = Some(dh),
            (ShortcutGrad::Own, ShortcutPath::Identity) => B::copy(short_target, dh)?,
            (ShortcutGrad::Own, ShortcutPath::None) => B::zero(short_target),
            (ShortcutGrad::Own, ShortcutPath::OptionA(s)) => {
                B::zero(short_target);
                B::shortcut_a_backward(short_target, dh, s)?;
            }
            (ShortcutGrad::Own, ShortcutPath::Projection { layer, reads_pre }) => {
                match (*reads_pre, plan.pre_idx) {
                    (true, Some(p)) => {
                        // the projection read the pre-activation: its gradient enters
                        // the branch at step p and is carried back through steps p..0
                        B::zero(short_target);
                        let (inp, ng) = (&a.branch[p], (n, plan.geoms[p]));
                        let dp = Some(&mut dacts[p]);
                        B::weight_backward(layer, Accum::Add, dp, dh, inp, ng, ws)?;
                        if probe {
                            // keep the shortcut term apart: carry it down now, then clear
                            let (below, at_p) = dacts.split_at_mut(p);
                            let prefix = branch.prefix(p + 1);
                            let mut layers = Layers {
                                convs: &mut self.convs,
                                bns: &mut self.bns,
                                ws,
                            };
                            let grad_sums = &mut d.grad_sums;
                            let into = (&at_p[0], below, &mut d.dx_short);
                            let sums = (grad_sums, false);
                            backward_steps(&prefix, &mut layers, into, None, None, sums)?;
                            B::zero(&mut dacts[p]);
                        }
                    }
                    _ => {
                        let (dx, ng) = (Some(short_target), (n, self.in_geom));
                        B::weight_backward(layer, Accum::Set, dx, dh, x, ng, ws)?
                    }
                }
            }
        }
        // the branch term: dx += J_F^T dF, step by step in exact reverse order
        let branch_target: &mut B::Buf<T> = if probe { &mut d.dx_branch } else { dx };
        let mut layers = Layers {
            convs: &mut self.convs,
            bns: &mut self.bns,
            ws,
        };
        let into = (df, dacts, &mut *branch_target);
        backward_steps(
            &branch,
            &mut layers,
            into,
            plan.shared,
            res,
            (&mut d.grad_sums, top_sums.is_some()),
        )?;
        // ... and the gate's own path, which counts with the branch
        if let Some(gate) = self.gate.as_mut() {
            let (dx, ng) = (Some(branch_target), (n, self.in_geom));
            B::weight_backward(gate, Accum::Add, dx, &self.dz, x, ng, ws)?;
        }
        if let Some(fl) = flow {
            let t = B::add_terms(dx, &d.dx_short, &d.dx_branch)?;
            *fl = UnitFlow {
                grad_norm: t.total,
                shortcut_norm: t.first,
                branch_norm: t.second,
                cosine: t.cosine,
            };
        }
        Ok(())
    }
}

/// `v` as a buffer of `len` (zeros when its length changes).
fn resize<B: Backend, T: Scalar>(v: &mut B::Buf<T>, len: usize) {
    if B::len(v) != len {
        *v = B::zeros(len);
    }
}

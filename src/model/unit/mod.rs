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

use super::layers::{BnLayer, Geom, Param, WeightLayer};
use super::spec::UnitKind;
use crate::error::Result;
use crate::ops::activation::sigmoid_forward;
use crate::ops::conv2d::{ConvInput, ConvWorkspace};
use crate::ops::dropout::dropout_forward;
use crate::ops::par::{par_pieces, par_pieces2, par_zero};
use crate::ops::shortcut_a::{shortcut_a_backward, shortcut_a_forward, ShortcutAShape};
use crate::ops::Accum;
use crate::scalar::Scalar;
use crate::tensor::{dot, norm};
use rand::Rng;

mod build;
mod plan;
mod reference;
mod steps;
#[cfg(test)]
mod tests;

pub use reference::Reference;
use steps::{backward_steps, bn_of};
pub(crate) use steps::{step_backward, step_forward};

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

/// Merges every `Bn(i), Relu` pair into `BnRelu(i)`; `pre_idx` (an index
/// into `steps`) follows: a pointer at a merged pair's ReLU now points at
/// the fused step.
pub(super) fn fuse_bn_relu(steps: Vec<Step>, pre_idx: Option<usize>) -> (Vec<Step>, Option<usize>) {
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

/// The shortcut path `h(x)`.
#[derive(Clone, Debug)]
pub enum ShortcutPath<T> {
    Identity,
    /// strided subsampling + zero-padded channels
    OptionA(ShortcutAShape),
    /// 1x1 conv (or Linear): a B projection or the conv1x1 shortcut kind;
    /// `reads_pre`: it reads the pre-activated input (pre-act B projections)
    Projection {
        layer: Box<WeightLayer<T>>,
        reads_pre: bool,
    },
    /// no shortcut: a plain net
    None,
}

/// How the shortcut and the branch are combined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    Add,
    Scale { shortcut: f64, branch: f64 },
    ExclusiveGate,
    ShortcutGate,
    Dropout { p: f64 },
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
/// the probe's two terms): alive only during one unit's backward, so a
/// network keeps one set for all its units.
pub struct UnitGrads<T> {
    dacts: Vec<Vec<T>>,
    dsum: Vec<T>,
    dpost: Vec<Vec<T>>,
    dx_short: Vec<T>,
    dx_branch: Vec<T>,
}

impl<T> Default for UnitGrads<T> {
    fn default() -> Self {
        UnitGrads {
            dacts: vec![],
            dsum: vec![],
            dpost: vec![],
            dx_short: vec![],
            dx_branch: vec![],
        }
    }
}

impl<T> UnitGrads<T> {
    fn swap(&mut self, u: &mut Unit<T>) {
        std::mem::swap(&mut self.dacts, &mut u.dacts);
        std::mem::swap(&mut self.dsum, &mut u.dsum);
        std::mem::swap(&mut self.dpost, &mut u.dpost);
        std::mem::swap(&mut self.dx_short, &mut u.dx_short);
        std::mem::swap(&mut self.dx_branch, &mut u.dx_branch);
    }
}

/// One residual unit with its parameters and its activation buffers.
#[derive(Clone)]
pub struct Unit<T> {
    pub index: usize,
    pub kind: UnitKind,
    pub in_geom: Geom,
    pub out_geom: Geom,
    pub convs: Vec<WeightLayer<T>>,
    pub bns: Vec<BnLayer<T>>,
    pub path: ShortcutPath<T>,
    pub mix: Mix,
    pub gate: Option<WeightLayer<T>>,
    steps: Vec<Step>,
    geoms: Vec<Geom>, // output geometry of each branch step
    pre_idx: Option<usize>,
    post: Vec<Step>,
    // activations, sized for batch `n`
    n: usize,
    // branch steps whose output a training forward does not store: a
    // BN-ReLU whose only reader, the next conv, normalises as it reads
    // (`BnLayer::relu_input`); `virt_live` says the last forward did so
    virt: Vec<bool>,
    // branch steps (BN, BN-ReLU) whose input gradient the backward does not
    // store: the conv before them computes it as it reads it
    // (`BnLayer::grad_out`); used when `virt_live`
    dvirt: Vec<bool>,
    // the last conv of the branch writes `sum = x + F` (identity shortcut,
    // plain addition) and F is not stored
    fold_add: bool,
    virt_live: bool,
    // per-plane sums of a BN-ReLU backward's reduction, computed by the
    // conv that writes that BN-ReLU's output gradient (N, C)
    bn_sums: Vec<(f64, f64)>,
    // per-plane sums of a BN's input, computed by the conv that writes it
    // (N, C): the first pass of the BN's training statistics
    bn_planes: Vec<f64>,
    store_all: bool,        // no virtual steps (tests compare both ways)
    acts: Vec<Vec<T>>,      // branch step outputs (empty where `virt`)
    h: Vec<T>,              // shortcut output (unused for the identity: h = x)
    hd: Vec<T>,             // dropped-out shortcut (dropout kind)
    mask: Vec<T>,           // dropout mask
    g: Vec<T>,              // gate sigmoid(z)
    sum: Vec<T>,            // mix output
    post_acts: Vec<Vec<T>>, // post step outputs
    // gradients (dacts, dsum, dpost, dx_short, dx_branch: swapped in from
    // the net's shared UnitGrads during backward, empty otherwise)
    dacts: Vec<Vec<T>>,
    dh: Vec<T>,
    dz: Vec<T>,
    dsum: Vec<T>,
    dpost: Vec<Vec<T>>,
    dx_short: Vec<T>,
    dx_branch: Vec<T>,
}

fn resize<T: Scalar>(v: &mut Vec<T>, len: usize) {
    if v.len() != len {
        *v = vec![T::zero(); len];
    }
}

fn zero<T: Scalar>(v: &mut [T]) {
    par_zero(v);
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
                    let bn = &mut self.bns[j];
                    bn.gamma
                        .value
                        .iter_mut()
                        .chain(bn.beta.value.iter_mut())
                        .for_each(|v| *v *= f);
                }
                Step::Conv(i) => {
                    for p in self.convs[i].params_mut() {
                        p.value.iter_mut().for_each(|v| *v *= f);
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

    /// The unit's output (valid after `forward`).
    pub fn output(&self) -> &[T] {
        self.post_acts.last().unwrap_or(&self.sum)
    }

    /// Stores every branch activation (`true`), or lets a BN-ReLU that
    /// only a convolution reads go unstored (`false`, the default): the
    /// two give the same bits.
    pub fn store_every_activation(&mut self, yes: bool) {
        self.store_all = yes;
        self.n = 0; // re-plan the buffers at the next forward
    }

    /// Forward: fills every activation buffer; the result is `output()`.
    pub fn forward<R: Rng>(
        &mut self,
        x: &[T],
        n: usize,
        train: bool,
        ws: &mut ConvWorkspace<T>,
        rng: &mut R,
    ) -> Result<()> {
        self.ensure(n);
        // the original unit's last BN is applied inside the add + ReLU pass
        // (training mode): its output F is never stored
        let fold_bn = match self.steps.last() {
            Some(&Step::Bn(i)) if train && self.fused_relu_post() => Some(i),
            _ => None,
        };
        let nbranch = self.steps.len() - usize::from(fold_bn.is_some());
        self.virt_live = train;
        // the step whose BN statistics' first pass (per-plane sums) the conv
        // before it took while writing its input
        let mut planes_for: Option<usize> = None;
        // the branch F(x), step by step
        for s in 0..nbranch {
            let (done, rest) = self.acts.split_at_mut(s);
            let (inp, gin) = if s == 0 {
                (x, self.in_geom)
            } else {
                (done[s - 1].as_slice(), self.geoms[s - 1])
            };
            if self.virt[s] {
                match (train, self.steps[s]) {
                    // a BN-ReLU read by the next conv: statistics only
                    (true, Step::BnRelu(i)) => {
                        let planes = (planes_for == Some(s)).then_some(self.bn_planes.as_slice());
                        self.bns[i].forward_stats_train(inp, n, gin, planes)?;
                        continue;
                    }
                    // evaluation stores it as usual
                    _ => resize(&mut rest[0], self.geoms[s].len(n)),
                }
            }
            let vin = train && s > 0 && self.virt[s - 1];
            let into_sum = self.fold_add && s + 1 == nbranch;
            // a training BN that reads this conv's output, and takes its
            // statistics on the unstored paths (a BN-ReLU read by a conv, or
            // the original unit's last BN)
            let bn_next = train
                && (s + 1 < self.steps.len())
                && (self.virt[s + 1] || (fold_bn.is_some() && s + 1 == nbranch));
            let planes_next = bn_next
                && match self.steps[s] {
                    Step::Conv(j) => self.convs[j].fuses_input_act(n, gin),
                    _ => false,
                };
            if let (true, Step::Conv(j)) = (vin || into_sum || planes_next, self.steps[s]) {
                // ... which this conv normalises as it reads
                let inp = if vin {
                    let x_bn = if s == 1 { x } else { done[s - 2].as_slice() };
                    self.bns[bn_of(self.steps[s - 1]).0].relu_input(x_bn)
                } else {
                    ConvInput::Plain(inp)
                };
                // the last conv adds the identity shortcut in its own store:
                // sum = x + F, F never stored
                let (out, res) = if into_sum {
                    (&mut self.sum, Some(x))
                } else {
                    (&mut rest[0], None)
                };
                let planes = if planes_next {
                    self.bn_planes.clear();
                    self.bn_planes.resize(n * self.geoms[s].c, 0.0);
                    planes_for = Some(s + 1);
                    Some(self.bn_planes.as_mut_slice())
                } else {
                    None
                };
                self.convs[j].forward_from(out, res, inp, n, gin, ws, planes)?;
                continue;
            }
            step_forward(
                self.steps[s],
                &mut rest[0],
                inp,
                n,
                gin,
                train,
                &mut self.convs,
                &mut self.bns,
                ws,
            )?;
        }
        // the shortcut h(x)
        match &self.path {
            ShortcutPath::Identity | ShortcutPath::None => {}
            ShortcutPath::OptionA(s) => shortcut_a_forward(&mut self.h, x, s)?,
            ShortcutPath::Projection { layer, reads_pre } => {
                let (inp, gin) = match (reads_pre, self.pre_idx) {
                    (true, Some(p)) => (self.acts[p].as_slice(), self.geoms[p]),
                    _ => (x, self.in_geom),
                };
                layer.forward(&mut self.h, inp, n, gin, ws)?;
            }
        }
        if matches!(self.mix, Mix::Dropout { .. }) && matches!(self.path, ShortcutPath::Identity) {
            self.h.copy_from_slice(x);
        }
        let h: &[T] = if matches!(self.path, ShortcutPath::Identity)
            && !matches!(self.mix, Mix::Dropout { .. })
        {
            x
        } else {
            &self.h
        };
        let f = self.acts.last().expect("branch has steps");
        // the addition
        let fused_relu = self.fused_relu_post();
        match self.mix {
            // ... with the last BN inside: out = max(0, h + BN(x_bn))
            Mix::Add if fold_bn.is_some() => {
                let (i, s) = (fold_bn.expect("matched above"), nbranch);
                let (x_bn, g_bn) = if s == 0 {
                    (x, self.in_geom)
                } else {
                    (self.acts[s - 1].as_slice(), self.geoms[s - 1])
                };
                let planes = (planes_for == Some(s)).then_some(self.bn_planes.as_slice());
                let out = &mut self.post_acts[0];
                self.bns[i].forward_add_relu_train(out, h, x_bn, n, g_bn, planes)?;
            }
            // ... and the ReLU after it, in the same pass: out = max(0, h + F)
            Mix::Add if fused_relu => par_pieces(
                &mut self.post_acts[0],
                #[inline(always)]
                |at, out| {
                    for ((y, &a), &b) in out.iter_mut().zip(&h[at..]).zip(&f[at..]) {
                        let v = a + b;
                        *y = if v > T::zero() { v } else { T::zero() };
                    }
                },
            ),
            // ... done by the last conv
            Mix::Add if self.fold_add => {}
            Mix::Add => par_pieces(
                &mut self.sum,
                #[inline(always)]
                |at, sum| {
                    for ((y, &a), &b) in sum.iter_mut().zip(&h[at..]).zip(&f[at..]) {
                        *y = a + b;
                    }
                },
            ),
            Mix::Scale { shortcut, branch } => {
                let (a, b) = (T::of(shortcut), T::of(branch));
                for ((y, &hv), &fv) in self.sum.iter_mut().zip(h).zip(f) {
                    *y = a * hv + b * fv;
                }
            }
            Mix::ExclusiveGate | Mix::ShortcutGate => {
                let gate = self.gate.as_ref().expect("gated unit has a gate");
                // z = W_g x + b_g (into dz, which the backward overwrites anyway), g = sigmoid(z)
                gate.forward(&mut self.dz, x, n, self.in_geom, ws)?;
                sigmoid_forward(&mut self.g, &self.dz)?;
                let excl = self.mix == Mix::ExclusiveGate;
                for (((y, &hv), &fv), &gv) in self.sum.iter_mut().zip(h).zip(f).zip(&self.g) {
                    *y = (T::one() - gv) * hv + if excl { gv * fv } else { fv };
                }
            }
            Mix::Dropout { p } => {
                dropout_forward(&mut self.hd, &mut self.mask, h, p, train, rng)?;
                for ((y, &a), &b) in self.sum.iter_mut().zip(&self.hd).zip(f) {
                    *y = a + b;
                }
            }
            Mix::None => self.sum.copy_from_slice(f),
        }
        // after the addition (a fused ReLU is done)
        let first_post = if fused_relu { 1 } else { 0 };
        for i in first_post..self.post.len() {
            let (done, rest) = self.post_acts.split_at_mut(i);
            let inp = if i == 0 {
                self.sum.as_slice()
            } else {
                done[i - 1].as_slice()
            };
            step_forward(
                self.post[i],
                &mut rest[0],
                inp,
                n,
                self.out_geom,
                train,
                &mut self.convs,
                &mut self.bns,
                ws,
            )?;
        }
        Ok(())
    }

    /// Backward: `dx += dL/dx` given `dy = dL/d(output)`, accumulating every
    /// parameter gradient. With `flow`, the shortcut and branch terms are
    /// kept apart and recorded.
    ///
    /// The gradient buffers of the branch and of `post` live only during this
    /// call, so they come from `grads`, one set shared by every unit of the
    /// net (sized for the largest): swapped in here, swapped back at the end.
    pub fn backward(
        &mut self,
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        ws: &mut ConvWorkspace<T>,
        grads: &mut UnitGrads<T>,
        flow: Option<&mut UnitFlow>,
    ) -> Result<()> {
        grads.swap(self);
        self.fit_grads(flow.is_some());
        let r = self.backward_inner(dx, dy, x, ws, flow);
        grads.swap(self);
        r
    }

    /// Sizes the (swapped-in) gradient buffers for this unit; after the first
    /// step every size fits the capacity already there (no allocation).
    fn fit_grads(&mut self, probe: bool) {
        let (n, nsteps, np) = (self.n, self.steps.len(), self.post.len());
        let out = self.out_geom.len(n);
        if self.dacts.len() < nsteps {
            self.dacts.resize_with(nsteps, Vec::new);
        }
        // the last one is dF, which a plain addition aliases to dsum: no buffer
        let add = self.mix == Mix::Add;
        for (s, (d, g)) in self.dacts.iter_mut().zip(&self.geoms).enumerate() {
            let len = if add && s + 1 == nsteps { 0 } else { g.len(n) };
            d.resize(len, T::zero());
        }
        // dsum only when post steps follow the addition (else dsum is dy);
        // dpost[i] holds the gradient of post step i's output for i < last
        // (the last one's is dy)
        self.dsum.resize(if np > 0 { out } else { 0 }, T::zero());
        if self.dpost.len() < np {
            self.dpost.resize_with(np, Vec::new);
        }
        for (i, d) in self.dpost.iter_mut().enumerate().take(np) {
            d.resize(if i + 1 < np { out } else { 0 }, T::zero());
        }
        let probe_len = if probe { self.in_geom.len(n) } else { 0 };
        self.dx_short.resize(probe_len, T::zero());
        self.dx_branch.resize(probe_len, T::zero());
    }

    fn backward_inner(
        &mut self,
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        ws: &mut ConvWorkspace<T>,
        flow: Option<&mut UnitFlow>,
    ) -> Result<()> {
        let n = self.n;
        let probe = flow.is_some();
        let nsteps = self.steps.len();
        let shared = self.shared_grad();
        let relu_post = self.fused_relu_post();
        let identity_add = self.fused_identity_add();
        let no_virt = vec![false; if self.virt_live { 0 } else { nsteps }];
        let (virt, dvirt): (&[bool], &[bool]) = if self.virt_live {
            (&self.virt, &self.dvirt)
        } else {
            (&no_virt, &no_virt)
        };
        if probe {
            zero(&mut self.dx_branch);
        }
        if let Some(p) = shared {
            zero(&mut self.dacts[p]);
        }
        // dacts[s] is dL/d(output of branch step s); the last one is dF
        let (dacts, dacts_top) = self.dacts[..nsteps].split_at_mut(nsteps - 1);
        // in the forward pass post came after the addition, so now carry dy back through it
        let mut dx_done = false;
        // the first conv's input gradient is written as dsum + ..., in its
        // own store: no dx pass here
        let conv_res = identity_add
            && !probe
            && !self.store_all
            && match self.steps[0] {
                Step::Conv(j) => self.convs[j].fuses_grad_out(n, self.in_geom),
                _ => false,
            };
        if relu_post {
            // the forward was out = max(0, sum), so now dsum = dy [out > 0]
            let out = &self.post_acts[0];
            if identity_add && !probe && !conv_res {
                // ... and the addition hands dsum to the shortcut unchanged:
                // dx = dsum (the gradient highway), written in the same pass
                par_pieces2(
                    dx,
                    &mut self.dsum,
                    #[inline(always)]
                    |at, dx, ds| {
                        for ((a, b), (&g, &o)) in dx
                            .iter_mut()
                            .zip(ds.iter_mut())
                            .zip(dy[at..].iter().zip(&out[at..]))
                        {
                            let v = if o > T::zero() { g } else { T::zero() };
                            *a = v;
                            *b = v;
                        }
                    },
                );
                dx_done = true;
            } else {
                par_pieces(
                    &mut self.dsum,
                    #[inline(always)]
                    |at, ds| {
                        for (b, (&g, &o)) in ds.iter_mut().zip(dy[at..].iter().zip(&out[at..])) {
                            *b = if o > T::zero() { g } else { T::zero() };
                        }
                    },
                );
            }
        } else if !self.post.is_empty() {
            zero(&mut self.dsum);
            for d in self.dpost[..self.post.len()].iter_mut() {
                zero(d);
            }
            for i in (0..self.post.len()).rev() {
                let (lo, hi) = self.dpost.split_at_mut(i);
                let dout: &[T] = if i + 1 == self.post.len() { dy } else { &hi[0] };
                let dinp: &mut [T] = if i == 0 {
                    &mut self.dsum
                } else {
                    &mut lo[i - 1]
                };
                let inp: &[T] = if i == 0 {
                    &self.sum
                } else {
                    &self.post_acts[i - 1]
                };
                step_backward(
                    self.post[i],
                    Accum::Add,
                    dinp,
                    dout,
                    inp,
                    &self.post_acts[i],
                    n,
                    self.out_geom,
                    &mut self.convs,
                    &mut self.bns,
                    ws,
                )?;
            }
        }
        let dsum: &[T] = if self.post.is_empty() { dy } else { &self.dsum };
        // the addition splits the gradient into the shortcut's dh and the
        // branch's dF (overwritten: their only writer)
        let identity_h =
            matches!(self.path, ShortcutPath::Identity) && !matches!(self.mix, Mix::Dropout { .. });
        let h: &[T] = if identity_h { x } else { &self.h };
        let (dh, df): (&[T], &[T]) = {
            let df = &mut dacts_top[0];
            let f = &self.acts[nsteps - 1];
            match self.mix {
                // a plain addition passes dsum to both: dh = dF = dsum, no copy
                Mix::Add => {}
                Mix::Scale { shortcut, branch } => {
                    let (ca, cb) = (T::of(shortcut), T::of(branch));
                    for ((a, b), &s) in self.dh.iter_mut().zip(df.iter_mut()).zip(dsum) {
                        *a = ca * s; // dh = a s
                        *b = cb * s; // dF = b s
                    }
                }
                Mix::ExclusiveGate | Mix::ShortcutGate => {
                    let excl = self.mix == Mix::ExclusiveGate;
                    for i in 0..dsum.len() {
                        let (s, g) = (dsum[i], self.g[i]);
                        self.dh[i] = (T::one() - g) * s; // dh = (1-g) s
                        let dg = if excl {
                            df[i] = g * s; // dF = g s
                            (f[i] - h[i]) * s // dg = (F - h) s
                        } else {
                            df[i] = s; // dF = s
                            -h[i] * s // dg = -h s
                        };
                        self.dz[i] = dg * g * (T::one() - g); // dz = dg g (1-g)
                    }
                }
                Mix::Dropout { .. } => {
                    for (((a, b), &s), &m) in self
                        .dh
                        .iter_mut()
                        .zip(df.iter_mut())
                        .zip(dsum)
                        .zip(&self.mask)
                    {
                        *a = m * s; // dh = m s
                        *b = s; // dF = s
                    }
                }
                Mix::None => df.copy_from_slice(dsum), // dF = s
            }
            if self.mix == Mix::Add {
                (dsum, dsum)
            } else {
                (&self.dh, &dacts_top[0])
            }
        };
        // a pre-activation unit's identity term joins the first BN-ReLU's
        // backward pass instead (dx = dh + ..., no copy of dh first)
        let res_fold = identity_add
            && !probe
            && !dx_done
            && shared.is_none()
            && self.gate.is_none()
            && (matches!(self.steps[0], Step::BnRelu(_)) || conv_res);
        // the shortcut term, written first: dx = h'(x)^T dh (the identity:
        // dx = dh, the gradient highway); the branch term is added to it
        let short_target: &mut [T] = if probe { &mut self.dx_short } else { dx };
        match &mut self.path {
            ShortcutPath::Identity if dx_done || res_fold => {} // done above / below
            ShortcutPath::Identity => par_pieces(
                short_target,
                #[inline(always)]
                |at, t| t.copy_from_slice(&dh[at..at + t.len()]),
            ),
            ShortcutPath::None => zero(short_target),
            ShortcutPath::OptionA(s) => {
                zero(short_target);
                shortcut_a_backward(short_target, dh, s)?;
            }
            ShortcutPath::Projection { layer, reads_pre } => match (*reads_pre, self.pre_idx) {
                (true, Some(p)) => {
                    // the projection read the pre-activation: its gradient enters
                    // the branch at step p and is carried back through steps p..0
                    zero(short_target);
                    layer.backward(Some(&mut dacts[p]), dh, &self.acts[p], n, self.geoms[p], ws)?;
                    if probe {
                        // keep the shortcut term apart: carry it down now, then clear
                        let (below, at_p) = dacts.split_at_mut(p);
                        backward_steps(
                            &self.steps[..=p],
                            (&virt[..=p], &dvirt[..=p]),
                            &at_p[0],
                            below,
                            None,
                            None,
                            &self.acts,
                            &self.geoms,
                            self.in_geom,
                            x,
                            &mut self.dx_short,
                            n,
                            &mut self.convs,
                            &mut self.bns,
                            ws,
                            &mut self.bn_sums,
                        )?;
                        zero(&mut dacts[p]);
                    }
                }
                _ => {
                    layer.backward_to(Accum::Set, Some(short_target), dh, x, n, self.in_geom, ws)?
                }
            },
        }
        // the branch term: dx += J_F^T dF, step by step in exact reverse order
        let branch_target: &mut [T] = if probe { &mut self.dx_branch } else { dx };
        backward_steps(
            &self.steps,
            (virt, dvirt),
            df,
            dacts,
            shared,
            if res_fold { Some(dh) } else { None },
            &self.acts,
            &self.geoms,
            self.in_geom,
            x,
            branch_target,
            n,
            &mut self.convs,
            &mut self.bns,
            ws,
            &mut self.bn_sums,
        )?;
        // ... and the gate's own path, which counts with the branch
        if let Some(gate) = self.gate.as_mut() {
            gate.backward(Some(branch_target), &self.dz, x, n, self.in_geom, ws)?;
        }
        if let Some(fl) = flow {
            for ((d, &a), &b) in dx.iter_mut().zip(&self.dx_short).zip(&self.dx_branch) {
                *d = a + b;
            }
            let (ns, nb) = (norm(&self.dx_short), norm(&self.dx_branch));
            let mut total = 0.0;
            for (&a, &b) in self.dx_short.iter().zip(&self.dx_branch) {
                let t = a.f64() + b.f64();
                total += t * t;
            }
            *fl = UnitFlow {
                grad_norm: total.sqrt(),
                shortcut_norm: ns,
                branch_norm: nb,
                cosine: if ns > 0.0 && nb > 0.0 {
                    dot(&self.dx_short, &self.dx_branch) / (ns * nb)
                } else {
                    0.0
                },
            };
        }
        Ok(())
    }
}

//! The reference unit: one residual unit run the plain way, the oracle the
//! fast unit (`mod.rs`, `steps.rs`, with the fusions its [`Plan`] picks)
//! is tested against.
//!
//! Every intermediate is stored (each step's output, `h`, the gate, the
//! sum, each post step's output), nothing is fused (a BN-ReLU is a BN, then
//! a ReLU), every pass is one plain op (`ops::*` forward, `+=` backward into
//! a zeroed buffer), and the mix and its derivatives are written exactly as
//! the table in `model/unit/mod.rs` states them, one line per mix.
//! The backward always keeps the shortcut term and the branch term apart
//! and adds them at the end: `dL/dx = dx_short + dx_branch`.
//!
//! It uses the unit's own parameters (and updates its BN running
//! statistics, as a training forward must), so a test clones a unit, runs
//! the fast unit on one copy and the reference on the other and compares
//! outputs, `dL/dx`, every parameter gradient, the running statistics and
//! the probe's split (`tests.rs`).
//!
//! [`Plan`]: super::plan::Plan

use super::{Mix, ShortcutPath, Step, Unit, UnitFlow};
use crate::error::Result;
use crate::model::layers::Geom;
use crate::ops::activation::{relu_backward, relu_forward, sigmoid_backward, sigmoid_forward};
use crate::ops::batchnorm::{
    batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train, BnAffine, BnBatchStats,
    BnParamGrads, BnRunning, BnSaved, BnShape, BN_EPS, BN_MOMENTUM,
};
use crate::ops::conv2d::ConvWorkspace;
use crate::ops::dropout::dropout_forward;
use crate::ops::elementwise::add_forward;
use crate::ops::shortcut_a::{shortcut_a_backward, shortcut_a_forward, ShortcutAShape};
use crate::scalar::Scalar;
use crate::tensor::{dot, norm};
use rand::Rng;

/// The stored intermediates of one plain run of a unit.
pub struct Reference<T> {
    steps: Vec<Step>, // the branch, as the spec gives it (no BN-ReLU step)
    post: Vec<Step>,  // after the addition, likewise
    pre_idx: Option<usize>,
    geoms: Vec<Geom>, // output geometry of each branch step
    n: usize,
    acts: Vec<Vec<T>>,      // output of every branch step; the last is F
    h: Vec<T>,              // the shortcut's output h(x)
    mask: Vec<T>,           // dropout mask (ones without dropout)
    z: Vec<T>,              // gate logits W_g x + b_g
    g: Vec<T>,              // gate sigmoid(z)
    sum: Vec<T>,            // the mix's output
    post_acts: Vec<Vec<T>>, // output of every post step
    // batch mean and 1/sqrt(var + eps) of every BN, by BN index
    saved: Vec<(Vec<T>, Vec<T>)>,
}

impl<T: Scalar> Reference<T> {
    /// The plain executor for `u` (its steps as the spec gives them).
    pub fn new(u: &Unit<T>) -> Self {
        let steps = u.steps.clone();
        let mut geoms = Vec::with_capacity(steps.len());
        let mut g = u.in_geom;
        for s in &steps {
            if let Step::Conv(i) = s {
                g = u.convs[*i].out_geom(g);
            }
            geoms.push(g);
        }
        Reference {
            steps,
            post: u.post.clone(),
            pre_idx: u.pre_idx,
            geoms,
            n: 0,
            acts: vec![],
            h: vec![],
            mask: vec![],
            z: vec![],
            g: vec![],
            sum: vec![],
            post_acts: vec![],
            saved: u
                .bns
                .iter()
                .map(|b| (vec![T::zero(); b.c], vec![T::zero(); b.c]))
                .collect(),
        }
    }

    /// The unit's output after [`Reference::forward`].
    pub fn output(&self) -> &[T] {
        self.post_acts.last().unwrap_or(&self.sum)
    }

    /// `out = step(inp)`, the plain op.
    fn step_forward(
        &mut self,
        u: &mut Unit<T>,
        step: Step,
        out: &mut [T],
        (inp, gin): (&[T], Geom),
        train: bool,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        let n = self.n;
        match step {
            Step::Conv(i) => u.convs[i].forward(out, inp, n, gin, ws),
            Step::Relu => relu_forward(out, inp),
            Step::Bn(i) => {
                let bn = &mut u.bns[i];
                let s = BnShape {
                    n,
                    c: bn.c,
                    hw: gin.hw(),
                };
                let p = BnAffine {
                    gamma: &bn.gamma.value,
                    beta: &bn.beta.value,
                };
                if !train {
                    let (rm, rv) = (&bn.running_mean.value, &bn.running_var.value);
                    return batchnorm_forward_eval(out, inp, p, rm, rv, BN_EPS, s);
                }
                bn.num_batches_tracked += 1;
                let (mean, rstd) = &mut self.saved[i];
                let running = BnRunning {
                    mean: &mut bn.running_mean.value,
                    var: &mut bn.running_var.value,
                    momentum: BN_MOMENTUM,
                    eps: BN_EPS,
                };
                let stats = BnBatchStats { mean, rstd };
                batchnorm_forward_train(out, stats, inp, p, running, s)
            }
            Step::BnRelu(_) => unreachable!("the reference unit runs no fused step"),
        }
    }

    /// `dinp += step'(inp)^T dout`, the plain op (training mode).
    fn step_backward(
        &self,
        u: &mut Unit<T>,
        step: Step,
        (dinp, dout): (&mut [T], &[T]),
        Saved { inp, out, gin }: Saved<T>,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        let n = self.n;
        match step {
            Step::Conv(i) => u.convs[i].backward(Some(dinp), dout, inp, n, gin, ws),
            Step::Relu => relu_backward(dinp, dout, out),
            Step::Bn(i) => {
                let bn = &mut u.bns[i];
                let s = BnShape {
                    n,
                    c: bn.c,
                    hw: gin.hw(),
                };
                let (mean, rstd) = &self.saved[i];
                let grads = BnParamGrads {
                    dgamma: &mut bn.gamma.grad,
                    dbeta: &mut bn.beta.grad,
                };
                let x = BnSaved {
                    inp,
                    mean,
                    rstd,
                    gamma: &bn.gamma.value,
                    beta: &[],
                };
                batchnorm_backward(dinp, grads, dout, x, s)
            }
            Step::BnRelu(_) => unreachable!("the reference unit runs no fused step"),
        }
    }

    /// Forward: every intermediate into its own buffer.
    pub fn forward<R: Rng>(
        &mut self,
        u: &mut Unit<T>,
        x: &[T],
        n: usize,
        train: bool,
        ws: &mut ConvWorkspace<T>,
        rng: &mut R,
    ) -> Result<()> {
        self.n = n;
        let out = u.out_geom.len(n);
        // the branch F(x), step by step
        let mut acts: Vec<Vec<T>> = self
            .geoms
            .iter()
            .map(|g| vec![T::zero(); g.len(n)])
            .collect();
        for s in 0..self.steps.len() {
            let (done, rest) = acts.split_at_mut(s);
            let (inp, gin) = if s == 0 {
                (x, u.in_geom)
            } else {
                (done[s - 1].as_slice(), self.geoms[s - 1])
            };
            self.step_forward(u, self.steps[s], &mut rest[0], (inp, gin), train, ws)?;
        }
        self.acts = acts;
        // the shortcut h(x)
        self.h = vec![T::zero(); out];
        match &u.path {
            ShortcutPath::Identity => self.h.copy_from_slice(x),
            ShortcutPath::OptionA(s) => {
                let s = ShortcutAShape { n, ..*s };
                shortcut_a_forward(&mut self.h, x, &s)?;
            }
            ShortcutPath::Projection { layer, reads_pre } => {
                let (inp, gin) = match (reads_pre, self.pre_idx) {
                    (true, Some(p)) => (self.acts[p].as_slice(), self.geoms[p]),
                    _ => (x, u.in_geom),
                };
                layer.forward(&mut self.h, inp, n, gin, ws)?;
            }
            ShortcutPath::None => {}
        }
        // the mix's own inputs: the dropout mask, the gate
        self.mask = vec![T::one(); out];
        if let Mix::Dropout { p } = u.mix {
            let mut dropped = vec![T::zero(); out];
            dropout_forward(&mut dropped, &mut self.mask, &self.h, p, train, rng)?;
        }
        self.z = vec![T::zero(); out];
        self.g = vec![T::zero(); out];
        if let Some(gate) = &u.gate {
            gate.forward(&mut self.z, x, n, u.in_geom, ws)?;
            sigmoid_forward(&mut self.g, &self.z)?;
        }
        // the mix, as the table says
        self.sum = vec![T::zero(); out];
        let f = self.acts.last().expect("branch has steps");
        let one = T::one();
        for i in 0..out {
            let (h, f, g, m) = (self.h[i], f[i], self.g[i], self.mask[i]);
            self.sum[i] = match u.mix {
                Mix::Add => h + f,
                Mix::Scale { shortcut, branch } => T::of(shortcut) * h + T::of(branch) * f,
                Mix::ExclusiveGate => (one - g) * h + g * f,
                Mix::ShortcutGate => (one - g) * h + f,
                Mix::Dropout { .. } => h * m + f,
                Mix::None => f,
            };
        }
        // after the addition
        let mut post_acts: Vec<Vec<T>> = self.post.iter().map(|_| vec![T::zero(); out]).collect();
        for i in 0..self.post.len() {
            let (done, rest) = post_acts.split_at_mut(i);
            let inp = if i == 0 { &self.sum } else { &done[i - 1] };
            let inp = inp.clone();
            self.step_forward(u, self.post[i], &mut rest[0], (&inp, u.out_geom), train, ws)?;
        }
        self.post_acts = post_acts;
        Ok(())
    }

    /// Backward through branch steps `0..=top` from `dtop` (the gradient of
    /// step `top`'s output): `dx += J^T dtop`, every gradient zeroed and
    /// accumulated.
    fn steps_backward(
        &self,
        u: &mut Unit<T>,
        top: usize,
        dtop: &[T],
        x: &[T],
        dx: &mut [T],
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        let mut d: Vec<Vec<T>> = self.geoms[..top]
            .iter()
            .map(|g| vec![T::zero(); g.len(self.n)])
            .collect();
        for s in (0..=top).rev() {
            let (lo, hi) = d.split_at_mut(s);
            let dout: &[T] = if s == top { dtop } else { &hi[0] };
            let (dinp, inp, gin): (&mut [T], &[T], Geom) = if s == 0 {
                (&mut *dx, x, u.in_geom)
            } else {
                (&mut lo[s - 1], &self.acts[s - 1], self.geoms[s - 1])
            };
            let saved = Saved {
                inp,
                out: &self.acts[s],
                gin,
            };
            self.step_backward(u, self.steps[s], (dinp, dout), saved, ws)?;
        }
        Ok(())
    }

    /// Backward (training mode): writes `dx = dL/dx` given `dy`, adds every
    /// parameter gradient, and returns the split of `dx` into its shortcut
    /// and branch terms.
    pub fn backward(
        &self,
        u: &mut Unit<T>,
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        ws: &mut ConvWorkspace<T>,
    ) -> Result<UnitFlow> {
        let out = u.out_geom.len(self.n);
        // through post, back to s = dL/d(mix output)
        let mut ds = dy.to_vec();
        for i in (0..self.post.len()).rev() {
            let inp = if i == 0 {
                &self.sum
            } else {
                &self.post_acts[i - 1]
            };
            let mut dinp = vec![T::zero(); out];
            let saved = Saved {
                inp,
                out: &self.post_acts[i],
                gin: u.out_geom,
            };
            self.step_backward(u, self.post[i], (&mut dinp, &ds), saved, ws)?;
            ds = dinp;
        }
        // the mix's derivatives, as the table says; `dh` is the shortcut's
        let (mut dh, mut df, mut dg) = (
            vec![T::zero(); out],
            vec![T::zero(); out],
            vec![T::zero(); out],
        );
        let f = self.acts.last().expect("branch has steps");
        let one = T::one();
        for i in 0..out {
            let (s, h, f, g, m) = (ds[i], self.h[i], f[i], self.g[i], self.mask[i]);
            (dh[i], df[i], dg[i]) = match u.mix {
                Mix::Add => (s, s, T::zero()),
                Mix::Scale { shortcut, branch } => {
                    (T::of(shortcut) * s, T::of(branch) * s, T::zero())
                }
                Mix::ExclusiveGate => ((one - g) * s, g * s, (f - h) * s),
                Mix::ShortcutGate => ((one - g) * s, s, -h * s),
                Mix::Dropout { .. } => (m * s, s, T::zero()),
                Mix::None => (T::zero(), s, T::zero()),
            };
        }
        // the shortcut term: dx_short = h'(x)^T dh
        let mut dx_short = vec![T::zero(); u.in_geom.len(self.n)];
        let mut through_pre = None;
        match &mut u.path {
            ShortcutPath::Identity => dx_short.copy_from_slice(&dh), // the gradient highway
            ShortcutPath::OptionA(s) => {
                let s = ShortcutAShape { n: self.n, ..*s };
                shortcut_a_backward(&mut dx_short, &dh, &s)?;
            }
            ShortcutPath::Projection { layer, reads_pre } => match (*reads_pre, self.pre_idx) {
                (true, Some(p)) => {
                    // the projection reads the pre-activation (step p's
                    // output), so its term reaches x through steps 0..=p
                    let mut dpre = vec![T::zero(); self.geoms[p].len(self.n)];
                    layer.backward(
                        Some(&mut dpre),
                        &dh,
                        &self.acts[p],
                        self.n,
                        self.geoms[p],
                        ws,
                    )?;
                    through_pre = Some((p, dpre));
                }
                _ => layer.backward(Some(&mut dx_short), &dh, x, self.n, u.in_geom, ws)?,
            },
            ShortcutPath::None => {}
        }
        if let Some((p, dpre)) = through_pre {
            self.steps_backward(u, p, &dpre, x, &mut dx_short, ws)?;
        }
        // the branch term: dx_branch = J_F(x)^T dF (+ the gate's path W_g^T dz)
        let mut dx_branch = vec![T::zero(); u.in_geom.len(self.n)];
        self.steps_backward(u, self.steps.len() - 1, &df, x, &mut dx_branch, ws)?;
        if let Some(gate) = u.gate.as_mut() {
            let mut dz = vec![T::zero(); out];
            sigmoid_backward(&mut dz, &dg, &self.g)?; // dz = dg g (1 - g)
            gate.backward(Some(&mut dx_branch), &dz, x, self.n, u.in_geom, ws)?;
        }
        // dL/dx: the two terms added
        add_forward(dx, &dx_short, &dx_branch)?;
        let (ns, nb) = (norm(&dx_short), norm(&dx_branch));
        Ok(UnitFlow {
            grad_norm: norm(dx),
            shortcut_norm: ns,
            branch_norm: nb,
            cosine: if ns > 0.0 && nb > 0.0 {
                dot(&dx_short, &dx_branch) / (ns * nb)
            } else {
                0.0
            },
        })
    }
}

/// What a step's backward reads of its forward: its input (of geometry
/// `gin`) and its output.
struct Saved<'a, T> {
    inp: &'a [T],
    out: &'a [T],
    gin: Geom,
}

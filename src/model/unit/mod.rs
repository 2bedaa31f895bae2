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
use crate::ops::activation::{relu_backward, relu_forward, sigmoid_forward};
use crate::ops::conv2d::ConvWorkspace;
use crate::ops::dropout::dropout_forward;
use crate::ops::par::{par_pieces, par_pieces2, par_zero};
use crate::ops::shortcut_a::{shortcut_a_backward, shortcut_a_forward, ShortcutAShape};
use crate::scalar::Scalar;
use crate::tensor::{dot, norm};
use rand::Rng;

mod build;

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
    acts: Vec<Vec<T>>,      // branch step outputs
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

    /// Identity shortcut with a plain addition: the backward adds `dsum`
    /// to `dx` and to `dF` in one pass, without materialising `dh`.
    fn fused_identity_add(&self) -> bool {
        matches!(self.path, ShortcutPath::Identity) && self.mix == Mix::Add
    }

    fn ensure(&mut self, n: usize) {
        if self.n == n {
            return;
        }
        self.n = n;
        let out = self.out_geom.len(n);
        self.acts = self
            .geoms
            .iter()
            .map(|g| vec![T::zero(); g.len(n)])
            .collect();
        let needs_h = !matches!(self.path, ShortcutPath::Identity | ShortcutPath::None)
            || matches!(self.mix, Mix::Dropout { .. });
        resize(&mut self.h, if needs_h { out } else { 0 });
        // the identity + add backward writes dh straight into dx (no buffer)
        // except when the probe keeps the terms apart (allocated then)
        let no_dh = matches!(self.path, ShortcutPath::None) || self.fused_identity_add();
        resize(&mut self.dh, if no_dh { 0 } else { out });
        let drop = matches!(self.mix, Mix::Dropout { .. });
        resize(&mut self.hd, if drop { out } else { 0 });
        resize(&mut self.mask, if drop { out } else { 0 });
        let gated = self.gate.is_some();
        resize(&mut self.g, if gated { out } else { 0 });
        resize(&mut self.dz, if gated { out } else { 0 });
        resize(&mut self.sum, out);
        self.post_acts = self.post.iter().map(|_| vec![T::zero(); out]).collect();
        if let ShortcutPath::OptionA(s) = &mut self.path {
            s.n = n;
        }
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
        // the branch F(x), step by step
        for s in 0..self.steps.len() {
            let (done, rest) = self.acts.split_at_mut(s);
            let (inp, gin) = if s == 0 {
                (x, self.in_geom)
            } else {
                (done[s - 1].as_slice(), self.geoms[s - 1])
            };
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
        match self.mix {
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
        // after the addition
        for i in 0..self.post.len() {
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
        for (d, g) in self.dacts.iter_mut().zip(&self.geoms) {
            d.resize(g.len(n), T::zero());
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
        if probe {
            zero(&mut self.dx_short);
            zero(&mut self.dx_branch);
        }
        let nsteps = self.steps.len();
        for d in self.dacts[..nsteps].iter_mut() {
            zero(d);
        }
        // in the forward pass post came after the addition, so now carry dy back through it
        let dsum: &[T] = if self.post.is_empty() {
            dy
        } else {
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
            &self.dsum
        };
        // the addition splits the gradient into the shortcut's dh and the branch's dF
        let identity_h =
            matches!(self.path, ShortcutPath::Identity) && !matches!(self.mix, Mix::Dropout { .. });
        let h: &[T] = if identity_h { x } else { &self.h };
        let fused = self.fused_identity_add() && !probe;
        if self.fused_identity_add() && probe {
            resize(&mut self.dh, dx.len());
        }
        {
            let df = &mut self.dacts[nsteps - 1];
            let f = &self.acts[nsteps - 1];
            match self.mix {
                // identity + add: the shortcut term dx += h'^T dh = dsum and
                // dF = dsum, in one pass
                Mix::Add if fused => par_pieces2(
                    dx,
                    df,
                    #[inline(always)]
                    |at, dx, df| {
                        for ((a, b), &s) in dx.iter_mut().zip(df.iter_mut()).zip(&dsum[at..]) {
                            *a += s; // dx += dh = s (the gradient highway)
                            *b += s; // dF = s
                        }
                    },
                ),
                Mix::Add => par_pieces2(
                    &mut self.dh,
                    df,
                    #[inline(always)]
                    |at, dh, df| {
                        for ((a, b), &s) in dh.iter_mut().zip(df.iter_mut()).zip(&dsum[at..]) {
                            *a = s; // dh = s
                            *b += s; // dF = s
                        }
                    },
                ),
                Mix::Scale { shortcut, branch } => {
                    let (ca, cb) = (T::of(shortcut), T::of(branch));
                    for ((a, b), &s) in self.dh.iter_mut().zip(df.iter_mut()).zip(dsum) {
                        *a = ca * s; // dh = a s
                        *b += cb * s; // dF = b s
                    }
                }
                Mix::ExclusiveGate | Mix::ShortcutGate => {
                    let excl = self.mix == Mix::ExclusiveGate;
                    for i in 0..dsum.len() {
                        let (s, g) = (dsum[i], self.g[i]);
                        self.dh[i] = (T::one() - g) * s; // dh = (1-g) s
                        let dg = if excl {
                            df[i] += g * s; // dF = g s
                            (f[i] - h[i]) * s // dg = (F - h) s
                        } else {
                            df[i] += s; // dF = s
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
                        *b += s; // dF = s
                    }
                }
                Mix::None => {
                    for (b, &s) in df.iter_mut().zip(dsum) {
                        *b += s;
                    }
                }
            }
        }
        // the shortcut term: dx += h'(x)^T dh  (the identity: dx += dh, the gradient highway)
        let short_target: &mut [T] = if probe { &mut self.dx_short } else { dx };
        match &mut self.path {
            ShortcutPath::None => {}
            ShortcutPath::Identity if fused => {} // done above
            ShortcutPath::Identity => {
                let dh = &self.dh;
                par_pieces(
                    short_target,
                    #[inline(always)]
                    |at, t| {
                        for (d, &g) in t.iter_mut().zip(&dh[at..]) {
                            *d += g;
                        }
                    },
                );
            }
            ShortcutPath::OptionA(s) => shortcut_a_backward(short_target, &self.dh, s)?,
            ShortcutPath::Projection { layer, reads_pre } => match (*reads_pre, self.pre_idx) {
                (true, Some(p)) => {
                    // the projection read the pre-activation: its gradient enters
                    // the branch at step p and is carried back through steps p..0
                    layer.backward(
                        Some(&mut self.dacts[p]),
                        &self.dh,
                        &self.acts[p],
                        n,
                        self.geoms[p],
                        ws,
                    )?;
                    if probe {
                        // keep the shortcut term apart: carry it down now, then clear
                        backward_steps(
                            &self.steps[..=p],
                            &mut self.dacts,
                            &self.acts,
                            &self.geoms,
                            self.in_geom,
                            x,
                            &mut self.dx_short,
                            n,
                            &mut self.convs,
                            &mut self.bns,
                            ws,
                        )?;
                        for d in self.dacts[..=p].iter_mut() {
                            zero(d);
                        }
                    }
                }
                _ => layer.backward(Some(short_target), &self.dh, x, n, self.in_geom, ws)?,
            },
        }
        // the branch term: dx += J_F^T dF, step by step in exact reverse order
        let branch_target: &mut [T] = if probe { &mut self.dx_branch } else { dx };
        backward_steps(
            &self.steps,
            &mut self.dacts,
            &self.acts,
            &self.geoms,
            self.in_geom,
            x,
            branch_target,
            n,
            &mut self.convs,
            &mut self.bns,
            ws,
        )?;
        // ... and the gate's own path, which counts with the branch
        if let Some(gate) = self.gate.as_mut() {
            gate.backward(Some(branch_target), &self.dz, x, n, self.in_geom, ws)?;
        }
        if let Some(fl) = flow {
            for ((d, &a), &b) in dx.iter_mut().zip(&self.dx_short).zip(&self.dx_branch) {
                *d += a + b;
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

/// Run one step backward: `dinp += step'(inp)^T dout`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_backward<T: Scalar>(
    step: Step,
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
        Step::Conv(i) => convs[i].backward(Some(dinp), dout, inp, n, gin, ws),
        Step::Bn(i) => bns[i].backward(dinp, dout, inp, n, gin),
        Step::Relu => relu_backward(dinp, dout, out),
        Step::BnRelu(i) => bns[i].backward_relu(dinp, dout, out, inp, n, gin),
    }
}

/// Backward through `steps` (a prefix of the branch), from the gradient
/// already in `dacts[steps.len() - 1]` down to `dx`.
#[allow(clippy::too_many_arguments)]
fn backward_steps<T: Scalar>(
    steps: &[Step],
    dacts: &mut [Vec<T>],
    acts: &[Vec<T>],
    geoms: &[Geom],
    in_geom: Geom,
    x: &[T],
    dx: &mut [T],
    n: usize,
    convs: &mut [WeightLayer<T>],
    bns: &mut [BnLayer<T>],
    ws: &mut ConvWorkspace<T>,
) -> Result<()> {
    for s in (0..steps.len()).rev() {
        let (lo, hi) = dacts.split_at_mut(s);
        let dout = &hi[0];
        let (dinp, inp, gin): (&mut [T], &[T], Geom) = if s == 0 {
            (&mut *dx, x, in_geom)
        } else {
            (&mut lo[s - 1], &acts[s - 1], geoms[s - 1])
        };
        step_backward(steps[s], dinp, dout, inp, &acts[s], n, gin, convs, bns, ws)?;
    }
    Ok(())
}

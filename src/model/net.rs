//! A whole network built from a [`Spec`]: stem, residual units, top
//! (final BN-ReLU for pre-activation nets, global average pooling, fc),
//! softmax cross-entropy. The backward calls every unit's backward in exact
//! reverse order of the forward.
//!
//! Tensors at unit boundaries: `x_0` is the stem's output, `x_i` the input
//! of unit `i`, `x_U` the last unit's output; the backward leaves
//! `dL/dx_i` in `dx(i)` (the reference's `dx.<i>`).

use super::layers::{BnLayer, Buffer, Geom, Param, WeightLayer};
use super::spec::{Arch, Block, Spec};
use super::unit::{Unit, UnitFlow, UnitGrads};
use crate::backend::{Backend, Cpu};
use crate::error::{check_len, Error, Result};
use crate::ops::activation::{relu_backward, relu_forward};
use crate::ops::conv2d::ConvWorkspace;
use crate::ops::pool::{avgpool_backward, avgpool_forward};
use crate::ops::softmax_ce::{softmax_ce_backward, softmax_ce_forward};
use crate::ops::Accum;
use crate::precision::Precision;
use crate::scalar::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A residual network and all its buffers for one batch size.
pub struct Net<T: Scalar> {
    pub spec: Spec,
    pub stem: WeightLayer<T>,
    pub stem_bn: Option<BnLayer<T>>,
    stem_relu: bool,
    pub units: Vec<Unit<T>>,
    pub final_bn: Option<BnLayer<T>>,
    final_relu: bool,
    pool: bool,
    pub fc: WeightLayer<T>,
    in_geom: Geom,
    body_geom: Geom,
    top_geom: Geom,
    n: usize,
    // activations
    stem_out: Vec<T>,  // (N, C0, H, W)
    x0: Vec<T>,        // stem output after its activation: the first unit's input
    final_out: Vec<T>, // (N, C, h, w) after the final BN/ReLU
    pooled: Vec<T>,    // (N, C)
    logits: Vec<T>,    // (N, classes)
    probs: Vec<T>,     // (N, classes)
    // gradients
    dxs: Vec<Vec<T>>, // dL/dx_i, i = 0..=U
    dstem_out: Vec<T>,
    dfinal_out: Vec<T>,
    dpooled: Vec<T>,
    dlogits: Vec<T>,
    ws: ConvWorkspace<T>,
    /// gradient scratch of the units' backward: one set per output
    /// geometry (a stage of a CIFAR net), `grads[grad_slot[i]]` unit i's:
    /// shared within a stage, so that a step grows no buffer (one set for
    /// all the units re-grew, and zero-filled, the largest stage's buffers
    /// from the smaller ones every step)
    grads: Vec<UnitGrads<T>>,
    grad_slot: Vec<usize>,
    /// RNG of the dropout shortcuts
    pub rng: ChaCha8Rng,
    /// per-unit gradient split of the last `backward(.., probe = true)`
    pub flow: Vec<UnitFlow>,
}

/// Receives a parameter group (its number and its parameters) whose
/// gradients the backward has just finished ([`Net::forward_backward_with`]).
pub type OnGroup<'a, T> = dyn FnMut(usize, &mut [&mut Param<T>]) + 'a;

fn top_group<'a, T: Scalar>(
    fc: &'a mut WeightLayer<T>,
    bn: &'a mut Option<BnLayer<T>>,
) -> Vec<&'a mut Param<T>> {
    let mut v: Vec<&mut Param<T>> = fc.params_mut().collect();
    if let Some(bn) = bn.as_mut() {
        v.extend(bn.params_mut());
    }
    v
}

fn stem_group<'a, T: Scalar>(
    stem: &'a mut WeightLayer<T>,
    bn: &'a mut Option<BnLayer<T>>,
) -> Vec<&'a mut Param<T>> {
    // (the same order as top_group: the weight layer, then its BN)
    top_group(stem, bn)
}

fn alloc<T: Scalar>(v: &mut Vec<T>, len: usize) {
    if v.len() != len {
        *v = vec![T::zero(); len];
    }
}

fn zero<T: Scalar>(v: &mut Vec<T>) {
    Cpu::zero(v);
}

/// Unit `i`'s gradient scratch set, one per distinct output geometry,
/// and how many sets that makes.
fn grad_slots<T: Scalar>(units: &[Unit<T>]) -> (Vec<usize>, usize) {
    let mut geoms: Vec<Geom> = Vec::new();
    let slots = units
        .iter()
        .map(|u| match geoms.iter().position(|g| *g == u.out_geom) {
            Some(k) => k,
            None => {
                geoms.push(u.out_geom);
                geoms.len() - 1
            }
        })
        .collect();
    (slots, geoms.len())
}

impl<T: Scalar> Net<T> {
    /// Build and initialise (He et al.) a network for inputs of
    /// `in_channels x image x image` (cifar; `image` is ignored for mlp).
    pub fn new(spec: &Spec, image: usize, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let preact = spec.unit.is_preact();
        let mut units = Vec::new();
        let (stem, stem_bn, stem_relu, in_geom, body_geom, final_bn, final_relu, pool, top_c);
        match spec.arch {
            Arch::Cifar => {
                if image == 0 {
                    return Err(Error::Spec("image size must be at least 1".into()));
                }
                let n = spec.units_per_stage()?;
                let w = spec.width;
                in_geom = Geom {
                    c: spec.in_channels,
                    h: image,
                    w: image,
                };
                stem = WeightLayer::conv("stem", spec.in_channels, w, 3, 1, None, &mut rng);
                stem_bn = if preact {
                    None
                } else {
                    Some(BnLayer::new("stem_bn", w))
                };
                stem_relu = !preact;
                body_geom = stem.out_geom(in_geom);
                let expand = if spec.block == Block::Bottleneck {
                    4
                } else {
                    1
                };
                let mut g = body_geom;
                for (s, width) in [w, 2 * w, 4 * w].into_iter().enumerate() {
                    for j in 0..n {
                        let stride = if s > 0 && j == 0 { 2 } else { 1 };
                        let u =
                            Unit::new(spec, units.len(), width * expand, stride, g, true, &mut rng);
                        g = u.out_geom;
                        units.push(u);
                    }
                }
                top_c = g.c;
                final_bn = if preact {
                    Some(BnLayer::new("final_bn", top_c))
                } else {
                    None
                };
                final_relu = preact;
                pool = true;
            }
            Arch::Mlp => {
                let (fin, hid, nu) = (
                    spec.in_features.unwrap_or(0),
                    spec.hidden.unwrap_or(0),
                    spec.units.unwrap_or(0),
                );
                let bn_on = spec.batchnorm;
                in_geom = Geom { c: fin, h: 1, w: 1 };
                stem = WeightLayer::linear("stem", fin, hid, !bn_on, None, &mut rng);
                stem_bn = if preact || !bn_on {
                    None
                } else {
                    Some(BnLayer::new("stem_bn", hid))
                };
                stem_relu = !preact;
                body_geom = Geom { c: hid, h: 1, w: 1 };
                for i in 0..nu {
                    units.push(Unit::new(spec, i, hid, 1, body_geom, false, &mut rng));
                }
                top_c = hid;
                final_bn = if preact && bn_on {
                    Some(BnLayer::new("final_bn", hid))
                } else {
                    None
                };
                final_relu = preact;
                pool = false;
            }
        }
        let top_geom = units.last().map(|u| u.out_geom).unwrap_or(body_geom);
        let fc = WeightLayer::linear("fc", top_c, spec.classes, true, None, &mut rng);
        let nu = units.len();
        let (grad_slot, slots) = grad_slots(&units);
        Ok(Net {
            spec: spec.clone(),
            stem,
            stem_bn,
            stem_relu,
            units,
            final_bn,
            final_relu,
            pool,
            fc,
            in_geom,
            body_geom,
            top_geom,
            n: 0,
            stem_out: vec![],
            x0: vec![],
            final_out: vec![],
            pooled: vec![],
            logits: vec![],
            probs: vec![],
            dxs: vec![vec![]; nu + 1],
            dstem_out: vec![],
            dfinal_out: vec![],
            dpooled: vec![],
            dlogits: vec![],
            ws: ConvWorkspace::default(),
            grads: vec![UnitGrads::default(); slots],
            grad_slot,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_d20b),
            flow: vec![UnitFlow::default(); nu],
        })
    }

    /// Sets the precision of every convolution and linear GEMM (all share
    /// the net's one workspace). Bf16 needs f32 tensors and a CPU with
    /// AVX512-BF16; the error says which is missing.
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        if p == Precision::Bf16 && std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
            return Err(Error::Config(format!(
                "--precision bf16 needs an f32 model, this one is {}",
                std::any::type_name::<T>()
            )));
        }
        p.check_supported()?;
        self.ws.set_precision(p);
        Ok(())
    }
    /// The precision of the convolution and linear GEMMs.
    pub fn precision(&self) -> Precision {
        self.ws.precision()
    }

    /// Input geometry (C, H, W) of one sample.
    pub fn input_geom(&self) -> Geom {
        self.in_geom
    }
    pub fn classes(&self) -> usize {
        self.spec.classes
    }
    pub fn num_units(&self) -> usize {
        self.units.len()
    }

    fn ensure(&mut self, n: usize) {
        if self.n == n {
            return;
        }
        self.n = n;
        let b = self.body_geom.len(n);
        let t = self.top_geom.len(n);
        alloc(&mut self.stem_out, b);

        alloc(&mut self.x0, b);
        alloc(&mut self.dstem_out, b);

        alloc(&mut self.final_out, t);
        alloc(&mut self.dfinal_out, t);
        alloc(&mut self.pooled, n * self.top_geom.c);
        alloc(&mut self.dpooled, n * self.top_geom.c);
        alloc(&mut self.logits, n * self.spec.classes);
        alloc(&mut self.probs, n * self.spec.classes);
        alloc(&mut self.dlogits, n * self.spec.classes);
        alloc(&mut self.dxs[0], b);
        for (i, u) in self.units.iter().enumerate() {
            let len = u.out_geom.len(n);
            alloc(&mut self.dxs[i + 1], len);
        }
    }

    /// Batch size of `input` (N, C, H, W), checked against the geometry.
    pub fn batch_of(&self, input: &[T]) -> Result<usize> {
        let per = self.in_geom.len(1);
        if input.is_empty() || !input.len().is_multiple_of(per) {
            return Err(Error::Shape {
                op: "net",
                what: "input",
                expected: vec![0, self.in_geom.c, self.in_geom.h, self.in_geom.w],
                got: vec![input.len()],
            });
        }
        Ok(input.len() / per)
    }

    /// Forward pass; returns the logits (N, classes). `train` selects batch
    /// statistics (and live dropout) versus running statistics.
    pub fn forward(&mut self, input: &[T], train: bool) -> Result<&[T]> {
        let n = self.batch_of(input)?;
        self.ensure(n);
        let ws = &mut self.ws;
        // stem: conv (or linear), then BN-ReLU for post-activation nets
        self.stem
            .forward(&mut self.stem_out, input, n, self.in_geom, ws)?;
        // (a stem BN is always followed by the ReLU: fused)
        if let Some(bn) = self.stem_bn.as_mut() {
            bn.forward_relu(&mut self.x0, &self.stem_out, n, self.body_geom, train)?;
        } else if self.stem_relu {
            relu_forward(&mut self.x0, &self.stem_out)?;
        } else {
            Cpu::copy(&mut self.x0, &self.stem_out)?;
        }
        // the residual units, in order
        for i in 0..self.units.len() {
            let (done, rest) = self.units.split_at_mut(i);
            let x: &Vec<T> = if i == 0 {
                &self.x0
            } else {
                done[i - 1].output()
            };
            rest[0].forward(x, n, train, ws, &mut self.rng)?;
        }
        // top: final BN-ReLU (pre-activation nets), pool, fc
        let cur: &Vec<T> = match self.units.last() {
            Some(u) => u.output(),
            None => &self.x0,
        };
        // (a final BN is always followed by the ReLU: fused)
        if let Some(bn) = self.final_bn.as_mut() {
            bn.forward_relu(&mut self.final_out, cur, n, self.top_geom, train)?;
        } else if self.final_relu {
            relu_forward(&mut self.final_out, cur)?;
        } else {
            Cpu::copy(&mut self.final_out, cur)?;
        }
        if self.pool {
            avgpool_forward(
                &mut self.pooled,
                &self.final_out,
                n,
                self.top_geom.c,
                self.top_geom.hw(),
            )?;
        } else {
            Cpu::copy(&mut self.pooled, &self.final_out)?;
        }
        let top = Geom {
            c: self.top_geom.c,
            h: 1,
            w: 1,
        };
        self.fc
            .forward(&mut self.logits, &self.pooled, n, top, ws)?;
        Ok(&self.logits)
    }

    /// Softmax cross-entropy of the last forward's logits (mean over the batch).
    pub fn loss(&mut self, labels: &[usize]) -> Result<f64> {
        softmax_ce_forward(
            &mut self.probs,
            &self.logits,
            labels,
            self.n,
            self.spec.classes,
        )
    }

    /// The logits of the last forward.
    pub fn logits(&self) -> &[T] {
        &self.logits
    }

    /// Zero every parameter gradient.
    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.zero_grad();
        }
    }

    /// Backward of `loss(labels)` after `forward(.., train = true)` and
    /// `loss`: accumulates (`+=`) every parameter gradient and leaves
    /// `dL/dx_i` in `dx(i)`. With `probe`, each unit's gradient is split into
    /// its shortcut and branch terms (`self.flow`).
    pub fn backward(&mut self, labels: &[usize], probe: bool) -> Result<()> {
        self.backward_hooked(labels, probe, None)
    }

    /// [`Net::backward`], calling `on_group` with each parameter group as
    /// soon as its gradients are final (groups as [`Net::param_groups_mut`]
    /// numbers them; the stem's group comes with [`Net::backward_stem`]).
    fn backward_hooked(
        &mut self,
        labels: &[usize],
        probe: bool,
        mut on_group: Option<&mut OnGroup<'_, T>>,
    ) -> Result<()> {
        let n = self.n;
        check_len("net", "labels", labels, &[n])?;
        let ws = &mut self.ws;
        zero(&mut self.dlogits);
        softmax_ce_backward(
            &mut self.dlogits,
            &self.probs,
            labels,
            n,
            self.spec.classes,
            T::one(),
        )?;
        // fc
        zero(&mut self.dpooled);
        let top = Geom {
            c: self.top_geom.c,
            h: 1,
            w: 1,
        };
        self.fc.backward(
            Some(&mut self.dpooled),
            &self.dlogits,
            &self.pooled,
            n,
            top,
            ws,
        )?;
        // pool
        zero(&mut self.dfinal_out);
        if self.pool {
            avgpool_backward(
                &mut self.dfinal_out,
                &self.dpooled,
                n,
                self.top_geom.c,
                self.top_geom.hw(),
            )?;
        } else {
            Cpu::copy(&mut self.dfinal_out, &self.dpooled)?;
        }
        // final BN-ReLU, into dx_U
        let nu = self.units.len();
        let x_top: &[T] = match self.units.last() {
            Some(u) => u.output(),
            None => &self.x0,
        };
        {
            let dtop = &mut self.dxs[nu];
            if let Some(bn) = self.final_bn.as_mut() {
                // dx_U's only writer: overwritten, no zeroing pass
                bn.backward_to(
                    Accum::Set,
                    dtop,
                    &self.dfinal_out,
                    x_top,
                    (n, self.top_geom),
                    true,
                )?;
            } else if self.final_relu {
                zero(dtop);
                relu_backward(dtop, &self.dfinal_out, &self.final_out)?;
            } else {
                Cpu::copy(dtop, &self.dfinal_out)?;
            }
        }
        if let Some(h) = on_group.as_deref_mut() {
            h(0, &mut top_group(&mut self.fc, &mut self.final_bn));
        }
        // the residual units, in exact reverse order
        for i in (0..nu).rev() {
            let (dlo, dhi) = self.dxs.split_at_mut(i + 1);
            let dx = &mut dlo[i]; // overwritten by the unit, x_i's only consumer
            let (ulo, uhi) = self.units.split_at_mut(i);
            let x: &Vec<T> = if i == 0 {
                &self.x0
            } else {
                ulo[i - 1].output()
            };
            let flow = if probe { Some(&mut self.flow[i]) } else { None };
            let grads = &mut self.grads[self.grad_slot[i]];
            uhi[0].backward(dx, &dhi[0], x, ws, grads, flow)?;
            if let Some(h) = on_group.as_deref_mut() {
                h(nu - i, &mut uhi[0].params_mut());
            }
        }
        // stem
        let dx0 = &self.dxs[0];
        if let Some(bn) = self.stem_bn.as_mut() {
            let (d, inp) = (&mut self.dstem_out, &self.stem_out);
            bn.backward_to(Accum::Set, d, dx0, inp, (n, self.body_geom), true)?;
        } else if self.stem_relu {
            zero(&mut self.dstem_out);
            relu_backward(&mut self.dstem_out, dx0, &self.x0)?;
        } else {
            Cpu::copy(&mut self.dstem_out, dx0)?;
        }
        // nobody needs dL/d(input): only the stem's weight gradient
        let input_len = self.in_geom.len(n);
        let _ = input_len;
        Ok(())
    }

    /// Backward of the stem needs the input; call `backward_stem` after
    /// `backward` (split so `backward` does not have to keep the input).
    pub fn backward_stem(&mut self, input: &[T]) -> Result<()> {
        let n = self.n;
        self.stem
            .backward(None, &self.dstem_out, input, n, self.in_geom, &mut self.ws)
    }

    /// One training-mode forward and backward; returns the loss.
    pub fn forward_backward(&mut self, input: &[T], labels: &[usize], probe: bool) -> Result<f64> {
        self.forward(input, true)?;
        let loss = self.loss(labels)?;
        self.backward(labels, probe)?;
        self.backward_stem(input)?;
        Ok(loss)
    }

    /// [`Net::forward_backward`], handing each parameter group to
    /// `on_group` as soon as the backward has finished its gradients: the
    /// top (fc and final BN) first, then the units from the last to the
    /// first, the stem last -- the order of [`Net::param_groups_mut`]. A
    /// data-parallel step starts each group's sum over the processes there,
    /// while the backward goes on.
    pub fn forward_backward_with(
        &mut self,
        input: &[T],
        labels: &[usize],
        probe: bool,
        on_group: &mut OnGroup<'_, T>,
    ) -> Result<f64> {
        self.forward(input, true)?;
        let loss = self.loss(labels)?;
        self.backward_hooked(labels, probe, Some(&mut *on_group))?;
        self.backward_stem(input)?;
        on_group(
            self.units.len() + 1,
            &mut stem_group(&mut self.stem, &mut self.stem_bn),
        );
        Ok(loss)
    }

    /// Every parameter, in the groups the backward finishes them in: group
    /// 0 the top (fc, then the final BN), group `1 + j` unit `U - 1 - j`,
    /// group `U + 1` the stem (conv or Linear, then its BN).
    pub fn param_groups_mut(&mut self) -> Vec<Vec<&mut Param<T>>> {
        let mut g = vec![top_group(&mut self.fc, &mut self.final_bn)];
        g.extend(self.units.iter_mut().rev().map(|u| u.params_mut()));
        g.push(stem_group(&mut self.stem, &mut self.stem_bn));
        g
    }

    /// `dL/dx_i` (i = 0..=U) after `backward`.
    pub fn dx(&self, i: usize) -> &[T] {
        &self.dxs[i]
    }

    /// All BN layers, in state-dict order.
    pub fn bn_layers_mut(&mut self) -> Vec<&mut BnLayer<T>> {
        let mut v: Vec<&mut BnLayer<T>> = Vec::new();
        v.extend(self.stem_bn.as_mut());
        for u in self.units.iter_mut() {
            v.extend(u.bns.iter_mut());
        }
        v.extend(self.final_bn.as_mut());
        v
    }

    /// Every learnable parameter with its gradient.
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v: Vec<&mut Param<T>> = Vec::new();
        v.extend(self.stem.params_mut());
        if let Some(bn) = self.stem_bn.as_mut() {
            v.extend(bn.params_mut());
        }
        for u in self.units.iter_mut() {
            v.extend(u.params_mut());
        }
        if let Some(bn) = self.final_bn.as_mut() {
            v.extend(bn.params_mut());
        }
        v.extend(self.fc.params_mut());
        v
    }

    /// Every BN running-statistics buffer, with the owning layer's
    /// `num_batches_tracked` (stored as i64 under `<prefix>.num_batches_tracked`).
    pub fn buffers_mut(&mut self) -> Vec<(&mut Buffer<T>, String)> {
        let mut v = Vec::new();
        for bn in self.bn_layers_mut() {
            let p = bn.prefix.clone();
            for b in bn.buffers_mut() {
                v.push((b, p.clone()));
            }
        }
        v
    }

    /// Per-unit direct-path factors `prod_{k >= l} lambda_k` from unit l to
    /// the top (`None` where a shortcut on the way is not a scalar multiple
    /// of the identity); entry U (the last unit's output) is 1.
    pub fn direct_factors(&self) -> Vec<Option<f64>> {
        let nu = self.units.len();
        let mut out = vec![Some(1.0); nu + 1];
        for i in (0..nu).rev() {
            out[i] = match (out[i + 1], self.units[i].direct_factor()) {
                (Some(a), Some(b)) => Some(a * b),
                _ => None,
            };
        }
        out
    }
}

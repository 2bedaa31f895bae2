//! The model's parameterised layers: a named parameter with its gradient, a
//! weight layer (conv or linear, optional bias) and a BatchNorm layer with
//! its running statistics. They own parameters and saved statistics, in
//! their backend's storage ([`Backend::Buf`]); their passes are the
//! backend's (`backend::cpu::layers` on the CPU), which call the ops in
//! `crate::ops`, where the math and its derivation live.

use crate::backend::{Backend, Cpu};
use crate::ops::batchnorm::BnShape;
use crate::ops::conv2d::Conv2dShape;
use crate::scalar::Scalar;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// What a parameter is, for optimiser options (weight decay exemptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
    BnWeight,
    BnBias,
}

/// One learnable tensor with its gradient, under its state-dict name.
#[derive(Clone, Debug)]
pub struct Param<T: Scalar, B: Backend = Cpu> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub value: B::Buf<T>,
    pub grad: B::Buf<T>,
}

impl<T: Scalar> Param<T> {
    pub fn new(name: String, shape: Vec<usize>, kind: ParamKind, value: Vec<T>) -> Self {
        let n = value.len();
        Param {
            name,
            shape,
            kind,
            value,
            grad: vec![T::zero(); n],
        }
    }
}

impl<T: Scalar, B: Backend> Param<T, B> {
    pub fn zero_grad(&mut self) {
        B::zero(&mut self.grad);
    }
}

/// A non-learnable state tensor (BN running statistics).
#[derive(Clone, Debug)]
pub struct Buffer<T: Scalar, B: Backend = Cpu> {
    pub name: String,
    pub value: B::Buf<T>,
}

/// Geometry of an activation tensor (N is given separately): `c` channels of
/// `h x w` (`h = w = 1` for feature vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Geom {
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    pub fn len(&self, n: usize) -> usize {
        n * self.c * self.h * self.w
    }
}

/// Convolution (k x k, stride, zero padding k/2, no bias unless a gate) or
/// Linear (with optional bias). Linear layers see (N, C, 1, 1) tensors.
#[derive(Clone, Debug)]
pub struct WeightLayer<T: Scalar, B: Backend = Cpu> {
    pub conv: Option<(usize, usize)>, // (kernel, stride) for convs, None for Linear
    pub cin: usize,
    pub cout: usize,
    pub weight: Param<T, B>,
    pub bias: Option<Param<T, B>>,
}

impl<T: Scalar> WeightLayer<T> {
    /// Conv2d(cin, cout, k, stride, padding k/2), He-normal init with fan_out
    /// (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`: std = sqrt(2 / (cout k k))).
    pub fn conv<R: Rng>(
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        bias: Option<f64>,
        rng: &mut R,
    ) -> Self {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let normal = Normal::new(0.0, std).expect("std > 0");
        let w: Vec<T> = (0..cout * cin * k * k)
            .map(|_| T::of(normal.sample(rng)))
            .collect();
        WeightLayer {
            conv: Some((k, stride)),
            cin,
            cout,
            weight: Param::new(
                format!("{prefix}.weight"),
                vec![cout, cin, k, k],
                ParamKind::Weight,
                w,
            ),
            bias: bias.map(|b| {
                Param::new(
                    format!("{prefix}.bias"),
                    vec![cout],
                    ParamKind::Bias,
                    vec![T::of(b); cout],
                )
            }),
        }
    }

    /// Linear(cin, cout) with PyTorch's default init: weight and bias
    /// uniform in (-1/sqrt(cin), 1/sqrt(cin)); `bias_const` overrides the
    /// bias (gates).
    pub fn linear<R: Rng>(
        prefix: &str,
        cin: usize,
        cout: usize,
        bias: bool,
        bias_const: Option<f64>,
        rng: &mut R,
    ) -> Self {
        let bound = 1.0 / (cin as f64).sqrt();
        let w: Vec<T> = (0..cout * cin)
            .map(|_| T::of(rng.gen_range(-bound..bound)))
            .collect();
        let b = if bias {
            let v: Vec<T> = match bias_const {
                Some(c) => vec![T::of(c); cout],
                None => (0..cout)
                    .map(|_| T::of(rng.gen_range(-bound..bound)))
                    .collect(),
            };
            Some(Param::new(
                format!("{prefix}.bias"),
                vec![cout],
                ParamKind::Bias,
                v,
            ))
        } else {
            None
        };
        WeightLayer {
            conv: None,
            cin,
            cout,
            weight: Param::new(
                format!("{prefix}.weight"),
                vec![cout, cin],
                ParamKind::Weight,
                w,
            ),
            bias: b,
        }
    }
}

impl<T: Scalar, B: Backend> WeightLayer<T, B> {
    /// Output geometry for an input geometry.
    pub fn out_geom(&self, g: Geom) -> Geom {
        match self.conv {
            Some((k, s)) => {
                let p = k / 2;
                Geom {
                    c: self.cout,
                    h: (g.h + 2 * p - k) / s + 1,
                    w: (g.w + 2 * p - k) / s + 1,
                }
            }
            None => Geom {
                c: self.cout,
                h: 1,
                w: 1,
            },
        }
    }

    pub(crate) fn conv_shape(&self, n: usize, g: Geom) -> Conv2dShape {
        let (k, s) = self.conv.expect("conv layer");
        Conv2dShape {
            n,
            cin: self.cin,
            h: g.h,
            w: g.w,
            cout: self.cout,
            kh: k,
            kw: k,
            stride: s,
            pad: k / 2,
        }
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<T, B>> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
    pub fn params(&self) -> impl Iterator<Item = &Param<T, B>> {
        std::iter::once(&self.weight).chain(self.bias.as_ref())
    }
}

/// BatchNorm (1d or 2d) with PyTorch's momentum 0.1 and eps 1e-5.
#[derive(Clone, Debug)]
pub struct BnLayer<T: Scalar, B: Backend = Cpu> {
    pub c: usize,
    pub gamma: Param<T, B>,
    pub beta: Param<T, B>,
    pub running_mean: Buffer<T, B>,
    pub running_var: Buffer<T, B>,
    pub num_batches_tracked: i64,
    pub prefix: String,
    // saved by the training forward for the backward: (C) each
    pub(crate) mean: B::Buf<T>,
    pub(crate) rstd: B::Buf<T>,
    // k = gamma * rstd at the last training forward (C), for `relu_input`
    pub(crate) k: B::Buf<T>,
    // (k, a, b) of the last `backward_coefs` (C), for `grad_out`
    pub(crate) coef: B::Buf<(T, T, T)>,
}

impl<T: Scalar> BnLayer<T> {
    pub fn new(prefix: &str, c: usize) -> Self {
        BnLayer {
            c,
            gamma: Param::new(
                format!("{prefix}.weight"),
                vec![c],
                ParamKind::BnWeight,
                vec![T::one(); c],
            ),
            beta: Param::new(
                format!("{prefix}.bias"),
                vec![c],
                ParamKind::BnBias,
                vec![T::zero(); c],
            ),
            running_mean: Buffer {
                name: format!("{prefix}.running_mean"),
                value: vec![T::zero(); c],
            },
            running_var: Buffer {
                name: format!("{prefix}.running_var"),
                value: vec![T::one(); c],
            },
            num_batches_tracked: 0,
            prefix: prefix.to_string(),
            mean: vec![T::zero(); c],
            rstd: vec![T::zero(); c],
            k: vec![T::zero(); c],
            coef: vec![],
        }
    }
}

impl<T: Scalar, B: Backend> BnLayer<T, B> {
    pub(crate) fn shape(&self, n: usize, g: Geom) -> BnShape {
        BnShape {
            n,
            c: self.c,
            hw: g.hw(),
        }
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<T, B>> {
        [&mut self.gamma, &mut self.beta].into_iter()
    }
    pub fn params(&self) -> impl Iterator<Item = &Param<T, B>> {
        [&self.gamma, &self.beta].into_iter()
    }
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Buffer<T, B>> {
        [&mut self.running_mean, &mut self.running_var].into_iter()
    }
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer<T, B>> {
        [&self.running_mean, &self.running_var].into_iter()
    }
}

//! The model's parameterised layers: a named parameter with its gradient, a
//! weight layer (conv or linear, optional bias) and a BatchNorm layer with
//! its running statistics. They own parameters and saved statistics and
//! call the ops in `crate::ops`, where the math and its derivation live.

use crate::error::{check_len, Error, Result};
use crate::ops::activation::relu_inplace;
use crate::ops::batchnorm::{
    batchnorm_backward_coefs, batchnorm_backward_to, batchnorm_forward_eval, forward_train_act,
    normalise_add_act, train_stats, BnShape, BN_EPS, BN_MOMENTUM,
};
use crate::ops::conv2d::{
    conv2d_backward_from, conv2d_backward_to, conv2d_forward, conv2d_forward_from,
    conv2d_fuses_grad_out, conv2d_fuses_input_act, Conv2dShape, ConvBackward, ConvForward,
    ConvGradOut, ConvInput, ConvWorkspace,
};
use crate::ops::elementwise::{bias_add_backward, bias_add_forward};
use crate::ops::fused::{bn_relu_backward_plus, bn_relu_backward_to};
use crate::ops::linear::{linear_backward_in, linear_forward_in, LinearShape};
use crate::ops::par::par_zero;
use crate::ops::Accum;
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
pub struct Param<T> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub value: Vec<T>,
    pub grad: Vec<T>,
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
    pub fn zero_grad(&mut self) {
        self.grad.iter_mut().for_each(|g| *g = T::zero());
    }
}

/// A non-learnable state tensor (BN running statistics).
#[derive(Clone, Debug)]
pub struct Buffer<T> {
    pub name: String,
    pub value: Vec<T>,
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
pub struct WeightLayer<T> {
    pub conv: Option<(usize, usize)>, // (kernel, stride) for convs, None for Linear
    pub cin: usize,
    pub cout: usize,
    pub weight: Param<T>,
    pub bias: Option<Param<T>>,
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

    fn conv_shape(&self, n: usize, g: Geom) -> Conv2dShape {
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

    /// `out = W * inp (+ b)`.
    pub fn forward(
        &self,
        out: &mut [T],
        inp: &[T],
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        match self.conv {
            Some(_) => {
                conv2d_forward(out, inp, &self.weight.value, &self.conv_shape(n, g), ws)?;
                if let Some(b) = &self.bias {
                    let og = self.out_geom(g);
                    bias_add_forward(out, &b.value, n, og.c, og.hw())?;
                }
                Ok(())
            }
            None => linear_forward_in(
                ws.precision(),
                out,
                inp,
                &self.weight.value,
                self.bias.as_ref().map(|b| b.value.as_slice()),
                LinearShape {
                    n,
                    fin: self.cin,
                    fout: self.cout,
                },
            ),
        }
    }

    /// Whether a convolution on `(n, g)` inputs reads a [`ConvInput::BnRelu`]
    /// input at no cost of its own (`ops::conv2d::conv2d_fuses_input_act`).
    pub fn fuses_input_act(&self, n: usize, g: Geom) -> bool {
        self.conv.is_some()
            && self.bias.is_none()
            && conv2d_fuses_input_act::<T>(&self.conv_shape(n, g))
    }

    /// Whether a convolution on `(n, g)` inputs reads a [`ConvGradOut::Bn`]
    /// output gradient at no cost of its own
    /// (`ops::conv2d::conv2d_fuses_grad_out`).
    pub fn fuses_grad_out(&self, n: usize, g: Geom) -> bool {
        self.conv.is_some()
            && self.bias.is_none()
            && conv2d_fuses_grad_out::<T>(&self.conv_shape(n, g))
    }

    /// [`WeightLayer::forward`] of a convolution without bias, as one
    /// [`ConvForward`] pass: from any [`ConvInput`]; with a residual,
    /// `out = res + conv(inp)`; with `planes` (N, cout), also the per-plane
    /// sums of `out` for the BN that reads it (`ops::conv2d::conv2d_forward_from`).
    pub fn forward_from(
        &self,
        pass: ConvForward<T>,
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        match pass {
            ConvForward {
                out,
                res: None,
                inp: ConvInput::Plain(x),
                planes: None,
            } => self.forward(out, x, n, g, ws),
            pass => {
                self.check_plain_conv()?;
                let cs = self.conv_shape(n, g);
                conv2d_forward_from(pass, &self.weight.value, &cs, ws)
            }
        }
    }

    /// [`WeightLayer::backward_to`] of a [`WeightLayer::forward_from`], as
    /// one [`ConvBackward`] pass: from any [`ConvGradOut`]; with a residual,
    /// `dinp = res + ...` (`accum` must be [`Accum::Set`]); with `planes`,
    /// the plane sums of the BN-ReLU backward over `dinp`
    /// (`ops::conv2d::conv2d_backward_from`).
    pub fn backward_from(
        &mut self,
        pass: ConvBackward<T>,
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        match pass {
            ConvBackward {
                accum,
                res: None,
                dinp,
                dout: ConvGradOut::Plain(d),
                inp: ConvInput::Plain(x),
                planes: None,
            } => self.backward_to(accum, dinp, d, x, n, g, ws),
            pass => {
                self.check_plain_conv()?;
                let cs = self.conv_shape(n, g);
                conv2d_backward_from(pass, &mut self.weight.grad, &self.weight.value, &cs, ws)
            }
        }
    }

    fn check_plain_conv(&self) -> Result<()> {
        if self.conv.is_none() || self.bias.is_some() {
            return Err(Error::InvalidParam {
                op: "weight_layer",
                msg: "only a convolution without bias reads a BN-ReLU input".into(),
            });
        }
        Ok(())
    }

    /// Accumulates `dinp` (if wanted) and the parameter gradients.
    pub fn backward(
        &mut self,
        dinp: Option<&mut [T]>,
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        self.backward_to(Accum::Add, dinp, dout, inp, n, g, ws)
    }

    /// [`WeightLayer::backward`] with `dinp` written as `accum` says.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_to(
        &mut self,
        accum: Accum,
        dinp: Option<&mut [T]>,
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        match self.conv {
            Some(_) => {
                let cs = self.conv_shape(n, g);
                let og = self.out_geom(g);
                if let Some(b) = &mut self.bias {
                    bias_add_backward(&mut b.grad, dout, n, og.c, og.hw())?;
                }
                conv2d_backward_to(
                    accum,
                    dinp,
                    &mut self.weight.grad,
                    dout,
                    inp,
                    &self.weight.value,
                    &cs,
                    ws,
                )
            }
            None => {
                let dinp = dinp.map(|d| {
                    if accum == Accum::Set {
                        par_zero(d);
                    }
                    &mut *d
                });
                linear_backward_in(
                    ws.precision(),
                    dinp,
                    &mut self.weight.grad,
                    self.bias.as_mut().map(|b| b.grad.as_mut_slice()),
                    dout,
                    inp,
                    &self.weight.value,
                    LinearShape {
                        n,
                        fin: self.cin,
                        fout: self.cout,
                    },
                )
            }
        }
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<T>> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut())
    }
    pub fn params(&self) -> impl Iterator<Item = &Param<T>> {
        std::iter::once(&self.weight).chain(self.bias.as_ref())
    }
}

/// BatchNorm (1d or 2d) with PyTorch's momentum 0.1 and eps 1e-5.
#[derive(Clone, Debug)]
pub struct BnLayer<T> {
    pub c: usize,
    pub gamma: Param<T>,
    pub beta: Param<T>,
    pub running_mean: Buffer<T>,
    pub running_var: Buffer<T>,
    pub num_batches_tracked: i64,
    pub prefix: String,
    // saved by the training forward for the backward: (C) each
    mean: Vec<T>,
    rstd: Vec<T>,
    // k = gamma * rstd at the last training forward (C), for `relu_input`
    k: Vec<T>,
    // (k, a, b) of the last `backward_coefs` (C), for `grad_out`
    coef: Vec<(T, T, T)>,
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

    fn shape(&self, n: usize, g: Geom) -> BnShape {
        BnShape {
            n,
            c: self.c,
            hw: g.hw(),
        }
    }

    /// Training-mode forward with the batch statistics, `max(0, ·)` applied
    /// as the output is written when `RELU` (`ops::fused`).
    fn forward_train<const RELU: bool>(
        &mut self,
        out: &mut [T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        self.num_batches_tracked += 1;
        let s = self.shape(n, g);
        forward_train_act::<T, RELU>(
            out,
            &mut self.mean,
            &mut self.rstd,
            inp,
            &self.gamma.value,
            &self.beta.value,
            &mut self.running_mean.value,
            &mut self.running_var.value,
            BN_MOMENTUM,
            BN_EPS,
            s,
        )
    }

    /// The statistics half of a training-mode BN-ReLU: saves the batch
    /// statistics and updates the running ones, writes no output. The
    /// output is then read through [`BnLayer::relu_input`] by the next
    /// convolution, which normalises as it reads.
    /// `planes` (N, C): the per-plane sums of `inp`, when the conv that
    /// wrote it computed them (`ops::batchnorm::bn_plane_sums`).
    pub fn forward_stats_train(
        &mut self,
        inp: &[T],
        n: usize,
        g: Geom,
        planes: Option<&[f64]>,
    ) -> Result<()> {
        self.num_batches_tracked += 1;
        let s = self.shape(n, g);
        self.k = train_stats(
            &mut self.mean,
            &mut self.rstd,
            inp,
            &self.gamma.value,
            &self.beta.value,
            &mut self.running_mean.value,
            &mut self.running_var.value,
            BN_MOMENTUM,
            BN_EPS,
            planes,
            s,
        )?;
        Ok(())
    }

    /// The output `max(0, BN(x))` of the last [`BnLayer::forward_stats_train`]
    /// on `x`, as a convolution input that is never stored.
    pub fn relu_input<'a>(&'a self, x: &'a [T]) -> ConvInput<'a, T> {
        ConvInput::BnRelu {
            x,
            mean: &self.mean,
            k: &self.k,
            beta: &self.beta.value,
        }
    }

    /// The reduction half of the training backward (of BN-ReLU when
    /// `relu`): adds the parameter gradients and keeps the coefficients of
    /// the input gradient, which the convolution that produced `inp` then
    /// computes as it reads it ([`BnLayer::grad_out`]); nothing is written.
    pub fn backward_coefs(
        &mut self,
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
        relu: bool,
        planes: Option<&[(f64, f64)]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        self.coef = batchnorm_backward_coefs(
            &mut self.gamma.grad,
            &mut self.beta.grad,
            dout,
            inp,
            &self.mean,
            &self.rstd,
            &self.gamma.value,
            relu.then_some(self.beta.value.as_slice()),
            planes,
            s,
        )?;
        Ok(())
    }

    /// `dL/d(inp)` after [`BnLayer::backward_coefs`] with the same `dout`
    /// and `inp`, as a convolution's output gradient that is never stored.
    pub fn grad_out<'a>(&'a self, dout: &'a [T], inp: &'a [T], relu: bool) -> ConvGradOut<'a, T> {
        ConvGradOut::Bn {
            dy: dout,
            x: inp,
            mean: &self.mean,
            beta: relu.then_some(self.beta.value.as_slice()),
            coef: &self.coef,
        }
    }

    /// Training mode, fused with a residual addition and the ReLU after it:
    /// `out = max(0, h + BN(inp))` in one pass once the batch statistics are
    /// known (the BN output is not stored; the backward needs only `inp`).
    pub fn forward_add_relu_train(
        &mut self,
        out: &mut [T],
        h: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
        planes: Option<&[f64]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        check_len("batchnorm_add_relu", "output", out, &[s.n, s.c, s.hw])?;
        check_len("batchnorm_add_relu", "shortcut", h, &[s.n, s.c, s.hw])?;
        self.forward_stats_train(inp, n, g, planes)?;
        normalise_add_act::<T, true>(out, h, inp, &self.mean, &self.k, &self.beta.value, s);
        Ok(())
    }

    pub fn forward(
        &mut self,
        out: &mut [T],
        inp: &[T],
        n: usize,
        g: Geom,
        train: bool,
    ) -> Result<()> {
        if train {
            return self.forward_train::<false>(out, inp, n, g);
        }
        batchnorm_forward_eval(
            out,
            inp,
            &self.gamma.value,
            &self.beta.value,
            &self.running_mean.value,
            &self.running_var.value,
            BN_EPS,
            self.shape(n, g),
        )
    }

    pub fn backward(
        &mut self,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        self.backward_to(Accum::Add, dinp, dout, inp, n, g)
    }

    /// [`BnLayer::backward`] with `dinp` written as `accum` says.
    pub fn backward_to(
        &mut self,
        accum: Accum,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        let s = self.shape(n, g);
        batchnorm_backward_to(
            accum,
            dinp,
            &mut self.gamma.grad,
            &mut self.beta.grad,
            dout,
            inp,
            &self.mean,
            &self.rstd,
            &self.gamma.value,
            s,
        )
    }

    /// BN followed by ReLU, fused (`ops::fused`): `out = max(0, BN(inp))`.
    pub fn forward_relu(
        &mut self,
        out: &mut [T],
        inp: &[T],
        n: usize,
        g: Geom,
        train: bool,
    ) -> Result<()> {
        if train {
            return self.forward_train::<true>(out, inp, n, g);
        }
        self.forward(out, inp, n, g, false)?;
        relu_inplace(out);
        Ok(())
    }

    /// Backward of [`BnLayer::forward_relu`] (training mode); the ReLU mask
    /// is recomputed from `inp` (see `ops::fused`).
    pub fn backward_relu(
        &mut self,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        self.backward_relu_to(Accum::Add, dinp, dout, inp, n, g)
    }

    /// [`BnLayer::backward_relu`] with `dinp` written as `accum` says.
    pub fn backward_relu_to(
        &mut self,
        accum: Accum,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        let s = self.shape(n, g);
        bn_relu_backward_to(
            accum,
            dinp,
            &mut self.gamma.grad,
            &mut self.beta.grad,
            dout,
            inp,
            &self.mean,
            &self.rstd,
            &self.gamma.value,
            &self.beta.value,
            s,
        )
    }

    /// [`BnLayer::backward_relu`] writing `dinp = res + ...`
    /// (`ops::fused::bn_relu_backward_plus`; `planes`: the reduction's
    /// per-plane sums, when computed already).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_relu_plus(
        &mut self,
        dinp: &mut [T],
        res: &[T],
        dout: &[T],
        inp: &[T],
        n: usize,
        g: Geom,
        planes: Option<&[(f64, f64)]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        bn_relu_backward_plus(
            dinp,
            res,
            &mut self.gamma.grad,
            &mut self.beta.grad,
            dout,
            inp,
            &self.mean,
            &self.rstd,
            &self.gamma.value,
            &self.beta.value,
            planes,
            s,
        )
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param<T>> {
        [&mut self.gamma, &mut self.beta].into_iter()
    }
    pub fn params(&self) -> impl Iterator<Item = &Param<T>> {
        [&self.gamma, &self.beta].into_iter()
    }
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Buffer<T>> {
        [&mut self.running_mean, &mut self.running_var].into_iter()
    }
    pub fn buffers(&self) -> impl Iterator<Item = &Buffer<T>> {
        [&self.running_mean, &self.running_var].into_iter()
    }
}

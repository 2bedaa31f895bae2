//! The weight and BN layers' passes on the CPU: each names the op it runs
//! (`crate::ops`) and hands it the layer's parameters and saved
//! statistics. The net and the reference unit call these directly; the
//! fast unit reaches them through [`Backend`](crate::backend::Backend).

use crate::error::{check_len, Error, Result};
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::batchnorm::{
    batchnorm_backward_coefs, batchnorm_backward_to, batchnorm_forward_eval_act, forward_train_act,
    normalise_add_act, train_stats, BnAffine, BnBatchStats, BnParamGrads, BnRunning, BnSaved,
    BN_EPS, BN_MOMENTUM,
};
use crate::ops::conv2d::{
    conv2d_backward_from, conv2d_backward_to, conv2d_forward, conv2d_forward_from,
    conv2d_fuses_grad_out, conv2d_fuses_input_act, ConvBackward, ConvForward, ConvGradOut,
    ConvInput, ConvWorkspace,
};
use crate::ops::elementwise::{bias_add_backward, bias_add_forward};
use crate::ops::fused::{bn_relu_backward_plus, bn_relu_backward_to};
use crate::ops::linear::{LinearOp, LinearShape};
use crate::ops::par::par_zero;
use crate::ops::Accum;
use crate::scalar::Scalar;

impl<T: Scalar> WeightLayer<T> {
    /// The linear op of this (fully connected) layer on a batch of `n`, in
    /// the precision of `ws`.
    fn linear_op(&self, n: usize, ws: &ConvWorkspace<T>) -> LinearOp {
        LinearShape {
            n,
            fin: self.cin,
            fout: self.cout,
        }
        .op()
        .with_precision(ws.precision())
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
            None => self.linear_op(n, ws).forward(
                out,
                inp,
                &self.weight.value,
                self.bias.as_ref().map(|b| b.value.as_slice()),
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
    /// `out = res + conv(inp)`; with `plane_sums` (N, cout), also the stat
    /// sums of `out` for the BN that reads it
    /// (`ops::conv2d::conv2d_forward_from`).
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
                plane_sums: None,
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
    /// `dinp = res + ...` (`accum` must be [`Accum::Set`]); with `plane_sums`,
    /// the grad sums of the BN-ReLU backward over `dinp`
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
                plane_sums: None,
            } => self.backward_to(accum, dinp, d, x, (n, g), ws),
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
        self.backward_to(Accum::Add, dinp, dout, inp, (n, g), ws)
    }

    /// [`WeightLayer::backward`] with `dinp` written as `accum` says.
    pub fn backward_to(
        &mut self,
        accum: Accum,
        dinp: Option<&mut [T]>,
        dout: &[T],
        inp: &[T],
        (n, g): (usize, Geom),
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
                self.linear_op(n, ws).backward(
                    dinp,
                    &mut self.weight.grad,
                    self.bias.as_mut().map(|b| b.grad.as_mut_slice()),
                    dout,
                    inp,
                    &self.weight.value,
                )
            }
        }
    }
}

impl<T: Scalar> BnLayer<T> {
    /// What a training forward writes: the saved batch statistics, the
    /// parameters it reads, the running statistics it updates.
    fn forward_parts(&mut self) -> (BnBatchStats<'_, T>, BnAffine<'_, T>, BnRunning<'_, T>) {
        let stats = BnBatchStats {
            mean: &mut self.mean,
            rstd: &mut self.rstd,
        };
        let p = BnAffine {
            gamma: &self.gamma.value,
            beta: &self.beta.value,
        };
        let running = BnRunning {
            mean: &mut self.running_mean.value,
            var: &mut self.running_var.value,
            momentum: BN_MOMENTUM,
            eps: BN_EPS,
        };
        (stats, p, running)
    }

    /// What a training backward on input `inp` adds to and reads.
    fn backward_parts<'a>(&'a mut self, inp: &'a [T]) -> (BnParamGrads<'a, T>, BnSaved<'a, T>) {
        let g = BnParamGrads {
            dgamma: &mut self.gamma.grad,
            dbeta: &mut self.beta.grad,
        };
        let x = BnSaved {
            inp,
            mean: &self.mean,
            rstd: &self.rstd,
            gamma: &self.gamma.value,
            beta: &self.beta.value,
        };
        (g, x)
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
        let (stats, p, running) = self.forward_parts();
        forward_train_act::<T, RELU>(out, stats, inp, p, running, s)
    }

    /// The statistics half of a training-mode BN-ReLU: saves the batch
    /// statistics and updates the running ones, writes no output. The
    /// output is then read through [`BnLayer::relu_input`] by the next
    /// convolution, which normalises as it reads.
    /// `stat_sums` (N, C): the per-plane sums of `inp`, when the conv that
    /// wrote it computed them (`ops::batchnorm::bn_plane_sums`).
    pub fn forward_stats_train(
        &mut self,
        inp: &[T],
        n: usize,
        g: Geom,
        stat_sums: Option<&[f64]>,
    ) -> Result<()> {
        self.num_batches_tracked += 1;
        let s = self.shape(n, g);
        let (stats, p, running) = self.forward_parts();
        self.k = train_stats(stats, inp, p, running, stat_sums, s)?;
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
        grad_sums: Option<&[(f64, f64)]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        let (grads, x) = self.backward_parts(inp);
        let coef = batchnorm_backward_coefs(grads, dout, x, relu, grad_sums, s)?;
        self.coef = coef;
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
        stat_sums: Option<&[f64]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        check_len("batchnorm_add_relu", "output", out, &[s.n, s.c, s.hw])?;
        check_len("batchnorm_add_relu", "shortcut", h, &[s.n, s.c, s.hw])?;
        self.forward_stats_train(inp, n, g, stat_sums)?;
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
        self.forward_eval::<false>(out, inp, n, g)
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
        self.forward_eval::<true>(out, inp, n, g)
    }

    /// The eval-mode forward (running statistics), with the ReLU when `RELU`.
    fn forward_eval<const RELU: bool>(
        &self,
        out: &mut [T],
        inp: &[T],
        n: usize,
        g: Geom,
    ) -> Result<()> {
        let p = BnAffine {
            gamma: &self.gamma.value,
            beta: &self.beta.value,
        };
        let run = (&self.running_mean.value[..], &self.running_var.value[..]);
        batchnorm_forward_eval_act::<T, RELU>(out, inp, p, run, BN_EPS, self.shape(n, g))
    }

    /// The training backward of [`BnLayer::forward`] or, when `relu`, of
    /// [`BnLayer::forward_relu`]: the parameter gradients added to, `dinp`
    /// written as `accum` says. With `relu` the ReLU mask is recomputed from
    /// `inp` (see `ops::fused`).
    pub fn backward_to(
        &mut self,
        accum: Accum,
        dinp: &mut [T],
        dout: &[T],
        inp: &[T],
        (n, g): (usize, Geom),
        relu: bool,
    ) -> Result<()> {
        let s = self.shape(n, g);
        let (grads, x) = self.backward_parts(inp);
        if relu {
            bn_relu_backward_to(accum, dinp, grads, dout, x, s)
        } else {
            batchnorm_backward_to(accum, dinp, grads, dout, x, s)
        }
    }

    /// [`BnLayer::backward_to`] of BN-ReLU writing `dinp = res + ...`
    /// (`ops::fused::bn_relu_backward_plus`; `grad_sums`: the reduction's
    /// per-plane sums, when a conv took them already).
    pub fn backward_relu_plus(
        &mut self,
        dinp: &mut [T],
        res: &[T],
        dout: &[T],
        inp: &[T],
        (n, g): (usize, Geom),
        grad_sums: Option<&[(f64, f64)]>,
    ) -> Result<()> {
        let s = self.shape(n, g);
        let (grads, x) = self.backward_parts(inp);
        bn_relu_backward_plus((dinp, res), grads, dout, x, grad_sums, s)
    }
}

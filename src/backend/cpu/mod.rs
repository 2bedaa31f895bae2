//! The CPU backend: the crate's ops over `Vec<T>`, split over the rayon
//! pool (`ops::par`), with resgrad's own loops compiled for AVX-512/AVX2 at
//! run time (`ops::simd`) and the direct 3x3 convolutions on AVX-512
//! (`ops::conv2d::direct`). Every method is an `#[inline]` call of the op
//! it names, so code generic over [`Backend`] and run with `Cpu` is the
//! code it replaced, bit for bit and pass for pass.
//!
//! `layers.rs` holds the weight and BN layers' passes on the CPU (their
//! parameters are `Vec<T>` here), which the net and the reference unit
//! call directly; `peak.rs` measures the pool's f32 FMA peak.

use super::{
    Backend, BnBackwardPass, ConvBackwardPass, ConvForwardPass, ConvGradSource, ConvSource, Elem,
    MixSource, MixTarget,
};
use crate::error::{check_len, Result};
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::activation::{relu_backward, relu_forward, sigmoid_forward};
use crate::ops::conv2d::{ConvBackward, ConvForward, ConvGradOut, ConvInput, ConvWorkspace};
use crate::ops::dropout::dropout_forward;
use crate::ops::elementwise::scale_in_place;
use crate::ops::mix::{
    add_relu_backward, add_relu_backward_sums, add_relu_forward, mix_backward, mix_forward, BnSums,
    Mix, MixGrads, MixInputs,
};
use crate::ops::norms::{add_terms, TermNorms};
use crate::ops::par::{par_copy, par_zero};
use crate::ops::sgd::{sgd_update, SgdStep};
use crate::ops::shortcut_a::{shortcut_a_backward, shortcut_a_forward, ShortcutAShape};
use crate::ops::Accum;
use crate::scalar::Scalar;
use rand::Rng;

mod layers;
pub mod peak;

/// The CPU: host memory, the rayon pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

impl Cpu {
    /// The threads a pass is split over (the rayon pool's size).
    pub fn threads() -> usize {
        rayon::current_num_threads()
    }
}

fn conv_input<'a, T: Scalar>(s: ConvSource<'a, Cpu, T>) -> ConvInput<'a, T> {
    match s {
        ConvSource::Plain(x) => ConvInput::Plain(x),
        ConvSource::BnRelu { x, bn } => bn.relu_input(x),
    }
}

fn conv_grad_out<'a, T: Scalar>(s: ConvGradSource<'a, Cpu, T>) -> ConvGradOut<'a, T> {
    match s {
        ConvGradSource::Plain(d) => ConvGradOut::Plain(d),
        ConvGradSource::Bn { dy, x, bn, relu } => bn.grad_out(dy, x, relu),
    }
}

fn mix_inputs<'a, T: Scalar>(x: MixSource<'a, Cpu, T>) -> MixInputs<'a, T> {
    MixInputs {
        h: x.h,
        f: x.f,
        g: x.g,
        mask: x.mask,
    }
}

impl Backend for Cpu {
    type Buf<T: Elem> = Vec<T>;
    type Workspace<T: Scalar> = ConvWorkspace<T>;

    #[inline]
    fn zeros<T: Elem>(len: usize) -> Vec<T> {
        vec![T::default(); len]
    }
    #[inline]
    fn len<T: Elem>(x: &Vec<T>) -> usize {
        x.len()
    }
    #[inline]
    fn resize<T: Elem>(x: &mut Vec<T>, len: usize) {
        x.resize(len, T::default());
    }
    fn from_host<T: Elem>(x: &[T]) -> Vec<T> {
        x.to_vec()
    }
    fn to_host<T: Elem>(x: &Vec<T>, out: &mut [T]) -> Result<()> {
        check_len("to_host", "output", out, &[x.len()])?;
        out.copy_from_slice(x);
        Ok(())
    }
    #[inline]
    fn zero<T: Scalar>(x: &mut Vec<T>) {
        par_zero(x);
    }
    fn scale<T: Scalar>(x: &mut Vec<T>, a: T) {
        scale_in_place(x, a);
    }
    #[inline]
    fn copy<T: Scalar>(dst: &mut Vec<T>, src: &Vec<T>) -> Result<()> {
        check_len("copy", "source", src, &[dst.len()])?;
        par_copy(dst, src);
        Ok(())
    }

    #[inline]
    fn weight_forward<T: Scalar>(
        l: &WeightLayer<T>,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        l.forward(out, inp, n, g, ws)
    }
    #[inline]
    fn weight_backward<T: Scalar>(
        l: &mut WeightLayer<T>,
        accum: Accum,
        dinp: Option<&mut Vec<T>>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        ng: (usize, Geom),
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        l.backward_to(accum, dinp.map(|d| d.as_mut_slice()), dout, inp, ng, ws)
    }
    #[inline]
    fn conv_forward<T: Scalar>(
        l: &WeightLayer<T>,
        pass: ConvForwardPass<Cpu, T>,
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        let pass = ConvForward {
            out: pass.out,
            res: pass.res.map(|r| r.as_slice()),
            inp: conv_input(pass.inp),
            plane_sums: pass.stat_sums.map(|p| p.as_mut_slice()),
        };
        l.forward_from(pass, n, g, ws)
    }
    #[inline]
    fn conv_backward<T: Scalar>(
        l: &mut WeightLayer<T>,
        pass: ConvBackwardPass<Cpu, T>,
        n: usize,
        g: Geom,
        ws: &mut ConvWorkspace<T>,
    ) -> Result<()> {
        let pass = ConvBackward {
            accum: pass.accum,
            res: pass.res.map(|r| r.as_slice()),
            dinp: pass.dinp.map(|d| d.as_mut_slice()),
            dout: conv_grad_out(pass.dout),
            inp: conv_input(pass.inp),
            plane_sums: pass.grad_sums.map(|p| p.as_mut_slice()),
        };
        l.backward_from(pass, n, g, ws)
    }
    fn conv_fuses_input_act<T: Scalar>(l: &WeightLayer<T>, n: usize, g: Geom) -> bool {
        l.fuses_input_act(n, g)
    }
    fn conv_fuses_grad_out<T: Scalar>(l: &WeightLayer<T>, n: usize, g: Geom) -> bool {
        l.fuses_grad_out(n, g)
    }

    #[inline]
    fn bn_forward<T: Scalar>(
        bn: &mut BnLayer<T>,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        (n, g): (usize, Geom),
        train: bool,
        relu: bool,
    ) -> Result<()> {
        if relu {
            bn.forward_relu(out, inp, n, g, train)
        } else {
            bn.forward(out, inp, n, g, train)
        }
    }
    #[inline]
    fn bn_stats_train<T: Scalar>(
        bn: &mut BnLayer<T>,
        inp: &Vec<T>,
        n: usize,
        g: Geom,
        stat_sums: Option<&Vec<f64>>,
    ) -> Result<()> {
        bn.forward_stats_train(inp, n, g, stat_sums.map(|p| p.as_slice()))
    }
    #[inline]
    fn bn_add_relu_train<T: Scalar>(
        bn: &mut BnLayer<T>,
        out: &mut Vec<T>,
        h: &Vec<T>,
        inp: &Vec<T>,
        (n, g): (usize, Geom),
        stat_sums: Option<&Vec<f64>>,
    ) -> Result<()> {
        bn.forward_add_relu_train(out, h, inp, n, g, stat_sums.map(|p| p.as_slice()))
    }
    #[inline]
    fn bn_backward<T: Scalar>(
        bn: &mut BnLayer<T>,
        pass: BnBackwardPass<Cpu, T>,
        n: usize,
        g: Geom,
    ) -> Result<()> {
        let BnBackwardPass {
            relu,
            accum,
            res,
            dinp,
            dout,
            inp,
            grad_sums,
        } = pass;
        let grad_sums = grad_sums.map(|p| p.as_slice());
        match (relu, res) {
            (true, Some(r)) => bn.backward_relu_plus(dinp, r, dout, inp, (n, g), grad_sums),
            (relu, None) => bn.backward_to(accum, dinp, dout, inp, (n, g), relu),
            (false, Some(_)) => Err(crate::error::Error::InvalidParam {
                op: "batchnorm_backward",
                msg: "only a BN-ReLU backward adds a residual".into(),
            }),
        }
    }
    #[inline]
    fn bn_backward_coefs<T: Scalar>(
        bn: &mut BnLayer<T>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        (n, g): (usize, Geom),
        relu: bool,
        grad_sums: Option<&Vec<(f64, f64)>>,
    ) -> Result<()> {
        bn.backward_coefs(dout, inp, n, g, relu, grad_sums.map(|p| p.as_slice()))
    }

    #[inline]
    fn relu_forward<T: Scalar>(out: &mut Vec<T>, inp: &Vec<T>) -> Result<()> {
        relu_forward(out, inp)
    }
    #[inline]
    fn relu_backward<T: Scalar>(
        accum: Accum,
        dinp: &mut Vec<T>,
        dout: &Vec<T>,
        out: &Vec<T>,
    ) -> Result<()> {
        if accum == Accum::Set {
            par_zero(dinp);
        }
        relu_backward(dinp, dout, out)
    }
    #[inline]
    fn add_relu_forward<T: Scalar>(out: &mut Vec<T>, h: &Vec<T>, f: &Vec<T>) -> Result<()> {
        add_relu_forward(out, h, f)
    }
    #[inline]
    fn add_relu_backward<T: Scalar>(
        dsum: &mut Vec<T>,
        dx: Option<&mut Vec<T>>,
        dy: &Vec<T>,
        out: &Vec<T>,
    ) -> Result<()> {
        add_relu_backward(dsum, dx.map(|d| d.as_mut_slice()), dy, out)
    }
    #[inline]
    fn add_relu_backward_sums<T: Scalar>(
        dsum: &mut Vec<T>,
        dx: Option<&mut Vec<T>>,
        dy: &Vec<T>,
        out: &Vec<T>,
        bn: &BnLayer<T>,
        x_bn: &Vec<T>,
        (n, g): (usize, Geom),
        grad_sums: &mut Vec<(f64, f64)>,
    ) -> Result<()> {
        grad_sums.clear();
        grad_sums.resize(n * bn.c, (0.0, 0.0));
        let sums = BnSums {
            x: x_bn,
            mean: &bn.mean,
            sums: grad_sums,
            c: bn.c,
            hw: g.hw(),
        };
        add_relu_backward_sums(dsum, dx.map(|d| d.as_mut_slice()), dy, out, sums)
    }
    #[inline]
    fn mix_forward<T: Scalar>(y: &mut Vec<T>, mix: Mix, x: MixSource<Cpu, T>) -> Result<()> {
        mix_forward(y, mix, mix_inputs(x))
    }
    #[inline]
    fn mix_backward<T: Scalar>(
        d: MixTarget<Cpu, T>,
        s: &Vec<T>,
        mix: Mix,
        x: MixSource<Cpu, T>,
    ) -> Result<()> {
        let d = MixGrads {
            dh: d.dh,
            df: d.df,
            dz: d.dz,
        };
        mix_backward(d, s, mix, mix_inputs(x))
    }
    #[inline]
    fn sigmoid_forward<T: Scalar>(out: &mut Vec<T>, inp: &Vec<T>) -> Result<()> {
        sigmoid_forward(out, inp)
    }
    #[inline]
    fn shortcut_a_forward<T: Scalar>(
        out: &mut Vec<T>,
        x: &Vec<T>,
        s: &ShortcutAShape,
    ) -> Result<()> {
        shortcut_a_forward(out, x, s)
    }
    #[inline]
    fn shortcut_a_backward<T: Scalar>(
        dx: &mut Vec<T>,
        dout: &Vec<T>,
        s: &ShortcutAShape,
    ) -> Result<()> {
        shortcut_a_backward(dx, dout, s)
    }
    #[inline]
    fn dropout_forward<T: Scalar, R: Rng>(
        out: &mut Vec<T>,
        mask: &mut Vec<T>,
        inp: &Vec<T>,
        (p, train): (f64, bool),
        rng: &mut R,
    ) -> Result<()> {
        dropout_forward(out, mask, inp, p, train, rng)
    }
    #[inline]
    fn add_terms<T: Scalar>(d: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>) -> Result<TermNorms> {
        add_terms(d, a, b)
    }
    #[inline]
    fn sgd_update<T: Scalar>(w: &mut Vec<T>, v: &mut Vec<T>, g: &Vec<T>, h: SgdStep) -> Result<()> {
        sgd_update(w, v, g, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_moves_to_and_from_the_host() {
        let b = Cpu::from_host(&[1.0f32, -2.0, 3.0]);
        let mut host = [0.0f32; 3];
        Cpu::to_host(&b, &mut host).unwrap();
        assert_eq!(host, [1.0, -2.0, 3.0]);
        // a host buffer of the wrong length is an error, not a panic
        let e = Cpu::to_host(&b, &mut [0.0f32; 2]).unwrap_err();
        assert!(e.to_string().contains("to_host"), "{e}");
        // resize keeps the prefix and fills zeros; zeros() is all zero
        let mut r = b.clone();
        Cpu::resize(&mut r, 5);
        assert_eq!(r, [1.0, -2.0, 3.0, 0.0, 0.0]);
        Cpu::resize(&mut r, 2);
        assert_eq!((Cpu::len(&r), r.as_slice()), (2, &[1.0, -2.0][..]));
        assert_eq!(Cpu::zeros::<(f64, f64)>(2), [(0.0, 0.0); 2]);
    }

    #[test]
    fn copy_zero_and_scale() {
        let src = Cpu::from_host(&[1.0f64, 2.0, 3.0]);
        let mut dst = Cpu::zeros(3);
        Cpu::copy(&mut dst, &src).unwrap();
        assert_eq!(dst, src);
        Cpu::scale(&mut dst, -2.0);
        assert_eq!(dst, [-2.0, -4.0, -6.0]);
        Cpu::zero(&mut dst);
        assert_eq!(dst, [0.0; 3]);
        let e = Cpu::copy(&mut Cpu::zeros(2), &src).unwrap_err();
        assert!(e.to_string().contains("copy"), "{e}");
    }
}

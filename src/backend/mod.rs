//! The seam between the model and the device that runs it.
//!
//! A [`Backend`] owns the storage of every tensor of a residual unit (its
//! parameters, activations and gradients: [`Backend::Buf`]) and provides
//! exactly the passes a unit's [`Plan`](crate::model::unit::Plan) emits:
//! the convolution with its input and output kinds (plain, or a BN-ReLU
//! normalised as it is read; a plain output gradient, or a BN's reduction
//! turned into the input gradient as it is read; a residual joined to the
//! store; plane sums taken on the way), BN statistics / coefficients /
//! input gradient, the mix and its backward, add + ReLU, the ReLU mask,
//! shortcut A, dropout, the probe's norms, zero / copy, and the SGD update.
//! The plan decides what is fused and stored; a backend only runs the
//! passes, and says through [`Backend::conv_fuses_input_act`] /
//! [`Backend::conv_fuses_grad_out`] which fused convolution inputs it
//! takes at no cost of its own (the plan falls back to the stored path
//! where it does not).
//!
//! Storage never leaves the backend as a slice: the model moves data in and
//! out explicitly ([`Backend::from_host`], [`Backend::to_host`]). The CPU
//! backend ([`Cpu`], `cpu/`) is the crate's ops: its storage is `Vec<T>`,
//! every method is an `#[inline]` call of the op, so the seam costs nothing
//! (the same bits, the same speed). A GPU backend implements this trait
//! with device buffers and is tested pass by pass against [`Cpu`], then as
//! a whole unit against the reference unit and `Plan::reference`, then as
//! a net against the PyTorch fixtures (ARCHITECTURE.md, "Adding and
//! testing a backend").
//!
//! Where the fast unit is generic over the backend (`model/unit/mod.rs`,
//! `steps.rs`, `plan.rs`), it reaches storage and arithmetic only through
//! this trait. The net, the reference unit, the loaders, checkpoints and
//! the optimiser still run on [`Cpu`] (their types default to it).

use crate::error::Result;
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::ops::mix::Mix;
use crate::ops::norms::TermNorms;
use crate::ops::sgd::SgdStep;
use crate::ops::shortcut_a::ShortcutAShape;
use crate::ops::Accum;
use crate::scalar::Scalar;
use rand::Rng;
use std::fmt::Debug;

pub mod cpu;
pub use cpu::Cpu;

/// What a backend buffer can hold: scalars, and the plain-data tuples of
/// the plane sums and BN coefficients.
pub trait Elem: Copy + Default + Debug + Send + Sync + 'static {}
impl<X: Copy + Default + Debug + Send + Sync + 'static> Elem for X {}

/// The input of a convolution pass.
pub enum ConvSource<'a, B: Backend, T: Scalar> {
    /// a stored tensor
    Plain(&'a B::Buf<T>),
    /// `max(0, BN(x))` with the statistics of `bn`'s last training
    /// forward, normalised as it is read (never stored)
    BnRelu {
        x: &'a B::Buf<T>,
        bn: &'a BnLayer<T, B>,
    },
}

/// The output gradient of a convolution's backward pass.
pub enum ConvGradSource<'a, B: Backend, T: Scalar> {
    /// a stored `dL/d(out)`
    Plain(&'a B::Buf<T>),
    /// the input gradient of the BN (BN-ReLU when `relu`) that read the
    /// convolution's output `x`, from `bn`'s last
    /// [`Backend::bn_backward_coefs`] and that BN's `dy` (never stored)
    Bn {
        dy: &'a B::Buf<T>,
        x: &'a B::Buf<T>,
        bn: &'a BnLayer<T, B>,
        relu: bool,
    },
}

/// One convolution forward pass (a conv without bias):
/// `out = (res +) conv(inp)`, with the stat sums of `out` (N, cout: each
/// plane's sum, the first pass of the statistics of the BN that reads it)
/// when `stat_sums` is given.
pub struct ConvForwardPass<'a, B: Backend, T: Scalar> {
    pub out: &'a mut B::Buf<T>,
    pub res: Option<&'a B::Buf<T>>,
    pub inp: ConvSource<'a, B, T>,
    pub stat_sums: Option<&'a mut B::Buf<f64>>,
}

/// One convolution backward pass: the weight gradient (accumulated) and
/// `dinp` written as `accum` says (`= res + ...` with a residual), with the
/// grad sums (N, cin: each plane's `(sum dy, sum dy (x - mean))`, the
/// reduction of the BN-ReLU whose output gradient `dinp` is) when
/// `grad_sums` is given.
pub struct ConvBackwardPass<'a, B: Backend, T: Scalar> {
    pub accum: Accum,
    pub res: Option<&'a B::Buf<T>>,
    pub dinp: Option<&'a mut B::Buf<T>>,
    pub dout: ConvGradSource<'a, B, T>,
    pub inp: ConvSource<'a, B, T>,
    pub grad_sums: Option<&'a mut B::Buf<(f64, f64)>>,
}

/// The training backward of a BN (BN-ReLU when `relu`, its mask
/// recomputed from `inp`): the parameter gradients accumulated, `dinp`
/// written as `accum` says; with `res` (BN-ReLU only), `dinp = res + ...`
/// (`accum` is then ignored); `grad_sums`: the reduction's per-plane sums,
/// when a convolution took them already.
pub struct BnBackwardPass<'a, B: Backend, T: Scalar> {
    pub relu: bool,
    pub accum: Accum,
    pub res: Option<&'a B::Buf<T>>,
    pub dinp: &'a mut B::Buf<T>,
    pub dout: &'a B::Buf<T>,
    pub inp: &'a B::Buf<T>,
    pub grad_sums: Option<&'a B::Buf<(f64, f64)>>,
}

/// What the mix reads (`ops::mix::MixInputs`).
pub struct MixSource<'a, B: Backend, T: Scalar> {
    pub h: &'a B::Buf<T>,
    pub f: &'a B::Buf<T>,
    pub g: &'a B::Buf<T>,
    pub mask: &'a B::Buf<T>,
}

/// What the mix's backward writes (`ops::mix::MixGrads`).
pub struct MixTarget<'a, B: Backend, T: Scalar> {
    pub dh: &'a mut B::Buf<T>,
    pub df: &'a mut B::Buf<T>,
    pub dz: &'a mut B::Buf<T>,
}

/// A device that runs a residual unit's passes (see the module docs).
/// Every pass checks its buffers' lengths: a wrong one is an
/// `Error::Shape` naming the op, never a panic.
pub trait Backend: Clone + Copy + Debug + Default + Send + Sync + 'static {
    /// A tensor's storage on this device.
    type Buf<T: Elem>: Clone + Debug + Default + Send + Sync;
    /// The convolutions' scratch, grown once and reused.
    type Workspace<T: Scalar>: Default + Send;

    // ---- storage
    /// A buffer of `len` zeros.
    fn zeros<T: Elem>(len: usize) -> Self::Buf<T>;
    fn len<T: Elem>(x: &Self::Buf<T>) -> usize;
    /// Sets the length to `len`, keeping the first `min(len, old)`
    /// elements; new ones are zero. Keeps the storage when it fits.
    fn resize<T: Elem>(x: &mut Self::Buf<T>, len: usize);
    /// A buffer holding a copy of host data.
    fn from_host<T: Elem>(x: &[T]) -> Self::Buf<T>;
    /// Copies a buffer to host memory (`out` as long as the buffer).
    fn to_host<T: Elem>(x: &Self::Buf<T>, out: &mut [T]) -> Result<()>;
    /// `x = 0`.
    fn zero<T: Scalar>(x: &mut Self::Buf<T>);
    /// `x = a * x`.
    fn scale<T: Scalar>(x: &mut Self::Buf<T>, a: T);
    /// `dst = src` (equal lengths).
    fn copy<T: Scalar>(dst: &mut Self::Buf<T>, src: &Self::Buf<T>) -> Result<()>;

    // ---- weight layers (conv or Linear)
    /// `out = W * inp (+ b)`.
    fn weight_forward<T: Scalar>(
        l: &WeightLayer<T, Self>,
        out: &mut Self::Buf<T>,
        inp: &Self::Buf<T>,
        n: usize,
        g: Geom,
        ws: &mut Self::Workspace<T>,
    ) -> Result<()>;
    /// The parameter gradients (accumulated) and, if given, `dinp` written
    /// as `accum` says.
    fn weight_backward<T: Scalar>(
        l: &mut WeightLayer<T, Self>,
        accum: Accum,
        dinp: Option<&mut Self::Buf<T>>,
        dout: &Self::Buf<T>,
        inp: &Self::Buf<T>,
        ng: (usize, Geom),
        ws: &mut Self::Workspace<T>,
    ) -> Result<()>;
    /// One convolution forward pass of any input kind.
    fn conv_forward<T: Scalar>(
        l: &WeightLayer<T, Self>,
        pass: ConvForwardPass<Self, T>,
        n: usize,
        g: Geom,
        ws: &mut Self::Workspace<T>,
    ) -> Result<()>;
    /// One convolution backward pass of any input / output-gradient kind.
    fn conv_backward<T: Scalar>(
        l: &mut WeightLayer<T, Self>,
        pass: ConvBackwardPass<Self, T>,
        n: usize,
        g: Geom,
        ws: &mut Self::Workspace<T>,
    ) -> Result<()>;
    /// Whether the convolution reads a [`ConvSource::BnRelu`] input at no
    /// cost of its own, on `(n, g)` inputs.
    fn conv_fuses_input_act<T: Scalar>(l: &WeightLayer<T, Self>, n: usize, g: Geom) -> bool;
    /// Whether the convolution reads a [`ConvGradSource::Bn`] output
    /// gradient at no cost of its own, on `(n, g)` inputs.
    fn conv_fuses_grad_out<T: Scalar>(l: &WeightLayer<T, Self>, n: usize, g: Geom) -> bool;

    // ---- BatchNorm
    /// `out = BN(inp)` (`max(0, BN(inp))` when `relu`); with `train`, the
    /// batch statistics, saved for the backward, and the running ones
    /// updated; else the running ones.
    fn bn_forward<T: Scalar>(
        bn: &mut BnLayer<T, Self>,
        out: &mut Self::Buf<T>,
        inp: &Self::Buf<T>,
        ng: (usize, Geom),
        train: bool,
        relu: bool,
    ) -> Result<()>;
    /// The statistics of a training BN-ReLU whose output is never stored
    /// (read through [`ConvSource::BnRelu`]); `stat_sums` (N, C): the
    /// per-plane sums of `inp`, when the convolution that wrote it took them.
    fn bn_stats_train<T: Scalar>(
        bn: &mut BnLayer<T, Self>,
        inp: &Self::Buf<T>,
        n: usize,
        g: Geom,
        stat_sums: Option<&Self::Buf<f64>>,
    ) -> Result<()>;
    /// Training BN fused with a residual addition and the ReLU after it:
    /// `out = max(0, h + BN(inp))`.
    fn bn_add_relu_train<T: Scalar>(
        bn: &mut BnLayer<T, Self>,
        out: &mut Self::Buf<T>,
        h: &Self::Buf<T>,
        inp: &Self::Buf<T>,
        ng: (usize, Geom),
        stat_sums: Option<&Self::Buf<f64>>,
    ) -> Result<()>;
    /// The training backward of a BN or BN-ReLU ([`BnBackwardPass`]).
    fn bn_backward<T: Scalar>(
        bn: &mut BnLayer<T, Self>,
        pass: BnBackwardPass<Self, T>,
        n: usize,
        g: Geom,
    ) -> Result<()>;
    /// The reduction half of a training BN (BN-ReLU when `relu`)
    /// backward: the parameter gradients, and the coefficients a
    /// [`ConvGradSource::Bn`] reads; no input gradient is written.
    fn bn_backward_coefs<T: Scalar>(
        bn: &mut BnLayer<T, Self>,
        dout: &Self::Buf<T>,
        inp: &Self::Buf<T>,
        ng: (usize, Geom),
        relu: bool,
        grad_sums: Option<&Self::Buf<(f64, f64)>>,
    ) -> Result<()>;

    // ---- pointwise and the mix
    /// `out = max(0, inp)`.
    fn relu_forward<T: Scalar>(out: &mut Self::Buf<T>, inp: &Self::Buf<T>) -> Result<()>;
    /// `dinp (+)= dout [out > 0]`, as `accum` says.
    fn relu_backward<T: Scalar>(
        accum: Accum,
        dinp: &mut Self::Buf<T>,
        dout: &Self::Buf<T>,
        out: &Self::Buf<T>,
    ) -> Result<()>;
    /// `out = max(0, h + f)`.
    fn add_relu_forward<T: Scalar>(
        out: &mut Self::Buf<T>,
        h: &Self::Buf<T>,
        f: &Self::Buf<T>,
    ) -> Result<()>;
    /// `dsum = dy [out > 0]`, also into `dx` when given.
    fn add_relu_backward<T: Scalar>(
        dsum: &mut Self::Buf<T>,
        dx: Option<&mut Self::Buf<T>>,
        dy: &Self::Buf<T>,
        out: &Self::Buf<T>,
    ) -> Result<()>;
    /// [`Backend::add_relu_backward`] with the reduction of `bn`, the BN
    /// that made the branch (its input `x_bn`, shape `ng`), taken per plane
    /// as `dsum` is written: `grad_sums` (N, C) = `(sum dsum, sum dsum * (x_bn
    /// - mean))` per plane, what [`Backend::bn_backward_coefs`] takes
    /// precomputed (`ops::mix::add_relu_backward_sums`; a plain addition,
    /// `dF = dsum`).
    #[allow(clippy::too_many_arguments)]
    fn add_relu_backward_sums<T: Scalar>(
        dsum: &mut Self::Buf<T>,
        dx: Option<&mut Self::Buf<T>>,
        dy: &Self::Buf<T>,
        out: &Self::Buf<T>,
        bn: &BnLayer<T, Self>,
        x_bn: &Self::Buf<T>,
        ng: (usize, Geom),
        grad_sums: &mut Self::Buf<(f64, f64)>,
    ) -> Result<()>;
    /// `y = mix(h, f)` (`ops::mix`).
    fn mix_forward<T: Scalar>(y: &mut Self::Buf<T>, mix: Mix, x: MixSource<Self, T>) -> Result<()>;
    /// The mix's `dh`, `dF` (and a gate's `dz`) from `s = dL/dy`.
    fn mix_backward<T: Scalar>(
        d: MixTarget<Self, T>,
        s: &Self::Buf<T>,
        mix: Mix,
        x: MixSource<Self, T>,
    ) -> Result<()>;
    /// `out = sigmoid(inp)`.
    fn sigmoid_forward<T: Scalar>(out: &mut Self::Buf<T>, inp: &Self::Buf<T>) -> Result<()>;
    /// Option A's shortcut: strided subsampling, zero-padded channels.
    fn shortcut_a_forward<T: Scalar>(
        out: &mut Self::Buf<T>,
        x: &Self::Buf<T>,
        s: &ShortcutAShape,
    ) -> Result<()>;
    /// `dx += ` option A's backward of `dout`.
    fn shortcut_a_backward<T: Scalar>(
        dx: &mut Self::Buf<T>,
        dout: &Self::Buf<T>,
        s: &ShortcutAShape,
    ) -> Result<()>;
    /// Inverted dropout with keep probability `1 - p` (the identity in
    /// evaluation); the mask is kept for the backward.
    fn dropout_forward<T: Scalar, R: Rng>(
        out: &mut Self::Buf<T>,
        mask: &mut Self::Buf<T>,
        inp: &Self::Buf<T>,
        p_train: (f64, bool),
        rng: &mut R,
    ) -> Result<()>;
    /// One `torch.optim.SGD` step: `v = mu v + (g + wd w)`, `w -= lr v`
    /// (`ops::sgd`).
    fn sgd_update<T: Scalar>(
        w: &mut Self::Buf<T>,
        v: &mut Self::Buf<T>,
        g: &Self::Buf<T>,
        h: SgdStep,
    ) -> Result<()>;
    /// `d = a + b`, with the norms of the two terms, of their sum and
    /// their cosine (the probe's split, `ops::norms`).
    fn add_terms<T: Scalar>(
        d: &mut Self::Buf<T>,
        a: &Self::Buf<T>,
        b: &Self::Buf<T>,
    ) -> Result<TermNorms>;
}

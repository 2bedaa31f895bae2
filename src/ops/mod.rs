//! Every layer of resgrad, one folder each (dfdx style): the forward and the
//! hand-derived backward side by side (llm.c style), the derivation in the
//! doc comment, the finite-difference check in the tests.
//!
//! Conventions, the same in every op:
//! - buffers are contiguous row-major slices, NCHW for images, (N, F) for
//!   features; shapes are written beside each argument;
//! - `*_forward` *overwrites* its output;
//! - `*_backward` takes `(d-inputs..., d-params..., dout, saved forward
//!   tensors..., shape)` and *accumulates* (`+=`) into every gradient, so a
//!   tensor read by two consumers (a residual unit's input) simply receives
//!   both contributions; callers zero gradients once per step;
//! - a wrong-sized buffer is an `Error::Shape` naming the op, never a panic.
//!
//! The exception to `+=`: the `*_backward_to` entry points of the ops on a
//! residual unit's hot path (conv2d, BatchNorm, BN-ReLU) *overwrite* the
//! input gradient when given [`Accum::Set`] when the caller knows it is that buffer's only writer, so
//! the buffer needs no zeroing pass first. Parameter gradients always
//! accumulate.

pub mod activation;
pub mod awake;
pub mod batchnorm;
pub mod conv2d;
pub mod dropout;
pub mod elementwise;
pub mod fused;
pub mod linear;
pub mod mix;
pub mod norms;
pub mod par;
pub mod pool;
pub mod sgd;
pub mod shortcut_a;
pub mod simd;
pub mod softmax_ce;

/// How a backward writes its input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accum {
    /// `dinp += ...`: the convention, for a tensor with several consumers.
    Add,
    /// `dinp = ...`: the caller's buffer has this op as its only writer, so
    /// it need not be zeroed first (one memory pass fewer).
    Set,
}

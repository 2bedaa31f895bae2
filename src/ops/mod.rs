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

pub mod activation;
pub mod batchnorm;
pub mod conv2d;
pub mod dropout;
pub mod elementwise;
pub mod fused;
pub mod linear;
pub mod par;
pub mod pool;
pub mod shortcut_a;
pub mod simd;
pub mod softmax_ce;

//! # resgrad
//!
//! Deep residual networks with every gradient derived and written out by
//! hand, and a probe that measures how gradients flow through residual
//! connections (He et al. 2016, "Identity Mappings in Deep Residual
//! Networks", arXiv 1603.05027).
//!
//! Conventions (see ARCHITECTURE.md): NCHW images, (N, F) features,
//! row-major contiguous buffers; gradients are `d`-prefixed and accumulate
//! with `+=`; forward overwrites its output.

pub mod align;
pub mod backend;
pub mod data;
pub mod demo;
pub mod derive;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gemm;
pub mod gemm_bf16;
pub mod gradcheck;
pub mod grads;
pub mod io;
pub mod limits;
pub mod model;
pub mod ops;
pub mod precision;
pub mod probe;
pub mod report;
pub mod scalar;
pub mod sweep;
pub mod tensor;
pub mod train;
pub mod verdict;

#[cfg(test)]
#[global_allocator]
static GLOBAL: align::LineAligned = align::LineAligned;

pub use error::{Error, Result};
pub use scalar::Scalar;
pub use tensor::Tensor;

//! The element type. Every layer is written once, generic over `Scalar`:
//! training runs in `f32`, and the very same code runs in `f64` for the
//! finite-difference gradient checks (f32 is too coarse to catch a wrong
//! term).

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point element type: `f32` or `f64`.
pub trait Scalar:
    num_traits::Float
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
{
    /// The safetensors dtype name ("F32" / "F64").
    const DTYPE: &'static str;
    /// Size in bytes.
    const BYTES: usize;
    /// Convert from f64 (rounding for f32).
    fn of(v: f64) -> Self;
    /// Convert to f64 (exact).
    fn f64(self) -> f64;
    /// Little-endian bytes of a slice (for safetensors).
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8>;
    /// Read a little-endian slice; `bytes.len()` must be a multiple of BYTES.
    fn from_le_bytes_vec(bytes: &[u8]) -> Vec<Self>;
}

impl Scalar for f32 {
    const DTYPE: &'static str = "F32";
    const BYTES: usize = 4;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl Scalar for f64 {
    const DTYPE: &'static str = "F64";
    const BYTES: usize = 8;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    fn to_le_bytes_vec(xs: &[Self]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn from_le_bytes_vec(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }
}

//! A contiguous row-major tensor: NCHW for images, (N, F) for features.
//! Layers work on plain slices (llm.c style); `Tensor` is the owning
//! container used at the edges (model parameters, I/O, tests).

use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// Owned, contiguous, row-major buffer with a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

impl<T: Scalar> Tensor<T> {
    /// Zero-filled tensor of the given shape.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::zero(); shape.iter().product()],
        }
    }

    /// Wrap `data`; its length must equal the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let want: usize = shape.iter().product();
        if data.len() != want {
            return Err(Error::Shape {
                op: "tensor",
                what: "data",
                expected: shape.to_vec(),
                got: vec![data.len()],
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Convert element type (f32 <-> f64).
    pub fn cast<U: Scalar>(&self) -> Tensor<U> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| U::of(x.f64())).collect(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[T] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// Set every element to zero.
    pub fn fill_zero(&mut self) {
        self.data.iter_mut().for_each(|x| *x = T::zero());
    }
    /// Euclidean norm, accumulated in f64.
    pub fn norm(&self) -> f64 {
        norm(&self.data)
    }
}

/// Euclidean norm of a slice, accumulated in f64.
pub fn norm<T: Scalar>(xs: &[T]) -> f64 {
    xs.iter().map(|x| x.f64() * x.f64()).sum::<f64>().sqrt()
}

/// Dot product accumulated in f64.
pub fn dot<T: Scalar>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.f64() * y.f64()).sum()
}

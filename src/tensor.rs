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

/// Values per parallel piece of [`sum_sq_par`].
pub const SUM_SQ_CHUNK: usize = 1 << 16;

/// Sum of squares of `xs` in f64, split over the current rayon pool: fixed
/// pieces of [`SUM_SQ_CHUNK`] values, each summed in 8 interleaved lanes
/// (which the compiler vectorises; [`norm`]'s one running sum is a chain of
/// dependent adds), the pieces' sums added in order, so the result depends
/// neither on the thread count nor on timing.
///
/// It differs from `norm(xs)^2` by rounding alone: the square of an f32 is
/// exact in f64 (24-bit mantissas, 48-bit product), and adding n
/// non-negative terms in any order gives the exact sum within a relative
/// (n - 1) * 2^-53 (Higham, *Accuracy and Stability of Numerical
/// Algorithms*, 2nd ed., sec. 4.2), so the two are within 2 (n - 1) * 2^-53
/// of each other, relative. It is non-finite exactly when some value is:
/// a finite f32's square is below 1.2e77, n of them far below f64's range.
pub fn sum_sq_par<T: Scalar>(xs: &[T]) -> f64 {
    use rayon::prelude::*;
    let piece = |c: &[T]| -> f64 {
        let mut lanes = [0.0f64; 8];
        let mut it = c.chunks_exact(8);
        for v in &mut it {
            for (l, x) in lanes.iter_mut().zip(v) {
                *l += x.f64() * x.f64();
            }
        }
        let tail: f64 = it.remainder().iter().map(|x| x.f64() * x.f64()).sum();
        lanes.iter().sum::<f64>() + tail
    };
    if xs.len() <= SUM_SQ_CHUNK {
        return piece(xs);
    }
    let sums: Vec<f64> = xs.par_chunks(SUM_SQ_CHUNK).map(piece).collect();
    sums.iter().sum()
}

/// Dot product accumulated in f64.
pub fn dot<T: Scalar>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.f64() * y.f64()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_sq_par_is_norm_squared_within_the_rounding_bound() {
        // lengths around the piece size and the lanes, values over 12 decades
        let mut state = 0x2545f4914f6cdd1du64;
        for n in [
            0,
            1,
            7,
            8,
            9,
            SUM_SQ_CHUNK - 1,
            SUM_SQ_CHUNK,
            3 * SUM_SQ_CHUNK + 5,
        ] {
            let xs: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    ((u - 0.5) * 10f64.powi((state % 12) as i32 - 6)) as f32
                })
                .collect();
            let (fast, plain) = (sum_sq_par(&xs), norm(&xs).powi(2));
            // 2 (n - 1) * 2^-53 relative, derived in the doc comment
            let bound = n as f64 * f64::EPSILON * plain;
            assert!((fast - plain).abs() <= bound, "n {n}: {fast} vs {plain}");
            // the same on one thread (fixed pieces, summed in order)
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            assert_eq!(one.install(|| sum_sq_par(&xs)).to_bits(), fast.to_bits());
        }
    }

    #[test]
    fn sum_sq_par_is_non_finite_exactly_when_a_value_is() {
        let mut xs = vec![f32::MAX; 3 * SUM_SQ_CHUNK];
        assert!(sum_sq_par(&xs).is_finite());
        xs[2 * SUM_SQ_CHUNK + 1] = f32::INFINITY;
        assert!(sum_sq_par(&xs).is_infinite());
        xs[5] = f32::NAN;
        assert!(sum_sq_par(&xs).is_nan());
    }
}

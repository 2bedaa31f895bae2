//! The one matrix-multiply entry point of resgrad, a thin safe wrapper over
//! the `gemm` crate (chosen by measurement; see BENCHMARKS.md).
//!
//! Every matrix is described by a slice plus a row stride and a column
//! stride, so transposes are free: `A^T` of a row-major `(k, m)` buffer is
//! `(rs = 1, cs = m)`.

use crate::scalar::Scalar;

/// A read-only strided matrix view: element (i, j) is `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `(rows, cols)` matrix.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `(cols, rows)` buffer, seen as `(rows, cols)`.
    pub fn rm_t(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs
        }
    }
}

/// A writable strided matrix view.
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// Row-major `(rows, cols)` matrix.
    pub fn rm(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// Writes into a row-major `(cols, rows)` buffer as if it were `(rows, cols)`.
    pub fn rm_t(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
}

/// `dst = (accumulate ? dst : 0) + a * b`, single-threaded (callers
/// parallelise over images themselves: splitting these small GEMMs inside the
/// library measured slower on 2 cores).
///
/// Panics if the views are inconsistent: that is a bug in resgrad, never a
/// consequence of user input (callers validate shapes first).
pub fn matmul<T: Scalar>(dst: MatMut<'_, T>, a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matmul: inconsistent dims"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = T::zero();
                }
            }
        }
        return;
    }
    let dmax = (m - 1) * dst.rs + (n - 1) * dst.cs;
    assert!(dmax < dst.data.len(), "matmul: dst view out of bounds");
    assert!(
        a.max_index() < a.data.len(),
        "matmul: lhs view out of bounds"
    );
    assert!(
        b.max_index() < b.data.len(),
        "matmul: rhs view out of bounds"
    );
    // SAFETY: all three views were bounds-checked above; `dst` is a unique
    // borrow, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(), // alpha: factor on the old dst (gemm's convention)
            T::one(), // beta: factor on a*b
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_with_transposes_and_accumulate() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want = naive(m, n, k, &a, &b);
        // plain
        let mut c = vec![0.0; m * n];
        matmul(
            MatMut::rm(&mut c, m, n),
            Mat::rm(&a, m, k),
            Mat::rm(&b, k, n),
            false,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        // accumulate on top: doubles
        matmul(
            MatMut::rm(&mut c, m, n),
            Mat::rm(&a, m, k),
            Mat::rm(&b, k, n),
            true,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-12);
        }
        // transposed operands: at is (k, m) row-major, bt is (n, k) row-major
        let mut at = vec![0.0; k * m];
        for i in 0..m {
            for p in 0..k {
                at[p * m + i] = a[i * k + p];
            }
        }
        let mut bt = vec![0.0; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        let mut ct = vec![0.0; n * m];
        matmul(
            MatMut::rm_t(&mut ct, m, n),
            Mat::rm_t(&at, m, k),
            Mat::rm_t(&bt, k, n),
            false,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - want[i * n + j]).abs() < 1e-12);
            }
        }
        // f32 path
        let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        let mut cf = vec![0f32; m * n];
        matmul(
            MatMut::rm(&mut cf, m, n),
            Mat::rm(&af, m, k),
            Mat::rm(&bf, k, n),
            false,
        );
        for (x, y) in cf.iter().zip(&want) {
            assert!((*x as f64 - y).abs() < 1e-5);
        }
    }
}

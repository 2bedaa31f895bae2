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

/// The part every GEMM of resgrad shares before it multiplies
/// (`dst = (accumulate ? dst : 0) + a * b`, `dst` (m, n), `a` (m, k) of
/// shape `a_dims`, `b` (k, n)): the shape checks, then the degenerate
/// cases, then the bounds checks. Returns `None` when nothing is left to
/// compute (`m == 0` or `n == 0`: nothing to write; `k == 0`: `dst` zeroed
/// unless accumulating, as the empty sum is 0), else `Some((m, n, k))` with
/// every view in bounds. `a_view` is the left operand's view when it is one
/// (bounds-checked here); a packed one ([`crate::gemm_bf16::PackedA`]) was
/// checked when it was packed. `name` starts the panic messages.
///
/// Panics if the views are inconsistent (a bug in resgrad, see [`matmul`]).
pub(crate) fn prologue<T: Scalar>(
    name: &str,
    dst: &mut MatMut<'_, T>,
    a_dims: (usize, usize),
    a_view: Option<&Mat<'_, T>>,
    b: &Mat<'_, T>,
    accumulate: bool,
) -> Option<(usize, usize, usize)> {
    let (m, n, k) = (dst.rows, dst.cols, a_dims.1);
    assert!(
        a_dims.0 == m && b.rows == k && b.cols == n,
        "{name}: inconsistent dims"
    );
    if m == 0 || n == 0 {
        return None;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.rs + j * dst.cs] = T::zero();
                }
            }
        }
        return None;
    }
    let dmax = (m - 1) * dst.rs + (n - 1) * dst.cs;
    assert!(dmax < dst.data.len(), "{name}: dst view out of bounds");
    if let Some(a) = a_view {
        assert!(
            a.max_index() < a.data.len(),
            "{name}: lhs view out of bounds"
        );
    }
    assert!(
        b.max_index() < b.data.len(),
        "{name}: rhs view out of bounds"
    );
    Some((m, n, k))
}

/// `dst = (accumulate ? dst : 0) + a * b`, single-threaded (callers
/// parallelise over images themselves: splitting these small GEMMs inside the
/// library measured slower on 2 cores).
///
/// Panics if the views are inconsistent: that is a bug in resgrad, never a
/// consequence of user input (callers validate shapes first).
pub fn matmul<T: Scalar>(mut dst: MatMut<'_, T>, a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool) {
    let Some((m, n, k)) = prologue(
        "matmul",
        &mut dst,
        (a.rows, a.cols),
        Some(&a),
        &b,
        accumulate,
    ) else {
        return;
    };
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
pub(crate) mod tests {
    use super::*;

    /// The row-major `(cols, rows)` transpose of a row-major `(rows, cols)` buffer.
    pub(crate) fn transposed<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
        (0..cols * rows)
            .map(|t| v[(t % rows) * cols + t / rows])
            .collect()
    }

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
        let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
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

    /// `k = 0`: the empty sum, `dst` zeroed unless accumulating; `m = 0`:
    /// nothing to write (not even a view to check).
    pub(crate) fn check_degenerate(
        name: &str,
        gemm: fn(MatMut<'_, f32>, Mat<'_, f32>, Mat<'_, f32>, bool),
    ) {
        let none: &[f32] = &[];
        let mut c = vec![3.0f32; 6];
        for (accumulate, want) in [(true, 3.0), (false, 0.0)] {
            let (a, b) = (Mat::rm(none, 2, 0), Mat::rm(none, 0, 3));
            gemm(MatMut::rm(&mut c, 2, 3), a, b, accumulate);
            assert_eq!(c, [want; 6], "{name}: k = 0, accumulate = {accumulate}");
        }
        gemm(
            MatMut::rm(&mut [], 0, 3),
            Mat::rm(none, 0, 4),
            Mat::rm(none, 4, 3),
            false,
        );
    }

    #[test]
    fn degenerate_products() {
        check_degenerate("matmul", matmul::<f32>);
    }

    /// `matmul` into a (2, 3) `dst` of `a` (2, 4) on the first `a_len`
    /// values of a buffer and `b` (`b_rows`, 3).
    fn matmul_2x3(a_len: usize, b_rows: usize) {
        let (x, mut c) = ([0f32; 12], [0f32; 6]);
        let (a, b) = (Mat::rm(&x[..a_len], 2, 4), Mat::rm(&x, b_rows, 3));
        matmul(MatMut::rm(&mut c, 2, 3), a, b, false);
    }

    #[test]
    #[should_panic(expected = "matmul: inconsistent dims")]
    fn inconsistent_dims_panic() {
        matmul_2x3(12, 3);
    }

    #[test]
    #[should_panic(expected = "matmul: lhs view out of bounds")]
    fn short_view_panics() {
        matmul_2x3(7, 4);
    }
}

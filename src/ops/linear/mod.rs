//! Linear (fully connected) layer, with or without bias.
//!
//! Forward, for a batch of N rows of `fin` features:
//!
//! ```text
//! out[n, o] = sum_i inp[n, i] * w[o, i] + b[o]        inp (N, fin), w (fout, fin), b (fout), out (N, fout)
//! ```
//!
//! Backward, with `dout = dL/dout`:
//!
//! ```text
//! d out[n,o] / d inp[n,i] = w[o,i]   =>  dinp[n, i] += sum_o dout[n, o] * w[o, i]     (dinp = dout · w)
//! d out[n,o] / d w[o,i]   = inp[n,i] =>  dw[o, i]   += sum_n dout[n, o] * inp[n, i]   (dw = dout^T · inp)
//! d out[n,o] / d b[o]     = 1        =>  db[o]      += sum_n dout[n, o]
//! ```

use crate::error::{check_len, check_nonzero, Result};
use crate::gemm::{Mat, MatMut};
use crate::gemm_bf16::matmul_in;
use crate::precision::Precision;
use crate::scalar::Scalar;

const OP: &str = "linear";

/// Sizes of one linear layer applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// batch size N
    pub n: usize,
    /// input features
    pub fin: usize,
    /// output features
    pub fout: usize,
}

impl LinearShape {
    fn validate(&self) -> Result<()> {
        check_nonzero(OP, "batch size", self.n)?;
        check_nonzero(OP, "in_features", self.fin)?;
        check_nonzero(OP, "out_features", self.fout)
    }
}

impl LinearShape {
    /// The op of these sizes, its GEMMs in f32 ([`LinearOp::with_precision`]
    /// for another precision).
    pub fn op(self) -> LinearOp {
        LinearOp {
            shape: self,
            precision: Precision::F32,
        }
    }
}

/// One linear layer applied to a batch: its sizes and the precision of its
/// GEMMs (bf16: `T` must be `f32`, see `gemm_bf16::matmul_in`; the bias and
/// its gradient stay in `T`). The parameters and activations are the
/// arguments of [`LinearOp::forward`] and [`LinearOp::backward`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearOp {
    pub shape: LinearShape,
    pub precision: Precision,
}

impl LinearOp {
    /// This op with its GEMMs in precision `p`.
    pub fn with_precision(self, p: Precision) -> Self {
        LinearOp {
            precision: p,
            ..self
        }
    }

    fn bf16(&self) -> bool {
        self.precision == Precision::Bf16
    }

    /// The checks both passes start with, in this order: the sizes, the
    /// named `(N, fout)` buffer (`out` or `dout`), `inp`, `weight`.
    fn check<T: Scalar>(
        &self,
        y: (&'static str, &[T]),
        inp: &[T],
        weight: &[T],
    ) -> Result<LinearShape> {
        let s = self.shape;
        s.validate()?;
        check_len(OP, y.0, y.1, &[s.n, s.fout])?;
        check_len(OP, "input", inp, &[s.n, s.fin])?;
        check_len(OP, "weight", weight, &[s.fout, s.fin])?;
        Ok(s)
    }

    /// `out = inp · w^T + b` (out is overwritten).
    pub fn forward<T: Scalar>(
        &self,
        out: &mut [T],      // (N, fout)
        inp: &[T],          // (N, fin)
        weight: &[T],       // (fout, fin)
        bias: Option<&[T]>, // (fout)
    ) -> Result<()> {
        let s = self.check(("output", out), inp, weight)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b, &[s.fout])?;
            for row in out.chunks_exact_mut(s.fout) {
                row.copy_from_slice(b);
            }
        }
        // (N, fin) x (fin, fout) -> (N, fout); w^T is a free view of w (fout, fin)
        matmul_in(
            self.bf16(),
            MatMut::rm(out, s.n, s.fout),
            Mat::rm(inp, s.n, s.fin),
            Mat::rm_t(weight, s.fin, s.fout),
            bias.is_some(),
        );
        Ok(())
    }

    /// Backward of [`LinearOp::forward`]; every gradient accumulates (`+=`).
    /// `dinp` may be `None` when nobody needs the input gradient.
    pub fn backward<T: Scalar>(
        &self,
        dinp: Option<&mut [T]>,  // (N, fin)
        dweight: &mut [T],       // (fout, fin)
        dbias: Option<&mut [T]>, // (fout)
        dout: &[T],              // (N, fout)
        inp: &[T],               // (N, fin)
        weight: &[T],            // (fout, fin)
    ) -> Result<()> {
        let s = self.check(("dout", dout), inp, weight)?;
        check_len(OP, "dweight", dweight, &[s.fout, s.fin])?;
        // in the forward pass this was out = inp · w^T, so now dinp += dout · w
        if let Some(dinp) = dinp {
            check_len(OP, "dinp", dinp, &[s.n, s.fin])?;
            // (N, fout) x (fout, fin) -> (N, fin)
            matmul_in(
                self.bf16(),
                MatMut::rm(dinp, s.n, s.fin),
                Mat::rm(dout, s.n, s.fout),
                Mat::rm(weight, s.fout, s.fin),
                true,
            );
        }
        // ... and dw += dout^T · inp: (fout, N) x (N, fin) -> (fout, fin)
        matmul_in(
            self.bf16(),
            MatMut::rm(dweight, s.fout, s.fin),
            Mat::rm_t(dout, s.fout, s.n),
            Mat::rm(inp, s.n, s.fin),
            true,
        );
        // the bias was broadcast over the batch, so its gradient sums over it
        if let Some(db) = dbias {
            check_len(OP, "dbias", db, &[s.fout])?;
            for row in dout.chunks_exact(s.fout) {
                for (d, &g) in db.iter_mut().zip(row) {
                    *d += g;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[test]
    fn hand_computed_case() {
        // inp = [[1, 2]], w = [[3, 4], [5, 6]], b = [0.5, -1]
        // out = [1*3 + 2*4 + 0.5, 1*5 + 2*6 - 1] = [11.5, 16]
        let (inp, w, b) = ([1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [0.5, -1.0]);
        let s = LinearShape {
            n: 1,
            fin: 2,
            fout: 2,
        };
        let mut out = [0.0f64; 2];
        s.op().forward(&mut out, &inp, &w, Some(&b)).unwrap();
        assert_eq!(out, [11.5, 16.0]);
        // dout = [1, -1]: dinp = dout · w = [3 - 5, 4 - 6] = [-2, -2]
        // dw = dout^T · inp = [[1, 2], [-1, -2]], db = [1, -1]
        let mut dinp = [0.0; 2];
        let mut dw = [0.0; 4];
        let mut db = [0.0; 2];
        let dout = [1.0, -1.0];
        s.op()
            .backward(Some(&mut dinp), &mut dw, Some(&mut db), &dout, &inp, &w)
            .unwrap();
        assert_eq!(dinp, [-2.0, -2.0]);
        assert_eq!(dw, [1.0, 2.0, -1.0, -2.0]);
        assert_eq!(db, [1.0, -1.0]);
    }

    #[test]
    fn gradcheck_random_shapes() {
        let mut r = Rand::new(1);
        for &(n, fin, fout, with_bias) in &[
            (1, 1, 1, true),
            (3, 5, 7, true),
            (4, 9, 2, false),
            (1, 6, 3, false),
        ] {
            let s = LinearShape { n, fin, fout };
            let x = r.normal_vec(n * fin);
            let w = r.normal_vec(fout * fin);
            let b = r.normal_vec(fout);
            let mut params = vec![x, w];
            if with_bias {
                params.push(b);
            }
            let err = check_layer(
                &mut params,
                n * fout,
                |p, out| {
                    s.op()
                        .forward(out, &p[0], &p[1], p.get(2).map(|b| b.as_slice()))
                        .unwrap()
                },
                |p, dout, grads| {
                    let (gx, rest) = grads.split_at_mut(1);
                    let (gw, gb) = rest.split_at_mut(1);
                    s.op()
                        .backward(
                            Some(&mut gx[0]),
                            &mut gw[0],
                            gb.first_mut().map(|g| g.as_mut_slice()),
                            dout,
                            &p[0],
                            &p[1],
                        )
                        .unwrap()
                },
                &mut r,
            );
            assert!(err < 1e-6, "linear {s:?}: max rel err {err:e}");
        }
    }

    #[test]
    fn shape_errors_name_the_layer() {
        let s = LinearShape {
            n: 2,
            fin: 3,
            fout: 4,
        };
        let mut out = vec![0.0f32; 8];
        let e = s
            .op()
            .forward(&mut out, &[0.0; 5], &[0.0; 12], None)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("linear") && msg.contains("input"), "{msg}");
    }
}

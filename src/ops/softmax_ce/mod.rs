//! Softmax cross-entropy, fused, mean over the batch.
//!
//! Forward, for logits `z` (N, K) and integer labels `y` (N):
//!
//! ```text
//! p[n, k] = exp(z[n,k] - m_n) / sum_j exp(z[n,j] - m_n)     (m_n = max_j z[n,j], for stability)
//! L       = -(1/N) sum_n log p[n, y_n]
//! ```
//!
//! Backward: `log p[n, y] = z[n, y] - log sum_j exp z[n, j]`, so
//! `d(-log p[n,y]) / d z[n,k] = p[n,k] - [k == y]`, and with the mean,
//!
//! ```text
//! dz[n, k] += dL * (p[n, k] - [k == y_n]) / N
//! ```
//!
//! The fused form never forms `log p` for classes other than the label and
//! never divides by a small probability, so it is exact where a separate
//! softmax + log would lose precision.

use crate::error::{check_len, check_nonzero, Error, Result};
use crate::scalar::Scalar;

const OP: &str = "softmax_cross_entropy";

fn check_labels(labels: &[usize], n: usize, classes: usize) -> Result<()> {
    check_nonzero(OP, "batch size", n)?;
    check_nonzero(OP, "classes", classes)?;
    check_len(OP, "labels", labels, &[n])?;
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!("label {bad} out of range for {classes} classes"),
        });
    }
    Ok(())
}

/// Forward: writes the probabilities `probs` (N, K) and returns the mean loss
/// (accumulated in f64).
pub fn softmax_ce_forward<T: Scalar>(
    probs: &mut [T],  // (N, K)
    logits: &[T],     // (N, K)
    labels: &[usize], // (N)
    n: usize,
    classes: usize,
) -> Result<f64> {
    check_labels(labels, n, classes)?;
    check_len(OP, "logits", logits, &[n, classes])?;
    check_len(OP, "probs", probs, &[n, classes])?;
    let mut loss = 0.0f64;
    for ((p, z), &y) in probs
        .chunks_exact_mut(classes)
        .zip(logits.chunks_exact(classes))
        .zip(labels)
    {
        let m = z.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let mut sum = T::zero();
        for (pk, &zk) in p.iter_mut().zip(z) {
            *pk = (zk - m).exp();
            sum += *pk;
        }
        for pk in p.iter_mut() {
            *pk /= sum;
        }
        // -log p_y = log(sum) + m - z_y
        loss += sum.f64().ln() + m.f64() - z[y].f64();
    }
    Ok(loss / n as f64)
}

/// Backward: `dlogits += dloss * (probs - onehot(labels)) / N`.
pub fn softmax_ce_backward<T: Scalar>(
    dlogits: &mut [T], // (N, K)
    probs: &[T],       // (N, K)
    labels: &[usize],  // (N)
    n: usize,
    classes: usize,
    dloss: T,
) -> Result<()> {
    check_labels(labels, n, classes)?;
    check_len(OP, "probs", probs, &[n, classes])?;
    check_len(OP, "dlogits", dlogits, &[n, classes])?;
    let scale = dloss / T::of(n as f64);
    for ((d, p), &y) in dlogits
        .chunks_exact_mut(classes)
        .zip(probs.chunks_exact(classes))
        .zip(labels)
    {
        for (k, (dk, &pk)) in d.iter_mut().zip(p).enumerate() {
            let target = if k == y { T::one() } else { T::zero() };
            *dk += scale * (pk - target);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{max_rel_err, numeric_grad, Rand, EPS};

    #[test]
    fn hand_computed_case() {
        // one row, logits [0, ln 3] -> p = [1/4, 3/4]; label 1: L = -ln(3/4)
        // dz = p - onehot = [1/4, -1/4]
        let z = [0.0f64, 3f64.ln()];
        let mut p = [0.0; 2];
        let l = softmax_ce_forward(&mut p, &z, &[1], 1, 2).unwrap();
        assert!((l + (0.75f64).ln()).abs() < 1e-15);
        assert!((p[0] - 0.25).abs() < 1e-15 && (p[1] - 0.75).abs() < 1e-15);
        let mut dz = [0.0; 2];
        softmax_ce_backward(&mut dz, &p, &[1], 1, 2, 1.0).unwrap();
        assert!((dz[0] - 0.25).abs() < 1e-15 && (dz[1] + 0.25).abs() < 1e-15);
        // two rows: the mean halves each row's gradient
        let mut p2 = [0.0; 4];
        let l2 = softmax_ce_forward(&mut p2, &[0.0, 0.0, 0.0, 0.0], &[0, 1], 2, 2).unwrap();
        assert!((l2 - 2f64.ln()).abs() < 1e-15);
        let mut dz2 = [0.0; 4];
        softmax_ce_backward(&mut dz2, &p2, &[0, 1], 2, 2, 1.0).unwrap();
        assert_eq!(dz2, [-0.25, 0.25, 0.25, -0.25]);
    }

    #[test]
    fn large_logits_are_stable() {
        let mut p = [0.0f32; 3];
        let l = softmax_ce_forward(&mut p, &[1000.0, 0.0, -1000.0], &[0], 1, 3).unwrap();
        assert!(l.abs() < 1e-6 && p.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn gradcheck() {
        let mut r = Rand::new(3);
        for &(n, k) in &[(1usize, 1usize), (1, 10), (5, 3), (8, 10)] {
            let labels: Vec<usize> = (0..n).map(|_| r.usize_below(k)).collect();
            let mut xs = vec![r.normal_vec(n * k)];
            let mut p = vec![0.0; n * k];
            softmax_ce_forward(&mut p, &xs[0], &labels, n, k).unwrap();
            let mut dz = vec![0.0; n * k];
            softmax_ce_backward(&mut dz, &p, &labels, n, k, 1.0).unwrap();
            let num = numeric_grad(&mut xs, 0, EPS, |x| {
                let mut p = vec![0.0; n * k];
                softmax_ce_forward(&mut p, &x[0], &labels, n, k).unwrap()
            });
            let e = max_rel_err(&dz, &num);
            assert!(e < 1e-6, "softmax_ce ({n},{k}): {e:e}");
        }
    }

    #[test]
    fn bad_label_is_an_error() {
        let mut p = [0.0f64; 2];
        assert!(softmax_ce_forward(&mut p, &[0.0, 0.0], &[2], 1, 2).is_err());
    }
}

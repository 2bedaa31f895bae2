//! Inverted dropout.
//!
//! Forward (training, `0 <= p < 1`): each element is dropped independently
//! with probability p, and the survivors are scaled by `1/(1-p)` so that the
//! expected output equals the input (nothing to rescale at eval time):
//!
//! ```text
//! mask_i = 0 with probability p, else 1/(1-p)     (E[mask_i] = (1-p)/(1-p) = 1)
//! out_i  = inp_i * mask_i                          inp/out/mask (any shape, same length)
//! ```
//!
//! Eval (`train == false`) or `p == 0`: `out = inp`, `mask = 1` (and no
//! random number is drawn).
//!
//! Backward, the mask being a constant of the step:
//!
//! ```text
//! d out_i / d inp_j = mask_i * [i == j]   =>   dinp_i += dout_i * mask_i
//! ```

use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;
use rand::Rng;

const OP: &str = "dropout";

/// Training: `mask[i] = 0` with probability p, else `1/(1-p)`;
/// `out = inp * mask`. Eval (`train == false`): `out = inp`, mask all ones.
/// `out` and `mask` are overwritten; `p` outside [0, 1) is
/// `Error::InvalidParam` (also in eval mode). The mask is drawn from `rng`
/// in element order, so the same seed gives the same mask.
pub fn dropout_forward<T: Scalar, R: Rng>(
    out: &mut [T],  // (len)
    mask: &mut [T], // (len)
    inp: &[T],      // (len)
    p: f64,
    train: bool,
    rng: &mut R,
) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!("drop probability p must be in [0, 1), got {p}"),
        });
    }
    check_len(OP, "output", out, &[inp.len()])?;
    check_len(OP, "mask", mask, &[inp.len()])?;
    if !train || p == 0.0 {
        mask.fill(T::one());
        out.copy_from_slice(inp);
        return Ok(());
    }
    let keep = T::of(1.0 / (1.0 - p));
    for ((o, m), &x) in out.iter_mut().zip(mask.iter_mut()).zip(inp) {
        // u uniform in [0, 1): dropped with probability P(u < p) = p
        *m = if rng.gen::<f64>() < p {
            T::zero()
        } else {
            keep
        };
        *o = x * *m;
    }
    Ok(())
}

/// `dinp += dout * mask`.
pub fn dropout_backward<T: Scalar>(
    dinp: &mut [T], // (len)
    dout: &[T],     // (len)
    mask: &[T],     // (len)
) -> Result<()> {
    check_len(OP, "dinp", dinp, &[mask.len()])?;
    check_len(OP, "dout", dout, &[mask.len()])?;
    for ((d, &g), &m) in dinp.iter_mut().zip(dout).zip(mask) {
        *d += g * m;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn hand_computed_case() {
        // mask = [0, 2, 2, 0] stands for p = 1/2 (survivors scaled by 1/(1 - 1/2) = 2):
        // dinp = dout * mask = [1, -1, 3, 5] * [0, 2, 2, 0] = [0, -2, 6, 0]
        let mut d = [0.0f64; 4];
        dropout_backward(&mut d, &[1.0, -1.0, 3.0, 5.0], &[0.0, 2.0, 2.0, 0.0]).unwrap();
        assert_eq!(d, [0.0, -2.0, 6.0, 0.0]);
        // a real draw with p = 1/2: every mask entry is 0 or 2 and out = inp * mask
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let inp = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let (mut out, mut mask) = ([0.0; 8], [0.0; 8]);
        dropout_forward(&mut out, &mut mask, &inp, 0.5, true, &mut rng).unwrap();
        for i in 0..8 {
            assert!(mask[i] == 0.0 || mask[i] == 2.0, "{mask:?}");
            assert_eq!(out[i], inp[i] * mask[i]);
        }
    }

    #[test]
    fn eval_and_p_zero_are_identity() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let inp = [1.0f32, -2.0, 3.5];
        for (p, train) in [(0.5, false), (0.0, true), (0.0, false), (0.9, false)] {
            let (mut out, mut mask) = ([9.0f32; 3], [9.0f32; 3]);
            dropout_forward(&mut out, &mut mask, &inp, p, train, &mut rng).unwrap();
            assert_eq!(out, inp);
            assert_eq!(mask, [1.0; 3]);
        }
        // and no random number was drawn
        let mut fresh = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(rng.gen::<u64>(), fresh.gen::<u64>());
    }

    #[test]
    fn mask_statistics() {
        let n = 1 << 20;
        let inp = vec![1.0f32; n];
        let (mut out, mut mask) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for p in [0.1, 0.3, 0.5, 0.9] {
            dropout_forward(&mut out, &mut mask, &inp, p, true, &mut rng).unwrap();
            let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
            let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
            // std of the mean of the mask sqrt(p/(1-p)/n) <= 3e-3 here; of the rate <= 5e-4
            assert!((mean - 1.0).abs() < 1e-2, "p={p}: mask mean {mean}");
            assert!((dropped - p).abs() < 3e-3, "p={p}: drop rate {dropped}");
            let kept = 1.0 / (1.0 - p) as f32;
            assert!(mask.iter().all(|&m| m == 0.0 || m == kept));
        }
    }

    #[test]
    fn same_seed_same_mask() {
        let inp = vec![1.0f64; 1000];
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (mut out, mut mask) = (vec![0.0; 1000], vec![0.0; 1000]);
            dropout_forward(&mut out, &mut mask, &inp, 0.4, true, &mut rng).unwrap();
            mask
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn gradcheck_fixed_mask() {
        let mut r = Rand::new(3);
        for &(n, p) in &[(1usize, 0.5), (17, 0.3), (64, 0.8)] {
            // the forward re-seeds every call, so every evaluation sees the same mask
            let fwd = |x: &[f64], out: &mut [f64]| {
                let mut mask = vec![0.0; n];
                dropout_forward(
                    out,
                    &mut mask,
                    x,
                    p,
                    true,
                    &mut ChaCha8Rng::seed_from_u64(42),
                )
                .unwrap();
                mask
            };
            let mut xs = vec![r.normal_vec(n)];
            let e = check_layer(
                &mut xs,
                n,
                |x, out| {
                    fwd(&x[0], out);
                },
                |x, dout, g| {
                    let mask = fwd(&x[0], &mut vec![0.0; n]);
                    dropout_backward(&mut g[0], dout, &mask).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "dropout n={n} p={p}: {e:e}");
        }
    }

    #[test]
    fn errors_name_the_layer() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (mut out, mut mask) = ([0.0f64; 3], [0.0f64; 3]);
        for p in [1.0, -0.1, 1.5, f64::NAN] {
            for train in [true, false] {
                let e = dropout_forward(&mut out, &mut mask, &[0.0; 3], p, train, &mut rng)
                    .unwrap_err();
                assert!(
                    matches!(e, Error::InvalidParam { op: "dropout", .. }),
                    "{e}"
                );
            }
        }
        let msg = dropout_forward(&mut out, &mut mask[..2], &[0.0; 3], 0.5, true, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dropout") && msg.contains("mask"), "{msg}");
        let msg = dropout_forward(&mut out, &mut mask, &[0.0; 4], 0.5, true, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dropout") && msg.contains("output"), "{msg}");
        let msg = dropout_backward(&mut out, &[0.0; 2], &mask)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dropout") && msg.contains("dout"), "{msg}");
        let msg = dropout_backward(&mut out[..1], &[0.0; 3], &mask)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dropout") && msg.contains("dinp"), "{msg}");
    }
}

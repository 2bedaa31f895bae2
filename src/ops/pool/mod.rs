//! Global average pooling (N, C, HW) -> (N, C).
//!
//! Forward:
//!
//! ```text
//! out[n, c] = (1/HW) sum_p inp[n, c, p]          inp (N, C, HW), out (N, C)
//! ```
//!
//! Backward: `d out[n,c] / d inp[n,c,p] = 1/HW` (and 0 across samples or
//! channels), so every position receives an equal share:
//!
//! ```text
//! dinp[n, c, p] += dout[n, c] / HW
//! ```

use crate::error::{check_len, check_nonzero, Result};
use crate::scalar::Scalar;

const OP: &str = "avgpool";

fn validate<T>(
    inp_like: &[T],
    inp_what: &'static str,
    pooled: &[T],
    pooled_what: &'static str,
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    check_nonzero(OP, "batch size", n)?;
    check_nonzero(OP, "channels", c)?;
    check_nonzero(OP, "positions (HW)", hw)?;
    check_len(OP, inp_what, inp_like, &[n, c, hw])?;
    check_len(OP, pooled_what, pooled, &[n, c])
}

/// `out[n, c] = mean_p inp[n, c, p]` (out is overwritten; the sum runs in f64).
pub fn avgpool_forward<T: Scalar>(
    out: &mut [T], // (N, C)
    inp: &[T],     // (N, C, HW)
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    validate(inp, "input", out, "output", n, c, hw)?;
    let inv = 1.0 / hw as f64;
    for (o, x) in out.iter_mut().zip(inp.chunks_exact(hw)) {
        *o = T::of(x.iter().map(|v| v.f64()).sum::<f64>() * inv);
    }
    Ok(())
}

/// `dinp[n,c,p] += dout[n,c] / HW`.
pub fn avgpool_backward<T: Scalar>(
    dinp: &mut [T], // (N, C, HW)
    dout: &[T],     // (N, C)
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    validate(dinp, "dinp", dout, "dout", n, c, hw)?;
    let inv = T::of(1.0 / hw as f64);
    for (d, &g) in dinp.chunks_exact_mut(hw).zip(dout) {
        let share = g * inv;
        d.iter_mut().for_each(|v| *v += share);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[test]
    fn hand_computed_case() {
        // N=1, C=2, HW=4: out = [(1+2+3+6)/4, (0-4+4+8)/4] = [3, 2]
        let inp = [1.0f64, 2.0, 3.0, 6.0, 0.0, -4.0, 4.0, 8.0];
        let mut out = [0.0; 2];
        avgpool_forward(&mut out, &inp, 1, 2, 4).unwrap();
        assert_eq!(out, [3.0, 2.0]);
        // dout = [4, -8]: every position gets dout / 4 = [1, -2], added to what is there
        let mut d = [1.0; 8];
        avgpool_backward(&mut d, &[4.0, -8.0], 1, 2, 4).unwrap();
        assert_eq!(d, [2.0, 2.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn gradcheck() {
        let mut r = Rand::new(1);
        for &(n, c, hw) in &[(1, 1, 1), (2, 3, 5), (3, 4, 64), (5, 1, 7)] {
            let mut xs = vec![r.normal_vec(n * c * hw)];
            let e = check_layer(
                &mut xs,
                n * c,
                |x, out| avgpool_forward(out, &x[0], n, c, hw).unwrap(),
                |_, dout, g| avgpool_backward(&mut g[0], dout, n, c, hw).unwrap(),
                &mut r,
            );
            assert!(e < 1e-6, "avgpool {n}x{c}x{hw}: {e:e}");
        }
    }

    #[test]
    fn errors_name_the_layer() {
        let mut out = [0.0f32; 6];
        let msg = avgpool_forward(&mut out, &[0.0; 11], 2, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("avgpool") && msg.contains("input"), "{msg}");
        let msg = avgpool_forward(&mut out[..5], &[0.0; 12], 2, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("avgpool") && msg.contains("output"), "{msg}");
        let mut d = [0.0f32; 12];
        let msg = avgpool_backward(&mut d, &[0.0; 5], 2, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("avgpool") && msg.contains("dout"), "{msg}");
        let msg = avgpool_backward(&mut d[..11], &[0.0; 6], 2, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("avgpool") && msg.contains("dinp"), "{msg}");
        let msg = avgpool_forward(&mut out, &[0.0; 0], 2, 3, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("avgpool") && msg.contains("HW"), "{msg}");
    }
}

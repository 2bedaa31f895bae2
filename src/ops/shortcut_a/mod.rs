//! The option-A shortcut: strided subsampling plus zero-padded channels,
//! exactly PyTorch's `F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, pad // 2, pad - pad // 2))`
//! with `pad = cout - cin`.
//!
//! Forward, with `lo = (cout - cin) / 2` (integer division: an odd `pad`
//! puts the extra zero channel at the end), `oh = ceil(h/s)`, `ow = ceil(w/s)`:
//!
//! ```text
//! out[n, c + lo, y, x] = inp[n, c, y*s, x*s]     for c < cin, y < oh, x < ow
//! out[n, k, y, x]      = 0                       for k < lo or k >= lo + cin
//!                                                inp (N, cin, h, w), out (N, cout, oh, ow)
//! ```
//!
//! (`y*s < h` exactly when `y < ceil(h/s)`, so `oh` counts the kept rows.)
//!
//! Backward: each output element is one input element or a constant, so
//!
//! ```text
//! d out[n, c+lo, y, x] / d inp[n, c, y*s, x*s] = 1, every other partial 0
//! =>  dinp[n, c, y*s, x*s] += dout[n, c + lo, y, x]
//! ```
//!
//! and the skipped positions and the padded channels get / give nothing.

use crate::error::{check_len, check_nonzero, Error, Result};
use crate::scalar::Scalar;

const OP: &str = "shortcut_a";

/// Input (N, cin, h, w) -> output (N, cout, ceil(h/stride), ceil(w/stride)),
/// with `cout >= cin`; input channel c lands in output channel
/// `c + (cout - cin) / 2` (PyTorch's `F.pad(x, (.., pad//2, pad - pad//2))`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortcutAShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub stride: usize,
}

impl ShortcutAShape {
    pub fn oh(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn ow(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
    /// First output channel that carries input channel 0.
    pub fn pad_lo(&self) -> usize {
        (self.cout - self.cin) / 2
    }
    fn validate(&self) -> Result<()> {
        check_nonzero(OP, "batch size", self.n)?;
        check_nonzero(OP, "in channels", self.cin)?;
        check_nonzero(OP, "height", self.h)?;
        check_nonzero(OP, "width", self.w)?;
        check_nonzero(OP, "stride", self.stride)?;
        if self.cout < self.cin {
            return Err(Error::InvalidParam {
                op: OP,
                msg: format!(
                    "out channels ({}) must be >= in channels ({})",
                    self.cout, self.cin
                ),
            });
        }
        Ok(())
    }
}

/// Calls `f(input index, output index)` for every kept position.
fn for_each_kept(s: &ShortcutAShape, mut f: impl FnMut(usize, usize)) {
    let (oh, ow, lo) = (s.oh(), s.ow(), s.pad_lo());
    for n in 0..s.n {
        for c in 0..s.cin {
            let ib = (n * s.cin + c) * s.h * s.w;
            let ob = (n * s.cout + c + lo) * oh * ow;
            for y in 0..oh {
                for x in 0..ow {
                    f(ib + y * s.stride * s.w + x * s.stride, ob + y * ow + x);
                }
            }
        }
    }
}

/// Subsample and zero-pad channels (out is overwritten, padding included).
pub fn shortcut_a_forward<T: Scalar>(
    out: &mut [T], // (N, cout, oh, ow)
    inp: &[T],     // (N, cin, h, w)
    s: &ShortcutAShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "output", out, &[s.n, s.cout, s.oh(), s.ow()])?;
    check_len(OP, "input", inp, &[s.n, s.cin, s.h, s.w])?;
    out.fill(T::zero());
    for_each_kept(s, |i, o| out[o] = inp[i]);
    Ok(())
}

/// `dinp += ` the subsampled, channel-cropped `dout`.
pub fn shortcut_a_backward<T: Scalar>(
    dinp: &mut [T], // (N, cin, h, w)
    dout: &[T],     // (N, cout, oh, ow)
    s: &ShortcutAShape,
) -> Result<()> {
    s.validate()?;
    check_len(OP, "dout", dout, &[s.n, s.cout, s.oh(), s.ow()])?;
    check_len(OP, "dinp", dinp, &[s.n, s.cin, s.h, s.w])?;
    for_each_kept(s, |i, o| dinp[i] += dout[o]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[test]
    fn hand_computed_case() {
        // 1x1x4x4 input 0..16, stride 2, cin 1 -> cout 3: pad 2, lo = 1, oh = ow = 2.
        // x[::2, ::2] keeps rows 0, 2 and columns 0, 2: [0, 2, 8, 10] -> channel 1
        let s = ShortcutAShape {
            n: 1,
            cin: 1,
            h: 4,
            w: 4,
            cout: 3,
            stride: 2,
        };
        let inp: Vec<f64> = (0..16).map(f64::from).collect();
        let mut out = [7.0; 12];
        shortcut_a_forward(&mut out, &inp, &s).unwrap();
        assert_eq!(
            out,
            [0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 8.0, 10.0, 0.0, 0.0, 0.0, 0.0]
        );
        // backward: the padded channels are dropped, channel 1 goes back to the kept
        // positions (0,0), (0,2), (2,0), (2,2) = indices 0, 2, 8, 10, added to 1
        let dout = [9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0];
        let mut d = [1.0; 16];
        shortcut_a_backward(&mut d, &dout, &s).unwrap();
        let mut want = [1.0; 16];
        want[0] = 2.0;
        want[2] = 3.0;
        want[8] = 4.0;
        want[10] = 5.0;
        assert_eq!(d, want);
    }

    #[test]
    fn odd_sizes_match_pytorch() {
        // h = 3, w = 5, stride 2: rows 0, 2 (oh = ceil(3/2) = 2), columns 0, 2, 4 (ow = 3).
        // cin 2 -> cout 5: pad 3, pad // 2 = 1 zero channel before, 2 after.
        let s = ShortcutAShape {
            n: 1,
            cin: 2,
            h: 3,
            w: 5,
            cout: 5,
            stride: 2,
        };
        assert_eq!((s.oh(), s.ow(), s.pad_lo()), (2, 3, 1));
        let inp: Vec<f64> = (0..30).map(f64::from).collect();
        let mut out = vec![0.0; 5 * 6];
        shortcut_a_forward(&mut out, &inp, &s).unwrap();
        // channel 0 of the input, x[0, 0, ::2, ::2] = [[0, 2, 4], [10, 12, 14]] -> out channel 1
        // channel 1 (offset 15)                   = [[15, 17, 19], [25, 27, 29]] -> out channel 2
        let mut want = vec![0.0; 30];
        want[6..12].copy_from_slice(&[0.0, 2.0, 4.0, 10.0, 12.0, 14.0]);
        want[12..18].copy_from_slice(&[15.0, 17.0, 19.0, 25.0, 27.0, 29.0]);
        assert_eq!(out, want);
        // stride 1 and cout == cin is the identity
        let s = ShortcutAShape {
            n: 2,
            cin: 3,
            h: 2,
            w: 3,
            cout: 3,
            stride: 1,
        };
        let inp: Vec<f64> = (0..36).map(f64::from).collect();
        let mut out = vec![0.0; 36];
        shortcut_a_forward(&mut out, &inp, &s).unwrap();
        assert_eq!(out, inp);
    }

    #[test]
    fn gradcheck() {
        let mut r = Rand::new(1);
        for s in [
            ShortcutAShape {
                n: 1,
                cin: 1,
                h: 4,
                w: 4,
                cout: 3,
                stride: 2,
            },
            ShortcutAShape {
                n: 2,
                cin: 3,
                h: 5,
                w: 7,
                cout: 6,
                stride: 2,
            },
            ShortcutAShape {
                n: 3,
                cin: 2,
                h: 6,
                w: 5,
                cout: 5,
                stride: 3,
            },
            ShortcutAShape {
                n: 2,
                cin: 4,
                h: 3,
                w: 3,
                cout: 4,
                stride: 1,
            },
        ] {
            let mut xs = vec![r.normal_vec(s.n * s.cin * s.h * s.w)];
            let out_len = s.n * s.cout * s.oh() * s.ow();
            let e = check_layer(
                &mut xs,
                out_len,
                |x, out| shortcut_a_forward(out, &x[0], &s).unwrap(),
                |_, dout, g| shortcut_a_backward(&mut g[0], dout, &s).unwrap(),
                &mut r,
            );
            assert!(e < 1e-6, "shortcut_a {s:?}: {e:e}");
        }
    }

    #[test]
    fn errors_name_the_layer() {
        let s = ShortcutAShape {
            n: 1,
            cin: 1,
            h: 4,
            w: 4,
            cout: 3,
            stride: 2,
        };
        let (mut out, mut d) = ([0.0f32; 12], [0.0f32; 16]);
        let msg = shortcut_a_forward(&mut out, &[0.0; 15], &s)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shortcut_a") && msg.contains("input"), "{msg}");
        let msg = shortcut_a_forward(&mut out[..11], &[0.0; 16], &s)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("shortcut_a") && msg.contains("output"),
            "{msg}"
        );
        let msg = shortcut_a_backward(&mut d, &[0.0; 11], &s)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shortcut_a") && msg.contains("dout"), "{msg}");
        let msg = shortcut_a_backward(&mut d[..15], &[0.0; 12], &s)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shortcut_a") && msg.contains("dinp"), "{msg}");
        for bad in [
            ShortcutAShape { cout: 0, ..s },
            ShortcutAShape {
                cin: 2,
                cout: 1,
                ..s
            },
            ShortcutAShape { stride: 0, ..s },
        ] {
            let e = shortcut_a_forward(&mut out, &[0.0; 16], &bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidParam {
                        op: "shortcut_a",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
            let e = shortcut_a_backward(&mut d, &[0.0; 12], &bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidParam {
                        op: "shortcut_a",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
        }
    }
}

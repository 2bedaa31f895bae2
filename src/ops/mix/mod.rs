//! The mix of a residual unit: how the shortcut `h` and the branch `F`
//! combine into the unit's sum, and its local derivatives. With
//! `s = dL/dy`:
//!
//! ```text
//! add:             y = h + F            dh = s            dF = s
//! scale:           y = a h + b F        dh = a s          dF = b s
//! exclusive gate:  y = (1-g) h + g F    dh = (1-g) s      dF = g s      dg = (F - h) s
//! shortcut gate:   y = (1-g) h + F      dh = (1-g) s      dF = s        dg = -h s
//! dropout:         y = m h + F          dh = m s          dF = s        (m: the mask)
//! none:            y = F                                  dF = s
//! ```
//!
//! Each is elementwise, so `dy_i / dh_j = 0` for `i != j` and the table is
//! the whole Jacobian: e.g. for the exclusive gate,
//! `dy/dh = 1 - g`, `dy/dF = g`, `dy/dg = F - h`. A gate is
//! `g = sigmoid(z)`, `z = W_g x + b_g`, so `dz = dg g (1 - g)`
//! (`ops::activation::sigmoid_backward`), computed here in the same pass.
//!
//! Dropout's `m h` is formed by `ops::dropout` (which draws `m`); the
//! forward here reads it as `h`. The backward *overwrites* `dh`, `dF` and
//! `dz`: the mix is their only writer. A plain addition needs no backward
//! pass (`dh = dF = s`: the caller hands `s` on).
//!
//! The original unit's addition and the ReLU after it are fused:
//! [`add_relu_forward`] writes `max(0, h + F)` in one pass and
//! [`add_relu_backward`] masks `dy` in one pass (and, for an identity
//! shortcut, writes the shortcut's `dL/dx = dsum` in the same pass);
//! [`add_relu_backward_sums`] also takes, plane by plane, the reduction
//! sums of the BN that ends the branch (whose `dy` is `dsum` under a plain
//! addition), so that BN's backward skips its own pass over `dsum`.

use crate::error::{check_len, Result};
use crate::ops::par::{par_pieces, par_pieces2, par_planes};
use crate::scalar::Scalar;

const OP: &str = "mix";

/// How the shortcut and the branch are combined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    Add,
    Scale { shortcut: f64, branch: f64 },
    ExclusiveGate,
    ShortcutGate,
    Dropout { p: f64 },
    None,
}

/// The forward's inputs, every one (N, C, H, W) of one length, or empty
/// where the mix has none (`g` without a gate).
#[derive(Clone, Copy)]
pub struct MixInputs<'a, T> {
    /// the shortcut's output (dropout: already multiplied by the mask)
    pub h: &'a [T],
    /// the branch's output
    pub f: &'a [T],
    /// the gate `sigmoid(z)` (gates only)
    pub g: &'a [T],
    /// the dropout mask (dropout's backward only)
    pub mask: &'a [T],
}

/// The backward's outputs, overwritten: `dh`, `dF`, `dz` (gates only; empty
/// otherwise).
pub struct MixGrads<'a, T> {
    pub dh: &'a mut [T],
    pub df: &'a mut [T],
    pub dz: &'a mut [T],
}

/// `y = mix(h, F)` (the table above); `y` is overwritten.
pub fn mix_forward<T: Scalar>(y: &mut [T], mix: Mix, x: MixInputs<T>) -> Result<()> {
    let len = y.len();
    check_len(OP, "branch", x.f, &[len])?;
    if mix != Mix::None {
        check_len(OP, "shortcut", x.h, &[len])?;
    }
    if matches!(mix, Mix::ExclusiveGate | Mix::ShortcutGate) {
        check_len(OP, "gate", x.g, &[len])?;
    }
    let (h, f, g) = (x.h, x.f, x.g);
    match mix {
        Mix::Add | Mix::Dropout { .. } => par_pieces(
            y,
            #[inline(always)]
            |at, y| {
                for ((y, &a), &b) in y.iter_mut().zip(&h[at..]).zip(&f[at..]) {
                    *y = a + b;
                }
            },
        ),
        Mix::Scale { shortcut, branch } => {
            let (a, b) = (T::of(shortcut), T::of(branch));
            for ((y, &hv), &fv) in y.iter_mut().zip(h).zip(f) {
                *y = a * hv + b * fv;
            }
        }
        Mix::ExclusiveGate | Mix::ShortcutGate => {
            let excl = mix == Mix::ExclusiveGate;
            for (((y, &hv), &fv), &gv) in y.iter_mut().zip(h).zip(f).zip(g) {
                *y = (T::one() - gv) * hv + if excl { gv * fv } else { fv };
            }
        }
        Mix::None => y.copy_from_slice(f),
    }
    Ok(())
}

/// The mix's backward from `s = dL/dy`: `dh`, `dF` (and `dz` for gates)
/// overwritten, as the table says. A plain addition has nothing to compute
/// (`dh = dF = s`) and is refused: its caller hands `s` on.
pub fn mix_backward<T: Scalar>(d: MixGrads<T>, s: &[T], mix: Mix, x: MixInputs<T>) -> Result<()> {
    let len = s.len();
    check_len(OP, "df", d.df, &[len])?;
    if !matches!(mix, Mix::None) {
        check_len(OP, "dh", d.dh, &[len])?;
    }
    let (h, f, g) = (x.h, x.f, x.g);
    match mix {
        Mix::Add => {
            return Err(crate::error::Error::InvalidParam {
                op: OP,
                msg: "a plain addition has no backward pass (dh = dF = dL/dy)".into(),
            })
        }
        Mix::Scale { shortcut, branch } => {
            let (ca, cb) = (T::of(shortcut), T::of(branch));
            for ((a, b), &s) in d.dh.iter_mut().zip(d.df.iter_mut()).zip(s) {
                *a = ca * s; // dh = a s
                *b = cb * s; // dF = b s
            }
        }
        Mix::ExclusiveGate | Mix::ShortcutGate => {
            check_len(OP, "gate", g, &[len])?;
            check_len(OP, "dz", d.dz, &[len])?;
            check_len(OP, "shortcut", h, &[len])?;
            let excl = mix == Mix::ExclusiveGate;
            if excl {
                check_len(OP, "branch", f, &[len])?;
            }
            for i in 0..len {
                let (s, g) = (s[i], g[i]);
                d.dh[i] = (T::one() - g) * s; // dh = (1-g) s
                let dg = if excl {
                    d.df[i] = g * s; // dF = g s
                    (f[i] - h[i]) * s // dg = (F - h) s
                } else {
                    d.df[i] = s; // dF = s
                    -h[i] * s // dg = -h s
                };
                d.dz[i] = dg * g * (T::one() - g); // dz = dg g (1-g)
            }
        }
        Mix::Dropout { .. } => {
            check_len(OP, "mask", x.mask, &[len])?;
            for (((a, b), &s), &m) in d.dh.iter_mut().zip(d.df.iter_mut()).zip(s).zip(x.mask) {
                *a = m * s; // dh = m s
                *b = s; // dF = s
            }
        }
        Mix::None => d.df.copy_from_slice(s), // dF = s
    }
    Ok(())
}

/// A plain addition and the ReLU after it in one pass: `out = max(0, h + F)`
/// (the sum itself is never stored).
pub fn add_relu_forward<T: Scalar>(out: &mut [T], h: &[T], f: &[T]) -> Result<()> {
    check_len(OP, "shortcut", h, &[out.len()])?;
    check_len(OP, "branch", f, &[out.len()])?;
    par_pieces(
        out,
        #[inline(always)]
        |at, out| {
            for ((y, &a), &b) in out.iter_mut().zip(&h[at..]).zip(&f[at..]) {
                let v = a + b;
                *y = if v > T::zero() { v } else { T::zero() };
            }
        },
    );
    Ok(())
}

/// Backward of [`add_relu_forward`]: `dsum = dy [out > 0]`, overwritten;
/// with `dx`, also `dx = dsum` in the same pass (an identity shortcut's
/// whole term: the gradient highway).
pub fn add_relu_backward<T: Scalar>(
    dsum: &mut [T],
    dx: Option<&mut [T]>,
    dy: &[T],
    out: &[T],
) -> Result<()> {
    check_len(OP, "dy", dy, &[dsum.len()])?;
    check_len(OP, "output", out, &[dsum.len()])?;
    match dx {
        Some(dx) => {
            check_len(OP, "dx", dx, &[dsum.len()])?;
            par_pieces2(
                dsum,
                dx,
                #[inline(always)]
                |at, ds, dx| relu_mask(ds, Some(dx), &dy[at..], &out[at..]),
            )
        }
        None => par_pieces(
            dsum,
            #[inline(always)]
            |at, ds| relu_mask(ds, None, &dy[at..], &out[at..]),
        ),
    }
    Ok(())
}

/// The ReLU's backward after `out = max(0, h + F)`: `ds = dy` where
/// `out > 0`, else 0, for `ds.len()` entries (`dy`, `out` at least as
/// long); `dx`, when given, gets the same values in the same loop
/// (measured: faster than a copy of `ds` after it).
#[inline(always)]
fn relu_mask<T: Scalar>(ds: &mut [T], dx: Option<&mut [T]>, dy: &[T], out: &[T]) {
    let masked = |g: T, o: T| if o > T::zero() { g } else { T::zero() };
    match dx {
        Some(dx) => {
            for ((b, a), (&g, &o)) in ds.iter_mut().zip(dx).zip(dy.iter().zip(out)) {
                let v = masked(g, o);
                *b = v;
                *a = v;
            }
        }
        None => {
            for (b, (&g, &o)) in ds.iter_mut().zip(dy.iter().zip(out)) {
                *b = masked(g, o);
            }
        }
    }
}

/// The grad sums a BN backward's reduction takes precomputed: the BN's
/// input `x` (N, C, HW), its batch `mean` (C), `sums` (N, C) to fill.
pub struct BnSums<'a, T> {
    pub x: &'a [T],
    pub mean: &'a [T],
    pub sums: &'a mut [(f64, f64)],
    pub c: usize,
    pub hw: usize,
}

/// [`add_relu_backward`] plane by plane, with the reduction of the BN that
/// made the branch `F` taken as each plane of `dsum` is written: for a
/// plain addition `dF = dsum`, so that BN's `dy` *is* `dsum` and its
/// backward needs per plane `(sum dy, sum dy * (x - mean))`
/// (`batchnorm::bn_grad_plane_sums`, in its own lane order: the same bits
/// as the BN's own pass over the stored `dsum`, which it then skips: one
/// read of `dsum` and `x` fewer). `dsum`, `dx`, `dy`, `out` (N, C, HW).
pub fn add_relu_backward_sums<T: Scalar>(
    dsum: &mut [T],
    dx: Option<&mut [T]>,
    dy: &[T],
    out: &[T],
    bn: BnSums<T>,
) -> Result<()> {
    let BnSums {
        x,
        mean,
        sums,
        c,
        hw,
    } = bn;
    crate::error::check_nonzero(OP, "BN channels", c)?;
    crate::error::check_nonzero(OP, "BN positions per plane", hw)?;
    let planes = sums.len();
    if planes % c != 0 {
        return Err(crate::error::Error::InvalidParam {
            op: OP,
            msg: format!("{planes} BN grad sums are not whole images of {c} channels"),
        });
    }
    check_len(OP, "dsum", dsum, &[planes, hw])?;
    check_len(OP, "dy", dy, &[dsum.len()])?;
    check_len(OP, "output", out, &[dsum.len()])?;
    check_len(OP, "BN input", x, &[dsum.len()])?;
    check_len(OP, "BN mean", mean, &[c])?;
    if let Some(dx) = &dx {
        check_len(OP, "dx", dx, &[dsum.len()])?;
    }
    // in the forward pass this was out = max(0, h + F), so now dsum = dy
    // [out > 0] (and dx = dsum for an identity shortcut), then the plane's
    // sums while it is in cache
    par_planes(
        dsum,
        dx,
        sums,
        hw,
        #[inline(always)]
        |i, ds, dx, sum| {
            let at = i * hw;
            relu_mask(ds, dx, &dy[at..][..hw], &out[at..][..hw]);
            *sum = crate::ops::batchnorm::bn_grad_plane_sums(ds, &x[at..][..hw], mean[i % c]);
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests;

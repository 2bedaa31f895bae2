//! im2col and col2im of a strided convolution through its input's phases.
//!
//! With stride `st`, tap `k` of an axis reads input index `st*o + k - pad`
//! for output `o`. Write `k - pad = st*d + a` with `0 <= a < st`: the tap
//! reads *phase* `a` of the axis (the entries `st*i + a`) at entry `o + d`.
//! So the column row of tap `(ki, kj)` is the phase plane
//!
//! ```text
//! P_ab[i, j] = img[st*i + a, st*j + b]                         (oh, ow)
//! col[(c, ki, kj), (oy, ox)] = P_ab[oy + dy, ox + dx]           (0 outside)
//! ```
//!
//! shifted by `(dy, dx)`, and the tap with `dy = dx = 0` (`ki = pad + a`,
//! `kj = pad + b`: the phase's *base tap*) holds `P_ab` itself. [`im2col`]
//! gathers each base tap's row from the plane (the only strided reads, one
//! per input entry) and copies every other tap's row from its base row,
//! contiguous copies as in a stride-1 im2col. [`col2im_add`] is its
//! adjoint: in the forward pass a tap's row was a shifted copy of its base
//! row, so now its gradient is added into the base row shifted back; then
//! each base row, the gradient of `P_ab`, is scatter-added into the plane.
//!
//! The generic path gathers every tap's row with strided reads, a short
//! loop per output row: for the stride-2 3x3 convolutions of a CIFAR
//! ResNet it took twice the time of the GEMM it feeds (BENCHMARKS.md,
//! stop 18).
//!
//! Applies when every phase a tap reads is exactly as large as the output
//! (`ceil((h - a) / st) == oh`, and the same for the columns) and has its
//! base tap (`pad + a < kh`): stride-2 3x3 pad-1 and 1x1 pad-0
//! convolutions of an even-sized input, the downsampling convolutions of
//! every net here.

use std::ops::Range;

use super::cpu::{gather_strided, scatter_add_strided, shifted_span, zero_padding_columns};
use super::Conv2dShape;
use crate::scalar::Scalar;

/// Phase `a` and shift `d` of tap `k`: `k - pad = st*d + a`, `0 <= a < st`.
#[inline(always)]
fn phase_of(k: usize, pad: usize, st: usize) -> (usize, isize) {
    let (t, st) = (k as isize - pad as isize, st as isize);
    (t.rem_euclid(st) as usize, t.div_euclid(st))
}

/// Whether every tap of an axis (`k` taps) reads a phase of `olen` entries
/// that has its base tap.
fn axis_fits(k: usize, pad: usize, st: usize, len: usize, olen: usize) -> bool {
    (0..k).all(|t| {
        let (a, _) = phase_of(t, pad, st);
        pad + a < k && len.saturating_sub(a).div_ceil(st) == olen
    })
}

/// Whether the phase path computes `s`'s im2col / col2im (module docs).
pub(super) fn applies(s: &Conv2dShape) -> bool {
    s.stride >= 2
        && s.oh() > 0
        && s.ow() > 0
        && axis_fits(s.kh, s.pad, s.stride, s.h, s.oh())
        && axis_fits(s.kw, s.pad, s.stride, s.w, s.ow())
}

/// The outputs `o` of `0..olen` whose `o + d` lies in `0..olen`.
fn inside(d: isize, olen: usize) -> Range<usize> {
    let n = olen as isize;
    let lo = (-d).clamp(0, n) as usize;
    let hi = (n - d).clamp(lo as isize, n) as usize;
    lo..hi
}

/// One tap's place in the column matrix: its row, its base tap's row and
/// its shift.
struct Tap {
    row: usize,
    base: usize,
    dy: isize,
    dx: isize,
}

/// Every tap of channel `c` that is not a base tap (rows of `p` entries).
fn shifted_taps(s: &Conv2dShape, c: usize, p: usize) -> impl Iterator<Item = Tap> + '_ {
    (0..s.kh).flat_map(move |ki| {
        (0..s.kw).filter_map(move |kj| {
            let ((a, dy), (b, dx)) = (phase_of(ki, s.pad, s.stride), phase_of(kj, s.pad, s.stride));
            (dy != 0 || dx != 0).then(|| Tap {
                row: ((c * s.kh + ki) * s.kw + kj) * p,
                base: base_row(s, c, (a, b), p),
                dy,
                dx,
            })
        })
    })
}

/// Where a shifted tap's row meets its base row: rows `ys` and columns
/// `xs` of the tap's row read inside the phase plane; entries `lo..hi` of
/// the block of rows `ys` (`ys.len() * ow` entries) are entries
/// `start + lo..start + hi` of the base row, the rest of the block falls
/// in the padding columns `xs` leaves out (a shift wraps a row's edge
/// entries into the next row: exactly those columns).
struct Shift {
    ys: Range<usize>,
    xs: Range<usize>,
    start: isize,
    lo: usize,
    hi: usize,
}

impl Tap {
    fn shift(&self, oh: usize, ow: usize) -> Shift {
        let (ys, xs) = (inside(self.dy, oh), inside(self.dx, ow));
        let start = (ys.start as isize + self.dy) * ow as isize + self.dx;
        let (lo, hi) = shifted_span(ys.len() * ow, start, oh * ow);
        Shift {
            ys,
            xs,
            start,
            lo,
            hi,
        }
    }
}

/// Whether both column phases of a stride-2 shape are read, so that each
/// input row is split into them in one pass (`w = 2 ow`) and their base
/// taps are adjacent rows of the column matrix.
fn column_pairs(s: &Conv2dShape) -> bool {
    s.stride == 2 && s.pad + 1 < s.kw
}

/// The phases an axis's taps read: `a < st` with `pad + a < k` (the base
/// tap `pad + a` reads `a`; [`applies`] checked that every phase read has
/// one).
fn phases(k: usize, pad: usize, st: usize) -> impl Iterator<Item = usize> {
    (0..st).filter(move |a| pad + a < k)
}

/// Row of the base tap of phase `(a, b)` of channel `c` (rows of `p`).
fn base_row(s: &Conv2dShape, c: usize, (a, b): (usize, usize), p: usize) -> usize {
    ((c * s.kh + s.pad + a) * s.kw + s.pad + b) * p
}

/// `even[j] = src[2j]`, `odd[j] = src[2j + 1]`.
#[inline(always)]
fn deinterleave<T: Copy>(even: &mut [T], odd: &mut [T], src: &[T]) {
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `dst[2j] += even[j]`, `dst[2j + 1] += odd[j]`: the adjoint of
/// [`deinterleave`].
#[inline(always)]
fn interleave_add<T: Scalar>(dst: &mut [T], even: &[T], odd: &[T]) {
    for ((pair, &e), &o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
        pair[0] += e;
        pair[1] += o;
    }
}

/// `col[(c, ki, kj), (oy, ox)] = img[c, oy*st + ki - pad, ox*st + kj - pad]`
/// (zero in the padding), as [`super::cpu`]'s generic im2col, for a shape
/// that [`applies`]. col (cin*kh*kw, oh*ow), img (cin, h, w).
#[inline(always)]
pub(super) fn im2col<T: Scalar>(col: &mut [T], img: &[T], s: &Conv2dShape) {
    let (oh, ow, st, w) = (s.oh(), s.ow(), s.stride, s.w);
    let p = oh * ow;
    for (c, plane) in img.chunks_exact(s.h * w).enumerate() {
        // the base taps' rows: P_ab, gathered from the plane
        for a in phases(s.kh, s.pad, st) {
            let rows = |i: usize| &plane[(st * i + a) * w..][..w];
            if column_pairs(s) {
                let r0 = base_row(s, c, (a, 0), p);
                let (e, o) = col[r0..r0 + 2 * p].split_at_mut(p);
                for (i, (e, o)) in e
                    .chunks_exact_mut(ow)
                    .zip(o.chunks_exact_mut(ow))
                    .enumerate()
                {
                    deinterleave(e, o, rows(i));
                }
                continue;
            }
            for b in phases(s.kw, s.pad, st) {
                let r = base_row(s, c, (a, b), p);
                for (i, dst) in col[r..r + p].chunks_exact_mut(ow).enumerate() {
                    gather_strided(dst, &rows(i)[b..], st);
                }
            }
        }
        // every other tap: its base row shifted by (dy, dx)
        for t in shifted_taps(s, c, p) {
            let Shift {
                ys,
                xs,
                start,
                lo,
                hi,
            } = t.shift(oh, ow);
            let row = t.row;
            col[row..row + ys.start * ow].fill(T::zero());
            col[row + ys.end * ow..row + p].fill(T::zero());
            let block = row + ys.start * ow..row + ys.end * ow;
            if lo < hi {
                let src = t.base + (start + lo as isize) as usize;
                col.copy_within(src..src + (hi - lo), block.start + lo);
            }
            zero_padding_columns(&mut col[block], ow, &xs);
        }
    }
}

/// Rows `a` and `b != a` of `p` entries of `buf`, both mutable.
fn two_rows<T>(buf: &mut [T], a: usize, b: usize, p: usize) -> (&mut [T], &mut [T]) {
    if a < b {
        let (lo, hi) = buf.split_at_mut(b);
        (&mut lo[a..a + p], &mut hi[..p])
    } else {
        let (lo, hi) = buf.split_at_mut(a);
        (&mut hi[..p], &mut lo[b..b + p])
    }
}

/// The adjoint of [`im2col`]: `dimg[c, iy, ix] += dcol[(c, ki, kj), (oy, ox)]`
/// over every (ki, kj, oy, ox) that im2col read (c, iy, ix) into, for a
/// shape that [`applies`]. `dcol` is scratch: its rows are overwritten.
#[inline(always)]
pub(super) fn col2im_add<T: Scalar>(dimg: &mut [T], dcol: &mut [T], s: &Conv2dShape) {
    let (oh, ow, st, w) = (s.oh(), s.ow(), s.stride, s.w);
    let p = oh * ow;
    for (c, plane) in dimg.chunks_exact_mut(s.h * w).enumerate() {
        // in the forward pass a tap's row was its base row shifted by
        // (dy, dx), zero in its padding: so now the row's entries outside
        // the padding go back into the base row
        for t in shifted_taps(s, c, p) {
            let Shift {
                ys,
                xs,
                start,
                lo,
                hi,
            } = t.shift(oh, ow);
            let (base, row) = two_rows(dcol, t.base, t.row, p);
            let block = &mut row[ys.start * ow..ys.end * ow];
            zero_padding_columns(block, ow, &xs);
            if lo < hi {
                let at = (start + lo as isize) as usize;
                for (d, &g) in base[at..at + (hi - lo)].iter_mut().zip(&block[lo..hi]) {
                    *d += g;
                }
            }
        }
        // each base row is the gradient of its phase plane P_ab
        for a in phases(s.kh, s.pad, st) {
            if column_pairs(s) {
                let r0 = base_row(s, c, (a, 0), p);
                let (e, o) = dcol[r0..r0 + 2 * p].split_at(p);
                for (i, (e, o)) in e.chunks_exact(ow).zip(o.chunks_exact(ow)).enumerate() {
                    interleave_add(&mut plane[(2 * i + a) * w..][..w], e, o);
                }
                continue;
            }
            for b in phases(s.kw, s.pad, st) {
                let r = base_row(s, c, (a, b), p);
                for (i, src) in dcol[r..r + p].chunks_exact(ow).enumerate() {
                    let dst = &mut plane[(st * i + a) * w..][..w];
                    scatter_add_strided(&mut dst[b..], src, st);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{col2im_rows, im2col_rows};
    use super::*;

    fn shape(
        cin: usize,
        h: usize,
        w: usize,
        k: (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            n: 1,
            cin,
            h,
            w,
            cout: 1,
            kh: k.0,
            kw: k.1,
            stride,
            pad,
        }
    }

    /// Small integers: every sum below is exact, whatever its order, so
    /// the two paths must agree bitwise.
    fn ints(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 17) as f32 - 8.0
            })
            .collect()
    }

    #[test]
    fn the_nets_downsampling_convolutions_take_the_phases_and_odd_sizes_do_not() {
        for (h, w) in [(32, 32), (16, 16), (8, 8), (6, 10)] {
            assert!(applies(&shape(16, h, w, (3, 3), 2, 1)), "3x3/2 {h}x{w}");
            assert!(applies(&shape(16, h, w, (1, 1), 2, 0)), "1x1/2 {h}x{w}");
        }
        // stride 1; an odd side (phase 1 shorter than the output); a tap
        // whose phase has no base tap (3x3 pad 2: phase 1 starts at ki = 3)
        assert!(!applies(&shape(16, 32, 32, (3, 3), 1, 1)));
        assert!(!applies(&shape(16, 7, 8, (3, 3), 2, 1)));
        assert!(!applies(&shape(16, 8, 8, (3, 3), 2, 2)));
    }

    #[test]
    fn im2col_and_col2im_equal_the_row_by_row_path() {
        let shapes = [
            shape(3, 8, 8, (3, 3), 2, 1),
            shape(2, 6, 10, (3, 3), 2, 1),
            shape(2, 4, 6, (1, 1), 2, 0),
            shape(2, 8, 8, (5, 5), 2, 2),
            shape(1, 9, 9, (3, 3), 3, 0),
            shape(2, 12, 8, (4, 4), 4, 0),
            shape(1, 8, 8, (2, 2), 2, 0),
        ];
        for (n, s) in shapes.iter().enumerate() {
            assert!(applies(s), "case {n}");
            let (k, p) = (s.cin * s.kh * s.kw, s.oh() * s.ow());
            let img = ints(s.cin * s.h * s.w, n as u64 + 1);
            // stale values in the column buffers: every entry is written
            let (mut want, mut got) = (vec![7.0f32; k * p], vec![-3.0f32; k * p]);
            im2col_rows(&mut want, &img, s);
            im2col(&mut got, &img, s);
            assert_eq!(got, want, "im2col, case {n}");

            let dcol = ints(k * p, n as u64 + 100);
            let start = ints(img.len(), n as u64 + 200);
            let (mut want, mut got) = (start.clone(), start.clone());
            col2im_rows(&mut want, &mut dcol.clone(), s);
            col2im_add(&mut got, &mut dcol.clone(), s);
            assert_eq!(got, want, "col2im, case {n}");
            // and it is im2col's adjoint: <col2im(dcol), img> = <dcol, im2col(img)>
            let mut zero = vec![0.0f32; img.len()];
            col2im_add(&mut zero, &mut dcol.clone(), s);
            let mut col = vec![0.0f32; k * p];
            im2col(&mut col, &img, s);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            assert_eq!(dot(&zero, &img), dot(&dcol, &col), "adjoint, case {n}");
        }
    }
}

//! Elementwise passes split over the rayon pool. A residual network's
//! pointwise work (ReLU, the residual addition, zeroing the gradient
//! buffers) is memory-bound; run on the calling thread alone it left the
//! second core idle for about a third of a training step (see
//! BENCHMARKS.md, "Profile"). Each helper cuts the output into one
//! contiguous piece per thread (64-element aligned) and calls `f(start,
//! piece)`, where `start` is the piece's offset: the closure reads its
//! inputs at `start..start + piece.len()`. Elementwise work has no
//! reductions, so the result is bitwise the same for any split.
//! [`par_planes`] hands out whole planes instead, for work that also
//! reduces each plane (into its own slot): no sum spans two workers.

use super::simd::fast;
use rayon::iter::Either;
use rayon::prelude::*;

/// Below this many elements a pass runs on the calling thread.
pub const PAR_MIN_ELEMS: usize = 1 << 15;

fn piece_len(len: usize) -> usize {
    let t = rayon::current_num_threads().max(1);
    len.div_ceil(t).div_ceil(64) * 64
}

/// `f(start, piece)` over contiguous pieces of `out`, in parallel for long slices.
pub fn par_pieces<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let len = out.len();
    if len < PAR_MIN_ELEMS || rayon::current_num_threads() == 1 {
        fast(
            #[inline(always)]
            || f(0, out),
        );
        return;
    }
    let p = piece_len(len);
    out.par_chunks_mut(p).enumerate().for_each(|(i, piece)| {
        fast(
            #[inline(always)]
            || f(i * p, piece),
        )
    });
}

/// `f(start, piece_a, piece_b)` over matching pieces of two equally long outputs.
pub fn par_pieces2<T: Send>(
    a: &mut [T],
    b: &mut [T],
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync + Send,
) {
    assert_eq!(a.len(), b.len(), "par_pieces2: lengths differ");
    let len = a.len();
    if len < PAR_MIN_ELEMS || rayon::current_num_threads() == 1 {
        fast(
            #[inline(always)]
            || f(0, a, b),
        );
        return;
    }
    let p = piece_len(len);
    a.par_chunks_mut(p)
        .zip(b.par_chunks_mut(p))
        .enumerate()
        .for_each(|(i, (pa, pb))| {
            fast(
                #[inline(always)]
                || f(i * p, pa, pb),
            )
        });
}

/// Per-plane work with a per-plane result: `f(p, plane, plane_b, slot)`
/// for every plane `p` of `hw` elements of `a`, the same plane of `b` when
/// given (`None` otherwise) and `p`'s own `slots[p]`. Each call gets a
/// whole plane, so a reduction over a plane into its slot is the same bits
/// for any split; in parallel for long outputs, at least 4096 elements (or
/// one plane) per rayon job. `a` (and `b`): `slots.len()` planes of `hw`.
pub fn par_planes<T: Send, S: Send>(
    a: &mut [T],
    b: Option<&mut [T]>,
    slots: &mut [S],
    hw: usize,
    f: impl Fn(usize, &mut [T], Option<&mut [T]>, &mut S) + Sync + Send,
) {
    assert!(
        hw > 0 && a.len() == slots.len() * hw,
        "par_planes: not whole planes"
    );
    assert!(
        b.as_ref().is_none_or(|b| b.len() == a.len()),
        "par_planes: lengths differ"
    );
    if a.len() < PAR_MIN_ELEMS || rayon::current_num_threads() == 1 {
        let mut bs = b.map(|b| b.chunks_exact_mut(hw));
        fast(
            #[inline(always)]
            || {
                for (p, (pa, s)) in a.chunks_exact_mut(hw).zip(slots).enumerate() {
                    f(p, pa, bs.as_mut().and_then(Iterator::next), s);
                }
            },
        );
        return;
    }
    // b's planes, or as many Nones: one indexed iterator either way
    let bs = match b {
        Some(b) => Either::Left(b.par_chunks_exact_mut(hw).map(Some)),
        None => Either::Right((0..slots.len()).into_par_iter().map(|_| None)),
    };
    a.par_chunks_exact_mut(hw)
        .zip(bs)
        .zip(slots)
        .with_min_len((4096 / hw).max(1))
        .enumerate()
        .for_each(|(p, ((pa, pb), s))| {
            fast(
                #[inline(always)]
                || f(p, pa, pb, s),
            )
        });
}

/// `x = 0`, in parallel for long slices.
pub fn par_zero<T: Copy + Default + Send>(x: &mut [T]) {
    par_pieces(
        x,
        #[inline(always)]
        |_, p| p.fill(T::default()),
    );
}

/// `dst = src`, split over the pool like [`par_zero`].
pub fn par_copy<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "par_copy: lengths differ");
    par_pieces(
        dst,
        #[inline(always)]
        |at, p| p.copy_from_slice(&src[at..at + p.len()]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_every_element_once() {
        for len in [0usize, 1, 63, 64, 65, PAR_MIN_ELEMS - 1, PAR_MIN_ELEMS + 77] {
            let mut v = vec![0u32; len];
            par_pieces(&mut v, |start, p| {
                for (j, x) in p.iter_mut().enumerate() {
                    *x += (start + j) as u32 + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1));
            let mut a = vec![0u32; len];
            let mut b = vec![0u32; len];
            par_pieces2(&mut a, &mut b, |start, pa, pb| {
                for j in 0..pa.len() {
                    pa[j] = (start + j) as u32;
                    pb[j] = 2 * (start + j) as u32;
                }
            });
            assert!(a.iter().enumerate().all(|(i, &x)| x == i as u32));
            assert!(b.iter().enumerate().all(|(i, &x)| x == 2 * i as u32));
            par_zero(&mut b);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    /// [`par_planes`] hands every plane to `f` once, with its index, the
    /// same plane of the second output (when given) and its own slot: plane
    /// sizes with and without a parallel split (over `PAR_MIN_ELEMS`), and
    /// planes far smaller than a rayon job (4096 elements).
    #[test]
    fn planes_are_visited_once_with_their_index() {
        for (planes, hw) in [
            (0usize, 7usize),
            (1, 1),
            (5, 35),
            (12, 1024),
            (40, 1024),
            (3000, 17),
        ] {
            for with_b in [false, true] {
                let len = planes * hw;
                let (mut a, mut b) = (vec![0u32; len], vec![0u32; len]);
                let mut slots = vec![(usize::MAX, 0u32); planes];
                par_planes(
                    &mut a,
                    with_b.then_some(&mut b[..]),
                    &mut slots,
                    hw,
                    |p, pa, pb, s| {
                        assert_eq!(pa.len(), hw);
                        assert_eq!(pb.is_some(), with_b);
                        for (j, x) in pa.iter_mut().enumerate() {
                            *x += (p * hw + j) as u32 + 1;
                        }
                        if let Some(pb) = pb {
                            pb.iter_mut().for_each(|x| *x += p as u32 + 1);
                        }
                        *s = (p, s.1 + 1);
                    },
                );
                assert!(a.iter().enumerate().all(|(i, &x)| x == i as u32 + 1));
                let want_b = |i: usize| if with_b { (i / hw) as u32 + 1 } else { 0 };
                assert!(b.iter().enumerate().all(|(i, &x)| x == want_b(i)));
                assert!(slots.iter().enumerate().all(|(p, &s)| s == (p, 1)));
            }
        }
    }
}

//! Elementwise passes split over the rayon pool. A residual network's
//! pointwise work (ReLU, the residual addition, zeroing the gradient
//! buffers) is memory-bound; run on the calling thread alone it left the
//! second core idle for about a third of a training step (see
//! BENCHMARKS.md, "Profile"). Each helper cuts the output into one
//! contiguous piece per thread (64-element aligned) and calls `f(start,
//! piece)`, where `start` is the piece's offset: the closure reads its
//! inputs at `start..start + piece.len()`. Elementwise work has no
//! reductions, so the result is bitwise the same for any split.

use super::simd::fast;
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
}

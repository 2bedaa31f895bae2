//! CPU kernels of [`super`]: im2col / col2im and the per-image GEMMs,
//! parallelised over images with rayon. Shapes are validated by the callers
//! in `mod.rs`; everything here assumes consistent buffers.
//!
//! Parallel layout: the batch is cut into `nchunks = min(threads, N)`
//! contiguous chunks, chunk `c` holding images `c*N/nchunks ..
//! (c+1)*N/nchunks`. Each chunk runs on one thread with its own scratch
//! ([`Scratch`]) and calls one *single-threaded* GEMM per image. The cut
//! depends only on `N` and the thread count, so results are bit-reproducible
//! for a fixed thread count.

use std::ops::Range;

use super::Conv2dShape;
use crate::gemm::{Mat, MatMut};
use crate::gemm_bf16::{matmul_in, Lhs};
use crate::ops::simd::fast;
use crate::scalar::Scalar;

/// One chunk's scratch, grown on demand and reused across calls.
#[derive(Default)]
pub(super) struct Scratch<T> {
    /// im2col columns of one image, (cin*kh*kw, oh*ow); also the column
    /// gradient `dcol` in the input-gradient pass.
    col: Vec<T>,
    /// this chunk's partial weight gradient, stored transposed: (cin*kh*kw, cout).
    dwt: Vec<T>,
}

fn grow<T: Scalar>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::zero());
    }
}

/// Derived sizes of one convolution.
#[derive(Clone, Copy)]
struct Dims {
    /// rows of the column matrix: cin*kh*kw
    k: usize,
    /// output positions per image: oh*ow
    p: usize,
    /// input elements per image: cin*h*w
    img: usize,
    /// output elements per image: cout*oh*ow
    oimg: usize,
    /// 1x1, stride 1, no padding: the image *is* its column matrix
    identity_cols: bool,
    /// im2col / col2im through the input's phase planes ([`super::phase`])
    phased: bool,
}

impl Dims {
    fn of(s: &Conv2dShape) -> Self {
        let p = s.oh() * s.ow();
        Dims {
            k: s.cin * s.kh * s.kw,
            p,
            img: s.cin * s.h * s.w,
            oimg: s.cout * p,
            identity_cols: s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0,
            phased: super::phase::applies(s),
        }
    }
}

/// Images of chunk `c` out of `nchunks` over a batch of `n`.
fn chunk_range(c: usize, nchunks: usize, n: usize) -> Range<usize> {
    c * n / nchunks..(c + 1) * n / nchunks
}

/// Number of chunks for a batch of `n`, and the scratch for them.
fn chunks<S: Default>(scratch: &mut Vec<S>, n: usize) -> &mut [S] {
    let nchunks = rayon::current_num_threads().clamp(1, n);
    if scratch.len() < nchunks {
        scratch.resize_with(nchunks, S::default);
    }
    &mut scratch[..nchunks]
}

/// Runs `f(images, scratch, dst_part)` once per chunk, in parallel, by
/// recursive halving with `rayon::join` (no allocation). `dst` holds
/// `per_img` elements per image of the chunks in `scratch` (starting at chunk
/// `first`); `per_img` may be 0 when a pass writes only its scratch.
fn par_chunks<S, T, F>(
    scratch: &mut [S],
    first: usize,
    nchunks: usize,
    n: usize,
    dst: &mut [T],
    per_img: usize,
    f: &F,
) where
    S: Send,
    T: Send,
    F: Fn(Range<usize>, &mut S, &mut [T]) + Sync,
{
    if scratch.len() == 1 {
        f(chunk_range(first, nchunks, n), &mut scratch[0], dst);
        return;
    }
    let mid = scratch.len() / 2;
    let imgs_left =
        chunk_range(first + mid, nchunks, n).start - chunk_range(first, nchunks, n).start;
    let (sa, sb) = scratch.split_at_mut(mid);
    let (da, db) = dst.split_at_mut(imgs_left * per_img);
    rayon::join(
        || par_chunks(sa, first, nchunks, n, da, per_img, f),
        || par_chunks(sb, first + mid, nchunks, n, db, per_img, f),
    );
}

/// Cuts a batch of `n` images into one contiguous chunk per pool thread
/// (see the module doc), grows `scratch` to one entry per chunk and runs
/// `f(images, scratch, dst_part)` for every chunk in parallel. Returns the
/// chunks' scratch in chunk order, for fixed-order reductions.
pub(super) fn for_each_chunk<'s, S, T, F>(
    scratch: &'s mut Vec<S>,
    n: usize,
    dst: &mut [T],
    per_img: usize,
    f: &F,
) -> &'s mut [S]
where
    S: Default + Send,
    T: Send,
    F: Fn(Range<usize>, &mut S, &mut [T]) + Sync,
{
    let used = chunks(scratch, n);
    let nchunks = used.len();
    par_chunks(used, 0, nchunks, n, dst, per_img, f);
    used
}

/// The output positions `o` along one axis whose input index
/// `o*stride + k - pad` lies inside `[0, len)`: a range `lo..hi` of `0..olen`.
fn valid(k: usize, pad: usize, stride: usize, len: usize, olen: usize) -> Range<usize> {
    // o*stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
    let lo = pad.saturating_sub(k).div_ceil(stride);
    // o*stride + k < len + pad  <=>  o < ceil((len + pad - k) / stride)
    let hi = (len + pad).saturating_sub(k).div_ceil(stride).min(olen);
    lo.min(hi)..hi
}

/// For a block of `len` entries read from `src[start + j]`: the span `lo..hi`
/// of `j` that lies inside `0..src_len` (the rest are padding entries).
pub(super) fn shifted_span(len: usize, start: isize, src_len: usize) -> (usize, usize) {
    let lo = (-start).clamp(0, len as isize) as usize;
    let hi = (src_len as isize - start).clamp(lo as isize, len as isize) as usize;
    (lo, hi)
}

/// Zeroes the columns outside `xs` of every `ow`-wide row of `block`.
#[inline(always)]
pub(super) fn zero_padding_columns<T: Scalar>(block: &mut [T], ow: usize, xs: &Range<usize>) {
    if xs.start == 0 && xs.end == ow {
        return;
    }
    for r in block.chunks_exact_mut(ow) {
        r[..xs.start].fill(T::zero());
        r[xs.end..].fill(T::zero());
    }
}

/// `col[(c, ki, kj), (oy, ox)] = img[c, oy*stride + ki - pad, ox*stride + kj - pad]`
/// (zero where that falls in the padding); col (cin*kh*kw, oh*ow), img (cin, h, w).
#[inline(always)]
fn im2col<T: Scalar>(col: &mut [T], img: &[T], d: &Dims, s: &Conv2dShape) {
    if d.phased {
        return super::phase::im2col(col, img, s);
    }
    im2col_rows(col, img, s)
}

/// [`im2col`] row by row: a strided gather per output row (the plain path,
/// and what a strided shape that [`super::phase`] does not cover takes).
#[inline(always)]
pub(super) fn im2col_rows<T: Scalar>(col: &mut [T], img: &[T], s: &Conv2dShape) {
    let (oh, ow, st) = (s.oh(), s.ow(), s.stride);
    let mut rows = col.chunks_exact_mut(oh * ow);
    for plane in img.chunks_exact(s.h * s.w) {
        for ki in 0..s.kh {
            let ys = valid(ki, s.pad, st, s.h, oh);
            for kj in 0..s.kw {
                let xs = valid(kj, s.pad, st, s.w, ow);
                let row = rows.next().expect("col has cin*kh*kw rows");
                row[..ys.start * ow].fill(T::zero());
                row[ys.end * ow..].fill(T::zero());
                if st == 1 && ow == s.w {
                    // Rows `ys` of this col row are plane rows `oy + ki - pad`
                    // shifted by `kj - pad` columns, with the same row
                    // length: one contiguous copy. The few entries that wrap
                    // around a row edge fall exactly in the padding columns,
                    // zeroed right after.
                    let block = &mut row[ys.start * ow..ys.end * ow];
                    let start =
                        ((ys.start + ki - s.pad) * s.w) as isize + kj as isize - s.pad as isize;
                    let (lo, hi) = shifted_span(block.len(), start, plane.len());
                    if lo < hi {
                        // (an empty span may start outside the plane: skip it)
                        let src = (start + lo as isize) as usize;
                        block[lo..hi].copy_from_slice(&plane[src..src + (hi - lo)]);
                    }
                    zero_padding_columns(block, ow, &xs);
                    continue;
                }
                for oy in ys.clone() {
                    let src = &plane[(oy * st + ki - s.pad) * s.w..][..s.w];
                    let dst = &mut row[oy * ow..][..ow];
                    dst[..xs.start].fill(T::zero());
                    dst[xs.end..].fill(T::zero());
                    if st == 1 {
                        let x0 = xs.start + kj - s.pad;
                        dst[xs.clone()].copy_from_slice(&src[x0..x0 + xs.len()]);
                    } else {
                        let x0 = xs.start * st + kj - s.pad;
                        gather_strided(&mut dst[xs.clone()], &src[x0..], st);
                    }
                }
            }
        }
    }
}

/// `dst[i] = src[i * st]` for every `i < dst.len()`. Stride 2 (the
/// downsampling convs) as whole pairs, a form the compiler vectorises
/// (measured: the indexed loop was ~4% of a ResNet-20 step).
#[inline(always)]
pub(super) fn gather_strided<T: Copy>(dst: &mut [T], src: &[T], st: usize) {
    let Some(last) = dst.len().checked_sub(1) else {
        return;
    };
    if st == 2 {
        let (head, tail) = dst.split_at_mut(last);
        for (d, pair) in head.iter_mut().zip(src[..2 * last].chunks_exact(2)) {
            *d = pair[0];
        }
        tail[0] = src[2 * last];
    } else {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = src[i * st];
        }
    }
}

/// `dst[i * st] += src[i]` for every `i < src.len()`: the adjoint of
/// [`gather_strided`].
#[inline(always)]
pub(super) fn scatter_add_strided<T: Scalar>(dst: &mut [T], src: &[T], st: usize) {
    let Some(last) = src.len().checked_sub(1) else {
        return;
    };
    if st == 2 {
        for (pair, &g) in dst[..2 * last].chunks_exact_mut(2).zip(&src[..last]) {
            pair[0] += g;
        }
        dst[2 * last] += src[last];
    } else {
        for (i, &g) in src.iter().enumerate() {
            dst[i * st] += g;
        }
    }
}

/// The adjoint of [`im2col`]: `dimg[c, iy, ix] += dcol[(c, ki, kj), (oy, ox)]`
/// over every (ki, kj, oy, ox) that im2col read (c, iy, ix) into.
/// `dcol` is scratch: its entries in the padding columns may be zeroed.
#[inline(always)]
fn col2im_add<T: Scalar>(dimg: &mut [T], dcol: &mut [T], d: &Dims, s: &Conv2dShape) {
    if d.phased {
        return super::phase::col2im_add(dimg, dcol, s);
    }
    col2im_rows(dimg, dcol, s)
}

/// [`col2im_add`] row by row, the adjoint of [`im2col_rows`].
#[inline(always)]
pub(super) fn col2im_rows<T: Scalar>(dimg: &mut [T], dcol: &mut [T], s: &Conv2dShape) {
    let (oh, ow, st) = (s.oh(), s.ow(), s.stride);
    let mut rows = dcol.chunks_exact_mut(oh * ow);
    for plane in dimg.chunks_exact_mut(s.h * s.w) {
        for ki in 0..s.kh {
            let ys = valid(ki, s.pad, st, s.h, oh);
            for kj in 0..s.kw {
                let xs = valid(kj, s.pad, st, s.w, ow);
                let row = rows.next().expect("dcol has cin*kh*kw rows");
                if st == 1 && ow == s.w {
                    // the mirror of im2col's contiguous copy: zero the
                    // gradient of the padding columns, then one contiguous add
                    let block = &mut row[ys.start * ow..ys.end * ow];
                    zero_padding_columns(block, ow, &xs);
                    let start =
                        ((ys.start + ki - s.pad) * s.w) as isize + kj as isize - s.pad as isize;
                    let (lo, hi) = shifted_span(block.len(), start, plane.len());
                    if lo < hi {
                        let dst = (start + lo as isize) as usize;
                        for (d, &g) in plane[dst..dst + (hi - lo)].iter_mut().zip(&block[lo..hi]) {
                            *d += g;
                        }
                    }
                    continue;
                }
                for oy in ys.clone() {
                    let dst = &mut plane[(oy * st + ki - s.pad) * s.w..][..s.w];
                    let src = &row[oy * ow..][..ow];
                    if st == 1 {
                        let x0 = xs.start + kj - s.pad;
                        for (d, &g) in dst[x0..x0 + xs.len()].iter_mut().zip(&src[xs.clone()]) {
                            *d += g;
                        }
                    } else {
                        let x0 = xs.start * st + kj - s.pad;
                        scatter_add_strided(&mut dst[x0..], &src[xs.clone()], st);
                    }
                }
            }
        }
    }
}

/// The column matrix of one image (cin*kh*kw, oh*ow): the image itself for
/// a 1x1 / stride-1 / unpadded convolution, else its im2col in `col`
/// (grown by the caller to at least `k * p`).
#[inline(always)]
fn columns<'a, T: Scalar>(col: &'a mut [T], img: &'a [T], d: &Dims, s: &Conv2dShape) -> &'a [T] {
    if d.identity_cols {
        return img;
    }
    let col = &mut col[..d.k * d.p];
    fast(
        #[inline(always)]
        || im2col(col, img, d, s),
    );
    col
}

/// Forward: per image, `out_img = W · col(img)`. `bf16`: the GEMMs of
/// this and the two backward passes are [`crate::gemm_bf16::matmul_bf16`].
pub(super) fn forward<T: Scalar>(
    out: &mut [T],
    inp: &[T],
    weight: &[T],
    s: &Conv2dShape,
    scratch: &mut Vec<Scratch<T>>,
    bf16: bool,
) {
    let d = Dims::of(s);
    // (bf16: the weights packed once for every image)
    let w = Lhs::new(bf16, Mat::rm(weight, s.cout, d.k));
    for_each_chunk(
        scratch,
        s.n,
        out,
        d.oimg,
        &|imgs, sc: &mut Scratch<T>, out| {
            if !d.identity_cols {
                grow(&mut sc.col, d.k * d.p);
            }
            for (i, out_img) in imgs.zip(out.chunks_exact_mut(d.oimg)) {
                let col = columns(&mut sc.col, &inp[i * d.img..][..d.img], &d, s);
                // (cout, cin*kh*kw) x (cin*kh*kw, oh*ow) -> (cout, oh*ow)
                w.matmul(
                    MatMut::rm(out_img, s.cout, d.p),
                    Mat::rm(col, d.k, d.p),
                    false,
                );
            }
        },
    );
}

/// Input gradient: per image, `dcol = W^T · dout_img`, then
/// `dinp_img += col2im(dcol)`.
pub(super) fn backward_input<T: Scalar>(
    dinp: &mut [T],
    dout: &[T],
    weight: &[T],
    s: &Conv2dShape,
    scratch: &mut Vec<Scratch<T>>,
    bf16: bool,
) {
    let d = Dims::of(s);
    // W^T is a free view of W (cout, K) read as (K, cout); bf16: packed once
    let wt = Lhs::new(bf16, Mat::rm_t(weight, d.k, s.cout));
    for_each_chunk(
        scratch,
        s.n,
        dinp,
        d.img,
        &|imgs, sc: &mut Scratch<T>, dinp| {
            if !d.identity_cols {
                grow(&mut sc.col, d.k * d.p);
            }
            for (i, dimg) in imgs.zip(dinp.chunks_exact_mut(d.img)) {
                let g = Mat::rm(&dout[i * d.oimg..][..d.oimg], s.cout, d.p);
                if d.identity_cols {
                    // col2im is the identity: accumulate straight into dinp
                    // (cin, cout) x (cout, h*w) -> (cin, h*w)
                    wt.matmul(MatMut::rm(dimg, d.k, d.p), g, true);
                } else {
                    let dcol = &mut sc.col[..d.k * d.p];
                    // (cin*kh*kw, cout) x (cout, oh*ow) -> (cin*kh*kw, oh*ow)
                    wt.matmul(MatMut::rm(dcol, d.k, d.p), g, false);
                    fast(
                        #[inline(always)]
                        || col2im_add(dimg, dcol, &d, s),
                    );
                }
            }
        },
    );
}

/// Weight gradient: per chunk, `dW_chunk = sum_img dout_img · col(img)^T`,
/// then `dweight += dW_0 + dW_1 + ...` in chunk order.
pub(super) fn backward_weight<T: Scalar>(
    dweight: &mut [T],
    dout: &[T],
    inp: &[T],
    s: &Conv2dShape,
    scratch: &mut Vec<Scratch<T>>,
    bf16: bool,
) {
    let d = Dims::of(s);
    let used = for_each_chunk(
        scratch,
        s.n,
        &mut [] as &mut [T],
        0,
        &|imgs, sc: &mut Scratch<T>, _| {
            if !d.identity_cols {
                grow(&mut sc.col, d.k * d.p);
            }
            grow(&mut sc.dwt, d.k * s.cout);
            let first = imgs.start;
            for i in imgs {
                let col = columns(&mut sc.col, &inp[i * d.img..][..d.img], &d, s);
                let (dwt, g) = (&mut sc.dwt[..d.k * s.cout], &dout[i * d.oimg..][..d.oimg]);
                if bf16 {
                    // dW^T += col · dout_img^T: (cin*kh*kw, oh*ow) x (oh*ow, cout),
                    // row-major into dwt; the bf16 GEMM packs the large
                    // operand (col) as its rows, one conversion per 32 values
                    matmul_in(
                        true,
                        MatMut::rm(dwt, d.k, s.cout),
                        Mat::rm(col, d.k, d.p),
                        Mat::rm_t(g, d.p, s.cout),
                        i != first,
                    );
                    continue;
                }
                // (cout, oh*ow) x (oh*ow, cin*kh*kw) -> (cout, cin*kh*kw), written
                // through a transposed view into dwt (K, cout): the gemm crate
                // picks its loop order from the output strides and this
                // orientation measured 2-2.7x faster on the 3x3 shapes (BENCHMARKS.md).
                matmul_in(
                    false,
                    MatMut::rm_t(dwt, s.cout, d.k),
                    Mat::rm(g, s.cout, d.p),
                    Mat::rm_t(col, d.p, d.k),
                    i != first,
                );
            }
        },
    );
    // fixed-order reduction of the per-chunk partial sums (transposed back)
    for sc in used.iter() {
        let dwt = &sc.dwt[..d.k * s.cout];
        for (o, dw_row) in dweight.chunks_exact_mut(d.k).enumerate() {
            for (kk, dw) in dw_row.iter_mut().enumerate() {
                *dw += dwt[kk * s.cout + o];
            }
        }
    }
}

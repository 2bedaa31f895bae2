//! The Winograd kernels against the f64 definition of the convolution,
//! within an error bound derived for this algorithm, and against the
//! direct kernels' stores and BN-ReLU reduction.
// the transforms index 4x4 arrays by row and column, as written in the sums
#![allow(clippy::needless_range_loop)]
use super::super::direct::{self, Grid};
use super::*;
use crate::gradcheck::Rand;

const BT: [[f64; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True (and says so) where the CPU lacks AVX-512: the kernels are unused.
fn skipped() -> bool {
    if !avx512() {
        println!("SKIPPED: no AVX-512 on this CPU: the Winograd kernels are unused");
    }
    !avx512()
}

/// `(y, bound)`: the convolution of one image in f64 (`inp` (n_in, h, w),
/// `w` (n_out, n_in, 9)), and per output the forward error bound of the
/// Winograd evaluation in f32,
///
/// ```text
/// |y_f32 - y| <= gamma_{n_in + 8} * sum_c ( |A^T| ( |G| |g| |G^T| (.) |B^T| |d_c| |B| ) |A| )
/// gamma_n = n u / (1 - n u),  u = 2^-24
/// ```
///
/// (every operation is a rounding of a sum of terms no larger than these
/// absolute values; on the longest path an input entry takes 2 additions
/// of `B^T . B`, the product 1 rounding, `U` 1 (computed in f64, rounded
/// once), the sum over `n_in` channels `n_in` FMAs, and `A^T . A` 4
/// additions: `n_in + 8` roundings).
fn reference(
    inp: &[f32],
    w: &[f32],
    n_in: usize,
    n_out: usize,
    h: usize,
    wd: usize,
) -> (Vec<f64>, Vec<f64>) {
    let hw = h * wd;
    let at = |c: usize, y: isize, x: isize| -> f64 {
        if y < 0 || x < 0 || y >= h as isize || x >= wd as isize {
            0.0
        } else {
            inp[c * hw + y as usize * wd + x as usize] as f64
        }
    };
    let mut y = vec![0f64; n_out * hw];
    let mut bound = vec![0f64; n_out * hw];
    let n = (n_in + 8) as f64;
    let u = 2f64.powi(-24);
    let gamma = n * u / (1.0 - n * u);
    for o in 0..n_out {
        for ty in 0..h / 2 {
            for tx in 0..wd / 2 {
                let mut acc = [[0f64; 2]; 2];
                let mut mag = [[0f64; 2]; 2];
                for c in 0..n_in {
                    let g = &w[(o * n_in + c) * 9..][..9];
                    let d = |r: usize, s: usize| {
                        at(
                            c,
                            2 * ty as isize - 1 + r as isize,
                            2 * tx as isize - 1 + s as isize,
                        )
                    };
                    // the definition
                    for (uu, row) in acc.iter_mut().enumerate() {
                        for (vv, a) in row.iter_mut().enumerate() {
                            for k in 0..9 {
                                *a += g[k] as f64 * d(uu + k / 3, vv + k % 3);
                            }
                        }
                    }
                    // |G| |g| |G^T| and |B^T| |d| |B|
                    let mut ug = [[0f64; 4]; 4];
                    let mut vd = [[0f64; 4]; 4];
                    for r in 0..4 {
                        for s in 0..4 {
                            for a in 0..3 {
                                for b in 0..3 {
                                    ug[r][s] +=
                                        G[r][a].abs() * (g[a * 3 + b] as f64).abs() * G[s][b].abs();
                                }
                            }
                            for a in 0..4 {
                                for b in 0..4 {
                                    vd[r][s] += BT[r][a].abs() * d(a, b).abs() * BT[s][b].abs();
                                }
                            }
                        }
                    }
                    for (uu, row) in mag.iter_mut().enumerate() {
                        for (vv, m) in row.iter_mut().enumerate() {
                            for r in 0..4 {
                                for s in 0..4 {
                                    *m += AT[uu][r].abs() * ug[r][s] * vd[r][s] * AT[vv][s].abs();
                                }
                            }
                        }
                    }
                }
                for uu in 0..2 {
                    for vv in 0..2 {
                        let j = o * hw + (2 * ty + uu) * wd + 2 * tx + vv;
                        y[j] = acc[uu][vv];
                        bound[j] = gamma * mag[uu][vv];
                    }
                }
            }
        }
    }
    (y, bound)
}

fn rand_vec(r: &mut Rand, n: usize) -> Vec<f32> {
    r.normal_vec(n).into_iter().map(|x| x as f32).collect()
}

/// `inp` as `n_in` planes `stride` apart at `first`, NaN everywhere else
/// (no kernel may read there).
fn spread(inp: &[f32], n_in: usize, hw: usize, stride: usize, first: usize) -> Vec<f32> {
    let mut src = vec![f32::NAN; n_in * stride];
    for c in 0..n_in {
        src[c * stride + first..][..hw].copy_from_slice(&inp[c * hw..][..hw]);
    }
    src
}

#[test]
fn winograd_matches_the_definition_within_its_bound() {
    if skipped() {
        return;
    }
    let mut r = Rand::new(17);
    let mut sc = Scratch::default();
    // every plane width: 8 (four tile rows per vector), 16 (two), 32 (one);
    // a plane of one tile row (both input rows past it padding); n_in odd
    // and 3 (a stem)
    for &(h, wd, n_in, n_out) in &[
        (8, 8, 16, 8),
        (8, 8, 3, 16),
        (16, 16, 24, 16),
        (16, 8, 5, 8),
        (32, 32, 16, 16),
        (2, 32, 7, 8),
        (24, 16, 9, 8),
        (8, 16, 64, 8),
    ] {
        assert!(fits(h, wd), "{h}x{wd}");
        let hw = h * wd;
        let tl = Tiles::of(h, wd);
        let inp = rand_vec(&mut r, n_in * hw);
        let w = rand_vec(&mut r, n_out * n_in * 9);
        let (y, bound) = reference(&inp, &w, n_in, n_out, h, wd);
        let mut u = Vec::new();
        transform_weights(&mut u, &w, n_in, n_out, false);
        // planes stored back to back, and as padded planes with NaN around
        for (stride, first) in [(hw, 0), (hw + 40, 17)] {
            let src = spread(&inp, n_in, hw, stride, first);
            let res = rand_vec(&mut r, n_out * hw);
            for mode in 0..3 {
                let mut dst = rand_vec(&mut r, n_out * hw);
                let before = dst.clone();
                let store = match mode {
                    0 => Store::Set,
                    1 => Store::Add,
                    _ => Store::Plus(&res),
                };
                conv_image(
                    &mut dst,
                    (&src, (stride, first), None),
                    &u,
                    n_in,
                    n_out,
                    &tl,
                    store,
                    None,
                    &mut sc,
                );
                let mut worst = 0f64;
                for j in 0..n_out * hw {
                    let base = match mode {
                        0 => 0.0,
                        1 => before[j] as f64,
                        _ => res[j] as f64,
                    };
                    let exact = base + y[j];
                    // the addition of the residual: one more rounding of |base + y|
                    let b = bound[j] + 2f64.powi(-24) * (base.abs() + y[j].abs() + bound[j]);
                    let err = (dst[j] as f64 - exact).abs();
                    assert!(
                        err <= b,
                        "{h}x{wd} n_in {n_in} mode {mode} at {j}: {} vs {exact}, error {err:e} > bound {b:e}",
                        dst[j]
                    );
                    worst = worst.max(err / b.max(1e-300));
                }
                println!("{h}x{wd} n_in {n_in} mode {mode}: worst error {worst:.3e} of the bound");
                // the bound is not vacuous: the errors reach a visible share of it
                assert!(
                    worst > 1e-3,
                    "{h}x{wd}: errors {worst:e} of the bound: suspiciously exact"
                );
            }
        }
    }
}

#[test]
fn flipped_weights_are_the_forward_transform_of_the_flipped_kernel() {
    let mut r = Rand::new(3);
    let (cin, cout) = (5, 8);
    let w = rand_vec(&mut r, cout * cin * 9);
    // w'[c][o][k] = w[o][c][8 - k]: the input gradient's kernel (cin outputs)
    let mut wf = vec![0f32; w.len()];
    for o in 0..cout {
        for c in 0..cin {
            for k in 0..9 {
                wf[(c * cout + o) * 9 + k] = w[(o * cin + c) * 9 + 8 - k];
            }
        }
    }
    let (mut ub, mut uf) = (Vec::new(), Vec::new());
    transform_weights(&mut ub, &w, cin, cout, true);
    transform_weights(&mut uf, &wf, cout, cin, false);
    assert_eq!(ub, uf);
    // and U = G g G^T entry by entry: the f64 value rounded once
    let mut u = Vec::new();
    transform_weights(&mut u, &w, cin, cout, false);
    for o in 0..cout {
        for c in 0..cin {
            let g = &w[(o * cin + c) * 9..][..9];
            for xi in 0..16 {
                let (rr, ss) = (xi / 4, xi % 4);
                let mut v = 0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        v += G[rr][a] * g[a * 3 + b] as f64 * G[ss][b];
                    }
                }
                let got = u[(xi * cin + c) * cout + o] as f64;
                assert!(
                    (got - v).abs() <= 2f64.powi(-24) * v.abs() * 1.0001,
                    "{got} vs {v}"
                );
            }
        }
    }
}

/// One image as the direct kernel reads it: its grid, edge masks, the
/// input `inp` (n_in, h, w) as padded planes (zeros around) and `w`
/// (n_out, n_in, 9) packed.
struct DirectCase {
    g: Grid,
    edges: Vec<(u16, u16)>,
    src: Vec<f32>,
    wk: Vec<f32>,
}

fn direct_case(
    h: usize,
    wd: usize,
    inp: &[f32],
    w: &[f32],
    n_in: usize,
    n_out: usize,
) -> DirectCase {
    let g = Grid::of(&direct::tests::shape(1, n_in, h, wd, n_out));
    let mut edges = Vec::new();
    direct::edge_masks(&mut edges, &g);
    let src = spread(inp, n_in, h * wd, g.ps, g.first())
        .into_iter()
        .map(|v| if v.is_nan() { 0.0 } else { v })
        .collect();
    let mut wk = Vec::new();
    direct::pack_forward(&mut wk, w, n_in, n_out);
    DirectCase { g, edges, src, wk }
}

#[test]
fn stats_after_the_store_are_the_direct_kernels_stats() {
    if skipped() {
        return;
    }
    let mut r = Rand::new(5);
    for &(h, wd) in &[(8, 8), (16, 16), (32, 32)] {
        let (n_in, n_out) = (8, 8);
        let hw = h * wd;
        let inp = rand_vec(&mut r, n_in * hw);
        let w = rand_vec(&mut r, n_out * n_in * 9);
        let DirectCase { g, edges, src, wk } = direct_case(h, wd, &inp, &w, n_in, n_out);
        let x = rand_vec(&mut r, n_out * hw);
        let mean = rand_vec(&mut r, n_out);
        let k = rand_vec(&mut r, n_out);
        let beta = rand_vec(&mut r, n_out);
        let mut dst = vec![0f32; n_out * hw];
        let mut lanes = vec![0f32; n_out * 64];
        let mut st = direct::Stats {
            x: &x,
            mean: &mean,
            k: &k,
            beta: &beta,
            lanes: &mut lanes,
        };
        direct::conv_planes(
            &mut dst,
            &src,
            &wk,
            n_in,
            n_out,
            &g,
            &edges,
            Store::Set,
            Some(&mut st),
        );
        let mut again = vec![0f32; n_out * 64];
        let mut st2 = direct::Stats {
            x: &x,
            mean: &mean,
            k: &k,
            beta: &beta,
            lanes: &mut again,
        };
        direct::stats_of(&dst, &mut st2, n_out, hw);
        assert!(lanes.iter().any(|v| *v != 0.0));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&lanes), bits(&again), "{h}x{wd}");
    }
}

#[test]
fn a_bn_relu_input_is_its_written_out_output() {
    if skipped() {
        return;
    }
    let mut r = Rand::new(9);
    let mut sc = Scratch::default();
    for &(h, wd, n_in) in &[(8, 8, 5), (16, 16, 8), (32, 32, 3), (2, 32, 4), (8, 16, 4)] {
        let (hw, n_out) = (h * wd, 8);
        let tl = Tiles::of(h, wd);
        let x = rand_vec(&mut r, n_in * hw);
        let (mean, k, beta) = (
            rand_vec(&mut r, n_in),
            rand_vec(&mut r, n_in),
            rand_vec(&mut r, n_in),
        );
        // the written-out BN-ReLU output, by the direct path's own pass
        let mut y = vec![0f32; n_in * hw];
        for c in 0..n_in {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F checked above; both planes are hw long
            unsafe {
                direct::avx512::bn_relu(
                    &mut y[c * hw..][..hw],
                    &x[c * hw..][..hw],
                    mean[c],
                    k[c],
                    beta[c],
                )
            }
        }
        assert!(y.contains(&0.0) && y.iter().any(|v| *v > 0.0), "{h}x{wd}");
        let w = rand_vec(&mut r, n_out * n_in * 9);
        let mut u = Vec::new();
        transform_weights(&mut u, &w, n_in, n_out, false);
        let (mut a, mut b) = (vec![0f32; n_out * hw], vec![0f32; n_out * hw]);
        let bn = Some([&mean[..], &k[..], &beta[..]]);
        conv_image(
            &mut a,
            (&x, (hw, 0), bn),
            &u,
            n_in,
            n_out,
            &tl,
            Store::Set,
            None,
            &mut sc,
        );
        conv_image(
            &mut b,
            (&y, (hw, 0), None),
            &u,
            n_in,
            n_out,
            &tl,
            Store::Set,
            None,
            &mut sc,
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "{h}x{wd}");
    }
}

#[test]
fn winograd_takes_the_cifar_planes_only() {
    for (h, w) in [(32, 32), (16, 16), (8, 8)] {
        assert!(fits(h, w), "{h}x{w}");
    }
    // MNIST's 28 and 14 (tw 14, 7), odd sizes, a 4x4 plane (4 tiles)
    for (h, w) in [
        (28, 28),
        (14, 14),
        (7, 7),
        (4, 4),
        (33, 32),
        (32, 24),
        (4, 48),
        (8, 64),
    ] {
        assert!(!fits(h, w), "{h}x{w}");
    }
}

/// The Winograd kernel against the direct one on the CIFAR ResNets' 3x3
/// convolutions, one image over and over, one thread: microseconds per
/// image and the speedup, best of 60 timings of ~2 ms of CPU time. A
/// tuning tool, not a check: `cargo test --release --lib winograd_rates --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn winograd_rates() {
    if skipped() {
        return;
    }
    let time = super::super::direct::tests::best_cpu_time;
    let mut r = Rand::new(1);
    println!("| plane | channels | direct us | winograd us | speedup |");
    for &(hw, c) in &[(32, 16), (16, 32), (8, 64)] {
        let n = hw * hw;
        let inp = rand_vec(&mut r, c * n);
        let w = rand_vec(&mut r, c * c * 9);
        let DirectCase { g, edges, src, wk } = direct_case(hw, hw, &inp, &w, c, c);
        let mut u = Vec::new();
        transform_weights(&mut u, &w, c, c, false);
        let tl = Tiles::of(hw, hw);
        let mut dst = vec![0f32; c * n];
        let mut sc = Scratch::default();
        let td = time(&mut || {
            direct::conv_planes(&mut dst, &src, &wk, c, c, &g, &edges, Store::Set, None)
        });
        let tw = time(&mut || {
            conv_image(
                &mut dst,
                (&src, (g.ps, g.first()), None),
                &u,
                c,
                c,
                &tl,
                Store::Set,
                None,
                &mut sc,
            )
        });
        println!(
            "| {hw}x{hw} | {c} | {:.1} | {:.1} | {:.2}x |",
            td * 1e6,
            tw * 1e6,
            td / tw
        );
    }
}

/// The kernel steps the prefetch queue ([`crate::ops::conv2d::ahead`])
/// as often as [`steps`] says (the batch loops pace the queue by it), on
/// every plane width and with 16 or 8 output channels a block.
#[test]
fn kernel_steps_the_prefetch_queue_as_counted() {
    use crate::ops::conv2d::ahead::count_steps;
    if skipped() {
        return;
    }
    for &(h, wd, n_in, n_out) in &[
        (32, 32, 16, 16),
        (16, 16, 32, 32),
        (8, 8, 64, 64),
        (8, 8, 8, 24),
        (2, 32, 8, 8),
    ] {
        let tl = Tiles::of(h, wd);
        let hw = h * wd;
        let (x, u) = (vec![0f32; n_in * hw], vec![0f32; 16 * n_in * n_out]);
        let mut dst = vec![0f32; n_out * hw];
        let mut sc = Scratch::default();
        let got = count_steps(|| {
            conv_image(
                &mut dst,
                (&x, (hw, 0), None),
                &u,
                n_in,
                n_out,
                &tl,
                Store::Set,
                None,
                &mut sc,
            )
        });
        assert_eq!(got, steps(&tl, n_out), "{h}x{wd} {n_in} -> {n_out}");
    }
}

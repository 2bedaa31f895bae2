use super::*;
use crate::gradcheck::{check_layer, Rand};

#[test]
fn hand_computed_cases() {
    // h = 2, F = 3, g = 0.25, m = 2, s = 4
    let x = MixInputs {
        h: &[2.0f64],
        f: &[3.0],
        g: &[0.25],
        mask: &[2.0],
    };
    let mut y = [0.0];
    let cases = [
        (Mix::Add, 5.0),
        (
            Mix::Scale {
                shortcut: 0.5,
                branch: 2.0,
            },
            1.0 + 6.0,
        ),
        (Mix::ExclusiveGate, 0.75 * 2.0 + 0.25 * 3.0),
        (Mix::ShortcutGate, 0.75 * 2.0 + 3.0),
        (Mix::None, 3.0),
    ];
    for (mix, want) in cases {
        mix_forward(&mut y, mix, x).unwrap();
        assert_eq!(y[0], want, "{mix:?}");
    }
    // backward with s = 4: (dh, dF, dz); dz = dg g (1 - g) = dg * 3/16
    let cases = [
        (
            Mix::Scale {
                shortcut: 0.5,
                branch: 2.0,
            },
            2.0,
            8.0,
            0.0,
        ),
        (Mix::ExclusiveGate, 3.0, 1.0, (3.0 - 2.0) * 4.0 * 0.1875),
        (Mix::ShortcutGate, 3.0, 4.0, -2.0 * 4.0 * 0.1875),
        (Mix::Dropout { p: 0.5 }, 8.0, 4.0, 0.0),
        (Mix::None, 0.0, 4.0, 0.0),
    ];
    for (mix, dh, df, dz) in cases {
        let (mut a, mut b, mut c) = ([0.0], [0.0], [0.0]);
        let d = MixGrads {
            dh: &mut a,
            df: &mut b,
            dz: &mut c,
        };
        mix_backward(d, &[4.0], mix, x).unwrap();
        assert_eq!((a[0], b[0], c[0]), (dh, df, dz), "{mix:?}");
    }
    // add + ReLU: max(0, 2 + 3) = 5, max(0, -4 + 1) = 0; backward masks dy
    let mut out = [0.0; 2];
    add_relu_forward(&mut out, &[2.0, -4.0], &[3.0, 1.0]).unwrap();
    assert_eq!(out, [5.0, 0.0]);
    let (mut ds, mut dx) = ([9.0; 2], [9.0; 2]);
    add_relu_backward(&mut ds, Some(&mut dx), &[7.0, 7.0], &out).unwrap();
    assert_eq!((ds, dx), ([7.0, 0.0], [7.0, 0.0]));
}

/// Finite differences of `sum(r * y)` through the gate's sigmoid: the
/// inputs are (h, F, z) with `g = sigmoid(z)`, so `dz` is checked whole.
#[test]
fn gradients_match_finite_differences() {
    let mut r = Rand::new(4);
    let len = 12;
    let sigmoid = |z: &[f64]| -> Vec<f64> { z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect() };
    let mask: Vec<f64> = (0..len)
        .map(|i| if i % 3 == 0 { 0.0 } else { 1.5 })
        .collect();
    for mix in [
        Mix::Scale {
            shortcut: 0.7,
            branch: -1.3,
        },
        Mix::ExclusiveGate,
        Mix::ShortcutGate,
        Mix::Dropout { p: 1.0 / 3.0 },
        Mix::None,
    ] {
        let mut xs = vec![r.normal_vec(len), r.normal_vec(len), r.normal_vec(len)];
        let drop = matches!(mix, Mix::Dropout { .. });
        let fwd = |x: &[Vec<f64>], out: &mut [f64]| {
            let g = sigmoid(&x[2]);
            // dropout: the forward reads m h
            let hd: Vec<f64> = x[0].iter().zip(&mask).map(|(a, m)| a * m).collect();
            let h = if drop { &hd } else { &x[0] };
            mix_forward(
                out,
                mix,
                MixInputs {
                    h,
                    f: &x[1],
                    g: &g,
                    mask: &mask,
                },
            )
            .unwrap();
        };
        let e = check_layer(
            &mut xs,
            len,
            fwd,
            |x, s, grads| {
                let g = sigmoid(&x[2]);
                let (mut dh, mut df, mut dz) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
                let d = MixGrads {
                    dh: &mut dh,
                    df: &mut df,
                    dz: &mut dz,
                };
                let x = MixInputs {
                    h: &x[0],
                    f: &x[1],
                    g: &g,
                    mask: &mask,
                };
                mix_backward(d, s, mix, x).unwrap();
                for (gr, d) in grads.iter_mut().zip([dh, df, dz]) {
                    gr.iter_mut().zip(d).for_each(|(a, b)| *a += b);
                }
            },
            &mut r,
        );
        assert!(e < 1e-6, "{mix:?}: {e:e}");
    }
}

#[test]
fn add_relu_matches_add_then_relu() {
    let mut r = Rand::new(8);
    let len = 1 << 16; // big enough for the parallel pieces
    let (h, f, dy) = (r.normal_vec(len), r.normal_vec(len), r.normal_vec(len));
    let mut out = vec![0.0; len];
    add_relu_forward(&mut out, &h, &f).unwrap();
    let plain: Vec<f64> = h.iter().zip(&f).map(|(a, b)| (a + b).max(0.0)).collect();
    assert_eq!(out, plain);
    let (mut ds, mut dx, mut ds_only) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    add_relu_backward(&mut ds, Some(&mut dx), &dy, &out).unwrap();
    add_relu_backward(&mut ds_only, None, &dy, &out).unwrap();
    let want: Vec<f64> = dy
        .iter()
        .zip(&out)
        .map(|(g, o)| if *o > 0.0 { *g } else { 0.0 })
        .collect();
    assert_eq!(ds, want);
    assert_eq!(dx, want);
    assert_eq!(ds_only, want);
}

#[test]
fn wrong_lengths_are_errors() {
    let x = MixInputs {
        h: &[1.0f64; 3],
        f: &[1.0; 2],
        g: &[],
        mask: &[],
    };
    assert!(mix_forward(&mut [0.0; 2], Mix::Add, x).is_err());
    assert!(mix_forward(
        &mut [0.0; 2],
        Mix::ExclusiveGate,
        MixInputs { h: &[1.0; 2], ..x }
    )
    .is_err());
    let (mut a, mut b, mut c) = ([0.0; 2], [0.0; 2], [0.0; 2]);
    let d = MixGrads {
        dh: &mut a,
        df: &mut b,
        dz: &mut c,
    };
    assert!(mix_backward(d, &[1.0; 2], Mix::Add, MixInputs { h: &[1.0; 2], ..x }).is_err());
}

/// The add + ReLU backward with the BN reduction's plane sums
/// (`add_relu_backward_sums`): `dsum` and `dx` bitwise those of
/// `add_relu_backward`, and the BN backward's coefficients and parameter
/// gradients from the handed-over sums bitwise those of its own pass over
/// `dsum`; planes of 64 (the per-vector lanes) and of 35 (a tail), the
/// parallel split (over `PAR_MIN_ELEMS`) and the sequential one, f32 and
/// f64; wrong lengths are errors naming the buffer.
#[test]
fn add_relu_backward_sums_are_the_bn_pass_sums() {
    use crate::ops::batchnorm::{batchnorm_backward_coefs, BnParamGrads, BnSaved, BnShape};
    fn case<T: Scalar>(r: &mut Rand, n: usize, c: usize, hw: usize) {
        let len = n * c * hw;
        let v =
            |r: &mut Rand, k: usize| -> Vec<T> { r.normal_vec(k).into_iter().map(T::of).collect() };
        let (dy, out, x) = (v(r, len), v(r, len), v(r, len));
        let (mean, rstd, gamma, beta) = (v(r, c), v(r, c), v(r, c), v(r, c));
        let rstd: Vec<T> = rstd.iter().map(|&s| s * s + T::of(0.5)).collect();
        for with_dx in [false, true] {
            let (mut ds_a, mut dx_a) = (vec![T::of(7.0); len], vec![T::of(7.0); len]);
            add_relu_backward(&mut ds_a, with_dx.then_some(&mut dx_a[..]), &dy, &out).unwrap();
            let (mut ds_b, mut dx_b) = (vec![T::of(9.0); len], vec![T::of(7.0); len]);
            let mut sums = vec![(f64::NAN, f64::NAN); n * c];
            let bn = BnSums {
                x: &x,
                mean: &mean,
                sums: &mut sums,
                c,
                hw,
            };
            add_relu_backward_sums(&mut ds_b, with_dx.then_some(&mut dx_b[..]), &dy, &out, bn)
                .unwrap();
            assert!(ds_a == ds_b && dx_a == dx_b, "{n} {c} {hw} dx {with_dx}");
            let s = BnShape { n, c, hw };
            let saved = || BnSaved {
                inp: &x,
                mean: &mean,
                rstd: &rstd,
                gamma: &gamma,
                beta: &beta,
            };
            let mut g_own = (vec![T::zero(); c], vec![T::zero(); c]);
            let mut g_fused = (vec![T::zero(); c], vec![T::zero(); c]);
            let own = batchnorm_backward_coefs(
                BnParamGrads {
                    dgamma: &mut g_own.0,
                    dbeta: &mut g_own.1,
                },
                &ds_a,
                saved(),
                false,
                None,
                s,
            )
            .unwrap();
            let fused = batchnorm_backward_coefs(
                BnParamGrads {
                    dgamma: &mut g_fused.0,
                    dbeta: &mut g_fused.1,
                },
                &ds_a,
                saved(),
                false,
                Some(&sums),
                s,
            )
            .unwrap();
            assert!(
                own == fused && g_own == g_fused,
                "{n} {c} {hw}: BN coefficients"
            );
            assert!(g_own.1.iter().any(|&b| b != T::zero()));
        }
    }
    let mut r = Rand::new(43);
    for (n, c, hw) in [(2, 3, 35), (3, 8, 64), (4, 16, 1024), (2, 5, 1)] {
        case::<f32>(&mut r, n, c, hw);
        case::<f64>(&mut r, n, c, hw);
    }
    // wrong lengths: errors naming the buffer, not panics
    let (mut ds, dy, out, x, mean) = (
        vec![0f32; 24],
        vec![0f32; 24],
        vec![0f32; 24],
        vec![0f32; 24],
        vec![0f32; 3],
    );
    let mut sums = vec![(0.0, 0.0); 6];
    let mut bad = |c: usize, hw: usize, x: &[f32], sums: &mut [(f64, f64)]| {
        let bn = BnSums {
            x,
            mean: &mean[..c.min(3)],
            sums,
            c,
            hw,
        };
        add_relu_backward_sums(&mut ds, None, &dy, &out, bn)
            .unwrap_err()
            .to_string()
    };
    assert!(bad(3, 4, &x[1..], &mut sums).contains("BN input"));
    assert!(bad(3, 5, &x, &mut sums).contains("dsum"));
    assert!(bad(4, 4, &x, &mut sums).contains("whole images"));
    assert!(bad(3, 0, &x, &mut sums).contains("positions"));
    assert!(bad(3, 4, &x, &mut sums[1..]).contains("whole images"));
}

/// What storing activations in bf16 would buy the passes around the
/// convolutions (issue 19): the original unit's two memory-bound passes at
/// ResNet-20's first stage (128 images, 16 channels, 32x32), with f32
/// storage and with bf16 storage (the same arithmetic in f32, the values
/// widened on load and rounded to nearest even on store), both vectorised
/// (sums in 16 lanes); each over a tensor set last touched long ago
/// (sets cycled past the 32 MiB L3: a backward pass reading what the
/// forward wrote), and over one set of a quarter the size, in L3 (a pass
/// reading what the pass before it wrote):
///
/// - forward `out = max(0, h + (x - mean) k + beta)`: reads `x`, `h`,
///   writes `out`;
/// - backward `dsum = dy [out > 0]` and the BN's two plane sums over
///   `dsum` and `x`: reads `dy`, `out`, `x`, writes `dsum`.
///
/// `cargo test --release --lib storage_rates -- --ignored --nocapture`
#[test]
#[ignore]
fn storage_rates() {
    use rayon::prelude::*;
    use std::time::Instant;
    const HW: usize = 1024;
    const L: usize = 16;
    /// The storage element: f32, or bf16 in a u16.
    trait Store: Copy + Send + Sync {
        fn get(self) -> f32;
        fn put(v: f32) -> Self;
    }
    impl Store for f32 {
        #[inline(always)]
        fn get(self) -> f32 {
            self
        }
        #[inline(always)]
        fn put(v: f32) -> f32 {
            v
        }
    }
    impl Store for u16 {
        #[inline(always)]
        fn get(self) -> f32 {
            f32::from_bits((self as u32) << 16)
        }
        #[inline(always)]
        fn put(v: f32) -> u16 {
            crate::gemm_bf16::to_bf16(v)
        }
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn rates<E: Store>(base: &[f32], sets_n: usize) -> (f64, f64) {
        let (m, k, b) = (0.1f32, 1.3f32, 0.05f32);
        let t: Vec<E> = base.iter().map(|&v| E::put(v)).collect();
        let mut sets: Vec<[Vec<E>; 4]> = (0..sets_n)
            .map(|_| [t.clone(), t.clone(), t.clone(), t.clone()])
            .collect();
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for rep in 0..24 {
            let [x, h, out, _] = &mut sets[rep % sets_n];
            let t0 = Instant::now();
            out.par_chunks_mut(HW)
                .zip(x.par_chunks(HW).zip(h.par_chunks(HW)))
                .for_each(|(o, (x, h))| {
                    crate::ops::simd::fast(
                        #[inline(always)]
                        || {
                            for ((o, &x), &h) in o.iter_mut().zip(x).zip(h) {
                                *o = E::put((h.get() + ((x.get() - m) * k + b)).max(0.0));
                            }
                        },
                    )
                });
            let t1 = Instant::now();
            let [x, dy, out, dsum] = &mut sets[(rep + 2) % sets_n];
            let sums: Vec<f32> = dsum
                .par_chunks_mut(HW)
                .zip(
                    dy.par_chunks(HW)
                        .zip(out.par_chunks(HW).zip(x.par_chunks(HW))),
                )
                .map(|(d, (g, (o, x)))| {
                    crate::ops::simd::fast(
                        #[inline(always)]
                        || {
                            let (mut s0, mut s1) = ([0f32; L], [0f32; L]);
                            for (((d, g), o), x) in d
                                .chunks_exact_mut(L)
                                .zip(g.chunks_exact(L))
                                .zip(o.chunks_exact(L))
                                .zip(x.chunks_exact(L))
                            {
                                for l in 0..L {
                                    let v = if o[l].get() > 0.0 { g[l].get() } else { 0.0 };
                                    d[l] = E::put(v);
                                    s0[l] += v;
                                    s1[l] += v * (x[l].get() - m);
                                }
                            }
                            s0.iter().sum::<f32>() + s1.iter().sum::<f32>()
                        },
                    )
                })
                .collect();
            std::hint::black_box(sums);
            let t2 = Instant::now();
            if rep >= 4 {
                fwd.push((t1 - t0).as_secs_f64());
                bwd.push((t2 - t1).as_secs_f64());
            }
        }
        (median(fwd), median(bwd))
    }
    let mut r = crate::gradcheck::Rand::new(3);
    let gbs = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
    println!("| pass | tensors | f32 ms | f32 GB/s | bf16 ms | bf16 GB/s | f32 / bf16 time |");
    println!("|---|---|---|---|---|---|---|");
    // 4 sets of 4 tensors of 8 MiB (f32) in DRAM; 1 set of 2 MiB ones in L3
    for (len, sets_n, at) in [(128 * 16 * HW, 4, "DRAM"), (32 * 16 * HW, 1, "L3")] {
        let base: Vec<f32> = r.normal_vec(len).iter().map(|&v| v as f32).collect();
        let (fwd32, bwd32) = rates::<f32>(&base, sets_n);
        let (fwd16, bwd16) = rates::<u16>(&base, sets_n);
        for (name, t32, t16, streams) in [
            ("BN + add + ReLU forward", fwd32, fwd16, 3),
            ("ReLU mask + BN sums backward", bwd32, bwd16, 4),
        ] {
            println!(
                "| {name} | {at} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2}x |",
                t32 * 1e3,
                gbs(streams * 4 * len, t32),
                t16 * 1e3,
                gbs(streams * 2 * len, t16),
                t32 / t16
            );
        }
    }
}

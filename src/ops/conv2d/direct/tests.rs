//! The direct kernels against the im2col path (the plain one, itself
//! checked by finite differences and the loop-by-loop definition) and
//! against an f64 evaluation of the same f32 data.
use super::super::{
    conv2d_backward, conv2d_backward_from, conv2d_backward_input, conv2d_backward_to,
    conv2d_backward_weight, conv2d_forward, conv2d_forward_from, cpu, Conv2dShape, ConvBackward,
    ConvForward, ConvInput, ConvWorkspace,
};
use super::*;
use crate::gradcheck::Rand;
use crate::ops::batchnorm::{
    batchnorm_backward_dx, bn_plane_sums, bn_relu_plane_sums, normalise_act, BnShape,
};

/// A 3x3 / stride-1 / pad-1 convolution's shape (the direct path's).
pub(in crate::ops::conv2d) fn shape(
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
) -> Conv2dShape {
    Conv2dShape {
        n,
        cin,
        h,
        w,
        cout,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    }
}

/// The three direct passes over plain tensors into fresh buffers: `(out,
/// dinp, dw)`.
fn direct_passes(
    inp: &[f32],
    w: &[f32],
    dout: &[f32],
    s: &Conv2dShape,
    ws: &mut Workspace,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; dout.len()];
    forward(
        &mut out,
        None,
        ConvInput::Plain(inp),
        w,
        s,
        Precision::F32,
        ws,
        None,
    );
    let (mut dinp, mut dw) = (vec![0f32; inp.len()], vec![0f32; w.len()]);
    backward(
        Accum::Set,
        None,
        Some(&mut dinp),
        Some(&mut dw),
        ConvGradOut::Plain(dout),
        ConvInput::Plain(inp),
        w,
        s,
        Precision::F32,
        ws,
        None,
    );
    (out, dinp, dw)
}

/// Largest |a - b| relative to the largest |b| (norm-wise, as f32 sums
/// of different orders differ by rounding only).
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale.max(1e-30)
}

#[test]
fn direct_matches_im2col_path() {
    if !enabled() {
        println!("SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused");
        return;
    }
    let mut r = Rand::new(11);
    let mut ws = ConvWorkspace::<f32>::default();
    let mut dws = Workspace::default();
    let mut plain = Vec::new();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            // odd sizes, a single row/column, batch 1, the CIFAR shapes
            for s in [
                shape(3, 8, 5, 7, 16),
                shape(1, 16, 1, 1, 8),
                shape(2, 8, 1, 9, 8),
                shape(4, 24, 9, 4, 8),
                // rows longer than a vector, not a multiple of it; a row
                // split across vectors; 4 vectors (two tiles of 2)
                shape(2, 8, 3, 20, 8),
                shape(1, 8, 2, 33, 16),
                shape(2, 16, 4, 12, 8),
                shape(1, 8, 4, 16, 8),
                shape(5, 16, 32, 32, 16),
                shape(3, 32, 16, 16, 32),
                shape(2, 64, 8, 8, 64),
            ] {
                assert!(applies::<f32>(&s) && !applies::<f64>(&s));
                let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                let inp = f(r.normal_vec(s.n * s.cin * s.h * s.w));
                let w = f(r.normal_vec(s.cout * s.cin * 9));
                let dout = f(r.normal_vec(s.n * s.cout * s.h * s.w));
                let dinp0 = f(r.normal_vec(inp.len())); // += onto non-zero buffers
                let dw0 = f(r.normal_vec(w.len()));

                // the direct kernels, whatever the size policy says
                let mut out = vec![f32::NAN; dout.len()];
                forward(
                    &mut out,
                    None,
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                let (mut dinp, mut dw) = (dinp0.clone(), dw0.clone());
                backward(
                    Accum::Add,
                    None,
                    Some(&mut dinp),
                    Some(&mut dw),
                    ConvGradOut::Plain(&dout),
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                // the two halves separately give the same bits
                let (mut dinp_h, mut dw_h) = (dinp0.clone(), dw0.clone());
                backward(
                    Accum::Add,
                    None,
                    Some(&mut dinp_h),
                    None,
                    ConvGradOut::Plain(&dout),
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                backward(
                    Accum::Add,
                    None,
                    None,
                    Some(&mut dw_h),
                    ConvGradOut::Plain(&dout),
                    ConvInput::Plain(&inp),
                    &[],
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                assert_eq!(dinp_h, dinp, "{s:?}");
                assert_eq!(dw_h, dw, "{s:?}");
                // Accum::Set overwrites whatever was there (NaN here): the
                // same values as adding onto zeros, direct and public paths
                let (mut set, mut zeros) = (vec![f32::NAN; inp.len()], vec![0.0; inp.len()]);
                backward(
                    Accum::Set,
                    None,
                    Some(&mut set),
                    None,
                    ConvGradOut::Plain(&dout),
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                backward(
                    Accum::Add,
                    None,
                    Some(&mut zeros),
                    None,
                    ConvGradOut::Plain(&dout),
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                assert_eq!(set, zeros, "{s:?}");
                let (mut set, mut zeros) = (vec![f32::NAN; inp.len()], vec![0.0; inp.len()]);
                let mut dw_s = dw0.clone();
                let dw_set = &mut dw_s;
                conv2d_backward_to(
                    Accum::Set,
                    Some(&mut set),
                    dw_set,
                    &dout,
                    &inp,
                    &w,
                    &s,
                    &mut ws,
                )
                .unwrap();
                conv2d_backward_input(&mut zeros, &dout, &w, &s, &mut ws).unwrap();
                assert_eq!(set, zeros, "{s:?}");

                // the public entry points (direct or im2col per pass, by size)
                let mut out_r = vec![f32::NAN; dout.len()];
                conv2d_forward(&mut out_r, &inp, &w, &s, &mut ws).unwrap();
                let (mut dinp_r, mut dw_r) = (dinp0.clone(), dw0.clone());
                conv2d_backward(Some(&mut dinp_r), &mut dw_r, &dout, &inp, &w, &s, &mut ws)
                    .unwrap();
                let (mut dinp_rh, mut dw_rh) = (dinp0.clone(), dw0.clone());
                conv2d_backward_input(&mut dinp_rh, &dout, &w, &s, &mut ws).unwrap();
                conv2d_backward_weight(&mut dw_rh, &dout, &inp, &s, &mut ws).unwrap();
                assert_eq!(dinp_rh, dinp_r, "{s:?}");
                assert_eq!(dw_rh, dw_r, "{s:?}");

                // plain im2col path, same data
                let mut out_p = vec![f32::NAN; dout.len()];
                cpu::forward(&mut out_p, &inp, &w, &s, &mut plain, false);
                let (mut dinp_p, mut dw_p) = (dinp0.clone(), dw0.clone());
                cpu::backward_input(&mut dinp_p, &dout, &w, &s, &mut plain, false);
                cpu::backward_weight(&mut dw_p, &dout, &inp, &s, &mut plain, false);
                for (name, a, b) in [
                    ("out", &out, &out_p),
                    ("dinp", &dinp, &dinp_p),
                    ("dw", &dw, &dw_p),
                    ("out (routed)", &out_r, &out_p),
                    ("dinp (routed)", &dinp_r, &dinp_p),
                    ("dw (routed)", &dw_r, &dw_p),
                ] {
                    let e = rel(a, b);
                    assert!(e < 1e-5, "{threads} threads {s:?} {name}: rel err {e:e}");
                }
                // reproducible for a fixed thread count
                let mut out2 = vec![0.0; out.len()];
                forward(
                    &mut out2,
                    None,
                    ConvInput::Plain(&inp),
                    &w,
                    &s,
                    Precision::F32,
                    &mut dws,
                    None,
                );
                assert_eq!(out2, out);
            }
        });
    }
}

#[test]
fn direct_matches_f64_definition() {
    if !enabled() {
        println!("SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused");
        return;
    }
    // the sums written out loop by loop, in f64, on f32 data
    let s = shape(2, 8, 6, 5, 8);
    let mut r = Rand::new(5);
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let inp = f(r.normal_vec(s.n * s.cin * s.h * s.w));
    let w = f(r.normal_vec(s.cout * s.cin * 9));
    let dout = f(r.normal_vec(s.n * s.cout * s.h * s.w));
    let (h, wd) = (s.h as isize, s.w as isize);
    let at = |n: usize, c: usize, y: isize, x: isize| {
        if y < 0 || x < 0 || y >= h || x >= wd {
            0.0
        } else {
            inp[((n * s.cin + c) * s.h + y as usize) * s.w + x as usize] as f64
        }
    };
    let mut out = vec![0f64; dout.len()];
    let mut dinp = vec![0f64; inp.len()];
    let mut dw = vec![0f64; w.len()];
    for n in 0..s.n {
        for o in 0..s.cout {
            for y in 0..h {
                for x in 0..wd {
                    let oi = ((n * s.cout + o) * s.h + y as usize) * s.w + x as usize;
                    for c in 0..s.cin {
                        for k in 0..9 {
                            let (iy, ix) = (y + (k / 3) as isize - 1, x + (k % 3) as isize - 1);
                            let wi = (o * s.cin + c) * 9 + k;
                            out[oi] += w[wi] as f64 * at(n, c, iy, ix);
                            dw[wi] += dout[oi] as f64 * at(n, c, iy, ix);
                            if iy >= 0 && ix >= 0 && iy < h && ix < wd {
                                dinp[((n * s.cin + c) * s.h + iy as usize) * s.w + ix as usize] +=
                                    dout[oi] as f64 * w[wi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let (got_out, got_dinp, got_dw) = direct_passes(&inp, &w, &dout, &s, &mut Workspace::default());
    for (name, a, b) in [
        ("out", &got_out, &out),
        ("dinp", &got_dinp, &dinp),
        ("dw", &got_dw, &dw),
    ] {
        for (i, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
            assert!(
                (x as f64 - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{name}[{i}]: {x} vs {y}"
            );
        }
    }
}

/// A BN-ReLU input (`ConvInput::BnRelu`) gives the bits of the same
/// convolution of the BN-ReLU output written out first, on the direct path
/// (normalised while padding) and on the im2col path (written into the
/// workspace): forward, both gradients; so does a BN's input gradient as
/// the output gradient (`ConvGradOut::Bn`).
#[test]
fn bn_relu_input_is_the_written_out_input() {
    written_out_input_case(Precision::F32);
}

/// The same in bf16, where the two sides pair their planes differently and
/// must round the same values: a stored input / dout paired where it lies
/// (forward, input gradient) and placed in zeros by the weight gradient's
/// position pairs, a BN-ReLU input computed into planes first, a BN's
/// input gradient computed once for both layouts; odd channel counts (the
/// zero channel of a last pair) on the direct forward (cin 5) and input
/// gradient (cout 9), planes of 64, 81 and 256 positions.
#[test]
fn bf16_bn_relu_input_is_the_written_out_input() {
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    written_out_input_case(Precision::Bf16);
}

fn written_out_input_case(p: Precision) {
    let mut r = Rand::new(17);
    let mut ws = ConvWorkspace::<f32>::default();
    ws.set_precision(p);
    let stride2 = Conv2dShape {
        stride: 2,
        ..shape(2, 8, 7, 6, 16)
    };
    for s in [
        shape(3, 8, 5, 7, 16),
        shape(2, 16, 8, 8, 8),
        shape(2, 8, 9, 9, 8),
        shape(2, 16, 16, 16, 16),
        shape(3, 5, 8, 8, 8),
        shape(2, 8, 8, 8, 9),
        stride2,
    ] {
        if p == Precision::Bf16 && s.stride == 1 && s.h * s.w >= 64 {
            // the direct bf16 passes do run where the shape allows them
            assert_eq!(use_for_forward::<f32>(&s, p), s.cout % 8 == 0);
            assert_eq!(use_for_input_grad::<f32>(&s, p), s.cin % 8 == 0);
            assert_eq!(use_for_weight::<f32>(&s, p), s.cout % 8 == 0);
        }
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let x = f(r.normal_vec(s.n * s.cin * s.h * s.w));
        let mean = f(r.normal_vec(s.cin));
        let k = f(r.normal_vec(s.cin));
        let beta = f(r.normal_vec(s.cin));
        let w = f(r.normal_vec(s.cout * s.cin * 9));
        let (oh, ow) = (s.oh(), s.ow());
        let dout = f(r.normal_vec(s.n * s.cout * oh * ow));
        let mut a = vec![0f32; x.len()];
        let bs = BnShape {
            n: s.n,
            c: s.cin,
            hw: s.h * s.w,
        };
        normalise_act::<f32, true>(&mut a, &x, &mean, &k, &beta, bs, false);
        assert!(a.contains(&0.0) && a.iter().any(|&v| v > 0.0));
        let act = ConvInput::BnRelu {
            x: &x,
            mean: &mean,
            k: &k,
            beta: &beta,
        };
        let (mut out_a, mut out_v) = (vec![0f32; dout.len()], vec![f32::NAN; dout.len()]);
        conv2d_forward(&mut out_a, &a, &w, &s, &mut ws).unwrap();
        conv2d_forward_from(
            ConvForward {
                out: &mut out_v,
                res: None,
                inp: act,
                plane_sums: None,
            },
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        assert_eq!(out_a, out_v, "{s:?}");
        let (mut dw_a, mut dw_v) = (vec![0f32; w.len()], vec![0f32; w.len()]);
        let (mut dx_a, mut dx_v) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        conv2d_backward(Some(&mut dx_a), &mut dw_a, &dout, &a, &w, &s, &mut ws).unwrap();
        conv2d_backward_from(
            ConvBackward {
                accum: Accum::Add,
                res: None,
                dinp: Some(&mut dx_v),
                dout: ConvGradOut::Plain(&dout),
                inp: act,
                plane_sums: None,
            },
            &mut dw_v,
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        assert_eq!(dw_a, dw_v, "{s:?}");
        assert_eq!(dx_a, dx_v, "{s:?}");
        // the BN-ReLU's reduction sums over dinp, computed as dinp is
        // written: bitwise batchnorm's own
        let (mut got, mut want) = (vec![(0.0, 0.0); s.n * s.cin], vec![(0.0, 0.0); s.n * s.cin]);
        let (mut dx_s, mut dw_s) = (vec![f32::NAN; x.len()], vec![0f32; w.len()]);
        conv2d_backward_from(
            ConvBackward {
                accum: Accum::Set,
                res: None,
                dinp: Some(&mut dx_s),
                dout: ConvGradOut::Plain(&dout),
                inp: act,
                plane_sums: Some(&mut got),
            },
            &mut dw_s,
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        assert_eq!(dx_s, dx_a, "{s:?}");
        bn_relu_plane_sums(&mut want, &dx_s, &x, &mean, &k, &beta, bs).unwrap();
        assert_eq!(got, want, "{s:?} plane sums");
        // the output gradient given as a BN's (with and without ReLU):
        // the same bits as the BN's input gradient written out first
        let y = f(r.normal_vec(dout.len()));
        let (ymean, ybeta) = (f(r.normal_vec(s.cout)), f(r.normal_vec(s.cout)));
        let coef: Vec<(f32, f32, f32)> = (0..s.cout)
            .map(|_| {
                let v = f(r.normal_vec(3));
                (v[0], v[1], v[2])
            })
            .collect();
        let ys = BnShape {
            n: s.n,
            c: s.cout,
            hw: oh * ow,
        };
        for beta in [None, Some(ybeta.as_slice())] {
            let mut g = vec![0f32; dout.len()];
            batchnorm_backward_dx(&mut g, &dout, &y, &ymean, beta, &coef, ys).unwrap();
            let bn = ConvGradOut::Bn {
                dy: &dout,
                x: &y,
                mean: &ymean,
                beta,
                coef: &coef,
            };
            let (mut dw_a, mut dw_v) = (vec![0f32; w.len()], vec![0f32; w.len()]);
            let (mut dx_a, mut dx_v) = (vec![0f32; x.len()], vec![f32::NAN; x.len()]);
            conv2d_backward(Some(&mut dx_a), &mut dw_a, &g, &a, &w, &s, &mut ws).unwrap();
            conv2d_backward_from(
                ConvBackward {
                    accum: Accum::Set,
                    res: None,
                    dinp: Some(&mut dx_v),
                    dout: bn,
                    inp: act,
                    plane_sums: None,
                },
                &mut dw_v,
                &w,
                &s,
                &mut ws,
            )
            .unwrap();
            assert_eq!(dw_a, dw_v, "{s:?} {beta:?}");
            assert_eq!(dx_a, dx_v, "{s:?} {beta:?}");
        }
        // the output's plane sums (a BN's first statistics pass), taken
        // per image as it is written: bitwise batchnorm's own
        let (mut got, mut want) = (vec![0f64; s.n * s.cout], vec![0f64; s.n * s.cout]);
        let mut out_s = vec![f32::NAN; dout.len()];
        conv2d_forward_from(
            ConvForward {
                out: &mut out_s,
                res: None,
                inp: act,
                plane_sums: Some(&mut got),
            },
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        assert_eq!(out_s, out_a, "{s:?}");
        for (img, p) in out_s
            .chunks_exact(s.cout * oh * ow)
            .zip(want.chunks_exact_mut(s.cout))
        {
            bn_plane_sums(p, img, oh * ow);
        }
        assert_eq!(got, want, "{s:?} output plane sums");
        // a residual added in the store: the same bits as adding after
        let res = f(r.normal_vec(dout.len()));
        let mut out_r = vec![f32::NAN; dout.len()];
        conv2d_forward_from(
            ConvForward {
                out: &mut out_r,
                res: Some(&res),
                inp: act,
                plane_sums: None,
            },
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        let plus: Vec<f32> = res.iter().zip(&out_a).map(|(&a, &b)| a + b).collect();
        assert_eq!(out_r, plus, "{s:?}");
        let dres = f(r.normal_vec(x.len()));
        let (mut dx_r, mut dw_r) = (vec![f32::NAN; x.len()], vec![0f32; w.len()]);
        let dplain = ConvGradOut::Plain(&dout[..]);
        conv2d_backward_from(
            ConvBackward {
                accum: Accum::Set,
                res: Some(&dres),
                dinp: Some(&mut dx_r),
                dout: dplain,
                inp: act,
                plane_sums: None,
            },
            &mut dw_r,
            &w,
            &s,
            &mut ws,
        )
        .unwrap();
        let mut dx_p = dres.clone();
        conv2d_backward_input(&mut dx_p, &dout, &w, &s, &mut ws).unwrap();
        assert_eq!(dx_r, dx_p, "{s:?}");
        let e = conv2d_backward_from(
            ConvBackward {
                accum: Accum::Add,
                res: Some(&dres),
                dinp: Some(&mut dx_r),
                dout: dplain,
                inp: act,
                plane_sums: None,
            },
            &mut dw_r,
            &w,
            &s,
            &mut ws,
        )
        .unwrap_err();
        assert!(e.to_string().contains("residual"), "{e}");
        // a wrong-sized statistic is an error naming it
        let bad = ConvInput::BnRelu {
            x: &x,
            mean: &mean[1..],
            k: &k,
            beta: &beta,
        };
        let e = conv2d_forward_from(
            ConvForward {
                out: &mut out_v,
                res: None,
                inp: bad,
                plane_sums: None,
            },
            &w,
            &s,
            &mut ws,
        )
        .unwrap_err();
        assert!(e.to_string().contains("BN mean"), "{e}");
    }
}

/// A stem (3 input channels): the forward and the weight gradient take the
/// direct path (they tile `cout`), the input gradient im2col; all three
/// agree with the im2col path.
#[test]
fn three_input_channels_forward_and_weight_grad() {
    if !enabled() {
        println!("SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused");
        return;
    }
    let mut r = Rand::new(23);
    let mut ws = ConvWorkspace::<f32>::default();
    let mut plain = Vec::new();
    for s in [shape(4, 3, 32, 32, 16), shape(2, 3, 9, 10, 8)] {
        assert!(
            use_for_weight::<f32>(&s, Precision::F32)
                && !use_for_input_grad::<f32>(&s, Precision::F32)
        );
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let inp = f(r.normal_vec(s.n * s.cin * s.h * s.w));
        let w = f(r.normal_vec(s.cout * s.cin * 9));
        let dout = f(r.normal_vec(s.n * s.cout * s.h * s.w));
        let (mut out, mut out_p) = (vec![f32::NAN; dout.len()], vec![f32::NAN; dout.len()]);
        conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
        cpu::forward(&mut out_p, &inp, &w, &s, &mut plain, false);
        let (mut dw, mut dw_p) = (vec![0f32; w.len()], vec![0f32; w.len()]);
        let (mut dx, mut dx_p) = (vec![0f32; inp.len()], vec![0f32; inp.len()]);
        conv2d_backward(Some(&mut dx), &mut dw, &dout, &inp, &w, &s, &mut ws).unwrap();
        cpu::backward_weight(&mut dw_p, &dout, &inp, &s, &mut plain, false);
        cpu::backward_input(&mut dx_p, &dout, &w, &s, &mut plain, false);
        for (name, a, b) in [
            ("out", &out, &out_p),
            ("dw", &dw, &dw_p),
            ("dx", &dx, &dx_p),
        ] {
            let e = rel(a, b);
            assert!(e < 1e-5, "{s:?} {name}: rel err {e:e}");
        }
    }
}

/// The kernels read whole vectors and leave out the lanes a tap `kx = 0 /
/// 2` must not see (the previous / next row's end) by masking the FMA: an
/// infinity at a row's last (first) column must reach exactly the sums
/// whose 3x3 window holds it, as on the im2col path: in the input (the
/// forward and the weight gradient, whose `kx = 0` (`2`) taps never read
/// a last (first) column, so stay finite) and in the output gradient (the
/// input gradient; its weight gradient is left out: im2col multiplies the
/// infinity by the padding's zero, NaN, where the direct kernel's masked
/// lane adds nothing).
#[test]
fn values_beside_a_row_edge_stay_out_of_the_sums() {
    if !enabled() {
        println!("SKIPPED: no AVX-512 on this CPU (or RESGRAD_CONV=im2col): direct path unused");
        return;
    }
    let mut r = Rand::new(5);
    let (mut dws, mut plain) = (Workspace::default(), Vec::new());
    let finite = |v: &[f32]| v.iter().map(|x| x.is_finite()).collect::<Vec<_>>();
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    for s in [
        shape(2, 8, 8, 8, 8),
        shape(1, 8, 5, 20, 16),
        shape(1, 16, 4, 32, 8),
    ] {
        let hw = s.h * s.w;
        for (col, in_input) in [(0, true), (s.w - 1, true), (0, false), (s.w - 1, false)] {
            let mut inp = f(r.normal_vec(s.n * s.cin * hw));
            let w = f(r.normal_vec(s.cout * s.cin * 9));
            let mut dout = f(r.normal_vec(s.n * s.cout * hw));
            // one infinity in the middle row, at the edge column
            let at = |plane: usize| plane * hw + (s.h / 2) * s.w + col;
            if in_input {
                inp[at((s.n - 1) * s.cin + 1)] = f32::INFINITY;
            } else {
                dout[at((s.n - 1) * s.cout + 2)] = f32::INFINITY;
            }
            let (out, dinp, dw) = direct_passes(&inp, &w, &dout, &s, &mut dws);
            let mut out_p = vec![0f32; dout.len()];
            cpu::forward(&mut out_p, &inp, &w, &s, &mut plain, false);
            let (mut dinp_p, mut dw_p) = (vec![0f32; inp.len()], vec![0f32; w.len()]);
            cpu::backward_input(&mut dinp_p, &dout, &w, &s, &mut plain, false);
            cpu::backward_weight(&mut dw_p, &dout, &inp, &s, &mut plain, false);
            let case = format!("{s:?}, column {col}, in the input: {in_input}");
            if in_input {
                assert_eq!(finite(&out), finite(&out_p), "forward {case}");
                assert_eq!(finite(&dw), finite(&dw_p), "weight grad {case}");
                // the taps that never read the edge column stay finite
                let kx = if col == 0 { 2 } else { 0 };
                assert!(
                    dw.iter().skip(kx).step_by(3).all(|x| x.is_finite()),
                    "{case}"
                );
                assert!(out.iter().any(|x| !x.is_finite()), "{case}");
            } else {
                assert_eq!(finite(&dinp), finite(&dinp_p), "input grad {case}");
                assert!(dinp.iter().any(|x| !x.is_finite()), "{case}");
            }
        }
    }
}

/// [`Zeroed`] skips only planes known to hold their zeros: same buffer,
/// same layout, written before, and only from the buffer's start on.
#[test]
fn zeroed_planes_are_tracked_per_buffer_and_layout() {
    let (a, b) = (
        Grid::of(&shape(1, 8, 8, 8, 8)),
        Grid::of(&shape(1, 8, 16, 16, 8)),
    );
    let buf = [0f32; 4];
    let (p, q) = (buf.as_ptr(), buf[1..].as_ptr());
    let mut z = Zeroed::default();
    assert!(z.need(p, &a, 8, 8), "planes 8.. before 0..8 were written");
    assert!(z.need(p, &a, 0, 8));
    assert!(!z.need(p, &a, 0, 8) && !z.need(p, &a, 0, 4));
    assert!(z.need(p, &a, 8, 8), "planes 8..16 follow 0..8: written now");
    assert!(!z.need(p, &a, 8, 8) && !z.need(p, &a, 0, 16));
    assert!(z.need(p, &b, 0, 8), "another layout");
    assert!(z.need(q, &b, 0, 8), "another buffer");
    assert!(z.need(p, &a, 0, 8), "the first layout again");
}

/// Per-output bound of `gemm_bf16`'s doc between a bf16 sum and the f32
/// sum of the same exact products (operands already rounded to bf16), `k`
/// products and `mag = Σ|a||b| + |added term|`.
fn bf16_bound(k: usize, mag: f32) -> f64 {
    2.01 * (k as f64 + 1.0) * 2f64.powi(-24) * mag as f64 + k as f64 * 2f64.powi(-125)
}

/// Largest `|x - y| / bound` over the outputs (<= 1: within the bound).
fn worst_ratio(x: &[f32], y: &[f32], k: usize, mag: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .zip(mag)
        .map(|((&a, &b), &m)| (a as f64 - b as f64).abs() / bf16_bound(k, m))
        .fold(0f64, f64::max)
}

/// The bf16 direct forward and input gradient against the f32 im2col path
/// on the SAME values rounded to bf16 (the input as the convolution reads
/// it, BN-ReLU applied, and the weights): the products are exact in f32 on
/// both sides, so the outputs differ by summation order only, within
/// `gemm_bf16`'s bound `2.01 (K + 1) 2^-24 (Σ|a||b| + |added|) + K 2^-125`
/// per output (`K = 9 cin` forward, `9 cout` input gradient; `Σ|a||b|` is
/// the f32 convolution of `|a|` and `|w|`). Every input kind (plain,
/// BN-ReLU; plain and BN(-ReLU) output gradients), every store (set,
/// add, residual, plane sums), odd channel counts (the zero channel of the
/// last pair), the three CIFAR plane sizes and odd planes, batch > 1.
#[test]
fn bf16_kernels_match_f32_on_rounded_operands() {
    use crate::gemm_bf16::round_bf16;
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    let mut r = Rand::new(23);
    let mut dws = Workspace::default();
    let mut plain = Vec::new();
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let rounded = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<f32>>();
    let abs = |v: &[f32]| v.iter().map(|&x| x.abs()).collect::<Vec<f32>>();
    // forward: cout a multiple of 8, any cin; input gradient: cin a
    // multiple of 8, any cout (the pairs run over the other side)
    for s in [
        shape(2, 3, 32, 32, 16),
        shape(3, 16, 32, 32, 16),
        shape(2, 5, 16, 16, 8),
        shape(2, 32, 16, 16, 32),
        shape(4, 64, 8, 8, 64),
        shape(3, 9, 8, 8, 16),
        shape(2, 8, 5, 7, 8),
        shape(3, 16, 7, 33, 9),
        shape(2, 24, 3, 20, 13),
    ] {
        let hw = s.h * s.w;
        let x = f(r.normal_vec(s.n * s.cin * hw));
        let w = f(r.normal_vec(s.cout * s.cin * 9));
        let (wr, wa) = (rounded(&w), abs(&rounded(&w)));
        let mean = f(r.normal_vec(s.cin));
        let k = f(r.normal_vec(s.cin));
        let beta = f(r.normal_vec(s.cin));
        let kinds = [
            ConvInput::Plain(&x),
            ConvInput::BnRelu {
                x: &x,
                mean: &mean,
                k: &k,
                beta: &beta,
            },
        ];
        let olen = s.n * s.cout * hw;
        let res = f(r.normal_vec(olen));
        if s.cout.is_multiple_of(TILE_O) {
            for inp in kinds {
                // the input as the convolution reads it, rounded
                let mut act = Vec::new();
                let ar = rounded(inp.stored(&mut act, &s));
                let mut want = vec![0f32; olen];
                cpu::forward(&mut want, &ar, &wr, &s, &mut plain, false);
                let mut mag = vec![0f32; olen];
                cpu::forward(&mut mag, &abs(&ar), &wa, &s, &mut plain, false);
                // plain store, with the plane sums
                let mut got = vec![f32::NAN; olen];
                let mut sums = vec![f64::NAN; s.n * s.cout];
                let p = Precision::Bf16;
                forward(&mut got, None, inp, &w, &s, p, &mut dws, Some(&mut sums));
                let q = worst_ratio(&got, &want, 9 * s.cin, &mag);
                assert!(q <= 1.0, "{s:?} forward: {q} x the bound");
                let mut own = vec![0f64; s.n * s.cout];
                for (img, p) in got
                    .chunks_exact(s.cout * hw)
                    .zip(own.chunks_exact_mut(s.cout))
                {
                    bn_plane_sums(p, img, hw);
                }
                assert_eq!(sums, own, "{s:?}: plane sums of the stored output");
                // residual store: res + sum
                let mut got = vec![f32::NAN; olen];
                forward(&mut got, Some(&res), inp, &w, &s, p, &mut dws, None);
                let want_r: Vec<f32> = res.iter().zip(&want).map(|(a, b)| a + b).collect();
                let mag_r: Vec<f32> = res.iter().zip(&mag).map(|(a, b)| a.abs() + b).collect();
                let q = worst_ratio(&got, &want_r, 9 * s.cin, &mag_r);
                assert!(q <= 1.0, "{s:?} forward + residual: {q} x the bound");
            }
        }
        if !s.cin.is_multiple_of(TILE_O) {
            continue;
        }
        let dy = f(r.normal_vec(olen));
        let xo = f(r.normal_vec(olen));
        let omean = f(r.normal_vec(s.cout));
        let obeta = f(r.normal_vec(s.cout));
        let coef: Vec<(f32, f32, f32)> = (0..s.cout)
            .map(|_| {
                let v = f(r.normal_vec(3));
                (v[0], v[1], v[2])
            })
            .collect();
        let grads = [
            ConvGradOut::Plain(&dy),
            ConvGradOut::Bn {
                dy: &dy,
                x: &xo,
                mean: &omean,
                beta: None,
                coef: &coef,
            },
            ConvGradOut::Bn {
                dy: &dy,
                x: &xo,
                mean: &omean,
                beta: Some(&obeta),
                coef: &coef,
            },
        ];
        let ilen = s.n * s.cin * hw;
        let (dinp0, ires) = (f(r.normal_vec(ilen)), f(r.normal_vec(ilen)));
        for dout in grads {
            let mut g = Vec::new();
            let gr = rounded(dout.stored(&mut g, &s));
            let mut want = vec![0f32; ilen];
            cpu::backward_input(&mut want, &gr, &wr, &s, &mut plain, false);
            let mut mag = vec![0f32; ilen];
            cpu::backward_input(&mut mag, &abs(&gr), &wa, &s, &mut plain, false);
            let kk = 9 * s.cout;
            let p = Precision::Bf16;
            // Set, Add onto dinp0, residual; the BN-ReLU plane sums with Set
            for (accum, with_res) in [(Accum::Set, false), (Accum::Add, false), (Accum::Set, true)]
            {
                let mut got = match accum {
                    Accum::Set => vec![f32::NAN; ilen],
                    Accum::Add => dinp0.clone(),
                };
                let stats = accum == Accum::Set && !with_res;
                let mut sums = vec![(f64::NAN, f64::NAN); s.n * s.cin];
                backward(
                    accum,
                    with_res.then_some(&ires[..]),
                    Some(&mut got),
                    None,
                    dout,
                    if stats { kinds[1] } else { kinds[0] },
                    &w,
                    &s,
                    p,
                    &mut dws,
                    stats.then_some(&mut sums[..]),
                );
                let base = match (accum, with_res) {
                    (_, true) => &ires[..],
                    (Accum::Add, _) => &dinp0[..],
                    _ => &[][..],
                };
                let (mut want_a, mut mag_a) = (want.clone(), mag.clone());
                for (i, &b) in base.iter().enumerate() {
                    want_a[i] = b + want[i];
                    mag_a[i] = b.abs() + mag[i];
                }
                let q = worst_ratio(&got, &want_a, kk, &mag_a);
                assert!(
                    q <= 1.0,
                    "{s:?} input grad {accum:?} res {with_res}: {q} x the bound"
                );
                if stats {
                    let bs = BnShape {
                        n: s.n,
                        c: s.cin,
                        hw,
                    };
                    let mut own = vec![(0f64, 0f64); s.n * s.cin];
                    bn_relu_plane_sums(&mut own, &got, &x, &mean, &k, &beta, bs).unwrap();
                    assert_eq!(sums, own, "{s:?}: BN-ReLU sums of the stored dinp");
                }
            }
        }
    }
}

/// The bf16 path really rounds its operands: on values that are not bf16
/// numbers it differs from f32 by far more than the summation bound, and
/// stays within the rounding bound of `gemm_bf16`'s doc, `(2^-7 + 2^-16 +
/// 2.01 (K + 1) 2^-24) Σ|a||b|`. Through the public entry points with a
/// bf16 workspace, which take the direct kernels for this shape.
#[test]
fn bf16_direct_path_rounds_its_operands() {
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    let s = shape(2, 16, 16, 16, 16);
    assert!(use_for_forward::<f32>(&s, Precision::Bf16));
    assert!(use_for_input_grad::<f32>(&s, Precision::Bf16));
    assert!(use_for_weight::<f32>(&s, Precision::Bf16));
    let mut r = Rand::new(29);
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let abs = |v: &[f32]| v.iter().map(|&x| x.abs()).collect::<Vec<f32>>();
    let x = f(r.normal_vec(s.n * s.cin * 256));
    let w = f(r.normal_vec(s.cout * s.cin * 9));
    let dy = f(r.normal_vec(s.n * s.cout * 256));
    let run = |p: Precision| {
        let mut ws = ConvWorkspace::<f32>::default();
        ws.set_precision(p);
        let mut out = vec![0f32; dy.len()];
        conv2d_forward(&mut out, &x, &w, &s, &mut ws).unwrap();
        let mut dinp = vec![0f32; x.len()];
        conv2d_backward_input(&mut dinp, &dy, &w, &s, &mut ws).unwrap();
        let mut dw = vec![0f32; w.len()];
        conv2d_backward_weight(&mut dw, &dy, &x, &s, &mut ws).unwrap();
        (out, dinp, dw)
    };
    let (a, b) = (run(Precision::F32), run(Precision::Bf16));
    let mut plain = Vec::new();
    let mut mag_f = vec![0f32; dy.len()];
    cpu::forward(&mut mag_f, &abs(&x), &abs(&w), &s, &mut plain, false);
    let mut mag_b = vec![0f32; x.len()];
    cpu::backward_input(&mut mag_b, &abs(&dy), &abs(&w), &s, &mut plain, false);
    let mut mag_w = vec![0f32; w.len()];
    cpu::backward_weight(&mut mag_w, &abs(&dy), &abs(&x), &s, &mut plain, false);
    for (what, x, y, mag, k) in [
        ("out", &a.0, &b.0, &mag_f, 9 * 16),
        ("dinp", &a.1, &b.1, &mag_b, 9 * 16),
        ("dw", &a.2, &b.2, &mag_w, 2 * 256),
    ] {
        let sum_bound = worst_ratio(x, y, k, mag);
        assert!(
            sum_bound > 10.0,
            "{what}: bf16 within {sum_bound} x the f32 summation bound: not rounded?"
        );
        let round = |m: f32| (2f64.powi(-7) + 2f64.powi(-16)) * m as f64 + bf16_bound(k, m);
        let worst = (x.iter().zip(y.iter()).zip(mag.iter()))
            .map(|((&p, &q), &m)| (p as f64 - q as f64).abs() / round(m))
            .fold(0f64, f64::max);
        assert!(worst <= 1.0, "{what}: {worst} x the rounding bound");
    }
}

/// The bf16 weight gradient (pairs of adjacent positions) against the f32
/// im2col path on the same values rounded to bf16, within `gemm_bf16`'s
/// bound with `K = N h w` products per entry plus the `dw` it adds to;
/// every input and output-gradient kind, odd `cin`, odd planes (a pair
/// across two rows, a last pair half past the plane), the CIFAR planes; and
/// both halves from one call give the same bits as each alone.
#[test]
fn bf16_weight_grad_matches_f32_on_rounded_operands() {
    use crate::gemm_bf16::round_bf16;
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    let mut r = Rand::new(31);
    let mut dws = Workspace::default();
    let mut plain = Vec::new();
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let rounded = |v: &[f32]| v.iter().map(|&x| round_bf16(x)).collect::<Vec<f32>>();
    let abs = |v: &[f32]| v.iter().map(|&x| x.abs()).collect::<Vec<f32>>();
    let p = Precision::Bf16;
    for s in [
        shape(2, 3, 32, 32, 16),
        shape(3, 16, 32, 32, 16),
        shape(5, 32, 16, 16, 32),
        shape(13, 64, 8, 8, 64),
        shape(3, 9, 8, 8, 16),
        shape(2, 8, 5, 7, 8),
        shape(3, 16, 7, 33, 8),
        shape(2, 24, 3, 20, 16),
        shape(2, 8, 1, 1, 8),
    ] {
        let hw = s.h * s.w;
        let (ilen, olen) = (s.n * s.cin * hw, s.n * s.cout * hw);
        let x = f(r.normal_vec(ilen));
        let w = f(r.normal_vec(s.cout * s.cin * 9));
        let dw0 = f(r.normal_vec(w.len()));
        let (mean, k, beta) = (
            f(r.normal_vec(s.cin)),
            f(r.normal_vec(s.cin)),
            f(r.normal_vec(s.cin)),
        );
        let (dy, xo) = (f(r.normal_vec(olen)), f(r.normal_vec(olen)));
        let (omean, obeta) = (f(r.normal_vec(s.cout)), f(r.normal_vec(s.cout)));
        let coef: Vec<(f32, f32, f32)> = (0..s.cout)
            .map(|_| {
                let v = f(r.normal_vec(3));
                (v[0], v[1], v[2])
            })
            .collect();
        let inputs = [
            ConvInput::Plain(&x),
            ConvInput::BnRelu {
                x: &x,
                mean: &mean,
                k: &k,
                beta: &beta,
            },
        ];
        let grads = [
            ConvGradOut::Plain(&dy),
            ConvGradOut::Bn {
                dy: &dy,
                x: &xo,
                mean: &omean,
                beta: Some(&obeta),
                coef: &coef,
            },
        ];
        for inp in inputs {
            for dout in grads {
                let (mut a, mut gbuf) = (Vec::new(), Vec::new());
                let ar = rounded(inp.stored(&mut a, &s));
                let gr = rounded(dout.stored(&mut gbuf, &s));
                let mut want = dw0.clone();
                cpu::backward_weight(&mut want, &gr, &ar, &s, &mut plain, false);
                let mut mag = abs(&dw0);
                cpu::backward_weight(&mut mag, &abs(&gr), &abs(&ar), &s, &mut plain, false);
                let mut got = dw0.clone();
                backward(
                    Accum::Add,
                    None,
                    None,
                    Some(&mut got),
                    dout,
                    inp,
                    &w,
                    &s,
                    p,
                    &mut dws,
                    None,
                );
                let q = worst_ratio(&got, &want, s.n * hw, &mag);
                assert!(q <= 1.0, "{s:?} weight grad: {q} x the bound");
                if !s.cin.is_multiple_of(TILE_O) {
                    continue;
                }
                // both halves at once: the same bits as each alone
                let (mut both, mut dinp_b) = (dw0.clone(), vec![f32::NAN; ilen]);
                backward(
                    Accum::Set,
                    None,
                    Some(&mut dinp_b),
                    Some(&mut both),
                    dout,
                    inp,
                    &w,
                    &s,
                    p,
                    &mut dws,
                    None,
                );
                let mut dinp_a = vec![f32::NAN; ilen];
                backward(
                    Accum::Set,
                    None,
                    Some(&mut dinp_a),
                    None,
                    dout,
                    inp,
                    &w,
                    &s,
                    p,
                    &mut dws,
                    None,
                );
                assert_eq!(both, got, "{s:?}: dw with and without dinp");
                assert_eq!(dinp_b, dinp_a, "{s:?}: dinp with and without dw");
            }
        }
    }
}

/// The plan's fusion choices (`conv2d_fuses_*`, asked without a precision)
/// hold in bf16 too: every pass takes the direct path in bf16 exactly when
/// it does in f32.
#[test]
fn bf16_takes_the_direct_path_where_f32_does() {
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    let (f, b) = (Precision::F32, Precision::Bf16);
    let stride2 = Conv2dShape {
        stride: 2,
        ..shape(2, 16, 32, 32, 32)
    };
    for s in [
        shape(128, 3, 32, 32, 16),
        shape(128, 16, 32, 32, 16),
        shape(128, 32, 16, 16, 32),
        shape(128, 64, 8, 8, 64),
        shape(128, 64, 4, 4, 64),
        shape(2, 5, 7, 9, 13),
        stride2,
    ] {
        assert_eq!(use_for_forward::<f32>(&s, f), use_for_forward::<f32>(&s, b));
        assert_eq!(
            use_for_input_grad::<f32>(&s, f),
            use_for_input_grad::<f32>(&s, b)
        );
        assert_eq!(use_for_weight::<f32>(&s, f), use_for_weight::<f32>(&s, b));
        assert!(!use_for_forward::<f64>(&s, b) && !use_for_weight::<f64>(&s, b));
    }
}

/// This thread's CPU time (not the time it waits for a core on a shared
/// machine), seconds.
fn cpu_now() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: t is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The best CPU seconds per call of `f` over 60 timings of ~2 ms each (the
/// tuning tools below).
pub(in crate::ops::conv2d) fn best_cpu_time(f: &mut dyn FnMut()) -> f64 {
    // a first call grows its buffers (page faults): not a measure of reps
    f();
    let t = std::time::Instant::now();
    f();
    let reps = (0.002 / t.elapsed().as_secs_f64()).ceil().max(1.0) as usize;
    (0..60)
        .map(|_| {
            let t = cpu_now();
            for _ in 0..reps {
                f();
            }
            (cpu_now() - t) / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The kernels alone, without the passes around them (padding, pairing,
/// the lane reduction): GFLOP/s and share of this machine's one-thread
/// peak (measured first, as `resgrad peak --threads 1` measures it: f32
/// FMA / bf16 `vdpbf16ps`; override with `RESGRAD_PEAK1=f32,bf16`) per CIFAR ResNet shape, one image (the
/// forward / input-gradient kernels) or one group of images (the weight
/// gradient, the group size the pass uses; `GROUP=n` overrides it) over and
/// over, best of 60 timings of ~2 ms of the thread's CPU time (`ONLY=8`:
/// the 8x8 planes only). A tuning tool, not a check: run it on purpose,
/// `cargo test --release --lib kernel_rates -- --ignored --nocapture`.
#[test]
#[ignore]
fn kernel_rates() {
    if !bf16_enabled() {
        println!("SKIPPED: needs AVX-512F and AVX512-BF16");
        return;
    }
    let (pf, pb) = std::env::var("RESGRAD_PEAK1")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or_else(|| {
            // measured now, on one thread, as `resgrad peak --threads 1`
            // does (a figure written down goes stale with the machine)
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
            let r = one
                .expect("a one-thread pool")
                .install(|| crate::backend::cpu::peak::measure_peak(5, 20_000_000));
            (r.gflops, r.bf16_gflops.unwrap_or(f64::NAN))
        });
    let time = best_cpu_time;
    let mut r = Rand::new(5);
    let mut rnd =
        |n: usize| -> Vec<f32> { r.normal_vec(n).into_iter().map(|x| x as f32).collect() };
    // normal values as bf16 pairs (as the passes make them)
    let to_u32 = |v: &[f32]| {
        v.iter()
            .map(|&x| to_bf16(x) as u32 | (to_bf16(-0.5 * x) as u32) << 16)
            .collect::<Vec<u32>>()
    };
    println!("| shape | kernel | f32 GFLOP/s | share | bf16 GFLOP/s | share |");
    println!("|---|---|---|---|---|---|");
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    for (c, hw) in [(16, 32), (32, 16), (64, 8)] {
        if only.is_some_and(|o| o != hw) {
            continue;
        }
        let s = shape(1, c, hw, hw, c);
        let g = Grid::of(&s);
        let mut edges = Vec::new();
        edge_masks(&mut edges, &g);
        let mut pm = Vec::new();
        pair_masks(&mut pm, &edges);
        let conv_flops = 2.0 * (g.hw * 9 * c * c) as f64;
        // forward / input gradient: one image
        let src = rnd(c * g.ps);
        let wk = rnd(c * 9 * c);
        let mut dst = vec![0f32; c * g.hw];
        let tf = time(&mut || conv_planes(&mut dst, &src, &wk, c, c, &g, &edges, Store::Set, None));
        let (srcp, wkp) = (
            to_u32(&src[..pairs(c) * g.ps]),
            to_u32(&wk[..pairs(c) * 9 * c]),
        );
        let tb = time(&mut || {
            conv_planes_bf16(
                &mut dst,
                &srcp,
                &wkp,
                pairs(c),
                c,
                &g,
                &edges,
                Store::Set,
                None,
            )
        });
        let row = |name: &str, tf: f64, tb: f64, flops: f64| {
            let (a, b) = (flops / tf / 1e9, flops / tb / 1e9);
            println!(
                "| {c}ch {hw}x{hw} | {name} | {a:.1} | {:.0}% | {b:.1} | {:.0}% |",
                100.0 * a / pf,
                100.0 * b / pb
            );
        };
        row("conv_planes", tf, tb, conv_flops);
        // the same into a new image's output each call, as a pass writes
        // them (128 images: 2-8 MB, not in L2)
        let n = 128;
        let mut outs = vec![0f32; n * c * g.hw];
        let mut at = 0;
        let mut next = move || {
            at = (at + 1) % n;
            at * c * g.hw
        };
        let tf = time(&mut || {
            let d = &mut outs[next()..][..c * g.hw];
            conv_planes(d, &src, &wk, c, c, &g, &edges, Store::Set, None)
        });
        let tb = time(&mut || {
            let d = &mut outs[next()..][..c * g.hw];
            conv_planes_bf16(d, &srcp, &wkp, pairs(c), c, &g, &edges, Store::Set, None)
        });
        row("conv_planes, new dst", tf, tb, conv_flops);
        // and, as the passes of a step do, reading a residual or the BN
        // input of the BN-ReLU sums from planes written long before (128
        // images' worth, not in L2): the stores' reads
        let far = rnd(n * c * g.hw);
        let (mean, k, beta) = (rnd(c), rnd(c), rnd(c));
        let mut lanes = vec![0f32; 64 * c];
        let mut both = |bf16: bool, sums: bool| {
            let at = next();
            let d = &mut outs[at..][..c * g.hw];
            let near = &far[at..][..c * g.hw];
            let (store, stats) = if sums {
                let st = Stats {
                    x: near,
                    mean: &mean,
                    k: &k,
                    beta: &beta,
                    lanes: &mut lanes,
                };
                (Store::Set, Some(st))
            } else {
                (Store::Plus(near), None)
            };
            let mut st = stats;
            if bf16 {
                conv_planes_bf16(d, &srcp, &wkp, pairs(c), c, &g, &edges, store, st.as_mut())
            } else {
                conv_planes(d, &src, &wk, c, c, &g, &edges, store, st.as_mut())
            }
        };
        let tf = time(&mut || both(false, false));
        let tb = time(&mut || both(true, false));
        row("conv_planes, new dst + far residual", tf, tb, conv_flops);
        let tf = time(&mut || both(false, true));
        let tb = time(&mut || both(true, true));
        row(
            "conv_planes, new dst + far BN-ReLU sums",
            tf,
            tb,
            conv_flops,
        );
        // weight gradient: one group of images, as backward() makes them
        // (per precision; GROUP=n for both); timed per image
        let group = |bf16| {
            std::env::var("GROUP")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(weight_grad_group(bf16, &g))
        };
        let (fi, bi) = (group(false), group(true));
        let (d, p) = (rnd(fi * c * g.ps), rnd(fi * c * g.ps));
        let mut dwv = vec![0f32; c * c * 9 * 16];
        let tf = time(&mut || weight_grad_planes(&mut dwv, false, &d, &p, c, c, fi, &g, &edges));
        let (dl, ph) = (16 * g.hw.div_ceil(32), (g.ps / 2 + 16).next_multiple_of(16));
        let dq = to_u32(&rnd(bi * dq_stride(c, dl)));
        let pe = to_u32(&rnd(bi * c * ph));
        dwv.fill(0.0);
        let tb =
            time(&mut || weight_grad_planes_bf16(&mut dwv, false, &dq, &pe, c, c, bi, &g, ph, &pm));
        let (tf, tb) = (tf / fi as f64, tb / bi as f64);
        row("weight_grad_planes", tf, tb, conv_flops);
        std::hint::black_box((&dst, &dwv));
    }
}

/// The bf16 weight pairs are laid out as their docs say: `wp[q, k, o] =
/// (w[o, 2q, k], w[o, 2q + 1, k])` forward, `wp[p, k, c] = (w[2p, c, 8 -
/// k], w[2p + 1, c, 8 - k])` for the input gradient, rounded to bf16, a
/// zero half past an odd channel count.
#[test]
fn bf16_weight_pairs_follow_their_layout() {
    let mut r = Rand::new(37);
    for (cin, cout) in [(3, 8), (8, 5), (6, 16)] {
        let w: Vec<f32> = r
            .normal_vec(cout * cin * 9)
            .into_iter()
            .map(|x| x as f32)
            .collect();
        let at = |o: usize, c: usize, k: usize| w[(o * cin + c) * 9 + k];
        let half = |v: u32, hi: bool| if hi { v >> 16 } else { v & 0xffff };
        let (mut wf, mut wb) = (Vec::new(), Vec::new());
        pack_forward_bf16(&mut wf, &w, cin, cout);
        pack_backward_bf16(&mut wb, &w, cin, cout);
        assert_eq!(wf.len(), cin.div_ceil(2) * 9 * cout);
        assert_eq!(wb.len(), cout.div_ceil(2) * 9 * cin);
        for q in 0..cin.div_ceil(2) {
            for k in 0..9 {
                for o in 0..cout {
                    let e = wf[(q * 9 + k) * cout + o];
                    for (c, hi) in [(2 * q, false), (2 * q + 1, true)] {
                        let want = if c < cin {
                            to_bf16(at(o, c, k)) as u32
                        } else {
                            0
                        };
                        assert_eq!(half(e, hi), want, "forward {cin} {cout}: {q} {k} {o}");
                    }
                }
            }
        }
        for p in 0..cout.div_ceil(2) {
            for k in 0..9 {
                for c in 0..cin {
                    let e = wb[(p * 9 + k) * cin + c];
                    for (o, hi) in [(2 * p, false), (2 * p + 1, true)] {
                        let want = if o < cout {
                            to_bf16(at(o, c, 8 - k)) as u32
                        } else {
                            0
                        };
                        assert_eq!(half(e, hi), want, "backward {cin} {cout}: {p} {k} {c}");
                    }
                }
            }
        }
    }
}

/// The weight gradient's input pairs straight from a plane
/// ([`run_pairs_at`]) are bitwise the pairs of that plane written out in
/// zeros first ([`run_pairs`] of the padded plane, the old path), at even
/// and odd shifts, runs shorter and longer than the plane, values that
/// round (not bf16 numbers), a plane at the very start of the run; and
/// with a BN-ReLU applied as they are paired, the pairs of the BN-ReLU
/// plane written out (its zeros, where `0 * k + beta > 0`, stay zeros).
#[test]
fn pairs_in_place_are_the_pairs_of_the_padded_plane() {
    if !bf16_enabled() {
        println!(
            "SKIPPED: no AVX512-BF16 on this CPU (or RESGRAD_CONV=im2col): bf16 direct path unused"
        );
        return;
    }
    let mut r = Rand::new(41);
    for (n, shift, len) in [
        (64, 31, 64),
        (64, 32, 64),
        (35, 0, 32),
        (35, 1, 48),
        (1, 47, 32),
        (1024, 79, 560),
        (100, 3, 16),
    ] {
        let src: Vec<f32> = r
            .normal_vec(n + 7)
            .into_iter()
            .map(|x| x as f32 * 3.1)
            .collect();
        let mut padded = vec![0f32; 2 * len];
        for (i, &v) in src[..n].iter().enumerate() {
            if shift + i < padded.len() {
                padded[shift + i] = v;
            }
        }
        let (mut want, mut got) = (vec![7u32; len], vec![7u32; len]);
        run_pairs(&mut want, &padded, padded.len());
        run_pairs_at(&mut got, (&src, None), n, shift);
        assert_eq!(got, want, "n {n} shift {shift} len {len}");
        assert!(got.iter().any(|&p| p != 0));
        // the BN-ReLU's plane (beta > 0: a zero input maps to a positive
        // value, so the padding must not go through it)
        let (m, k, b) = (-0.3f32, 1.7f32, 0.2f32);
        let mut act = vec![0f32; n];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F present (bf16_enabled above); both n long.
        unsafe {
            super::avx512::bn_relu(&mut act, &src[..n], m, k, b)
        };
        assert!(n < 32 || (act.contains(&0.0) && act.iter().any(|&v| v > 0.0)));
        let mut padded = vec![0f32; 2 * len];
        for (i, &v) in act.iter().enumerate() {
            if shift + i < padded.len() {
                padded[shift + i] = v;
            }
        }
        run_pairs(&mut want, &padded, padded.len());
        run_pairs_at(&mut got, (&src, Some([m, k, b])), n, shift);
        assert_eq!(got, want, "BN-ReLU: n {n} shift {shift} len {len}");
    }
}

/// [`planes_of`] hands out a stored operand's planes where they lie (no
/// copy: `tmp` untouched) and a computed one's (BN-ReLU input, BN input
/// gradient with and without its ReLU) written into `tmp`, bitwise those
/// of the operand written out whole (`stored`, the im2col path's); and
/// [`pad_pairs`] of a computed input is bitwise that of the written-out
/// one, an odd `cin` (a zero channel in the last pair) included.
#[test]
fn planes_of_borrows_stored_planes_and_computes_the_rest() {
    if !enabled() {
        println!("SKIPPED: no AVX-512F on this CPU (or RESGRAD_CONV=im2col): direct path unused");
        return;
    }
    let mut r = Rand::new(47);
    let mut v = |k: usize| -> Vec<f32> { r.normal_vec(k).into_iter().map(|x| x as f32).collect() };
    let s = shape(2, 3, 8, 8, 5);
    let g = Grid::of(&s);
    let hw = g.hw;
    let (x, mean, k, beta) = (v(2 * 3 * hw), v(3), v(3), v(3));
    let (dy, y, omean, obeta) = (v(2 * 5 * hw), v(2 * 5 * hw), v(5), v(5));
    let c3 = v(3 * 5);
    let coef: Vec<(f32, f32, f32)> = c3.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
    let mut tmp = vec![f32::NAN; 3 * hw];
    // stored: a borrow of x, tmp untouched
    let plain = ConvInput::Plain(&x[..]);
    let got = planes_of(&plain, 1, 3, &g, 1..3, &mut tmp);
    assert_eq!(got.as_ptr(), x[(3 + 1) * hw..].as_ptr());
    assert_eq!(got.len(), 2 * hw);
    assert!(tmp.iter().all(|t| t.is_nan()));
    // computed: the planes of the written-out operand, in tmp
    let bn_relu = ConvInput::BnRelu {
        x: &x,
        mean: &mean,
        k: &k,
        beta: &beta,
    };
    let mut buf = Vec::new();
    let want = bn_relu.stored(&mut buf, &s).to_vec();
    let at = tmp.as_ptr();
    for (i, cs) in [(0, 0..3), (1, 2..3), (1, 0..1)] {
        let got = planes_of(&bn_relu, i, 3, &g, cs.clone(), &mut tmp);
        assert_eq!(got.as_ptr(), at);
        let want = &want[(i * 3 + cs.start) * hw..][..cs.len() * hw];
        assert!(got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    for obeta in [None, Some(&obeta[..])] {
        let bn = ConvGradOut::Bn {
            dy: &dy,
            x: &y,
            mean: &omean,
            beta: obeta,
            coef: &coef,
        };
        let want = bn.stored(&mut buf, &s).to_vec();
        let mut tmp = vec![f32::NAN; 5 * hw];
        let got = planes_of(&bn, 1, 5, &g, 0..5, &mut tmp);
        let want = &want[5 * hw..][..5 * hw];
        assert!(got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    if !bf16_enabled() {
        return;
    }
    let written = bn_relu.stored(&mut buf, &s).to_vec();
    let len = pairs(3) * g.ps;
    let (mut a, mut b) = (vec![7u32; len], vec![9u32; len]);
    pad_pairs(&mut a, &bn_relu, 1, 3, &g, true, &mut tmp);
    pad_pairs(
        &mut b,
        &ConvInput::Plain(&written[..]),
        1,
        3,
        &g,
        true,
        &mut tmp,
    );
    assert_eq!(a, b);
    assert!(a.iter().any(|&p| p >> 16 != 0) && a[g.ps..].iter().all(|&p| p >> 16 == 0));
}

/// A BN-ReLU input's pairs made as the pairing kernels read it (stop 19)
/// against the plane made first ([`fill_input`] into a scratch plane, then
/// paired, as before): one image of 16 channels 32x32, the forward's
/// channel pairs ([`pad_pairs`]) and the weight gradient's position pairs
/// ([`run_pairs_at`]), one thread, best of 60 timings of ~2 ms of CPU time.
/// `cargo test --release --lib pairing_rates -- --ignored --nocapture`
#[test]
#[ignore]
fn pairing_rates() {
    if !bf16_enabled() {
        println!("SKIPPED: needs AVX-512F and AVX512-BF16");
        return;
    }
    let time = best_cpu_time;
    let mut r = Rand::new(43);
    let (c, h) = (16, 32);
    let s = shape(1, c, h, h, c);
    let g = Grid::of(&s);
    let x: Vec<f32> = r.normal_vec(c * g.hw).iter().map(|&v| v as f32).collect();
    let (mean, k, beta) = (vec![0.1f32; c], vec![1.3f32; c], vec![0.05f32; c]);
    let inp = ConvInput::BnRelu {
        x: &x,
        mean: &mean,
        k: &k,
        beta: &beta,
    };
    let mut pp = vec![0u32; pairs(c) * g.ps];
    let mut tmp = vec![0f32; 2 * g.hw];
    let fused = time(&mut || pad_pairs(&mut pp, &inp, 0, c, &g, false, &mut tmp));
    let made = time(&mut || {
        let (lo, hi) = tmp.split_at_mut(g.hw);
        pad_pair_planes(&mut pp, c, &g, false, |q, d| {
            fill_input(lo, &inp, 0, c, &g, 2 * q);
            fill_input(hi, &inp, 0, c, &g, 2 * q + 1);
            pair_planes(d, (lo, None), (hi, None))
        })
    });
    let ph = (g.ps / 2 + 16).next_multiple_of(16);
    let mut pe = vec![0u32; c * ph];
    let fused_w = time(&mut || {
        for (ch, e) in pe.chunks_exact_mut(ph).enumerate() {
            run_pairs_at(e, half_of(&inp, 0, c, &g, ch, &mut tmp), g.hw, g.first());
        }
    });
    let made_w = time(&mut || {
        for (ch, e) in pe.chunks_exact_mut(ph).enumerate() {
            fill_input(&mut tmp[..g.hw], &inp, 0, c, &g, ch);
            run_pairs_at(e, (&tmp[..g.hw], None), g.hw, g.first());
        }
    });
    println!(
        "| pairs of a BN-ReLU input, 16ch 32x32 | made first, us | as paired, us | speed-up |"
    );
    println!("|---|---|---|---|");
    for (what, a, b) in [
        ("channel pairs (forward)", made, fused),
        ("position pairs (weight gradient)", made_w, fused_w),
    ] {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2}x |",
            a * 1e6,
            b * 1e6,
            a / b
        );
    }
}

/// Each kernel steps the prefetch queue ([`crate::ops::conv2d::ahead`]) as
/// often as the batch loops pace it by (`conv_tiles` times the input
/// channels or pairs; the weight gradients once per output block, input
/// channel and kernel row): a count off by much would bunch the prefetches
/// up or leave the next image's planes half fetched.
#[test]
fn kernels_step_the_prefetch_queue_as_counted() {
    use crate::ops::conv2d::ahead::count_steps;
    if !enabled() {
        return;
    }
    for &(hw, c) in &[(32, 16), (16, 32), (8, 64), (32, 8), (6, 24)] {
        let g = Grid::of(&shape(1, c, hw, hw, c));
        let mut edges = Vec::new();
        edge_masks(&mut edges, &g);
        let mut dst = vec![0f32; c * g.hw];
        let (src, wk) = (vec![0f32; c * g.ps], vec![0f32; c * 9 * c]);
        let steps =
            count_steps(|| conv_planes(&mut dst, &src, &wk, c, c, &g, &edges, Store::Set, None));
        assert_eq!(steps, conv_tiles(&g, c) * c, "conv_planes {hw}x{hw} {c}");
        let mut dwv = vec![0f32; c * c * 9 * 16];
        let steps =
            count_steps(|| weight_grad_planes(&mut dwv, true, &src, &src, c, c, 1, &g, &edges));
        assert_eq!(
            steps,
            c / TILE_O * c * 3,
            "weight_grad_planes {hw}x{hw} {c}"
        );
        if !bf16_enabled() {
            continue;
        }
        let (srcp, wkp) = (vec![0u32; pairs(c) * g.ps], vec![0u32; pairs(c) * 9 * c]);
        let steps = count_steps(|| {
            conv_planes_bf16(
                &mut dst,
                &srcp,
                &wkp,
                pairs(c),
                c,
                &g,
                &edges,
                Store::Set,
                None,
            )
        });
        assert_eq!(
            steps,
            conv_tiles(&g, c) * pairs(c),
            "conv_planes_bf16 {hw}x{hw} {c}"
        );
        let mut pmasks = Vec::new();
        pair_masks(&mut pmasks, &edges);
        let (dl, ph) = (16 * pmasks.len(), (g.ps / 2 + 16).next_multiple_of(16));
        let (d, pe) = (vec![0u32; c * dl], vec![0u32; c * ph]);
        let steps = count_steps(|| {
            weight_grad_planes_bf16(&mut dwv, true, &d, &pe, c, c, 1, &g, ph, &pmasks)
        });
        assert_eq!(
            steps,
            c / TILE_O * c * 3,
            "weight_grad_planes_bf16 {hw}x{hw} {c}"
        );
    }
}

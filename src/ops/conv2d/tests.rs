use super::*;
use crate::gradcheck::{check_layer, Rand};

#[allow(clippy::too_many_arguments)]
fn shape(
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Conv2dShape {
    Conv2dShape {
        n,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        stride,
        pad,
    }
}

/// `inp[n, c, y, x]`, or 0 in the padding.
fn at(inp: &[f64], s: &Conv2dShape, n: usize, c: usize, y: isize, x: isize) -> f64 {
    if y < 0 || x < 0 || y >= s.h as isize || x >= s.w as isize {
        return 0.0;
    }
    inp[((n * s.cin + c) * s.h + y as usize) * s.w + x as usize]
}

/// The defining sums, loop by loop: returns (out, dinp, dw) for `dout`.
fn naive(inp: &[f64], w: &[f64], dout: &[f64], s: &Conv2dShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = (s.oh(), s.ow());
    let mut out = vec![0.0; s.n * s.cout * oh * ow];
    let mut dinp = vec![0.0; inp.len()];
    let mut dw = vec![0.0; w.len()];
    for n in 0..s.n {
        for o in 0..s.cout {
            for y in 0..oh {
                for x in 0..ow {
                    let oi = ((n * s.cout + o) * oh + y) * ow + x;
                    for c in 0..s.cin {
                        for i in 0..s.kh {
                            for j in 0..s.kw {
                                let iy = (y * s.stride + i) as isize - s.pad as isize;
                                let ix = (x * s.stride + j) as isize - s.pad as isize;
                                let wi = ((o * s.cin + c) * s.kh + i) * s.kw + j;
                                let v = at(inp, s, n, c, iy, ix);
                                out[oi] += w[wi] * v;
                                dw[wi] += dout[oi] * v;
                                if iy >= 0 && ix >= 0 && iy < s.h as isize && ix < s.w as isize {
                                    dinp[((n * s.cin + c) * s.h + iy as usize) * s.w
                                        + ix as usize] += dout[oi] * w[wi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (out, dinp, dw)
}

#[test]
fn hand_computed_stride1() {
    // inp = [[1, 2, 3],      w = [[1, 2],
    //        [4, 5, 6],           [3, 4]]
    //        [7, 8, 9]]
    // out[y, x] = w00 x[y,x] + w01 x[y,x+1] + w10 x[y+1,x] + w11 x[y+1,x+1]
    // out[0,0] = 1 + 4 + 12 + 20 = 37    out[0,1] = 2 + 6 + 15 + 24 = 47
    // out[1,0] = 4 + 10 + 21 + 32 = 67   out[1,1] = 5 + 12 + 24 + 36 = 77
    let inp: Vec<f64> = (1..=9).map(f64::from).collect();
    let w = [1.0, 2.0, 3.0, 4.0];
    let s = shape(1, 1, 3, 3, 1, 2, 2, 1, 0);
    let mut ws = ConvWorkspace::default();
    let mut out = [0.0; 4];
    conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
    assert_eq!(out, [37.0, 47.0, 67.0, 77.0]);
    // dout = all ones: dinp[a, b] = sum of the w taps whose window covers (a, b)
    //   = [[w00, w00+w01, w01], [w00+w10, w00+w01+w10+w11, w01+w11], [w10, w10+w11, w11]]
    //   = [[1, 3, 2], [4, 10, 6], [3, 7, 4]]
    // dw[i, j] = sum over the 4 windows of x[y+i, x+j]:
    //   dw00 = 1+2+4+5 = 12, dw01 = 2+3+5+6 = 16, dw10 = 4+5+7+8 = 24, dw11 = 5+6+8+9 = 28
    // (added onto 0.5 to check accumulation)
    let mut dinp = [0.5; 9];
    let mut dw = [0.5; 4];
    conv2d_backward(Some(&mut dinp), &mut dw, &[1.0; 4], &inp, &w, &s, &mut ws).unwrap();
    assert_eq!(dinp, [1.5, 3.5, 2.5, 4.5, 10.5, 6.5, 3.5, 7.5, 4.5]);
    assert_eq!(dw, [12.5, 16.5, 24.5, 28.5]);
}

#[test]
fn hand_computed_stride2_pad1() {
    // same inp and w; stride 2, pad 1: oh = floor((3 + 2 - 2) / 2) + 1 = 2 (floor drops
    // the last padded row/column). Output (y, x) reads rows 2y + i - 1, cols 2x + j - 1:
    // out[0,0] = w11 x00                           = 4*1               = 4
    // out[0,1] = w10 x01 + w11 x02                 = 3*2 + 4*3         = 18
    // out[1,0] = w01 x10 + w11 x20                 = 2*4 + 4*7         = 36
    // out[1,1] = w00 x11 + w01 x12 + w10 x21 + w11 x22 = 5 + 12 + 24 + 36 = 77
    let inp: Vec<f64> = (1..=9).map(f64::from).collect();
    let w = [1.0, 2.0, 3.0, 4.0];
    let s = shape(1, 1, 3, 3, 1, 2, 2, 2, 1);
    assert_eq!((s.oh(), s.ow()), (2, 2));
    let mut ws = ConvWorkspace::default();
    let mut out = [0.0; 4];
    conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
    assert_eq!(out, [4.0, 18.0, 36.0, 77.0]);
    // dout = [g00, g01, g10, g11] = [1, 2, 3, 4]; each term above sends g * w to its x:
    // dinp: x00 += 1*4; x01 += 2*3, x02 += 2*4; x10 += 3*2, x20 += 3*4;
    //       x11 += 4*1, x12 += 4*2, x21 += 4*3, x22 += 4*4
    //   = [4, 6, 8, 6, 4, 8, 12, 12, 16]
    // dw: w00 = 4*x11 = 20; w01 = 3*x10 + 4*x12 = 12 + 24 = 36;
    //     w10 = 2*x01 + 4*x21 = 4 + 32 = 36; w11 = 1*x00 + 2*x02 + 3*x20 + 4*x22 = 1+6+21+36 = 64
    let mut dinp = [0.0; 9];
    let mut dw = [0.0; 4];
    conv2d_backward(
        Some(&mut dinp),
        &mut dw,
        &[1.0, 2.0, 3.0, 4.0],
        &inp,
        &w,
        &s,
        &mut ws,
    )
    .unwrap();
    assert_eq!(dinp, [4.0, 6.0, 8.0, 6.0, 4.0, 8.0, 12.0, 12.0, 16.0]);
    assert_eq!(dw, [20.0, 36.0, 36.0, 64.0]);
}

#[test]
fn gradcheck_random_shapes() {
    let mut r = Rand::new(3);
    // (n, cin, h, w, cout, kh, kw, stride, pad): fixed structural cases ...
    let mut cases = vec![
        shape(1, 1, 3, 3, 1, 2, 2, 1, 0),
        shape(2, 3, 7, 6, 4, 3, 3, 1, 1), // 3x3 "same", odd height
        shape(3, 2, 9, 8, 3, 3, 3, 2, 1), // stride 2, odd sizes
        shape(2, 3, 8, 6, 4, 3, 3, 2, 1), // stride 2, even sizes: the phase path
        shape(2, 3, 6, 8, 5, 1, 1, 2, 0), // 1x1 stride 2, even sizes: one phase
        shape(2, 2, 8, 8, 3, 5, 5, 2, 2), // 5x5 stride 2 pad 2: phases shifted both ways
        shape(1, 5, 5, 5, 6, 1, 1, 1, 0), // 1x1 fast path, batch 1
        shape(3, 4, 7, 8, 5, 1, 1, 2, 0), // 1x1 stride-2 projection
        shape(2, 2, 6, 5, 3, 3, 1, 1, 2), // non-square 3x1, pad 2
        shape(2, 3, 5, 7, 2, 1, 3, 2, 2), // 1x3, stride 2, pad 2
        shape(2, 2, 4, 4, 3, 3, 3, 3, 0), // stride 3 leaves a remainder
        shape(2, 2, 5, 6, 3, 1, 3, 1, 1), // 1x3 pad 1: ow == w (contiguous im2col), oh = h + 2
        shape(1, 2, 4, 5, 2, 5, 5, 1, 2), // 5x5 pad 2: wrap-around by 2 columns
    ];
    // ... plus random ones
    for _ in 0..4 {
        let (kh, kw) = (1 + r.usize_below(3), 1 + r.usize_below(3));
        let pad = r.usize_below(3);
        cases.push(shape(
            1 + r.usize_below(3),
            1 + r.usize_below(3),
            kh + r.usize_below(6),
            kw + r.usize_below(6),
            1 + r.usize_below(3),
            kh,
            kw,
            1 + r.usize_below(2),
            pad,
        ));
    }
    let mut worst = 0.0f64;
    for s in cases {
        let out_len = s.n * s.cout * s.oh() * s.ow();
        let mut params = vec![
            r.normal_vec(s.n * s.cin * s.h * s.w),
            r.normal_vec(s.cout * s.cin * s.kh * s.kw),
        ];
        let (mut wsf, mut wsb) = (ConvWorkspace::default(), ConvWorkspace::default());
        let err = check_layer(
            &mut params,
            out_len,
            |p, out| conv2d_forward(out, &p[0], &p[1], &s, &mut wsf).unwrap(),
            |p, dout, g| {
                let (gx, gw) = g.split_at_mut(1);
                conv2d_backward(
                    Some(&mut gx[0]),
                    &mut gw[0],
                    dout,
                    &p[0],
                    &p[1],
                    &s,
                    &mut wsb,
                )
                .unwrap()
            },
            &mut r,
        );
        assert!(err < 1e-6, "conv2d {s:?}: max rel err {err:e}");
        worst = worst.max(err);
    }
    println!("conv2d gradcheck (input and weight): max rel err {worst:e}");
}

#[test]
fn threaded_matches_naive_reference() {
    let mut r = Rand::new(4);
    let mut ws = ConvWorkspace::default(); // one workspace across shapes and pools
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for s in [
            shape(5, 3, 9, 7, 4, 3, 3, 1, 1),
            shape(7, 4, 8, 9, 3, 3, 3, 2, 1),
            shape(4, 6, 6, 6, 5, 1, 1, 1, 0),
            shape(5, 4, 9, 8, 6, 1, 1, 2, 0),
            shape(1, 2, 5, 6, 3, 3, 2, 1, 2),
            shape(3, 3, 6, 7, 2, 5, 5, 1, 2),
            shape(5, 2, 4, 6, 3, 2, 3, 1, 1),
            // images smaller than the kernel (once an im2col panic)
            shape(2, 3, 1, 1, 2, 3, 3, 1, 1),
            shape(2, 2, 1, 5, 3, 3, 3, 1, 1),
            shape(3, 2, 2, 1, 2, 3, 3, 2, 1),
        ] {
            let inp = r.normal_vec(s.n * s.cin * s.h * s.w);
            let w = r.normal_vec(s.cout * s.cin * s.kh * s.kw);
            let dout = r.normal_vec(s.n * s.cout * s.oh() * s.ow());
            let (want_out, want_dinp, want_dw) = naive(&inp, &w, &dout, &s);
            let run = |ws: &mut ConvWorkspace<f64>| {
                pool.install(|| {
                    assert_eq!(rayon::current_num_threads(), threads);
                    let mut out = vec![f64::NAN; want_out.len()];
                    conv2d_forward(&mut out, &inp, &w, &s, ws).unwrap();
                    let (mut dinp, mut dw) = (vec![0.0; inp.len()], vec![0.0; w.len()]);
                    conv2d_backward(Some(&mut dinp), &mut dw, &dout, &inp, &w, &s, ws).unwrap();
                    (out, dinp, dw)
                })
            };
            let got = run(&mut ws);
            for (name, a, b) in [
                ("out", &got.0, &want_out),
                ("dinp", &got.1, &want_dinp),
                ("dw", &got.2, &want_dw),
            ] {
                for (x, y) in a.iter().zip(b.iter()) {
                    assert!(
                        (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                        "{threads} threads {s:?} {name}: {x} vs {y}"
                    );
                }
            }
            // bit-reproducible for a fixed thread count
            assert_eq!(
                run(&mut ws),
                got,
                "{threads} threads {s:?}: not reproducible"
            );
        }
    }
}

fn is_shape_err(e: Error, what: &str) -> bool {
    matches!(&e, Error::Shape { op: "conv2d", what: w, .. } if *w == what)
}

#[test]
fn bad_params_are_errors_not_panics() {
    let good = shape(2, 3, 5, 5, 4, 3, 3, 1, 1);
    let mut ws = ConvWorkspace::<f32>::default();
    let bad = [
        Conv2dShape { n: 0, ..good },
        Conv2dShape { cin: 0, ..good },
        Conv2dShape { h: 0, ..good },
        Conv2dShape { w: 0, ..good },
        Conv2dShape { cout: 0, ..good },
        Conv2dShape { kh: 0, ..good },
        Conv2dShape { kw: 0, ..good },
        Conv2dShape { stride: 0, ..good },
        Conv2dShape { kh: 8, ..good }, // 8 > 5 + 2*1
        Conv2dShape {
            kw: 4,
            pad: 0,
            h: 9,
            w: 3,
            ..good
        }, // 4 > 3
        Conv2dShape {
            pad: usize::MAX,
            ..good
        },
        Conv2dShape {
            n: usize::MAX / 2,
            ..good
        },
    ];
    for s in bad {
        let e = s.validate().unwrap_err();
        assert!(
            matches!(e, Error::InvalidParam { op: "conv2d", .. }),
            "{s:?}: {e}"
        );
        let e = conv2d_forward(&mut [0.0], &[0.0], &[0.0], &s, &mut ws).unwrap_err();
        assert!(e.to_string().starts_with("conv2d"), "{e}");
        let e = conv2d_backward(None, &mut [0.0], &[0.0], &[0.0], &[0.0], &s, &mut ws).unwrap_err();
        assert!(e.to_string().starts_with("conv2d"), "{e}");
    }
    // a kernel exactly the padded size is fine: 7 = 5 + 2*1, one output
    let s = Conv2dShape {
        kh: 7,
        kw: 7,
        ..good
    };
    s.validate().unwrap();
    assert_eq!((s.oh(), s.ow()), (1, 1));
}

#[test]
fn wrong_buffer_lengths_name_the_buffer() {
    let s = shape(2, 3, 5, 5, 4, 3, 3, 2, 1); // oh = ow = 3
    let (ni, nw, no) = (2 * 3 * 25, 4 * 3 * 9, 2 * 4 * 9);
    let (inp, w, out) = (vec![0.0f32; ni], vec![0.0f32; nw], vec![0.0f32; no]);
    let mut ws = ConvWorkspace::default();
    let mut o = out.clone();
    assert!(is_shape_err(
        conv2d_forward(&mut o[1..], &inp, &w, &s, &mut ws).unwrap_err(),
        "output"
    ));
    assert!(is_shape_err(
        conv2d_forward(&mut o, &inp[1..], &w, &s, &mut ws).unwrap_err(),
        "input"
    ));
    assert!(is_shape_err(
        conv2d_forward(&mut o, &inp, &w[1..], &s, &mut ws).unwrap_err(),
        "weight"
    ));
    conv2d_forward(&mut o, &inp, &w, &s, &mut ws).unwrap();
    let (mut dinp, mut dw) = (vec![7.0f32; ni], vec![7.0f32; nw]);
    let e =
        conv2d_backward(Some(&mut dinp), &mut dw, &out[1..], &inp, &w, &s, &mut ws).unwrap_err();
    assert!(is_shape_err(e, "dout"));
    let e =
        conv2d_backward(Some(&mut dinp[1..]), &mut dw, &out, &inp, &w, &s, &mut ws).unwrap_err();
    assert!(is_shape_err(e, "dinp"));
    // a bad dweight is caught before dinp is touched
    let e =
        conv2d_backward(Some(&mut dinp), &mut dw[1..], &out, &inp, &w, &s, &mut ws).unwrap_err();
    assert!(is_shape_err(e, "dweight"));
    assert!(dinp.iter().all(|&v| v == 7.0));
    let e = conv2d_backward_input(&mut dinp, &out, &w[1..], &s, &mut ws).unwrap_err();
    assert!(is_shape_err(e, "weight"));
    let e = conv2d_backward_weight(&mut dw, &out, &inp[1..], &s, &mut ws).unwrap_err();
    assert!(is_shape_err(e, "input"));
    let msg = conv2d_backward_weight(&mut dw, &out, &inp[2..], &s, &mut ws)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("conv2d") && msg.contains("input"), "{msg}");
}

/// The bf16 passes (`ConvWorkspace` in `Precision::Bf16`) against the f32
/// passes on operands already rounded to bf16: the products are then the
/// same exact values and only the f32 summation order differs, so the
/// outputs agree to `gemm_bf16`'s accumulation bound, `2.01 (K + 1) 2^-24`
/// of `Σ|a||b|` per GEMM (col2im adds f32 values in the same order on both
/// paths). Checked here norm-wise against `1e-5`, which that bound clears
/// for every reduction length below (K <= 16 * 9 + 1); a missing or wrong
/// rounding would err by ~1e-3.
#[test]
fn bf16_passes_match_f32_on_bf16_rounded_operands() {
    use crate::gemm_bf16::{round_bf16, supported};
    if !supported() {
        eprintln!("skipped: no AVX512-BF16");
        return;
    }
    let mut r = Rand::new(19);
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    for s in [
        shape(4, 16, 8, 8, 16, 3, 3, 1, 1), // the direct kernels' shape in f32
        shape(3, 16, 8, 8, 32, 3, 3, 2, 1), // downsampling
        shape(2, 16, 8, 8, 32, 1, 1, 2, 0), // projection shortcut
        shape(2, 8, 5, 5, 16, 1, 1, 1, 0),  // 1x1: no im2col
        shape(3, 3, 9, 7, 5, 3, 2, 1, 1),   // odd everything
    ] {
        let rounded = |v: Vec<f64>| {
            v.into_iter()
                .map(|x| round_bf16(x as f32))
                .collect::<Vec<f32>>()
        };
        let inp = rounded(r.normal_vec(s.n * s.cin * s.h * s.w));
        let w = rounded(r.normal_vec(s.cout * s.cin * s.kh * s.kw));
        let dout = rounded(r.normal_vec(s.n * s.cout * s.oh() * s.ow()));
        let run = |p: Precision| {
            let mut ws = ConvWorkspace::<f32>::default();
            ws.set_precision(p);
            let mut out = vec![0f32; dout.len()];
            conv2d_forward(&mut out, &inp, &w, &s, &mut ws).unwrap();
            let (mut dinp, mut dw) = (vec![0f32; inp.len()], vec![0f32; w.len()]);
            conv2d_backward(Some(&mut dinp), &mut dw, &dout, &inp, &w, &s, &mut ws).unwrap();
            (out, dinp, dw)
        };
        let (a, b) = (run(Precision::F32), run(Precision::Bf16));
        for (what, x, y) in [
            ("out", &a.0, &b.0),
            ("dinp", &a.1, &b.1),
            ("dw", &a.2, &b.2),
        ] {
            let d: Vec<f32> = x.iter().zip(y.iter()).map(|(p, q)| p - q).collect();
            let rel = norm(&d) / norm(x);
            assert!(rel < 1e-5, "{s:?} {what}: relative error {rel:e}");
        }
    }
}

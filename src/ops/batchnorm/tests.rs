use super::test_args::{aff, grads, run, saved, stats};
use super::*;
use crate::gradcheck::{check_layer, Rand};

/// Training forward into fresh buffers: (out, mean, rstd, running_mean, running_var).
#[allow(clippy::type_complexity)]
fn train<T: Scalar>(
    inp: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    s: BnShape,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let mut out = vec![T::zero(); s.len()];
    let (mut mean, mut rstd) = (vec![T::zero(); s.c], vec![T::zero(); s.c]);
    let (mut rm, mut rv) = (vec![T::zero(); s.c], vec![T::one(); s.c]);
    batchnorm_forward_train(
        &mut out,
        stats(&mut mean, &mut rstd),
        inp,
        aff(gamma, beta),
        run(&mut rm, &mut rv, BN_MOMENTUM, eps),
        s,
    )
    .unwrap();
    (out, mean, rstd, rm, rv)
}

#[test]
fn hand_computed_case() {
    // N=2, C=1, HW=1, x = [1, 3]: mean 2, biased var ((1-2)^2 + (3-2)^2)/2 = 1,
    // rstd = 1/sqrt(1 + eps), xhat = [-1, 1] * rstd; gamma 1, beta 0 => y = xhat
    let s = BnShape { n: 2, c: 1, hw: 1 };
    let r = 1.0 / (1.0 + BN_EPS).sqrt();
    let (out, mean, rstd, rm, rv) = train(&[1.0f64, 3.0], &[1.0], &[0.0], BN_EPS, s);
    assert_eq!(mean, [2.0]);
    assert!((rstd[0] - r).abs() < 1e-15);
    assert!(
        (out[0] + r).abs() < 1e-15 && (out[1] - r).abs() < 1e-15,
        "{out:?}"
    );
    // running: 0.9 * 0 + 0.1 * 2 = 0.2; 0.9 * 1 + 0.1 * (1 * 2/1) = 1.1 (unbiased var 2)
    assert!(
        (rm[0] - 0.2).abs() < 1e-15 && (rv[0] - 1.1).abs() < 1e-15,
        "{rm:?} {rv:?}"
    );
    // gamma 2, beta 0.5: y = 2 xhat + 0.5
    let (out, ..) = train(&[1.0f64, 3.0], &[2.0], &[0.5], BN_EPS, s);
    assert!((out[0] - (0.5 - 2.0 * r)).abs() < 1e-15 && (out[1] - (0.5 + 2.0 * r)).abs() < 1e-15);

    // Backward with eps = 1 for round numbers: rstd = 1/sqrt(2) =: r, xhat = [-r, r].
    // dy = [1, 0], gamma = 1, M = 2: sum dy = 1, sum dy xhat = -r
    // dx_0 = r/2 (2*1 - 1 - (-r)(-r)) = r/2 (1 - 1/2) = r/4
    // dx_1 = r/2 (2*0 - 1 - ( r)(-r)) = r/2 (-1 + 1/2) = -r/4
    // dgamma = -r, dbeta = 1
    let (_, mean, rstd, ..) = train(&[1.0f64, 3.0], &[1.0], &[0.0], 1.0, s);
    let r = 0.5f64.sqrt();
    let (mut dx, mut dg, mut db) = ([0.0f64; 2], [0.0], [0.0]);
    batchnorm_backward(
        &mut dx,
        grads(&mut dg, &mut db),
        &[1.0, 0.0],
        saved(&[1.0, 3.0], &mean, &rstd, &[1.0], &[]),
        s,
    )
    .unwrap();
    assert!(
        (dx[0] - r / 4.0).abs() < 1e-15 && (dx[1] + r / 4.0).abs() < 1e-15,
        "{dx:?}"
    );
    assert!((dg[0] + r).abs() < 1e-15 && db[0] == 1.0, "{dg:?} {db:?}");
}

#[test]
fn running_stats_match_hand_computed_values() {
    // N=2, C=2, HW=2; x[n][c][p]:
    //   n0: c0 [1, 2], c1 [0,  0]
    //   n1: c0 [3, 6], c1 [4, -4]
    // c0 values 1,2,3,6: mean 3, biased var (4+1+0+9)/4 = 3.5, unbiased 14/3
    // c1 values 0,0,4,-4: mean 0, biased var 32/4 = 8, unbiased 32/3
    let s = BnShape { n: 2, c: 2, hw: 2 };
    let x = [1.0, 2.0, 0.0, 0.0, 3.0, 6.0, 4.0, -4.0];
    let (g, b) = ([1.0, 1.0], [0.0, 0.0]);
    let mut out = [0.0f64; 8];
    let (mut mean, mut rstd) = ([0.0; 2], [0.0; 2]);
    let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
    batchnorm_forward_train(
        &mut out,
        stats(&mut mean, &mut rstd),
        &x,
        aff(&g, &b),
        run(&mut rm, &mut rv, 0.1, BN_EPS),
        s,
    )
    .unwrap();
    assert_eq!(mean, [3.0, 0.0]);
    assert!((rstd[0] - 1.0 / (3.5 + BN_EPS).sqrt()).abs() < 1e-15);
    assert!((rstd[1] - 1.0 / (8.0 + BN_EPS).sqrt()).abs() < 1e-15);
    // running_mean = 0.9 * [0.5, 0] + 0.1 * [3, 0] = [0.75, 0]
    // running_var  = 0.9 * [1, 2] + 0.1 * [14/3, 32/3] = [0.9 + 1.4/3, 1.8 + 3.2/3]
    assert!((rm[0] - 0.75).abs() < 1e-15 && rm[1] == 0.0, "{rm:?}");
    assert!((rv[0] - (0.9 + 1.4 / 3.0)).abs() < 1e-14, "{rv:?}");
    assert!((rv[1] - (1.8 + 3.2 / 3.0)).abs() < 1e-14, "{rv:?}");
    // the same in f32, to f32 precision
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut out32 = [0.0f32; 8];
    let (mut mean32, mut rstd32) = ([0.0f32; 2], [0.0f32; 2]);
    let (mut rm32, mut rv32) = ([0.5f32, 0.0], [1.0f32, 2.0]);
    batchnorm_forward_train(
        &mut out32,
        stats(&mut mean32, &mut rstd32),
        &x32,
        aff(&[1.0f32; 2], &[0.0f32; 2]),
        run(&mut rm32, &mut rv32, 0.1, BN_EPS),
        s,
    )
    .unwrap();
    for (a, b) in rv32.iter().zip(&rv) {
        assert!((a.f64() - b).abs() < 1e-6, "{rv32:?}");
    }
    for (a, b) in out32.iter().zip(&out) {
        assert!((a.f64() - b).abs() < 1e-6, "{out32:?}");
    }
    // momentum 1 replaces the running stats; momentum 0 keeps them
    let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
    batchnorm_forward_train(
        &mut out,
        stats(&mut mean, &mut rstd),
        &x,
        aff(&g, &b),
        run(&mut rm, &mut rv, 1.0, BN_EPS),
        s,
    )
    .unwrap();
    assert!(
        rm == [3.0, 0.0]
            && (rv[0] - 14.0 / 3.0).abs() < 1e-15
            && (rv[1] - 32.0 / 3.0).abs() < 1e-14
    );
    let (mut rm, mut rv) = ([0.5, 0.0], [1.0, 2.0]);
    batchnorm_forward_train(
        &mut out,
        stats(&mut mean, &mut rstd),
        &x,
        aff(&g, &b),
        run(&mut rm, &mut rv, 0.0, BN_EPS),
        s,
    )
    .unwrap();
    assert!(rm == [0.5, 0.0] && rv == [1.0, 2.0]);
}

/// The eval-mode BN-ReLU in one pass gives the bits of the BN and then the
/// ReLU (`v <= 0` to +0, NaN kept), on a tensor large enough to run in
/// parallel, in f32 and f64.
#[test]
fn eval_bn_relu_is_bn_then_relu() {
    fn check<T: Scalar>() {
        let mut r = Rand::new(4);
        let s = BnShape {
            n: 6,
            c: 5,
            hw: 1000,
        };
        let mut x: Vec<T> = r.normal_vec(s.len()).into_iter().map(T::of).collect();
        x[7] = T::of(f64::NAN);
        let v = |r: &mut Rand, n| -> Vec<T> { r.normal_vec(n).into_iter().map(T::of).collect() };
        let (g, b, rm) = (v(&mut r, 5), v(&mut r, 5), v(&mut r, 5));
        let rv: Vec<T> = v(&mut r, 5).into_iter().map(|a| a * a).collect();
        let (mut two, mut one) = (vec![T::zero(); s.len()], vec![T::zero(); s.len()]);
        batchnorm_forward_eval(&mut two, &x, aff(&g, &b), &rm, &rv, BN_EPS, s).unwrap();
        crate::ops::activation::relu_inplace(&mut two);
        let run = (&rm[..], &rv[..]);
        batchnorm_forward_eval_act::<T, true>(&mut one, &x, aff(&g, &b), run, BN_EPS, s).unwrap();
        let bits = |v: &[T]| v.iter().map(|a| a.f64().to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one), bits(&two));
        assert!(one[7].f64().is_nan() && one.iter().any(|a| *a == T::zero()));
    }
    check::<f32>();
    check::<f64>();
}

#[test]
fn eval_mode_uses_running_stats() {
    // eps = 1 for round numbers: rm = 1, rv = 3 => rstd = 1/sqrt(4) = 1/2
    // gamma 2, beta -1: y = 2 (x - 1) / 2 - 1 = x - 2  => x = [1, 5] gives [-1, 3]
    let s = BnShape { n: 2, c: 1, hw: 1 };
    let mut out = [0.0f64; 2];
    batchnorm_forward_eval(
        &mut out,
        &[1.0, 5.0],
        aff(&[2.0], &[-1.0]),
        &[1.0],
        &[3.0],
        1.0,
        s,
    )
    .unwrap();
    assert_eq!(out, [-1.0, 3.0]);
    // C=2, HW=3, N=1 (one sample is fine in eval mode): channel c uses its own stats
    let s = BnShape { n: 1, c: 2, hw: 3 };
    let x = [0.0, 1.0, 2.0, 10.0, 20.0, 30.0];
    let (rm, rv) = ([1.0, 20.0], [0.25, 100.0]);
    let mut out = [0.0f64; 6];
    batchnorm_forward_eval(
        &mut out,
        &x,
        aff(&[1.0, 1.0], &[0.0, 0.0]),
        &rm,
        &rv,
        BN_EPS,
        s,
    )
    .unwrap();
    for (i, &o) in out.iter().enumerate() {
        let c = i / 3;
        let want = (x[i] - rm[c]) / (rv[c] + BN_EPS).sqrt();
        assert!((o - want).abs() < 1e-14, "{out:?}");
    }
    // eval after a training step with momentum 1 normalises like the training step
    // did, up to the biased/unbiased variance: here check eval(rm, rv) == train output
    // when rv is set to the biased batch variance
    let mut r = Rand::new(11);
    let s = BnShape { n: 4, c: 3, hw: 5 };
    let x = r.normal_vec(s.len());
    let (g, b) = (r.normal_vec(3), r.normal_vec(3));
    let (out_t, mean, rstd, ..) = train(&x, &g, &b, BN_EPS, s);
    let var: Vec<f64> = rstd.iter().map(|r| 1.0 / (r * r) - BN_EPS).collect();
    let mut out_e = vec![0.0; s.len()];
    batchnorm_forward_eval(&mut out_e, &x, aff(&g, &b), &mean, &var, BN_EPS, s).unwrap();
    for (a, e) in out_t.iter().zip(&out_e) {
        assert!((a - e).abs() < 1e-12);
    }
}

#[test]
fn gradcheck_train() {
    let mut r = Rand::new(3);
    // batch 1 with HW > 1; odd sizes; 1d with N > 1; the smallest batch (M = 2).
    // With M = 2, xhat = +-sqrt(var / (var + eps)) whatever x is, so dx is O(eps):
    // at eps = 1e-5 finite differences would measure only their own round-off;
    // a large eps makes it O(1) (and checks the eps inside rstd).
    for &(n, c, hw, eps) in &[
        (1, 2, 5, BN_EPS),
        (3, 3, 7, BN_EPS),
        (5, 4, 1, BN_EPS),
        (4, 2, 9, BN_EPS),
        (3, 2, 3, 0.3),
        (2, 1, 1, 0.5),
        (1, 3, 2, 0.5),
    ] {
        let s = BnShape { n, c, hw };
        let mut params = vec![r.normal_vec(s.len()), r.normal_vec(c), r.normal_vec(c)];
        // a non-zero mean and non-unit spread, as real activations have
        params[0]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = 3.0 * *v + (i % c) as f64);
        let err = check_layer(
            &mut params,
            s.len(),
            |p, out| out.copy_from_slice(&train(&p[0], &p[1], &p[2], eps, s).0),
            |p, dout, g| {
                let (_, mean, rstd, ..) = train(&p[0], &p[1], &p[2], eps, s);
                let (gx, rest) = g.split_at_mut(1);
                let (gg, gb) = rest.split_at_mut(1);
                batchnorm_backward(
                    &mut gx[0],
                    grads(&mut gg[0], &mut gb[0]),
                    dout,
                    saved(&p[0], &mean, &rstd, &p[1], &[]),
                    s,
                )
                .unwrap()
            },
            &mut r,
        );
        assert!(err < 1e-6, "batchnorm {s:?} eps {eps}: max rel err {err:e}");
    }
}

#[test]
fn gradcheck_eval() {
    let mut r = Rand::new(4);
    for &(n, c, hw) in &[(1, 1, 1), (2, 3, 4), (5, 2, 1)] {
        let s = BnShape { n, c, hw };
        let rm = r.normal_vec(c);
        let rv = r.uniform_vec(c, 0.5, 2.0);
        let mut params = vec![r.normal_vec(s.len()), r.normal_vec(c), r.normal_vec(c)];
        let err = check_layer(
            &mut params,
            s.len(),
            |p, out| {
                batchnorm_forward_eval(out, &p[0], aff(&p[1], &p[2]), &rm, &rv, BN_EPS, s).unwrap()
            },
            |p, dout, g| {
                let (gx, rest) = g.split_at_mut(1);
                let (gg, gb) = rest.split_at_mut(1);
                batchnorm_backward_eval(
                    &mut gx[0], &mut gg[0], &mut gb[0], dout, &p[0], &p[1], &rm, &rv, BN_EPS, s,
                )
                .unwrap()
            },
            &mut r,
        );
        assert!(err < 1e-6, "batchnorm eval {s:?}: max rel err {err:e}");
    }
}

#[test]
fn parallel_path_is_bitwise_the_serial_one() {
    let mut r = Rand::new(5);
    let s = BnShape {
        n: 8,
        c: 16,
        hw: 256,
    }; // 32768 elements >= PAR_MIN
    assert!(s.parallel());
    let x: Vec<f32> = r.normal_vec(s.len()).iter().map(|&v| v as f32).collect();
    let dy: Vec<f32> = r.normal_vec(s.len()).iter().map(|&v| v as f32).collect();
    let g: Vec<f32> = r.normal_vec(s.c).iter().map(|&v| v as f32).collect();
    assert_eq!(
        batch_stats(&x, s, false, None),
        batch_stats(&x, s, true, None)
    );
    // the first pass's plane sums given, as a conv computes them
    let mut planes = vec![0.0; s.n * s.c];
    for (img, p) in x.chunks_exact(s.c * s.hw).zip(planes.chunks_exact_mut(s.c)) {
        bn_plane_sums(p, img, s.hw);
    }
    assert_eq!(
        batch_stats(&x, s, true, None),
        batch_stats(&x, s, true, Some(&planes))
    );
    let (_, mean, rstd, ..) = train(&x, &g, &g, BN_EPS, s);
    let mut out = [vec![0.0f32; s.len()], vec![0.0f32; s.len()]];
    let mut dx = [vec![0.5f32; s.len()], vec![0.5f32; s.len()]];
    let mut dg = [vec![0.0f32; s.c], vec![0.0f32; s.c]];
    let mut db = [vec![0.0f32; s.c], vec![0.0f32; s.c]];
    for (k, par) in [false, true].into_iter().enumerate() {
        normalise_act::<_, false>(&mut out[k], &x, &mean, &rstd, &g, s, par);
        batchnorm_backward_unchecked(
            Accum::Add,
            &mut dx[k],
            grads(&mut dg[k], &mut db[k]),
            &dy,
            saved(&x, &mean, &rstd, &g, &[]),
            s,
            par,
        );
    }
    assert!(out[0] == out[1] && dx[0] == dx[1] && dg[0] == dg[1] && db[0] == db[1]);
}

#[test]
fn normalise_add_relu_is_bitwise_the_three_plain_passes() {
    let mut r = Rand::new(12);
    for &(n, c, hw) in &[(2, 3, 5), (16, 8, 256), (1, 4, 1)] {
        let s = BnShape { n, c, hw };
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let (x, h) = (f(r.normal_vec(s.len())), f(r.normal_vec(s.len())));
        let (mean, k, beta) = (f(r.normal_vec(c)), f(r.normal_vec(c)), f(r.normal_vec(c)));
        // plain: y = BN(x); sum = h + y; out = relu(sum)
        let mut y = vec![0.0f32; s.len()];
        normalise_act::<_, false>(&mut y, &x, &mean, &k, &beta, s, false);
        let sum: Vec<f32> = h.iter().zip(&y).map(|(&a, &b)| a + b).collect();
        let mut plain = vec![0.0f32; s.len()];
        crate::ops::activation::relu_forward(&mut plain, &sum).unwrap();
        let mut fused = vec![f32::NAN; s.len()];
        normalise_add_act::<f32, true>(&mut fused, &h, &x, &mean, &k, &beta, s);
        assert_eq!(plain, fused);
        assert!(plain.contains(&0.0) && plain.iter().any(|&v| v > 0.0));
    }
}

#[test]
fn f32_with_large_mean_matches_f64() {
    // a channel at 1000 with spread 0.01: a one-pass f32 E[x^2] - E[x]^2 would be noise
    let mut r = Rand::new(6);
    let s = BnShape {
        n: 16,
        c: 2,
        hw: 64,
    };
    let x64: Vec<f64> = r
        .normal_vec(s.len())
        .iter()
        .map(|v| 1000.0 + 0.01 * v)
        .collect();
    let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    // the reference is the f64 pass on the f32-rounded input
    let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    let (o64, _, rstd64, _, rv64) = train(&x64, &[1.0; 2], &[0.0; 2], BN_EPS, s);
    let (o32, _, rstd32, _, rv32) = train(&x32, &[1.0; 2], &[0.0; 2], BN_EPS, s);
    for c in 0..2 {
        assert!(
            (rstd32[c].f64() / rstd64[c] - 1.0).abs() < 1e-6,
            "{rstd32:?} {rstd64:?}"
        );
        assert!((rv32[c].f64() / rv64[c] - 1.0).abs() < 1e-6);
    }
    let worst = o32
        .iter()
        .zip(&o64)
        .map(|(a, b)| (a.f64() - b).abs())
        .fold(0.0, f64::max);
    // x - mean is exact in f32 here; what is left is 1000 * f32 ulp of the mean * rstd
    assert!(worst < 1e-2, "worst {worst}");
}

#[test]
fn one_value_per_channel_is_refused_in_training() {
    let s = BnShape { n: 1, c: 3, hw: 1 };
    let mut out = [0.0f64; 3];
    let (mut mean, mut rstd, mut rm, mut rv) = ([0.0; 3], [0.0; 3], [0.0; 3], [1.0; 3]);
    let e = batchnorm_forward_train(
        &mut out,
        stats(&mut mean, &mut rstd),
        &[1.0; 3],
        aff(&[1.0; 3], &[0.0; 3]),
        run(&mut rm, &mut rv, 0.1, BN_EPS),
        s,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidParam {
                op: "batchnorm",
                ..
            }
        ),
        "{e}"
    );
    // nothing was touched
    assert!(rm == [0.0; 3] && rv == [1.0; 3]);
    // eval mode is fine with one value
    batchnorm_forward_eval(
        &mut out,
        &[1.0; 3],
        aff(&[1.0; 3], &[0.0; 3]),
        &rm,
        &rv,
        BN_EPS,
        s,
    )
    .unwrap();
    // bad momentum / eps
    let s = BnShape { n: 2, c: 3, hw: 1 };
    let mut out = [0.0f64; 6];
    for (m, eps) in [
        (1.5, BN_EPS),
        (-0.1, BN_EPS),
        (f64::NAN, BN_EPS),
        (0.1, -1.0),
        (0.1, f64::NAN),
    ] {
        let e = batchnorm_forward_train(
            &mut out,
            stats(&mut mean, &mut rstd),
            &[1.0; 6],
            aff(&[1.0; 3], &[0.0; 3]),
            run(&mut rm, &mut rv, m, eps),
            s,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidParam {
                    op: "batchnorm",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn shape_errors_name_the_layer() {
    let s = BnShape { n: 2, c: 3, hw: 4 };
    let (big, c) = (vec![0.0f64; 24], vec![1.0f64; 3]);
    let (mut o, mut m, mut r, mut rm, mut rv) =
        (big.clone(), c.clone(), c.clone(), c.clone(), c.clone());
    let short = vec![0.0f64; 23];
    let check = |e: Error, what: &str| {
        let msg = e.to_string();
        assert!(msg.contains("batchnorm") && msg.contains(what), "{msg}");
    };
    check(
        batchnorm_forward_train(
            &mut o,
            stats(&mut m, &mut r),
            &short,
            aff(&c, &c),
            run(&mut rm, &mut rv, 0.1, BN_EPS),
            s,
        )
        .unwrap_err(),
        "input",
    );
    check(
        batchnorm_forward_train(
            &mut o,
            stats(&mut m, &mut r),
            &big,
            aff(&c[..2], &c),
            run(&mut rm, &mut rv, 0.1, BN_EPS),
            s,
        )
        .unwrap_err(),
        "gamma",
    );
    check(
        batchnorm_forward_train(
            &mut o,
            stats(&mut m, &mut r),
            &big,
            aff(&c, &c),
            run(&mut rm[..2], &mut rv, 0.1, BN_EPS),
            s,
        )
        .unwrap_err(),
        "running_mean",
    );
    check(
        batchnorm_forward_eval(&mut o, &big, aff(&c, &c), &c, &c[..1], BN_EPS, s).unwrap_err(),
        "running_var",
    );
    check(
        batchnorm_forward_eval(&mut o[..3], &big, aff(&c, &c), &c, &c, BN_EPS, s).unwrap_err(),
        "output",
    );
    let (mut dx, mut dg, mut db) = (big.clone(), c.clone(), c.clone());
    check(
        batchnorm_backward(
            &mut dx,
            grads(&mut dg, &mut db),
            &short,
            saved(&big, &c, &c, &c, &[]),
            s,
        )
        .unwrap_err(),
        "dout",
    );
    check(
        batchnorm_backward(
            &mut dx,
            grads(&mut dg[..1], &mut db),
            &big,
            saved(&big, &c, &c, &c, &[]),
            s,
        )
        .unwrap_err(),
        "dgamma",
    );
    check(
        batchnorm_backward(
            &mut dx,
            grads(&mut dg, &mut db),
            &big,
            saved(&big, &c, &c[..2], &c, &[]),
            s,
        )
        .unwrap_err(),
        "rstd",
    );
    check(
        batchnorm_backward_eval(
            &mut dx[..1],
            &mut dg,
            &mut db,
            &big,
            &big,
            &c,
            &c,
            &c,
            BN_EPS,
            s,
        )
        .unwrap_err(),
        "dinp",
    );
    check(
        batchnorm_backward_eval(
            &mut dx,
            &mut dg,
            &mut db,
            &big,
            &big,
            &c,
            &c,
            &c[..2],
            BN_EPS,
            s,
        )
        .unwrap_err(),
        "running_var",
    );
    // zero sizes are InvalidParam, not a panic
    let z = BnShape { n: 0, c: 3, hw: 4 };
    check(
        batchnorm_forward_eval(&mut o, &big, aff(&c, &c), &c, &c, BN_EPS, z).unwrap_err(),
        "batch size",
    );
}

/// (out, dx, dgamma, dbeta, running mean, running var) of one BN training step.
type Step = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Two "processes" (threads) that each hold half of a batch and complete
/// their per-channel sums through a shared accumulator: what an MPI
/// allreduce does for `across_shards`, in-process.
struct TwoShards {
    acc: std::sync::Mutex<Vec<f64>>,
    barrier: std::sync::Barrier,
}

impl TwoShards {
    fn sum(&self, v: &mut [f64]) {
        {
            let mut a = self.acc.lock().unwrap();
            if a.is_empty() {
                *a = vec![0.0; v.len()];
            }
            for (a, x) in a.iter_mut().zip(v.iter()) {
                *a += *x;
            }
        }
        self.barrier.wait();
        v.copy_from_slice(&self.acc.lock().unwrap());
        if self.barrier.wait().is_leader() {
            self.acc.lock().unwrap().clear();
        }
        self.barrier.wait();
    }
}

/// Sync-BN: two shards of a batch with their sums completed across them
/// give the whole batch's BatchNorm -- the same outputs, running statistics
/// and input gradients, and parameter gradients that add up to the whole
/// batch's (each shard keeps its local part). Plain and fused BN-ReLU; the
/// backward through the coefficient/dx split too.
#[test]
fn across_shards_is_the_whole_batch() {
    let mut r = Rand::new(21);
    let s = BnShape { n: 6, c: 3, hw: 5 };
    let x: Vec<f64> = r.normal_vec(s.len()).iter().map(|v| 3.0 + v).collect();
    let dout = r.normal_vec(s.len());
    let (g, b) = (r.normal_vec(3), r.normal_vec(3));
    // the whole batch: (out, dx, dgamma, dbeta, running mean, running var)
    let whole = |relu: bool, x: &[f64], dout: &[f64], s: BnShape| {
        let mut out = vec![0.0; s.len()];
        let (mut mean, mut rstd) = (vec![0.0; s.c], vec![0.0; s.c]);
        let (mut rm, mut rv) = (vec![0.0; s.c], vec![1.0; s.c]);
        let f = if relu {
            forward_train_act::<f64, true>
        } else {
            forward_train_act::<f64, false>
        };
        f(
            &mut out,
            stats(&mut mean, &mut rstd),
            x,
            aff(&g, &b),
            run(&mut rm, &mut rv, 0.1, BN_EPS),
            s,
        )
        .unwrap();
        let mut dx = vec![0.0; s.len()];
        let (mut dg, mut db) = (vec![0.0; s.c], vec![0.0; s.c]);
        let x_saved = saved(x, &mean, &rstd, &g, &b);
        let coef = batchnorm_backward_coefs(grads(&mut dg, &mut db), dout, x_saved, relu, None, s)
            .unwrap();
        let beta = relu.then_some(b.as_slice());
        batchnorm_backward_dx(&mut dx, dout, x, &mean, beta, &coef, s).unwrap();
        // and the one-pass backward agrees with the split one
        let mut dx1 = vec![0.0; s.len()];
        let (mut dg1, mut db1) = (vec![0.0; s.c], vec![0.0; s.c]);
        let back = if relu {
            backward_act::<f64, true, true>
        } else {
            backward_act::<f64, false, true>
        };
        back(
            (&mut dx1, &[]),
            grads(&mut dg1, &mut db1),
            dout,
            saved(x, &mean, &rstd, &g, &b),
            None,
            s,
            false,
        );
        assert_eq!(dx, dx1);
        (out, dx, dg, db, rm, rv)
    };
    for relu in [false, true] {
        let full = whole(relu, &x, &dout, s);
        let shards = Arc::new(TwoShards {
            acc: std::sync::Mutex::new(vec![]),
            barrier: std::sync::Barrier::new(2),
        });
        let half = BnShape { n: 3, ..s };
        let parts: Vec<_> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..2)
                .map(|k| {
                    let sh = shards.clone();
                    let (x, dout) = (
                        &x[k * half.len()..(k + 1) * half.len()],
                        &dout[k * half.len()..(k + 1) * half.len()],
                    );
                    let whole = &whole;
                    scope.spawn(move || {
                        across_shards(Arc::new(move |v: &mut [f64]| sh.sum(v)), || {
                            whole(relu, x, dout, half)
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let close = |a: &[f64], b: &[f64], what: &str| {
            for (p, q) in a.iter().zip(b) {
                assert!(
                    (p - q).abs() <= 1e-12 * (1.0 + p.abs()),
                    "{what}: {p} vs {q}"
                );
            }
        };
        let cat = |f: fn(&Step) -> &Vec<f64>| [f(&parts[0]).clone(), f(&parts[1]).clone()].concat();
        close(&cat(|p| &p.0), &full.0, "out");
        close(&cat(|p| &p.1), &full.1, "dx");
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
        close(&add(&parts[0].2, &parts[1].2), &full.2, "dgamma");
        close(&add(&parts[0].3, &parts[1].3), &full.3, "dbeta");
        for p in &parts {
            close(&p.4, &full.4, "running mean");
            close(&p.5, &full.5, "running var");
        }
        // without the shards' sums each half is normalised on its own: different
        let alone = whole(relu, &x[..half.len()], &dout[..half.len()], half);
        assert!(alone
            .0
            .iter()
            .zip(&full.0)
            .any(|(p, q)| (p - q).abs() > 1e-3));
    }
}

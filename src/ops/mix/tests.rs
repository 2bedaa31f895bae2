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

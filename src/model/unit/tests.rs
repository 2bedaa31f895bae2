//! The fast unit against plain runs of itself.
//!
//! The fast plan against [`Plan::reference`](super::Plan::reference) on
//! the same executor: every fusion the plan picks (BN-ReLU in one pass,
//! the unstored BN-ReLU outputs and BN input gradients the convolutions
//! compute as they read, the identity added in a conv's store, the plane
//! sums, the ReLU and the addition in one pass, the shortcut term joined
//! to a pass of the branch) gives the same bits as none, in f32 (where the
//! direct convs take part) and f64, for every unit kind, with and without
//! the probe.
//!
//! The fast unit against the reference unit (`reference.rs`, plain ops,
//! every intermediate stored): the same values to 1e-12 in f64.

use crate::gradcheck::Rand;
use crate::model::net::Net;
use crate::model::spec::Spec;
use crate::scalar::Scalar;

/// Loss, every `dL/dx_i`, every parameter gradient and running statistic
/// after two training steps (no update), and how many tensors went
/// unstored.
fn run<T: Scalar>(spec: &Spec, reference: bool, probe: bool) -> (f64, Vec<Vec<T>>, usize) {
    let (batch, image) = (2, 16);
    let mut net = Net::<T>::new(spec, image, 7).unwrap();
    for u in net.units.iter_mut() {
        u.use_reference_plan(reference);
    }
    let mut r = Rand::new(3);
    let x: Vec<T> = r
        .normal_vec(batch * 3 * image * image)
        .into_iter()
        .map(T::of)
        .collect();
    let labels = [1, 7];
    let mut loss = 0.0;
    for _ in 0..2 {
        net.zero_grad();
        loss = net.forward_backward(&x, &labels, probe).unwrap();
    }
    let mut out: Vec<Vec<T>> = (0..=net.num_units()).map(|i| net.dx(i).to_vec()).collect();
    out.extend(net.params_mut().into_iter().map(|p| p.grad.clone()));
    out.extend(net.buffers_mut().into_iter().map(|(b, _)| b.value.clone()));
    let unstored = net.units.iter().map(|u| u.plan().unstored_count()).sum();
    (loss, out, unstored)
}

/// IEEE equality (`+0 == -0`: an overwritten gradient and a zeroed one
/// that is added to differ only there), NaN equal to NaN.
fn same<T: Scalar>(a: T, b: T) -> bool {
    a == b || (a.f64().is_nan() && b.f64().is_nan())
}

fn fast_plan_gives_the_bits_of_the_reference_plan<T: Scalar>(width: usize) {
    let mut unstored_somewhere = false;
    for (name, spec) in every_unit_spec(width) {
        for probe in [false, true] {
            let (l0, g0, n0) = run::<T>(&spec, true, probe);
            let (l1, g1, n1) = run::<T>(&spec, false, probe);
            assert_eq!(n0, 0);
            unstored_somewhere |= n1 > 0;
            assert_eq!(l0.to_bits(), l1.to_bits(), "{name} probe {probe}: loss");
            assert_eq!(g0.len(), g1.len());
            for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
                let k = a.iter().zip(b).position(|(&x, &y)| !same(x, y));
                assert!(
                    k.is_none(),
                    "{name} probe {probe}: tensor {i} differs at {k:?}"
                );
            }
        }
    }
    let direct =
        crate::ops::conv2d::conv2d_fuses_input_act::<T>(&crate::ops::conv2d::Conv2dShape {
            n: 2,
            cin: width,
            h: 16,
            w: 16,
            cout: width,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        });
    if direct {
        assert!(unstored_somewhere, "nothing went unstored");
    }
}

#[test]
fn fast_plan_gives_the_bits_of_the_reference_plan_f32() {
    fast_plan_gives_the_bits_of_the_reference_plan::<f32>(8);
}

#[test]
fn fast_plan_gives_the_bits_of_the_reference_plan_f64() {
    fast_plan_gives_the_bits_of_the_reference_plan::<f64>(4);
}

/// Every placement x shortcut kind x block x downsample option, as specs
/// (a depth-1-per-stage CIFAR net: an identity unit and two that change
/// shape).
fn every_unit_spec(width: usize) -> Vec<(String, Spec)> {
    let mut out = vec![];
    let units = [
        "original",
        "bn_after_add",
        "relu_before_add",
        "relu_only_preact",
        "full_preact",
    ];
    let shortcuts = [
        r#"{"kind": "identity"}"#,
        r#"{"kind": "scale", "shortcut": 0.7, "branch": 1.3}"#,
        r#"{"kind": "exclusive_gate", "bias_init": 0.5}"#,
        r#"{"kind": "shortcut_gate", "bias_init": -0.5}"#,
        r#"{"kind": "conv1x1"}"#,
        r#"{"kind": "dropout", "p": 0.3}"#,
        r#"{"kind": "none"}"#,
    ];
    for unit in units {
        for shortcut in shortcuts {
            for (block, depth) in [("basic", 8), ("bottleneck", 11)] {
                for ds in ["A", "B"] {
                    let json = format!(
                        r#"{{"arch": "cifar", "block": "{block}", "classes": 10, "depth": {depth},
                            "downsample": "{ds}", "in_channels": 3, "width": {width},
                            "shortcut": {shortcut}, "unit": "{unit}"}}"#
                    );
                    let name = format!("{unit} {shortcut} {block} {ds}");
                    out.push((name, Spec::from_json(&json).unwrap()));
                }
            }
        }
    }
    out
}

/// `max |a - b| / max |a|`: the error relative to the tensor's scale
/// (an elementwise ratio would divide by values that cancelled to ~0).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().chain(b).fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// The fast unit (fused passes, unstored intermediates, overwritten
/// gradients) against the reference unit (`reference.rs`: every
/// intermediate stored, plain ops, the mix as the table states it), in f64:
/// the output, `dL/dx`, every parameter gradient, the running statistics
/// and the probe's split agree to 1e-12 relative, for every unit of every
/// spec, in training (probe on and off) and evaluation.
#[test]
fn fast_unit_matches_the_reference_unit() {
    use super::{Reference, UnitFlow, UnitGrads};
    use crate::ops::conv2d::ConvWorkspace;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    const TOL: f64 = 1e-12;
    let (n, image) = (2, 8);
    let mut ws = ConvWorkspace::<f64>::default();
    let mut grads = UnitGrads::<f64>::default();
    let mut r = Rand::new(11);
    let mut checked = 0;
    for (name, spec) in every_unit_spec(4) {
        let net = Net::<f64>::new(&spec, image, 5).unwrap();
        for unit in &net.units {
            let x = r.normal_vec(unit.in_geom.len(n));
            let dy = r.normal_vec(unit.out_geom.len(n));
            for (train, probe) in [(false, false), (true, false), (true, true)] {
                let at = format!("{name} unit {} train {train} probe {probe}", unit.index);
                let (mut fast, mut plain) = (unit.clone(), unit.clone());
                let mut reference = Reference::new(&plain);
                let mut rng_fast = ChaCha8Rng::seed_from_u64(9);
                let mut rng_plain = ChaCha8Rng::seed_from_u64(9);
                fast.forward(&x, n, train, &mut ws, &mut rng_fast).unwrap();
                reference
                    .forward(&mut plain, &x, n, train, &mut ws, &mut rng_plain)
                    .unwrap();
                let e = rel_err(fast.output(), reference.output());
                assert!(e <= TOL, "{at}: output differs by {e:e}");
                let running = |u: &mut crate::model::Unit<f64>| -> Vec<f64> {
                    u.bns
                        .iter()
                        .flat_map(|b| b.buffers().flat_map(|v| v.value.clone()))
                        .collect()
                };
                let e = rel_err(&running(&mut fast), &running(&mut plain));
                assert!(e <= TOL, "{at}: running statistics differ by {e:e}");
                if !train {
                    continue;
                }
                let (mut dx_fast, mut dx_plain) = (vec![0.0; x.len()], vec![0.0; x.len()]);
                let mut flow = UnitFlow::default();
                fast.backward(
                    &mut dx_fast,
                    &dy,
                    &x,
                    &mut ws,
                    &mut grads,
                    probe.then_some(&mut flow),
                )
                .unwrap();
                let flow_plain = reference
                    .backward(&mut plain, &mut dx_plain, &dy, &x, &mut ws)
                    .unwrap();
                let e = rel_err(&dx_fast, &dx_plain);
                assert!(e <= TOL, "{at}: dL/dx differs by {e:e}");
                for (p, q) in fast.params_mut().into_iter().zip(plain.params_mut()) {
                    let e = rel_err(&p.grad, &q.grad);
                    assert!(e <= TOL, "{at}: {} gradient differs by {e:e}", p.name);
                }
                if probe {
                    for (what, a, b) in [
                        ("grad_norm", flow.grad_norm, flow_plain.grad_norm),
                        (
                            "shortcut_norm",
                            flow.shortcut_norm,
                            flow_plain.shortcut_norm,
                        ),
                        ("branch_norm", flow.branch_norm, flow_plain.branch_norm),
                        ("cosine", flow.cosine, flow_plain.cosine),
                    ] {
                        let e = rel_err(&[a], &[b]);
                        assert!(e <= TOL, "{at}: probe {what} {a} vs {b}");
                    }
                }
                checked += 1;
            }
        }
    }
    // 5 placements x 7 shortcuts x 2 blocks x 2 options x 3 units x 2 probe settings
    assert_eq!(checked, 5 * 7 * 2 * 2 * 3 * 2);
}

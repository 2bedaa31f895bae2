//! Whole-network finite-difference checks in f64: the loss of a complete
//! residual network as a function of every parameter (or a random sample of
//! them for larger nets), central differences against the hand-written
//! backward. Also: the probe's shortcut and branch terms add up to dL/dx_l.

use resgrad::gradcheck::{max_rel_err, max_rel_err_atol, Rand};
use resgrad::model::{Net, Spec};

fn spec(json: &str) -> Spec {
    Spec::from_json(json).unwrap()
}

/// Max relative error over (up to `per_param`) sampled entries of every parameter.
fn check_net(spec: &Spec, image: usize, batch: usize, per_param: usize, seed: u64) -> f64 {
    let mut net: Net<f64> = Net::new(spec, image, seed).unwrap();
    let mut r = Rand::new(seed);
    // randomise BN affine parameters, as the reference does, so no gradient is trivially zero
    for p in net.params_mut() {
        if p.name.contains("bns.") || p.name.contains("_bn.") {
            p.value = if p.name.ends_with("weight") {
                r.uniform_vec(p.value.len(), 0.5, 1.5)
            } else {
                r.uniform_vec(p.value.len(), -0.2, 0.2)
            };
        }
    }
    let g = net.input_geom();
    let x = r.normal_vec(batch * g.c * g.h * g.w);
    let labels: Vec<usize> = (0..batch).map(|_| r.usize_below(spec.classes)).collect();
    net.zero_grad();
    net.forward_backward(&x, &labels, false).unwrap();
    let nparams = net.params_mut().len();
    let mut worst = 0.0f64;
    for pi in 0..nparams {
        let (len, analytic) = {
            let ps = net.params_mut();
            (ps[pi].value.len(), ps[pi].grad.clone())
        };
        let idx: Vec<usize> = if len <= per_param {
            (0..len).collect()
        } else {
            (0..per_param).map(|_| r.usize_below(len)).collect()
        };
        let mut a = Vec::new();
        let mut num = Vec::new();
        for &i in &idx {
            // fourth-order central difference: truncation O(h^4), round-off ~1e-16/h
            let h = 1e-5;
            let loss_at = |delta: f64, net: &mut Net<f64>| {
                let orig = net.params_mut()[pi].value[i];
                net.params_mut()[pi].value[i] = orig + delta;
                net.forward(&x, true).unwrap();
                let l = net.loss(&labels).unwrap();
                net.params_mut()[pi].value[i] = orig;
                l
            };
            let (l1, l_1) = (loss_at(h, &mut net), loss_at(-h, &mut net));
            let (l2, l_2) = (loss_at(2.0 * h, &mut net), loss_at(-2.0 * h, &mut net));
            num.push((8.0 * (l1 - l_1) - (l2 - l_2)) / (12.0 * h));
            a.push(analytic[i]);
        }
        // entries below 1e-7 (an O(1) loss) are compared absolutely: see max_rel_err_atol
        let e = max_rel_err_atol(&a, &num, 1e-7);
        let name = net.params_mut()[pi].name.clone();
        assert!(
            e < 2e-5,
            "{}: {name}: rel err {e:e}\n analytic {a:?}\n numeric {num:?}",
            spec.label()
        );
        worst = worst.max(e);
    }
    worst
}

#[test]
fn mlp_nets_match_finite_differences() {
    let mut worst = 0.0f64;
    for (unit, sc, bn) in [
        ("original", r#"{"kind":"identity"}"#, true),
        (
            "bn_after_add",
            r#"{"kind":"scale","shortcut":0.5,"branch":1.5}"#,
            true,
        ),
        ("relu_before_add", r#"{"kind":"conv1x1"}"#, false),
        (
            "relu_only_preact",
            r#"{"kind":"shortcut_gate","bias_init":0.5}"#,
            true,
        ),
        (
            "full_preact",
            r#"{"kind":"exclusive_gate","bias_init":-1.0}"#,
            true,
        ),
        ("full_preact", r#"{"kind":"none"}"#, false),
    ] {
        let s = spec(&format!(
            r#"{{"arch":"mlp","in_features":5,"hidden":4,"units":3,"classes":3,"unit":"{unit}","shortcut":{sc},"batchnorm":{bn}}}"#
        ));
        worst = worst.max(check_net(&s, 1, 5, 1000, 7));
    }
    println!("worst whole-MLP finite-difference error {worst:e}");
}

#[test]
fn probe_terms_add_up_to_the_gradient() {
    // every unit kind (the original unit's fused add-ReLU backward, the
    // pre-activation units' aliased dF = dy) with the shortcuts whose
    // backward writes dx differently (copy, gate, projection)
    let units = [
        "full_preact",
        "original",
        "bn_after_add",
        "relu_before_add",
        "relu_only_preact",
    ];
    let shortcuts = [
        r#"{"kind":"identity"}"#,
        r#"{"kind":"exclusive_gate","bias_init":0.0}"#,
        r#"{"kind":"conv1x1"}"#,
        r#"{"kind":"scale","shortcut":0.5}"#,
    ];
    for (unit, sc) in units
        .iter()
        .flat_map(|u| shortcuts.iter().map(move |s| (u, s)))
    {
        let s = spec(&format!(
            r#"{{"arch":"mlp","in_features":6,"hidden":5,"units":4,"classes":3,"unit":"{unit}","shortcut":{sc}}}"#
        ));
        let mut net: Net<f64> = Net::new(&s, 1, 3).unwrap();
        let mut r = Rand::new(5);
        let x = r.normal_vec(8 * 6);
        let labels: Vec<usize> = (0..8).map(|_| r.usize_below(3)).collect();
        net.forward_backward(&x, &labels, true).unwrap();
        let with_probe: Vec<Vec<f64>> = (0..=4).map(|i| net.dx(i).to_vec()).collect();
        let grads = |net: &mut Net<f64>| -> Vec<Vec<f64>> {
            net.params_mut().iter().map(|p| p.grad.clone()).collect()
        };
        let pgrads = grads(&mut net);
        // the probe does not change any gradient
        net.zero_grad();
        net.forward_backward(&x, &labels, false).unwrap();
        for (i, d) in with_probe.iter().enumerate() {
            let e = max_rel_err(d, net.dx(i));
            assert!(
                e < 1e-12,
                "{unit} {sc}: dx.{i} differs with the probe on: {e:e}"
            );
        }
        for (i, (a, b)) in pgrads.iter().zip(grads(&mut net)).enumerate() {
            let e = max_rel_err(a, &b);
            assert!(
                e < 1e-12,
                "{unit} {sc}: param {i} differs with the probe on: {e:e}"
            );
        }
        for (l, f) in net.flow.iter().enumerate() {
            let n = resgrad::tensor::norm(net.dx(l));
            assert!(
                (f.grad_norm - n).abs() <= 1e-12 * n.max(1e-300),
                "{sc}: unit {l}: {} vs {n}",
                f.grad_norm
            );
            // ||s + b||^2 = ||s||^2 + ||b||^2 + 2 cos ||s|| ||b||
            let lhs = f.grad_norm * f.grad_norm;
            let rhs = f.shortcut_norm.powi(2)
                + f.branch_norm.powi(2)
                + 2.0 * f.cosine * f.shortcut_norm * f.branch_norm;
            assert!(
                (lhs - rhs).abs() <= 1e-10 * lhs.max(1e-300),
                "{sc}: unit {l}: {lhs} vs {rhs}"
            );
            assert!(f.shortcut_norm > 0.0 && f.branch_norm > 0.0);
        }
    }
}

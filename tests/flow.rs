//! The gradient highway, measured: on a 100-unit residual MLP (full
//! pre-activation, no BN), ||dL/dx_l|| stays flat for identity shortcuts and
//! falls like 0.5^(L-l) for shortcuts scaled by 0.5.
//!
//! Initialisation: PyTorch's default Linear init, with the last layer of
//! every branch scaled by 0.1 (`branch_init_scale`), so the direct
//! (shortcut) term dominates each unit's gradient and the comparison with
//! prod(lambda) is clean; the inputs are synthetic standard-normal images.

use resgrad::model::Spec;
use resgrad::probe::FlowRow;
use resgrad::train::flow::{flow_study, FlowData};
use resgrad::train::{DataSource, TrainConfig};

fn rows(shortcut: &str, steps: u64) -> Vec<FlowRow> {
    let spec = Spec::from_json(&format!(
        r#"{{"arch":"mlp","in_features":32,"hidden":32,"units":100,"classes":10,"unit":"full_preact","shortcut":{shortcut},"batchnorm":false}}"#
    ))
    .unwrap();
    let mut cfg = TrainConfig::new("flow", spec, DataSource::Mnist5k);
    cfg.batch = 32;
    cfg.branch_init_scale = 0.1;
    cfg.schedule.base_lr = 0.01;
    flow_study(&cfg, FlowData::Synthetic { image: 1 }, steps).unwrap()
}

#[test]
fn identity_is_flat_and_half_scaling_falls_like_half_to_the_depth() {
    for steps in [0u64, 5] {
        let id = rows(r#"{"kind":"identity"}"#, steps);
        let half = rows(r#"{"kind":"scale","shortcut":0.5}"#, steps);
        for (r, last) in [(&id, 101usize), (&half, 101)] {
            assert_eq!(r.len(), if steps == 0 { last } else { 2 * last });
        }
        let at = |r: &[FlowRow], it: u64, u: usize| {
            r.iter()
                .find(|x| x.iter == it && x.unit == u)
                .unwrap()
                .clone()
        };
        for it in [0, steps] {
            // identity: the top gradient reaches unit 0 essentially unchanged
            let (g0, gu) = (at(&id, it, 0).grad_norm, at(&id, it, 100).grad_norm);
            let ratio = g0 / gu;
            assert!(
                (0.7..1.5).contains(&ratio),
                "identity: ||dx_0||/||dx_U|| = {ratio}"
            );
            // scale 0.5: per unit, the gradient shrinks by ~0.5
            let (h0, hu) = (at(&half, it, 0).grad_norm, at(&half, it, 100).grad_norm);
            let per_unit = (h0 / hu).powf(1.0 / 100.0);
            assert!(
                (0.48..0.53).contains(&per_unit),
                "scale 0.5: per-unit factor {per_unit}"
            );
            // and the direct-path factor is exactly prod(lambda)
            let f = at(&half, it, 0).direct_factor.unwrap();
            assert!((f - 0.5f64.powi(100)).abs() <= 1e-12 * 0.5f64.powi(100));
            assert_eq!(at(&id, it, 37).direct_factor, Some(1.0));
            // the shortcut term dominates each unit's gradient
            for l in 0..100 {
                let r = at(&id, it, l);
                assert!(
                    r.shortcut_norm.unwrap() > 3.0 * r.branch_norm.unwrap(),
                    "unit {l}: {r:?}"
                );
            }
        }
    }
}

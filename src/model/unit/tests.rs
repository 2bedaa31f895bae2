//! A BN-ReLU read only by a convolution is not stored in training (the
//! conv normalises as it reads), nor is the input gradient of a BN that
//! reads a convolution's output (the conv computes it as it reads it): the
//! same bits as storing both, for every unit kind that has such pairs,
//! with and without the gradient probe. Likewise for the identity shortcut
//! added in a conv's store (forward: the last conv writes x + F; backward:
//! the first conv writes dx = dsum + ...).

use crate::gradcheck::Rand;
use crate::model::net::Net;
use crate::model::spec::Spec;

/// Loss, every `dL/dx_i`, every parameter gradient and running statistic
/// after two training steps (no update), and how many steps went unstored.
fn run(spec: &Spec, store_all: bool, probe: bool) -> (f64, Vec<Vec<f32>>, usize) {
    let (batch, image) = (2, 16);
    let mut net = Net::<f32>::new(spec, image, 7).unwrap();
    for u in net.units.iter_mut() {
        u.store_every_activation(store_all);
    }
    let mut r = Rand::new(3);
    let x: Vec<f32> = r
        .normal_vec(batch * 3 * image * image)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let labels = [1, 7];
    let mut loss = 0.0;
    for _ in 0..2 {
        net.zero_grad();
        loss = net.forward_backward(&x, &labels, probe).unwrap();
    }
    let mut out: Vec<Vec<f32>> = (0..=net.num_units()).map(|i| net.dx(i).to_vec()).collect();
    out.extend(net.params_mut().into_iter().map(|p| p.grad.clone()));
    out.extend(net.buffers_mut().into_iter().map(|(b, _)| b.value.clone()));
    let unstored = net
        .units
        .iter()
        .map(|u| {
            let folds = usize::from(u.fold_add);
            u.virt.iter().chain(&u.dvirt).filter(|&&v| v).count() + folds
        })
        .sum();
    (loss, out, unstored)
}

#[test]
fn unstored_bn_relu_gives_the_same_bits() {
    for unit in ["original", "full_preact", "relu_before_add", "bn_after_add"] {
        for shortcut in ["identity", "conv1x1"] {
            let spec = Spec::from_json(&format!(
                r#"{{"arch": "cifar", "block": "basic", "classes": 10, "depth": 8,
                    "downsample": "B", "in_channels": 3, "width": 8,
                    "shortcut": {{"kind": "{shortcut}"}}, "unit": "{unit}"}}"#
            ))
            .unwrap();
            for probe in [false, true] {
                let (l0, g0, n0) = run(&spec, true, probe);
                let (l1, g1, n1) = run(&spec, false, probe);
                assert_eq!(n0, 0);
                if crate::ops::conv2d::conv2d_fuses_input_act::<f32>(
                    &crate::ops::conv2d::Conv2dShape {
                        n: 2,
                        cin: 8,
                        h: 16,
                        w: 16,
                        cout: 8,
                        kh: 3,
                        kw: 3,
                        stride: 1,
                        pad: 1,
                    },
                ) {
                    assert!(n1 > 0, "{unit} {shortcut}: nothing went unstored");
                }
                assert_eq!(l0.to_bits(), l1.to_bits(), "{unit} {shortcut} loss");
                assert_eq!(g0.len(), g1.len());
                for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
                    assert!(
                        a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{unit} {shortcut} probe {probe}: tensor {i} differs"
                    );
                }
            }
        }
    }
}

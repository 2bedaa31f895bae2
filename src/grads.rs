//! `resgrad grads`: one training-mode forward/backward of a spec'd network
//! on given weights and inputs, written in the reference's fixture format
//! (`logits`, `loss`, `grad.<param>`, `dx.<i>`), so any tensor can be
//! compared with PyTorch's.

use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensors;
use crate::model::{Arch, Net, Shortcut, Spec};
use crate::precision::Precision;
use crate::scalar::Scalar;
use crate::tensor::Tensor;

/// The spec a gradient comparison runs: dropout shortcuts get p = 0, as the
/// reference does when it writes fixtures.
pub fn spec_for_grads(spec: &Spec) -> Spec {
    let mut s = spec.clone();
    if let Shortcut::Dropout { .. } = s.shortcut {
        s.shortcut = Shortcut::Dropout { p: 0.0 };
    }
    s
}

/// Read `input` and `labels` from a tensor file: the input as `T`, the
/// labels as class indices (checked non-negative; the range is checked
/// against the classes by the loss).
pub fn read_batch<T: Scalar>(x: &SafeTensors) -> Result<(Tensor<T>, Vec<usize>)> {
    let input: Tensor<T> = x.get("input")?;
    let (lshape, labels) = x.get_i64("labels")?;
    if let Some(i) = input.data().iter().position(|v| !v.is_finite()) {
        return Err(Error::Format {
            path: x.origin.clone(),
            msg: format!("tensor \"input\" holds a non-finite value at flat index {i}"),
        });
    }
    let n = input.shape().first().copied().unwrap_or(0);
    let bad = |msg: String| Error::Format {
        path: x.origin.clone(),
        msg,
    };
    if lshape != [n] {
        return Err(bad(format!(
            "tensor \"labels\" has shape {lshape:?}, expected [{n}] (one per row of \"input\", shape {:?})",
            input.shape()
        )));
    }
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            usize::try_from(l).map_err(|_| {
                bad(format!(
                    "tensor \"labels\": negative label {l} at index {i}"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((input, labels))
}

/// Build the network for `spec` and the input's image size.
pub fn net_for_input<T: Scalar>(spec: &Spec, input: &Tensor<T>) -> Result<Net<T>> {
    let shape = input.shape();
    let wrong = |want: String| {
        Error::Config(format!(
            "tensor \"input\" has shape {shape:?}; the spec wants {want}"
        ))
    };
    let image = match spec.arch {
        Arch::Cifar => {
            if shape.len() != 4 || shape[1] != spec.in_channels || shape[2] != shape[3] {
                return Err(wrong(format!(
                    "(N, {}, S, S): in_channels {} and square images",
                    spec.in_channels, spec.in_channels
                )));
            }
            shape[2]
        }
        Arch::Mlp => {
            let f = spec.in_features.unwrap_or(0);
            if shape.len() != 2 || shape[1] != f {
                return Err(wrong(format!("(N, {f}): in_features {f}")));
            }
            1
        }
    };
    // f64 doubles every buffer
    let scale = std::mem::size_of::<T>() / 4;
    crate::limits::check_model("grads", spec, image, shape[0].saturating_mul(scale))?;
    Net::new(spec, image, 0)
}

/// Tensor names a reference fixture holds beside the weights.
fn is_fixture_key(name: &str) -> bool {
    matches!(name, "input" | "labels" | "logits" | "loss")
        || name.starts_with("grad.")
        || name.starts_with("dx.")
}

/// The weights must be exactly the spec's: every state tensor present
/// (checked when loading), and no tensor that is neither the model's nor a
/// fixture's (the weights of a deeper or wider net would otherwise load
/// their first part silently).
fn check_weight_names<T: Scalar>(net: &mut Net<T>, weights: &SafeTensors) -> Result<()> {
    let names = net.state_names();
    let known: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    if let Some(extra) = weights
        .tensors
        .keys()
        .find(|k| !known.contains(k.as_str()) && !is_fixture_key(k))
    {
        return Err(Error::Weights(format!(
            "{}: tensor {extra:?} is not part of the model the spec describes (weights of another model?)",
            weights.origin_str()
        )));
    }
    Ok(())
}

/// One training-mode forward/backward; returns the tensors the reference
/// writes (`logits`, `loss`, `grad.*`, `dx.*`).
pub fn compute_grads<T: Scalar>(
    spec: &Spec,
    weights: &SafeTensors,
    batch: &SafeTensors,
) -> Result<SafeTensors> {
    compute_grads_in::<T>(spec, weights, batch, Precision::F32)
}

/// [`compute_grads`] with the convolution and linear GEMMs in precision
/// `p` (bf16 needs `T = f32` and AVX512-BF16: an error otherwise).
pub fn compute_grads_in<T: Scalar>(
    spec: &Spec,
    weights: &SafeTensors,
    batch: &SafeTensors,
    p: Precision,
) -> Result<SafeTensors> {
    let spec = spec_for_grads(spec);
    let (input, labels) = read_batch::<T>(batch)?;
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= spec.classes) {
        return Err(Error::Format {
            path: batch.origin.clone(),
            msg: format!(
                "tensor \"labels\": label {l} at index {i} is out of range 0..{} (the spec's classes)",
                spec.classes
            ),
        });
    }
    let mut net = net_for_input::<T>(&spec, &input)?;
    net.set_precision(p)?;
    check_weight_names(&mut net, weights)?;
    net.load_state(weights)?;
    net.zero_grad();
    let loss = net.forward_backward(input.data(), &labels, false)?;
    let n = labels.len();
    let mut out = SafeTensors::new();
    out.insert(
        "logits",
        &Tensor::from_vec(&[n, spec.classes], net.logits().to_vec())?,
    );
    out.insert("loss", &Tensor::from_vec(&[1], vec![T::of(loss)])?);
    net.save_grads(&mut out)?;
    for i in 0..=net.num_units() {
        let g = net
            .units
            .get(i)
            .map(|u| u.in_geom)
            .unwrap_or_else(|| net.units[i - 1].out_geom);
        let shape = if spec.arch == Arch::Cifar {
            vec![n, g.c, g.h, g.w]
        } else {
            vec![n, g.c]
        };
        out.insert(
            format!("dx.{i}"),
            &Tensor::from_vec(&shape, net.dx(i).to_vec())?,
        );
    }
    out.metadata.insert(
        "spec".into(),
        serde_json::to_string(&spec).map_err(|e| Error::Spec(e.to_string()))?,
    );
    Ok(out)
}

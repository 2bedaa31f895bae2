//! bf16 mixed precision (`Precision::Bf16`) on whole networks: the
//! gradients of the PyTorch fixtures' f32 nets (their specs and weights, on
//! a batch of 32 instead of the fixtures' 2-4 images) computed with bf16
//! GEMMs against the same nets in f32 (which match PyTorch: tests/parity.rs).
//!
//! Measure: the norm-wise relative error of all gradients together (every
//! `grad.*` and `dx.*` tensor, concatenated), `e = ||g_bf16 - g_f32|| / ||g_f32||`.
//!
//! Tolerance, and why it is relative to the net: bf16 autocast perturbs
//! every GEMM operand by at most `2^-8` relative (`gemm_bf16`'s bound). How
//! much a gradient moves under such a perturbation is the net's own
//! condition, and these small random nets are badly conditioned: perturbing
//! only their f32 weights and input by `1e-3` relative moved single BN
//! gradients of the fixtures' own 4-image batches by up to 17% (measured
//! while writing this test). So the test measures that condition on the
//! same batch, `e_w`: the f32 gradients after every weight and input value
//! is scaled by `1 + 2^-8 u`, `u` uniform in [-1, 1) (the size of a bf16
//! rounding), and requires `e <= 4 e_w` (bf16 also rounds the activations
//! and output gradients entering every GEMM, about 3 operand roundings per
//! GEMM pass where the weights-and-input perturbation makes 1: a factor of
//! ~sqrt(3) to 3 if they add in quadrature or linearly; 4 leaves room)
//! (measured: `e / e_w` is 0.1-1.8 on these nets, `e` 0.9-14%). A kernel that multiplied wrongly would err by
//! O(1); an f32 computation would give `e ~ 1e-6`, so `e > 1e-4` checks that
//! the bf16 path really rounds.

use resgrad::gemm_bf16::supported;
use resgrad::grads::{compute_grads, compute_grads_in};
use resgrad::io::safetensors::SafeTensors;
use resgrad::model::Spec;
use resgrad::precision::Precision;
use resgrad::tensor::Tensor;
use std::path::Path;

/// images per batch: BatchNorm over a fixture's own 2-4 samples is too
/// ill-conditioned for any rounding (see the module doc)
const BATCH: usize = 32;

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// A batch of `n` samples shaped like the fixture's input (deterministic
/// values in [-2, 2), labels cycling through the classes).
fn big_batch(fx: &SafeTensors, classes: usize, n: usize) -> SafeTensors {
    let x: Tensor<f32> = fx.get("input").unwrap();
    let mut shape = x.shape().to_vec();
    shape[0] = n;
    let len: usize = shape.iter().product();
    let mut s = 0x9e37_79b9u32;
    let data: Vec<f32> = (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            4.0 * ((s >> 8) as f32 / (1u32 << 24) as f32) - 2.0
        })
        .collect();
    let mut b = SafeTensors::new();
    b.insert("input", &Tensor::from_vec(&shape, data).unwrap());
    let labels: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    b.insert_i64("labels", &[n], &labels).unwrap();
    b
}

/// `t` with every value scaled by `1 + 2^-8 u`, `u` uniform in [-1, 1).
fn perturbed(fx: &SafeTensors, batch: &SafeTensors) -> (SafeTensors, SafeTensors) {
    let mut s = 0x2545_f491u32;
    let mut shake = |src: &SafeTensors| {
        let mut out = src.clone();
        for k in src.tensors.keys() {
            if let Ok(t) = src.get::<f32>(k) {
                let d: Vec<f32> = t
                    .data()
                    .iter()
                    .map(|&x| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        let u = 2.0 * ((s >> 8) as f32 / (1u32 << 24) as f32) - 1.0;
                        x * (1.0 + u / 256.0)
                    })
                    .collect();
                out.insert(k.clone(), &Tensor::from_vec(t.shape(), d).unwrap());
            }
        }
        out
    };
    (shake(fx), shake(batch))
}

/// All `grad.*` and `dx.*` tensors of `g`, concatenated in key order.
fn all_grads(g: &SafeTensors) -> Vec<f64> {
    let mut keys: Vec<&String> = g
        .tensors
        .keys()
        .filter(|k| k.starts_with("grad.") || k.starts_with("dx."))
        .collect();
    keys.sort();
    keys.iter().flat_map(|k| g.get_f64(k).unwrap().1).collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(a)
}

#[test]
fn bf16_gradients_of_the_f32_fixture_nets_are_within_tolerance() {
    if !supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_f32.safetensors"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the f32 fixtures, found {}",
        files.len()
    );
    let mut worst = 0f64;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        let fx = SafeTensors::read(path).unwrap();
        let spec = Spec::from_json(&fx.metadata["spec"]).unwrap();
        let batch = big_batch(&fx, spec.classes, BATCH);
        let g32 = all_grads(&compute_grads::<f32>(&spec, &fx, &batch).unwrap());
        let g16 = all_grads(&compute_grads_in::<f32>(&spec, &fx, &batch, Precision::Bf16).unwrap());
        let (pw, pb) = perturbed(&fx, &batch);
        let gw = all_grads(&compute_grads::<f32>(&spec, &pw, &pb).unwrap());
        let (e, e_w) = (rel(&g32, &g16), rel(&g32, &gw));
        println!("{name}: bf16 {e:.3e}, f32 with weights and input perturbed {e_w:.3e}");
        assert!(
            e.is_finite() && e <= 4.0 * e_w,
            "{name}: bf16 gradients err by {e:e}; the net's condition allows 4 x {e_w:e}"
        );
        worst = worst.max(e);
    }
    assert!(worst > 1e-4, "bf16 changed nothing: worst {worst:e}");
}

//! Whole networks against PyTorch: every fixture written by the reference
//! (`tools/make_fixtures.py`, listed in `tests/fixtures/index.json`) is
//! loaded, run through one training-mode forward/backward, and every tensor
//! the reference wrote (`logits`, `loss`, `grad.*`, `dx.*`) is compared.
//!
//! Error measure, per tensor: `max_i |a_i - b_i| / max(|b_i|, frac * max_j |b_j|, atol)`.
//! - f64 fixtures: `frac = 1e-3`, `atol = 1e-7`, tolerance 1e-9. Entries a
//!   thousand times below the tensor's largest are judged against 1e-3 of
//!   it, and tensors that are analytically zero (e.g. the bias of a BN that
//!   feeds another BN: its gradient is a sum that cancels exactly) are
//!   judged against 1e-7, far below any real gradient of an O(1) loss.
//! - f32 fixtures: `frac = 1` (norm-wise: the error relative to the
//!   tensor's largest entry), tolerance 1e-4. Two f32 computations that sum
//!   in different orders differ by ~1e-6 of the largest entry after the
//!   cancellations in BatchNorm's backward, so an element-wise measure
//!   would judge rounding, not correctness; the f64 fixtures do that.

use resgrad::grads::compute_grads;
use resgrad::io::safetensors::SafeTensors;
use resgrad::model::Spec;
use std::path::{Path, PathBuf};

/// See the module doc.
fn parity_err(ours: &[f64], reference: &[f64], frac: f64, atol: f64) -> f64 {
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (frac * scale).max(atol);
    ours.iter()
        .zip(reference)
        .map(|(a, b)| {
            let e = (a - b).abs() / b.abs().max(floor);
            if e.is_nan() {
                f64::INFINITY
            } else {
                e
            }
        })
        .fold(0.0, f64::max)
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

/// Compare every reference tensor; returns (worst error, its key).
fn compare(path: &Path) -> (f64, String, bool) {
    let fx = SafeTensors::read(path).unwrap();
    let spec = Spec::from_json(&fx.metadata["spec"]).unwrap();
    let f64_fixture = fx.tensor("input").unwrap().dtype.name() == "F64";
    let out = if f64_fixture {
        compute_grads::<f64>(&spec, &fx, &fx).unwrap()
    } else {
        compute_grads::<f32>(&spec, &fx, &fx).unwrap()
    };
    let mut worst = (0.0f64, String::new());
    let mut compared = 0;
    for key in fx.tensors.keys() {
        if !(key == "logits" || key == "loss" || key.starts_with("grad.") || key.starts_with("dx."))
        {
            continue;
        }
        let (rs, rv) = fx.get_f64(key).unwrap();
        assert!(
            out.contains(key),
            "{}: resgrad did not produce {key}",
            path.display()
        );
        let (os, ov) = out.get_f64(key).unwrap();
        assert_eq!(rs, os, "{}: shape of {key}", path.display());
        let (frac, atol) = if f64_fixture {
            (1e-3, 1e-7)
        } else {
            (1.0, 1e-5)
        };
        let e = parity_err(&ov, &rv, frac, atol);
        if e > worst.0 || e.is_nan() {
            worst = (e, key.clone());
        }
        compared += 1;
    }
    // and nothing the reference computed was left out
    for key in out.tensors.keys() {
        assert!(
            fx.contains(key),
            "{}: reference lacks {key}",
            path.display()
        );
    }
    assert!(
        compared > 4,
        "{}: only {compared} tensors compared",
        path.display()
    );
    (worst.0, worst.1, f64_fixture)
}

#[test]
fn every_fixture_matches_pytorch() {
    // RESGRAD_PARITY_FILTER=substring narrows the set while debugging
    let filter = std::env::var("RESGRAD_PARITY_FILTER").unwrap_or_default();
    let files: Vec<PathBuf> = fixture_files()
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(&filter))
        .collect();
    assert!(
        !filter.is_empty() || files.len() >= 100,
        "expected the full fixture set, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    let (mut w64, mut w32) = (0.0f64, 0.0f64);
    for f in &files {
        let (e, key, is64) = compare(f);
        let tol = if is64 { 1e-9 } else { 1e-4 };
        if is64 {
            w64 = w64.max(e);
        } else {
            w32 = w32.max(e);
        }
        #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail too
        if !(e <= tol) {
            failures.push(format!(
                "{}: {key} max rel err {e:e} > {tol:e}",
                f.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    println!(
        "{} fixtures; worst f64 error {w64:e}, worst f32 error {w32:e}",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} fixtures differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

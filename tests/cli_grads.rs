//! `resgrad grads` end to end: a reference fixture serves as both weights
//! and input; the written file holds every key the reference wrote, with the
//! same values (f64) — and a malformed spec is exit code 2.

use resgrad::io::safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;

#[test]
fn grads_command_reproduces_a_fixture() {
    let fx_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cifar_basic_full_preact_exclusive_gate_B.safetensors");
    let fx = SafeTensors::read(&fx_path).unwrap();
    let dir = std::env::temp_dir().join(format!("resgrad-cli-grads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.json");
    std::fs::write(&spec, &fx.metadata["spec"]).unwrap();
    let out = dir.join("g.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_resgrad"))
        .args(["grads", "--f64", "--spec"])
        .arg(&spec)
        .arg("--weights")
        .arg(&fx_path)
        .arg("--input")
        .arg(&fx_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let g = SafeTensors::read(&out).unwrap();
    let mut compared = 0;
    for key in fx.tensors.keys().filter(|k| {
        *k == "loss" || *k == "logits" || k.starts_with("grad.") || k.starts_with("dx.")
    }) {
        let (_, a) = g.get_f64(key).unwrap();
        let (_, b) = fx.get_f64(key).unwrap();
        let scale = b.iter().fold(1e-7f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "{key}: {err:e}");
        compared += 1;
    }
    assert!(compared > 20);
    // a spec with an unknown field is bad input: exit 2, a message, no panic
    std::fs::write(
        &spec,
        r#"{"depth":8,"unit":"original","shortcut":{"kind":"identity"},"colour":"red"}"#,
    )
    .unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_resgrad"))
        .args(["grads", "--spec"])
        .arg(&spec)
        .arg("--weights")
        .arg(&fx_path)
        .arg("--input")
        .arg(&fx_path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("colour"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

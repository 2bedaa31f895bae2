//! The verdict on every run (`resgrad::verdict`) end to end: `train` prints
//! it and writes `summary.json`, a diverged run leaves `diverged.json` that
//! `report` shows, an all-zero gradient is "dead", `flow` judges each probe,
//! and the report marks a conv net's stage boundaries. Small MLPs and a
//! ResNet-8 of width 4 on the built-in digits, a few iterations each.

mod common;

use common::{bin, run_ok, TempDir};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// `train` flags of a small residual MLP without BN.
const MLP: &[&str] = &[
    "train",
    "--arch",
    "mlp",
    "--units",
    "6",
    "--hidden",
    "16",
    "--no-batchnorm",
    "--batch",
    "64",
    "--flow-every",
    "2",
    "--quiet",
];

fn train(extra: &[&str], out: &Path) -> Output {
    let args: Vec<&str> = MLP.iter().chain(extra).copied().collect();
    bin().args(&args).arg("--out").arg(out).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn train_prints_and_writes_the_verdict() {
    let tmp = TempDir::new("verdict-train");
    // lambda = 0.3 over 6 units: 0.3^6 = 7e-4, the shortcut term carries it
    let dir = tmp.join("half");
    let o = train(
        &["--shortcut", "scale", "--lambda", "0.3", "--iters", "4"],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("verdict: at iteration 3: vanishing from unit"),
        "{out}"
    );
    assert!(out.contains("at iteration 0 (init): vanishing"), "{out}");
    assert!(out.contains("the shortcut term carries it"), "{out}");
    let s = json(&dir.join("summary.json"));
    assert_eq!(s["verdict"], "vanishing");
    assert_eq!(s["end"]["state"], "vanishing");
    assert_eq!(s["end"]["carrier"], "shortcut");
    assert_eq!(s["init"]["iter"], 0);
    assert_eq!(s["end"]["iter"], 3);
    let r = s["ratio_end"].as_f64().unwrap();
    assert!(r > 0.0 && r < 1e-2, "{r}");
    assert!(s["test_acc"].as_f64().is_some());
    assert!(!dir.join("diverged.json").exists());

    // identity shortcuts: healthy
    let dir = tmp.join("id");
    let o = train(&["--shortcut", "identity", "--iters", "2"], &dir);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("verdict: at iteration 1: healthy"));
    assert_eq!(json(&dir.join("summary.json"))["verdict"], "healthy");
}

#[test]
fn all_zero_gradients_are_dead_not_exploding() {
    let tmp = TempDir::new("verdict-dead");
    // y = 0 x + 0 F: every unit outputs 0, and the final ReLU of a
    // pre-activation net passes no gradient at 0: zeros from the top down
    let dir = tmp.join("dead");
    let o = train(
        &[
            "--shortcut",
            "scale",
            "--lambda",
            "0",
            "--branch",
            "0",
            "--iters",
            "2",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("dead (exact zeros from unit 6 down)"), "{out}");
    let s = json(&dir.join("summary.json"));
    assert_eq!(s["verdict"], "dead");
    assert_eq!(s["end"]["from_unit"], 6);
    // the report agrees
    let o = run_ok(&["report", dir.to_str().unwrap()], &tmp.join("report"));
    assert!(
        text(&o.stdout).contains("dead from unit 6"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_diverged_run_leaves_a_marker_that_report_shows() {
    let tmp = TempDir::new("verdict-diverged");
    let dir = tmp.join("run");
    let o = train(&["--iters", "4", "--max-grad-norm", "1e-9"], &dir);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("verdict: diverged at iteration 0: the gradient blew up"),
        "{err}"
    );
    let m = json(&dir.join("diverged.json"));
    assert_eq!(m["iter"], 0);
    assert!(m["message"].as_str().unwrap().contains("blew up"), "{m}");
    let s = json(&dir.join("summary.json"));
    assert_eq!(s["verdict"], "diverged");
    assert_eq!(s["test_acc"], Value::Null);

    let rep = tmp.join("report");
    let o = run_ok(&["report", dir.to_str().unwrap()], &rep);
    assert!(
        text(&o.stdout).contains("diverged at iteration 0"),
        "{}",
        text(&o.stdout)
    );
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    assert!(html.contains("v-diverged"));
    assert!(html.contains("diverged at iteration 0: the gradient blew up"));

    // the same directory trained again without the limit: no stale marker
    let o = train(&["--iters", "2", "--overwrite"], &dir);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!dir.join("diverged.json").exists());
    assert_eq!(json(&dir.join("summary.json"))["verdict"], "healthy");
}

#[test]
fn flow_judges_each_probe() {
    let tmp = TempDir::new("verdict-flow");
    let spec = tmp.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"arch":"mlp","in_features":784,"hidden":32,"units":20,"unit":"full_preact","shortcut":{"kind":"scale","shortcut":0.5},"batchnorm":false}"#,
    )
    .unwrap();
    let o = run_ok(
        &[
            "flow",
            "--spec",
            spec.to_str().unwrap(),
            "--data",
            "synthetic",
            "--batch",
            "16",
            "--steps",
            "1",
            "--branch-init-scale",
            "0.1",
        ],
        &tmp.join("flow.csv"),
    );
    let out = text(&o.stdout);
    // 0.5^7 = 7.8e-3 < 1e-2 < 0.5^6: from unit 20 - 7 = 13
    for it in [0, 1] {
        let want = format!("verdict at iteration {it}: vanishing from unit 13: ||dL/dx_0|| = ");
        assert!(out.contains(&want), "{want}\n{out}");
    }
    assert!(
        out.contains("the shortcut term carries it (20 of 20 units)"),
        "{out}"
    );
}

#[test]
fn report_marks_the_stage_boundaries_of_a_conv_net() {
    let tmp = TempDir::new("verdict-stages");
    let dir = tmp.join("r8");
    // ResNet-8: one unit per stage, stages 2 and 3 start at units 1 and 2
    run_ok(
        &[
            "train",
            "--arch",
            "cifar",
            "--depth",
            "8",
            "--width",
            "4",
            "--batch",
            "32",
            "--iters",
            "2",
            "--flow-every",
            "1",
            "--quiet",
        ],
        &dir,
    );
    let rep = tmp.join("report");
    run_ok(&["report", dir.to_str().unwrap()], &rep);
    for f in ["grad_norm.svg", "shortcut_branch.svg"] {
        let svg = std::fs::read_to_string(rep.join(f)).unwrap();
        assert!(
            svg.contains("unit 1: stride 2") && svg.contains("unit 2: stride 2"),
            "{f}"
        );
    }
    let svg = std::fs::read_to_string(rep.join("training.svg")).unwrap();
    assert!(!svg.contains("stride 2"));
}

#[test]
fn an_overflowed_batchnorm_statistic_is_a_divergence() {
    // the demo's BN net with 1x1-conv shortcuts: its forward signal grows
    // until a BatchNorm running variance overflows (iteration 14) while the
    // loss and the gradients stay finite; the run stops there, and its
    // weights are never written with the non-finite buffer
    let tmp = TempDir::new("verdict-bn-stats");
    let dir = tmp.join("run");
    let o = bin()
        .args([
            "train",
            "--arch",
            "mlp",
            "--units",
            "30",
            "--hidden",
            "64",
            "--shortcut",
            "conv1x1",
            "--lr",
            "0.05",
            "--iters",
            "40",
            "--flow-every",
            "31",
            "--quiet",
        ])
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let m = json(&dir.join("diverged.json"));
    let msg = m["message"].as_str().unwrap();
    assert!(
        msg.starts_with("the BatchNorm running statistic units.")
            && msg.contains(".running_var[")
            && msg.ends_with("became inf (the forward pass overflowed)"),
        "{m}"
    );
    assert!(m["iter"].as_u64().unwrap() < 40, "{m}");
    assert!(!dir.join("weights.safetensors").exists());
    assert_eq!(json(&dir.join("summary.json"))["verdict"], "diverged");
}

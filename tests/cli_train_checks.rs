//! What `resgrad train` refuses or warns about instead of silently doing
//! something else: `"batchnorm": false` on a conv net (exit 2), a paper
//! schedule longer than the run (a warning) and `--schedule-scale`, which
//! fits the preset's schedule to the run; and its per-step log, steps.csv.

mod common;

use common::{bin, TempDir};
use serde_json::Value;
use std::process::Output;

fn train(args: &[&str], out: &std::path::Path) -> Output {
    bin()
        .arg("train")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn batchnorm_false_on_a_conv_net_is_refused_not_ignored() {
    let tmp = TempDir::new("bn-conv");
    let spec = tmp.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"arch":"cifar","depth":8,"unit":"full_preact","shortcut":{"kind":"identity"},"batchnorm":false}"#,
    )
    .unwrap();
    for args in [
        vec!["--spec", spec.to_str().unwrap(), "--iters", "1"],
        vec![
            "--arch",
            "cifar",
            "--depth",
            "8",
            "--no-batchnorm",
            "--iters",
            "1",
        ],
    ] {
        let o = train(&args, &tmp.join("run"));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("\"batchnorm\": false is not supported for cifar"),
            "{}",
            stderr(&o)
        );
        assert!(!tmp.join("run").join("metrics.csv").exists());
    }
    // `flow` reads specs through the same check
    let o = bin()
        .args(["flow", "--data", "synthetic", "--spec"])
        .arg(&spec)
        .arg("--out")
        .arg(tmp.join("f.csv"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A small MLP with the paper's preset.
const PAPER_MLP: &[&str] = &[
    "--arch",
    "mlp",
    "--units",
    "2",
    "--hidden",
    "8",
    "--preset",
    "paper",
    "--batch",
    "32",
    "--flow-every",
    "0",
    "--quiet",
];

fn paper(extra: &[&str], out: &std::path::Path) -> Output {
    let args: Vec<&str> = PAPER_MLP.iter().chain(extra).copied().collect();
    train(&args, out)
}

#[test]
fn a_short_run_with_the_paper_schedule_is_warned_or_scaled() {
    let tmp = TempDir::new("schedule");
    let o = paper(&["--iters", "3"], &tmp.join("plain"));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: the 400-iteration warm-up covers the whole 3-iteration run"),
        "{err}"
    );
    assert!(
        err.contains("warning: the step milestones 32000, 48000 lie at or beyond the run's end"),
        "{err}"
    );

    // scaled: 3/64000 of the warm-up rounds to nothing, the milestones to 2
    let dir = tmp.join("scaled");
    let o = paper(&["--iters", "3", "--schedule-scale"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let sched = &cfg["schedule"];
    assert_eq!(sched["warmup"]["kind"], "none", "{sched}");
    assert_eq!(sched["decay"]["milestones"], serde_json::json!([2, 2]));
    // the last step (iteration 2) ran at 0.1 / 100
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lr: f64 = metrics
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!((lr - 1e-3).abs() < 1e-12, "{lr}");

    // nothing to scale from, or two ways of saying the schedule: refused
    for (args, msg) in [
        (
            vec!["--arch", "mlp", "--iters", "3", "--schedule-scale"],
            "give a preset",
        ),
        (
            vec!["--iters", "3", "--schedule-scale", "--milestones", "1"],
            "not both",
        ),
    ] {
        let o = if args[0] == "--arch" {
            train(&args, &tmp.join("bad"))
        } else {
            paper(&args, &tmp.join("bad"))
        };
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{}", stderr(&o));
    }
}

#[test]
fn steps_csv_logs_every_step_or_every_nth() {
    let tmp = TempDir::new("steps");
    let base = [
        "--arch",
        "mlp",
        "--units",
        "2",
        "--hidden",
        "8",
        "--batch",
        "32",
        "--iters",
        "7",
        "--eval-every",
        "3",
        "--flow-every",
        "0",
        "--quiet",
    ];
    let rows = |dir: &std::path::Path| -> Vec<Vec<f64>> {
        let t = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
        let mut l = t.lines();
        assert_eq!(l.next(), Some("iter,lr,loss,grad_norm,images_per_s"));
        l.map(|r| r.split(',').map(|v| v.parse().unwrap()).collect())
            .collect()
    };
    let every = tmp.join("every");
    let o = train(&base, &every);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = rows(&every);
    assert_eq!(
        r.iter().map(|r| r[0] as u64).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    for row in &r {
        assert_eq!(row.len(), 5);
        assert_eq!(row[1], 0.1);
        assert!(row[2] > 0.0 && row[2] < 10.0, "{row:?}");
        assert!(row[3] > 0.0 && row[3].is_finite(), "{row:?}");
        assert!(row[4] > 0.0, "{row:?}");
    }
    // the metrics' train_loss at iteration 3 is the mean of steps 0..3
    let m = std::fs::read_to_string(every.join("metrics.csv")).unwrap();
    let first: Vec<f64> = m
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let mean = (r[0][2] + r[1][2] + r[2][2]) / 3.0;
    assert!((first[3] - mean).abs() < 1e-5, "{} vs {mean}", first[3]);

    // every 3rd step; a resumed finished run adds no row twice
    let nth = tmp.join("nth");
    let mut args = base.to_vec();
    args.extend(["--log-every", "3"]);
    assert!(train(&args, &nth).status.success());
    let o = bin()
        .args(["train", "--quiet", "--resume"])
        .arg(&nth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let iters: Vec<u64> = rows(&nth).iter().map(|r| r[0] as u64).collect();
    assert_eq!(iters, vec![0, 3, 6]);
    // bit for bit the same losses as every step's log
    for (a, b) in rows(&nth).iter().zip([&r[0], &r[3], &r[6]]) {
        assert_eq!(a[2], b[2]);
    }
}

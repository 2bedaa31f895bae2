//! What `resgrad train` refuses or warns about instead of silently doing
//! something else: `"batchnorm": false` on a conv net (exit 2), a paper
//! schedule longer than the run (a warning) and `--schedule-scale`, which
//! fits the preset's schedule to the run (steps.csv: tests/steplog.rs).

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
fn a_negative_value_is_checked_as_a_value() {
    let tmp = TempDir::new("negative");
    let o = train(&["--lr", "-1", "--iters", "1"], &tmp.join("run"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("learning rate") && e.contains("-1"), "{e}");
    assert!(!e.contains("unexpected argument"), "{e}");
}

#[test]
fn every_flag_in_help_has_a_description() {
    for cmd in [
        "train", "flow", "bench", "sweep", "eval", "predict", "report", "grads", "derive", "demo",
        "peak",
    ] {
        let o = bin().args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd} --help");
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if !(t.starts_with("--") || t.starts_with("-h,")) {
                continue;
            }
            // clap writes the description after two spaces on the flag's
            // line, or (long help) on the next line
            let inline = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
            let below = !next.is_empty() && !next.starts_with('-');
            assert!(inline || below, "{cmd}: {t} has no description");
        }
    }
}

/// `--precision` goes into config.json; resuming with another precision is
/// refused (exit 2, naming the flag), never silently mixed.
#[test]
fn precision_is_recorded_and_a_resume_cannot_change_it() {
    let tmp = TempDir::new("precision");
    let dir = tmp.join("run");
    let o = train(
        &[
            "--units",
            "2",
            "--hidden",
            "8",
            "--iters",
            "2",
            "--flow-every",
            "0",
            "--quiet",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["precision"], "f32");
    let o = bin()
        .arg("train")
        .arg("--resume")
        .arg(&dir)
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--precision"), "{}", stderr(&o));
}

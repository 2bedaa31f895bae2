//! Logging every step: `steps.csv` (every step or `--log-every N`) and
//! `--tensorboard DIR`, whose event files are read back here (framing,
//! both CRCs, the Event protobuf) and compared with the CSV files.

mod common;

use common::{metrics_rows, run_ok, TempDir};
use resgrad::io::tensorboard::{event_files, read_events, What};
use std::collections::BTreeMap;

const MLP: [&str; 12] = [
    "train", "--arch", "mlp", "--units", "3", "--hidden", "16", "--batch", "32", "--iters", "12",
    "--quiet",
];

fn steps(dir: &std::path::Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(dir.join("steps.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("iter,loss,lr,grad_norm,images_per_s"));
    lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// tag -> [(step, value)] over every event file of `dir`.
fn scalars(dir: &std::path::Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut m: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for f in event_files(dir).unwrap() {
        let ev = read_events(&f).unwrap();
        assert_eq!(ev[0].what, What::FileVersion("brain.Event:2".into()));
        for e in ev {
            if let What::Scalars(v) = e.what {
                for (tag, x) in v {
                    m.entry(tag).or_default().push((e.step, x));
                }
            }
        }
    }
    m
}

#[test]
fn every_step_gets_a_row_and_log_every_thins_them() {
    let t = TempDir::new("steplog");
    let a = t.join("a");
    run_ok(
        &[&MLP[..], &["--eval-every", "5", "--lr", "0.05"]].concat(),
        &a,
    );
    let rows = steps(&a);
    assert_eq!(
        rows.iter().map(|r| r[0] as u64).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    for r in &rows {
        assert!(r[1].is_finite() && r[1] > 0.0, "{r:?}");
        assert_eq!(r[2], 0.05);
        assert!(r[3] > 0.0 && r[3].is_finite(), "grad norm {r:?}");
        assert!(r[4] > 0.0, "images/s {r:?}");
    }
    // metrics.csv's train_loss is the mean of the step losses since the last evaluation
    let m = metrics_rows(&a);
    let mean5: f64 = rows[..5].iter().map(|r| r[1]).sum::<f64>() / 5.0;
    let logged: f64 = m[0][3].parse().unwrap();
    assert!((mean5 - logged).abs() < 1e-5, "{mean5} vs {logged}");

    let b = t.join("b");
    run_ok(
        &[&MLP[..], &["--log-every", "4", "--lr", "0.05"]].concat(),
        &b,
    );
    let rb = steps(&b);
    assert_eq!(
        rb.iter().map(|r| r[0] as u64).collect::<Vec<_>>(),
        [4, 8, 12]
    );
    // same seed, same steps: the row at 4 averages steps 1..=4 of run a
    let mean4: f64 = rows[..4].iter().map(|r| r[1]).sum::<f64>() / 4.0;
    assert!((rb[0][1] - mean4).abs() < 1e-5, "{} vs {mean4}", rb[0][1]);
    assert_eq!(rb[2][3], rows[11][3], "grad norm at the logged step");

    let c = t.join("c");
    run_ok(&[&MLP[..], &["--log-every", "0"]].concat(), &c);
    assert!(!c.join("steps.csv").exists());
    assert_eq!(metrics_rows(&c).len(), 1);
}

#[test]
fn tensorboard_files_hold_steps_evaluations_and_probe_norms() {
    let t = TempDir::new("tb");
    let run = t.join("run");
    let tb = t.join("tb");
    let tb_s = tb.display().to_string();
    run_ok(
        &[
            &MLP[..],
            &[
                "--eval-every",
                "6",
                "--flow-every",
                "5",
                "--tensorboard",
                &tb_s,
            ],
        ]
        .concat(),
        &run,
    );
    let files = event_files(&tb).unwrap();
    assert_eq!(files.len(), 1);
    let s = scalars(&tb);
    let csv = steps(&run);
    let loss = &s["train/loss"];
    assert_eq!(loss.len(), 12);
    for ((step, v), r) in loss.iter().zip(&csv) {
        assert_eq!(*step, r[0] as i64);
        assert!(
            ((*v as f64) - r[1]).abs() <= 1e-5 * r[1].abs().max(1.0),
            "{v} vs {r:?}"
        );
    }
    for tag in ["train/lr", "train/grad_norm", "train/images_per_s"] {
        assert_eq!(s[tag].len(), 12, "{tag}");
    }
    let m = metrics_rows(&run);
    let acc = &s["eval/test_acc"];
    assert_eq!(acc.iter().map(|p| p.0).collect::<Vec<_>>(), [6, 12]);
    assert!((acc[1].1 as f64 - m[1][6].parse::<f64>().unwrap()).abs() < 1e-6);
    // the probe: every unit (0..=3 for 3 units) at iterations 0, 5, 10 and the last (11)
    let flow = std::fs::read_to_string(run.join("flow.csv")).unwrap();
    for u in 0..=3 {
        let tag = format!("probe/grad_norm/unit_{u:03}");
        let pts = &s[&tag];
        assert_eq!(
            pts.iter().map(|p| p.0).collect::<Vec<_>>(),
            [0, 5, 10, 11],
            "{tag}"
        );
        // same number as flow.csv's row for (iter 11, unit u)
        let row = flow
            .lines()
            .find(|l| l.starts_with(&format!("11,{u},")))
            .unwrap();
        let want: f64 = row.split(',').nth(2).unwrap().parse().unwrap();
        assert!((pts[3].1 as f64 - want).abs() <= 1e-6 * want.abs(), "{tag}");
    }
}

#[test]
fn a_resumed_run_appends_a_file_that_restarts_after_the_checkpoint() {
    let t = TempDir::new("tb-resume");
    let run = t.join("run");
    let tb = t.join("tb");
    let tb_s = tb.display().to_string();
    let first = [&MLP[..], &["--eval-every", "4", "--tensorboard", &tb_s]].concat();
    run_ok(&first, &run);
    // pretend the run was killed after iteration 10 with its checkpoint at 8:
    // resume from a copy of the finished run whose checkpoint says 8 is not
    // possible, so run 8 iterations of the same config, then add 2 rows by
    // hand as a killed run would have, and resume to 12
    let short = t.join("short");
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    let cfg8 = cfg.replace("\"iters\": 12", "\"iters\": 8");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::write(short.join("c.json"), &cfg8).unwrap();
    let tb2 = t.join("tb2");
    let cfg8 = cfg8.replace(&tb_s, &tb2.display().to_string());
    std::fs::write(short.join("c.json"), &cfg8).unwrap();
    let c = short.join("c.json").display().to_string();
    run_ok(&["train", "--config", &c, "--quiet"], &short);
    let extra = "9,9.0,0.1,1.0e0,1.0\n10,9.0,0.1,1.0e0,1.0\n";
    let mut csv = std::fs::read_to_string(short.join("steps.csv")).unwrap();
    csv.push_str(extra);
    std::fs::write(short.join("steps.csv"), csv).unwrap();
    // now resume it with 12 iterations
    std::fs::write(
        short.join("config.json"),
        cfg8.replace("\"iters\": 8", "\"iters\": 12"),
    )
    .unwrap();
    let o = common::bin()
        .args(["train", "--quiet", "--resume"])
        .arg(&short)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // steps.csv: 1..=12 once each, equal to the uninterrupted run but for images/s
    let (a, b) = (steps(&run), steps(&short));
    assert_eq!(
        b.iter().map(|r| r[0] as u64).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x[..4], y[..4]);
    }
    // two event files; the second starts with a SessionLog START at step 9
    let files = event_files(&tb2).unwrap();
    assert_eq!(files.len(), 2);
    let ev = read_events(&files[1]).unwrap();
    assert_eq!((ev[1].step, &ev[1].what), (9, &What::SessionStart));
    let s = scalars(&tb2);
    let steps_logged: Vec<i64> = s["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps_logged, (1..=12).collect::<Vec<_>>());
}

/// `timings.json`: every step and image counted once, each part a share of
/// the loop's wall time, the parts together no more than it; the summary
/// line printed without `--quiet`; a fresh run replaces it, a resumed
/// finished run keeps it.
#[test]
fn timings_account_for_the_loop() {
    let t = TempDir::new("timings");
    let a = t.join("a");
    let args: Vec<&str> = MLP.iter().copied().filter(|&x| x != "--quiet").collect();
    let o = run_ok(
        &[&args[..], &["--eval-every", "5", "--flow-every", "4"]].concat(),
        &a,
    );
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(a.join("timings.json")).unwrap()).unwrap()
    };
    let tm = read();
    assert_eq!(tm["steps"], 12);
    assert_eq!(tm["images"], 12 * 32);
    let wall = tm["wall_s"].as_f64().unwrap();
    let parts = [
        "batch_wait_s",
        "passes_s",
        "divergence_check_s",
        "probe_s",
        "update_s",
        "logging_s",
        "evaluation_s",
        "checkpoint_s",
    ];
    let mut sum = 0.0;
    for p in parts {
        let v = tm[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{p} missing: {tm}"));
        assert!(v >= 0.0 && v <= wall, "{p} = {v}, wall {wall}");
        sum += v;
    }
    assert!(sum <= wall * (1.0 + 1e-9), "parts {sum} > wall {wall}");
    for p in ["passes_s", "evaluation_s", "checkpoint_s", "update_s"] {
        assert!(tm[p].as_f64().unwrap() > 0.0, "{p}: {tm}");
    }
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("12 steps in ") && out.contains(" passes ") && out.contains(" evaluation "),
        "{out}"
    );
    // resuming the finished run runs no step: the timings stay
    let before = std::fs::read_to_string(a.join("timings.json")).unwrap();
    let o = resgrad_resume(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(a.join("timings.json")).unwrap(),
        before
    );
    // a fresh run over it (--overwrite, 3 steps) replaces them
    let three: Vec<&str> = args
        .iter()
        .map(|&x| if x == "12" { "3" } else { x })
        .collect();
    run_ok(&[&three[..], &["--overwrite"]].concat(), &a);
    assert_eq!(read()["steps"], 3);
}

fn resgrad_resume(dir: &std::path::Path) -> std::process::Output {
    common::bin()
        .args(["train", "--quiet", "--resume"])
        .arg(dir)
        .output()
        .unwrap()
}

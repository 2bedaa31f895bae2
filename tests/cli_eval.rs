//! `resgrad eval` and `resgrad predict` end to end on a small residual MLP
//! trained on the built-in digits: eval reproduces the run's own final
//! test accuracy (from the run directory, and from its weights and spec),
//! its confusion matrix adds up (and is the one the run's final evaluation
//! wrote, which `report` draws), a PNG of a test digit is classified
//! exactly as the same record by index, and bad input is exit 2.

mod common;

use common::{bin, run_ok, TempDir};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cmd(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = cmd(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    text(&o)
}

/// The last metrics.csv row's (test_loss, test_acc).
fn last_eval(run: &Path) -> (f64, f64) {
    let m = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let f: Vec<f64> = m
        .lines()
        .last()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    (f[5], f[6])
}

fn write_grey_png(path: &Path, w: u32, h: u32, pixels: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(f, w, h);
    e.set_color(png::ColorType::Grayscale);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap().write_image_data(pixels).unwrap();
}

#[test]
fn eval_and_predict_a_trained_run() {
    let tmp = TempDir::new("eval");
    let run = tmp.join("run");
    run_ok(
        &[
            "train",
            "--arch",
            "mlp",
            "--units",
            "2",
            "--hidden",
            "32",
            "--batch",
            "64",
            "--iters",
            "40",
            "--lr",
            "0.05",
            "--flow-every",
            "0",
            "--quiet",
        ],
        &run,
    );
    let r = run.to_str().unwrap();
    let (loss, acc) = last_eval(&run);
    assert!(acc > 0.5, "the run should have learned something: {acc}");

    // the run directory: its own evaluation set, the same numbers
    let json = tmp.join("eval.json");
    let out = ok(&["eval", r, "--json", json.to_str().unwrap()]);
    assert!(out.contains("on mnist5k/test (1000 images)"), "{out}");
    assert!(
        out.contains(&format!("accuracy {:.2}%", 100.0 * acc)),
        "{out}"
    );
    assert!(out.contains("confusion matrix (rows: true class, columns: predicted)"));
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["n"], 1000);
    assert_eq!(j["accuracy"].as_f64().unwrap(), acc);
    assert!((j["loss"].as_f64().unwrap() - loss).abs() < 1e-5 * loss.max(1.0));
    let conf: Vec<Vec<u64>> = serde_json::from_value(j["confusion"].clone()).unwrap();
    assert_eq!(conf.len(), 10);
    assert_eq!(conf.iter().flatten().sum::<u64>(), 1000);
    let diag: u64 = (0..10).map(|c| conf[c][c]).sum();
    assert_eq!(diag as f64 / 1000.0, acc);
    for (c, pc) in j["per_class"].as_array().unwrap().iter().enumerate() {
        // the built-in held-out digits: 100 per class
        assert_eq!(pc["n"], 100, "{pc}");
        assert_eq!(pc["correct"].as_u64().unwrap(), conf[c][c]);
    }

    // the run's final evaluation left the same matrix in confusion.json,
    // and the report draws it (confusion_1.png, the heat map's size)
    let own: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("confusion.json")).unwrap())
            .unwrap();
    assert_eq!(own["confusion"], j["confusion"]);
    assert_eq!(own["n"], 1000);
    assert_eq!(own["data"], "mnist5k/test");
    let report = tmp.join("report");
    ok(&["report", r, "--out", report.to_str().unwrap()]);
    let png = std::fs::read(report.join("confusion_1.png")).unwrap();
    let info = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap()
        .info()
        .clone();
    assert_eq!(
        (info.width, info.height),
        (resgrad::report::CONF_W, resgrad::report::CONF_H)
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("Confusion matrices"));

    // weights + spec: normalised with mnist5k's training split, as the run was
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let spec = tmp.join("spec.json");
    std::fs::write(&spec, cfg["spec"].to_string()).unwrap();
    let weights = run.join("weights.safetensors");
    let out2 = ok(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--spec",
        spec.to_str().unwrap(),
    ]);
    assert!(
        out2.contains(&format!("accuracy {:.2}%", 100.0 * acc)),
        "{out2}"
    );

    // predict: test record 7 by index, and the same digit as a PNG
    let by_index = ok(&["predict", r, "--index", "7", "--top", "3"]);
    let lines: Vec<&str> = by_index.lines().collect();
    assert_eq!(lines.len(), 4, "{by_index}");
    assert!(
        lines[0].starts_with("mnist5k test record 7 (label "),
        "{by_index}"
    );
    assert!(lines[1].starts_with(" 1. class "), "{by_index}");
    let p: Vec<f64> = lines[1..]
        .iter()
        .map(|l| {
            l.trim_end_matches('%')
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        p[0] >= p[1] && p[1] >= p[2] && p.iter().sum::<f64>() <= 100.0001,
        "{p:?}"
    );
    let split = resgrad::data::builtin_mnist5k().unwrap();
    let px: Vec<u8> = split.test.image(7).iter().map(|&v| v as u8).collect();
    let png_path = tmp.join("digit.png");
    write_grey_png(&png_path, 28, 28, &px);
    let by_png = ok(&[
        "predict",
        r,
        "--image",
        png_path.to_str().unwrap(),
        "--top",
        "3",
    ]);
    let tail = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(tail(&by_png), tail(&by_index));

    // bad input: exit 2 with the culprit named
    let small = tmp.join("small.png");
    write_grey_png(&small, 4, 4, &[0; 16]);
    for (args, msg) in [
        (
            vec!["predict", r, "--image", small.to_str().unwrap()],
            "the image is 4x4 pixels; the network was trained on 28x28",
        ),
        (
            vec!["predict", r, "--index", "1000"],
            "index 1000 is out of range: mnist5k/test has 1000 images",
        ),
        (vec!["eval"], "give a run directory, or --weights"),
        (vec!["eval", tmp.0.to_str().unwrap()], "config.json"),
    ] {
        let o = cmd(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// Rewrite the `__metadata__` entry `key` of a safetensors file's JSON header.
fn set_metadata(src: &Path, dst: &Path, key: &str, value: &str) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = Value::from(value);
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

/// The `__metadata__` of a safetensors file's JSON header.
fn metadata(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].clone()
}

#[test]
fn init_from_weights_and_the_stored_normalisation() {
    let tmp = TempDir::new("init-from");
    let base = [
        "train",
        "--arch",
        "mlp",
        "--units",
        "2",
        "--hidden",
        "32",
        "--no-batchnorm",
        "--batch",
        "64",
        "--flow-every",
        "0",
        "--quiet",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let a = tmp.join("a");
    let args = with(&["--iters", "30", "--lr", "0.05"]);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &a);
    let (loss_a, acc_a) = last_eval(&a);

    // the normalisation, in config.json and in the weights' metadata
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    let mean = cfg["norm"]["mean"].as_array().unwrap().clone();
    assert_eq!(mean.len(), 1);
    let m0 = mean[0].as_f64().unwrap();
    assert!(m0 > 10.0 && m0 < 80.0, "digits: mostly black pixels, {m0}");
    let wa = a.join("weights.safetensors");
    let meta: Value = serde_json::from_str(metadata(&wa)["norm"].as_str().unwrap()).unwrap();
    assert_eq!(meta["mean"], cfg["norm"]["mean"]);
    assert_eq!(meta["std"], cfg["norm"]["std"]);
    assert_eq!(meta["pixel_range"], serde_json::json!([0, 255]));

    // a run started from a's weights (one step at a negligible rate)
    // evaluates as a ended
    let b = tmp.join("b");
    let args = with(&[
        "--iters",
        "1",
        "--lr",
        "1e-12",
        "--init-from",
        wa.to_str().unwrap(),
    ]);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &b);
    let (loss_b, acc_b) = last_eval(&b);
    assert_eq!(acc_b, acc_a);
    assert!((loss_b - loss_a).abs() < 1e-5, "{loss_b} vs {loss_a}");
    // ... and the seeded initialisation does not
    let c = tmp.join("c");
    let args = with(&["--iters", "1", "--lr", "1e-12"]);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &c);
    assert!((last_eval(&c).0 - loss_a).abs() > 1e-2);

    // eval applies the weights' stored normalisation: other statistics in
    // the metadata give another loss
    let cfg_spec = tmp.join("spec.json");
    std::fs::write(&cfg_spec, cfg["spec"].to_string()).unwrap();
    let eval_loss = |w: &Path| -> f64 {
        let j = tmp.join("e.json");
        ok(&[
            "eval",
            "--weights",
            w.to_str().unwrap(),
            "--spec",
            cfg_spec.to_str().unwrap(),
            "--json",
            j.to_str().unwrap(),
        ]);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        v["loss"].as_f64().unwrap()
    };
    assert!((eval_loss(&wa) - loss_a).abs() < 1e-5);
    let other = tmp.join("other.safetensors");
    set_metadata(&wa, &other, "norm", r#"{"mean":[0.0],"std":[1.0]}"#);
    assert!((eval_loss(&other) - loss_a).abs() > 1e-2);

    // weights of another shape, and a second way of initialising: exit 2
    for (extra, msg) in [
        (
            vec!["--shortcut", "conv1x1"],
            "missing tensor \"units.0.shortcut.weight\"",
        ),
        (
            vec!["--branch-init-scale", "0.5"],
            "branch_init_scale does not apply",
        ),
    ] {
        let mut args = with(&["--iters", "1", "--init-from", wa.to_str().unwrap()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = bin()
            .args(&args)
            .arg("--out")
            .arg(tmp.join("bad"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{extra:?}: {err}");
    }
}

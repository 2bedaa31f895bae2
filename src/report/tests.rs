use std::path::{Path, PathBuf};

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "resgrad-report-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

#[test]
fn report_writes_all_outputs() {
    let tmp = TempDir::new("all");
    let runs = synthetic::write_example_runs(&tmp.path().join("runs")).unwrap();
    let out = tmp.path().join("report");
    let s = report(&runs, &out).unwrap();

    assert_eq!(s.index, out.join("index.html"));
    assert_eq!(s.files.len(), 7);
    for name in ["grad_norm", "shortcut_branch", "training"] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(&PNG_MAGIC), "{name}.png is not a PNG");
        assert!(png.len() > 5_000, "{name}.png is suspiciously small");
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}.svg"
        );
        assert!(!svg.contains("NaN"), "{name}.svg has a NaN coordinate");
    }
    // No temporary files left behind.
    for e in std::fs::read_dir(&out).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "left over {n}");
    }

    let html = std::fs::read_to_string(&s.index).unwrap();
    assert_eq!(html.matches("<tr class=\"run\">").count(), 3);
    assert_eq!(html.matches("<svg").count(), 3);
    assert_eq!(html.matches("<details>").count(), 3);
    for label in ["identity", "scale 0.5", "conv_diverged"] {
        assert!(html.contains(label), "missing run {label}");
    }
    assert!(html.contains("shortcut scale(0.5)"));
    assert!(html.contains("diverged (inferred)"));
    assert!(!html.contains("<?xml"));
}

#[test]
fn html_is_self_contained() {
    let tmp = TempDir::new("selfcontained");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    let s = report(&runs, &tmp.path().join("out")).unwrap();
    let html = std::fs::read_to_string(&s.index).unwrap();
    // Drop xmlns="..." attributes, then no URL may remain.
    let mut stripped = String::new();
    let mut rest = html.as_str();
    while let Some(i) = rest.find("xmlns") {
        stripped.push_str(&rest[..i]);
        let after = &rest[i..];
        let open = after.find('"').unwrap() + 1;
        let close = open + after[open..].find('"').unwrap();
        assert!(after[..close].ends_with("=\"http://www.w3.org/2000/svg"));
        rest = &after[close + 1..];
    }
    stripped.push_str(rest);
    let lower = stripped.to_lowercase();
    for bad in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(!lower.contains(bad), "index.html contains {bad}");
    }
}

#[test]
fn summary_rows_and_ratios() {
    let tmp = TempDir::new("rows");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    let s = report(&runs, &tmp.path().join("out")).unwrap();
    let [id, half, div] = s.runs.as_slice() else {
        panic!("3 runs")
    };

    // the runs differ in their shortcut alone (crate::report::labels)
    assert_eq!(id.label, "shortcut=identity");
    assert_eq!(half.label, "shortcut=scale(0.5)");
    // judged from flow.csv (crate::verdict): the shortcut term is the larger
    assert_eq!(id.verdict.as_deref(), Some("healthy, shortcut term"));
    assert_eq!(
        half.verdict.as_deref(),
        Some(
            format!(
                "vanishing from unit {}, shortcut term",
                synthetic::UNITS - 7
            )
            .as_str()
        )
    );
    assert_eq!(id.final_test_acc, Some(0.9187));
    let r = id.ratio_init.unwrap();
    assert!((0.9..1.5).contains(&r), "identity ratio {r}");

    // 0.5^U up to the synthetic wobble.
    let r = half.ratio_init.unwrap();
    let want = 0.5f64.powi(synthetic::UNITS as i32);
    assert!((r / want - 1.0).abs() < 0.2, "scale ratio {r} vs {want}");

    assert_eq!(div.label, "shortcut=conv1x1");
    assert_eq!(div.verdict.as_deref(), Some("diverged (inferred)"));
    assert!(div.ratio_init.unwrap() > 100.0);
    assert!(div.ratio_end.unwrap().is_nan());
    assert!(div.final_test_acc.unwrap().is_nan());
}

#[test]
fn parses_rust_float_formats_and_empty_cells() {
    let p = Path::new("flow.csv");
    let text = "iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor\n\
                10,1,2.5e-1,,,,\n\
                10,0,1.5e-3,NaN,inf,-0.5,2.5E-1\n\
                0,0,-inf,1,2,0,\r\n";
    let probes = parse_flow(p, text).unwrap();
    assert_eq!(probes.len(), 2);
    assert_eq!(probes[0].iter, 0);
    assert_eq!(probes[0].units[0].grad_norm, f64::NEG_INFINITY);
    let u = &probes[1].units;
    assert_eq!(u[0].unit, 0, "units sorted");
    assert_eq!(u[0].grad_norm, 1.5e-3);
    assert!(u[0].shortcut_norm.unwrap().is_nan());
    assert_eq!(u[0].branch_norm, Some(f64::INFINITY));
    assert_eq!(u[0].direct_factor, Some(0.25));
    assert_eq!(u[1].shortcut_norm, None);
    assert_eq!(probes[1].ratio(), Some(1.5e-3 / 0.25));
}

fn format_msg(e: Error) -> (PathBuf, String) {
    match e {
        Error::Format { path, msg } => (path, msg),
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

#[test]
fn malformed_csv_is_a_format_error_with_file_and_line() {
    let p = Path::new("runs/a/metrics.csv");
    let bad_number = "iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s\n\
                      0,0,0.1,2.3,0.1,,,1,0\n\
                      50,0.1,0.1,abc,0.2,,,1,1\n";
    let (path, msg) = format_msg(parse_metrics(p, bad_number).unwrap_err());
    assert_eq!(path, p);
    assert!(
        msg.contains("line 3") && msg.contains("train_loss") && msg.contains("abc"),
        "{msg}"
    );

    let missing_col = "iter,epoch,lr,train_acc,test_acc\n0,0,0.1,0.1,0.1\n";
    let (_, msg) = format_msg(parse_metrics(p, missing_col).unwrap_err());
    assert!(
        msg.contains("line 1") && msg.contains("train_loss"),
        "{msg}"
    );

    let short_row = "iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor\n0,0,1\n";
    let (_, msg) = format_msg(parse_flow(Path::new("flow.csv"), short_row).unwrap_err());
    assert!(msg.contains("line 2") && msg.contains("3 fields"), "{msg}");

    let bad_iter =
        "iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor\n-1,0,1,,,,\n";
    let (_, msg) = format_msg(parse_flow(Path::new("flow.csv"), bad_iter).unwrap_err());
    assert!(msg.contains("iter"), "{msg}");

    let (_, msg) = format_msg(parse_flow(Path::new("flow.csv"), "").unwrap_err());
    assert!(msg.contains("header"), "{msg}");
}

#[test]
fn malformed_run_dir_fails_the_report() {
    let tmp = TempDir::new("malformed");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    let flow = runs[1].join("flow.csv");
    let mut text = std::fs::read_to_string(&flow).unwrap();
    text.push_str("2000,3,oops,1,1,1,1\n");
    std::fs::write(&flow, text).unwrap();
    let out = tmp.path().join("out");
    let (path, msg) = format_msg(report(&runs, &out).unwrap_err());
    assert_eq!(path, flow);
    assert!(msg.contains("oops"), "{msg}");
    assert!(!out.join("index.html").exists());

    // A directory without config.json is not a run: an I/O error naming it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    match report(std::slice::from_ref(&empty), &out).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, empty.join("config.json")),
        other => panic!("{other:?}"),
    }
    // Bad JSON in config.json.
    std::fs::write(empty.join("config.json"), "{not json").unwrap();
    let (path, _) = format_msg(report(std::slice::from_ref(&empty), &out).unwrap_err());
    assert_eq!(path, empty.join("config.json"));
}

#[test]
fn optional_files_may_be_absent() {
    let tmp = TempDir::new("optional");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    std::fs::remove_file(runs[0].join("summary.json")).unwrap();
    std::fs::remove_file(runs[0].join("flow.csv")).unwrap();
    std::fs::remove_file(runs[1].join("metrics.csv")).unwrap();
    let s = report(&runs, &tmp.path().join("out")).unwrap();
    assert_eq!(s.runs[0].verdict, None);
    assert_eq!(s.runs[0].ratio_init, None);
    // Falls back to the last evaluated metrics row.
    assert!((s.runs[0].final_test_acc.unwrap() - 0.9).abs() < 0.05);
    let html = std::fs::read_to_string(&s.index).unwrap();
    assert!(html.contains("no flow.csv") && html.contains("no metrics.csv"));
    assert!(html.contains("no summary"));
}

#[test]
fn spec_labels() {
    let v: serde_json::Value = serde_json::from_str(
        r#"{"arch":"resnet","depth":110,"unit":"preact","shortcut":{"kind":"gate","init":-6,"learn":true},"width":16}"#,
    )
    .unwrap();
    assert_eq!(
        spec_label(&v),
        "resnet-110 · preact · shortcut gate(init=-6, learn=true) · width 16"
    );
    assert_eq!(spec_label(&serde_json::json!({"foo": 1})), r#"{"foo":1}"#);
}

#[test]
fn write_atomic_replaces_and_cleans_up() {
    let tmp = TempDir::new("atomic");
    let p = tmp.path().join("x.txt");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    assert!(write_atomic(&tmp.path().join("no/such/dir/x"), b"").is_err());
}

#[test]
fn html_escapes_labels() {
    let tmp = TempDir::new("escape");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    let cfg = runs[0].join("config.json");
    std::fs::write(&cfg, r#"{"name": "<b>x</b> & y", "spec": {"arch": "r"}}"#).unwrap();
    let s = report(&runs, &tmp.path().join("out")).unwrap();
    let html = std::fs::read_to_string(&s.index).unwrap();
    assert!(!html.contains("<b>x</b>"));
    assert!(html.contains("&lt;b&gt;x&lt;/b&gt; &amp; y"));
}

#[test]
fn legend_labels_drop_what_every_run_shares() {
    let mut l: Vec<String> = [
        "table1-small/shortcut=identity__seed=0",
        "table1-small/shortcut=conv1x1__seed=0",
        "table1-small/shortcut=scale-branch1-shortcut0.5__seed=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    super::shorten_labels(&mut l);
    assert_eq!(l, ["identity", "conv1x1", "scale-branch1-shortcut0.5"]);
    // different seeds keep their suffix; a lone label is left whole
    let mut l = vec!["g/a__seed=0".to_string(), "g/a__seed=1".to_string()];
    super::shorten_labels(&mut l);
    assert_eq!(l, ["a__seed=0", "a__seed=1"]);
    let mut l = vec!["runs/demo/identity".to_string()];
    super::shorten_labels(&mut l);
    assert_eq!(l, ["runs/demo/identity"]);
    // collisions or empty labels: unchanged
    let mut l = vec!["x/same".to_string(), "x/same".to_string()];
    super::shorten_labels(&mut l);
    assert_eq!(l, ["x/same", "x/same"]);
}

/// Run directories `root/<dir>` with the given config.json texts.
fn runs_with_configs(root: &Path, configs: &[(&str, &str)]) -> Vec<Run> {
    configs
        .iter()
        .map(|(dir, cfg)| {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), cfg).unwrap();
            load_run(&d).unwrap()
        })
        .collect()
}

#[test]
fn legend_labels_name_the_settings_that_differ() {
    let tmp = TempDir::new("labels");
    let cfg = |lr: &str, seed: u32| {
        format!(
            r#"{{"name": "resnet", "spec": {{"depth": 20, "unit": "original", "shortcut": {{"kind": "identity"}}}},
                "sgd": {{"momentum": 0.9}}, "schedule": {{"base_lr": {lr}, "decay": {{"kind": "constant"}}}},
                "seed": {seed}, "norm": {{"mean": [{seed}]}}}}"#
        )
    };
    // one setting differs (the runs' names are the same)
    let (a, b) = (cfg("0.1", 2), cfg("0.05", 2));
    let runs = runs_with_configs(&tmp.path().join("one"), &[("a", &a), ("b", &b)]);
    assert_eq!(labels::run_labels(&runs), ["base_lr=0.1", "base_lr=0.05"]);
    // two settings: both, in key order; `norm` is not a setting
    let (c, d) = (cfg("0.1", 2), cfg("0.05", 3));
    let runs = runs_with_configs(&tmp.path().join("two"), &[("c", &c), ("d", &d)]);
    assert_eq!(
        labels::run_labels(&runs),
        ["base_lr=0.1 seed=2", "base_lr=0.05 seed=3"]
    );
    // three runs, some sharing a value: every run shows every differing setting
    let e = cfg("0.05", 2);
    let runs = runs_with_configs(
        &tmp.path().join("three"),
        &[("c", &c), ("d", &d), ("e", &e)],
    );
    assert_eq!(
        labels::run_labels(&runs),
        [
            "base_lr=0.1 seed=2",
            "base_lr=0.05 seed=3",
            "base_lr=0.05 seed=2"
        ]
    );
    // identical configs: the directory names
    let runs = runs_with_configs(&tmp.path().join("same"), &[("run_x", &a), ("run_y", &a)]);
    assert_eq!(labels::run_labels(&runs), ["run_x", "run_y"]);
    // identical configs in directories of the same name: the paths' differing parts
    let root = tmp.path().join("dirs");
    let runs = runs_with_configs(&root, &[("g1/run", &a), ("g2/run", &a)]);
    assert_eq!(labels::run_labels(&runs), ["g1/run", "g2/run"]);
    // identical configs but for their names: the names
    let named = a.replace(r#""name": "resnet""#, r#""name": "other""#);
    let runs = runs_with_configs(&tmp.path().join("names"), &[("p", &a), ("q", &named)]);
    assert_eq!(labels::run_labels(&runs), ["resnet", "other"]);
    // the spec's settings first; a kind is named after its object, the
    // shortcut after the spec line; a
    // setting only one run has is "none" in the others; equal tails are
    // told apart by their parents
    let f = r#"{"spec": {"shortcut": {"kind": "scale", "shortcut": 0.5, "branch": 1.0}},
               "schedule": {"decay": {"kind": "step"}}, "sgd": {"momentum": 0.9}, "bn": {"momentum": 0.1}}"#;
    let g = r#"{"spec": {"shortcut": {"kind": "identity"}}, "schedule": {"decay": {"kind": "constant"}},
               "sgd": {"momentum": 0.8}, "bn": {"momentum": 0.2}}"#;
    let runs = runs_with_configs(&tmp.path().join("kinds"), &[("f", f), ("g", g)]);
    assert_eq!(
        labels::run_labels(&runs),
        [
            "shortcut=scale(branch=1.0,shortcut=0.5) bn.momentum=0.1 decay=step sgd.momentum=0.9",
            "shortcut=identity bn.momentum=0.2 decay=constant sgd.momentum=0.8",
        ]
    );
    let h = r#"{"seed": 1}"#;
    let i = r#"{"seed": 1, "init_from": "w.safetensors"}"#;
    let runs = runs_with_configs(&tmp.path().join("none"), &[("h", h), ("i", i)]);
    assert_eq!(
        labels::run_labels(&runs),
        ["init_from=none", "init_from=w.safetensors"]
    );
}

#[test]
fn too_many_differences_fall_back_to_the_names() {
    let tmp = TempDir::new("labels-many");
    let a = r#"{"name": "first", "a": 1, "b": 1, "c": 1, "d": 1, "e": 1}"#;
    let b = r#"{"name": "second", "a": 2, "b": 2, "c": 2, "d": 2, "e": 2}"#;
    let runs = runs_with_configs(tmp.path(), &[("x", a), ("y", b)]);
    assert_eq!(labels::run_labels(&runs), ["first", "second"]);
}

/// A `confusion.json` as `resgrad train` writes it (extra fields included).
fn confusion_json(confusion: &[Vec<usize>]) -> String {
    let n: usize = confusion.iter().flatten().sum();
    serde_json::json!({
        "weights": "w", "data": "digits/test", "n": n, "loss": 0.5, "accuracy": 0.5,
        "per_class": [], "confusion": confusion,
    })
    .to_string()
}

#[test]
fn confusion_heat_maps_for_the_runs_that_have_one() {
    let tmp = TempDir::new("confusion");
    let runs = synthetic::write_example_runs(&tmp.path().join("runs")).unwrap();
    let m: Vec<Vec<usize>> = (0..10)
        .map(|t| {
            (0..10)
                .map(|p| if t == p { 90 } else { t % 3 + p % 2 })
                .collect()
        })
        .collect();
    std::fs::write(runs[1].join("confusion.json"), confusion_json(&m)).unwrap();
    let out = tmp.path().join("report");
    let s = report(&runs, &out).unwrap();
    // the second run's, numbered after it; no file for the others
    assert_eq!(s.files.len(), 9);
    assert!(!out.join("confusion_1.png").exists());
    let png = std::fs::read(out.join("confusion_2.png")).unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (CONF_W, CONF_H));
    // a real picture: white, the full colour of the diagonal, shades between
    let px = &buf[..info.buffer_size()];
    let mut colours: Vec<&[u8]> = px.chunks_exact(3).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(px.chunks_exact(3).any(|c| c == [31, 119, 180]));
    let svg = std::fs::read_to_string(out.join("confusion_2.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("\n90\n</text>"),
        "the counts are written"
    );
    let html = std::fs::read_to_string(&s.index).unwrap();
    assert!(html.contains("Confusion matrices") && html.contains("confusion_2.png"));
    assert_eq!(html.matches("<svg").count(), 4);
}

#[test]
fn a_malformed_confusion_json_names_the_file() {
    let tmp = TempDir::new("confusion-bad");
    let runs = synthetic::write_example_runs(tmp.path()).unwrap();
    let p = runs[0].join("confusion.json");
    for (text, want) in [
        (
            confusion_json(&[vec![1, 2], vec![3]]),
            "not square: row 1 has 1 entries",
        ),
        (
            confusion_json(&[vec![1, 2], vec![3, 4]]).replace("\"n\":10", "\"n\":11"),
            "counts 10 images, \"n\" says 11",
        ),
        (confusion_json(&[]), "the confusion matrix is empty"),
        ("{\"data\": 1}".to_string(), "not an evaluation report"),
    ] {
        std::fs::write(&p, &text).unwrap();
        let e = report(&runs, &tmp.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("confusion.json") && e.contains(want),
            "{text}: {e}"
        );
    }
}

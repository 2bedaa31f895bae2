//! `resgrad sweep` end to end with the built binary: a tiny MLP grid on the
//! built-in digits, two jobs at a time; divergence recorded as "fail";
//! reruns skip finished runs, resume a killed one exactly, retry errored
//! ones; bad grids exit 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resgrad(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resgrad"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run resgrad")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("resgrad-sweep-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 2 shortcut variants x 2 seeds; the scaled one (3^8 through 8 units, lr
/// 0.5) diverges within a few iterations, the identity one trains.
const GRID: &str = r#"
name = "tiny"
[base]
spec = { arch = "mlp", hidden = 16, units = 8, unit = "full_preact", shortcut = { kind = "identity" }, batchnorm = false }
data = "mnist5k"
iters = 20
batch = 32
eval_every = 5
flow_every = 0
[grid]
"shortcut+lr" = [ [{ kind = "identity" }, 0.05], [{ kind = "scale", shortcut = 3.0 }, 0.5] ]
seed = [0, 1]
"#;

const IDS: [&str; 4] = [
    "shortcut+lr=identity-0.05__seed=0",
    "shortcut+lr=identity-0.05__seed=1",
    "shortcut+lr=scale-3-0.5__seed=0",
    "shortcut+lr=scale-3-0.5__seed=1",
];

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn sweep_records_tabulates_skips_and_resumes() {
    let t = Tmp::new("main");
    std::fs::write(t.0.join("tiny.toml"), GRID).unwrap();
    let out = t.0.join("out");

    // 1. the whole grid, two processes at a time
    let o = resgrad(&["sweep", "tiny.toml", "--out", "out", "--jobs", "2"], &t.0);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("4 runs (2 cells)") && s.contains("4 to start") && s.contains("2 at a time"),
        "{s}"
    );
    for id in &IDS[..2] {
        let d = json(&out.join(id).join("done.json"));
        assert_eq!(d["status"], "done", "{d}");
        assert_eq!(d["iter"], 20, "{d}");
        assert!(out.join(id).join("config.json").exists());
        assert!(!out.join(id).join("failed.json").exists());
    }
    for id in &IDS[2..] {
        let f = json(&out.join(id).join("failed.json"));
        assert_eq!(f["status"], "diverged", "{f}");
        assert_eq!(f["exit_code"], 3, "{f}");
        assert!(f["message"].as_str().unwrap().contains("diverged"), "{f}");
        assert!(!out.join(id).join("done.json").exists());
    }
    // the config each run was started with is the grid's
    let cfg = json(&out.join(IDS[3]).join("config.json"));
    assert_eq!(cfg["seed"], 1);
    assert_eq!(cfg["schedule"]["base_lr"], 0.5);
    assert_eq!(cfg["spec"]["shortcut"]["shortcut"], 3.0);
    // the report over every run (the diverged ones included), legends
    // without the sweep's common prefix
    let html = read(&out.join("report").join("index.html"));
    for f in ["grad_norm.png", "grad_norm.svg", "training.svg"] {
        assert!(out.join("report").join(f).exists(), "report/{f} missing");
    }
    assert!(html.contains("<svg"), "index.html without inline SVG");
    let svg = read(&out.join("report").join("grad_norm.svg"));
    assert!(svg.contains("identity"), "legend lost the variant name");
    let md = read(&out.join("results.md"));
    assert!(
        md.contains("| shortcut+lr | runs | median | min–max | fail | per seed |"),
        "{md}"
    );
    assert!(
        md.contains("| scale 3, 0.5 | 2 | fail | – | 2/2 | 0: fail, 1: fail |"),
        "{md}"
    );
    assert!(md.contains("| identity, 0.05 | 2 | "), "{md}");
    assert!(
        s.contains("| scale 3, 0.5 | 2 | fail |"),
        "the table is printed: {s}"
    );
    let csv = read(&out.join("results.csv"));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("shortcut+lr,runs,ok,fail,unfinished,median_test_error_pct"),
        "{csv}"
    );
    assert!(lines[1].starts_with("\"identity, 0.05\",2,2,0,0,"), "{csv}");
    assert!(
        lines[2].starts_with("\"scale 3, 0.5\",2,0,2,0,,,,0:fail;1:fail"),
        "{csv}"
    );
    assert_eq!(read(&out.join("runs.csv")).lines().count(), 5);
    assert_eq!(read(&out.join("grid.toml")), GRID);

    // 2. rerun: nothing is trained again, diverged runs are not retried
    let marks: Vec<_> = IDS
        .iter()
        .map(|id| {
            let d = out.join(id);
            let m = if d.join("done.json").exists() {
                "done.json"
            } else {
                "failed.json"
            };
            (d.join(m), mtime(&d.join(m)))
        })
        .collect();
    let o = resgrad(&["sweep", "tiny.toml", "--out", "out", "--jobs", "2"], &t.0);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("0 to start, 0 to resume, 2 already done, 2 diverged earlier"),
        "{s}"
    );
    assert!(!s.contains("[1/"), "no run should start: {s}");
    for (p, m) in &marks {
        assert_eq!(mtime(p), *m, "{} was rewritten", p.display());
    }
    assert_eq!(read(&out.join("results.md")), md);

    // 3. a run killed part-way (checkpoint at iteration 10, no marker) is
    //    resumed from its checkpoint and ends exactly where an
    //    uninterrupted run ends
    let run = out.join(IDS[0]);
    let full_metrics = read(&run.join("metrics.csv"));
    let cfg_text = read(&run.join("config.json"));
    std::fs::remove_file(run.join("done.json")).unwrap();
    let mut cfg10: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    cfg10["iters"] = 10.into();
    std::fs::write(t.0.join("cfg10.json"), cfg10.to_string()).unwrap();
    let o = resgrad(
        &[
            "train",
            "--config",
            "cfg10.json",
            "--out",
            run.to_str().unwrap(),
            "--quiet",
            "--overwrite",
        ],
        &t.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(run.join("config.json"), &cfg_text).unwrap(); // as the sweep wrote it
    assert_eq!(read(&run.join("metrics.csv")).lines().count(), 3); // header, 5, 10
    let o = resgrad(&["sweep", "tiny.toml", "--out", "out", "--jobs", "2"], &t.0);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("0 to start, 1 to resume, 1 already done, 2 diverged earlier"),
        "{s}"
    );
    assert!(s.contains(&format!("{} (resumed): done", IDS[0])), "{s}");
    let cols = |t: &str| -> Vec<String> {
        // everything but the timing columns (images_per_s, wall_s)
        t.lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(cols(&read(&run.join("metrics.csv"))), cols(&full_metrics));
    assert_eq!(json(&run.join("done.json"))["iter"], 20);
    assert_eq!(read(&out.join("results.md")), md);
}

#[test]
fn errored_runs_are_recorded_and_retried() {
    let t = Tmp::new("err");
    let grid = GRID
        .replace("data = \"mnist5k\"", "data = \"mnist:no-such-dir\"")
        .replace("seed = [0, 1]", "seed = [0]");
    std::fs::write(t.0.join("g.toml"), &grid).unwrap();
    let o = resgrad(&["sweep", "g.toml", "--out", "out"], &t.0);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("2 of 2 runs stopped with an error"), "{s}");
    let f = json(
        &t.0.join("out")
            .join("shortcut+lr=identity-0.05__seed=0")
            .join("failed.json"),
    );
    assert_eq!(f["status"], "error", "{f}");
    assert_eq!(f["exit_code"], 2, "{f}");
    assert!(
        f["message"].as_str().unwrap().contains("no-such-dir"),
        "{f}"
    );
    let md = read(&t.0.join("out").join("results.md"));
    assert!(md.contains("unfinished"), "{md}");
    // not a result: the next sweep tries again
    let o = resgrad(&["sweep", "g.toml", "--out", "out"], &t.0);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("2 to start, 0 to resume, 0 already done"), "{s}");
}

#[test]
fn bad_grids_exit_2_with_clear_messages() {
    let t = Tmp::new("bad");
    let cases = [
        (format!("{GRID}colour = 1\n"), "unknown grid key `colour`"),
        (
            GRID.replace("name = \"tiny\"", "nmae = \"tiny\""),
            "unknown top-level key `nmae`",
        ),
        (
            GRID.replace("iters = 20", "itres = 20"),
            "unknown key `itres` in [base]",
        ),
        (
            GRID.replace("kind = \"identity\" }, 0.05", "kind = \"identiy\" }, 0.05"),
            "identiy",
        ),
        (GRID.replace("[grid]", "[grid"), "TOML parse error"),
        (GRID.replace("seed = [0, 1]", "seed = 0"), "must be a list"),
    ];
    for (i, (grid, needle)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        std::fs::write(t.0.join(&name), grid).unwrap();
        let o = resgrad(&["sweep", &name, "--out", "out"], &t.0);
        let s = text(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {s}");
        assert!(s.contains(needle), "{needle}: {s}");
        assert!(s.contains(&name), "the message names the file: {s}");
        assert!(!t.0.join("out").exists(), "nothing may start: {s}");
    }
    let o = resgrad(&["sweep", "missing.toml"], &t.0);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_changed_grid_does_not_reuse_old_runs() {
    let t = Tmp::new("changed");
    let grid = GRID
        .replace("seed = [0, 1]", "seed = [0]")
        .replace("iters = 20", "iters = 5");
    std::fs::write(t.0.join("g.toml"), &grid).unwrap();
    let o = resgrad(&["sweep", "g.toml", "--out", "out", "--jobs", "2"], &t.0);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(t.0.join("g.toml"), grid.replace("iters = 5", "iters = 6")).unwrap();
    let o = resgrad(&["sweep", "g.toml", "--out", "out"], &t.0);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("first difference: `iters`"), "{s}");
    // adding seeds to a finished sweep only runs the new ones
    std::fs::write(
        t.0.join("g.toml"),
        grid.replace("seed = [0]", "seed = [0, 1]"),
    )
    .unwrap();
    let o = resgrad(&["sweep", "g.toml", "--out", "out", "--jobs", "2"], &t.0);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("2 to start, 0 to resume, 1 already done, 1 diverged earlier"),
        "{s}"
    );
}

#[test]
fn the_paper_grids_parse_and_plan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    for (file, runs, cells) in [
        ("table1.toml", 55, 11),
        ("table2.toml", 50, 10),
        ("table1-small.toml", 11, 11),
        ("table2-small.toml", 10, 10),
    ] {
        let g = resgrad::sweep::load_grid(&dir.join(file)).unwrap();
        let plan = g.plan().unwrap();
        assert_eq!(plan.len(), runs, "{file}");
        let mut seen: Vec<&Vec<(String, String)>> = vec![];
        for r in &plan {
            if !seen.contains(&&r.cell) {
                seen.push(&r.cell);
            }
            assert!(r.config.validate().is_ok(), "{file}: {}", r.id);
        }
        assert_eq!(seen.len(), cells, "{file}");
    }
    let g = resgrad::sweep::load_grid(&dir.join("table2.toml")).unwrap();
    let plan = g.plan().unwrap();
    let last = &plan[plan.len() - 1].config;
    assert_eq!(
        (last.spec.depth, last.iters, last.batch),
        (Some(164), 64_000, 128)
    );
    let g = resgrad::sweep::load_grid(&dir.join("table1-small.toml")).unwrap();
    let c = &g.plan().unwrap()[0].config;
    assert_eq!((c.spec.depth, c.iters, c.batch), (Some(20), 2000, 32));
    for (iter, lr) in [
        (0, 0.005),
        (99, 0.005),
        (100, 0.05),
        (1000, 0.005),
        (1999, 0.0005),
    ] {
        assert!((c.schedule.lr_at(iter) - lr).abs() < 1e-12, "lr at {iter}");
    }
}

//! Helpers shared by the run-directory tests (kill/resume, determinism):
//! temp dirs, running the binary, comparing two run directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use resgrad::io::safetensors::SafeTensors;

pub mod npz;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "resgrad-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
    /// `join(p)` as a string, for command lines.
    pub fn s(&self, p: &str) -> String {
        self.join(p).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_resgrad"))
}

/// `resgrad train` on `data` (a `--data` value) with a tiny MLP (1 unit of
/// width 8, 1 iteration of batch 4, no probe), into `out` (overwritten):
/// the bad-input and misuse tests' probe of a data reader.
pub fn train_tiny(data: &str, out: &Path) -> Output {
    bin()
        .args([
            "train",
            "--data",
            data,
            "--arch",
            "mlp",
            "--units",
            "1",
            "--hidden",
            "8",
            "--iters",
            "1",
            "--batch",
            "4",
            "--flow-every",
            "0",
            "--quiet",
            "--overwrite",
            "--out",
        ])
        .arg(out)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run resgrad")
}

pub fn run_ok(args: &[&str], out: &Path) -> Output {
    let o = bin()
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run resgrad");
    assert!(
        o.status.success(),
        "resgrad {args:?} failed: {:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// metrics.csv rows as their fields.
pub fn metrics_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s")
    );
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The metrics columns that measure time and so differ between any two runs.
pub const TIMING_COLUMNS: [usize; 2] = [7, 8]; // images_per_s, wall_s

/// Assert two run directories hold the same results bit for bit:
/// checkpoint tensors and metadata (except `wall_s`), every metrics column
/// except the timing ones, steps.csv but for images_per_s, flow.csv and
/// config.json byte for byte.
pub fn assert_same_run(a: &Path, b: &Path) {
    let ca = SafeTensors::read(&a.join("checkpoint.safetensors")).unwrap();
    let cb = SafeTensors::read(&b.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        ca.tensors.keys().collect::<Vec<_>>(),
        cb.tensors.keys().collect::<Vec<_>>()
    );
    for (name, ta) in &ca.tensors {
        let tb = &cb.tensors[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        assert!(ta.bytes == tb.bytes, "tensor {name} differs");
    }
    for (k, va) in &ca.metadata {
        if k == "wall_s" {
            continue;
        }
        assert_eq!(Some(va), cb.metadata.get(k), "checkpoint metadata {k}");
    }
    let (ma, mb) = (metrics_rows(a), metrics_rows(b));
    assert_eq!(ma.len(), mb.len(), "metrics rows");
    for (ra, rb) in ma.iter().zip(&mb) {
        assert_eq!(ra.len(), 9);
        for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
            if !TIMING_COLUMNS.contains(&i) {
                assert_eq!(x, y, "metrics column {i} of row {ra:?} vs {rb:?}");
            }
        }
    }
    // steps.csv: one row per iteration, equal but for images_per_s
    let steps = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("steps.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(k, _)| k).to_string())
            .collect()
    };
    let (sa, sb) = (steps(a), steps(b));
    assert_eq!(sa.len(), sb.len(), "steps.csv rows");
    for (ra, rb) in sa.iter().zip(&sb) {
        assert_eq!(ra, rb, "steps.csv row");
    }
    for f in ["flow.csv", "config.json"] {
        let fa = std::fs::read(a.join(f)).unwrap();
        let fb = std::fs::read(b.join(f)).unwrap();
        assert!(fa == fb, "{f} differs");
    }
}

/// No temporary files left in a run directory.
pub fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp."),
            "temporary file {name} left in {}",
            dir.display()
        );
    }
}

//! `resgrad demo`, the main job: one deep residual MLP on the built-in
//! 5,000 MNIST digits, trained in several variants of its shortcut and
//! unit, with the gradient-flow probe on; a table of test accuracy,
//! ||dL/dx_0|| / ||dL/dx_L|| at initialisation and at the end, and the
//! verdict of `crate::verdict` (from which unit, which term carries it).

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::{Arch, Block, Downsample, Shortcut, Spec, UnitKind};
use crate::train::{train_run, DataSource, RunOutcome, TrainConfig};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Size of the demo network and run.
#[derive(Clone, Debug, Serialize)]
pub struct DemoSettings {
    pub units: usize,
    pub hidden: usize,
    pub epochs: u64,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// also train every variant with BatchNorm in its branches (as in the
    /// paper), where BN rescales the branch Jacobian (see the README)
    pub with_bn: bool,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings {
            units: 30,
            hidden: 64,
            epochs: 8,
            batch: 128,
            lr: 0.05,
            seed: 0,
            with_bn: true,
        }
    }
}

/// One variant: a name and its (unit, shortcut).
pub fn variants() -> Vec<(&'static str, UnitKind, Shortcut)> {
    vec![
        (
            "identity, full pre-activation",
            UnitKind::FullPreact,
            Shortcut::Identity,
        ),
        (
            "identity, original unit",
            UnitKind::Original,
            Shortcut::Identity,
        ),
        (
            "constant scaling 0.5",
            UnitKind::FullPreact,
            Shortcut::Scale {
                shortcut: 0.5,
                branch: 1.0,
            },
        ),
        (
            "constant scaling 1.5",
            UnitKind::FullPreact,
            Shortcut::Scale {
                shortcut: 1.5,
                branch: 1.0,
            },
        ),
        ("1x1 conv shortcut", UnitKind::FullPreact, Shortcut::Conv1x1),
        (
            "exclusive gating",
            UnitKind::FullPreact,
            Shortcut::ExclusiveGate { bias_init: -2.0 },
        ),
        (
            "shortcut-only gating",
            UnitKind::FullPreact,
            Shortcut::ShortcutGate { bias_init: -2.0 },
        ),
        (
            "plain net (no shortcut)",
            UnitKind::FullPreact,
            Shortcut::None,
        ),
    ]
}

/// One row of the demo's table.
#[derive(Clone, Debug, Serialize)]
pub struct DemoRow {
    pub variant: String,
    pub dir: PathBuf,
    pub test_acc: f64,
    pub ratio_init: Option<f64>,
    pub ratio_end: Option<f64>,
    pub verdict: String,
    pub diverged: Option<String>,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect::<String>()
        .replace("__", "_")
}

/// Train every variant into `out/<variant>/` (without BN) and
/// `out/bn/<variant>/` (with BN), and write `out/summary.md`.
pub fn run_demo(out: &Path, s: &DemoSettings) -> Result<(Vec<DemoRow>, Vec<DemoRow>)> {
    let plain = run_part(out, s, false)?;
    let bn = if s.with_bn {
        run_part(&out.join("bn"), s, true)?
    } else {
        vec![]
    };
    let mut md = format!(
        "# resgrad demo\n\n{}-unit residual MLP (hidden {}), built-in 5,000 MNIST digits, {} epochs per variant, batch {}, lr {}.\n\n## Without BatchNorm: the direct term is prod(lambda)\n\n{}",
        s.units, s.hidden, s.epochs, s.batch, s.lr, format_table(&plain)
    );
    if !bn.is_empty() {
        md.push_str("\n## With BatchNorm in every branch (the paper's units)\n\n");
        md.push_str(&format_table(&bn));
    }
    write_atomic(&out.join("summary.md"), md.as_bytes())?;
    Ok((plain, bn))
}

fn run_part(out: &Path, s: &DemoSettings, batchnorm: bool) -> Result<Vec<DemoRow>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut rows = Vec::new();
    let per_epoch = 4000 / s.batch as u64;
    for (name, unit, shortcut) in variants() {
        let spec = Spec {
            arch: Arch::Mlp,
            depth: None,
            block: Block::Basic,
            unit,
            shortcut,
            downsample: Downsample::B,
            width: 16,
            classes: 10,
            in_channels: 1,
            in_features: Some(784),
            hidden: Some(s.hidden),
            units: Some(s.units),
            batchnorm,
        };
        let label = if batchnorm {
            format!("{name} (BN)")
        } else {
            name.to_string()
        };
        let mut cfg = TrainConfig::new(&label, spec, DataSource::Mnist5k);
        cfg.batch = s.batch;
        cfg.schedule.base_lr = s.lr;
        cfg.iters = s.epochs * per_epoch;
        cfg.seed = s.seed;
        cfg.flow_every = per_epoch;
        let dir = out.join(slug(name));
        let o = train_run(&cfg, &dir, false, false)?;
        // train_run judged the run and wrote summary.json (crate::verdict)
        rows.push(DemoRow {
            variant: label.clone(),
            dir: dir.clone(),
            test_acc: o.last.test_acc,
            ratio_init: RunOutcome::ratio(&o.flow_first),
            ratio_end: RunOutcome::ratio(&o.flow_last),
            verdict: o.verdict.short(),
            diverged: o.diverged.clone(),
        });
    }
    Ok(rows)
}

/// The demo's table as Markdown.
pub fn format_table(rows: &[DemoRow]) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3e}")).unwrap_or_else(|| "-".into());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| variant | test acc | ‖dL/dx_0‖/‖dL/dx_L‖ at init | at end | verdict |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|");
    for r in rows {
        let acc = if r.diverged.is_some() {
            "fail".to_string()
        } else {
            format!("{:.2}%", 100.0 * r.test_acc)
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.variant,
            acc,
            f(r.ratio_init),
            f(r.ratio_end),
            r.verdict
        );
    }
    t
}

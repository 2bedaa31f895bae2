//! `resgrad report`: turn training run directories into a report of how
//! the gradients flowed.
//!
//! ```text
//! RUN_DIR/config.json    required; opaque apart from "name" and "spec"
//! RUN_DIR/metrics.csv    iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s
//! RUN_DIR/flow.csv       iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor
//! RUN_DIR/summary.json   optional {verdict, ratio_init, ratio_end, test_acc}
//! RUN_DIR/confusion.json optional {data, n, confusion} (the final evaluation)
//! ```
//!
//! [`report`] writes to `REPORT_DIR`: `grad_norm`, `shortcut_branch` and
//! `training` as `.png` and `.svg`, `confusion_<i>` (`.png`, `.svg`) for the
//! i-th run (from 1) where it has a `confusion.json`, and a self-contained
//! `index.html` that inlines the SVGs. Every file is written atomically.

mod confusion;
mod figures;
mod html;
mod labels;
mod parse;
mod plots;
#[doc(hidden)]
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use confusion::{Confusion, CONF_H, CONF_W};
pub use parse::{
    load_run, parse_flow, parse_metrics, spec_label, FlowProbe, MetricRow, Run, RunSummaryFile,
};

use crate::error::{Error, Result};

/// One row of the report's summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub label: String,
    pub dir: PathBuf,
    pub spec_label: String,
    pub final_test_acc: Option<f64>,
    pub ratio_init: Option<f64>,
    pub ratio_end: Option<f64>,
    pub verdict: Option<String>,
}

/// What [`report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// `REPORT_DIR/index.html`.
    pub index: PathBuf,
    /// Every file written, `index.html` last.
    pub files: Vec<PathBuf>,
    pub runs: Vec<RunRow>,
}

/// Build the report for `runs` (run directories) into `out`, creating `out`
/// if needed. Fails on the first unreadable or malformed run; nothing is
/// written then.
pub fn report(runs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    if runs.is_empty() {
        return Err(Error::Config("report: no run directories given".into()));
    }
    let mut loaded = runs
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<Run>>>()?;
    let labels = labels::run_labels(&loaded);
    for (r, l) in loaded.iter_mut().zip(labels) {
        r.label = l;
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let mut files = Vec::new();
    let mut figures = Vec::new();
    for spec in figures::figures(&loaded) {
        let png_path = out.join(format!("{}.png", spec.name));
        let svg_path = out.join(format!("{}.svg", spec.name));
        let fig = plots::render(spec, &png_path)?;
        write_atomic(&png_path, &fig.png)?;
        write_atomic(&svg_path, fig.svg.as_bytes())?;
        files.push(png_path);
        files.push(svg_path);
        figures.push(fig);
    }
    // each run's confusion matrix, where its final evaluation left one
    let mut heat_maps = Vec::new();
    for (i, run) in loaded.iter().enumerate() {
        let Some(c) = &run.confusion else { continue };
        let stem = format!("confusion_{}", i + 1);
        let png_path = out.join(format!("{stem}.png"));
        let (svg, png) = confusion::render(&run.label, c, &png_path)?;
        write_atomic(&png_path, &png)?;
        write_atomic(&out.join(format!("{stem}.svg")), svg.as_bytes())?;
        files.push(png_path);
        files.push(out.join(format!("{stem}.svg")));
        heat_maps.push(html::HeatMap { run: i, stem, svg });
    }
    let index = out.join("index.html");
    write_atomic(
        &index,
        html::index_html(&loaded, &figures, &heat_maps).as_bytes(),
    )?;
    files.push(index.clone());

    let rows = loaded
        .iter()
        .map(|r| RunRow {
            label: r.label.clone(),
            dir: r.dir.clone(),
            spec_label: r.spec_label.clone(),
            final_test_acc: r.final_test_acc(),
            ratio_init: r.ratio_init(),
            ratio_end: r.ratio_end(),
            verdict: r.verdict(),
        })
        .collect();
    Ok(ReportSummary {
        index,
        files,
        runs: rows,
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, then fsync the directory (best
/// effort). Readers see the old file or the new one, never a torn one.
///
/// Private stand-in for the crate-wide `io::write_atomic` being added on
/// another branch; swap it in when that lands.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{seq}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Drops what every label shares, so legends show what differs: a common
/// prefix up to its last `/` (a sweep's `table1-small/`) and then up to its
/// last `=` (the axis name, `shortcut=`), and a common `__...` suffix (the
/// seed of a one-seed grid). Labels that would become empty or collide are
/// left whole.
pub fn shorten_labels(labels: &mut [String]) {
    if labels.len() < 2 {
        return;
    }
    let common_prefix = |ls: &[String]| -> usize {
        let first = ls[0].as_bytes();
        let mut n = first.len();
        for l in &ls[1..] {
            n = n.min(
                first
                    .iter()
                    .zip(l.as_bytes())
                    .take_while(|(a, b)| a == b)
                    .count(),
            );
        }
        n
    };
    let mut cut = labels.to_vec();
    for sep in ['/', '='] {
        let n = common_prefix(&cut);
        let shared = &cut[0][..n];
        // the axis name only while no second axis ("__") is shared
        if sep == '=' && shared.contains("__") {
            continue;
        }
        if let Some(at) = shared.rfind(sep) {
            for l in cut.iter_mut() {
                *l = l[at + 1..].to_string();
            }
        }
    }
    // a common "__..." tail
    if let Some(at) = cut[0].rfind("__") {
        let tail = cut[0][at..].to_string();
        if cut.iter().all(|l| l.ends_with(&tail)) {
            for l in cut.iter_mut() {
                l.truncate(l.len() - tail.len());
            }
        }
    }
    let distinct = {
        let mut v = cut.clone();
        v.sort();
        v.dedup();
        v.len() == cut.len()
    };
    if distinct && cut.iter().all(|l| !l.is_empty()) {
        labels.clone_from_slice(&cut);
    }
}

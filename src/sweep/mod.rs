//! `resgrad sweep GRID.toml --out DIR [--jobs N]`: train every point of a
//! grid of specs and settings, several seeds each, as separate `resgrad
//! train` processes, and tabulate the median final test error per grid cell
//! (the paper's "median of 5 runs").
//!
//! # The grid file
//!
//! ```toml
//! name = "table1-small"        # optional (default: the file's stem)
//! description = "..."          # optional
//! fail_above = 20.0            # optional: a finished run above 20% test error
//!                              # counts as "fail" too (the paper's rule)
//! [base]                       # shared by every run
//! spec = { arch = "cifar", depth = 20, unit = "original", shortcut = { kind = "identity" }, downsample = "A" }
//! data = "cifar10:../shared/data/cifar-10-batches-bin"
//! preset = "paper"             # optional; the fields set here override it
//! iters = 2000                 # or epochs = N
//! [grid]                       # the cartesian product of these lists
//! shortcut = [ { kind = "identity" }, { kind = "scale", shortcut = 0.5 } ]
//! "depth+block" = [ [110, "basic"], [164, "bottleneck"] ]   # linked: vary together
//! seed = [0, 1, 2]
//! ```
//!
//! `[base].spec` is the model spec (the JSON spec's fields: arch, depth,
//! block, unit, shortcut, downsample, width, classes, in_channels,
//! in_features, hidden, units, batchnorm; `in_channels`, `classes` and an
//! MLP's `in_features` default to the data's). The other `[base]` keys are
//! `resgrad train`'s settings: data, preset, iters, epochs, batch, lr,
//! momentum, nesterov, wd, no_decay_bn_bias, schedule, milestones, gamma,
//! warmup, warmup_iters, warmup_lr, seed, val, augment, flow_every,
//! eval_every, max_grad_norm, branch_init_scale, schedule_scale, init_from,
//! log_every. A `[grid]` key is any of
//! either kind; its list replaces the base value. Unknown keys anywhere
//! are errors (exit 2). Relative data paths are relative to the directory
//! the sweep runs in.
//!
//! # The output
//!
//! `DIR/<run id>/` per run, named from its grid values
//! (`shortcut=scale-0.5__seed=1`), with the `config.json` written before it
//! starts, the run's own files (metrics.csv, flow.csv, checkpoint) and a
//! marker: `done.json` (final metrics) or `failed.json` (exit code,
//! message, stderr tail). `DIR/results.md` and `DIR/results.csv`: per
//! grid cell, the median and min–max final test error over its seeds, with
//! "fail" for diverged runs; `DIR/runs.csv`: one line per run;
//! `DIR/grid.toml`: the grid as given.
//!
//! # Resuming
//!
//! Running the same sweep again skips finished runs and runs that
//! diverged (a divergence is a result, not an accident: the paper reports
//! it as "fail"), resumes runs that were killed part-way from their last
//! checkpoint, and retries runs that stopped with any other error (a
//! missing data set, a full disk, a killed process: causes that are fixed
//! outside the grid), resuming them when they got as far as a checkpoint.
//! To redo a diverged run, delete its `failed.json` (or its directory).
//! A run directory whose `config.json` differs from what the grid now asks
//! for stops the sweep before anything starts (exit 2). Two sweeps must
//! not share an output directory at the same time.

mod exec;
mod grid;
pub mod signals;
pub mod slurm;
mod table;

pub use exec::{
    last_metrics, run_sweep, write_results, LastMetrics, RunRecord, RunStatus, SweepOptions,
    SweepSummary, DONE, FAILED,
};
pub use grid::{
    build_config, geometry, pretty_value, slug_value, Axis, Grid, PlannedRun, Settings,
    SETTING_KEYS, SPEC_KEYS,
};
pub use table::{aggregate, format_csv, format_markdown, median, CellRow, Outcome, RunCell};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Read, parse and check a grid file (named by its stem unless it says
/// `name`): every run's config is built once, so errors name the file.
pub fn load_grid(path: &Path) -> Result<Grid> {
    let text = crate::io::read::read_text(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".into());
    let grid = Grid::parse(&text, &stem).map_err(|e| name_file(path, e))?;
    // plan once here, so that a bad value in any cell names the file
    grid.plan().map_err(|e| name_file(path, e))?;
    Ok(grid)
}

fn name_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        Error::Spec(m) => Error::Spec(format!("{}: {m}", path.display())),
        e => e,
    }
}

/// The `resgrad sweep` command: run the grid with this binary as the
/// trainer, print the table; an error (exit 2) when some runs stopped with
/// an error other than divergence (the table is written all the same).
pub fn main(
    grid_path: &Path,
    out: Option<&Path>,
    jobs: usize,
    threads: Option<usize>,
    precision: Option<crate::precision::Precision>,
) -> Result<()> {
    let mut grid = load_grid(grid_path)?;
    if let Some(p) = precision {
        // every run's config.json says it (an axis named precision still wins)
        p.check_supported()?;
        grid.base_settings
            .insert("precision".into(), serde_json::Value::from(p.name()));
    }
    let out: PathBuf = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs").join(&grid.name));
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let opts = SweepOptions {
        jobs,
        exe,
        threads_per_run: threads,
        quiet: false,
        launch: Vec::new(),
        children: signals::Children::install()?,
    };
    let s = run_sweep(&grid, &out, &opts)?;
    crate::outln!("\n{}", s.table)?;
    crate::outln!(
        "results.md, results.csv and runs.csv in {}",
        s.out.display()
    )?;
    // the plots and index.html over every run that finished or diverged
    let reported: Vec<PathBuf> = s
        .runs
        .iter()
        .zip(&s.records)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| r.status != RunStatus::Error))
        .map(|(p, _)| s.out.join(&p.id))
        .collect();
    if !reported.is_empty() {
        let rep = crate::report::report(&reported, &s.out.join("report"))?;
        crate::outln!("report: {}", rep.index.display())?;
    }
    let unfinished: Vec<&str> = s
        .runs
        .iter()
        .zip(&s.records)
        .filter(|(_, r)| r.as_ref().is_none_or(|r| r.status == RunStatus::Error))
        .map(|(p, _)| p.id.as_str())
        .collect();
    if !unfinished.is_empty() {
        return Err(Error::Config(format!(
            "sweep {}: {} of {} runs stopped with an error (see failed.json in {}); rerun the sweep to retry them",
            s.name,
            unfinished.len(),
            s.runs.len(),
            unfinished.join(", ")
        )));
    }
    Ok(())
}

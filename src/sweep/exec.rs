//! Running a planned sweep: each run is a separate `resgrad train` process
//! (`jobs` at a time), each run directory records how its run ended.
//!
//! A run directory, by state:
//!
//! | files | state | what a sweep does |
//! |---|---|---|
//! | `done.json` | finished | skips it |
//! | `failed.json`, `"status": "diverged"` | diverged (exit 3): a result, "fail" | skips it |
//! | `failed.json`, `"status": "error"` | stopped by anything else | retries it (resumes when there is a checkpoint) |
//! | `checkpoint.safetensors`, no marker | killed part-way | resumes it (`train --resume`) |
//! | only `config.json` or nothing | not started | starts it (`train --config`) |

use super::grid::{Grid, PlannedRun};
use super::table::{aggregate, format_csv, format_markdown, CellRow, Outcome, RunCell};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::train::checkpoint::CHECKPOINT;
use crate::train::metrics::METRICS_CSV;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Marker of a finished run (final metrics), written after the child exits 0.
pub const DONE: &str = "done.json";
/// Marker of a run that stopped with a non-zero exit (code, message, stderr tail).
pub const FAILED: &str = "failed.json";
pub(super) const CONFIG: &str = "config.json";
const STDERR_TAIL_LINES: usize = 20;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// finished every iteration
    Done,
    /// the child exited with 3: the gradient or loss stopped being usable
    Diverged,
    /// any other non-zero exit, a signal, or a child that could not start
    Error,
}

/// The content of `done.json` / `failed.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub status: RunStatus,
    /// the child's exit code (`None`: killed by a signal, or never started)
    pub exit_code: Option<i32>,
    /// the error line of the child (without "error: "), or what went wrong
    pub message: Option<String>,
    /// last evaluation of metrics.csv (absent when the run never evaluated)
    pub iter: Option<u64>,
    pub test_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub train_loss: Option<f64>,
    /// training wall-clock seconds over all attempts (metrics.csv's wall_s)
    pub wall_s: Option<f64>,
    /// the last lines the child wrote to stderr (failed runs only)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
}

impl RunRecord {
    /// Final test error in percent, for a finished run.
    pub fn test_error_pct(&self) -> Option<f64> {
        match self.status {
            RunStatus::Done => self.test_acc.map(|a| 100.0 * (1.0 - a)),
            _ => None,
        }
    }
}

/// How to run a sweep.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// trainings at a time (separate processes)
    pub jobs: usize,
    /// the `resgrad` binary to run (`std::env::current_exe()` from the CLI)
    pub exe: PathBuf,
    /// `--threads` of each child (default: the cores divided by `jobs`)
    pub threads_per_run: Option<usize>,
    /// nothing on stdout (the header and the per-run lines)
    pub quiet: bool,
    /// a launcher the trainer runs under, program and arguments (e.g.
    /// `srun --mpi=pmix -n 4` for data-parallel MPI runs); empty: none
    pub launch: Vec<String>,
    /// the running children, to which a stop is forwarded
    /// ([`super::signals`]; the CLI installs the signal handler)
    pub children: super::signals::Children,
}

/// What a sweep did and found.
#[derive(Clone, Debug)]
pub struct SweepSummary {
    pub name: String,
    pub out: PathBuf,
    pub runs: Vec<PlannedRun>,
    /// `records[i]` belongs to `runs[i]`; `None`: no record (cannot happen
    /// after `run_sweep` returns, kept for callers that plan only)
    pub records: Vec<Option<RunRecord>>,
    pub cells: Vec<CellRow>,
    /// runs started from scratch, resumed from a checkpoint, skipped as
    /// already done, skipped as diverged earlier
    pub started: usize,
    pub resumed: usize,
    pub skipped_done: usize,
    pub skipped_diverged: usize,
    /// runs that ended with an error (not divergence) this time
    pub errored: usize,
    /// the Markdown table (also in `out/results.md`)
    pub table: String,
}

/// What a run directory says before the sweep touches it.
#[derive(Clone, Debug)]
pub(super) enum Prior {
    Done(RunRecord),
    Diverged(RunRecord),
    /// never started, or errored without a checkpoint
    Start,
    /// killed part-way, or errored after a checkpoint
    Resume,
}

pub(super) fn read_record(path: &Path) -> Result<RunRecord> {
    let text = crate::io::read::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.into(),
        msg: e.to_string(),
    })
}

pub(super) fn write_record(path: &Path, r: &RunRecord) -> Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(path, format!("{text}\n").as_bytes())
}

pub(super) fn to_json(cfg: &TrainConfig) -> Result<String> {
    serde_json::to_string_pretty(cfg).map_err(|e| Error::Config(e.to_string()))
}

/// Compare a run directory's `config.json` with the planned config (both
/// through the same JSON text -> value path, so floats compare exactly).
pub(super) fn check_config(dir: &Path, cfg: &TrainConfig) -> Result<()> {
    let p = dir.join(CONFIG);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
    let mut old = parse(&text);
    // `norm` is what training computed from the data (train writes it into
    // config.json), not a setting of the grid
    if let Some(serde_json::Value::Object(o)) = old.as_mut() {
        o.remove("norm");
    }
    let new = parse(&to_json(cfg)?);
    if old.is_none() || old != new {
        let field = match (&old, &new) {
            (Some(serde_json::Value::Object(o)), Some(serde_json::Value::Object(n))) => n
                .iter()
                .find(|(k, v)| o.get(*k) != Some(*v))
                .map(|(k, _)| format!(" (first difference: `{k}`)"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        return Err(Error::Config(format!(
            "{} was written for another configuration than the grid now asks for{field}; \
             use another --out directory, or delete that run directory to redo it",
            p.display()
        )));
    }
    Ok(())
}

pub(super) fn prior_state(dir: &Path) -> Result<Prior> {
    let done = dir.join(DONE);
    if done.exists() {
        return Ok(Prior::Done(read_record(&done)?));
    }
    let failed = dir.join(FAILED);
    if failed.exists() {
        let r = read_record(&failed)?;
        if r.status == RunStatus::Diverged {
            return Ok(Prior::Diverged(r));
        }
    }
    Ok(if dir.join(CHECKPOINT).exists() {
        Prior::Resume
    } else {
        Prior::Start
    })
}

/// The last evaluation in a run's metrics.csv.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LastMetrics {
    pub iter: u64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub wall_s: f64,
}

/// Read the last complete row of `dir/metrics.csv` (columns found by name).
pub fn last_metrics(dir: &Path) -> Option<LastMetrics> {
    let text = std::fs::read_to_string(dir.join(METRICS_CSV)).ok()?;
    let mut lines = text.split_inclusive('\n');
    let head: Vec<&str> = lines.next()?.trim_end().split(',').collect();
    let last = lines.rfind(|l| l.ends_with('\n'))?;
    let cols: Vec<&str> = last.trim_end().split(',').collect();
    let get = |name: &str| -> Option<f64> {
        let i = head.iter().position(|h| *h == name)?;
        cols.get(i)?.parse().ok()
    };
    Some(LastMetrics {
        iter: get("iter")? as u64,
        test_acc: get("test_acc")?,
        test_loss: get("test_loss")?,
        train_loss: get("train_loss")?,
        wall_s: get("wall_s").unwrap_or(0.0),
    })
}

/// The last `n` lines of a child's stderr.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The child's own explanation: its last `error: ...` line.
fn error_line(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
}

#[cfg(unix)]
fn signal_of(s: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.signal()
}
#[cfg(not(unix))]
fn signal_of(_: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Run one training as a child process and write its marker file.
pub(super) fn execute(
    run: &PlannedRun,
    dir: &Path,
    resume: bool,
    opts: &SweepOptions,
    threads: usize,
) -> Result<RunRecord> {
    let mut cmd = match opts.launch.split_first() {
        Some((launcher, args)) => {
            let mut c = Command::new(launcher);
            c.args(args).arg(&opts.exe);
            c
        }
        None => Command::new(&opts.exe),
    };
    cmd.arg("--threads").arg(threads.to_string()).arg("train");
    if resume {
        cmd.arg("--resume").arg(dir);
    } else {
        // a run that never got to a checkpoint starts again: what an
        // earlier attempt left (metrics rows) goes
        cmd.arg("--config")
            .arg(dir.join(CONFIG))
            .arg("--out")
            .arg(dir)
            .arg("--overwrite");
    }
    cmd.arg("--quiet")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut rec = RunRecord {
        id: run.id.clone(),
        status: RunStatus::Error,
        exit_code: None,
        message: None,
        iter: None,
        test_acc: None,
        test_loss: None,
        train_loss: None,
        wall_s: None,
        stderr_tail: None,
    };
    let fill = |rec: &mut RunRecord| {
        if let Some(m) = last_metrics(dir) {
            rec.iter = Some(m.iter);
            rec.test_acc = Some(m.test_acc);
            rec.test_loss = Some(m.test_loss);
            rec.train_loss = Some(m.train_loss);
            rec.wall_s = Some(m.wall_s);
        }
    };
    match opts.children.output(&mut cmd) {
        Err(e) => {
            rec.message = Some(format!("could not start {}: {e}", opts.exe.display()));
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            rec.exit_code = out.status.code();
            fill(&mut rec);
            if out.status.success() {
                match rec.iter {
                    Some(i) if i >= run.config.iters => rec.status = RunStatus::Done,
                    i => {
                        rec.message = Some(format!(
                            "the child exited 0 but metrics.csv ends at iteration {} of {}",
                            i.map(|i| i.to_string()).unwrap_or_else(|| "none".into()),
                            run.config.iters
                        ))
                    }
                }
            } else {
                if rec.exit_code == Some(3) {
                    rec.status = RunStatus::Diverged;
                }
                rec.message = error_line(&stderr).or_else(|| {
                    Some(match (rec.exit_code, signal_of(&out.status)) {
                        (Some(c), _) => format!("exit code {c}"),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        (None, None) => "terminated".into(),
                    })
                });
                rec.stderr_tail = Some(tail(&stderr, STDERR_TAIL_LINES));
            }
        }
    }
    if rec.status == RunStatus::Done {
        write_record(&dir.join(DONE), &rec)?;
        let f = dir.join(FAILED);
        if f.exists() {
            std::fs::remove_file(&f).map_err(|e| Error::io(&f, e))?;
        }
    } else {
        write_record(&dir.join(FAILED), &rec)?;
    }
    Ok(rec)
}

/// The table's view of a run.
fn outcome(rec: Option<&RunRecord>, fail_above: Option<f64>) -> Outcome {
    match rec {
        Some(r) if r.status == RunStatus::Diverged => Outcome::Fail,
        Some(r) => match r.test_error_pct() {
            Some(e) if fail_above.is_some_and(|f| e > f) => Outcome::Fail,
            Some(e) => Outcome::Error(e),
            None => Outcome::Missing,
        },
        None => Outcome::Missing,
    }
}

/// Aggregate records into the table; write `results.md`, `results.csv` and
/// `runs.csv` into `out`.
pub fn write_results(
    grid: &Grid,
    out: &Path,
    runs: &[PlannedRun],
    records: &[Option<RunRecord>],
) -> Result<(Vec<CellRow>, String)> {
    let cells: Vec<RunCell> = runs
        .iter()
        .zip(records)
        .map(|(r, rec)| RunCell {
            cell: r.cell.clone(),
            seed: r.seed,
            outcome: outcome(rec.as_ref(), grid.fail_above),
        })
        .collect();
    let rows = aggregate(&cells);
    let md = format_markdown(&grid.name, &rows, grid.fail_above);
    write_atomic(&out.join("results.md"), md.as_bytes())?;
    write_atomic(&out.join("results.csv"), format_csv(&rows).as_bytes())?;
    write_atomic(&out.join("runs.csv"), runs_csv(runs, records).as_bytes())?;
    Ok((rows, md))
}

/// One line per run: `id,<grid keys>,seed,status,exit_code,iter,test_error_pct,message`.
fn runs_csv(runs: &[PlannedRun], records: &[Option<RunRecord>]) -> String {
    use super::table::csv_field;
    let mut t = String::from("id");
    if let Some(r) = runs.first() {
        for (k, _) in &r.cell {
            t.push(',');
            t.push_str(&csv_field(k));
        }
    }
    t.push_str(",seed,status,exit_code,iter,test_error_pct,message\n");
    for (r, rec) in runs.iter().zip(records) {
        let mut cols = vec![csv_field(&r.id)];
        cols.extend(r.cell.iter().map(|(_, v)| csv_field(v)));
        cols.push(r.seed.to_string());
        match rec {
            Some(x) => {
                cols.push(format!("{:?}", x.status).to_lowercase());
                cols.push(x.exit_code.map(|c| c.to_string()).unwrap_or_default());
                cols.push(x.iter.map(|c| c.to_string()).unwrap_or_default());
                cols.push(
                    x.test_error_pct()
                        .map(|e| format!("{e:.4}"))
                        .unwrap_or_default(),
                );
                cols.push(csv_field(x.message.as_deref().unwrap_or("")));
            }
            None => cols.extend(["pending", "", "", "", ""].map(String::from)),
        }
        t.push_str(&cols.join(","));
        t.push('\n');
    }
    t
}

pub(super) fn describe(rec: &RunRecord) -> String {
    match rec.status {
        RunStatus::Done => format!(
            "done: test error {:.2}% after {} iterations",
            rec.test_error_pct().unwrap_or(f64::NAN),
            rec.iter.unwrap_or(0)
        ),
        RunStatus::Diverged => format!(
            "diverged (fail): {}",
            rec.message.as_deref().unwrap_or("exit 3")
        ),
        RunStatus::Error => format!(
            "ERROR (exit {}): {}",
            rec.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            rec.message.as_deref().unwrap_or("")
        ),
    }
}

/// Plan, check, run what is left (`jobs` children at a time), and write the
/// results table. Divergence is a result; runs that errored are recorded
/// and counted in `errored` (the caller decides the exit code).
pub fn run_sweep(grid: &Grid, out: &Path, opts: &SweepOptions) -> Result<SweepSummary> {
    let runs = grid.plan()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // one sweep per output directory (released on return)
    let _lock = crate::io::lock::DirLock::acquire(out, "sweep directory")?;
    // every check before the first child starts
    let mut priors = Vec::with_capacity(runs.len());
    for r in &runs {
        let dir = out.join(&r.id);
        check_config(&dir, &r.config)?;
        priors.push(prior_state(&dir)?);
    }
    write_atomic(&out.join("grid.toml"), grid.source.as_bytes())?;
    let mut records: Vec<Option<RunRecord>> = vec![None; runs.len()];
    let mut queue: Vec<(usize, bool)> = Vec::new();
    let (mut skipped_done, mut skipped_diverged) = (0, 0);
    for (i, p) in priors.into_iter().enumerate() {
        match p {
            Prior::Done(r) => {
                skipped_done += 1;
                records[i] = Some(r);
            }
            Prior::Diverged(r) => {
                skipped_diverged += 1;
                records[i] = Some(r);
            }
            Prior::Start => queue.push((i, false)),
            Prior::Resume => queue.push((i, true)),
        }
    }
    let resumed = queue.iter().filter(|q| q.1).count();
    let started = queue.len() - resumed;
    let jobs = opts.jobs.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = opts.threads_per_run.unwrap_or((cores / jobs).max(1)).max(1);
    let cells = runs
        .iter()
        .map(|r| &r.cell)
        .collect::<std::collections::HashSet<_>>()
        .len();
    if !opts.quiet {
        crate::outln!(
            "sweep {}: {} runs ({cells} cells) in {}: {started} to start, {resumed} to resume, \
         {skipped_done} already done, {skipped_diverged} diverged earlier (not retried); \
         {jobs} at a time, {threads} threads each",
            grid.name,
            runs.len(),
            out.display()
        )?;
    }
    for &(i, _) in &queue {
        let dir = out.join(&runs[i].id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let p = dir.join(CONFIG);
        if !p.exists() {
            write_atomic(&p, to_json(&runs[i].config)?.as_bytes())?;
        }
    }
    let next = AtomicUsize::new(0);
    let total = queue.len();
    let mut first_err: Option<Error> = None;
    let mut errored = 0;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..jobs.min(total) {
            let tx = tx.clone();
            let (queue, runs, next) = (&queue, &runs, &next);
            s.spawn(move || loop {
                if opts.children.stopping() {
                    break; // stopped: no new run
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(i, resume)) = queue.get(k) else {
                    break;
                };
                let t0 = Instant::now();
                let r = execute(&runs[i], &out.join(&runs[i].id), resume, opts, threads);
                if tx.send((i, resume, r, t0.elapsed().as_secs_f64())).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (k, (i, resume, r, secs)) in rx.into_iter().enumerate() {
            match r {
                Ok(rec) => {
                    if rec.status == RunStatus::Error {
                        errored += 1;
                    }
                    if !opts.quiet {
                        let line = crate::outln!(
                            "[{}/{total}] {}{}: {} ({secs:.1} s)",
                            k + 1,
                            runs[i].id,
                            if resume { " (resumed)" } else { "" },
                            describe(&rec)
                        );
                        if let Err(e) = line {
                            // stdout gone: stop starting runs, report it at the end
                            opts.children.stop_starting();
                            first_err.get_or_insert(e);
                        }
                    }
                    records[i] = Some(rec);
                }
                Err(e) => {
                    errored += 1;
                    if !opts.quiet {
                        let _ = crate::outln!("[{}/{total}] {}: ERROR: {e}", k + 1, runs[i].id);
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
    });
    // stopped by a signal: the table of what finished, then 128 + signal
    let stopped = opts.children.stopped_by_signal();
    if let Some(e) = first_err {
        return Err(e);
    }
    let (cells, table) = write_results(grid, out, &runs, &records)?;
    if let Some(e) = stopped {
        return Err(e);
    }
    Ok(SweepSummary {
        name: grid.name.clone(),
        out: out.to_path_buf(),
        runs,
        records,
        cells,
        started,
        resumed,
        skipped_done,
        skipped_diverged,
        errored,
        table,
    })
}

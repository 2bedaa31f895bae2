//! `resgrad sweep GRID --out DIR --slurm`: the grid as one Slurm job array.
//! No scheduler of our own: Slurm queues, places, requeues and preempts;
//! resgrad writes the batch script, submits it, reads back what happened
//! and tabulates exactly as a local sweep does.
//!
//! `DIR/slurm/` holds:
//!
//! | file | what |
//! |---|---|
//! | `sweep.sbatch` | the batch script (readable, editable, submittable by hand) |
//! | `points.txt` | the grid's run directories in grid order: array task i trains line i+1 |
//! | `job.json` | the grid's name and every submission (job id, `--array`, time) |
//! | `<job>_<task>.out` | each task's log (appended to across requeues) |
//!
//! Each array task runs `resgrad sweep DIR --task RUN_ID` ([`run_task`]),
//! which trains its point with the local sweep's own code: `resgrad train
//! --config` or, when the point has a checkpoint, `--resume`, then
//! `done.json` or `failed.json`. A requeued or preempted task therefore
//! loses at most one evaluation interval, and the run directories of a
//! Slurm sweep are those of a local one, so [`collect`] writes the same
//! `results.md` bit for bit.
//!
//! A submission leaves out the points already done or diverged; a second
//! one while the first still has tasks queued or running is refused. A
//! Slurm sweep directory is never trained locally: `resgrad sweep GRID
//! --out DIR` without `--slurm` collects.

mod query;
mod script;

pub use query::{parse_sacct, parse_scontrol, parse_squeue, EndedTask, LiveTask};
pub use script::{array_spec, render, Script};

use super::exec::{
    check_config, describe, execute, prior_state, read_record, to_json, write_record, Prior, CONFIG,
};
use super::grid::{Grid, PlannedRun};
use super::{last_metrics, write_results, RunRecord, RunStatus, SweepOptions, FAILED};
use crate::error::{Error, Result};
use crate::io::lock::DirLock;
use crate::io::write_atomic;
use crate::train::checkpoint::CHECKPOINT;
use crate::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The sub-directory of a sweep's output that belongs to Slurm.
pub const SLURM_DIR: &str = "slurm";
pub const SCRIPT: &str = "sweep.sbatch";
pub const POINTS: &str = "points.txt";
pub const JOB_JSON: &str = "job.json";

/// `--slurm`'s settings.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// per grid point, in Slurm's syntax (`1-00:00:00`, `90`)
    pub time: Option<String>,
    pub cpus_per_task: Option<usize>,
    /// per node, in Slurm's syntax (`8G`)
    pub mem: Option<String>,
    /// at most this many points at a time (`--array=...%K`)
    pub max_running: Option<usize>,
    /// MPI ranks per point (1: a plain process)
    pub ntasks: usize,
    /// more `#SBATCH` lines, as given (`--qos=low`)
    pub sbatch_args: Vec<String>,
    /// `--threads` of each training (None: the task's CPUs)
    pub threads: Option<usize>,
}

/// `DIR/slurm/job.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlurmRecord {
    /// the grid's name (run names are `<name>/<run id>`)
    pub name: String,
    /// every submission, oldest first
    pub jobs: Vec<Submission>,
}

/// One `sbatch` of the sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: u64,
    /// the `--array` value
    pub array: String,
    /// the array's task indices (grid points)
    pub tasks: Vec<usize>,
    /// seconds since the Unix epoch
    pub submitted_unix: u64,
}

fn slurm_dir(out: &Path) -> PathBuf {
    out.join(SLURM_DIR)
}

/// Whether `out` is a sweep that was handed to Slurm.
pub fn is_slurm_sweep(out: &Path) -> bool {
    slurm_dir(out).join(JOB_JSON).is_file()
}

fn json_err(path: &Path, e: serde_json::Error) -> Error {
    Error::Format {
        path: path.into(),
        msg: e.to_string(),
    }
}

/// Read `DIR/slurm/job.json`.
pub fn read_record_file(out: &Path) -> Result<SlurmRecord> {
    let p = slurm_dir(out).join(JOB_JSON);
    let text = std::fs::read_to_string(&p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Config(format!(
            "{} is missing: {} is not a sweep submitted with --slurm",
            p.display(),
            out.display()
        )),
        _ => Error::io(&p, e),
    })?;
    serde_json::from_str(&text).map_err(|e| json_err(&p, e))
}

fn write_record_file(out: &Path, r: &SlurmRecord) -> Result<()> {
    let p = slurm_dir(out).join(JOB_JSON);
    let text = serde_json::to_string_pretty(r).map_err(|e| json_err(&p, e))?;
    write_atomic(&p, format!("{text}\n").as_bytes())
}

/// Read `DIR/slurm/points.txt`: run ids, array task i = line i+1.
pub fn read_points(out: &Path) -> Result<Vec<String>> {
    let p = slurm_dir(out).join(POINTS);
    let text = std::fs::read_to_string(&p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Config(format!(
            "{} is missing: {} is not a sweep submitted with --slurm",
            p.display(),
            out.display()
        )),
        _ => Error::io(&p, e),
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The grid of a Slurm sweep directory: its copy `DIR/grid.toml` under the
/// name it was submitted with.
pub fn load_sweep_grid(out: &Path) -> Result<Grid> {
    let rec = read_record_file(out)?;
    let p = out.join("grid.toml");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let grid = Grid::parse(&text, &rec.name).map_err(|e| match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", p.display())),
        e => e,
    })?;
    Ok(grid)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io(p, e))
}

/// The tasks of the sweep's last submission that Slurm still holds, with
/// its job id (no submission yet: none).
fn live_of_last(rec: Option<&SlurmRecord>) -> Result<(Option<u64>, BTreeMap<usize, LiveTask>)> {
    match rec.and_then(|r| r.jobs.last()) {
        Some(j) => Ok((Some(j.job_id), query::live_tasks(j.job_id)?)),
        None => Ok((None, BTreeMap::new())),
    }
}

/// Plan the grid, check every run directory against it, write the script
/// and submit the unfinished points as one array; record the job in
/// `DIR/slurm/job.json` and print how to follow it. With nothing left to
/// train, collect instead.
pub fn submit(grid: &Grid, out: &Path, opts: &SlurmOptions, exe: &Path) -> Result<()> {
    for (flag, v) in [
        ("--partition", &opts.partition),
        ("--time", &opts.time),
        ("--mem", &opts.mem),
    ] {
        if let Some(v) = v {
            script::check_option(flag, v)?;
            if v.chars().any(char::is_whitespace) {
                return Err(Error::Config(format!("{flag} {v:?} contains white space")));
            }
        }
    }
    for a in &opts.sbatch_args {
        script::check_option("--sbatch-arg", a)?;
        if !a.starts_with('-') {
            return Err(Error::Config(format!(
                "--sbatch-arg {a:?}: an sbatch option starts with -, e.g. --sbatch-arg=--qos=low"
            )));
        }
    }
    for (flag, v) in [
        ("--cpus-per-task", opts.cpus_per_task),
        ("--max-running", opts.max_running),
        ("--ntasks", Some(opts.ntasks)),
    ] {
        if v == Some(0) {
            return Err(Error::Config(format!("{flag} must be at least 1, got 0")));
        }
    }
    let runs = grid.plan()?;
    std::fs::create_dir_all(slurm_dir(out)).map_err(|e| Error::io(slurm_dir(out), e))?;
    let out = absolute(out)?;
    let workdir = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    script::check_sbatch_path("--out", &out)?;
    script::check_sbatch_path("the current directory", &workdir)?;
    let exe = absolute(exe)?;
    let old = if is_slurm_sweep(&out) {
        Some(read_record_file(&out)?)
    } else {
        None
    };
    // a second array beside a live one would train the same points twice
    let (job, live) = live_of_last(old.as_ref())?;
    if let (Some(job), false) = (job, live.is_empty()) {
        return Err(Error::Config(format!(
            "{}: Slurm job {job} still has {} task(s) queued or running; follow it with \
             `resgrad sweep {} --status`, or `scancel {job}` before submitting again",
            out.display(),
            live.len(),
            out.display()
        )));
    }
    let mut todo = Vec::new();
    let (mut done, mut diverged) = (0, 0);
    for (i, r) in runs.iter().enumerate() {
        let dir = out.join(&r.id);
        check_config(&dir, &r.config)?;
        match prior_state(&dir)? {
            Prior::Done(_) => done += 1,
            Prior::Diverged(_) => diverged += 1,
            Prior::Start | Prior::Resume => todo.push(i),
        }
    }
    write_atomic(&out.join("grid.toml"), grid.source.as_bytes())?;
    let points: String = runs.iter().map(|r| format!("{}\n", r.id)).collect();
    write_atomic(&slurm_dir(&out).join(POINTS), points.as_bytes())?;
    let mut rec = old.unwrap_or(SlurmRecord {
        name: grid.name.clone(),
        jobs: Vec::new(),
    });
    rec.name = grid.name.clone();
    crate::outln!(
        "sweep {}: {} points in {}: {} to submit, {done} already done, {diverged} diverged earlier (not retried)",
        grid.name,
        runs.len(),
        out.display(),
        todo.len()
    )?;
    if todo.is_empty() {
        write_record_file(&out, &rec)?;
        crate::outln!("nothing to train: collecting")?;
        return collect(grid, &out);
    }
    for &i in &todo {
        let dir = out.join(&runs[i].id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let p = dir.join(CONFIG);
        if !p.exists() {
            write_atomic(&p, to_json(&runs[i].config)?.as_bytes())?;
        }
    }
    let array = array_spec(&todo, opts.max_running);
    let text = render(&Script {
        name: &grid.name,
        sweep_dir: &out,
        workdir: &workdir,
        exe: &exe,
        points: runs.len(),
        array: &array,
        partition: opts.partition.as_deref(),
        time: opts.time.as_deref(),
        cpus_per_task: opts.cpus_per_task,
        mem: opts.mem.as_deref(),
        ntasks: opts.ntasks,
        threads: opts.threads,
        sbatch_args: &opts.sbatch_args,
    });
    let script_path = slurm_dir(&out).join(SCRIPT);
    write_atomic(&script_path, text.as_bytes())?;
    let job_id = query::sbatch(&[format!("--array={array}")], &script_path)?;
    rec.jobs.push(Submission {
        job_id,
        array: array.clone(),
        tasks: todo.clone(),
        submitted_unix: now_unix(),
    });
    write_record_file(&out, &rec)?;
    let d = out.display();
    crate::outln!(
        "submitted Slurm job {job_id}: --array={array} of {}\n\
         follow it:  resgrad sweep {d} --status   (or squeue -j {job_id})\n\
         task logs:  {d}/slurm/{job_id}_<index>.out\n\
         when done:  resgrad sweep {d} --collect   (results.md, results.csv, runs.csv, report)",
        script_path.display()
    )?;
    Ok(())
}

/// `resgrad sweep DIR --task RUN_ID`, what each array task runs: train
/// the point as a local sweep does (start, or resume from its checkpoint),
/// write its marker. Exit 0 when it finished or diverged (a result), an
/// error (exit 2) when it stopped with one.
pub fn run_task(out: &Path, id: &str, threads: Option<usize>, launch: Option<&str>) -> Result<()> {
    let points = read_points(out)?;
    if !points.iter().any(|p| p == id) {
        return Err(Error::Config(format!(
            "--task {id:?} is not a point of the sweep (see {})",
            slurm_dir(out).join(POINTS).display()
        )));
    }
    let dir = out.join(id);
    let p = dir.join(CONFIG);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let config: TrainConfig = serde_json::from_str(&text).map_err(|e| json_err(&p, e))?;
    let run = PlannedRun {
        id: id.to_string(),
        cell: Vec::new(),
        seed: config.seed,
        config,
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
    let whence = format!(
        "array task {} of job {}, restart {}",
        env("SLURM_ARRAY_TASK_ID"),
        env("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_RESTART_COUNT").unwrap_or_else(|_| "0".into())
    );
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // a requeued or preempted task can start while the process of the
    // attempt before it is still exiting (Slurm's SIGTERM, then SIGKILL
    // after KillWait): wait for it to let the run directory go rather than
    // fail on its lock, and read the markers it left only then
    if dir.is_dir() {
        drop(DirLock::acquire_within(
            &dir,
            "run directory",
            PREVIOUS_ATTEMPT_PATIENCE,
        )?);
    }
    let resume = match prior_state(&dir)? {
        Prior::Done(r) | Prior::Diverged(r) => {
            crate::outln!("{id} ({whence}): already {}", describe(&r))?;
            return Ok(());
        }
        Prior::Start => {
            crate::outln!("{id} ({whence}): starting, {threads} threads")?;
            false
        }
        Prior::Resume => {
            let at = checkpoint_iter(&dir)
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into());
            crate::outln!(
                "{id} ({whence}): resuming from the checkpoint at iteration {at}, {threads} threads"
            )?;
            true
        }
    };
    let opts = SweepOptions {
        jobs: 1,
        exe: std::env::current_exe().map_err(|e| Error::io("current executable", e))?,
        threads_per_run: Some(threads),
        quiet: true,
        launch: launch
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        // Slurm's SIGTERM (scancel, requeue, preemption) reaches the run too
        children: super::signals::Children::install()?,
    };
    let rec = execute(&run, &dir, resume, &opts, threads)?;
    crate::outln!("{id}: {}", describe(&rec))?;
    if rec.status == RunStatus::Error {
        return Err(Error::External {
            program: "resgrad train".into(),
            msg: format!(
                "{id} stopped with an error (see {})",
                dir.join(FAILED).display()
            ),
        });
    }
    Ok(())
}

/// How long an array task waits for the previous attempt of its point to
/// let the run directory go (Slurm's default KillWait is 30 s).
const PREVIOUS_ATTEMPT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(90);

/// The iteration a run's checkpoint was written at.
fn checkpoint_iter(dir: &Path) -> Option<u64> {
    let st = crate::io::SafeTensors::read(&dir.join(CHECKPOINT)).ok()?;
    st.metadata.get("iter")?.parse().ok()
}

/// Where one grid point stands.
#[derive(Clone, Debug, PartialEq)]
pub enum PointState {
    Done(RunRecord),
    Diverged(RunRecord),
    /// Slurm holds its task: (state, reason)
    Queued(LiveTask),
    /// stopped with an error: its failed.json, or how Slurm says the task
    /// ended (cancelled, timed out, killed, node failure) when it left none
    Failed(RunRecord),
    /// a checkpoint and no marker, and Slurm knows no task for it
    Stopped {
        iter: Option<u64>,
    },
    NotStarted,
}

impl PointState {
    fn word(&self) -> &'static str {
        match self {
            PointState::Done(_) => "done",
            PointState::Diverged(_) => "diverged",
            PointState::Queued(t) if t.state == "PENDING" => "pending",
            PointState::Queued(t) if t.state == "RUNNING" => "running",
            PointState::Queued(_) => "queued",
            PointState::Failed(_) => "failed",
            PointState::Stopped { .. } => "stopped",
            PointState::NotStarted => "not started",
        }
    }

    fn detail(&self, dir: &Path, iters: Option<u64>) -> String {
        let of = iters.map(|n| format!(" of {n}")).unwrap_or_default();
        match self {
            // describe() without its leading "done: " / "diverged (fail): "
            PointState::Done(r) | PointState::Diverged(r) => {
                let d = describe(r);
                d.split_once(": ").map_or(d.clone(), |(_, rest)| rest.to_string())
            }
            PointState::Queued(t) => {
                let at = last_metrics(dir)
                    .map(|m| format!("iteration {}{of}", m.iter))
                    .unwrap_or_else(|| "no evaluation yet".into());
                let why = match t.reason.as_str() {
                    "" | "None" => String::new(),
                    r => format!(" ({r})"),
                };
                match t.state.as_str() {
                    "RUNNING" => at,
                    "PENDING" => format!("{at}{why}"),
                    s => format!("{s}{why}; {at}"),
                }
            }
            PointState::Failed(r) => {
                let ck = checkpoint_iter(dir)
                    .map(|i| format!("; checkpoint at iteration {i}{of}"))
                    .unwrap_or_default();
                format!(
                    "exit code {}: {}{ck}; resubmit with --slurm to retry",
                    r.exit_code.map_or("-".into(), |c| c.to_string()),
                    r.message.as_deref().unwrap_or("")
                )
            }
            PointState::Stopped { iter } => format!(
                "checkpoint at iteration {}{of}, no done.json or failed.json, no Slurm task; resubmit with --slurm to resume",
                iter.map_or("?".into(), |i| i.to_string())
            ),
            PointState::NotStarted => "no Slurm task; resubmit with --slurm".into(),
        }
    }
}

/// A record for a task that Slurm says ended badly and that left no marker
/// (killed: cancelled, timed out, out of memory, node failure).
fn slurm_failure(id: &str, dir: &Path, job: u64, task: usize, t: &EndedTask) -> RunRecord {
    let mut rec = RunRecord {
        id: id.to_string(),
        status: RunStatus::Error,
        exit_code: (t.signal == 0).then_some(t.exit_code),
        message: Some(format!(
            "Slurm task {job}_{task} ended {} (ExitCode {}:{})",
            t.state, t.exit_code, t.signal
        )),
        iter: None,
        test_acc: None,
        test_loss: None,
        train_loss: None,
        wall_s: None,
        stderr_tail: None,
    };
    if let Some(m) = last_metrics(dir) {
        rec.iter = Some(m.iter);
        rec.test_acc = Some(m.test_acc);
        rec.test_loss = Some(m.test_loss);
        rec.train_loss = Some(m.train_loss);
        rec.wall_s = Some(m.wall_s);
    }
    rec
}

fn mtime_unix(p: &Path) -> Option<u64> {
    let t = std::fs::metadata(p).ok()?.modified().ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Every point's state, from its run directory and what Slurm says about
/// the last submission's tasks; plus the job id and a note when Slurm could
/// not be asked.
fn point_states(
    out: &Path,
    ids: &[String],
    rec: &SlurmRecord,
) -> Result<(Vec<PointState>, Option<u64>, Option<String>)> {
    let last = rec.jobs.last();
    // Slurm is asked only about points that are not finished
    let open = last.is_some_and(|j| {
        j.tasks.iter().any(|&i| {
            ids.get(i).is_some_and(|id| {
                !matches!(
                    prior_state(&out.join(id)),
                    Ok(Prior::Done(_) | Prior::Diverged(_))
                )
            })
        })
    });
    let (live, note) = match open.then(|| live_of_last(Some(rec))) {
        None => (BTreeMap::new(), None),
        Some(Ok((_, l))) => (l, None),
        Some(Err(e)) => {
            let e = e.to_string();
            let last_line = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            (
                BTreeMap::new(),
                Some(format!(
                    "Slurm could not be asked ({last_line}): states from the run directories only"
                )),
            )
        }
    };
    let ended = match (last, &note) {
        (Some(j), None) if open => query::ended_tasks(j.job_id),
        _ => BTreeMap::new(),
    };
    let mut states = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let dir = out.join(id);
        let in_last = last.is_some_and(|j| j.tasks.contains(&i));
        let state = match prior_state(&dir)? {
            Prior::Done(r) => PointState::Done(r),
            Prior::Diverged(r) => PointState::Diverged(r),
            p => {
                let failed = dir.join(FAILED);
                // a failed.json from before the last submission says nothing
                // about the attempt Slurm made since
                let marker = if failed.exists()
                    && !(in_last
                        && mtime_unix(&failed)
                            .zip(last.map(|j| j.submitted_unix))
                            .is_some_and(|(m, s)| m < s))
                {
                    Some(read_record(&failed)?)
                } else {
                    None
                };
                let ended = in_last
                    .then(|| ended.get(&i))
                    .flatten()
                    .filter(|t| !t.completed())
                    .zip(last);
                match (in_last.then(|| live.get(&i)).flatten(), marker) {
                    (Some(t), _) => PointState::Queued(t.clone()),
                    (None, Some(mut r)) => {
                        // what Slurm adds (the task was cancelled, timed out, ...)
                        if let Some((t, j)) = ended {
                            let s = slurm_failure(id, &dir, j.job_id, i, t).message;
                            r.message = Some(
                                [r.message.take(), s]
                                    .into_iter()
                                    .flatten()
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            );
                        }
                        PointState::Failed(r)
                    }
                    (None, None) => match ended {
                        Some((t, j)) => PointState::Failed(slurm_failure(id, &dir, j.job_id, i, t)),
                        _ if matches!(p, Prior::Resume) => PointState::Stopped {
                            iter: checkpoint_iter(&dir),
                        },
                        _ => PointState::NotStarted,
                    },
                }
            }
        };
        states.push(state);
    }
    Ok((states, last.map(|j| j.job_id), note))
}

fn summary_line(name: &str, job: Option<u64>, states: &[PointState]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for w in [
        "done",
        "diverged",
        "running",
        "pending",
        "queued",
        "failed",
        "stopped",
        "not started",
    ] {
        let n = states.iter().filter(|s| s.word() == w).count();
        if n > 0 || matches!(w, "done" | "running" | "pending" | "failed") {
            counts.push((w, n));
        }
    }
    format!(
        "sweep {name}{}: {} points: {}",
        job.map(|j| format!(", Slurm job {j}")).unwrap_or_default(),
        states.len(),
        counts
            .iter()
            .map(|(w, n)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `resgrad sweep DIR --status`: one line per point and a summary line.
pub fn status(out: &Path) -> Result<()> {
    let rec = read_record_file(out)?;
    let ids = read_points(out)?;
    let (states, job, note) = point_states(out, &ids, &rec)?;
    let iters = |id: &str| -> Option<u64> {
        let text = std::fs::read_to_string(out.join(id).join(CONFIG)).ok()?;
        serde_json::from_str::<TrainConfig>(&text)
            .ok()
            .map(|c| c.iters)
    };
    let w = ids.iter().map(String::len).max().unwrap_or(0);
    for (id, s) in ids.iter().zip(&states) {
        crate::outln!(
            "{id:<w$}  {:<11}  {}",
            s.word(),
            s.detail(&out.join(id), iters(id))
        )?;
    }
    if let Some(n) = note {
        crate::outln!("{n}")?;
    }
    crate::outln!("{}", summary_line(&rec.name, job, &states))?;
    Ok(())
}

/// Write `results.md`, `results.csv`, `runs.csv` and the report of a Slurm
/// sweep from its run directories, as a local sweep does; tasks that Slurm
/// says ended badly without a marker get their `failed.json` now. An error
/// (exit 2) listing the unfinished points when there are any.
pub fn collect(grid: &Grid, out: &Path) -> Result<()> {
    let runs = grid.plan()?;
    for r in &runs {
        check_config(&out.join(&r.id), &r.config)?;
    }
    let rec = read_record_file(out)?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let (states, job, note) = point_states(out, &ids, &rec)?;
    let mut records: Vec<Option<RunRecord>> = Vec::with_capacity(runs.len());
    for (r, s) in runs.iter().zip(&states) {
        records.push(match s {
            PointState::Done(x) | PointState::Diverged(x) => Some(x.clone()),
            PointState::Failed(x) => {
                let p = out.join(&r.id).join(FAILED);
                if !p.exists() {
                    write_record(&p, x)?;
                }
                Some(x.clone())
            }
            _ => None,
        });
    }
    let (_, table) = write_results(grid, out, &runs, &records)?;
    crate::outln!("\n{table}")?;
    crate::outln!("results.md, results.csv and runs.csv in {}", out.display())?;
    let reported: Vec<PathBuf> = runs
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.as_ref().is_some_and(|r| r.status != RunStatus::Error))
        .map(|(p, _)| out.join(&p.id))
        .collect();
    if !reported.is_empty() {
        let rep = crate::report::report(&reported, &out.join("report"))?;
        crate::outln!("report: {}", rep.index.display())?;
    }
    if let Some(n) = note {
        crate::outln!("{n}")?;
    }
    let unfinished: Vec<String> = ids
        .iter()
        .zip(&states)
        .filter(|(_, s)| !matches!(s, PointState::Done(_) | PointState::Diverged(_)))
        .map(|(id, s)| format!("{id} ({})", s.word()))
        .collect();
    if !unfinished.is_empty() {
        return Err(Error::Config(format!(
            "{}; unfinished: {} (`resgrad sweep {} --status` for details; resubmit with --slurm to finish them)",
            summary_line(&grid.name, job, &states),
            unfinished.join(", "),
            out.display()
        )));
    }
    crate::outln!("{}", summary_line(&grid.name, job, &states))?;
    Ok(())
}

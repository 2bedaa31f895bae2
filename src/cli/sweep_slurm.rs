//! `resgrad sweep`'s Slurm flags (`--slurm`, `--status`, `--collect`,
//! `--task`) and which of the sweep's modes a command line asks for.

use resgrad::error::Error;
use resgrad::sweep::{self, slurm};
use resgrad::Result;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SlurmArgs {
    /// hand the grid to Slurm as one job array (one task per grid point)
    /// instead of training here; writes OUT/slurm/sweep.sbatch and submits it
    #[arg(long, conflicts_with = "jobs", help_heading = "Slurm")]
    slurm: bool,
    /// partition of the array's tasks
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    partition: Option<String>,
    /// time limit of one grid point, in Slurm's syntax (e.g. 1-00:00:00)
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    time: Option<String>,
    /// CPUs of each training process, and its threads (default: 1)
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    cpus_per_task: Option<usize>,
    /// memory per node, in Slurm's syntax (e.g. 8G)
    #[arg(long, requires = "slurm", help_heading = "Slurm")]
    mem: Option<String>,
    /// at most K grid points at a time (--array=...%K)
    #[arg(long, value_name = "K", requires = "slurm", help_heading = "Slurm")]
    max_running: Option<usize>,
    /// MPI ranks per grid point, started with `srun --mpi=pmix` inside each
    /// task (a resgrad built with --features mpi)
    #[arg(long, value_name = "R", requires = "slurm", help_heading = "Slurm")]
    ntasks: Option<usize>,
    /// one more #SBATCH option for the script, e.g. --sbatch-arg=--qos=low (repeatable)
    #[arg(
        long,
        value_name = "ARG",
        requires = "slurm",
        allow_hyphen_values = true,
        help_heading = "Slurm"
    )]
    sbatch_arg: Vec<String>,
    /// with the sweep's DIR instead of a grid file: one line per point
    /// (pending, running, done, diverged, failed with its exit code) and a
    /// summary, from the run directories and squeue/scontrol/sacct
    #[arg(long, conflicts_with_all = ["slurm", "collect", "task"], help_heading = "Slurm")]
    status: bool,
    /// write results.md, results.csv, runs.csv and the report of a Slurm
    /// sweep (GRID --out DIR, or DIR); lists the points not finished
    #[arg(long, conflicts_with_all = ["slurm", "task"], help_heading = "Slurm")]
    collect: bool,
    /// with the sweep's DIR: train its point RUN_ID as a local sweep would
    /// (start or resume, then done.json/failed.json); what each array task
    /// of sweep.sbatch runs
    #[arg(
        long,
        value_name = "RUN_ID",
        conflicts_with = "slurm",
        help_heading = "Slurm"
    )]
    task: Option<String>,
    /// with --task: run the training under this launcher, e.g.
    /// "srun --mpi=pmix --ntasks=4" (split at white space)
    #[arg(long, value_name = "CMD", requires = "task", help_heading = "Slurm")]
    launch: Option<String>,
}

/// The positional of `--status`/`--task`: a sweep directory.
fn sweep_dir(p: &Path, flag: &str) -> Result<PathBuf> {
    if !p.is_dir() {
        return Err(Error::Config(format!(
            "{flag} takes the sweep's output directory, and {} is not a directory",
            p.display()
        )));
    }
    Ok(p.to_path_buf())
}

/// `resgrad sweep ...`: a local sweep, a Slurm submission, status, collect
/// or one array task.
pub fn run(
    grid: &Path,
    out: Option<&Path>,
    jobs: usize,
    threads: Option<usize>,
    precision: Option<resgrad::precision::Precision>,
    a: SlurmArgs,
) -> Result<()> {
    if a.status {
        return slurm::status(&sweep_dir(grid, "--status")?);
    }
    if let Some(id) = &a.task {
        return slurm::run_task(
            &sweep_dir(grid, "--task")?,
            id,
            threads,
            a.launch.as_deref(),
        );
    }
    if a.collect && grid.is_dir() && out.is_none() {
        return slurm::collect(&slurm::load_sweep_grid(grid)?, grid);
    }
    let g = sweep::load_grid(grid)?;
    let out: PathBuf = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs").join(&g.name));
    if a.slurm {
        let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
        let opts = slurm::SlurmOptions {
            partition: a.partition,
            time: a.time,
            cpus_per_task: a.cpus_per_task,
            mem: a.mem,
            max_running: a.max_running,
            ntasks: a.ntasks.unwrap_or(1),
            sbatch_args: a.sbatch_arg,
            threads,
        };
        return slurm::submit(&g, &out, &opts, &exe);
    }
    if a.collect || slurm::is_slurm_sweep(&out) {
        // a Slurm sweep's directory is never trained here
        if !slurm::is_slurm_sweep(&out) {
            return Err(Error::Config(format!(
                "--collect: {} is not a sweep submitted with --slurm (no slurm/job.json)",
                out.display()
            )));
        }
        return slurm::collect(&g, &out);
    }
    sweep::main(grid, Some(&out), jobs, threads, precision)
}

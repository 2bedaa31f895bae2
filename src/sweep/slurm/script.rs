//! The batch script `DIR/slurm/sweep.sbatch` and the `--array` list: what
//! `sbatch` runs, written so that a person can read, edit and submit it by
//! hand.

use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// Everything the script says.
#[derive(Clone, Debug)]
pub struct Script<'a> {
    /// the grid's name (the job is called `resgrad-<name>`)
    pub name: &'a str,
    /// the sweep's output directory, absolute
    pub sweep_dir: &'a Path,
    /// the directory the sweep was submitted from, absolute (relative data
    /// paths in the grid are relative to it)
    pub workdir: &'a Path,
    /// the `resgrad` binary, absolute
    pub exe: &'a Path,
    /// grid points (lines of points.txt)
    pub points: usize,
    /// the `--array` value of the submission this script was written for
    pub array: &'a str,
    pub partition: Option<&'a str>,
    pub time: Option<&'a str>,
    pub cpus_per_task: Option<usize>,
    pub mem: Option<&'a str>,
    /// MPI ranks per grid point (1: one plain process)
    pub ntasks: usize,
    /// `--threads` of every training process (None: the task's CPUs)
    pub threads: Option<usize>,
    /// more `#SBATCH` options, as given
    pub sbatch_args: &'a [String],
}

/// Single-quote `s` for the shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path that goes into `#SBATCH` lines, which Slurm splits on white
/// space and where `%` starts a file-name pattern: refused when it has
/// either (or a quote, a backslash, a control character).
pub fn check_sbatch_path(what: &str, p: &Path) -> Result<()> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::Config(format!("{what} {} is not valid UTF-8", p.display())))?;
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "%\"'\\".contains(*c))
    {
        return Err(Error::Config(format!(
            "{what} {s:?} contains {c:?}, which #SBATCH lines cannot carry; use a path without it"
        )));
    }
    Ok(())
}

/// A value that goes into one `#SBATCH` line (`--partition`, `--time`,
/// `--mem`, `--sbatch-arg`): one line, no white space in a value.
pub fn check_option(flag: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.chars().any(|c| c.is_control()) {
        return Err(Error::Config(format!(
            "{flag} {v:?}: empty or with a control character"
        )));
    }
    Ok(())
}

/// The `--array` value for these (sorted, distinct) task indices: ranges
/// where they are consecutive (`0-3,7,9-10`), `%K` to run at most K at once.
pub fn array_spec(indices: &[usize], max_running: Option<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            indices[i].to_string()
        } else {
            format!("{}-{}", indices[i], indices[j])
        });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if let Some(k) = max_running {
        let _ = write!(s, "%{k}");
    }
    s
}

/// The job name: `resgrad-` and the grid name, in characters every shell
/// and `squeue` column shows as they are.
fn job_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("resgrad-{n}")
}

/// The script's text.
pub fn render(s: &Script) -> String {
    let dir = s.sweep_dir.display();
    let mut t = String::new();
    let w = &mut t;
    let _ = writeln!(w, "#!/bin/bash");
    let _ = writeln!(
        w,
        "# resgrad sweep \"{}\": {} grid points as one Slurm job array, written by\n\
         # `resgrad sweep ... --out {dir} --slurm`. Array task i trains grid point i,\n\
         # the run directory named on line i+1 of {dir}/slurm/points.txt.\n\
         #\n\
         # `resgrad sweep GRID --out {dir} --slurm` submits it for the points that are\n\
         # not finished yet (this time: --array={}). By hand, e.g. all points, two at a time:\n\
         #   sbatch --array=0-{}%2 {dir}/slurm/sweep.sbatch\n\
         # Follow it with `resgrad sweep {dir} --status`; once it is done,\n\
         # `resgrad sweep GRID --out {dir}` (or `resgrad sweep {dir} --collect`)\n\
         # writes results.md, results.csv, runs.csv and the report.",
        s.name,
        s.points,
        s.array,
        s.points.saturating_sub(1)
    );
    let _ = writeln!(w, "#SBATCH --job-name={}", job_name(s.name));
    let _ = writeln!(
        w,
        "# relative data paths in the grid are relative to the directory the sweep was submitted from\n\
         #SBATCH --chdir={}",
        s.workdir.display()
    );
    let _ = writeln!(
        w,
        "# one log per task: %A is the array's job id, %a the task (grid point) index;\n\
         # a requeued or preempted task appends to its log\n\
         #SBATCH --output={dir}/slurm/%A_%a.out\n\
         #SBATCH --open-mode=append"
    );
    let _ = writeln!(
        w,
        "# a task that is requeued (preemption, node failure, `scontrol requeue`) runs again\n\
         # and resumes its point from the last checkpoint\n\
         #SBATCH --requeue"
    );
    if let Some(p) = s.partition {
        let _ = writeln!(w, "#SBATCH --partition={p}");
    }
    if let Some(t) = s.time {
        let _ = writeln!(w, "# time limit of one grid point\n#SBATCH --time={t}");
    }
    if s.ntasks > 1 {
        let _ = writeln!(
            w,
            "# data-parallel training over MPI: {} ranks per grid point\n#SBATCH --ntasks={}",
            s.ntasks, s.ntasks
        );
    } else {
        let _ = writeln!(w, "#SBATCH --ntasks=1");
    }
    if let Some(c) = s.cpus_per_task {
        let _ = writeln!(
            w,
            "# CPUs of each training process (its --threads)\n#SBATCH --cpus-per-task={c}"
        );
    }
    if let Some(m) = s.mem {
        let _ = writeln!(w, "#SBATCH --mem={m}");
    }
    if !s.sbatch_args.is_empty() {
        let _ = writeln!(w, "# given with --sbatch-arg");
        for a in s.sbatch_args {
            let _ = writeln!(w, "#SBATCH {a}");
        }
    }
    let _ = writeln!(w, "\nset -euo pipefail");
    let _ = writeln!(w, "SWEEP={}", shell_quote(&dir.to_string()));
    let _ = writeln!(w, "RESGRAD={}", shell_quote(&s.exe.display().to_string()));
    match s.threads {
        Some(n) => {
            let _ = writeln!(
                w,
                "# threads of each training process (--threads at submission)\nTHREADS={n}"
            );
        }
        None => {
            let _ = writeln!(
                w,
                "# threads of each training process: the CPUs Slurm gave the task\n\
                 THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\""
            );
        }
    }
    let _ = writeln!(
        w,
        "# this task's grid point: line SLURM_ARRAY_TASK_ID+1 of points.txt\n\
         POINT=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$SWEEP/slurm/points.txt\")\n\
         if [ -z \"$POINT\" ]; then\n\
         \x20   echo \"array task $SLURM_ARRAY_TASK_ID: no such line in $SWEEP/slurm/points.txt\" >&2\n\
         \x20   exit 2\n\
         fi"
    );
    let _ = writeln!(
        w,
        "# `sweep --task` trains the point exactly as a local sweep does: `resgrad train\n\
         # --config` into $SWEEP/$POINT, or `resgrad train --resume` when the point has a\n\
         # checkpoint (a requeued or preempted task loses at most one evaluation interval),\n\
         # then writes done.json or failed.json (with the exit code) there. A point that is\n\
         # already done or diverged is left as it is."
    );
    if s.ntasks > 1 {
        let cpus = s
            .cpus_per_task
            .map(|c| format!(" --cpus-per-task={c}"))
            .unwrap_or_default();
        let _ = writeln!(
            w,
            "# every training runs as {n} MPI ranks started by srun (Slurm's PMIx plugin);\n\
             # the resgrad binary must be built with `--features mpi`\n\
             exec \"$RESGRAD\" --threads \"$THREADS\" sweep \"$SWEEP\" --task \"$POINT\" \\\n\
             \x20   --launch \"srun --mpi=pmix --ntasks={n}{cpus}\"",
            n = s.ntasks
        );
    } else {
        let _ = writeln!(
            w,
            "exec \"$RESGRAD\" --threads \"$THREADS\" sweep \"$SWEEP\" --task \"$POINT\""
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ranges_and_throttle() {
        assert_eq!(array_spec(&[0, 1, 2], Some(2)), "0-2%2");
        assert_eq!(array_spec(&[0, 1, 2, 3, 7, 9, 10], None), "0-3,7,9-10");
        assert_eq!(array_spec(&[5], None), "5");
        assert_eq!(array_spec(&[], None), "");
    }

    #[test]
    fn quoting_and_checks() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert!(check_sbatch_path("out", Path::new("/tmp/ok-dir_1.x")).is_ok());
        for bad in ["/tmp/a b", "/tmp/100%", "/tmp/a\"b", "/tmp/a\nb"] {
            let e = check_sbatch_path("--out", Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("--out"), "{e}");
        }
        assert!(check_option("--time", "1-00:00:00").is_ok());
        assert!(check_option("--time", "").is_err());
        assert!(check_option("--mem", "4G\n#SBATCH --x").is_err());
    }

    fn script(ntasks: usize, threads: Option<usize>) -> String {
        let extra = vec!["--qos=low".to_string()];
        render(&Script {
            name: "table 1",
            sweep_dir: Path::new("/scratch/t1"),
            workdir: Path::new("/home/me/resgrad"),
            exe: Path::new("/opt/bin/resgrad"),
            points: 55,
            array: "0-54%8",
            partition: Some("cpu"),
            time: Some("1-00:00:00"),
            cpus_per_task: Some(16),
            mem: Some("8G"),
            ntasks,
            threads,
            sbatch_args: &extra,
        })
    }

    #[test]
    fn script_has_the_options_and_the_task_line() {
        let s = script(1, None);
        for line in [
            "#!/bin/bash\n",
            "\n#SBATCH --job-name=resgrad-table_1\n",
            "\n#SBATCH --chdir=/home/me/resgrad\n",
            "\n#SBATCH --output=/scratch/t1/slurm/%A_%a.out\n",
            "\n#SBATCH --open-mode=append\n",
            "\n#SBATCH --requeue\n",
            "\n#SBATCH --partition=cpu\n",
            "\n#SBATCH --time=1-00:00:00\n",
            "\n#SBATCH --ntasks=1\n",
            "\n#SBATCH --cpus-per-task=16\n",
            "\n#SBATCH --mem=8G\n",
            "\n#SBATCH --qos=low\n",
            "\nSWEEP='/scratch/t1'\n",
            "\nRESGRAD='/opt/bin/resgrad'\n",
            "\nTHREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n",
            "\nexec \"$RESGRAD\" --threads \"$THREADS\" sweep \"$SWEEP\" --task \"$POINT\"\n",
            "(this time: --array=0-54%8)",
            "sbatch --array=0-54%2 /scratch/t1/slurm/sweep.sbatch",
        ] {
            assert!(s.contains(line), "{line:?} missing:\n{s}");
        }
        assert!(!s.contains("srun"), "{s}");
        // every #SBATCH line comes before the first command (sbatch stops
        // reading options there)
        let first_cmd = s.find("\nset -euo").unwrap();
        assert!(s.rfind("#SBATCH").unwrap() < first_cmd, "{s}");
    }

    #[test]
    fn mpi_script_launches_with_srun_pmix() {
        let s = script(4, Some(3));
        assert!(s.contains("\n#SBATCH --ntasks=4\n"), "{s}");
        assert!(s.contains("\nTHREADS=3\n"), "{s}");
        assert!(
            s.contains("--task \"$POINT\" \\\n    --launch \"srun --mpi=pmix --ntasks=4 --cpus-per-task=16\"\n"),
            "{s}"
        );
    }
}

//! Talking to Slurm through its own commands: `sbatch` to submit, `squeue`
//! for the tasks still queued or running, `scontrol` (recent jobs) and
//! `sacct` (with accounting) for how the others ended. Their output is
//! parsed here, with formats requested explicitly (`-o`, `-P`, `-o` of
//! `scontrol`'s one-line records).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

/// A task that Slurm still holds: `PENDING`, `RUNNING`, `COMPLETING`, ...
#[derive(Clone, Debug, PartialEq)]
pub struct LiveTask {
    pub state: String,
    /// why it is pending (`Resources`, `BeginTime`, ...); `None` when squeue says so
    pub reason: String,
}

/// How a task ended, as Slurm recorded it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndedTask {
    /// `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, `OUT_OF_MEMORY`, ...
    pub state: String,
    /// the batch script's exit code and the signal that ended it
    pub exit_code: i32,
    pub signal: i32,
}

impl EndedTask {
    pub fn completed(&self) -> bool {
        self.state == "COMPLETED"
    }
}

/// Run a Slurm command; a missing program or a non-zero exit is an
/// [`Error::External`] with the program's own message.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        let msg = if e.kind() == std::io::ErrorKind::NotFound {
            "not found on PATH: run this on a machine with the Slurm client commands (a login node)"
                .to_string()
        } else {
            format!("could not run it: {e}")
        };
        Error::External {
            program: program.into(),
            msg,
        }
    })?;
    Ok(out)
}

fn failure(program: &str, out: &Output) -> Error {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (stderr, stdout) = (text(&out.stderr), text(&out.stdout));
    let said = if stderr.is_empty() { stdout } else { stderr };
    let status = match out.status.code() {
        Some(c) => format!("exit code {c}"),
        None => out.status.to_string(),
    };
    Error::External {
        program: program.into(),
        msg: if said.is_empty() {
            status
        } else {
            format!("{status}: {said}")
        },
    }
}

/// `sbatch --parsable ARGS SCRIPT`: the job id.
pub fn sbatch(args: &[String], script: &Path) -> Result<u64> {
    let script = script.to_string_lossy();
    let mut all: Vec<&str> = vec!["--parsable"];
    all.extend(args.iter().map(String::as_str));
    all.push(&script);
    let out = run("sbatch", &all)?;
    if !out.status.success() {
        return Err(failure("sbatch", &out));
    }
    parse_parsable(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| Error::External {
        program: "sbatch".into(),
        msg: format!(
            "printed no job id: {:?}",
            String::from_utf8_lossy(&out.stdout)
        ),
    })
}

/// `sbatch --parsable` prints `JOBID` or `JOBID;CLUSTER`.
fn parse_parsable(s: &str) -> Option<u64> {
    s.trim().split(';').next()?.trim().parse().ok()
}

/// The array's tasks Slurm still holds (queued, running, completing),
/// by task index. A job Slurm has forgotten holds none.
pub fn live_tasks(job: u64) -> Result<BTreeMap<usize, LiveTask>> {
    let id = job.to_string();
    let out = run("squeue", &["-h", "-r", "-j", &id, "-o", "%K|%T|%r"])?;
    if !out.status.success() {
        let e = failure("squeue", &out);
        // a finished job that left the controller's memory
        if e.to_string().contains("Invalid job id") {
            return Ok(BTreeMap::new());
        }
        return Err(e);
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout)))
}

/// Lines `TASK|STATE|REASON` (squeue `-r -o %K|%T|%r`).
pub fn parse_squeue(text: &str) -> BTreeMap<usize, LiveTask> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            let task = f.next()?.parse().ok()?;
            let state = f.next()?.to_string();
            let reason = f.next().unwrap_or("").to_string();
            Some((task, LiveTask { state, reason }))
        })
        .collect()
}

/// How the array's finished tasks ended: from `scontrol show job` (jobs
/// the controller still remembers, `MinJobAge`, 5 minutes by default), else
/// from `sacct` (where accounting is on). Best effort: empty when neither
/// knows the job.
pub fn ended_tasks(job: u64) -> BTreeMap<usize, EndedTask> {
    let id = job.to_string();
    let mut ended = BTreeMap::new();
    if let Ok(out) = run(
        "sacct",
        &["-n", "-X", "-P", "-j", &id, "-o", "JobID,State,ExitCode"],
    ) {
        if out.status.success() {
            ended = parse_sacct(&String::from_utf8_lossy(&out.stdout), job);
        }
    }
    if let Ok(out) = run("scontrol", &["-o", "show", "job", &id]) {
        if out.status.success() {
            ended.extend(parse_scontrol(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    ended.retain(|_, t| !is_live(&t.state));
    ended
}

/// States of a job Slurm still holds (queued, running, requeued, ...).
fn is_live(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_FED"
            | "REQUEUE_HOLD"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "RESV_DEL_HOLD"
    )
}

/// `ExitCode=2:0` / `0:15`: (exit code, signal).
fn parse_exit(s: &str) -> (i32, i32) {
    let mut p = s.split(':');
    let code = p.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let sig = p.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, sig)
}

/// `scontrol -o show job`: one record per line, `Key=Value` fields; array
/// tasks carry `ArrayTaskId=N` (a still-pending remainder `ArrayTaskId=3-5%2`
/// is skipped: it is live).
pub fn parse_scontrol(text: &str) -> BTreeMap<usize, EndedTask> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
        };
        let (Some(task), Some(state)) = (
            field("ArrayTaskId").and_then(|t| t.parse::<usize>().ok()),
            field("JobState"),
        ) else {
            continue;
        };
        let (exit_code, signal) = parse_exit(field("ExitCode").unwrap_or("0:0"));
        m.insert(
            task,
            EndedTask {
                state: state.to_string(),
                exit_code,
                signal,
            },
        );
    }
    m
}

/// `sacct -n -X -P -o JobID,State,ExitCode`: `JOB_TASK|STATE|CODE:SIG`
/// (`CANCELLED by 0` -> `CANCELLED`).
pub fn parse_sacct(text: &str, job: u64) -> BTreeMap<usize, EndedTask> {
    let prefix = format!("{job}_");
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            let task = f.next()?.strip_prefix(&prefix)?.parse().ok()?;
            let state = f.next()?.split_whitespace().next()?.to_string();
            let (exit_code, signal) = parse_exit(f.next().unwrap_or("0:0"));
            Some((
                task,
                EndedTask {
                    state,
                    exit_code,
                    signal,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sbatch_squeue_scontrol_and_sacct() {
        assert_eq!(parse_parsable("1234\n"), Some(1234));
        assert_eq!(parse_parsable("77;cluster1\n"), Some(77));
        assert_eq!(parse_parsable("sbatch: error\n"), None);

        let q = parse_squeue("1|PENDING|BeginTime\n2|RUNNING|None\nN/A|RUNNING|None\n");
        assert_eq!(q.len(), 2);
        assert_eq!(q[&1].state, "PENDING");
        assert_eq!(q[&1].reason, "BeginTime");
        assert_eq!(q[&2].state, "RUNNING");

        // two records as 22.05 prints them (shortened), and a pending remainder
        let s = "JobId=3 ArrayJobId=3 ArrayTaskId=2 JobName=x UserId=root(0) JobState=COMPLETED Reason=None Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 RunTime=00:00:04\n\
                 JobId=5 ArrayJobId=3 ArrayTaskId=1 JobName=x JobState=CANCELLED Reason=None Restarts=1 ExitCode=0:15\n\
                 JobId=6 ArrayJobId=3 ArrayTaskId=0 JobName=x JobState=FAILED Reason=NonZeroExitCode ExitCode=2:0\n\
                 JobId=3 ArrayJobId=3 ArrayTaskId=4-6%2 JobName=x JobState=PENDING ExitCode=0:0\n";
        let e = parse_scontrol(s);
        assert_eq!(e.len(), 3);
        assert!(e[&2].completed());
        assert_eq!(
            (e[&1].state.as_str(), e[&1].exit_code, e[&1].signal),
            ("CANCELLED", 0, 15)
        );
        assert_eq!((e[&0].state.as_str(), e[&0].exit_code), ("FAILED", 2));

        let a = parse_sacct(
            "12_0|COMPLETED|0:0\n12_1|CANCELLED by 0|0:15\n12_2|TIMEOUT|0:0\n13_0|FAILED|1:0\n",
            12,
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a[&1].state, "CANCELLED");
        assert_eq!(a[&2].state, "TIMEOUT");
        assert!(is_live("REQUEUED") && !is_live("TIMEOUT"));
    }
}

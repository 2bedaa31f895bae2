//! `resgrad sweep --slurm` against a real Slurm (Debian's slurm-wlm): the
//! test starts a one-node cluster of its own (slurmctld + slurmd, a temp
//! config on free ports, auth/none), submits a 3-point grid of tiny runs,
//! requeues one task while it trains, and checks that results.md is the one
//! a local `--jobs 1` sweep writes, byte for byte, and that the requeued run
//! resumed from its checkpoint. A second sweep checks that a cancelled task
//! shows as failed and that a resubmission leaves finished points out. The
//! daemons are stopped by the pids in their pid files, also when the test
//! fails.
//!
//! Without the Slurm binaries (or root, which slurmd needs) the test says so
//! and skips; with `CI` set in the environment it fails instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DAEMONS: [&str; 2] = ["slurmctld", "slurmd"];
const CLIENTS: [&str; 5] = ["sbatch", "squeue", "scontrol", "sinfo", "scancel"];

/// The tiny grid: three seeds of a small MLP, evaluated (and so
/// checkpointed) every 100 of 3000 iterations: long enough (1-2 s on a
/// quiet core) to be requeued part-way.
const GRID: &str = r#"
name = "tiny"
[base]
spec = { arch = "mlp", hidden = 32, units = 4, unit = "full_preact", shortcut = { kind = "identity" }, batchnorm = false }
data = "mnist5k"
iters = 3000
batch = 32
lr = 0.05
eval_every = 100
flow_every = 0
[grid]
seed = [0, 1, 2]
"#;

/// One short point and one that would train for minutes (cancelled).
const GRID_CANCEL: &str = r#"
name = "cancel"
[base]
spec = { arch = "mlp", hidden = 16, units = 2, unit = "full_preact", shortcut = { kind = "identity" }, batchnorm = false }
data = "mnist5k"
batch = 32
eval_every = 20
flow_every = 0
[grid]
iters = [40, 1000000]
"#;

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    let absent: Vec<&str> = DAEMONS
        .iter()
        .chain(&CLIENTS)
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !absent.is_empty() {
        return Some(format!(
            "Slurm is not installed (missing: {}; apt-get install slurm-wlm slurmctld slurmd slurm-client)",
            absent.join(", ")
        ));
    }
    if !is_root() {
        return Some("slurmd needs root (SlurmUser=root in the test's cluster)".into());
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A one-node Slurm cluster in a temp directory; stopped (jobs cancelled,
/// daemons stopped by pid, directory removed) when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    node: String,
}

impl Cluster {
    fn start() -> Cluster {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "resgrad-slurm-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| h.trim().split('.').next().map(str::to_string))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ctld_port, d_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=rg{pid}x{n}\n\
                 SlurmctldHost=localhost(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={d_port}\n\
                 SlurmUser=root\n\
                 AuthType=auth/none\n\
                 CredType=cred/none\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 AccountingStorageType=accounting_storage/none\n\
                 JobCompType=jobcomp/filetxt\n\
                 JobCompLoc={d}/log/jobcomp.txt\n\
                 SchedulerParameters=batch_sched_delay=0\n\
                 MailProg=/bin/true\n\
                 ReturnToService=2\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
                pid = std::process::id(),
                n = N.load(Ordering::Relaxed),
            ),
        )
        .unwrap();
        let c = Cluster { dir, conf, node };
        let t0 = Instant::now();
        let o = c.daemon("slurmctld", &["-i"]);
        assert!(o.status.success(), "slurmctld: {}", text(&o));
        c.wait_for("slurmctld to answer", 30, || {
            String::from_utf8_lossy(&c.cmd("scontrol", &["ping"]).stdout).contains("is UP")
        });
        let node = c.node.clone();
        let o = c.daemon("slurmd", &["-N", &node]);
        assert!(o.status.success(), "slurmd: {}", text(&o));
        c.wait_for("the node to be idle", 30, || {
            String::from_utf8_lossy(&c.cmd("sinfo", &["-h", "-n", &node, "-o", "%T"]).stdout).trim()
                == "idle"
        });
        println!("one-node Slurm up in {:.1?}", t0.elapsed());
        c
    }

    fn daemon(&self, name: &str, args: &[&str]) -> Output {
        Command::new(find_program(name).unwrap())
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A Slurm client command against this cluster.
    fn cmd(&self, name: &str, args: &[&str]) -> Output {
        Command::new(find_program(name).unwrap())
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// resgrad, talking to this cluster.
    fn resgrad(&self, args: &[&str], cwd: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_resgrad"))
            .args(args)
            .current_dir(cwd)
            .env("SLURM_CONF", &self.conf)
            .output()
            .expect("run resgrad")
    }

    /// The daemons' logs, for a failure's message.
    fn logs(&self) -> String {
        let log = |f: &str| std::fs::read_to_string(self.dir.join("log").join(f));
        format!(
            "--- slurmctld.log\n{}\n--- slurmd.log\n{}",
            log("slurmctld.log").unwrap_or_default(),
            log("slurmd.log").unwrap_or_default()
        )
    }

    fn wait_for(&self, what: &str, secs: u64, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            if t0.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "timed out after {secs} s waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// squeue's lines for a job: `TASK STATE`.
    fn queue(&self, job: u64) -> Vec<(usize, String)> {
        let o = self.cmd(
            "squeue",
            &["-h", "-r", "-j", &job.to_string(), "-o", "%K %T"],
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (t, s) = l.trim().split_once(' ')?;
                Some((t.parse().ok()?, s.to_string()))
            })
            .collect()
    }

    fn wait_gone(&self, job: u64, secs: u64) {
        self.wait_for(&format!("job {job} to leave the queue"), secs, || {
            self.queue(job).is_empty()
        });
    }
}

fn alive(pid: u32) -> bool {
    // a zombie has exited
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // jobs first, so that no slurmstepd (and no training) outlives slurmd
        let _ = self.cmd("scancel", &["--full", "-u", "root"]);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            let o = self.cmd("squeue", &["-h"]);
            if !o.status.success() || o.stdout.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for name in ["slurmd", "slurmctld"] {
            let Some(pid) = std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let kill = |sig: &str| {
                let _ = Command::new("kill").args([sig, &pid.to_string()]).output();
            };
            kill("-TERM");
            let t0 = Instant::now();
            while alive(pid) && t0.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                kill("-KILL");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn job_ids(sweep: &Path) -> Vec<(u64, Vec<usize>)> {
    let v: serde_json::Value =
        serde_json::from_str(&read(&sweep.join("slurm").join("job.json"))).unwrap();
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_id"].as_u64().unwrap(),
                j["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect()
}

fn data_rows(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.csv"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

#[test]
fn slurm_array_with_a_requeue_equals_a_local_sweep() {
    if let Some(why) = missing() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set, and this machine cannot run the Slurm test: {why}");
        }
        eprintln!("SKIPPED slurm_array_with_a_requeue_equals_a_local_sweep: {why}");
        return;
    }
    let t_start = Instant::now();
    let c = Cluster::start();
    let work = c.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("tiny.toml"), GRID).unwrap();

    // sbatch rejecting the script: exit 2 with sbatch's own message
    let o = c.resgrad(
        &[
            "sweep",
            "tiny.toml",
            "--out",
            "bad",
            "--slurm",
            "--partition",
            "nosuch",
        ],
        &work,
    );
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(
        s.contains("error: sbatch: exit code 1: sbatch: error:") && s.contains("partition"),
        "{s}"
    );

    // 1. submit: one task per point, 2 threads per training as the local
    //    sweep below (thread counts change the last bits)
    let o = c.resgrad(
        &[
            "--threads",
            "2",
            "sweep",
            "tiny.toml",
            "--out",
            "sl",
            "--slurm",
            "--cpus-per-task",
            "1",
        ],
        &work,
    );
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("3 points") && s.contains("3 to submit"), "{s}");
    assert!(s.contains("--array=0-2 "), "{s}");
    let sl = work.join("sl");
    let jobs = job_ids(&sl);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (job, ref tasks) = jobs[0];
    assert_eq!(tasks, &[0, 1, 2]);
    let script = read(&sl.join("slurm").join("sweep.sbatch"));
    assert!(script.contains("#SBATCH --cpus-per-task=1"), "{script}");
    assert!(
        script.contains(&format!("RESGRAD='{}'", env!("CARGO_BIN_EXE_resgrad"))),
        "{script}"
    );
    assert_eq!(
        read(&sl.join("slurm").join("points.txt")),
        "seed=0\nseed=1\nseed=2\n"
    );

    // a second submission while the array is live is refused
    let o = c.resgrad(&["sweep", "tiny.toml", "--out", "sl", "--slurm"], &work);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains(&format!("Slurm job {job} still has")), "{s}");

    // 2. requeue task 1 once it has a checkpoint, before it finishes
    let run1 = sl.join("seed=1");
    // (metrics.csv gets its row before the checkpoint is written)
    c.wait_for("task 1 to write a checkpoint", 60, || {
        run1.join("checkpoint.safetensors").exists()
    });
    let at = data_rows(&run1) * 100;
    assert!(
        !run1.join("done.json").exists() && at < 3000,
        "task 1 finished before it could be requeued; make the grid's runs longer"
    );
    let task1 = format!("{job}_1");
    let o = c.cmd("scontrol", &["requeue", &task1]);
    assert!(o.status.success(), "scontrol requeue: {}", text(&o));
    let requeued = Instant::now();
    // requeued tasks wait ~120 s (BeginTime) before they may start again
    c.wait_for("task 1 to be pending again", 30, || {
        c.queue(job).contains(&(1, "PENDING".into()))
    });
    let o = c.resgrad(&["sweep", "sl", "--status"], &work);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("seed=1 ") && l.contains("pending")),
        "{s}"
    );
    assert!(
        s.contains(&format!("sweep tiny, Slurm job {job}: 3 points:")),
        "{s}"
    );
    // slurmd refuses to launch a job whose credential was created no later
    // than the second its previous attempt was killed in ("Job credential
    // revoked": it compares whole seconds), which Slurm's own ~120 s hold
    // never meets; starting the task at once must wait for the next second
    let hold = Duration::from_millis(2100);
    std::thread::sleep(hold.saturating_sub(requeued.elapsed()));
    let o = c.cmd(
        "scontrol",
        &["update", &format!("JobId={task1}"), "StartTime=now"],
    );
    assert!(o.status.success(), "scontrol update: {}", text(&o));
    c.wait_gone(job, 120);

    // 3. the same grid trained here, one run at a time
    let o = c.resgrad(
        &[
            "--threads",
            "2",
            "sweep",
            "tiny.toml",
            "--out",
            "local",
            "--jobs",
            "1",
        ],
        &work,
    );
    assert!(o.status.success(), "{}", text(&o));

    // 4. collect (a plain rerun of a Slurm sweep collects, never trains here)
    let o = c.resgrad(&["sweep", "tiny.toml", "--out", "sl"], &work);
    let s = text(&o);
    assert!(
        o.status.success(),
        "{s}\n--- task 1's log:\n{}\n--- its failed.json:\n{}\n--- scontrol show job:\n{}\n{}",
        std::fs::read_to_string(sl.join("slurm").join(format!("{job}_1.out"))).unwrap_or_default(),
        std::fs::read_to_string(run1.join("failed.json")).unwrap_or_default(),
        text(&c.cmd("scontrol", &["-o", "show", "job", &task1])),
        c.logs()
    );
    assert!(s.contains("3 points: 3 done"), "{s}");
    let local = work.join("local");
    assert_eq!(
        read(&sl.join("results.md")),
        read(&local.join("results.md")),
        "results.md of the Slurm sweep differs from the local one"
    );
    assert_eq!(
        read(&sl.join("results.csv")),
        read(&local.join("results.csv"))
    );
    assert_eq!(read(&sl.join("runs.csv")), read(&local.join("runs.csv")));
    assert!(sl.join("report").join("index.html").exists());

    // the requeued run resumed from its checkpoint: its log (appended across
    // the requeue) has the first attempt and the resume with Slurm's restart
    // count, and its metrics continue the rows of the first attempt
    let log = read(&sl.join("slurm").join(format!("{job}_1.out")));
    assert!(log.contains("restart 0): starting"), "{log}");
    let resumed = log
        .lines()
        .find_map(|l| {
            l.split_once("restart 1): resuming from the checkpoint at iteration ")
                .and_then(|(_, r)| r.split(',').next()?.parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("no resume in the requeued task's log:\n{log}"));
    assert!((100..3000).contains(&resumed), "{log}");
    assert!(log.contains("seed=1: done: test error"), "{log}");
    let o = c.cmd("scontrol", &["-o", "show", "job", &task1]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("Restarts=1"), "{s}");
    for id in ["seed=0", "seed=2"] {
        let l = read(&sl.join("slurm").join(format!("{job}_{}.out", &id[5..])));
        assert!(!l.contains("resuming"), "{id} was not requeued: {l}");
    }
    // submitting a finished sweep submits nothing
    let o = c.resgrad(&["sweep", "tiny.toml", "--out", "sl", "--slurm"], &work);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("0 to submit, 3 already done") && s.contains("nothing to train"),
        "{s}"
    );
    assert_eq!(job_ids(&sl).len(), 1);

    // 5. a cancelled task shows as failed; a resubmission leaves the
    //    finished point out
    std::fs::write(work.join("cancel.toml"), GRID_CANCEL).unwrap();
    let o = c.resgrad(&["sweep", "cancel.toml", "--out", "cx", "--slurm"], &work);
    assert!(o.status.success(), "{}", text(&o));
    let cx = work.join("cx");
    let (job2, _) = job_ids(&cx)[0];
    let long = cx.join("iters=1000000");
    c.wait_for(
        "the short point to finish and the long one to checkpoint",
        60,
        || cx.join("iters=40").join("done.json").exists() && data_rows(&long) >= 1,
    );
    let o = c.cmd("scancel", &[&job2.to_string()]);
    assert!(o.status.success(), "scancel: {}", text(&o));
    c.wait_gone(job2, 30);
    let o = c.resgrad(&["sweep", "cx", "--status"], &work);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    let line = s
        .lines()
        .find(|l| l.starts_with("iters=1000000 "))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        line.contains("failed") && line.contains(&format!("Slurm task {job2}_1 ended CANCELLED")),
        "{s}"
    );
    assert!(
        s.contains("2 points: 1 done, 0 running, 0 pending, 1 failed"),
        "{s}"
    );
    let o = c.resgrad(&["sweep", "cx", "--collect"], &work);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("unfinished: iters=1000000 (failed)"), "{s}");
    let md = read(&cx.join("results.md"));
    assert!(md.contains("unfinished"), "{md}");
    let runs = read(&cx.join("runs.csv"));
    assert!(
        runs.lines()
            .any(|l| l.starts_with("iters=1000000,") && l.contains(",error,")),
        "{runs}"
    );
    let o = c.resgrad(&["sweep", "cancel.toml", "--out", "cx", "--slurm"], &work);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("1 to submit, 1 already done"), "{s}");
    let jobs = job_ids(&cx);
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[1].1,
        vec![1],
        "only the unfinished point is resubmitted"
    );
    assert!(s.contains("--array=1 "), "{s}");
    let _ = c.cmd("scancel", &[&jobs[1].0.to_string()]);
    c.wait_gone(jobs[1].0, 30);
    println!("Slurm test: {:.1?} in all", t_start.elapsed());
}

/// No sbatch on PATH: exit 2 saying so, the script and run directories
/// written all the same; then `--task` trains a point of that directory
/// as an array task would, under a `--launch` prefix (a logging wrapper
/// here, `srun --mpi=pmix` in the script), and leaves finished points
/// alone. No cluster needed.
#[test]
fn without_sbatch_the_submission_says_so_and_a_task_runs_its_point() {
    let dir = std::env::temp_dir().join(format!("resgrad-nosbatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cleanup = Tmp(dir.clone());
    std::fs::write(
        dir.join("tiny.toml"),
        GRID.replace("iters = 3000", "iters = 200"),
    )
    .unwrap();
    let resgrad = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_resgrad"))
            .args(args)
            .current_dir(&dir)
            .env("PATH", dir.join("no-bin"))
            .output()
            .unwrap()
    };
    let o = resgrad(&["sweep", "tiny.toml", "--out", "out", "--slurm"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("error: sbatch: not found on PATH"), "{s}");
    let out = dir.join("out");
    assert!(out.join("slurm").join("sweep.sbatch").exists(), "{s}");
    assert!(out.join("seed=1").join("config.json").exists(), "{s}");

    let wrapper = dir.join("launch.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}/launched.txt\nexec \"$@\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let o = Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .output()
        .unwrap();
    assert!(o.status.success());
    let launch = wrapper.to_str().unwrap();
    let task = [
        "--threads",
        "2",
        "sweep",
        "out",
        "--task",
        "seed=1",
        "--launch",
        launch,
    ];
    let o = resgrad(&task);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(
        s.contains("seed=1 (array task - of job -, restart 0): starting, 2 threads"),
        "{s}"
    );
    assert!(s.contains("seed=1: done: test error"), "{s}");
    let launched = read(&dir.join("launched.txt"));
    assert!(
        launched.starts_with(env!("CARGO_BIN_EXE_resgrad"))
            && launched.contains(" --threads 2 train --config ")
            && launched.contains("seed=1"),
        "{launched}"
    );
    let done = read(&out.join("seed=1").join("done.json"));
    assert!(done.contains("\"iter\": 200"), "{done}");
    // a finished point is left alone
    let o = resgrad(&task);
    let s = text(&o);
    assert!(
        o.status.success() && s.contains("): already done: test error"),
        "{s}"
    );
    assert_eq!(read(&dir.join("launched.txt")), launched);
    // a point the sweep does not have, a grid file instead of the directory
    let o = resgrad(&["sweep", "out", "--task", "seed=9"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("\"seed=9\" is not a point of the sweep"), "{s}");
    let o = resgrad(&["sweep", "tiny.toml", "--status"]);
    let s = text(&o);
    assert_eq!(o.status.code(), Some(2), "{s}");
    assert!(s.contains("is not a directory"), "{s}");
    drop(cleanup);
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

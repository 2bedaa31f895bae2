//! Data-parallel training under a real `mpirun -np 2` (Open MPI), against a
//! single process: the built binary, run both ways, and the run directories
//! compared. Needs the `mpi` feature and `mpirun` on the PATH:
//! `cargo test --release --features mpi --test mpi` (`.ci/run` installs
//! Open MPI). As root, Open MPI wants `OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)`,
//! which the tests set for the processes they start.
//!
//! Tolerances (the issue's): every checkpoint tensor within 1e-5 relative
//! (of the tensor's largest magnitude, at least 1e-5 absolute), every
//! logged loss and accuracy within 1e-6 -- metrics.csv prints 6 decimals,
//! so two values that differ by less than 1e-6 can print 1e-6 apart: the
//! check allows that one unit of the last printed digit, and no more.

#![cfg(feature = "mpi")]

mod common;

use common::*;
use resgrad::io::safetensors::SafeTensors;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One job at a time: two ranks already fill the 2-core project machine,
/// and Open MPI's ranks poll while they wait.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(|e| e.into_inner())
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // quiet about a missing InfiniBand or a busy machine
        .env("OMPI_MCA_btl_base_warn_component_unused", "0");
    c
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `resgrad train ARGS --out DIR` on one process (one thread: the
/// reference every rank is compared with).
fn single(args: &[&str], out: &Path) {
    ok(
        bin()
            .args(["--threads", "1", "train"])
            .args(args)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap(),
        "single process",
    );
}

/// The same under `mpirun -np 2`, one thread per rank.
fn two_ranks(args: &[&str], out: &Path) -> Output {
    ok(
        mpirun(2)
            .arg(env!("CARGO_BIN_EXE_resgrad"))
            .args(["--threads", "1", "train"])
            .args(args)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap(),
        "mpirun -np 2",
    )
}

/// Every checkpoint tensor within `rel` of the other run's (relative to the
/// tensor's largest magnitude), every metrics column but the timing ones
/// within 1e-6 (plus the printing's rounding), the flow norms within `rel`.
fn assert_close_runs(a: &Path, b: &Path, rel: f64) {
    let ca = SafeTensors::read(&a.join("checkpoint.safetensors")).unwrap();
    let cb = SafeTensors::read(&b.join("checkpoint.safetensors")).unwrap();
    assert_eq!(
        ca.tensors.keys().collect::<Vec<_>>(),
        cb.tensors.keys().collect::<Vec<_>>()
    );
    let mut worst = 0.0f64;
    for name in ca.tensors.keys() {
        if name.ends_with("num_batches_tracked") {
            assert_eq!(ca.tensors[name].bytes, cb.tensors[name].bytes, "{name}");
            continue;
        }
        let x = ca.get_f64(name).unwrap().1;
        let y = cb.get_f64(name).unwrap().1;
        let scale = x.iter().fold(1e-5f64, |m, v| m.max(v.abs()));
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            let e = (p - q).abs() / scale;
            worst = worst.max(e);
            assert!(e <= rel, "{name}[{i}]: {p} vs {q} (relative {e:e})");
        }
    }
    eprintln!("worst relative weight difference: {worst:e}");
    let (ma, mb) = (metrics_rows(a), metrics_rows(b));
    assert_eq!(ma.len(), mb.len(), "metrics rows");
    assert!(!ma.is_empty());
    for (ra, rb) in ma.iter().zip(&mb) {
        for i in 0..7 {
            let (x, y): (f64, f64) = (ra[i].parse().unwrap(), rb[i].parse().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 + 1e-6 + 1e-12,
                "metrics column {i}: {ra:?} vs {rb:?}"
            );
        }
    }
    let fa = std::fs::read_to_string(a.join("flow.csv")).unwrap();
    let fb = std::fs::read_to_string(b.join("flow.csv")).unwrap();
    assert_eq!(fa.lines().count(), fb.lines().count(), "flow rows");
    for (la, lb) in fa.lines().zip(fb.lines()).skip(1) {
        for (x, y) in la.split(',').zip(lb.split(',')).skip(2) {
            if x.is_empty() || y.is_empty() {
                assert_eq!(x, y, "{la} vs {lb}");
                continue;
            }
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1e-3),
                "flow: {la} vs {lb}"
            );
        }
    }
}

const STEPS: [&str; 8] = [
    "--iters",
    "30",
    "--eval-every",
    "10",
    "--flow-every",
    "10",
    "--lr",
    "0.05",
];

/// (a) a residual MLP without BatchNorm: 2 ranks of 16 images vs one
/// process with the batch of 32.
#[test]
fn mlp_without_bn_two_ranks_equal_one_process() {
    let _one = one_job();
    let t = TempDir::new("mpi-a");
    let mut args = vec![
        "--arch",
        "mlp",
        "--units",
        "3",
        "--hidden",
        "32",
        "--no-batchnorm",
        "--batch",
        "32",
        "--quiet",
    ];
    args.extend(STEPS);
    single(&args, &t.join("one"));
    two_ranks(&args, &t.join("two"));
    assert_close_runs(&t.join("one"), &t.join("two"), 1e-5);
    // rank 0 alone wrote the run: one finishing line
    assert_no_temporaries(&t.join("two"));
}

/// (b) a small CIFAR-style conv net (ResNet-8, width 4, on the built-in
/// digits as 1x28x28 images) with `--sync-bn`: BatchNorm over the whole
/// batch of 16 on 2 ranks of 8, as one process computes it.
#[test]
fn conv_net_with_sync_bn_two_ranks_equal_one_process() {
    let _one = one_job();
    let t = TempDir::new("mpi-b");
    let mut args = vec![
        "--arch", "cifar", "--depth", "8", "--width", "4", "--batch", "16", "--quiet",
    ];
    args.extend(STEPS);
    single(&args, &t.join("one"));
    let mut sync = args.clone();
    sync.push("--sync-bn");
    two_ranks(&sync, &t.join("two"));
    assert_close_runs(&t.join("one"), &t.join("two"), 1e-5);
    // and without --sync-bn the two ranks do something else (the check can fail)
    two_ranks(&args, &t.join("per-rank"));
    let a = SafeTensors::read(&t.join("one").join("checkpoint.safetensors")).unwrap();
    let b = SafeTensors::read(&t.join("per-rank").join("checkpoint.safetensors")).unwrap();
    let (x, y) = (
        a.get_f64("fc.weight").unwrap().1,
        b.get_f64("fc.weight").unwrap().1,
    );
    let d = x
        .iter()
        .zip(&y)
        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        d > 1e-3,
        "per-rank BN should differ from sync-BN, max diff {d}"
    );
}

/// (c) per-rank BatchNorm (the default) on 2 ranks equals one process that
/// normalises each half of the batch on its own (`--bn-groups 2`): a
/// residual MLP with BN and a conv net.
#[test]
fn per_rank_bn_equals_two_bn_groups_in_one_process() {
    let _one = one_job();
    let t = TempDir::new("mpi-c");
    let mut mlp = vec![
        "--arch", "mlp", "--units", "3", "--hidden", "32", "--batch", "32", "--quiet",
    ];
    mlp.extend(STEPS);
    let mut ghost = mlp.clone();
    ghost.extend(["--bn-groups", "2"]);
    single(&ghost, &t.join("one"));
    two_ranks(&mlp, &t.join("two"));
    assert_close_runs(&t.join("one"), &t.join("two"), 1e-5);

    let mut conv = vec![
        "--arch", "cifar", "--depth", "8", "--width", "4", "--batch", "16", "--quiet",
    ];
    conv.extend(STEPS);
    let mut ghost = conv.clone();
    ghost.extend(["--bn-groups", "2"]);
    single(&ghost, &t.join("conv-one"));
    two_ranks(&conv, &t.join("conv-two"));
    assert_close_runs(&t.join("conv-one"), &t.join("conv-two"), 1e-5);
}

/// The rank-`rank` process of the job that `mpirun` (pid `launcher`) started.
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()? {
        let Ok(pid) = e.ok()?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."
        let after = &stat[stat.rfind(')')? + 2..];
        let ppid: u32 = after.split(' ').nth(1)?.parse().ok()?;
        if ppid != launcher {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn checkpoint_iter(dir: &Path) -> Option<u64> {
    let st = SafeTensors::read(&dir.join("checkpoint.safetensors")).ok()?;
    st.metadata.get("iter")?.parse().ok()
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// (d) one rank SIGKILLed mid-run: the job exits non-zero within 30 s;
/// `--resume` on 2 ranks then finishes a run equal to an uninterrupted
/// 2-rank run bit for bit (all but the timing columns of metrics.csv).
#[test]
fn killed_rank_stops_the_job_and_resume_finishes_the_same_run() {
    let _one = one_job();
    let t = TempDir::new("mpi-d");
    let args = [
        "--arch",
        "mlp",
        "--units",
        "4",
        "--hidden",
        "64",
        "--batch",
        "64",
        "--iters",
        "400",
        "--eval-every",
        "20",
        "--flow-every",
        "50",
        "--quiet",
    ];
    let reference = t.join("reference");
    two_ranks(&args, &reference);
    let run = t.join("killed");
    let mut job = mpirun(2)
        .arg(env!("CARGO_BIN_EXE_resgrad"))
        .args(["--threads", "1", "train"])
        .args(args)
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // mid-run: a few checkpoints written, far from the end
    let t0 = Instant::now();
    while checkpoint_iter(&run).unwrap_or(0) < 100 {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = rank_pid(job.id(), 1).expect("rank 1's process");
    let killed_at = checkpoint_iter(&run).unwrap();
    assert!(killed_at < 400, "the run finished before the kill");
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let status = wait_timeout(&mut job, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = job.kill();
        panic!("the job did not stop within 30 s of the kill");
    };
    assert!(!status.success(), "the job must exit non-zero: {status:?}");
    assert!(checkpoint_iter(&run).unwrap() < 400);
    ok(
        mpirun(2)
            .arg(env!("CARGO_BIN_EXE_resgrad"))
            .args(["--threads", "1", "train", "--quiet", "--resume"])
            .arg(&run)
            .output()
            .unwrap(),
        "resume",
    );
    assert_same_run(&reference, &run);
    assert_no_temporaries(&run);
}

/// (e) ranks started with different runs stop with exit 2 and a message
/// naming the difference; so does a batch that does not split over them.
#[test]
fn mismatched_ranks_exit_2_naming_the_difference() {
    let t = TempDir::new("mpi-e");
    let exe = env!("CARGO_BIN_EXE_resgrad");
    let base = [
        "--threads",
        "1",
        "train",
        "--arch",
        "mlp",
        "--units",
        "2",
        "--hidden",
        "16",
        "--iters",
        "5",
        "--quiet",
        "--out",
    ];
    let out = t.join("run");
    let out = out.to_str().unwrap();
    // MPMD: rank 0 and rank 1 get different command lines
    let o = mpirun(1)
        .arg(exe)
        .args(base)
        .args([out, "--batch", "32"])
        .args([":", "-np", "1", exe])
        .args(base)
        .args([out, "--batch", "16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.batch: 16 on rank 1, 32 on rank 0"),
        "the message names the field: {err}"
    );
    let o = mpirun(1)
        .arg(exe)
        .args(base)
        .args([out, "--batch", "32", "--seed", "1"])
        .args([":", "-np", "1", exe])
        .args(base)
        .args([out, "--batch", "32"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.seed: 0 on rank 1, 1 on rank 0"),
        "{err}"
    );

    let o = mpirun(2)
        .arg(exe)
        .args(base)
        .args([out, "--batch", "31"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--batch 31 is not a multiple of the 2 ranks"),
        "{err}"
    );
}

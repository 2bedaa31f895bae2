//! Where careless or unlucky users break things, tried against the built
//! binary: output streams that are closed pipes or full disks, sizes that
//! would not fit in memory, run directories shared by two processes or
//! overwritten by accident, resumes that do not match their run, inputs
//! that are FIFOs or gzip bombs. Exit code 2 with an `error:` line naming
//! the culprit, or the documented quiet exit, never a panic or a hang.
//! The cases are listed in TESTING.md ("Misuse").

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use resgrad::io::safetensors::SafeTensors;
use resgrad::model::{Net, Spec};
use resgrad::Tensor;

mod common;
use common::TempDir;

// ------------------------------------------------------------ helpers --

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resgrad"));
    c.args(args).env("RUST_BACKTRACE", "0");
    c
}

/// Run with a timeout (a hang is a failure, not a stuck test).
fn run_with(mut c: Command, secs: u64) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run resgrad");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "resgrad hung for {secs} s; stderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn resgrad(args: &[&str]) -> Output {
    run_with(cmd(args), 120)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_panic(case: &str, o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && o.status.code() != Some(101),
        "panic in case {case:?}: {:?}\n{err}",
        o.status
    );
}

/// Exit code 2, stderr starts with `error:` and contains every needle.
#[track_caller]
fn expect_bad(case: &str, o: &Output, needles: &[&str]) {
    no_panic(case, o);
    let err = stderr(o);
    let ctx = format!(
        "case {case:?}: exit {:?}\nstdout:\n{}\nstderr:\n{err}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(o.status.code(), Some(2), "wrong exit code in {ctx}");
    assert!(err.starts_with("error:"), "no error: line in {ctx}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?} in {ctx}");
    }
    // `cargo test --test misuse -- --nocapture | grep ^CASE` lists them all
    println!(
        "CASE\t{case}\t{}\t{}",
        o.status.code().unwrap_or(-1),
        err.lines().next().unwrap_or("")
    );
}

#[track_caller]
fn expect_ok(case: &str, o: &Output) {
    no_panic(case, o);
    assert!(
        o.status.success(),
        "case {case:?} should succeed: {:?}\n{}",
        o.status,
        stderr(o)
    );
}

/// A finished tiny MLP run in `dir` (4 iterations, checkpoints at 2 and 4).
fn tiny_run(dir: &str, extra: &[&str]) -> Output {
    tiny_run_with(dir, "8", "4", extra)
}

/// A tiny MLP run of `hidden` width and `iters` iterations (checkpoints every 2).
fn tiny_run_with(dir: &str, hidden: &str, iters: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "train",
        "--arch",
        "mlp",
        "--units",
        "1",
        "--hidden",
        hidden,
        "--iters",
        iters,
        "--batch",
        "8",
        "--eval-every",
        "2",
        "--flow-every",
        "2",
        "--quiet",
        "--out",
        dir,
    ];
    a.extend_from_slice(extra);
    resgrad(&a)
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: u32, r: u32, c: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2051u32, n, r, c] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..n * r * c).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut v = 2049u32.to_be_bytes().to_vec();
    v.extend_from_slice(&n.to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

fn mnist_dir(d: &Path) {
    std::fs::create_dir_all(d).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte"), idx_images(8, 28, 28)).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), idx_labels(8)).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(4, 28, 28)).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_labels(4)).unwrap();
}

fn train_on_mnist(d: &Path, out: &Path) -> Output {
    common::train_tiny(&format!("mnist:{}", d.display()), out)
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

const MLP: &str = r#"{"arch":"mlp","in_features":784,"hidden":8,"units":1,"unit":"original","shortcut":{"kind":"identity"}}"#;

// ---------------------------------------------------------- 1. output --

/// stdout a pipe whose reading end is closed before the command starts:
/// the command ends quietly with 141 (128 + SIGPIPE), nothing on stderr.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every write to the pipe now fails with EPIPE
    let mut c = cmd(args);
    c.stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped());
    let o = c.output().unwrap();
    drop(c); // the command holds the writer until here
    o
}

fn with_stdio_file(args: &[&str], stdout: Stdio, stderr: Stdio) -> Output {
    let mut c = cmd(args);
    c.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let status = c.status().unwrap();
    Output {
        status,
        stdout: vec![],
        stderr: vec![],
    }
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
}

#[test]
fn closed_pipes_and_full_disks_on_stdout_and_stderr() {
    let t = TempDir::new("misuse-out");
    let run = t.s("run");
    expect_ok("a run to report", &tiny_run(&run, &[]));
    let rep = t.s("rep");
    for args in [
        vec!["report", run.as_str(), "--out", rep.as_str()],
        vec!["derive"],
        vec!["--threads", "1", "peak", "--rounds", "1"],
    ] {
        let o = with_closed_stdout(&args);
        no_panic(&format!("{args:?} | (closed)"), &o);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}: quiet");
        println!(
            "CASE\t{} with stdout a closed pipe\t141\t(nothing)",
            args[0]
        );
    }
    // a full disk on stdout is an error naming the stream
    let o = cmd(&["report", &run, "--out", &rep])
        .stdin(Stdio::null())
        .stdout(dev_full())
        .output()
        .unwrap();
    expect_bad(
        "report >/dev/full",
        &o,
        &["standard output", "No space left"],
    );

    // a diverging run exits 3 whatever happens to its output
    let diverge = [
        "train",
        "--arch",
        "mlp",
        "--units",
        "30",
        "--hidden",
        "64",
        "--no-batchnorm",
        "--shortcut",
        "scale",
        "--lambda",
        "1.5",
        "--iters",
        "4",
        "--batch",
        "8",
        "--quiet",
        "--out",
    ];
    let mut a = diverge.to_vec();
    let d1 = t.s("div1");
    a.push(&d1);
    let o = with_stdio_file(&a, Stdio::null(), dev_full());
    assert_eq!(o.status.code(), Some(3), "diverging run, stderr /dev/full");
    let mut a = diverge.to_vec();
    let d2 = t.s("div2");
    a.push(&d2);
    let o = with_stdio_file(&a, dev_full(), Stdio::null());
    assert_eq!(o.status.code(), Some(3), "diverging run, stdout /dev/full");
    println!("CASE\tdiverging train with stderr or stdout on /dev/full\t3\t(as without)");
}

// ------------------------------------------------------- 2. resources --

#[test]
fn sizes_beyond_memory_are_refused_before_allocating() {
    let t = TempDir::new("misuse-size");
    let spec = |name: &str, text: &str| {
        let p = t.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mlp = spec("mlp.json", MLP);
    let limit = ("RESGRAD_MEMORY_LIMIT", "4G");
    let run = |args: &[&str]| {
        let mut c = cmd(args);
        c.env(limit.0, limit.1);
        run_with(c, 60)
    };
    expect_bad(
        "bench --batch 10^11",
        &run(&[
            "bench",
            "--spec",
            &mlp,
            "--batch",
            "100000000000",
            "--steps",
            "1",
        ]),
        &[
            "bench: mlp-1",
            "batch 100000000000",
            "limit of 4.00 GiB",
            "RESGRAD_MEMORY_LIMIT",
        ],
    );
    let cifar = spec(
        "c.json",
        r#"{"depth":20,"unit":"original","shortcut":{"kind":"identity"}}"#,
    );
    let f = t.s("f.csv");
    expect_bad(
        "flow --image 100000",
        &run(&[
            "flow",
            "--spec",
            &cifar,
            "--data",
            "synthetic",
            "--image",
            "100000",
            "--out",
            &f,
        ]),
        &[
            "flow: resnet-20",
            "100000x100000 images",
            "limit of 4.00 GiB",
        ],
    );
    let deep = spec(
        "deep.json",
        r#"{"arch":"mlp","in_features":784,"hidden":1,"units":10000000,"unit":"original","shortcut":{"kind":"identity"}}"#,
    );
    expect_bad(
        "flow with a 10^7-unit 1-wide MLP",
        &run(&["flow", "--spec", &deep, "--data", "synthetic", "--out", &f]),
        &["mlp-10000000", "limit of 4.00 GiB"],
    );
    let classes = spec(
        "cls.json",
        r#"{"arch":"mlp","in_features":784,"hidden":8,"units":1,"classes":100000000,"unit":"original","shortcut":{"kind":"identity"}}"#,
    );
    let r = t.s("r");
    expect_bad(
        "train a spec with 10^8 classes",
        &run(&[
            "train", "--spec", &classes, "--iters", "1", "--quiet", "--out", &r,
        ]),
        &["train: mlp-1", "limit of 4.00 GiB"],
    );
    expect_bad(
        "bench --steps 10^15",
        &run(&["bench", "--spec", &mlp, "--steps", "1000000000000000"]),
        &["--steps", "between 1 and 100000"],
    );
    let mut c = cmd(&["bench", "--spec", &mlp, "--batch", "8", "--steps", "1"]);
    c.env("RESGRAD_MEMORY_LIMIT", "lots");
    expect_bad(
        "RESGRAD_MEMORY_LIMIT not a size",
        &run_with(c, 60),
        &["RESGRAD_MEMORY_LIMIT=\"lots\"", "64G"],
    );
    // the override lets a small limit refuse what fits the machine
    let mut c = cmd(&["bench", "--spec", &mlp, "--batch", "8", "--steps", "1"]);
    c.env("RESGRAD_MEMORY_LIMIT", "1K");
    expect_bad(
        "RESGRAD_MEMORY_LIMIT=1K",
        &run_with(c, 60),
        &["limit of 1.00 KiB (RESGRAD_MEMORY_LIMIT=1K)"],
    );
}

#[test]
fn grids_are_counted_not_materialised() {
    let t = TempDir::new("misuse-grid");
    let g = t.join("big.toml");
    let list = vec!["0.1"; 1000].join(",");
    std::fs::write(
        &g,
        format!(
            "[base]\nspec = {{ arch = \"mlp\", hidden = 8, units = 1, unit = \"original\", shortcut = {{ kind = \"identity\" }} }}\niters = 1\n[grid]\nlr = [{list}]\nwd = [{list}]\nmomentum = [{list}]\n"
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let o = resgrad(&["sweep", g.to_str().unwrap(), "--out", &t.s("out")]);
    expect_bad(
        "sweep of a 10^9-point grid",
        &o,
        &[
            "1000000000 runs (lr 1000 x wd 1000 x momentum 1000)",
            "more than the 100000",
        ],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "counted, not planned"
    );
    // many axes: the product overflows u64
    let mut many = String::from("[base]\nspec = { arch = \"mlp\", hidden = 8, units = 1, unit = \"original\", shortcut = { kind = \"identity\" } }\niters = 1\n[grid]\n");
    for k in [
        "lr",
        "wd",
        "momentum",
        "batch",
        "val",
        "gamma",
        "flow_every",
        "eval_every",
        "max_grad_norm",
        "branch_init_scale",
        "warmup_iters",
        "seed",
    ] {
        many.push_str(&format!(
            "{k} = [{}]\n",
            (1..=100)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    std::fs::write(&g, many).unwrap();
    let o = resgrad(&["sweep", g.to_str().unwrap(), "--out", &t.s("out")]);
    expect_bad(
        "sweep of a grid whose size overflows 2^64",
        &o,
        &["more than 2^64 runs"],
    );
}

#[test]
fn gzip_bombs_fifos_and_multi_member_gzip() {
    let t = TempDir::new("misuse-gz");
    let d = t.join("data");
    let run = t.join("run");
    mnist_dir(&d);
    let img = d.join("train-images-idx3-ubyte");
    // a valid file as two concatenated gzip members is valid gzip
    let raw = idx_images(8, 28, 28);
    let mut two = gz(&raw[..1000]);
    two.extend(gz(&raw[1000..]));
    std::fs::remove_file(&img).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), &two).unwrap();
    expect_ok("multi-member gzip", &train_on_mnist(&d, &run));
    // a bomb: the header announces 8 images, the data inflates to 64 MiB
    let mut bomb = raw.clone();
    bomb.resize(64 << 20, 0);
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&bomb)).unwrap();
    expect_bad(
        "gzip bomb behind a small IDX header",
        &train_on_mnist(&d, &run),
        &[
            "train-images-idx3-ubyte.gz",
            "inflates to more than the 6288 bytes its IDX header announces",
        ],
    );
    // a header that announces more than memory
    let mut huge = raw.clone();
    huge[4..16].copy_from_slice(&[0xff; 12]);
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&huge)).unwrap();
    expect_bad(
        "gzip IDX header announcing 2^96 bytes",
        &train_on_mnist(&d, &run),
        &[
            "train-images-idx3-ubyte.gz",
            "more than 2^64 bytes",
            "more than the limit",
        ],
    );
    std::fs::remove_file(d.join("train-images-idx3-ubyte.gz")).unwrap();
    // FIFOs as data, spec, weights: refused at once, by name
    mkfifo(&img);
    expect_bad(
        "mnist images file is a FIFO",
        &train_on_mnist(&d, &run),
        &["train-images-idx3-ubyte", "not a regular file"],
    );
    let fifo = t.join("spec.fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    expect_bad(
        "flow --spec FIFO",
        &resgrad(&["flow", "--spec", f, "--out", &t.s("f.csv")]),
        &["spec.fifo", "not a regular file"],
    );
    let spec = t.join("s.json");
    std::fs::write(&spec, MLP).unwrap();
    expect_bad(
        "grads --weights FIFO",
        &resgrad(&[
            "grads",
            "--spec",
            spec.to_str().unwrap(),
            "--weights",
            f,
            "--input",
            f,
            "--out",
            &t.s("g.safetensors"),
        ]),
        &["spec.fifo", "not a regular file"],
    );
    let run = t.join("fiforun");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.json"), "{}").unwrap();
    mkfifo(&run.join("metrics.csv"));
    expect_bad(
        "report of a run whose metrics.csv is a FIFO",
        &resgrad(&["report", run.to_str().unwrap(), "--out", &t.s("rep")]),
        &["metrics.csv", "not a regular file"],
    );
    expect_bad(
        "train --config /dev/zero",
        &resgrad(&["train", "--config", "/dev/zero", "--out", &t.s("z")]),
        &["/dev/zero", "not a regular file"],
    );
}

// ------------------------------------------------ 3. run directories --

#[test]
fn one_owner_per_run_directory_and_no_silent_overwrite() {
    let t = TempDir::new("misuse-dir");
    let run = t.s("run");
    expect_ok("first run", &tiny_run(&run, &[]));
    expect_bad(
        "train --out an existing run",
        &tiny_run(&run, &[]),
        &[
            "already holds a run",
            "metrics.csv",
            "--resume",
            "--overwrite",
        ],
    );
    assert!(
        t.join("run/checkpoint.safetensors").exists(),
        "nothing deleted"
    );
    expect_ok(
        "train --out an existing run --overwrite",
        &tiny_run(&run, &["--overwrite"]),
    );
    // a long run holds the lock; a second process is told who owns it
    let long = t.s("long");
    let mut c = cmd(&[
        "train", "--arch", "mlp", "--units", "2", "--hidden", "64", "--iters", "100000", "--batch",
        "32", "--quiet", "--out", &long,
    ]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut owner = c.spawn().unwrap();
    let lock = t.join("long/.resgrad.lock");
    let t0 = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |s| s.trim() != owner.id().to_string()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the lock never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = owner.id().to_string();
    expect_bad(
        "second train --out on a directory in use",
        &resgrad(&[
            "train",
            "--arch",
            "mlp",
            "--units",
            "1",
            "--hidden",
            "8",
            "--iters",
            "2",
            "--batch",
            "8",
            "--quiet",
            "--overwrite",
            "--out",
            &long,
        ]),
        &[
            "run directory",
            "is in use by process",
            &pid,
            ".resgrad.lock",
        ],
    );
    expect_bad(
        "train --resume of a run in use",
        &resgrad(&["train", "--resume", &long, "--quiet"]),
        &["is in use by process", &pid],
    );
    owner.kill().unwrap();
    owner.wait().unwrap();
    // the dead owner's lock is stale: taken over
    assert_eq!(std::fs::read_to_string(&lock).unwrap().trim(), pid);
    expect_ok(
        "stale lock of a killed run taken over",
        &resgrad(&[
            "train",
            "--arch",
            "mlp",
            "--units",
            "1",
            "--hidden",
            "8",
            "--iters",
            "2",
            "--batch",
            "8",
            "--quiet",
            "--overwrite",
            "--out",
            &long,
        ]),
    );
    println!("CASE\tstale lock of a SIGKILLed run\t0\t(taken over)");
}

#[test]
fn names_cannot_escape_the_output_directory() {
    let t = TempDir::new("misuse-names");
    let base = "[base]\nspec = { arch = \"mlp\", hidden = 8, units = 1, unit = \"original\", shortcut = { kind = \"identity\" } }\niters = 1\n";
    for (case, name, needle) in [
        ("grid name with ..", "../escape", "path separator"),
        ("grid name ..", "..", "relative directory"),
        ("grid name absolute", "/tmp/x", "path separator"),
        ("grid name empty", "", "is empty"),
        (
            "grid name with a control character",
            "a\\u0007b",
            "control character",
        ),
    ] {
        let g = t.join("g.toml");
        std::fs::write(&g, format!("name = \"{name}\"\n{base}")).unwrap();
        expect_bad(case, &resgrad(&["sweep", g.to_str().unwrap()]), &[needle]);
    }
    assert!(!t.join("escape").exists() && !Path::new("runs/..").join("escape").exists());
    // a run name from a config file becomes one directory under runs/
    let run = t.s("run");
    expect_ok("a run", &tiny_run(&run, &[]));
    let cfg = std::fs::read_to_string(t.join("run/config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let name = v["name"].as_str().unwrap();
    let bad = cfg.replace(&format!("\"name\": \"{name}\""), "\"name\": \"../../up\"");
    std::fs::write(t.join("c.json"), bad).unwrap();
    let o = run_with(
        {
            let mut c = cmd(&["train", "--config", "c.json", "--quiet"]);
            c.current_dir(&t.0);
            c
        },
        60,
    );
    expect_ok("train --config with name ../../up", &o);
    assert!(
        t.join("runs/.._.._up/metrics.csv").exists(),
        "kept under runs/"
    );
}

/// The pids whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so after the last ')'
        let after = stat.rsplit_once(')').map_or("", |x| x.1);
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            v.push(p);
        }
    }
    v
}

/// `resgrad sweep GRID --out OUT --jobs 2` started, once both of its
/// `resgrad train` children run: the sweep and their pids.
fn sweep_with_two_runs(grid: &Path, out: &str) -> (std::process::Child, Vec<u32>) {
    let mut c = cmd(&["sweep", grid.to_str().unwrap(), "--out", out, "--jobs", "2"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut sweep = c.spawn().unwrap();
    let t0 = Instant::now();
    let pids = loop {
        let pids = children_of(sweep.id());
        if pids.len() == 2 || t0.elapsed() > Duration::from_secs(60) {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if pids.len() != 2 {
        let _ = sweep.kill();
        let _ = sweep.wait();
        panic!("the sweep's two runs never started (children: {pids:?})");
    }
    (sweep, pids)
}

#[test]
fn a_stopped_sweep_stops_its_runs() {
    let t = TempDir::new("misuse-sweep-sig");
    let g = t.join("g.toml");
    std::fs::write(
        &g,
        "[base]\nspec = { arch = \"mlp\", hidden = 64, units = 2, unit = \"full_preact\", shortcut = { kind = \"identity\" } }\niters = 100000\nbatch = 32\neval_every = 50\n[grid]\nseed = [0, 1]\n",
    )
    .unwrap();
    let out = t.s("out");
    for (name, sig, code) in [("TERM", libc::SIGTERM, 143), ("HUP", libc::SIGHUP, 129)] {
        let (mut sweep, children) = sweep_with_two_runs(&g, &out);
        // SAFETY: kill(2) on our own child
        assert_eq!(unsafe { libc::kill(sweep.id() as libc::pid_t, sig) }, 0);
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = sweep.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "sweep did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(code), "sweep stopped by SIG{name}");
        for p in children {
            // reaped by the sweep: gone (or a different, unrelated process)
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&out),
                "child {p} outlived the sweep"
            );
        }
        println!("CASE\tsweep stopped by SIG{name}\t{code}\t(runs stopped too)");
    }
    // the rerun resumes them, no orphan holds their directories
    let f = std::fs::read_to_string(t.join("out/seed=0/failed.json")).unwrap();
    assert!(f.contains("killed by signal"), "{f}");

    // a sweep killed outright (SIGKILL: nothing forwarded) takes its runs
    // with it too (the children's parent-death signal), so no orphan trains
    // on holding a run directory's lock (a requeued Slurm task's next
    // attempt would fail on it)
    let (mut sweep, children) = sweep_with_two_runs(&g, &out);
    sweep.kill().unwrap();
    sweep.wait().unwrap();
    let t0 = Instant::now();
    for p in children {
        // the orphan is reparented and reaped by init once it exits
        loop {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains(&out) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "child {p} outlived the killed sweep"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("CASE\tsweep killed by SIGKILL\t137\t(runs stopped too)");
}

// -------------------------------------------------- 4. resume integrity --

#[test]
fn resume_checks_the_checkpoint_against_the_run() {
    let t = TempDir::new("misuse-resume");
    let run = t.s("run");
    let dir = t.join("run");
    expect_ok("a run", &tiny_run(&run, &[]));
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--resume", run.as_str(), "--quiet"];
        a.extend_from_slice(extra);
        resgrad(&a)
    };
    expect_bad(
        "--resume with --lr",
        &resume(&["--lr", "0.5"]),
        &["--lr would change it", "--iters"],
    );
    expect_bad(
        "--resume with --seed and --batch",
        &resume(&["--seed", "3", "--batch", "16"]),
        &["--batch, --seed would change it"],
    );
    expect_ok(
        "--resume --iters 6 extends a finished run",
        &resume(&["--iters", "6"]),
    );
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(cfg.contains("\"iters\": 6"), "{cfg}");
    expect_bad(
        "--resume --iters below the checkpoint",
        &resume(&["--iters", "2"]),
        &["checkpoint is at iteration 6, past the run's 2 iterations"],
    );
    // a checkpoint of another seed / spec
    let other = t.s("other");
    expect_ok(
        "another run",
        &tiny_run_with(&other, "8", "6", &["--seed", "7"]),
    );
    let ck = dir.join("checkpoint.safetensors");
    let mine = std::fs::read(&ck).unwrap();
    std::fs::copy(t.join("other/checkpoint.safetensors"), &ck).unwrap();
    expect_bad(
        "resume with a checkpoint of another seed",
        &resume(&[]),
        &[
            "checkpoint belongs to another run",
            "its seed is 7",
            "says 0",
        ],
    );
    std::fs::write(&ck, &mine).unwrap();
    let wider = t.s("wider");
    expect_ok("a wider run", &tiny_run_with(&wider, "16", "6", &[]));
    std::fs::copy(t.join("wider/checkpoint.safetensors"), &ck).unwrap();
    expect_bad(
        "resume with a checkpoint of another spec",
        &resume(&[]),
        &[
            "checkpoint belongs to another run",
            "its spec is",
            "\"hidden\":16",
        ],
    );
    // tensors: missing velocity, unknown tensor, NaN
    let edit = |f: &dyn Fn(&mut SafeTensors)| {
        let mut st = SafeTensors::from_bytes(&mine, &ck).unwrap();
        f(&mut st);
        st.write_atomic(&ck).unwrap();
    };
    edit(&|st| {
        st.tensors.remove("optim.velocity.fc.weight");
    });
    expect_bad(
        "checkpoint without a velocity",
        &resume(&[]),
        &["checkpoint lacks tensor \"optim.velocity.fc.weight\""],
    );
    edit(&|st| {
        st.insert(
            "units.1.convs.0.weight",
            &Tensor::from_vec(&[1], vec![0f32]).unwrap(),
        );
    });
    expect_bad(
        "checkpoint with an unknown tensor",
        &resume(&[]),
        &["holds tensor \"units.1.convs.0.weight\"", "does not have"],
    );
    for key in ["fc.weight", "optim.velocity.stem.weight"] {
        edit(&|st| {
            let t: Tensor<f32> = st.get(key).unwrap();
            let mut v = t.data().to_vec();
            v[3] = f32::NAN;
            st.insert(key, &Tensor::from_vec(t.shape(), v).unwrap());
        });
        expect_bad(
            &format!("checkpoint with NaN in {key}"),
            &resume(&[]),
            &[key, "non-finite value at flat index 3"],
        );
    }
    std::fs::write(&ck, &mine).unwrap();
    // CSV logs: a torn last line is repaired on resume, a missing header refused
    let metrics = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&metrics).unwrap();
    std::fs::write(&metrics, format!("{text}7,0.0")).unwrap();
    expect_ok(
        "metrics.csv with a torn last line",
        &resume(&["--iters", "8"]),
    );
    let now = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        now.ends_with('\n') && !now.lines().any(|l| l == "7,0.0"),
        "{now}"
    );
    assert_eq!(
        now.lines().count(),
        5,
        "header + rows at 2, 4, 6, 8:\n{now}"
    );
    let body: String = now.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&metrics, body).unwrap();
    expect_bad(
        "metrics.csv without its header",
        &resume(&["--iters", "10"]),
        &["metrics.csv", "the first line is not the header"],
    );
}

#[test]
fn grads_weights_must_match_the_spec_exactly() {
    let t = TempDir::new("misuse-grads");
    let spec_text = r#"{"arch":"mlp","in_features":4,"hidden":3,"units":1,"classes":3,"unit":"full_preact","shortcut":{"kind":"identity"}}"#;
    let spec = Spec::from_json(spec_text).unwrap();
    let deeper = Spec::from_json(&spec_text.replace("\"units\":1", "\"units\":2")).unwrap();
    let mut net: Net<f32> = Net::new(&deeper, 1, 3).unwrap();
    let mut st = SafeTensors::new();
    net.save_state(&mut st).unwrap();
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    st.insert("input", &Tensor::from_vec(&[2, 4], x).unwrap());
    st.insert_i64("labels", &[2], &[0, 2]).unwrap();
    let w = t.join("w.safetensors");
    st.write_atomic(&w).unwrap();
    let s = t.join("s.json");
    std::fs::write(&s, serde_json::to_string(&spec).unwrap()).unwrap();
    let w = w.to_str().unwrap();
    expect_bad(
        "grads with the weights of a deeper net",
        &resgrad(&[
            "grads",
            "--spec",
            s.to_str().unwrap(),
            "--weights",
            w,
            "--input",
            w,
            "--out",
            &t.s("g.safetensors"),
        ]),
        &["tensor \"units.1.", "not part of the model"],
    );
}

// ---------------------------------------------------- 5. flag checks --

#[test]
fn flags_are_checked_the_same_way_everywhere() {
    let t = TempDir::new("misuse-flags");
    let spec = t.join("s.json");
    std::fs::write(&spec, MLP).unwrap();
    let s = spec.to_str().unwrap();
    let f = t.s("f.csv");
    expect_bad(
        "flow --branch-init-scale NaN",
        &resgrad(&[
            "flow",
            "--spec",
            s,
            "--data",
            "synthetic",
            "--branch-init-scale",
            "NaN",
            "--out",
            &f,
        ]),
        &["branch_init_scale must be finite and >= 0, got NaN"],
    );
    expect_bad(
        "flow --lr -1",
        &resgrad(&[
            "flow",
            "--spec",
            s,
            "--data",
            "synthetic",
            "--lr=-1",
            "--out",
            &f,
        ]),
        &["learning rate must be finite and > 0"],
    );
    expect_bad(
        "flow --batch 1",
        &resgrad(&[
            "flow",
            "--spec",
            s,
            "--data",
            "synthetic",
            "--batch",
            "1",
            "--out",
            &f,
        ]),
        &["batch must be at least 2 (BatchNorm needs two samples), got 1"],
    );
    for (case, args, needle) in [
        (
            "--threads 0",
            vec!["--threads", "0", "peak"],
            "'--threads <THREADS>': must be between 1 and 1024, got 0",
        ),
        (
            "--threads 10^6",
            vec!["--threads", "1000000", "peak"],
            "must be between 1 and 1024",
        ),
        (
            "sweep --jobs 0",
            vec!["sweep", "g.toml", "--jobs", "0"],
            "'--jobs <JOBS>': must be between 1 and 1024, got 0",
        ),
        (
            "peak --rounds 0",
            vec!["peak", "--rounds", "0"],
            "'--rounds <ROUNDS>': must be between 1 and 1000, got 0",
        ),
        (
            "bench --steps 0",
            vec!["bench", "--depth", "20", "--steps", "0"],
            "must be between 1 and 100000, got 0",
        ),
    ] {
        expect_bad(case, &resgrad(&args), &[needle]);
    }
}

//! Crash safety: a training run killed with SIGKILL at random moments and
//! resumed (`train --resume DIR`) until it completes ends with exactly the
//! weights, optimiser state, metrics and flow rows of an uninterrupted run
//! (all but the two timing columns of metrics.csv, which cannot agree).

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const ARGS: [&str; 16] = [
    "train",
    "--arch",
    "mlp",
    "--units",
    "3",
    "--hidden",
    "32",
    "--iters",
    "60",
    "--eval-every",
    "5",
    "--flow-every",
    "5",
    "--batch",
    "64",
    "--quiet",
];

/// Complete data rows in metrics.csv (0 when absent).
fn complete_rows(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .map(|t| t.matches('\n').count().saturating_sub(1))
        .unwrap_or(0)
}

fn checkpoint_iter(dir: &std::path::Path) -> Option<u64> {
    let st =
        resgrad::io::safetensors::SafeTensors::read(&dir.join("checkpoint.safetensors")).ok()?;
    st.metadata.get("iter")?.parse().ok()
}

#[test]
fn killed_and_resumed_run_equals_uninterrupted_run() {
    let t = TempDir::new("kill");
    let reference = t.join("reference");
    let t0 = Instant::now();
    run_ok(&ARGS, &reference);
    let full = t0.elapsed();
    assert_no_temporaries(&reference);

    // seed from the clock (printed, so a failure can be replayed with
    // RESGRAD_KILL_SEED)
    let seed: u64 = std::env::var("RESGRAD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("uninterrupted run: {full:.2?}; kill seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // attempts until at least 3 kills have landed in one (a start that
    // finishes before its kill lands ends an attempt early)
    let mut attempt = 0;
    let (dir, kills, starts, progress) = loop {
        attempt += 1;
        assert!(attempt <= 5, "kills kept missing the runs");
        let dir = t.join(&format!("killed-{attempt}"));
        let (kills, starts, progress) = kill_until_done(&dir, &mut rng, full);
        assert_no_temporaries(&dir);
        assert_same_run(&reference, &dir);
        if kills >= 3 {
            break (dir, kills, starts, progress);
        }
        println!("attempt {attempt}: only {kills} kills landed; again");
    };
    println!("{kills} kills in {starts} starts; checkpoint iteration after each: {progress:?}");
    assert_no_temporaries(&dir);
    assert_same_run(&reference, &dir);
    assert_eq!(metrics_rows(&dir).len(), 12);

    // resuming the finished run reports its last evaluation
    let o = bin()
        .args(["train", "--resume"])
        .arg(&dir)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let last = metrics_rows(&dir).pop().unwrap();
    let acc: f64 = last[6].parse().unwrap();
    let loss: f64 = last[5].parse().unwrap();
    let want = format!(
        "finished 60 iterations: test accuracy {:.2}%, loss {:.4}",
        100.0 * acc,
        loss
    );
    assert!(out.contains(&want), "{out:?} lacks {want:?}");
    // and changed nothing
    assert_same_run(&reference, &dir);
}

/// Start the run in `dir`, SIGKILL it after a random delay, resume, ...
/// (at most 12 kills), then let it finish. Returns (kills that landed,
/// starts, checkpoint iteration after each start).
fn kill_until_done(
    dir: &std::path::Path,
    rng: &mut rand_chacha::ChaCha8Rng,
    full: Duration,
) -> (usize, usize, Vec<Option<u64>>) {
    let full_ms = (full.as_millis() as u64).max(40);
    let (mut kills, mut starts, mut progress) = (0, 0, vec![]);
    loop {
        assert!(starts < 200, "the run never completed");
        let mut cmd = bin();
        if dir.join("config.json").exists() {
            cmd.args(["train", "--resume"]).arg(dir).arg("--quiet");
        } else {
            // killed before the run wrote its config: start it again
            cmd.args(ARGS).arg("--out").arg(dir);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        starts += 1;
        if kills < 12 {
            if rng.gen_bool(0.2) {
                // anywhere in the start-up (data loading, config, resume)
                std::thread::sleep(Duration::from_millis(rng.gen_range(1..full_ms / 2)));
            } else {
                // during training: once the run has logged a random number
                // of further evaluations, a random few ms later (so the kill
                // lands between, or inside, the appends and the checkpoint
                // write of any evaluation point)
                let base = (checkpoint_iter(dir).unwrap_or(0) / 5).min(11);
                let target = rng.gen_range(base + 1..=12) as usize;
                let t0 = Instant::now();
                while child.try_wait().unwrap().is_none()
                    && complete_rows(dir) < target
                    && t0.elapsed() < Duration::from_secs(20)
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..4000)));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
        }
        let status = child.wait().unwrap();
        progress.push(checkpoint_iter(dir));
        if status.success() {
            return (kills, starts, progress);
        }
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        // only our SIGKILL may stop it
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "resgrad failed: {status:?}\n{err}"
        );
    }
}

//! The fuzz targets (`fuzz/harness.rs`) in the normal test suite: every
//! committed corpus seed (`fuzz/corpus/<target>/`), every input that once
//! crashed a target (`fuzz/regressions/<target>/`), the generated seeds, and
//! a few thousand deterministic random mutations of them. Catches a
//! regression without nightly or cargo-fuzz; the real fuzzing is
//! `cargo +nightly fuzz run <target>` (see TESTING.md).
//!
//! `RESGRAD_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus` (re)writes the
//! generated seeds into `fuzz/corpus/`.

#[path = "../fuzz/harness.rs"]
mod harness;

use rand::{Rng, SeedableRng};
use std::path::Path;

fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn generated_seeds_pass_and_optionally_are_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = std::env::var_os("RESGRAD_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in harness::seeds() {
        harness::run(target, &bytes);
        if write {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
    }
}

#[test]
fn committed_corpus_and_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for target in harness::TARGETS {
        for sub in ["corpus", "regressions"] {
            for (name, bytes) in files_in(&root.join(sub).join(target)) {
                println!("{sub}/{target}/{name}");
                harness::run(target, &bytes);
                n += 1;
            }
        }
    }
    println!("replayed {n} inputs");
}

/// Random mutations of the seeds: flips, truncations, insertions,
/// deletions, splices of interesting values. Deterministic (fixed seed);
/// `RESGRAD_FUZZ_ITERS` raises the count per seed for a longer soak.
#[test]
fn random_mutations_never_panic() {
    let per_seed: usize = std::env::var("RESGRAD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xf022);
    let seeds = harness::seeds();
    let interesting: [&[u8]; 10] = [
        &[0xff; 8],
        &[0; 8],
        &[0x7f, 0xc0, 0, 0],
        b"NaN",
        b"1e400",
        b"-1",
        b"18446744073709551616",
        b"\"F16\"",
        b"[0,99999999999]",
        &[0x1f, 0x8b],
    ];
    let mut runs = 0usize;
    for (target, _, seed) in &seeds {
        for _ in 0..per_seed {
            let mut b = seed.clone();
            for _ in 0..rng.gen_range(1..4) {
                if b.is_empty() {
                    b.push(rng.gen());
                    continue;
                }
                let at = rng.gen_range(0..b.len());
                match rng.gen_range(0..6) {
                    0 => b[at] ^= 1 << rng.gen_range(0..8),
                    1 => b[at] = rng.gen(),
                    2 => b.truncate(at),
                    3 => {
                        let end = (at + rng.gen_range(1..64)).min(b.len());
                        b.drain(at..end);
                    }
                    4 => {
                        let k = rng.gen_range(0..interesting.len());
                        let end = (at + interesting[k].len()).min(b.len());
                        b.splice(at..end, interesting[k].iter().copied());
                    }
                    _ => {
                        let k = rng.gen_range(1..32);
                        let fill: u8 = rng.gen();
                        b.splice(at..at, std::iter::repeat_n(fill, k));
                    }
                }
            }
            harness::run(target, &b);
            runs += 1;
        }
    }
    println!("{runs} mutated inputs, no panic");
}

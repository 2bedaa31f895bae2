//! Data-parallel training: R processes (ranks) train one run together, each
//! on its share of every batch, with MPI moving the gradients between them.
//!
//! The training loop talks to the other ranks only through [`Comm`]: sums
//! of f64 statistics and of f32 gradients over the ranks, rank 0's bytes to
//! every rank, and a gather of one `u64` per rank. [`Single`] is the one
//! process of an ordinary run (every sum is the value itself); `mpi::Mpi`
//! (the `mpi` cargo feature) is the MPI implementation. The model and the
//! layers know nothing of either: a BatchNorm synchronised over the ranks
//! (`--sync-bn`) gets its per-channel sums completed through
//! `ops::batchnorm::across_shards`, and the gradient groups of the backward
//! are handed over by `Net::forward_backward_with`.
//!
//! The semantics (README, "On several machines"): `--batch` is the global
//! batch B; rank r takes images `[r B/R, (r+1) B/R)` of exactly the batch
//! one process would draw; the gradients of the per-rank mean losses are
//! summed and divided by R (the gradient of the global mean loss), so the
//! SGD update is the same on every rank and the weights stay identical
//! ([`checksum`] compares them).

use crate::error::{Error, Result};
use std::sync::Arc;

#[cfg(feature = "mpi")]
pub mod mpi;

/// The per-group gradient buffers of one step: `send[g]` holds this rank's
/// gradients of group g packed end to end, `sum[g]` receives their sum over
/// the ranks. Sized once; a step allocates nothing.
#[derive(Default)]
pub struct GradPack {
    pub send: Vec<Vec<f32>>,
    pub sum: Vec<Vec<f32>>,
    /// seconds the last `sum_groups` waited for the sums after its work
    /// was done: the part of the allreduce the backward did not hide, plus,
    /// on a rank that finished first, the wait for the slower ranks
    pub exposed_s: f64,
}

impl GradPack {
    /// Buffers for groups of `lens[g]` values.
    pub fn new(lens: &[usize]) -> Self {
        GradPack {
            send: lens.iter().map(|&l| vec![0.0; l]).collect(),
            sum: lens.iter().map(|&l| vec![0.0; l]).collect(),
            exposed_s: 0.0,
        }
    }
}

/// Hands over gradient group `g`: the caller's writer fills its buffer.
pub type GroupReady<'a> = dyn FnMut(usize, &mut dyn FnMut(&mut [f32])) + 'a;

/// The ranks of a data-parallel run, as the training loop sees them.
pub trait Comm: Send + Sync {
    /// This process's rank, 0..size.
    fn rank(&self) -> usize;
    /// Number of ranks R.
    fn size(&self) -> usize;
    /// Replaces every value by its sum over the ranks (the same bits on
    /// every rank).
    fn sum_f64(&self, v: &mut [f64]);
    /// Rank 0's `buf` on every rank (the others' contents and lengths are
    /// replaced).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>);
    /// Rank 0's values in `v` on every rank (the same length everywhere).
    fn broadcast_f32(&self, v: &mut [f32]);
    /// Every rank's `v`, in rank order.
    fn all_gather_u64(&self, v: u64) -> Vec<u64>;
    /// Sums every group of `pack` over the ranks (`pack.sum[g]`). `work`
    /// runs the backward and calls its argument once per group, in any
    /// order, as soon as that group's gradients are final; the sum of that
    /// group starts then, non-blocking, and this returns when all are done.
    fn sum_groups(
        &self,
        pack: &mut GradPack,
        work: &mut dyn FnMut(&mut GroupReady<'_>) -> Result<()>,
    ) -> Result<()>;
}

/// One process: every sum over the ranks is the value itself.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f64(&self, _v: &mut [f64]) {}
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>) {}
    fn broadcast_f32(&self, _v: &mut [f32]) {}
    fn all_gather_u64(&self, v: u64) -> Vec<u64> {
        vec![v]
    }
    fn sum_groups(
        &self,
        pack: &mut GradPack,
        work: &mut dyn FnMut(&mut GroupReady<'_>) -> Result<()>,
    ) -> Result<()> {
        let GradPack { send, sum, .. } = pack;
        work(&mut |g, write| {
            write(&mut send[g]);
            sum[g].copy_from_slice(&send[g]);
        })
    }
}

/// The ranks this process belongs to: MPI's world when the process was
/// started by an MPI launcher (`mpirun`, `srun --mpi=pmix`) and resgrad was
/// built with the `mpi` feature, else [`Single`]. A launcher without the
/// feature is an error (R copies of one run would write the same files).
pub fn from_env() -> Result<Arc<dyn Comm>> {
    let launched = launched_ranks();
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Arc::new(mpi::Mpi::init()?));
    }
    match launched {
        Some(n) if n > 1 => Err(Error::Config(format!(
            "started by an MPI launcher with {n} processes, but this resgrad was built without \
             the `mpi` feature (cargo build --release --features mpi)"
        ))),
        _ => Ok(Arc::new(Single)),
    }
}

/// The number of processes an MPI launcher says it started, when this
/// process was started by one: Open MPI's `mpirun` (`OMPI_COMM_WORLD_SIZE`),
/// MPICH's hydra (`PMI_SIZE`), Slurm's `srun --mpi=pmix` (`PMIX_RANK` with
/// `SLURM_STEP_NUM_TASKS`; an `sbatch` script itself has no PMIx rank).
pub fn launched_ranks() -> Option<usize> {
    let get = |k: &str| std::env::var(k).ok()?.parse().ok();
    get("OMPI_COMM_WORLD_SIZE")
        .or_else(|| get("PMI_SIZE"))
        .or_else(|| {
            std::env::var_os("PMIX_RANK")?;
            get("SLURM_STEP_NUM_TASKS").or_else(|| get("SLURM_NTASKS"))
        })
}

/// Threads for each rank when `--threads` is not given and a launcher
/// started this process: Slurm's `SLURM_CPUS_PER_TASK`, else this machine's
/// cores over the ranks the launcher started on it (`None`: not launched,
/// or the launcher does not say).
pub fn threads_per_rank() -> Option<usize> {
    launched_ranks()?;
    let get = |k: &str| std::env::var(k).ok()?.parse::<usize>().ok();
    if let Some(c) = get("SLURM_CPUS_PER_TASK") {
        return Some(c.max(1));
    }
    let local = get("OMPI_COMM_WORLD_LOCAL_SIZE").or_else(|| get("MPI_LOCALNRANKS"))?;
    let cores = std::thread::available_parallelism().ok()?.get();
    Some((cores / local.max(1)).max(1))
}

/// A cheap fingerprint of f32 values: FNV-1a over their bit patterns, one
/// 32-bit word at a time, in order (the weights: parameters then buffers;
/// the training images), so any difference in any bit shows.
pub fn checksum<'a>(values: impl IntoIterator<Item = &'a [f32]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for x in v {
            h ^= x.to_bits() as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// FNV-1a over bytes (the labels' fingerprint).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Checks that every rank holds the same weights (`sum` from [`checksum`]);
/// a mismatch is an error that names the ranks and the iteration.
pub fn check_same_weights(comm: &dyn Comm, sum: u64, iter: u64) -> Result<()> {
    let all = comm.all_gather_u64(sum);
    if all.iter().all(|&s| s == all[0]) {
        return Ok(());
    }
    let list: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(r, s)| format!("rank {r}: {s:016x}"))
        .collect();
    Err(Error::Check(format!(
        "the weights differ across ranks at iteration {iter} ({})",
        list.join(", ")
    )))
}

/// Checks that every rank was started with the same run: rank 0's `what`
/// (a JSON object: the resolved config, the data fingerprint, the iteration
/// it starts from) is sent to every rank and compared with its own; a
/// difference stops every rank with `Error::Config` naming the fields.
pub fn check_same_start(comm: &dyn Comm, what: &serde_json::Value) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mine = serde_json::to_vec(what).map_err(|e| Error::Config(e.to_string()))?;
    let mut theirs = mine.clone();
    comm.broadcast_bytes(&mut theirs);
    let diff = if theirs == mine {
        None
    } else {
        let v0: serde_json::Value =
            serde_json::from_slice(&theirs).map_err(|e| Error::Config(e.to_string()))?;
        Some(json_diff(&v0, what, "", comm.rank()))
    };
    // every rank reports the first mismatching rank's difference, so the
    // message survives whichever rank exits first (mpirun aborts the rest,
    // possibly before their own stderr is forwarded): its length first,
    // then its bytes summed in f64 with zeros from every other rank
    let msg = diff.map(|d| d.join("; "));
    let lens = comm.all_gather_u64(msg.as_ref().map_or(0, |m| m.len() as u64 + 1));
    let Some(first) = lens.iter().position(|&l| l != 0) else {
        return Ok(());
    };
    let mut bytes = vec![0f64; (lens[first] - 1) as usize];
    if let (true, Some(m)) = (comm.rank() == first, &msg) {
        for (b, c) in bytes.iter_mut().zip(m.bytes()) {
            *b = f64::from(c);
        }
    }
    comm.sum_f64(&mut bytes);
    let text: Vec<u8> = bytes.iter().map(|&b| b as u8).collect();
    let more = lens.iter().filter(|&&l| l != 0).count() - 1;
    let more = if more > 0 {
        format!(" ({more} more rank(s) differ too)")
    } else {
        String::new()
    };
    Err(Error::Config(format!(
        "rank {first} was started with a different run than rank 0: {}{more}",
        String::from_utf8_lossy(&text)
    )))
}

/// The leaves where `b` (rank `rank`'s) differs from `a` (rank 0's), as
/// `path: b on rank R, a on rank 0`.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, path: &str, rank: usize) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    json_diff(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &p,
                        rank,
                    )
                })
                .collect()
        }
        _ if a == b => vec![],
        _ => vec![format!("{path}: {b} on rank {rank}, {a} on rank 0")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_bit() {
        let a = [1.0f32, 2.0, 3.0];
        let mut b = a;
        b[2] = f32::from_bits(b[2].to_bits() ^ 1);
        assert_ne!(checksum([&a[..]]), checksum([&b[..]]));
        // the split into slices does not matter, the order does
        assert_eq!(checksum([&a[..1], &a[1..]]), checksum([&a[..]]));
        assert_ne!(checksum([&a[1..], &a[..1]]), checksum([&a[..]]));
    }

    #[test]
    fn json_diff_names_the_fields() {
        let a = serde_json::json!({"batch": 32, "spec": {"depth": 20, "width": 16}, "data": "x"});
        let b = serde_json::json!({"batch": 16, "spec": {"depth": 20, "width": 8}, "data": "x"});
        assert_eq!(
            json_diff(&a, &b, "", 1),
            vec![
                "batch: 16 on rank 1, 32 on rank 0".to_string(),
                "spec.width: 8 on rank 1, 16 on rank 0".to_string()
            ]
        );
        assert!(json_diff(&a, &a, "", 1).is_empty());
    }

    #[test]
    fn single_sums_are_the_values() {
        let mut p = GradPack::new(&[2, 1]);
        Single
            .sum_groups(&mut p, &mut |ready| {
                ready(1, &mut |b| b[0] = 5.0);
                ready(0, &mut |b| b.copy_from_slice(&[1.0, 2.0]));
                Ok(())
            })
            .unwrap();
        assert_eq!(p.sum, vec![vec![1.0, 2.0], vec![5.0]]);
        assert!(check_same_weights(&Single, 7, 0).is_ok());
    }
}

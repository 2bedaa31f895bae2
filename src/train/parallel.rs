//! A training step's forward and backward on R processes (see `dist`):
//! this rank's shard of the batch, in `G / R` pieces when BatchNorm runs
//! over G groups of the batch, the parameter gradients summed over the
//! ranks (each group's sum started as the backward finishes it) and
//! scaled to the gradient of the global mean loss, and the logged sums
//! (loss, correct answers, the gradient norms of the divergence check and
//! of the flow probe, how many ranks found a non-finite BatchNorm running
//! statistic) taken over the whole batch in one allreduce.
//!
//! With one process and one BatchNorm group this is the plain step,
//! unchanged: `forward_backward` on the whole batch.

use super::config::TrainConfig;
use super::run::{
    count_correct, divergence, divergence_in, nonfinite_statistic, statistics_divergence,
};
use crate::backend::{Backend, Cpu};
use crate::data::Batch;
use crate::dist::{checksum, Comm, GradPack};
use crate::error::{Error, Result};
use crate::model::{Net, Param};
use crate::ops::awake::on_warm_pool;
use crate::ops::batchnorm::{across_shards, ShardSum};
use crate::ops::elementwise::scale_forward;
use crate::probe::{flow_rows, FlowRow};
use crate::tensor::norm;
use std::sync::Arc;
use std::time::Instant;

/// What the ranks do with each step.
pub struct Parallel {
    comm: Arc<dyn Comm>,
    /// BatchNorm groups of this rank's shard (pieces run one after another)
    pieces: usize,
    /// BatchNorm over the whole batch across the ranks (`--sync-bn`)
    sync_bn: bool,
    pack: GradPack,
    /// the gradient sums' wait after the backward, last [`RECENT`] steps
    recent: std::collections::VecDeque<f64>,
}

/// Steps whose allreduce waits are kept for [`Parallel::exposed_per_step_s`].
pub const RECENT: usize = 100;

/// One step's results over the whole batch.
pub struct StepOut {
    /// sum over the batch of the per-image losses (the global mean loss times B)
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    /// `Some(message)` when the gradient blew up or vanished
    pub diverged: Option<String>,
    /// the probe's rows, with global norms (when `probe`)
    pub flow: Vec<FlowRow>,
    /// seconds in the forward and backward passes (with the gradient sums
    /// over the ranks), the divergence check and the probe's rows
    pub passes_s: f64,
    pub check_s: f64,
    pub probe_s: f64,
}

impl Parallel {
    /// Checks the batch against the ranks and the BatchNorm groups.
    pub fn new(comm: Arc<dyn Comm>, cfg: &TrainConfig, net: &mut Net<f32>) -> Result<Self> {
        let (r, b) = (comm.size(), cfg.batch);
        if !b.is_multiple_of(r) {
            return Err(Error::Config(format!(
                "--batch {b} is not a multiple of the {r} ranks: every rank takes B/R images of each step"
            )));
        }
        let groups = if cfg.bn_groups == 0 { r } else { cfg.bn_groups };
        let sync_bn = groups == 1 && r > 1;
        if !sync_bn && !groups.is_multiple_of(r) {
            return Err(Error::Config(format!(
                "bn_groups {groups} is neither 1 (sync-BN) nor a multiple of the {r} ranks"
            )));
        }
        if !b.is_multiple_of(groups) {
            return Err(Error::Config(format!(
                "--batch {b} is not a multiple of bn_groups {groups}"
            )));
        }
        let pieces = if sync_bn { 1 } else { groups / r };
        let pack = if r > 1 || pieces > 1 {
            let lens: Vec<usize> = net
                .param_groups_mut()
                .iter()
                .map(|g| g.iter().map(|p| p.grad.len()).sum())
                .collect();
            GradPack::new(&lens)
        } else {
            GradPack::default()
        };
        Ok(Parallel {
            comm,
            pieces,
            sync_bn,
            pack,
            recent: Default::default(),
        })
    }

    /// One process, one BatchNorm group: the plain step.
    pub fn is_plain(&self) -> bool {
        self.comm.size() == 1 && self.pieces == 1
    }

    /// Seconds per step that the allreduce added after the backward, over
    /// the last (up to) [`RECENT`] steps: per step the smallest wait over the
    /// ranks -- the rank whose backward finished last waits only for what
    /// is left of the sums, the others also for it. Collective.
    pub fn exposed_per_step_s(&self) -> f64 {
        let mut total = 0.0;
        for &e in &self.recent {
            let all = self.comm.all_gather_u64((e * 1e9) as u64);
            total += all.into_iter().min().unwrap_or(0) as f64 * 1e-9;
        }
        total / self.recent.len().max(1) as f64
    }

    /// Seconds one step's gradient sums take with nothing to hide them
    /// behind (every group handed over at once; the median of `reps`): the
    /// denominator of the share [`Parallel::exposed_s`] leaves visible.
    /// Collective: every rank calls it.
    pub fn allreduce_alone_s(&mut self, reps: usize) -> Result<f64> {
        let groups = self.pack.send.len();
        let mut t = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            self.comm.sum_groups(&mut self.pack, &mut |ready| {
                for g in 0..groups {
                    ready(g, &mut |_| {});
                }
                Ok(())
            })?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t.get(reps / 2).copied().unwrap_or(0.0))
    }

    /// Forward and backward of one step (every parameter gradient is the
    /// global mean loss's when it returns), the divergence check (the
    /// gradient norms and the loss, then the BatchNorm running statistics of
    /// every rank: `run::nonfinite_statistic`) and the probe over the whole
    /// batch. The update is the caller's.
    pub fn step(
        &mut self,
        net: &mut Net<f32>,
        b: &Batch,
        probe: bool,
        iter: u64,
        max_grad_norm: f64,
    ) -> Result<StepOut> {
        if self.is_plain() {
            // on a pool worker, the other workers kept awake between the
            // step's passes (ops::awake)
            // (the divergence check's norms too, split over the pool)
            let t0 = Instant::now();
            let (loss, diverged, t1) = on_warm_pool(|| -> Result<_> {
                net.zero_grad();
                let loss = net.forward_backward(&b.images, &b.labels, probe)?;
                let t1 = Instant::now();
                let diverged =
                    divergence(net, loss, max_grad_norm).or_else(|| nonfinite_statistic(net));
                Ok((loss, diverged, t1))
            })?;
            let t2 = Instant::now();
            let flow = if probe { flow_rows(net, iter) } else { vec![] };
            return Ok(StepOut {
                loss_sum: loss * b.n as f64,
                correct: count_correct(net.logits(), &b.labels, net.classes()),
                seen: b.n,
                diverged,
                flow,
                passes_s: (t1 - t0).as_secs_f64(),
                check_s: (t2 - t1).as_secs_f64(),
                probe_s: t2.elapsed().as_secs_f64(),
            });
        }
        let t0 = Instant::now();
        let (rank, r) = (self.comm.rank(), self.comm.size());
        let shard = b.n / r;
        if shard * r != b.n {
            return Err(Error::Config(format!(
                "a batch of {} images does not split over {r} ranks",
                b.n
            )));
        }
        let per = b.images.len() / b.n;
        let lo = rank * shard;
        let (images, labels) = (
            &b.images[lo * per..(lo + shard) * per],
            &b.labels[lo..lo + shard],
        );
        let nu = net.num_units();
        // [loss sum, correct, ||dL/dx_i||^2 (i = 0..=U), per unit: grad^2,
        //  shortcut^2, branch^2, shortcut . branch (when probe), ranks whose
        //  BatchNorm running statistics are no longer finite]
        let flow_len = if probe { 4 * nu } else { 0 };
        let mut sums = vec![0.0f64; 2 + (nu + 1) + flow_len + 1];
        let pieces = self.pieces;
        let comm = &*self.comm;
        let shard_sum: Option<ShardSum> = self.sync_bn.then(|| {
            let c = self.comm.clone();
            Arc::new(move |v: &mut [f64]| c.sum_f64(v)) as ShardSum
        });
        let pack = &mut self.pack;
        on_warm_pool(|| {
            let mut run = || {
                comm.sum_groups(pack, &mut |ready| {
                    local_pieces(net, images, labels, pieces, probe, &mut sums, ready)
                })
            };
            match shard_sum {
                Some(s) => across_shards(s, run),
                None => run(),
            }
        })?;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(self.pack.exposed_s);
        // the running statistics are final (the first piece's): whether this
        // rank's are still finite rides the logged sums' allreduce
        let ts = Instant::now();
        let bad_stats = nonfinite_statistic(net);
        let stats_s = ts.elapsed().as_secs_f64();
        sums[3 + nu + flow_len] = f64::from(u8::from(bad_stats.is_some()));
        self.comm.sum_f64(&mut sums);
        // each piece's gradients are those of its own mean loss: the sum over
        // the P = R * pieces pieces, divided by P, is the global mean loss's
        let p = (r * pieces) as f64;
        let scale = (1.0 / p) as f32;
        for (g, params) in net.param_groups_mut().into_iter().enumerate() {
            unpack(&self.pack.sum[g], params, scale)?;
        }
        // a piece's dL/dx is P times the global loss's on its images
        let p2 = p * p;
        let norms: Vec<f64> = sums[2..3 + nu].iter().map(|s| (s / p2).sqrt()).collect();
        let loss = sums[0] / b.n as f64;
        // (the norms were summed with the passes)
        let t1 = Instant::now();
        let diverged = divergence_in(&norms, loss, max_grad_norm)
            .or_else(|| statistics_divergence(bad_stats, sums[3 + nu + flow_len]));
        let t2 = Instant::now();
        let flow = if probe {
            global_flow_rows(net, iter, &norms, &sums[3 + nu..3 + nu + flow_len], p2)
        } else {
            vec![]
        };
        Ok(StepOut {
            loss_sum: sums[0],
            correct: sums[1] as usize,
            seen: b.n,
            diverged,
            flow,
            passes_s: (t1 - t0).as_secs_f64() - stats_s,
            check_s: (t2 - t1).as_secs_f64() + stats_s,
            probe_s: t2.elapsed().as_secs_f64(),
        })
    }

    /// Rank 0's BatchNorm running statistics on every rank, where each rank
    /// keeps its own (per-rank BatchNorm: they follow rank 0's shard, as
    /// PyTorch DDP's broadcast buffers do); then the weights compared across
    /// the ranks (`dist::check_same_weights`).
    pub fn settle(&self, net: &mut Net<f32>, iter: u64) -> Result<()> {
        if self.comm.size() == 1 {
            return Ok(());
        }
        if !self.sync_bn {
            for (buf, _) in net.buffers_mut() {
                self.comm.broadcast_f32(&mut buf.value);
            }
        }
        crate::dist::check_same_weights(&*self.comm, weights_checksum(net), iter)
    }
}

/// The checksum of every parameter and buffer of `net`.
pub fn weights_checksum(net: &mut Net<f32>) -> u64 {
    let mut sum = {
        let params = net.params_mut();
        checksum(params.iter().map(|p| p.value.as_slice()))
    };
    let buffers = net.buffers_mut();
    sum ^= checksum(buffers.iter().map(|(b, _)| b.value.as_slice())).rotate_left(1);
    sum
}

/// This rank's images in `pieces` BatchNorm groups, one after another, the
/// gradients accumulating; the last piece hands each finished parameter
/// group to `ready` (whose sum over the ranks starts there). With several
/// pieces, every piece starts from the same dropout RNG state (as every
/// rank does) and the running statistics keep the first piece's update
/// (as the ranks keep rank 0's). Adds this rank's logged sums to `sums`.
fn local_pieces(
    net: &mut Net<f32>,
    images: &[f32],
    labels: &[usize],
    pieces: usize,
    probe: bool,
    sums: &mut [f64],
    ready: &mut crate::dist::GroupReady<'_>,
) -> Result<()> {
    let nu = net.num_units();
    let n = labels.len() / pieces;
    let per = images.len() / labels.len();
    let rng = net.rng.clone();
    let mut first_stats = vec![];
    net.zero_grad();
    for m in 0..pieces {
        let (x, y) = (
            &images[m * n * per..(m + 1) * n * per],
            &labels[m * n..(m + 1) * n],
        );
        if m > 0 {
            net.rng = rng.clone();
        }
        let loss = if m + 1 < pieces {
            net.forward_backward(x, y, probe)?
        } else {
            net.forward_backward_with(x, y, probe, &mut |g, params| {
                ready(g, &mut |buf| pack(buf, params))
            })?
        };
        sums[0] += loss * n as f64;
        sums[1] += count_correct(net.logits(), y, net.classes()) as f64;
        for i in 0..=nu {
            let v = norm(net.dx(i));
            sums[2 + i] += v * v;
        }
        if probe {
            for (l, f) in net.flow.iter().enumerate() {
                let s = &mut sums[3 + nu + 4 * l..3 + nu + 4 * l + 4];
                s[0] += f.grad_norm * f.grad_norm;
                s[1] += f.shortcut_norm * f.shortcut_norm;
                s[2] += f.branch_norm * f.branch_norm;
                s[3] += f.cosine * f.shortcut_norm * f.branch_norm;
            }
        }
        if m == 0 && pieces > 1 {
            first_stats = net
                .bn_layers_mut()
                .iter()
                .map(|bn| {
                    (
                        bn.running_mean.value.clone(),
                        bn.running_var.value.clone(),
                        bn.num_batches_tracked,
                    )
                })
                .collect();
        }
    }
    for (bn, (mean, var, tracked)) in net.bn_layers_mut().into_iter().zip(first_stats) {
        bn.running_mean.value = mean;
        bn.running_var.value = var;
        bn.num_batches_tracked = tracked;
    }
    Ok(())
}

/// A group's gradients, end to end, copied to the host.
fn pack(buf: &mut [f32], params: &mut [&mut Param<f32>]) {
    let mut at = 0;
    for p in params.iter() {
        let len = Cpu::len(&p.grad);
        Cpu::to_host(&p.grad, &mut buf[at..at + len]).expect("the pack is sized by its group");
        at += len;
    }
}

/// `grad = scale * sum` for a group's parameters.
fn unpack(sum: &[f32], params: Vec<&mut Param<f32>>, scale: f32) -> Result<()> {
    let mut at = 0;
    for p in params {
        let len = p.grad.len();
        scale_forward(&mut p.grad, &sum[at..at + len], scale)?;
        at += len;
    }
    Ok(())
}

/// The probe's rows from squared norms summed over the pieces of the batch
/// (`flow`: per unit grad^2, shortcut^2, branch^2, shortcut . branch), each
/// divided by `p2` (a piece's gradient is P times the global one).
fn global_flow_rows(
    net: &Net<f32>,
    iter: u64,
    norms: &[f64],
    flow: &[f64],
    p2: f64,
) -> Vec<FlowRow> {
    let nu = net.num_units();
    let factors = net.direct_factors();
    let mut rows: Vec<FlowRow> = (0..nu)
        .map(|l| {
            let f = &flow[4 * l..4 * l + 4];
            let (s, br) = ((f[1] / p2).sqrt(), (f[2] / p2).sqrt());
            FlowRow {
                iter,
                unit: l,
                grad_norm: (f[0] / p2).sqrt(),
                shortcut_norm: Some(s),
                branch_norm: Some(br),
                cosine: Some(if s > 0.0 && br > 0.0 {
                    f[3] / p2 / (s * br)
                } else {
                    0.0
                }),
                direct_factor: factors[l],
            }
        })
        .collect();
    rows.push(FlowRow {
        iter,
        unit: nu,
        grad_norm: norms[nu],
        shortcut_norm: None,
        branch_norm: None,
        cosine: None,
        direct_factor: Some(1.0),
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{GroupReady, Single};
    use crate::gradcheck::Rand;
    use crate::model::Spec;
    use crate::train::DataSource;

    fn mlp(bn: bool) -> Spec {
        Spec::from_json(&format!(
            r#"{{"arch":"mlp","in_features":6,"hidden":8,"units":3,"classes":4,"unit":"full_preact","shortcut":{{"kind":"identity"}},"batchnorm":{bn}}}"#
        ))
        .unwrap()
    }

    fn batch(n: usize, seed: u64) -> Batch {
        let mut r = Rand::new(seed);
        Batch {
            images: r.normal_vec(n * 6).iter().map(|&v| v as f32).collect(),
            labels: (0..n).map(|_| r.usize_below(4)).collect(),
            n,
            c: 6,
            h: 1,
            w: 1,
            epoch: 0,
            index: 0,
        }
    }

    fn grads(net: &mut Net<f32>) -> Vec<Vec<f32>> {
        net.params_mut().iter().map(|p| p.grad.clone()).collect()
    }

    /// The backward hands every parameter over exactly once, in the groups
    /// of `param_groups_mut`, with its gradient already final.
    #[test]
    fn groups_come_final_and_complete() {
        for bn in [false, true] {
            let b = batch(8, 1);
            let mut net: Net<f32> = Net::new(&mlp(bn), 1, 0).unwrap();
            let mut seen: Vec<(usize, Vec<String>, Vec<Vec<f32>>)> = vec![];
            net.zero_grad();
            net.forward_backward_with(&b.images, &b.labels, false, &mut |g, ps| {
                seen.push((
                    g,
                    ps.iter().map(|p| p.name.clone()).collect(),
                    ps.iter().map(|p| p.grad.clone()).collect(),
                ))
            })
            .unwrap();
            let groups = net.param_groups_mut();
            assert_eq!(seen.len(), groups.len());
            let mut all = vec![];
            for (k, (g, names, gr)) in seen.iter().enumerate() {
                assert_eq!(*g, k, "groups in backward order");
                let want: Vec<String> = groups[k].iter().map(|p| p.name.clone()).collect();
                assert_eq!(names, &want);
                for (p, gv) in groups[k].iter().zip(gr) {
                    assert_eq!(&p.grad, gv, "{} changed after it was handed over", p.name);
                }
                all.extend(names.clone());
            }
            drop(groups);
            let mut names: Vec<String> = net.params_mut().iter().map(|p| p.name.clone()).collect();
            names.sort();
            all.sort();
            assert_eq!(all, names, "every parameter exactly once");
        }
    }

    /// One process in 2 BatchNorm groups: without BN the same gradients as
    /// the whole batch (the two halves' mean-loss gradients averaged), with
    /// BN different ones; the running statistics keep the first group's.
    #[test]
    fn pieces_average_the_halves() {
        let b = batch(8, 2);
        for bn in [false, true] {
            let spec = mlp(bn);
            let mut cfg = TrainConfig::new("t", spec.clone(), DataSource::Mnist5k);
            cfg.batch = 8;
            let mut plain_net: Net<f32> = Net::new(&spec, 1, 0).unwrap();
            let mut plain = Parallel::new(Arc::new(Single), &cfg, &mut plain_net).unwrap();
            let a = plain.step(&mut plain_net, &b, true, 0, 1e8).unwrap();
            cfg.bn_groups = 2;
            let mut net: Net<f32> = Net::new(&spec, 1, 0).unwrap();
            let mut two = Parallel::new(Arc::new(Single), &cfg, &mut net).unwrap();
            assert!(!two.is_plain());
            let o = two.step(&mut net, &b, true, 0, 1e8).unwrap();
            let (ga, gb) = (grads(&mut plain_net), grads(&mut net));
            let d = ga
                .iter()
                .flatten()
                .zip(gb.iter().flatten())
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            if bn {
                assert!(d > 1e-4, "BN over halves must differ: {d}");
                // the first half's statistics
                let mut half: Net<f32> = Net::new(&spec, 1, 0).unwrap();
                half.forward_backward(&b.images[..4 * 6], &b.labels[..4], false)
                    .unwrap();
                for (p, q) in half.buffers_mut().iter().zip(net.buffers_mut().iter()) {
                    assert_eq!(p.0.value, q.0.value);
                }
            } else {
                assert!(d < 1e-6, "no BN: the same gradient, max diff {d}");
                assert!((a.loss_sum - o.loss_sum).abs() < 1e-5);
                for (x, y) in a.flow.iter().zip(&o.flow) {
                    assert!((x.grad_norm - y.grad_norm).abs() <= 1e-5 * x.grad_norm);
                    let (cx, cy) = (x.cosine.unwrap_or(0.0), y.cosine.unwrap_or(0.0));
                    assert!((cx - cy).abs() < 1e-4, "{cx} vs {cy}");
                }
            }
            assert_eq!(o.seen, 8);
        }
    }

    /// Rank 0 of two whose other rank runs the same shard: every sum over
    /// the ranks is twice this rank's value, except that the other rank's
    /// running statistics are non-finite when `other_bad`. Counts the
    /// allreduces of logged sums.
    struct Twin {
        other_bad: bool,
        sums: std::sync::atomic::AtomicUsize,
    }

    impl Comm for Twin {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn sum_f64(&self, v: &mut [f64]) {
            self.sums.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            v.iter_mut().for_each(|x| *x *= 2.0);
            if let Some(flag) = v.last_mut() {
                *flag += f64::from(u8::from(self.other_bad));
            }
        }
        fn broadcast_bytes(&self, _buf: &mut Vec<u8>) {}
        fn broadcast_f32(&self, _v: &mut [f32]) {}
        fn all_gather_u64(&self, v: u64) -> Vec<u64> {
            vec![v, v]
        }
        fn sum_groups(
            &self,
            pack: &mut GradPack,
            work: &mut dyn FnMut(&mut GroupReady<'_>) -> Result<()>,
        ) -> Result<()> {
            Single.sum_groups(pack, work)?;
            pack.sum.iter_mut().flatten().for_each(|x| *x *= 2.0);
            Ok(())
        }
    }

    /// With two ranks (per-rank BN) a step takes one allreduce of its
    /// logged sums, the BatchNorm check included; a non-finite running
    /// statistic on either rank stops both, each naming what it knows.
    #[test]
    fn statistics_check_rides_the_step_allreduce() {
        let b = batch(8, 3);
        let spec = mlp(true);
        let mut cfg = TrainConfig::new("t", spec.clone(), DataSource::Mnist5k);
        cfg.batch = 8;
        for (other_bad, own_bad) in [(false, false), (true, false), (false, true)] {
            let twin = Arc::new(Twin {
                other_bad,
                sums: Default::default(),
            });
            let mut net: Net<f32> = Net::new(&spec, 1, 0).unwrap();
            let mut par = Parallel::new(twin.clone(), &cfg, &mut net).unwrap();
            assert!(!par.is_plain());
            if own_bad {
                // a forward keeps an infinite running variance infinite
                net.bn_layers_mut()[0].running_var.value[1] = f32::INFINITY;
            }
            let o = par.step(&mut net, &b, true, 0, 1e8).unwrap();
            let sums = twin.sums.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(sums, 1, "one allreduce of logged sums per step");
            match (other_bad, own_bad) {
                (false, false) => assert_eq!(o.diverged, None),
                (true, false) => assert!(o.diverged.unwrap().contains("on another rank")),
                _ => assert!(o.diverged.unwrap().contains("running_var[1] became inf")),
            }
        }
    }
}

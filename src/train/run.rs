//! The training loop. One step: batch from the loader thread -> learning
//! rate from the schedule -> zero grads -> forward -> softmax CE -> backward
//! (with the gradient-flow probe every `flow_every` iterations) -> divergence
//! check -> SGD update. At every evaluation point (each epoch, or every
//! `eval_every` iterations, and the end): evaluate with BN running
//! statistics, append a `metrics.csv` row, write the checkpoint atomically.

use super::checkpoint::{self, CHECKPOINT};
use super::config::{load_data, TrainConfig};
use super::metrics::{
    append_lines, last_row, retain_rows, MetricsRow, FLOW_CSV, METRICS_CSV, METRICS_HEADER,
};
use super::optim::Sgd;
use super::parallel::Parallel;
use super::progress::Progress;
use super::steplog::StepLog;
use super::timings::{LoopTimings, TIMINGS_JSON};
use crate::data::{Batch, Dataset, Loader};
use crate::dist::{Comm, Single};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::Net;
use crate::probe::{rows_to_csv, FlowRow, FLOW_CSV_HEADER};
use crate::tensor::{norm, sum_sq_par};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The final weights of a finished run (state dict only, no optimiser state).
pub const WEIGHTS: &str = "weights.safetensors";

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub name: String,
    /// last evaluation
    pub last: MetricsRow,
    /// probe rows at the first and at the last probed iteration
    pub flow_first: Vec<FlowRow>,
    pub flow_last: Vec<FlowRow>,
    /// `Some(message)` when the run diverged (it stopped there)
    pub diverged: Option<String>,
    /// iterations completed (for a diverged run: the one that diverged)
    pub iter: u64,
    /// the verdict on the gradient flow (also in `summary.json`)
    pub verdict: crate::verdict::RunVerdict,
}

impl RunOutcome {
    /// ||dL/dx_0|| / ||dL/dx_U|| from a set of probe rows.
    pub fn ratio(rows: &[FlowRow]) -> Option<f64> {
        let first = rows.first()?.grad_norm;
        let last = rows.last()?.grad_norm;
        Some(first / last)
    }
}

/// One evaluation in eval mode (BN running statistics, no dropout).
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// mean cross-entropy
    pub loss: f64,
    pub accuracy: f64,
    /// images evaluated
    pub n: usize,
    /// `confusion[true][predicted]`: image counts (`classes x classes`)
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluate in eval mode (BN running statistics, no dropout).
pub fn evaluate(net: &mut Net<f32>, data: &Dataset, batch: usize) -> Result<Evaluation> {
    evaluate_on(net, data, batch, &Single)
}

/// The index of a row's largest value (the first of equals).
pub fn arg_max(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Number of rows whose arg-max equals the label.
pub fn count_correct(logits: &[f32], labels: &[usize], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, &y)| arg_max(row) == y)
        .count()
}

/// Look for the unit where the gradient blew up or vanished; `None` when
/// every norm is finite and below `max_norm`.
pub fn divergence(net: &Net<f32>, loss: f64, max_norm: f64) -> Option<String> {
    let u = net.num_units();
    let dx: Vec<&[f32]> = (0..=u).map(|i| net.dx(i)).collect();
    divergence_of(&dx, loss, max_norm)
}

/// A screen's norm must stay this far below the limit, relative, to pass:
/// far more than the `2 (n - 1) * 2^-53` by which [`sum_sq_par`] and
/// [`norm`] may differ for any buffer of fewer than 10^9 values.
pub const SCREEN_MARGIN: f64 = 1e-6;

/// [`divergence_in`] of the norms of `dx` (the gradients at the unit
/// boundaries), the same answer for a fraction of the time: every step is
/// first screened with [`sum_sq_par`] (vectorised, on the pool); only a step
/// whose screen finds a non-finite value, a norm within [`SCREEN_MARGIN`] of
/// `max_norm` or above, or a non-finite loss takes [`norm`]'s exact,
/// sequential norms to find the culprit and word the message.
pub fn divergence_of(dx: &[&[f32]], loss: f64, max_norm: f64) -> Option<String> {
    let limit = max_norm * (1.0 - SCREEN_MARGIN);
    let clear = loss.is_finite()
        && dx.iter().all(|d| {
            let s = sum_sq_par(d);
            s.is_finite() && s.sqrt() <= limit
        });
    if clear {
        return None;
    }
    let norms: Vec<f64> = dx.iter().map(|d| norm(d)).collect();
    divergence_in(&norms, loss, max_norm)
}

/// [`divergence`] from the norms `||dL/dx_i||`, i = 0..=U.
pub fn divergence_in(norms: &[f64], loss: f64, max_norm: f64) -> Option<String> {
    let u = norms.len() - 1;
    // from the top down: the first boundary where the gradient is no longer usable
    for i in (0..=u).rev() {
        let n = norms[i];
        let at = if i == u {
            "the last unit's output".to_string()
        } else {
            format!("unit {i}'s input")
        };
        if !n.is_finite() {
            return Some(format!(
                "the gradient became non-finite at {at} (||dL/dx_{i}|| = {n})"
            ));
        }
        if n > max_norm {
            return Some(format!(
                "the gradient blew up at {at}: ||dL/dx_{i}|| = {n:e} > {max_norm:e}"
            ));
        }
    }
    if !loss.is_finite() {
        let vanished = (0..=u).rev().find(|&i| norms[i] == 0.0);
        return Some(match vanished {
            Some(i) => format!(
                "the loss is {loss} and the gradient vanished below unit {i} (||dL/dx_{i}|| = 0)"
            ),
            None => format!("the loss is {loss}"),
        });
    }
    None
}

/// The first BatchNorm running statistic of this rank that is no longer
/// finite, as a divergence message: the forward pass overflowed (a batch
/// variance of `inf`), which can leave the loss and every gradient finite
/// while the weights are unusable in eval mode. Checked after every step
/// (by `Parallel::step`); with more than one rank (each keeps its own
/// statistics) whether any rank found one rides the step's allreduce of
/// its logged sums, and [`statistics_divergence`] words the answer, the same
/// on every rank, so all of them stop together.
pub fn nonfinite_statistic(net: &mut Net<f32>) -> Option<String> {
    net.bn_layers_mut().into_iter().find_map(|bn| {
        bn.buffers().find_map(|b| {
            let i = b.value.iter().position(|v| !v.is_finite())?;
            Some(format!(
                "the BatchNorm running statistic {}[{i}] became {} (the forward pass overflowed)",
                b.name, b.value[i]
            ))
        })
    })
}

/// The divergence of the running statistics over the ranks: this rank's
/// [`nonfinite_statistic`] (`local`), else, when `ranks_found` (the number
/// of ranks that found one, summed over the ranks) is positive, another
/// rank's.
pub fn statistics_divergence(local: Option<String>, ranks_found: f64) -> Option<String> {
    if local.is_none() && ranks_found > 0.0 {
        return Some("a BatchNorm running statistic became non-finite on another rank".into());
    }
    local
}

/// [`evaluate`] split over the ranks: rank r takes evaluation batches r,
/// r + R, ...; the sums (and the confusion counts) are added over the ranks.
pub fn evaluate_on(
    net: &mut Net<f32>,
    data: &Dataset,
    batch: usize,
    comm: &dyn Comm,
) -> Result<Evaluation> {
    let (rank, size) = (comm.rank(), comm.size());
    let k = net.classes();
    // [loss sum, images, confusion counts row-major]
    let mut v = vec![0.0f64; 2 + k * k];
    // the whole evaluation on a pool worker, the others kept awake from one
    // batch to the next (ops::awake)
    crate::ops::awake::on_warm_pool(|| -> Result<()> {
        let mut it = data.eval_batches(batch.max(1));
        let mut b = Batch::default();
        let mut i = 0usize;
        while it.next_into(&mut b) {
            if i % size == rank {
                net.forward(&b.images, false)?;
                v[0] += net.loss(&b.labels)? * b.n as f64;
                v[1] += b.n as f64;
                for (row, &y) in net.logits().chunks_exact(k).zip(&b.labels) {
                    v[2 + y * k + arg_max(row)] += 1.0;
                }
            }
            i += 1;
        }
        Ok(())
    })?;
    comm.sum_f64(&mut v);
    if v[1] == 0.0 {
        return Err(Error::Config(format!(
            "the evaluation set {} is empty",
            data.name
        )));
    }
    let confusion: Vec<Vec<usize>> = v[2..]
        .chunks_exact(k)
        .map(|r| r.iter().map(|&c| c as usize).collect())
        .collect();
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    Ok(Evaluation {
        loss: v[0] / v[1],
        accuracy: correct as f64 / v[1],
        n: v[1] as usize,
        confusion,
    })
}

/// The weights are compared across the ranks every this many iterations
/// (and at every evaluation and at the end).
pub const WEIGHT_CHECK_EVERY: u64 = 100;

/// Train (or resume) the run in `dir`.
pub fn train_run(cfg: &TrainConfig, dir: &Path, resume: bool, quiet: bool) -> Result<RunOutcome> {
    train_run_on(cfg, dir, resume, quiet, Arc::new(Single))
}

/// [`train_run`] as one of the ranks of `comm` (see `dist`): each rank
/// trains on its shard of every batch; rank 0 alone writes the run's files
/// and shows progress, every rank reads the checkpoint on `resume`.
pub fn train_run_on(
    cfg: &TrainConfig,
    dir: &Path,
    resume: bool,
    quiet: bool,
    comm: Arc<dyn Comm>,
) -> Result<RunOutcome> {
    cfg.validate()?;
    let lead = comm.rank() == 0;
    let quiet = quiet || !lead;
    // one process per run directory (released on return, error or not):
    // rank 0 holds it for all the ranks of a data-parallel run
    let _lock = if lead {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = crate::io::lock::DirLock::acquire(dir, "run directory")?;
        // a run killed while writing its checkpoint leaves the temporary behind
        crate::io::remove_stale_temporaries(dir);
        Some(lock)
    } else {
        None
    };
    let data = load_data(cfg)?;
    let image = data.train.h;
    crate::limits::check_model("train", &cfg.spec, image, cfg.batch)?;
    let mut net: Net<f32> = Net::new(&cfg.spec, image, cfg.seed)?;
    net.set_precision(cfg.precision)?;
    if cfg.branch_init_scale != 1.0 {
        for u in net.units.iter_mut() {
            u.scale_branch_output(cfg.branch_init_scale);
        }
    }
    if let Some(p) = &cfg.init_from {
        // every parameter and buffer by name and shape (a resumed run's
        // checkpoint replaces them below)
        net.load_state(&crate::io::safetensors::SafeTensors::read(p)?)?;
    }
    let mut opt: Sgd<f32> = Sgd::new(cfg.sgd.clone());
    let ckpt_path = dir.join(CHECKPOINT);
    let metrics_path = dir.join(METRICS_CSV);
    let flow_path = dir.join(FLOW_CSV);
    let (mut iter, mut wall_before) = (0u64, 0.0f64);
    if resume && ckpt_path.exists() {
        let r = checkpoint::load(&ckpt_path, cfg, &mut net, &mut opt)?;
        iter = r.iter;
        wall_before = r.wall_s;
        if lead {
            retain_rows(&metrics_path, METRICS_HEADER, |it| it <= iter)?;
            retain_rows(&flow_path, FLOW_CSV_HEADER, |it| it < iter)?;
        }
    } else if lead {
        let (summary, marker, timings, confusion) = (
            dir.join(crate::verdict::SUMMARY_JSON),
            dir.join(crate::verdict::DIVERGED_JSON),
            dir.join(TIMINGS_JSON),
            dir.join(crate::eval::CONFUSION_JSON),
        );
        // (steps.csv: StepLog::open below starts it afresh)
        for p in [
            &metrics_path,
            &flow_path,
            &ckpt_path,
            &summary,
            &marker,
            &timings,
            &confusion,
        ] {
            if p.exists() {
                std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
        }
    }
    if comm.size() > 1 {
        // every rank must be running the same run from the same point
        let start = serde_json::json!({
            "config": cfg,
            "training images": format!("{:016x}", crate::dist::checksum([data.train.images.as_slice()])),
            "training labels": format!("{:016x}", crate::dist::fnv(&data.train.labels)),
            "evaluation images": format!("{:016x}", crate::dist::checksum([data.eval.images.as_slice()])),
            "starting iteration": iter,
            "weights": format!("{:016x}", super::parallel::weights_checksum(&mut net)),
        });
        crate::dist::check_same_start(&*comm, &start)?;
    }
    // config.json records the normalisation (eval and predict apply it)
    let stored = TrainConfig {
        norm: Some(data.norm.clone()),
        ..cfg.clone()
    };
    let cfg_json =
        serde_json::to_string_pretty(&stored).map_err(|e| Error::Config(e.to_string()))?;
    if lead {
        write_atomic(&dir.join("config.json"), cfg_json.as_bytes())?;
    }
    let mut par = Parallel::new(comm.clone(), cfg, &mut net)?;
    // steps.csv and the TensorBoard events: rank 0 alone
    let mut steplog = if lead {
        StepLog::open(cfg, dir, (resume && iter > 0).then_some(iter))?
    } else {
        StepLog::off()
    };

    let train = Arc::new(data.train);
    let loader = Loader::new(train.clone(), cfg.batch, cfg.seed, Some(cfg.augment))?;
    let bpe = loader.batches_per_epoch() as u64;
    if bpe == 0 {
        return Err(Error::Config(format!(
            "batch {} is larger than the {} training images",
            cfg.batch, train.n
        )));
    }
    let eval_every = if cfg.eval_every > 0 {
        cfg.eval_every
    } else {
        bpe
    };
    let mut progress = Progress::new(&cfg.name, cfg.iters, iter, quiet);
    let start = Instant::now();
    let mut window = (0.0f64, 0usize, 0usize, 0.0f64); // (loss sum, correct, seen, compute seconds)
                                                       // a resumed run that had already finished reports its last evaluation
    let mut last = if iter > 0 {
        last_row(&metrics_path)?.unwrap_or(MetricsRow {
            iter,
            ..MetricsRow::default()
        })
    } else {
        MetricsRow::default()
    };
    let (mut flow_first, mut flow_last): (Vec<FlowRow>, Vec<FlowRow>) = (vec![], vec![]);
    let mut diverged = None;
    let mut tm = LoopTimings::default();
    'outer: while iter < cfg.iters {
        let epoch = iter / bpe;
        let mut tw = Instant::now();
        let mut batches = loader.epoch_from(epoch, (iter % bpe) as usize);
        while let Some(b) = batches.next() {
            let t0 = LoopTimings::lap(&mut tm.batch_wait_s, tw);
            let lr = cfg.schedule.lr_at(iter);
            let probe = cfg.flow_every > 0 && (iter % cfg.flow_every == 0 || iter + 1 == cfg.iters);
            // forward and backward (of this rank's shard, the gradients
            // summed over the ranks: train::parallel)
            let out = par.step(&mut net, &b, probe, iter, cfg.max_grad_norm)?;
            tm.passes_s += out.passes_s;
            tm.probe_s += out.probe_s;
            tm.divergence_check_s += out.check_s;
            let tp = Instant::now();
            if let Some(msg) = out.diverged {
                diverged = Some(msg);
                if probe {
                    flow_last = out.flow;
                    if lead {
                        append_lines(&flow_path, FLOW_CSV_HEADER, &rows_to_csv(&flow_last))?;
                    }
                }
                break 'outer;
            }
            if probe {
                let rows = out.flow;
                if lead {
                    append_lines(&flow_path, FLOW_CSV_HEADER, &rows_to_csv(&rows))?;
                }
                if flow_first.is_empty() {
                    flow_first = rows.clone();
                }
                flow_last = rows;
            }
            let tu = LoopTimings::lap(&mut tm.probe_s, tp);
            window.0 += out.loss_sum;
            window.1 += out.correct;
            window.2 += out.seen;
            crate::ops::awake::on_warm_pool(|| opt.step(&mut net.params_mut(), lr));
            let tl = LoopTimings::lap(&mut tm.update_s, tu);
            tm.steps += 1;
            tm.images += b.n as u64;
            let dt = t0.elapsed().as_secs_f64();
            window.3 += dt;
            iter += 1;
            let ips = window.2 as f64 / window.3.max(1e-9);
            progress.update(
                iter,
                iter as f64 / bpe as f64,
                window.0 / window.2.max(1) as f64,
                window.1 as f64 / window.2.max(1) as f64,
                ips,
            )?;
            let probed = probe.then_some(&flow_last[..]);
            steplog.step(
                iter,
                out.loss_sum / out.seen.max(1) as f64,
                lr,
                &mut net,
                b.n,
                t0.elapsed().as_secs_f64(),
                probed,
            )?;
            batches.recycle(b);
            tw = LoopTimings::lap(&mut tm.logging_s, tl);
            let eval_now = iter % eval_every == 0 || iter == cfg.iters;
            if eval_now || iter % WEIGHT_CHECK_EVERY == 0 {
                par.settle(&mut net, iter)?;
                tw = LoopTimings::lap(&mut tm.checkpoint_s, tw);
            }
            if eval_now {
                let e = evaluate_on(&mut net, &data.eval, cfg.batch, &*comm)?;
                let (test_loss, test_acc) = (e.loss, e.accuracy);
                let tc = LoopTimings::lap(&mut tm.evaluation_s, tw);
                let wall_s = wall_before + start.elapsed().as_secs_f64();
                last = MetricsRow {
                    iter,
                    epoch: iter as f64 / bpe as f64,
                    lr,
                    train_loss: window.0 / window.2 as f64,
                    train_acc: window.1 as f64 / window.2 as f64,
                    test_loss,
                    test_acc,
                    images_per_s: ips,
                    wall_s,
                };
                if lead {
                    append_lines(&metrics_path, METRICS_HEADER, &last.csv_line())?;
                    steplog.evaluation(&last)?;
                    checkpoint::save(&ckpt_path, &stored, &mut net, &opt, iter, wall_s)?;
                    if iter == cfg.iters {
                        // the final evaluation's confusion matrix (the report draws it)
                        let what = format!("{} at iteration {iter}", cfg.name);
                        let r = crate::eval::EvalReport::new(what, &data.eval.name, &e);
                        write_atomic(&dir.join(crate::eval::CONFUSION_JSON), &r.to_json()?)?;
                    }
                }
                progress.println(&format!(
                    "{}: iter {iter} epoch {:.2}: train loss {:.4} acc {:.2}%, test loss {test_loss:.4} acc {:.2}%, {ips:.0} img/s",
                    cfg.name,
                    last.epoch,
                    last.train_loss,
                    100.0 * last.train_acc,
                    100.0 * test_acc
                ))?;
                window = (0.0, 0, 0, 0.0);
                tw = LoopTimings::lap(&mut tm.checkpoint_s, tc);
            }
            if iter >= cfg.iters {
                break 'outer;
            }
        }
    }
    progress.finish();
    tm.wall_s = start.elapsed().as_secs_f64();
    // (a resumed run that had already finished keeps its timings)
    if tm.steps > 0 {
        if lead {
            let json =
                serde_json::to_string_pretty(&tm).map_err(|e| Error::Config(e.to_string()))?;
            write_atomic(&dir.join(TIMINGS_JSON), json.as_bytes())?;
        }
        if !quiet {
            crate::outln!("{}: {}", cfg.name, tm.summary())?;
        }
    }
    if comm.size() > 1 {
        // how much of the gradient allreduce the backward hid
        let alone = par.allreduce_alone_s(5)?;
        let exposed = par.exposed_per_step_s();
        if !quiet {
            crate::errln!(
                "{}: {} ranks: gradient allreduce {:.2} ms per step alone, {:.2} ms left after the last rank's backward ({:.0}% hidden)",
                cfg.name,
                comm.size(),
                1e3 * alone,
                1e3 * exposed,
                100.0 * (1.0 - exposed / alone.max(1e-12)).max(0.0)
            )?;
        }
    }
    if diverged.is_none() && iter >= cfg.iters && lead {
        // the final weights alone, under the reference's state-dict names:
        // `Net(spec).load_state_dict(safetensors.torch.load_file(...))` takes them as is
        let mut st = crate::io::safetensors::SafeTensors::new();
        net.save_state(&mut st)?;
        st.metadata.insert(
            "spec".into(),
            serde_json::to_string(&cfg.spec).map_err(|e| Error::Config(e.to_string()))?,
        );
        // the inputs' normalisation: x = (pixel - mean[c]) / std[c] on 0..=255 pixels
        st.metadata.insert(
            crate::eval::NORM_METADATA.into(),
            crate::eval::norm_metadata(&data.norm),
        );
        st.write_atomic(&dir.join(WEIGHTS))?;
    }
    if flow_first.is_empty() {
        flow_first = flow_last.clone();
    }
    // summary.json (the verdict) for every run; diverged.json for a diverged one
    let marker = diverged.as_ref().map(|msg| crate::verdict::Diverged {
        iter,
        message: msg.clone(),
    });
    let verdict = if lead {
        crate::verdict::write_run_files(dir, Some(last.test_acc), marker)?
    } else {
        crate::verdict::RunVerdict::new(&flow_first, &flow_last, marker)
    };
    Ok(RunOutcome {
        name: cfg.name.clone(),
        last,
        flow_first,
        flow_last,
        diverged,
        iter,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Spec;

    /// The screened check answers exactly what the exact norms do: healthy
    /// buffers, a NaN, an infinity, a norm just above and just below the
    /// limit (inside the screen's margin), a non-finite loss.
    #[test]
    fn screened_divergence_matches_the_exact_check() {
        let n = 3 * crate::tensor::SUM_SQ_CHUNK + 3;
        let base: Vec<Vec<f32>> = (0..4)
            .map(|k| (0..n).map(|i| ((i * 31 + k) % 17) as f32 * 1e-3).collect())
            .collect();
        let exact = |bufs: &[Vec<f32>], loss: f64, max: f64| {
            let norms: Vec<f64> = bufs.iter().map(|b| norm(b)).collect();
            divergence_in(&norms, loss, max)
        };
        let check = |bufs: &[Vec<f32>], loss: f64, max: f64| {
            let refs: Vec<&[f32]> = bufs.iter().map(|b| b.as_slice()).collect();
            let got = divergence_of(&refs, loss, max);
            assert_eq!(got, exact(bufs, loss, max));
            got
        };
        assert_eq!(check(&base, 2.3, 1e8), None);
        assert!(check(&base, f64::NAN, 1e8).is_some());
        let mut nan = base.clone();
        nan[1][n - 1] = f32::NAN;
        assert!(check(&nan, 2.3, 1e8)
            .unwrap()
            .contains("non-finite at unit 1"));
        let mut inf = base.clone();
        inf[3][5] = f32::INFINITY;
        assert!(check(&inf, 2.3, 1e8)
            .unwrap()
            .contains("the last unit's output"));
        // the limit right at a buffer's norm: the screen defers to the exact sum
        let at = norm(&base[2]);
        assert!(check(&base, 2.3, at * (1.0 - 1e-12))
            .unwrap()
            .contains("unit 2"));
        assert_eq!(check(&base, 2.3, at), None);
        assert_eq!(check(&base, 2.3, at * (1.0 + 1e-9)), None);
    }

    #[test]
    fn nonfinite_running_statistics_are_a_divergence() {
        let spec = Spec::from_json(
            r#"{"arch":"mlp","in_features":4,"hidden":8,"units":2,"classes":3,"unit":"original","shortcut":{"kind":"identity"}}"#,
        )
        .unwrap();
        let mut net: Net<f32> = Net::new(&spec, 1, 0).unwrap();
        assert_eq!(nonfinite_statistic(&mut net), None);
        let mut bns = net.bn_layers_mut();
        assert!(bns.len() >= 2);
        bns[1].running_var.value[3] = f32::INFINITY;
        let name = bns[1].running_var.name.clone();
        let msg = nonfinite_statistic(&mut net).expect("diverged");
        assert!(msg.contains(&format!("{name}[3] became inf")), "{msg}");
        net.bn_layers_mut()[1].running_var.value[3] = 1.0;
        net.bn_layers_mut()[0].running_mean.value[0] = f32::NAN;
        let msg = nonfinite_statistic(&mut net).expect("diverged");
        assert!(msg.contains("running_mean[0] became NaN"), "{msg}");
        // over the ranks: this rank's own message first, else another's
        let other = statistics_divergence(None, 1.0).expect("another rank");
        assert!(other.contains("on another rank"), "{other}");
        assert_eq!(statistics_divergence(None, 0.0), None);
        assert_eq!(statistics_divergence(Some(msg.clone()), 2.0), Some(msg));
    }
}

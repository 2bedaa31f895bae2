//! Logging every step: `steps.csv` in the run directory and, with
//! `--tensorboard DIR`, TensorBoard event files.
//!
//! `steps.csv` has one row every `log_every` iterations (1: every step; 0:
//! no file): `iter` (iterations done, as in `metrics.csv`), `loss` (mean
//! training loss of the steps since the previous row), `lr`, `grad_norm`
//! (the global L2 norm of the loss gradient over all parameters at the
//! logged step, before weight decay and momentum) and `images_per_s` (over
//! the steps since the previous row, compute time only). Rows are appended
//! whole (one `write` each) and fsynced at every evaluation, before the
//! checkpoint is written; on resume rows past the checkpoint are dropped, so
//! a killed and resumed run has each row once, as `metrics.csv` does.
//!
//! The event files get the same scalars under `train/` (at the same
//! iterations), every evaluation under `eval/`, and the probe's per-unit
//! norms under `probe/` (`probe/grad_norm/unit_007`, and the shortcut and
//! branch terms where the unit has them), at the probed iteration. A
//! resumed run writes a new file that tells TensorBoard to drop the old
//! file's steps past the checkpoint (see [`crate::io::tensorboard`]).

use super::config::TrainConfig;
use super::metrics::{retain_rows, MetricsRow};
use crate::error::{Error, Result};
use crate::io::tensorboard::EventWriter;
use crate::model::Net;
use crate::probe::FlowRow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STEPS_CSV: &str = "steps.csv";
pub const STEPS_HEADER: &str = "iter,loss,lr,grad_norm,images_per_s";

/// The per-step logs of one run.
pub struct StepLog {
    every: u64,
    csv: Option<(PathBuf, File)>,
    tb: Option<EventWriter>,
    /// since the last row: (loss sum, steps, images, compute seconds)
    window: (f64, u64, usize, f64),
}

/// Global L2 norm of all parameter gradients, accumulated in f64.
pub fn grad_norm(net: &mut Net<f32>) -> f64 {
    net.params_mut()
        .iter()
        .map(|p| crate::tensor::dot(&p.grad, &p.grad))
        .sum::<f64>()
        .sqrt()
}

impl StepLog {
    /// No logs (the ranks of a data-parallel run but rank 0).
    pub fn off() -> StepLog {
        StepLog {
            every: 0,
            csv: None,
            tb: None,
            window: (0.0, 0, 0, 0.0),
        }
    }

    /// Open the logs of the run in `dir`; `resumed_at`: the checkpoint's
    /// iteration when the run resumes (rows after it are dropped), `None`
    /// for a fresh run (an old `steps.csv` is removed).
    pub fn open(cfg: &TrainConfig, dir: &Path, resumed_at: Option<u64>) -> Result<StepLog> {
        let path = dir.join(STEPS_CSV);
        match resumed_at {
            Some(iter) => retain_rows(&path, STEPS_HEADER, |it| it <= iter)?,
            None if path.exists() => {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?
            }
            None => {}
        }
        let csv = if cfg.log_every > 0 {
            let fresh = !path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            if fresh {
                f.write_all(format!("{STEPS_HEADER}\n").as_bytes())
                    .map_err(|e| Error::io(&path, e))?;
            }
            Some((path, f))
        } else {
            None
        };
        let tb = match &cfg.tensorboard {
            Some(d) => Some(EventWriter::create(
                d,
                resumed_at.filter(|&i| i > 0).map(|i| i + 1),
            )?),
            None => None,
        };
        Ok(StepLog {
            every: cfg.log_every,
            csv,
            tb,
            window: (0.0, 0, 0, 0.0),
        })
    }

    /// After the step that completed iteration `iter` (1-based) with this
    /// `loss` at learning rate `lr` on `images` images in `secs` seconds;
    /// `probe`: that step's probe rows, if it was probed.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        iter: u64,
        loss: f64,
        lr: f64,
        net: &mut Net<f32>,
        images: usize,
        secs: f64,
        probe: Option<&[FlowRow]>,
    ) -> Result<()> {
        if let (Some(tb), Some(rows)) = (self.tb.as_mut(), probe) {
            let mut v = vec![];
            for r in rows {
                v.push((format!("probe/grad_norm/unit_{:03}", r.unit), r.grad_norm));
                if let Some(s) = r.shortcut_norm {
                    v.push((format!("probe/shortcut_norm/unit_{:03}", r.unit), s));
                }
                if let Some(b) = r.branch_norm {
                    v.push((format!("probe/branch_norm/unit_{:03}", r.unit), b));
                }
            }
            if let Some(r) = rows.first() {
                tb.scalars(r.iter, &v)?;
            }
        }
        if self.every == 0 {
            return Ok(());
        }
        let w = &mut self.window;
        w.0 += loss;
        w.1 += 1;
        w.2 += images;
        w.3 += secs;
        if !iter.is_multiple_of(self.every) {
            return Ok(());
        }
        let mean_loss = w.0 / w.1 as f64;
        let ips = w.2 as f64 / w.3.max(1e-9);
        self.window = (0.0, 0, 0, 0.0);
        let gn = grad_norm(net);
        if let Some((path, f)) = self.csv.as_mut() {
            let line = format!("{iter},{mean_loss:.6},{lr},{gn:.6e},{ips:.1}\n");
            f.write_all(line.as_bytes())
                .map_err(|e| Error::io(path.as_path(), e))?;
        }
        if let Some(tb) = self.tb.as_mut() {
            tb.scalars(
                iter,
                &[
                    ("train/loss".into(), mean_loss),
                    ("train/lr".into(), lr),
                    ("train/grad_norm".into(), gn),
                    ("train/images_per_s".into(), ips),
                ],
            )?;
        }
        Ok(())
    }

    /// At an evaluation, before the checkpoint: the evaluation goes to
    /// TensorBoard and both logs are fsynced (so every row up to the
    /// checkpoint is on disk when the checkpoint is).
    pub fn evaluation(&mut self, row: &MetricsRow) -> Result<()> {
        if let Some(tb) = self.tb.as_mut() {
            tb.scalars(
                row.iter,
                &[
                    ("eval/test_loss".into(), row.test_loss),
                    ("eval/test_acc".into(), row.test_acc),
                    ("eval/train_loss".into(), row.train_loss),
                    ("eval/train_acc".into(), row.train_acc),
                ],
            )?;
            tb.sync()?;
        }
        if let Some((path, f)) = self.csv.as_mut() {
            f.sync_data().map_err(|e| Error::io(path.as_path(), e))?;
        }
        Ok(())
    }
}

//! `steps.csv`: one row per training step (or every `log_every` steps):
//! the step's own training loss, learning rate, gradient norm and speed, so
//! a short run has curves and the logged training loss does not depend on
//! how often the run evaluates (`metrics.csv`'s `train_loss` is the mean
//! since the previous evaluation).
//!
//! ```text
//! iter,lr,loss,grad_norm,images_per_s
//! ```
//!
//! `iter` is the step's 0-based iteration (as in `flow.csv`); `loss` the
//! mean cross-entropy of its batch; `grad_norm` the L2 norm of the loss's
//! gradient over every parameter (before the SGD update; weight decay not
//! included); `images_per_s` the batch size over the step's compute time.
//! Rows are kept in memory and appended at each evaluation (before the
//! checkpoint), at divergence and at the end, so a step costs no write; a
//! resumed run drops the rows from its checkpoint's iteration on and
//! writes them again.

use super::metrics::append_lines;
use crate::error::Result;
use crate::model::Net;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The file name in the run directory.
pub const STEPS_CSV: &str = "steps.csv";
/// Its header.
pub const STEPS_HEADER: &str = "iter,lr,loss,grad_norm,images_per_s";

/// The L2 norm of every parameter's gradient, summed in f64.
pub fn grad_norm(net: &mut Net<f32>) -> f64 {
    net.params_mut()
        .iter()
        .flat_map(|p| p.grad.iter())
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt()
}

/// Rows waiting to be appended to `steps.csv`.
pub struct StepLog {
    path: PathBuf,
    every: u64,
    pending: String,
}

impl StepLog {
    /// Log every `every` steps (0: never) into `dir/steps.csv`.
    pub fn new(dir: &Path, every: u64) -> StepLog {
        StepLog {
            path: dir.join(STEPS_CSV),
            every,
            pending: String::new(),
        }
    }

    /// Whether step `iter` is logged.
    pub fn wants(&self, iter: u64) -> bool {
        self.every > 0 && iter.is_multiple_of(self.every)
    }

    /// Keep one row.
    pub fn push(&mut self, iter: u64, lr: f64, loss: f64, grad_norm: f64, images_per_s: f64) {
        let _ = writeln!(
            self.pending,
            "{iter},{lr},{loss:.6},{grad_norm:.6e},{images_per_s:.1}"
        );
    }

    /// Append the kept rows (one write, fsynced).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        append_lines(&self.path, STEPS_HEADER, &self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

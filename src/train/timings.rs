//! Where a training run's wall time goes: the step's passes against
//! everything around them (waiting for the loader's next batch, the
//! divergence check, the gradient-flow probe, the update, the per-step logs,
//! the evaluations, the checkpoints). Kept by [`super::run::train_run_on`]
//! for the steps this process ran (a resumed run counts from the resume),
//! written to `timings.json` in the run directory and summed up in one line
//! at the end of `resgrad train`, so the probe's and the logs' cost stays
//! visible.

use serde::Serialize;
use std::time::Instant;

/// `timings.json` in the run directory.
pub const TIMINGS_JSON: &str = "timings.json";

/// Seconds spent in each part of the loop, over `steps` steps.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LoopTimings {
    /// steps this process ran
    pub steps: u64,
    /// training images those steps took
    pub images: u64,
    /// wall time of the loop, from the first step to the last evaluation
    pub wall_s: f64,
    /// waiting for the loader's next batch (assembly and augmentation run
    /// on a background thread; this is what they did not hide)
    pub batch_wait_s: f64,
    /// forward and backward (with the gradient sums over the ranks)
    pub passes_s: f64,
    /// the divergence check: ||dL/dx_i|| at every unit boundary
    pub divergence_check_s: f64,
    /// the gradient-flow probe's rows (the norms themselves are taken in the
    /// probed backward, counted in `passes_s`) and their `flow.csv` lines
    pub probe_s: f64,
    /// the SGD update
    pub update_s: f64,
    /// progress display, `steps.csv` (with its gradient norm), TensorBoard
    pub logging_s: f64,
    /// the evaluations
    pub evaluation_s: f64,
    /// `metrics.csv`, the logs' fsync, the checkpoint, the ranks' weight
    /// comparison
    pub checkpoint_s: f64,
}

impl LoopTimings {
    /// Seconds since `t`, added to `slot`; returns now (the next part's start).
    pub fn lap(slot: &mut f64, t: Instant) -> Instant {
        let now = Instant::now();
        *slot += now.duration_since(t).as_secs_f64();
        now
    }

    /// The parts, labelled, in loop order.
    pub fn parts(&self) -> [(&'static str, f64); 8] {
        [
            ("batch wait", self.batch_wait_s),
            ("passes", self.passes_s),
            ("divergence check", self.divergence_check_s),
            ("probe", self.probe_s),
            ("update", self.update_s),
            ("logging", self.logging_s),
            ("evaluation", self.evaluation_s),
            ("checkpoint", self.checkpoint_s),
        ]
    }

    /// Images per second of the whole loop (evaluations included).
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.wall_s.max(1e-9)
    }

    /// Images per second of the passes alone (what `resgrad bench` measures,
    /// less the update).
    pub fn passes_images_per_s(&self) -> f64 {
        self.images as f64 / self.passes_s.max(1e-9)
    }

    /// One line: images/s end to end and of the passes, each part's share
    /// of the wall time.
    pub fn summary(&self) -> String {
        let share = |s: f64| 100.0 * s / self.wall_s.max(1e-9);
        let accounted: f64 = self.parts().iter().map(|p| p.1).sum();
        let mut line = format!(
            "{} steps in {:.1} s, {:.0} img/s end to end ({:.0} img/s in the passes):",
            self.steps,
            self.wall_s,
            self.images_per_s(),
            self.passes_images_per_s()
        );
        for (name, s) in self.parts() {
            line.push_str(&format!(" {name} {:.1}%,", share(s)));
        }
        line.push_str(&format!(
            " other {:.1}%",
            share((self.wall_s - accounted).max(0.0))
        ));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shares_add_up_to_the_wall_time() {
        let t = LoopTimings {
            steps: 10,
            images: 1280,
            wall_s: 2.0,
            batch_wait_s: 0.02,
            passes_s: 1.6,
            divergence_check_s: 0.04,
            probe_s: 0.0,
            update_s: 0.1,
            logging_s: 0.02,
            evaluation_s: 0.2,
            checkpoint_s: 0.0,
        };
        let s = t.summary();
        assert!(s.starts_with("10 steps in 2.0 s, 640 img/s end to end (800 img/s in the passes):"));
        assert!(s.contains(" passes 80.0%,"), "{s}");
        assert!(s.contains(" evaluation 10.0%,"), "{s}");
        assert!(s.ends_with(" other 1.0%"), "{s}");
    }

    #[test]
    fn lap_adds_the_elapsed_time() {
        let mut slot = 0.5;
        let t = Instant::now() - std::time::Duration::from_millis(20);
        let next = LoopTimings::lap(&mut slot, t);
        assert!(slot >= 0.52 && next >= t);
    }
}

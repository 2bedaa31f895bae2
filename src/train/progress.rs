//! Progress display: an indicatif bar on a terminal, plain periodic lines
//! otherwise (logs, CI, pipes).

use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: Instant,
    every: Duration,
    quiet: bool,
    label: String,
}

impl Progress {
    /// `quiet` shows nothing at all (tests, the demo's inner runs use their own).
    pub fn new(label: &str, total: u64, start: u64, quiet: bool) -> Self {
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {pos}/{len} it  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b.set_position(start);
            Some(b)
        } else {
            None
        };
        Progress {
            bar,
            total,
            last_line: Instant::now(),
            every: Duration::from_secs(10),
            quiet,
            label: label.to_string(),
        }
    }

    /// Update after iteration `iter` (1-based count of completed ones).
    /// A closed stdout is an error ([`crate::io::console`]).
    pub fn update(
        &mut self,
        iter: u64,
        epoch: f64,
        loss: f64,
        acc: f64,
        images_per_s: f64,
    ) -> Result<()> {
        let msg = format!(
            "epoch {epoch:.2}  loss {loss:.4}  acc {:.1}%  {images_per_s:.0} img/s",
            100.0 * acc
        );
        if let Some(b) = &self.bar {
            b.set_position(iter);
            b.set_message(msg);
        } else if !self.quiet && (self.last_line.elapsed() >= self.every || iter == self.total) {
            self.last_line = Instant::now();
            crate::outln!("{} iter {iter}/{}  {msg}", self.label, self.total)?;
        }
        Ok(())
    }

    /// A line that stays (evaluation results).
    pub fn println(&self, line: &str) -> Result<()> {
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => crate::outln!("{line}")?,
            None => {}
        }
        Ok(())
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

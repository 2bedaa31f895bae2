//! Learning-rate schedules: step milestones, cosine, constant; with an
//! optional warm-up (constant or linear) in front.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The main schedule, after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decay {
    /// constant learning rate
    Constant,
    /// multiply by `gamma` at each milestone iteration
    Step { milestones: Vec<u64>, gamma: f64 },
    /// cosine from the base rate at the end of warm-up to `min_lr` at `total`
    Cosine { total: u64, min_lr: f64 },
}

/// Warm-up over the first `iters` iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Warmup {
    None,
    /// a constant `lr` (He et al.: 0.01 for the first 400 iterations of ResNet-110)
    Constant {
        iters: u64,
        lr: f64,
    },
    /// linear from `start_factor * base` to `base`
    Linear {
        iters: u64,
        start_factor: f64,
    },
}

/// A complete schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub base_lr: f64,
    pub decay: Decay,
    pub warmup: Warmup,
}

impl Schedule {
    pub fn constant(lr: f64) -> Self {
        Schedule {
            base_lr: lr,
            decay: Decay::Constant,
            warmup: Warmup::None,
        }
    }

    /// He et al.'s CIFAR recipe: 0.1, 0.01 for the first 400 iterations,
    /// divided by 10 at 32k and 48k.
    pub fn paper() -> Self {
        Schedule {
            base_lr: 0.1,
            decay: Decay::Step {
                milestones: vec![32_000, 48_000],
                gamma: 0.1,
            },
            warmup: Warmup::Constant {
                iters: 400,
                lr: 0.01,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return bad(format!(
                "learning rate must be finite and > 0, got {}",
                self.base_lr
            ));
        }
        match &self.decay {
            Decay::Step { gamma, .. } if !(gamma.is_finite() && *gamma > 0.0) => {
                return bad(format!("step gamma must be > 0, got {gamma}"))
            }
            Decay::Cosine { min_lr, total }
                if !(min_lr.is_finite() && *min_lr >= 0.0) || *total == 0 =>
            {
                return bad("cosine needs total > 0 and min_lr >= 0".into())
            }
            _ => {}
        }
        match self.warmup {
            Warmup::Constant { lr, .. } if !(lr.is_finite() && lr > 0.0) => {
                bad(format!("warm-up lr must be > 0, got {lr}"))
            }
            Warmup::Linear { start_factor, .. }
                if !(start_factor.is_finite() && start_factor > 0.0) =>
            {
                bad(format!(
                    "warm-up start factor must be > 0, got {start_factor}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The schedule for a run `factor` times as long as the one it was
    /// written for: step milestones and the warm-up's length multiplied by
    /// `factor` and rounded (a warm-up that rounds to 0 iterations is
    /// dropped); the rates, and a cosine's total (set to the run's length
    /// elsewhere), are unchanged.
    pub fn scaled(&self, factor: f64) -> Schedule {
        let scale = |n: u64| (n as f64 * factor).round() as u64;
        let decay = match &self.decay {
            Decay::Step { milestones, gamma } => Decay::Step {
                milestones: milestones.iter().map(|&m| scale(m)).collect(),
                gamma: *gamma,
            },
            d => d.clone(),
        };
        let warmup = match self.warmup {
            Warmup::Constant { iters, .. } | Warmup::Linear { iters, .. } if scale(iters) == 0 => {
                Warmup::None
            }
            Warmup::Constant { iters, lr } => Warmup::Constant {
                iters: scale(iters),
                lr,
            },
            Warmup::Linear {
                iters,
                start_factor,
            } => Warmup::Linear {
                iters: scale(iters),
                start_factor,
            },
            Warmup::None => Warmup::None,
        };
        Schedule {
            base_lr: self.base_lr,
            decay,
            warmup,
        }
    }

    /// What of the schedule a run of `iters` iterations never reaches: a
    /// warm-up as long as the run (it trains at the warm-up rate
    /// throughout), step milestones at or after the end. One message each.
    pub fn beyond_run(&self, iters: u64) -> Vec<String> {
        let mut out = Vec::new();
        let warm = match self.warmup {
            Warmup::Constant { iters, .. } | Warmup::Linear { iters, .. } => iters,
            Warmup::None => 0,
        };
        if warm > 0 && warm >= iters {
            out.push(format!(
                "the {warm}-iteration warm-up covers the whole {iters}-iteration run: it trains at the warm-up rate (lr {}) throughout",
                self.lr_at(0)
            ));
        }
        if let Decay::Step { milestones, .. } = &self.decay {
            let late: Vec<String> = milestones
                .iter()
                .filter(|&&m| m >= iters)
                .map(u64::to_string)
                .collect();
            if !late.is_empty() {
                out.push(format!(
                    "the step milestone{} {} lie{} at or beyond the run's end ({iters} iterations): the learning rate is never divided there",
                    if late.len() == 1 { "" } else { "s" },
                    late.join(", "),
                    if late.len() == 1 { "s" } else { "" },
                ));
            }
        }
        out
    }

    /// Learning rate for (0-based) iteration `iter`.
    pub fn lr_at(&self, iter: u64) -> f64 {
        match self.warmup {
            Warmup::Constant { iters, lr } if iter < iters => return lr,
            Warmup::Linear {
                iters,
                start_factor,
            } if iter < iters => {
                let t = iter as f64 / iters as f64;
                return self.base_lr * (start_factor + (1.0 - start_factor) * t);
            }
            _ => {}
        }
        match &self.decay {
            Decay::Constant => self.base_lr,
            Decay::Step { milestones, gamma } => {
                let k = milestones.iter().filter(|&&m| iter >= m).count() as i32;
                self.base_lr * gamma.powi(k)
            }
            Decay::Cosine { total, min_lr } => {
                let start = match self.warmup {
                    Warmup::Constant { iters, .. } | Warmup::Linear { iters, .. } => iters,
                    Warmup::None => 0,
                };
                let span = total.saturating_sub(start).max(1) as f64;
                let t = ((iter.saturating_sub(start)) as f64 / span).min(1.0);
                min_lr + 0.5 * (self.base_lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_schedule() {
        let s = Schedule::paper();
        assert_eq!(s.lr_at(0), 0.01);
        assert_eq!(s.lr_at(399), 0.01);
        assert_eq!(s.lr_at(400), 0.1);
        assert_eq!(s.lr_at(31_999), 0.1);
        assert!((s.lr_at(32_000) - 0.01).abs() < 1e-15);
        assert!((s.lr_at(48_000) - 0.001).abs() < 1e-15);
    }

    #[test]
    fn paper_schedule_scaled_to_a_short_run() {
        // 300 of the paper's 64k iterations
        let s = Schedule::paper().scaled(300.0 / 64_000.0);
        assert_eq!(s.warmup, Warmup::Constant { iters: 2, lr: 0.01 });
        assert_eq!(
            s.decay,
            Decay::Step {
                milestones: vec![150, 225],
                gamma: 0.1
            }
        );
        assert_eq!((s.lr_at(1), s.lr_at(2)), (0.01, 0.1));
        assert!(s.beyond_run(300).is_empty());
        // a warm-up that rounds to nothing is dropped
        assert_eq!(Schedule::paper().scaled(1e-4).warmup, Warmup::None);
        assert_eq!(Schedule::paper().scaled(1.0), Schedule::paper());
    }

    #[test]
    fn warns_about_what_a_short_run_never_reaches() {
        let w = Schedule::paper().beyond_run(300);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("400-iteration warm-up covers the whole 300-iteration run"));
        assert!(w[0].contains("lr 0.01"));
        assert!(w[1].contains("milestones 32000, 48000 lie at or beyond"));
        let w = Schedule::paper().beyond_run(40_000);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("milestone 48000 lies"), "{w:?}");
        assert!(Schedule::paper().beyond_run(64_000).is_empty());
        assert!(Schedule::constant(0.1).beyond_run(1).is_empty());
    }

    #[test]
    fn cosine_and_linear_warmup() {
        let s = Schedule {
            base_lr: 1.0,
            decay: Decay::Cosine {
                total: 110,
                min_lr: 0.0,
            },
            warmup: Warmup::Linear {
                iters: 10,
                start_factor: 0.1,
            },
        };
        assert!((s.lr_at(0) - 0.1).abs() < 1e-15);
        assert!((s.lr_at(5) - 0.55).abs() < 1e-15);
        assert_eq!(s.lr_at(10), 1.0);
        assert!((s.lr_at(60) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(110).abs() < 1e-15);
        assert!(s.validate().is_ok());
        assert!(Schedule::constant(-1.0).validate().is_err());
    }
}

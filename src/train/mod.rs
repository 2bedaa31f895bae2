//! Training: data and config, optimiser, learning-rate schedules, the loop,
//! checkpoints, metrics and progress.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod flow;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod steplog;
pub mod timings;

pub use config::{DataSource, TrainConfig};
pub use run::{train_run, train_run_on, RunOutcome};

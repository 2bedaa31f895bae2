//! Subcommands of the `resgrad` binary.

use clap::{Parser, Subcommand};
use resgrad::Result;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "resgrad", version, about = "Train deep residual networks with hand-derived gradients, and watch the gradients flow")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The main job: train several residual variants on the built-in data and
    /// compare how their gradients flow.
    Demo,
    /// The seed derivation, evaluated: how dL/dx5 flows back through the
    /// shortcuts and branches of a tiny 4-layer residual net, term by term,
    /// post-activation vs pre-activation vs a scaled shortcut. Exits 1 if
    /// any identity it states fails.
    Derive {
        /// Seed of the weights, labels and input (14: every term of row 0 is non-zero).
        #[arg(long, default_value_t = 14)]
        seed: u64,
        /// Also write everything (weights, every term, every check) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Batch size N (1..=16).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Hidden width d (1..=32).
        #[arg(long, default_value_t = 4)]
        width: usize,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo => {
            println!("resgrad demo: the training job is not built yet (see the open training issue).");
            Ok(())
        }
        Cmd::Derive {
            seed,
            json,
            batch,
            width,
        } => {
            let cfg = resgrad::derive::DeriveConfig { seed, batch, width };
            resgrad::derive::run(&cfg, json.as_deref())
        }
    }
}

//! Subcommands of the `resgrad` binary.

use clap::{Parser, Subcommand};
use resgrad::Result;

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
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo => {
            println!("resgrad demo: the training job is not built yet (see the open training issue).");
            Ok(())
        }
    }
}

//! Subcommands of the `resgrad` binary.

use std::path::PathBuf;

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
    /// Build a report (PNG/SVG plots and a self-contained index.html) from
    /// training run directories.
    Report {
        /// Run directories (each with config.json, metrics.csv, flow.csv and
        /// optionally summary.json).
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// Directory to write the report into (created if missing).
        #[arg(long, value_name = "REPORT_DIR")]
        out: PathBuf,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo => {
            println!("resgrad demo: the training job is not built yet (see the open training issue).");
            Ok(())
        }
        Cmd::Report { runs, out } => {
            let s = resgrad::report::report(&runs, &out)?;
            for r in &s.runs {
                let verdict = r.verdict.as_deref().unwrap_or("no summary");
                println!("{:<24} {verdict}", r.label);
            }
            println!("wrote {} files; open {}", s.files.len(), s.index.display());
            Ok(())
        }
    }
}

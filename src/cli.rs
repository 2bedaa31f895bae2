//! Subcommands of the `resgrad` binary.

use clap::{Parser, Subcommand};
use resgrad::io::safetensors::SafeTensors;
use resgrad::model::Spec;
use resgrad::Result;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "resgrad",
    version,
    about = "Train deep residual networks with hand-derived gradients, and watch the gradients flow"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The main job: train several residual variants on the built-in data and
    /// compare how their gradients flow.
    Demo,
    /// One training-mode forward/backward; writes logits, loss, grad.<param>
    /// and dx.<i> (the PyTorch reference's fixture keys) as safetensors.
    Grads {
        /// model spec (JSON)
        #[arg(long)]
        spec: PathBuf,
        /// weights under the reference's state-dict names (safetensors)
        #[arg(long)]
        weights: PathBuf,
        /// tensors `input` and `labels` (safetensors; a fixture serves as both)
        #[arg(long)]
        input: PathBuf,
        /// output file (safetensors)
        #[arg(long)]
        out: PathBuf,
        /// compute in f64 instead of f32
        #[arg(long)]
        f64: bool,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Demo => {
            println!(
                "resgrad demo: the training job is not built yet (see the open training issue)."
            );
            Ok(())
        }
        Cmd::Grads {
            spec,
            weights,
            input,
            out,
            f64,
        } => {
            let spec = Spec::from_file(&spec)?;
            let w = SafeTensors::read(&weights)?;
            let x = if input == weights {
                None
            } else {
                Some(SafeTensors::read(&input)?)
            };
            let x = x.as_ref().unwrap_or(&w);
            let g = if f64 {
                resgrad::grads::compute_grads::<f64>(&spec, &w, x)?
            } else {
                resgrad::grads::compute_grads::<f32>(&spec, &w, x)?
            };
            g.write_atomic(&out)?;
            let loss = g.get_f64("loss")?.1[0];
            println!(
                "wrote {} tensors to {} (loss {loss:.6})",
                g.tensors.len(),
                out.display()
            );
            Ok(())
        }
    }
}

//! The `resgrad` command line: a thin layer over the library.

use clap::{CommandFactory, FromArgMatches};
use resgrad::Error;

mod cli;

/// Activation planes on cache lines (see `resgrad::align`).
#[global_allocator]
static ALLOC: resgrad::align::LineAligned = resgrad::align::LineAligned;

fn main() {
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = cli::run(args, &matches) {
        // a closed pipe ends the command quietly (exit 141); the message of
        // any other error is best effort: stderr may be what failed
        if !matches!(e, Error::OutputClosed { .. }) {
            let _ = resgrad::errln!("error: {e}");
        }
        std::process::exit(e.exit_code());
    }
}

//! The one way resgrad writes to the terminal: [`outln!`](crate::outln) and
//! [`errln!`](crate::errln) (and [`out`] / [`err`] under them).
//!
//! `println!` panics when its write fails (Rust ignores SIGPIPE, so a
//! closed pipe is an `EPIPE` error, and `println!` turns every error into a
//! panic: exit 101). Here a write error is an [`Error`]: a closed pipe
//! (`resgrad report ... | head -1`) is [`Error::OutputClosed`], which the
//! binary turns into a quiet exit with code 141 (128 + SIGPIPE: what the
//! shell reports for C tools such as `cat` stopped by the closed pipe; a
//! run that was cut short this way never claims success with 0); any
//! other write error (`>/dev/full`) is [`Error::Io`] naming the stream,
//! exit code 2. Both travel up through `?`, so lock files are released and
//! a run's checkpoint stays as it was.

use crate::error::{Error, Result};
use std::io::Write;

fn map(stream: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Error::OutputClosed { stream }
    } else {
        Error::io(stream, e)
    }
}

/// Write `args` to standard output and flush.
pub fn out(args: std::fmt::Arguments<'_>) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)
        .and_then(|_| o.flush())
        .map_err(|e| map("standard output", e))
}

/// Write `args` to standard error.
pub fn err(args: std::fmt::Arguments<'_>) -> Result<()> {
    std::io::stderr()
        .lock()
        .write_fmt(args)
        .map_err(|e| map("standard error", e))
}

/// `println!` that returns a [`Result`](crate::Result) instead of panicking
/// (see [`crate::io::console`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::io::console::out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::io::console::out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprintln!` that returns a [`Result`](crate::Result) instead of panicking.
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::io::console::err(format_args!("{}\n", format_args!($($t)*))) };
}

//! One error type for the whole crate (candle style): structured variants
//! that name the operation and the shapes involved, and a `Result` alias.

use std::path::PathBuf;

/// Everything that can go wrong in resgrad. Library code returns these and
/// never panics on bad input; the CLI maps them to exit codes
/// (`Error::exit_code`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A buffer or tensor does not have the shape an operation needs.
    #[error("{op}: {what} has shape {got:?}, expected {expected:?}")]
    Shape {
        op: &'static str,
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A layer or operation parameter is out of its valid range.
    #[error("{op}: invalid parameter: {msg}")]
    InvalidParam { op: &'static str, msg: String },
    /// The model spec (JSON/TOML) is malformed or inconsistent.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A configuration value (CLI flag, config file) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what its format promises.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A checkpoint / weights file does not fit the model.
    #[error("weights: {0}")]
    Weights(String),
    /// Training stopped because the loss or a gradient stopped being usable.
    /// This is a result, not a bug: the CLI exits with code 3.
    #[error("training diverged at iteration {iter}: {msg}")]
    Diverged { iter: u64, msg: String },
    /// A numerical identity that a command promises did not hold.
    #[error("check failed: {0}")]
    Check(String),
    /// An external program resgrad hands work to (Slurm's `sbatch`,
    /// `squeue`, ...) is missing or refused: its own message.
    #[error("{program}: {msg}")]
    External { program: String, msg: String },
    /// Standard output or error is a closed pipe (`resgrad report ... |
    /// head -1`): the command ends quietly, as Unix tools do, with exit
    /// code 141 (128 + SIGPIPE, what the shell reports for `cat`, `seq`...).
    #[error("{stream} is a closed pipe")]
    OutputClosed { stream: &'static str },
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP): exit code 128 + signal.
    #[error("stopped by signal {signal} ({name})")]
    Interrupted { signal: i32, name: &'static str },
}

/// `Result` with resgrad's error.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Process exit code for this error: 3 for divergence, 1 for a failed
    /// numerical check, 141 for a closed output pipe, 128 + the signal for
    /// a stop by signal, 2 for every kind of bad input.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Diverged { .. } => 3,
            Error::Check(_) => 1,
            Error::OutputClosed { .. } => 141,
            Error::Interrupted { signal, .. } => 128 + signal,
            _ => 2,
        }
    }

    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Return early with an error (like `anyhow::bail!`).
#[macro_export]
macro_rules! bail {
    ($e:expr) => {
        return Err($e.into())
    };
}

/// Check that a buffer holds exactly `prod(dims)` elements.
pub fn check_len<T>(op: &'static str, what: &'static str, buf: &[T], dims: &[usize]) -> Result<()> {
    let want: usize = dims.iter().product();
    if buf.len() != want {
        return Err(Error::Shape {
            op,
            what,
            expected: dims.to_vec(),
            got: vec![buf.len()],
        });
    }
    Ok(())
}

/// Check that a size parameter is non-zero.
pub fn check_nonzero(op: &'static str, name: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::InvalidParam {
            op,
            msg: format!("{name} must be at least 1, got 0"),
        });
    }
    Ok(())
}

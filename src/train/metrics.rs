//! `metrics.csv` and `flow.csv`: append-only CSV files whose rows are
//! written whole (one `write` of a complete line, then fsync), so a killed
//! run leaves only complete rows; on resume, rows past the checkpoint are
//! dropped (the file is rewritten atomically).

use crate::error::{Error, Result};
use crate::io::write_atomic;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_HEADER: &str =
    "iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s";
pub const FLOW_CSV: &str = "flow.csv";

/// One evaluation point.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MetricsRow {
    pub iter: u64,
    pub epoch: f64,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub images_per_s: f64,
    pub wall_s: f64,
}

impl MetricsRow {
    pub fn csv_line(&self) -> String {
        format!(
            "{},{:.4},{},{:.6},{:.6},{:.6},{:.6},{:.1},{:.3}\n",
            self.iter,
            self.epoch,
            self.lr,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_acc,
            self.images_per_s,
            self.wall_s
        )
    }
}

impl MetricsRow {
    /// Parse one data line of `metrics.csv` (the inverse of [`csv_line`],
    /// up to its rounding); `None` if it is not nine numbers.
    ///
    /// [`csv_line`]: MetricsRow::csv_line
    pub fn parse_csv_line(line: &str) -> Option<MetricsRow> {
        let f: Vec<&str> = line.trim_end().split(',').collect();
        if f.len() != 9 {
            return None;
        }
        let x = |i: usize| f[i].trim().parse::<f64>().ok();
        Some(MetricsRow {
            iter: f[0].trim().parse().ok()?,
            epoch: x(1)?,
            lr: x(2)?,
            train_loss: x(3)?,
            train_acc: x(4)?,
            test_loss: x(5)?,
            test_acc: x(6)?,
            images_per_s: x(7)?,
            wall_s: x(8)?,
        })
    }
}

/// The last complete row of a `metrics.csv`, if the file exists and has one.
pub fn last_row(path: &Path) -> Result<Option<MetricsRow>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::io::read::read_text(path)?;
    Ok(text
        .split_inclusive('\n')
        .skip(1)
        .filter(|l| l.ends_with('\n'))
        .filter_map(MetricsRow::parse_csv_line)
        .last())
}

/// Append complete lines to `path` (created with `header` if absent or
/// empty). A file whose last line is torn (no final newline: not one
/// resgrad wrote whole) is refused, not appended to: the new row would be
/// glued to the torn one. Resuming repairs it first ([`retain_rows`]).
pub fn append_lines(path: &Path, header: &str, lines: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > 0 {
        let mut last = [0u8];
        f.seek(SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(|e| Error::io(path, e))?;
        if last[0] != b'\n' {
            return Err(Error::Format {
                path: path.into(),
                msg: "the last line is torn (no final newline); not appending to it (resuming the run repairs it)".into(),
            });
        }
    }
    let mut buf = String::new();
    if len == 0 {
        buf.push_str(header);
        buf.push('\n');
    }
    buf.push_str(lines);
    f.write_all(buf.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Keep the header and the rows whose first column (the iteration)
/// satisfies `keep`, drop a torn last line (a write cut by a kill), and
/// rewrite atomically. The first line must be `header` (a torn or empty
/// file is repaired to the header alone); a file that starts with
/// anything else is refused with a message, not rewritten.
pub fn retain_rows(path: &Path, header: &str, keep: impl Fn(u64) -> bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = crate::io::read::read_text(path)?;
    let mut out = String::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break; // torn write
        }
        if i == 0 {
            if line.trim_end() != header {
                return Err(Error::Format {
                    path: path.into(),
                    msg: format!(
                        "the first line is not the header {header:?} (a missing header, or another file); not resuming into it: move it away to start the log afresh"
                    ),
                });
            }
            out.push_str(line);
            continue;
        }
        let keep = line
            .split(',')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(&keep);
        if keep {
            out.push_str(line);
        }
    }
    if out.is_empty() {
        out = format!("{header}\n");
    }
    write_atomic(path, out.as_bytes())
}

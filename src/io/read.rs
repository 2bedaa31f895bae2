//! Reading whole files, safely: a path that is not a regular file (a FIFO
//! would block forever, `/dev/zero` never ends) is refused at once, and a
//! file larger than the memory limit ([`crate::limits`]) is refused before
//! it is read, instead of an allocation failure (an abort).

use crate::error::{Error, Result};
use std::path::Path;

/// The length of the regular file at `path` (symlinks followed); an error
/// naming the path for a FIFO, device or socket. A directory is left to
/// the read itself, which says "Is a directory".
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !m.is_file() && !m.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a FIFO, device or socket): resgrad reads its inputs from regular files",
            ),
        ));
    }
    if m.is_file() {
        crate::limits::check_bytes(&format!("reading {}", path.display()), m.len() as f64)?;
    }
    Ok(m.len())
}

/// Read a whole regular file (see [`regular_file_len`]).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    regular_file_len(path)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Read a whole regular file as UTF-8 text (see [`regular_file_len`]).
pub fn read_text(path: &Path) -> Result<String> {
    regular_file_len(path)?;
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

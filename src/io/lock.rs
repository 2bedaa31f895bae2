//! One owner per directory: a run directory (`resgrad train`) or a sweep's
//! output directory is locked while a process works in it.
//!
//! The lock is `.resgrad.lock` in the directory, holding the owner's pid,
//! with an exclusive `flock` on it (`File::try_lock`). The kernel drops the
//! `flock` when its process ends in any way (an error, SIGKILL, a crash),
//! so the lock of a dead process is stale by construction and the next
//! process takes it over (and writes its own pid); the file itself stays.
//! A second process gets an error naming the owner's pid (exit 2). On a
//! file system that has no `flock` (ENOLCK, some network mounts) the
//! directory is used unlocked.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// File name of the lock inside the directory.
pub const LOCK_FILE: &str = ".resgrad.lock";

/// A held lock; released when dropped (and when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Lock `dir` (which must exist) for this process; `what` says what
    /// the directory is in the error ("run directory", "sweep directory").
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        Self::acquire_within(dir, what, std::time::Duration::ZERO)
    }

    /// As [`DirLock::acquire`], but a lock held by another process is
    /// waited for, polled every 200 ms, for up to `patience` before the
    /// error: a requeued Slurm task can start while the process of its
    /// previous attempt is still exiting.
    pub fn acquire_within(
        dir: &Path,
        what: &str,
        patience: std::time::Duration,
    ) -> Result<DirLock> {
        let until = std::time::Instant::now() + patience;
        loop {
            match Self::try_acquire(dir, what) {
                Err(Busy(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(Busy(e)) => return Err(e),
                Err(Failed(e)) => return Err(e),
                Ok(l) => return Ok(l),
            }
        }
    }

    fn try_acquire(dir: &Path, what: &str) -> std::result::Result<DirLock, NotLocked> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Failed(Error::io(&path, e)))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let owner = if pid.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {pid}")
                };
                return Err(Busy(Error::Config(format!(
                    "{what} {} is in use by {owner} (lock {}); wait for it to finish or stop it",
                    dir.display(),
                    path.display()
                ))));
            }
            // a file system without flock (some network mounts): the run
            // goes on unlocked rather than not at all
            Err(std::fs::TryLockError::Error(e))
                if e.kind() == std::io::ErrorKind::Unsupported || e.raw_os_error() == Some(37) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(Failed(Error::io(&path, e))),
        }
        // ours now (a stale lock of a dead process is taken over): our pid
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_data()
        };
        write(&mut file).map_err(|e| Failed(Error::io(&path, e)))?;
        Ok(DirLock { _file: file, path })
    }
}

/// Why a lock was not taken: another process holds it, or the lock file
/// could not be used.
enum NotLocked {
    Busy(Error),
    Failed(Error),
}
use NotLocked::{Busy, Failed};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::TempDir;

    #[test]
    fn second_lock_names_the_owner_and_release_frees_it() {
        let d = TempDir::new("lock");
        let a = DirLock::acquire(&d.0, "run directory").unwrap();
        let e = DirLock::acquire(&d.0, "run directory")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("in use by process {}", std::process::id())),
            "{e}"
        );
        drop(a);
        let _b = DirLock::acquire(&d.0, "run directory").unwrap();
    }

    #[test]
    fn a_held_lock_is_waited_for() {
        let d = TempDir::new("lock-wait");
        let a = DirLock::acquire(&d.0, "run directory").unwrap();
        let dir = d.0.clone();
        let t0 = std::time::Instant::now();
        let waiter = std::thread::spawn(move || {
            DirLock::acquire_within(&dir, "run directory", std::time::Duration::from_secs(30))
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(a);
        assert!(waiter.join().unwrap().is_ok());
        let waited = t0.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(500),
            "{waited:?}"
        );
        // without patience, or past it: the error names the owner
        let _b = DirLock::acquire(&d.0, "run directory").unwrap();
        let e =
            DirLock::acquire_within(&d.0, "run directory", std::time::Duration::from_millis(300))
                .unwrap_err()
                .to_string();
        assert!(e.contains("is in use by process"), "{e}");
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let d = TempDir::new("lock-stale");
        std::fs::write(d.0.join(LOCK_FILE), "4294967294\n").unwrap();
        let l = DirLock::acquire(&d.0, "run directory").unwrap();
        let pid = std::fs::read_to_string(&l.path).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}

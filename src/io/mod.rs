//! File I/O: the safetensors format (weights, checkpoints, PyTorch parity
//! fixtures), TensorBoard event files and the one way resgrad writes any
//! file, [`write_atomic`] (logs that grow, `metrics.csv` and the event
//! files, are appended whole records at a time instead).

pub mod console;
pub mod lock;
pub mod read;
pub mod safetensors;
pub mod tensorboard;

pub use self::safetensors::{Dtype, NamedTensor, SafeTensors};

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: readers see either the old file or
/// the complete new one, never a torn write.
///
/// The bytes go to a fresh temporary file in the same directory
/// (`.<name>.tmp.<pid>.<n>`), which is fsynced and then renamed over `path`;
/// finally the directory is fsynced (on Unix) so the rename itself is
/// durable. On failure the temporary file is removed and the error names the
/// path concerned. Every file resgrad writes goes through here.
///
/// A symlink at `path` is followed: the file it points to is replaced and
/// the link kept. A target that exists but is not a regular file (a
/// directory, a device such as `/dev/full`, a FIFO) is refused with an error
/// instead of being replaced by the rename. A failed write (a full disk)
/// leaves the old file untouched and reports `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let resolved;
    let path = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
            Ok(p) => {
                resolved = p;
                resolved.as_path()
            }
            // a dangling link: the rename replaces the link itself
            Err(_) => path,
        },
        _ => path,
    };
    if let Ok(m) = fs::metadata(path) {
        if !m.is_file() {
            let what = if m.is_dir() {
                "a directory"
            } else {
                "not a regular file (a device, FIFO or socket)"
            };
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("cannot write here: the target is {what}; resgrad writes whole files (temporary file, then rename)"),
                ),
            ));
        }
    }
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let dir: PathBuf = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        // name the file the caller asked for (the temporary is gone)
        return Err(Error::io(
            path,
            std::io::Error::new(
                e.kind(),
                format!("{e} (while writing the temporary {})", tmp.display()),
            ),
        ));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(&dir)
}

/// Check a name that becomes a directory under an output directory (a
/// grid's `name`, a run's name): not empty, not `.` or `..`, no path
/// separator and no control character, so it cannot leave the directory
/// it is joined to. `what` names it in the error.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is a relative directory (. or ..)")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator (/ or \\)")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Config(format!(
            "{what} {name:?} {why}: it names a directory inside the output directory"
        ))),
        None => Ok(()),
    }
}

/// A run's name as one directory name: every character outside
/// `[A-Za-z0-9._+=-]` (a space, a `/`, a control character) becomes `_`,
/// and a name of dots only gets a leading `_`, so the result never leaves
/// the directory it is joined to.
pub fn dir_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        format!("_{s}")
    } else {
        s
    }
}

/// Remove the temporary files that [`write_atomic`] left in `dir` when its
/// process was killed mid-write (`.<name>.tmp.<pid>.<n>` whose process no
/// longer runs; checked through `/proc`, so only on systems that have it).
/// Returns how many were removed. Errors are ignored: this is tidying.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        // .<name>.tmp.<pid>.<n>
        let mut parts = name.rsplitn(3, '.');
        let (Some(n), Some(pid), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !rest.ends_with(".tmp") || n.parse::<u64>().is_err() || pid == me {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// fsync a directory so a rename inside it is durable (Unix only; a no-op
/// elsewhere). File systems that cannot fsync a directory are tolerated.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let r = fs::File::open(dir).and_then(|d| d.sync_all());
        match r {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
                ) => {}
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh, empty directory under the system temp dir (removed on drop).
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "resgrad-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::TempDir;
    use super::*;

    #[test]
    fn names_cannot_leave_their_directory() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "/abs",
            "a\\b",
            "tab\there",
            "nl\n",
        ] {
            assert!(check_name("grid name", bad).is_err(), "{bad:?}");
        }
        check_name("grid name", "table1-small").unwrap();
        assert_eq!(
            dir_name("mlp-4 full_preact scale 0.5/0.5"),
            "mlp-4_full_preact_scale_0.5_0.5"
        );
        assert_eq!(dir_name(".."), "_..");
        assert_eq!(dir_name(""), "_");
        assert_eq!(dir_name("a\u{7}/../b"), "a__.._b");
    }

    #[test]
    fn write_atomic_creates_and_replaces() {
        let d = TempDir::new("atomic");
        let p = d.0.join("out.bin");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        // no temporary files left behind
        let names: Vec<_> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = TempDir::new("stale");
        // pid 0 never names a user process; our own pid is kept
        let dead = d.0.join(".checkpoint.safetensors.tmp.4294967294.3");
        let mine = d.0.join(format!(".x.tmp.{}.0", std::process::id()));
        let other = d.0.join(".notes.tmp");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        if Path::new("/proc/self").exists() {
            assert_eq!(remove_stale_temporaries(&d.0), 1);
            assert!(!dead.exists());
        }
        assert!(mine.exists() && other.exists());
    }

    #[test]
    fn write_atomic_refuses_non_regular_targets_and_follows_links() {
        let d = TempDir::new("atomic-kind");
        let e = write_atomic(&d.0, b"x").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let link = d.0.join("full");
            std::os::unix::fs::symlink("/dev/full", &link).unwrap();
            let e = write_atomic(&link, b"x").unwrap_err().to_string();
            assert!(
                e.contains("/dev/full") && e.contains("not a regular file"),
                "{e}"
            );
            assert!(fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            let real = d.0.join("real");
            fs::write(&real, b"old").unwrap();
            let link2 = d.0.join("link");
            std::os::unix::fs::symlink(&real, &link2).unwrap();
            write_atomic(&link2, b"new").unwrap();
            assert_eq!(fs::read(&real).unwrap(), b"new");
            assert!(fs::symlink_metadata(&link2)
                .unwrap()
                .file_type()
                .is_symlink());
        }
    }

    #[test]
    fn write_atomic_errors_name_the_path() {
        let d = TempDir::new("atomic-err");
        let p = d.0.join("no-such-dir").join("out.bin");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        // a directory as the target: the rename fails, the temp file is gone
        let target = d.0.join("target");
        fs::create_dir(&target).unwrap();
        let e = write_atomic(&target, b"x").unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("target"), "{e}");
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1);
    }
}

//! `resgrad data download cifar10|cifar100|mnist --dir D`: fetch the
//! official files over HTTPS, verify their MD5 checksums, unpack.
//!
//! Everything is written atomically: a file is downloaded to a hidden
//! temporary name in `D`, verified, and only then renamed into place; a
//! CIFAR archive is unpacked into a hidden temporary folder that is renamed
//! to its final name once complete. On any error (network, checksum,
//! archive) the temporaries are removed, so no partial file is left behind.
//!
//! Checksums: CIFAR-10/100 MD5s are the ones published on the CIFAR page
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>). The MNIST MD5s are those
//! of the gzipped IDX files as torchvision's `MNIST.resources` lists them
//! for the `ossci-datasets` mirror (LeCun's site no longer serves them
//! reliably).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::{Error, Result};

/// Which data set to download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Cifar10,
    Cifar100,
    Mnist,
}

impl FromStr for DataKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<DataKind> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "cifar10" => Ok(DataKind::Cifar10),
            "cifar100" => Ok(DataKind::Cifar100),
            "mnist" => Ok(DataKind::Mnist),
            _ => Err(Error::Config(format!(
                "unknown data set {s:?} (expected cifar10, cifar100 or mnist)"
            ))),
        }
    }
}

/// A file to fetch: its name under the base URL and its expected MD5 (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub md5: String,
}

impl DataKind {
    /// Where the official files live.
    pub fn default_base_url(self) -> &'static str {
        match self {
            DataKind::Cifar10 | DataKind::Cifar100 => "https://www.cs.toronto.edu/~kriz/",
            DataKind::Mnist => "https://ossci-datasets.s3.amazonaws.com/mnist/",
        }
    }

    /// The folder (inside the download directory) that the CIFAR archive
    /// unpacks to; `None` for MNIST, whose files land in the directory itself.
    fn subdir(self) -> Option<&'static str> {
        match self {
            DataKind::Cifar10 => Some("cifar-10-batches-bin"),
            DataKind::Cifar100 => Some("cifar-100-binary"),
            DataKind::Mnist => None,
        }
    }

    /// Files an unpacked CIFAR folder must hold.
    fn required(self) -> &'static [&'static str] {
        match self {
            DataKind::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ],
            DataKind::Cifar100 => &["train.bin", "test.bin"],
            DataKind::Mnist => &[],
        }
    }
}

/// The official files of `kind` with their published MD5 checksums.
pub fn remote_files(kind: DataKind) -> Vec<RemoteFile> {
    let f = |name: &str, md5: &str| RemoteFile {
        name: name.into(),
        md5: md5.into(),
    };
    match kind {
        DataKind::Cifar10 => vec![f(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
        )],
        DataKind::Cifar100 => vec![f(
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        )],
        DataKind::Mnist => vec![
            f(
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            f(
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            f(
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            f(
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ],
    }
}

/// Download `kind` into `dir` (created if needed) from `base_url` (default:
/// the official location), verify the published checksums and unpack.
/// Returns the path to hand to the matching reader (`read_cifar10`,
/// `read_cifar100`, `read_mnist`). Files already in place are not fetched
/// again (MNIST files are re-verified).
pub fn download(kind: DataKind, dir: &Path, base_url: Option<&str>) -> Result<PathBuf> {
    download_files(kind, dir, base_url, &remote_files(kind))
}

/// [`download`] with explicit file names and checksums (for mirrors and tests).
pub fn download_files(
    kind: DataKind,
    dir: &Path,
    base_url: Option<&str>,
    files: &[RemoteFile],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let base = base_url.unwrap_or(kind.default_base_url());
    let base = base.trim_end_matches('/');
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build();
    match kind.subdir() {
        None => {
            for f in files {
                let dest = dir.join(&f.name);
                if dest.is_file() && md5_file(&dest)? == f.md5.to_ascii_lowercase() {
                    continue;
                }
                let tmp = fetch_verified(&agent, &format!("{base}/{}", f.name), dir, f)?;
                tmp.persist(&dest)?;
            }
            Ok(dir.to_path_buf())
        }
        Some(sub) => {
            let out = dir.join(sub);
            if kind.required().iter().all(|r| out.join(r).is_file()) {
                return Ok(out);
            }
            let f = files
                .first()
                .ok_or_else(|| Error::Config(format!("download {kind:?}: no archive to fetch")))?;
            let archive = fetch_verified(&agent, &format!("{base}/{}", f.name), dir, f)?;
            let staged = TempPath::new(dir, sub, true)?;
            unpack_cifar(&archive.path, sub, &staged.path)?;
            for r in kind.required() {
                if !staged.path.join(r).is_file() {
                    return Err(Error::Format {
                        path: dir.join(&f.name),
                        msg: format!("archive has no member {sub}/{r}"),
                    });
                }
            }
            if out.exists() {
                // an incomplete earlier unpacking of ours
                std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            }
            staged.persist(&out)?;
            Ok(out)
            // `archive` (the verified .tar.gz temp) is removed on drop.
        }
    }
}

/// A temporary file or folder in the target directory, removed on drop
/// unless persisted.
struct TempPath {
    path: PathBuf,
    is_dir: bool,
    keep: bool,
}

impl TempPath {
    fn new(dir: &Path, name: &str, is_dir: bool) -> Result<TempPath> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(".{name}.part-{}-{nanos}", std::process::id()));
        if is_dir {
            std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(TempPath {
            path,
            is_dir,
            keep: false,
        })
    }

    fn persist(mut self, dest: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.keep = true;
        // make the rename durable (as `write_atomic` does)
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = if self.is_dir {
                std::fs::remove_dir_all(&self.path)
            } else {
                std::fs::remove_file(&self.path)
            };
        }
    }
}

fn md5_hex(h: Md5) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
    }
    Ok(md5_hex(h))
}

/// GET `url` into a temporary file in `dir`, hashing on the way; error (and
/// remove the temporary) if the MD5 differs from `file.md5`.
fn fetch_verified(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    file: &RemoteFile,
) -> Result<TempPath> {
    let net = |msg: String| Error::io(PathBuf::from(url), std::io::Error::other(msg));
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => net(format!("download failed: HTTP status {code}")),
        ureq::Error::Transport(t) => net(format!("download failed: {t}")),
    })?;
    let tmp = TempPath::new(dir, &file.name, false)?;
    let mut out = File::create(&tmp.path).map_err(|e| Error::io(&tmp.path, e))?;
    let mut body = resp.into_reader();
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let k = body
            .read(&mut buf)
            .map_err(|e| net(format!("download interrupted after {total} bytes: {e}")))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| Error::io(&tmp.path, e))?;
        total += k as u64;
    }
    out.sync_all().map_err(|e| Error::io(&tmp.path, e))?;
    drop(out);
    let got = md5_hex(h);
    if got != file.md5.to_ascii_lowercase() {
        return Err(Error::Format {
            path: PathBuf::from(url),
            msg: format!(
                "checksum mismatch: MD5 {got}, expected {} ({total} bytes); nothing was kept",
                file.md5
            ),
        });
    }
    Ok(tmp)
}

/// Extract the regular files directly under `sub/` in the tar.gz `archive`
/// into `dest` (flat; anything else, including paths with `..`, is skipped).
fn unpack_cifar(archive: &Path, sub: &str, dest: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut ar = tar::Archive::new(gz);
    let bad = |e: std::io::Error| Error::Format {
        path: archive.to_path_buf(),
        msg: format!("invalid tar.gz archive: {e}"),
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = {
            let p = entry.path().map_err(bad)?;
            let comps: Vec<_> = p.components().collect();
            match comps.as_slice() {
                [std::path::Component::Normal(d), std::path::Component::Normal(f)]
                    if d.to_str() == Some(sub) =>
                {
                    f.to_os_string()
                }
                _ => continue,
            }
        };
        let target = dest.join(&name);
        let mut out = File::create(&target).map_err(|e| Error::io(&target, e))?;
        let mut buf = Vec::with_capacity(entry.header().size().unwrap_or(0).min(1 << 28) as usize);
        entry.read_to_end(&mut buf).map_err(bad)?;
        // a write error (a full disk) names the file, not the archive
        out.write_all(&buf)
            .and_then(|_| out.sync_all())
            .map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A tiny HTTP/1.1 server on 127.0.0.1 serving `files` by path; runs
    /// until the test process ends. Returns the base URL.
    fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Arc::new(files);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let files = files.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        match reader.read_line(&mut l) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if l == "\r\n" || l == "\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("/");
                    let name = path.trim_start_matches("/base/");
                    let (status, body) = match files.get(name) {
                        Some(b) => ("200 OK", b.clone()),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                    let _ = stream.flush();
                });
            }
        });
        format!("http://{addr}/base/")
    }

    fn md5_of(b: &[u8]) -> String {
        let mut h = Md5::new();
        h.update(b);
        md5_hex(h)
    }

    fn cifar_rec(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let mut r = vec![(i % 10) as u8];
                r.extend(std::iter::repeat_n((i * 3) as u8, 3072));
                r
            })
            .collect()
    }

    fn fake_cifar10_tgz() -> Vec<u8> {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        let mut members: Vec<(String, Vec<u8>)> = (1..=5)
            .map(|k| {
                (
                    format!("cifar-10-batches-bin/data_batch_{k}.bin"),
                    cifar_rec(4),
                )
            })
            .collect();
        members.push(("cifar-10-batches-bin/test_batch.bin".into(), cifar_rec(2)));
        members.push((
            "cifar-10-batches-bin/batches.meta.txt".into(),
            b"airplane\n".to_vec(),
        ));
        members.push(("../evil.bin".into(), b"x".to_vec()));
        for (name, data) in &members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // bypass set_path's ".." check to simulate a hostile archive
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn kind_parses() {
        assert_eq!("cifar10".parse::<DataKind>().unwrap(), DataKind::Cifar10);
        assert_eq!("CIFAR-100".parse::<DataKind>().unwrap(), DataKind::Cifar100);
        assert_eq!("mnist".parse::<DataKind>().unwrap(), DataKind::Mnist);
        assert!(matches!("svhn".parse::<DataKind>(), Err(Error::Config(_))));
    }

    #[test]
    fn cifar10_download_verifies_unpacks_and_reads() {
        let tgz = fake_cifar10_tgz();
        let sum = md5_of(&tgz);
        let base = serve(HashMap::from([("cifar-10-binary.tar.gz".to_string(), tgz)]));
        let t = TempDir::new("dl-c10");
        let files = vec![RemoteFile {
            name: "cifar-10-binary.tar.gz".into(),
            md5: sum.clone(),
        }];
        let out = download_files(DataKind::Cifar10, t.path(), Some(&base), &files).unwrap();
        assert_eq!(out, t.path().join("cifar-10-batches-bin"));
        // only the unpacked folder remains; no temporaries, no escaped member
        assert_eq!(entries(t.path()), vec!["cifar-10-batches-bin"]);
        assert!(!out.join("evil.bin").exists());
        let s = super::super::read_cifar10(&out).unwrap();
        assert_eq!((s.train.n, s.test.n), (20, 2));
        // a second call finds it in place and does not fetch again (a wrong
        // URL would fail)
        let again = download_files(
            DataKind::Cifar10,
            t.path(),
            Some("http://127.0.0.1:1/"),
            &files,
        );
        assert_eq!(again.unwrap(), out);
    }

    #[test]
    fn checksum_mismatch_is_error_and_leaves_nothing() {
        let tgz = fake_cifar10_tgz();
        let base = serve(HashMap::from([("cifar-10-binary.tar.gz".to_string(), tgz)]));
        let t = TempDir::new("dl-bad");
        let files = vec![RemoteFile {
            name: "cifar-10-binary.tar.gz".into(),
            md5: "00000000000000000000000000000000".into(),
        }];
        let e = download_files(DataKind::Cifar10, t.path(), Some(&base), &files).unwrap_err();
        assert!(matches!(e, Error::Format { .. }));
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(entries(t.path()).is_empty(), "{:?}", entries(t.path()));
        // a 404 is an error too, and leaves nothing
        let missing = vec![RemoteFile {
            name: "nope.tar.gz".into(),
            md5: "0".into(),
        }];
        let e = download_files(DataKind::Cifar100, t.path(), Some(&base), &missing).unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert!(entries(t.path()).is_empty());
    }

    #[test]
    fn archive_without_required_member_leaves_nothing() {
        // a CIFAR-100 archive lacking test.bin
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        let data = vec![0u8; 3074];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "cifar-100-binary/train.bin", &data[..])
            .unwrap();
        let tgz = b.into_inner().unwrap().finish().unwrap();
        let sum = md5_of(&tgz);
        let base = serve(HashMap::from([("c100.tgz".to_string(), tgz)]));
        let t = TempDir::new("dl-c100");
        let files = vec![RemoteFile {
            name: "c100.tgz".into(),
            md5: sum,
        }];
        let e = download_files(DataKind::Cifar100, t.path(), Some(&base), &files).unwrap_err();
        assert!(e.to_string().contains("test.bin"), "{e}");
        assert!(entries(t.path()).is_empty(), "{:?}", entries(t.path()));
    }

    #[test]
    fn mnist_download_fetches_four_files() {
        let mut served = HashMap::new();
        let mut files = Vec::new();
        for (name, n, images) in [
            ("train-images-idx3-ubyte.gz", 3u32, true),
            ("train-labels-idx1-ubyte.gz", 3, false),
            ("t10k-images-idx3-ubyte.gz", 2, true),
            ("t10k-labels-idx1-ubyte.gz", 2, false),
        ] {
            let mut raw = Vec::new();
            if images {
                for x in [2051u32, n, 28, 28] {
                    raw.extend_from_slice(&x.to_be_bytes());
                }
                raw.extend(std::iter::repeat_n(7u8, n as usize * 784));
            } else {
                for x in [2049u32, n] {
                    raw.extend_from_slice(&x.to_be_bytes());
                }
                raw.extend((0..n).map(|i| i as u8));
            }
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&raw).unwrap();
            let gz = e.finish().unwrap();
            files.push(RemoteFile {
                name: name.into(),
                md5: md5_of(&gz).to_uppercase(),
            });
            served.insert(name.to_string(), gz);
        }
        let base = serve(served);
        let t = TempDir::new("dl-mnist");
        let out = download_files(DataKind::Mnist, t.path(), Some(&base), &files).unwrap();
        assert_eq!(entries(&out).len(), 4);
        let s = super::super::read_mnist(&out).unwrap();
        assert_eq!((s.train.n, s.test.n), (3, 2));
        // mismatch on one file: error, no temporaries, earlier verified files kept
        let t2 = TempDir::new("dl-mnist-bad");
        let mut bad = files.clone();
        bad[2].md5 = "ffffffffffffffffffffffffffffffff".into();
        let e = download_files(DataKind::Mnist, t2.path(), Some(&base), &bad).unwrap_err();
        assert!(e.to_string().contains("t10k-images"), "{e}");
        assert_eq!(
            entries(t2.path()),
            vec!["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
        );
    }

    #[test]
    fn official_checksums_are_well_formed() {
        for k in [DataKind::Cifar10, DataKind::Cifar100, DataKind::Mnist] {
            for f in remote_files(k) {
                assert_eq!(f.md5.len(), 32);
                assert!(f.md5.chars().all(|c| c.is_ascii_hexdigit()));
            }
            assert!(k.default_base_url().starts_with("https://"));
        }
    }
}

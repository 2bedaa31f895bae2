//! `--data npz:FILE`: NumPy arrays in an `.npz` archive, under the names
//! `keras.datasets` uses (its `mnist.npz` is read as it is):
//!
//! ```text
//! x_train  images   N,H,W (one channel), N,H,W,C (NumPy's layout) or N,C,H,W (PyTorch's)
//! y_train  labels   N or N,1 class indices (any integer dtype), 0..=255
//! x_test   images   the same size and channels as x_train
//! y_test   labels
//! ```
//!
//! From NumPy: `np.savez("data.npz", x_train=x, y_train=y, x_test=xt,
//! y_test=yt)` (or `np.savez_compressed`). A 4-D array is `N,H,W,C` when its
//! last axis has 1 or 3 entries, else `N,C,H,W` when its second has; other
//! shapes are refused. Images are `uint8` (pixels 0..=255) or `float32` /
//! `float64` (taken as they are, finite); both splits are converted to
//! planar `C,H,W` as the other readers store them, and the run normalises
//! them per channel with statistics of the training split.
//!
//! The archive is read with the `zip` crate (stored or deflated members);
//! each member's `.npy` header (format versions 1 to 3: magic, version,
//! header length, then a Python dict literal `{'descr': '<f4',
//! 'fortran_order': False, 'shape': (N, H, W), }`) is parsed here: the
//! NumPy readers on crates.io parse that literal with a general Python
//! literal parser (npyz: py_literal, pest, stacker), a dozen crates for
//! three keys. Fortran-ordered and structured arrays are refused.

use super::{DataSplit, Dataset, Geometry};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// The archive's array names: train images, train labels, test images,
/// test labels.
pub const NPZ_KEYS: [&str; 4] = ["x_train", "y_train", "x_test", "y_test"];

fn err(file: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: file.to_path_buf(),
        msg: format!("npz: {}", msg.into()),
    }
}

/// An element type: byte order, kind (`u`, `i`, `f`, `b`) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtype {
    pub big_endian: bool,
    pub kind: char,
    pub size: usize,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        let mut c = descr.chars();
        let order = c.next()?;
        let kind = c.next()?;
        let size: usize = c.as_str().parse().ok()?;
        let big_endian = match order {
            '<' | '|' | '=' => false,
            '>' => true,
            _ => return None,
        };
        Some(Dtype {
            big_endian,
            kind,
            size,
        })
    }

    /// NumPy's name of the type (`uint8`, `float32`, ...).
    fn name(&self) -> String {
        match self.kind {
            'u' => format!("uint{}", 8 * self.size),
            'i' => format!("int{}", 8 * self.size),
            'f' => format!("float{}", 8 * self.size),
            'b' => "bool".into(),
            k => format!("kind {k:?}, {} bytes", self.size),
        }
    }
}

/// A `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

impl NpyHeader {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed Python literal of the header dict.
#[derive(Debug, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// The header dict: `{'key': value, ...}` with string, boolean and
/// integer-tuple values (a trailing comma allowed, Python 2's `3L` too).
fn parse_dict(text: &str) -> std::result::Result<Vec<(String, Lit)>, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, c: u8| -> std::result::Result<(), String> {
        ws(i);
        if b.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, *i))
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        ws(i);
        let q = *b.get(*i).ok_or("unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a string at byte {}", *i));
        }
        let start = *i + 1;
        let end = start
            + b[start..]
                .iter()
                .position(|&c| c == q)
                .ok_or("unterminated string")?;
        *i = end + 1;
        Ok(text[start..end].to_string())
    };
    expect(&mut i, b'{')?;
    let mut out = Vec::new();
    loop {
        ws(&mut i);
        if b.get(i) == Some(&b'}') {
            break;
        }
        let key = string(&mut i)?;
        expect(&mut i, b':')?;
        ws(&mut i);
        let value = match b.get(i) {
            Some(b'\'') | Some(b'"') => Lit::Str(string(&mut i)?),
            Some(b'(') => {
                i += 1;
                let mut dims = Vec::new();
                loop {
                    ws(&mut i);
                    if b.get(i) == Some(&b')') {
                        i += 1;
                        break;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let n: usize = text[start..i]
                        .parse()
                        .map_err(|_| format!("expected a dimension at byte {start}"))?;
                    if b.get(i) == Some(&b'L') {
                        i += 1;
                    }
                    dims.push(n);
                    ws(&mut i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' at byte {i}")),
                    }
                }
                Lit::Tuple(dims)
            }
            _ if text[i..].starts_with("True") => {
                i += 4;
                Lit::Bool(true)
            }
            _ if text[i..].starts_with("False") => {
                i += 5;
                Lit::Bool(false)
            }
            _ => return Err(format!("unsupported value for {key:?} at byte {i}")),
        };
        out.push((key, value));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at byte {i}")),
        }
    }
    Ok(out)
}

/// Read a `.npy` header from `r` (what `np.save` writes, format 1.0 to 3.0).
pub fn read_npy_header(r: &mut impl Read) -> std::result::Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "not a .npy array (shorter than its preamble)".into(),
        _ => format!("reading the .npy header: {e}"),
    })?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let len = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).map_err(|e| e.to_string())?;
            u16::from_le_bytes(l) as usize
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            r.read_exact(&mut l).map_err(|e| e.to_string())?;
            u32::from_le_bytes(l) as usize
        }
        v => return Err(format!(".npy format version {v}.{} is not known", pre[7])),
    };
    if len > 1 << 20 {
        return Err(format!("a .npy header of {len} bytes"));
    }
    let mut h = vec![0u8; len];
    r.read_exact(&mut h)
        .map_err(|e| format!("the .npy header is cut short: {e}"))?;
    let text = String::from_utf8(h).map_err(|_| "the .npy header is not text".to_string())?;
    let dict = parse_dict(&text).map_err(|e| format!("the .npy header {text:?}: {e}"))?;
    let get = |k: &str| dict.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let dtype = match get("descr") {
        Some(Lit::Str(d)) => Dtype::parse(d).ok_or_else(|| format!("dtype {d:?} is not read"))?,
        Some(_) => return Err("a structured dtype is not read".into()),
        None => return Err("the .npy header has no 'descr'".into()),
    };
    let fortran_order = match get("fortran_order") {
        Some(Lit::Bool(b)) => *b,
        _ => return Err("the .npy header has no 'fortran_order'".into()),
    };
    let shape = match get("shape") {
        Some(Lit::Tuple(s)) => s.clone(),
        _ => return Err("the .npy header has no 'shape'".into()),
    };
    Ok(NpyHeader {
        dtype,
        fortran_order,
        shape,
    })
}

type Archive = zip::ZipArchive<BufReader<File>>;

fn open(file: &Path) -> Result<Archive> {
    crate::io::read::regular_file_len(file)?;
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| err(file, format!("not a readable .npz (zip) archive: {e}")))
}

/// The member of array `key`: its header, and a reader at its data.
fn member<'a>(
    a: &'a mut Archive,
    file: &Path,
    key: &str,
) -> Result<(NpyHeader, zip::read::ZipFile<'a, BufReader<File>>)> {
    let names: Vec<String> = a
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.trim_end_matches(".npy").to_string()))
        .collect();
    let mut m = a.by_name(&format!("{key}.npy")).map_err(|e| {
        if names.iter().any(|n| n == key) {
            // there, but unreadable (a damaged local header)
            return err(file, format!("{key}: {e}"));
        }
        let mut have = names.clone();
        have.sort();
        err(
            file,
            format!(
                "no array {key:?}: expected x_train, y_train, x_test, y_test (keras.datasets' names); it has {}",
                if have.is_empty() { "none".into() } else { have.join(", ") }
            ),
        )
    })?;
    let h = read_npy_header(&mut m).map_err(|e| err(file, format!("{key}: {e}")))?;
    if h.fortran_order {
        return Err(err(
            file,
            format!("{key} is in Fortran order; save np.ascontiguousarray({key})"),
        ));
    }
    Ok((h, m))
}

/// The array's data, exactly as long as its header says.
fn data(file: &Path, key: &str, h: &NpyHeader, m: &mut impl Read) -> Result<Vec<u8>> {
    let want = h
        .len()
        .checked_mul(h.dtype.size)
        .ok_or_else(|| err(file, format!("{key}: shape {:?} is too large", h.shape)))?;
    // grown as the data come (a header may claim any shape)
    let mut v = Vec::new();
    m.take(want as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| err(file, format!("{key}: {e}")))?;
    if v.len() != want {
        return Err(err(
            file,
            format!(
                "{key}: shape {:?} of {} needs {want} bytes, the array has {}{}",
                h.shape,
                h.dtype.name(),
                v.len().min(want),
                if v.len() > want { " or more" } else { "" }
            ),
        ));
    }
    Ok(v)
}

/// `(n, c, h, w, channels_last)` of an images array.
fn image_dims(file: &Path, key: &str, h: &NpyHeader) -> Result<(usize, usize, usize, usize, bool)> {
    let d = match h.shape[..] {
        [n, hh, w] => (n, 1, hh, w, false),
        [n, hh, w, c] if c == 1 || c == 3 => (n, c, hh, w, true),
        [n, c, hh, w] if c == 1 || c == 3 => (n, c, hh, w, false),
        _ => {
            return Err(err(
                file,
                format!(
                    "{key} has shape {:?}; expected N,H,W, N,H,W,C or N,C,H,W with 1 or 3 channels",
                    h.shape
                ),
            ))
        }
    };
    if d.0 == 0 || d.1 * d.2 * d.3 == 0 {
        return Err(err(
            file,
            format!("{key} has shape {:?}: no images", h.shape),
        ));
    }
    if !matches!((h.dtype.kind, h.dtype.size), ('u', 1) | ('f', 4) | ('f', 8)) {
        return Err(err(
            file,
            format!(
                "{key} has dtype {}; expected uint8, float32 or float64",
                h.dtype.name()
            ),
        ));
    }
    Ok(d)
}

/// Images as planar `C,H,W` f32 values.
fn image_values(file: &Path, key: &str, h: &NpyHeader, bytes: &[u8]) -> Result<Vec<f32>> {
    let (n, c, hh, w, last) = image_dims(file, key, h)?;
    let be = h.dtype.big_endian;
    let v: Vec<f32> = match h.dtype.size {
        1 => bytes.iter().map(|&b| b as f32).collect(),
        4 => bytes
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if be {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        _ => bytes
            .chunks_exact(8)
            .map(|b| {
                let b: [u8; 8] = b.try_into().expect("8 bytes");
                (if be {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            })
            .collect(),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(err(
            file,
            format!("{key} has a non-finite value at flat index {i}"),
        ));
    }
    if !last || c == 1 {
        return Ok(v);
    }
    // N,H,W,C -> N,C,H,W
    let plane = hh * w;
    let mut out = vec![0f32; v.len()];
    for (img, src) in out
        .chunks_exact_mut(c * plane)
        .zip(v.chunks_exact(c * plane))
    {
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &x) in px.iter().enumerate() {
                img[ch * plane + p] = x;
            }
        }
    }
    debug_assert_eq!(out.len(), n * c * plane);
    Ok(out)
}

/// Labels: `n` (or `n,1`) integers in 0..=255.
fn labels(a: &mut Archive, file: &Path, key: &str, n: usize) -> Result<Vec<u8>> {
    let (h, mut m) = member(a, file, key)?;
    if h.shape != [n] && h.shape != [n, 1] {
        return Err(err(
            file,
            format!(
                "{key} has shape {:?}; expected ({n},) or ({n}, 1): one label per image",
                h.shape
            ),
        ));
    }
    if !matches!(h.dtype.kind, 'u' | 'i') || !matches!(h.dtype.size, 1 | 2 | 4 | 8) {
        return Err(err(
            file,
            format!(
                "{key} has dtype {}; expected integer class indices",
                h.dtype.name()
            ),
        ));
    }
    let bytes = data(file, key, &h, &mut m)?;
    let (size, signed, be) = (h.dtype.size, h.dtype.kind == 'i', h.dtype.big_endian);
    let mut out = Vec::with_capacity(n);
    for (i, b) in bytes.chunks_exact(size).enumerate() {
        let mut le = [0u8; 8];
        for (k, &x) in b.iter().enumerate() {
            le[if be { size - 1 - k } else { k }] = x;
        }
        // sign-extend
        if signed && le[size - 1] & 0x80 != 0 {
            for x in le.iter_mut().skip(size) {
                *x = 0xff;
            }
        }
        let v = i128::from(i64::from_le_bytes(le));
        let v = if signed {
            v
        } else {
            v & ((1i128 << (8 * size)) - 1)
        };
        if !(0..256).contains(&v) {
            return Err(err(
                file,
                format!("{key}[{i}] = {v} is not a class index in 0..=255"),
            ));
        }
        out.push(v as u8);
    }
    Ok(out)
}

/// Shape of an `.npz` data set: the images' headers and the labels.
pub fn npz_geometry(file: &Path) -> Result<Geometry> {
    let mut a = open(file)?;
    let (n, c, h, w, _) = {
        let (hd, _) = member(&mut a, file, "x_train")?;
        image_dims(file, "x_train", &hd)?
    };
    let (tn, tc, th, tw, _) = {
        let (hd, _) = member(&mut a, file, "x_test")?;
        image_dims(file, "x_test", &hd)?
    };
    if (c, h, w) != (tc, th, tw) {
        return Err(err(
            file,
            format!("x_train images are {c}x{h}x{w} (CxHxW), x_test {tc}x{th}x{tw}"),
        ));
    }
    let max = labels(&mut a, file, "y_train", n)?
        .into_iter()
        .chain(labels(&mut a, file, "y_test", tn)?)
        .max()
        .unwrap_or(0);
    Ok(Geometry {
        c,
        h,
        w,
        classes: max as usize + 1,
        train_n: n,
    })
}

/// Read an `.npz` data set (see the module doc).
pub fn read_npz(file: &Path) -> Result<DataSplit> {
    let g = npz_geometry(file)?;
    let mut a = open(file)?;
    let mut split = |x: &str, y: &str, part: &str| -> Result<Dataset> {
        let (h, mut m) = member(&mut a, file, x)?;
        let (n, c, hh, w, _) = image_dims(file, x, &h)?;
        let bytes = data(file, x, &h, &mut m)?;
        drop(m);
        let images = image_values(file, x, &h, &bytes)?;
        let labels = labels(&mut a, file, y, n)?;
        let name = format!("{}/{part}", file.display());
        Dataset::new(name, images, labels, c, hh, w, g.classes)
    };
    Ok(DataSplit {
        train: split("x_train", "y_train", "train")?,
        test: split("x_test", "y_test", "test")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str, version: u8) -> Vec<u8> {
        let mut v = b"\x93NUMPY".to_vec();
        v.extend([version, 0]);
        if version == 1 {
            v.extend((text.len() as u16).to_le_bytes());
        } else {
            v.extend((text.len() as u32).to_le_bytes());
        }
        v.extend(text.as_bytes());
        v
    }

    #[test]
    fn headers_as_numpy_writes_them() {
        let h = read_npy_header(
            &mut &header(
                "{'descr': '|u1', 'fortran_order': False, 'shape': (60000, 28, 28), }     \n",
                1,
            )[..],
        )
        .unwrap();
        assert_eq!(h.shape, [60000, 28, 28]);
        assert_eq!(h.dtype.name(), "uint8");
        assert!(!h.fortran_order);
        // one dimension, a scalar, version 2, big-endian, Python 2's longs
        let h = read_npy_header(
            &mut &header("{'descr': '>f8', 'fortran_order': True, 'shape': (5,)}", 2)[..],
        )
        .unwrap();
        assert_eq!((h.shape.clone(), h.fortran_order), (vec![5], true));
        assert_eq!(
            h.dtype,
            Dtype {
                big_endian: true,
                kind: 'f',
                size: 8
            }
        );
        let h = read_npy_header(
            &mut &header("{'descr':'<i8','fortran_order':False,'shape':()}", 3)[..],
        )
        .unwrap();
        assert!(h.shape.is_empty());
        let h = read_npy_header(
            &mut &header(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (3L, 4L), }",
                1,
            )[..],
        )
        .unwrap();
        assert_eq!(h.shape, [3, 4]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for (bytes, want) in [
            (b"\x93NUMPX\x01\x00\x00\x00".to_vec(), "magic"),
            (b"\x93NUM".to_vec(), "shorter than its preamble"),
            (header("{}", 9), "version 9.0"),
            (
                header(
                    "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",
                    1,
                ),
                "unsupported value",
            ),
            (
                header("{'descr': '<f4', 'shape': (1,)}", 1),
                "no 'fortran_order'",
            ),
            (
                header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,", 1),
                "expected a dimension",
            ),
            (
                header("{'descr': 'xyz', 'fortran_order': False, 'shape': (1,)}", 1),
                "dtype \"xyz\"",
            ),
        ] {
            let mut long = bytes.clone();
            long.truncate(bytes.len());
            let e = read_npy_header(&mut &long[..]).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        // the header cut short
        let mut h = header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 1);
        h.truncate(20);
        assert!(read_npy_header(&mut &h[..])
            .unwrap_err()
            .contains("cut short"));
    }
}

//! Weights, checkpoints and the PyTorch parity fixtures in the
//! [safetensors] format, read and written by the `safetensors` crate (the
//! format's own implementation, fuzzed upstream). This module keeps
//! resgrad's side: the tensors as owned, named buffers, the element types
//! resgrad uses, and every malformed file an [`Error::Format`] that names
//! the file, never a panic.
//!
//! Layout: an 8-byte little-endian header length `n`; `n` bytes of JSON, an
//! object mapping each tensor name to `{"dtype", "shape", "data_offsets":
//! [begin, end]}` plus an optional `"__metadata__"` string-to-string map;
//! then the data section, little-endian, offsets relative to its start.
//!
//! The crate checks: the header length fits the file (and the 100 MB cap);
//! the header is UTF-8 JSON of that shape; the tensors' offsets, in order,
//! cover the data section back to back (no overlap, no gap, no trailing
//! bytes); each tensor's byte count is its shape times its dtype's size.
//! resgrad then refuses dtypes other than `F32`, `F64` (parameters,
//! activations, gradients), `I64` (labels, BatchNorm's
//! `num_batches_tracked`) and `U8` (8-bit images and labels of a data set
//! given as arrays, `--data safetensors:FILE`). The writer (the crate's) orders tensors by dtype
//! alignment, then name, and pads the header with spaces to a multiple of
//! 8 bytes.
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, SafeTensorError, View};

use crate::error::{check_len, Error, Result};
use crate::scalar::Scalar;
use crate::tensor::Tensor;

/// Element types resgrad stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    I64,
    U8,
}

impl Dtype {
    /// The safetensors spelling ("F32", "F64", "I64").
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U8 => "U8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }

    /// Parse a safetensors dtype name; `None` for dtypes resgrad does not use.
    pub fn from_name(s: &str) -> Option<Dtype> {
        match s {
            "F32" => Some(Dtype::F32),
            "F64" => Some(Dtype::F64),
            "I64" => Some(Dtype::I64),
            "U8" => Some(Dtype::U8),
            _ => None,
        }
    }

    /// Whether this is a floating-point dtype (readable with `get`/`get_f64`).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    fn of_crate(d: safetensors::Dtype) -> Option<Dtype> {
        match d {
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F64 => Some(Dtype::F64),
            safetensors::Dtype::I64 => Some(Dtype::I64),
            safetensors::Dtype::U8 => Some(Dtype::U8),
            _ => None,
        }
    }

    fn to_crate(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F64 => safetensors::Dtype::F64,
            Dtype::I64 => safetensors::Dtype::I64,
            Dtype::U8 => safetensors::Dtype::U8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored tensor: dtype, shape and its raw little-endian bytes.
/// Invariant (checked by the reader and the writer):
/// `bytes.len() == shape.iter().product() * dtype.size()`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl NamedTensor {
    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_crate()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The crate's reading error, with what resgrad knows about the file.
fn describe(e: SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match (e, n) {
        (SafeTensorError::HeaderTooSmall, _) => {
            format!("file is {len} bytes, too short for the 8-byte header length")
        }
        (SafeTensorError::InvalidHeaderLength, Some(n)) => format!(
            "header length {n} is beyond the end of the file ({} bytes after the length)",
            len - 8
        ),
        (SafeTensorError::HeaderTooLarge, Some(n)) if n > (len - 8) as u64 => format!(
            "header length {n} is beyond the end of the file ({} bytes after the length)",
            len - 8
        ),
        (SafeTensorError::HeaderTooLarge, Some(n)) => {
            format!("header length {n} exceeds the 100000000-byte limit")
        }
        (SafeTensorError::InvalidHeader(e), _) => format!("header is not UTF-8: {e}"),
        (SafeTensorError::InvalidHeaderDeserialization(e), _) => {
            format!("header is not a JSON object of tensor entries: {e}")
        }
        (SafeTensorError::InvalidOffset(name), _) => format!(
            "tensor {name:?}: its data_offsets do not start where the previous tensor's end \
             (overlap, gap, reversed or duplicate entries)"
        ),
        (SafeTensorError::MetadataIncompleteBuffer, Some(n)) => format!(
            "the tensors' data_offsets do not cover the data section ({} bytes) exactly",
            (len as u64).saturating_sub(8 + n)
        ),
        (SafeTensorError::TensorInvalidInfo, _) => {
            "a tensor's shape and dtype disagree with its data_offsets".into()
        }
        (e, _) => e.to_string(),
    }
}

/// The contents of one safetensors file: tensors by name and the
/// `__metadata__` string map. `origin` is the file it was read from (empty
/// for one built in memory); error messages name it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafeTensors {
    pub tensors: BTreeMap<String, NamedTensor>,
    pub metadata: BTreeMap<String, String>,
    pub origin: PathBuf,
}

impl SafeTensors {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read and validate a safetensors file. I/O failures are `Error::Io`,
    /// malformed contents `Error::Format`; both name `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse and validate a safetensors image; `origin` is only used in
    /// error messages (and kept in `self.origin`).
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let fail = |msg: String| Error::Format {
            path: origin.to_path_buf(),
            msg: format!("safetensors: {msg}"),
        };
        let (n, header): (usize, Metadata) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| fail(describe(e, bytes)))?;
        let data = &bytes[8 + n..];
        let mut out = SafeTensors {
            origin: origin.to_path_buf(),
            ..Default::default()
        };
        if let Some(m) = header.metadata() {
            out.metadata
                .extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (name, info) in header.tensors() {
            let dtype = Dtype::of_crate(info.dtype).ok_or_else(|| {
                fail(format!(
                    "tensor {name:?}: unsupported dtype \"{:?}\" (resgrad reads F32, F64, I64)",
                    info.dtype
                ))
            })?;
            let (b, e) = info.data_offsets; // validated: b <= e <= data.len()
            let t = NamedTensor {
                dtype,
                shape: info.shape.clone(),
                bytes: data[b..e].to_vec(),
            };
            out.tensors.insert(name, t);
        }
        Ok(out)
    }

    /// Whether a tensor of this name is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The file this was read from, or `<in-memory safetensors>`.
    pub fn origin_str(&self) -> String {
        if self.origin.as_os_str().is_empty() {
            "<in-memory safetensors>".to_string()
        } else {
            self.origin.display().to_string()
        }
    }

    /// The stored tensor, or `Error::Weights` naming it and the file.
    pub fn tensor(&self, name: &str) -> Result<&NamedTensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!("{}: no tensor named {name:?}", self.origin_str()))
        })
    }

    fn wrong_dtype(&self, name: &str, got: Dtype, want: &str) -> Error {
        Error::Weights(format!(
            "{}: tensor {name:?} has dtype {got}, expected {want}",
            self.origin_str()
        ))
    }

    /// A float tensor (F32 or F64) as f64 (F32 widens exactly), with its
    /// shape. Missing tensor or I64 dtype: `Error::Weights`.
    pub fn get_f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let t = self.tensor(name)?;
        let v = match t.dtype {
            Dtype::F32 => f32::from_le_bytes_vec(&t.bytes)
                .into_iter()
                .map(f64::from)
                .collect(),
            Dtype::F64 => f64::from_le_bytes_vec(&t.bytes),
            Dtype::I64 | Dtype::U8 => return Err(self.wrong_dtype(name, t.dtype, "F32 or F64")),
        };
        Ok((t.shape.clone(), v))
    }

    /// A float tensor (F32 or F64) converted to `T` (F64 -> f32 rounds to
    /// nearest). Missing tensor or I64 dtype: `Error::Weights`.
    pub fn get<T: Scalar>(&self, name: &str) -> Result<Tensor<T>> {
        let t = self.tensor(name)?;
        let data: Vec<T> = match t.dtype {
            Dtype::F32 => f32::from_le_bytes_vec(&t.bytes)
                .into_iter()
                .map(|x| T::of(f64::from(x)))
                .collect(),
            Dtype::F64 => f64::from_le_bytes_vec(&t.bytes)
                .into_iter()
                .map(T::of)
                .collect(),
            Dtype::I64 | Dtype::U8 => return Err(self.wrong_dtype(name, t.dtype, "F32 or F64")),
        };
        Tensor::from_vec(&t.shape, data)
    }

    /// An I64 tensor with its shape. Missing tensor or float dtype:
    /// `Error::Weights`.
    pub fn get_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.tensor(name)?;
        if t.dtype != Dtype::I64 {
            return Err(self.wrong_dtype(name, t.dtype, "I64"));
        }
        let v = t
            .bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok((t.shape.clone(), v))
    }

    /// Store (or replace) a float tensor in `T`'s own dtype (`T::DTYPE`;
    /// a `Scalar` other than f32 is stored as F64).
    pub fn insert<T: Scalar>(&mut self, name: impl Into<String>, t: &Tensor<T>) {
        let (dtype, bytes) = match Dtype::from_name(T::DTYPE) {
            Some(Dtype::F32) if T::BYTES == 4 => (Dtype::F32, T::to_le_bytes_vec(t.data())),
            Some(Dtype::F64) if T::BYTES == 8 => (Dtype::F64, T::to_le_bytes_vec(t.data())),
            _ => {
                let v: Vec<f64> = t.data().iter().map(|x| x.f64()).collect();
                (Dtype::F64, f64::to_le_bytes_vec(&v))
            }
        };
        self.tensors.insert(
            name.into(),
            NamedTensor {
                dtype,
                shape: t.shape().to_vec(),
                bytes,
            },
        );
    }

    /// Store (or replace) an I64 tensor; `data.len()` must equal the
    /// product of `shape` (`Error::Shape` otherwise).
    pub fn insert_i64(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: &[i64],
    ) -> Result<()> {
        check_len("safetensors insert_i64", "data", data, shape)?;
        self.tensors.insert(
            name.into(),
            NamedTensor {
                dtype: Dtype::I64,
                shape: shape.to_vec(),
                bytes: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        );
        Ok(())
    }

    /// Serialize to a safetensors image. Fails (`Error::InvalidParam`) only
    /// if a `NamedTensor` was built by hand with a byte count that does not
    /// match its shape, or is named `__metadata__`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.encode().map_err(|msg| Error::InvalidParam {
            op: "safetensors write",
            msg,
        })
    }

    fn encode(&self) -> std::result::Result<Vec<u8>, String> {
        if self.tensors.contains_key("__metadata__") {
            return Err("a tensor may not be named __metadata__".into());
        }
        let info = (!self.metadata.is_empty()).then(|| {
            let m = self.metadata.iter();
            m.map(|(k, v)| (k.clone(), v.clone())).collect()
        });
        safetensors::serialize(self.tensors.iter(), info).map_err(|e| match e {
            SafeTensorError::TensorInvalidInfo => {
                let bad = self.tensors.iter().find(|(_, t)| {
                    t.shape
                        .iter()
                        .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d))
                        != Some(t.bytes.len())
                });
                match bad {
                    Some((name, t)) => format!(
                        "tensor {name:?}: {} bytes for shape {:?} of {}",
                        t.bytes.len(),
                        t.shape,
                        t.dtype
                    ),
                    None => e.to_string(),
                }
            }
            e => e.to_string(),
        })
    }

    /// Write atomically (see [`crate::io::write_atomic`]); errors name `path`.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let bytes = self.encode().map_err(|msg| Error::InvalidParam {
            op: "safetensors write",
            msg: format!("{}: {msg}", path.display()),
        })?;
        super::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::TempDir;
    use super::*;
    use serde_json::Value;

    fn fixtures_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures")
    }

    fn sample() -> SafeTensors {
        let mut st = SafeTensors::new();
        let a = Tensor::<f32>::from_vec(&[2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-30, -7.0]).unwrap();
        let b = Tensor::<f64>::from_vec(&[3], vec![std::f64::consts::PI, -1e300, 5e-324]).unwrap();
        let s = Tensor::<f64>::from_vec(&[], vec![42.5]).unwrap();
        let z = Tensor::<f32>::from_vec(&[0, 4], vec![]).unwrap();
        st.insert("a.f32", &a);
        st.insert("b.f64", &b);
        st.insert("scalar", &s);
        st.insert("empty", &z);
        st.insert_i64("labels", &[4], &[0, -1, i64::MAX, i64::MIN])
            .unwrap();
        st.metadata
            .insert("spec".into(), "{\"arch\": \"mlp\"}".into());
        st.metadata.insert("note".into(), "ünïcode ✓".into());
        st
    }

    fn is_format_err(r: Result<SafeTensors>) -> String {
        match r {
            Err(e @ Error::Format { .. }) => e.to_string(),
            Err(e) => panic!("expected Error::Format, got {e:?}"),
            Ok(_) => panic!("expected Error::Format, got Ok"),
        }
    }

    /// Build a file from a raw header string and data section.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn round_trip_f32_f64_i64_with_metadata() {
        let st = sample();
        let bytes = st.to_bytes().unwrap();
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(hlen % 8, 0, "header padded to 8 bytes");
        let back = SafeTensors::from_bytes(&bytes, Path::new("mem")).unwrap();
        assert_eq!(back.tensors, st.tensors);
        assert_eq!(back.metadata, st.metadata);

        let a: Tensor<f32> = back.get("a.f32").unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a.data(), &[1.0, -2.5, 3.25, 0.0, 1e-30, -7.0]);
        let (shape, b) = back.get_f64("b.f64").unwrap();
        assert_eq!(shape, vec![3]);
        assert_eq!(b, vec![std::f64::consts::PI, -1e300, 5e-324]);
        // converting reads
        let (_, a64) = back.get_f64("a.f32").unwrap();
        assert_eq!(a64[1], -2.5);
        let b32: Tensor<f32> = back.get("b.f64").unwrap();
        assert_eq!(b32.data()[0], std::f64::consts::PI as f32);
        let s: Tensor<f64> = back.get("scalar").unwrap();
        assert_eq!((s.shape(), s.data()), (&[][..], &[42.5][..]));
        let z: Tensor<f64> = back.get("empty").unwrap();
        assert_eq!((z.shape(), z.numel()), (&[0usize, 4][..], 0));
        let (ls, l) = back.get_i64("labels").unwrap();
        assert_eq!(ls, vec![4]);
        assert_eq!(l, vec![0, -1, i64::MAX, i64::MIN]);

        // through the file system, atomically
        let d = TempDir::new("st-roundtrip");
        let p = d.0.join("w.safetensors");
        st.write_atomic(&p).unwrap();
        let back = SafeTensors::read(&p).unwrap();
        assert_eq!(back.tensors, st.tensors);
        assert_eq!(back.metadata, st.metadata);
        assert_eq!(back.origin, p);
        // no metadata: no __metadata__ key, still readable
        let mut st2 = st.clone();
        st2.metadata.clear();
        let back2 = SafeTensors::from_bytes(&st2.to_bytes().unwrap(), Path::new("mem")).unwrap();
        assert!(back2.metadata.is_empty());
        assert_eq!(back2.tensors, st.tensors);
    }

    #[test]
    fn lookup_errors_name_the_tensor_and_file() {
        let st = SafeTensors::from_bytes(&sample().to_bytes().unwrap(), Path::new("some/file.st"))
            .unwrap();
        let e = st.get_f64("nope").unwrap_err();
        assert!(matches!(e, Error::Weights(_)));
        let m = e.to_string();
        assert!(m.contains("nope") && m.contains("some/file.st"), "{m}");
        assert!(matches!(st.get::<f32>("nope"), Err(Error::Weights(_))));
        assert!(matches!(st.get_i64("nope"), Err(Error::Weights(_))));
        // wrong dtype kind
        let e = st.get::<f64>("labels").unwrap_err().to_string();
        assert!(e.contains("labels") && e.contains("I64"), "{e}");
        assert!(matches!(st.get_f64("labels"), Err(Error::Weights(_))));
        assert!(matches!(st.get_i64("a.f32"), Err(Error::Weights(_))));
        // insert_i64 with a wrong length
        let mut st = st;
        assert!(matches!(
            st.insert_i64("x", &[3], &[1, 2]),
            Err(Error::Shape { .. })
        ));
        // a hand-built inconsistent tensor is refused by the writer
        st.tensors.insert(
            "bad".into(),
            NamedTensor {
                dtype: Dtype::F64,
                shape: vec![2],
                bytes: vec![0; 15],
            },
        );
        assert!(matches!(st.to_bytes(), Err(Error::InvalidParam { .. })));
        let d = TempDir::new("st-badwrite");
        let p = d.0.join("bad.safetensors");
        assert!(st.write_atomic(&p).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn read_missing_file_is_io_error() {
        let e = SafeTensors::read(Path::new("/nonexistent/dir/x.safetensors")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert!(e.to_string().contains("x.safetensors"));
    }

    #[test]
    fn malformed_inputs_are_format_errors() {
        let o = Path::new("bad.safetensors");
        let good = sample().to_bytes().unwrap();

        // every truncation of a valid file
        for cut in 0..good.len() {
            let r = SafeTensors::from_bytes(&good[..cut], o);
            assert!(r.is_err(), "truncated to {cut} bytes parsed");
            let m = is_format_err(r);
            assert!(m.contains("bad.safetensors"), "{m}");
        }
        // header length larger than the file / absurd
        let mut v = good.clone();
        v[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
        is_format_err(SafeTensors::from_bytes(&v, o));
        v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        is_format_err(SafeTensors::from_bytes(&v, o));
        // garbage / non-object JSON
        is_format_err(SafeTensors::from_bytes(&raw("{not json", &[]), o));
        is_format_err(SafeTensors::from_bytes(&raw("[1, 2]", &[]), o));
        is_format_err(SafeTensors::from_bytes(&raw("", &[]), o));
        is_format_err(SafeTensors::from_bytes(&raw("{\"a\": 1}", &[]), o));
        is_format_err(SafeTensors::from_bytes(&raw("{\"a\": {}}", &[]), o));
        // invalid UTF-8 in the header
        let mut v = raw("{\"a\":1}", &[]);
        v[10] = 0xff;
        is_format_err(SafeTensors::from_bytes(&v, o));

        let d8 = [0u8; 16];
        let t = |h: &str, data: &[u8]| SafeTensors::from_bytes(&raw(h, data), o);
        // sanity: the well-formed version parses
        t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#,
            &d8,
        )
        .unwrap();
        // data offsets out of bounds
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[8,24]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#,
            &d8[..8],
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}}"#,
            &d8,
        ));
        // reversed, wrong arity, negative, non-integer offsets
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[0],"data_offsets":[8,0]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[-1,15]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0.5,16]}}"#,
            &d8,
        ));
        // wrong byte count for the shape
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[3],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        // bad shape entries
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[-2],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":"2","data_offsets":[0,16]}}"#,
            &d8,
        ));
        // unknown / unsupported / missing dtype
        is_format_err(t(
            r#"{"x":{"dtype":"Q8","shape":[2],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        is_format_err(t(
            r#"{"x":{"dtype":"BF16","shape":[8],"data_offsets":[0,16]}}"#,
            &d8,
        ));
        is_format_err(t(r#"{"x":{"shape":[2],"data_offsets":[0,16]}}"#, &d8));
        // overlapping tensors
        let m = is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"y":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}}"#,
            &d8,
        ));
        assert!(m.contains("overlap"), "{m}");
        // duplicate keys
        is_format_err(t(
            r#"{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"x":{"dtype":"F64","shape":[1],"data_offsets":[8,16]}}"#,
            &d8,
        ));
        // bad metadata
        is_format_err(t(r#"{"__metadata__":{"a":1}}"#, &[]));
        is_format_err(t(r#"{"__metadata__":"a"}"#, &[]));
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // xorshift; flip bytes all over a valid image (mostly in the header)
        let good = sample().to_bytes().unwrap();
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let hlen = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        for _ in 0..5000 {
            let mut v = good.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % hlen;
                v[i] = next() as u8;
            }
            let _ = SafeTensors::from_bytes(&v, Path::new("fuzz"));
        }
    }

    fn cross_entropy(logits: &[f64], labels: &[i64], classes: usize) -> f64 {
        let n = labels.len();
        let mut total = 0.0;
        for (row, &y) in logits.chunks_exact(classes).zip(labels) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            total += lse - row[y as usize];
        }
        total / n as f64
    }

    #[test]
    fn reads_python_fixture() {
        let p = fixtures_dir().join("cifar_basic_original_exclusive_gate_B.safetensors");
        let st = SafeTensors::read(&p).unwrap();
        let spec: Value = serde_json::from_str(&st.metadata["spec"]).unwrap();
        assert_eq!(spec["arch"], "cifar");
        assert_eq!(spec["block"], "basic");
        assert_eq!(spec["shortcut"]["kind"], "exclusive_gate");
        assert_eq!(spec["shortcut"]["bias_init"], -1.0);
        let (ls, loss) = st.get_f64("loss").unwrap();
        assert_eq!(ls, vec![1]);
        let logits: Tensor<f64> = st.get("logits").unwrap();
        assert_eq!(logits.shape(), &[4, 10]);
        let (lbs, labels) = st.get_i64("labels").unwrap();
        assert_eq!(lbs, vec![4]);
        assert!(labels.iter().all(|&y| (0..10).contains(&y)));
        let ce = cross_entropy(logits.data(), &labels, 10);
        assert!(
            (ce - loss[0]).abs() < 1e-12,
            "recomputed loss {ce} vs stored {}",
            loss[0]
        );
        let x: Tensor<f64> = st.get("input").unwrap();
        assert_eq!(x.shape(), &[4, 3, 6, 6]);
        assert_eq!(st.tensor("units.2.gate.bias").unwrap().dtype, Dtype::F64);
        let (_, gb) = st.get_f64("units.0.gate.bias").unwrap();
        assert!(gb.iter().all(|&b| b == -1.0));
        let (_, nbt) = st.get_i64("stem_bn.num_batches_tracked").unwrap();
        assert_eq!(nbt, vec![0]);
        // writing it back gives an identical tensor set
        let again = SafeTensors::from_bytes(&st.to_bytes().unwrap(), Path::new("mem")).unwrap();
        assert_eq!(again.tensors, st.tensors);
        assert_eq!(again.metadata, st.metadata);
    }

    /// Every fixture listed in tests/fixtures/index.json reads, carries the
    /// spec it is indexed with, has the advertised dtype/batch/image size,
    /// a gradient for every parameter's name, and a loss that matches its
    /// logits and labels.
    #[test]
    fn every_indexed_fixture_reads() {
        let dir = fixtures_dir();
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let list = index["fixtures"].as_array().unwrap();
        assert!(list.len() > 100, "{} fixtures", list.len());
        for f in list {
            let file = f["file"].as_str().unwrap();
            let st = SafeTensors::read(&dir.join(file)).unwrap();
            let spec: Value = serde_json::from_str(&st.metadata["spec"]).unwrap();
            assert_eq!(spec, f["spec"], "{file}");
            let dtype = Dtype::from_name(f["dtype"].as_str().unwrap()).unwrap();
            let batch = f["batch"].as_u64().unwrap() as usize;
            let input = st.tensor("input").unwrap();
            assert_eq!(input.dtype, dtype, "{file}");
            assert_eq!(input.shape[0], batch, "{file}");
            if let Some(hw) = f["image_size"].as_u64() {
                assert_eq!(&input.shape[2..], &[hw as usize, hw as usize], "{file}");
            }
            let classes = spec["classes"].as_u64().unwrap() as usize;
            let (_, logits) = st.get_f64("logits").unwrap();
            let (_, labels) = st.get_i64("labels").unwrap();
            let (_, loss) = st.get_f64("loss").unwrap();
            let ce = cross_entropy(&logits, &labels, classes);
            let tol = if dtype == Dtype::F64 { 1e-12 } else { 1e-5 };
            assert!(
                (ce - loss[0]).abs() < tol * (1.0 + ce.abs()),
                "{file}: {ce} vs {}",
                loss[0]
            );
            for (name, g) in &st.tensors {
                if let Some(p) = name.strip_prefix("grad.") {
                    assert_eq!(st.tensor(p).unwrap().shape, g.shape, "{file}: {name}");
                }
            }
            assert!(st.contains("dx.0") && st.contains("fc.weight"), "{file}");
        }
    }
}

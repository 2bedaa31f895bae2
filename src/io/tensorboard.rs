//! TensorBoard event files: scalars written so `tensorboard --logdir DIR`
//! shows them, and a reader for them (tests and checks).
//!
//! Hand-written: the only crate for the format (`tensorboard-rs` 0.5.9)
//! pulls in an old `protobuf` and `image` and is not maintained; the part
//! resgrad needs is a record framing and four protobuf messages.
//!
//! # Format
//!
//! A file `events.out.tfevents.<unix seconds>.<host>` is a sequence of
//! TFRecords: `u64` little-endian length `n`, masked CRC32C of those 8
//! bytes (`u32` LE), `n` bytes of data, masked CRC32C of the data; a masked
//! CRC is `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping). Each
//! record is a serialised `tensorflow.Event`:
//!
//! ```text
//! Event      { double wall_time = 1; int64 step = 2;
//!              oneof { string file_version = 3; Summary summary = 5;
//!                      SessionLog session_log = 6; } }
//! Summary    { repeated Value value = 1; }
//! Value      { string tag = 1; float simple_value = 2; }
//! SessionLog { SessionStatus status = 1; }   // START = 1
//! ```
//!
//! The first record is `file_version = "brain.Event:2"`. A resumed run
//! opens a new file and writes `session_log { status: START }` at the first
//! step it will redo: TensorBoard then drops the events of the earlier
//! file from that step on (the steps the killed run had logged past its
//! checkpoint), so every step appears once.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const MASK_DELTA: u32 = 0xa282_ead8;

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field << 3) | 2) as u64);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// What an event carries besides its time and step.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    FileVersion(String),
    /// (tag, value) pairs of one Summary
    Scalars(Vec<(String, f32)>),
    /// a SessionLog with status START
    SessionStart,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub what: What,
}

impl Event {
    /// The protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(0x09); // field 1, fixed64
        out.extend_from_slice(&self.wall_time.to_le_bytes());
        out.push(0x10); // field 2, varint
        varint(&mut out, self.step as u64);
        match &self.what {
            What::FileVersion(v) => bytes_field(&mut out, 3, v.as_bytes()),
            What::Scalars(values) => {
                let mut summary = Vec::new();
                for (tag, v) in values {
                    let mut value = Vec::new();
                    bytes_field(&mut value, 1, tag.as_bytes());
                    value.push(0x15); // field 2, fixed32
                    value.extend_from_slice(&v.to_le_bytes());
                    bytes_field(&mut summary, 1, &value);
                }
                bytes_field(&mut out, 5, &summary);
            }
            What::SessionStart => bytes_field(&mut out, 6, &[0x08, 0x01]),
        }
        out
    }
}

/// Appends events to a new file in a log directory. Each event is one
/// `write` of a whole record; [`EventWriter::sync`] makes them durable.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Create `dir` and a new event file in it (named after the time, the
    /// host and the process, so runs and resumptions never share one);
    /// `restart_at`: write a SessionLog START at that step (a resumed run).
    pub fn create(dir: &Path, restart_at: Option<u64>) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "localhost".into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.{}",
            now.as_secs(),
            std::process::id(),
            now.subsec_nanos()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { path, file };
        w.write(&Event {
            wall_time: wall_time(),
            step: 0,
            what: What::FileVersion("brain.Event:2".into()),
        })?;
        if let Some(step) = restart_at {
            w.write(&Event {
                wall_time: wall_time(),
                step: step as i64,
                what: What::SessionStart,
            })?;
        }
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, e: &Event) -> Result<()> {
        self.file
            .write_all(&record(&e.encode()))
            .map_err(|err| Error::io(&self.path, err))
    }

    /// Scalars at `step`, stamped with the current time.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        self.write(&Event {
            wall_time: wall_time(),
            step: step as i64,
            what: What::Scalars(values.iter().map(|(t, v)| (t.clone(), *v as f32)).collect()),
        })
    }

    /// fsync the file.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
    /// (field, wire type, payload for length-delimited / fixed fields, value for varints)
    fn field(&mut self) -> Option<(u64, u64, &[u8], u64)> {
        let key = self.varint()?;
        let (field, wt) = (key >> 3, key & 7);
        match wt {
            0 => Some((field, wt, &[], self.varint()?)),
            1 => Some((field, wt, self.take(8)?, 0)),
            2 => {
                let n = self.varint()? as usize;
                Some((field, wt, self.take(n)?, 0))
            }
            5 => Some((field, wt, self.take(4)?, 0)),
            _ => None,
        }
    }
}

fn decode_event(data: &[u8]) -> Option<Event> {
    let mut c = Cursor { b: data, at: 0 };
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        what: What::Scalars(vec![]),
    };
    while !c.done() {
        match c.field()? {
            (1, 1, b, _) => e.wall_time = f64::from_le_bytes(b.try_into().ok()?),
            (2, 0, _, v) => e.step = v as i64,
            (3, 2, b, _) => e.what = What::FileVersion(String::from_utf8(b.to_vec()).ok()?),
            (5, 2, b, _) => {
                let mut values = vec![];
                let mut s = Cursor { b, at: 0 };
                while !s.done() {
                    if let (1, 2, vb, _) = s.field()? {
                        let mut vc = Cursor { b: vb, at: 0 };
                        let (mut tag, mut val) = (String::new(), f32::NAN);
                        while !vc.done() {
                            match vc.field()? {
                                (1, 2, t, _) => tag = String::from_utf8(t.to_vec()).ok()?,
                                (2, 5, f, _) => val = f32::from_le_bytes(f.try_into().ok()?),
                                _ => {}
                            }
                        }
                        values.push((tag, val));
                    }
                }
                e.what = What::Scalars(values);
            }
            (6, 2, b, _) => {
                let mut s = Cursor { b, at: 0 };
                while !s.done() {
                    if let (1, 0, _, 1) = s.field()? {
                        e.what = What::SessionStart;
                    }
                }
            }
            _ => {}
        }
    }
    Some(e)
}

/// Read every event of a file, checking the framing and both CRCs of
/// every record; any defect is an `Error::Format` naming the file and the
/// record's offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let fail = |at: usize, msg: &str| Error::Format {
        path: path.to_path_buf(),
        msg: format!("event record at byte {at}: {msg}"),
    };
    let mut out = vec![];
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes
            .get(at..at + 12)
            .ok_or_else(|| fail(at, "truncated header"))?;
        let len_bytes = &head[..8];
        if masked_crc(len_bytes).to_le_bytes() != head[8..12] {
            return Err(fail(at, "length CRC mismatch"));
        }
        let n = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8])) as usize;
        let data = at
            .checked_add(12)
            .and_then(|s| Some(s..s.checked_add(n)?))
            .and_then(|r| bytes.get(r))
            .ok_or_else(|| fail(at, "truncated data"))?;
        let crc = bytes
            .get(at + 12 + n..at + 16 + n)
            .ok_or_else(|| fail(at, "truncated data CRC"))?;
        if masked_crc(data).to_le_bytes() != crc {
            return Err(fail(at, "data CRC mismatch"));
        }
        out.push(decode_event(data).ok_or_else(|| fail(at, "malformed Event protobuf"))?);
        at += 16 + n;
    }
    Ok(out)
}

/// The event files of a log directory, in name order (TensorBoard's).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_util::TempDir;

    #[test]
    fn crc32c_and_mask_match_known_values() {
        // CRC32C("123456789") = 0xE3069283 (the check value of the Castagnoli polynomial)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // masked: rotate right by 15, add 0xa282ead8 (computed by hand)
        assert_eq!(masked_crc(b"123456789"), 0xc78ab0e5);
    }

    #[test]
    fn events_round_trip_through_a_file() {
        let t = TempDir::new("tb");
        let mut w = EventWriter::create(&t.0, Some(7)).unwrap();
        w.scalars(7, &[("train/loss".into(), 2.5), ("train/lr".into(), 0.1)])
            .unwrap();
        w.scalars(300, &[("probe/grad_norm/unit_0".into(), 1e-3)])
            .unwrap();
        w.sync().unwrap();
        let files = event_files(&t.0).unwrap();
        assert_eq!(files, vec![w.path().to_path_buf()]);
        let ev = read_events(&files[0]).unwrap();
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0].what, What::FileVersion("brain.Event:2".into()));
        assert_eq!((ev[1].step, &ev[1].what), (7, &What::SessionStart));
        assert_eq!(
            ev[2].what,
            What::Scalars(vec![("train/loss".into(), 2.5), ("train/lr".into(), 0.1)])
        );
        assert_eq!(ev[3].step, 300);
        assert!(ev[3].wall_time > 1.6e9);
    }

    #[test]
    fn known_encoding_of_one_scalar_event() {
        // hand-assembled protobuf: wall_time 1.5, step 3, summary{value{tag "a", simple_value 1.0}}
        let e = Event {
            wall_time: 1.5,
            step: 3,
            what: What::Scalars(vec![("a".into(), 1.0)]),
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 3, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(e.encode(), want);
        assert_eq!(decode_event(&want), Some(e));
    }

    #[test]
    fn damaged_records_are_format_errors() {
        let t = TempDir::new("tb-bad");
        let mut w = EventWriter::create(&t.0, None).unwrap();
        w.scalars(1, &[("x".into(), 1.0)]).unwrap();
        let p = w.path().to_path_buf();
        drop(w);
        let good = std::fs::read(&p).unwrap();
        for (what, bytes) in [
            ("truncated", good[..good.len() - 3].to_vec()),
            ("data CRC", {
                let mut b = good.clone();
                let k = b.len() - 6;
                b[k] ^= 1;
                b
            }),
            ("length CRC", {
                let mut b = good.clone();
                b[0] ^= 1;
                b
            }),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let e = read_events(&p).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{what}: {e:?}");
        }
    }
}

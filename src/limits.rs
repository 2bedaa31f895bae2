//! What a command would allocate, checked before it allocates: one place
//! for every size a user can type (a spec's depth, width, units, classes;
//! `--batch`; `--image`; a file's size; a gzip member's inflated size).
//!
//! The limit is the machine's physical memory (`MemTotal` of
//! `/proc/meminfo`), or `RESGRAD_MEMORY_LIMIT` (bytes, or with a suffix
//! `K`, `M`, `G`, `T`: powers of 1024) for people with more (swap) or who
//! want less. A request above it is an error that says what was asked and
//! what the limit is (exit 2), instead of an allocation failure (an abort)
//! or an integer overflow part-way. All arithmetic on user sizes here is in
//! `f64`, which cannot overflow.

use crate::error::{Error, Result};
use crate::model::{Arch, Block, Spec};

/// The environment variable that sets the memory limit.
pub const MEMORY_LIMIT_VAR: &str = "RESGRAD_MEMORY_LIMIT";

/// Bytes as `1.50 GiB`.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b:.0} B")
    } else if v < 1e6 {
        format!("{v:.2} {}", UNITS[i])
    } else {
        format!("{b:.3e} bytes")
    }
}

/// Parse `123`, `512M`, `64G`, `1.5T` (powers of 1024).
pub fn parse_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1024f64,
                'M' => 1024f64.powi(2),
                'G' => 1024f64.powi(3),
                'T' => 1024f64.powi(4),
                _ => return None,
            };
            (&s[..i], m)
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * mul)
}

/// Physical memory from `/proc/meminfo` (`None` where there is none).
fn physical_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// The memory limit in bytes and where it comes from (for messages).
pub fn memory_limit() -> Result<(f64, String)> {
    if let Some(v) = std::env::var_os(MEMORY_LIMIT_VAR) {
        let s = v.to_string_lossy();
        return parse_bytes(&s)
            .map(|b| (b, format!("{MEMORY_LIMIT_VAR}={s}")))
            .ok_or_else(|| {
                Error::Config(format!(
                    "{MEMORY_LIMIT_VAR}={s:?}: expected a size in bytes, e.g. 64G, 512M or 1000000"
                ))
            });
    }
    // without /proc/meminfo: 2^48 bytes still stops sizes that overflow
    Ok(match physical_memory() {
        Some(b) => (
            b,
            format!("this machine's memory; {MEMORY_LIMIT_VAR} raises it"),
        ),
        None => (
            2f64.powi(48),
            format!("the default without /proc/meminfo; {MEMORY_LIMIT_VAR} raises it"),
        ),
    })
}

/// Refuse `bytes` (described by `what`) above the memory limit.
pub fn check_bytes(what: &str, bytes: f64) -> Result<()> {
    let (limit, source) = memory_limit()?;
    if bytes.is_nan() || bytes > limit {
        return Err(Error::Config(format!(
            "{what} would need about {}, more than the limit of {} ({source})",
            human_bytes(bytes),
            human_bytes(limit)
        )));
    }
    Ok(())
}

/// Activations a unit keeps per element of its output (inputs, branch
/// steps, BN statistics and outputs, the sum, gradients during its
/// backward); measured peaks are below these (see `footprint`).
const MLP_TENSORS_PER_UNIT: f64 = 10.0;
const CONV_TENSORS_PER_UNIT: f64 = 6.0;
/// Bookkeeping of one unit (its structs and small vectors), bytes.
const UNIT_OVERHEAD: f64 = 8192.0;

/// Estimated peak bytes of training `spec` on `batch` images of side
/// `image` (cifar) in f32: parameters with their gradients and momentum
/// (3 x 4 bytes each, from [`Spec::param_bound`]), the activations every
/// unit keeps for its backward, the logits, probabilities and their
/// gradient, and each unit's bookkeeping. Measured against peak RSS
/// (`resgrad bench`, one thread): MLP hidden 512 x 100 units at batch 1024
/// estimated 3.05 GB, measured 2.75 GB; 100,000 units of width 1 at batch
/// 128 estimated 1.3 GB, measured 0.99 GB; ResNet-56 at batch 256
/// estimated 1.7 GB, measured 1.2 GB. An upper estimate, so that what it
/// accepts fits; f64 throughout, so absurd sizes cannot overflow.
pub fn footprint(spec: &Spec, image: usize, batch: usize) -> f64 {
    let f = |v: usize| v as f64;
    let units = match spec.arch {
        Arch::Mlp => f(spec.units.unwrap_or(0)),
        Arch::Cifar => 3.0 * ((f(spec.depth.unwrap_or(0)) - 2.0).max(0.0) / 6.0),
    };
    let per_sample = match spec.arch {
        Arch::Mlp => {
            let h = f(spec.hidden.unwrap_or(0));
            f(spec.in_features.unwrap_or(0))
                + MLP_TENSORS_PER_UNIT * h * (f(spec.units.unwrap_or(0)) + 1.0)
        }
        Arch::Cifar => {
            let per = match spec.block {
                Block::Basic => 6.0,
                Block::Bottleneck => 9.0,
            };
            let expand = if spec.block == Block::Bottleneck {
                4.0
            } else {
                1.0
            };
            let n = (f(spec.depth.unwrap_or(0)) - 2.0).max(0.0) / per;
            let side = f(image);
            let mut acts = f(spec.in_channels) * side * side;
            acts += CONV_TENSORS_PER_UNIT * f(spec.width) * side * side; // stem
            for s in 0..3 {
                let c = f(spec.width) * 2f64.powi(s) * expand;
                let hw = (side / 2f64.powi(s)).ceil().powi(2);
                acts += CONV_TENSORS_PER_UNIT * n * c * hw;
            }
            acts
        }
    };
    let classes = f(spec.classes);
    12.0 * spec.param_bound()
        + 4.0 * f(batch) * (per_sample + 3.0 * classes)
        + UNIT_OVERHEAD * units
}

/// Refuse to train `spec` on `batch` images of side `image` when the
/// estimated peak ([`footprint`]) is above the memory limit. `command`
/// names what is asking (`train`, `bench`, `flow`, `grads`).
pub fn check_model(command: &str, spec: &Spec, image: usize, batch: usize) -> Result<()> {
    let bytes = footprint(spec, image, batch);
    let geometry = match spec.arch {
        Arch::Cifar => format!(", {image}x{image} images"),
        Arch::Mlp => String::new(),
    };
    check_bytes(
        &format!(
            "{command}: {} at batch {batch}{geometry} (about {:.3e} parameters and their activations)",
            spec.label(),
            spec.param_bound()
        ),
        bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("1000"), Some(1000.0));
        assert_eq!(parse_bytes("2K"), Some(2048.0));
        assert_eq!(parse_bytes("1.5g"), Some(1.5 * 1024f64.powi(3)));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5X"), None);
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.50 KiB");
    }

    #[test]
    fn footprint_grows_with_every_size() {
        let spec = Spec::from_json(
            r#"{"arch":"mlp","in_features":784,"hidden":64,"units":4,"unit":"original","shortcut":{"kind":"identity"}}"#,
        )
        .unwrap();
        let base = footprint(&spec, 28, 128);
        assert!(footprint(&spec, 28, 256) > base);
        let mut wide = spec.clone();
        wide.classes = 100_000_000;
        assert!(footprint(&wide, 28, 128) > 1e11);
        let mut deep = spec.clone();
        deep.units = Some(10_000_000);
        deep.hidden = Some(1);
        assert!(footprint(&deep, 28, 128) > 4e10);
        // no overflow for absurd batches
        assert!(footprint(&spec, 28, usize::MAX).is_finite());
    }
}

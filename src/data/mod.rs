//! Image classification data: readers for the official CIFAR-10/100 and
//! MNIST formats, the built-in 5,000-digit MNIST sample, your own data (an
//! image folder of PNGs or arrays in a safetensors file, see `own.rs`), per-channel
//! normalisation, the paper's augmentation (pad 4, random crop, random
//! horizontal flip), a seeded background batch loader and a downloader.
//!
//! # Layout and value range
//!
//! A [`Dataset`] holds its images as one `Vec<f32>` in NCHW order
//! (`n * c * h * w` values, row-major, contiguous). Every reader returns the
//! **raw pixel values 0..=255 as f32** (no scaling); call
//! [`DataSplit::normalize`] (statistics from the train split, applied to
//! both splits) to get zero-mean, unit-variance channels. Labels are `u8`
//! class indices in `0..classes`.
//!
//! # Typical use
//!
//! ```no_run
//! use std::sync::Arc;
//! use resgrad::data::{self, Augment, Loader};
//! # fn main() -> resgrad::Result<()> {
//! let mut split = data::read_cifar10("../shared/data/cifar-10-batches-bin".as_ref())?;
//! let _val = split.hold_out(5000)?; // last 5k of train, before the stats
//! split.normalize();
//! let train = Arc::new(split.train);
//! let loader = Loader::new(train, 128, 42, Some(Augment::cifar()))?;
//! let mut batches = loader.epoch(0);
//! while let Some(batch) = batches.next() {
//!     // ... forward/backward on batch.images, batch.labels ...
//!     batches.recycle(batch); // hand the buffers back: no allocation in steady state
//! }
//! for batch in split.test.eval_batches(500) {
//!     // ... evaluate ...
//! #   let _ = batch;
//! }
//! # Ok(()) }
//! ```

mod augment;
mod download;
mod loader;
mod npz;
mod own;
mod readers;

pub use augment::{hflip_into, pad_crop_into, Augment};
pub use download::{download, download_files, remote_files, DataKind, RemoteFile};
pub use loader::{Batch, EpochIter, EvalIter, Loader};
pub use npz::{npz_geometry, read_npy_header, read_npz, NpyHeader, NPZ_KEYS};
pub use own::{
    arrays_geometry, folder_classes, folder_geometry, read_arrays, read_image_folder, Geometry,
};
pub use readers::{
    builtin_mnist5k, cifar_records_from_bytes, idx_images_from_bytes, idx_labels_from_bytes,
    parse_mnist_csv, read_cifar10, read_cifar100, read_mnist, read_mnist_csv, MNIST5K_CSV_GZ,
};

use crate::{Error, Result};

/// A labelled image set: `images` is (n, c, h, w) row-major f32, `labels`
/// has `n` entries in `0..classes`. Readers fill `images` with the raw
/// 0..=255 pixel values; [`Norm::apply`] rescales them in place.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// (n, c, h, w) pixel values, row-major.
    pub images: Vec<f32>,
    /// One class index per image.
    pub labels: Vec<u8>,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Number of classes (labels are `< classes`).
    pub classes: usize,
    /// A short name such as `cifar10/train`.
    pub name: String,
}

/// A train split and a test (held-out) split of the same data.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSplit {
    pub train: Dataset,
    pub test: Dataset,
}

/// Per-channel mean and standard deviation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Norm {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Dataset {
    /// Build a dataset, checking that the buffer sizes agree with the
    /// dimensions and that every label is below `classes`.
    pub fn new(
        name: impl Into<String>,
        images: Vec<f32>,
        labels: Vec<u8>,
        c: usize,
        h: usize,
        w: usize,
        classes: usize,
    ) -> Result<Dataset> {
        let name = name.into();
        let n = labels.len();
        let per = c * h * w;
        if per == 0 || images.len() != n * per {
            return Err(Error::Config(format!(
                "dataset {name}: {} image values for {n} labels of {c}x{h}x{w}",
                images.len()
            )));
        }
        if classes == 0 || classes > 256 {
            return Err(Error::Config(format!(
                "dataset {name}: {classes} classes (must be 1..=256)"
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Config(format!(
                "dataset {name}: label {l} of sample {i} is not below {classes}"
            )));
        }
        Ok(Dataset {
            images,
            labels,
            n,
            c,
            h,
            w,
            classes,
            name,
        })
    }

    /// Values per image (`c * h * w`).
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The pixels of sample `i` (c, h, w).
    pub fn image(&self, i: usize) -> &[f32] {
        let p = self.image_len();
        &self.images[i * p..(i + 1) * p]
    }

    /// How many samples each class has.
    pub fn class_histogram(&self) -> Vec<usize> {
        let mut h = vec![0usize; self.classes];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    /// A new dataset made of the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], name: impl Into<String>) -> Result<Dataset> {
        let p = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * p);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.n {
                return Err(Error::Config(format!(
                    "subset of {}: index {i} out of range (n = {})",
                    self.name, self.n
                )));
            }
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            images,
            labels,
            n: indices.len(),
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes,
            name: name.into(),
        })
    }

    /// Remove the last `n_val` samples and return them as a new dataset
    /// (deterministic: CIFAR's `--val 5000` is the last 5,000 training
    /// images). `n_val` must leave at least one sample behind.
    pub fn split_off(&mut self, n_val: usize, name: impl Into<String>) -> Result<Dataset> {
        if n_val == 0 || n_val >= self.n {
            return Err(Error::Config(format!(
                "validation size {n_val} must be between 1 and {} (the {} samples of {})",
                self.n.saturating_sub(1),
                self.n,
                self.name
            )));
        }
        let keep = self.n - n_val;
        let p = self.image_len();
        let images = self.images.split_off(keep * p);
        let labels = self.labels.split_off(keep);
        self.images.shrink_to_fit();
        self.labels.shrink_to_fit();
        self.n = keep;
        Ok(Dataset {
            images,
            labels,
            n: n_val,
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes,
            name: name.into(),
        })
    }

    /// Sequential batches in dataset order, the last one partial (for
    /// evaluation). `batch_size` 0 is treated as 1.
    pub fn eval_batches(&self, batch_size: usize) -> EvalIter<'_> {
        EvalIter::new(self, batch_size)
    }

    /// Copy the samples at `indices` into `batch`, reusing its buffers.
    pub fn gather_into(&self, indices: &[usize], batch: &mut Batch) {
        let p = self.image_len();
        batch.images.clear();
        batch.labels.clear();
        batch.images.reserve(indices.len() * p);
        for &i in indices {
            batch.images.extend_from_slice(self.image(i));
            batch.labels.push(self.labels[i] as usize);
        }
        batch.n = indices.len();
        batch.c = self.c;
        batch.h = self.h;
        batch.w = self.w;
    }
}

impl Norm {
    /// Per-channel mean and (population) standard deviation of `ds`,
    /// accumulated in f64. A channel with (near) zero spread gets std 1.
    pub fn of(ds: &Dataset) -> Norm {
        let hw = ds.h * ds.w;
        let mut sum = vec![0f64; ds.c];
        let mut sq = vec![0f64; ds.c];
        for img in ds.images.chunks_exact(ds.image_len().max(1)) {
            for (ch, plane) in img.chunks_exact(hw).enumerate() {
                let (mut s, mut q) = (0f64, 0f64);
                for &v in plane {
                    let v = v as f64;
                    s += v;
                    q += v * v;
                }
                sum[ch] += s;
                sq[ch] += q;
            }
        }
        let count = (ds.n * hw).max(1) as f64;
        let mut mean = Vec::with_capacity(ds.c);
        let mut std = Vec::with_capacity(ds.c);
        for ch in 0..ds.c {
            let m = sum[ch] / count;
            let var = (sq[ch] / count - m * m).max(0.0);
            let s = var.sqrt();
            mean.push(m as f32);
            std.push(if s < 1e-6 { 1.0 } else { s as f32 });
        }
        Norm { mean, std }
    }

    /// Rescale `ds` in place: `(x - mean[c]) / std[c]`.
    pub fn apply(&self, ds: &mut Dataset) -> Result<()> {
        if self.mean.len() != ds.c || self.std.len() != ds.c {
            return Err(Error::Config(format!(
                "normalisation has {} channels, dataset {} has {}",
                self.mean.len(),
                ds.name,
                ds.c
            )));
        }
        let hw = ds.h * ds.w;
        let p = ds.image_len();
        if p == 0 {
            return Ok(());
        }
        for img in ds.images.chunks_exact_mut(p) {
            for (ch, plane) in img.chunks_exact_mut(hw).enumerate() {
                let (m, inv) = (self.mean[ch], 1.0 / self.std[ch]);
                for v in plane {
                    *v = (*v - m) * inv;
                }
            }
        }
        Ok(())
    }
}

impl DataSplit {
    /// Compute per-channel statistics on the train split and apply them to
    /// both splits. Call [`DataSplit::hold_out`] first if you want a
    /// validation set, so that it does not leak into the statistics (and
    /// normalise it with the returned [`Norm`]).
    pub fn normalize(&mut self) -> Norm {
        let norm = Norm::of(&self.train);
        // Channel counts agree by construction (both splits come from one reader).
        let _ = norm.apply(&mut self.train);
        let _ = norm.apply(&mut self.test);
        norm
    }

    /// Move the last `n_val` training samples into a validation set and
    /// return it (deterministic, e.g. `--val 5000` on CIFAR-10 leaves 45k/5k).
    pub fn hold_out(&mut self, n_val: usize) -> Result<Dataset> {
        let name = self.train.name.replace("/train", "") + "/val";
        self.train.split_off(n_val, name)
    }
}

/// Mix a seed with two counters into a new 64-bit seed (splitmix64 rounds),
/// so that per-epoch and per-batch random streams are independent and can be
/// recreated from `(seed, epoch, batch)` alone.
pub(crate) fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    fn sm(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    sm(sm(sm(seed) ^ a) ^ b)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let k = COUNTER.fetch_add(1, Ordering::SeqCst);
            let p = std::env::temp_dir().join(format!(
                "resgrad-data-{tag}-{}-{k}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The real data sets: `$RESGRAD_SHARED_DATA` if set (e.g. for a git
    /// worktree that has no `../shared`), else `../shared/data` relative to
    /// the crate root; `None` if absent (tests then skip, saying so).
    pub fn shared_data() -> Option<PathBuf> {
        let p = match std::env::var_os("RESGRAD_SHARED_DATA") {
            Some(v) => PathBuf::from(v),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
        };
        p.is_dir().then_some(p)
    }

    /// A small dataset with pixel value = a function of (sample, c, y, x).
    pub fn toy(n: usize, c: usize, h: usize, w: usize, classes: usize) -> super::Dataset {
        let mut images = Vec::with_capacity(n * c * h * w);
        for i in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        images.push((i * 1000 + ch * 100 + y * 10 + x) as f32);
                    }
                }
            }
        }
        let labels = (0..n).map(|i| (i % classes) as u8).collect();
        super::Dataset::new("toy", images, labels, c, h, w, classes).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::toy;
    use super::*;

    #[test]
    fn normalize_gives_zero_mean_unit_std_on_train() {
        let train = toy(20, 3, 4, 4, 5);
        let test = toy(7, 3, 4, 4, 5);
        let mut s = DataSplit { train, test };
        let norm = s.normalize();
        assert_eq!(norm.mean.len(), 3);
        let again = Norm::of(&s.train);
        for ch in 0..3 {
            assert!(again.mean[ch].abs() < 1e-3, "{:?}", again);
            assert!((again.std[ch] - 1.0).abs() < 1e-3, "{:?}", again);
        }
        // test split used the train statistics: its first value is
        // (0 - mean0) / std0
        assert!((s.test.images[0] - (0.0 - norm.mean[0]) / norm.std[0]).abs() < 1e-5);
    }

    #[test]
    fn norm_channel_mismatch_is_error() {
        let mut d = toy(2, 1, 2, 2, 2);
        let n = Norm {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        assert!(matches!(n.apply(&mut d), Err(Error::Config(_))));
    }

    #[test]
    fn hold_out_takes_last_samples() {
        let mut s = DataSplit {
            train: toy(10, 1, 2, 2, 3),
            test: toy(2, 1, 2, 2, 3),
        };
        let orig = s.train.clone();
        let val = s.hold_out(3).unwrap();
        assert_eq!(s.train.n, 7);
        assert_eq!(val.n, 3);
        assert_eq!(val.image(0), orig.image(7));
        assert_eq!(val.labels, orig.labels[7..].to_vec());
        assert_eq!(s.train.images.len(), 7 * 4);
        assert!(s.hold_out(0).is_err());
        assert!(s.hold_out(7).is_err());
    }

    #[test]
    fn dataset_new_validates() {
        assert!(Dataset::new("x", vec![0.0; 8], vec![0, 1], 1, 2, 2, 2).is_ok());
        assert!(Dataset::new("x", vec![0.0; 7], vec![0, 1], 1, 2, 2, 2).is_err());
        assert!(Dataset::new("x", vec![0.0; 8], vec![0, 2], 1, 2, 2, 2).is_err());
    }
}

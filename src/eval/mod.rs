//! `resgrad eval` and `resgrad predict`: a trained network on a whole data
//! set (loss, accuracy, per-class accuracy, confusion matrix) or on single
//! images (the top-k classes with their probabilities).
//!
//! A network comes from a run directory (its `config.json`, and
//! `weights.safetensors`, else its last `checkpoint.safetensors`) or from a
//! weights file and a spec. Inputs are normalised exactly as training
//! normalised them: per channel, `(x - mean) / std` on raw 0..=255 pixels,
//! with the statistics of the training split (`DataSplit::normalize`) of
//! the run's data (after its held-out `val` images), or, for weights and a
//! spec, of the `--data` set's training split (default: the built-in
//! digits). Runs and weights written by `train` carry these statistics
//! (`config.json`'s `norm`, the weights' `norm` metadata, see
//! [`norm_metadata`]), and then those are applied. Evaluation runs in eval mode (BatchNorm running statistics, no
//! dropout), as the training loop's evaluations do.

mod png_image;

pub use png_image::read_png;

use crate::data::{Dataset, Norm};
use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensors;
use crate::model::{Arch, Net, Spec};
use crate::train::run::Evaluation;
use crate::train::{DataSource, TrainConfig};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The weights' metadata key of the normalisation.
pub const NORM_METADATA: &str = "norm";

/// The normalisation as the weights' metadata value: JSON
/// `{"mean": [...], "std": [...], "pixel_range": [0, 255]}`, per channel, for
/// `x = (pixel - mean[c]) / std[c]` on raw pixel values in `pixel_range`.
pub fn norm_metadata(norm: &Norm) -> String {
    // written as f32 (as config.json writes them), not widened to f64
    #[derive(Serialize)]
    struct Meta<'a> {
        mean: &'a [f32],
        std: &'a [f32],
        pixel_range: [u32; 2],
    }
    let m = Meta {
        mean: &norm.mean,
        std: &norm.std,
        pixel_range: [0, 255],
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// Where the network comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// a run directory written by `resgrad train`
    Run(PathBuf),
    /// a weights file (the reference's state-dict names) and a spec
    Files { weights: PathBuf, spec: PathBuf },
}

/// A trained network with the normalisation its inputs need.
pub struct Trained {
    pub net: Net<f32>,
    pub norm: Norm,
    /// the data set the normalisation and the default evaluation set come from
    pub data: DataSource,
    /// `(c, h, w)` of the training images
    pub geom: (usize, usize, usize),
    /// the evaluation set of that data, normalised (a run's held-out `val`
    /// images when it had some, else the test split)
    pub eval: Dataset,
    /// the weights file read
    pub weights: PathBuf,
}

/// Open a network: read its weights, and load its data for the
/// normalisation (and the default evaluation set). `data` replaces the
/// data set of a weights file and spec (default `mnist5k`); for a run it
/// is ignored here (see [`Trained::eval_set`]).
pub fn open(source: &ModelSource, data: Option<&DataSource>) -> Result<Trained> {
    let (spec, data_src, val, weights, stored) = match source {
        ModelSource::Run(dir) => {
            let p = dir.join("config.json");
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
                path: p.clone(),
                msg: format!("not a run configuration: {e}"),
            })?;
            let w = [
                crate::train::run::WEIGHTS,
                crate::train::checkpoint::CHECKPOINT,
            ]
            .iter()
            .map(|f| dir.join(f))
            .find(|f| f.exists())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{}: no weights.safetensors or checkpoint.safetensors (has the run trained?)",
                    dir.display()
                ))
            })?;
            (cfg.spec, cfg.data, cfg.val, w, cfg.norm)
        }
        ModelSource::Files { weights, spec } => (
            Spec::from_file(spec)?,
            data.cloned().unwrap_or(DataSource::Mnist5k),
            0,
            weights.clone(),
            None,
        ),
    };
    let st = SafeTensors::read(&weights)?;
    let stored = match (stored, st.metadata.get(NORM_METADATA)) {
        (Some(n), _) => Some(n),
        (None, Some(m)) => Some(serde_json::from_str::<Norm>(m).map_err(|e| Error::Format {
            path: weights.clone(),
            msg: format!(
                "metadata {NORM_METADATA:?} is not {{\"mean\": [...], \"std\": [...]}}: {e}"
            ),
        })?),
        (None, None) => None,
    };
    let mut split = data_src.load()?;
    let held_out = if val > 0 {
        Some(split.hold_out(val)?)
    } else {
        None
    };
    // the statistics training used: stored, else recomputed as train does
    let norm = stored.unwrap_or_else(|| Norm::of(&split.train));
    let mut eval = held_out.unwrap_or(split.test);
    norm.apply(&mut eval)?;
    let t = &split.train;
    check_fits(&spec, t, &data_src.to_string())?;
    let mut net: Net<f32> = Net::new(&spec, t.h, 0)?;
    net.load_state(&st)?;
    Ok(Trained {
        net,
        norm,
        data: data_src,
        geom: (t.c, t.h, t.w),
        eval,
        weights,
    })
}

/// The network's input shape is that of `ds`'s images.
fn check_fits(spec: &Spec, ds: &Dataset, what: &str) -> Result<()> {
    let fits = match spec.arch {
        Arch::Cifar => ds.c == spec.in_channels && ds.h == ds.w,
        Arch::Mlp => Some(ds.image_len()) == spec.in_features,
    };
    if !fits {
        return Err(Error::Config(format!(
            "{what} has {}x{}x{} images; the network wants {}",
            ds.c,
            ds.h,
            ds.w,
            match spec.arch {
                Arch::Cifar => format!("{} channels, square images", spec.in_channels),
                Arch::Mlp => format!("{} features", spec.in_features.unwrap_or(0)),
            }
        )));
    }
    if ds.classes > spec.classes {
        return Err(Error::Config(format!(
            "{what} has {} classes; the network has {}",
            ds.classes, spec.classes
        )));
    }
    Ok(())
}

impl Trained {
    /// The set to evaluate: the network's own (`None`), or the test split of
    /// `data`, normalised with the network's statistics.
    pub fn eval_set(&self, data: Option<&DataSource>) -> Result<Dataset> {
        match data {
            Some(d) if *d != self.data => {
                let mut test = d.load()?.test;
                self.check_geom(&test, &d.to_string())?;
                self.norm.apply(&mut test)?;
                Ok(test)
            }
            _ => Ok(self.eval.clone()),
        }
    }

    fn check_geom(&self, ds: &Dataset, what: &str) -> Result<()> {
        let (c, h, w) = self.geom;
        if (ds.c, ds.h, ds.w) != (c, h, w) {
            return Err(Error::Config(format!(
                "{what} has {}x{}x{} images; the network was trained on {c}x{h}x{w}",
                ds.c, ds.h, ds.w
            )));
        }
        Ok(())
    }

    /// Class probabilities of one raw image (`c*h*w` values, 0..=255,
    /// CHW): normalised, forward in eval mode, softmax.
    pub fn probabilities(&mut self, raw: &[f32]) -> Result<Vec<f64>> {
        let (c, h, w) = self.geom;
        if raw.len() != c * h * w {
            return Err(Error::Config(format!(
                "the image has {} values; the network was trained on {c}x{h}x{w} images",
                raw.len()
            )));
        }
        let mut ds = Dataset::new("image", raw.to_vec(), vec![0], c, h, w, 1)?;
        self.norm.apply(&mut ds)?;
        self.net.forward(&ds.images, false)?;
        Ok(softmax(self.net.logits()))
    }
}

/// Softmax in f64 of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The `k` most probable classes, most probable first (ties: lower class first).
pub fn top_k(probs: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, probs[i])).collect()
}

/// One class's share of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassStats {
    pub class: usize,
    /// images of this class
    pub n: usize,
    /// of them classified correctly
    pub correct: usize,
    /// `correct / n` (`None` without images)
    pub accuracy: Option<f64>,
}

/// The result of `resgrad eval`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// the weights evaluated
    pub weights: String,
    /// the evaluation set (`mnist5k/test`, ...)
    pub data: String,
    pub n: usize,
    /// mean cross-entropy
    pub loss: f64,
    pub accuracy: f64,
    pub per_class: Vec<ClassStats>,
    /// `confusion[true][predicted]`: image counts
    pub confusion: Vec<Vec<usize>>,
}

/// The run directory's file of its final evaluation: an [`EvalReport`]
/// as JSON (`resgrad eval --json` writes the same form). `report` draws
/// its confusion matrix.
pub const CONFUSION_JSON: &str = "confusion.json";

/// Evaluate `net` on `ds` in eval mode, `batch` images at a time.
pub fn evaluate(net: &mut Net<f32>, ds: &Dataset, batch: usize) -> Result<EvalReport> {
    let e = crate::train::run::evaluate(net, ds, batch)?;
    Ok(EvalReport::new(String::new(), &ds.name, &e))
}

impl EvalReport {
    /// The report of an evaluation of `weights` on the set `data`.
    pub fn new(weights: String, data: &str, e: &Evaluation) -> EvalReport {
        let per_class = e
            .confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                let correct = row[c];
                ClassStats {
                    class: c,
                    n,
                    correct,
                    accuracy: (n > 0).then(|| correct as f64 / n as f64),
                }
            })
            .collect();
        EvalReport {
            weights,
            data: data.to_string(),
            n: e.n,
            loss: e.loss,
            accuracy: e.accuracy,
            per_class,
            confusion: e.confusion.clone(),
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }
}

/// The ten CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// A class's name where the data set has names (CIFAR-10), else its index.
pub fn class_name(data: &DataSource, class: usize) -> String {
    match (data, CIFAR10_CLASSES.get(class)) {
        (DataSource::Cifar10(_), Some(n)) => format!("{class} ({n})"),
        _ => class.to_string(),
    }
}

impl EvalReport {
    /// The report as text: totals, per-class accuracy and, for up to 20
    /// classes, the confusion matrix (rows: true class, columns: predicted).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} on {} ({} images): loss {:.4}, accuracy {:.2}%\n\n",
            self.weights,
            self.data,
            self.n,
            self.loss,
            100.0 * self.accuracy
        );
        let _ = writeln!(
            s,
            "{:>5} {:>7} {:>7} {:>9}",
            "class", "images", "correct", "accuracy"
        );
        for c in &self.per_class {
            let acc = c
                .accuracy
                .map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(s, "{:>5} {:>7} {:>7} {acc:>9}", c.class, c.n, c.correct);
        }
        let k = self.confusion.len();
        if k <= 20 {
            let _ = writeln!(
                s,
                "\nconfusion matrix (rows: true class, columns: predicted)"
            );
            let width = self.n.to_string().len().max(2) + 1;
            let _ = write!(s, "{:>5}", "");
            for c in 0..k {
                let _ = write!(s, "{c:>width$}");
            }
            s.push('\n');
            for (t, row) in self.confusion.iter().enumerate() {
                let _ = write!(s, "{t:>5}");
                for v in row {
                    let _ = write!(s, "{v:>width$}");
                }
                s.push('\n');
            }
        } else {
            let _ = writeln!(s, "\n({k} classes: the confusion matrix is in --json)");
        }
        s
    }
}

/// A record of a data set by index: its raw pixels (0..=255) and label.
pub fn record(data: &DataSource, train_split: bool, index: usize) -> Result<(Vec<f32>, usize)> {
    let split = data.load()?;
    let ds = if train_split { split.train } else { split.test };
    if index >= ds.n {
        return Err(Error::Config(format!(
            "index {index} is out of range: {} has {} images",
            ds.name, ds.n
        )));
    }
    Ok((ds.image(index).to_vec(), ds.labels[index] as usize))
}

/// Where a weights file or run is read from, for messages.
pub fn describe(source: &ModelSource, weights: &Path) -> String {
    match source {
        ModelSource::Run(dir) => format!("run {} ({})", dir.display(), file_name(weights)),
        ModelSource::Files { .. } => weights.display().to_string(),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1.0, 3.0, 3.0, -1000.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert_eq!(p[3], 0.0);
        let e = (2.0f64).exp();
        assert!((p[1] - e / (1.0 + 2.0 * e)).abs() < 1e-15);
        let t = top_k(&p, 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(top_k(&p, 10).len(), 4);
    }

    #[test]
    fn report_text_lists_classes_and_the_matrix() {
        let r = EvalReport {
            weights: "w".into(),
            data: "d/test".into(),
            n: 5,
            loss: 0.5,
            accuracy: 0.6,
            per_class: vec![
                ClassStats {
                    class: 0,
                    n: 3,
                    correct: 2,
                    accuracy: Some(2.0 / 3.0),
                },
                ClassStats {
                    class: 1,
                    n: 2,
                    correct: 1,
                    accuracy: Some(0.5),
                },
            ],
            confusion: vec![vec![2, 1], vec![1, 1]],
        };
        let t = r.to_text();
        assert!(t.starts_with("w on d/test (5 images): loss 0.5000, accuracy 60.00%"));
        assert!(t.contains("    0       3       2    66.67%"), "{t}");
        assert!(t.contains("    0  2  1\n    1  1  1\n"), "{t}");
    }
}

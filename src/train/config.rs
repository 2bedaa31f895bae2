//! Everything that defines a training run, saved as `config.json` so the
//! run can be repeated (`resgrad train --config RUN_DIR/config.json`) or
//! resumed.

use super::optim::SgdConfig;
use super::schedule::Schedule;
use crate::data::{self, Augment, DataSplit, Norm};
use crate::error::{Error, Result};
use crate::model::{Arch, Spec};
use crate::precision::Precision;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSource {
    /// the built-in 5,000 MNIST digits (4,000 train / 1,000 held out)
    Mnist5k,
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    Mnist(PathBuf),
    /// an image folder: `DIR/{train,test}/<class>/*.png` (torchvision's ImageFolder)
    Folder(PathBuf),
    /// a safetensors file with `images`, `labels`, `test_images`, `test_labels`
    Arrays(PathBuf),
    /// NumPy arrays in an `.npz`: `x_train`, `y_train`, `x_test`, `y_test`
    Npz(PathBuf),
}

impl TryFrom<String> for DataSource {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        DataSource::parse(&s)
    }
}

impl From<DataSource> for String {
    fn from(d: DataSource) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Mnist5k => write!(f, "mnist5k"),
            DataSource::Cifar10(p) => write!(f, "cifar10:{}", p.display()),
            DataSource::Cifar100(p) => write!(f, "cifar100:{}", p.display()),
            DataSource::Mnist(p) => write!(f, "mnist:{}", p.display()),
            DataSource::Folder(p) => write!(f, "folder:{}", p.display()),
            DataSource::Arrays(p) => write!(f, "safetensors:{}", p.display()),
            DataSource::Npz(p) => write!(f, "npz:{}", p.display()),
        }
    }
}

impl DataSource {
    /// `mnist5k`, `cifar10:DIR`, `cifar100:DIR`, `mnist:DIR`, `folder:DIR`,
    /// `safetensors:FILE` or `npz:FILE`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "mnist5k" {
            return Ok(DataSource::Mnist5k);
        }
        let (kind, dir) = s.split_once(':').ok_or_else(|| {
            Error::Config(format!(
                "data source {s:?}: expected mnist5k, cifar10:DIR, cifar100:DIR, mnist:DIR, folder:DIR, safetensors:FILE or npz:FILE"
            ))
        })?;
        if dir.is_empty() {
            return Err(Error::Config(format!(
                "data source {s:?} names no directory"
            )));
        }
        let p = PathBuf::from(dir);
        match kind {
            "cifar10" => Ok(DataSource::Cifar10(p)),
            "cifar100" => Ok(DataSource::Cifar100(p)),
            "mnist" => Ok(DataSource::Mnist(p)),
            "folder" => Ok(DataSource::Folder(p)),
            "safetensors" => Ok(DataSource::Arrays(p)),
            "npz" => Ok(DataSource::Npz(p)),
            _ => Err(Error::Config(format!(
                "unknown data set {kind:?} (cifar10, cifar100, mnist, mnist5k, folder, safetensors, npz)"
            ))),
        }
    }

    /// Read the data set (raw 0..255 pixels).
    pub fn load(&self) -> Result<DataSplit> {
        match self {
            DataSource::Mnist5k => data::builtin_mnist5k(),
            DataSource::Cifar10(p) => data::read_cifar10(p),
            DataSource::Cifar100(p) => data::read_cifar100(p),
            DataSource::Mnist(p) => data::read_mnist(p),
            DataSource::Folder(p) => data::read_image_folder(p),
            DataSource::Arrays(p) => data::read_arrays(p),
            DataSource::Npz(p) => data::read_npz(p),
        }
    }

    /// The paper's augmentation for CIFAR; none for digits and for your own
    /// data (turn it on in a config file if your images suit it).
    pub fn default_augment(&self) -> Augment {
        match self {
            DataSource::Cifar10(_) | DataSource::Cifar100(_) => Augment::cifar(),
            _ => Augment::none(),
        }
    }
}

/// A complete, reproducible description of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// label of the run in tables and plots
    pub name: String,
    pub spec: Spec,
    pub data: DataSource,
    /// stop after this many iterations (an epoch count is converted)
    pub iters: u64,
    pub batch: usize,
    pub sgd: SgdConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// pad-crop-flip augmentation (the data set's default unless overridden)
    pub augment: Augment,
    /// hold out this many training images as the evaluation set (0: evaluate on the test split)
    pub val: usize,
    /// probe the gradient flow every this many iterations (0: never)
    pub flow_every: u64,
    /// evaluate and checkpoint every this many iterations (0: once per epoch)
    pub eval_every: u64,
    /// a gradient norm ||dL/dx_l|| above this stops the run as diverged
    pub max_grad_norm: f64,
    /// scale of the last weight layer of every residual branch at
    /// initialisation (1: He init; < 1 makes the shortcut's direct term dominate)
    pub branch_init_scale: f64,
    /// BatchNorm's training statistics over groups of `batch / bn_groups`
    /// images of each batch: 0 (the default) one group per process (each
    /// rank's shard of the batch; with one process the whole batch), 1 the
    /// whole batch on any number of processes (`--sync-bn`), G > 1 groups
    /// of B/G images ("ghost" BatchNorm: one process computing what G
    /// ranks with per-rank BN compute; a multiple of the number of ranks)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bn_groups: usize,
    /// start from these weights instead of the seeded initialisation:
    /// safetensors under the reference's state-dict names (a PyTorch
    /// `state_dict`, another run's `weights.safetensors`); the optimiser
    /// state starts fresh
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// a `steps.csv` row (loss, lr, gradient norm, images/s) every this
    /// many steps (0: none)
    #[serde(default = "every_step")]
    pub log_every: u64,
    /// the per-channel statistics the inputs were normalised with, on raw
    /// 0..=255 pixels: `x = (pixel - mean[c]) / std[c]`. Written by `train`
    /// (computed from the training split, after `val`); `eval` and
    /// `predict` apply them. A run recomputes them from its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<Norm>,
    /// also write TensorBoard event files into this directory
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorboard: Option<PathBuf>,
    /// the convolution and linear GEMMs' precision (`f32`, or `bf16`:
    /// bf16 operands, f32 accumulation; see `crate::precision`)
    #[serde(default)]
    pub precision: Precision,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn every_step() -> u64 {
    1
}

impl TrainConfig {
    /// Sensible defaults for `spec` on `data`: the paper's optimiser, a
    /// constant learning rate of 0.1, batch 128, one epoch of 0 iterations
    /// (callers set `iters`).
    pub fn new(name: &str, spec: Spec, data: DataSource) -> Self {
        let augment = data.default_augment();
        TrainConfig {
            name: name.to_string(),
            spec,
            data,
            iters: 0,
            batch: 128,
            sgd: SgdConfig::default(),
            schedule: Schedule::constant(0.1),
            seed: 0,
            augment,
            val: 0,
            flow_every: 100,
            eval_every: 0,
            max_grad_norm: 1e8,
            branch_init_scale: 1.0,
            bn_groups: 0,
            init_from: None,
            log_every: 1,
            norm: None,
            tensorboard: None,
            precision: Precision::F32,
        }
    }

    /// He et al.'s CIFAR recipe: batch 128, lr 0.1 (0.01 for the first 400
    /// iterations), /10 at 32k and 48k, 64k iterations, momentum 0.9,
    /// weight decay 1e-4, pad-crop-flip augmentation.
    pub fn apply_paper_preset(&mut self) {
        self.batch = 128;
        self.sgd = SgdConfig::default();
        self.schedule = Schedule::paper();
        self.iters = 64_000;
        self.augment = Augment::cifar();
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_settings()?;
        if self.iters == 0 {
            return Err(Error::Config(
                "the run has no iterations: give --epochs or --iters".into(),
            ));
        }
        Ok(())
    }

    /// Every check of [`validate`](Self::validate) but the iteration
    /// count: what `resgrad flow` (which runs `--steps`, not `iters`)
    /// checks too, so a flag is validated the same way in every command.
    pub fn validate_settings(&self) -> Result<()> {
        self.spec.validate()?;
        self.schedule.validate()?;
        let bad = |m: String| Err(Error::Config(m));
        if self.batch < 2 {
            return bad(format!(
                "batch must be at least 2 (BatchNorm needs two samples), got {}",
                self.batch
            ));
        }
        if self.bn_groups > 1 && !self.batch.is_multiple_of(self.bn_groups) {
            return bad(format!(
                "batch {} is not a multiple of bn_groups {}",
                self.batch, self.bn_groups
            ));
        }
        if !(self.sgd.momentum.is_finite() && (0.0..1.0).contains(&self.sgd.momentum)) {
            return bad(format!(
                "momentum must be in [0, 1), got {}",
                self.sgd.momentum
            ));
        }
        if !(self.sgd.weight_decay.is_finite() && self.sgd.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be >= 0, got {}",
                self.sgd.weight_decay
            ));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return bad(format!(
                "max_grad_norm must be > 0, got {}",
                self.max_grad_norm
            ));
        }
        if !(self.branch_init_scale.is_finite() && self.branch_init_scale >= 0.0) {
            return bad(format!(
                "branch_init_scale must be finite and >= 0, got {}",
                self.branch_init_scale
            ));
        }
        if self.init_from.is_some() && self.branch_init_scale != 1.0 {
            return bad(
                "init_from (--init-from) replaces the initial weights: branch_init_scale does not apply"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The data of a run, normalised, with its per-channel statistics.
pub struct RunData {
    pub train: data::Dataset,
    pub eval: data::Dataset,
    pub norm: Norm,
}

/// Load, hold out, normalise; check the data fits the spec.
pub fn load_data(cfg: &TrainConfig) -> Result<RunData> {
    let mut split = cfg.data.load()?;
    let eval = if cfg.val > 0 {
        Some(split.hold_out(cfg.val)?)
    } else {
        None
    };
    let norm = split.normalize();
    let eval = match eval {
        Some(mut v) => {
            norm.apply(&mut v)?;
            v
        }
        None => split.test,
    };
    let t = &split.train;
    match cfg.spec.arch {
        Arch::Cifar => {
            if t.c != cfg.spec.in_channels || t.h != t.w {
                return Err(Error::Config(format!(
                    "{} has {}x{}x{} images; the spec wants in_channels {} and square images",
                    cfg.data, t.c, t.h, t.w, cfg.spec.in_channels
                )));
            }
        }
        Arch::Mlp => {
            if Some(t.c * t.h * t.w) != cfg.spec.in_features {
                return Err(Error::Config(format!(
                    "{} has {} features per image ({}x{}x{}); the spec wants in_features {}",
                    cfg.data,
                    t.c * t.h * t.w,
                    t.c,
                    t.h,
                    t.w,
                    cfg.spec.in_features.unwrap_or(0)
                )));
            }
        }
    }
    if t.classes > cfg.spec.classes {
        return Err(Error::Config(format!(
            "{} has {} classes; the spec has {}",
            cfg.data, t.classes, cfg.spec.classes
        )));
    }
    Ok(RunData {
        train: split.train,
        eval,
        norm,
    })
}

//! Training settings as optional fields: what `resgrad train`'s flags and a
//! sweep grid's `[base]`/`[grid]` keys both say, turned into a
//! [`TrainConfig`] the same way (defaults, then the preset, then every field
//! that is set).

use super::config::{DataSource, TrainConfig};
use super::schedule::{Decay, Warmup};
use crate::data::Augment;
use crate::error::{Error, Result};
use crate::model::Spec;
use serde::Deserialize;

/// Training settings of one run, as a grid file or the CLI flags give them. Every field is
/// optional: unset ones keep `TrainConfig::new`'s default or the preset's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// mnist5k | cifar10:DIR | cifar100:DIR | mnist:DIR (default mnist5k)
    pub data: Option<String>,
    /// `paper`: He et al.'s CIFAR recipe; the other fields override it
    pub preset: Option<String>,
    pub iters: Option<u64>,
    pub epochs: Option<u64>,
    pub batch: Option<usize>,
    pub lr: Option<f64>,
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    /// weight decay
    pub wd: Option<f64>,
    pub no_decay_bn_bias: Option<bool>,
    /// constant | step | cosine
    pub schedule: Option<String>,
    /// step milestones (iterations); alone they imply `schedule = "step"`
    pub milestones: Option<Vec<u64>>,
    /// step factor (default 0.1)
    pub gamma: Option<f64>,
    /// constant | linear | none (with `warmup_iters`)
    pub warmup: Option<String>,
    pub warmup_iters: Option<u64>,
    /// lr of a constant warm-up (default lr/10); start factor of a linear one (default 0.1)
    pub warmup_lr: Option<f64>,
    pub seed: Option<u64>,
    pub val: Option<usize>,
    /// pad-crop-flip augmentation on (true) or off (false); default: the data set's
    pub augment: Option<bool>,
    pub flow_every: Option<u64>,
    pub eval_every: Option<u64>,
    pub max_grad_norm: Option<f64>,
    pub branch_init_scale: Option<f64>,
    /// scale the preset's schedule (milestones, warm-up) from its 64k
    /// iterations to the run's length
    pub schedule_scale: Option<bool>,
    /// start from these weights (safetensors, the reference's state-dict names)
    pub init_from: Option<std::path::PathBuf>,
    /// a steps.csv row every this many steps (default 1; 0: none)
    pub log_every: Option<u64>,
    /// f32 | bf16: the convolution and linear GEMMs' precision (default f32)
    pub precision: Option<crate::precision::Precision>,
}

impl Settings {
    /// The run's config: `TrainConfig::new`'s defaults, then the preset,
    /// then every field that is set.
    pub fn build(&self, name: &str, spec: Spec, data: DataSource) -> Result<TrainConfig> {
        spec.validate()?;
        let s = self;
        let mut cfg = TrainConfig::new(name, spec, data);
        match s.preset.as_deref() {
            None => {}
            Some("paper") => cfg.apply_paper_preset(),
            Some(p) => return Err(Error::Config(format!("unknown preset {p:?} (paper)"))),
        }
        if let Some(b) = s.batch {
            cfg.batch = b;
        }
        if let Some(lr) = s.lr {
            cfg.schedule.base_lr = lr;
        }
        if let Some(m) = s.momentum {
            cfg.sgd.momentum = m;
        }
        if let Some(wd) = s.wd {
            cfg.sgd.weight_decay = wd;
        }
        if let Some(n) = s.nesterov {
            cfg.sgd.nesterov = n;
        }
        if let Some(n) = s.no_decay_bn_bias {
            cfg.sgd.no_decay_bn_bias = n;
        }
        let gamma = s.gamma.unwrap_or(0.1);
        let milestones = s.milestones.clone().unwrap_or_default();
        match s.schedule.as_deref() {
            None if s.milestones.is_some() => {
                cfg.schedule.decay = Decay::Step { milestones, gamma }
            }
            None => {
                if let (Some(g), Decay::Step { gamma, .. }) = (s.gamma, &mut cfg.schedule.decay) {
                    *gamma = g;
                }
            }
            Some("constant") => cfg.schedule.decay = Decay::Constant,
            Some("step") => cfg.schedule.decay = Decay::Step { milestones, gamma },
            Some("cosine") => {
                cfg.schedule.decay = Decay::Cosine {
                    total: 0,
                    min_lr: 0.0,
                }
            }
            Some(x) => {
                return Err(Error::Config(format!(
                    "unknown schedule {x:?} (constant, step, cosine)"
                )))
            }
        }
        match (s.warmup_iters, s.warmup.as_deref()) {
            (Some(0), _) | (_, Some("none")) => cfg.schedule.warmup = Warmup::None,
            (Some(iters), None | Some("constant")) => {
                cfg.schedule.warmup = Warmup::Constant {
                    iters,
                    lr: s.warmup_lr.unwrap_or(cfg.schedule.base_lr / 10.0),
                }
            }
            (Some(iters), Some("linear")) => {
                cfg.schedule.warmup = Warmup::Linear {
                    iters,
                    start_factor: s.warmup_lr.unwrap_or(0.1),
                }
            }
            (Some(_), Some(w)) => {
                return Err(Error::Config(format!(
                    "unknown warm-up {w:?} (constant, linear, none)"
                )))
            }
            (None, Some(w)) => {
                return Err(Error::Config(format!("warmup = {w:?} needs warmup_iters")))
            }
            (None, None) => {
                if let (Some(lr), Warmup::Constant { lr: wl, .. }) =
                    (s.warmup_lr, &mut cfg.schedule.warmup)
                {
                    *wl = lr;
                }
            }
        }
        if let Some(seed) = s.seed {
            cfg.seed = seed;
        }
        if let Some(v) = s.val {
            cfg.val = v;
        }
        match s.augment {
            Some(true) => cfg.augment = Augment::cifar(),
            Some(false) => cfg.augment = Augment::none(),
            None => {}
        }
        if let Some(f) = s.flow_every {
            cfg.flow_every = f;
        }
        if let Some(e) = s.eval_every {
            cfg.eval_every = e;
        }
        if let Some(m) = s.max_grad_norm {
            cfg.max_grad_norm = m;
        }
        if let Some(b) = s.branch_init_scale {
            cfg.branch_init_scale = b;
        }
        cfg.init_from.clone_from(&s.init_from);
        if let Some(n) = s.log_every {
            cfg.log_every = n;
        }
        if let Some(p) = s.precision {
            p.check_supported()?;
            cfg.precision = p;
        }
        // iterations: `iters`, or `epochs` times the batches per epoch (an
        // estimate from the data set's size: the loader checks the real one)
        let train_images = train_images(&cfg.data)?.saturating_sub(cfg.val);
        let per_epoch = (train_images / cfg.batch.max(1)) as u64;
        match (s.iters, s.epochs) {
            (Some(_), Some(_)) => {
                return Err(Error::Config("give iters or epochs, not both".into()))
            }
            (Some(i), None) => cfg.iters = i,
            (None, Some(_)) if per_epoch == 0 => {
                return Err(Error::Config(format!(
                    "epochs (--epochs): an epoch of the {train_images} training images of {} (after val {}) has no full batch of {}",
                    cfg.data, cfg.val, cfg.batch
                )))
            }
            (None, Some(e)) => cfg.iters = e.saturating_mul(per_epoch),
            (None, None) if cfg.iters == 0 => cfg.iters = 10 * per_epoch,
            (None, None) => {}
        }
        if s.schedule_scale == Some(true) {
            let Some(written_for) = s.preset.as_deref().map(|_| 64_000u64) else {
                return Err(Error::Config(
                    "schedule_scale (--schedule-scale) scales the preset's schedule, written for its 64k iterations, to the run's length: give a preset (--preset paper)".into(),
                ));
            };
            if s.milestones.is_some() || s.warmup_iters.is_some() {
                return Err(Error::Config(
                    "give schedule_scale (--schedule-scale) or milestones / warmup_iters for this run's length, not both".into(),
                ));
            }
            cfg.schedule = cfg.schedule.scaled(cfg.iters as f64 / written_for as f64);
        }
        if let Decay::Cosine { total, .. } = &mut cfg.schedule.decay {
            *total = cfg.iters;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Image geometry of a data source: (channels, features per image,
/// classes). Your own data are looked at (folder: class folders and the
/// first image's header; arrays: the file's shapes and labels).
pub fn geometry(data: &DataSource) -> Result<(usize, usize, usize)> {
    let own = |g: crate::data::Geometry| (g.c, g.c * g.h * g.w, g.classes);
    Ok(match data {
        DataSource::Mnist5k | DataSource::Mnist(_) => (1, 784, 10),
        DataSource::Cifar10(_) => (3, 3072, 10),
        DataSource::Cifar100(_) => (3, 3072, 100),
        DataSource::Folder(p) => own(crate::data::folder_geometry(p)?),
        DataSource::Arrays(p) => own(crate::data::arrays_geometry(p)?),
        DataSource::Npz(p) => own(crate::data::npz_geometry(p)?),
    })
}

fn train_images(data: &DataSource) -> Result<usize> {
    Ok(match data {
        DataSource::Mnist5k => 4000,
        DataSource::Cifar10(_) | DataSource::Cifar100(_) => 50_000,
        DataSource::Mnist(_) => 60_000,
        DataSource::Folder(p) => crate::data::folder_geometry(p)?.train_n,
        DataSource::Arrays(p) => crate::data::arrays_geometry(p)?.train_n,
        DataSource::Npz(p) => crate::data::npz_geometry(p)?.train_n,
    })
}

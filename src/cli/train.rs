//! `resgrad train`: flags -> `TrainConfig`.

use clap::Args;
use resgrad::error::{Error, Result};
use resgrad::model::{Arch, Block, Downsample, Shortcut, Spec, UnitKind};
use resgrad::train::settings::{geometry, Settings};
use resgrad::train::{DataSource, TrainConfig};
use std::path::PathBuf;

/// The model: a spec file, or flags for the common fields.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// model spec (JSON, the PyTorch reference's format); overrides the model flags
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// cifar | mlp
    #[arg(long, default_value = "cifar")]
    pub arch: String,
    /// cifar depth: 6n+2 (basic) or 9n+2 (bottleneck)
    #[arg(long, default_value_t = 20)]
    pub depth: usize,
    /// basic | bottleneck
    #[arg(long, default_value = "basic")]
    pub block: String,
    /// original | bn_after_add | relu_before_add | relu_only_preact | full_preact
    #[arg(long, default_value = "full_preact")]
    pub unit: String,
    /// identity | scale | exclusive_gate | shortcut_gate | conv1x1 | dropout | none
    #[arg(long, default_value = "identity")]
    pub shortcut: String,
    /// shortcut factor lambda (scale shortcuts)
    #[arg(long, default_value_t = 0.5)]
    pub lambda: f64,
    /// branch factor (scale shortcuts)
    #[arg(long, default_value_t = 1.0)]
    pub branch: f64,
    /// gate bias initialisation (gated shortcuts)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub gate_bias: f64,
    /// dropout probability (dropout shortcuts)
    #[arg(long, default_value_t = 0.5)]
    pub drop_p: f64,
    /// A | B
    #[arg(long, default_value = "B")]
    pub downsample: String,
    /// channels of the first stage (cifar)
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// mlp: width of every unit
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// mlp: number of residual units
    #[arg(long, default_value_t = 4)]
    pub units: usize,
    /// mlp: no BatchNorm
    #[arg(long)]
    pub no_batchnorm: bool,
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| Error::Config(format!("unknown {what} {v:?}")))
}

impl ModelArgs {
    /// The spec, for data with `channels`, `features` per image and `classes`.
    pub fn spec(&self, channels: usize, features: usize, classes: usize) -> Result<Spec> {
        if let Some(p) = &self.spec {
            return Spec::from_file(p);
        }
        let shortcut = match self.shortcut.as_str() {
            "identity" => Shortcut::Identity,
            "scale" => Shortcut::Scale {
                shortcut: self.lambda,
                branch: self.branch,
            },
            "exclusive_gate" => Shortcut::ExclusiveGate {
                bias_init: self.gate_bias,
            },
            "shortcut_gate" => Shortcut::ShortcutGate {
                bias_init: self.gate_bias,
            },
            "conv1x1" => Shortcut::Conv1x1,
            "dropout" => Shortcut::Dropout { p: self.drop_p },
            "none" => Shortcut::None,
            s => return Err(Error::Config(format!("unknown shortcut {s:?}"))),
        };
        let arch: Arch = parse_json("arch", &self.arch)?;
        let unit: UnitKind = parse_json("unit", &self.unit)?;
        let block: Block = parse_json("block", &self.block)?;
        let downsample: Downsample = parse_json("downsample", &self.downsample)?;
        let mlp = arch == Arch::Mlp;
        let spec = Spec {
            arch,
            depth: if mlp { None } else { Some(self.depth) },
            block,
            unit,
            shortcut,
            downsample,
            width: self.width,
            classes,
            in_channels: channels,
            in_features: if mlp { Some(features) } else { None },
            hidden: if mlp { Some(self.hidden) } else { None },
            units: if mlp { Some(self.units) } else { None },
            batchnorm: !self.no_batchnorm,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// a saved config.json to repeat (other flags are ignored)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// mnist5k (built in) | cifar10:DIR | cifar100:DIR | mnist:DIR | folder:DIR (train/<class>/*.png, test/<class>/*.png) | safetensors:FILE (images, labels, test_images, test_labels) | npz:FILE (x_train, y_train, x_test, y_test, as keras.datasets)
    #[arg(long, default_value = "mnist5k")]
    pub data: String,
    /// run directory (config.json, metrics.csv, flow.csv, checkpoint)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// continue the run in this directory from its last checkpoint (with
    /// --iters N: extend it to N iterations; other run settings are refused)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// start again in a --out directory that holds a run (its metrics,
    /// flow log and checkpoint are deleted)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// `paper`: He et al.'s CIFAR recipe (batch 128, lr 0.1 with 0.01 for 400 iterations, /10 at 32k and 48k, 64k iterations)
    #[arg(long)]
    pub preset: Option<String>,
    /// epochs of the training set (default: 10 epochs unless --iters or a preset says otherwise)
    #[arg(long)]
    pub epochs: Option<u64>,
    /// SGD iterations (instead of --epochs; with --resume: extend the run to N)
    #[arg(long)]
    pub iters: Option<u64>,
    /// images per SGD step, over all ranks of a data-parallel run (default 128)
    #[arg(long)]
    pub batch: Option<usize>,
    /// base learning rate, before warm-up and decay (default 0.1)
    #[arg(long)]
    pub lr: Option<f64>,
    /// momentum (default 0.9)
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov momentum (torch.optim.SGD's nesterov=True)
    #[arg(long)]
    pub nesterov: bool,
    /// weight decay (default 1e-4)
    #[arg(long)]
    pub wd: Option<f64>,
    /// exempt BN parameters and biases from weight decay
    #[arg(long)]
    pub no_decay_bn_bias: bool,
    /// constant | step | cosine
    #[arg(long)]
    pub schedule: Option<String>,
    /// step schedule milestones (iterations), comma separated
    #[arg(long, value_delimiter = ',')]
    pub milestones: Vec<u64>,
    /// step schedule factor
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// warm-up iterations (the preset's warm-up is kept unless this is given)
    #[arg(long)]
    pub warmup_iters: Option<u64>,
    /// scale the preset's schedule (milestones, warm-up) from its 64k iterations to --iters/--epochs (e.g. --preset paper --iters 300: warm-up 2, milestones 150, 225)
    #[arg(long)]
    pub schedule_scale: bool,
    /// constant | linear
    #[arg(long, default_value = "constant")]
    pub warmup: String,
    /// learning rate during a constant warm-up (default lr/10); start factor of a linear one
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// hold out this many training images for evaluation (e.g. 5000 for CIFAR's 45k/5k)
    #[arg(long, default_value_t = 0)]
    pub val: usize,
    /// turn off augmentation
    #[arg(long)]
    pub no_augment: bool,
    /// probe the gradient flow every K iterations (0: never)
    #[arg(long, default_value_t = 100)]
    pub flow_every: u64,
    /// evaluate and checkpoint every N iterations (default: every epoch)
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// a gradient norm above this stops the run as diverged (exit 3)
    #[arg(long, default_value_t = 1e8)]
    pub max_grad_norm: f64,
    /// start from these weights (safetensors under the reference's state-dict names: a PyTorch state_dict or a run's weights.safetensors); fresh optimiser state
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// scale the last layer of every branch at initialisation
    #[arg(long, default_value_t = 1.0)]
    pub branch_init_scale: f64,
    /// write a steps.csv row (loss, lr, gradient norm, images/s) every N iterations (0: none)
    #[arg(long, default_value_t = 1)]
    pub log_every: u64,
    /// also write TensorBoard event files (steps, evaluations, probe norms) into this directory
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// no progress output
    #[arg(long)]
    pub quiet: bool,
    /// on several ranks (mpirun / srun): BatchNorm statistics over the whole
    /// global batch, allreduced in the forward and the backward (default:
    /// each rank normalises over its own B/R images)
    #[arg(long, conflicts_with = "bn_groups")]
    pub sync_bn: bool,
    /// BatchNorm statistics over groups of B/G images of each batch, one
    /// after another (a multiple of the ranks; one process with G = R
    /// computes what R ranks with per-rank BatchNorm compute)
    #[arg(long, value_name = "G")]
    pub bn_groups: Option<usize>,
    /// f32 | bf16: precision of the convolutions and linear layers (bf16:
    /// bf16 operands with f32 accumulation, as PyTorch's autocast; needs
    /// AVX512-BF16; BatchNorm, loss, optimiser and weights stay f32)
    #[arg(long, value_enum)]
    pub precision: Option<resgrad::precision::Precision>,
    /// the flags given on the command line (set by the CLI from clap's
    /// matches): `--resume` refuses those that would change the run
    #[arg(skip)]
    pub given: Vec<String>,
}

/// Flags that `--resume` accepts: they do not change what the run computes
/// (`--iters` extends it, checked against the checkpoint).
const RESUME_FLAGS: &[&str] = &["resume", "quiet", "iters", "threads", "out"];

/// The files of a run that starting a new one in its directory deletes.
const RUN_FILES: &[&str] = &[
    "metrics.csv",
    "flow.csv",
    "checkpoint.safetensors",
    "weights.safetensors",
];

/// `train --out DIR` (or --config) on a directory that holds a run's
/// results (metrics, flow log, checkpoints): refuse unless --overwrite
/// (nothing is deleted without it), naming the files; a directory in use
/// by another process names its owner first. A `config.json` alone (a
/// start that failed before its first step) holds no result and is
/// rewritten.
fn check_fresh_dir(dir: &std::path::Path, overwrite: bool) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    // in use: say so (train_run takes the lock for real)
    drop(resgrad::io::lock::DirLock::acquire(dir, "run directory")?);
    let found: Vec<&str> = RUN_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if overwrite || found.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} already holds a run ({}); give --resume {} to continue it, or --overwrite to start it again (deletes them)",
        dir.display(),
        found.join(", "),
        dir.display()
    )))
}

impl TrainArgs {
    /// Build the run's config, its directory, whether it resumes, and the
    /// run's former length when `--resume --iters` extends it. `lead`: this
    /// process is rank 0 (or the only one), the one that owns the run
    /// directory; the other ranks of a data-parallel run neither probe its
    /// lock nor check it for results (rank 0 may hold it already).
    pub fn config(&self, lead: bool) -> Result<(TrainConfig, PathBuf, bool, Option<u64>)> {
        if let Some(dir) = &self.resume {
            if lead && dir.is_dir() {
                // in use by another process: say so first (train_run takes the lock)
                drop(resgrad::io::lock::DirLock::acquire(dir, "run directory")?);
            }
            let p = dir.join("config.json");
            let text = resgrad::io::read::read_text(&p)?;
            let mut cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
                path: p.clone(),
                msg: e.to_string(),
            })?;
            // flags that would change the run are refused, never ignored
            let mut changing: Vec<String> = self
                .given
                .iter()
                .filter(|f| !RESUME_FLAGS.contains(&f.as_str()))
                .map(|f| format!("--{}", f.replace('_', "-")))
                .collect();
            changing.sort();
            if !changing.is_empty() {
                return Err(Error::Config(format!(
                    "--resume {} continues the run as its config.json says; {} would change it (with --resume give only --iters N to extend the run, and --quiet); to change the run, start a new one with --config {} --out NEW_DIR",
                    dir.display(),
                    changing.join(", "),
                    p.display()
                )));
            }
            if let Some(out) = &self.out {
                if out != dir {
                    return Err(Error::Config(format!(
                        "--resume {} with --out {}: a run continues in its own directory",
                        dir.display(),
                        out.display()
                    )));
                }
            }
            if let Some(n) = self.iters {
                if n != cfg.iters {
                    if let resgrad::train::schedule::Decay::Cosine { .. } = cfg.schedule.decay {
                        return Err(Error::Config(format!(
                            "--resume {} --iters {n}: the run's cosine schedule spans its {} iterations; extending it would change every learning rate after the checkpoint",
                            dir.display(),
                            cfg.iters
                        )));
                    }
                    // applied (config.json is rewritten with it; a
                    // checkpoint past N is refused when it is loaded) and
                    // said when the run ends
                    let old = cfg.iters;
                    cfg.iters = n;
                    return Ok((cfg, dir.clone(), true, Some(old)));
                }
            }
            return Ok((cfg, dir.clone(), true, None));
        }
        if let Some(p) = &self.config {
            let text = resgrad::io::read::read_text(p)?;
            let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
                path: p.clone(),
                msg: e.to_string(),
            })?;
            let out = self
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(resgrad::io::dir_name(&cfg.name)));
            if lead {
                check_fresh_dir(&out, self.overwrite)?;
            }
            return Ok((cfg, out, false, None));
        }
        let data = DataSource::parse(&self.data)?;
        // the image geometry decides in_channels / in_features
        let (c, feats, classes) = geometry(&data)?;
        let spec = self.model.spec(c, feats, classes)?;
        let settings = Settings {
            data: Some(self.data.clone()),
            preset: self.preset.clone(),
            iters: self.iters,
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov.then_some(true),
            wd: self.wd,
            no_decay_bn_bias: self.no_decay_bn_bias.then_some(true),
            schedule: self.schedule.clone(),
            milestones: (!self.milestones.is_empty()).then(|| self.milestones.clone()),
            gamma: Some(self.gamma),
            warmup: self.warmup_iters.map(|_| self.warmup.clone()),
            warmup_iters: self.warmup_iters,
            warmup_lr: self.warmup_lr,
            seed: Some(self.seed),
            val: Some(self.val),
            augment: self.no_augment.then_some(false),
            flow_every: Some(self.flow_every),
            eval_every: Some(self.eval_every),
            max_grad_norm: Some(self.max_grad_norm),
            branch_init_scale: Some(self.branch_init_scale),
            schedule_scale: self.schedule_scale.then_some(true),
            init_from: self.init_from.clone(),
            log_every: Some(self.log_every),
            precision: self.precision,
        };
        let mut cfg = settings.build(&spec.label(), spec, data)?;
        cfg.bn_groups = if self.sync_bn {
            1
        } else {
            self.bn_groups.unwrap_or(0)
        };
        if self.bn_groups == Some(0) {
            return Err(Error::Config("--bn-groups must be at least 1".into()));
        }
        cfg.tensorboard = self.tensorboard.clone();
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(resgrad::io::dir_name(&cfg.name)));
        if lead {
            check_fresh_dir(&out, self.overwrite)?;
        }
        Ok((cfg, out, false, None))
    }
}

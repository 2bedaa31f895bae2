//! `resgrad flow`: the gradient-flow probe at initialisation and after K
//! training steps, without the rest of a training run.

use super::config::{load_data, TrainConfig};
use super::optim::Sgd;
use crate::data::Loader;
use crate::error::{Error, Result};
use crate::gradcheck::Rand;
use crate::model::{Arch, Net};
use crate::probe::{flow_rows, FlowRow};
use std::sync::Arc;

/// Iteration -> (images, labels).
type BatchSource = dyn FnMut(u64) -> Result<(Vec<f32>, Vec<usize>)>;

/// Where the probe's batches come from.
pub enum FlowData {
    /// the run's data set (`cfg.data`)
    Real,
    /// standard-normal inputs of the spec's shape (`image` pixels square for
    /// cifar) with uniformly random labels: shows the flow at
    /// initialisation for any spec, no data needed
    Synthetic { image: usize },
}

/// Probe rows at iteration 0 and after `steps` SGD steps (`cfg.batch`,
/// `cfg.schedule`, `cfg.sgd`, `cfg.seed`, `cfg.branch_init_scale` apply).
pub fn flow_study(cfg: &TrainConfig, data: FlowData, steps: u64) -> Result<Vec<FlowRow>> {
    cfg.validate_settings()?;
    // a source of (images, labels) batches
    let mut next: Box<BatchSource>;
    let image;
    match data {
        FlowData::Real => {
            let d = load_data(cfg)?;
            image = d.train.h;
            let loader = Loader::new(Arc::new(d.train), cfg.batch, cfg.seed, Some(cfg.augment))?;
            let bpe = loader.batches_per_epoch() as u64;
            if bpe == 0 {
                return Err(Error::Config("batch larger than the data set".into()));
            }
            let mut b = crate::data::Batch::default();
            next = Box::new(move |it| {
                let e = it / bpe;
                let perm = loader.permutation(e);
                loader.fill_batch(&perm, e, (it % bpe) as usize, &mut b);
                Ok((b.images.clone(), b.labels.clone()))
            });
        }
        FlowData::Synthetic { image: img } => {
            image = img;
            let per = match cfg.spec.arch {
                Arch::Cifar => cfg.spec.in_channels * img * img,
                Arch::Mlp => cfg.spec.in_features.unwrap_or(0),
            };
            let mut r = Rand::new(cfg.seed ^ 0xda7a);
            let (batch, classes) = (cfg.batch, cfg.spec.classes);
            next = Box::new(move |_| {
                let x: Vec<f32> = r
                    .normal_vec(batch * per)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                let y: Vec<usize> = (0..batch).map(|_| r.usize_below(classes)).collect();
                Ok((x, y))
            });
        }
    }
    crate::limits::check_model("flow", &cfg.spec, image, cfg.batch)?;
    let mut net: Net<f32> = Net::new(&cfg.spec, image, cfg.seed)?;
    net.set_precision(cfg.precision)?;
    if cfg.branch_init_scale != 1.0 {
        for u in net.units.iter_mut() {
            u.scale_branch_output(cfg.branch_init_scale);
        }
    }
    let mut opt: Sgd<f32> = Sgd::new(cfg.sgd.clone());
    let mut rows = Vec::new();
    for it in 0..=steps {
        let (x, y) = next(it)?;
        net.zero_grad();
        let probe = it == 0 || it == steps;
        let loss = net.forward_backward(&x, &y, probe)?;
        if probe {
            rows.extend(flow_rows(&net, it));
        }
        if !loss.is_finite() {
            return Err(Error::Diverged {
                iter: it,
                msg: format!("loss {loss} during the flow study"),
            });
        }
        if it < steps {
            opt.step(&mut net.params_mut(), cfg.schedule.lr_at(it));
        }
    }
    Ok(rows)
}

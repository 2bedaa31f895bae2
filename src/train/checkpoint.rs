//! Checkpoints: weights and buffers under the reference's state-dict names,
//! the optimiser's velocities (`optim.velocity.<name>`), and in the
//! metadata the iteration, the dropout RNG state and the run's config. One
//! safetensors file, written atomically, so a model checkpoint is also a
//! PyTorch-loadable weights file.

use super::config::TrainConfig;
use super::optim::Sgd;
use crate::error::{Error, Result};
use crate::io::safetensors::SafeTensors;
use crate::model::Net;
use crate::tensor::Tensor;
use std::path::Path;

/// File name inside a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
const FORMAT: &str = "resgrad-checkpoint-1";

/// What a checkpoint restores besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    /// completed iterations
    pub iter: u64,
    /// wall-clock seconds spent so far
    pub wall_s: f64,
}

/// Write the checkpoint for `iter` completed iterations.
pub fn save(
    path: &Path,
    cfg: &TrainConfig,
    net: &mut Net<f32>,
    opt: &Sgd<f32>,
    iter: u64,
    wall_s: f64,
) -> Result<()> {
    let mut st = SafeTensors::new();
    net.save_state(&mut st)?;
    let names: Vec<(String, Vec<usize>)> = net
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    for ((name, shape), v) in names.iter().zip(&opt.velocity) {
        st.insert(
            format!("optim.velocity.{name}"),
            &Tensor::from_vec(shape, v.clone())?,
        );
    }
    let m = &mut st.metadata;
    m.insert("format".into(), FORMAT.into());
    m.insert("iter".into(), iter.to_string());
    m.insert("wall_s".into(), format!("{wall_s}"));
    m.insert(
        "rng".into(),
        serde_json::to_string(&net.rng).map_err(|e| Error::Config(e.to_string()))?,
    );
    m.insert(
        "config".into(),
        serde_json::to_string(cfg).map_err(|e| Error::Config(e.to_string()))?,
    );
    m.insert(
        "spec".into(),
        serde_json::to_string(&cfg.spec).map_err(|e| Error::Config(e.to_string()))?,
    );
    st.write_atomic(path)
}

/// Restore weights, buffers, velocities and RNG into `net`/`opt`.
pub fn load(path: &Path, net: &mut Net<f32>, opt: &mut Sgd<f32>) -> Result<Resume> {
    let st = SafeTensors::read(path)?;
    let meta = |k: &str| {
        st.metadata.get(k).ok_or_else(|| Error::Format {
            path: path.into(),
            msg: format!("checkpoint metadata lacks {k:?}"),
        })
    };
    if meta("format")? != FORMAT {
        return Err(Error::Format {
            path: path.into(),
            msg: format!("not a {FORMAT} file"),
        });
    }
    let iter: u64 = meta("iter")?.parse().map_err(|_| Error::Format {
        path: path.into(),
        msg: "bad iteration in metadata".into(),
    })?;
    let wall_s: f64 = meta("wall_s")?.parse().unwrap_or(0.0);
    net.rng = serde_json::from_str(meta("rng")?).map_err(|e| Error::Format {
        path: path.into(),
        msg: format!("bad RNG state: {e}"),
    })?;
    net.load_state(&st)?;
    let mut vel = Vec::new();
    for p in net.params_mut() {
        let key = format!("optim.velocity.{}", p.name);
        if !st.contains(&key) {
            vel.clear();
            break;
        }
        let t: Tensor<f32> = st.get(&key)?;
        if t.shape() != p.shape.as_slice() {
            return Err(Error::Weights(format!(
                "{key}: shape {:?}, expected {:?}",
                t.shape(),
                p.shape
            )));
        }
        vel.push(t.into_data());
    }
    opt.velocity = vel;
    Ok(Resume { iter, wall_s })
}

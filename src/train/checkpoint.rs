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

/// The first field where two configs (as JSON objects) differ, besides
/// `iters` (a run may be extended: `--resume --iters N`): `(field, a, b)`.
fn first_difference(a: &TrainConfig, b: &TrainConfig) -> Result<Option<(String, String, String)>> {
    let to = |c: &TrainConfig| serde_json::to_value(c).map_err(|e| Error::Config(e.to_string()));
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (to(a)?, to(b)?) else {
        return Ok(None);
    };
    for (k, va) in &a {
        let vb = b.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if k != "iters" && *va != vb {
            return Ok(Some((k.clone(), va.to_string(), vb.to_string())));
        }
    }
    Ok(None)
}

/// Restore weights, buffers, velocities and RNG into `net`/`opt`, after
/// checking that the checkpoint belongs to `cfg` (the run's config.json):
/// its own config (spec, seed, schedule, data, ...) must equal `cfg` but
/// for `iters`, and its iteration must not be past `cfg.iters`. The file
/// must hold exactly the model's state and one velocity per parameter
/// (none missing, none unknown), all finite: anything else is refused with
/// the tensor named, not trained on.
pub fn load(
    path: &Path,
    cfg: &TrainConfig,
    net: &mut Net<f32>,
    opt: &mut Sgd<f32>,
) -> Result<Resume> {
    crate::io::read::regular_file_len(path)?;
    let st = SafeTensors::read(path)?;
    let fmt = |msg: String| Error::Format {
        path: path.into(),
        msg,
    };
    let meta = |k: &str| {
        st.metadata
            .get(k)
            .ok_or_else(|| fmt(format!("checkpoint metadata lacks {k:?}")))
    };
    if meta("format")? != FORMAT {
        return Err(fmt(format!("not a {FORMAT} file")));
    }
    let iter: u64 = meta("iter")?
        .parse()
        .map_err(|_| fmt("bad iteration in metadata".into()))?;
    let wall_s: f64 = meta("wall_s")?.parse().unwrap_or(0.0);
    let own: TrainConfig = serde_json::from_str(meta("config")?)
        .map_err(|e| fmt(format!("bad run config in metadata: {e}")))?;
    if let Some((field, theirs, ours)) = first_difference(&own, cfg)? {
        return Err(Error::Config(format!(
            "{}: the checkpoint belongs to another run: its {field} is {theirs}, the run's config.json says {ours}; resume it in its own directory or start this run with --overwrite",
            path.display()
        )));
    }
    if iter > cfg.iters {
        return Err(Error::Config(format!(
            "{}: the checkpoint is at iteration {iter}, past the run's {} iterations (--iters cannot shorten a run)",
            path.display(),
            cfg.iters
        )));
    }
    net.rng = serde_json::from_str(meta("rng")?).map_err(|e| fmt(format!("bad RNG state: {e}")))?;
    // exactly the model's state and one velocity per parameter
    let mut expected: Vec<String> = net.state_names();
    let params: Vec<(String, Vec<usize>)> = net
        .params_mut()
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    expected.extend(params.iter().map(|(n, _)| format!("optim.velocity.{n}")));
    if let Some(missing) = expected.iter().find(|k| !st.contains(k)) {
        return Err(fmt(format!(
            "checkpoint lacks tensor {missing:?} (a checkpoint of another model, or a damaged file)"
        )));
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    if let Some(extra) = st.tensors.keys().find(|k| !known.contains(k.as_str())) {
        return Err(fmt(format!(
            "checkpoint holds tensor {extra:?}, which the model {} does not have (a checkpoint of another model)",
            cfg.spec.label()
        )));
    }
    net.load_state(&st)?;
    let mut vel = Vec::with_capacity(params.len());
    for (name, shape) in &params {
        let key = format!("optim.velocity.{name}");
        let t: Tensor<f32> = st.get(&key)?;
        if t.shape() != shape.as_slice() {
            return Err(Error::Weights(format!(
                "{key}: shape {:?}, expected {:?}",
                t.shape(),
                shape
            )));
        }
        if let Some(i) = t.data().iter().position(|v| !v.is_finite()) {
            return Err(fmt(format!(
                "tensor {key:?} holds a non-finite value at flat index {i} (corrupt state, not a divergence)"
            )));
        }
        vel.push(t.into_data());
    }
    opt.velocity = vel;
    Ok(Resume { iter, wall_s })
}

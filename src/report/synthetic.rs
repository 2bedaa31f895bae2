//! Synthetic run directories for the report's tests: an identity-shortcut
//! run whose gradient stays flat, a `scale(0.5)` run whose gradient
//! vanishes as `0.5^(U-l)`, and a 1x1-conv run that explodes and diverges
//! (NaN and inf rows). Not part of the stable API.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Number of units in the synthetic networks (rows 0..=U in flow.csv).
pub const UNITS: usize = 9;
const PROBES: [u64; 3] = [0, 500, 1000];

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Write the three example runs under `root` (`root/identity`,
/// `root/scale_0.5`, `root/conv_diverged`) and return their directories.
pub fn write_example_runs(root: &Path) -> Result<Vec<PathBuf>> {
    let kinds = [
        ("identity", Kind::Identity),
        ("scale_0.5", Kind::Scale),
        ("conv_diverged", Kind::Diverged),
    ];
    let mut dirs = Vec::new();
    for (name, kind) in kinds {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_run(&dir, kind)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Identity,
    Scale,
    Diverged,
}

fn write_run(dir: &Path, kind: Kind) -> Result<()> {
    let (name, shortcut, verdict) = match kind {
        Kind::Identity => ("identity", r#"{"kind": "identity"}"#, Some("healthy")),
        Kind::Scale => (
            "scale 0.5",
            r#"{"kind": "scale", "shortcut": 0.5}"#,
            Some("vanishing"),
        ),
        Kind::Diverged => ("1x1 conv", r#"{"kind": "conv1x1"}"#, None),
    };
    // The diverged run has no "name": its label falls back to the dir name.
    let name_field = if kind == Kind::Diverged {
        String::new()
    } else {
        format!(r#""name": "{name}", "#)
    };
    let config = format!(
        r#"{{{name_field}"spec": {{"arch": "resnet", "depth": {depth}, "unit": "original", "shortcut": {shortcut}, "width": 16}}, "lr": 0.1, "batch": 128, "seed": 7}}"#,
        depth = 6 * UNITS + 2,
    );
    write(&dir.join("config.json"), &config)?;

    let mut m =
        String::from("iter,epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,wall_s\n");
    for k in 0..=20u64 {
        let iter = k * 50;
        let t = iter as f64;
        let (loss, acc) = match kind {
            Kind::Identity => (
                2.3 * (-t / 300.0).exp() + 0.25,
                0.92 - 0.8 * (-t / 300.0).exp(),
            ),
            Kind::Scale => (
                2.3 * (-t / 900.0).exp() + 0.6,
                0.80 - 0.7 * (-t / 900.0).exp(),
            ),
            Kind::Diverged if iter < 400 => (2.3 + t / 100.0, 0.1),
            Kind::Diverged if iter == 400 => (f64::INFINITY, 0.1),
            Kind::Diverged => (f64::NAN, f64::NAN),
        };
        let test = if iter % 200 == 0 || iter == 1000 {
            format!("{:e},{}", loss * 1.1, acc - 0.02)
        } else {
            ",".to_string()
        };
        let _ = writeln!(
            m,
            "{iter},{:.3},0.1,{loss:e},{acc},{test},{:.1},{:.2}",
            t / 390.0,
            1500.0 + (k % 3) as f64,
            t * 0.05
        );
    }
    write(&dir.join("metrics.csv"), &m)?;

    let mut f =
        String::from("iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor\n");
    for &iter in &PROBES {
        let top = 0.05 * (1.0 + iter as f64 / 2000.0);
        for l in 0..=UNITS {
            let above = (UNITS - l) as i32;
            let wobble = 1.0 + 0.03 * ((l * 7 + iter as usize) % 5) as f64;
            let (g, sc, br, df) = match kind {
                Kind::Identity => (
                    top * wobble * (1.0 + 0.02 * above as f64),
                    top,
                    0.15 * top,
                    Some(1.0),
                ),
                Kind::Scale => {
                    let g = top * 0.5f64.powi(above) * wobble;
                    (g, 0.95 * g, 0.08 * g, Some(0.5f64.powi(above)))
                }
                Kind::Diverged if iter > 0 => (f64::NAN, f64::NAN, f64::NAN, None),
                Kind::Diverged => {
                    let g = top * 2.2f64.powi(above) * wobble;
                    (g, 0.6 * g, 0.8 * g, None)
                }
            };
            let opt = |v: Option<f64>| v.map(|v| format!("{v:e}")).unwrap_or_default();
            let (sc, br, cos) = if l == UNITS {
                (String::new(), String::new(), String::new())
            } else {
                (format!("{sc:e}"), format!("{br:e}"), "0.12".to_string())
            };
            let _ = writeln!(f, "{iter},{l},{g:e},{sc},{br},{cos},{}", opt(df));
        }
    }
    write(&dir.join("flow.csv"), &f)?;

    if let Some(v) = verdict {
        let acc = if kind == Kind::Identity {
            0.9187
        } else {
            0.7803
        };
        write(
            &dir.join("summary.json"),
            &format!(
                r#"{{"verdict": "{v}", "ratio_init": 1.0, "ratio_end": 1.0, "test_acc": {acc}}}"#
            ),
        )?;
    }
    Ok(())
}

//! `resgrad derive`: the seed derivation of "the gradient highway",
//! evaluated numerically on a tiny network.
//!
//! The network (f64, all hidden widths `d`, a batch of `N` rows):
//!
//! ```text
//! x2 = ReLU(F1 x1),  x3 = ReLU(F2 x2 + x1),  x4 = ReLU(F3 x3),  x5 = ReLU(F4 x4 + x3)
//! logits = W_out x5 + b_out,  L = mean_n CE(softmax(logits_n), y_n)      (K = 3 classes)
//! ```
//!
//! `Fi x = Wi x + bi`. The classifier head `W_out` (3 x d, with bias) is
//! there so that the loss is a proper cross-entropy; the derivation is about
//! `dL/dx5` whatever produced it. Writing `Dk = diag([a_k > 0])` for the
//! ReLU mask that makes `x_k` (a symmetric 0/1 matrix), the chain rule gives
//!
//! ```text
//! dL/dx3 = D5 dL/dx5  +  W3^T D4 W4^T D5 dL/dx5        (shortcut + branch of unit 2)
//! dL/dx1 = D3 (dL/dx3) + W1^T D2 W2^T D3 (dL/dx3)      (shortcut + branch of unit 1)
//!        = four path terms: shortcut->shortcut, branch->shortcut, shortcut->branch, branch->branch
//! ```
//!
//! and the masks `D5`, `D3` sit on the shortcut too, so the shortcut does
//! not carry `dL/dx5` through unchanged. In the pre-activation form
//! `x_{l+2} = lambda x_l + F(x_l)` (see [`net`]) nothing follows the
//! addition and the shortcut term of `dL/dx1` is exactly `lambda^2 dL/dx5`:
//! `dL/dx5` itself for `lambda = 1`, the gradient highway of He et al. 2016
//! (arXiv 1603.05027, eq. 5).
//!
//! Every identity is measured and checked: the terms add up to the full
//! backprop gradient (max abs diff < 1e-12), backprop equals central finite
//! differences (max rel err < 1e-6), the direct terms equal what the formula
//! says (bit for bit for the identity shortcut). A failed identity is an
//! [`Error::Check`] (exit code 1).

pub mod net;
mod report;

use crate::error::{Error, Result};
use crate::gradcheck::{max_rel_err, numeric_grad, Rand, EPS};
pub use net::{Form, Params};
use net::{Net, Part};
pub use report::render;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Number of classes of the classifier head.
pub const CLASSES: usize = 3;
/// Every ReLU input is at least this far from 0 (the input is redrawn until
/// it is), so that central differences with step 1e-5 never cross a kink.
pub const KINK_MARGIN: f64 = 1e-4;
/// The sum of the chain-rule terms must equal backprop to this (max abs diff).
pub const SUM_TOL: f64 = 1e-12;
/// Backprop must equal finite differences to this (max rel err).
pub const FD_TOL: f64 = 1e-6;
/// The direct (shortcut) terms must equal their formula to this (max rel diff).
pub const DIRECT_TOL: f64 = 1e-15;
/// The lambdas of section 4 (lambda = 1 is the pre-activation form of section 3).
pub const LAMBDAS: [f64; 3] = [0.5, 1.0, 2.0];

/// Options of `resgrad derive`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeriveConfig {
    pub seed: u64,
    pub batch: usize,
    pub width: usize,
}

impl Default for DeriveConfig {
    fn default() -> Self {
        DeriveConfig {
            seed: 14,
            batch: 2,
            width: 4,
        }
    }
}

/// One term of the chain rule, with the formula it evaluates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Term {
    /// which path through the units, in forward order
    pub path: String,
    pub formula: String,
    /// false for the pure-shortcut (direct) term
    pub through_branch: bool,
    /// (N, d), row-major
    pub value: Vec<f64>,
}

/// A gradient split into its chain-rule terms, beside the full backprop
/// gradient and central finite differences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decomposition {
    /// "dL/dx3" or "dL/dx1"
    pub of: String,
    pub terms: Vec<Term>,
    pub backprop: Vec<f64>,
    pub numeric: Vec<f64>,
}

/// Everything measured for one form of the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FormResult {
    pub name: String,
    pub form: Form,
    pub loss: f64,
    pub x3: Vec<f64>,
    pub x5: Vec<f64>,
    pub dl_dx5: Vec<f64>,
    pub dl_dx5_numeric: Vec<f64>,
    /// diagonal of the shortcut's Jacobian in unit 1 / unit 2:
    /// the masks D3, D5 (post-act) or lambda (pre-act)
    pub gain3: Vec<f64>,
    pub gain5: Vec<f64>,
    pub dx3: Decomposition,
    pub dx1: Decomposition,
}

/// One stated identity and how well it held.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub form: String,
    pub identity: String,
    /// "max abs diff", "max rel err" (gradcheck measure) or "max rel diff"
    pub metric: String,
    pub measured: f64,
    /// must be below; 0 means bit for bit
    pub tolerance: f64,
    pub passed: bool,
}

/// The whole derivation: inputs, weights, every term, every check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Derivation {
    pub config: DeriveConfig,
    pub classes: usize,
    /// x1 (N, d)
    pub input: Vec<f64>,
    pub labels: Vec<usize>,
    /// how many inputs were drawn to keep every ReLU input >= KINK_MARGIN from 0
    pub input_draws: usize,
    pub kink_margin: f64,
    pub params: Params,
    pub forms: Vec<FormResult>,
    pub checks: Vec<Check>,
    pub all_passed: bool,
}

fn form_name(form: Form) -> String {
    match form {
        Form::PostAct => "post-activation".into(),
        Form::PreAct { lambda } => format!("pre-activation, lambda = {lambda}"),
    }
}

/// Formulas of one unit's shortcut and branch backward (column-vector form).
/// Unit 1 holds F1, F2 and makes x3; unit 2 holds F3, F4 and makes x5.
fn unit_formulas(form: Form, unit: usize) -> (String, String) {
    let (wa, wb) = (2 * unit - 1, 2 * unit);
    let (xin, xout) = (2 * unit - 1, 2 * unit + 1);
    match form {
        Form::PostAct => (format!("D{xout}"), format!("W{wa}^T D{wb} W{wb}^T D{xout}")),
        Form::PreAct { lambda } => {
            let s = if lambda == 1.0 {
                "I".to_string()
            } else {
                format!("{lambda}I")
            };
            (s, format!("P{xin} W{wa}^T D{wb} W{wb}^T"))
        }
    }
}

fn evaluate(p: &Params, form: Form, x1: &[f64], labels: &[usize]) -> Result<FormResult> {
    let net = Net {
        p,
        form,
        n: labels.len(),
        labels,
    };
    let acts = net.forward(x1)?;
    let (g5, g3, g1) = net.backward(&acts)?;
    let (u1, u2) = (net.unit(0), net.unit(1));
    let (s1, b1) = unit_formulas(form, 1);
    let (s2, b2) = unit_formulas(form, 2);
    // the two terms of dL/dx3: unit 2's backward, one part at a time
    let t_s2 = u2.term(&g5, &acts.u2, Part::Shortcut)?;
    let t_b2 = u2.term(&g5, &acts.u2, Part::Branch)?;
    // the four paths of dL/dx1: unit 1's parts applied to each term of dL/dx3
    let mut paths = Vec::new();
    for (name2, f2, t2) in [("shortcut", &s2, &t_s2), ("branch", &b2, &t_b2)] {
        for (name1, f1, part) in [
            ("shortcut", &s1, Part::Shortcut),
            ("branch", &b1, Part::Branch),
        ] {
            paths.push(Term {
                path: format!("unit 1 {name1} -> unit 2 {name2}"),
                formula: format!("{f1} . {f2} . dL/dx5"),
                through_branch: name1 == "branch" || name2 == "branch",
                value: u1.term(t2, &acts.u1, part)?,
            });
        }
    }
    paths.swap(1, 2); // order: s-s, b-s, s-b, b-b
    let fd = |stage: usize, x: &[f64]| {
        numeric_grad(&mut [x.to_vec()], 0, EPS, |xs| {
            net.loss_from(stage, &xs[0]).unwrap_or(f64::NAN)
        })
    };
    let term = |path: &str, formula: String, through_branch, value| Term {
        path: path.into(),
        formula,
        through_branch,
        value,
    };
    Ok(FormResult {
        name: form_name(form),
        form,
        loss: acts.loss,
        dl_dx5_numeric: fd(5, &acts.u2.out),
        dx3: Decomposition {
            of: "dL/dx3".into(),
            terms: vec![
                term("unit 2 shortcut", format!("{s2} . dL/dx5"), false, t_s2),
                term("unit 2 branch", format!("{b2} . dL/dx5"), true, t_b2),
            ],
            backprop: g3,
            numeric: fd(3, &acts.u1.out),
        },
        dx1: Decomposition {
            of: "dL/dx1".into(),
            terms: paths,
            backprop: g1,
            numeric: fd(1, x1),
        },
        x3: acts.u1.out,
        x5: acts.u2.out,
        dl_dx5: g5,
        gain3: acts.u1.gain,
        gain5: acts.u2.gain,
    })
}

/// Run the derivation for `cfg`: the post-activation form, then the
/// pre-activation form for each lambda in [`LAMBDAS`], with the same weights
/// and input. Does not fail on a failed check (see [`Derivation::result`]).
pub fn derive(cfg: &DeriveConfig) -> Result<Derivation> {
    if !(1..=16).contains(&cfg.batch) || !(1..=32).contains(&cfg.width) {
        return Err(Error::Config(format!(
            "derive: --batch must be in 1..=16 and --width in 1..=32 (got {} and {})",
            cfg.batch, cfg.width
        )));
    }
    let (n, d) = (cfg.batch, cfg.width);
    let mut rng = Rand::new(cfg.seed);
    let params = Params::random(d, CLASSES, &mut rng);
    let labels: Vec<usize> = (0..n).map(|_| rng.usize_below(CLASSES)).collect();
    let mut forms = vec![Form::PostAct];
    forms.extend(LAMBDAS.map(|lambda| Form::PreAct { lambda }));
    forms.swap(1, 2); // post, lambda = 1, 0.5, 2
                      // draw x1 until no ReLU input of any form is within KINK_MARGIN of its kink
    let mut draws = 0;
    let (x1, margin) = loop {
        draws += 1;
        let x1 = rng.normal_vec(n * d);
        let mut margin = f64::INFINITY;
        for &form in &forms {
            let net = Net {
                p: &params,
                form,
                n,
                labels: &labels,
            };
            margin = margin.min(net.kink_margin(&net.forward(&x1)?));
        }
        if margin >= KINK_MARGIN {
            break (x1, margin);
        }
        if draws == 1000 {
            return Err(Error::Config(
                "derive: no input away from the ReLU kinks in 1000 draws; try another --seed"
                    .into(),
            ));
        }
    };
    let forms = forms
        .iter()
        .map(|&f| evaluate(&params, f, &x1, &labels))
        .collect::<Result<Vec<_>>>()?;
    let checks: Vec<Check> = forms.iter().flat_map(verify).collect();
    let all_passed = checks.iter().all(|c| c.passed);
    let config = cfg.clone();
    Ok(Derivation {
        config,
        classes: CLASSES,
        input: x1,
        labels,
        input_draws: draws,
        kink_margin: margin,
        params,
        forms,
        checks,
        all_passed,
    })
}

fn sum_of(terms: &[&Term], len: usize) -> Vec<f64> {
    let mut s = vec![0.0; len];
    for t in terms {
        s.iter_mut().zip(&t.value).for_each(|(s, v)| *s += v);
    }
    s
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// max |a - b| / max |b| (0 when both are all zeros).
fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let diff = max_abs_diff(a, b);
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// Re-measure every identity stated for one form from its stored arrays.
pub fn verify(f: &FormResult) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |identity: String, metric: &str, measured: f64, tolerance: f64| {
        let passed = if tolerance == 0.0 {
            measured == 0.0
        } else {
            measured < tolerance
        };
        checks.push(Check {
            form: f.name.clone(),
            identity,
            metric: metric.into(),
            measured,
            tolerance,
            passed,
        });
    };
    let g5 = &f.dl_dx5;
    push(
        "dL/dx5: backprop = finite differences".into(),
        "max rel err",
        max_rel_err(g5, &f.dl_dx5_numeric),
        FD_TOL,
    );
    for dec in [&f.dx3, &f.dx1] {
        let all: Vec<&Term> = dec.terms.iter().collect();
        let sum = sum_of(&all, g5.len());
        let what = format!(
            "{}: the {} chain-rule terms add up to backprop",
            dec.of,
            all.len()
        );
        push(
            what,
            "max abs diff",
            max_abs_diff(&sum, &dec.backprop),
            SUM_TOL,
        );
        let what = format!("{}: backprop = finite differences", dec.of);
        push(
            what,
            "max rel err",
            max_rel_err(&dec.backprop, &dec.numeric),
            FD_TOL,
        );
    }
    let direct = |dec: &Decomposition| {
        dec.terms
            .iter()
            .find(|t| !t.through_branch)
            .map(|t| t.value.clone())
            .unwrap_or_default()
    };
    let (d3, d1) = (direct(&f.dx3), direct(&f.dx1));
    match f.form {
        Form::PostAct => {
            // the shortcut term is the masked dL/dx5: D5 g5, and D3 D5 g5 two units down
            let e3: Vec<f64> = g5.iter().zip(&f.gain5).map(|(g, m)| m * g).collect();
            let e1: Vec<f64> = e3.iter().zip(&f.gain3).map(|(g, m)| m * g).collect();
            push(
                "dL/dx3: shortcut term = D5 dL/dx5".into(),
                "max rel diff",
                max_rel_diff(&d3, &e3),
                DIRECT_TOL,
            );
            push(
                "dL/dx1: shortcut->shortcut term = D3 D5 dL/dx5".into(),
                "max rel diff",
                max_rel_diff(&d1, &e1),
                DIRECT_TOL,
            );
        }
        Form::PreAct { lambda } => {
            let scaled = |k: i32| g5.iter().map(|g| lambda.powi(k) * g).collect::<Vec<f64>>();
            push(
                format!("dL/dx3: shortcut term = {lambda} dL/dx5"),
                "max rel diff",
                max_rel_diff(&d3, &scaled(1)),
                DIRECT_TOL,
            );
            let what = format!("dL/dx1: shortcut->shortcut term = {lambda}^2 dL/dx5");
            push(
                what,
                "max rel diff",
                max_rel_diff(&d1, &scaled(2)),
                DIRECT_TOL,
            );
            if lambda == 1.0 {
                push(
                    "dL/dx3: shortcut term is dL/dx5, bit for bit".into(),
                    "max abs diff",
                    max_abs_diff(&d3, g5),
                    0.0,
                );
                push(
                    "dL/dx1: shortcut->shortcut term is dL/dx5, bit for bit".into(),
                    "max abs diff",
                    max_abs_diff(&d1, g5),
                    0.0,
                );
            }
            // dL/dx1 = lambda^2 dL/dx5 + (sum of the terms through a branch)
            let branch: Vec<&Term> = f.dx1.terms.iter().filter(|t| t.through_branch).collect();
            let mut rhs = sum_of(&branch, g5.len());
            rhs.iter_mut().zip(scaled(2)).for_each(|(r, s)| *r += s);
            let what = format!("dL/dx1 = {lambda}^2 dL/dx5 + (sum of the 3 branch terms)");
            push(
                what,
                "max abs diff",
                max_abs_diff(&rhs, &f.dx1.backprop),
                SUM_TOL,
            );
        }
    }
    checks
}

impl Derivation {
    /// Re-verify every form from the stored arrays (what a reader of the
    /// JSON can do), updating `checks` and `all_passed`.
    pub fn reverify(&mut self) {
        self.checks = self.forms.iter().flat_map(verify).collect();
        self.all_passed = self.checks.iter().all(|c| c.passed);
    }

    /// `Err(Error::Check)` naming every identity that failed.
    pub fn result(&self) -> Result<()> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| {
                format!(
                    "[{}] {} ({} {:e}, tolerance {:e})",
                    c.form, c.identity, c.metric, c.measured, c.tolerance
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Check(format!(
                "{} of {} identities failed: {}",
                failed.len(),
                self.checks.len(),
                failed.join("; ")
            )))
        }
    }
}

/// Write the derivation as pretty JSON, atomically
/// ([`crate::io::write_atomic`]: temp file, fsync, rename, fsync of the
/// directory).
pub fn write_json(d: &Derivation, path: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(d).map_err(|e| Error::Format {
        path: path.into(),
        msg: e.to_string(),
    })?;
    text.push('\n');
    crate::io::write_atomic(path, text.as_bytes())
}

/// `resgrad derive`: derive, print, write the JSON (also when a check
/// failed, so the failure can be read), then fail if any identity failed.
pub fn run(cfg: &DeriveConfig, json: Option<&Path>) -> Result<()> {
    let d = derive(cfg)?;
    crate::io::console::out(format_args!("{}", render(&d)))?;
    if let Some(path) = json {
        write_json(&d, path)?;
        crate::outln!("JSON written to {}", path.display())?;
    }
    d.result()
}

#[cfg(test)]
mod tests;

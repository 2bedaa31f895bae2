//! The human-readable report of `resgrad derive`: read top to bottom, it
//! walks from dL/dx5 back to dL/dx1, term by term, first through the
//! post-activation net, then the pre-activation one, then with a scaled
//! shortcut.

use super::{
    Check, Decomposition, Derivation, Form, FormResult, DIRECT_TOL, FD_TOL, KINK_MARGIN, SUM_TOL,
};
use std::fmt::Write;

const RULE: &str =
    "==========================================================================================";
const THIN: &str =
    "------------------------------------------------------------------------------------------";

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `+1.23457e-01`: scientific with a signed two-digit exponent, so columns align.
fn sci(x: f64) -> String {
    let s = format!("{x:+.5e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let e: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
        }
        None => s, // inf, NaN
    }
}

/// Row 0 of an (N, d) buffer, with its norm, wrapped 8 entries a line.
fn vector(v: &[f64], d: usize, indent: &str) -> String {
    let row = &v[..d];
    let mut s = String::from("[");
    for (i, x) in row.iter().enumerate() {
        if i > 0 && i % 8 == 0 {
            write!(s, "\n{indent} ").unwrap();
        }
        write!(s, " {}", sci(*x)).unwrap();
    }
    write!(s, " ]   |.| = {}", sci(norm(row)).trim_start_matches('+')).unwrap();
    s
}

fn value(o: &mut String, label: &str, v: &[f64], d: usize) {
    let indent = " ".repeat(8 + label.len() + 3);
    writeln!(o, "        {label} = {}", vector(v, d, &indent)).unwrap();
}

fn check_line(o: &mut String, c: &Check) {
    let verdict = if c.passed { "OK" } else { "FAILED" };
    let bound = if c.tolerance == 0.0 {
        "must be exactly 0".to_string()
    } else {
        format!("< {:.0e}", c.tolerance)
    };
    writeln!(
        o,
        "    check: {:<58} {} {:.3e} ({bound})  {verdict}",
        c.identity, c.metric, c.measured
    )
    .unwrap();
}

fn checks(o: &mut String, d: &Derivation, f: &FormResult, pick: impl Fn(&str) -> bool) {
    for c in d
        .checks
        .iter()
        .filter(|c| c.form == f.name && pick(&c.identity))
    {
        check_line(o, c);
    }
}

/// The terms of one decomposition, their sum, backprop and finite differences.
fn decomposition(o: &mut String, d: &Derivation, f: &FormResult, dec: &Decomposition) {
    let w = d.config.width;
    for (i, t) in dec.terms.iter().enumerate() {
        writeln!(o, "    [{}] {}", i + 1, t.path).unwrap();
        writeln!(o, "        {}", t.formula).unwrap();
        value(o, "", &t.value, w);
    }
    writeln!(o, "    {THIN}").unwrap();
    let mut sum = vec![0.0; dec.backprop.len()];
    for t in &dec.terms {
        sum.iter_mut().zip(&t.value).for_each(|(s, v)| *s += v);
    }
    let n = dec.terms.len();
    let terms = (1..=n)
        .map(|i| format!("[{i}]"))
        .collect::<Vec<_>>()
        .join(" + ");
    writeln!(o, "        {terms}").unwrap();
    value(o, "", &sum, w);
    writeln!(
        o,
        "        full backprop ({} accumulated with += from every consumer)",
        dec.of
    )
    .unwrap();
    value(o, "", &dec.backprop, w);
    writeln!(o, "        central finite differences (step 1e-5) of L").unwrap();
    value(o, "", &dec.numeric, w);
    checks(o, d, f, |id| {
        id.starts_with(&format!("{}:", dec.of)) && !id.contains("shortcut")
    });
}

fn zeros(v: &[f64]) -> usize {
    v.iter().filter(|&&m| m == 0.0).count()
}

fn header(o: &mut String, d: &Derivation) {
    let c = &d.config;
    writeln!(o, "{RULE}\n resgrad derive: the gradient highway, derived by hand and evaluated in numbers\n{RULE}").unwrap();
    writeln!(
        o,
        " seed {}, batch N = {}, width d = {}, K = {} classes, f64, labels y = {:?}",
        c.seed, c.batch, c.width, d.classes, d.labels
    )
    .unwrap();
    writeln!(o, " weights W ~ N(0, 1/d), biases b ~ N(0, 0.1^2), input x1 ~ N(0, 1) (draw {}: every ReLU input", d.input_draws).unwrap();
    writeln!(o, " is >= {KINK_MARGIN:.0e} from its kink, smallest {:.2e}, so finite differences are meaningful).", d.kink_margin).unwrap();
    writeln!(
        o,
        " Vectors show row 0 of the batch (the JSON has every row); |.| is that row's norm."
    )
    .unwrap();
    writeln!(
        o,
        " Formulas use column vectors: W^T g is computed as the row product g W."
    )
    .unwrap();
}

fn post_section(o: &mut String, d: &Derivation, f: &FormResult) {
    let w = d.config.width;
    writeln!(
        o,
        "\n THE NETWORK (post-activation: the original ResNet unit, a ReLU AFTER the addition)\n"
    )
    .unwrap();
    writeln!(o, "   x1 --+--> F1 --> ReLU --> x2 --> F2 --> (+) --> ReLU --> x3      unit 1: x3 = ReLU(a3), a3 = F2 x2 + x1").unwrap();
    writeln!(o, "        |                                   ^").unwrap();
    writeln!(o, "        +------------- shortcut ------------+").unwrap();
    writeln!(o, "   x3 --+--> F3 --> ReLU --> x4 --> F4 --> (+) --> ReLU --> x5      unit 2: x5 = ReLU(a5), a5 = F4 x4 + x3").unwrap();
    writeln!(o, "        |                                   ^").unwrap();
    writeln!(o, "        +------------- shortcut ------------+").unwrap();
    writeln!(o, "   x5 --> W_out --> softmax cross-entropy(y) --> L              head: logits = W_out x5 + b_out").unwrap();
    writeln!(o, "\n   Fk x = Wk x + bk.  Dk = diag([a_k > 0]): the ReLU mask that makes x_k (so x2 = ReLU(a2), a2 = F1 x1).").unwrap();
    writeln!(o, "   Loss L = {:.6}", f.loss).unwrap();

    writeln!(o, "\n 1. dL/dx5: WHAT ARRIVES FROM THE HEAD\n{THIN}").unwrap();
    writeln!(o, "        dL/dlogits = (softmax(logits) - onehot(y)) / N").unwrap();
    writeln!(o, "        dL/dx5 = W_out^T dL/dlogits").unwrap();
    value(o, "", &f.dl_dx5, w);
    checks(o, d, f, |id| id.starts_with("dL/dx5"));

    writeln!(o, "\n 2. THE CHAIN RULE, TERM BY TERM\n{THIN}").unwrap();
    writeln!(
        o,
        " 2a. One unit back. x5 = ReLU(a5) and a5 = F4 x4 + x3 reads x3 twice:"
    )
    .unwrap();
    writeln!(o, "        dL/dx3 = D5 dL/dx5  +  W3^T D4 W4^T D5 dL/dx5").unwrap();
    writeln!(
        o,
        "                 (shortcut)    (branch F4 . ReLU . F3)\n"
    )
    .unwrap();
    decomposition(o, d, f, &f.dx3);
    writeln!(
        o,
        "\n 2b. Two units back. dL/dx1 = D3 dL/dx3 + W1^T D2 W2^T D3 dL/dx3; put 2a's two terms"
    )
    .unwrap();
    writeln!(
        o,
        "     into it and four paths appear, one per choice (shortcut or branch) in each unit:\n"
    )
    .unwrap();
    decomposition(o, d, f, &f.dx1);

    writeln!(
        o,
        "\n 3. THE CONTRAST: DOES THE SHORTCUT CARRY dL/dx5 UNCHANGED?\n{THIN}"
    )
    .unwrap();
    writeln!(
        o,
        " 3a. Post-activation: NO. The ReLU after the addition masks the shortcut too (D != I):"
    )
    .unwrap();
    let (n5, n3) = (zeros(&f.gain5), zeros(&f.gain3));
    let len = f.gain5.len();
    writeln!(o, "        D5 has {n5} of {len} diagonal entries zero (row 0: {} of {w}); D3 has {n3} of {len} (row 0: {} of {w})", zeros(&f.gain5[..w]), zeros(&f.gain3[..w])).unwrap();
    let changed = f.dx1.terms[0]
        .value
        .iter()
        .zip(&f.dl_dx5)
        .filter(|(a, b)| a != b)
        .count();
    writeln!(o, "        so the direct term D3 D5 dL/dx5 differs from dL/dx5 in {changed} of {len} entries:").unwrap();
    value(o, "dL/dx5      ", &f.dl_dx5, w);
    value(o, "D5 dL/dx5   ", &f.dx3.terms[0].value, w);
    value(o, "D3 D5 dL/dx5", &f.dx1.terms[0].value, w);
    checks(o, d, f, |id| id.contains("shortcut"));
}

fn pre_section(o: &mut String, d: &Derivation, f: &FormResult) {
    let w = d.config.width;
    writeln!(
        o,
        "\n 3b. Pre-activation: YES. Move the ReLU into the branch; nothing follows the addition:"
    )
    .unwrap();
    writeln!(o, "        x_{{l+2}} = x_l + F(x_l),  F = F_b . ReLU . F_a . ReLU  (He et al.'s full pre-activation").unwrap();
    writeln!(o, "        order ReLU -> weight -> ReLU -> weight, without batch norm; same weights, same x1)\n").unwrap();
    writeln!(o, "   x1 --+--> ReLU --> F1 --> ReLU --> F2 --> (+) --> x3                    unit 1: x3 = x1 + F(x1)").unwrap();
    writeln!(o, "        |                                    ^").unwrap();
    writeln!(o, "        +------------ identity --------------+").unwrap();
    writeln!(o, "   x3 --+--> ReLU --> F3 --> ReLU --> F4 --> (+) --> x5                    unit 2: x5 = x3 + F(x3)").unwrap();
    writeln!(o, "        |                                    ^").unwrap();
    writeln!(o, "        +------------ identity --------------+").unwrap();
    writeln!(o, "   x5 --> ReLU --> W_out --> softmax cross-entropy(y) --> L    (a final ReLU, as in pre-act nets)").unwrap();
    writeln!(o, "\n   Pk = diag([x_k > 0]) (the ReLU opening a branch), Dk = diag([F_{{k-1}} ReLU(x_{{k-1}}) > 0]).").unwrap();
    writeln!(
        o,
        "   Loss L = {:.6}.  dL/dx5 = P5 W_out^T dL/dlogits:",
        f.loss
    )
    .unwrap();
    value(o, "", &f.dl_dx5, w);
    checks(o, d, f, |id| id.starts_with("dL/dx5"));
    writeln!(
        o,
        "\n   dL/dx3 = dL/dx5 + P3 W3^T D4 W4^T dL/dx5     (the shortcut term is dL/dx5 itself)\n"
    )
    .unwrap();
    decomposition(o, d, f, &f.dx3);
    writeln!(
        o,
        "\n   dL/dx1, four paths; the shortcut->shortcut path is I . I . dL/dx5 = dL/dx5:\n"
    )
    .unwrap();
    decomposition(o, d, f, &f.dx1);
    writeln!(o, "\n   So dL/dx1 = dL/dx5 + (sum of the three paths through a branch): the gradient highway.").unwrap();
    writeln!(
        o,
        "   Whatever the branches do, dL/dx5 reaches x1 untouched (He et al. 2016, eq. 5)."
    )
    .unwrap();
    checks(o, d, f, |id| {
        id.contains("shortcut") || id.contains("branch terms")
    });
}

fn lambda_section(o: &mut String, d: &Derivation, pre: &[&FormResult]) {
    let w = d.config.width;
    writeln!(o, "\n 4. A SCALED SHORTCUT: x_{{l+2}} = lambda x_l + F(x_l)  (pre-activation, same F, weights, x1)\n{THIN}").unwrap();
    writeln!(o, "   Each shortcut now contributes lambda I to the backward pass, so the direct term of dL/dx1").unwrap();
    writeln!(o, "   is lambda . lambda . dL/dx5 = lambda^2 dL/dx5 (the product of the lambdas, one per unit).\n").unwrap();
    writeln!(
        o,
        "   {:>6}  {:>12}  {:>12}  {:>12}  {:>12}  {:>12}",
        "lambda", "|dL/dx5|", "|direct|", "ratio", "|branches|", "|dL/dx1|"
    )
    .unwrap();
    for f in pre {
        let Form::PreAct { lambda } = f.form else {
            continue;
        };
        let g5 = norm(&f.dl_dx5[..w]);
        let direct = norm(&f.dx1.terms[0].value[..w]);
        let mut br = vec![0.0; w];
        for t in f.dx1.terms.iter().filter(|t| t.through_branch) {
            br.iter_mut().zip(&t.value[..w]).for_each(|(b, v)| *b += v);
        }
        let ratio = if g5 > 0.0 { direct / g5 } else { f64::NAN };
        writeln!(o, "   {lambda:>6}  {g5:>12.6e}  {direct:>12.6e}  {ratio:>12.6}  {:>12.6e}  {:>12.6e}   (lambda^2 = {})", norm(&br), norm(&f.dx1.backprop[..w]), lambda * lambda).unwrap();
    }
    for f in pre
        .iter()
        .filter(|f| f.form != Form::PreAct { lambda: 1.0 })
    {
        let Form::PreAct { lambda } = f.form else {
            continue;
        };
        writeln!(o, "\n   lambda = {lambda}   (loss {:.6})", f.loss).unwrap();
        value(o, &format!("{:<42}", "dL/dx5"), &f.dl_dx5, w);
        value(
            o,
            "direct term (lambda I . lambda I . dL/dx5)",
            &f.dx1.terms[0].value,
            w,
        );
        for t in f.dx1.terms.iter().skip(1) {
            value(o, &format!("{:<42}", t.path), &t.value, w);
        }
        value(
            o,
            &format!("{:<42}", "dL/dx1 (full backprop)"),
            &f.dx1.backprop,
            w,
        );
        checks(o, d, f, |_| true);
    }
    writeln!(
        o,
        "\n   With many units the factors multiply: a 110-layer net has 54 units, and lambda^54 is"
    )
    .unwrap();
    writeln!(
        o,
        "   {:.1e} for lambda = 0.5 (the highway closes) and {:.1e} for lambda = 2 (it floods);",
        0.5f64.powi(54),
        2f64.powi(54)
    )
    .unwrap();
    writeln!(
        o,
        "   only lambda = 1 carries dL/dx_L to every layer unchanged."
    )
    .unwrap();
}

/// The whole report, as printed by `resgrad derive`.
pub fn render(d: &Derivation) -> String {
    let mut o = String::new();
    header(&mut o, d);
    let post = d.forms.iter().find(|f| f.form == Form::PostAct);
    let pre: Vec<&FormResult> = d
        .forms
        .iter()
        .filter(|f| matches!(f.form, Form::PreAct { .. }))
        .collect();
    if let Some(f) = post {
        post_section(&mut o, d, f);
    }
    if let Some(f) = pre.iter().find(|f| f.form == Form::PreAct { lambda: 1.0 }) {
        pre_section(&mut o, d, f);
    }
    let mut sorted = pre.clone();
    sorted.sort_by(|a, b| lambda_of(a).total_cmp(&lambda_of(b)));
    lambda_section(&mut o, d, &sorted);

    let passed = d.checks.iter().filter(|c| c.passed).count();
    writeln!(
        o,
        "\n{RULE}\n SUMMARY: {passed} of {} identities hold",
        d.checks.len()
    )
    .unwrap();
    let worst = |metric: &str| {
        d.checks
            .iter()
            .filter(|c| c.metric == metric)
            .fold(0.0f64, |m, c| m.max(c.measured))
    };
    writeln!(
        o,
        "   terms add up to backprop           worst max abs diff {:.3e}  (< {SUM_TOL:.0e})",
        worst_of(d, "add up")
    )
    .unwrap();
    writeln!(
        o,
        "   backprop = finite differences      worst max rel err  {:.3e}  (< {FD_TOL:.0e})",
        worst("max rel err")
    )
    .unwrap();
    writeln!(o, "   direct terms = their formula       worst max rel diff {:.3e}  (< {DIRECT_TOL:.0e}; bit for bit for lambda = 1)", worst("max rel diff")).unwrap();
    for c in d.checks.iter().filter(|c| !c.passed) {
        writeln!(
            o,
            "   FAILED [{}] {}: {} {:.3e}",
            c.form, c.identity, c.metric, c.measured
        )
        .unwrap();
    }
    writeln!(o, "{RULE}").unwrap();
    o
}

fn lambda_of(f: &FormResult) -> f64 {
    match f.form {
        Form::PreAct { lambda } => lambda,
        Form::PostAct => 0.0,
    }
}

fn worst_of(d: &Derivation, needle: &str) -> f64 {
    d.checks
        .iter()
        .filter(|c| c.identity.contains(needle) || c.identity.contains("branch terms"))
        .fold(0.0f64, |m, c| m.max(c.measured))
}

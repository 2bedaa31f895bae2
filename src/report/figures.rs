//! What the report's three figures show: [`FigureSpec`]s built from the
//! runs, rendered by [`super::plots`].

use super::parse::{FlowProbe, Run};
use super::plots::{FigureSpec, LineKind, Panel, Series};

/// The three figures of the report.
pub fn figures(runs: &[Run]) -> Vec<FigureSpec> {
    vec![
        grad_norm_figure(runs),
        shortcut_branch_figure(runs),
        training_figure(runs),
    ]
}

fn probe_title(what: &str, runs: &[Run], pick: fn(&Run) -> Option<&FlowProbe>) -> String {
    let iters: Vec<u64> = runs.iter().filter_map(pick).map(|p| p.iter).collect();
    match iters.split_first() {
        Some((first, rest)) if rest.iter().all(|i| i == first) => {
            format!("{what} (iteration {first})")
        }
        _ => what.to_string(),
    }
}

type Pick = fn(&Run) -> Option<&FlowProbe>;
const PROBES: [(&str, Pick); 2] = [
    ("First probe: initialisation", Run::flow_init),
    ("Last probe", Run::flow_end),
];

/// (a) `||dL/dx_l||` per unit, with the `prod(lambda)` prediction dashed.
fn grad_norm_figure(runs: &[Run]) -> FigureSpec {
    let panels = PROBES
        .iter()
        .map(|(what, pick)| {
            let mut series = Vec::new();
            for (i, run) in runs.iter().enumerate() {
                let Some(p) = pick(run) else { continue };
                series.push(Series {
                    run: i,
                    kind: LineKind::Solid,
                    points: p
                        .units
                        .iter()
                        .map(|u| (u.unit as f64, u.grad_norm))
                        .collect(),
                });
                let top = p.top_norm().unwrap_or(f64::NAN);
                let pred: Vec<(f64, f64)> = p
                    .units
                    .iter()
                    .filter_map(|u| Some((u.unit as f64, u.direct_factor? * top)))
                    .collect();
                if !pred.is_empty() {
                    series.push(Series {
                        run: i,
                        kind: LineKind::Dashed,
                        points: pred,
                    });
                }
            }
            Panel {
                title: probe_title(what, runs, *pick),
                x_desc: "unit l".into(),
                y_desc: "‖∂L/∂x_l‖".into(),
                y_log: true,
                x_integer: true,
                series,
                vlines: stage_lines(runs),
            }
        })
        .collect();
    FigureSpec {
        name: "grad_norm",
        title: "Gradient norm per unit".into(),
        caption: "‖∂L/∂x_l‖ at the input of each unit l (l = U is the last unit's output), \
                  log scale. Dashed: the prediction ∏λ · ‖∂L/∂x_U‖ from the shortcut scalars \
                  alone, where every shortcut above l is a multiple of the identity. \
                  Dotted verticals: stage boundaries, units whose shortcut is a projection \
                  or option A (stride 2), where the ∏λ line breaks."
            .into(),
        panels,
        runs: labels(runs),
        styles: vec![
            (LineKind::Solid, "measured ‖∂L/∂x_l‖".into()),
            (LineKind::Dashed, "∏λ · ‖∂L/∂x_U‖ prediction".into()),
        ],
    }
}

/// (b) shortcut term vs residual-branch term per unit.
fn shortcut_branch_figure(runs: &[Run]) -> FigureSpec {
    let panels = PROBES
        .iter()
        .map(|(what, pick)| {
            let mut series = Vec::new();
            for (i, run) in runs.iter().enumerate() {
                let Some(p) = pick(run) else { continue };
                let sc = p
                    .units
                    .iter()
                    .filter_map(|u| Some((u.unit as f64, u.shortcut_norm?)));
                let br = p
                    .units
                    .iter()
                    .filter_map(|u| Some((u.unit as f64, u.branch_norm?)));
                series.push(Series {
                    run: i,
                    kind: LineKind::Solid,
                    points: sc.collect(),
                });
                series.push(Series {
                    run: i,
                    kind: LineKind::Dashed,
                    points: br.collect(),
                });
            }
            Panel {
                title: probe_title(what, runs, *pick),
                x_desc: "unit l".into(),
                y_desc: "norm of the gradient term".into(),
                y_log: true,
                x_integer: true,
                series,
                vlines: stage_lines(runs),
            }
        })
        .collect();
    FigureSpec {
        name: "shortcut_branch",
        title: "Shortcut term vs residual-branch term".into(),
        caption: "The two terms of the backward pass through unit l, \
                  ∂L/∂x_l = h'(x_l)·∂L/∂x_{l+1} + ∂F/∂x_l·∂L/∂x_{l+1}: \
                  solid the shortcut term, dashed the residual branch, log scale. \
                  Dotted verticals: stage boundaries (projection or option-A shortcuts)."
            .into(),
        panels,
        runs: labels(runs),
        styles: vec![
            (LineKind::Solid, "shortcut term".into()),
            (LineKind::Dashed, "residual-branch term".into()),
        ],
    }
}

/// (c) training loss and test error against iterations.
fn training_figure(runs: &[Run]) -> FigureSpec {
    let mut loss = Vec::new();
    let mut err = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let Some(m) = &run.metrics else { continue };
        let l = m
            .iter()
            .filter_map(|r| Some((r.iter as f64, r.train_loss?)));
        let e = m
            .iter()
            .filter_map(|r| Some((r.iter as f64, 1.0 - r.test_acc?)));
        loss.push(Series {
            run: i,
            kind: LineKind::Solid,
            points: l.collect(),
        });
        err.push(Series {
            run: i,
            kind: LineKind::Solid,
            points: e.collect(),
        });
    }
    let panel = |title: &str, y_desc: &str, y_log, series| Panel {
        title: title.into(),
        x_desc: "iteration".into(),
        y_desc: y_desc.into(),
        y_log,
        x_integer: false,
        series,
        vlines: vec![],
    };
    FigureSpec {
        name: "training",
        title: "Training curves".into(),
        caption: "Training loss (log scale) and test error 1 − test accuracy against \
                  iterations. Non-finite losses of diverged runs are left out."
            .into(),
        panels: vec![
            panel("Training loss", "training loss", true, loss),
            panel("Test error", "test error", false, err),
        ],
        runs: labels(runs),
        styles: vec![],
    }
}

/// The stage boundaries of every run (`Run::stage_boundaries`), each once.
fn stage_lines(runs: &[Run]) -> Vec<(f64, String)> {
    let mut b: Vec<usize> = runs.iter().flat_map(Run::stage_boundaries).collect();
    b.sort_unstable();
    b.dedup();
    b.into_iter()
        .map(|u| (u as f64, format!("unit {u}: stride 2")))
        .collect()
}

fn labels(runs: &[Run]) -> Vec<String> {
    runs.iter().map(|r| r.label.clone()).collect()
}

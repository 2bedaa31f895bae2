//! The self-contained `index.html`: inline SVG figures, a summary table and
//! each run's config. No scripts, no external stylesheets, fonts or images.

use std::fmt::Write as _;

use super::parse::Run;
use super::plots::{run_color_css, Figure};

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #222;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; }
p.lead { color: #555; margin: 0 0 16px; }
section.card { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px;
  padding: 16px 20px; margin: 16px 0; }
figure { margin: 0; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: #555; font-size: 14px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid #e6e8eb; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 8px; vertical-align: -1px; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px; }
.v-healthy { background: #e3f4e5; color: #1d6b2a; }
.v-vanishing { background: #fff3d6; color: #8a5a00; }
.v-exploding { background: #fde4d8; color: #9a3412; }
.v-diverged { background: #fbdada; color: #9b1c1c; }
.v-dead { background: #e4e4e7; color: #27272a; }
.v-unknown { background: #eceef1; color: #555; }
.missing { color: #999; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; border: 1px solid #e2e4e8; border-radius: 6px; padding: 10px 12px;
  overflow-x: auto; font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", monospace; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; }
.note { color: #777; font-size: 13px; }
.heat-maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; }
"#;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_ratio(v: Option<f64>) -> String {
    match v {
        None => "<span class=\"missing\">—</span>".into(),
        Some(v) if !v.is_finite() => esc(&format!("{v}")),
        Some(v) if (1e-2..1e4).contains(&v.abs()) => format!("{v:.3}"),
        Some(v) => format!("{v:.2e}"),
    }
}

fn fmt_acc(v: Option<f64>) -> String {
    match v {
        None => "<span class=\"missing\">—</span>".into(),
        Some(v) if !v.is_finite() => esc(&format!("{v}")),
        Some(v) => format!("{:.2}%", 100.0 * v),
    }
}

fn verdict_badge(v: Option<String>) -> String {
    let Some(v) = v else {
        return "<span class=\"verdict v-unknown\">no summary</span>".into();
    };
    let class = ["healthy", "vanishing", "exploding", "diverged", "dead"]
        .into_iter()
        .find(|k| v.starts_with(k))
        .unwrap_or("unknown");
    format!("<span class=\"verdict v-{class}\">{}</span>", esc(&v))
}

/// Strip an XML declaration / doctype so the SVG can be inlined in HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// A run's confusion-matrix heat map (`<stem>.png`, `<stem>.svg`).
pub struct HeatMap {
    /// index of the run
    pub run: usize,
    pub stem: String,
    pub svg: String,
}

/// The whole page.
pub fn index_html(runs: &[Run], figures: &[Figure], heat_maps: &[HeatMap]) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<title>resgrad report</title>\n<style>");
    h.push_str(CSS);
    h.push_str("</style>\n</head>\n<body>\n<main>\n");
    h.push_str("<h1>Gradient flow through residual connections</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"lead\">{} run{} compared. ‖∂L/∂x<sub>l</sub>‖ is the gradient norm at the input of unit l; \
         U is the number of units. Each figure is also written next to this page as PNG and SVG.</p>",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );

    h.push_str(
        "<section class=\"card\">\n<h2 style=\"margin-top:0\">Summary</h2>\n<table>\n<thead><tr>",
    );
    h.push_str(
        "<th>Run</th><th>Spec</th><th class=\"num\">Final test accuracy</th>\
         <th class=\"num\">‖∂L/∂x<sub>0</sub>‖ / ‖∂L/∂x<sub>U</sub>‖ at init</th>\
         <th class=\"num\">… at end</th><th>Verdict</th>",
    );
    h.push_str("</tr></thead>\n<tbody>\n");
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(
            h,
            "<tr class=\"run\"><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>\
             <td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            run_color_css(i),
            esc(&run.label),
            esc(&run.spec_label),
            fmt_acc(run.final_test_acc()),
            fmt_ratio(run.ratio_init()),
            fmt_ratio(run.ratio_end()),
            verdict_badge(run.verdict()),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    h.push_str(
        "<p class=\"note\">Ratios come from the first and last probes in <code>flow.csv</code> \
         (else <code>summary.json</code>); final test accuracy from <code>summary.json</code> \
         (else the last evaluation in <code>metrics.csv</code>). A ratio far below 1 means the \
         gradient vanishes on its way down, far above 1 that it explodes.</p>\n",
    );
    // each run's verdict in full: divergence, the last and the first probe
    let verdicts: Vec<(String, String)> = runs
        .iter()
        .filter_map(|r| Some((r.label.clone(), r.run_verdict()?.describe())))
        .collect();
    if !verdicts.is_empty() {
        h.push_str("<h3>Verdicts</h3>\n<p class=\"note\">Judged from the last probe (and the first, at \
                    initialisation): vanishing below ‖∂L/∂x<sub>0</sub>‖/‖∂L/∂x<sub>U</sub>‖ = 1e-2, \
                    exploding above 1e2 or at a non-finite norm, dead at exact zeros, \
                    from the highest unit past the threshold; the carrier is the term that is the \
                    larger in at least two thirds of the units.</p>\n<ul class=\"verdicts\">\n");
        for (label, text) in verdicts {
            let _ = writeln!(
                h,
                "<li><b>{}</b>: {}</li>",
                esc(&label),
                esc(text.trim_end()).replace('\n', "<br>")
            );
        }
        h.push_str("</ul>\n");
    }
    let missing: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            let mut m = Vec::new();
            if r.metrics.is_none() {
                m.push(format!("{}: no metrics.csv", r.label));
            }
            if r.flow.is_none() {
                m.push(format!("{}: no flow.csv", r.label));
            }
            m
        })
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"note\">Missing files — {}.</p>",
            esc(&missing.join("; "))
        );
    }
    h.push_str("</section>\n");

    for f in figures {
        let _ = writeln!(
            h,
            "<section class=\"card\" id=\"{name}\">\n<h2 style=\"margin-top:0\">{title}</h2>\n<figure>\n{svg}\n\
             <figcaption>{caption} Files: <code>{name}.png</code>, <code>{name}.svg</code>.</figcaption>\n\
             </figure>\n</section>",
            name = f.spec.name,
            title = esc(&f.spec.title),
            svg = inline_svg(&f.svg),
            caption = esc(&f.spec.caption),
        );
    }

    if !heat_maps.is_empty() {
        h.push_str(
            "<section class=\"card\" id=\"confusion\">\n<h2 style=\"margin-top:0\">Confusion matrices</h2>\n\
             <p class=\"note\">The final evaluation of each run (its <code>confusion.json</code>): \
             rows are the true classes, columns the predicted ones; a cell's colour is the share of \
             its row, its number the count of images.</p>\n<div class=\"heat-maps\">\n",
        );
        for m in heat_maps {
            let _ = writeln!(
                h,
                "<figure>\n{svg}\n<figcaption><span class=\"swatch\" style=\"background:{color}\"></span>{label}. \
                 Files: <code>{stem}.png</code>, <code>{stem}.svg</code>.</figcaption>\n</figure>",
                svg = inline_svg(&m.svg),
                color = run_color_css(m.run),
                label = esc(&runs[m.run].label),
                stem = m.stem,
            );
        }
        h.push_str("</div>\n</section>\n");
    }

    h.push_str("<section class=\"card\">\n<h2 style=\"margin-top:0\">Run configurations</h2>\n");
    for run in runs {
        let pretty =
            serde_json::to_string_pretty(&run.config).unwrap_or_else(|_| run.config.to_string());
        let _ = writeln!(
            h,
            "<details><summary>{}</summary>\n<p class=\"note\">{}</p>\n<pre>{}</pre>\n</details>",
            esc(&run.label),
            esc(&run.dir.display().to_string()),
            esc(&pretty),
        );
    }
    h.push_str("</section>\n</main>\n</body>\n</html>\n");
    h
}

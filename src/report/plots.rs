//! The report's figures, drawn with `plotters` to SVG text and to an RGB
//! buffer that is encoded as PNG.
//!
//! A figure is described declaratively ([`FigureSpec`]: panels of line
//! series plus a legend) and one renderer draws it on either backend. Log
//! axes are drawn as linear axes over `log10(y)` with ticks at decades, so
//! every panel has the same coordinate type; points that are NaN, infinite,
//! or not positive on a log axis are skipped and break the line there.
//!
//! Text in the PNG is rasterised with DejaVu Sans, embedded in the binary
//! (the `dejavu` crate) and registered with plotters' `ab_glyph` font
//! table under the family name `sans-serif`, so no system fonts are read.
//! The SVG names the same family and lets the viewer pick its sans-serif.

use std::path::Path;
use std::sync::Once;

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// Figure size in pixels (SVG user units and PNG pixels).
pub const FIG_W: u32 = 1200;
const PANEL_H: u32 = 440;
const FONT: &str = "sans-serif";

/// Colours for the runs (Tableau 20: the ten strong colours, then their
/// light partners), in run order.
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
pub(super) const INK: RGBColor = RGBColor(40, 40, 40);

/// The colour of run `i`, as CSS (for the HTML table).
pub fn run_color_css(i: usize) -> String {
    let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LineKind {
    Solid,
    Dashed,
}

/// One line of a panel: points in data coordinates (non-finite allowed).
#[derive(Debug, Clone)]
pub struct Series {
    pub run: usize,
    pub kind: LineKind,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub y_log: bool,
    /// x values are integers (unit indices): integer ticks only.
    pub x_integer: bool,
    pub series: Vec<Series>,
    /// dotted vertical lines with a label at the top (stage boundaries)
    pub vlines: Vec<(f64, String)>,
}

/// A figure: panels side by side, a colour legend (one entry per run) and a
/// line-style key.
#[derive(Debug, Clone)]
pub struct FigureSpec {
    /// File stem: `<name>.svg`, `<name>.png`.
    pub name: &'static str,
    pub title: String,
    pub caption: String,
    pub panels: Vec<Panel>,
    pub runs: Vec<String>,
    pub styles: Vec<(LineKind, String)>,
}

/// A rendered figure.
pub struct Figure {
    pub spec: FigureSpec,
    pub svg: String,
    pub png: Vec<u8>,
}

pub(super) fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Both fonts are valid TrueType files; a failure would only show up
        // later as a font error from the renderer.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Render a figure to SVG and PNG. `path_hint` names the output in errors.
pub fn render(spec: FigureSpec, path_hint: &Path) -> Result<Figure> {
    register_fonts();
    let plot_err =
        |e: String| Error::io(path_hint, std::io::Error::other(format!("plotting: {e}")));
    let (w, h) = (FIG_W, PANEL_H + legend_height(&spec));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        draw_figure(&root, &spec).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_figure(&root, &spec).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let png = encode_png(&rgb, w, h).map_err(|e| plot_err(e.to_string()))?;
    Ok(Figure { spec, svg, png })
}

pub(super) fn encode_png(
    rgb: &[u8],
    w: u32,
    h: u32,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
    }
    Ok(out)
}

const LEGEND_ROW: u32 = 24;
const LEGEND_ENTRY_W: u32 = 230;
/// Width of a legend character, generously (DejaVu Sans at 16 px).
const LEGEND_CHAR_W: u32 = 9;

/// Width of one legend entry: the swatch and the longest label, at least
/// [`LEGEND_ENTRY_W`], at most the figure's width.
fn legend_entry_w(spec: &FigureSpec) -> u32 {
    let longest = spec
        .runs
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0) as u32;
    (48 + LEGEND_CHAR_W * longest).clamp(LEGEND_ENTRY_W, FIG_W - 40)
}

fn legend_rows(spec: &FigureSpec) -> u32 {
    let per_row = (FIG_W - 40) / legend_entry_w(spec);
    let run_rows = (spec.runs.len() as u32).div_ceil(per_row);
    run_rows + u32::from(!spec.styles.is_empty())
}

fn legend_height(spec: &FigureSpec) -> u32 {
    legend_rows(spec) * LEGEND_ROW + 16
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spec: &FigureSpec,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (plots, legend) = root.split_vertically(PANEL_H);
    let n = spec.panels.len().max(1);
    let areas = plots.split_evenly((1, n));
    for (area, panel) in areas.iter().zip(&spec.panels) {
        draw_panel(area, panel, &spec.runs)?;
    }
    draw_legend(&legend, spec)
}

fn dash_sample<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: i32,
    y: i32,
    kind: LineKind,
    color: RGBColor,
) -> DrawResult<DB> {
    let style = color.stroke_width(2);
    match kind {
        LineKind::Solid => area.draw(&PathElement::new(vec![(x, y), (x + 28, y)], style)),
        LineKind::Dashed => {
            for k in 0..3 {
                let x0 = x + k * 11;
                area.draw(&PathElement::new(vec![(x0, y), (x0 + 6, y)], style))?;
            }
            Ok(())
        }
    }
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    spec: &FigureSpec,
) -> DrawResult<DB> {
    let font = (FONT, 16).into_font().color(&INK);
    let entry_w = legend_entry_w(spec);
    let per_row = ((FIG_W - 40) / entry_w) as usize;
    let max_chars = ((entry_w - 48) / LEGEND_CHAR_W) as usize;
    let text_pos = Pos::new(HPos::Left, VPos::Center);
    for (i, label) in spec.runs.iter().enumerate() {
        let x = 20 + (i % per_row) as i32 * entry_w as i32;
        let y = 12 + (i / per_row) as i32 * LEGEND_ROW as i32;
        let color = PALETTE[i % PALETTE.len()];
        area.draw(&Rectangle::new(
            [(x, y - 6), (x + 28, y + 6)],
            color.filled(),
        ))?;
        let text = truncate(label, max_chars);
        area.draw(&Text::new(text, (x + 36, y), font.clone().pos(text_pos)))?;
    }
    if !spec.styles.is_empty() {
        let y = 12 + (legend_rows(spec) as i32 - 1) * LEGEND_ROW as i32;
        let mut x = 20;
        for (kind, label) in &spec.styles {
            dash_sample(area, x, y, *kind, INK)?;
            area.draw(&Text::new(
                label.clone(),
                (x + 36, y),
                font.clone().pos(text_pos),
            ))?;
            let (tw, _) = area.estimate_text_size(label, &font)?;
            x += 36 + tw as i32 + 40;
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// A linear f64 axis whose grid lines and labels sit exactly at `ticks`.
#[derive(Clone)]
struct TickAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold (labelled) points; the light grid is not drawn.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Runs of consecutive drawable points.
type Segments = Vec<Vec<(f64, f64)>>;

/// Finite points in plot coordinates (`log10(y)` on log axes), split into
/// runs of consecutive usable points.
fn segments(points: &[(f64, f64)], y_log: bool) -> Segments {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        let y = if y_log {
            if y > 0.0 {
                y.log10()
            } else {
                f64::NAN
            }
        } else {
            y
        };
        if x.is_finite() && y.is_finite() {
            out.last_mut().expect("non-empty").push((x, y));
        } else if !out.last().expect("non-empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// "Nice" tick positions covering `[lo, hi]`, about `target` of them.
fn linear_ticks(lo: f64, hi: f64, target: f64, integer: bool) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    if integer {
        step = step.max(1.0).round();
    }
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Ticks for a log axis in `log10` units: every decade (or every k-th when
/// the span is wide), plus 2 and 5 when the span is under three decades.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.floor() as i64, hi.ceil() as i64);
    let every = ((b - a) / 12 + 1).max(1);
    let mut t: Vec<f64> = (a..=b)
        .filter(|k| k % every == 0)
        .map(|k| k as f64)
        .collect();
    if hi - lo < 3.0 {
        for k in a..=b {
            t.push(k as f64 + 2f64.log10());
            t.push(k as f64 + 5f64.log10());
        }
    }
    t.retain(|v| *v >= lo - 1e-9 && *v <= hi + 1e-9);
    t.sort_by(f64::total_cmp);
    t
}

fn fmt_log_tick(v: f64) -> String {
    let value = 10f64.powf(v);
    let k = v.floor();
    if (-2.0..=3.0).contains(&k) {
        let s = format!("{value:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        let m = (value / 10f64.powf(k)).round();
        if m == 1.0 {
            format!("1e{}", k as i64)
        } else {
            format!("{}e{}", m as i64, k as i64)
        }
    }
}

fn fmt_linear_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Data range of the panel in plot coordinates, padded; a fallback when
/// the panel has no usable point.
fn panel_range(segs: &[Vec<(f64, f64)>], panel: &Panel) -> ((f64, f64), (f64, f64)) {
    let pts = segs.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return (
            (0.0, 1.0),
            if panel.y_log { (-1.0, 1.0) } else { (0.0, 1.0) },
        );
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    if panel.y_log {
        if y1 - y0 < 1.0 {
            let mid = 0.5 * (y0 + y1);
            (y0, y1) = (mid - 0.5, mid + 0.5);
        }
        let pad = 0.05 * (y1 - y0);
        let (mut lo, mut hi) = (y0 - pad, y1 + pad);
        // Reach the next decade when it is close, so it gets a label.
        if lo - lo.floor() < 0.3 {
            lo = lo.floor();
        }
        if hi.ceil() - hi < 0.3 {
            hi = hi.ceil();
        }
        ((x0, x1), (lo, hi))
    } else {
        // Linear panels here are errors/fractions: start at zero.
        y0 = y0.min(0.0);
        if y1 - y0 < 1e-9 {
            y1 = y0 + 1.0;
        }
        ((x0, x1), (y0, y1 + 0.05 * (y1 - y0)))
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    runs: &[String],
) -> DrawResult<DB> {
    let segs: Vec<(usize, LineKind, Segments)> = panel
        .series
        .iter()
        .map(|s| (s.run, s.kind, segments(&s.points, panel.y_log)))
        .collect();
    let all: Vec<Vec<(f64, f64)>> = segs.iter().flat_map(|(_, _, s)| s.clone()).collect();
    let ((x0, x1), (y0, y1)) = panel_range(&all, panel);
    let x_ticks = linear_ticks(x0, x1, 8.0, panel.x_integer);
    let y_ticks = if panel.y_log {
        log_ticks(y0, y1)
    } else {
        linear_ticks(y0, y1, 6.0, false)
    };
    let y_log = panel.y_log;

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20).into_font().color(&INK))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(
            TickAxis {
                lo: x0,
                hi: x1,
                ticks: x_ticks,
            },
            TickAxis {
                lo: y0,
                hi: y1,
                ticks: y_ticks,
            },
        )?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(INK.mix(0.6))
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .axis_desc_style((FONT, 17).into_font().color(&INK))
        .label_style((FONT, 16).into_font().color(&INK))
        .x_label_formatter(&|v| fmt_linear_tick(*v))
        .y_label_formatter(&|v| {
            if y_log {
                fmt_log_tick(*v)
            } else {
                fmt_linear_tick(*v)
            }
        })
        .draw()?;

    // Runs that have rows here but no point that can be drawn (diverged).
    let mut blank: Vec<&str> = Vec::new();
    for s in &panel.series {
        let drawable = segs.iter().any(|(r, _, ss)| *r == s.run && !ss.is_empty());
        let label = runs.get(s.run).map_or("?", String::as_str);
        if !drawable && !s.points.is_empty() && !blank.contains(&label) {
            blank.push(label);
        }
    }
    if !blank.is_empty() {
        let note = format!("no finite values: {}", blank.join(", "));
        // Bottom right, beside the x-axis description.
        let style = (FONT, 15)
            .into_font()
            .color(&RGBColor(155, 28, 28))
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(note, (w as i32 - 24, h as i32 - 4), style))?;
    }
    if all.is_empty() {
        let (w, h) = area.dim_in_pixel();
        let style = (FONT, 16)
            .into_font()
            .color(&INK.mix(0.6))
            .pos(Pos::new(HPos::Center, VPos::Center));
        area.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style))?;
        return Ok(());
    }
    for (x, label) in panel.vlines.iter().filter(|(x, _)| (x0..=x1).contains(x)) {
        let line = [(*x, y0), (*x, y1)];
        chart.draw_series(DashedLineSeries::new(
            line,
            3,
            4,
            INK.mix(0.5).stroke_width(1),
        ))?;
        let style = (FONT, 14)
            .into_font()
            .color(&INK.mix(0.7))
            .pos(Pos::new(HPos::Left, VPos::Top));
        chart.draw_series(std::iter::once(Text::new(label.clone(), (*x, y1), style)))?;
    }
    for (run, kind, ss) in &segs {
        let color = PALETTE[run % PALETTE.len()];
        let style = color.stroke_width(2);
        for s in ss {
            match kind {
                LineKind::Solid => {
                    chart.draw_series(std::iter::once(PathElement::new(s.clone(), style)))?;
                    if s.len() <= 40 {
                        chart.draw_series(s.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
                    }
                }
                LineKind::Dashed => {
                    chart.draw_series(DashedLineSeries::new(s.clone(), 7, 5, style))?;
                }
            }
        }
    }
    Ok(())
}

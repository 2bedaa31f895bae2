//! A run's confusion matrix as a heat map (`confusion_<i>.{png,svg}`),
//! from the `confusion.json` its final evaluation wrote (or `resgrad eval
//! --json` did): one cell per (true class, predicted class), its colour the
//! share of the true class's images predicted as that class, the count
//! written in the cell while the cells are large enough to hold it.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

use super::plots::{encode_png, register_fonts, INK};
use crate::error::{Error, Result};

/// Heat-map size in pixels (SVG user units and PNG pixels).
pub const CONF_W: u32 = 760;
pub const CONF_H: u32 = 720;
const FONT: &str = "sans-serif";
/// The colour of a share of 1 (Tableau blue, as run 0's lines); 0 is white.
const FULL: (u8, u8, u8) = (31, 119, 180);

/// What the report reads of `confusion.json` (the rest of the
/// [`crate::eval::EvalReport`] is ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Confusion {
    /// the evaluation set (`mnist5k/test`, ...)
    pub data: String,
    /// images evaluated
    pub n: usize,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<usize>>,
}

impl Confusion {
    /// Parse and check `confusion.json`: a square matrix whose counts add
    /// up to `n`.
    pub fn parse(path: &Path, text: &str) -> Result<Confusion> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let c: Confusion = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "not an evaluation report {{data, n, confusion}}: {e}"
            ))
        })?;
        let k = c.confusion.len();
        if k == 0 {
            return Err(bad("the confusion matrix is empty".into()));
        }
        if let Some((i, r)) = c.confusion.iter().enumerate().find(|(_, r)| r.len() != k) {
            return Err(bad(format!(
                "the confusion matrix is not square: row {i} has {} entries, there are {k} rows",
                r.len()
            )));
        }
        let total: usize = c.confusion.iter().flatten().sum();
        if total != c.n {
            return Err(bad(format!(
                "the confusion matrix counts {total} images, \"n\" says {}",
                c.n
            )));
        }
        Ok(c)
    }

    /// Fraction of the images classified correctly.
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.confusion.len())
            .map(|c| self.confusion[c][c])
            .sum();
        correct as f64 / self.n.max(1) as f64
    }
}

/// Render `c` of the run `label` to SVG and PNG.
pub fn render(label: &str, c: &Confusion, path_hint: &Path) -> Result<(String, Vec<u8>)> {
    register_fonts();
    let plot_err =
        |e: String| Error::io(path_hint, std::io::Error::other(format!("plotting: {e}")));
    let (w, h) = (CONF_W, CONF_H);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        draw(&root, label, c).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, label, c).map_err(|e| plot_err(e.to_string()))?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let png = encode_png(&rgb, w, h).map_err(|e| plot_err(e.to_string()))?;
    Ok((svg, png))
}

/// White at 0, [`FULL`] at 1.
fn shade(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let mix = |full: u8| (255.0 - s * (255.0 - full as f64)).round() as u8;
    RGBColor(mix(FULL.0), mix(FULL.1), mix(FULL.2))
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    label: &str,
    c: &Confusion,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let k = c.confusion.len();
    let centre = Pos::new(HPos::Center, VPos::Center);
    let title = format!(
        "{label}: {} ({} images, accuracy {:.2}%)",
        c.data,
        c.n,
        100.0 * c.accuracy()
    );
    root.draw(&Text::new(
        title,
        (CONF_W as i32 / 2, 22),
        (FONT, 19).into_font().color(&INK).pos(centre),
    ))?;
    // the grid: left of it the true classes, below it the predicted ones,
    // right of it the colour bar
    let (left, top, bar_w) = (92i32, 56i32, 100i32);
    let side = (CONF_W as i32 - left - bar_w).min(CONF_H as i32 - top - 70);
    let cell = side as f64 / k as f64;
    let at = |i: usize| (i as f64 * cell).round() as i32;
    let label_every = k.div_ceil(20);
    let tick_font = (FONT, 15).into_font().color(&INK);
    for (t, row) in c.confusion.iter().enumerate() {
        let n: usize = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if n > 0 { count as f64 / n as f64 } else { 0.0 };
            let (x0, y0) = (left + at(p), top + at(t));
            let (x1, y1) = (left + at(p + 1), top + at(t + 1));
            root.draw(&Rectangle::new([(x0, y0), (x1, y1)], shade(share).filled()))?;
            if k <= 20 && cell >= 24.0 {
                let size = (cell * 0.38).clamp(10.0, 18.0);
                let ink = if share > 0.5 { WHITE } else { INK };
                root.draw(&Text::new(
                    count.to_string(),
                    ((x0 + x1) / 2, (y0 + y1) / 2),
                    (FONT, size).into_font().color(&ink).pos(centre),
                ))?;
            }
        }
        if t % label_every == 0 {
            let y = top + (at(t) + at(t + 1)) / 2;
            root.draw(&Text::new(
                t.to_string(),
                (left - 8, y),
                tick_font.clone().pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
            let x = left + (at(t) + at(t + 1)) / 2;
            root.draw(&Text::new(
                t.to_string(),
                (x, top + side + 8),
                tick_font.clone().pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + side, top + side)],
        INK.mix(0.6).stroke_width(1),
    ))?;
    let desc = (FONT, 17).into_font().color(&INK);
    root.draw(&Text::new(
        "predicted class",
        (left + side / 2, top + side + 34),
        desc.clone().pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    root.draw(&Text::new(
        "true class",
        (24, top + side / 2),
        desc.transform(FontTransform::Rotate270).pos(centre),
    ))?;
    // colour bar: the share of the true class's images
    let (bx, bw) = (left + side + 24, 18);
    let steps = 64;
    for s in 0..steps {
        let share = 1.0 - s as f64 / steps as f64;
        let y0 = top + (s * side) / steps;
        let y1 = top + ((s + 1) * side) / steps;
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + bw, y1)],
            shade(share).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bx, top), (bx + bw, top + side)],
        INK.mix(0.6).stroke_width(1),
    ))?;
    for (v, text) in [(1.0, "1"), (0.5, "0.5"), (0.0, "0")] {
        let y = top + ((1.0 - v) * side as f64).round() as i32;
        root.draw(&Text::new(
            text,
            (bx + bw + 6, y),
            tick_font.clone().pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    root.draw(&Text::new(
        "row share",
        (bx + bw / 2, top - 8),
        (FONT, 13)
            .into_font()
            .color(&INK)
            .pos(Pos::new(HPos::Center, VPos::Bottom)),
    ))?;
    Ok(())
}

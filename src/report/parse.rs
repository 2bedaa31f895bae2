//! Readers for a training run directory: `config.json`, `metrics.csv`,
//! `flow.csv` and the optional `summary.json`.
//!
//! The CSV files are plain numeric tables (no quoting). Columns are found by
//! name, so extra columns and any column order are fine; a column the report
//! needs that is missing, a row with the wrong number of fields, or a cell
//! that is not a number is an [`Error::Format`] naming the file and line.
//! Empty cells are "no value"; `NaN`, `inf`, `-inf` and Rust's `{:e}` output
//! (`1.5e-3`) all parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::probe::FlowRow;

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub iter: u64,
    pub epoch: Option<f64>,
    pub lr: Option<f64>,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    pub images_per_s: Option<f64>,
    pub wall_s: Option<f64>,
}

/// All rows of `flow.csv` for one probed iteration, sorted by unit.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowProbe {
    pub iter: u64,
    /// the rows `resgrad train` wrote (`crate::probe::FlowRow`), each with
    /// this probe's `iter`
    pub units: Vec<FlowRow>,
}

impl FlowProbe {
    /// `||dL/dx_0|| / ||dL/dx_U||`, where both ends are present.
    pub fn ratio(&self) -> Option<f64> {
        let first = self.units.first()?;
        let last = self.units.last()?;
        if first.unit == last.unit {
            return None;
        }
        Some(first.grad_norm / last.grad_norm)
    }

    /// The gradient norm at the top unit, `||dL/dx_U||`.
    pub fn top_norm(&self) -> Option<f64> {
        self.units.last().map(|u| u.grad_norm)
    }
}

/// The contents of `summary.json`, written by the training job at the end.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RunSummaryFile {
    pub verdict: String,
    #[serde(default)]
    pub ratio_init: Option<f64>,
    #[serde(default)]
    pub ratio_end: Option<f64>,
    #[serde(default)]
    pub test_acc: Option<f64>,
}

/// Everything the report knows about one run directory.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    /// Variant label: the config's `"name"`, else the directory name.
    pub label: String,
    /// Short description of `config["spec"]`.
    pub spec_label: String,
    /// `config.json` as written (opaque apart from `name` and `spec`).
    pub config: Value,
    /// `None` when `metrics.csv` is absent.
    pub metrics: Option<Vec<MetricRow>>,
    /// `None` when `flow.csv` is absent; probes sorted by iteration.
    pub flow: Option<Vec<FlowProbe>>,
    pub summary: Option<RunSummaryFile>,
    /// `diverged.json`: the marker a diverged run leaves
    pub diverged: Option<crate::verdict::Diverged>,
    /// `confusion.json`: the final evaluation's confusion matrix
    pub confusion: Option<super::confusion::Confusion>,
}

impl Run {
    /// The first probed iteration (initialisation).
    pub fn flow_init(&self) -> Option<&FlowProbe> {
        self.flow.as_ref()?.first()
    }

    /// The last probed iteration.
    pub fn flow_end(&self) -> Option<&FlowProbe> {
        self.flow.as_ref()?.last()
    }

    /// `||dL/dx_0||/||dL/dx_U||` at init: from `flow.csv`, else `summary.json`.
    pub fn ratio_init(&self) -> Option<f64> {
        self.flow_init()
            .and_then(FlowProbe::ratio)
            .or_else(|| self.summary.as_ref()?.ratio_init)
    }

    /// `||dL/dx_0||/||dL/dx_U||` at the last probe: from `flow.csv`, else
    /// `summary.json`.
    pub fn ratio_end(&self) -> Option<f64> {
        self.flow_end()
            .and_then(FlowProbe::ratio)
            .or_else(|| self.summary.as_ref()?.ratio_end)
    }

    /// Final test accuracy: `summary.json` if present (the training job's
    /// final evaluation), else the last evaluated row of `metrics.csv`.
    pub fn final_test_acc(&self) -> Option<f64> {
        self.summary
            .as_ref()
            .and_then(|s| s.test_acc)
            .or_else(|| self.metrics.as_ref()?.iter().rev().find_map(|m| m.test_acc))
    }

    /// True when any loss or gradient value of the run is NaN or infinite.
    pub fn has_non_finite(&self) -> bool {
        let m = self.metrics.iter().flatten().any(|m| {
            [m.train_loss, m.test_loss]
                .iter()
                .flatten()
                .any(|v| !v.is_finite())
        });
        let f = self
            .flow
            .iter()
            .flatten()
            .flat_map(|p| &p.units)
            .any(|u| !u.grad_norm.is_finite());
        m || f
    }

    /// The verdict on the run's gradient flow (`crate::verdict`), judged
    /// from its first and last probe: `diverged at iteration I` when the
    /// run left `diverged.json`; else from `flow.csv` when every value in it
    /// is finite; else `summary.json`'s verdict; else `diverged (inferred)`
    /// when non-finite values were seen; else `None`.
    pub fn verdict(&self) -> Option<String> {
        self.run_verdict()
            .map(|v| v.short())
            .or_else(|| self.summary.as_ref().map(|s| s.verdict.clone()))
            .or_else(|| {
                self.has_non_finite()
                    .then(|| "diverged (inferred)".to_string())
            })
    }

    /// The verdict judged from `diverged.json` and `flow.csv` (see
    /// [`Run::verdict`]); `None` without a marker and without a finite
    /// `flow.csv`.
    pub fn run_verdict(&self) -> Option<crate::verdict::RunVerdict> {
        let rows = |p: Option<&FlowProbe>| p.map(|p| p.units.clone()).unwrap_or_default();
        let v = crate::verdict::RunVerdict::new(
            &rows(self.flow_init()),
            &rows(self.flow_end()),
            self.diverged.clone(),
        );
        if self.diverged.is_some() || (v.end.is_some() && !self.has_non_finite()) {
            Some(v)
        } else {
            None
        }
    }

    /// Units where the shape changes (cifar nets: the first unit of stages
    /// 2 and 3, stride 2), whose shortcut is a projection or option A
    /// rather than a multiple of the identity: the `prod(lambda)` line
    /// breaks there. Read from `config["spec"]` (`depth`, `block`; an mlp
    /// has none); only units below the run's top probed unit.
    pub fn stage_boundaries(&self) -> Vec<usize> {
        let Some(spec) = self.config.get("spec") else {
            return vec![];
        };
        if spec.get("arch").and_then(Value::as_str) == Some("mlp") {
            return vec![];
        }
        let Some(depth) = spec.get("depth").and_then(Value::as_u64) else {
            return vec![];
        };
        let per = match spec.get("block").and_then(Value::as_str) {
            Some("bottleneck") => 9,
            _ => 6,
        };
        if depth < 2 + per || (depth - 2) % per != 0 {
            return vec![];
        }
        let n = ((depth - 2) / per) as usize;
        let top = self
            .flow
            .iter()
            .flatten()
            .filter_map(|p| p.units.last())
            .map(|u| u.unit)
            .max()
            .unwrap_or(0);
        [n, 2 * n].into_iter().filter(|&b| b < top).collect()
    }
}

/// Read one run directory. `config.json` is required (it is what makes a
/// directory a run); `metrics.csv`, `flow.csv` and `summary.json` may be
/// absent.
pub fn load_run(dir: &Path) -> Result<Run> {
    let config_path = dir.join("config.json");
    let text = crate::io::read::read_text(&config_path)?;
    let config: Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: config_path.clone(),
        msg: format!("not valid JSON: {e}"),
    })?;
    if !config.is_object() {
        return Err(Error::Format {
            path: config_path,
            msg: "expected a JSON object".into(),
        });
    }
    let label = match config.get("name").and_then(Value::as_str) {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => dir_name(dir),
    };
    let spec_label = config.get("spec").map(spec_label).unwrap_or_default();

    let metrics = read_optional(&dir.join("metrics.csv"))?
        .map(|(p, t)| parse_metrics(&p, &t))
        .transpose()?;
    let flow = read_optional(&dir.join("flow.csv"))?
        .map(|(p, t)| parse_flow(&p, &t))
        .transpose()?;
    let summary = read_optional(&dir.join("summary.json"))?
        .map(|(p, t)| {
            serde_json::from_str::<RunSummaryFile>(&t).map_err(|e| Error::Format {
                path: p,
                msg: format!("not a run summary: {e}"),
            })
        })
        .transpose()?;
    let diverged = crate::verdict::read_diverged(dir)?;
    let confusion = read_optional(&dir.join(crate::eval::CONFUSION_JSON))?
        .map(|(p, t)| super::confusion::Confusion::parse(&p, &t))
        .transpose()?;
    Ok(Run {
        dir: dir.to_path_buf(),
        label,
        spec_label,
        config,
        metrics,
        flow,
        summary,
        diverged,
        confusion,
    })
}

fn dir_name(dir: &Path) -> String {
    // `canonicalize` resolves `.` and trailing `..` so the label is a real name.
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn read_optional(path: &Path) -> Result<Option<(PathBuf, String)>> {
    // a FIFO or device is refused by name (a missing file is fine)
    if path.exists() {
        crate::io::read::regular_file_len(path)?;
    }
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some((path.to_path_buf(), t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A one-line description of a model spec, e.g.
/// `resnet-110 · preact · shortcut scale(0.5) · width 16`. Unknown shapes fall
/// back to compact JSON.
pub fn spec_label(spec: &Value) -> String {
    let Some(obj) = spec.as_object() else {
        return spec.to_string();
    };
    let mut parts = Vec::new();
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match (obj.get("arch"), obj.get("depth")) {
        (Some(a), Some(d)) => parts.push(format!("{}-{}", scalar(a), scalar(d))),
        (Some(a), None) => parts.push(scalar(a)),
        (None, Some(d)) => parts.push(format!("depth {}", scalar(d))),
        (None, None) => {}
    }
    if let Some(u) = obj.get("unit") {
        parts.push(scalar(u));
    }
    if let Some(s) = obj.get("shortcut") {
        parts.push(format!("shortcut {}", shortcut_label(s)));
    }
    let mlp = obj.get("arch").and_then(Value::as_str) == Some("mlp");
    if mlp {
        if let (Some(h), Some(u)) = (obj.get("hidden"), obj.get("units")) {
            parts.push(format!("{} units x {} wide", scalar(u), scalar(h)));
        }
        if obj.get("batchnorm").and_then(Value::as_bool) == Some(false) {
            parts.push("no BN".into());
        }
    } else if let Some(w) = obj.get("width") {
        parts.push(format!("width {}", scalar(w)));
    }
    if parts.is_empty() {
        spec.to_string()
    } else {
        parts.join(" · ")
    }
}

pub(super) fn shortcut_label(s: &Value) -> String {
    let Some(obj) = s.as_object() else {
        return match s {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    };
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let rest: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| *k != "kind").collect();
    match rest.as_slice() {
        [] => kind,
        [(_, v)] => format!("{kind}({v})"),
        many => {
            let args: Vec<String> = many.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{kind}({})", args.join(", "))
        }
    }
}

/// A parsed CSV: header name → column index, and the data rows with their
/// 1-based line numbers.
struct Table<'a> {
    path: &'a Path,
    cols: BTreeMap<&'a str, usize>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(path: &'a Path, text: &'a str, required: &[&str]) -> Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(fmt_err(path, 1, "empty file, expected a header line"));
        };
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let cols: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for r in required {
            if !cols.contains_key(r) {
                return Err(fmt_err(
                    path,
                    1,
                    &format!("missing column `{r}` (header: `{header}`)"),
                ));
            }
        }
        let mut rows = Vec::new();
        for (line, l) in lines {
            let cells: Vec<&str> = l.split(',').map(str::trim).collect();
            if cells.len() != names.len() {
                return Err(fmt_err(
                    path,
                    line,
                    &format!("{} fields, the header has {}", cells.len(), names.len()),
                ));
            }
            rows.push((line, cells));
        }
        Ok(Table { path, cols, rows })
    }

    /// The cell of column `name` in `row`; `None` when the column is absent
    /// or the cell empty.
    fn cell(&self, row: &[&'a str], name: &str) -> Option<&'a str> {
        let c = *self.cols.get(name)?;
        Some(row[c]).filter(|s| !s.is_empty())
    }

    fn f64(&self, line: usize, row: &[&str], name: &str) -> Result<Option<f64>> {
        match self.cell(row, name) {
            None => Ok(None),
            Some(s) => s.parse::<f64>().map(Some).map_err(|_| {
                fmt_err(
                    self.path,
                    line,
                    &format!("column `{name}`: `{s}` is not a number"),
                )
            }),
        }
    }

    fn f64_req(&self, line: usize, row: &[&str], name: &str) -> Result<f64> {
        self.f64(line, row, name)?
            .ok_or_else(|| fmt_err(self.path, line, &format!("column `{name}` is empty")))
    }

    fn uint(&self, line: usize, row: &[&str], name: &str) -> Result<u64> {
        let s = self
            .cell(row, name)
            .ok_or_else(|| fmt_err(self.path, line, &format!("column `{name}` is empty")))?;
        s.parse::<u64>().map_err(|_| {
            fmt_err(
                self.path,
                line,
                &format!("column `{name}`: `{s}` is not a non-negative integer"),
            )
        })
    }
}

fn fmt_err(path: &Path, line: usize, msg: &str) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: format!("line {line}: {msg}"),
    }
}

/// Parse `metrics.csv`. Required columns: `iter`, `train_loss`, `test_acc`.
pub fn parse_metrics(path: &Path, text: &str) -> Result<Vec<MetricRow>> {
    let t = Table::parse(path, text, &["iter", "train_loss", "test_acc"])?;
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, row) in &t.rows {
        let (line, row) = (*line, row.as_slice());
        out.push(MetricRow {
            iter: t.uint(line, row, "iter")?,
            epoch: t.f64(line, row, "epoch")?,
            lr: t.f64(line, row, "lr")?,
            train_loss: t.f64(line, row, "train_loss")?,
            train_acc: t.f64(line, row, "train_acc")?,
            test_loss: t.f64(line, row, "test_loss")?,
            test_acc: t.f64(line, row, "test_acc")?,
            images_per_s: t.f64(line, row, "images_per_s")?,
            wall_s: t.f64(line, row, "wall_s")?,
        });
    }
    Ok(out)
}

/// Parse `flow.csv` into probes sorted by iteration, units sorted by index.
/// Required columns: `iter`, `unit`, `grad_norm`, `shortcut_norm`,
/// `branch_norm`, `direct_factor`.
pub fn parse_flow(path: &Path, text: &str) -> Result<Vec<FlowProbe>> {
    let t = Table::parse(
        path,
        text,
        &[
            "iter",
            "unit",
            "grad_norm",
            "shortcut_norm",
            "branch_norm",
            "direct_factor",
        ],
    )?;
    let mut probes: BTreeMap<u64, Vec<FlowRow>> = BTreeMap::new();
    for (line, row) in &t.rows {
        let (line, row) = (*line, row.as_slice());
        let iter = t.uint(line, row, "iter")?;
        let unit = t.uint(line, row, "unit")?;
        let unit = usize::try_from(unit)
            .map_err(|_| fmt_err(path, line, &format!("unit index {unit} is too large")))?;
        let units = probes.entry(iter).or_default();
        if units.iter().any(|u| u.unit == unit) {
            return Err(fmt_err(
                path,
                line,
                &format!("unit {unit} appears twice for iteration {iter}"),
            ));
        }
        units.push(FlowRow {
            iter,
            unit,
            grad_norm: t.f64_req(line, row, "grad_norm")?,
            shortcut_norm: t.f64(line, row, "shortcut_norm")?,
            branch_norm: t.f64(line, row, "branch_norm")?,
            cosine: t.f64(line, row, "cosine")?,
            direct_factor: t.f64(line, row, "direct_factor")?,
        });
    }
    Ok(probes
        .into_iter()
        .map(|(iter, mut units)| {
            units.sort_by_key(|u| u.unit);
            FlowProbe { iter, units }
        })
        .collect())
}

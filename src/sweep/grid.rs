//! The grid file: TOML -> a list of planned runs, each with a stable
//! directory name and a complete [`TrainConfig`].
//!
//! Every value is converted to JSON once and merged there: the base spec
//! table, overridden by the grid's spec keys, is read by [`Spec`]'s serde
//! (unknown fields are errors); the base settings, overridden by the grid's
//! setting keys, by [`Settings`] (`deny_unknown_fields`). All of it happens
//! before the first run starts, so a typo in the last cell of a grid fails
//! the sweep at once (exit 2), not an hour in.

use crate::error::{Error, Result};
use crate::model::Spec;
pub use crate::train::settings::{geometry, Settings};
use crate::train::{DataSource, TrainConfig};
use serde_json::{Map, Value};

/// Keys of the model spec (`[base].spec` and grid keys).
pub const SPEC_KEYS: &[&str] = &[
    "arch",
    "depth",
    "block",
    "unit",
    "shortcut",
    "downsample",
    "width",
    "classes",
    "in_channels",
    "in_features",
    "hidden",
    "units",
    "batchnorm",
];

/// Training settings (`[base]` and grid keys); the names of `resgrad train`'s flags.
pub const SETTING_KEYS: &[&str] = &[
    "data",
    "preset",
    "iters",
    "epochs",
    "batch",
    "lr",
    "momentum",
    "nesterov",
    "wd",
    "no_decay_bn_bias",
    "schedule",
    "milestones",
    "gamma",
    "warmup",
    "warmup_iters",
    "warmup_lr",
    "seed",
    "val",
    "augment",
    "flow_every",
    "eval_every",
    "max_grad_norm",
    "branch_init_scale",
    "schedule_scale",
    "init_from",
    "log_every",
    "precision",
];

const TOP_KEYS: &str = "name, description, fail_above, [base], [grid]";

/// The most runs a grid may have: every run is a training process and a
/// directory; the product of the axes is counted (with overflow checked)
/// before any run is planned.
pub const MAX_RUNS: usize = 100_000;

/// One axis of the grid: a key (or several keys linked with `+`, which vary
/// together) and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// e.g. `["shortcut"]` or `["depth", "block"]`
    pub keys: Vec<String>,
    /// `values[i][k]` is the value of `keys[k]` at point `i`
    pub values: Vec<Vec<Value>>,
}

impl Axis {
    /// The axis as written: `shortcut`, `depth+block`.
    pub fn name(&self) -> String {
        self.keys.join("+")
    }
    fn is_seed(&self) -> bool {
        self.keys == ["seed"]
    }
}

/// A parsed grid file.
#[derive(Clone, Debug)]
pub struct Grid {
    pub name: String,
    pub description: Option<String>,
    /// a finished run whose final test error (%) is above this counts as
    /// "fail" too (the paper's rule: 20)
    pub fail_above: Option<f64>,
    /// the base spec (`[base].spec`)
    pub base_spec: Map<String, Value>,
    /// the base settings (`[base]` without `spec`)
    pub base_settings: Map<String, Value>,
    /// in file order
    pub axes: Vec<Axis>,
    /// the file's text, copied into the output directory
    pub source: String,
}

/// One run of the sweep.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// directory name, e.g. `shortcut=scale-0.5__seed=1`
    pub id: String,
    /// the grid cell: (axis name, value) for every axis but `seed`
    pub cell: Vec<(String, String)>,
    pub seed: u64,
    pub config: TrainConfig,
}

fn toml_to_json(v: &toml::Value) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Config(format!("grid: {e}")))
}

fn known(key: &str) -> bool {
    SPEC_KEYS.contains(&key) || SETTING_KEYS.contains(&key)
}

impl Grid {
    /// Parse a grid file's text; `default_name` names it when it has no `name`.
    pub fn parse(text: &str, default_name: &str) -> Result<Grid> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Config(format!("grid: {e}")))?;
        let mut grid = Grid {
            name: default_name.to_string(),
            description: None,
            fail_above: None,
            base_spec: Map::new(),
            base_settings: Map::new(),
            axes: Vec::new(),
            source: text.to_string(),
        };
        let mut has_spec = false;
        for (key, v) in &doc {
            match (key.as_str(), v) {
                ("name", toml::Value::String(s)) => grid.name = s.clone(),
                ("description", toml::Value::String(s)) => grid.description = Some(s.clone()),
                ("fail_above", toml::Value::Float(f)) => grid.fail_above = Some(*f),
                ("fail_above", toml::Value::Integer(i)) => grid.fail_above = Some(*i as f64),
                ("base", toml::Value::Table(t)) => {
                    for (k, v) in t {
                        if k == "spec" {
                            let toml::Value::Table(spec) = v else {
                                return Err(Error::Config(
                                    "grid: base.spec must be a table, e.g. spec = { arch = \"mlp\", unit = \"original\", shortcut = { kind = \"identity\" } }".into(),
                                ));
                            };
                            for (sk, sv) in spec {
                                if !SPEC_KEYS.contains(&sk.as_str()) {
                                    return Err(Error::Config(format!(
                                        "grid: unknown spec key `{sk}` in base.spec (known: {})",
                                        SPEC_KEYS.join(", ")
                                    )));
                                }
                                grid.base_spec.insert(sk.clone(), toml_to_json(sv)?);
                            }
                            has_spec = true;
                        } else if SETTING_KEYS.contains(&k.as_str()) {
                            grid.base_settings.insert(k.clone(), toml_to_json(v)?);
                        } else if SPEC_KEYS.contains(&k.as_str()) {
                            return Err(Error::Config(format!(
                                "grid: `{k}` is a spec field: write it inside base.spec"
                            )));
                        } else {
                            return Err(Error::Config(format!(
                                "grid: unknown key `{k}` in [base] (known: spec, {})",
                                SETTING_KEYS.join(", ")
                            )));
                        }
                    }
                }
                ("grid", toml::Value::Table(t)) => {
                    for (k, v) in t {
                        grid.axes.push(parse_axis(k, v)?);
                    }
                }
                ("name" | "description" | "fail_above" | "base" | "grid", _) => {
                    return Err(Error::Config(format!(
                        "grid: `{key}` has the wrong type ({})",
                        v.type_str()
                    )))
                }
                _ => {
                    return Err(Error::Config(format!(
                        "grid: unknown top-level key `{key}` (known: {TOP_KEYS})"
                    )))
                }
            }
        }
        if !has_spec {
            return Err(Error::Config(
                "grid: [base] needs a spec table (spec = { ... })".into(),
            ));
        }
        // the name is a directory (runs/<name>) and every run's name prefix
        crate::io::check_name("grid: name", &grid.name)?;
        if let Some(f) = grid.fail_above {
            if !(f.is_finite() && f > 0.0) {
                return Err(Error::Config(format!(
                    "grid: fail_above must be a positive percentage, got {f}"
                )));
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for a in &grid.axes {
            for k in &a.keys {
                if seen.contains(&k.as_str()) {
                    return Err(Error::Config(format!(
                        "grid: key `{k}` appears in two grid axes"
                    )));
                }
                seen.push(k);
            }
        }
        Ok(grid)
    }

    /// Number of runs (the product of the axes' lengths; saturates at
    /// `usize::MAX` instead of overflowing).
    pub fn len(&self) -> usize {
        self.axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every run, cells in grid order (first axis outermost), seeds innermost.
    /// Builds and validates every config; directory names must be distinct.
    pub fn plan(&self) -> Result<Vec<PlannedRun>> {
        // seeds innermost, so a cell's runs are next to each other
        let mut axes: Vec<&Axis> = self.axes.iter().filter(|a| !a.is_seed()).collect();
        axes.extend(self.axes.iter().filter(|a| a.is_seed()));
        let n = self.len();
        if n > MAX_RUNS {
            let sizes: Vec<String> = self
                .axes
                .iter()
                .map(|a| format!("{} {}", a.name(), a.values.len()))
                .collect();
            return Err(Error::Config(format!(
                "grid: {} runs ({}), more than the {MAX_RUNS} a sweep runs",
                if n == usize::MAX {
                    "more than 2^64".to_string()
                } else {
                    n.to_string()
                },
                sizes.join(" x ")
            )));
        }
        let mut runs: Vec<PlannedRun> = Vec::with_capacity(n);
        let mut idx = vec![0usize; axes.len()];
        for _ in 0..n {
            let mut spec = self.base_spec.clone();
            let mut settings = self.base_settings.clone();
            let mut parts = Vec::new();
            let mut cell = Vec::new();
            for (a, &i) in axes.iter().zip(&idx) {
                let vals = &a.values[i];
                for (k, v) in a.keys.iter().zip(vals) {
                    if SPEC_KEYS.contains(&k.as_str()) {
                        spec.insert(k.clone(), v.clone());
                    } else {
                        settings.insert(k.clone(), v.clone());
                    }
                }
                let slug = vals.iter().map(slug_value).collect::<Vec<_>>().join("-");
                parts.push(format!("{}={}", a.name(), sanitize(&slug)));
                if !a.is_seed() {
                    let pretty = vals.iter().map(pretty_value).collect::<Vec<_>>();
                    cell.push((a.name(), pretty.join(", ")));
                }
            }
            let id = if parts.is_empty() {
                "base".to_string()
            } else {
                parts.join("__")
            };
            let config = build_config(&format!("{}/{id}", self.name), spec, settings)
                .map_err(|e| prefix_error(&id, e))?;
            runs.push(PlannedRun {
                id,
                cell,
                seed: config.seed,
                config,
            });
            // odometer, last axis fastest
            for j in (0..axes.len()).rev() {
                idx[j] += 1;
                if idx[j] < axes[j].values.len() {
                    break;
                }
                idx[j] = 0;
            }
        }
        let mut seen: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(runs.len());
        for (i, r) in runs.iter().enumerate() {
            if let Some(&o) = seen.get(r.id.as_str()) {
                let cell = |c: &[(String, String)]| {
                    c.iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::Config(format!(
                    "grid: two runs would share the directory {:?} ({} and {}); make the grid values distinct",
                    r.id,
                    cell(&runs[o].cell),
                    cell(&r.cell)
                )));
            }
            seen.insert(&r.id, i);
        }
        Ok(runs)
    }
}

fn prefix_error(id: &str, e: Error) -> Error {
    match e {
        Error::Spec(m) => Error::Spec(format!("run {id}: {m}")),
        Error::Config(m) => Error::Config(format!("run {id}: {m}")),
        e => e,
    }
}

fn parse_axis(key: &str, v: &toml::Value) -> Result<Axis> {
    let keys: Vec<String> = key.split('+').map(|s| s.trim().to_string()).collect();
    for k in &keys {
        if !known(k) {
            return Err(Error::Config(format!(
                "grid: unknown grid key `{k}` (spec keys: {}; settings: {})",
                SPEC_KEYS.join(", "),
                SETTING_KEYS.join(", ")
            )));
        }
    }
    if keys.len() > 1 && keys.iter().any(|k| k == "seed") {
        return Err(Error::Config(
            "grid: `seed` must be a grid key of its own (seed = [0, 1, 2])".into(),
        ));
    }
    let toml::Value::Array(list) = v else {
        return Err(Error::Config(format!(
            "grid: `{key}` must be a list of values, e.g. {key} = [ ... ]"
        )));
    };
    if list.is_empty() {
        return Err(Error::Config(format!("grid: `{key}` is an empty list")));
    }
    let mut values = Vec::with_capacity(list.len());
    for item in list {
        if keys.len() == 1 {
            values.push(vec![toml_to_json(item)?]);
            continue;
        }
        match item {
            toml::Value::Array(t) if t.len() == keys.len() => {
                values.push(t.iter().map(toml_to_json).collect::<Result<Vec<_>>>()?)
            }
            _ => {
                return Err(Error::Config(format!(
                    "grid: every value of the linked key `{key}` must be a list of {} values (one per key), got {item}",
                    keys.len()
                )))
            }
        }
    }
    Ok(Axis { keys, values })
}

fn fmt_number(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A value as a directory-name fragment: `identity`, `scale-0.5`,
/// `scale-branch0.5-shortcut0.5` (fields in name order, so the name does not
/// depend on how the table was written), `110`.
pub fn slug_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(_) => fmt_number(v),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(a) => a.iter().map(slug_value).collect::<Vec<_>>().join("-"),
        Value::Object(m) => {
            let kind = m.get("kind").map(slug_value);
            let rest: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| *k != "kind").collect();
            let mut parts: Vec<String> = kind.into_iter().collect();
            if rest.len() == 1 && !parts.is_empty() {
                parts.push(slug_value(rest[0].1));
            } else {
                parts.extend(rest.iter().map(|(k, v)| format!("{k}{}", slug_value(v))));
            }
            parts.join("-")
        }
    }
}

/// A value for tables: `identity`, `scale 0.5`, `scale branch=0.5 shortcut=0.5`.
pub fn pretty_value(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let kind = m.get("kind").map(pretty_value);
            let rest: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| *k != "kind").collect();
            let mut parts: Vec<String> = kind.into_iter().collect();
            if rest.len() == 1 && !parts.is_empty() {
                parts.push(pretty_value(rest[0].1));
            } else {
                parts.extend(rest.iter().map(|(k, v)| format!("{k}={}", pretty_value(v))));
            }
            parts.join(" ")
        }
        Value::Array(a) => a.iter().map(pretty_value).collect::<Vec<_>>().join(" "),
        v => slug_value(v),
    }
}

/// Keep `[A-Za-z0-9._+=-]`; anything else (a `/` of a data path, a space)
/// becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Build the run's config from its merged spec and settings, the way
/// `resgrad train`'s flags do (see [`Settings::build`]); the data decide the
/// input geometry unless the spec says otherwise.
pub fn build_config(
    name: &str,
    mut spec: Map<String, Value>,
    settings: Map<String, Value>,
) -> Result<TrainConfig> {
    let s: Settings = serde_json::from_value(Value::Object(settings))
        .map_err(|e| Error::Config(format!("settings: {e}")))?;
    let data = DataSource::parse(s.data.as_deref().unwrap_or("mnist5k"))?;
    let (c, feats, classes) = geometry(&data)?;
    let mlp = spec.get("arch").and_then(Value::as_str) == Some("mlp");
    spec.entry("in_channels").or_insert(Value::from(c));
    spec.entry("classes").or_insert(Value::from(classes));
    if mlp {
        spec.entry("in_features").or_insert(Value::from(feats));
    }
    let spec: Spec =
        serde_json::from_value(Value::Object(spec)).map_err(|e| Error::Spec(e.to_string()))?;
    s.build(name, spec, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Augment;
    use crate::model::{Arch, Shortcut};
    use crate::train::schedule::{Decay, Warmup};

    const TINY: &str = r#"
name = "tiny"
fail_above = 20
[base]
spec = { arch = "mlp", hidden = 8, units = 2, unit = "full_preact", shortcut = { kind = "identity" } }
iters = 20
batch = 32
lr = 0.05
[grid]
shortcut = [ { kind = "identity" }, { kind = "scale", shortcut = 0.5 }, { kind = "scale", shortcut = 0.5, branch = 0.5 }, { kind = "exclusive_gate", bias_init = -6.0 } ]
seed = [0, 1]
"#;

    #[test]
    fn plans_the_product_with_stable_names() {
        let g = Grid::parse(TINY, "x").unwrap();
        assert_eq!(g.name, "tiny");
        assert_eq!(g.fail_above, Some(20.0));
        assert_eq!(g.len(), 8);
        let runs = g.plan().unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "shortcut=identity__seed=0",
                "shortcut=identity__seed=1",
                "shortcut=scale-0.5__seed=0",
                "shortcut=scale-0.5__seed=1",
                "shortcut=scale-branch0.5-shortcut0.5__seed=0",
                "shortcut=scale-branch0.5-shortcut0.5__seed=1",
                "shortcut=exclusive_gate--6__seed=0",
                "shortcut=exclusive_gate--6__seed=1",
            ]
        );
        let r = &runs[3];
        assert_eq!(r.seed, 1);
        assert_eq!(r.config.seed, 1);
        assert_eq!(r.cell, vec![("shortcut".into(), "scale 0.5".into())]);
        assert_eq!(runs[4].cell[0].1, "scale branch=0.5 shortcut=0.5");
        let c = &r.config;
        assert_eq!(c.spec.arch, Arch::Mlp);
        assert_eq!(c.spec.in_features, Some(784));
        assert_eq!(
            c.spec.shortcut,
            Shortcut::Scale {
                shortcut: 0.5,
                branch: 1.0
            }
        );
        assert_eq!((c.iters, c.batch, c.schedule.base_lr), (20, 32, 0.05));
        assert_eq!(c.name, "tiny/shortcut=scale-0.5__seed=1");
    }

    #[test]
    fn preset_then_overrides_and_linked_keys() {
        let text = r#"
[base]
spec = { arch = "cifar", depth = 20, unit = "original", shortcut = { kind = "identity" }, downsample = "A" }
data = "cifar10:/nowhere"
preset = "paper"
iters = 2000
milestones = [1000, 1500]
[grid]
"depth+block" = [ [20, "basic"], [29, "bottleneck"] ]
unit = ["original", "full_preact"]
"#;
        let g = Grid::parse(text, "paperish").unwrap();
        assert_eq!(g.name, "paperish");
        let runs = g.plan().unwrap();
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[0].id, "depth+block=20-basic__unit=original");
        assert_eq!(runs[3].id, "depth+block=29-bottleneck__unit=full_preact");
        assert_eq!(
            runs[3].cell[0],
            ("depth+block".into(), "29, bottleneck".into())
        );
        let c = &runs[3].config;
        assert_eq!(c.spec.depth, Some(29));
        assert_eq!((c.spec.in_channels, c.spec.classes), (3, 10));
        assert_eq!(c.iters, 2000);
        assert_eq!(c.batch, 128);
        assert_eq!(
            c.schedule.decay,
            Decay::Step {
                milestones: vec![1000, 1500],
                gamma: 0.1
            }
        );
        // the preset's warm-up stays
        assert_eq!(
            c.schedule.warmup,
            Warmup::Constant {
                iters: 400,
                lr: 0.01
            }
        );
        assert_eq!(c.augment, Augment::cifar());
    }

    #[test]
    fn every_setting_key_is_a_settings_field() {
        for k in SETTING_KEYS {
            let v = match *k {
                "data" | "preset" | "schedule" | "warmup" | "init_from" => Value::from("x"),
                "nesterov" | "no_decay_bn_bias" | "augment" | "schedule_scale" => Value::from(true),
                "milestones" => Value::from(vec![1u64]),
                "precision" => Value::from("bf16"),
                _ => Value::from(1u64),
            };
            let mut m = Map::new();
            m.insert(k.to_string(), v);
            let r: std::result::Result<Settings, _> = serde_json::from_value(Value::Object(m));
            assert!(r.is_ok(), "{k}: {r:?}");
        }
    }

    #[test]
    fn rejects_bad_grids_with_clear_messages() {
        let base = r#"[base]
spec = { arch = "mlp", hidden = 8, units = 2, unit = "original", shortcut = { kind = "identity" } }
iters = 5
"#;
        let cases = [
            (format!("colour = 1\n{base}"), "unknown top-level key `colour`"),
            (format!("{base}lrr = 0.1\n"), "unknown key `lrr` in [base]"),
            (format!("{base}depth = 20\n"), "spec field"),
            (format!("{base}[grid]\nwidht = [1]\n"), "unknown grid key `widht`"),
            (format!("{base}[grid]\nlr = 0.1\n"), "must be a list"),
            (format!("{base}[grid]\nlr = []\n"), "empty list"),
            (format!("{base}[grid]\n\"lr+batch\" = [[0.1]]\n"), "linked key"),
            (
                format!("{base}[grid]\nshortcut = [{{ kind = \"teleport\" }}]\n"),
                "teleport",
            ),
            (
                format!("{base}[grid]\nshortcut = [{{ kind = \"scale\", shortcut = 0.5, brnach = 1 }}]\n"),
                "brnach",
            ),
            (format!("{base}[grid]\nunit = [\"sideways\"]\n"), "sideways"),
            (format!("{base}[grid]\nbatch = [1]\n"), "batch must be at least 2"),
            (format!("{base}[grid]\nlr = [0.1, 0.1]\n"), "share the directory"),
            (format!("{base}epochs = 2\n"), "not both"),
            (format!("{base}preset = \"fast\"\n"), "unknown preset"),
            ("[base]\niters = 5\n".to_string(), "needs a spec"),
            (format!("{base}[grid\n"), "grid: TOML parse error"),
            (format!("name = \"../up\"\n{base}"), "path separator"),
            (format!("name = \"..\"\n{base}"), "relative directory"),
            (format!("name = \"\"\n{base}"), "is empty"),
            (format!("name = \"a\\tb\"\n{base}"), "control character"),
            (
                format!(
                    "{base}[grid]\nlr = [{}]\nwd = [{}]\n",
                    vec!["0.1"; 1000].join(","),
                    vec!["0.1"; 1000].join(",")
                ),
                "1000000 runs (lr 1000 x wd 1000), more than the 100000",
            ),
        ];
        for (text, needle) in cases {
            let e = Grid::parse(&text, "t").and_then(|g| g.plan().map(|_| ()));
            let msg = e.expect_err(&text).to_string();
            assert!(msg.contains(needle), "{text}\n=> {msg}");
        }
    }
}

//! Legend labels that tell the runs apart: each run is named by the
//! settings of its `config.json` in which the runs differ (`lr=0.05
//! seed=2`), else by its name, else by its directory.
//!
//! A config is flattened to its leaves (`sgd.momentum`, `schedule.base_lr`,
//! `spec.depth`), the spec's first, the others in key order; a `{"kind": ...}` object's kind is named after the object
//! (`decay=step`), and the spec's shortcut is one setting, written as the
//! spec line writes it (`shortcut=scale(0.5)`). A setting is named by the
//! shortest tail of its path that no other differing setting shares
//! (`base_lr`, `sgd.momentum` beside `bn.momentum`). `name` (the label
//! itself), `norm` (computed from the data) and `tensorboard` (an output
//! path) are not settings here.

use serde_json::Value;

use super::parse::{shortcut_label, Run};

/// More differing settings than this make a label too long to read: the
/// runs' names (or directories) are used instead.
pub const MAX_SETTINGS: usize = 4;

const NOT_SETTINGS: [&str; 3] = ["name", "norm", "tensorboard"];

/// One label per run, distinct whenever the runs' directories are.
pub fn run_labels(runs: &[Run]) -> Vec<String> {
    if runs.len() < 2 {
        return runs.iter().map(|r| r.label.clone()).collect();
    }
    let configs: Vec<Vec<(Vec<String>, String)>> =
        runs.iter().map(|r| settings(&r.config)).collect();
    // the model's settings first, then the rest (in key order)
    let mut differing = differing_paths(&configs);
    differing.sort_by_key(|p| p[0] != "spec");
    if (1..=MAX_SETTINGS).contains(&differing.len()) {
        let names = short_names(&differing);
        let labels: Vec<String> = configs
            .iter()
            .map(|c| {
                differing
                    .iter()
                    .zip(&names)
                    .map(|(path, name)| {
                        let v = c.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str());
                        format!("{name}={}", v.unwrap_or("none"))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if distinct(&labels) {
            return labels;
        }
    }
    // the runs' own names (a config's "name", else the directory name)
    let mut names: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    super::shorten_labels(&mut names);
    if distinct(&names) {
        return names;
    }
    let mut dirs: Vec<String> = runs.iter().map(|r| r.dir.display().to_string()).collect();
    super::shorten_labels(&mut dirs);
    // the same directory given twice
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for d in dirs.iter_mut() {
        let n = seen.entry(d.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            *d = format!("{d} ({n})");
        }
    }
    dirs
}

fn distinct(labels: &[String]) -> bool {
    let mut v = labels.to_vec();
    v.sort();
    v.dedup();
    v.len() == labels.len() && labels.iter().all(|l| !l.is_empty())
}

/// The settings of a config: (path, value as text), in key order.
pub fn settings(config: &Value) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    if let Some(obj) = config.as_object() {
        for (k, v) in obj {
            if !NOT_SETTINGS.contains(&k.as_str()) {
                flatten(&mut vec![k.clone()], v, &mut out);
            }
        }
    }
    out
}

fn flatten(path: &mut Vec<String>, v: &Value, out: &mut Vec<(Vec<String>, String)>) {
    match v {
        Value::Object(_) if path.as_slice() == ["spec", "shortcut"] => {
            out.push((path.clone(), shortcut_label(v).replace(", ", ",")));
        }
        Value::Object(obj) => {
            for (k, child) in obj {
                if k == "kind" {
                    // named after the object: `decay=step`
                    out.push((path.clone(), text(child)));
                } else {
                    path.push(k.clone());
                    flatten(path, child, out);
                    path.pop();
                }
            }
        }
        _ => out.push((path.clone(), text(v))),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// The paths whose value differs between some two configs (missing counts
/// as a value), in first-seen order.
fn differing_paths(configs: &[Vec<(Vec<String>, String)>]) -> Vec<Vec<String>> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    for c in configs {
        for (p, _) in c {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
        }
    }
    let value = |c: &Vec<(Vec<String>, String)>, p: &Vec<String>| {
        c.iter().find(|(q, _)| q == p).map(|(_, v)| v.clone())
    };
    paths
        .into_iter()
        .filter(|p| {
            let first = value(&configs[0], p);
            configs[1..].iter().any(|c| value(c, p) != first)
        })
        .collect()
}

/// Each path's shortest tail that no other path ends with.
fn short_names(paths: &[Vec<String>]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            (1..=p.len())
                .map(|n| &p[p.len() - n..])
                .find(|tail| paths.iter().filter(|q| *q != p).all(|q| !q.ends_with(tail)))
                .unwrap_or(p)
                .join(".")
        })
        .collect()
}

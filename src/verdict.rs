//! A verdict on a run's gradient flow, from its probes: does the gradient
//! vanish, explode, die (exact zeros) or stay healthy on its way from the
//! top of the net (`dL/dx_U`) to the bottom (`dL/dx_0`), from which unit,
//! and which term of the units' backward (shortcut or branch) carries it.
//!
//! One probe (all units at one iteration) is judged by its ratio
//! `r = ||dL/dx_0|| / ||dL/dx_U||`:
//!
//! ```text
//! dead        ||dL/dx_0|| = 0: from the highest unit whose gradient is exactly 0
//!             (zeros propagate down: dL/dx_l is linear in dL/dx_{l+1})
//! exploding   a non-finite norm (from the highest such unit), or r > 1e2
//!             (from the highest unit l with ||dL/dx_l|| > 1e2 ||dL/dx_U||)
//! vanishing   r < 1e-2 (from the highest unit l with ||dL/dx_l|| < 1e-2 ||dL/dx_U||)
//! healthy     otherwise
//! ```
//!
//! The carrier is the term that is the larger one in at least two thirds
//! of the units (`shortcut_norm >= branch_norm` counts for the shortcut),
//! else both share it. A run's verdict is that of its *last* probe (a run
//! that starts exploding and ends at 2e-3 is vanishing, not exploding), with
//! the first probe (initialisation) reported beside it; a run that diverged
//! is "diverged" whatever its probes say.
//!
//! [`write_run_files`] writes `summary.json` (the verdict, both probes'
//! judgements, the final test accuracy) into a run directory, and
//! `diverged.json` (`{"iter", "message"}`) when the run diverged: the
//! marker that `resgrad report` shows.

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::probe::FlowRow;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Below this `||dL/dx_l|| / ||dL/dx_U||` the gradient has vanished.
pub const VANISHING_BELOW: f64 = 1e-2;
/// Above this `||dL/dx_l|| / ||dL/dx_U||` the gradient has exploded.
pub const EXPLODING_ABOVE: f64 = 1e2;
/// The run's summary (verdict, ratios, final test accuracy).
pub const SUMMARY_JSON: &str = "summary.json";
/// The marker a diverged run leaves in its directory.
pub const DIVERGED_JSON: &str = "diverged.json";

/// The state of the gradient in one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    Vanishing,
    Exploding,
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Vanishing => "vanishing",
            State::Exploding => "exploding",
            State::Dead => "dead",
        }
    }
}

/// Which term of the units' backward carries the gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Carrier {
    /// the shortcut term is the larger one in at least 2/3 of the units
    Shortcut,
    /// the branch term is the larger one in at least 2/3 of the units
    Branch,
    /// neither dominates
    Both,
    /// nothing to compare: no unit with both terms finite, or a dead net
    Unknown,
}

/// The judgement of one probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeVerdict {
    pub iter: u64,
    pub state: State,
    /// `||dL/dx_0||`
    pub bottom: f64,
    /// `||dL/dx_U||`
    pub top: f64,
    /// U, the index of the top row
    pub top_unit: usize,
    /// `bottom / top` (`None` where it is not a finite number)
    pub ratio: Option<f64>,
    /// some unit's norm is NaN or infinite
    pub non_finite: bool,
    /// the unit from which the state holds downwards (`None` when healthy)
    pub from_unit: Option<usize>,
    pub carrier: Carrier,
    /// units where the shortcut term is at least the branch term
    pub shortcut_units: usize,
    /// units with both terms finite (the carrier's denominator)
    pub split_units: usize,
}

/// A diverged run: where it stopped and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diverged {
    pub iter: u64,
    pub message: String,
}

/// The verdict on a run: its last probe's state, or `diverged`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunVerdict {
    /// healthy | vanishing | exploding | dead | diverged | unprobed
    pub verdict: String,
    /// the first probe (initialisation)
    pub init: Option<ProbeVerdict>,
    /// the last probe
    pub end: Option<ProbeVerdict>,
    pub diverged: Option<Diverged>,
}

/// Judge one probe: rows of one iteration, sorted by unit, the last one the
/// top (`unit = U`). `None` for fewer than two rows.
pub fn judge(rows: &[FlowRow]) -> Option<ProbeVerdict> {
    if rows.len() < 2 {
        return None;
    }
    let g: Vec<f64> = rows.iter().map(|r| r.grad_norm).collect();
    let (bottom, top) = (g[0], g[g.len() - 1]);
    let highest =
        |f: &dyn Fn(f64) -> bool| rows.iter().rev().find(|r| f(r.grad_norm)).map(|r| r.unit);
    let non_finite = g.iter().any(|v| !v.is_finite());
    let (state, from_unit) = if let Some(u) = highest(&|v| !v.is_finite()) {
        (State::Exploding, Some(u))
    } else if bottom == 0.0 || top == 0.0 {
        (State::Dead, highest(&|v| v == 0.0))
    } else if bottom / top < VANISHING_BELOW {
        (State::Vanishing, highest(&|v| v / top < VANISHING_BELOW))
    } else if bottom / top > EXPLODING_ABOVE {
        (State::Exploding, highest(&|v| v / top > EXPLODING_ABOVE))
    } else {
        (State::Healthy, None)
    };
    let (mut shortcut_units, mut split_units) = (0, 0);
    for r in rows {
        if let (Some(s), Some(b)) = (r.shortcut_norm, r.branch_norm) {
            if s.is_finite() && b.is_finite() {
                split_units += 1;
                shortcut_units += usize::from(s >= b);
            }
        }
    }
    let branch_units = split_units - shortcut_units;
    let carrier = if state == State::Dead || split_units == 0 {
        Carrier::Unknown
    } else if 3 * shortcut_units >= 2 * split_units {
        Carrier::Shortcut
    } else if 3 * branch_units >= 2 * split_units {
        Carrier::Branch
    } else {
        Carrier::Both
    };
    let ratio = Some(bottom / top).filter(|r| r.is_finite());
    Some(ProbeVerdict {
        iter: rows[0].iter,
        state,
        bottom,
        top,
        top_unit: rows[rows.len() - 1].unit,
        ratio,
        non_finite,
        from_unit,
        carrier,
        shortcut_units,
        split_units,
    })
}

impl ProbeVerdict {
    /// `vanishing from unit 23, shortcut term`
    pub fn short(&self) -> String {
        let mut s = self.state.name().to_string();
        if let Some(u) = self.from_unit {
            let _ = write!(s, " from unit {u}");
        }
        match self.carrier {
            Carrier::Shortcut => s.push_str(", shortcut term"),
            Carrier::Branch => s.push_str(", branch term"),
            Carrier::Both => s.push_str(", both terms"),
            Carrier::Unknown => {}
        }
        s
    }

    /// The state, the two ends' norms and their ratio, and the carrier.
    pub fn describe(&self) -> String {
        let mut s = self.state.name().to_string();
        match (self.state, self.from_unit) {
            (State::Dead, Some(u)) => {
                let _ = write!(s, " (exact zeros from unit {u} down)");
            }
            (State::Exploding, Some(u)) if self.non_finite => {
                let _ = write!(s, " (non-finite from unit {u} down)");
            }
            (_, Some(u)) => {
                let _ = write!(s, " from unit {u}");
            }
            (_, None) => {}
        }
        let ratio = self
            .ratio
            .map(|r| format!("{r:.3e}"))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            ": ||dL/dx_0|| = {:.3e}, ||dL/dx_{}|| = {:.3e}, ratio {ratio}",
            self.bottom, self.top_unit, self.top
        );
        let (n, k) = (self.split_units, self.shortcut_units);
        match self.carrier {
            Carrier::Shortcut => {
                let _ = write!(s, "; the shortcut term carries it ({k} of {n} units)");
            }
            Carrier::Branch => {
                let _ = write!(s, "; the branch term carries it ({} of {n} units)", n - k);
            }
            Carrier::Both => {
                let _ = write!(
                    s,
                    "; shortcut and branch terms share it (shortcut larger in {k} of {n} units)"
                );
            }
            Carrier::Unknown => {}
        }
        s
    }
}

impl RunVerdict {
    /// The verdict from the first and last probe and whether the run diverged.
    pub fn new(first: &[FlowRow], last: &[FlowRow], diverged: Option<Diverged>) -> RunVerdict {
        let (init, end) = (judge(first), judge(last));
        let verdict = match (&diverged, &end) {
            (Some(_), _) => "diverged".to_string(),
            (None, Some(e)) => e.state.name().to_string(),
            (None, None) => "unprobed".to_string(),
        };
        RunVerdict {
            verdict,
            init,
            end,
            diverged,
        }
    }

    /// For tables: `vanishing from unit 23, shortcut term`, with the state
    /// at initialisation when it differs (`healthy, shortcut term (init:
    /// exploding)`); `diverged at iteration 0`.
    pub fn short(&self) -> String {
        if let Some(d) = &self.diverged {
            return format!("diverged at iteration {}", d.iter);
        }
        let Some(end) = &self.end else {
            return self.verdict.clone();
        };
        let mut s = end.short();
        if let Some(init) = &self.init {
            if init.iter != end.iter && init.state != end.state {
                let _ = write!(s, " (init: {})", init.state.name());
            }
        }
        s
    }

    /// The whole verdict in a few lines: divergence, the last probe and the
    /// first.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.diverged {
            let _ = writeln!(s, "diverged at iteration {}: {}", d.iter, d.message);
        }
        match (&self.init, &self.end) {
            (_, None) => {
                let _ = writeln!(s, "no gradient-flow probe (flow_every = 0)");
            }
            (Some(i), Some(e)) if i.iter != e.iter => {
                let _ = writeln!(s, "at iteration {}: {}", e.iter, e.describe());
                let _ = writeln!(s, "at iteration {} (init): {}", i.iter, i.describe());
            }
            (_, Some(e)) => {
                let _ = writeln!(s, "at iteration {}: {}", e.iter, e.describe());
            }
        }
        s
    }
}

/// `summary.json`: the verdict and the numbers behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary<'a> {
    pub verdict: &'a str,
    /// the verdict in one line (as the tables show it)
    pub short: String,
    pub ratio_init: Option<f64>,
    pub ratio_end: Option<f64>,
    /// the final test accuracy (`None` for a diverged run)
    pub test_acc: Option<f64>,
    pub init: &'a Option<ProbeVerdict>,
    pub end: &'a Option<ProbeVerdict>,
    pub diverged: &'a Option<Diverged>,
}

/// Judge the run in `dir` from its `flow.csv` (the first and the last
/// probe) and write `summary.json`; write `diverged.json` when `diverged`,
/// else remove a stale one.
pub fn write_run_files(
    dir: &Path,
    test_acc: Option<f64>,
    diverged: Option<Diverged>,
) -> Result<RunVerdict> {
    let flow_path = dir.join(crate::train::metrics::FLOW_CSV);
    let probes = match std::fs::read_to_string(&flow_path) {
        Ok(text) => crate::report::parse_flow(&flow_path, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(Error::io(&flow_path, e)),
    };
    let rows =
        |p: Option<&crate::report::FlowProbe>| p.map(|p| p.units.clone()).unwrap_or_default();
    let v = RunVerdict::new(&rows(probes.first()), &rows(probes.last()), diverged);
    let marker = dir.join(DIVERGED_JSON);
    match &v.diverged {
        Some(d) => write_atomic(&marker, &to_json(d)?)?,
        None if marker.exists() => {
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?
        }
        None => {}
    }
    let summary = Summary {
        verdict: &v.verdict,
        short: v.short(),
        ratio_init: v.init.as_ref().and_then(|p| p.ratio),
        ratio_end: v.end.as_ref().and_then(|p| p.ratio),
        test_acc: if v.diverged.is_some() { None } else { test_acc },
        init: &v.init,
        end: &v.end,
        diverged: &v.diverged,
    };
    write_atomic(&dir.join(SUMMARY_JSON), &to_json(&summary)?)?;
    Ok(v)
}

/// The marker of a diverged run, if `dir` has one.
pub fn read_diverged(dir: &Path) -> Result<Option<Diverged>> {
    let p = dir.join(DIVERGED_JSON);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&p, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Format {
            path: p,
            msg: format!("not a divergence marker {{\"iter\", \"message\"}}: {e}"),
        })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Config(e.to_string()))?;
    s.push('\n');
    Ok(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with norms `g` (bottom first) and per-unit (shortcut, branch).
    fn rows(g: &[f64], split: impl Fn(usize) -> (f64, f64)) -> Vec<FlowRow> {
        let u = g.len() - 1;
        g.iter()
            .enumerate()
            .map(|(l, &n)| FlowRow {
                iter: 5,
                unit: l,
                grad_norm: n,
                shortcut_norm: (l < u).then(|| split(l).0),
                branch_norm: (l < u).then(|| split(l).1),
                cosine: (l < u).then_some(0.0),
                direct_factor: None,
            })
            .collect()
    }

    #[test]
    fn vanishing_from_the_crossing_unit_carried_by_the_shortcut() {
        // 0.5^(10 - l): below 1e-2 from unit 3 (0.5^7 = 7.8e-3) down
        let g: Vec<f64> = (0..=10).map(|l| 0.5f64.powi(10 - l)).collect();
        let p = judge(&rows(&g, |l| (g[l], 0.05 * g[l]))).unwrap();
        assert_eq!(p.state, State::Vanishing);
        assert_eq!(p.from_unit, Some(3));
        assert_eq!(p.carrier, Carrier::Shortcut);
        assert_eq!((p.shortcut_units, p.split_units), (10, 10));
        assert_eq!(p.top_unit, 10);
        assert!((p.ratio.unwrap() - 0.5f64.powi(10)).abs() < 1e-18);
        assert_eq!(p.short(), "vanishing from unit 3, shortcut term");
    }

    #[test]
    fn exploding_carried_by_the_branch_and_non_finite() {
        let g: Vec<f64> = (0..=10).map(|l| 2f64.powi(10 - l)).collect();
        let p = judge(&rows(&g, |l| (0.0, g[l]))).unwrap();
        assert_eq!(p.state, State::Exploding);
        // 2^7 = 128 > 100 at unit 3
        assert_eq!(p.from_unit, Some(3));
        assert_eq!(p.carrier, Carrier::Branch);
        let mut g2 = g.clone();
        g2[4] = f64::INFINITY;
        g2[2] = f64::NAN;
        let p = judge(&rows(&g2, |l| (g2[l], 0.0))).unwrap();
        assert_eq!((p.state, p.from_unit), (State::Exploding, Some(4)));
        assert!(p.non_finite);
        assert!(p.describe().contains("non-finite from unit 4"));
    }

    #[test]
    fn all_zeros_is_dead_not_exploding() {
        let p = judge(&rows(&[0.0; 6], |_| (0.0, 0.0))).unwrap();
        assert_eq!(
            (p.state, p.from_unit, p.ratio),
            (State::Dead, Some(5), None)
        );
        assert_eq!(p.carrier, Carrier::Unknown);
        // zeros from unit 2 down under a live top
        let g = [0.0, 0.0, 0.0, 1e-3, 0.5, 1.0];
        let p = judge(&rows(&g, |l| (g[l], 0.0))).unwrap();
        assert_eq!((p.state, p.from_unit), (State::Dead, Some(2)));
        assert_eq!(p.short(), "dead from unit 2");
    }

    #[test]
    fn healthy_and_shared() {
        let g = [0.9, 1.1, 1.0, 1.2, 1.0];
        let p = judge(&rows(
            &g,
            |l| if l % 2 == 0 { (1.0, 0.5) } else { (0.5, 1.0) },
        ))
        .unwrap();
        assert_eq!((p.state, p.from_unit), (State::Healthy, None));
        assert_eq!(p.carrier, Carrier::Both);
        assert_eq!((p.shortcut_units, p.split_units), (2, 4));
        assert!(judge(&rows(&[1.0], |_| (1.0, 0.0))).is_none());
    }

    #[test]
    fn the_run_is_judged_at_its_end_and_says_what_it_was_at_init() {
        // exploding at init (ratio 1.2e4), 2e-3 at the end: vanishing
        let init: Vec<FlowRow> = rows(&[1.2e4, 1.0], |_| (0.1, 1.0));
        let mut end = rows(&[2e-3, 1.0], |_| (0.1, 1.0));
        for r in &mut end {
            r.iter = 200;
        }
        let v = RunVerdict::new(&init, &end, None);
        assert_eq!(v.verdict, "vanishing");
        assert_eq!(
            v.short(),
            "vanishing from unit 0, branch term (init: exploding)"
        );
        let d = v.describe();
        assert!(d.contains("at iteration 200: vanishing"), "{d}");
        assert!(d.contains("at iteration 5 (init): exploding"), "{d}");
        let v = RunVerdict::new(
            &init,
            &init,
            Some(Diverged {
                iter: 3,
                message: "the loss is NaN".into(),
            }),
        );
        assert_eq!(v.verdict, "diverged");
        assert_eq!(v.short(), "diverged at iteration 3");
        assert!(v
            .describe()
            .starts_with("diverged at iteration 3: the loss is NaN\n"));
        assert_eq!(RunVerdict::new(&[], &[], None).verdict, "unprobed");
    }
}

//! The results table: one row per grid cell (every grid key but `seed`),
//! the median final test error over its seeds and the spread as min–max
//! (with the 1–5 seeds of a sweep an IQR says little more than the range).
//! A run that diverged (or, with `fail_above`, ended above that error)
//! counts as "fail", as in the paper's Table 1: a cell whose runs all
//! failed reads "fail"; otherwise its median is over the runs that did not
//! fail, and the fail count is shown beside it.

use std::fmt::Write as _;

/// How one run of a cell ended, for the table.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// finished: final test error (%)
    Error(f64),
    /// diverged, or finished above `fail_above`
    Fail,
    /// not finished: pending, or stopped by an error other than divergence
    Missing,
}

/// One run as the table sees it.
#[derive(Clone, Debug)]
pub struct RunCell {
    pub cell: Vec<(String, String)>,
    pub seed: u64,
    pub outcome: Outcome,
}

/// One row of the results table.
#[derive(Clone, Debug, PartialEq)]
pub struct CellRow {
    /// (grid key, value) for every grid key but `seed`
    pub cell: Vec<(String, String)>,
    /// (seed, outcome), in seed order of the grid
    pub runs: Vec<(u64, Outcome)>,
    /// median / min / max final test error (%) of the runs that finished
    /// without failing
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl CellRow {
    pub fn ok(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Error(_)))
    }
    pub fn fail(&self) -> usize {
        self.count(|o| *o == Outcome::Fail)
    }
    pub fn missing(&self) -> usize {
        self.count(|o| *o == Outcome::Missing)
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.runs.iter().filter(|(_, o)| f(o)).count()
    }

    /// The headline: the median, "fail" when every finished run failed,
    /// "–" when nothing finished yet.
    pub fn headline(&self) -> String {
        match self.median {
            Some(m) => format!("{m:.2}"),
            None if self.fail() > 0 => "fail".into(),
            None => "–".into(),
        }
    }
}

/// Median of a non-empty list.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Group runs by cell (in order of first appearance) and summarise.
pub fn aggregate(runs: &[RunCell]) -> Vec<CellRow> {
    let mut rows: Vec<CellRow> = Vec::new();
    for r in runs {
        let i = match rows.iter().position(|c| c.cell == r.cell) {
            Some(i) => i,
            None => {
                rows.push(CellRow {
                    cell: r.cell.clone(),
                    runs: vec![],
                    median: None,
                    min: None,
                    max: None,
                });
                rows.len() - 1
            }
        };
        rows[i].runs.push((r.seed, r.outcome.clone()));
    }
    for row in &mut rows {
        let errs: Vec<f64> = row
            .runs
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Error(e) => Some(*e),
                _ => None,
            })
            .collect();
        row.median = median(&errs);
        row.min = errs.iter().copied().reduce(f64::min);
        row.max = errs.iter().copied().reduce(f64::max);
    }
    rows
}

fn outcome_str(o: &Outcome) -> String {
    match o {
        Outcome::Error(e) => format!("{e:.2}"),
        Outcome::Fail => "fail".into(),
        Outcome::Missing => "–".into(),
    }
}

fn range_str(r: &CellRow) -> String {
    match (r.min, r.max) {
        (Some(a), Some(b)) => format!("{a:.2}–{b:.2}"),
        _ => "–".into(),
    }
}

/// The table as Markdown, with a heading and a legend.
pub fn format_markdown(name: &str, rows: &[CellRow], fail_above: Option<f64>) -> String {
    let keys: Vec<&str> = rows
        .first()
        .map(|r| r.cell.iter().map(|(k, _)| k.as_str()).collect())
        .unwrap_or_default();
    let any_missing = rows.iter().any(|r| r.missing() > 0);
    let mut t = String::new();
    let _ = writeln!(t, "## {name}: final test error (%)\n");
    let mut head: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    head.extend(
        ["runs", "median", "min–max", "fail", "per seed"]
            .iter()
            .map(|s| s.to_string()),
    );
    if any_missing {
        head.insert(head.len() - 1, "unfinished".into());
    }
    let _ = writeln!(t, "| {} |", head.join(" | "));
    let _ = writeln!(t, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let mut cols: Vec<String> = r.cell.iter().map(|(_, v)| v.clone()).collect();
        cols.push(r.runs.len().to_string());
        cols.push(r.headline());
        cols.push(range_str(r));
        cols.push(format!("{}/{}", r.fail(), r.runs.len()));
        if any_missing {
            cols.push(r.missing().to_string());
        }
        cols.push(
            r.runs
                .iter()
                .map(|(s, o)| format!("{s}: {}", outcome_str(o)))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let _ = writeln!(t, "| {} |", cols.join(" | ").replace('\n', " "));
    }
    let _ = writeln!(
        t,
        "\nmedian and min–max over the seeds that finished without failing; \
         \"fail\": the run diverged (training stopped, exit 3){}. \
         A cell reads \"fail\" when all its runs failed.",
        fail_above
            .map(|f| format!(" or ended above {f}% test error"))
            .unwrap_or_default()
    );
    if any_missing {
        let _ = writeln!(
            t,
            "\"unfinished\": runs not yet done or stopped by an error (see their failed.json); rerun the sweep to finish them."
        );
    }
    t
}

/// Quote a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_default()
}

/// The table as CSV: the grid keys, then
/// `runs,ok,fail,unfinished,median_test_error_pct,min_test_error_pct,max_test_error_pct,per_seed`
/// (`per_seed`: `seed:error` pairs, `fail` or empty, separated by `;`).
pub fn format_csv(rows: &[CellRow]) -> String {
    let keys: Vec<String> = rows
        .first()
        .map(|r| r.cell.iter().map(|(k, _)| csv_field(k)).collect())
        .unwrap_or_default();
    let mut t = String::new();
    let mut head = keys;
    head.push("runs,ok,fail,unfinished,median_test_error_pct,min_test_error_pct,max_test_error_pct,per_seed".into());
    let _ = writeln!(t, "{}", head.join(","));
    for r in rows {
        let mut cols: Vec<String> = r.cell.iter().map(|(_, v)| csv_field(v)).collect();
        cols.push(r.runs.len().to_string());
        cols.push(r.ok().to_string());
        cols.push(r.fail().to_string());
        cols.push(r.missing().to_string());
        cols.push(opt(r.median));
        cols.push(opt(r.min));
        cols.push(opt(r.max));
        cols.push(
            r.runs
                .iter()
                .map(|(s, o)| match o {
                    Outcome::Error(e) => format!("{s}:{e:.4}"),
                    Outcome::Fail => format!("{s}:fail"),
                    Outcome::Missing => format!("{s}:"),
                })
                .collect::<Vec<_>>()
                .join(";"),
        );
        let _ = writeln!(t, "{}", cols.join(","));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cell: &str, seed: u64, o: Outcome) -> RunCell {
        RunCell {
            cell: vec![("shortcut".into(), cell.into())],
            seed,
            outcome: o,
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn cells_all_fail_some_fail_and_unfinished() {
        use Outcome::*;
        let rows = aggregate(&[
            run("identity", 0, Error(7.0)),
            run("identity", 1, Error(6.0)),
            run("identity", 2, Error(9.0)),
            run("scale 0.5", 0, Fail),
            run("scale 0.5", 1, Fail),
            run("gate", 0, Fail),
            run("gate", 1, Error(8.5)),
            run("gate", 2, Missing),
        ]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].headline(), "7.00");
        assert_eq!((rows[0].min, rows[0].max), (Some(6.0), Some(9.0)));
        assert_eq!(rows[1].headline(), "fail");
        assert_eq!((rows[1].fail(), rows[1].median), (2, None));
        assert_eq!(rows[2].headline(), "8.50");
        assert_eq!((rows[2].ok(), rows[2].fail(), rows[2].missing()), (1, 1, 1));
        let md = format_markdown("t", &rows, Some(20.0));
        assert!(
            md.contains("| shortcut | runs | median | min–max | fail | unfinished | per seed |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| identity | 3 | 7.00 | 6.00–9.00 | 0/3 | 0 | 0: 7.00, 1: 6.00, 2: 9.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| scale 0.5 | 2 | fail | – | 2/2 | 0 | 0: fail, 1: fail |"),
            "{md}"
        );
        assert!(
            md.contains("| gate | 3 | 8.50 | 8.50–8.50 | 1/3 | 1 | 0: fail, 1: 8.50, 2: – |"),
            "{md}"
        );
        assert!(md.contains("above 20% test error"), "{md}");
        let csv = format_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "shortcut,runs,ok,fail,unfinished,median_test_error_pct,min_test_error_pct,max_test_error_pct,per_seed");
        assert_eq!(
            lines[1],
            "identity,3,3,0,0,7.0000,6.0000,9.0000,0:7.0000;1:6.0000;2:9.0000"
        );
        assert_eq!(lines[2], "scale 0.5,2,0,2,0,,,,0:fail;1:fail");
        assert_eq!(
            lines[3],
            "gate,3,1,1,1,8.5000,8.5000,8.5000,0:fail;1:8.5000;2:"
        );
    }

    #[test]
    fn csv_quotes_commas() {
        assert_eq!(csv_field("20, basic"), "\"20, basic\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}

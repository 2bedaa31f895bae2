//! The gradient-flow probe: per unit, ||dL/dx_l|| split at the addition into
//! its shortcut term and its branch term, their cosine, and the direct-path
//! factor prod(lambda) from unit l to the top.
//!
//! The split is recorded by each unit's hand-written backward (see
//! `model::unit`), so it costs no second backward pass.

use crate::error::Result;
use crate::io::write_atomic;
use crate::model::Net;
use crate::scalar::Scalar;
use crate::tensor::norm;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The CSV header of `flow.csv`.
pub const FLOW_CSV_HEADER: &str =
    "iter,unit,grad_norm,shortcut_norm,branch_norm,cosine,direct_factor";

/// One row: unit `unit`'s input gradient at iteration `iter`. Row `unit = U`
/// is the last unit's output, which has no split (its fields are `None`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRow {
    pub iter: u64,
    pub unit: usize,
    pub grad_norm: f64,
    pub shortcut_norm: Option<f64>,
    pub branch_norm: Option<f64>,
    pub cosine: Option<f64>,
    pub direct_factor: Option<f64>,
}

/// Rows for the last `backward(.., probe = true)` of `net`.
pub fn flow_rows<T: Scalar>(net: &Net<T>, iter: u64) -> Vec<FlowRow> {
    let nu = net.num_units();
    let factors = net.direct_factors();
    let mut rows: Vec<FlowRow> = net
        .flow
        .iter()
        .enumerate()
        .map(|(l, f)| FlowRow {
            iter,
            unit: l,
            grad_norm: f.grad_norm,
            shortcut_norm: Some(f.shortcut_norm),
            branch_norm: Some(f.branch_norm),
            cosine: Some(f.cosine),
            direct_factor: factors[l],
        })
        .collect();
    rows.push(FlowRow {
        iter,
        unit: nu,
        grad_norm: norm(net.dx(nu)),
        shortcut_norm: None,
        branch_norm: None,
        cosine: None,
        direct_factor: Some(1.0),
    });
    rows
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:e}")).unwrap_or_default()
}

/// Rows as CSV lines (no header).
pub fn rows_to_csv(rows: &[FlowRow]) -> String {
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{:e},{},{},{},{}",
            r.iter,
            r.unit,
            r.grad_norm,
            opt(r.shortcut_norm),
            opt(r.branch_norm),
            opt(r.cosine),
            opt(r.direct_factor)
        );
    }
    s
}

/// Write rows (with the header) to `path` atomically.
pub fn write_flow_csv(path: &Path, rows: &[FlowRow]) -> Result<()> {
    let mut s = String::from(FLOW_CSV_HEADER);
    s.push('\n');
    s.push_str(&rows_to_csv(rows));
    write_atomic(path, s.as_bytes())
}

//! The probe's measurements of a gradient that is the sum of two terms:
//! `d = a + b` (a unit's `dL/dx` = shortcut term + branch term) written in
//! one pass, with `||d||`, `||a||`, `||b||` and the cosine between `a` and
//! `b`. The norms are accumulated in f64 (`||d||` from `a + b` summed in
//! f64, not from the rounded `d`). These are measurements, not part of the
//! differentiated function: nothing here has a gradient.

use crate::error::{check_len, Result};
use crate::scalar::Scalar;
use crate::tensor::{dot, norm};

/// The norms of a two-term sum, and the terms' cosine (0 where either
/// term is zero).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TermNorms {
    pub total: f64,
    pub first: f64,
    pub second: f64,
    pub cosine: f64,
}

/// `d = a + b` (overwritten) and its [`TermNorms`].
pub fn add_terms<T: Scalar>(d: &mut [T], a: &[T], b: &[T]) -> Result<TermNorms> {
    check_len("add_terms", "first term", a, &[d.len()])?;
    check_len("add_terms", "second term", b, &[d.len()])?;
    for ((d, &x), &y) in d.iter_mut().zip(a).zip(b) {
        *d = x + y;
    }
    let (first, second) = (norm(a), norm(b));
    let total = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = x.f64() + y.f64();
            t * t
        })
        .sum::<f64>()
        .sqrt();
    let cosine = if first > 0.0 && second > 0.0 {
        dot(a, b) / (first * second)
    } else {
        0.0
    };
    Ok(TermNorms {
        total,
        first,
        second,
        cosine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_case() {
        // a = (3, 0), b = (0, 4): d = (3, 4), ||d|| = 5, orthogonal
        let mut d = [0.0f64; 2];
        let t = add_terms(&mut d, &[3.0, 0.0], &[0.0, 4.0]).unwrap();
        assert_eq!(d, [3.0, 4.0]);
        assert_eq!((t.total, t.first, t.second, t.cosine), (5.0, 3.0, 4.0, 0.0));
        // b = -a: d = 0, cosine -1; a zero term: cosine 0
        let t = add_terms(&mut d, &[1.0, 2.0], &[-1.0, -2.0]).unwrap();
        assert_eq!((d, t.total), ([0.0, 0.0], 0.0));
        assert!((t.cosine + 1.0).abs() < 1e-15);
        let t = add_terms(&mut d, &[1.0, 2.0], &[0.0, 0.0]).unwrap();
        assert_eq!(
            (t.cosine, t.total, t.first),
            (0.0, 5f64.sqrt(), 5f64.sqrt())
        );
        assert!(add_terms(&mut d, &[1.0], &[0.0, 0.0]).is_err());
    }
}

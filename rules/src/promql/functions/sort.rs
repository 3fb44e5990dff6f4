//! Functions that order an instant vector: `sort` and `sort_desc` by value, `sort_by_label` and
//! `sort_by_label_desc` by label values in natural order (numbers in them compared as numbers).

use promql_parser::parser::Call;

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Value};

/// `sort(v)` and `sort_desc(v)` (which of them is `c`'s name), by value.
pub(super) fn sort(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let mut v = ev.vector(arg(c, 0)?, t, name)?;
    v.sort_by(|a, b| {
        let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
        if name == "sort" { o } else { o.reverse() }
    });
    Ok(Value::Vector(v))
}

/// Splits `s` into runs of digits and runs of other characters.
fn chunks(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut digit = None;
    for (i, c) in s.char_indices() {
        let d = c.is_ascii_digit();
        if digit.is_some_and(|p| p != d) {
            out.push(&s[start..i]);
            start = i;
        }
        digit = Some(d);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Whether `a` sorts before `b` in natural order, as the natsort package Prometheus uses
/// decides it (runs of digits compare as numbers).
pub(super) fn natural_less(a: &str, b: &str) -> bool {
    let (ca, cb) = (chunks(a), chunks(b));
    for (i, x) in ca.iter().enumerate() {
        let Some(y) = cb.get(i) else { return false };
        let last_a = i == ca.len() - 1;
        let last_b = i == cb.len() - 1;
        match (x.parse::<i64>(), y.parse::<i64>()) {
            (Ok(p), Ok(q)) if p != q => return p < q,
            (Ok(_), Ok(_)) => {}
            _ if x != y => return x < y,
            _ => {}
        }
        if last_a {
            return true;
        }
        if last_b {
            return false;
        }
    }
    false
}

/// `sort_by_label(v, label...)` and `sort_by_label_desc` (which of them is `c`'s name): by the
/// given labels' values in natural order, then by the whole label set.
pub(super) fn sort_by_label(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let mut v = ev.vector(arg(c, 0)?, t, name)?;
    let mut labels = Vec::new();
    for a in c.args.args.iter().skip(1) {
        match ev.eval(a, t)? {
            Value::String(s) => labels.push(s),
            _ => return crate::promql::invalid(format!("{name}() takes label names as strings")),
        }
    }
    let desc = name == "sort_by_label_desc";
    v.sort_by(|a, b| {
        use std::cmp::Ordering;
        for l in &labels {
            let (x, y) = (a.labels.get(l).unwrap_or_default(), b.labels.get(l).unwrap_or_default());
            if x == y {
                continue;
            }
            let o = if natural_less(x, y) { Ordering::Less } else { Ordering::Greater };
            return if desc { o.reverse() } else { o };
        }
        let o = a.labels.cmp(&b.labels);
        if desc { o.reverse() } else { o }
    });
    Ok(Value::Vector(v))
}

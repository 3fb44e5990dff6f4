//! `absent(v)` and `absent_over_time(v[d])`: one sample (with the labels the selector's
//! equality matchers name) when the argument has none, else nothing.

use std::collections::HashSet;

use promql_parser::parser::{Call, Expr};

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Labels, NAME, Sample, Value};

/// `absent(v)`.
pub(super) fn absent(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let v = ev.vector(arg(c, 0)?, t, c.func.name)?;
    if !v.is_empty() {
        return Ok(Value::Vector(Vec::new()));
    }
    Ok(Value::Vector(vec![Sample { labels: absent_labels(arg(c, 0)?), t, v: 1.0 }]))
}

/// `absent_over_time(v[d])`.
pub(super) fn absent_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let m = ev.matrix(arg(c, 0)?, t, c.func.name)?;
    if !m.is_empty() {
        return Ok(Value::Vector(Vec::new()));
    }
    Ok(Value::Vector(vec![Sample { labels: absent_labels(arg(c, 0)?), t, v: 1.0 }]))
}

/// The labels `absent()` returns: those of the selector's equality matchers.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    // As Prometheus: the first equality matcher of a label sets it; any other matcher of the
    // same label (a second equality, or a regex) removes it.
    let mut out = Labels::new();
    let mut has: HashSet<String> = HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == NAME {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !has.contains(&m.name) {
            out.insert(m.name.clone(), m.value.clone());
            has.insert(m.name.clone());
        } else {
            out.remove(&m.name);
        }
    }
    out
}

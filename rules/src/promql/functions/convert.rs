//! Conversions between scalars and instant vectors: `vector(s)` and `scalar(v)`.

use promql_parser::parser::Call;

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Labels, Sample, Value};

/// `vector(s)`: one sample without labels.
pub(super) fn vector(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    Ok(Value::Vector(vec![Sample { labels: Labels::new(), t, v: ev.scalar(arg(c, 0)?, t, c.func.name)? }]))
}

/// `scalar(v)`: the value of a one-sample vector, NaN for any other.
pub(super) fn scalar(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let v = ev.vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
}

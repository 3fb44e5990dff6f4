//! Functions of time: `time()` (the evaluation time) and `timestamp(v)` (when each sample was
//! taken), in seconds.

use promql_parser::parser::Call;

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Sample, Value, drop_name};

/// `time()`: the evaluation time `t` (ms) in seconds.
pub(super) fn time(t: i64) -> Result<Value, EvalError> {
    Ok(Value::Scalar(t as f64 / 1000.0))
}

/// `timestamp(v)`: each sample's time in seconds, without the metric name.
pub(super) fn timestamp(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let v = ev.vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Value::Vector(
        v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t, v: s.t as f64 / 1000.0 }).collect(),
    ))
}

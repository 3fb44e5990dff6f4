//! Functions that map each sample of an instant vector through a function of numbers, dropping
//! the metric name: abs, ceil, floor, sqrt, exp, ln, log2, log10 (the dispatch passes Rust's
//! own), sgn, round and the clamps.

use promql_parser::parser::Call;

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Sample, Value, drop_name};

/// `f` of every sample of the instant-vector argument (the first), without the metric name.
pub(super) fn map_vec(ev: &Evaluator<'_>, c: &Call, t: i64, f: &dyn Fn(f64) -> f64) -> Result<Value, EvalError> {
    let v = ev.vector(arg(c, 0)?, t, c.func.name)?;
    Ok(Value::Vector(v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t, v: f(s.v) }).collect()))
}

/// The sign of `x` (`sgn`): 1, -1, or `x` itself for zeros and NaN.
pub(super) fn sgn(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// `round(v, to_nearest=1)`.
pub(super) fn round(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let to = match c.args.args.get(1) {
        Some(e) => ev.scalar(e, t, c.func.name)?,
        None => 1.0,
    };
    // Prometheus rounds half up, through the inverse (fewer rounding errors than dividing).
    let inv = 1.0 / to;
    map_vec(ev, c, t, &move |x: f64| (x * inv + 0.5).floor() / inv)
}

/// `clamp(v, min, max)`: nothing when min > max.
pub(super) fn clamp(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let (lo, hi) = (ev.scalar(arg(c, 1)?, t, name)?, ev.scalar(arg(c, 2)?, t, name)?);
    if lo > hi {
        return Ok(Value::Vector(Vec::new()));
    }
    map_vec(ev, c, t, &move |x: f64| x.max(lo).min(hi))
}

/// `clamp_min(v, min)`.
pub(super) fn clamp_min(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let lo = ev.scalar(arg(c, 1)?, t, c.func.name)?;
    map_vec(ev, c, t, &move |x: f64| x.max(lo))
}

/// `clamp_max(v, max)`.
pub(super) fn clamp_max(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let hi = ev.scalar(arg(c, 1)?, t, c.func.name)?;
    map_vec(ev, c, t, &move |x: f64| x.min(hi))
}

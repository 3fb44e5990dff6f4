//! Rates and differences of a range vector: `rate`, `increase` and `delta` (extrapolated to
//! the window's edges as Prometheus does), `irate` and `idelta` (from the last two samples) and
//! `deriv` (by linear regression).

use promql_parser::parser::Call;

use super::{arg, fold_windows};
use crate::promql::arith::linear_regression;
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Sample, Value, drop_name};

/// `rate`, `increase` and `delta` (which of them is `c`'s name).
pub(super) fn rate(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let (start, end) = ev.window(arg(c, 0)?, t, name)?;
    let is_counter = name != "delta";
    let is_rate = name == "rate";
    let mut out = Vec::new();
    ev.each_range(arg(c, 0)?, t, name, &mut |labels, points| {
        if let Some(v) = extrapolated_rate(points, start, end, is_counter, is_rate) {
            out.push(Sample { labels: drop_name(labels), t, v });
        }
    })?;
    Ok(Value::Vector(out))
}

/// `irate` and `idelta` (which of them is `c`'s name): from the window's last two samples.
pub(super) fn irate(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            if p.len() < 2 {
                return None;
            }
            let (t1, v1) = p[p.len() - 2];
            let (t2, v2) = p[p.len() - 1];
            let mut d = v2 - v1;
            if name == "irate" {
                if v2 < v1 {
                    d = v2;
                }
                let dt = (t2 - t1) as f64 / 1000.0;
                if dt == 0.0 {
                    return None;
                }
                return Some(d / dt);
            }
            Some(d)
        },
        false,
    )
}

/// `deriv`: the slope of the samples' least-squares line, per second.
pub(super) fn deriv(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| if p.len() < 2 { None } else { Some(linear_regression(p, p[0].0).0) }, false)
}

/// Prometheus' `extrapolatedRate` for rate, increase and delta over the window
/// `(range_start, range_end]` (ms).
fn extrapolated_rate(
    points: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let duration_to_start = (first_t - range_start) as f64 / 1000.0;
    let duration_to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_interval = sampled / (points.len() - 1) as f64;
    // A sample close enough to an edge (within 110% of the average interval) is extrapolated
    // to it, otherwise by half an interval; then a counter is not extrapolated below zero.
    let threshold = avg_interval * 1.1;
    let mut to_start = if duration_to_start >= threshold { avg_interval / 2.0 } else { duration_to_start };
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let mut extrapolate_to = sampled + to_start;
    extrapolate_to += if duration_to_end >= threshold { avg_interval / 2.0 } else { duration_to_end };
    let factor = extrapolate_to / sampled;
    let mut r = result * factor;
    if is_rate {
        r /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(r)
}

/// `predict_linear(v, t)`: each series' value `t` seconds after the evaluation time, by linear
/// regression over its window.
pub(super) fn predict_linear(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let ahead = ev.scalar(arg(c, 1)?, t, name)?;
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            if p.len() < 2 {
                return None;
            }
            let (slope, intercept) = linear_regression(p, t);
            Some(slope * ahead + intercept)
        },
        false,
    )
}

/// `double_exponential_smoothing(v, sf, tf)` (Holt's linear method, once `holt_winters`).
pub(super) fn double_exponential_smoothing(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let sf = ev.scalar(arg(c, 1)?, t, name)?;
    let tf = ev.scalar(arg(c, 2)?, t, name)?;
    if sf <= 0.0 || sf >= 1.0 || sf.is_nan() {
        return Err(EvalError::Invalid(format!("invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}")));
    }
    if tf <= 0.0 || tf >= 1.0 || tf.is_nan() {
        return Err(EvalError::Invalid(format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf}")));
    }
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            if p.len() < 2 {
                return None;
            }
            let (mut s0, mut s1) = (0.0, p[0].1);
            let mut b = p[1].1 - p[0].1;
            for (i, &(_, v)) in p.iter().enumerate().skip(1) {
                let x = sf * v;
                // The trend at the previous point.
                if i > 1 {
                    b = tf * (s1 - s0) + (1.0 - tf) * b;
                }
                let y = (1.0 - sf) * (s1 + b);
                s0 = s1;
                s1 = x + y;
            }
            Some(s1)
        },
        false,
    )
}

//! Functions that fold each series' samples in a window to one value: the `*_over_time`
//! family, `changes` and `resets`.

use promql_parser::parser::Call;

use super::{arg, fold_windows};
use crate::promql::arith::{kahan_inc, kahan_sum, mean, quantile};
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Sample, Value, drop_name};

/// `changes`: how often the value changed (NaN to NaN is no change).
pub(super) fn changes(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(
        ev,
        c,
        t,
        &|p| Some(p.windows(2).filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan())).count() as f64),
        false,
    )
}

/// `resets`: how often the value went down.
pub(super) fn resets(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64), false)
}

/// `avg_over_time`.
pub(super) fn avg_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| Some(mean(&p.iter().map(|x| x.1).collect::<Vec<_>>())), false)
}

/// `min_over_time`.
pub(super) fn min_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| p.iter().map(|x| x.1).reduce(f64::min), false)
}

/// `max_over_time`.
pub(super) fn max_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| p.iter().map(|x| x.1).reduce(f64::max), false)
}

/// `sum_over_time`.
pub(super) fn sum_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| Some(kahan_sum(&p.iter().map(|x| x.1).collect::<Vec<_>>())), false)
}

/// `count_over_time`.
pub(super) fn count_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| Some(p.len() as f64), false)
}

/// `last_over_time`: the newest sample, with the metric name kept.
pub(super) fn last_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| p.last().map(|x| x.1), true)
}

/// `present_over_time`: 1 for every series with a sample in the window.
pub(super) fn present_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|_| Some(1.0), false)
}

/// `stddev_over_time` and `stdvar_over_time` (which of them is `c`'s name).
pub(super) fn stddev_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            // Welford's running variance with compensated sums, as Prometheus.
            let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(_, v) in p {
                count += 1.0;
                let delta = v - (mean + cmean);
                (mean, cmean) = kahan_inc(delta / count, mean, cmean);
                (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
            }
            let var = (aux + caux) / count;
            Some(if name == "stddev_over_time" { var.sqrt() } else { var })
        },
        false,
    )
}

/// `quantile_over_time(q, v)`.
pub(super) fn quantile_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let q = ev.scalar(arg(c, 0)?, t, name)?;
    let m = ev.matrix(arg(c, 1)?, t, name)?;
    Ok(Value::Vector(
        m.into_iter()
            .map(|s| {
                let vals: Vec<f64> = s.points.iter().map(|x| x.1).collect();
                Sample { labels: drop_name(s.labels), t, v: quantile(q, &vals) }
            })
            .collect(),
    ))
}

/// `mad_over_time`: the median of the absolute deviations from the median.
pub(super) fn mad_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            let vals: Vec<f64> = p.iter().map(|x| x.1).collect();
            let median = quantile(0.5, &vals);
            let dev: Vec<f64> = vals.iter().map(|v| (v - median).abs()).collect();
            Some(quantile(0.5, &dev))
        },
        false,
    )
}

/// `first_over_time`: the oldest sample, with the metric name kept.
pub(super) fn first_over_time(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    fold_windows(ev, c, t, &|p| p.first().map(|x| x.1), true)
}

/// `ts_of_min_over_time`, `ts_of_max_over_time`, `ts_of_last_over_time` and
/// `ts_of_first_over_time`: when (in seconds) the window's minimum, maximum, newest or oldest
/// sample was taken (the newest of equal extremes).
pub(super) fn ts_of(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    fold_windows(
        ev,
        c,
        t,
        &|p| {
            let pick = match name {
                "ts_of_last_over_time" => p.last(),
                "ts_of_first_over_time" => p.first(),
                _ => {
                    let mut best: Option<&(i64, f64)> = None;
                    for x in p {
                        let better = match best {
                            None => true,
                            Some(b) if b.1.is_nan() => true,
                            Some(b) if name == "ts_of_max_over_time" => x.1 >= b.1,
                            Some(b) => x.1 <= b.1,
                        };
                        if better {
                            best = Some(x);
                        }
                    }
                    best
                }
            };
            pick.map(|x| x.0 as f64 / 1000.0)
        },
        false,
    )
}

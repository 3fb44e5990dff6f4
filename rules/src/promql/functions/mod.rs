//! PromQL's functions, one file per family: `call` dispatches a call by the function's name to
//! the function that evaluates it, and the helpers the families share are here. `call` is a
//! method of the [`Evaluator`], so that `eval.rs` reaches it without naming this module (the
//! families use the evaluator; it does not use them). A new function is an arm of `call`, a
//! function in its family's file and a name in [`FUNCTIONS`](super::FUNCTIONS).

use promql_parser::parser::{Call, Expr};

use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Sample, Value, drop_name, unsupported};

mod absent;
mod convert;
mod date;
mod histogram;
mod labels;
mod math;
mod over_time;
mod rate;
mod sort;
mod time;
mod trig;

/// A function of a series' samples in a window (the `*_over_time` family).
type WindowFn<'a> = dyn Fn(&[(i64, f64)]) -> Option<f64> + 'a;

impl Evaluator<'_> {
    /// Evaluates the function call `c` at `t`.
    pub(super) fn call(&self, c: &Call, t: i64) -> Result<Value, EvalError> {
        match c.func.name {
            "time" => time::time(t),
            "vector" => convert::vector(self, c, t),
            "scalar" => convert::scalar(self, c, t),
            "abs" => math::map_vec(self, c, t, &f64::abs),
            "ceil" => math::map_vec(self, c, t, &f64::ceil),
            "floor" => math::map_vec(self, c, t, &f64::floor),
            "sqrt" => math::map_vec(self, c, t, &f64::sqrt),
            "exp" => math::map_vec(self, c, t, &f64::exp),
            "ln" => math::map_vec(self, c, t, &f64::ln),
            "log2" => math::map_vec(self, c, t, &f64::log2),
            "log10" => math::map_vec(self, c, t, &f64::log10),
            "sgn" => math::map_vec(self, c, t, &math::sgn),
            "sin" => math::map_vec(self, c, t, &f64::sin),
            "cos" => math::map_vec(self, c, t, &f64::cos),
            "tan" => math::map_vec(self, c, t, &f64::tan),
            "asin" => math::map_vec(self, c, t, &f64::asin),
            "acos" => math::map_vec(self, c, t, &f64::acos),
            "atan" => math::map_vec(self, c, t, &f64::atan),
            "sinh" => math::map_vec(self, c, t, &f64::sinh),
            "cosh" => math::map_vec(self, c, t, &f64::cosh),
            "tanh" => math::map_vec(self, c, t, &f64::tanh),
            "asinh" => math::map_vec(self, c, t, &f64::asinh),
            "acosh" => math::map_vec(self, c, t, &f64::acosh),
            "atanh" => math::map_vec(self, c, t, &f64::atanh),
            "deg" => math::map_vec(self, c, t, &trig::deg),
            "rad" => math::map_vec(self, c, t, &trig::rad),
            "pi" => trig::pi(),
            "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute" | "month" | "year" => {
                date::date(self, c, t)
            }
            "predict_linear" => rate::predict_linear(self, c, t),
            "double_exponential_smoothing" => rate::double_exponential_smoothing(self, c, t),
            "mad_over_time" => over_time::mad_over_time(self, c, t),
            "ts_of_min_over_time" | "ts_of_max_over_time" | "ts_of_last_over_time" | "ts_of_first_over_time" => {
                over_time::ts_of(self, c, t)
            }
            "first_over_time" => over_time::first_over_time(self, c, t),
            "sort_by_label" | "sort_by_label_desc" => sort::sort_by_label(self, c, t),
            "round" => math::round(self, c, t),
            "clamp" => math::clamp(self, c, t),
            "clamp_min" => math::clamp_min(self, c, t),
            "clamp_max" => math::clamp_max(self, c, t),
            "timestamp" => time::timestamp(self, c, t),
            "rate" | "increase" | "delta" => rate::rate(self, c, t),
            "irate" | "idelta" => rate::irate(self, c, t),
            "deriv" => rate::deriv(self, c, t),
            "changes" => over_time::changes(self, c, t),
            "resets" => over_time::resets(self, c, t),
            "avg_over_time" => over_time::avg_over_time(self, c, t),
            "min_over_time" => over_time::min_over_time(self, c, t),
            "max_over_time" => over_time::max_over_time(self, c, t),
            "sum_over_time" => over_time::sum_over_time(self, c, t),
            "count_over_time" => over_time::count_over_time(self, c, t),
            "last_over_time" => over_time::last_over_time(self, c, t),
            "present_over_time" => over_time::present_over_time(self, c, t),
            "stddev_over_time" | "stdvar_over_time" => over_time::stddev_over_time(self, c, t),
            "quantile_over_time" => over_time::quantile_over_time(self, c, t),
            "absent" => absent::absent(self, c, t),
            "absent_over_time" => absent::absent_over_time(self, c, t),
            "label_replace" => labels::label_replace(self, c, t),
            "label_join" => labels::label_join(self, c, t),
            "histogram_quantile" => histogram::histogram_quantile(self, c, t),
            "histogram_fraction" => histogram::histogram_fraction(self, c, t),
            "sort" | "sort_desc" => sort::sort(self, c, t),
            other => unsupported(format!("the function {other}()")),
        }
    }
}

/// Argument `i` of the call `c` (from 0), or an error naming the function if it is missing.
fn arg(c: &Call, i: usize) -> Result<&Expr, EvalError> {
    let name = c.func.name;
    c.args
        .args
        .get(i)
        .map(|b| b.as_ref())
        .ok_or_else(|| EvalError::Invalid(format!("{name}() is missing argument {}", i + 1)))
}

/// `f` of each series' samples in the window of the range-vector argument (the first), for
/// every series where it has a value; the metric name is dropped unless `keep_name`.
fn fold_windows(ev: &Evaluator<'_>, c: &Call, t: i64, f: &WindowFn<'_>, keep_name: bool) -> Result<Value, EvalError> {
    let mut out = Vec::new();
    ev.each_range(arg(c, 0)?, t, c.func.name, &mut |labels, points| {
        if let Some(v) = f(points) {
            out.push(Sample { labels: if keep_name { labels } else { drop_name(labels) }, t, v });
        }
    })?;
    Ok(Value::Vector(out))
}

//! Functions of classic histograms (series of `le` buckets): `histogram_quantile` and
//! `histogram_fraction`. Buckets are grouped by all their labels but `le` (the metric name
//! included, which the result then drops: two histograms that differ only by name make a
//! result with a repeated label set, which is refused as Prometheus refuses it).

use std::collections::BTreeMap;

use promql_parser::parser::Call;

use super::arg;
use crate::promql::arith::{bucket_fraction, bucket_quantile, parse_float};
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Labels, Sample, Value, drop_name};

/// The buckets of the instant-vector argument `i` of `c`, grouped.
fn buckets(ev: &Evaluator<'_>, c: &Call, i: usize, t: i64) -> Result<BTreeMap<Labels, Vec<(f64, f64)>>, EvalError> {
    let v = ev.vector(arg(c, i)?, t, c.func.name)?;
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in v {
        let Some(le) = s.labels.get("le").and_then(parse_float) else { continue };
        let mut k = s.labels;
        k.remove("le");
        groups.entry(k).or_default().push((le, s.v));
    }
    Ok(groups)
}

/// `histogram_quantile(q, buckets)`: the q-quantile of each histogram.
pub(super) fn histogram_quantile(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let q = ev.scalar(arg(c, 0)?, t, c.func.name)?;
    let groups = buckets(ev, c, 1, t)?;
    Ok(Value::Vector(
        groups
            .into_iter()
            .map(|(labels, b)| Sample { labels: drop_name(labels), t, v: bucket_quantile(q, b) })
            .collect(),
    ))
}

/// `histogram_fraction(lower, upper, buckets)`: the fraction of each histogram's observations
/// between the bounds.
pub(super) fn histogram_fraction(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let (lower, upper) = (ev.scalar(arg(c, 0)?, t, name)?, ev.scalar(arg(c, 1)?, t, name)?);
    let groups = buckets(ev, c, 2, t)?;
    Ok(Value::Vector(
        groups
            .into_iter()
            .map(|(labels, b)| Sample { labels: drop_name(labels), t, v: bucket_fraction(lower, upper, b) })
            .collect(),
    ))
}

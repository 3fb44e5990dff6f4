//! Functions of classic histograms (series of `le` buckets): `histogram_quantile`.

use std::collections::BTreeMap;

use promql_parser::parser::Call;

use super::arg;
use crate::promql::arith::{bucket_quantile, parse_float};
use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Labels, Sample, Value, drop_name};

/// `histogram_quantile(q, buckets)`: the buckets grouped by their labels but `le` and the
/// metric name, and the q-quantile of each group.
pub(super) fn histogram_quantile(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let q = ev.scalar(arg(c, 0)?, t, name)?;
    let v = ev.vector(arg(c, 1)?, t, name)?;
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in v {
        let Some(le) = s.labels.get("le").and_then(parse_float) else { continue };
        let mut k = drop_name(s.labels);
        k.remove("le");
        groups.entry(k).or_default().push((le, s.v));
    }
    Ok(Value::Vector(groups.into_iter().map(|(labels, b)| Sample { labels, t, v: bucket_quantile(q, b) }).collect()))
}

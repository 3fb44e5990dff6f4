//! Functions that order an instant vector: `sort` and `sort_desc`.

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

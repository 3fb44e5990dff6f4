//! Queries over the history: the evaluation shared by the Prometheus HTTP API subset
//! (DESIGN §6: what Grafana's Prometheus data source and `promtool query` use) and the
//! ControlService `Query` rpc behind `fleetctl query`.

use std::collections::BTreeMap;

use fleet_rules::promql::{self, EvalError, Labels, Storage, Value};

/// Most points one range query may return per series (as Prometheus).
pub const MAX_POINTS: i64 = 11_000;

/// A query's result, independent of how it is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An instant vector at a time.
    Vector(Vec<(Labels, f64)>, i64),
    /// A range result.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
    /// A scalar at a time.
    Scalar(f64, i64),
    /// A string at a time.
    String(String, i64),
}

/// Why a query failed: a bad request or one fleet cannot evaluate (400), or a failed
/// evaluation (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// The request is wrong (parse error, bad time).
    BadData(String),
    /// Valid PromQL that fleet's engine does not evaluate (named in the message).
    Unsupported(String),
    /// The evaluation failed.
    Execution(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::BadData(s) | QueryError::Unsupported(s) | QueryError::Execution(s) => f.write_str(s),
        }
    }
}

fn eval_err(e: EvalError) -> QueryError {
    match e {
        EvalError::Unsupported(_) => QueryError::Unsupported(e.to_string()),
        EvalError::Invalid(_) => QueryError::Execution(e.to_string()),
    }
}

/// Evaluates `expr` at `t_ms`.
pub fn instant(storage: &dyn Storage, expr: &str, t_ms: i64) -> Result<Answer, QueryError> {
    let e = promql::parse(expr).map_err(|e| QueryError::BadData(format!("invalid expression: {e}")))?;
    promql::check(&e).map_err(eval_err)?;
    Ok(match promql::eval(&e, storage, t_ms).map_err(eval_err)? {
        Value::Vector(v) => Answer::Vector(v.into_iter().map(|s| (s.labels, s.v)).collect(), t_ms),
        Value::Scalar(x) => Answer::Scalar(x, t_ms),
        Value::String(s) => Answer::String(s, t_ms),
        Value::Matrix(m) => Answer::Matrix(m.into_iter().map(|s| (s.labels, s.points)).collect()),
    })
}

/// Evaluates `expr` at every step from `start` to `end` (ms).
pub fn range(storage: &dyn Storage, expr: &str, start: i64, end: i64, step: i64) -> Result<Answer, QueryError> {
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted; try a positive integer".into(),
        ));
    }
    if end < start {
        return Err(QueryError::BadData("end timestamp must not be before start time".into()));
    }
    if (end - start) / step > MAX_POINTS {
        return Err(QueryError::BadData(format!(
            "exceeded maximum resolution of {MAX_POINTS} points per timeseries; try decreasing the query resolution (?step=XX)"
        )));
    }
    let e = promql::parse(expr).map_err(|e| QueryError::BadData(format!("invalid expression: {e}")))?;
    promql::check(&e).map_err(eval_err)?;
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        match promql::eval(&e, storage, t).map_err(eval_err)? {
            Value::Vector(v) => {
                for s in v {
                    out.entry(s.labels).or_default().push((t, s.v));
                }
            }
            Value::Scalar(x) => out.entry(Labels::new()).or_default().push((t, x)),
            Value::Matrix(_) => {
                return Err(QueryError::BadData("a range query needs an instant vector or scalar expression".into()));
            }
            Value::String(_) => return Err(QueryError::BadData("a range query cannot return a string".into())),
        }
        t += step;
    }
    Ok(Answer::Matrix(out.into_iter().collect()))
}

/// Parses a time as Prometheus accepts it: Unix seconds (with a fraction) or RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1000.0).round() as i64);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("cannot parse \"{s}\" to a valid timestamp"))
}

/// Parses a step: seconds (with a fraction) or a Prometheus duration.
pub fn parse_step(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1000.0).round() as i64);
    }
    fleet_rules::rules::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("cannot parse \"{s}\" to a valid duration"))
}

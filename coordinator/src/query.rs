//! Queries over the history: the evaluation shared by the Prometheus HTTP API subset
//! (docs/design.md §6: what Grafana's Prometheus data source and `promtool query` use) and the
//! ControlService `Query` rpc behind `fleetctl query`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_rules::promql::{self, EvalError, Labels, Limits, Storage, Value};
use tokio_util::sync::CancellationToken;

/// Most points one range query may return per series (as Prometheus).
pub const MAX_POINTS: i64 = 11_000;
/// The earliest and latest times a query may name, in ms: about ±285,000 years, far inside
/// what the arithmetic on them (lookback, offsets, steps) can hold without overflowing.
pub const MAX_ABS_TIME_MS: i64 = 1 << 53;

/// `[query]`: what one query may use (invariant 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Wall time one query may take (`[query] timeout`, Prometheus' `--query.timeout`).
    pub timeout: Duration,
    /// Samples one query may hold at once (`[query] max_samples`).
    pub max_samples: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { timeout: Duration::from_secs(120), max_samples: promql::DEFAULT_MAX_SAMPLES }
    }
}

/// A query in flight on a blocking thread, called off when its caller goes away (the
/// future awaiting it is dropped: the HTTP client disconnected, the gRPC call was cancelled)
/// or the coordinator begins to stop.
pub struct Guard {
    gone: Arc<AtomicBool>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` with query limits on a blocking thread; the evaluation stops with
/// [`QueryError::Canceled`] as soon as the returned future is dropped or `shutdown` is
/// cancelled, and with [`QueryError::Timeout`] past `limits.timeout`.
pub async fn run<T: Send + 'static>(
    limits: QueryLimits,
    shutdown: CancellationToken,
    f: impl FnOnce(&Limits<'_>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    let gone = Arc::new(AtomicBool::new(false));
    let _guard = Guard { gone: gone.clone() };
    let task = tokio::task::spawn_blocking(move || {
        let canceled = move || gone.load(Ordering::Relaxed) || shutdown.is_cancelled();
        let l = Limits::new(limits.timeout, Some(&canceled), limits.max_samples);
        f(&l)
    });
    task.await.map_err(|e| QueryError::Execution(format!("the query failed: {e}")))?
}

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

/// Why a query failed: a bad request or one fleet cannot evaluate (400), a failed evaluation
/// (422), a timeout (503) or a caller that went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// The request is wrong (parse error, bad time).
    BadData(String),
    /// Valid PromQL that fleet's engine does not evaluate (named in the message).
    Unsupported(String),
    /// The evaluation failed (also: too many samples).
    Execution(String),
    /// The evaluation ran past `[query] timeout`.
    Timeout(String),
    /// The caller went away or the coordinator is stopping.
    Canceled(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::BadData(s)
            | QueryError::Unsupported(s)
            | QueryError::Execution(s)
            | QueryError::Timeout(s)
            | QueryError::Canceled(s) => f.write_str(s),
        }
    }
}

fn eval_err(e: EvalError) -> QueryError {
    match e {
        EvalError::Unsupported(_) => QueryError::Unsupported(e.to_string()),
        EvalError::Invalid(_) | EvalError::TooManySamples(_) => QueryError::Execution(e.to_string()),
        EvalError::Timeout(_) => QueryError::Timeout(e.to_string()),
        EvalError::Canceled => QueryError::Canceled(e.to_string()),
    }
}

/// Evaluates `expr` at `t_ms`.
pub fn instant(storage: &dyn Storage, expr: &str, t_ms: i64, limits: &Limits<'_>) -> Result<Answer, QueryError> {
    check_time(t_ms)?;
    let e = promql::parse(expr).map_err(|e| QueryError::BadData(format!("invalid expression: {e}")))?;
    promql::check(&e).map_err(eval_err)?;
    Ok(match promql::eval_with(&e, storage, t_ms, limits).map_err(eval_err)? {
        Value::Vector(v) => Answer::Vector(v.into_iter().map(|s| (s.labels, s.v)).collect(), t_ms),
        Value::Scalar(x) => Answer::Scalar(x, t_ms),
        Value::String(s) => Answer::String(s, t_ms),
        Value::Matrix(m) => Answer::Matrix(m.into_iter().map(|s| (s.labels, s.points)).collect()),
    })
}

/// Evaluates `expr` at every step from `start` to `end` (ms).
pub fn range(
    storage: &dyn Storage,
    expr: &str,
    start: i64,
    end: i64,
    step: i64,
    limits: &Limits<'_>,
) -> Result<Answer, QueryError> {
    check_time(start)?;
    check_time(end)?;
    if step <= 0 {
        return Err(QueryError::BadData(
            "zero or negative query resolution step widths are not accepted; try a positive integer".into(),
        ));
    }
    if end < start {
        return Err(QueryError::BadData("end timestamp must not be before start time".into()));
    }
    if (end - start) / step >= MAX_POINTS {
        return Err(QueryError::BadData(format!(
            "exceeded maximum resolution of {MAX_POINTS} points per timeseries; try decreasing the query resolution (?step=XX)"
        )));
    }
    let e = promql::parse(expr).map_err(|e| QueryError::BadData(format!("invalid expression: {e}")))?;
    promql::check(&e).map_err(eval_err)?;
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut points = 0usize;
    let mut t = start;
    while t <= end {
        // Each step holds what the query has returned so far and what the step reads.
        limits.reset_samples(points);
        match promql::eval_step(&e, storage, t, (start, end), limits).map_err(eval_err)? {
            Value::Vector(v) => {
                points += v.len();
                for s in v {
                    out.entry(s.labels).or_default().push((t, s.v));
                }
            }
            Value::Scalar(x) => {
                points += 1;
                out.entry(Labels::new()).or_default().push((t, x))
            }
            Value::Matrix(_) => {
                return Err(QueryError::BadData("a range query needs an instant vector or scalar expression".into()));
            }
            Value::String(_) => return Err(QueryError::BadData("a range query cannot return a string".into())),
        }
        if points > limits.max_samples {
            return Err(eval_err(EvalError::TooManySamples(limits.max_samples)));
        }
        let Some(next) = t.checked_add(step) else { break };
        t = next;
    }
    Ok(Answer::Matrix(out.into_iter().collect()))
}

fn check_time(t: i64) -> Result<(), QueryError> {
    if t.unsigned_abs() > MAX_ABS_TIME_MS as u64 {
        return Err(QueryError::BadData(format!("the time {t} ms is out of range")));
    }
    Ok(())
}

/// Seconds (with a fraction) as ms, when finite and within [`MAX_ABS_TIME_MS`].
fn seconds_ms(f: f64) -> Option<i64> {
    let ms = (f * 1000.0).round();
    (ms.is_finite() && ms.abs() <= MAX_ABS_TIME_MS as f64).then_some(ms as i64)
}

/// Parses a time as Prometheus accepts it: Unix seconds (with a fraction) or RFC 3339; NaN,
/// infinities and times beyond about ±285,000 years are refused.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let invalid = || format!("cannot parse \"{s}\" to a valid timestamp");
    if let Ok(f) = s.parse::<f64>() {
        return seconds_ms(f).ok_or_else(invalid);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| invalid())?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .filter(|ms| ms.unsigned_abs() <= MAX_ABS_TIME_MS as u64)
        .ok_or_else(invalid)
}

/// Parses a step: seconds (with a fraction) or a Prometheus duration.
pub fn parse_step(s: &str) -> Result<i64, String> {
    let invalid = || format!("cannot parse \"{s}\" to a valid duration");
    if let Ok(f) = s.parse::<f64>() {
        return seconds_ms(f).ok_or_else(invalid);
    }
    fleet_rules::rules::parse_duration(s).ok().and_then(|d| i64::try_from(d.as_millis()).ok()).ok_or_else(invalid)
}

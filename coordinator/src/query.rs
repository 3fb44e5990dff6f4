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
    let storage = Prefetched::new(storage, end, limits.max_samples);
    while t <= end {
        // Each step holds what the query has returned so far and what the step reads.
        limits.reset_samples(points);
        match promql::eval_step(&e, &storage, t, (start, end), limits).map_err(eval_err)? {
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

/// A selector's series as read once for a whole range query, and the window they cover.
type Read = (i64, i64, Vec<promql::Series>);
/// A selector: its metric name, its matchers (as written out) and the length of its window.
type Selector = (Option<String>, String, i64);

/// The history seen by a range query: each selector (its name, matchers and range) is read
/// once, from its first step's start to the query's end, and every later step takes its
/// window from those samples instead of reading (and decoding) the chunks again; as
/// Prometheus reads a range query's series once. A window the read does not cover (an
/// `offset` or `@` reaching past it) and a selector past the query's sample limit (`[query]
/// max_samples`, Prometheus' `--query.max-samples`: what one query may load into memory, 16
/// bytes a sample) are read from the history as they come.
struct Prefetched<'a> {
    inner: &'a dyn Storage,
    end: i64,
    budget: std::cell::Cell<usize>,
    /// Per selector, what was read (`None`: too many samples to keep).
    read: std::cell::RefCell<std::collections::HashMap<Selector, Option<std::rc::Rc<Read>>>>,
}

impl<'a> Prefetched<'a> {
    fn new(inner: &'a dyn Storage, end: i64, budget: usize) -> Self {
        Prefetched { inner, end, budget: std::cell::Cell::new(budget), read: Default::default() }
    }

    /// The read covering `(start, end]` for this selector, reading it at its first use.
    fn covering(
        &self,
        name: Option<&str>,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
    ) -> Option<std::rc::Rc<Read>> {
        let key = (name.map(str::to_string), format!("{m:?}"), end.saturating_sub(start));
        let known = self.read.borrow().get(&key).cloned();
        let read = match known {
            Some(r) => r,
            None => {
                let series = self.inner.select(name, m, start, self.end.max(end));
                let samples: usize = series.iter().map(|s| s.points.len()).sum();
                let kept = (samples <= self.budget.get()).then(|| {
                    self.budget.set(self.budget.get() - samples);
                    std::rc::Rc::new((start, self.end.max(end), series))
                });
                self.read.borrow_mut().insert(key, kept.clone());
                kept
            }
        };
        read.filter(|r| r.0 <= start && end <= r.1)
    }
}

/// The samples of `points` (oldest first) in `(start, end]`.
fn window(points: &[(i64, f64)], start: i64, end: i64) -> &[(i64, f64)] {
    let from = points.partition_point(|p| p.0 <= start);
    let to = points.partition_point(|p| p.0 <= end);
    &points[from..to.max(from)]
}

impl Storage for Prefetched<'_> {
    fn select(
        &self,
        name: Option<&str>,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
    ) -> Vec<promql::Series> {
        let Some(read) = self.covering(name, m, start, end) else { return self.inner.select(name, m, start, end) };
        read.2
            .iter()
            .filter_map(|s| {
                let w = window(&s.points, start, end);
                (!w.is_empty()).then(|| promql::Series { labels: s.labels.clone(), points: w.to_vec() })
            })
            .collect()
    }

    fn select_each(
        &self,
        name: Option<&str>,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
        f: &mut promql::EachSeries<'_>,
    ) {
        let Some(read) = self.covering(name, m, start, end) else {
            return self.inner.select_each(name, m, start, end, f);
        };
        for s in &read.2 {
            let w = window(&s.points, start, end);
            if !w.is_empty() {
                f(s.labels.clone(), w);
            }
        }
    }

    fn select_latest(
        &self,
        name: Option<&str>,
        m: &promql_parser::label::Matchers,
        start: i64,
        end: i64,
    ) -> Vec<promql::Series> {
        let Some(read) = self.covering(name, m, start, end) else {
            return self.inner.select_latest(name, m, start, end);
        };
        read.2
            .iter()
            .filter_map(|s| {
                let newest = *window(&s.points, start, end).last()?;
                Some(promql::Series { labels: s.labels.clone(), points: vec![newest] })
            })
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::Tsdb;

    /// A range query answers as if every step read the history itself.
    #[test]
    fn a_range_query_read_ahead_answers_as_each_step_reading_the_history() {
        let db = Tsdb::new(i64::MAX / 4, 10_000);
        let t0 = 1_700_000_000_000i64;
        for i in 0..720i64 {
            for h in 0..5 {
                let host = format!("h{h}");
                // A counter with a reset, a gauge with a gap.
                let c = if i < 400 { i * (h + 1) } else { (i - 400) * 2 } as f64;
                db.append_sample("c_total", &mut [("host", &host)], t0 + i * 5_000 + h * 700, c);
                if !(200..260).contains(&i) {
                    db.append_sample("g", &mut [("host", &host)], t0 + i * 5_000 + h * 900, (i % 17) as f64);
                }
            }
        }
        let (start, end, step) = (t0 + 300_000, t0 + 3_600_000, 15_000);
        for expr in [
            "g",
            "avg by (host) (rate(c_total[5m]))",
            "sum(increase(c_total[1m])) + count(g)",
            "g offset 10m",
            "max_over_time(g[2m] offset -1m)",
            "g @ start() - g",
            "rate(c_total[5m] @ end())",
            "avg_over_time(rate(c_total[2m])[10m:1m])",
            "timestamp(g) - time()",
            "absent(g{host=\"none\"})",
        ] {
            let limits = Limits::default();
            let got = range(&db, expr, start, end, step, &limits).unwrap_or_else(|e| panic!("{expr}: {e}"));
            // Each step on its own, reading the history.
            let e = promql::parse(expr).unwrap();
            let mut want: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
            let mut t = start;
            while t <= end {
                match promql::eval_step(&e, &db, t, (start, end), &Limits::default()).unwrap() {
                    Value::Vector(v) => {
                        for s in v {
                            want.entry(s.labels).or_default().push((t, s.v));
                        }
                    }
                    Value::Scalar(x) => want.entry(Labels::new()).or_default().push((t, x)),
                    other => panic!("{expr}: {other:?}"),
                }
                t += step;
            }
            let Answer::Matrix(got) = got else { panic!("{expr}: not a matrix") };
            let want: Vec<_> = want.into_iter().collect();
            assert_eq!(got.len(), want.len(), "{expr}");
            for ((gl, gp), (wl, wp)) in got.iter().zip(&want) {
                assert_eq!(gl, wl, "{expr}");
                assert_eq!(gp.len(), wp.len(), "{expr} {gl:?}");
                for (a, b) in gp.iter().zip(wp) {
                    assert!(
                        a.0 == b.0 && (a.1 == b.1 || (a.1.is_nan() && b.1.is_nan())),
                        "{expr} {gl:?}: {a:?} != {b:?}"
                    );
                }
            }
        }
    }
}

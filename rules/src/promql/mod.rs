//! PromQL evaluation over any sample store (docs/design.md §6), with Prometheus 3 semantics: a 5m
//! lookback, left-open windows (a sample exactly 5m old is no longer seen), staleness markers,
//! vector matching with `on`/`ignoring`/`group_left`/`group_right`, set operators, the common
//! aggregations and functions. A construct it does not implement is an error that names it,
//! never a wrong answer.
//!
//! The parts: this module holds the public types, the bounds and [`parse`], [`check`] and the
//! lists of what is implemented, and the label helpers; `eval.rs` the evaluator's walk
//! (selectors, operators, aggregations); `functions/` the functions, one file per family;
//! `arith.rs` the pure numeric helpers; `tests.rs` the unit tests.

use std::time::Duration;

use promql_parser::label::Matchers;
use promql_parser::parser::{Expr, VectorSelector};

pub use crate::labels::Labels;

pub use arith::{almost_equal, parse_float, quantile};
use eval::Evaluator;

mod arith;
mod durations;
mod eval;
mod functions;
#[cfg(test)]
mod tests;

/// The metric name label.
pub const NAME: &str = "__name__";

/// How far back an instant selector looks.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Prometheus' staleness marker: a NaN with this bit pattern ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the staleness marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: Labels,
    /// When the value was taken (for `timestamp()`), in ms.
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// One series of a range vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// Samples, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// A PromQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Scalar(f64),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector.
    Matrix(Vec<Series>),
    /// A string.
    String(String),
}

/// Takes one series and its samples at a time (see [`Storage::select_each`]).
pub type EachSeries<'a> = dyn FnMut(Labels, &[(i64, f64)]) + 'a;

/// Where samples come from.
pub trait Storage {
    /// Every series matching `name` (if any) and `matchers`, with its samples in
    /// `(start_ms, end_ms]`, oldest first.
    fn select(&self, name: Option<&str>, matchers: &Matchers, start_ms: i64, end_ms: i64) -> Vec<Series>;

    /// Calls `f` with every series matching and its samples in `(start_ms, end_ms]`, one series
    /// at a time: what range functions need. Stores that can read each series' samples into
    /// one buffer, instead of holding every series' at once, should.
    fn select_each(&self, name: Option<&str>, matchers: &Matchers, start_ms: i64, end_ms: i64, f: &mut EachSeries<'_>) {
        for s in self.select(name, matchers, start_ms, end_ms) {
            f(s.labels, &s.points);
        }
    }

    /// Like [`Storage::select`], with only the newest sample of each series (what an instant
    /// vector selector needs). Stores that can find it without reading the whole range should.
    fn select_latest(&self, name: Option<&str>, matchers: &Matchers, start_ms: i64, end_ms: i64) -> Vec<Series> {
        let mut all = self.select(name, matchers, start_ms, end_ms);
        for s in &mut all {
            let newest = s.points.pop();
            s.points.clear();
            s.points.extend(newest);
        }
        all
    }
}

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Part of PromQL fleet does not implement.
    #[error("{0} is not supported by fleet's PromQL engine")]
    Unsupported(String),
    /// The expression is valid PromQL but fails at evaluation.
    #[error("{0}")]
    Invalid(String),
    /// The evaluation ran past its deadline.
    #[error("query timed out in expression evaluation (the limit is {0:?}: [query] timeout)")]
    Timeout(Duration),
    /// The caller went away or the coordinator is stopping.
    #[error("query canceled")]
    Canceled,
    /// The evaluation would hold more samples than allowed.
    #[error(
        "query processing would load too many samples into memory in query execution (the limit is {0}: [query] max_samples)"
    )]
    TooManySamples(usize),
}

/// What one evaluation may use (invariant 15): a deadline, a way to be called off, and the most
/// samples it may hold at once. The evaluator checks them at every step of the expression and
/// for every series it reads, so a query stops soon after any of them is reached.
pub struct Limits<'a> {
    /// When to give up, and the timeout it came from (for the message).
    pub deadline: Option<(std::time::Instant, Duration)>,
    /// Called off (the client went away, the coordinator is stopping) when this returns true.
    pub canceled: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// The most samples held at once (Prometheus' `--query.max-samples`).
    pub max_samples: usize,
    samples: std::cell::Cell<usize>,
}

/// Prometheus' default of `--query.max-samples`.
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;

impl Default for Limits<'_> {
    fn default() -> Self {
        Limits { deadline: None, canceled: None, max_samples: DEFAULT_MAX_SAMPLES, samples: Default::default() }
    }
}

impl std::fmt::Debug for Limits<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("deadline", &self.deadline)
            .field("max_samples", &self.max_samples)
            .field("samples", &self.samples.get())
            .finish()
    }
}

impl<'a> Limits<'a> {
    /// Limits with a timeout from now, a cancellation check and a sample bound.
    pub fn new(timeout: Duration, canceled: Option<&'a (dyn Fn() -> bool + Sync)>, max_samples: usize) -> Self {
        Limits {
            deadline: Some((std::time::Instant::now() + timeout, timeout)),
            canceled,
            max_samples,
            samples: Default::default(),
        }
    }

    /// Whether to go on: not past the deadline, not called off.
    pub fn go_on(&self) -> Result<(), EvalError> {
        if self.canceled.is_some_and(|c| c()) {
            return Err(EvalError::Canceled);
        }
        match self.deadline {
            Some((at, timeout)) if std::time::Instant::now() >= at => Err(EvalError::Timeout(timeout)),
            _ => Ok(()),
        }
    }

    /// Counts `n` more samples held.
    fn take(&self, n: usize) -> Result<(), EvalError> {
        let total = self.samples.get().saturating_add(n);
        self.samples.set(total);
        if total > self.max_samples { Err(EvalError::TooManySamples(self.max_samples)) } else { Ok(()) }
    }

    /// Starts counting held samples again from `held` (a range query's next step holds only
    /// what it has returned so far).
    pub fn reset_samples(&self, held: usize) {
        self.samples.set(held);
    }
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Unsupported(what.into()))
}

fn invalid<T>(what: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError::Invalid(what.into()))
}

/// The longest expression text accepted, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// The most operators and parentheses an expression may have. The parser's time grows with
/// the square of a chain of operators (20,000 `+` take seconds), so longer chains are refused
/// before it runs; real rules have fewer than a hundred.
pub const MAX_OPERATORS: usize = 2_000;
/// The deepest expression accepted: every walk of an expression (checking, evaluating,
/// printing) recurses once per level, and an expression of any depth must never overflow a
/// thread's stack. Real rules are less than 20 deep (the mixins' deepest is 16).
pub const MAX_DEPTH: usize = 100;

/// Why a PromQL text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than [`MAX_TEXT`].
    #[error("the expression is {0} bytes long; the limit is {MAX_TEXT}")]
    TooLong(usize),
    /// More operators and parentheses than [`MAX_OPERATORS`].
    #[error("the expression has {0} operators and parentheses; the limit is {MAX_OPERATORS}")]
    TooManyOperators(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the expression is nested {0} levels deep; the limit is {MAX_DEPTH}")]
    TooDeep(usize),
    /// The parser gave up (it panics on some inputs, such as `x offset 1e308`).
    #[error("the expression cannot be parsed (a number in it is out of range?)")]
    OutOfRange,
    /// Not PromQL: the parser's message.
    #[error("{0}")]
    Syntax(String),
}

/// Parses PromQL text, refusing what is too long or too deep to handle safely (invariant 15).
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    if text.len() > MAX_TEXT {
        return Err(ParseError::TooLong(text.len()));
    }
    let ops = operators(text);
    if ops > MAX_OPERATORS {
        return Err(ParseError::TooManyOperators(ops));
    }
    check_byte_escapes(text)?;
    // Duration expressions (`x[26m+4m]`, `offset (2*2)`) become literals the parser reads.
    let text = durations::rewrite(text).map_err(ParseError::Syntax)?;
    let text = text.as_ref();
    // The parser panics on some inputs (`x offset 1e308`: a duration out of range); a panic
    // here would take down whatever parses a stranger's query or a rule file.
    let expr = std::panic::catch_unwind(|| promql_parser::parser::parse(text))
        .map_err(|_| ParseError::OutOfRange)?
        .map_err(ParseError::Syntax)?;
    let d = depth(&expr);
    if d > MAX_DEPTH {
        return Err(ParseError::TooDeep(d));
    }
    Ok(expr)
}

/// Refuses `\xNN` escapes of bytes above 0x7f in string literals: in Go (and so in Prometheus)
/// they are raw bytes, often not UTF-8 (which makes `"\xff"` an invalid label name), but the
/// parser fleet uses reads each as a character, which would silently mean something else.
fn check_byte_escapes(text: &str) -> Result<(), ParseError> {
    let b = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(q) if b[i] == b'\\' && q != b'`' => {
                if b.get(i + 1) == Some(&b'x')
                    && let Some(hex) = text.get(i + 2..i + 4)
                    && u8::from_str_radix(hex, 16).is_ok_and(|v| v > 0x7f)
                {
                    return Err(ParseError::Syntax(format!(
                        "the escape \\x{hex} is a raw byte, which fleet does not take in strings; write the character itself or a \\u escape"
                    )));
                }
                i += 2;
                continue;
            }
            Some(q) if b[i] == q => quote = None,
            Some(_) => {}
            None if matches!(b[i], b'"' | b'\'' | b'`') => quote = Some(b[i]),
            None => {}
        }
        i += 1;
    }
    Ok(())
}

/// Operators and opening parentheses outside string literals: an upper bound of the parse
/// tree's size that is cheap to find before parsing.
fn operators(text: &str) -> usize {
    let mut n = 0;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == '\\' && q != '`' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '(' | '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' => n += 1,
                // `and`, `or`, `unless` chains: each one a word boundary away.
                ' ' | '\t' | '\n' | '\r' | ')' => {
                    let rest = chars.as_str();
                    for kw in ["and", "or", "unless"] {
                        if let Some(after) = rest.strip_prefix(kw)
                            && after.starts_with([' ', '\t', '\n', '\r', '('])
                        {
                            n += 1;
                        }
                    }
                }
                _ => {}
            },
        }
    }
    n
}

/// How deep `expr` is, found without recursion (it may be thousands of levels deep).
pub fn depth(expr: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        match e {
            Expr::Paren(p) => stack.push((&p.expr, d + 1)),
            Expr::Unary(u) => stack.push((&u.expr, d + 1)),
            Expr::Subquery(s) => stack.push((&s.expr, d + 1)),
            Expr::Binary(b) => {
                stack.push((&b.lhs, d + 1));
                stack.push((&b.rhs, d + 1));
            }
            Expr::Aggregate(a) => {
                stack.push((&a.expr, d + 1));
                if let Some(p) = &a.param {
                    stack.push((p, d + 1));
                }
            }
            Expr::Call(c) => stack.extend(c.args.args.iter().map(|a| (a.as_ref(), d + 1))),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    deepest
}

/// The functions this engine evaluates. [`check`] refuses every other one, so that a rule
/// file using it is refused when it is loaded instead of erring at every evaluation.
pub const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "first_over_time",
    "floor",
    "histogram_fraction",
    "histogram_quantile",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    "vector",
    "year",
];

/// The aggregation operators this engine evaluates.
pub const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Whether the engine can evaluate every part of `expr`: the first construct it cannot is an
/// [`EvalError::Unsupported`] naming it. Rule files and queries are checked with this before
/// they are accepted (invariant 12: nothing is loaded that would silently never
/// fire).
pub fn check(expr: &Expr) -> Result<(), EvalError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check(&p.expr),
        Expr::Unary(u) => check(&u.expr),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs),
        Expr::Subquery(sq) => check(&sq.expr),
        Expr::Aggregate(a) => {
            let op = a.op.to_string().to_lowercase();
            if !AGGREGATIONS.contains(&op.as_str()) {
                return unsupported(format!("the {op} aggregation"));
            }
            if let Some(p) = &a.param {
                check(p)?;
            }
            check(&a.expr)
        }
        Expr::Binary(b) => {
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Call(c) => {
            if !FUNCTIONS.contains(&c.func.name) {
                return unsupported(format!("the function {}()", c.func.name));
            }
            c.args.args.iter().try_for_each(|a| check(a))
        }
        Expr::Extension(_) => unsupported("extension expressions"),
    }
}

fn check_selector(_: &VectorSelector) -> Result<(), EvalError> {
    Ok(())
}

/// Evaluates `expr` at `t_ms`, holding at most [`DEFAULT_MAX_SAMPLES`] samples.
pub fn eval(expr: &Expr, storage: &dyn Storage, t_ms: i64) -> Result<Value, EvalError> {
    eval_with(expr, storage, t_ms, &Limits::default())
}

/// Evaluates `expr` at `t_ms` within `limits`, as an instant query.
pub fn eval_with(expr: &Expr, storage: &dyn Storage, t_ms: i64, limits: &Limits<'_>) -> Result<Value, EvalError> {
    eval_step(expr, storage, t_ms, (t_ms, t_ms), limits)
}

/// Evaluates `expr` at `t_ms`, one step of a range query over `span` (its first and last
/// evaluation times, which `@ start()` and `@ end()` name), within `limits`.
pub fn eval_step(
    expr: &Expr,
    storage: &dyn Storage,
    t_ms: i64,
    span: (i64, i64),
    limits: &Limits<'_>,
) -> Result<Value, EvalError> {
    finish(Evaluator { storage, limits, start: span.0, end: span.1 }.eval(expr, t_ms)?)
}

/// Whether `name` is among the label names of a `by`/`on`/`without`/`ignoring` clause.
fn named(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

/// The labels that name what a series measures: the metric name and, with Prometheus'
/// type-and-unit labels, its type and unit. An operation that changes what the value means
/// drops all three.
pub const RESERVED: [&str; 3] = [NAME, "__type__", "__unit__"];

/// Where a dropped metric name is kept until the evaluation ends (Prometheus' delayed name
/// removal): `label_replace` and `label_join` still read it, series that differ only by it stay
/// apart, and [`finish`] removes it (refusing a result where two series then share their
/// labels). No label a series can have starts with this byte.
pub const DROPPED_NAME: &str = "\u{1}__name__";

/// The labels of an operation's result that no longer measures what the name says: the name
/// is set aside ([`DROPPED_NAME`]), the type and unit labels go.
fn drop_name(mut l: Labels) -> Labels {
    if let Some(n) = l.remove(NAME) {
        l.insert(DROPPED_NAME, n);
    }
    for k in &RESERVED[1..] {
        l.remove(k);
    }
    l
}

/// The labels without a set-aside name.
fn strip_dropped(mut l: Labels) -> Labels {
    l.remove(DROPPED_NAME);
    l
}

/// The end of an evaluation: set-aside names go, and two series with the same labels are
/// refused as Prometheus refuses them.
fn finish(v: Value) -> Result<Value, EvalError> {
    match v {
        Value::Vector(samples) => {
            let out: Vec<Sample> =
                samples.into_iter().map(|s| Sample { labels: strip_dropped(s.labels), ..s }).collect();
            let mut seen = std::collections::HashSet::with_capacity(out.len());
            if !out.iter().all(|s| seen.insert(&s.labels)) {
                return invalid("vector cannot contain metrics with the same labelset");
            }
            Ok(Value::Vector(out))
        }
        Value::Matrix(series) => {
            let out: Vec<Series> =
                series.into_iter().map(|s| Series { labels: strip_dropped(s.labels), ..s }).collect();
            let mut seen = std::collections::HashSet::with_capacity(out.len());
            if !out.iter().all(|s| seen.insert(&s.labels)) {
                return invalid("vector cannot contain metrics with the same labelset");
            }
            Ok(Value::Matrix(out))
        }
        other => Ok(other),
    }
}

/// Labels as `{a="b", ...}` for messages.
pub fn format_labels(l: &Labels) -> String {
    let name = l.get(NAME).unwrap_or_default().to_string();
    let rest: Vec<String> =
        l.iter().filter(|(k, _)| *k != NAME && *k != DROPPED_NAME).map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// Whether a series with `labels` matches the selector's name and matchers.
pub fn matches(labels: &Labels, name: Option<&str>, matchers: &Matchers) -> bool {
    matches_with(|k| labels.get(k), name, matchers)
}

/// [`matches`] over any label lookup: `get(label)` is the label's value, `None` when absent
/// (`__name__` included).
pub fn matches_with<'a>(get: impl Fn(&str) -> Option<&'a str>, name: Option<&str>, matchers: &Matchers) -> bool {
    if let Some(n) = name
        && get(NAME) != Some(n)
    {
        return false;
    }
    let get = |k: &str| get(k).unwrap_or("");
    let all = matchers.matchers.iter().all(|m| m.is_match(get(&m.name)));
    if !matchers.or_matchers.is_empty() {
        return matchers.or_matchers.iter().any(|group| group.iter().all(|m| m.is_match(get(&m.name))));
    }
    all
}

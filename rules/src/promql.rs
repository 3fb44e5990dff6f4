//! PromQL evaluation over any sample store (docs/design.md §6), with Prometheus 3 semantics: a 5m
//! lookback, left-open windows (a sample exactly 5m old is no longer seen), staleness markers,
//! vector matching with `on`/`ignoring`/`group_left`/`group_right`, set operators, the common
//! aggregations and functions. A construct it does not implement is an error that names it,
//! never a wrong answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use promql_parser::label::Matchers;
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, Offset, VectorMatchCardinality, VectorSelector,
};

pub use crate::labels::Labels;

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
    /// Labels.
    pub labels: Labels,
    /// When the value was taken (for `timestamp()`), in ms.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// One series of a range vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels.
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
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
];

/// The aggregation operators this engine evaluates.
pub const AGGREGATIONS: &[&str] =
    &["avg", "bottomk", "count", "group", "max", "min", "quantile", "stddev", "stdvar", "sum", "topk"];

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
        Expr::Subquery(_) => unsupported("subqueries (expr[range:step])"),
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

fn check_selector(vs: &VectorSelector) -> Result<(), EvalError> {
    if vs.at.is_some() {
        return unsupported("the @ modifier");
    }
    Ok(())
}

/// Evaluates `expr` at `t_ms`, holding at most [`DEFAULT_MAX_SAMPLES`] samples.
pub fn eval(expr: &Expr, storage: &dyn Storage, t_ms: i64) -> Result<Value, EvalError> {
    eval_with(expr, storage, t_ms, &Limits::default())
}

/// Evaluates `expr` at `t_ms` within `limits`.
pub fn eval_with(expr: &Expr, storage: &dyn Storage, t_ms: i64, limits: &Limits<'_>) -> Result<Value, EvalError> {
    Evaluator { storage, limits }.eval(expr, t_ms)
}

struct Evaluator<'a> {
    storage: &'a dyn Storage,
    limits: &'a Limits<'a>,
}

/// Milliseconds of a duration, saturating: `offset 10000000y` must not wrap around.
fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => dur_ms(d).saturating_neg(),
        None => 0,
    }
}

/// Whether `name` is among the label names of a `by`/`on`/`without`/`ignoring` clause.
fn named(names: &[String], name: &str) -> bool {
    names.iter().any(|n| n == name)
}

fn drop_name(mut l: Labels) -> Labels {
    l.remove(NAME);
    l
}

/// Labels as `{a="b", ...}` for messages.
pub fn format_labels(l: &Labels) -> String {
    let name = l.get(NAME).unwrap_or_default().to_string();
    let rest: Vec<String> = l.iter().filter(|(k, _)| *k != NAME).map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", rest.join(", "))
}

impl Evaluator<'_> {
    fn eval(&self, expr: &Expr, t: i64) -> Result<Value, EvalError> {
        self.limits.go_on()?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t: s.t, v: -s.v }).collect(),
                )),
                _ => invalid("unary minus needs a scalar or an instant vector"),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant(vs, t)?)),
            Expr::MatrixSelector(_) => {
                let mut series = Vec::new();
                self.each_range(expr, t, "a range vector selector", &mut |labels, points| {
                    series.push(Series { labels, points: points.to_vec() })
                })?;
                Ok(Value::Matrix(series))
            }
            Expr::Subquery(_) => unsupported("subqueries (expr[range:step])"),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Extension(_) => unsupported("extension expressions"),
        }
    }

    fn instant(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>, EvalError> {
        if vs.at.is_some() {
            return unsupported("the @ modifier");
        }
        let end = t.saturating_sub(offset_ms(&vs.offset));
        let mut out = Vec::new();
        let selected =
            self.storage.select_latest(vs.name.as_deref(), &vs.matchers, end.saturating_sub(LOOKBACK_MS), end);
        self.limits.take(selected.len())?;
        self.limits.go_on()?;
        for s in selected {
            if let Some(&(ts, v)) = s.points.last()
                && !is_stale(v)
            {
                out.push(Sample { labels: s.labels, t: ts, v });
            }
        }
        Ok(out)
    }

    fn vector(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Sample>, EvalError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => invalid(format!("{what} needs an instant vector")),
        }
    }

    fn matrix(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Series>, EvalError> {
        match self.eval(e, t)? {
            Value::Matrix(m) => Ok(m),
            _ => invalid(format!("{what} needs a range vector")),
        }
    }

    fn scalar(&self, e: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => invalid(format!("{what} needs a scalar")),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value, EvalError> {
        let op = a.op.to_string().to_lowercase();
        let input = self.vector(&a.expr, t, &op)?;
        let param = match &a.param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        let key = |l: &Labels| -> Labels {
            match &a.modifier {
                Some(LabelModifier::Include(ls)) => l.filtered(|k| named(&ls.labels, k)),
                Some(LabelModifier::Exclude(ls)) => l.filtered(|k| !named(&ls.labels, k) && k != NAME),
                None => Labels::new(),
            }
        };
        let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for s in input {
            let k = key(&s.labels);
            match index.get(&k) {
                Some(&i) => groups[i].1.push(s),
                None => {
                    index.insert(k.clone(), groups.len());
                    groups.push((k, vec![s]));
                }
            }
        }
        let num_param = |what: &str| -> Result<f64, EvalError> {
            match &param {
                Some(Value::Scalar(v)) => Ok(*v),
                _ => invalid(format!("{what} needs a number parameter")),
            }
        };
        let mut out = Vec::new();
        for (labels, samples) in groups {
            let vals: Vec<f64> = samples.iter().map(|s| s.v).collect();
            let n = vals.len() as f64;
            let v = match op.as_str() {
                "sum" => vals.iter().sum(),
                "avg" => vals.iter().sum::<f64>() / n,
                "min" => vals.iter().copied().fold(f64::NAN, |m, x| if m.is_nan() || x < m { x } else { m }),
                "max" => vals.iter().copied().fold(f64::NAN, |m, x| if m.is_nan() || x > m { x } else { m }),
                "count" => n,
                "group" => 1.0,
                "stddev" | "stdvar" => {
                    let mean = vals.iter().sum::<f64>() / n;
                    let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                    if op == "stddev" { var.sqrt() } else { var }
                }
                "quantile" => quantile(num_param("quantile")?, &vals),
                "topk" | "bottomk" => {
                    let k = num_param(&op)?;
                    if k < 1.0 {
                        continue;
                    }
                    let mut sorted = samples.clone();
                    sorted.sort_by(|x, y| {
                        let o = x.v.partial_cmp(&y.v).unwrap_or(std::cmp::Ordering::Equal);
                        if op == "topk" { o.reverse() } else { o }
                    });
                    out.extend(sorted.into_iter().take(k as usize));
                    continue;
                }
                other => return unsupported(format!("the {other} aggregation")),
            };
            out.push(Sample { labels, t, v });
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, EvalError> {
        let op = b.op.to_string().to_lowercase();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let comparison = matches!(op.as_str(), "==" | "!=" | ">" | "<" | ">=" | "<=");
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let v = if comparison {
                    if !return_bool {
                        return invalid("comparisons between scalars need the bool modifier");
                    }
                    if compare(&op, x, y) { 1.0 } else { 0.0 }
                } else {
                    arith(&op, x, y)?
                };
                Ok(Value::Scalar(v))
            }
            (Value::Vector(vec), Value::Scalar(s)) | (Value::Scalar(s), Value::Vector(vec)) => {
                let vector_left = matches!(self.kind(&b.lhs), Kind::Vector);
                let mut out = Vec::new();
                for smp in vec {
                    let (x, y) = if vector_left { (smp.v, s) } else { (s, smp.v) };
                    if comparison {
                        let keep = compare(&op, x, y);
                        if return_bool {
                            out.push(Sample { labels: drop_name(smp.labels), t, v: if keep { 1.0 } else { 0.0 } });
                        } else if keep {
                            out.push(smp);
                        }
                    } else if matches!(op.as_str(), "and" | "or" | "unless") {
                        return invalid("set operators need instant vectors on both sides");
                    } else {
                        out.push(Sample { labels: drop_name(smp.labels), t, v: arith(&op, x, y)? });
                    }
                }
                Ok(Value::Vector(out))
            }
            (Value::Vector(l), Value::Vector(r)) => self.vector_binary(b, &op, comparison, return_bool, l, r, t),
            _ => invalid(format!("the {op} operator needs scalars or instant vectors")),
        }
    }

    fn kind(&self, e: &Expr) -> Kind {
        match e {
            Expr::NumberLiteral(_) => Kind::Scalar,
            Expr::Paren(p) => self.kind(&p.expr),
            Expr::Unary(u) => self.kind(&u.expr),
            Expr::Binary(b) => {
                if matches!(self.kind(&b.lhs), Kind::Vector) || matches!(self.kind(&b.rhs), Kind::Vector) {
                    Kind::Vector
                } else {
                    Kind::Scalar
                }
            }
            Expr::Call(c) if matches!(c.func.name, "time" | "scalar" | "pi") => Kind::Scalar,
            _ => Kind::Vector,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn vector_binary(
        &self,
        b: &BinaryExpr,
        op: &str,
        comparison: bool,
        return_bool: bool,
        l: Vec<Sample>,
        r: Vec<Sample>,
        t: i64,
    ) -> Result<Value, EvalError> {
        let m = b.modifier.as_ref();
        let matching = m.and_then(|m| m.matching.clone());
        let sig = |labels: &Labels| -> Labels {
            match &matching {
                Some(LabelModifier::Include(ls)) => labels.filtered(|k| named(&ls.labels, k)),
                Some(LabelModifier::Exclude(ls)) => labels.filtered(|k| !named(&ls.labels, k) && k != NAME),
                None => drop_name(labels.clone()),
            }
        };
        match op {
            "and" => {
                let right: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
                return Ok(Value::Vector(l.into_iter().filter(|s| right.contains(&sig(&s.labels))).collect()));
            }
            "unless" => {
                let right: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
                return Ok(Value::Vector(l.into_iter().filter(|s| !right.contains(&sig(&s.labels))).collect()));
            }
            "or" => {
                let left: HashSet<Labels> = l.iter().map(|s| sig(&s.labels)).collect();
                let mut out = l;
                out.extend(r.into_iter().filter(|s| !left.contains(&sig(&s.labels))));
                return Ok(Value::Vector(out));
            }
            _ => {}
        }
        let card = m.map(|m| m.card.clone()).unwrap_or(VectorMatchCardinality::OneToOne);
        // For group_right the "many" side is the right one: swap, and swap back per pair.
        let (many, one, swapped, include) = match &card {
            VectorMatchCardinality::OneToMany(ls) => (r, l, true, ls.labels.clone()),
            VectorMatchCardinality::ManyToOne(ls) => (l, r, false, ls.labels.clone()),
            _ => (l, r, false, Vec::new()),
        };
        let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
        let mut one_by_sig: HashMap<Labels, &Sample> = HashMap::new();
        for s in &one {
            if one_by_sig.insert(sig(&s.labels), s).is_some() {
                let side = if swapped { "left" } else { "right" };
                return invalid(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation; many-to-many matching is not allowed: add group_left or group_right",
                    format_labels(&sig(&s.labels))
                ));
            }
        }
        let mut seen: HashSet<Labels> = HashSet::new();
        let mut out = Vec::new();
        for s in many {
            let k = sig(&s.labels);
            let Some(o) = one_by_sig.get(&k) else { continue };
            if one_to_one && !seen.insert(k.clone()) {
                return invalid(format!(
                    "found duplicate series for the match group {} on the left hand-side of the operation; add group_left",
                    format_labels(&k)
                ));
            }
            let (x, y) = if swapped { (o.v, s.v) } else { (s.v, o.v) };
            let (value, keep) = if comparison {
                let c = compare(op, x, y);
                (if return_bool { if c { 1.0 } else { 0.0 } } else { x }, return_bool || c)
            } else {
                (arith(op, x, y)?, true)
            };
            if !keep {
                continue;
            }
            // Prometheus' resultMetric: the "many" side's labels; no name after arithmetic or
            // with bool; for one-to-one, only the `on` labels, or without the `ignoring` ones.
            let mut labels = s.labels.clone();
            if !comparison || return_bool {
                labels.remove(NAME);
            }
            if one_to_one {
                match &matching {
                    Some(LabelModifier::Include(ls)) => labels.retain(|k, _| named(&ls.labels, k)),
                    Some(LabelModifier::Exclude(ls)) => labels.retain(|k, _| !named(&ls.labels, k)),
                    None => {}
                }
            }
            for name in &include {
                match o.labels.get_shared(name) {
                    Some(v) => labels.insert(name.as_str(), v.clone()),
                    None => labels.remove(name),
                };
            }
            out.push(Sample { labels, t, v: value });
        }
        Ok(Value::Vector(out))
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, EvalError> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, EvalError> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| EvalError::Invalid(format!("{name}() is missing argument {}", i + 1)))
        };
        let map_vec = |f: &dyn Fn(f64) -> f64| -> Result<Value, EvalError> {
            let v = self.vector(arg(0)?, t, name)?;
            Ok(Value::Vector(v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t, v: f(s.v) }).collect()))
        };
        let over_time = |f: &WindowFn<'_>, keep_name: bool| -> Result<Value, EvalError> {
            let mut out = Vec::new();
            self.each_range(arg(0)?, t, name, &mut |labels, points| {
                if let Some(v) = f(points) {
                    out.push(Sample { labels: if keep_name { labels } else { drop_name(labels) }, t, v });
                }
            })?;
            Ok(Value::Vector(out))
        };
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample { labels: Labels::new(), t, v: self.scalar(arg(0)?, t, name)? }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t, name)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "abs" => map_vec(&f64::abs),
            "ceil" => map_vec(&f64::ceil),
            "floor" => map_vec(&f64::floor),
            "sqrt" => map_vec(&f64::sqrt),
            "exp" => map_vec(&f64::exp),
            "ln" => map_vec(&f64::ln),
            "log2" => map_vec(&f64::log2),
            "log10" => map_vec(&f64::log10),
            "sgn" => map_vec(&|x: f64| {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    x
                }
            }),
            "round" => {
                let to = match args.get(1) {
                    Some(e) => self.scalar(e, t, name)?,
                    None => 1.0,
                };
                // Prometheus rounds half up: floor(x / to + 0.5) * to.
                map_vec(&move |x: f64| (x / to + 0.5).floor() * to)
            }
            "clamp" => {
                let (lo, hi) = (self.scalar(arg(1)?, t, name)?, self.scalar(arg(2)?, t, name)?);
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                map_vec(&move |x: f64| x.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = self.scalar(arg(1)?, t, name)?;
                map_vec(&move |x: f64| x.max(lo))
            }
            "clamp_max" => {
                let hi = self.scalar(arg(1)?, t, name)?;
                map_vec(&move |x: f64| x.min(hi))
            }
            "timestamp" => {
                let v = self.vector(arg(0)?, t, name)?;
                Ok(Value::Vector(
                    v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t, v: s.t as f64 / 1000.0 }).collect(),
                ))
            }
            "rate" | "increase" | "delta" => {
                let range = self.range_of(arg(0)?, name)?;
                let is_counter = name != "delta";
                let is_rate = name == "rate";
                let mut out = Vec::new();
                self.each_range(arg(0)?, t, name, &mut |labels, points| {
                    if let Some(v) = extrapolated_rate(
                        points,
                        t.saturating_sub(range.1),
                        t.saturating_sub(range.1).saturating_add(range.0),
                        is_counter,
                        is_rate,
                    ) {
                        out.push(Sample { labels: drop_name(labels), t, v });
                    }
                })?;
                Ok(Value::Vector(out))
            }
            "irate" | "idelta" => over_time(
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
            ),
            "deriv" => over_time(&|p| if p.len() < 2 { None } else { Some(linear_regression(p, p[0].0).0) }, false),
            "changes" => over_time(
                &|p| {
                    Some(p.windows(2).filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan())).count()
                        as f64)
                },
                false,
            ),
            "resets" => over_time(&|p| Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64), false),
            "avg_over_time" => over_time(&|p| Some(p.iter().map(|x| x.1).sum::<f64>() / p.len() as f64), false),
            "min_over_time" => over_time(&|p| p.iter().map(|x| x.1).reduce(f64::min), false),
            "max_over_time" => over_time(&|p| p.iter().map(|x| x.1).reduce(f64::max), false),
            "sum_over_time" => over_time(&|p| Some(p.iter().map(|x| x.1).sum()), false),
            "count_over_time" => over_time(&|p| Some(p.len() as f64), false),
            "last_over_time" => over_time(&|p| p.last().map(|x| x.1), true),
            "present_over_time" => over_time(&|_| Some(1.0), false),
            "stddev_over_time" | "stdvar_over_time" => over_time(
                &|p| {
                    let n = p.len() as f64;
                    let mean = p.iter().map(|x| x.1).sum::<f64>() / n;
                    let var = p.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n;
                    Some(if name == "stddev_over_time" { var.sqrt() } else { var })
                },
                false,
            ),
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?, t, name)?;
                let m = self.matrix(arg(1)?, t, name)?;
                Ok(Value::Vector(
                    m.into_iter()
                        .map(|s| {
                            let vals: Vec<f64> = s.points.iter().map(|x| x.1).collect();
                            Sample { labels: drop_name(s.labels), t, v: quantile(q, &vals) }
                        })
                        .collect(),
                ))
            }
            "absent" => {
                let v = self.vector(arg(0)?, t, name)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![Sample { labels: absent_labels(arg(0)?), t, v: 1.0 }]))
            }
            "absent_over_time" => {
                let m = self.matrix(arg(0)?, t, name)?;
                if !m.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                Ok(Value::Vector(vec![Sample { labels: absent_labels(arg(0)?), t, v: 1.0 }]))
            }
            "label_replace" => {
                let v = self.vector(arg(0)?, t, name)?;
                let s = |i: usize| -> Result<String, EvalError> {
                    match self.eval(arg(i)?, t)? {
                        Value::String(s) => Ok(s),
                        _ => invalid(format!("{name}() argument {} must be a string", i + 1)),
                    }
                };
                let (dst, repl, src, re) = (s(1)?, s(2)?, s(3)?, s(4)?);
                let re = regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| EvalError::Invalid(format!("invalid regex in label_replace: {e}")))?;
                let mut out = Vec::new();
                for mut smp in v {
                    let value = smp.labels.get(&src).unwrap_or_default().to_string();
                    if let Some(caps) = re.captures(&value) {
                        let mut res = String::new();
                        caps.expand(&repl.replace("$$", "\u{0}"), &mut res);
                        let res = res.replace('\u{0}', "$");
                        if res.is_empty() {
                            smp.labels.remove(&dst);
                        } else {
                            smp.labels.insert(dst.clone(), res);
                        }
                    }
                    out.push(smp);
                }
                Ok(Value::Vector(out))
            }
            "label_join" => {
                let v = self.vector(arg(0)?, t, name)?;
                let mut strs = Vec::new();
                for i in 1..args.len() {
                    match self.eval(arg(i)?, t)? {
                        Value::String(s) => strs.push(s),
                        _ => return invalid(format!("{name}() arguments must be strings")),
                    }
                }
                if strs.len() < 2 {
                    return invalid("label_join() needs a destination label and a separator");
                }
                let (dst, sep, srcs) = (strs[0].clone(), strs[1].clone(), strs[2..].to_vec());
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|mut s| {
                            let joined: Vec<String> =
                                srcs.iter().map(|k| s.labels.get(k).unwrap_or_default().to_string()).collect();
                            let j = joined.join(&sep);
                            if j.is_empty() {
                                s.labels.remove(&dst);
                            } else {
                                s.labels.insert(dst.clone(), j);
                            }
                            s
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t, name)?;
                let v = self.vector(arg(1)?, t, name)?;
                let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for s in v {
                    let Some(le) = s.labels.get("le").and_then(parse_float) else { continue };
                    let mut k = drop_name(s.labels);
                    k.remove("le");
                    groups.entry(k).or_default().push((le, s.v));
                }
                Ok(Value::Vector(
                    groups.into_iter().map(|(labels, b)| Sample { labels, t, v: bucket_quantile(q, b) }).collect(),
                ))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(arg(0)?, t, name)?;
                v.sort_by(|a, b| {
                    let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
                    if name == "sort" { o } else { o.reverse() }
                });
                Ok(Value::Vector(v))
            }
            other => unsupported(format!("the function {other}()")),
        }
    }

    /// The range of a range-vector argument and where it starts: (range, start offset from
    /// t), where start = t - offset - range.
    fn range_of(&self, e: &Expr, name: &str) -> Result<(i64, i64), EvalError> {
        let ms = match e {
            Expr::MatrixSelector(ms) => ms,
            Expr::Subquery(_) => return unsupported("subqueries (expr[range:step])"),
            _ => return invalid(format!("{name}() needs a range vector selector such as metric[5m]")),
        };
        let range = dur_ms(&ms.range);
        Ok((range, offset_ms(&ms.vs.offset).saturating_add(range)))
    }

    /// Calls `f` with each series of the range-vector argument `e` that has samples in its
    /// window, one at a time (stale markers left out), so that a function over tens of
    /// thousands of series never holds all their samples at once. A matrix selector is read
    /// from the storage here; any other expression is evaluated whole.
    fn each_range(&self, e: &Expr, t: i64, name: &str, f: &mut EachSeries<'_>) -> Result<(), EvalError> {
        let Expr::MatrixSelector(ms) = e else {
            for s in self.matrix(e, t, name)? {
                f(s.labels, &s.points);
            }
            return Ok(());
        };
        if ms.vs.at.is_some() {
            return unsupported("the @ modifier");
        }
        let end = t.saturating_sub(offset_ms(&ms.vs.offset));
        let start = end.saturating_sub(dur_ms(&ms.range));
        let mut fresh = Vec::new();
        // The storage calls back for every series; once a limit is reached the rest are
        // passed over and the limit is reported.
        let mut stopped = None;
        self.storage.select_each(ms.vs.name.as_deref(), &ms.vs.matchers, start, end, &mut |labels, points| {
            if stopped.is_some() {
                return;
            }
            if let Err(e) = self.limits.take(points.len()).and_then(|()| self.limits.go_on()) {
                stopped = Some(e);
                return;
            }
            fresh.clear();
            fresh.extend(points.iter().copied().filter(|(_, v)| !is_stale(*v)));
            if !fresh.is_empty() {
                f(labels, &fresh);
            }
        });
        match stopped {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

enum Kind {
    Scalar,
    Vector,
}

/// A function of a series' samples in a window (the `*_over_time` family).
type WindowFn<'a> = dyn Fn(&[(i64, f64)]) -> Option<f64> + 'a;

fn compare(op: &str, x: f64, y: f64) -> bool {
    match op {
        "==" => x == y,
        "!=" => x != y,
        ">" => x > y,
        "<" => x < y,
        ">=" => x >= y,
        "<=" => x <= y,
        _ => false,
    }
}

fn arith(op: &str, x: f64, y: f64) -> Result<f64, EvalError> {
    Ok(match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        "%" => x % y,
        "^" => x.powf(y),
        "atan2" => x.atan2(y),
        other => return unsupported(format!("the {other} operator here")),
    })
}

/// Parses a float as Prometheus writes them (`+Inf`, `-Inf`, `NaN` included).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The φ-quantile of `vals` with linear interpolation, as Prometheus' `quantile`.
pub fn quantile(q: f64, vals: &[f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut v = vals.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0) as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let w = rank - rank.floor();
    v[lo] * (1.0 - w) + v[hi] * w
}

fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.len() < 2 || b.last().map(|x| x.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    // Buckets must be monotonic; fix small violations as Prometheus does.
    for i in 1..b.len() {
        if b[i].1 < b[i - 1].1 {
            b[i].1 = b[i - 1].1;
        }
    }
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let i = b.iter().position(|x| x.1 >= rank).unwrap_or(b.len() - 1);
    if i == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if i == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (start, prev_count) = if i == 0 { (0.0, 0.0) } else { (b[i - 1].0, b[i - 1].1) };
    let (end, count) = b[i];
    let in_bucket = count - prev_count;
    if in_bucket == 0.0 {
        return end;
    }
    start + (end - start) * ((rank - prev_count) / in_bucket)
}

fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let n = points.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in points {
        let x = (t - intercept_time) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
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
    let mut to_start = duration_to_start;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_interval * 1.1;
    let mut extrapolate_to = sampled;
    extrapolate_to += if to_start >= threshold { avg_interval / 2.0 } else { to_start };
    extrapolate_to += if duration_to_end >= threshold { avg_interval / 2.0 } else { duration_to_end };
    let factor = extrapolate_to / sampled;
    let mut r = result * factor;
    if is_rate {
        r /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(r)
}

/// The labels `absent()` returns: those of the selector's equality matchers.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut dup: HashSet<String> = HashSet::new();
    for m in &vs.matchers.matchers {
        if m.name == NAME {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && out.insert(m.name.clone(), m.value.clone()).is_some()
        {
            dup.insert(m.name.clone());
        }
    }
    for d in dup {
        out.remove(&d);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny in-memory store for tests.
    pub struct Mem(pub Vec<Series>);

    impl Storage for Mem {
        fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
            self.0
                .iter()
                .filter(|s| matches(&s.labels, name, m))
                .map(|s| Series {
                    labels: s.labels.clone(),
                    points: s.points.iter().copied().filter(|(t, _)| *t > start && *t <= end).collect(),
                })
                .filter(|s| !s.points.is_empty())
                .collect()
        }
    }

    fn series(name: &str, labels: &[(&str, &str)], points: &[(i64, f64)]) -> Series {
        let mut l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.insert(NAME, name);
        Series { labels: l, points: points.to_vec() }
    }

    fn vector(v: Value) -> Vec<(String, f64)> {
        let Value::Vector(v) = v else { panic!("not a vector: {v:?}") };
        let mut out: Vec<(String, f64)> = v.into_iter().map(|s| (format_labels(&s.labels), s.v)).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn q(store: &Mem, text: &str, t: i64) -> Result<Value, EvalError> {
        eval(&parse(text).unwrap(), store, t)
    }

    #[test]
    fn lookback_is_left_open_and_stale_markers_end_series() {
        let s = Mem(vec![
            series("up", &[("h", "a")], &[(0, 1.0)]),
            series("up", &[("h", "b")], &[(0, 1.0), (60_000, f64::from_bits(STALE_NAN_BITS))]),
        ]);
        assert_eq!(vector(q(&s, "up", 299_999).unwrap()).len(), 1, "b is stale");
        assert_eq!(vector(q(&s, "up", 300_000).unwrap()).len(), 0, "a sample exactly 5m old is no longer seen");
    }

    #[test]
    fn rate_handles_counter_resets_like_prometheus() {
        let pts: Vec<(i64, f64)> = [0.0, 100.0, 200.0, 300.0, 10.0, 110.0, 210.0, 310.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 30_000, *v))
            .collect();
        let s = Mem(vec![series("requests_total", &[("instance", "a")], &pts)]);
        // At 3m the window (1m, 3m] holds 300 10 110 210: a reset, extrapolated to the edges.
        let r = vector(q(&s, "rate(requests_total[2m])", 180_000).unwrap());
        assert_eq!(r.len(), 1);
        assert!((r[0].1 - 280.0 / 120.0).abs() < 1e-9, "{r:?}");
        let inc = vector(q(&s, "increase(requests_total[2m])", 180_000).unwrap());
        assert!((inc[0].1 - 280.0).abs() < 1e-9, "{inc:?}");
        // At 3m30s the window no longer holds the reset (the sample at 1m30s is on its open edge).
        let r = vector(q(&s, "rate(requests_total[2m])", 210_000).unwrap());
        assert!((r[0].1 - 310.0 / 120.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn matching_and_set_operators() {
        let s = Mem(vec![
            series("queue_depth", &[("instance", "a")], &[(0, 20.0)]),
            series("queue_depth", &[("instance", "b")], &[(0, 20.0)]),
            series("workers", &[("instance", "a"), ("pool", "p1")], &[(0, 3.0)]),
            series("workers", &[("instance", "b"), ("pool", "p1")], &[(0, 0.0)]),
            series("load", &[("job", "web"), ("instance", "1")], &[(0, 1.0)]),
            series("load", &[("job", "web"), ("instance", "2")], &[(0, 4.0)]),
        ]);
        let r = vector(q(&s, "(queue_depth > 10) and on(instance) (workers > 0)", 0).unwrap());
        assert_eq!(r, [("queue_depth{instance=\"a\"}".to_string(), 20.0)]);
        let r = vector(q(&s, "avg by (job) (load)", 0).unwrap());
        assert_eq!(r, [("{job=\"web\"}".to_string(), 2.5)]);
        let r = vector(q(&s, "workers * on(instance) group_left queue_depth", 0).unwrap());
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "{instance=\"a\", pool=\"p1\"}");
        let err = q(&s, "workers * on() queue_depth", 0).unwrap_err();
        assert!(err.to_string().contains("many-to-many matching is not allowed"), "{err}");
        assert!(
            q(&s, "rate(load[5m:1m])", 0).unwrap_err().to_string().contains("subqueries"),
            "unsupported constructs say so"
        );
    }

    /// Every function and aggregation of Prometheus 3 with a valid call: [`check`] accepts it
    /// exactly when evaluating it hits no unsupported construct, so a rule file that passes
    /// the check can always be evaluated (invariant 12).
    #[test]
    fn check_accepts_exactly_what_evaluates() {
        let calls = [
            "abs(m)",
            "absent(nothing)",
            "absent_over_time(nothing[5m])",
            "acos(m)",
            "acosh(m)",
            "asin(m)",
            "asinh(m)",
            "atan(m)",
            "atanh(m)",
            "avg_over_time(m[5m])",
            "ceil(m)",
            "changes(m[5m])",
            "clamp(m, 0, 1)",
            "clamp_max(m, 1)",
            "clamp_min(m, 0)",
            "cos(m)",
            "cosh(m)",
            "count_over_time(m[5m])",
            "day_of_month(m)",
            "day_of_month()",
            "day_of_week()",
            "day_of_year()",
            "days_in_month()",
            "deg(m)",
            "delta(m[5m])",
            "deriv(m[5m])",
            "double_exponential_smoothing(m[5m], 0.5, 0.5)",
            "exp(m)",
            "floor(m)",
            "histogram_avg(m)",
            "histogram_count(m)",
            "histogram_fraction(0, 1, m)",
            "histogram_quantile(0.5, m)",
            "histogram_stddev(m)",
            "histogram_stdvar(m)",
            "histogram_sum(m)",
            "holt_winters(m[5m], 0.5, 0.5)",
            "hour()",
            "hour(m)",
            "idelta(m[5m])",
            "increase(m[5m])",
            "info(m)",
            "irate(m[5m])",
            "label_join(m, \"a\", \",\", \"h\")",
            "label_replace(m, \"a\", \"$1\", \"h\", \"(.*)\")",
            "last_over_time(m[5m])",
            "ln(m)",
            "log10(m)",
            "log2(m)",
            "mad_over_time(m[5m])",
            "max_over_time(m[5m])",
            "min_over_time(m[5m])",
            "minute()",
            "month()",
            "pi()",
            "predict_linear(m[5m], 60)",
            "present_over_time(m[5m])",
            "quantile_over_time(0.5, m[5m])",
            "rad(m)",
            "rate(m[5m])",
            "resets(m[5m])",
            "round(m)",
            "round(m, 5)",
            "scalar(m)",
            "sgn(m)",
            "sin(m)",
            "sinh(m)",
            "sort(m)",
            "sort_by_label(m, \"h\")",
            "sort_by_label_desc(m, \"h\")",
            "sort_desc(m)",
            "sqrt(m)",
            "stddev_over_time(m[5m])",
            "stdvar_over_time(m[5m])",
            "sum_over_time(m[5m])",
            "tan(m)",
            "tanh(m)",
            "time()",
            "timestamp(m)",
            "vector(1)",
            "year()",
            "avg(m)",
            "bottomk(1, m)",
            "count(m)",
            "count_values(\"v\", m)",
            "group(m)",
            "limitk(1, m)",
            "limit_ratio(0.5, m)",
            "max(m)",
            "min(m)",
            "quantile(0.5, m)",
            "stddev(m)",
            "stdvar(m)",
            "sum by (h) (m)",
            "topk(1, m)",
            "m @ 100",
            "m[5m] @ start()",
            "rate(m[5m:1m])",
            "m offset -1m",
        ];
        let s = Mem(vec![series("m", &[("h", "a")], &[(30_000, 1.0), (60_000, 2.0)])]);
        let mut accepted = 0;
        for text in calls {
            // The parser refuses what it does not know; such a rule file never loads either.
            let Ok(expr) = parse(text) else { continue };
            let checked = check(&expr);
            let evaluated = eval(&expr, &s, 90_000);
            let unsupported = matches!(evaluated, Err(EvalError::Unsupported(_)));
            assert_eq!(checked.is_ok(), !unsupported, "{text}: check {checked:?}, evaluation {evaluated:?}");
            if let Err(EvalError::Unsupported(what)) = checked {
                assert!(!what.is_empty(), "{text}");
            } else {
                accepted += 1;
            }
        }
        assert!(accepted >= FUNCTIONS.len() + AGGREGATIONS.len() - 2, "only {accepted} accepted");
    }

    #[test]
    fn expressions_too_long_too_deep_or_with_too_many_operators_are_refused() {
        let abs = |n: usize| format!("{}vector(1){}", "abs(".repeat(n), ")".repeat(n));
        let e = parse(&abs(2000)).unwrap_err().to_string();
        assert!(e.contains("operators and parentheses; the limit is 2000") || e.contains("nested"), "{e}");
        assert!(parse(&abs(150)).unwrap_err().to_string().contains("nested 152 levels deep; the limit is 100"));
        let e = parse(&vec!["1"; 5000].join("+")).unwrap_err().to_string();
        assert!(e.contains("4999 operators"), "{e}");
        assert!(parse(&vec!["up"; 150].join(" or ")).unwrap_err().to_string().contains("levels deep"));
        assert!(parse(&"-".repeat(3000)).is_err());
        assert!(parse(&format!("up{{a=\"{}\"}}", "x".repeat(70_000))).unwrap_err().to_string().contains("bytes long"));
        // Operators inside strings do not count; real expressions pass.
        assert!(parse(&format!("up{{a=~\"{}\"}}", "(a|b)+".repeat(1000))).is_ok());
        assert_eq!(operators("rate(x[5m]) > 1 and on(a) y or z unless w"), 6);
        // Found by rules/tests/fuzz.rs: the parser itself panics on this one.
        assert!(parse("x offset -1e308").unwrap_err().to_string().contains("cannot be parsed"));
    }

    /// The deepest accepted expression of every recursive kind is evaluated on a thread with
    /// tokio's 2 MiB stack, in a debug build: the depth limit keeps every walk in bounds.
    #[test]
    fn the_deepest_accepted_expressions_evaluate_on_a_small_stack() {
        let d = MAX_DEPTH - 2;
        let cases = [
            format!("{}vector(1){}", "abs(".repeat(d), ")".repeat(d)),
            format!("{}m{}", "sum by (h) (".repeat(d), ")".repeat(d)),
            format!("{}m{}", "(".repeat(d), ")".repeat(d)),
            vec!["m"; d].join(" + on(h) "),
            vec!["m"; d].join(" or "),
            format!("{}m", "-".repeat(d)),
        ];
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let s = Mem(vec![series("m", &[("h", "a")], &[(0, 1.0)])]);
                for text in &cases {
                    let e = parse(text).unwrap_or_else(|e| panic!("{}: {e}", &text[..40.min(text.len())]));
                    assert!(depth(&e) >= MAX_DEPTH - 2, "{}: only {} deep", &text[..40], depth(&e));
                    check(&e).unwrap();
                    eval(&e, &s, 1000).unwrap();
                    let _ = format!("{e}");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn absent_and_histograms() {
        let s = Mem(vec![
            series("h_bucket", &[("le", "0.1")], &[(0, 10.0)]),
            series("h_bucket", &[("le", "1")], &[(0, 20.0)]),
            series("h_bucket", &[("le", "+Inf")], &[(0, 20.0)]),
        ]);
        assert_eq!(
            vector(q(&s, "absent(nothing{job=\"backup\",x=~\"y\"})", 0).unwrap()),
            [("{job=\"backup\"}".to_string(), 1.0)]
        );
        let r = vector(q(&s, "histogram_quantile(0.75, h_bucket)", 0).unwrap());
        assert!((r[0].1 - 0.55).abs() < 1e-9, "{r:?}");
    }
}

//! The evaluator's walk of an expression: selectors (instant and range, read from the
//! [`Storage`] within the [`Limits`]), unary and binary operators with vector matching and set
//! operators, and aggregations. Function calls are evaluated by `functions/` (its `call`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Expr, LabelModifier, Offset, SubqueryExpr, VectorMatchCardinality,
    VectorSelector,
};

use super::arith::{arith, compare, quantile};
use super::{
    DROPPED_NAME, EachSeries, EvalError, LOOKBACK_MS, Labels, Limits, NAME, Sample, Series, Storage, Value, drop_name,
    format_labels, invalid, is_stale, named, unsupported,
};

/// One evaluation: where samples come from and what it may use. Its walk is here; function
/// calls go to `call`, a method defined in `functions/`, so that this module need not name it.
pub(super) struct Evaluator<'a> {
    pub(super) storage: &'a dyn Storage,
    pub(super) limits: &'a Limits<'a>,
    /// The query's first and last evaluation times (ms): what `@ start()` and `@ end()` are.
    pub(super) start: i64,
    pub(super) end: i64,
}

/// The step of a subquery that gives none (`expr[5m:]`): Prometheus' default global
/// evaluation interval.
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Milliseconds since the epoch of a time the parser read (it may be before the epoch).
fn system_ms(t: &std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map(|v| -v).unwrap_or(i64::MIN),
    }
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

impl Evaluator<'_> {
    /// The time a selector (or subquery) with `at` and `offset` reads at, evaluated at `t`.
    pub(super) fn read_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => system_ms(st),
        };
        base.saturating_sub(offset_ms(offset))
    }

    /// The points of a subquery at `t`: its expression evaluated at every multiple of its step
    /// after `t - offset - range` up to `t - offset`, each result at its step's time.
    pub(super) fn subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Vec<Series>, EvalError> {
        let end = self.read_time(&sq.at, &sq.offset, t);
        let range = dur_ms(&sq.range);
        let step = sq.step.as_ref().map(dur_ms).unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
        if step <= 0 {
            return invalid("a subquery's step must be positive");
        }
        let mint = end.saturating_sub(range);
        // The first multiple of the step after mint (the range is left-open).
        let mut ts = (mint / step).saturating_mul(step);
        if ts <= mint {
            ts = ts.saturating_add(step);
        }
        if (end.saturating_sub(ts)) / step > 11_000 * 100 {
            return invalid("the subquery has too many steps; make its step longer");
        }
        let mut series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        let mut order: Vec<Labels> = Vec::new();
        while ts <= end {
            // Every step counts as a sample held, so nested subqueries over nothing still end.
            self.limits.take(1)?;
            self.limits.go_on()?;
            match self.eval(&sq.expr, ts)? {
                Value::Vector(v) => {
                    self.limits.take(v.len())?;
                    for s in v {
                        let points = series.entry(s.labels.clone()).or_insert_with(|| {
                            order.push(s.labels.clone());
                            Vec::new()
                        });
                        points.push((ts, s.v));
                    }
                }
                Value::Scalar(v) => {
                    self.limits.take(1)?;
                    let l = Labels::new();
                    let points = series.entry(l.clone()).or_insert_with(|| {
                        order.push(l);
                        Vec::new()
                    });
                    points.push((ts, v));
                }
                _ => return invalid("a subquery needs an instant vector expression"),
            }
            let Some(next) = ts.checked_add(step) else { break };
            ts = next;
        }
        Ok(order
            .into_iter()
            .map(|labels| {
                let points = series.remove(&labels).unwrap_or_default();
                Series { labels, points }
            })
            .collect())
    }

    pub(super) fn eval(&self, expr: &Expr, t: i64) -> Result<Value, EvalError> {
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
            Expr::Subquery(sq) => Ok(Value::Matrix(self.subquery(sq, t)?)),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Extension(_) => unsupported("extension expressions"),
        }
    }

    fn instant(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>, EvalError> {
        let end = self.read_time(&vs.at, &vs.offset, t);
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

    pub(super) fn vector(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Sample>, EvalError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => invalid(format!("{what} needs an instant vector")),
        }
    }

    pub(super) fn matrix(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Series>, EvalError> {
        match self.eval(e, t)? {
            Value::Matrix(m) => Ok(m),
            _ => invalid(format!("{what} needs a range vector")),
        }
    }

    pub(super) fn scalar(&self, e: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
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
                // `by (__name__)` also groups by a name an earlier function set aside.
                Some(LabelModifier::Include(ls)) => {
                    l.filtered(|k| named(&ls.labels, k) || (k == DROPPED_NAME && named(&ls.labels, NAME)))
                }
                Some(LabelModifier::Exclude(ls)) => {
                    l.filtered(|k| !named(&ls.labels, k) && k != NAME && k != DROPPED_NAME)
                }
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
        if op == "count_values" {
            let Some(Value::String(label)) = &param else {
                return invalid("count_values needs a label name as a string parameter");
            };
            if label.is_empty() || label.starts_with("__") && label != NAME {
                return invalid(format!("invalid label name {label:?}"));
            }
            return Ok(Value::Vector(self.count_values(label, &a.modifier, &groups, t)));
        }
        for (labels, samples) in groups {
            let vals: Vec<f64> = samples.iter().map(|s| s.v).collect();
            let n = vals.len() as f64;
            let v = match op.as_str() {
                "sum" => super::arith::kahan_sum(&vals),
                "avg" => super::arith::mean(&vals),
                "min" => vals.iter().copied().fold(f64::NAN, |m, x| if m.is_nan() || x < m { x } else { m }),
                "max" => vals.iter().copied().fold(f64::NAN, |m, x| if m.is_nan() || x > m { x } else { m }),
                "count" => n,
                "group" => 1.0,
                "stddev" | "stdvar" => {
                    // Welford's running variance, as Prometheus' aggregation computes it.
                    let (mut count, mut mean, mut value) = (1.0, vals[0], 0.0);
                    if !vals[0].is_finite() {
                        value = f64::NAN;
                    }
                    for &x in &vals[1..] {
                        count += 1.0;
                        let delta = x - mean;
                        mean += delta / count;
                        value += delta * (x - mean);
                    }
                    if op == "stddev" { (value / count).sqrt() } else { value / count }
                }
                "limitk" => {
                    let k = num_param(&op)?;
                    if k < 1.0 || k.is_nan() {
                        continue;
                    }
                    out.extend(samples.into_iter().take(k.min(1e9) as usize));
                    continue;
                }
                "limit_ratio" => {
                    let r = num_param(&op)?.clamp(-1.0, 1.0);
                    out.extend(samples.into_iter().filter(|s| super::arith::ratio_pick(&s.labels, r)));
                    continue;
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

    /// `count_values("label", v)`: per group, how many samples have each value, the value in
    /// `label` (written as Go's `FormatFloat(v, 'f', -1, 64)`).
    fn count_values(
        &self,
        label: &str,
        modifier: &Option<LabelModifier>,
        groups: &[(Labels, Vec<Sample>)],
        t: i64,
    ) -> Vec<Sample> {
        let mut counts: Vec<(Labels, f64)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for s in groups.iter().flat_map(|(_, g)| g) {
            let mut l = s.labels.clone();
            l.insert(label.to_string(), super::arith::go_float(s.v));
            let key = match modifier {
                Some(LabelModifier::Include(ls)) => l.filtered(|k| named(&ls.labels, k) || k == label),
                Some(LabelModifier::Exclude(ls)) => {
                    l.filtered(|k| (!named(&ls.labels, k) && k != NAME && k != DROPPED_NAME) || k == label)
                }
                None => l.filtered(|k| k == label),
            };
            match index.get(&key) {
                Some(&i) => counts[i].1 += 1.0,
                None => {
                    index.insert(key.clone(), counts.len());
                    counts.push((key, 1.0));
                }
            }
        }
        counts.into_iter().map(|(labels, v)| Sample { labels, t, v }).collect()
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
                Some(LabelModifier::Exclude(ls)) => {
                    labels.filtered(|k| !named(&ls.labels, k) && k != NAME && k != DROPPED_NAME)
                }
                None => super::strip_dropped(drop_name(labels.clone())),
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
                labels = drop_name(labels);
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

    /// The window `(start, end]` a range-vector argument reads when evaluated at `t`: a range
    /// selector's or a subquery's, after its `@` and offset.
    pub(super) fn window(&self, e: &Expr, t: i64, name: &str) -> Result<(i64, i64), EvalError> {
        let (end, range) = match e {
            Expr::MatrixSelector(ms) => (self.read_time(&ms.vs.at, &ms.vs.offset, t), dur_ms(&ms.range)),
            Expr::Subquery(sq) => (self.read_time(&sq.at, &sq.offset, t), dur_ms(&sq.range)),
            Expr::Paren(p) => return self.window(&p.expr, t, name),
            _ => return invalid(format!("{name}() needs a range vector selector such as metric[5m]")),
        };
        Ok((end.saturating_sub(range), end))
    }

    /// Calls `f` with each series of the range-vector argument `e` that has samples in its
    /// window, one at a time (stale markers left out), so that a function over tens of
    /// thousands of series never holds all their samples at once. A matrix selector is read
    /// from the storage here; any other expression is evaluated whole.
    pub(super) fn each_range(&self, e: &Expr, t: i64, name: &str, f: &mut EachSeries<'_>) -> Result<(), EvalError> {
        let Expr::MatrixSelector(ms) = e else {
            for s in self.matrix(e, t, name)? {
                let fresh: Vec<(i64, f64)> = s.points.iter().copied().filter(|(_, v)| !is_stale(*v)).collect();
                if !fresh.is_empty() {
                    f(s.labels, &fresh);
                }
            }
            return Ok(());
        };
        let end = self.read_time(&ms.vs.at, &ms.vs.offset, t);
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

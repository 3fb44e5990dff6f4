//! Rule unit tests in promtool's format (`promtool test rules`): input series written as
//! `a+bxn`, `a-bxn`, `axn`, `_` and `stale`; `alert_rule_test` comparing the firing alerts of a
//! rule at a time; `promql_expr_test` comparing an expression's samples. The same file passes
//! or fails here as it does with promtool.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::label::Matchers;
use serde::{Deserialize, Serialize};

use crate::promql::{self, Labels, NAME, STALE_NAN_BITS, Series, Storage, Value};
use crate::rules::{self, AlertState, Appender, Group, Rule};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    evaluation_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    group_eval_order: Vec<String>,
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_url: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    values: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: String,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    labels: String,
    value: serde_yaml::Value,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Failures, each a readable block.
    pub failures: Vec<String>,
}

/// Expands promtool's value notation into one optional value per step.
pub fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for tok in text.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(f64::from_bits(STALE_NAN_BITS)));
            continue;
        }
        if let Some((base, times)) = tok.split_once('x') {
            let n: usize = times.parse().map_err(|_| format!("invalid repetition in \"{tok}\""))?;
            if base == "_" {
                // A missing sample cannot increment: `_x3` is `_ _ _` (promtool's notation).
                out.extend(std::iter::repeat_n(None, n));
                continue;
            }
            // `a+b` or `a-b`: find the operator after the first character (a may be negative).
            let op = base[1..].find(['+', '-']).map(|i| i + 1);
            let (start, step) = match op {
                Some(i) => {
                    let a = promql::parse_float(&base[..i]).ok_or_else(|| format!("invalid number in \"{tok}\""))?;
                    let b =
                        promql::parse_float(&base[i + 1..]).ok_or_else(|| format!("invalid number in \"{tok}\""))?;
                    (a, if &base[i..i + 1] == "-" { -b } else { b })
                }
                None => (promql::parse_float(base).ok_or_else(|| format!("invalid number in \"{tok}\""))?, 0.0),
            };
            for k in 0..=n {
                out.push(Some(start + step * k as f64));
            }
            continue;
        }
        out.push(Some(promql::parse_float(tok).ok_or_else(|| format!("invalid value \"{tok}\""))?));
    }
    Ok(out)
}

/// Series for a unit test, plus what recording rules add.
#[derive(Debug, Default)]
struct TestStore {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
}

impl Storage for TestStore {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.series
            .iter()
            .filter(|(l, _)| promql::matches(l, name, m))
            .map(|(l, p)| Series {
                labels: l.clone(),
                points: p.iter().copied().filter(|(t, _)| *t > start && *t <= end).collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    }
}

impl Appender for TestStore {
    fn append(&mut self, labels: Labels, t: i64, v: f64) {
        let pts = self.series.entry(labels).or_default();
        pts.retain(|(x, _)| *x != t);
        pts.push((t, v));
        pts.sort_by_key(|(x, _)| *x);
    }
}

/// Parses `name{a="b"}` into a label set.
fn parse_series(s: &str) -> Result<Labels, String> {
    let expr = promql::parse(s).map_err(|e| format!("invalid series \"{s}\": {e}"))?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else { return Err(format!("\"{s}\" is not a series")) };
    let mut l = Labels::new();
    if let Some(n) = vs.name {
        l.insert(NAME, n);
    }
    for m in vs.matchers.matchers {
        l.insert(m.name, m.value);
    }
    Ok(l)
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// An alert as a test compares it: labels and annotations.
type AlertView = (Labels, BTreeMap<String, String>);

fn fmt_alerts(list: &[AlertView]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(l, a)| {
            let labels: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let ann: Vec<String> = a.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{{labels: {{{}}}, annotations: {{{}}}}}", labels.join(", "), ann.join(", "))
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn values_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    // promtool compares with a small epsilon, so float noise in arithmetic does not fail tests.
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// Runs one promtool test file.
pub fn run_file(path: &Path) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let file: TestFile = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let eval_interval = match &file.evaluation_interval {
        Some(s) => rules::parse_duration(s).map_err(|e| format!("{}: evaluation_interval: {e}", path.display()))?,
        None => Duration::from_secs(60),
    };
    if !file.group_eval_order.is_empty() {
        return Err(format!("{}: group_eval_order is not supported by fleet", path.display()));
    }
    let rule_paths: Vec<PathBuf> = file.rule_files.iter().map(|f| dir.join(f)).collect();
    // Validate the rule files once, so a broken one is reported with its name.
    for p in &rule_paths {
        rules::load_file(p).map_err(|e| e.to_string())?;
    }
    let mut outcome = Outcome::default();
    for (i, tg) in file.tests.iter().enumerate() {
        let name = tg.name.clone().unwrap_or_else(|| format!("test {}", i + 1));
        if tg.external_url.is_some() {
            return Err(format!("{}: {name}: external_url is not supported by fleet", path.display()));
        }
        let mut groups: Vec<Group> = Vec::new();
        for p in &rule_paths {
            groups.extend(rules::load_file(p).map_err(|e| e.to_string())?);
        }
        run_group(tg, &name, &mut groups, eval_interval, &mut outcome)?;
    }
    Ok(outcome)
}

/// The alerts that fire at each alert test time of `tg`, with the history the test built.
type AlertsAt = BTreeMap<i64, BTreeMap<String, Vec<AlertView>>>;

/// Builds `tg`'s history and evaluates `groups` over it as promtool does: the store, the
/// firing alerts at each alert test's time, and the times of the alert and expression tests.
fn evaluate_test(
    tg: &TestGroup,
    name: &str,
    groups: &mut [Group],
    eval_interval: Duration,
) -> Result<(TestStore, AlertsAt, Vec<i64>, Vec<i64>), String> {
    let interval = match &tg.interval {
        Some(s) => rules::parse_duration(s).map_err(|e| format!("{name}: interval: {e}"))?,
        None => eval_interval,
    };
    let mut store = TestStore::default();
    for s in &tg.input_series {
        let labels = parse_series(&s.series).map_err(|e| format!("{name}: {e}"))?;
        let values = expand_values(&s.values).map_err(|e| format!("{name}: series {}: {e}", s.series))?;
        let pts = store.series.entry(labels).or_default();
        for (k, v) in values.into_iter().enumerate() {
            if let Some(v) = v {
                pts.push((k as i64 * ms(interval), v));
            }
        }
    }
    let mut alert_times: Vec<i64> = Vec::new();
    for a in &tg.alert_rule_test {
        alert_times.push(ms(rules::parse_duration(&a.eval_time).map_err(|e| format!("{name}: eval_time: {e}"))?));
    }
    let mut expr_times = Vec::new();
    for e in &tg.promql_expr_test {
        expr_times.push(ms(rules::parse_duration(&e.eval_time).map_err(|e| format!("{name}: eval_time: {e}"))?));
    }
    let maxt = alert_times.iter().chain(expr_times.iter()).copied().max().unwrap_or(0);
    // Alerts of every rule at each alert test time.
    let mut got_at: AlertsAt = BTreeMap::new();
    let step = ms(eval_interval).max(1);
    let mut t = 0;
    while t <= maxt {
        for g in groups.iter_mut() {
            let gi = g.interval.map(ms).unwrap_or(step).max(1);
            if t % gi == 0 {
                g.eval(&mut store, t, &tg.external_labels);
            }
        }
        // As promtool: an alert test at time T sees the evaluation at the last step at or
        // before T.
        for &at in alert_times.iter().filter(|&&at| at >= t && at < t + step) {
            let snapshot = got_at.entry(at).or_default();
            if !snapshot.is_empty() {
                continue;
            }
            for g in groups.iter() {
                for r in &g.rules {
                    if let Rule::Alert(a) = r {
                        let list = snapshot.entry(a.name.clone()).or_default();
                        for al in a.alerts(AlertState::Firing) {
                            list.push((al.labels.clone(), al.annotations.clone()));
                        }
                    }
                }
            }
        }
        t += step;
    }
    Ok((store, got_at, alert_times, expr_times))
}

fn run_group(
    tg: &TestGroup,
    name: &str,
    groups: &mut [Group],
    eval_interval: Duration,
    outcome: &mut Outcome,
) -> Result<(), String> {
    let (store, got_at, alert_times, expr_times) = evaluate_test(tg, name, groups, eval_interval)?;
    for (a, &at) in tg.alert_rule_test.iter().zip(alert_times.iter()) {
        let mut exp: Vec<(Labels, BTreeMap<String, String>)> = a
            .exp_alerts
            .iter()
            .map(|e| {
                let mut l: Labels = e.exp_labels.clone().into_iter().collect();
                l.insert("alertname", a.alertname.clone());
                (l, e.exp_annotations.clone())
            })
            .collect();
        let mut got = got_at.get(&at).and_then(|m| m.get(&a.alertname)).cloned().unwrap_or_default();
        exp.sort();
        got.sort();
        if exp != got {
            let mut msg = String::new();
            let _ = write!(
                msg,
                "{name}: alertname: {}, time: {},\n    expected: {},\n         got: {}",
                a.alertname,
                a.eval_time,
                fmt_alerts(&exp),
                fmt_alerts(&got)
            );
            outcome.failures.push(msg);
        }
    }
    for (e, &at) in tg.promql_expr_test.iter().zip(expr_times.iter()) {
        let expr = promql::parse(&e.expr).map_err(|x| format!("{name}: expr \"{}\": {x}", e.expr))?;
        let got: Vec<(Labels, f64)> = match promql::eval(&expr, &store, at) {
            Ok(Value::Vector(v)) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
            Ok(Value::Scalar(x)) => vec![(Labels::new(), x)],
            Ok(_) => {
                outcome.failures.push(format!(
                    "{name}: expr: {}, time: {}: the expression is not an instant vector",
                    crate::template::go_quote(&e.expr),
                    e.eval_time
                ));
                continue;
            }
            Err(err) => {
                outcome.failures.push(format!(
                    "{name}: expr: {}, time: {}: {err}",
                    crate::template::go_quote(&e.expr),
                    e.eval_time
                ));
                continue;
            }
        };
        let mut exp: Vec<(Labels, f64)> = Vec::new();
        for s in &e.exp_samples {
            let l = if s.labels.trim().is_empty() {
                Labels::new()
            } else {
                parse_series(&s.labels).map_err(|x| format!("{name}: {x}"))?
            };
            let v = match &s.value {
                serde_yaml::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                serde_yaml::Value::String(x) => {
                    promql::parse_float(x).ok_or_else(|| format!("{name}: invalid value {x}"))?
                }
                _ => return Err(format!("{name}: invalid expected value")),
            };
            exp.push((l, v));
        }
        let mut g = got.clone();
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        g.sort_by(|a, b| a.0.cmp(&b.0));
        let same = exp.len() == g.len() && exp.iter().zip(g.iter()).all(|(x, y)| x.0 == y.0 && values_equal(x.1, y.1));
        if !same {
            let show = |v: &[(Labels, f64)]| {
                let items: Vec<String> = v
                    .iter()
                    .map(|(l, x)| format!("{} {}", promql::format_labels(l), crate::template::go_float(*x)))
                    .collect();
                format!("[{}]", items.join(", "))
            };
            outcome.failures.push(format!(
                "{name}: expr: {}, time: {},\n    expected: {},\n         got: {}",
                crate::template::go_quote(&e.expr),
                e.eval_time,
                show(&exp),
                show(&g)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_notation() {
        assert_eq!(expand_values("1 2 _ 3").unwrap(), [Some(1.0), Some(2.0), None, Some(3.0)]);
        assert_eq!(expand_values("1+2x2").unwrap(), [Some(1.0), Some(3.0), Some(5.0)]);
        assert_eq!(expand_values("10-1x2").unwrap(), [Some(10.0), Some(9.0), Some(8.0)]);
        assert_eq!(expand_values("-1+1x1").unwrap(), [Some(-1.0), Some(0.0)]);
        assert_eq!(expand_values("1x3").unwrap().len(), 4);
        assert_eq!(expand_values("_x2").unwrap(), [None, None], "a missing sample does not repeat: _x2 is _ _");
        assert!(promql::is_stale(expand_values("stale").unwrap()[0].unwrap()));
    }

    /// fleet's own corpus, in process (cli/tests/rules.rs also runs it through fleetctl and
    /// promtool, and mutates it).
    #[test]
    fn the_corpus_passes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for f in ["alerting.rules.test.yml", "promql.rules.test.yml"] {
            let o = run_file(&dir.join(f)).unwrap();
            assert!(o.failures.is_empty(), "{f}:\n{}", o.failures.join("\n"));
        }
    }

    #[test]
    fn a_template_that_fails_on_its_data_still_fires_the_alert_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.yml"),
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        annotations:\n          broken: '{{ humanize 1 2 }}'\n          fine: '{{ $labels.job }}'\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("t.yml"),
            "rule_files: [r.yml]\ntests:\n  - input_series:\n      - series: 'up{job=\"db\"}'\n        values: '0'\n    alert_rule_test:\n      - eval_time: 0m\n        alertname: A\n        exp_alerts: [{exp_labels: {job: db}, exp_annotations: {fine: db}}]\n",
        )
        .unwrap();
        let out = run_file(&dir.path().join("t.yml")).unwrap();
        let failure = out.failures.join("\n");
        assert!(failure.contains("broken=\"<error expanding template: "), "{failure}");
        assert!(failure.contains("wrong number of args for humanize"), "{failure}");
        assert!(failure.contains("fine=\"db\""), "{failure}");
    }
}

/// What evaluating a rule file over a made-up history showed (`fleetctl rules check --eval`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evaluated {
    /// Rules evaluated.
    pub rules: usize,
    /// Rules whose last evaluation returned at least one series (recording) or alert.
    pub returned: usize,
    /// `group/rule: error` of every rule whose evaluation failed.
    pub errors: Vec<String>,
}

/// Evaluates every rule of `groups` as a coordinator would, over a history made up for them:
/// for every selector in the rules, one series that it selects (its name and equality
/// matchers, a value for labels that must not be empty or must match a plain regular
/// expression), sampled every 15 s for two hours and rising by one each time, like a counter.
/// The groups are evaluated at 20 consecutive intervals ending at that history's end, so that
/// `for` clauses, recording rules read by later rules and every function run. What fails is
/// listed; an expression that cannot be evaluated at all names its problem.
pub fn evaluate_groups(groups: &mut [Group]) -> Evaluated {
    let mut store = TestStore::default();
    let end: i64 = 2 * 3600 * 1000;
    for g in groups.iter() {
        for r in &g.rules {
            let expr = match r {
                Rule::Alert(a) => &a.expr,
                Rule::Record(rr) => &rr.expr,
            };
            let mut found = Vec::new();
            selectors(expr, &mut found, 0);
            for labels in found {
                let points: Vec<(i64, f64)> = (0..=end / 15_000).map(|i| (i * 15_000, (i + 1) as f64)).collect();
                store.series.entry(labels).or_insert(points);
            }
        }
    }
    let mut out = Evaluated::default();
    let external = BTreeMap::new();
    for g in groups.iter_mut() {
        let step = g.interval.unwrap_or(Duration::from_secs(60)).as_millis().max(1) as i64;
        for i in (0..20).rev() {
            g.eval(&mut store, end - i * step, &external);
        }
        for r in &g.rules {
            out.rules += 1;
            let (name, err, returned) = match r {
                Rule::Alert(a) => (&a.name, &a.last_error, !a.active.is_empty()),
                Rule::Record(rr) => (&rr.name, &rr.last_error, !rr.written.is_empty()),
            };
            if let Some(e) = err {
                out.errors.push(format!("{}/{name}: {e}", g.name));
            } else if returned {
                out.returned += 1;
            }
        }
    }
    out
}

/// The label set of one series that each selector in `expr` selects.
fn selectors(expr: &promql_parser::parser::Expr, out: &mut Vec<Labels>, depth: usize) {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::Expr;
    if depth > 200 {
        return;
    }
    let mut selector = |vs: &promql_parser::parser::VectorSelector| {
        let mut l = Labels::new();
        if let Some(n) = &vs.name {
            l.insert(NAME, n.clone());
        }
        for m in &vs.matchers.matchers {
            match &m.op {
                MatchOp::Equal if !m.value.is_empty() => {
                    l.insert(m.name.as_str(), m.value.clone());
                }
                MatchOp::NotEqual if m.value.is_empty() => {
                    l.insert(m.name.as_str(), "x".to_string());
                }
                MatchOp::Re(re) => {
                    // The first alternative of a plain alternation (`a|b`), else any value it takes.
                    let first = m.value.split('|').next().unwrap_or_default().to_string();
                    let plain = first.chars().all(|c| c.is_ascii_alphanumeric() || "_-:/.".contains(c));
                    if plain && re.is_match(&first) && !first.is_empty() {
                        l.insert(m.name.as_str(), first);
                    } else if !re.is_match("") {
                        if let Some(v) = ["x", "0", "a", "node", "true"].iter().find(|v| re.is_match(v)) {
                            l.insert(m.name.as_str(), v.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if !l.is_empty() {
            out.push(l);
        }
    };
    match expr {
        Expr::VectorSelector(vs) => selector(vs),
        Expr::MatrixSelector(ms) => selector(&ms.vs),
        Expr::Paren(p) => selectors(&p.expr, out, depth + 1),
        Expr::Unary(u) => selectors(&u.expr, out, depth + 1),
        Expr::Subquery(s) => selectors(&s.expr, out, depth + 1),
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                selectors(p, out, depth + 1);
            }
            selectors(&a.expr, out, depth + 1);
        }
        Expr::Binary(b) => {
            selectors(&b.lhs, out, depth + 1);
            selectors(&b.rhs, out, depth + 1);
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out, depth + 1)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// A test file, in promtool's format, of the alerts of `rule_file` over the made-up history
/// of [`evaluate_groups`] (one series per selector, every 17 s for two hours, rising by one),
/// with as expectations what fleet makes of it at the end: the firing alerts of every alerting
/// rule, with their labels and annotations as fleet's templates render them. promtool passing
/// it shows that Prometheus evaluates, labels and renders those alerts byte for byte alike
/// (`fleetctl rules check --emit-test`, scripts/compat.sh).
pub fn differential_test(rule_file: &Path) -> Result<String, String> {
    let mut groups = rules::load_file(rule_file).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    let mut alertnames: Vec<String> = Vec::new();
    for g in &groups {
        for r in &g.rules {
            let expr = match r {
                Rule::Alert(a) => {
                    if !alertnames.contains(&a.name) {
                        alertnames.push(a.name.clone());
                    }
                    &a.expr
                }
                Rule::Record(rr) => &rr.expr,
            };
            selectors(expr, &mut found, 0);
        }
    }
    // What the rules record comes from them, not from the input (promtool refuses a rule's
    // sample where the input already has one).
    let recorded: Vec<&str> = groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| if let Rule::Record(rr) = r { Some(rr.name.as_str()) } else { None })
        .collect();
    found.retain(|l| !l.get(NAME).is_some_and(|n| recorded.contains(&n)));
    found.sort();
    found.dedup();
    // 17 s, so that samples seldom fall exactly on a window's edge at the minute-aligned
    // evaluations, where Prometheus 2 (Debian's promtool) and 3 differ.
    let end = "2h";
    let samples = 2 * 3600 / 17 + 2;
    let mut tg = TestGroup {
        interval: Some("17s".into()),
        input_series: found
            .iter()
            .map(|l| InputSeries { series: promql::format_labels(l), values: format!("1+1x{samples}") })
            .collect(),
        alert_rule_test: alertnames
            .iter()
            .map(|a| AlertTest { eval_time: end.into(), alertname: a.clone(), exp_alerts: Vec::new() })
            .collect(),
        promql_expr_test: Vec::new(),
        external_labels: BTreeMap::new(),
        external_url: None,
        name: Some("fleet's evaluation of a made-up history".into()),
    };
    let (_, got_at, _, _) = evaluate_test(&tg, "differential", &mut groups, Duration::from_secs(60))?;
    let at = 2 * 3600 * 1000;
    for a in &mut tg.alert_rule_test {
        let got = got_at.get(&at).and_then(|m| m.get(&a.alertname)).cloned().unwrap_or_default();
        a.exp_alerts = got
            .into_iter()
            .map(|(labels, exp_annotations)| ExpAlert {
                exp_labels: labels
                    .iter()
                    .filter(|(k, _)| *k != "alertname")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                exp_annotations,
            })
            .collect();
    }
    let abs = std::fs::canonicalize(rule_file).map_err(|e| format!("{}: {e}", rule_file.display()))?;
    let file = TestFile {
        rule_files: vec![abs.display().to_string()],
        evaluation_interval: Some("1m".into()),
        group_eval_order: Vec::new(),
        tests: vec![tg],
    };
    serde_yaml::to_string(&file).map_err(|e| e.to_string())
}

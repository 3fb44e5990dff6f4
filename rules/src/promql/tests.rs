//! Unit tests of the PromQL engine: lookback and staleness, rates, vector matching, what
//! `check` accepts against what evaluates, the bounds, and absent and histograms.

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
        q(&s, "info(load)", 0).unwrap_err().to_string().contains("the function info()"),
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

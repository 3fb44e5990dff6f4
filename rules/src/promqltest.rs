//! Prometheus' PromQL test files (its `promqltest` format), run through fleet's engine
//! ([`crate::promql`]): how fleet shows that it evaluates PromQL as Prometheus does, case by
//! case. `fleetctl rules promqltest PATH...` runs files or directories of them; fleet's own
//! cases are in rules/tests/promqltest/.
//!
//! The format: `load <interval>` followed by series in promtool's notation (`m{a="b"} 0+10x10`),
//! `clear`, and `eval instant at <time> <expr>` or `eval range from <t> to <t> step <d> <expr>`
//! followed by the expected result (a scalar, or series with one value each, or one value per
//! step), with the variants `eval_fail` (the query must fail), `eval_ordered` (the order
//! matters), `eval_warn`/`eval_info` and `expect ...` lines. Times are durations since the
//! Unix epoch. Values compare with Prometheus' relative tolerance of 1e-6, and NaN equals NaN.
//!
//! What fleet cannot answer by design is skipped, with the reason: native histograms (`{{...}}`
//! values, `load_with_nhcb`), which fleet's float-only history does not hold. Warnings and
//! infos (Prometheus' annotations) are not produced by fleet's engine: for `eval_warn`,
//! `eval_info` and `expect warn|info` the values are checked and the annotation is counted as
//! unchecked. A failing query passes an `eval_fail` case whatever its message says: fleet's
//! error texts are its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::labels::Labels;
use crate::promql::{self, NAME, Series, Storage, Value};

/// Prometheus' relative tolerance for sample values.
const EPSILON: f64 = 0.000_001;
/// The most files one run reads.
const MAX_FILES: usize = 10_000;
/// The longest file read, in bytes.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most points a range evaluation may have.
const MAX_STEPS: i64 = 11_000;

/// One case (an `eval` command) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The file.
    pub file: String,
    /// The line of the `eval` command (1-based).
    pub line: usize,
    /// The expression.
    pub expr: String,
    /// Why it failed or was skipped.
    pub reason: String,
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Cases whose result matched.
    pub passed: usize,
    /// Cases whose result did not match, or that could not be run.
    pub failed: Vec<Case>,
    /// Cases left out, with why (native histograms).
    pub skipped: Vec<Case>,
    /// Passed cases that also expected a warning or info annotation, which was not checked.
    pub annotations_unchecked: usize,
}

impl Summary {
    fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed.extend(other.failed);
        self.skipped.extend(other.skipped);
        self.annotations_unchecked += other.annotations_unchecked;
    }
}

/// Runs every `*.test` file of `paths` (files, or directories read in name order).
pub fn run_paths(paths: &[PathBuf]) -> Result<Summary, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: cannot read the directory: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "test"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
        if files.len() > MAX_FILES {
            return Err(format!("more than {MAX_FILES} test files"));
        }
    }
    if files.is_empty() {
        return Err("no .test files found".into());
    }
    let mut all = Summary::default();
    for f in files {
        all.add(run_file(&f)?);
    }
    Ok(all)
}

/// Runs one test file.
pub fn run_file(path: &Path) -> Result<Summary, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!("{}: {size} bytes; the most read is {MAX_FILE_BYTES}", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(run_text(&name, &text))
}

/// The test store: series in memory, loaded by `load` and emptied by `clear`.
#[derive(Debug, Default)]
struct Store {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
    /// Series with native histogram samples, which are not loaded: a case that selects one is
    /// skipped.
    histograms: Vec<Labels>,
}

impl Store {
    /// Whether `expr` selects a series that has native histogram samples.
    fn selects_histograms(&self, expr: &promql_parser::parser::Expr) -> bool {
        if self.histograms.is_empty() {
            return false;
        }
        let mut found = false;
        selectors(expr, &mut |vs| {
            found |= self.histograms.iter().any(|l| promql::matches(l, vs.name.as_deref(), &vs.matchers));
        });
        found
    }
}

/// Calls `f` with every vector selector of `expr` (also those of range selectors).
fn selectors(expr: &promql_parser::parser::Expr, f: &mut dyn FnMut(&promql_parser::parser::VectorSelector)) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&ms.vs),
        Expr::Paren(p) => selectors(&p.expr, f),
        Expr::Unary(u) => selectors(&u.expr, f),
        Expr::Subquery(s) => selectors(&s.expr, f),
        Expr::Binary(b) => {
            selectors(&b.lhs, f);
            selectors(&b.rhs, f);
        }
        Expr::Aggregate(a) => {
            selectors(&a.expr, f);
            if let Some(p) = &a.param {
                selectors(p, f);
            }
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, f)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

impl Storage for Store {
    fn select(&self, name: Option<&str>, m: &promql_parser::label::Matchers, start: i64, end: i64) -> Vec<Series> {
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

/// What an `eval` expects.
#[derive(Debug, Default)]
struct Expected {
    fail: bool,
    ordered: bool,
    annotations: bool,
    scalar: Option<f64>,
    /// Series in the order written, each with its values (None: omitted).
    series: Vec<(Labels, Vec<Option<f64>>)>,
    histograms: bool,
}

/// Runs the text of one test file, `name` naming it in the cases.
pub fn run_text(name: &str, text: &str) -> Summary {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') { String::new() } else { l.to_string() }
        })
        .collect();
    let mut summary = Summary::default();
    let mut store = Store::default();
    let mut i = 0;
    let case =
        |line: usize, expr: &str, reason: String| Case { file: name.to_string(), line, expr: expr.to_string(), reason };
    while i < lines.len() {
        let l = &lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let word = l.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
        if word == "clear" {
            store = Store::default();
            i += 1;
        } else if word.starts_with("load") {
            let start = i;
            let block_end = lines[i + 1..].iter().position(String::is_empty).map_or(lines.len(), |p| i + 1 + p);
            if let Err(e) = load(&lines[start..block_end], &mut store) {
                summary.failed.push(case(start + 1, l, format!("cannot load: {e}")));
            }
            i = block_end;
        } else if word.starts_with("eval") {
            let start = i;
            let block_end = lines[i + 1..].iter().position(String::is_empty).map_or(lines.len(), |p| i + 1 + p);
            let block = &lines[start..block_end];
            i = block_end;
            let cmd = match parse_eval(block) {
                Ok(c) => c,
                Err(e) => {
                    summary.failed.push(case(start + 1, l, format!("cannot read the case: {e}")));
                    continue;
                }
            };
            let selects = promql::parse(&cmd.expr).is_ok_and(|e| store.selects_histograms(&e));
            if selects || cmd.expected.histograms {
                summary.skipped.push(case(start + 1, &cmd.expr, "native histograms".into()));
                continue;
            }
            match run_eval(&cmd, &store) {
                Ok(()) => {
                    summary.passed += 1;
                    if cmd.expected.annotations {
                        summary.annotations_unchecked += 1;
                    }
                }
                Err(e) => summary.failed.push(case(start + 1, &cmd.expr, e)),
            }
        } else {
            summary.failed.push(case(i + 1, l, format!("unknown command \"{word}\"")));
            i += 1;
        }
    }
    summary
}

/// A Prometheus duration (`5m`, `1h30m`, `0`, `10s`, `100ms`) in milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut total: i64 = 0;
    let mut rest = body;
    if rest.is_empty() {
        return Err(format!("invalid duration \"{s}\""));
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration \"{s}\""));
        }
        let n: i64 = rest[..digits].parse().map_err(|_| format!("invalid duration \"{s}\""))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(format!("invalid unit \"{unit}\" in duration \"{s}\"")),
        };
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration \"{s}\" overflows"))?;
    }
    Ok(if negative { -total } else { total })
}

/// Splits a series line into its label part and its values: `m{a="b c"} 1 2` has the labels
/// `m{a="b c"}` (quotes may hold spaces) and the values `1 2`.
fn split_series(line: &str) -> (&str, &str) {
    let mut in_quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0;
    for (i, c) in line.char_indices() {
        if let Some(q) = in_quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                in_quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => in_quote = Some(c),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (&line[..=i], line[i + 1..].trim());
                }
            }
            c if c.is_whitespace() && depth == 0 => return (&line[..i], line[i..].trim()),
            _ => {}
        }
    }
    (line, "")
}

/// Reads a quoted string (Go's escapes) at the start of `s`; the string and the rest.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let Some((_, q)) = chars.next() else { return Err("expected a quoted string".into()) };
    if !matches!(q, '"' | '\'' | '`') {
        return Err(format!("expected a quoted string at \"{s}\""));
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == q {
            return Ok((out, &s[i + c.len_utf8()..]));
        }
        if c == '\\' && q != '`' {
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                'x' => {
                    let hex: String = (0..2).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                    let b = u8::from_str_radix(&hex, 16).map_err(|_| format!("invalid \\x escape in \"{s}\""))?;
                    // Go strings are bytes; a lone byte that is not UTF-8 becomes U+FFFD here.
                    out.push(if b < 0x80 { b as char } else { char::REPLACEMENT_CHARACTER });
                }
                'u' | 'U' => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let hex: String = (0..n).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                    let cp = u32::from_str_radix(&hex, 16).map_err(|_| format!("invalid \\{e} escape in \"{s}\""))?;
                    out.push(char::from_u32(cp).ok_or_else(|| format!("invalid code point in \"{s}\""))?);
                }
                other => return Err(format!("unknown escape \\{other} in \"{s}\"")),
            }
            continue;
        }
        out.push(c);
    }
    Err(format!("unterminated string in \"{s}\""))
}

/// Parses a label set as the test files write it: `name`, `{a="b"}`, `name{a="b", c="d"}`, or
/// `{"quoted.name", a="b"}`.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let text = text.trim();
    let mut labels = Labels::new();
    let ident = |s: &str| s.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b':').count();
    let n = ident(text);
    if n > 0 {
        labels.insert(NAME, text[..n].to_string());
    }
    let mut rest = text[n..].trim_start();
    if rest.is_empty() {
        return if n > 0 { Ok(labels) } else { Err(format!("\"{text}\" is not a series")) };
    }
    rest = rest.strip_prefix('{').ok_or_else(|| format!("expected {{ in \"{text}\""))?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            if !after.trim().is_empty() {
                return Err(format!("unexpected \"{after}\" after the labels in \"{text}\""));
            }
            return Ok(labels);
        }
        let name = if rest.starts_with(['"', '\'', '`']) {
            let (s, r) = quoted(rest)?;
            rest = r.trim_start();
            if !rest.starts_with('=') {
                // A quoted string alone is the metric name.
                labels.insert(NAME, s);
                rest = rest.strip_prefix(',').unwrap_or(rest);
                continue;
            }
            s
        } else {
            let k = ident(rest);
            if k == 0 {
                return Err(format!("expected a label name at \"{rest}\" in \"{text}\""));
            }
            let s = rest[..k].to_string();
            rest = rest[k..].trim_start();
            s
        };
        rest = rest.strip_prefix('=').ok_or_else(|| format!("expected = after {name} in \"{text}\""))?.trim_start();
        let (value, r) = quoted(rest)?;
        labels.insert(name, value);
        rest = r.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// `load <interval>` and its series. Series of native histograms are noted, not loaded; so are
/// the histograms `load_with_nhcb` makes of classic ones (`x_bucket{le=...}` becomes `x`).
fn load(block: &[String], store: &mut Store) -> Result<(), String> {
    let mut head = block[0].split_whitespace();
    let cmd = head.next().unwrap_or_default();
    let interval = parse_duration(head.next().ok_or("load needs an interval")?)?;
    if interval <= 0 {
        return Err("the interval must be positive".into());
    }
    let nhcb = cmd.eq_ignore_ascii_case("load_with_nhcb");
    for line in &block[1..] {
        let (series, values) = split_series(line);
        let labels = parse_labels(series)?;
        if values.contains("{{") {
            store.histograms.push(labels);
            continue;
        }
        if nhcb && let Some(name) = labels.get(NAME) {
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    let mut h = labels.clone();
                    h.insert(NAME, base.to_string());
                    h.remove("le");
                    store.histograms.push(h);
                }
            }
        }
        let values = crate::unittest::expand_values(values)?;
        let points = store.series.entry(labels).or_default();
        for (k, v) in values.into_iter().enumerate() {
            if let Some(v) = v {
                let t = interval.checked_mul(k as i64).ok_or("the series is too long")?;
                points.retain(|(x, _)| *x != t);
                points.push((t, v));
            }
        }
        points.sort_by_key(|(t, _)| *t);
    }
    Ok(())
}

/// An `eval` command.
#[derive(Debug)]
struct Eval {
    expr: String,
    /// (start, end, step) in ms; an instant case has start = end and step 0.
    range: Option<(i64, i64, i64)>,
    at: i64,
    expected: Expected,
}

fn parse_eval(block: &[String]) -> Result<Eval, String> {
    let head = &block[0];
    let (cmd, rest) = head.split_once(char::is_whitespace).ok_or("an eval needs a query")?;
    let modifier = cmd.strip_prefix("eval").unwrap_or_default().trim_start_matches('_').to_ascii_lowercase();
    let mut expected = Expected::default();
    match modifier.as_str() {
        "" => {}
        "fail" => expected.fail = true,
        "ordered" => expected.ordered = true,
        "warn" | "info" => expected.annotations = true,
        other => return Err(format!("unknown eval variant \"{other}\"")),
    }
    let rest = rest.trim_start();
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    let (range, at, expr) = if let Some(r) = rest.strip_prefix("instant") {
        let r = r.trim_start();
        match r.strip_prefix("at") {
            Some(r) if r.starts_with(char::is_whitespace) => {
                let r = r.trim_start();
                let (t, e) = r.split_once(char::is_whitespace).ok_or("eval instant at TIME needs a query")?;
                (None, parse_duration(t)?, e.trim().to_string())
            }
            _ => (None, 0, r.to_string()),
        }
    } else if let Some(r) = rest.strip_prefix("range") {
        let w = words(r);
        if w.len() < 7 || w[0] != "from" || w[2] != "to" || w[4] != "step" {
            return Err("write eval range from T to T step D QUERY".into());
        }
        let (start, end, step) = (parse_duration(&w[1])?, parse_duration(&w[3])?, parse_duration(&w[5])?);
        if end < start || step <= 0 {
            return Err("the range must not end before it starts, and its step must be positive".into());
        }
        // The query is the text after the step, as written: skip six words.
        let mut idx = 0;
        for _ in 0..6 {
            let rest = &r[idx..];
            let skip = rest.len() - rest.trim_start().len();
            idx += skip;
            idx += r[idx..].find(char::is_whitespace).ok_or("cannot find the query")?;
        }
        (Some((start, end, step)), start, r[idx..].trim().to_string())
    } else {
        return Err("write eval instant at T QUERY or eval range from T to T step D QUERY".into());
    };
    for line in &block[1..] {
        if line.starts_with("expected_fail_message") || line.starts_with("expected_fail_regexp") {
            continue;
        }
        if line.split_whitespace().next() == Some("expect") {
            let what = line.split_whitespace().nth(1).unwrap_or_default();
            match what {
                "fail" => expected.fail = true,
                "ordered" => expected.ordered = true,
                "warn" | "info" => expected.annotations = true,
                "no_warn" | "no_info" => {}
                other => return Err(format!("unknown expectation \"{other}\"")),
            }
            continue;
        }
        if line.contains("{{") {
            expected.histograms = true;
            continue;
        }
        if let Some(v) = number(line) {
            expected.scalar = Some(v);
            continue;
        }
        let (series, values) = split_series(line);
        let labels = parse_labels(series)?;
        let values = crate::unittest::expand_values(values)?;
        expected.series.push((labels, values));
    }
    Ok(Eval { expr, range, at, expected })
}

/// A number as Go's strconv reads one (decimal, hex, Inf, NaN).
fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        _ if s.bytes().all(|b| b.is_ascii_digit() || b".eE+-".contains(&b)) => s.parse().ok(),
        _ => None,
    }
}

/// Prometheus' `almost.Equal` with its test tolerance.
pub fn almost_equal(a: f64, b: f64) -> bool {
    promql::almost_equal(a, b, EPSILON)
}

fn show(l: &Labels) -> String {
    promql::format_labels(l)
}

/// What an evaluation returned, for comparing: a scalar, or series with their points.
enum Got {
    Scalar(f64),
    /// Series in result order, each with (t, v) points.
    Series(Vec<(Labels, Vec<(i64, f64)>)>),
    String(String),
}

fn evaluate(cmd: &Eval, store: &Store) -> Result<Got, String> {
    let expr = promql::parse(&cmd.expr).map_err(|e| e.to_string())?;
    promql::check(&expr).map_err(|e| e.to_string())?;
    let Some((start, end, step)) = cmd.range else {
        return match promql::eval(&expr, store, cmd.at).map_err(|e| e.to_string())? {
            Value::Scalar(v) => Ok(Got::Scalar(v)),
            Value::Vector(v) => Ok(Got::Series(v.into_iter().map(|s| (s.labels, vec![(s.t, s.v)])).collect())),
            Value::Matrix(m) => Ok(Got::Series(m.into_iter().map(|s| (s.labels, s.points)).collect())),
            Value::String(s) => Ok(Got::String(s)),
        };
    };
    if (end - start) / step >= MAX_STEPS {
        return Err(format!("more than {MAX_STEPS} steps"));
    }
    let mut series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        let limits = promql::Limits::default();
        match promql::eval_step(&expr, store, t, (start, end), &limits).map_err(|e| e.to_string())? {
            Value::Scalar(v) => series.entry(Labels::new()).or_default().push((t, v)),
            Value::Vector(v) => {
                for s in v {
                    let points = series.entry(s.labels).or_default();
                    if points.last().is_some_and(|(pt, _)| *pt == t) {
                        return Err("vector cannot contain metrics with the same labelset".into());
                    }
                    points.push((t, s.v));
                }
            }
            _ => return Err("a range query must return an instant vector or a scalar".into()),
        }
        t += step;
    }
    Ok(Got::Series(series.into_iter().collect()))
}

fn run_eval(cmd: &Eval, store: &Store) -> Result<(), String> {
    let got = evaluate(cmd, store);
    let exp = &cmd.expected;
    let got = match (got, exp.fail) {
        (Err(_), true) => return Ok(()),
        (Ok(_), true) => return Err("expected the query to fail, but it succeeded".into()),
        (Err(e), false) => return Err(e),
        (Ok(g), false) => g,
    };
    match got {
        Got::String(s) => Err(format!("got the string \"{s}\", which no case of this kind expects")),
        Got::Scalar(v) => match exp.scalar {
            Some(want) if almost_equal(want, v) => Ok(()),
            Some(want) => Err(format!("expected scalar {want} but got {v}")),
            None => Err(format!("expected a vector, but got scalar {v}")),
        },
        Got::Series(series) => {
            if let Some(want) = exp.scalar {
                return Err(format!("expected scalar {want}, but got {} series", series.len()));
            }
            compare_series(cmd, &series)
        }
    }
}

fn compare_series(cmd: &Eval, got: &[(Labels, Vec<(i64, f64)>)]) -> Result<(), String> {
    let exp = &cmd.expected;
    let (start, step) = match cmd.range {
        Some((s, _, st)) => (s, st),
        None => (cmd.at, 0),
    };
    let mut seen = vec![false; exp.series.len()];
    for (pos, (labels, points)) in got.iter().enumerate() {
        let Some(i) = exp.series.iter().position(|(l, _)| l == labels) else {
            let shown: Vec<String> = points.iter().map(|(t, v)| format!("{v} @{t}")).collect();
            return Err(format!("unexpected series {} in the result: {}", show(labels), shown.join(", ")));
        };
        seen[i] = true;
        if exp.ordered && i != pos {
            return Err(format!("expected {} at position {} but it was at {}", show(labels), i + 1, pos + 1));
        }
        let want: Vec<(i64, f64)> =
            exp.series[i].1.iter().enumerate().filter_map(|(k, v)| v.map(|v| (start + step * k as i64, v))).collect();
        if cmd.range.is_none() {
            let (Some((_, w)), Some((_, g))) = (want.first(), points.first()) else {
                return Err(format!("expected a value for {}", show(labels)));
            };
            if !almost_equal(*w, *g) {
                return Err(format!("expected {w} for {} but got {g}", show(labels)));
            }
            continue;
        }
        if want.len() != points.len() {
            let shown: Vec<String> = points.iter().map(|(t, v)| format!("{v} @{t}")).collect();
            return Err(format!(
                "expected {} points for {} but got {}: {}",
                want.len(),
                show(labels),
                points.len(),
                shown.join(", ")
            ));
        }
        for ((wt, wv), (gt, gv)) in want.iter().zip(points) {
            if wt != gt {
                return Err(format!("expected a point at {wt} for {} but it was at {gt}", show(labels)));
            }
            if !almost_equal(*wv, *gv) {
                return Err(format!("expected {wv} at {wt} for {} but got {gv}", show(labels)));
            }
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!("expected {} but it is not in the result", show(&exp.series[i].0)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_prometheus_writes_them() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("50m"), Ok(3_000_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn label_sets_read_with_quotes_and_escapes() {
        let l = parse_labels(r#"http_requests{job="api, server", path="a\"b"}"#).unwrap();
        assert_eq!(l.get(NAME), Some("http_requests"));
        assert_eq!(l.get("job"), Some("api, server"));
        assert_eq!(l.get("path"), Some("a\"b"));
        assert!(parse_labels("{}").unwrap().is_empty());
        let l = parse_labels(r#"{"my.metric", "a.b"="c"}"#).unwrap();
        assert_eq!((l.get(NAME), l.get("a.b")), (Some("my.metric"), Some("c")));
        assert_eq!(split_series(r#"m{a="x y"} 1 2"#), (r#"m{a="x y"}"#, "1 2"));
    }

    #[test]
    fn a_file_runs_and_reports_passes_failures_and_skips() {
        let text = "load 5m\n  m{a=\"1\"} 0+10x10\n  m{a=\"2\"} 1x10\n\neval instant at 50m m\n  m{a=\"1\"} 100\n  m{a=\"2\"} 1\n\neval instant at 50m sum(m)\n  {} 999\n\neval range from 0 to 10m step 5m m{a=\"1\"}\n  m{a=\"1\"} 0 10 20\n\neval_fail instant at 0m m[5m] + 1\n\nclear\nload 1m\n  h {{schema:0 sum:1 count:1}}\n\neval instant at 1m h\n  h {{schema:0 sum:1 count:1}}\n";
        let s = run_text("t.test", text);
        assert_eq!(s.passed, 3, "{s:#?}");
        assert_eq!(s.failed.len(), 1, "{s:#?}");
        assert!(s.failed[0].reason.contains("expected 999"), "{s:#?}");
        assert_eq!(s.skipped.len(), 1);
        assert_eq!(s.skipped[0].reason, "native histograms");
    }
}

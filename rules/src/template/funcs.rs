//! The functions a template can call, each with its Go signature: Go 1.19's builtins
//! (text/template/funcs.go) and Prometheus' (template/template.go as of v2.42, plus `toTime`,
//! `toDuration`, `stripDomain`, `now` and `urlUnescape` from later releases), implemented as
//! they are there; and the methods of Go's `time.Time` and `time.Duration` values that
//! `toTime` and `toDuration` return.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use regex::Regex;

use super::gofmt::{self, percent_g};
use super::gotime::{self, Time};
use super::value::{self, Sample, Value};
use super::{Data, MAX_OUTPUT, MAX_QUERIES, goregex};

/// A parameter's Go type, as far as it decides what an argument may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    /// `interface{}` (or `reflect.Value` for the builtins): anything.
    Any,
    Str,
    /// `template.queryResult`.
    Samples,
    /// `*template.sample`.
    Sample,
}

impl Ty {
    pub(super) fn go_name(self) -> &'static str {
        match self {
            Ty::Any => "interface {}",
            Ty::Str => "string",
            Ty::Samples => "template.queryResult",
            Ty::Sample => "*template.sample",
        }
    }
}

type Imp = fn(&mut Env<'_>, Vec<Value>) -> Result<Value, String>;

#[derive(Clone, Copy)]
pub(super) enum Call {
    /// `and` and `or`, which stop evaluating arguments once the result is known.
    And,
    Or,
    Plain(Imp),
}

pub(super) struct Func {
    pub(super) name: &'static str,
    pub(super) params: &'static [Ty],
    /// The type of the trailing `...` parameter, if any.
    pub(super) variadic: Option<Ty>,
    pub(super) call: Call,
}

impl Func {
    /// The type of the `i`th argument.
    pub(super) fn param(&self, i: usize) -> Option<Ty> {
        self.params.get(i).copied().or(self.variadic)
    }
}

const fn f(name: &'static str, params: &'static [Ty], imp: Imp) -> Func {
    Func { name, params, variadic: None, call: Call::Plain(imp) }
}

const fn fv(name: &'static str, params: &'static [Ty], variadic: Ty, imp: Imp) -> Func {
    Func { name, params, variadic: Some(variadic), call: Call::Plain(imp) }
}

use Ty::{Any, Samples, Str};

pub(super) static FUNCS: &[Func] = &[
    // Go's builtins.
    Func { name: "and", params: &[Any], variadic: Some(Any), call: Call::And },
    Func { name: "or", params: &[Any], variadic: Some(Any), call: Call::Or },
    f("not", &[Any], |_, a| Ok(Value::Bool(!a[0].truth()))),
    f("len", &[Any], length),
    fv("index", &[Any], Any, index),
    fv("slice", &[Any], Any, slice),
    fv("print", &[], Any, |_, a| limit(Value::Str(gofmt::sprint(&a)))),
    fv("printf", &[Str], Any, printf),
    fv("println", &[], Any, |_, a| limit(Value::Str(gofmt::sprintln(&a)))),
    fv("html", &[], Any, |_, a| limit(Value::Str(html_escape(&gofmt::eval_args(&a))))),
    fv("js", &[], Any, |_, a| limit(Value::Str(js_escape(&gofmt::eval_args(&a))))),
    fv("urlquery", &[], Any, |_, a| limit(Value::Str(query_escape(&gofmt::eval_args(&a))))),
    fv("eq", &[Any], Any, |_, a| value::eq(&a[0], &a[1..]).map(Value::Bool)),
    f("ne", &[Any, Any], |_, a| value::eq(&a[0], &a[1..]).map(|e| Value::Bool(!e))),
    f("lt", &[Any, Any], |_, a| value::lt(&a[0], &a[1]).map(Value::Bool)),
    f("le", &[Any, Any], |_, a| value::le(&a[0], &a[1]).map(Value::Bool)),
    f("gt", &[Any, Any], |_, a| value::gt(&a[0], &a[1]).map(Value::Bool)),
    f("ge", &[Any, Any], |_, a| value::ge(&a[0], &a[1]).map(Value::Bool)),
    // Prometheus'.
    f("query", &[Str], query),
    f("first", &[Samples], |_, a| match &a[0] {
        Value::Samples(v) => match v.borrow().first() {
            Some(s) => Ok(Value::Sample(Some(s.clone()))),
            None => Err("first() called on vector with no elements".into()),
        },
        _ => Err("first() called on vector with no elements".into()),
    }),
    f("label", &[Str, Ty::Sample], |_, a| {
        Ok(Value::Str(sample(&a[1])?.labels.get(str_arg(&a[0])).cloned().unwrap_or_default()))
    }),
    f("value", &[Ty::Sample], |_, a| Ok(Value::Float(sample(&a[0])?.value))),
    f("strvalue", &[Ty::Sample], |_, a| {
        Ok(Value::Str(sample(&a[0])?.labels.get("__value__").cloned().unwrap_or_default()))
    }),
    fv("args", &[], Any, |_, a| {
        let m: BTreeMap<String, Value> = a.into_iter().enumerate().map(|(i, v)| (format!("arg{i}"), v)).collect();
        Ok(Value::AnyMap(Rc::new(m)))
    }),
    f("reReplaceAll", &[Str, Str, Str], |env, a| {
        let re = env.regex(str_arg(&a[0]))?;
        limit(Value::Str(re.replace_all(str_arg(&a[2]), str_arg(&a[1])).into_owned()))
    }),
    f("safeHtml", &[Str], |_, a| Ok(Value::Html(str_arg(&a[0]).to_string()))),
    f("match", &[Str, Str], |env, a| Ok(Value::Bool(env.regex(str_arg(&a[0]))?.is_match(str_arg(&a[1]))))),
    f("title", &[Str], |_, a| Ok(Value::Str(title(str_arg(&a[0]))))),
    f("toUpper", &[Str], |_, a| Ok(Value::Str(str_arg(&a[0]).chars().map(to_upper).collect()))),
    f("toLower", &[Str], |_, a| Ok(Value::Str(str_arg(&a[0]).chars().map(to_lower).collect()))),
    f("graphLink", &[Str], |_, a| Ok(Value::Str(format!("/graph?g0.expr={}&g0.tab=0", query_escape(str_arg(&a[0])))))),
    f("tableLink", &[Str], |_, a| Ok(Value::Str(format!("/graph?g0.expr={}&g0.tab=1", query_escape(str_arg(&a[0])))))),
    f("sortByLabel", &[Str, Samples], |_, a| {
        if let Value::Samples(v) = &a[1] {
            let label = str_arg(&a[0]);
            let key = |s: &Rc<Sample>| s.labels.get(label).cloned().unwrap_or_default();
            // Stable, and in place, as Prometheus' sort.Stable on the result.
            v.borrow_mut().sort_by_key(key);
        }
        Ok(a[1].clone())
    }),
    f("stripPort", &[Str], |_, a| {
        let hp = str_arg(&a[0]);
        Ok(Value::str(split_host_port(hp).map_or(hp, |(h, _)| h)))
    }),
    f("stripDomain", &[Str], |_, a| Ok(Value::Str(strip_domain(str_arg(&a[0]))))),
    f("humanize", &[Any], |_, a| humanize(to_float(&a[0])?).map(Value::Str)),
    f("humanize1024", &[Any], |_, a| Ok(Value::Str(humanize1024(to_float(&a[0])?)))),
    f("humanizeDuration", &[Any], |_, a| Ok(Value::Str(humanize_duration(to_float(&a[0])?)))),
    f("humanizePercentage", &[Any], |_, a| Ok(Value::Str(format!("{}%", percent_g(to_float(&a[0])? * 100.0, 4))))),
    f("humanizeTimestamp", &[Any], |_, a| {
        let v = to_float(&a[0])?;
        if !v.is_finite() {
            return Ok(Value::Str(percent_g(v, 4)));
        }
        Ok(Value::Str(float_to_time(v)?.string()))
    }),
    f("toTime", &[Any], |_, a| {
        let v = to_float(&a[0])?;
        if !v.is_finite() {
            return Err("value is NaN or Inf".into());
        }
        Ok(Value::TimePtr(Rc::new(float_to_time(v)?)))
    }),
    f("toDuration", &[Any], |_, a| {
        let v = to_float(&a[0])?;
        if !v.is_finite() {
            return Err("value is NaN or Inf".into());
        }
        let nanos = v * 1e9;
        if !(-9.223_372_036_854_776e18..=9.223_372_036_854_776e18).contains(&nanos) {
            let v = gofmt::go_float(v);
            return Err(format!("{v} cannot be represented as a nanoseconds duration since it overflows int64"));
        }
        Ok(Value::DurationPtr(Rc::new(go_int64(nanos))))
    }),
    f("pathPrefix", &[], |env, _| Ok(Value::Str(url_path(&env.data.external_url)))),
    f("externalURL", &[], |env, _| Ok(Value::Str(env.data.external_url.clone()))),
    f("parseDuration", &[Str], |_, a| Ok(Value::Float(gotime::parse_model_duration(str_arg(&a[0]))? as f64 / 1e9))),
    f("now", &[], |env, _| Ok(Value::Float(env.data.timestamp))),
    f("urlUnescape", &[Str], |_, a| query_unescape(str_arg(&a[0])).map(Value::Str)),
];

/// The index of a function in [`FUNCS`].
pub(super) fn lookup(name: &str) -> Option<usize> {
    FUNCS.iter().position(|f| f.name == name)
}

/// Go time methods that fleet does not implement: refused when a template is parsed.
pub(super) const UNSUPPORTED_TIME_METHODS: &[&str] = &[
    "AppendFormat",
    "GobDecode",
    "GobEncode",
    "In",
    "Local",
    "Location",
    "MarshalBinary",
    "MarshalJSON",
    "MarshalText",
    "UnmarshalBinary",
    "UnmarshalJSON",
    "UnmarshalText",
];

/// How many patterns computed while rendering are kept compiled.
const MAX_CACHED_REGEXES: usize = 64;

/// What functions see of the render they run in.
pub(super) struct Env<'e> {
    pub(super) data: &'e Data<'e>,
    /// Literal patterns, compiled when the template was parsed.
    pub(super) literal_regexes: &'e HashMap<String, Regex>,
    /// Patterns computed while rendering, compiled once per render.
    pub(super) regexes: HashMap<String, Regex>,
    pub(super) queries: usize,
}

impl Env<'_> {
    fn regex(&mut self, pattern: &str) -> Result<Regex, String> {
        if let Some(re) = self.literal_regexes.get(pattern).or_else(|| self.regexes.get(pattern)) {
            return Ok(re.clone());
        }
        let re = goregex::compile(pattern)?;
        // Patterns computed per alert are usually few; keep memory bounded when they are not.
        if self.regexes.len() < MAX_CACHED_REGEXES {
            self.regexes.insert(pattern.to_string(), re.clone());
        }
        Ok(re)
    }
}

/// A string argument: the caller has checked its type.
fn str_arg(v: &Value) -> &str {
    match v {
        Value::Str(s) => s,
        _ => "",
    }
}

fn sample(v: &Value) -> Result<&Sample, String> {
    match v {
        Value::Sample(Some(s)) => Ok(s),
        _ => Err("runtime error: invalid memory address or nil pointer dereference".into()),
    }
}

/// Refuses strings past the output limit, so that no value grows without bound.
fn limit(v: Value) -> Result<Value, String> {
    match &v {
        Value::Str(s) | Value::Html(s) if s.len() > MAX_OUTPUT => {
            Err(format!("the result exceeds the limit of {MAX_OUTPUT} bytes"))
        }
        _ => Ok(v),
    }
}

fn printf(_: &mut Env<'_>, a: Vec<Value>) -> Result<Value, String> {
    gofmt::sprintf(str_arg(&a[0]), &a[1..], MAX_OUTPUT).map(Value::Str)
}

fn query(env: &mut Env<'_>, a: Vec<Value>) -> Result<Value, String> {
    let Some(querier) = env.data.querier else { return Err("query is not available here".into()) };
    env.queries += 1;
    if env.queries > MAX_QUERIES {
        return Err(format!("a template may run at most {MAX_QUERIES} queries"));
    }
    let samples = querier.query(str_arg(&a[0]))?;
    Ok(Value::samples(
        samples.into_iter().map(|s| Rc::new(Sample { labels: Rc::new(s.labels), value: s.value })).collect(),
    ))
}

/// Go's `len`.
fn length(_: &mut Env<'_>, a: Vec<Value>) -> Result<Value, String> {
    let n = match &a[0] {
        Value::Str(s) | Value::Html(s) => s.len(),
        Value::StrMap(m) => m.len(),
        Value::AnyMap(m) => m.len(),
        Value::Samples(v) => v.borrow().len(),
        Value::Sample(None) => return Err("len of nil pointer".into()),
        Value::Sample(Some(_)) => return Err("len of type template.sample".into()),
        Value::TimePtr(_) => return Err("len of type time.Time".into()),
        Value::DurationPtr(_) => return Err("len of type time.Duration".into()),
        Value::Missing | Value::Nil => return Err("len of untyped nil".into()),
        other => return Err(format!("len of type {}", other.type_name())),
    };
    Ok(Value::Int(n as i64))
}

/// An integer index argument (Go's `indexArg`), checked against `cap`.
fn index_arg(i: &Value, cap: usize) -> Result<usize, String> {
    let x: i64 = match i {
        Value::Int(x) | Value::Duration(x) | Value::Month(x) | Value::Weekday(x) => *x,
        Value::Byte(b) => i64::from(*b),
        Value::Missing | Value::Nil => return Err("cannot index slice/array with nil".into()),
        other => return Err(format!("cannot index slice/array with type {}", other.type_name())),
    };
    match usize::try_from(x) {
        Ok(x) if x <= cap => Ok(x),
        _ => Err(format!("index out of range: {x}")),
    }
}

/// Go's `index item i j...`.
fn index(_: &mut Env<'_>, a: Vec<Value>) -> Result<Value, String> {
    let mut item = a[0].clone();
    if matches!(item, Value::Missing | Value::Nil) {
        return Err("index of untyped nil".into());
    }
    for i in &a[1..] {
        item = match &item {
            Value::Str(s) | Value::Html(s) => {
                let x = index_arg(i, s.len())?;
                Value::Byte(*s.as_bytes().get(x).ok_or_else(|| format!("index out of range: {x}"))?)
            }
            Value::Samples(v) => {
                let v = v.borrow();
                let x = index_arg(i, v.len())?;
                Value::Sample(Some(v.get(x).ok_or_else(|| format!("index out of range: {x}"))?.clone()))
            }
            Value::StrMap(m) => Value::Str(m.get(map_key(i, "map[string]string")?).cloned().unwrap_or_default()),
            Value::AnyMap(m) => m.get(map_key(i, "map[string]interface {}")?).cloned().unwrap_or(Value::Nil),
            Value::Sample(None) => return Err("index of nil pointer".into()),
            Value::Sample(Some(_)) => return Err("can't index item of type template.sample".into()),
            other => return Err(format!("can't index item of type {}", other.type_name())),
        };
    }
    Ok(item)
}

fn map_key<'v>(i: &'v Value, map_type: &str) -> Result<&'v str, String> {
    match i {
        Value::Str(s) => Ok(s),
        Value::Missing | Value::Nil => Err("value is nil; should be of type string".into()),
        other => Err(format!("value has type {}; should be string (indexing {map_type})", other.type_name())),
    }
}

/// Go's `slice item i j k`.
fn slice(_: &mut Env<'_>, a: Vec<Value>) -> Result<Value, String> {
    let item = &a[0];
    let indexes = &a[1..];
    if matches!(item, Value::Missing | Value::Nil) {
        return Err("slice of untyped nil".into());
    }
    if indexes.len() > 3 {
        return Err(format!("too many slice indexes: {}", indexes.len()));
    }
    let len = match item {
        Value::Str(s) => {
            if indexes.len() == 3 {
                return Err("cannot 3-index slice a string".into());
            }
            s.len()
        }
        Value::Samples(v) => v.borrow().len(),
        other => return Err(format!("can't slice item of type {}", other.type_name())),
    };
    let mut idx = [0, len, len];
    for (n, i) in indexes.iter().enumerate() {
        idx[n] = index_arg(i, len)?;
    }
    if idx[0] > idx[1] {
        return Err(format!("invalid slice index: {} > {}", idx[0], idx[1]));
    }
    if indexes.len() == 3 && idx[1] > idx[2] {
        return Err(format!("invalid slice index: {} > {}", idx[1], idx[2]));
    }
    Ok(match item {
        // Go slices bytes; a cut through a character leaves invalid UTF-8, shown as U+FFFD.
        Value::Str(s) => Value::Str(String::from_utf8_lossy(&s.as_bytes()[idx[0]..idx[1]]).into_owned()),
        Value::Samples(v) => Value::samples(v.borrow()[idx[0]..idx[1]].to_vec()),
        _ => Value::Missing,
    })
}

/// Go's `template.HTMLEscapeString`.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if c < ' ' => out.push_str(&format!("\\u00{:02X}", c as u32)),
            c if c.is_ascii() || super::strconv::is_print(c) => out.push(c),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(b)),
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.QueryUnescape`.
fn query_unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| char::from(c).to_digit(16);
                match (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        let bad = String::from_utf8_lossy(&b[i..(i + 3).min(b.len())]).into_owned();
                        return Err(format!("invalid URL escape {}", super::strconv::quote(&bad)));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The path of a URL, percent-decoded (Go's `url.URL.Path`).
fn url_path(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = match after_scheme.find('/') {
        Some(i) if url.contains("://") => &after_scheme[i..],
        Some(_) => after_scheme,
        None if url.contains("://") => "",
        None => after_scheme,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    // Path escapes keep '+'; only %XX is decoded.
    query_unescape(&path.replace('+', "%2B")).unwrap_or_else(|_| path.to_string())
}

/// Go's `net.SplitHostPort`.
fn split_host_port(hp: &str) -> Option<(&str, &str)> {
    let i = hp.rfind(':')?;
    let (host, j, k) = if hp.starts_with('[') {
        let end = hp.find(']')?;
        if end + 1 != i {
            return None;
        }
        (&hp[1..end], 1, end + 1)
    } else {
        let host = &hp[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hp[j..].contains('[') || hp[k..].contains(']') {
        return None;
    }
    Some((host, &hp[i + 1..]))
}

/// Prometheus' `stripDomain`: the first label of a host name, keeping any port; IP
/// addresses unchanged.
fn strip_domain(hp: &str) -> String {
    let (host, port) = split_host_port(hp).unwrap_or((hp, ""));
    if host.parse::<std::net::IpAddr>().is_ok() {
        return hp.to_string();
    }
    let host = host.split('.').next().unwrap_or("");
    if port.is_empty() {
        return host.to_string();
    }
    // net.JoinHostPort brackets hosts that contain a colon.
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Go's `strings.Title`: upper-cases the first letter of each word, where words are
/// separated by anything but ASCII letters, digits and `_` or other Unicode letters and
/// digits.
fn title(s: &str) -> String {
    let is_separator = |c: char| {
        if c.is_ascii() {
            return !(c.is_ascii_alphanumeric() || c == '_');
        }
        if c.is_alphanumeric() {
            return false;
        }
        c.is_whitespace()
    };
    let mut prev = ' ';
    s.chars()
        .map(|c| {
            let out = if is_separator(prev) { to_title(c) } else { c };
            prev = c;
            out
        })
        .collect()
}

/// Go's `unicode.ToUpper`: one rune to one rune (no "ß" to "SS").
fn to_upper(c: char) -> char {
    let mut up = c.to_uppercase();
    match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

fn to_lower(c: char) -> char {
    if c == '\u{130}' {
        // İ's simple lower-case mapping, which Go uses, is a plain i.
        return 'i';
    }
    let mut low = c.to_lowercase();
    match (low.next(), low.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Go's `unicode.ToTitle`, which differs from upper case only for the digraphs.
fn to_title(c: char) -> char {
    match c {
        '\u{1C4}'..='\u{1C6}' => '\u{1C5}',
        '\u{1C7}'..='\u{1C9}' => '\u{1C8}',
        '\u{1CA}'..='\u{1CC}' => '\u{1CB}',
        '\u{1F1}'..='\u{1F3}' => '\u{1F2}',
        c => to_upper(c),
    }
}

/// Prometheus' `convertToFloat`.
fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Str(s) => super::strconv::parse_float(s),
        Value::Int(i) => Ok(*i as f64),
        // Not uint8: Prometheus' converter takes int, uint, int64 and uint64 only.
        Value::Duration(d) => Ok(gotime::duration_in(*d, 1_000_000_000)),
        other => Err(format!("can't convert {} to float", other.type_name())),
    }
}

/// Go's `int64(f)` on amd64: truncation toward zero, and the "integer indefinite" value
/// `math.MinInt64` for NaN and for values outside the int64 range (where Rust's `as`
/// saturates instead). `humanizeDuration 1e21` shows the difference.
fn go_int64(f: f64) -> i64 {
    if f.is_nan() || !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
        return i64::MIN;
    }
    f as i64
}

/// Prometheus' `floatToTime`: the timestamp goes through `model.Time`, so it keeps only
/// milliseconds.
fn float_to_time(v: f64) -> Result<Time, String> {
    let nanos = v * 1e9;
    if !(-9.223_372_036_854_776e18..=9.223_372_036_854_776e18).contains(&nanos) {
        let v = gofmt::go_float(v);
        return Err(format!("{v} cannot be represented as a nanoseconds timestamp since it overflows int64"));
    }
    let ms = go_int64(nanos) / 1_000_000;
    Ok(Time::from_unix(ms / 1000, (ms % 1000) * 1_000_000))
}

fn humanize(mut v: f64) -> Result<String, String> {
    if v == 0.0 || !v.is_finite() {
        return Ok(percent_g(v, 4));
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    Ok(format!("{}{prefix}", percent_g(v, 4)))
}

fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return percent_g(v, 4);
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", percent_g(v, 4))
}

fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return percent_g(v, 4);
    }
    if v == 0.0 {
        return format!("{}s", percent_g(v, 4));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = go_int64(v);
        let (days, hours, minutes, seconds) = (d / 86_400, d / 3600 % 24, d / 60 % 60, d % 60);
        if days != 0 {
            return format!("{sign}{days}d {hours}h {minutes}m {seconds}s");
        }
        if hours != 0 {
            return format!("{sign}{hours}h {minutes}m {seconds}s");
        }
        if minutes != 0 {
            return format!("{sign}{minutes}m {seconds}s");
        }
        return format!("{sign}{}s", percent_g(v, 4));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", percent_g(v, 4))
}

/// The type a method parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MTy {
    Int,
    Str,
    Duration,
    Time,
}

/// The parameters of method `name` of `recv`, or why it cannot be called.
pub(super) fn method_params(recv: &Value, name: &str) -> Option<Result<&'static [MTy], String>> {
    let is_time = matches!(recv, Value::TimePtr(_) | Value::Time(_));
    let is_duration = matches!(recv, Value::DurationPtr(_) | Value::Duration(_));
    let params: &'static [MTy] = match name {
        "String" if is_time || is_duration || matches!(recv, Value::Month(_) | Value::Weekday(_)) => &[],
        "Unix" | "UnixMilli" | "UnixMicro" | "UnixNano" | "Year" | "Month" | "Day" | "Hour" | "Minute" | "Second"
        | "Nanosecond" | "YearDay" | "Weekday" | "UTC" | "IsZero" | "IsDST" | "GoString"
            if is_time =>
        {
            &[]
        }
        "Format" if is_time => &[MTy::Str],
        "Add" | "Truncate" | "Round" if is_time => &[MTy::Duration],
        "Sub" | "After" | "Before" | "Equal" | "Compare" if is_time => &[MTy::Time],
        "AddDate" if is_time => &[MTy::Int, MTy::Int, MTy::Int],
        "Clock" | "Date" if is_time => {
            return Some(Err(format!("can't call method/function \"{name}\" with 3 results")));
        }
        "ISOWeek" | "Zone" | "ZoneBounds" if is_time => {
            return Some(Err(format!("can't call method/function \"{name}\" with 2 results")));
        }
        n if is_time && UNSUPPORTED_TIME_METHODS.contains(&n) => {
            return Some(Err(format!("the time method .{n} is not supported in fleet's templates")));
        }
        "Hours" | "Minutes" | "Seconds" | "Milliseconds" | "Microseconds" | "Nanoseconds" | "Abs" if is_duration => &[],
        "Round" | "Truncate" if is_duration => &[MTy::Duration],
        _ => return None,
    };
    Some(Ok(params))
}

/// Calls a method that [`method_params`] accepted, with arguments of those types.
pub(super) fn call_method(recv: &Value, name: &str, args: &[Value]) -> Result<Value, String> {
    let int = |i: usize| match args.get(i) {
        Some(Value::Int(x) | Value::Duration(x)) => *x,
        _ => 0,
    };
    let time_arg = |i: usize| match args.get(i) {
        Some(Value::Time(t)) => *t,
        Some(Value::TimePtr(t)) => **t,
        _ => Time::from_unix(0, 0),
    };
    let out = match recv {
        Value::Month(m) => Value::Str(gotime::month_name(*m)),
        Value::Weekday(d) => Value::Str(gotime::weekday_name(*d)),
        Value::TimePtr(t) => time_method(**t, name, &int, &time_arg, args),
        Value::Time(t) => time_method(*t, name, &int, &time_arg, args),
        Value::DurationPtr(d) => duration_method(**d, name, &int),
        Value::Duration(d) => duration_method(*d, name, &int),
        _ => Value::Missing,
    };
    limit(out)
}

fn time_method(
    t: Time,
    name: &str,
    int: &dyn Fn(usize) -> i64,
    time_arg: &dyn Fn(usize) -> Time,
    args: &[Value],
) -> Value {
    match name {
        "String" => Value::Str(t.string()),
        "GoString" => Value::Str(t.go_string()),
        "Format" => Value::Str(t.format(args.first().map_or("", str_arg))),
        "Unix" => Value::Int(t.unix()),
        "UnixMilli" => Value::Int(t.unix_milli()),
        "UnixMicro" => Value::Int(t.unix_micro()),
        "UnixNano" => Value::Int(t.unix_nano()),
        "Year" => Value::Int(t.year()),
        "Month" => Value::Month(t.month()),
        "Day" => Value::Int(t.day()),
        "Hour" => Value::Int(t.hour()),
        "Minute" => Value::Int(t.minute()),
        "Second" => Value::Int(t.second()),
        "Nanosecond" => Value::Int(t.nanosecond()),
        "YearDay" => Value::Int(t.year_day()),
        "Weekday" => Value::Weekday(t.weekday()),
        "UTC" => Value::Time(t),
        "IsZero" => Value::Bool(t.is_zero()),
        "IsDST" => Value::Bool(false),
        "Add" => Value::Time(t.add(int(0))),
        "Truncate" => Value::Time(t.truncate(int(0))),
        "Round" => Value::Time(t.round(int(0))),
        "Sub" => Value::Duration(t.sub(time_arg(0))),
        "After" => Value::Bool(t > time_arg(0)),
        "Before" => Value::Bool(t < time_arg(0)),
        "Equal" => Value::Bool(t == time_arg(0)),
        "Compare" => Value::Int(t.cmp(&time_arg(0)) as i64),
        "AddDate" => Value::Time(t.add_date(int(0), int(1), int(2))),
        _ => Value::Missing,
    }
}

fn duration_method(d: i64, name: &str, int: &dyn Fn(usize) -> i64) -> Value {
    match name {
        "String" => Value::Str(gotime::duration_string(d)),
        "Hours" => Value::Float(gotime::duration_in(d, 3_600_000_000_000)),
        "Minutes" => Value::Float(gotime::duration_in(d, 60_000_000_000)),
        "Seconds" => Value::Float(gotime::duration_in(d, 1_000_000_000)),
        "Milliseconds" => Value::Int(d / 1_000_000),
        "Microseconds" => Value::Int(d / 1000),
        "Nanoseconds" => Value::Int(d),
        "Abs" => Value::Duration(gotime::duration_abs(d)),
        "Round" => Value::Duration(gotime::duration_round(d, int(0))),
        "Truncate" => Value::Duration(gotime::duration_truncate(d, int(0))),
        _ => Value::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_helpers() {
        assert_eq!(humanize(1234567.0).unwrap(), "1.235M");
        assert_eq!(humanize(0.001234).unwrap(), "1.234m");
        assert_eq!(humanize(-1500.0).unwrap(), "-1.5k");
        assert_eq!(humanize1024(0.5), "0.5");
        assert_eq!(humanize1024(1025.0), "1.001ki");
        assert_eq!(humanize_duration(0.0), "0s");
        assert_eq!(humanize_duration(0.5), "500ms");
        assert_eq!(humanize_duration(1.5), "1.5s");
        assert_eq!(humanize_duration(-90061.5), "-1d 1h 1m 1s");
        assert_eq!(title("it's a dog_cat foo-bar éa"), "It'S A Dog_cat Foo-Bar Éa");
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
        assert_eq!(split_host_port("a:b:c"), None);
        assert_eq!(strip_domain("node1.example.com:9100"), "node1:9100");
        assert_eq!(strip_domain("10.0.0.1:9100"), "10.0.0.1:9100");
        assert_eq!(query_escape("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(query_unescape("a+b%26").unwrap(), "a b&");
        assert!(query_unescape("%zz").unwrap_err().contains("invalid URL escape \"%zz\""));
        assert_eq!(url_path("https://example.com/prom/a%20b?x=1"), "/prom/a b");
        assert_eq!(js_escape("a<b>&=c'\""), "a\\u003Cb\\u003E\\u0026\\u003Dc\\'\\\"");
        assert_eq!(html_escape("<a&\"'>"), "&lt;a&amp;&#34;&#39;&gt;");
        assert_eq!(float_to_time(1.2345678).unwrap().string(), "1970-01-01 00:00:01.234 +0000 UTC");
    }
}

//! Alert label and annotation templates, in the subset of Go's text/template that Prometheus
//! rules use: `{{ $labels.x }}`, `{{ $value }}`, `{{ $externalLabels.x }}` (and `.Labels`,
//! `.Value`, `.ExternalLabels`), `if` / `else if` / `else` / `end`, pipelines, comparisons
//! (`eq ne lt le gt ge`), `and or not`, `printf`, `humanize`, `humanizePercentage`,
//! `humanizeDuration`, `title`, `toUpper`, `toLower`, and `{{-`/`-}}` trimming. Anything else
//! is an error naming it.

use std::collections::BTreeMap;

/// What a template sees.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// The alert's value.
    pub value: f64,
    /// External labels.
    pub external_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum V {
    Str(String),
    Float(f64),
    Int(i64),
    Bool(bool),
    Map(BTreeMap<String, String>),
}

#[derive(Debug)]
enum Node {
    Text(String),
    Action(String),
    If(Vec<(String, Vec<Node>)>, Vec<Node>),
}

/// Expands `template` with `data`.
pub fn expand(template: &str, data: &Data) -> Result<String, String> {
    let tokens = lex(template)?;
    let mut pos = 0;
    let nodes = parse_nodes(&tokens, &mut pos, false)?.0;
    if pos != tokens.len() {
        return Err("unexpected {{ end }} or {{ else }}".into());
    }
    let mut out = String::new();
    render(&nodes, data, &mut out)?;
    Ok(out)
}

#[derive(Debug, Clone)]
enum Tok {
    Text(String),
    Act(String),
}

fn lex(t: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find("{{") {
        let mut text = rest[..i].to_string();
        let after = &rest[i + 2..];
        let (trim_left, after) = match after.strip_prefix('-') {
            Some(a) if a.starts_with(' ') || a.starts_with('\t') || a.starts_with('\n') => (true, a),
            _ => (false, after),
        };
        if trim_left {
            text = text.trim_end().to_string();
        }
        let end = after.find("}}").ok_or("unclosed {{ in template")?;
        let mut inner = &after[..end];
        let mut next = &after[end + 2..];
        if let Some(s) = inner.strip_suffix('-')
            && (s.ends_with(' ') || s.ends_with('\t') || s.ends_with('\n'))
        {
            inner = s;
            next = next.trim_start();
        }
        if !text.is_empty() {
            out.push(Tok::Text(text));
        }
        let inner = inner.trim();
        if !inner.starts_with("/*") {
            out.push(Tok::Act(inner.to_string()));
        }
        rest = next;
    }
    if !rest.is_empty() {
        out.push(Tok::Text(rest.to_string()));
    }
    Ok(out)
}

/// Parses nodes until `end` / `else` (when `nested`). Returns the nodes and the terminator.
fn parse_nodes(toks: &[Tok], pos: &mut usize, nested: bool) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        match &toks[*pos] {
            Tok::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                *pos += 1;
            }
            Tok::Act(a) => {
                let a = a.clone();
                *pos += 1;
                if a == "end" || a == "else" || a.starts_with("else ") {
                    if !nested {
                        return Err(format!("unexpected {{{{ {a} }}}}"));
                    }
                    return Ok((nodes, Some(a)));
                }
                if let Some(cond) = a.strip_prefix("if ") {
                    let mut branches = vec![];
                    let mut cond = cond.trim().to_string();
                    let mut otherwise = vec![];
                    loop {
                        let (body, term) = parse_nodes(toks, pos, true)?;
                        match term.as_deref() {
                            Some("end") => {
                                branches.push((cond, body));
                                break;
                            }
                            Some("else") => {
                                branches.push((cond, body));
                                let (body, term) = parse_nodes(toks, pos, true)?;
                                if term.as_deref() != Some("end") {
                                    return Err("{{ else }} must be followed by {{ end }}".into());
                                }
                                otherwise = body;
                                break;
                            }
                            Some(t) if t.starts_with("else if ") => {
                                branches.push((cond, body));
                                cond = t["else if ".len()..].trim().to_string();
                            }
                            _ => return Err("{{ if }} without {{ end }}".into()),
                        }
                    }
                    nodes.push(Node::If(branches, otherwise));
                } else if a.starts_with("range ")
                    || a.starts_with("with ")
                    || a.starts_with("define ")
                    || a.starts_with("template ")
                {
                    return Err(format!(
                        "{{{{ {} }}}} is not supported in fleet's templates",
                        a.split_whitespace().next().unwrap_or("")
                    ));
                } else {
                    nodes.push(Node::Action(a));
                }
            }
        }
    }
    if nested {
        return Err("{{ if }} without {{ end }}".into());
    }
    Ok((nodes, None))
}

fn render(nodes: &[Node], d: &Data, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(a) => {
                let v = pipeline(a, d)?;
                out.push_str(&to_string(&v));
            }
            Node::If(branches, otherwise) => {
                let mut done = false;
                for (cond, body) in branches {
                    if truthy(&pipeline(cond, d)?) {
                        render(body, d, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    render(otherwise, d, out)?;
                }
            }
        }
    }
    Ok(())
}

fn truthy(v: &V) -> bool {
    match v {
        V::Bool(b) => *b,
        V::Str(s) => !s.is_empty(),
        V::Float(f) => *f != 0.0,
        V::Int(i) => *i != 0,
        V::Map(m) => !m.is_empty(),
    }
}

/// Go's `%v` for a float64: shortest representation, exponent below 1e-4 and from 1e21.
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if f == 0.0 {
        return "0".into();
    }
    let exp = f.abs().log10().floor() as i32;
    if !(-4..21).contains(&exp) {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    format!("{f}")
}

/// Go's `%.{prec}g`.
fn go_g(f: f64, prec: usize) -> String {
    if f == 0.0 || !f.is_finite() {
        return go_float(f);
    }
    let exp = f.abs().log10().floor() as i32;
    if exp < -4 || exp >= prec as i32 {
        let s = format!("{:.*e}", prec.saturating_sub(1), f);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (prec as i32 - 1 - exp).max(0) as usize;
    let s = format!("{:.*}", decimals, f);
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

fn to_string(v: &V) -> String {
    match v {
        V::Str(s) => s.clone(),
        V::Float(f) => go_float(*f),
        V::Int(i) => i.to_string(),
        V::Bool(b) => b.to_string(),
        V::Map(m) => format!("map[{}]", m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")),
    }
}

fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut depth = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                cur.push(c);
                while let Some(c2) = chars.next() {
                    cur.push(c2);
                    if c2 == '\\' {
                        if let Some(c3) = chars.next() {
                            cur.push(c3);
                        }
                    } else if c2 == '"' {
                        break;
                    }
                }
            }
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ' ' | '\t' | '\n' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses in template".into());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn pipeline(p: &str, d: &Data) -> Result<V, String> {
    let mut prev: Option<V> = None;
    for cmd in split_pipes(p) {
        let mut args = split_args(cmd.trim())?;
        if args.is_empty() {
            return Err("empty command in template".into());
        }
        let first = args.remove(0);
        let mut vals: Vec<V> = args.iter().map(|a| operand(a, d)).collect::<Result<_, _>>()?;
        if let Some(p) = prev.take() {
            vals.push(p);
        }
        prev = Some(if is_function(&first) {
            call(&first, vals)?
        } else if vals.is_empty() {
            operand(&first, d)?
        } else {
            return Err(format!("{first} is not a function"));
        });
    }
    prev.ok_or_else(|| "empty pipeline".to_string())
}

fn split_pipes(p: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut in_str, mut depth) = (0, false, 0);
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'(' if !in_str => depth += 1,
            b')' if !in_str => depth -= 1,
            b'|' if !in_str && depth == 0 => {
                out.push(&p[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&p[start..]);
    out
}

fn is_function(s: &str) -> bool {
    matches!(
        s,
        "eq" | "ne"
            | "lt"
            | "le"
            | "gt"
            | "ge"
            | "and"
            | "or"
            | "not"
            | "printf"
            | "humanize"
            | "humanize1024"
            | "humanizePercentage"
            | "humanizeDuration"
            | "title"
            | "toUpper"
            | "toLower"
            | "len"
            | "reReplaceAll"
            | "match"
    )
}

fn operand(a: &str, d: &Data) -> Result<V, String> {
    if let Some(inner) = a.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        return pipeline(inner, d);
    }
    if let Some(s) = a.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return Ok(V::Str(unescape(s)));
    }
    if a == "true" || a == "false" {
        return Ok(V::Bool(a == "true"));
    }
    if let Ok(i) = a.parse::<i64>() {
        return Ok(V::Int(i));
    }
    if let Ok(f) = a.parse::<f64>() {
        return Ok(V::Float(f));
    }
    let (root, field) = match a.split_once('.') {
        Some((r, f)) if !r.is_empty() => (r, Some(f)),
        _ if a.starts_with('.') => {
            let rest = &a[1..];
            match rest.split_once('.') {
                Some((r, f)) => (r, Some(f)),
                None => (rest, None),
            }
        }
        _ => (a, None),
    };
    let map = |m: &BTreeMap<String, String>| match field {
        Some(f) => Ok(V::Str(m.get(f).cloned().unwrap_or_default())),
        None => Ok(V::Map(m.clone())),
    };
    match root {
        "$labels" | "Labels" => map(&d.labels),
        "$externalLabels" | "ExternalLabels" => map(&d.external_labels),
        "$value" | "Value" if field.is_none() => Ok(V::Float(d.value)),
        _ => Err(format!("unknown name `{a}` in template (use $labels, $value or $externalLabels)")),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn num(v: &V) -> Option<f64> {
    match v {
        V::Float(f) => Some(*f),
        V::Int(i) => Some(*i as f64),
        V::Str(s) => s.parse().ok(),
        _ => None,
    }
}

fn cmp(a: &V, b: &V) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (V::Str(x), V::Str(y)) => Ok(x.cmp(y)),
        _ => {
            let (x, y) = (
                num(a).ok_or("incompatible types for comparison")?,
                num(b).ok_or("incompatible types for comparison")?,
            );
            x.partial_cmp(&y).ok_or_else(|| "cannot compare NaN".to_string())
        }
    }
}

fn call(f: &str, args: Vec<V>) -> Result<V, String> {
    let one =
        |args: &[V]| -> Result<V, String> { args.first().cloned().ok_or_else(|| format!("{f} needs an argument")) };
    use std::cmp::Ordering::*;
    Ok(match f {
        "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
            if args.len() != 2 {
                return Err(format!("{f} needs two arguments"));
            }
            let o = cmp(&args[0], &args[1])?;
            V::Bool(match f {
                "eq" => o == Equal,
                "ne" => o != Equal,
                "lt" => o == Less,
                "le" => o != Greater,
                "gt" => o == Greater,
                _ => o != Less,
            })
        }
        "and" => {
            args.iter().find(|a| !truthy(a)).cloned().or_else(|| args.last().cloned()).ok_or("and needs arguments")?
        }
        "or" => {
            args.iter().find(|a| truthy(a)).cloned().or_else(|| args.last().cloned()).ok_or("or needs arguments")?
        }
        "not" => V::Bool(!truthy(&one(&args)?)),
        "len" => match one(&args)? {
            V::Str(s) => V::Int(s.len() as i64),
            V::Map(m) => V::Int(m.len() as i64),
            _ => return Err("len needs a string or a map".into()),
        },
        "title" => V::Str(title(&to_string(&one(&args)?))),
        "toUpper" => V::Str(to_string(&one(&args)?).to_uppercase()),
        "toLower" => V::Str(to_string(&one(&args)?).to_lowercase()),
        "humanize" => V::Str(humanize(num(&one(&args)?).ok_or("humanize needs a number")?, 1000.0)),
        "humanize1024" => V::Str(humanize(num(&one(&args)?).ok_or("humanize1024 needs a number")?, 1024.0)),
        "humanizePercentage" => {
            V::Str(format!("{}%", go_g(num(&one(&args)?).ok_or("humanizePercentage needs a number")? * 100.0, 4)))
        }
        "humanizeDuration" => V::Str(humanize_duration(num(&one(&args)?).ok_or("humanizeDuration needs a number")?)),
        "printf" => {
            let Some(V::Str(fmt)) = args.first() else { return Err("printf needs a format string".into()) };
            V::Str(printf(fmt, &args[1..])?)
        }
        other => return Err(format!("the template function {other} is not supported by fleet")),
    })
}

fn title(s: &str) -> String {
    let mut out = String::new();
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

fn humanize(v: f64, base: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    if v.abs() >= 1.0 {
        let big = if base == 1024.0 {
            ["", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]
        } else {
            ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]
        };
        let mut x = v;
        let mut i = 0;
        while x.abs() >= base && i < big.len() - 1 {
            x /= base;
            i += 1;
        }
        return format!("{}{}", go_g(x, 4), big[i]);
    }
    let small = ["", "m", "u", "n", "p", "f", "a", "z", "y"];
    let mut x = v;
    let mut i = 0;
    while x.abs() < 1.0 && i < small.len() - 1 {
        x *= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g(x, 4), small[i])
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v.abs() < 1.0 {
        return humanize(v, 1000.0) + "s";
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let v = v.abs();
    let secs = v as u64;
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let frac = v - secs as f64;
    let s_str = if frac > 0.0 && d == 0 && h == 0 && m == 0 {
        format!("{}s", go_g(s as f64 + frac, 4))
    } else {
        format!("{s}s")
    };
    if d > 0 {
        format!("{sign}{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{sign}{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{sign}{m}m {s}s")
    } else {
        format!("{sign}{s_str}")
    }
}

fn printf(fmt: &str, args: &[V]) -> Result<String, String> {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || n == '.' || n == '-' || n == '+' {
                spec.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else { break };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let arg = it.next().ok_or("printf has more verbs than arguments")?;
        let prec: Option<usize> = spec.split_once('.').and_then(|(_, p)| p.parse().ok());
        let s = match verb {
            'v' | 's' => to_string(arg),
            'd' => format!("{}", num(arg).ok_or("%d needs a number")? as i64),
            'f' => format!("{:.*}", prec.unwrap_or(6), num(arg).ok_or("%f needs a number")?),
            'g' => match prec {
                Some(p) => go_g(num(arg).ok_or("%g needs a number")?, p),
                None => go_float(num(arg).ok_or("%g needs a number")?),
            },
            'e' => format!("{:.*e}", prec.unwrap_or(6), num(arg).ok_or("%e needs a number")?),
            'q' => format!("{:?}", to_string(arg)),
            other => return Err(format!("printf verb %{other} is not supported")),
        };
        let width: Option<usize> = spec.trim_start_matches('-').split('.').next().and_then(|w| w.parse().ok());
        match width {
            Some(w) if s.len() < w => {
                if spec.starts_with('-') {
                    out.push_str(&s);
                    out.push_str(&" ".repeat(w - s.len()));
                } else {
                    out.push_str(&" ".repeat(w - s.len()));
                    out.push_str(&s);
                }
            }
            _ => out.push_str(&s),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: f64) -> Data {
        Data {
            labels: [("instance".to_string(), "a".to_string())].into(),
            value,
            external_labels: [("dc".to_string(), "x".to_string())].into(),
        }
    }

    #[test]
    fn the_prometheus_idioms() {
        let d = data(250.0);
        assert_eq!(expand("{{ $labels.instance }} uses {{ $value }}", &d).unwrap(), "a uses 250");
        assert_eq!(expand("{{ if gt $value 200.0 }}critical{{ else }}warning{{ end }}", &d).unwrap(), "critical");
        assert_eq!(
            expand("{{ if lt $value 100.0 }}low{{ else if lt $value 300.0 }}mid{{ else }}high{{ end }}", &d).unwrap(),
            "mid"
        );
        assert_eq!(expand("{{ $externalLabels.dc }}/{{ .Labels.instance }}", &d).unwrap(), "x/a");
        assert_eq!(expand("{{ printf \"%.2f\" $value }}", &d).unwrap(), "250.00");
        assert_eq!(expand("{{ $value | humanize }}", &data(1234567.0)).unwrap(), "1.235M");
        assert_eq!(expand("{{ humanizePercentage 0.1234 }}", &d).unwrap(), "12.34%");
        assert_eq!(expand("{{ humanizeDuration 3725 }}", &d).unwrap(), "1h 2m 5s");
        assert_eq!(expand("{{ \"disk full\" | title }} {{ toUpper \"x\" }}", &d).unwrap(), "Disk Full X");
        assert_eq!(expand("a {{- \" b \" -}} c", &d).unwrap(), "a b c");
        assert_eq!(expand("{{ $value }}", &data(0.95)).unwrap(), "0.95");
        assert_eq!(expand("{{ $value }}", &data(1e-7)).unwrap(), "1e-07");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(expand("{{ range $labels }}x{{ end }}", &data(1.0)).unwrap_err().contains("range"));
        assert!(expand("{{ $nope }}", &data(1.0)).unwrap_err().contains("$nope"));
        assert!(expand("{{ if true }}x", &data(1.0)).unwrap_err().contains("without {{ end }}"));
    }
}

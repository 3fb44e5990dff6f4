//! Functions that rewrite labels: `label_replace` and `label_join`.

use promql_parser::parser::Call;

use super::arg;
use crate::promql::eval::Evaluator;
use crate::promql::{DROPPED_NAME, EvalError, Labels, NAME, Sample, Value, invalid};

/// The value of label `k`; the metric name also when an earlier function set it aside.
fn source(l: &Labels, k: &str) -> String {
    let v = l.get(k).or_else(|| if k == NAME { l.get(DROPPED_NAME) } else { None });
    v.unwrap_or_default().to_string()
}

/// Sets label `k` to `v` (removes it when `v` is empty); a name set here is kept.
fn set(l: &mut Labels, k: &str, v: String) {
    if k == NAME {
        l.remove(DROPPED_NAME);
    }
    if v.is_empty() {
        l.remove(k);
    } else {
        l.insert(k.to_string(), v);
    }
}

/// The result, unless two of its series now have the same labels.
fn distinct(out: Vec<Sample>) -> Result<Value, EvalError> {
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    if !out.iter().all(|s| seen.insert(&s.labels)) {
        return invalid("vector cannot contain metrics with the same labelset");
    }
    Ok(Value::Vector(out))
}

/// `label_replace(v, dst, replacement, src, regex)`: where the regex matches all of `src`'s
/// value, `dst` is set to the replacement with the captures expanded (removed when empty).
pub(super) fn label_replace(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let v = ev.vector(arg(c, 0)?, t, name)?;
    let s = |i: usize| -> Result<String, EvalError> {
        match ev.eval(arg(c, i)?, t)? {
            Value::String(s) => Ok(s),
            _ => invalid(format!("{name}() argument {} must be a string", i + 1)),
        }
    };
    let (dst, repl, src, re) = (s(1)?, s(2)?, s(3)?, s(4)?);
    let re = regex::Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| EvalError::Invalid(format!("invalid regex in label_replace: {e}")))?;
    let mut out = Vec::new();
    for mut smp in v {
        let value = source(&smp.labels, &src);
        if let Some(caps) = re.captures(&value) {
            let mut res = String::new();
            caps.expand(&repl.replace("$$", "\u{0}"), &mut res);
            let res = res.replace('\u{0}', "$");
            set(&mut smp.labels, &dst, res);
        }
        out.push(smp);
    }
    distinct(out)
}

/// `label_join(v, dst, separator, src...)`: `dst` set to the `src` labels' values joined
/// (removed when empty).
pub(super) fn label_join(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let args = &c.args.args;
    let v = ev.vector(arg(c, 0)?, t, name)?;
    let mut strs = Vec::new();
    for i in 1..args.len() {
        match ev.eval(arg(c, i)?, t)? {
            Value::String(s) => strs.push(s),
            _ => return invalid(format!("{name}() arguments must be strings")),
        }
    }
    if strs.len() < 2 {
        return invalid("label_join() needs a destination label and a separator");
    }
    let (dst, sep, srcs) = (strs[0].clone(), strs[1].clone(), strs[2..].to_vec());
    distinct(
        v.into_iter()
            .map(|mut s| {
                let joined: Vec<String> = srcs.iter().map(|k| source(&s.labels, k)).collect();
                set(&mut s.labels, &dst, joined.join(&sep));
                s
            })
            .collect(),
    )
}

//! Label selectors in Kubernetes' syntax, for picking hosts by their labels (`host` is a label
//! too): requirements separated by commas, all of which must hold.
//!
//! | requirement | holds when |
//! |---|---|
//! | `key` | the label is set |
//! | `!key` | the label is not set |
//! | `key=value`, `key==value` | the label is set to `value` |
//! | `key!=value` | the label is not set to `value` (or not set at all) |
//! | `key in (a, b)` | the label is set to one of the values |
//! | `key notin (a, b)` | the label is set to none of them (or not set at all) |
//!
//! An empty selector is refused rather than taken to match every host: picking every host is
//! said with `--all`. Selectors come from operators' command lines and travel to the
//! coordinator, so they are bounded in length, requirements and values.

use std::fmt;

/// The longest selector accepted, in bytes.
pub const MAX_TEXT: usize = 4096;
/// The most requirements a selector may have.
pub const MAX_REQUIREMENTS: usize = 32;
/// The most values an `in` or `notin` set may have.
pub const MAX_VALUES: usize = 256;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one label.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
}

/// Why a selector was refused: what is wrong, where, and how it is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {text:?}: {reason} (write for example role=gpu,env!=test or \"zone in (a, b)\")")]
pub struct SelectorError {
    /// The selector as given (cut to 100 bytes).
    pub text: String,
    /// What is wrong, with the byte offset where it was found.
    pub reason: String,
}

/// Whether `b` may be part of a label name (as fleet's host labels are named) or a value.
fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/' | b':' | b'@' | b'+')
}

fn valid_key(k: &str) -> bool {
    k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, reason: impl fmt::Display) -> SelectorError {
        let mut text = self.text.to_string();
        if text.len() > 100 {
            let mut cut = 100;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        SelectorError { text, reason: format!("{reason} at byte {}", self.at) }
    }

    fn skip_spaces(&mut self) {
        while self.text.as_bytes().get(self.at).is_some_and(|b| *b == b' ') {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.text[self.at..].starts_with(s) {
            self.at += s.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> &str {
        let start = self.at;
        while self.peek().is_some_and(word_byte) {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    /// `in` or `notin` followed by a space or `(`, as a whole word.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let rest = &self.text[self.at..];
        if rest.starts_with(kw) && matches!(rest.as_bytes().get(kw.len()), Some(b' ' | b'(')) {
            self.at += kw.len();
            true
        } else {
            false
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let at = self.at;
        let k = self.word().to_string();
        if k.is_empty() {
            return Err(self.error("a label name is missing"));
        }
        if !valid_key(&k) {
            self.at = at;
            return Err(
                self.error(format!("{k:?} is not a label name (letters, digits and '_', not starting with a digit)"))
            );
        }
        Ok(k)
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let v = self.word().to_string();
        if v.is_empty() && !matches!(self.peek(), None | Some(b',' | b')')) {
            return Err(self
                .error(format!("{:?} cannot be part of a value", self.text[self.at..].chars().next().unwrap_or(' '))));
        }
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_spaces();
        if !self.eat("(") {
            return Err(self.error("a set of values in parentheses is missing"));
        }
        let mut values = Vec::new();
        loop {
            let v = self.value()?;
            if v.is_empty() {
                return Err(self.error("a value is missing in the set"));
            }
            if values.len() == MAX_VALUES {
                return Err(self.error(format!("more than {MAX_VALUES} values")));
            }
            values.push(v);
            self.skip_spaces();
            if self.eat(")") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("',' or ')' is missing"));
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_spaces();
        if self.eat("!") {
            self.skip_spaces();
            return Ok(Requirement { key: self.key()?, op: Op::NotExists });
        }
        let key = self.key()?;
        self.skip_spaces();
        let op = if self.eat("!=") {
            Op::NotEquals(self.value()?)
        } else if self.eat("==") || self.eat("=") {
            Op::Equals(self.value()?)
        } else if self.eat_keyword("notin") {
            Op::NotIn(self.set()?)
        } else if self.eat_keyword("in") {
            Op::In(self.set()?)
        } else if matches!(self.peek(), None | Some(b',')) {
            Op::Exists
        } else {
            return Err(self.error("'=', '!=', 'in', 'notin', ',' or the end is expected"));
        };
        Ok(Requirement { key, op })
    }
}

impl Selector {
    /// Parses `text`. Spaces around operators and values are allowed.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { text, at: 0 };
        if text.len() > MAX_TEXT {
            return Err(p.error(format!("it is {} bytes long; the limit is {MAX_TEXT}", text.len())));
        }
        p.skip_spaces();
        if p.peek().is_none() {
            return Err(p.error("it is empty (to pick every host, say --all)"));
        }
        let mut requirements = Vec::new();
        loop {
            if requirements.len() == MAX_REQUIREMENTS {
                return Err(p.error(format!("more than {MAX_REQUIREMENTS} requirements")));
            }
            requirements.push(p.requirement()?);
            p.skip_spaces();
            if p.peek().is_none() {
                return Ok(Selector { requirements });
            }
            if !p.eat(",") {
                return Err(p.error("',' is expected between requirements"));
            }
        }
    }

    /// Whether a host whose labels `get` returns (including `host`, its name) is selected.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| {
            let v = get(&r.key);
            match &r.op {
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Equals(x) => v == Some(x.as_str()),
                Op::NotEquals(x) => v != Some(x.as_str()),
                Op::In(xs) => v.is_some_and(|v| xs.iter().any(|x| x == v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.iter().any(|x| x == v)),
            }
        })
    }
}

impl fmt::Display for Selector {
    /// The selector in its canonical form (`a=b,c in (d,e)`), which parses back to itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Op::Exists => write!(f, "{}", r.key)?,
                Op::NotExists => write!(f, "!{}", r.key)?,
                Op::Equals(v) => write!(f, "{}={v}", r.key)?,
                Op::NotEquals(v) => write!(f, "{}!={v}", r.key)?,
                Op::In(vs) => write!(f, "{} in ({})", r.key, vs.join(","))?,
                Op::NotIn(vs) => write!(f, "{} notin ({})", r.key, vs.join(","))?,
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn host(name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("host".into(), name.into());
        m
    }

    fn picks(selector: &str, hosts: &[BTreeMap<String, String>]) -> Vec<String> {
        let s = Selector::parse(selector).unwrap_or_else(|e| panic!("{e}"));
        hosts.iter().filter(|h| s.matches(|k| h.get(k).map(String::as_str))).map(|h| h["host"].clone()).collect()
    }

    #[test]
    fn every_kind_of_requirement_picks_what_kubernetes_would() {
        let hosts = [
            host("main-pc", &[("role", "gpu"), ("env", "prod")]),
            host("pc2", &[("role", "db"), ("env", "test")]),
            host("nas", &[]),
        ];
        assert_eq!(picks("role=gpu", &hosts), ["main-pc"]);
        assert_eq!(picks("role == gpu", &hosts), ["main-pc"]);
        assert_eq!(picks("role!=gpu", &hosts), ["pc2", "nas"], "!= also picks hosts without the label");
        assert_eq!(picks("role", &hosts), ["main-pc", "pc2"]);
        assert_eq!(picks("!role", &hosts), ["nas"]);
        assert_eq!(picks("role in (gpu, db)", &hosts), ["main-pc", "pc2"]);
        assert_eq!(picks("role notin (gpu)", &hosts), ["pc2", "nas"], "notin also picks hosts without the label");
        assert_eq!(picks("role,env!=test", &hosts), ["main-pc"], "every requirement must hold");
        assert_eq!(picks("host=pc2", &hosts), ["pc2"], "the host name is a label");
        assert_eq!(picks("host in (nas,main-pc)", &hosts), ["main-pc", "nas"]);
        assert!(picks("role=web", &hosts).is_empty());
        assert_eq!(picks("env=", &[host("x", &[("env", "")])]), ["x"], "an empty value is a value");
    }

    #[test]
    fn the_canonical_form_parses_back_to_itself() {
        for text in ["a=b", "a!=b", "a", "!a", "a in (b,c)", "a notin (b)", "a=b,c in (d,e),!f", "host=pc2.lan"] {
            let s = Selector::parse(text).unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        }
        assert_eq!(Selector::parse(" a = b , c in ( d , e ) ").unwrap().to_string(), "a=b,c in (d,e)");
    }

    #[test]
    fn bad_selectors_say_what_and_where() {
        let err = |t: &str| Selector::parse(t).unwrap_err().to_string();
        assert!(err("").contains("it is empty (to pick every host, say --all)"), "{}", err(""));
        assert!(err("a=b,").contains("a label name is missing at byte 4"), "{}", err("a=b,"));
        assert!(err("1a=b").contains("\"1a\" is not a label name"));
        assert!(err("a in b").contains("a set of values in parentheses is missing"));
        assert!(err("a in (b").contains("',' or ')' is missing"));
        assert!(err("a in ()").contains("a value is missing in the set"));
        assert!(err("a=b c").contains("',' is expected between requirements"));
        assert!(err("a<b").contains("'=', '!=', 'in', 'notin', ',' or the end is expected"));
        assert!(err("a=(b)").contains("cannot be part of a value"));
        for e in [err("a in (b"), err("")] {
            assert!(e.contains("write for example role=gpu"), "{e}");
        }
    }

    #[test]
    fn selectors_are_bounded() {
        let long = format!("a={}", "x".repeat(MAX_TEXT));
        assert!(Selector::parse(&long).unwrap_err().reason.contains("the limit is 4096"));
        let many = (0..=MAX_REQUIREMENTS).map(|i| format!("l{i}")).collect::<Vec<_>>().join(",");
        assert!(Selector::parse(&many).unwrap_err().reason.contains("more than 32 requirements"));
        let set = format!("a in ({})", (0..=MAX_VALUES).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        assert!(Selector::parse(&set).unwrap_err().reason.contains("more than 256 values"));
        // Whatever the bytes, parsing ends with an answer.
        for text in ["!", "!!a", "a!", "a in", "a notin(", "(", ")", ",", "a,,b", "é=1", "a=é"] {
            let _ = Selector::parse(text);
        }
        assert!(Selector::parse(&"é".repeat(60)).unwrap_err().text.ends_with('…'));
    }
}

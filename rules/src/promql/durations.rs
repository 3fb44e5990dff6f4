//! Duration expressions (Prometheus 3's `promql-duration-expr`): arithmetic where a duration is
//! expected, in a range or subquery (`foo[26m+4m]`, `foo[1h/2:10s*3]`) and after `offset`
//! (`offset (2 * 2)`, `offset -(1m + 30s)`). The parser fleet uses knows only literals, so
//! [`rewrite`] computes each such expression and writes it back as a literal (`1800000ms`)
//! before the text is parsed. Strings and comments are passed over untouched. It also reads
//! `holt_winters(...)` as `double_exponential_smoothing(...)`, its name since Prometheus 3.
//! A leaf.
//!
//! The arithmetic: numbers are seconds; `+ - * / %` and `^` (which binds tighter than a sign,
//! so `-2 ^ 2` is -4) on seconds, with parentheses.

use std::borrow::Cow;

/// The longest duration expression evaluated, in bytes.
const MAX_EXPR: usize = 4096;
/// The deepest nesting of parentheses in one.
const MAX_NESTING: usize = 64;

/// `text` with every duration expression replaced by the literal it computes to; the text
/// itself when it has none. Err says which expression cannot be computed and why.
pub fn rewrite(text: &str) -> Result<Cow<'_, str>, String> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => {
                let Some(close) = text[i..].find(']').map(|p| i + p) else { return Ok(Cow::Borrowed(text)) };
                let inner = &text[i + 1..close];
                if needs_rewrite(inner) {
                    let mut parts = Vec::new();
                    for part in inner.split(':') {
                        if part.trim().is_empty() {
                            parts.push(String::new());
                        } else {
                            let secs = compute(part)?;
                            if secs <= 0.0 {
                                return Err(format!("the range or step [{}] is not positive", part.trim()));
                            }
                            parts.push(literal(secs));
                        }
                    }
                    out.push_str(&text[copied..=i]);
                    out.push_str(&parts.join(":"));
                    copied = close;
                }
                i = close + 1;
            }
            b'h' if is_keyword(text, i, "holt_winters") && text[i + 12..].trim_start().starts_with('(') => {
                // Prometheus 3's name for it; its parser no longer knows the old one.
                out.push_str(&text[copied..i]);
                out.push_str("double_exponential_smoothing");
                copied = i + "holt_winters".len();
                i = copied;
            }
            b'o' | b'O' if is_keyword(text, i, "offset") => {
                let mut j = i + "offset".len();
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let negative = j < b.len() && b[j] == b'-';
                let mut k = if negative { j + 1 } else { j };
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k < b.len() && b[k] == b'(' {
                    let end = matching_paren(b, k).ok_or("an offset's parenthesis is not closed")?;
                    let mut secs = compute(&text[k..=end])?;
                    if negative {
                        secs = -secs;
                    }
                    out.push_str(&text[copied..j]);
                    out.push_str(&literal(secs));
                    copied = end + 1;
                    i = end + 1;
                } else {
                    i = j;
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Ok(Cow::Borrowed(text));
    }
    out.push_str(&text[copied..]);
    Ok(Cow::Owned(out))
}

/// Whether the text of a range (or `range:step`) is an expression rather than literals.
fn needs_rewrite(inner: &str) -> bool {
    inner.bytes().any(|c| b"+-*/%^()".contains(&c))
        && inner.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-*/%^(). :".contains(&c))
}

fn is_keyword(text: &str, i: usize, word: &str) -> bool {
    let b = text.as_bytes();
    let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
    let end = i + word.len();
    before_ok
        && text.get(i..end).is_some_and(|w| w.eq_ignore_ascii_case(word))
        && (end == b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_'))
}

fn skip_string(b: &[u8], start: usize) -> usize {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q != b'`' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn matching_paren(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Seconds as a literal the parser reads: whole milliseconds (as Prometheus keeps them).
fn literal(secs: f64) -> String {
    let ms = (secs * 1e9).trunc() / 1e6;
    format!("{}ms", ms.trunc() as i64)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Op(u8),
    Open,
    Close,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == b')' {
            out.push(Tok::Close);
            i += 1;
        } else if b"+-*/%^".contains(&c) {
            out.push(Tok::Op(c));
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            let word = &s[start..i];
            let secs = match word.parse::<f64>() {
                Ok(v) => v,
                Err(_) => humantime_like(word).ok_or_else(|| format!("\"{word}\" is not a number or a duration"))?,
            };
            out.push(Tok::Num(secs));
        } else {
            return Err(format!("unexpected character {:?} in the duration expression \"{s}\"", c as char));
        }
    }
    Ok(out)
}

/// A Prometheus duration literal (`1h30m`, `8000ms`) in seconds.
fn humantime_like(w: &str) -> Option<f64> {
    let mut rest = w;
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let secs = match &rest[..unit] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return None,
        };
        rest = &rest[unit..];
        total += n * secs;
    }
    Some(total)
}

/// The value in seconds of a duration expression.
pub fn compute(s: &str) -> Result<f64, String> {
    if s.len() > MAX_EXPR {
        return Err(format!("a duration expression of {} bytes; at most {MAX_EXPR}", s.len()));
    }
    let toks = tokens(s)?;
    let mut p = Parser { toks: &toks, i: 0, depth: 0 };
    let v = p.sum()?;
    if p.i != toks.len() {
        return Err(format!("cannot read the duration expression \"{}\"", s.trim()));
    }
    if !v.is_finite() {
        return Err(format!("the duration expression \"{}\" is not a finite duration", s.trim()));
    }
    Ok(v)
}

struct Parser<'a> {
    toks: &'a [Tok],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ (b'+' | b'-'))) = self.peek().cloned() {
            self.i += 1;
            let r = self.product()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut v = self.unary()?;
        while let Some(Tok::Op(op @ (b'*' | b'/' | b'%'))) = self.peek().cloned() {
            self.i += 1;
            let r = self.unary()?;
            v = match op {
                b'*' => v * r,
                b'/' => v / r,
                _ => v % r,
            };
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<f64, String> {
        match self.peek() {
            Some(Tok::Op(b'-')) => {
                self.i += 1;
                Ok(-self.unary()?)
            }
            Some(Tok::Op(b'+')) => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.primary()?;
        if let Some(Tok::Op(b'^')) = self.peek() {
            self.i += 1;
            let exp = self.unary()?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<f64, String> {
        match self.peek().cloned() {
            Some(Tok::Num(v)) => {
                self.i += 1;
                Ok(v)
            }
            Some(Tok::Open) => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return Err("the duration expression is nested too deep".into());
                }
                self.i += 1;
                let v = self.sum()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("a parenthesis is not closed in the duration expression".into());
                }
                self.i += 1;
                self.depth -= 1;
                Ok(v)
            }
            _ => Err("a duration expression ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_become_literals() {
        assert_eq!(rewrite("changes(x[26m+4m])").unwrap(), "changes(x[1800000ms])");
        assert_eq!(rewrite("x[2m*(10+5)]").unwrap(), "x[1800000ms]");
        assert_eq!(rewrite("x[1h30m % 1h]").unwrap(), "x[1800000ms]");
        assert_eq!(rewrite("s(x[29s+1s:5s+5s])").unwrap(), "s(x[30000ms:10000ms])");
        assert_eq!(rewrite("x offset (2 * 2)").unwrap(), "x offset 4000ms");
        assert_eq!(rewrite("x offset -(1m + 30s)").unwrap(), "x offset -90000ms");
        assert_eq!(rewrite("x offset (-2 ^ 2)").unwrap(), "x offset -4000ms");
        assert_eq!(rewrite("x[5m] offset 100 + 2").unwrap(), "x[5m] offset 100 + 2", "no parentheses: left alone");
        assert!(matches!(rewrite(r#"x{a=~"[1+2]"}[5m]"#).unwrap(), Cow::Borrowed(_)), "strings are left alone");
        assert!(rewrite("x[1m-2m]").is_err());
        assert!(rewrite("x[(1m]").is_err());
        assert!(rewrite("offseé[1m+").is_ok() && rewrite("é offset").is_ok(), "any text is safe to scan");
        assert_eq!(rewrite("holt_winters(x[5m], 0.5, 0.5)").unwrap(), "double_exponential_smoothing(x[5m], 0.5, 0.5)");
        assert_eq!(rewrite("my_holt_winters").unwrap(), "my_holt_winters");
        assert_eq!(rewrite("holt_winters{a=\"b\"}").unwrap(), "holt_winters{a=\"b\"}", "a metric of that name");
    }
}

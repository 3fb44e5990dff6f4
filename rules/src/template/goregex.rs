//! Go regular expressions (RE2 syntax, as `match` and `reReplaceAll` take them) compiled with
//! Rust's regex crate. The syntaxes agree except where this file translates: Go's `\d`, `\w`,
//! `\s` and `\b` are ASCII-only where Rust's are Unicode-aware, Go reads `[` and `&&` inside a
//! class literally where Rust nests and intersects classes, and Go has `\Q...\E` quoting.
//! Compiled size is bounded so that a pattern cannot take unbounded memory.

use regex::{Regex, RegexBuilder};

/// The compiled-program size limit per pattern.
const SIZE_LIMIT: usize = 1 << 20;

pub(super) fn compile(pattern: &str) -> Result<Regex, String> {
    let translated = translate(pattern)?;
    RegexBuilder::new(&translated)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression {}: {}", super::strconv::quote(pattern), first_line(&e)))
}

fn first_line(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines().rev().find(|l| l.starts_with("error:")).unwrap_or(&s).trim_start_matches("error: ").to_string()
}

/// Rewrites Go syntax into the Rust equivalent.
fn translate(p: &str) -> Result<String, String> {
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars().peekable();
    let mut in_class = false;
    // Inside a class, `]` right after `[` or `[^` is a literal.
    let mut class_start = false;
    while let Some(c) = chars.next() {
        let at_class_start = std::mem::replace(&mut class_start, false);
        match c {
            '\\' => {
                let Some(e) = chars.next() else { return Err("trailing backslash at end of expression".into()) };
                match (e, in_class) {
                    ('Q', _) => {
                        // \Q...\E: everything up to \E (or the end) is literal.
                        let mut lit = String::new();
                        while let Some(x) = chars.next() {
                            if x == '\\' && chars.peek() == Some(&'E') {
                                chars.next();
                                break;
                            }
                            lit.push(x);
                        }
                        for x in lit.chars() {
                            push_literal(&mut out, x);
                        }
                    }
                    ('d', false) => out.push_str("[0-9]"),
                    ('D', false) => out.push_str("[^0-9]"),
                    ('w', false) => out.push_str("[0-9A-Za-z_]"),
                    ('W', false) => out.push_str("[^0-9A-Za-z_]"),
                    ('s', false) => out.push_str("[\\t\\n\\f\\r ]"),
                    ('S', false) => out.push_str("[^\\t\\n\\f\\r ]"),
                    ('b', false) => out.push_str("(?-u:\\b)"),
                    ('B', false) => out.push_str("(?-u:\\B)"),
                    ('d', true) => out.push_str("0-9"),
                    ('w', true) => out.push_str("0-9A-Za-z_"),
                    ('s', true) => out.push_str("\\t\\n\\f\\r "),
                    ('D', true) => out.push_str("[^0-9]"),
                    ('W', true) => out.push_str("[^0-9A-Za-z_]"),
                    ('S', true) => out.push_str("[^\\t\\n\\f\\r ]"),
                    ('C', _) => return Err("invalid escape sequence: \\C".into()),
                    (e, _) => {
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
            }
            '[' if in_class && chars.peek() == Some(&':') => {
                // A POSIX class such as [:alpha:], copied as is.
                out.push('[');
                for x in chars.by_ref() {
                    out.push(x);
                    if x == ']' {
                        break;
                    }
                }
            }
            ']' if in_class && !at_class_start => {
                in_class = false;
                out.push(']');
            }
            // Literal inside a Go class, an operator inside a Rust one.
            '[' | '&' | '~' | ']' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && chars.peek() == Some(&'-') => out.push_str("\\-"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if regex_syntax_meta(c) {
        out.push('\\');
    }
    out.push(c);
}

fn regex_syntax_meta(c: char) -> bool {
    "\\.+*?()|[]{}^$#&-~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_semantics() {
        let re = compile(r"^\d+\w*$").unwrap();
        assert!(re.is_match("12ab_"));
        assert!(!re.is_match("١٢")); // Arabic-Indic digits are not \d in Go
        assert!(compile(r"[\d.]+").unwrap().is_match("1.5"));
        assert!(compile(r"[^\D]").unwrap().is_match("7"));
        assert!(compile(r"[[]").unwrap().is_match("["));
        assert!(compile(r"[]a]").unwrap().is_match("]"));
        assert!(compile(r"[a&&b]").unwrap().is_match("&"));
        assert!(compile(r"[[:alpha:]]").unwrap().is_match("x"));
        assert!(compile(r"\Qa.b\E").unwrap().is_match("a.b"));
        assert!(!compile(r"\Qa.b\E").unwrap().is_match("axb"));
        assert!(compile(r"\bfoo\b").unwrap().is_match("a foo b"));
        assert!(compile("(").unwrap_err().contains("invalid regular expression"));
        assert_eq!(compile("(?P<x>a)").unwrap().replace_all("aa", "${x}-").as_ref(), "a-a-");
    }
}

//! Go's strconv as templates need it: `Quote` and its relatives (with `unicode.IsPrint`), and
//! the number and quoted-literal parsing of Go 1.19's strconv (`ParseFloat`, `ParseInt`,
//! `ParseUint`, `Unquote`, `UnquoteChar`), with Go's error texts. A leaf: it uses nothing else
//! of the template engine.

use std::fmt::Write as _;

/// Go's `unicode.IsPrint`, approximated: Rust has no general-category table, so this treats
/// controls, white space other than U+0020, format characters and private use as
/// unprintable (unassigned code points are taken as printable).
pub(super) fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c,
        '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}'
        | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}')
}

/// Go's `strconv.Quote` (`ascii`: `QuoteToASCII`), with `quote` as the delimiter.
pub(super) fn quote_with(s: &str, quote: char, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        escape_rune(&mut out, c, quote, ascii);
    }
    out.push(quote);
    out
}

fn escape_rune(out: &mut String, c: char, quote: char, ascii: bool) {
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    let printable = if ascii { c.is_ascii() && is_print(c) } else { is_print(c) };
    if printable {
        out.push(c);
        return;
    }
    let _ = match c {
        '\x07' => write!(out, "\\a"),
        '\x08' => write!(out, "\\b"),
        '\x0c' => write!(out, "\\f"),
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\t' => write!(out, "\\t"),
        '\x0b' => write!(out, "\\v"),
        c if c < ' ' || c == '\x7f' => write!(out, "\\x{:02x}", c as u32),
        c if (c as u32) < 0x10000 => write!(out, "\\u{:04x}", c as u32),
        c => write!(out, "\\U{:08x}", c as u32),
    };
}

/// Go's `strconv.Quote`.
pub(super) fn quote(s: &str) -> String {
    quote_with(s, '"', false)
}

/// Go's `strconv.CanBackquote`.
pub(super) fn can_backquote(s: &str) -> bool {
    s.chars().all(|c| c == '\t' || (c >= ' ' && c != '`' && c != '\x7f' && c != '\u{FEFF}'))
}

/// Go's `underscoreOK`: underscores only between digits or after a base prefix.
fn underscore_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let b = if matches!(b.first(), Some(b'+' | b'-')) { &b[1..] } else { b };
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = b[1].eq_ignore_ascii_case(&b'x');
    }
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// Go's `strconv.ParseUint(s, 0, 64)`: decimal, 0x, 0o, 0b or leading-0 octal.
pub(super) fn parse_uint(s: &str) -> Option<u64> {
    let (base, digits) = if s.len() >= 3 && s.starts_with('0') {
        match s.as_bytes()[1].to_ascii_lowercase() {
            b'b' => (2, &s[2..]),
            b'o' => (8, &s[2..]),
            b'x' => (16, &s[2..]),
            _ => (8, &s[1..]),
        }
    } else if let Some(rest) = s.strip_prefix('0') {
        (8, rest)
    } else {
        (10, s)
    };
    if s.is_empty() || (base != 8 && base != 10 && digits.is_empty()) {
        return None;
    }
    let mut n: u64 = 0;
    let mut underscores = false;
    for c in digits.chars() {
        if c == '_' {
            underscores = true;
            continue;
        }
        let d = c.to_digit(base)?;
        n = n.checked_mul(u64::from(base))?.checked_add(u64::from(d))?;
    }
    if underscores && !underscore_ok(s) {
        return None;
    }
    Some(n)
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
pub(super) fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let u = parse_uint(body)?;
    if neg {
        if u > 1 << 63 {
            return None;
        }
        Some((u as i64).wrapping_neg())
    } else {
        i64::try_from(u).ok()
    }
}

/// Go's `strconv.ParseFloat(s, 64)`, with its error text.
pub(super) fn parse_float(s: &str) -> Result<f64, String> {
    let syntax = || format!("strconv.ParseFloat: parsing {}: invalid syntax", quote(s));
    let range = || format!("strconv.ParseFloat: parsing {}: value out of range", quote(s));
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Ok(if neg { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if lower == "nan" && body.len() == s.len() {
        return Ok(f64::NAN);
    }
    let cleaned: String;
    let body = if body.contains('_') {
        if !underscore_ok(s) {
            return Err(syntax());
        }
        cleaned = body.replace('_', "");
        cleaned.as_str()
    } else {
        body
    };
    let v = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        parse_hex_float(hex).ok_or_else(syntax)?
    } else {
        // Go's decimal syntax: digits, an optional point, an optional exponent.
        let b = body.as_bytes();
        let mut i = 0;
        let mut digits = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
                digits += 1;
            }
        }
        if digits == 0 {
            return Err(syntax());
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(syntax());
            }
        }
        if i != b.len() {
            return Err(syntax());
        }
        body.parse::<f64>().map_err(|_| syntax())?
    };
    if v.is_infinite() {
        return Err(range());
    }
    Ok(if neg { -v } else { v })
}

/// A hexadecimal float's mantissa and mandatory `p` exponent: "1.8p1".
fn parse_hex_float(s: &str) -> Option<f64> {
    let (mant, exp) = s.split_once(['p', 'P'])?;
    let exp: i32 = exp.parse().ok()?;
    let (int_part, frac_part) = mant.split_once('.').unwrap_or((mant, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut m: u128 = 0;
    let mut shift: i32 = 0;
    for (i, c) in int_part.chars().chain(frac_part.chars()).enumerate() {
        let d = c.to_digit(16)?;
        if m < 1 << 120 {
            m = m * 16 + u128::from(d);
            if i >= int_part.len() {
                shift -= 4;
            }
        } else if i < int_part.len() {
            shift += 4;
        }
    }
    Some(m as f64 * 2f64.powi(exp.saturating_add(shift)))
}

/// Go's `strconv.Unquote` for "interpreted" and `raw` strings.
pub(super) fn unquote(s: &str) -> Result<String, String> {
    if let Some(raw) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        // Carriage returns are discarded from raw strings.
        return Ok(raw.replace('\r', ""));
    }
    let Some(body) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return Err("invalid syntax".into());
    };
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        let (c, tail) = unquote_one(rest, '"')?;
        match c {
            Unquoted::Byte(b) => out.push(b),
            Unquoted::Rune(r) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(r.encode_utf8(&mut buf).as_bytes());
            }
        }
        rest = tail;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A character constant ('a', '\n', '\x41') as its code point.
pub(super) fn unquote_char(s: &str) -> Result<i64, String> {
    let body = s.strip_prefix('\'').ok_or("invalid syntax")?;
    let (c, tail) = unquote_one(body, '\'')?;
    if tail != "'" {
        return Err(format!("malformed character constant: {s}"));
    }
    Ok(match c {
        Unquoted::Byte(b) => i64::from(b),
        Unquoted::Rune(r) => i64::from(u32::from(r)),
    })
}

enum Unquoted {
    Byte(u8),
    Rune(char),
}

/// Go's `strconv.UnquoteChar`: one character or escape of a quoted literal.
fn unquote_one(s: &str, quote: char) -> Result<(Unquoted, &str), String> {
    let bad = || "invalid syntax".to_string();
    let mut chars = s.chars();
    let c = chars.next().ok_or_else(bad)?;
    if c == quote {
        return Err(bad());
    }
    if c != '\\' {
        return Ok((Unquoted::Rune(c), chars.as_str()));
    }
    let e = chars.next().ok_or_else(bad)?;
    let rest = chars.as_str();
    let simple = match e {
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'f' => Some('\x0c'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\x0b'),
        '\\' => Some('\\'),
        '\'' | '"' if e == quote => Some(e),
        _ => None,
    };
    if let Some(r) = simple {
        return Ok((Unquoted::Rune(r), rest));
    }
    let hex = |n: usize| -> Result<(u32, &str), String> {
        let digits = rest.get(..n).ok_or_else(bad)?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| bad())?;
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok((v, &rest[n..]))
    };
    match e {
        'x' => {
            let (v, tail) = hex(2)?;
            Ok((Unquoted::Byte(v as u8), tail))
        }
        'u' | 'U' => {
            let (v, tail) = hex(if e == 'u' { 4 } else { 8 })?;
            let r = char::from_u32(v).ok_or_else(bad)?;
            Ok((Unquoted::Rune(r), tail))
        }
        '0'..='7' => {
            let digits = s.get(1..4).ok_or_else(bad)?;
            let v = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
            if v > 255 || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
                return Err(bad());
            }
            Ok((Unquoted::Byte(v as u8), &s[4..]))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_parse_like_go() {
        assert_eq!(parse_float("0x1.8p1"), Ok(3.0));
        assert_eq!(parse_float("-Inf"), Ok(f64::NEG_INFINITY));
        assert!(parse_float("1e400").unwrap_err().contains("value out of range"));
        assert!(parse_float("abc").unwrap_err().contains("invalid syntax"));
    }

    #[test]
    fn strings_unquote_like_go() {
        assert_eq!(unquote(r#""a\tb\x41\u00e9\101""#).unwrap(), "a\tbAéA");
        assert_eq!(unquote("`a\\n\r`").unwrap(), "a\\n");
        assert!(unquote(r#""\q""#).is_err());
        assert!(unquote(r#""\'""#).is_err());
    }
}

//! Go's fmt and strconv output for template values: `fmt.Sprint`, `fmt.Sprintln`,
//! `fmt.Sprintf` (verbs, flags, width, precision, argument indexes and the `%!d(string=x)`
//! error forms) and `strconv.FormatFloat`/`Quote`. Ported from Go 1.19's fmt/print.go,
//! fmt/format.go and strconv/ftoa.go; the decimal digits themselves come from Rust's float
//! formatting, which like Go's is exact and rounds halfway cases to even.

use std::fmt::Write as _;

use super::gotime::{duration_string, month_name, weekday_name};
use super::strconv::{can_backquote, is_print, quote_with};
use super::value::{Sample, Value};

/// Go's `fmt.Sprint(f)` of a float64 (`%v`), which is `strconv.FormatFloat(f, 'g', -1, 64)`:
/// the shortest digits that read back as `f`, in exponent form when the decimal exponent is
/// below -4 or at least 6 (`1e+06`, `1.234567e+06`, `100000`, `1e-05`, `0.0001`), and
/// `+Inf`, `-Inf`, `NaN`.
pub fn go_float(f: f64) -> String {
    format_float(f, 'g', -1)
}

/// Decimal digits of a float: `0.d[0]d[1]… × 10^dp`, without trailing zeros.
struct Digits {
    d: Vec<u8>,
    dp: i32,
}

/// Parses Rust's `{:e}` output ("1.2345e6") into digits.
fn digits_from_exp(s: &str) -> Digits {
    let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while d.last() == Some(&b'0') {
        d.pop();
    }
    if d.is_empty() {
        return Digits { d, dp: 0 };
    }
    Digits { d, dp: exp + 1 }
}

/// Go's `strconv.FormatFloat(v, fmt, prec, 64)` for the formats 'b', 'e', 'E', 'f', 'g',
/// 'G', 'x', 'X'; `prec < 0` asks for the shortest representation.
pub(super) fn format_float(v: f64, fmt: char, prec: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let neg = v.is_sign_negative();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let a = v.abs();
    match fmt {
        'b' => {
            let (mant, exp) = mantissa_exponent(v);
            let exp = exp - 1023 - 52;
            let _ = write!(out, "{mant}p{}{exp}", if exp >= 0 { "+" } else { "" });
            return out;
        }
        'x' | 'X' => {
            fmt_x(&mut out, a, prec, fmt);
            return out;
        }
        'f' if prec >= 0 => {
            let _ = write!(out, "{:.*}", prec as usize, a);
            return out;
        }
        'e' | 'E' if prec >= 0 => {
            let digs = fixed_digits(a, prec as usize + 1);
            fmt_e(&mut out, &digs, prec as usize, fmt);
            return out;
        }
        'e' | 'E' | 'f' | 'g' | 'G' => {}
        _ => {
            out.clear();
            out.push('%');
            out.push(fmt);
            return out;
        }
    }
    let shortest = prec < 0;
    let digs = if shortest {
        digits_from_exp(&format!("{a:e}"))
    } else {
        // 'g' with a precision: that many significant digits (at least one).
        fixed_digits(a, (prec as usize).max(1))
    };
    let nd = digs.d.len() as i32;
    let mut prec = if shortest {
        match fmt {
            'e' | 'E' => (nd - 1).max(0),
            'f' => (nd - digs.dp).max(0),
            _ => nd,
        }
    } else {
        prec.max(1)
    };
    match fmt {
        'e' | 'E' => fmt_e(&mut out, &digs, prec as usize, fmt),
        'f' => fmt_f(&mut out, &digs, prec as usize),
        _ => {
            let mut eprec = prec;
            if eprec > nd && nd >= digs.dp {
                eprec = nd;
            }
            // %e is used if the exponent from the conversion is less than -4 or greater than
            // or equal to the precision; the shortest form decides with precision 6.
            if shortest {
                eprec = 6;
            }
            let exp = digs.dp - 1;
            if exp < -4 || exp >= eprec {
                if prec > nd {
                    prec = nd;
                }
                let e = if fmt == 'G' { 'E' } else { 'e' };
                fmt_e(&mut out, &digs, (prec - 1).max(0) as usize, e);
            } else {
                if prec > digs.dp {
                    prec = nd;
                }
                fmt_f(&mut out, &digs, (prec - digs.dp).max(0) as usize);
            }
        }
    }
    out
}

/// `n` significant digits of `a`, correctly rounded.
fn fixed_digits(a: f64, n: usize) -> Digits {
    digits_from_exp(&format!("{:.*e}", n - 1, a))
}

/// Go's `fmtE`: d.ddddde±dd.
fn fmt_e(out: &mut String, digs: &Digits, prec: usize, fmt: char) {
    out.push(digs.d.first().map_or('0', |c| char::from(*c)));
    if prec > 0 {
        out.push('.');
        for i in 1..=prec {
            out.push(digs.d.get(i).map_or('0', |c| char::from(*c)));
        }
    }
    out.push(fmt);
    let exp = if digs.d.is_empty() { 0 } else { digs.dp - 1 };
    out.push(if exp < 0 { '-' } else { '+' });
    let exp = exp.unsigned_abs();
    let _ = write!(out, "{exp:02}");
}

/// Go's `fmtF`: ddd.ddd.
fn fmt_f(out: &mut String, digs: &Digits, prec: usize) {
    if digs.dp > 0 {
        for i in 0..digs.dp as usize {
            out.push(digs.d.get(i).map_or('0', |c| char::from(*c)));
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 1..=prec as i32 {
            let j = digs.dp + i - 1;
            let c = usize::try_from(j).ok().and_then(|j| digs.d.get(j)).copied().unwrap_or(b'0');
            out.push(char::from(c));
        }
    }
}

/// A float64's mantissa with its implicit bit, and its biased exponent (subnormals as
/// exponent 1), as Go's strconv takes them apart.
fn mantissa_exponent(v: f64) -> (u64, i64) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let mant = bits & ((1 << 52) - 1);
    if exp == 0 { (mant, 1) } else { (mant | 1 << 52, exp) }
}

/// Go's `fmtX`: hexadecimal mantissa and binary exponent, -0x1.yyyp±dd.
fn fmt_x(out: &mut String, a: f64, prec: i32, fmt: char) {
    let (mut mant, mut exp) = mantissa_exponent(a);
    exp -= 1023;
    if mant == 0 {
        exp = 0;
    }
    // Shift so that the leading 1 (if any) is at bit 60.
    mant <<= 60 - 52;
    while mant != 0 && mant & (1 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if (0..15).contains(&prec) {
        let shift = prec as u32 * 4;
        let extra = (mant << shift) & ((1 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex: &[u8] = if fmt == 'X' { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    out.push('0');
    out.push(fmt);
    out.push(char::from(b'0' + ((mant >> 60) & 1) as u8));
    mant <<= 4;
    if prec < 0 && mant != 0 {
        out.push('.');
        while mant != 0 {
            out.push(char::from(hex[((mant >> 60) & 15) as usize]));
            mant <<= 4;
        }
    } else if prec > 0 {
        out.push('.');
        for _ in 0..prec {
            out.push(char::from(hex[((mant >> 60) & 15) as usize]));
            mant <<= 4;
        }
    }
    out.push(if fmt == 'X' { 'P' } else { 'p' });
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:02}", exp.unsigned_abs());
}

/// The flags and sizes of one verb (Go's `fmtFlags` plus `wid` and `prec`).
#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    wid: usize,
    prec: usize,
    wid_present: bool,
    prec_present: bool,
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    plus_v: bool,
    sharp_v: bool,
}

/// Go's `pp`: one Sprint/Sprintf in progress.
#[derive(Default)]
struct Printer {
    buf: String,
    f: Flags,
    /// Set while writing a `%!verb(...)` error, where Go stops calling `String` methods.
    erroring: bool,
}

const LDIGITS: &[u8; 17] = b"0123456789abcdefx";
const UDIGITS: &[u8; 17] = b"0123456789ABCDEFX";

impl Printer {
    fn write_padding(&mut self, n: usize) {
        let c = if self.f.zero { '0' } else { ' ' };
        self.buf.extend(std::iter::repeat_n(c, n));
    }

    /// Go's `fmt.pad`: pads to the width, counted in runes.
    fn pad(&mut self, s: &str) {
        if !self.f.wid_present || self.f.wid == 0 {
            self.buf.push_str(s);
            return;
        }
        let width = self.f.wid.saturating_sub(s.chars().count());
        if self.f.minus {
            self.buf.push_str(s);
            self.write_padding(width);
        } else {
            self.write_padding(width);
            self.buf.push_str(s);
        }
    }

    fn truncate<'s>(&self, s: &'s str) -> &'s str {
        if self.f.prec_present
            && let Some((i, _)) = s.char_indices().nth(self.f.prec)
        {
            return &s[..i];
        }
        s
    }

    fn fmt_s(&mut self, s: &str) {
        let s = self.truncate(s);
        self.pad(s);
    }

    fn fmt_q(&mut self, s: &str) {
        let s = self.truncate(s);
        if self.f.sharp && can_backquote(s) {
            self.pad(&format!("`{s}`"));
        } else {
            let q = quote_with(s, '"', self.f.plus);
            self.pad(&q);
        }
    }

    /// Go's `fmtSbx`: hexadecimal bytes, optionally `0x`-prefixed and space-separated.
    fn fmt_sx(&mut self, s: &str, digits: &[u8; 17]) {
        let b = s.as_bytes();
        let length = if self.f.prec_present { self.f.prec.min(b.len()) } else { b.len() };
        let mut width = 2 * length;
        if width == 0 {
            if self.f.wid_present {
                self.write_padding(self.f.wid);
            }
            return;
        }
        if self.f.space {
            if self.f.sharp {
                width *= 2;
            }
            width += length - 1;
        } else if self.f.sharp {
            width += 2;
        }
        if self.f.wid_present && self.f.wid > width && !self.f.minus {
            self.write_padding(self.f.wid - width);
        }
        let prefix = [b'0', digits[16]];
        if self.f.sharp {
            self.buf.push_str(std::str::from_utf8(&prefix).unwrap_or("0x"));
        }
        for (i, c) in b[..length].iter().enumerate() {
            if self.f.space && i > 0 {
                self.buf.push(' ');
                if self.f.sharp {
                    self.buf.push_str(std::str::from_utf8(&prefix).unwrap_or("0x"));
                }
            }
            self.buf.push(char::from(digits[usize::from(c >> 4)]));
            self.buf.push(char::from(digits[usize::from(c & 0xf)]));
        }
        if self.f.wid_present && self.f.wid > width && self.f.minus {
            self.write_padding(self.f.wid - width);
        }
    }

    fn fmt_string(&mut self, s: &str, verb: char, arg: &Value) {
        match verb {
            'v' if self.f.sharp_v => self.fmt_q(s),
            'v' | 's' => self.fmt_s(s),
            'x' => self.fmt_sx(s, LDIGITS),
            'X' => self.fmt_sx(s, UDIGITS),
            'q' => self.fmt_q(s),
            _ => self.bad_verb(verb, arg),
        }
    }

    fn fmt_bool(&mut self, b: bool, verb: char, arg: &Value) {
        match verb {
            't' | 'v' => self.pad(if b { "true" } else { "false" }),
            _ => self.bad_verb(verb, arg),
        }
    }

    /// Go's `fmtInteger`.
    fn fmt_integer(&mut self, u: u64, base: u64, signed: bool, verb: char, digits: &[u8; 17]) {
        let negative = signed && (u as i64) < 0;
        let mut u = if negative { (u as i64).unsigned_abs() } else { u };
        // Two ways to ask for leading zeros: %.3d or %03d; with both, the zero flag is ignored.
        let mut prec = 0;
        if self.f.prec_present {
            prec = self.f.prec;
            // Precision 0 and value 0 print nothing but padding.
            if prec == 0 && u == 0 {
                let zero = std::mem::replace(&mut self.f.zero, false);
                self.write_padding(self.f.wid);
                self.f.zero = zero;
                return;
            }
        } else if self.f.zero && self.f.wid_present {
            prec = self.f.wid;
            if negative || self.f.plus || self.f.space {
                prec = prec.saturating_sub(1);
            }
        }
        let mut rev: Vec<u8> = Vec::new();
        loop {
            rev.push(digits[(u % base) as usize]);
            u /= base;
            if u == 0 {
                break;
            }
        }
        while rev.len() < prec {
            rev.push(b'0');
        }
        if self.f.sharp {
            match base {
                2 => rev.extend_from_slice(b"b0"),
                8 if rev.last() != Some(&b'0') => rev.push(b'0'),
                16 => rev.extend_from_slice(&[digits[16], b'0']),
                _ => {}
            }
        }
        if verb == 'O' {
            rev.extend_from_slice(b"o0");
        }
        if negative {
            rev.push(b'-');
        } else if self.f.plus {
            rev.push(b'+');
        } else if self.f.space {
            rev.push(b' ');
        }
        rev.reverse();
        let s = String::from_utf8_lossy(&rev).into_owned();
        let zero = std::mem::replace(&mut self.f.zero, false);
        self.pad(&s);
        self.f.zero = zero;
    }

    fn fmt_int_verb(&mut self, u: u64, signed: bool, verb: char, arg: &Value) {
        match verb {
            'v' if self.f.sharp_v && !signed => {
                let sharp = std::mem::replace(&mut self.f.sharp, true);
                self.fmt_integer(u, 16, false, 'v', LDIGITS);
                self.f.sharp = sharp;
            }
            'v' | 'd' => self.fmt_integer(u, 10, signed, verb, LDIGITS),
            'b' => self.fmt_integer(u, 2, signed, verb, LDIGITS),
            'o' | 'O' => self.fmt_integer(u, 8, signed, verb, LDIGITS),
            'x' => self.fmt_integer(u, 16, signed, verb, LDIGITS),
            'X' => self.fmt_integer(u, 16, signed, verb, UDIGITS),
            'c' => {
                let s = rune_of(u).to_string();
                self.pad(&s);
            }
            'q' => {
                let q = quote_with(&rune_of(u).to_string(), '\'', self.f.plus);
                self.pad(&q);
            }
            'U' => self.fmt_unicode(u),
            _ => self.bad_verb(verb, arg),
        }
    }

    /// Go's `fmtUnicode`: U+0078, or with `#` U+0078 'x'.
    fn fmt_unicode(&mut self, u: u64) {
        let prec = if self.f.prec_present && self.f.prec > 4 { self.f.prec } else { 4 };
        let mut s = format!("U+{u:0prec$X}");
        if self.f.sharp
            && let Some(c) = u32::try_from(u).ok().and_then(char::from_u32)
            && is_print(c)
        {
            let _ = write!(s, " '{c}'");
        }
        let zero = std::mem::replace(&mut self.f.zero, false);
        self.pad(&s);
        self.f.zero = zero;
    }

    fn fmt_float_verb(&mut self, v: f64, verb: char, arg: &Value) {
        match verb {
            'v' => self.fmt_float(v, 'g', -1),
            'b' | 'g' | 'G' | 'x' | 'X' => self.fmt_float(v, verb, -1),
            'f' | 'F' => self.fmt_float(v, 'f', 6),
            'e' | 'E' => self.fmt_float(v, verb, 6),
            _ => self.bad_verb(verb, arg),
        }
    }

    /// Go's `fmt.fmtFloat`: signs, `#`, zero padding and the special values.
    fn fmt_float(&mut self, v: f64, verb: char, prec: i32) {
        let prec = if self.f.prec_present { i32::try_from(self.f.prec).unwrap_or(i32::MAX) } else { prec };
        let s = format_float(v, verb, prec);
        let mut num: Vec<u8> = if s.starts_with('-') || s.starts_with('+') {
            s.into_bytes()
        } else {
            let mut n = vec![b'+'];
            n.extend_from_slice(s.as_bytes());
            n
        };
        if self.f.space && num[0] == b'+' && !self.f.plus {
            num[0] = b' ';
        }
        // Infinities and NaN don't look like numbers, so they are not padded with zeros.
        if num.get(1) == Some(&b'I') || num.get(1) == Some(&b'N') {
            let zero = std::mem::replace(&mut self.f.zero, false);
            if num[1] == b'N' && !self.f.space && !self.f.plus {
                num.remove(0);
            }
            self.pad(&String::from_utf8_lossy(&num));
            self.f.zero = zero;
            return;
        }
        // The sharp flag forces a decimal point and keeps trailing zeros for %g.
        if self.f.sharp && verb != 'b' {
            let mut digits: i64 = match verb {
                'v' | 'g' | 'G' | 'x' => {
                    if prec == -1 {
                        6
                    } else {
                        i64::from(prec)
                    }
                }
                _ => 0,
            };
            let mut tail: Vec<u8> = Vec::new();
            let mut has_point = false;
            let mut saw_nonzero = false;
            let mut i = 1;
            while i < num.len() {
                match num[i] {
                    b'.' => has_point = true,
                    b'p' | b'P' => {
                        tail.extend_from_slice(&num[i..]);
                        num.truncate(i);
                        break;
                    }
                    b'e' | b'E' if verb != 'x' && verb != 'X' => {
                        tail.extend_from_slice(&num[i..]);
                        num.truncate(i);
                        break;
                    }
                    c => {
                        if c != b'0' {
                            saw_nonzero = true;
                        }
                        if saw_nonzero {
                            digits -= 1;
                        }
                    }
                }
                i += 1;
            }
            if !has_point {
                if num.len() == 2 && num[1] == b'0' {
                    digits -= 1;
                }
                num.push(b'.');
            }
            while digits > 0 {
                num.push(b'0');
                digits -= 1;
            }
            num.extend_from_slice(&tail);
        }
        let num = String::from_utf8_lossy(&num).into_owned();
        if self.f.plus || !num.starts_with('+') {
            // With zero padding the sign goes before the zeros.
            if self.f.zero && self.f.wid_present && self.f.wid > num.len() {
                self.buf.push_str(&num[..1]);
                self.write_padding(self.f.wid - num.len());
                self.buf.push_str(&num[1..]);
                return;
            }
            self.pad(&num);
            return;
        }
        self.pad(&num[1..]);
    }

    /// Go's `badVerb`: `%!verb(type=value)`.
    fn bad_verb(&mut self, verb: char, arg: &Value) {
        self.erroring = true;
        self.buf.push_str("%!");
        self.buf.push(verb);
        self.buf.push('(');
        match arg {
            Value::Nil | Value::Missing => self.buf.push_str("<nil>"),
            _ => {
                self.buf.push_str(arg.type_name());
                self.buf.push('=');
                self.print_arg(arg, 'v');
            }
        }
        self.buf.push(')');
        self.erroring = false;
    }

    /// Go's `printArg`.
    fn print_arg(&mut self, arg: &Value, verb: char) {
        if matches!(arg, Value::Nil | Value::Missing) {
            match verb {
                'T' | 'v' => self.pad("<nil>"),
                _ => self.bad_verb(verb, arg),
            }
            return;
        }
        if verb == 'T' {
            self.fmt_s(arg.type_name());
            return;
        }
        match arg {
            Value::Bool(b) => self.fmt_bool(*b, verb, arg),
            Value::Float(f) => self.fmt_float_verb(*f, verb, arg),
            Value::Int(i) => self.fmt_int_verb(*i as u64, true, verb, arg),
            Value::Byte(b) => self.fmt_int_verb(u64::from(*b), false, verb, arg),
            Value::Str(s) => self.fmt_string(s, verb, arg),
            _ => {
                if !self.handle_methods(arg, verb) {
                    self.print_value(arg, verb, 0);
                }
            }
        }
    }

    /// Go's `handleMethods` for the types with `String` (and `GoString`) methods.
    fn handle_methods(&mut self, arg: &Value, verb: char) -> bool {
        if self.erroring {
            return false;
        }
        if self.f.sharp_v {
            let go = match arg {
                Value::TimePtr(t) => t.go_string(),
                Value::Time(t) => t.go_string(),
                _ => return false,
            };
            self.buf.push_str(&go);
            return true;
        }
        if !matches!(verb, 'v' | 's' | 'x' | 'X' | 'q') {
            return false;
        }
        let s = match arg {
            Value::TimePtr(t) => t.string(),
            Value::Time(t) => t.string(),
            Value::DurationPtr(d) => duration_string(**d),
            Value::Duration(d) => duration_string(*d),
            Value::Month(m) => month_name(*m),
            Value::Weekday(d) => weekday_name(*d),
            _ => return false,
        };
        self.fmt_string(&s, verb, arg);
        true
    }

    /// Go's `printValue` for composite values: maps, structs, slices, pointers.
    fn print_value(&mut self, v: &Value, verb: char, depth: usize) {
        if depth > 0 && self.handle_methods(v, verb) {
            return;
        }
        match v {
            Value::Missing | Value::Nil => {
                if self.f.sharp_v {
                    self.buf.push_str("interface {}(nil)");
                } else {
                    self.buf.push_str("<nil>");
                }
            }
            Value::Bool(b) => self.fmt_bool(*b, verb, v),
            Value::Int(i) | Value::Duration(i) | Value::Month(i) | Value::Weekday(i) => {
                self.fmt_int_verb(*i as u64, true, verb, v)
            }
            Value::Byte(b) => self.fmt_int_verb(u64::from(*b), false, verb, v),
            Value::Float(f) => self.fmt_float_verb(*f, verb, v),
            Value::Str(s) | Value::Html(s) => self.fmt_string(s, verb, v),
            Value::StrMap(m) => {
                let entries: Vec<(Value, Value)> =
                    m.iter().map(|(k, x)| (Value::str(k.as_str()), Value::str(x.as_str()))).collect();
                self.print_map(v.type_name(), &entries, verb, depth);
            }
            Value::AnyMap(m) => {
                let entries: Vec<(Value, Value)> = m.iter().map(|(k, x)| (Value::str(k.as_str()), x.clone())).collect();
                self.print_map(v.type_name(), &entries, verb, depth);
            }
            Value::Samples(list) => {
                let list = list.borrow().clone();
                if self.f.sharp_v {
                    self.buf.push_str(v.type_name());
                    self.buf.push('{');
                } else {
                    self.buf.push('[');
                }
                for (i, s) in list.iter().enumerate() {
                    if i > 0 {
                        self.buf.push_str(if self.f.sharp_v { ", " } else { " " });
                    }
                    // Go prints these pointers as addresses, which mean nothing outside one
                    // Prometheus process; fleet prints the samples they point to.
                    self.print_sample(s, verb, depth + 1, true);
                }
                self.buf.push(if self.f.sharp_v { '}' } else { ']' });
            }
            Value::Sample(Some(s)) => self.print_sample(s, verb, depth + 1, true),
            Value::Sample(None) => {
                if self.f.sharp_v {
                    self.buf.push_str("(*template.sample)(nil)");
                } else {
                    self.buf.push_str("<nil>");
                }
            }
            Value::Root(r) => {
                if self.f.sharp_v {
                    self.buf.push_str(v.type_name());
                }
                self.buf.push('{');
                let fields = [
                    ("Labels", Value::StrMap(r.labels.clone())),
                    ("ExternalLabels", Value::StrMap(r.external_labels.clone())),
                    ("ExternalURL", Value::str(r.external_url.as_str())),
                    ("Value", Value::Float(r.value)),
                ];
                self.print_fields(&fields, verb, depth);
                self.buf.push('}');
            }
            Value::TimePtr(_) | Value::Time(_) | Value::DurationPtr(_) => {
                // Go would print the struct's internals here (wall clock and location words),
                // which no template relies on.
                self.bad_verb(verb, v)
            }
        }
    }

    fn print_map(&mut self, type_name: &str, entries: &[(Value, Value)], verb: char, depth: usize) {
        if self.f.sharp_v {
            self.buf.push_str(type_name);
            self.buf.push('{');
        } else {
            self.buf.push_str("map[");
        }
        for (i, (k, x)) in entries.iter().enumerate() {
            if i > 0 {
                self.buf.push_str(if self.f.sharp_v { ", " } else { " " });
            }
            self.print_value(k, verb, depth + 1);
            self.buf.push(':');
            self.print_value(x, verb, depth + 1);
        }
        self.buf.push(if self.f.sharp_v { '}' } else { ']' });
    }

    /// A `template.sample` struct, behind its pointer (`&{...}`) or not.
    fn print_sample(&mut self, s: &Sample, verb: char, depth: usize, pointer: bool) {
        if self.f.sharp_v {
            self.buf.push_str(if pointer { "&template.sample{" } else { "template.sample{" });
        } else {
            if pointer {
                self.buf.push('&');
            }
            self.buf.push('{');
        }
        let fields = [("Labels", Value::StrMap(s.labels.clone())), ("Value", Value::Float(s.value))];
        self.print_fields(&fields, verb, depth);
        self.buf.push('}');
    }

    /// A struct's fields: `a b`, `Name:a Name:b` for `%+v`, `Name:a, Name:b` for `%#v`.
    fn print_fields(&mut self, fields: &[(&str, Value)], verb: char, depth: usize) {
        for (i, (name, field)) in fields.iter().enumerate() {
            if i > 0 {
                self.buf.push_str(if self.f.sharp_v { ", " } else { " " });
            }
            if self.f.plus_v || self.f.sharp_v {
                self.buf.push_str(name);
                self.buf.push(':');
            }
            self.print_value(field, verb, depth + 1);
        }
    }
}

/// The rune `%c` prints for an integer: U+FFFD for what is not a code point.
fn rune_of(u: u64) -> char {
    u32::try_from(u).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}')
}

/// `fmt.Sprint(args...)`: spaces between operands when neither side is a string.
pub(super) fn sprint(args: &[Value]) -> String {
    let mut p = Printer::default();
    let mut prev_string = false;
    for (i, arg) in args.iter().enumerate() {
        let is_string = arg.is_string_kind();
        if i > 0 && !is_string && !prev_string {
            p.buf.push(' ');
        }
        p.print_arg(arg, 'v');
        prev_string = is_string;
    }
    p.buf
}

/// `fmt.Sprintln(args...)`: spaces between all operands and a newline.
pub(super) fn sprintln(args: &[Value]) -> String {
    let mut p = Printer::default();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            p.buf.push(' ');
        }
        p.print_arg(arg, 'v');
    }
    p.buf.push('\n');
    p.buf
}

/// What text/template prints for an action's value (`printableValue` then `fmt.Fprint`):
/// pointers are followed, and an invalid value prints as `<no value>`.
pub(super) fn print_template_value(v: &Value) -> String {
    let mut p = Printer::default();
    match v {
        Value::Missing => p.buf.push_str("<no value>"),
        Value::Sample(Some(s)) => p.print_sample(s, 'v', 1, false),
        Value::TimePtr(t) => p.buf.push_str(&t.string()),
        Value::DurationPtr(d) => p.buf.push_str(&duration_string(**d)),
        _ => p.print_arg(v, 'v'),
    }
    p.buf
}

/// text/template's `evalArgs`, behind `html`, `js` and `urlquery`: like `fmt.Sprint`, but
/// with pointers followed and nil printed as `<no value>`.
pub(super) fn eval_args(args: &[Value]) -> String {
    if let [Value::Str(s)] = args {
        return s.clone();
    }
    let printable: Vec<Value> = args
        .iter()
        .map(|a| match a {
            Value::Missing | Value::Nil => Value::str("<no value>"),
            Value::Sample(Some(_)) | Value::TimePtr(_) | Value::DurationPtr(_) => Value::Str(print_template_value(a)),
            other => other.clone(),
        })
        .collect();
    // Followed pointers print like the values they point to, and those are not strings.
    let mut p = Printer::default();
    let mut prev_string = false;
    for (i, (arg, orig)) in printable.iter().zip(args).enumerate() {
        let is_string = orig.is_string_kind() || matches!(orig, Value::Missing | Value::Nil);
        if i > 0 && !is_string && !prev_string {
            p.buf.push(' ');
        }
        p.print_arg(arg, 'v');
        prev_string = is_string;
    }
    p.buf
}

/// Go's `parsenum`: a decimal number, refused (`None`) above 10^6 as Go does.
fn parse_num(s: &[u8], start: usize) -> (Option<usize>, usize) {
    let mut num: usize = 0;
    let mut i = start;
    let mut any = false;
    while i < s.len() && s[i].is_ascii_digit() {
        if num > 1_000_000 {
            // Overflow: Go gives up on the rest of the format.
            return (None, s.len());
        }
        num = num * 10 + usize::from(s[i] - b'0');
        any = true;
        i += 1;
    }
    (any.then_some(num), i)
}

/// `fmt.Sprintf(format, args...)`. Returns `Err` when the output passes `limit` bytes, which
/// a width of up to 10^6 per verb could otherwise reach quickly.
pub(super) fn sprintf(format: &str, args: &[Value], limit: usize) -> Result<String, String> {
    let mut p = Printer::default();
    let fb = format.as_bytes();
    let end = fb.len();
    let mut arg_num = 0usize;
    let mut reordered = false;
    let mut i = 0;
    // Go's argNumber: an explicit `[n]` argument index.
    let arg_number = |arg_num: usize, i: usize, reordered: &mut bool, good: &mut bool| -> (usize, usize, bool) {
        if i >= end || fb[i] != b'[' {
            return (arg_num, i, false);
        }
        *reordered = true;
        // There must be at least 3 bytes: [n].
        let Some(close) = fb[i..].iter().position(|c| *c == b']').filter(|_| end - i >= 3) else {
            *good = false;
            return (arg_num, i + 1, false);
        };
        let (n, ni) = parse_num(fb, i + 1);
        match n {
            Some(n) if ni == i + close && n >= 1 && n - 1 < args.len() => (n - 1, i + close + 1, true),
            Some(_) if ni == i + close => {
                *good = false;
                (arg_num, i + close + 1, true)
            }
            _ => {
                *good = false;
                (arg_num, i + close + 1, false)
            }
        }
    };
    'format: while i < end {
        let mut good_arg_num = true;
        let last = i;
        while i < end && fb[i] != b'%' {
            i += 1;
        }
        if i > last {
            p.buf.push_str(&format[last..i]);
        }
        if i >= end {
            break;
        }
        i += 1;
        p.f = Flags::default();
        // Flags, and the fast path for a simple verb.
        while i < end {
            match fb[i] {
                b'#' => p.f.sharp = true,
                b'0' => p.f.zero = !p.f.minus,
                b'+' => p.f.plus = true,
                b'-' => {
                    p.f.minus = true;
                    p.f.zero = false;
                }
                b' ' => p.f.space = true,
                c if c.is_ascii_lowercase() && arg_num < args.len() => {
                    if c == b'v' {
                        p.f.sharp_v = p.f.sharp;
                        p.f.sharp = false;
                        p.f.plus_v = p.f.plus;
                        p.f.plus = false;
                    }
                    p.print_arg(&args[arg_num], char::from(c));
                    arg_num += 1;
                    i += 1;
                    if p.buf.len() > limit {
                        return Err(too_long(limit));
                    }
                    continue 'format;
                }
                _ => break,
            }
            i += 1;
        }
        let (n, ni, mut after_index) = arg_number(arg_num, i, &mut reordered, &mut good_arg_num);
        arg_num = n;
        i = ni;
        // Width.
        if i < end && fb[i] == b'*' {
            i += 1;
            let (w, ok, next) = int_from_arg(args, arg_num);
            arg_num = next;
            p.f.wid_present = ok;
            if !ok {
                p.buf.push_str("%!(BADWIDTH)");
            }
            if w < 0 {
                p.f.minus = true;
                p.f.zero = false;
            }
            p.f.wid = w.unsigned_abs() as usize;
            after_index = false;
        } else {
            let (w, ni) = parse_num(fb, i);
            i = ni;
            p.f.wid_present = w.is_some();
            p.f.wid = w.unwrap_or(0);
            if after_index && p.f.wid_present {
                good_arg_num = false;
            }
        }
        // Precision.
        if i + 1 < end && fb[i] == b'.' {
            i += 1;
            if after_index {
                good_arg_num = false;
            }
            let (n, ni, found) = arg_number(arg_num, i, &mut reordered, &mut good_arg_num);
            arg_num = n;
            i = ni;
            after_index = found;
            if i < end && fb[i] == b'*' {
                i += 1;
                let (pr, ok, next) = int_from_arg(args, arg_num);
                arg_num = next;
                // A negative precision makes no sense: Go reports it like a bad one.
                p.f.prec_present = ok && pr >= 0;
                p.f.prec = if pr < 0 { 0 } else { pr as usize };
                if !p.f.prec_present {
                    p.buf.push_str("%!(BADPREC)");
                }
                after_index = false;
            } else {
                let (pr, ni) = parse_num(fb, i);
                i = ni;
                p.f.prec_present = true;
                p.f.prec = pr.unwrap_or(0);
            }
        }
        if !after_index {
            let (n, ni, _) = arg_number(arg_num, i, &mut reordered, &mut good_arg_num);
            arg_num = n;
            i = ni;
        }
        if i >= end {
            p.buf.push_str("%!(NOVERB)");
            break;
        }
        let Some(verb) = format[i..].chars().next() else { break };
        i += verb.len_utf8();
        match verb {
            // Percent does not absorb operands and ignores width and precision.
            '%' => p.buf.push('%'),
            _ if !good_arg_num => {
                p.buf.push_str("%!");
                p.buf.push(verb);
                p.buf.push_str("(BADINDEX)");
            }
            _ if arg_num >= args.len() => {
                p.buf.push_str("%!");
                p.buf.push(verb);
                p.buf.push_str("(MISSING)");
            }
            _ => {
                if verb == 'v' {
                    p.f.sharp_v = p.f.sharp;
                    p.f.sharp = false;
                    p.f.plus_v = p.f.plus;
                    p.f.plus = false;
                }
                p.print_arg(&args[arg_num], verb);
                arg_num += 1;
            }
        }
        if p.buf.len() > limit {
            return Err(too_long(limit));
        }
    }
    // Extra arguments, unless they were accessed out of order.
    if !reordered && arg_num < args.len() {
        p.f = Flags::default();
        p.buf.push_str("%!(EXTRA ");
        for (i, arg) in args[arg_num..].iter().enumerate() {
            if i > 0 {
                p.buf.push_str(", ");
            }
            if matches!(arg, Value::Nil | Value::Missing) {
                p.buf.push_str("<nil>");
            } else {
                p.buf.push_str(arg.type_name());
                p.buf.push('=');
                p.print_arg(arg, 'v');
            }
        }
        p.buf.push(')');
    }
    if p.buf.len() > limit {
        return Err(too_long(limit));
    }
    Ok(p.buf)
}

fn too_long(limit: usize) -> String {
    format!("printf output exceeds the limit of {limit} bytes")
}

/// Go's `intFromArg`: a `*` width or precision taken from an integer argument.
fn int_from_arg(args: &[Value], arg_num: usize) -> (i64, bool, usize) {
    let Some(arg) = args.get(arg_num) else { return (0, false, arg_num) };
    let n = match arg {
        Value::Int(i) | Value::Duration(i) | Value::Month(i) | Value::Weekday(i) => Some(*i),
        Value::Byte(b) => Some(i64::from(*b)),
        _ => None,
    };
    match n {
        Some(n) if n.unsigned_abs() <= 1_000_000 => (n, true, arg_num + 1),
        _ => (0, false, arg_num + 1),
    }
}

/// `fmt.Sprintf("%.{prec}g", v)`, what Prometheus' humanize functions use.
pub(super) fn percent_g(v: f64, prec: usize) -> String {
    let mut p = Printer::default();
    p.f.prec_present = true;
    p.f.prec = prec;
    p.fmt_float(v, 'g', -1);
    p.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(format: &str, args: &[Value]) -> String {
        sprintf(format, args, 1 << 20).unwrap()
    }

    #[test]
    fn go_float_is_fmt_v() {
        let cases = [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (1e21, "1e+21"),
            (1e-7, "1e-07"),
            (123456.789, "123456.789"),
            (2.5e-10, "2.5e-10"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(v), want, "{v:e}");
        }
    }

    #[test]
    fn float_verbs() {
        assert_eq!(percent_g(1234.5678, 4), "1235");
        assert_eq!(percent_g(1.0, 4), "1");
        assert_eq!(percent_g(123456.0, 4), "1.235e+05");
        assert_eq!(percent_g(0.000012345, 4), "1.234e-05");
        assert_eq!(percent_g(f64::INFINITY, 4), "+Inf");
        assert_eq!(
            f("%.2f|%5.1f|%-8.3e|%+.1f|% .2f|%06.2f", &vec![Value::Float(3.14259); 6]),
            "3.14|  3.1|3.143e+00|+3.1| 3.14|003.14"
        );
        assert_eq!(f("%.0f %.0f %.0f %.1f", &[0.5, 1.5, 2.5, 0.25].map(Value::Float)), "0 2 2 0.2");
        assert_eq!(
            f("%x %X %b", &[Value::Float(1.5), Value::Float(-1.0), Value::Float(1.0)]),
            "0x1.8p+00 -0X1P+00 4503599627370496p-52"
        );
        assert_eq!(f("%#g %#.3g %g %G", &[1.0, 2.0, 1e-7, 1e-7].map(Value::Float)), "1.00000 2.00 1e-07 1E-07");
        assert_eq!(
            f("%010.3f|%-10.1f|%+010.2f", &[-3.14259, 2.5, f64::NAN].map(Value::Float)),
            "-00003.143|2.5       |      +NaN"
        );
    }

    #[test]
    fn integer_and_string_verbs() {
        let i = Value::Int;
        assert_eq!(
            f(
                "%d|%5d|%-5d|%05d|%+d|%x|%X|%#x|%o|%#o|%b|%c|%q|%U|%#U",
                &[
                    i(42),
                    i(42),
                    i(42),
                    i(-42),
                    i(42),
                    i(255),
                    i(255),
                    i(255),
                    i(8),
                    i(8),
                    i(5),
                    i(65),
                    i(65),
                    i(0x1F600),
                    i(0x1F600)
                ]
            ),
            "42|   42|42   |-0042|+42|ff|FF|0xff|10|010|101|A|'A'|U+1F600|U+1F600 '😀'"
        );
        assert_eq!(f("%.3d|%8.3d|%.0d", &[i(7), i(-7), i(0)]), "007|    -007|");
        let s = |x: &str| Value::str(x);
        assert_eq!(
            f(
                "%s|%10s|%-10s|%.2s|%q|%#q|%x|% X|%05s",
                &[s("héllo"), s("ab"), s("ab"), s("héllo"), s("a\"b\n"), s("ab"), s("hi"), s("hi"), s("ab")]
            ),
            "héllo|        ab|ab        |hé|\"a\\\"b\\n\"|`ab`|6869|68 69|000ab"
        );
        assert_eq!(f("%t %v", &[Value::Bool(true), Value::Bool(false)]), "true false");
    }

    #[test]
    fn errors_are_inline_as_in_go() {
        assert_eq!(f("%d", &[Value::str("x")]), "%!d(string=x)");
        assert_eq!(f("%d %d", &[Value::Int(1)]), "1 %!d(MISSING)");
        assert_eq!(f("%d", &[Value::Int(1), Value::str("x")]), "1%!(EXTRA string=x)");
        assert_eq!(f("%!", &[]), "%!!(MISSING)");
        assert_eq!(f("%999999999d", &[Value::Int(1)]), "%!(NOVERB)%!(EXTRA int=1)");
        assert_eq!(f("%[2]d %[1]d", &[Value::Int(1), Value::Int(2)]), "2 1");
        assert_eq!(f("%[3]d", &[Value::Int(1)]), "%!d(BADINDEX)");
        assert_eq!(
            f(
                "%*d|%-*d|%.*f",
                &[Value::Int(4), Value::Int(1), Value::Int(3), Value::Int(2), Value::Int(2), Value::Float(3.14259)]
            ),
            "   1|2  |3.14"
        );
        assert_eq!(f("%v %d", &[Value::Nil, Value::Nil]), "<nil> %!d(<nil>)");
        assert_eq!(f("100%%", &[]), "100%");
        assert!(sprintf("%1000000d", &[Value::Int(1)], 1000).is_err());
    }

    #[test]
    fn sprint_spacing() {
        assert_eq!(sprint(&[Value::Int(1), Value::Int(2)]), "1 2");
        assert_eq!(sprint(&[Value::str("a"), Value::Int(1), Value::str("b")]), "a1b");
        assert_eq!(sprintln(&[Value::str("a"), Value::Int(1)]), "a 1\n");
        let m = Value::StrMap(std::rc::Rc::new([("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into()));
        assert_eq!(sprint(std::slice::from_ref(&m)), "map[a:1 b:2]");
        assert_eq!(
            f("%q %#v", &[m.clone(), m]),
            "map[\"a\":\"1\" \"b\":\"2\"] map[string]string{\"a\":\"1\", \"b\":\"2\"}"
        );
    }
}

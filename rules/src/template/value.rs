//! The values a template computes with. Each stands for the Go value Prometheus would hand
//! text/template (a `float64`, a `map[string]string`, a `*template.sample`, …): its Go type
//! name appears in error messages and `%T`, and Go's rules for truth (`isTrue`) and for the
//! comparison functions (`eq`, `lt` in text/template/funcs.go, Go 1.19) apply to it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::gotime::Time;

/// One series of a `query` result: Prometheus' `template.sample`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    pub(super) labels: Rc<BTreeMap<String, String>>,
    pub(super) value: f64,
}

/// The data Prometheus gives an alert's templates (`template.AlertTemplateData`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Root {
    pub(super) labels: Rc<BTreeMap<String, String>>,
    pub(super) external_labels: Rc<BTreeMap<String, String>>,
    pub(super) external_url: String,
    pub(super) value: f64,
}

/// The Go type name of the data Prometheus gives alert templates (an anonymous struct).
pub(super) const ROOT_TYPE: &str =
    "struct { Labels map[string]string; ExternalLabels map[string]string; ExternalURL string; Value float64 }";

#[derive(Debug, Clone)]
pub(super) enum Value {
    /// Go's invalid `reflect.Value`, "no value": what a field of nothing, or a nil interface
    /// coming out of a pipeline, evaluates to. Printed as `<no value>`.
    Missing,
    /// A nil `interface{}`: the literal `nil`, or a missing key of an `args` map.
    Nil,
    Bool(bool),
    /// Go `int` (64-bit), also standing in for `int64` results of time methods.
    Int(i64),
    /// Go `uint8`: what `index` returns for a byte of a string.
    Byte(u8),
    Float(f64),
    Str(String),
    /// `html/template.HTML`, from `safeHtml`: a string type that is not `string`.
    Html(String),
    /// `map[string]string`: labels.
    StrMap(Rc<BTreeMap<String, String>>),
    /// `map[string]interface{}`, from `args`.
    AnyMap(Rc<BTreeMap<String, Value>>),
    /// `template.queryResult` (`[]*sample`). Shared and mutable because `sortByLabel`
    /// sorts in place in Prometheus, which a later use of the same result sees.
    Samples(Rc<RefCell<Vec<Rc<Sample>>>>),
    /// `*template.sample`; `None` is a nil pointer.
    Sample(Option<Rc<Sample>>),
    /// `*time.Time`, from `toTime`. Pointer identity matters to `eq`, hence the `Rc`.
    TimePtr(Rc<Time>),
    /// `time.Time`, from methods such as `.UTC` or `.Add`.
    Time(Time),
    /// `*time.Duration`, from `toDuration`.
    DurationPtr(Rc<i64>),
    /// `time.Duration` in nanoseconds, from methods such as `.Sub` or `.Round`.
    Duration(i64),
    /// `time.Month`, 1 to 12.
    Month(i64),
    /// `time.Weekday`, 0 (Sunday) to 6.
    Weekday(i64),
    /// The data itself (`$` or `.` at the top): `.Labels`, `.ExternalLabels`, `.ExternalURL`,
    /// `.Value`.
    Root(Rc<Root>),
}

/// A value's "basic kind" for Go's comparison functions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Basic<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'a str),
}

pub(super) const ERR_BAD_TYPE: &str = "invalid type for comparison";
pub(super) const ERR_INCOMPATIBLE: &str = "incompatible types for comparison";

impl Value {
    pub(super) fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub(super) fn samples(v: Vec<Rc<Sample>>) -> Value {
        Value::Samples(Rc::new(RefCell::new(v)))
    }

    /// Go's `reflect.Type.String()` of the value.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Value::Missing | Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Byte(_) => "uint8",
            Value::Float(_) => "float64",
            Value::Str(_) => "string",
            Value::Html(_) => "template.HTML",
            Value::StrMap(_) => "map[string]string",
            Value::AnyMap(_) => "map[string]interface {}",
            Value::Samples(_) => "template.queryResult",
            Value::Sample(_) => "*template.sample",
            Value::TimePtr(_) => "*time.Time",
            Value::Time(_) => "time.Time",
            Value::DurationPtr(_) => "*time.Duration",
            Value::Duration(_) => "time.Duration",
            Value::Month(_) => "time.Month",
            Value::Weekday(_) => "time.Weekday",
            Value::Root(_) => ROOT_TYPE,
        }
    }

    /// Whether the value's Go kind is `reflect.String` (what `fmt.Sprint` spaces by).
    pub(super) fn is_string_kind(&self) -> bool {
        matches!(self, Value::Str(_) | Value::Html(_))
    }

    fn basic(&self) -> Option<Basic<'_>> {
        Some(match self {
            Value::Bool(b) => Basic::Bool(*b),
            Value::Int(i) | Value::Duration(i) | Value::Month(i) | Value::Weekday(i) => Basic::Int(*i),
            Value::Byte(b) => Basic::Uint(u64::from(*b)),
            Value::Float(f) => Basic::Float(*f),
            Value::Str(s) | Value::Html(s) => Basic::Str(s),
            _ => return None,
        })
    }

    /// Go's `isTrue`: the zero value, empty collections and nil pointers are false.
    pub(super) fn truth(&self) -> bool {
        match self {
            Value::Missing | Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) | Value::Duration(i) | Value::Month(i) | Value::Weekday(i) => *i != 0,
            Value::Byte(b) => *b != 0,
            // NaN is not zero, so it is true, as in Go.
            Value::Float(f) => *f != 0.0,
            Value::Str(s) | Value::Html(s) => !s.is_empty(),
            Value::StrMap(m) => !m.is_empty(),
            Value::AnyMap(m) => !m.is_empty(),
            Value::Samples(v) => !v.borrow().is_empty(),
            Value::Sample(s) => s.is_some(),
            // Non-nil pointers and structs are always true.
            Value::TimePtr(_) | Value::DurationPtr(_) | Value::Time(_) | Value::Root(_) => true,
        }
    }

    /// Whether Go would consider the value nil in `eq` (after unwrapping interfaces).
    fn is_nil(&self) -> bool {
        matches!(self, Value::Missing | Value::Nil | Value::Sample(None))
    }

    fn is_valid(&self) -> bool {
        !matches!(self, Value::Missing | Value::Nil)
    }
}

/// Go's `eq arg1 arg2...`: true if `arg1` equals any of the others.
pub(super) fn eq(arg1: &Value, others: &[Value]) -> Result<bool, String> {
    if others.is_empty() {
        return Err("missing argument for comparison".into());
    }
    let k1 = arg1.basic();
    for arg in others {
        let k2 = arg.basic();
        let truth = match (k1, k2) {
            (Some(a), Some(b)) => match (a, b) {
                (Basic::Bool(x), Basic::Bool(y)) => x == y,
                (Basic::Int(x), Basic::Int(y)) => x == y,
                (Basic::Uint(x), Basic::Uint(y)) => x == y,
                (Basic::Float(x), Basic::Float(y)) => x == y,
                (Basic::Str(x), Basic::Str(y)) => x == y,
                // Integers compare regardless of sign; nothing else mixes.
                (Basic::Int(x), Basic::Uint(y)) => u64::try_from(x).is_ok_and(|x| x == y),
                (Basic::Uint(x), Basic::Int(y)) => u64::try_from(y).is_ok_and(|y| x == y),
                _ => return Err(ERR_INCOMPATIBLE.into()),
            },
            (Some(_), None) | (None, Some(_)) => {
                if arg1.is_valid() && arg.is_valid() {
                    return Err(ERR_INCOMPATIBLE.into());
                }
                false
            }
            (None, None) => eq_other(arg1, arg)?,
        };
        if truth {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `eq` for values of no basic kind: pointers by identity, times by value, maps and slices
/// not at all.
fn eq_other(a: &Value, b: &Value) -> Result<bool, String> {
    let non_comparable =
        |v: &Value| matches!(v, Value::StrMap(_) | Value::AnyMap(_) | Value::Samples(_) | Value::Root(_));
    if non_comparable(a) || non_comparable(b) {
        return Err(format!("non-comparable types {}, {}", a.type_name(), b.type_name()));
    }
    if a.is_nil() || b.is_nil() {
        return Ok(a.is_nil() == b.is_nil());
    }
    Ok(match (a, b) {
        (Value::Sample(Some(x)), Value::Sample(Some(y))) => Rc::ptr_eq(x, y),
        (Value::TimePtr(x), Value::TimePtr(y)) => Rc::ptr_eq(x, y),
        (Value::DurationPtr(x), Value::DurationPtr(y)) => Rc::ptr_eq(x, y),
        (Value::Time(x), Value::Time(y)) => x == y,
        _ => return Err(ERR_INCOMPATIBLE.into()),
    })
}

/// Go's `lt`.
pub(super) fn lt(a: &Value, b: &Value) -> Result<bool, String> {
    let (Some(k1), Some(k2)) = (a.basic(), b.basic()) else { return Err(ERR_BAD_TYPE.into()) };
    Ok(match (k1, k2) {
        (Basic::Int(x), Basic::Int(y)) => x < y,
        (Basic::Uint(x), Basic::Uint(y)) => x < y,
        (Basic::Float(x), Basic::Float(y)) => x < y,
        (Basic::Str(x), Basic::Str(y)) => x < y,
        (Basic::Int(x), Basic::Uint(y)) => x < 0 || (x as u64) < y,
        (Basic::Uint(x), Basic::Int(y)) => y >= 0 && x < y as u64,
        (Basic::Bool(_), Basic::Bool(_)) => return Err(ERR_BAD_TYPE.into()),
        _ => return Err(ERR_INCOMPATIBLE.into()),
    })
}

/// Go's `le`: `lt` or `eq`.
pub(super) fn le(a: &Value, b: &Value) -> Result<bool, String> {
    if lt(a, b)? {
        return Ok(true);
    }
    eq(a, std::slice::from_ref(b))
}

/// Go's `gt`: not `le`. So `gt NaN 1.0` is true, as in Go.
pub(super) fn gt(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(!le(a, b)?)
}

/// Go's `ge`: not `lt`.
pub(super) fn ge(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(!lt(a, b)?)
}

//! The trigonometric functions (`sin` ... `atanh`), `deg` and `rad`, each a map of an instant
//! vector through Rust's own (which are Go's to the last bit for the inputs Prometheus tests),
//! and `pi()`.

use crate::promql::{EvalError, Value};

/// `pi()`.
pub(super) fn pi() -> Result<Value, EvalError> {
    Ok(Value::Scalar(std::f64::consts::PI))
}

/// Degrees of radians (`deg`).
pub(super) fn deg(v: f64) -> f64 {
    v * 180.0 / std::f64::consts::PI
}

/// Radians of degrees (`rad`).
pub(super) fn rad(v: f64) -> f64 {
    v * std::f64::consts::PI / 180.0
}

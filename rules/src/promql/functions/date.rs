//! The date functions: `day_of_month`, `day_of_week`, `day_of_year`, `days_in_month`, `hour`,
//! `minute`, `month` and `year`, in UTC, of each sample's value taken as Unix seconds (whole
//! seconds, as Go's `time.Unix(int64(v), 0)`), or of the evaluation time without an argument.

use chrono::{DateTime, Datelike, Timelike, Utc};
use promql_parser::parser::Call;

use crate::promql::eval::Evaluator;
use crate::promql::{EvalError, Labels, Sample, Value, drop_name};

/// The part of a date a function returns.
fn part(name: &str, t: DateTime<Utc>) -> f64 {
    match name {
        "day_of_month" => t.day() as f64,
        "day_of_week" => t.weekday().num_days_from_sunday() as f64,
        "day_of_year" => t.ordinal() as f64,
        "days_in_month" => {
            let (y, m) = (t.year(), t.month());
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let first = chrono::NaiveDate::from_ymd_opt(y, m, 1);
            let after = chrono::NaiveDate::from_ymd_opt(next.0, next.1, 1);
            match (first, after) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        }
        "hour" => t.hour() as f64,
        "minute" => t.minute() as f64,
        "month" => t.month() as f64,
        _ => t.year() as f64,
    }
}

/// The date of Unix seconds `secs` (a value cut to whole seconds), NaN outside chrono's range.
fn of_seconds(name: &str, secs: f64) -> f64 {
    // Go converts a float to int64 by truncation; NaN and out-of-range values have no date.
    if !secs.is_finite() || secs.abs() > 1e17 {
        return f64::NAN;
    }
    match DateTime::from_timestamp(secs.trunc() as i64, 0) {
        Some(t) => part(name, t),
        None => f64::NAN,
    }
}

/// A date function, of its argument or of the evaluation time `t`.
pub(super) fn date(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    let Some(a) = c.args.args.first() else {
        let v = of_seconds(name, t.div_euclid(1000) as f64);
        return Ok(Value::Vector(vec![Sample { labels: Labels::new(), t, v }]));
    };
    let v = ev.vector(a, t, name)?;
    Ok(Value::Vector(
        v.into_iter().map(|s| Sample { labels: drop_name(s.labels), t, v: of_seconds(name, s.v) }).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_unix_seconds_in_utc() {
        // 2026-12-01T17:10:57Z, a Tuesday.
        let s = 1_796_145_057.0;
        let got: Vec<f64> =
            ["year", "month", "day_of_month", "day_of_week", "day_of_year", "hour", "minute", "days_in_month"]
                .iter()
                .map(|n| of_seconds(n, s))
                .collect();
        assert_eq!(got, [2026.0, 12.0, 1.0, 2.0, 335.0, 17.0, 10.0, 31.0]);
        assert_eq!(of_seconds("days_in_month", 951_782_400.0), 29.0, "February 2000");
        assert!(of_seconds("year", f64::NAN).is_nan());
    }
}

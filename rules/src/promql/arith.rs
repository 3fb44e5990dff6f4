//! Pure numeric helpers of the evaluator: comparison and arithmetic operators, float parsing
//! as Prometheus writes floats, quantiles (of values and of histogram buckets) and linear
//! regression.

use super::{EvalError, unsupported};

pub(super) fn compare(op: &str, x: f64, y: f64) -> bool {
    match op {
        "==" => x == y,
        "!=" => x != y,
        ">" => x > y,
        "<" => x < y,
        ">=" => x >= y,
        "<=" => x <= y,
        _ => false,
    }
}

pub(super) fn arith(op: &str, x: f64, y: f64) -> Result<f64, EvalError> {
    Ok(match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" => x / y,
        "%" => x % y,
        "^" => x.powf(y),
        "atan2" => x.atan2(y),
        other => return unsupported(format!("the {other} operator here")),
    })
}

/// Parses a float as Prometheus writes them (`+Inf`, `-Inf`, `NaN` included).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// The φ-quantile of `vals` with linear interpolation, as Prometheus' `quantile`.
pub fn quantile(q: f64, vals: &[f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut v = vals.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lo = rank.floor().max(0.0) as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let w = rank - rank.floor();
    v[lo] * (1.0 - w) + v[hi] * w
}

/// Sorts classic histogram buckets `(upper bound, cumulative count)` by bound and merges those
/// with the same bound (Prometheus' `coalesceBuckets`); None unless the last bound is +Inf.
fn prepare_buckets(mut b: Vec<(f64, f64)>) -> Option<Vec<(f64, f64)>> {
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().map(|x| x.0) != Some(f64::INFINITY) {
        return None;
    }
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for (le, c) in b {
        match out.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => out.push((le, c)),
        }
    }
    Some(out)
}

/// The relative difference between neighbouring bucket counts taken as floating point noise.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

/// Prometheus' `ensureMonotonicAndIgnoreSmallDeltas`: counts that differ by noise are made
/// equal, and decreases are removed, both against the last count accepted.
fn ensure_monotonic(b: &mut [(f64, f64)]) {
    let Some(&(_, mut prev)) = b.first() else { return };
    for x in b.iter_mut().skip(1) {
        let curr = x.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) || curr < prev {
            x.1 = prev;
            continue;
        }
        prev = curr;
    }
}

/// The φ-quantile of classic histogram buckets `(upper bound, cumulative count)`, as
/// Prometheus' `BucketQuantile`.
pub(super) fn bucket_quantile(q: f64, b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let Some(mut b) = prepare_buckets(b) else { return f64::NAN };
    ensure_monotonic(&mut b);
    if b.len() < 2 {
        return f64::NAN;
    }
    let total = b[b.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * total;
    let i = b[..b.len() - 1].iter().position(|x| x.1 >= rank).unwrap_or(b.len() - 1);
    if i == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if i == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (mut start, end, mut count) = (0.0, b[i].0, b[i].1);
    if i > 0 {
        start = b[i - 1].0;
        count -= b[i - 1].1;
        rank -= b[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// The fraction of the observations between `lower` and `upper` in classic histogram buckets,
/// as Prometheus' `BucketFraction` (linear interpolation within a bucket; the first bucket
/// starts at 0 when its bound is positive).
pub(super) fn bucket_fraction(lower: f64, upper: f64, b: Vec<(f64, f64)>) -> f64 {
    let Some(b) = prepare_buckets(b) else { return f64::NAN };
    let count = b[b.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if b[0].0 <= 0.0 { f64::NEG_INFINITY } else { 0.0 };
    for (i, &(upper_bound, c)) in b.iter().enumerate() {
        if i > 0 {
            lower_bound = b[i - 1].0;
        }
        let interpolate = |v: f64| rank + (c - rank) * (v - lower_bound) / (upper_bound - lower_bound);
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && upper_bound > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && upper_bound > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = c;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// Kahan-Neumaier summation: adds `inc` to `sum` with the compensation `c`.
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The least-squares slope and the intercept at `intercept_time` (ms) of `points`, as
/// Prometheus' `linearRegression` computes them (compensated sums; a constant series has slope
/// 0, or NaN if it is infinite).
pub(super) fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let mut n = 0.0;
    let (mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = points.first().map(|p| p.1).unwrap_or(f64::NAN);
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// The sum of `vals` with compensated (Kahan-Neumaier) summation, as Prometheus' `sum`.
pub(super) fn kahan_sum(vals: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for &v in vals {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// The mean of `vals` as Prometheus' `avg` and `avg_over_time` compute it: a compensated sum,
/// switching to an incremental mean once the sum would overflow.
pub(super) fn mean(vals: &[f64]) -> f64 {
    let Some(&first) = vals.first() else { return f64::NAN };
    let (mut sum, mut c, mut mean, mut count) = (first, 0.0, first, 1.0);
    let mut incremental = false;
    for &f in &vals[1..] {
        count += 1.0;
        if !incremental {
            let (nv, nc) = kahan_inc(f, sum, c);
            if !nv.is_infinite() {
                (sum, c) = (nv, nc);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        if mean.is_infinite() {
            if f.is_infinite() && (mean > 0.0) == (f > 0.0) {
                continue;
            }
            if !f.is_infinite() && !f.is_nan() {
                continue;
            }
        }
        let current = mean + c;
        (mean, c) = kahan_inc(f / count - current / count, mean, c);
    }
    if incremental { mean + c } else { (sum + c) / count }
}

/// A float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it (count_values' labels).
pub(super) fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Whether `limit_ratio(r, ...)` keeps the series `labels`: its labels' hash, as a fraction of
/// the hash space, is below `r` (or, for a negative `r`, at or above `1 + r`), so that
/// `limit_ratio(r)` and `limit_ratio(r - 1)` pick complementary series. (fleet's hash is FNV-1a
/// of the label pairs, not Prometheus' xxhash: the same ratio picks other series.)
pub(crate) fn ratio_pick(labels: &crate::labels::Labels, r: f64) -> bool {
    let offset = labels.stable_hash() as f64 / u64::MAX as f64;
    if r >= 0.0 { offset < r } else { offset >= 1.0 + r }
}

/// Prometheus' `almost.Equal(a, b, epsilon)`: NaN equals NaN; otherwise the relative difference
/// is below `epsilon` (an absolute one near zero).
pub fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

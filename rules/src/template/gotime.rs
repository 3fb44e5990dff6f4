//! Go's `time.Time` (always in UTC, as Prometheus' `toTime` and `humanizeTimestamp` produce it)
//! and `time.Duration`: their `String` and `Format` output, the arithmetic their template-callable
//! methods do, and Prometheus' `model.ParseDuration`. Ported from Go's time/format.go and
//! time/time.go so that output matches byte for byte.

use std::sync::OnceLock;

use regex::Regex;

const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Seconds from Go's zero time (January 1, year 1) to the Unix epoch: Go rounds times relative
/// to the zero time, not to 1970.
const ZERO_TO_UNIX: i64 = 62_135_596_800;

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// The name Go's `time.Month.String` gives month `m` (1-based).
pub(super) fn month_name(m: i64) -> String {
    match usize::try_from(m - 1).ok().and_then(|i| MONTHS.get(i)) {
        Some(name) => (*name).to_string(),
        None => format!("%!Month({m})"),
    }
}

/// The name Go's `time.Weekday.String` gives day `d` (Sunday is 0).
pub(super) fn weekday_name(d: i64) -> String {
    match usize::try_from(d).ok().and_then(|i| WEEKDAYS.get(i)) {
        Some(name) => (*name).to_string(),
        None => format!("%!Weekday({d})"),
    }
}

/// An instant, as seconds and nanoseconds since the Unix epoch, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Time {
    secs: i64,
    nanos: u32,
}

/// The calendar fields of a [`Time`].
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    yday: i64,
    weekday: i64,
}

impl Time {
    /// `secs` and `nanos` need not be normalised (Go's `time.Unix` rule).
    pub(super) fn from_unix(secs: i64, nanos: i64) -> Time {
        let secs = secs.saturating_add(nanos.div_euclid(NANOS_PER_SEC));
        Time { secs, nanos: nanos.rem_euclid(NANOS_PER_SEC) as u32 }
    }

    fn from_total_nanos(n: i128) -> Time {
        let secs = n.div_euclid(i128::from(NANOS_PER_SEC));
        let secs = i64::try_from(secs).unwrap_or(if secs < 0 { i64::MIN } else { i64::MAX });
        Time { secs, nanos: n.rem_euclid(i128::from(NANOS_PER_SEC)) as u32 }
    }

    fn total_nanos(self) -> i128 {
        i128::from(self.secs) * i128::from(NANOS_PER_SEC) + i128::from(self.nanos)
    }

    pub(super) fn unix(self) -> i64 {
        self.secs
    }

    pub(super) fn unix_milli(self) -> i64 {
        self.secs.wrapping_mul(1000).wrapping_add(i64::from(self.nanos / 1_000_000))
    }

    pub(super) fn unix_micro(self) -> i64 {
        self.secs.wrapping_mul(1_000_000).wrapping_add(i64::from(self.nanos / 1000))
    }

    pub(super) fn unix_nano(self) -> i64 {
        self.secs.wrapping_mul(NANOS_PER_SEC).wrapping_add(i64::from(self.nanos))
    }

    pub(super) fn nanosecond(self) -> i64 {
        i64::from(self.nanos)
    }

    fn civil(self) -> Civil {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            yday: days - days_from_civil(year, 1, 1) + 1,
            weekday: (days + 4).rem_euclid(7),
        }
    }

    pub(super) fn year(self) -> i64 {
        self.civil().year
    }
    pub(super) fn month(self) -> i64 {
        self.civil().month
    }
    pub(super) fn day(self) -> i64 {
        self.civil().day
    }
    pub(super) fn hour(self) -> i64 {
        self.civil().hour
    }
    pub(super) fn minute(self) -> i64 {
        self.civil().minute
    }
    pub(super) fn second(self) -> i64 {
        self.civil().second
    }
    pub(super) fn year_day(self) -> i64 {
        self.civil().yday
    }
    pub(super) fn weekday(self) -> i64 {
        self.civil().weekday
    }

    /// Go's `Time.IsZero`: January 1, year 1, 00:00:00 UTC.
    pub(super) fn is_zero(self) -> bool {
        self.secs == -ZERO_TO_UNIX && self.nanos == 0
    }

    pub(super) fn add(self, d: i64) -> Time {
        Time::from_total_nanos(self.total_nanos() + i128::from(d))
    }

    /// Go's `Time.Sub`, which saturates at the largest durations.
    pub(super) fn sub(self, other: Time) -> i64 {
        clamp_duration(self.total_nanos() - other.total_nanos())
    }

    /// Go's `Time.AddDate`: calendar arithmetic with Go's normalisation (October 32 is
    /// November 1).
    pub(super) fn add_date(self, years: i64, months: i64, days: i64) -> Time {
        let c = self.civil();
        let (year, month0) = norm(c.year.saturating_add(years), (c.month - 1).saturating_add(months), 12);
        let day_number = days_from_civil(year, month0 + 1, 1).saturating_add(c.day - 1).saturating_add(days);
        let secs = day_number.saturating_mul(86_400).saturating_add(c.hour * 3600 + c.minute * 60 + c.second);
        Time { secs, nanos: self.nanos }
    }

    /// Nanoseconds since Go's zero time, modulo `d` (Go's `div` for the rounding methods).
    fn rem(self, d: i64) -> i64 {
        let since_zero = self.total_nanos() + i128::from(ZERO_TO_UNIX) * i128::from(NANOS_PER_SEC);
        since_zero.rem_euclid(i128::from(d)) as i64
    }

    pub(super) fn truncate(self, d: i64) -> Time {
        if d <= 0 {
            return self;
        }
        self.add(-self.rem(d))
    }

    pub(super) fn round(self, d: i64) -> Time {
        if d <= 0 {
            return self;
        }
        let r = self.rem(d);
        if less_than_half(r, d) { self.add(-r) } else { self.add(d - r) }
    }

    /// Go's `Time.String`.
    pub(super) fn string(self) -> String {
        self.format("2006-01-02 15:04:05.999999999 -0700 MST")
    }

    /// Go's `Time.GoString`.
    pub(super) fn go_string(self) -> String {
        let c = self.civil();
        format!(
            "time.Date({}, time.{}, {}, {}, {}, {}, {}, time.UTC)",
            c.year,
            month_name(c.month),
            c.day,
            c.hour,
            c.minute,
            c.second,
            self.nanos
        )
    }

    /// Go's `Time.Format` with a Go layout ("2006-01-02T15:04:05Z07:00"), in UTC.
    pub(super) fn format(self, layout: &str) -> String {
        let c = self.civil();
        let mut out = String::new();
        let mut rest = layout;
        while !rest.is_empty() {
            let (prefix, chunk, suffix) = next_std_chunk(rest);
            out.push_str(prefix);
            rest = suffix;
            let Some(chunk) = chunk else { break };
            match chunk {
                Chunk::Year => append_int(&mut out, c.year.abs() % 100, 2),
                Chunk::LongYear => append_int(&mut out, c.year, 4),
                Chunk::Month => out.push_str(&month_name(c.month)[..3]),
                Chunk::LongMonth => out.push_str(&month_name(c.month)),
                Chunk::NumMonth => append_int(&mut out, c.month, 0),
                Chunk::ZeroMonth => append_int(&mut out, c.month, 2),
                Chunk::WeekDay => out.push_str(&weekday_name(c.weekday)[..3]),
                Chunk::LongWeekDay => out.push_str(&weekday_name(c.weekday)),
                Chunk::Day => append_int(&mut out, c.day, 0),
                Chunk::UnderDay => {
                    if c.day < 10 {
                        out.push(' ');
                    }
                    append_int(&mut out, c.day, 0);
                }
                Chunk::ZeroDay => append_int(&mut out, c.day, 2),
                Chunk::UnderYearDay => {
                    if c.yday < 100 {
                        out.push(' ');
                        if c.yday < 10 {
                            out.push(' ');
                        }
                    }
                    append_int(&mut out, c.yday, 0);
                }
                Chunk::ZeroYearDay => append_int(&mut out, c.yday, 3),
                Chunk::Hour => append_int(&mut out, c.hour, 2),
                Chunk::Hour12 | Chunk::ZeroHour12 => {
                    let hr = if c.hour % 12 == 0 { 12 } else { c.hour % 12 };
                    append_int(&mut out, hr, if chunk == Chunk::Hour12 { 0 } else { 2 });
                }
                Chunk::Minute => append_int(&mut out, c.minute, 0),
                Chunk::ZeroMinute => append_int(&mut out, c.minute, 2),
                Chunk::Second => append_int(&mut out, c.second, 0),
                Chunk::ZeroSecond => append_int(&mut out, c.second, 2),
                Chunk::Pm => out.push_str(if c.hour >= 12 { "PM" } else { "AM" }),
                Chunk::PmLower => out.push_str(if c.hour >= 12 { "pm" } else { "am" }),
                // UTC: the ISO 8601 forms write "Z", the numeric ones a zero offset.
                Chunk::Zone(z) => match z {
                    Zone::Iso => out.push('Z'),
                    Zone::Num { colon, minutes, seconds } => {
                        out.push_str("+00");
                        if colon {
                            out.push(':');
                        }
                        if minutes {
                            out.push_str("00");
                        }
                        if seconds {
                            if colon {
                                out.push(':');
                            }
                            out.push_str("00");
                        }
                    }
                },
                Chunk::ZoneName => out.push_str("UTC"),
                Chunk::Frac { sep, digits, trim } => append_nano(&mut out, self.nanos, sep, digits, trim),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// "Z07:00" and friends: "Z" for UTC.
    Iso,
    /// "-07:00" and friends.
    Num { colon: bool, minutes: bool, seconds: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    Pm,
    PmLower,
    ZoneName,
    Zone(Zone),
    Frac { sep: char, digits: usize, trim: bool },
}

fn starts_with_lower(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// Go's `nextStdChunk`: the text before the first layout element, the element, and the rest.
fn next_std_chunk(layout: &str) -> (&str, Option<Chunk>, &str) {
    let b = layout.as_bytes();
    let at = |i: usize, s: &str| layout[i..].starts_with(s);
    for i in 0..b.len() {
        let (chunk, len) = match b[i] {
            b'J' if at(i, "January") => (Chunk::LongMonth, 7),
            b'J' if at(i, "Jan") && !starts_with_lower(&layout[i + 3..]) => (Chunk::Month, 3),
            b'M' if at(i, "Monday") => (Chunk::LongWeekDay, 6),
            b'M' if at(i, "Mon") && !starts_with_lower(&layout[i + 3..]) => (Chunk::WeekDay, 3),
            b'M' if at(i, "MST") => (Chunk::ZoneName, 3),
            b'0' if b.get(i + 1).is_some_and(|c| (b'1'..=b'6').contains(c)) => {
                let chunk = [Chunk::ZeroMonth, Chunk::ZeroDay, Chunk::ZeroHour12, Chunk::ZeroMinute, Chunk::ZeroSecond]
                    .get(usize::from(b[i + 1] - b'1'))
                    .copied()
                    .unwrap_or(Chunk::Year);
                (chunk, 2)
            }
            b'0' if at(i, "002") => (Chunk::ZeroYearDay, 3),
            b'1' if at(i, "15") => (Chunk::Hour, 2),
            b'1' => (Chunk::NumMonth, 1),
            b'2' if at(i, "2006") => (Chunk::LongYear, 4),
            b'2' => (Chunk::Day, 1),
            // "_2006" is a literal underscore followed by the year.
            b'_' if at(i, "_2006") => return (&layout[..i + 1], Some(Chunk::LongYear), &layout[i + 5..]),
            b'_' if at(i, "_2") => (Chunk::UnderDay, 2),
            b'_' if at(i, "__2") => (Chunk::UnderYearDay, 3),
            b'3' => (Chunk::Hour12, 1),
            b'4' => (Chunk::Minute, 1),
            b'5' => (Chunk::Second, 1),
            b'P' if at(i, "PM") => (Chunk::Pm, 2),
            b'p' if at(i, "pm") => (Chunk::PmLower, 2),
            b'-' | b'Z' => {
                let forms: [(&str, bool, bool, bool); 5] = [
                    ("070000", false, true, true),
                    ("07:00:00", true, true, true),
                    ("0700", false, true, false),
                    ("07:00", true, true, false),
                    ("07", false, false, false),
                ];
                let found = forms.iter().find(|(f, ..)| layout[i + 1..].starts_with(f));
                match found {
                    Some(&(form, colon, minutes, seconds)) => {
                        let zone = if b[i] == b'Z' { Zone::Iso } else { Zone::Num { colon, minutes, seconds } };
                        (Chunk::Zone(zone), form.len() + 1)
                    }
                    None => continue,
                }
            }
            c @ (b'.' | b',') if b.get(i + 1).is_some_and(|d| *d == b'0' || *d == b'9') => {
                let digit = b[i + 1];
                let mut j = i + 1;
                while j < b.len() && b[j] == digit {
                    j += 1;
                }
                // Only a fraction if the run of digits ends here.
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    continue;
                }
                (Chunk::Frac { sep: char::from(c), digits: j - i - 1, trim: digit == b'9' }, j - i)
            }
            _ => continue,
        };
        return (&layout[..i], Some(chunk), &layout[i + len..]);
    }
    (layout, None, "")
}

/// Go's `appendInt`: decimal, zero-padded to `width` digits.
fn append_int(out: &mut String, x: i64, width: usize) {
    if x < 0 {
        out.push('-');
    }
    out.push_str(&format!("{:0width$}", x.unsigned_abs()));
}

fn append_nano(out: &mut String, nanos: u32, sep: char, digits: usize, trim: bool) {
    if trim && (digits == 0 || nanos == 0) {
        return;
    }
    let mut frac = format!("{nanos:09}");
    frac.truncate(digits.min(9));
    if trim {
        frac.truncate(frac.trim_end_matches('0').len());
        if frac.is_empty() {
            return;
        }
    }
    out.push(sep);
    out.push_str(&frac);
}

/// Go's `norm`: moves whole multiples of `base` from `lo` into `hi`.
fn norm(hi: i64, lo: i64, base: i64) -> (i64, i64) {
    (hi.saturating_add(lo.div_euclid(base)), lo.rem_euclid(base))
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day number (0 is 1970-01-01).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`], for months 1 to 12.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.saturating_mul(146_097).saturating_add(doe - 719_468)
}

fn less_than_half(x: i64, y: i64) -> bool {
    (x as u64).wrapping_add(x as u64) < y as u64
}

fn clamp_duration(n: i128) -> i64 {
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

/// Go's `Duration.String`: "1h2m3.5s", "1.5ms", "0s".
pub(super) fn duration_string(d: i64) -> String {
    let neg = d < 0;
    let mut u = d.unsigned_abs();
    let mut out: Vec<u8> = Vec::new(); // built backwards
    if u < NANOS_PER_SEC as u64 {
        if u == 0 {
            return "0s".into();
        }
        let (prec, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "µs")
        } else {
            (6, "ms")
        };
        out.extend(unit.bytes().rev());
        u = frac_backwards(&mut out, u, prec);
        int_backwards(&mut out, u);
    } else {
        out.push(b's');
        u = frac_backwards(&mut out, u, 9);
        int_backwards(&mut out, u % 60);
        u /= 60;
        if u > 0 {
            out.push(b'm');
            int_backwards(&mut out, u % 60);
            u /= 60;
            if u > 0 {
                out.push(b'h');
                int_backwards(&mut out, u);
            }
        }
    }
    if neg {
        out.push(b'-');
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `fmtFrac`: writes `.fraction` of `v / 10^prec` without trailing zeros (backwards) and
/// returns the integer part.
fn frac_backwards(out: &mut Vec<u8>, mut v: u64, prec: usize) -> u64 {
    let mut printed = false;
    for _ in 0..prec {
        let digit = v % 10;
        printed = printed || digit != 0;
        if printed {
            out.push(b'0' + digit as u8);
        }
        v /= 10;
    }
    if printed {
        out.push(b'.');
    }
    v
}

fn int_backwards(out: &mut Vec<u8>, mut v: u64) {
    loop {
        out.push(b'0' + (v % 10) as u8);
        v /= 10;
        if v == 0 {
            break;
        }
    }
}

/// Go's `Duration.Truncate`.
pub(super) fn duration_truncate(d: i64, m: i64) -> i64 {
    if m <= 0 { d } else { d - d % m }
}

/// Go's `Duration.Round`: halfway values round away from zero; saturates on overflow.
pub(super) fn duration_round(d: i64, m: i64) -> i64 {
    if m <= 0 {
        return d;
    }
    let r = d % m;
    if d < 0 {
        let r = -r;
        if less_than_half(r, m) {
            return d + r;
        }
        return d.checked_sub(m).map(|x| x + r).filter(|x| *x < d).unwrap_or(i64::MIN);
    }
    if less_than_half(r, m) {
        return d - r;
    }
    d.checked_add(m - r).filter(|x| *x > d).unwrap_or(i64::MAX)
}

/// Go's `Duration.Abs`.
pub(super) fn duration_abs(d: i64) -> i64 {
    if d == i64::MIN { i64::MAX } else { d.abs() }
}

/// Go's `Duration.Hours`/`Minutes`/`Seconds`: whole units plus the fraction, so that large
/// durations keep their precision.
pub(super) fn duration_in(d: i64, unit: i64) -> f64 {
    (d / unit) as f64 + (d % unit) as f64 / unit as f64
}

/// Prometheus' `model.ParseDuration` (prometheus/common before 0.60): "1d12h", "5m", "0";
/// returns nanoseconds.
pub(super) fn parse_model_duration(s: &str) -> Result<i64, String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    match s {
        "0" => return Ok(0),
        "" => return Err("empty duration string".into()),
        _ => {}
    }
    let re = RE.get_or_init(|| {
        Regex::new(r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$")
            .unwrap_or_else(|e| unreachable!("the duration pattern is valid: {e}"))
    });
    let Some(caps) = re.captures(s) else {
        return Err(format!("not a valid duration string: {}", super::strconv::quote(s)));
    };
    const MS: i64 = 1_000_000;
    let units: [(usize, i64); 7] = [
        (2, 1000 * 60 * 60 * 24 * 365),
        (4, 1000 * 60 * 60 * 24 * 7),
        (6, 1000 * 60 * 60 * 24),
        (8, 1000 * 60 * 60),
        (10, 1000 * 60),
        (12, 1000),
        (14, 1),
    ];
    let mut total: i64 = 0;
    let mut overflow = false;
    for (group, mult) in units {
        let Some(m) = caps.get(group) else { continue };
        // strconv.Atoi saturates on overflow; the range check below then reports it.
        let n: i64 = m.as_str().parse().unwrap_or(i64::MAX);
        if n > i64::MAX / mult / MS {
            overflow = true;
        }
        total = total.wrapping_add(n.wrapping_mul(MS).wrapping_mul(mult));
        if total < 0 {
            overflow = true;
        }
    }
    if overflow {
        return Err("duration out of range".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_go() {
        assert_eq!(Time::from_unix(0, 0).string(), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(Time::from_unix(1_234_567_890, 500_000_000).string(), "2009-02-13 23:31:30.5 +0000 UTC");
        assert_eq!(Time::from_unix(-1, -500_000_000).string(), "1969-12-31 23:59:58.5 +0000 UTC");
        let t = Time::from_unix(1_234_567_890, 123_000_000);
        assert_eq!(t.format("Mon Jan _2 15:04:05.000 MST 2006"), "Fri Feb 13 23:31:30.123 UTC 2009");
        assert_eq!(t.format("2006-01-02T15:04:05Z07:00"), "2009-02-13T23:31:30Z");
        assert_eq!(t.format("3:04PM -07:00 002 __2 ,999"), "11:31PM +00:00 044  44 ,123");
        assert_eq!(t.go_string(), "time.Date(2009, time.February, 13, 23, 31, 30, 123000000, time.UTC)");
        assert_eq!(t.weekday(), 5);
        assert_eq!(Time::from_unix(0, 0).add_date(0, 1, 30).string(), "1970-03-03 00:00:00 +0000 UTC");
        assert!(Time::from_unix(-ZERO_TO_UNIX, 0).is_zero());
    }

    #[test]
    fn durations_match_go() {
        assert_eq!(duration_string(0), "0s");
        assert_eq!(duration_string(1), "1ns");
        assert_eq!(duration_string(1_500), "1.5µs");
        assert_eq!(duration_string(1_500_000), "1.5ms");
        assert_eq!(duration_string(90 * NANOS_PER_SEC), "1m30s");
        assert_eq!(duration_string(-(3_723 * NANOS_PER_SEC + 500_000_000)), "-1h2m3.5s");
        assert_eq!(duration_string(i64::MIN), "-2562047h47m16.854775808s");
        assert_eq!(duration_round(1_500, 1_000), 2_000);
        assert_eq!(duration_round(-1_500, 1_000), -2_000);
        assert_eq!(parse_model_duration("1d12h").unwrap(), 36 * 3600 * NANOS_PER_SEC);
        assert_eq!(parse_model_duration("5ms").unwrap(), 5_000_000);
        assert!(parse_model_duration("1.5h").is_err());
        assert!(parse_model_duration("999999999999y").unwrap_err().contains("out of range"));
    }
}

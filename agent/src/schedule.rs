//! When a job is due (docs/design.md §12): a cron expression (5 fields, or 6 with seconds
//! first, and the `@hourly`-style macros) in the host's time zone or UTC, parsed by croner; or
//! `@every D`, due at every multiple of D since the Unix epoch, so that runs keep their rhythm
//! across agent restarts and a missed run can be told from the schedule alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, Utc};

/// The time zone a cron expression is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The host's time zone (`TZ`, else /etc/localtime), as cron does.
    Local,
    /// UTC.
    Utc,
}

impl Zone {
    /// `"local"` or `"UTC"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Local => "local",
            Zone::Utc => "UTC",
        }
    }
}

/// The shortest `@every` interval.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest `@every` interval.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 86400);

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    zone: Zone,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<croner::Cron>, Zone),
    Every(Duration),
}

const HOW: &str = "write 5 fields (minute hour day-of-month month day-of-week, for example \"0 */6 * * *\"), 6 with seconds first, a macro (@hourly, @daily, @weekly, @monthly, @yearly) or @every D (for example \"@every 30m\")";

impl Schedule {
    /// Parses `text`; the error says what is wrong and what to write.
    pub fn parse(text: &str, zone: Zone) -> Result<Schedule, String> {
        let trimmed = text.trim();
        if let Some(d) = trimmed.strip_prefix("@every") {
            let d = d.trim();
            let every = humantime::parse_duration(d).map_err(|e| {
                format!("invalid interval \"{d}\" in \"{text}\": {e}; write for example \"@every 30m\"")
            })?;
            if !(MIN_EVERY..=MAX_EVERY).contains(&every)
                || every.subsec_millis() as u128 * 1_000_000 != every.subsec_nanos() as u128
            {
                return Err(format!(
                    "\"{text}\": the interval must be whole milliseconds between {} and {}",
                    humantime::format_duration(MIN_EVERY),
                    humantime::format_duration(MAX_EVERY)
                ));
            }
            return Ok(Schedule { text: trimmed.to_string(), zone, kind: Kind::Every(every) });
        }
        if trimmed.len() > 256 {
            return Err(format!("the schedule is {} bytes long; at most 256", trimmed.len()));
        }
        // Vixie cron's @midnight, which croner does not know.
        let pattern = if trimmed.eq_ignore_ascii_case("@midnight") { "@daily" } else { trimmed };
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(pattern).map_err(|e| format!("invalid schedule \"{text}\": {e}; {HOW}"))?;
        let s = Schedule { text: trimmed.to_string(), zone, kind: Kind::Cron(Box::new(cron), zone) };
        // A pattern that never matches (the 30th of February) parses; refuse it here.
        if s.next_after(SystemTime::now()).is_none() {
            return Err(format!("the schedule \"{text}\" never comes due; {HOW}"));
        }
        Ok(s)
    }

    /// The schedule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The time zone it is read in (`@every` does not depend on it).
    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// The first time strictly after `t` when the job is due; None when it never is again.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every(d) => {
                let d = d.as_millis();
                let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis();
                let next = (ms / d + 1) * d;
                Some(UNIX_EPOCH + Duration::from_millis(u64::try_from(next).ok()?))
            }
            Kind::Cron(cron, zone) => {
                // croner works in whole seconds and keeps a fraction it is given.
                let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
                let utc: DateTime<Utc> = (UNIX_EPOCH + Duration::from_secs(secs)).into();
                let next = match zone {
                    Zone::Utc => cron.find_next_occurrence(&utc, false).ok().map(SystemTime::from),
                    Zone::Local => {
                        cron.find_next_occurrence(&utc.with_timezone(&Local), false).ok().map(SystemTime::from)
                    }
                }?;
                (next > t).then_some(next)
            }
        }
    }

    /// How long the job goes between runs, at most: `@every`'s interval, or the longest gap
    /// among a cron expression's next 16 due times from `from` (a weekday job has a 3-day gap
    /// over the weekend). What "twice its period" in FleetJobNotSucceeding is measured against.
    pub fn period(&self, from: SystemTime) -> Duration {
        if let Kind::Every(d) = self.kind {
            return d;
        }
        let mut longest = Duration::ZERO;
        let Some(mut t) = self.next_after(from) else { return longest };
        for _ in 0..16 {
            let Some(n) = self.next_after(t) else { break };
            longest = longest.max(n.duration_since(t).unwrap_or_default());
            t = n;
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        let dt: DateTime<Utc> = s.parse().unwrap();
        dt.into()
    }

    fn next(s: &Schedule, t: &str) -> String {
        let n: DateTime<Utc> = s.next_after(at(t)).unwrap().into();
        n.to_rfc3339()
    }

    #[test]
    fn five_and_six_fields_and_macros() {
        let every_6h = Schedule::parse("0 */6 * * *", Zone::Utc).unwrap();
        assert_eq!(next(&every_6h, "2026-12-01T07:30:00Z"), "2026-12-01T12:00:00+00:00");
        assert_eq!(every_6h.period(at("2026-12-01T07:30:00Z")), Duration::from_secs(6 * 3600));
        let seconds = Schedule::parse("*/10 * * * * *", Zone::Utc).unwrap();
        assert_eq!(next(&seconds, "2026-12-01T07:30:01.5Z"), "2026-12-01T07:30:10+00:00");
        let daily = Schedule::parse("@daily", Zone::Utc).unwrap();
        assert_eq!(next(&daily, "2026-12-01T07:30:00Z"), "2026-12-02T00:00:00+00:00");
        let midnight = Schedule::parse("@midnight", Zone::Utc).unwrap();
        assert_eq!(next(&midnight, "2026-12-01T00:00:00Z"), "2026-12-02T00:00:00+00:00");
        let hourly = Schedule::parse("@hourly", Zone::Utc).unwrap();
        assert_eq!(next(&hourly, "2026-12-01T07:00:00Z"), "2026-12-01T08:00:00+00:00", "strictly after");
        let weekdays = Schedule::parse("0 9 * * MON-FRI", Zone::Utc).unwrap();
        assert_eq!(weekdays.period(at("2026-12-01T07:30:00Z")), Duration::from_secs(3 * 86400));
    }

    #[test]
    fn every_is_anchored_at_the_epoch() {
        let s = Schedule::parse("@every 2s", Zone::Local).unwrap();
        assert_eq!(next(&s, "2026-12-01T07:30:01.999Z"), "2026-12-01T07:30:02+00:00");
        assert_eq!(next(&s, "2026-12-01T07:30:02Z"), "2026-12-01T07:30:04+00:00");
        assert_eq!(s.period(SystemTime::now()), Duration::from_secs(2));
        let s = Schedule::parse("@every 6h", Zone::Local).unwrap();
        assert_eq!(next(&s, "2026-12-01T07:30:00Z"), "2026-12-01T12:00:00+00:00");
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        for (text, says) in [
            ("", "empty"),
            ("* * *", "5 or 6 fields"),
            ("0 0 * * * * 2030", "5 or 6 fields"),
            ("61 * * * *", "invalid schedule"),
            ("0 0 30 2 *", "never comes due"),
            ("@every", "invalid interval"),
            ("@every soon", "invalid interval"),
            ("@every 100ms", "between 1s"),
            ("@often", "invalid schedule"),
        ] {
            let e = Schedule::parse(text, Zone::Utc).unwrap_err();
            assert!(e.to_lowercase().contains(says), "{text}: {e}");
        }
    }
}

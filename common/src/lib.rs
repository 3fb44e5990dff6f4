//! What fleet-agent, fleet-coordinator and fleetctl share and what does not belong in the wire
//! contract: mutual TLS and identities, config reading, logging, shutdown and small helpers.

#![forbid(unsafe_code)]

pub mod config;
pub mod identity;
pub mod logging;
pub mod pki;
pub mod selector;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod tls;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fleet version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An I/O error as a short lowercase phrase for messages ("no such file", "connection refused").
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::AddrInUse => "address already in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".to_string(),
        io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => {
            let s = e.to_string();
            // Drop the "(os error N)" suffix: it helps nobody reading the message.
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

/// The last `n` lines of `path`, oldest first, reading backwards in blocks.
pub fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut data: Vec<u8> = Vec::new();
    const BLOCK: u64 = 64 * 1024;
    // n lines need n newlines, plus one for the line before them.
    while pos > 0 && data.iter().filter(|&&b| b == b'\n').count() <= n {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
        pos = start;
    }
    let text = String::from_utf8_lossy(&data);
    let mut lines: Vec<&str> = text.lines().collect();
    if pos > 0 && !lines.is_empty() {
        // The first line read may be partial.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|s| s.to_string()).collect())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC, with millisecond precision.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Formats a duration for people: "3s", "4m 10s", "2h 5m", "3d 4h".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => two_units(s / 60, "m", s % 60, "s"),
        3600..86400 => two_units(s / 3600, "h", (s % 3600) / 60, "m"),
        _ => two_units(s / 86400, "d", (s % 86400) / 3600, "h"),
    }
}

/// Formats a short duration for people with millisecond precision below a minute: "300ms",
/// "1.5s", "10s", "4m 10s".
pub fn human_duration_ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 && ms % 1000 != 0 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        human_duration(d)
    }
}

fn two_units(a: u64, ua: &str, b: u64, ub: &str) -> String {
    if b == 0 { format!("{a}{ua}") } else { format!("{a}{ua} {b}{ub}") }
}

/// Formats a byte count for people, in binary units: "512 B", "3.2 MiB", "15.0 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_sizes() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_duration(Duration::from_secs(250)), "4m 10s");
    }
}

/// `s` made safe to print on a terminal: control characters (ESC, BEL, backspace, carriage
/// return, the C1 controls) are shown escaped (`\x1b`, `\u{9b}`) instead of reaching the
/// terminal, where they could rewrite the screen; those in `keep` (say `\n` in a message, `\t`
/// in a log line) stay. Text from agents and services is printed through this; `-o json` keeps
/// it as it is, escaped by JSON.
pub fn printable<'a>(s: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    if !s.chars().any(|c| c.is_control() && !keep.contains(&c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !c.is_control() || keep.contains(&c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `s` holds a control character (see [`printable`]).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(printable("gpu\x1b[2J\x07", &[]), "gpu\\x1b[2J\\x07");
        assert_eq!(printable("a\u{9b}31m", &[]), "a\\u{9b}31m");
        assert_eq!(printable("two\nlines\tand\r", &['\n']), "two\nlines\\tand\\r");
        assert!(matches!(printable("plain ünïcode", &[]), std::borrow::Cow::Borrowed(_)));
    }
}

/// Says a repeated failure once in a while instead of every time it happens (a full disk
/// fails every write, ten times a second): [`Throttle::ready`] is true for the first
/// occurrence and then at most once per period, and tells how many were held back since.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// At most once per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle { every, state: std::sync::Mutex::new((None, 0)) }
    }

    /// Whether to log this occurrence: `Some(n)` with the `n` occurrences not logged since the
    /// last one that was, or `None` to stay quiet.
    pub fn ready(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let held = s.1;
                *s = (Some(now), 0);
                Some(held)
            }
        }
    }

    /// The failure has stopped: the next one is said at once. Returns whether there had been
    /// one since the last clear (worth saying that it is over).
    pub fn clear(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let was = s.0.is_some();
        *s = (None, 0);
        was
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    #[test]
    fn says_the_first_then_at_most_once_a_period_with_what_it_held_back() {
        let t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.ready(), Some(0));
        assert_eq!((0..99).filter_map(|_| t.ready()).count(), 0);
        assert!(t.clear());
        assert!(!t.clear());
        assert_eq!(t.ready(), Some(0));
        let t = Throttle::new(Duration::ZERO);
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), Some(0));
    }
}

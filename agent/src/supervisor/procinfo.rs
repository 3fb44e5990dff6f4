//! What the kernel says about a supervised process: CPU time, resident memory and start time
//! (to tell a process from a later one that reused its pid), read from /proc.

use std::path::Path;

/// Fields of /proc/PID/stat that the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Process group id.
    pub pgid: i32,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// When the process started, in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses the text of /proc/PID/stat.
pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    let field = |n: usize| f.get(n - 3).copied();
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    Some(Stat {
        pgid: field(5)?.parse().ok()?,
        cpu_seconds: (utime + stime) as f64 / ticks,
        start_ticks: field(22)?.parse().ok()?,
    })
}

/// /proc/PID/stat of a live process.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Resident memory of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Whether `pid` still is the process that started at `start_ticks` (and is not a zombie).
pub fn same_process(pid: u32, start_ticks: u64) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = text.rfind(')').and_then(|i| text[i + 2..].chars().next());
    state != Some('Z') && parse_stat(&text).is_some_and(|s| s.start_ticks == start_ticks)
}

/// Whether any process is still in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    match rustix::process::Pid::from_raw(pgid) {
        // Signal 0 checks for existence without sending anything.
        Some(p) => rustix::process::test_kill_process_group(p).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let text = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 98765 1000000 200 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pgid, 1234);
        assert_eq!(s.start_ticks, 98765);
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert!((s.cpu_seconds - 300.0 / ticks).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(same_process(me, s.start_ticks));
        assert!(!same_process(me, s.start_ticks + 1));
    }
}

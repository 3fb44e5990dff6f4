//! Metric primitives and the Prometheus text writer: counters, histograms, [`Exposition`] and
//! the [`FmtMetrics`] trait through which every subsystem writes its own families into
//! `/metrics` (crate::http assembles them; crate::series writes the host and service families
//! from the registry at scrape time). A leaf: it imports nothing else of the coordinator.
//!
//! The text is the Prometheus text format 0.0.4, written straight into one buffer with no
//! allocation per sample: at 10,000 hosts a scrape writes about a million samples from the
//! registry, and keeping an object per series (as a client library's registry does) would
//! cost more memory than the history. The coordinator's own families go through the same
//! writer: measured against prometheus-client 0.26's `encoding::prometheus_text` for the
//! same 14 families, both take 3.6 µs a render (docs/benchmarks.md, "/metrics"), so a second
//! writer with its own escaping and number format would buy nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) for latency histograms: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// [`LATENCY_BUCKETS`] as their `le` labels, written once.
const LATENCY_LE: [&str; 14] =
    ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// The coordinator's own metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Agent sessions attached since start.
    pub sessions_opened: Counter,
    /// Sessions refused, by reason.
    pub sessions_rejected_identity: Counter,
    /// Sessions refused because the first message was not a valid Hello.
    pub sessions_rejected_protocol: Counter,
    /// Reports received (including duplicates).
    pub reports_received: Counter,
    /// Reports written to the store.
    pub reports_stored: Counter,
    /// Reports received again after they were stored, and not written twice.
    pub reports_duplicate: Counter,
    /// Group commits that failed.
    pub store_errors: Counter,
    /// Group commit latency (write + flush).
    pub store_write_seconds: Histogram,
    /// TLS handshakes that failed (no certificate, wrong CA, ...).
    pub tls_handshake_failures: Counter,
    /// Connections refused because max_connections was reached.
    pub connections_refused: Counter,
    /// HTTP connections refused because `[http] max_connections` was reached.
    pub http_connections_refused: Counter,
    /// Agent sessions refused because another machine is attached with the same identity.
    pub identity_conflicts: Counter,
    /// Operator API calls denied (agent certificate, wrong trust domain).
    pub control_denied: Counter,
    /// Operator API latency.
    pub control_seconds: Histogram,
    /// When the last group commit failed, and why.
    last_store_error: std::sync::Mutex<Option<(i64, String)>>,
    /// When a group commit last succeeded whole (reports and host records), in ms.
    last_store_ok: std::sync::atomic::AtomicI64,
}

impl Metrics {
    /// Notes a failed group commit.
    pub fn store_failed(&self, error: String) {
        self.store_errors.inc();
        *self.last_store_error.lock().expect("metrics lock") = Some((fleet_common::now_ms(), error));
    }

    /// Notes a group commit that succeeded whole.
    pub fn store_ok(&self) {
        self.last_store_ok.store(fleet_common::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The last failed group commit, if no commit has succeeded since: whether the store is
    /// failing now (it recovers as soon as a commit succeeds again, a full disk freed say).
    pub fn store_failing(&self) -> Option<(i64, String)> {
        let ok = self.last_store_ok.load(std::sync::atomic::Ordering::Relaxed);
        self.last_store_error.lock().expect("metrics lock").clone().filter(|(at, _)| *at >= ok)
    }
}

/// Escapes a label value for the text format.
fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Something that writes metric families into the exposition.
pub trait FmtMetrics {
    /// Appends its families to `e`.
    fn fmt_metrics(&self, e: &mut Exposition);
}

/// The exposition being written: text format 0.0.4, one family after another.
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Exposition { out: String::with_capacity(capacity) }
    }

    /// The text written.
    pub fn into_string(self) -> String {
        self.out
    }

    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.suffixed_sample(name, "", labels, value);
    }

    /// One sample of the series `name` + `suffix` (a histogram's `_bucket`, `_sum`, `_count`),
    /// written straight into the text: a scrape at 10,000 hosts writes a million samples.
    fn suffixed_sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A whole histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (bucket, le) in h.buckets.iter().zip(LATENCY_LE) {
            cumulative += bucket.load(Ordering::Relaxed);
            self.suffixed_sample(name, "_bucket", &[("le", le)], cumulative as f64);
        }
        let count = h.count.load(Ordering::Relaxed);
        self.suffixed_sample(name, "_bucket", &[("le", "+Inf")], count as f64);
        self.suffixed_sample(name, "_sum", &[], h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        self.suffixed_sample(name, "_count", &[], count as f64);
    }
}

/// Writes a sample value as the text format spells it (`NaN`, `+Inf`, `-Inf`, else Rust's
/// shortest round-trip decimal).
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Reads back a value [`write_value`] wrote.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

impl FmtMetrics for Metrics {
    fn fmt_metrics(&self, e: &mut Exposition) {
        let m = self;
        type CounterRow<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a Counter);
        let counters: [CounterRow<'_>; 12] = [
            (
                "fleet_coordinator_sessions_opened_total",
                "Agent sessions attached since start.",
                &[],
                &m.sessions_opened,
            ),
            (
                "fleet_coordinator_sessions_rejected_total",
                "Agent sessions refused since start, by reason.",
                &[("reason", "identity")],
                &m.sessions_rejected_identity,
            ),
            ("fleet_coordinator_sessions_rejected_total", "", &[("reason", "protocol")], &m.sessions_rejected_protocol),
            (
                "fleet_coordinator_reports_received_total",
                "Reports received from agents, including duplicates.",
                &[],
                &m.reports_received,
            ),
            ("fleet_coordinator_reports_stored_total", "Reports written to the store.", &[], &m.reports_stored),
            (
                "fleet_coordinator_reports_duplicate_total",
                "Reports received again after they were stored; not written twice.",
                &[],
                &m.reports_duplicate,
            ),
            ("fleet_coordinator_store_errors_total", "Group commits to the store that failed.", &[], &m.store_errors),
            (
                "fleet_coordinator_tls_handshake_failures_total",
                "Incoming connections whose TLS handshake failed.",
                &[],
                &m.tls_handshake_failures,
            ),
            (
                "fleet_coordinator_connections_refused_total",
                "Connections refused because max_connections was reached.",
                &[],
                &m.connections_refused,
            ),
            (
                "fleet_coordinator_http_connections_refused_total",
                "HTTP connections refused because [http] max_connections was reached.",
                &[],
                &m.http_connections_refused,
            ),
            (
                "fleet_coordinator_identity_conflicts_total",
                "Agent sessions refused because another machine was attached with the same identity.",
                &[],
                &m.identity_conflicts,
            ),
            (
                "fleet_coordinator_control_denied_total",
                "Operator API calls denied for lack of an operator identity.",
                &[],
                &m.control_denied,
            ),
        ];
        for (name, help, labels, c) in counters {
            if !help.is_empty() {
                e.family(name, "counter", help);
            }
            e.sample(name, labels, c.get() as f64);
        }
        e.histogram(
            "fleet_coordinator_store_write_duration_seconds",
            "Time to write and flush one group commit.",
            &m.store_write_seconds,
        );
        e.histogram(
            "fleet_coordinator_control_request_duration_seconds",
            "Time to answer one operator API call.",
            &m.control_seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_formats_numbers() {
        let mut e = Exposition { out: String::new() };
        e.sample("x", &[("a", "q\"b\\c\nd")], 1.5);
        e.sample("y", &[], 3.0);
        assert_eq!(e.out, "x{a=\"q\\\"b\\\\c\\nd\"} 1.5\ny 3\n");
    }

    #[test]
    fn bucket_labels_are_the_bounds_as_written() {
        for (b, le) in LATENCY_BUCKETS.iter().zip(LATENCY_LE) {
            assert_eq!(format!("{b}"), le);
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.0004);
        h.observe(0.003);
        h.observe(100.0);
        let mut e = Exposition { out: String::new() };
        e.histogram("t_seconds", "T.", &h);
        assert!(e.out.contains("t_seconds_bucket{le=\"0.0005\"} 1\n"), "{}", e.out);
        assert!(e.out.contains("t_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(e.out.contains("t_seconds_bucket{le=\"10\"} 2\n"));
        assert!(e.out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(e.out.contains("t_seconds_count 3\n"));
    }
}

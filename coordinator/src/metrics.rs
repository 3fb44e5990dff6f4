//! The `/metrics` exposition (DESIGN §9): host and service series built from the registry at
//! scrape time, plus the coordinator's own `fleet_coordinator_*` metrics.
//!
//! The text is written here in the Prometheus text format 0.0.4 rather than through the
//! prometheus-client crate: that crate emits OpenMetrics text, whose counter families
//! (`# TYPE x counter` followed by `x_total` samples) `promtool check metrics` reports as
//! lacking help text, and the exposition must pass promtool with no finding. Writing the
//! format directly is also one pass over the registry with no intermediate allocation per
//! series, which matters at 10,000 hosts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::registry::Registry;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) for latency histograms: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

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
    /// Calls, handshakes and enrollments refused, by [`crate::guard::DenyReason`] (in the
    /// order of `DenyReason::ALL`).
    denied: [Counter; crate::guard::DenyReason::ALL.len()],
    /// When the last group commit failed, and why.
    last_store_error: std::sync::Mutex<Option<(i64, String)>>,
    /// When a group commit last succeeded whole (reports and host records), in ms.
    last_store_ok: std::sync::atomic::AtomicI64,
}

impl Metrics {
    /// Counts a refusal.
    pub fn denied(&self, reason: crate::guard::DenyReason) {
        if let Some(i) = crate::guard::DenyReason::ALL.iter().position(|r| *r == reason) {
            self.denied[i].inc();
        }
    }

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

struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
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
        let _ = writeln!(self.out, " {}", fmt_value(value));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let le = fmt_value(*b);
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        let count = h.count.load(Ordering::Relaxed);
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }
}

fn fmt_value(v: f64) -> String {
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

/// One service family: name, type, help, and how to read the value.
pub type SvcValue = (&'static str, &'static str, &'static str, fn(&fleet_proto::v1::ServiceStatus) -> f64);
/// The per-service families of DESIGN §9 (fleet_service_info is written separately).
pub const SERVICE: [SvcValue; 5] = [
    ("fleet_service_up", "gauge", "1 while the service runs (and is healthy, where it has a health check).", |s| {
        if s.state == "running" && s.healthy { 1.0 } else { 0.0 }
    }),
    ("fleet_service_healthy", "gauge", "1 when the service's last health check passed.", |s| {
        if s.healthy { 1.0 } else { 0.0 }
    }),
    (
        "fleet_service_restarts_total",
        "counter",
        "Restarts of the service since the agent started supervising it.",
        |s| s.restarts as f64,
    ),
    ("fleet_service_memory_rss_bytes", "gauge", "Resident memory of the service's process.", |s| {
        s.memory_rss_bytes as f64
    }),
    ("fleet_service_cpu_seconds_total", "counter", "CPU time used by the service's current process.", |s| {
        s.cpu_seconds
    }),
];

/// One host family: name, type, help, and how to read the value from a host's metrics.
pub type HostGauge = (&'static str, &'static str, fn(&fleet_proto::v1::HostMetrics) -> f64);

/// The per-host gauges of DESIGN §9.
pub const HOST_GAUGES: [HostGauge; 9] = [
    (
        "fleet_host_cpu_usage_ratio",
        "CPU busy time over wall time in the last report interval, 0 to 1, over all cores.",
        |m| m.cpu_usage_ratio,
    ),
    ("fleet_host_memory_total_bytes", "Physical memory.", |m| m.memory_total_bytes as f64),
    ("fleet_host_memory_available_bytes", "Memory available for new work without swapping.", |m| {
        m.memory_available_bytes as f64
    }),
    ("fleet_host_swap_total_bytes", "Swap space.", |m| m.swap_total_bytes as f64),
    ("fleet_host_swap_used_bytes", "Swap space in use.", |m| m.swap_used_bytes as f64),
    ("fleet_host_load1", "Load average over 1 minute.", |m| m.load1),
    ("fleet_host_load5", "Load average over 5 minutes.", |m| m.load5),
    ("fleet_host_load15", "Load average over 15 minutes.", |m| m.load15),
    ("fleet_host_uptime_seconds", "Seconds since the machine booted.", |m| m.uptime_seconds as f64),
];

/// Renders the whole exposition.
pub fn render(registry: &Registry, m: &Metrics, sessions_open: usize, started_at_ms: i64) -> String {
    let mut e = Exposition { out: String::with_capacity(4096 + registry.len() * 2048) };
    let hosts = registry.all();
    // Snapshot each host once: one lock per host per scrape.
    let snaps: Vec<_> = hosts
        .iter()
        .map(|h| h.with(|s| (h.name.clone(), s.session.is_some(), s.record.last_report_ms, s.latest.clone())))
        .collect();

    e.family("fleet_agent_up", "gauge", "1 while the agent's session is up, 0 when it is offline.");
    for (name, online, _, _) in &snaps {
        e.sample("fleet_agent_up", &[("host", name)], if *online { 1.0 } else { 0.0 });
    }
    e.family(
        "fleet_agent_last_report_timestamp_seconds",
        "gauge",
        "When the agent took its newest stored report, in seconds since the Unix epoch.",
    );
    for (name, _, last, _) in &snaps {
        if *last > 0 {
            e.sample("fleet_agent_last_report_timestamp_seconds", &[("host", name)], *last as f64 / 1000.0);
        }
    }
    e.family(
        "fleet_agent_reports_dropped_total",
        "counter",
        "Reports the agent dropped from its buffer because it reached its size or age bound.",
    );
    for (name, _, _, latest) in &snaps {
        if let Some(l) = latest {
            e.sample("fleet_agent_reports_dropped_total", &[("host", name)], l.reports_dropped_total as f64);
        }
    }
    e.family(
        "fleet_agent_clock_offset_seconds",
        "gauge",
        "The agent's clock minus the coordinator's, as estimated from its session; beyond 5s its samples are stored at corrected times.",
    );
    for h in &hosts {
        if let Some(offset) = h.with(|s| s.session.as_ref().and(s.clock_offset_ms)) {
            e.sample("fleet_agent_clock_offset_seconds", &[("host", &h.name)], offset as f64 / 1000.0);
        }
    }
    // Host metrics are exported only while the host is online: the last values of a silent
    // host would keep alerts such as "CPU above 80%" firing for a machine nobody can see.
    let online: Vec<_> = snaps
        .iter()
        .filter(|(_, on, _, _)| *on)
        .filter_map(|(n, _, _, l)| l.as_ref().and_then(|l| l.host.as_ref().map(|h| (n, h, l))))
        .collect();
    for (name, help, get) in HOST_GAUGES {
        e.family(name, "gauge", help);
        for (host, hm, _) in &online {
            e.sample(name, &[("host", host)], get(hm));
        }
    }
    e.family("fleet_host_filesystem_size_bytes", "gauge", "Size of a mounted filesystem.");
    for (host, hm, _) in &online {
        for fs in &hm.filesystems {
            e.sample(
                "fleet_host_filesystem_size_bytes",
                &[("host", host), ("mountpoint", &fs.mountpoint)],
                fs.size_bytes as f64,
            );
        }
    }
    e.family(
        "fleet_host_filesystem_avail_bytes",
        "gauge",
        "Bytes of a mounted filesystem available to unprivileged users.",
    );
    for (host, hm, _) in &online {
        for fs in &hm.filesystems {
            e.sample(
                "fleet_host_filesystem_avail_bytes",
                &[("host", host), ("mountpoint", &fs.mountpoint)],
                fs.avail_bytes as f64,
            );
        }
    }
    e.family(
        "fleet_host_network_receive_bytes_total",
        "counter",
        "Bytes received by a network interface since the machine booted.",
    );
    for (host, hm, _) in &online {
        for n in &hm.networks {
            e.sample(
                "fleet_host_network_receive_bytes_total",
                &[("host", host), ("device", &n.device)],
                n.receive_bytes_total as f64,
            );
        }
    }
    e.family(
        "fleet_host_network_transmit_bytes_total",
        "counter",
        "Bytes transmitted by a network interface since the machine booted.",
    );
    for (host, hm, _) in &online {
        for n in &hm.networks {
            e.sample(
                "fleet_host_network_transmit_bytes_total",
                &[("host", host), ("device", &n.device)],
                n.transmit_bytes_total as f64,
            );
        }
    }
    render_services(&mut e, &online);
    render_self(&mut e, registry, m, sessions_open, started_at_ms);
    e.out
}

type OnlineHost<'a> = (&'a String, &'a fleet_proto::v1::HostMetrics, &'a std::sync::Arc<fleet_proto::v1::Report>);

fn render_services(e: &mut Exposition, online: &[OnlineHost<'_>]) {
    for (name, kind, help, get) in SERVICE {
        e.family(name, kind, help);
        for (host, _, report) in online {
            for s in &report.services {
                e.sample(name, &[("host", host), ("service", &s.name)], get(s));
            }
        }
    }
    e.family("fleet_service_info", "gauge", "Always 1; the version label is the service's committed release.");
    for (host, _, report) in online {
        for s in &report.services {
            e.sample("fleet_service_info", &[("host", host), ("service", &s.name), ("version", &s.version)], 1.0);
        }
    }
}

fn render_self(e: &mut Exposition, registry: &Registry, m: &Metrics, sessions_open: usize, started_at_ms: i64) {
    let (online, offline) = registry.counts();
    e.family("fleet_coordinator_build_info", "gauge", "Always 1; labels describe the running fleet-coordinator.");
    e.sample("fleet_coordinator_build_info", &[("version", fleet_common::VERSION)], 1.0);
    e.family(
        "fleet_coordinator_start_time_seconds",
        "gauge",
        "When the coordinator started, in seconds since the Unix epoch.",
    );
    e.sample("fleet_coordinator_start_time_seconds", &[], started_at_ms as f64 / 1000.0);
    e.family("fleet_coordinator_hosts", "gauge", "Known hosts by status.");
    e.sample("fleet_coordinator_hosts", &[("status", "online")], online as f64);
    e.sample("fleet_coordinator_hosts", &[("status", "offline")], offline as f64);
    e.family("fleet_coordinator_sessions", "gauge", "Agent sessions open now.");
    e.sample("fleet_coordinator_sessions", &[], sessions_open as f64);
    type CounterRow<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a Counter);
    let counters: [CounterRow<'_>; 12] = [
        ("fleet_coordinator_sessions_opened_total", "Agent sessions attached since start.", &[], &m.sessions_opened),
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
    e.family(
        "fleet_coordinator_denied_total",
        "counter",
        "Calls, TLS handshakes and enrollments refused since start, by reason.",
    );
    for (reason, c) in crate::guard::DenyReason::ALL.iter().zip(&m.denied) {
        e.sample("fleet_coordinator_denied_total", &[("reason", reason.as_str())], c.get() as f64);
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

/// Appends what the store holds: reports in the history window and the report log's size.
pub fn render_store(out: &mut String, store: &crate::store::Store) {
    let mut e = Exposition { out: std::mem::take(out) };
    e.family("fleet_coordinator_history_reports", "gauge", "Reports held in the history window.");
    e.sample("fleet_coordinator_history_reports", &[], store.reports_held() as f64);
    e.family("fleet_coordinator_report_log_bytes", "gauge", "Bytes of the report log's segment files.");
    e.sample("fleet_coordinator_report_log_bytes", &[], store.reports_disk_bytes() as f64);
    *out = e.out;
}

/// Appends `fleet_alerts_firing{alertname,severity}`, the notification counters and the size
/// of the history.
pub fn render_alerting(out: &mut String, alerting: &crate::alerting::Alerting, tsdb: &crate::tsdb::Tsdb) {
    let mut e = Exposition { out: std::mem::take(out) };
    e.family("fleet_coordinator_history_series", "gauge", "Series held in the history.");
    e.sample("fleet_coordinator_history_series", &[], tsdb.len() as f64);
    e.family(
        "fleet_coordinator_history_series_dropped_total",
        "counter",
        "Samples dropped because the history reached [history] max_series.",
    );
    e.sample("fleet_coordinator_history_series_dropped_total", &[], tsdb.dropped_series() as f64);
    let (disk_bytes, chunk_errors) = tsdb.chunk_files();
    e.family(
        "fleet_coordinator_history_disk_bytes",
        "gauge",
        "Bytes of full history chunks in segment files under data_dir/history.",
    );
    e.sample("fleet_coordinator_history_disk_bytes", &[], disk_bytes as f64);
    e.family(
        "fleet_coordinator_history_chunk_errors_total",
        "counter",
        "History chunks that could not be written to disk (kept in memory instead) or read back.",
    );
    e.sample("fleet_coordinator_history_chunk_errors_total", &[], chunk_errors as f64);
    let mut firing: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for a in alerting.alerts() {
        if a.state == fleet_rules::rules::AlertState::Firing {
            let key = (
                a.labels.get("alertname").unwrap_or_default().to_string(),
                a.labels.get("severity").unwrap_or_default().to_string(),
            );
            *firing.entry(key).or_default() += 1;
        }
    }
    e.family("fleet_alerts_firing", "gauge", "Alerts firing now, by alert name and severity.");
    for ((name, sev), n) in &firing {
        e.sample("fleet_alerts_firing", &[("alertname", name), ("severity", sev)], *n as f64);
    }
    let m = &alerting.metrics;
    e.family(
        "fleet_coordinator_notifications_sent_total",
        "counter",
        "Alert batches delivered to an Alertmanager or webhook.",
    );
    e.sample("fleet_coordinator_notifications_sent_total", &[], m.sent.get() as f64);
    e.family(
        "fleet_coordinator_notifications_failed_total",
        "counter",
        "Alert batches that could not be delivered after retries.",
    );
    e.sample("fleet_coordinator_notifications_failed_total", &[], m.failed.get() as f64);
    e.family(
        "fleet_coordinator_notifications_dropped_total",
        "counter",
        "Alert batches dropped because the notification queue was full.",
    );
    e.sample("fleet_coordinator_notifications_dropped_total", &[], m.dropped.get() as f64);
    *out = e.out;
}

/// Appends `fleet_certificate_expiry_timestamp_seconds{identity,kind}` for every certificate
/// the coordinator follows.
pub fn render_certificates(out: &mut String, seen: &crate::certificates::Seen) {
    let mut e = Exposition { out: std::mem::take(out) };
    e.family(
        "fleet_certificate_expiry_timestamp_seconds",
        "gauge",
        "When a certificate the coordinator knows expires, in seconds since the Unix epoch.",
    );
    let all = seen.all();
    for (identity, f) in &all {
        e.sample(
            "fleet_certificate_expiry_timestamp_seconds",
            &[("identity", identity), ("kind", f.kind)],
            f.not_after_s as f64,
        );
    }
    e.family(
        "fleet_certificate_renewal_timestamp_seconds",
        "gauge",
        "When the holder of a certificate renews it itself (enrolled agents), in seconds since the Unix epoch.",
    );
    for (identity, f) in &all {
        if let Some(at) = f.renew_at_s {
            e.sample(
                "fleet_certificate_renewal_timestamp_seconds",
                &[("identity", identity), ("kind", f.kind)],
                at as f64,
            );
        }
    }
    *out = e.out;
}

/// Appends `fleet_rollouts_total{result}` and the progress of unfinished rollouts.
pub fn render_rollouts(out: &mut String, rollouts: &crate::rollouts::Rollouts) {
    let mut e = Exposition { out: std::mem::take(out) };
    e.family("fleet_rollouts_total", "counter", "Rollouts that ended since the coordinator started, by result.");
    let counts = rollouts.counts.by_result.lock().expect("counts lock").clone();
    for result in ["succeeded", "failed", "rolled_back", "aborted"] {
        e.sample("fleet_rollouts_total", &[("result", result)], counts.get(result).copied().unwrap_or(0) as f64);
    }
    let active: Vec<_> = rollouts.list().into_iter().filter(|r| !r.finished()).collect();
    e.family("fleet_rollout_hosts", "gauge", "Hosts of unfinished rollouts, by state.");
    for r in &active {
        for state in ["pending", "deploying", "healthy", "failed", "reverting", "reverted"] {
            let n = r.hosts.iter().filter(|h| h.state == state).count();
            e.sample("fleet_rollout_hosts", &[("rollout", &r.id), ("service", &r.service), ("state", state)], n as f64);
        }
    }
    e.family("fleet_rollout_progress_ratio", "gauge", "Share of an unfinished rollout's hosts that are done, 0 to 1.");
    for r in &active {
        let done = r.hosts.iter().filter(|h| h.state == "healthy").count();
        e.sample(
            "fleet_rollout_progress_ratio",
            &[("rollout", &r.id), ("service", &r.service)],
            done as f64 / r.hosts.len().max(1) as f64,
        );
    }
    *out = e.out;
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

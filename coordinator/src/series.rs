//! The series fleet makes of its hosts (docs/design.md §9): one catalog, [`REPORT_FAMILIES`], says
//! which samples a report gives, and both the history (crate::tsdb, which stores every
//! report's samples) and `/metrics` (which writes the newest report of each online host at
//! scrape time, keeping no object per series) read reports through it, so the two cannot
//! disagree. The families that come from the session rather than a report (`fleet_agent_up`,
//! the last report time, the clock offset) are written from the registry here too.

use fleet_proto::v1::{HostMetrics, JobStatus, Report, ServiceStatus};

use crate::metrics::Exposition;
use crate::registry::Registry;

/// Where a family's samples go: `(labels beside host, value)`.
pub type Sink<'a> = dyn FnMut(&[(&str, &str)], f64) + 'a;
/// How a family reads its samples out of a report.
pub type Each = fn(&Report, &mut Sink<'_>);

/// One family of samples taken from a report.
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Its HELP text.
    pub help: &'static str,
    /// Whether `/metrics` writes it for offline hosts too (from their last report); the host
    /// and service families are written only while the host is online, as the last values of
    /// a silent host would keep alerts such as "CPU above 80%" firing for a machine nobody sees.
    pub while_offline: bool,
    /// Calls `f(labels beside host, value)` for every sample of this family in a report.
    pub each: Each,
}

/// The most labels a report sample has beside `host`.
pub const MAX_EXTRA_LABELS: usize = 2;

const fn gauge(name: &'static str, help: &'static str, each: Each) -> Family {
    Family { name, kind: "gauge", help, while_offline: false, each }
}

const fn counter(name: &'static str, help: &'static str, each: Each) -> Family {
    Family { name, kind: "counter", help, while_offline: false, each }
}

/// Calls `f` with the host metrics of a report that has them.
fn host(r: &Report, f: &mut Sink<'_>, get: fn(&HostMetrics) -> f64) {
    if let Some(m) = &r.host {
        f(&[], get(m));
    }
}

/// Calls `f` once per service of a report.
fn service(r: &Report, f: &mut Sink<'_>, get: fn(&ServiceStatus) -> f64) {
    for s in &r.services {
        f(&[("service", &s.name)], get(s));
    }
}

/// Calls `f` once per job of a report. Job series carry `job_name`, not `job`: Prometheus
/// gives `job` to every scraped series (the scrape job), which would rename fleet's.
fn job(r: &Report, f: &mut Sink<'_>, get: fn(&JobStatus) -> Option<f64>) {
    for j in &r.jobs {
        if let Some(v) = get(j) {
            f(&[("job_name", &j.name)], v);
        }
    }
}

/// Every family a report gives, in the order `/metrics` writes them.
pub const REPORT_FAMILIES: [Family; 27] = [
    Family {
        name: "fleet_agent_reports_dropped_total",
        kind: "counter",
        help: "Reports the agent dropped from its buffer because it reached its size or age bound.",
        while_offline: true,
        each: |r, f| f(&[], r.reports_dropped_total as f64),
    },
    gauge(
        "fleet_host_cpu_usage_ratio",
        "CPU busy time over wall time in the last report interval, 0 to 1, over all cores.",
        |r, f| host(r, f, |m| m.cpu_usage_ratio),
    ),
    gauge("fleet_host_memory_total_bytes", "Physical memory.", |r, f| host(r, f, |m| m.memory_total_bytes as f64)),
    gauge("fleet_host_memory_available_bytes", "Memory available for new work without swapping.", |r, f| {
        host(r, f, |m| m.memory_available_bytes as f64)
    }),
    gauge("fleet_host_swap_total_bytes", "Swap space.", |r, f| host(r, f, |m| m.swap_total_bytes as f64)),
    gauge("fleet_host_swap_used_bytes", "Swap space in use.", |r, f| host(r, f, |m| m.swap_used_bytes as f64)),
    gauge("fleet_host_load1", "Load average over 1 minute.", |r, f| host(r, f, |m| m.load1)),
    gauge("fleet_host_load5", "Load average over 5 minutes.", |r, f| host(r, f, |m| m.load5)),
    gauge("fleet_host_load15", "Load average over 15 minutes.", |r, f| host(r, f, |m| m.load15)),
    gauge("fleet_host_uptime_seconds", "Seconds since the machine booted.", |r, f| {
        host(r, f, |m| m.uptime_seconds as f64)
    }),
    gauge("fleet_host_filesystem_size_bytes", "Size of a mounted filesystem.", |r, f| {
        for fs in r.host.iter().flat_map(|m| &m.filesystems) {
            f(&[("mountpoint", &fs.mountpoint)], fs.size_bytes as f64);
        }
    }),
    gauge(
        "fleet_host_filesystem_avail_bytes",
        "Bytes of a mounted filesystem available to unprivileged users.",
        |r, f| {
            for fs in r.host.iter().flat_map(|m| &m.filesystems) {
                f(&[("mountpoint", &fs.mountpoint)], fs.avail_bytes as f64);
            }
        },
    ),
    counter(
        "fleet_host_network_receive_bytes_total",
        "Bytes received by a network interface since the machine booted.",
        |r, f| {
            for n in r.host.iter().flat_map(|m| &m.networks) {
                f(&[("device", &n.device)], n.receive_bytes_total as f64);
            }
        },
    ),
    counter(
        "fleet_host_network_transmit_bytes_total",
        "Bytes transmitted by a network interface since the machine booted.",
        |r, f| {
            for n in r.host.iter().flat_map(|m| &m.networks) {
                f(&[("device", &n.device)], n.transmit_bytes_total as f64);
            }
        },
    ),
    gauge("fleet_service_up", "1 while the service runs (and is healthy, where it has a health check).", |r, f| {
        service(r, f, |s| if s.state == "running" && s.healthy { 1.0 } else { 0.0 })
    }),
    gauge("fleet_service_healthy", "1 when the service's last health check passed.", |r, f| {
        service(r, f, |s| if s.healthy { 1.0 } else { 0.0 })
    }),
    counter(
        "fleet_service_restarts_total",
        "Restarts of the service since the agent started supervising it.",
        |r, f| service(r, f, |s| s.restarts as f64),
    ),
    gauge("fleet_service_memory_rss_bytes", "Resident memory of the service's process.", |r, f| {
        service(r, f, |s| s.memory_rss_bytes as f64)
    }),
    counter("fleet_service_cpu_seconds_total", "CPU time used by the service's current process.", |r, f| {
        service(r, f, |s| s.cpu_seconds)
    }),
    gauge("fleet_service_info", "Always 1; the version label is the service's committed release.", |r, f| {
        for s in &r.services {
            f(&[("service", &s.name), ("version", &s.version)], 1.0);
        }
    }),
    gauge(
        "fleet_job_last_run_timestamp_seconds",
        "When the job's newest finished run ended (its final attempt); absent before any.",
        |r, f| job(r, f, |j| j.last_run.as_ref().map(|l| l.ended_ms as f64 / 1000.0)),
    ),
    gauge(
        "fleet_job_last_success_timestamp_seconds",
        "When a run of the job last succeeded; 0 before any success.",
        |r, f| job(r, f, |j| Some(j.last_success_ms as f64 / 1000.0)),
    ),
    gauge(
        "fleet_job_last_duration_seconds",
        "How long the final attempt of the job's newest finished run took.",
        |r, f| {
            job(r, f, |j| j.last_run.as_ref().map(|l| l.ended_ms.saturating_sub(l.started_ms).max(0) as f64 / 1000.0))
        },
    ),
    counter(
        "fleet_job_runs_total",
        "Attempts of the job by result (succeeded, failed, timed_out, killed, skipped) since it was first scheduled on the host.",
        |r, f| {
            for j in &r.jobs {
                for (result, n) in &j.runs_total {
                    f(&[("job_name", &j.name), ("result", result)], *n as f64);
                }
            }
        },
    ),
    gauge("fleet_job_running", "Runs of the job in progress.", |r, f| job(r, f, |j| Some(j.running as f64))),
    gauge(
        "fleet_job_next_run_timestamp_seconds",
        "When the job's schedule next has it due; absent when it never does.",
        |r, f| job(r, f, |j| (j.next_run_ms > 0).then(|| j.next_run_ms as f64 / 1000.0)),
    ),
    gauge(
        "fleet_job_period_seconds",
        "The longest time between two due times of the job (what FleetJobNotSucceeding measures against).",
        |r, f| job(r, f, |j| Some(j.period_ms as f64 / 1000.0)),
    ),
];

/// Calls `f(name, labels, value)` for every sample of `r`, a report of `host`: the labels
/// start with `host`.
pub fn report_samples(host: &str, r: &Report, mut f: impl FnMut(&str, &mut [(&str, &str)], f64)) {
    for family in &REPORT_FAMILIES {
        (family.each)(r, &mut |extra, v| {
            let mut labels = [("host", host); MAX_EXTRA_LABELS + 1];
            labels[1..=extra.len()].copy_from_slice(extra);
            f(family.name, &mut labels[..=extra.len()], v);
        });
    }
}

/// Writes the agent, host and service families of every host, from the registry (one lock per
/// host per scrape).
pub fn render_hosts(e: &mut Exposition, registry: &Registry) {
    let hosts = registry.all();
    // Snapshot each host once: one lock per host per scrape.
    let snaps: Vec<_> = hosts
        .iter()
        .map(|h| {
            h.with(|s| {
                (h.name.clone(), s.session.is_some(), s.record.last_report_ms, s.latest.clone(), s.clock_offset_ms)
            })
        })
        .collect();

    e.family("fleet_agent_up", "gauge", "1 while the agent's session is up, 0 when it is offline.");
    for (name, online, _, _, _) in &snaps {
        e.sample("fleet_agent_up", &[("host", name)], if *online { 1.0 } else { 0.0 });
    }
    e.family(
        "fleet_agent_last_report_timestamp_seconds",
        "gauge",
        "When the agent took its newest stored report, in seconds since the Unix epoch.",
    );
    for (name, _, last, _, _) in &snaps {
        if *last > 0 {
            e.sample("fleet_agent_last_report_timestamp_seconds", &[("host", name)], *last as f64 / 1000.0);
        }
    }
    e.family(
        "fleet_agent_clock_offset_seconds",
        "gauge",
        "The agent's clock minus the coordinator's, as estimated from its session; beyond 5s its samples are stored at corrected times.",
    );
    for (name, online, _, _, offset) in &snaps {
        if let (true, Some(offset)) = (*online, offset) {
            e.sample("fleet_agent_clock_offset_seconds", &[("host", name)], *offset as f64 / 1000.0);
        }
    }
    for family in &REPORT_FAMILIES {
        e.family(family.name, family.kind, family.help);
        for (name, online, _, latest, _) in &snaps {
            let Some(report) = latest.as_ref().filter(|_| *online || family.while_offline) else { continue };
            (family.each)(report, &mut |extra, v| {
                let mut labels = [("host", name.as_str()); MAX_EXTRA_LABELS + 1];
                labels[1..=extra.len()].copy_from_slice(extra);
                e.sample(family.name, &labels[..=extra.len()], v);
            });
        }
    }
}

/// Writes what the coordinator is: its build, start time, hosts by status and open sessions.
pub fn render_coordinator(e: &mut Exposition, registry: &Registry, sessions_open: usize, started_at_ms: i64) {
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
}

//! The series fleet makes of its hosts: the catalog of host and service families (DESIGN §9),
//! used both by the history (crate::tsdb, which stores them from every report) and by
//! `/metrics`, which writes them from the registry at scrape time without keeping an object per
//! series.

use crate::metrics::Exposition;
use crate::registry::Registry;

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

/// Writes the agent, host and service families of every host, from the registry (one lock per
/// host per scrape).
pub fn render_hosts(e: &mut Exposition, registry: &Registry) {
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
    render_services(e, &online);
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

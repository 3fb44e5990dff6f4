//! What `/metrics` costs at N hosts, and whether prometheus-client's Prometheus text encoder
//! (0.26, `encoding::prometheus_text`) would be as fast as fleet's own writer for the
//! coordinator's self-metrics. The per-host families stay a scrape-time walk of the registry
//! in both cases (no object is kept per series), so they are measured once, with fleet's
//! writer; the self-metrics (the same 14 families: 12 counters and two histograms) are written
//! both ways, from the same values.
//!
//!   cargo bench -p fleet-loadgen --bench metrics_text -- [HOSTS] [ROUNDS]
//!
//! Defaults: 10000 hosts, 20000 rounds of the self-metrics. Prints Markdown rows.

use std::sync::Arc;
use std::time::Instant;

use fleet_coordinator::metrics::{Exposition, FmtMetrics, LATENCY_BUCKETS, Metrics};
use fleet_coordinator::registry::Registry;
use fleet_loadgen::SimHost;
use fleet_proto::v1::Hello;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;

/// The self-metrics as prometheus-client types, registered under the same names.
struct ClientMetrics {
    registry: prometheus_client::registry::Registry,
    counters: Vec<Counter>,
    rejected: Family<Vec<(String, String)>, Counter>,
    histograms: [Histogram; 2],
}

fn client_metrics() -> ClientMetrics {
    let mut registry = prometheus_client::registry::Registry::default();
    let names = [
        ("fleet_coordinator_sessions_opened", "Agent sessions attached since start."),
        ("fleet_coordinator_reports_received", "Reports received from agents, including duplicates."),
        ("fleet_coordinator_reports_stored", "Reports written to the store."),
        ("fleet_coordinator_reports_duplicate", "Reports received again after they were stored; not written twice."),
        ("fleet_coordinator_store_errors", "Group commits to the store that failed."),
        ("fleet_coordinator_tls_handshake_failures", "Incoming connections whose TLS handshake failed."),
        ("fleet_coordinator_connections_refused", "Connections refused because max_connections was reached."),
        (
            "fleet_coordinator_http_connections_refused",
            "HTTP connections refused because [http] max_connections was reached.",
        ),
        (
            "fleet_coordinator_identity_conflicts",
            "Agent sessions refused because another machine was attached with the same identity.",
        ),
        ("fleet_coordinator_control_denied", "Operator API calls denied for lack of an operator identity."),
    ];
    let counters: Vec<Counter> = names
        .iter()
        .map(|(name, help)| {
            let c = Counter::default();
            registry.register(*name, *help, c.clone());
            c
        })
        .collect();
    let rejected = Family::<Vec<(String, String)>, Counter>::default();
    registry.register(
        "fleet_coordinator_sessions_rejected",
        "Agent sessions refused since start, by reason.",
        rejected.clone(),
    );
    let histograms = [Histogram::new(LATENCY_BUCKETS), Histogram::new(LATENCY_BUCKETS)];
    registry.register(
        "fleet_coordinator_store_write_duration_seconds",
        "Time to write and flush one group commit.",
        histograms[0].clone(),
    );
    registry.register(
        "fleet_coordinator_control_request_duration_seconds",
        "Time to answer one operator API call.",
        histograms[1].clone(),
    );
    ClientMetrics { registry, counters, rejected, histograms }
}

/// Microseconds per call of `f`, over `rounds` calls, and the length of what it returned.
fn time(rounds: u32, mut f: impl FnMut() -> String) -> (f64, usize) {
    let mut len = f().len();
    let started = Instant::now();
    for _ in 0..rounds {
        len = std::hint::black_box(f()).len();
    }
    (started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds), len)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hosts = args.first().copied().unwrap_or(10_000);
    let rounds = args.get(1).copied().unwrap_or(20_000) as u32;

    // The same values on both sides.
    let ours = Metrics::default();
    let theirs = client_metrics();
    for i in 0..1000u64 {
        ours.reports_received.inc();
        ours.reports_stored.inc();
        theirs.counters[1].inc();
        theirs.counters[2].inc();
        let seconds = (i % 50) as f64 / 1000.0;
        ours.store_write_seconds.observe(seconds);
        ours.control_seconds.observe(seconds * 3.0);
        theirs.histograms[0].observe(seconds);
        theirs.histograms[1].observe(seconds * 3.0);
    }
    for reason in ["identity", "protocol"] {
        theirs.rejected.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(0);
    }
    let (fleet_us, fleet_len) = time(rounds, || {
        let mut e = Exposition::with_capacity(8 << 10);
        ours.fmt_metrics(&mut e);
        e.into_string()
    });
    let (client_us, client_len) = time(rounds, || {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &theirs.registry).expect("encodes");
        out
    });

    // The per-host families of `hosts` online hosts, as a scrape writes them.
    let registry = Registry::default();
    let shutdown = CancellationToken::new();
    let now = fleet_common::now_ms();
    let mut sessions = Vec::new();
    for i in 0..hosts {
        let hello = Hello { name: format!("host-{i}"), boot_id: 1, report_interval_ms: 5000, ..Default::default() };
        let (host, handle, rx) = registry.attach(&hello, "127.0.0.1:1", now, &shutdown).expect("attaches");
        let report = SimHost::new(i, 42).next_report(now, 5);
        host.with(|s| s.latest = Some(Arc::new(report)));
        sessions.push((handle, rx));
    }
    let scrapes = 5;
    let (hosts_us, hosts_len) = time(scrapes, || {
        let mut e = Exposition::with_capacity(64 << 20);
        fleet_coordinator::series::render_hosts(&mut e, &registry);
        e.into_string()
    });

    println!("| self-metrics writer | µs a render | bytes |");
    println!("|---|---|---|");
    println!("| fleet's `Exposition` | {fleet_us:.1} | {fleet_len} |");
    println!("| prometheus-client 0.26 `prometheus_text` | {client_us:.1} | {client_len} |");
    println!();
    println!("| hosts | per-host families, ms a scrape | bytes |");
    println!("|---|---|---|");
    println!("| {hosts} | {:.0} | {hosts_len} |", hosts_us / 1000.0);
}

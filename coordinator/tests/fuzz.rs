//! Fuzzing of what reaches the coordinator from outside (invariant 15): agent messages as
//! bytes off the wire, decoded and fed to the history and the query engine as a session
//! would, and config files. Nothing may panic. Each target runs for `FLEET_FUZZ_SECONDS`
//! (default 3) from seed `FLEET_FUZZ_SEED` (default: from the clock); a failure prints both.

use std::time::{Duration, Instant};

use fleet_coordinator::config::CoordinatorConfig;
use fleet_coordinator::query;
use fleet_coordinator::tsdb::Tsdb;
use fleet_proto::v1::agent_message::Msg;
use fleet_proto::v1::{
    AgentMessage, Filesystem, HostMetrics, JobRun, JobStatus, NetworkInterface, Report, ReportId, ServiceStatus,
};
use fleet_rules::promql::Limits;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("FLEET_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0))
}

fn seed() -> u64 {
    std::env::var("FLEET_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fleet_common::now_ms() as u64)
}

fn fuzz<T: std::fmt::Debug>(name: &str, generate: impl Fn(&mut StdRng) -> T, target: impl Fn(&T)) {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let until = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < until {
        let input = generate(&mut rng);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name}: FLEET_FUZZ_SEED={seed}, run {runs}, input:\n{input:?}");
        }
        runs += 1;
    }
    eprintln!("{name}: {runs} inputs from seed {seed}");
}

fn float(rng: &mut StdRng) -> f64 {
    match rng.random_range(0..8) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => f64::from_bits(0x7ff0_0000_0000_0002), // the staleness marker
        4 => -0.0,
        5 => rng.random::<f64>() * 1e300,
        _ => rng.random::<f64>() * 100.0,
    }
}

fn text(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..12);
    (0..n).map(|_| ['a', '/', '"', '\\', '{', '=', '\u{0}', '\u{1b}', 'é', '\n'][rng.random_range(0..10)]).collect()
}

/// A report as a hostile or broken agent could send it: any times, values and names.
fn report(rng: &mut StdRng) -> Report {
    let time = [0, -1, i64::MIN, i64::MAX, fleet_common::now_ms(), rng.random::<i64>()][rng.random_range(0..6)];
    Report {
        id: Some(ReportId { boot_id: rng.random(), seq: rng.random() }),
        timestamp_ms: time,
        sent_at_ms: [0, time, i64::MAX, i64::MIN][rng.random_range(0..4)],
        host: rng.random_ratio(4, 5).then(|| HostMetrics {
            cpu_usage_ratio: float(rng),
            load1: float(rng),
            memory_total_bytes: rng.random(),
            filesystems: (0..rng.random_range(0..4))
                .map(|_| Filesystem {
                    mountpoint: text(rng),
                    size_bytes: rng.random(),
                    avail_bytes: rng.random(),
                    ..Default::default()
                })
                .collect(),
            networks: (0..rng.random_range(0..4))
                .map(|_| NetworkInterface {
                    device: text(rng),
                    receive_bytes_total: rng.random(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        services: (0..rng.random_range(0..4))
            .map(|_| ServiceStatus {
                name: text(rng),
                state: text(rng),
                version: text(rng),
                cpu_seconds: float(rng),
                cpu_usage_ratio: float(rng),
                ..Default::default()
            })
            .collect(),
        reports_dropped_total: rng.random(),
        jobs: (0..rng.random_range(0..3))
            .map(|_| JobStatus {
                name: text(rng),
                last_run: rng.random_ratio(1, 2).then(|| JobRun {
                    started_ms: [0, i64::MIN, i64::MAX, rng.random()][rng.random_range(0..4)],
                    ended_ms: [0, i64::MIN, i64::MAX, rng.random()][rng.random_range(0..4)],
                    result: text(rng),
                    ..Default::default()
                }),
                last_success_ms: rng.random(),
                next_run_ms: rng.random(),
                period_ms: rng.random(),
                runs_total: (0..rng.random_range(0..3)).map(|_| (text(rng), rng.random())).collect(),
                ..Default::default()
            })
            .collect(),
    }
}

#[test]
fn agent_messages_never_panic_the_history_or_the_queries() {
    let tsdb = Tsdb::new(3_600_000, 10_000);
    fuzz(
        "agent messages",
        |rng| {
            let r = report(rng);
            let mut bytes = AgentMessage { msg: Some(Msg::Report(r)) }.encode_to_vec();
            // Flip, cut or extend the bytes now and then, as a broken peer would.
            if rng.random_ratio(1, 3) && !bytes.is_empty() {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= rng.random::<u8>();
            }
            if rng.random_ratio(1, 5) {
                bytes.truncate(rng.random_range(0..=bytes.len()));
            }
            bytes
        },
        |bytes| {
            let Ok(AgentMessage { msg: Some(Msg::Report(r)) }) = AgentMessage::decode(bytes.as_slice()) else { return };
            tsdb.append_report("pc2", &r);
            let limits = Limits::new(Duration::from_secs(1), None, 100_000);
            for q in [
                "fleet_host_load1",
                "rate(fleet_host_network_receive_bytes_total[5m])",
                "sum by (mountpoint) (fleet_host_filesystem_size_bytes)",
            ] {
                let _ = query::instant(&tsdb, q, fleet_common::now_ms(), &limits);
            }
        },
    );
}

/// A coordinator config of real keys with values of every shape.
fn config(rng: &mut StdRng) -> String {
    const VALUES: &[&str] = &[
        "\"15s\"",
        "\"0s\"",
        "\"99999999999y\"",
        "0",
        "-1",
        "18446744073709551616",
        "\"\"",
        "[]",
        "[\"\"]",
        "{}",
        "true",
        "\"127.0.0.1:0\"",
        "\"[::1]:99999\"",
        "\"/nonexistent\"",
        "\"1GiB\"",
        "\"1e30B\"",
        "[\"http://\"]",
        "[\"/etc/*/*\"]",
        "\"\\u0000\"",
        "{ \"bad-name\" = \"x\" }",
    ];
    const KEYS: &[(&str, &[&str])] = &[
        ("", &["data_dir"]),
        ("grpc", &["listen"]),
        ("http", &["listen", "max_connections"]),
        ("agents", &["offline_after", "max_connections"]),
        ("history", &["retention", "max_series"]),
        ("artifacts", &["max_bytes"]),
        ("alerting", &["rule_files", "evaluation_interval", "alertmanagers", "webhooks", "external_labels"]),
        ("query", &["timeout", "max_samples"]),
        ("tls", &["ca", "cert", "key"]),
        ("nonsense", &["x"]),
    ];
    let mut s = String::new();
    for (table, keys) in KEYS {
        if !table.is_empty() {
            if rng.random_ratio(1, 4) {
                continue;
            }
            s.push_str(&format!("[{table}]\n"));
        }
        for k in *keys {
            if rng.random_ratio(2, 3) {
                s.push_str(&format!("{k} = {}\n", VALUES[rng.random_range(0..VALUES.len())]));
            }
        }
    }
    if rng.random_ratio(1, 10) {
        s.truncate(rng.random_range(0..=s.len()));
    }
    s
}

#[test]
fn config_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.toml");
    fuzz("coordinator config", config, |text| {
        std::fs::write(&path, text).unwrap();
        let _ = CoordinatorConfig::load(&path).map(|c| c.alerting.warnings());
    });
}

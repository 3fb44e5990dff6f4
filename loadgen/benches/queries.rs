//! What rules and queries cost over a full history: N simulated hosts (as in the history
//! benchmark: reports shaped like a real agent's, every INTERVAL, on their own clocks) for
//! MINUTES, appended to the coordinator's series store as the writer does; then, each timed
//! RUNS times on one core:
//!
//! - one evaluation of every group of the default rules (deploy/rules/fleet.rules.yml), as
//!   the coordinator runs them (recording rules' results written back);
//! - `/api/v1/query_range` over the last hour at a 15 s step, for one host's CPU and for
//!   `avg by (host) (rate(fleet_host_network_receive_bytes_total[5m]))` over every host.
//!
//! Prints Markdown rows: the fastest, the median and the slowest run of each.
//!
//!   cargo bench -p fleet-loadgen --bench queries -- [HOSTS] [MINUTES] [INTERVAL_SECONDS] [RUNS]
//!
//! Defaults: 10000 hosts, 60 minutes, 5 seconds, 5 runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_coordinator::tsdb::{Tsdb, Writable};
use fleet_loadgen::SimHost;
use fleet_rules::promql::Limits;

/// The fastest, median and slowest of `runs` timings of `f`.
fn timed(runs: u64, mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    let mut all: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let at = Instant::now();
            f();
            at.elapsed()
        })
        .collect();
    all.sort();
    (all[0], all[all.len() / 2], all[all.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; the numbers are ours.
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hosts = args.first().copied().unwrap_or(10_000);
    let minutes = args.get(1).copied().unwrap_or(60);
    let interval_s = args.get(2).copied().unwrap_or(5);
    let runs = args.get(3).copied().unwrap_or(5);

    let dir = std::env::temp_dir().join(format!("fleet-queries-bench-{}", std::process::id()));
    let tsdb =
        Arc::new(Tsdb::on_disk(dir.clone(), (minutes as i64 + 10) * 60_000, usize::MAX).expect("a history directory"));
    let mut sims: Vec<SimHost> = (0..hosts).map(|i| SimHost::new(i, 42)).collect();
    let names: Vec<String> = (0..hosts).map(|i| format!("host-{i}")).collect();
    // The history ends now, so that what the queries read is what a coordinator would hold.
    let end_ms = fleet_common::now_ms() / 1000 * 1000;
    let steps = minutes * 60 / interval_s;
    let start_ms = end_ms - (steps * interval_s * 1000) as i64;
    let built = Instant::now();
    for step in 0..steps {
        for (i, (sim, name)) in sims.iter_mut().zip(&names).enumerate() {
            let t = start_ms + (step * interval_s * 1000) as i64 + (i as i64 * 7919) % (interval_s as i64 * 1000);
            tsdb.append_report(name, &sim.next_report(t, interval_s));
        }
        if step % (steps / 10).max(1) == 0 {
            eprintln!("{step}/{steps} steps");
        }
    }
    let f = tsdb.footprint();
    eprintln!("history: {} series, {} samples, built in {:.0} s", f.series, f.samples, built.elapsed().as_secs_f64());

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/fleet.rules.yml");
    let mut groups = fleet_rules::rules::load_file(&rules).expect("the default rules");
    let external = BTreeMap::new();
    let mut storage = Writable(tsdb.clone());
    let rules_took = timed(runs, || {
        for g in &mut groups {
            g.eval(&mut storage, end_ms, &external);
        }
    });
    let range = |expr: &str| {
        timed(runs, || {
            let limits = Limits::default();
            fleet_coordinator::query::range(&*tsdb, expr, end_ms - 3_600_000, end_ms, 15_000, &limits)
                .unwrap_or_else(|e| panic!("{expr}: {e}"));
        })
    };
    let one_host = range("fleet_host_cpu_usage_ratio{host=\"host-1\"}");
    let every_host = range("avg by (host) (rate(fleet_host_network_receive_bytes_total[5m]))");
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{hosts} hosts, {minutes} minutes at {interval_s}s: {} series, {} samples; {runs} runs each",
        f.series, f.samples
    );
    println!();
    println!("| what | fastest | median | slowest |");
    println!("|---|---|---|---|");
    let rule_count: usize = groups.iter().map(|g| g.rules.len()).sum();
    for (what, (lo, mid, hi)) in [
        (format!("default rules, one evaluation ({} groups, {rule_count} rules)", groups.len()), rules_took),
        ("query_range 1h/15s, one host's CPU".to_string(), one_host),
        (format!("query_range 1h/15s, avg by (host) (rate(...[5m])) over {hosts} hosts"), every_host),
    ] {
        println!("| {what} | {} | {} | {} |", ms(lo), ms(mid), ms(hi));
    }
}

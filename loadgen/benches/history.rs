//! What the coordinator's history costs in memory: N simulated hosts (reports shaped and
//! varying like a real agent's with 5 services) reporting every INTERVAL for the retention
//! window and five minutes more, appended to the coordinator's series store in time order the way the
//! writer does, trimmed every 30 s the way the retention loop does. Prints one Markdown row: series, samples, compressed bytes per sample, the
//! process's resident memory growth, and the append rate on one core.
//!
//!   cargo bench -p fleet-loadgen --bench history -- [HOSTS] [RETENTION_MINUTES] [INTERVAL_SECONDS]
//!
//! Defaults: 10000 hosts, 60 minutes, 5 seconds.

use std::time::Instant;

use fleet_coordinator::tsdb::Tsdb;
use fleet_loadgen::SimHost;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; the numbers are ours.
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hosts = args.first().copied().unwrap_or(10_000);
    let minutes = args.get(1).copied().unwrap_or(60);
    let interval_s = args.get(2).copied().unwrap_or(5);
    // Past the retention by a few minutes and half a chunk, trimming every 30 s as the
    // coordinator does: the steady state, with half-full open chunks and expired ones gone.
    let steps = (minutes + 5) * 60 / interval_s + u64::from(fleet_coordinator::tsdb::CHUNK_SAMPLES / 2);
    let trim_every = (30 / interval_s).max(1);

    let mut sims: Vec<SimHost> = (0..hosts).map(|i| SimHost::new(i, 42)).collect();
    let names: Vec<String> = (0..hosts).map(|i| format!("host-{i}")).collect();
    let dir = std::env::temp_dir().join(format!("fleet-history-bench-{}", std::process::id()));
    let db = Tsdb::on_disk(dir.clone(), minutes as i64 * 60_000, usize::MAX).expect("a history directory");
    let base = rss_kib();
    let start_ms = 1_700_000_000_000i64;
    let mut append_secs = 0.0;
    for step in 0..steps {
        for (i, (sim, name)) in sims.iter_mut().zip(&names).enumerate() {
            // Agents report on their own clocks: a fixed offset per host and a few ms of jitter.
            let t = start_ms
                + (step * interval_s * 1000) as i64
                + (i as i64 * 7919) % 5000
                + (step as i64 * 31 + i as i64) % 7;
            let report = sim.next_report(t, interval_s);
            let a = Instant::now();
            db.append_report(name, &report);
            append_secs += a.elapsed().as_secs_f64();
        }
        if step % trim_every == 0 {
            let now = start_ms + (step * interval_s * 1000) as i64;
            let a = Instant::now();
            db.trim(now);
            append_secs += a.elapsed().as_secs_f64();
        }
        if step % (steps / 10).max(1) == 0 {
            eprintln!("{step}/{steps} steps, {} MiB resident", rss_kib() / 1024);
        }
    }
    let grown = rss_kib().saturating_sub(base);
    let f = db.footprint();
    let reports = hosts * steps;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| hosts | interval | retention | series | samples | in memory | on disk | disk bytes/sample | resident growth | resident bytes/sample | appends/s (one core) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {hosts} | {interval_s}s | {minutes}m | {} | {} | {} MiB | {} MiB | {:.2} | {} MiB | {:.2} | {:.0} reports |",
        f.series,
        f.samples,
        f.sample_bytes >> 20,
        f.disk_bytes >> 20,
        f.disk_bytes as f64 / f.samples as f64,
        grown / 1024,
        grown as f64 * 1024.0 / f.samples as f64,
        reports as f64 / append_secs,
    );
}

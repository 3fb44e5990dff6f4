//! fleet's history beside Prometheus' TSDB on the same samples (bench/history/anchor.sh runs
//! it, then Prometheus' `promtool tsdb create-blocks-from openmetrics` on what it writes): N
//! simulated hosts reporting every INTERVAL for MINUTES, appended to the coordinator's series
//! store as the writer does, and the same samples written as OpenMetrics with their
//! timestamps, one family after another, to OUT/samples.om.
//!
//! Prints one line of `key=value` pairs: series, samples, the history's bytes (sealed chunks
//! on disk plus the open ones in memory) and bytes a sample.
//!
//!   cargo bench -p fleet-loadgen --bench anchor -- HOSTS MINUTES INTERVAL_SECONDS OUT

use std::collections::BTreeMap;
use std::io::Write;

use fleet_coordinator::tsdb::Tsdb;
use fleet_loadgen::SimHost;

fn main() {
    // `cargo bench` passes --bench; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (hosts, minutes, interval_s) = (num(0, 1000), num(1, 60), num(2, 5));
    let out = std::path::PathBuf::from(args.get(3).cloned().unwrap_or_else(|| "anchor-out".into()));
    std::fs::create_dir_all(&out).expect("the output directory");

    let history = out.join("fleet-history");
    let _ = std::fs::remove_dir_all(&history);
    let db = Tsdb::on_disk(history.clone(), (minutes as i64 + 10) * 60_000, usize::MAX).expect("a history directory");
    let mut sims: Vec<SimHost> = (0..hosts).map(|i| SimHost::new(i, 42)).collect();
    let names: Vec<String> = (0..hosts).map(|i| format!("host-{i}")).collect();
    let end_ms = fleet_common::now_ms() / 1000 * 1000;
    let steps = minutes * 60 / interval_s;
    let start_ms = end_ms - (steps * interval_s * 1000) as i64;
    // Family → its samples as OpenMetrics lines (OpenMetrics wants each family's together).
    let mut families: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for step in 0..steps {
        for (i, (sim, name)) in sims.iter_mut().zip(&names).enumerate() {
            let t = start_ms + (step * interval_s * 1000) as i64 + (i as i64 * 7919) % (interval_s as i64 * 1000);
            let report = sim.next_report(t, interval_s);
            db.append_report(name, &report);
            fleet_coordinator::tsdb::report_samples(name, &report, |family, labels, v| {
                let lines = families.entry(family.to_string()).or_default();
                let _ = write!(lines, "{family}{{");
                labels.sort_unstable();
                for (k, (lk, lv)) in labels.iter().enumerate() {
                    let sep = if k == 0 { "" } else { "," };
                    let _ = write!(lines, "{sep}{lk}=\"{}\"", lv.replace('\\', "\\\\").replace('"', "\\\""));
                }
                let _ = writeln!(lines, "}} {v} {}.{:03}", t / 1000, t % 1000);
            });
        }
    }
    let mut om = std::io::BufWriter::new(std::fs::File::create(out.join("samples.om")).expect("samples.om"));
    for (family, lines) in &families {
        writeln!(om, "# TYPE {family} gauge").expect("write samples.om");
        om.write_all(lines).expect("write samples.om");
    }
    writeln!(om, "# EOF").expect("write samples.om");
    om.flush().expect("write samples.om");
    let f = db.footprint();
    let bytes = f.disk_bytes + f.sample_bytes as u64;
    println!(
        "hosts={hosts} minutes={minutes} interval_s={interval_s} series={} samples={} fleet_bytes={bytes} fleet_bytes_per_sample={:.3}",
        f.series,
        f.samples,
        bytes as f64 / f.samples as f64
    );
}

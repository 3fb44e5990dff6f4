//! What a coordinator restart costs: a report log of N simulated hosts (reports shaped and
//! varying like a real agent's with 5 services) covering the retention window is written the
//! way the group-commit writer writes it, then opened by `Coordinator::open`, the start-up of
//! `fleet-coordinator run`: first the host records and de-duplication marks (agents can attach
//! once it returns), then the history's series, read back from the log in the background.
//!
//!   cargo bench -p fleet-loadgen --bench startup -- [HOSTS] [MINUTES] [INTERVAL_SECONDS]
//!
//! Defaults: 10000 hosts, 60 minutes, 5 seconds. Prints one Markdown row.

use std::time::{Duration, Instant};

use fleet_common::identity::Role;
use fleet_coordinator::Coordinator;
use fleet_coordinator::store::{Record, Store};
use fleet_loadgen::SimHost;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// A coordinator config for `dir` with a CA and a coordinator certificate made there.
fn config(dir: &std::path::Path, retention: Duration) -> fleet_coordinator::config::CoordinatorConfig {
    let (ca_pem, ca_key) = fleet_common::pki::new_root("fleet.local", 30).expect("a CA");
    let signer = fleet_common::pki::Signer::from_pem(&ca_pem, &ca_key).expect("the CA");
    let minted = signer.issue(Role::Coordinator, "coordinator", &["localhost".into()], 30).expect("a certificate");
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    std::fs::write(pki.join("ca.pem"), &ca_pem).expect("ca.pem");
    std::fs::write(pki.join("coordinator.pem"), &minted.cert_pem).expect("coordinator.pem");
    std::fs::write(pki.join("coordinator-key.pem"), &minted.key_pem).expect("coordinator-key.pem");
    let toml = format!(
        "data_dir = {data:?}\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n[history]\nretention = \"{}s\"\nmax_series = 100000000\n",
        retention.as_secs(),
        data = dir.join("data"),
        ca = pki.join("ca.pem"),
        cert = pki.join("coordinator.pem"),
        key = pki.join("coordinator-key.pem"),
    );
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, toml).expect("coordinator.toml");
    fleet_coordinator::config::CoordinatorConfig::load(&path).expect("the config")
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let hosts = args.first().copied().unwrap_or(10_000);
    let minutes = args.get(1).copied().unwrap_or(60);
    let interval_s = args.get(2).copied().unwrap_or(5);
    let retention = Duration::from_secs(minutes * 60);
    let steps = minutes * 60 / interval_s;

    let root = std::env::temp_dir().join(format!("fleet-startup-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = config(&root, retention);
    let dir = config.data_dir.clone();
    let now = fleet_common::now_ms();
    let start_ms = now - retention.as_millis() as i64;
    {
        let store = Store::open(&dir, retention).expect("a store");
        let mut sims: Vec<SimHost> = (0..hosts).map(|i| SimHost::new(i, 42)).collect();
        let names: Vec<String> = (0..hosts).map(|i| format!("host-{i}")).collect();
        let written = Instant::now();
        // One commit per step and 1,000 hosts, about what the writer takes at a time under load.
        for step in 0..steps {
            for (sims, names) in sims.chunks_mut(1000).zip(names.chunks(1000)) {
                let reports: Vec<(i64, u64, u64, Vec<u8>)> = sims
                    .iter_mut()
                    .enumerate()
                    .map(|(i, sim)| {
                        let t = start_ms + (step * interval_s * 1000) as i64 + (i as i64 * 7919) % 5000;
                        let r = sim.next_report(t, interval_s);
                        let id = r.id.unwrap_or_default();
                        (t, id.boot_id, id.seq, r.encode_to_vec())
                    })
                    .collect();
                let records: Vec<Record<'_>> = reports
                    .iter()
                    .zip(names)
                    .map(|((t, boot, seq, e), host)| Record {
                        host,
                        timestamp_ms: *t,
                        boot_id: *boot,
                        seq: *seq,
                        encoded: e,
                    })
                    .collect();
                store.append_reports(&records).expect("append");
            }
            if step % (steps / 10).max(1) == 0 {
                eprintln!("writing: {step}/{steps} steps, {:.0} s", written.elapsed().as_secs_f64());
            }
        }
    }
    let log_bytes: u64 = std::fs::read_dir(dir.join("reports"))
        .expect("the report log")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (hosts_loaded, replayed, serving, history) = runtime.block_on(async {
        let started = Instant::now();
        let shutdown = CancellationToken::new();
        let (c, writer_task) = Coordinator::open(config, shutdown.clone()).await.expect("the coordinator opens");
        let serving = started.elapsed().as_secs_f64();
        while !c.tsdb.loaded() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let history = started.elapsed().as_secs_f64() - serving;
        let out = (c.registry.len(), c.store.reports_held(), serving, history);
        shutdown.cancel();
        drop(c);
        let _ = writer_task.await;
        out
    });
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "| hosts | interval | retention | reports | report log | until agents can attach | history read back | reports/s into the history |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {interval_s}s | {minutes}m | {replayed} | {} MiB | {serving:.1} s | {history:.1} s more | {:.0} |",
        hosts_loaded,
        log_bytes >> 20,
        replayed as f64 / history
    );
}

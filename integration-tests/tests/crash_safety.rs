//! Store crash safety (invariant 1): kill -9 of agent and coordinator while reports are being
//! written never loses an acknowledged report and never leaves a store that fails to open,
//! repeated 20 times. "Acknowledged" is what the agent logged as acknowledged (before it
//! dropped the report from its buffer), not what the coordinator happens to list. A store that is unreadable anyway is moved aside by the agent (which
//! starts clean) and makes the coordinator refuse to start with a recovery hint.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, Proc, assert_contiguous, bin, eventually, serial};

const ROUNDS: u64 = 20;

fn ids(reports: &[fleet_proto::v1::StoredReport]) -> BTreeSet<(u64, u64)> {
    reports.iter().map(|r| r.id.unwrap()).map(|i| (i.boot_id, i.seq)).collect()
}

/// Starts main-pc logging every acknowledgement it receives.
fn start_agent_logging_acks(c: &mut Cluster) {
    let cfg = c.agent_config("main-pc", Duration::from_millis(100), "");
    let p = Proc::spawn_logging(
        "main-pc",
        &bin("fleet-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        &c.dir().join("logs/main-pc.log"),
        "info,fleet_agent::acks=debug",
    );
    c.agents.insert("main-pc".into(), p);
}

/// The highest sequence number the agent saw acknowledged, per boot id, from its log.
fn acknowledged(log: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut out = std::collections::BTreeMap::new();
    for l in log.lines().filter(|l| l.contains("acknowledged")) {
        let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok());
        if let (Some(boot), Some(seq)) = (field("boot_id="), field("seq=")) {
            let e = out.entry(boot).or_insert(0);
            *e = seq.max(*e);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_writing_never_loses_an_acknowledged_report() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(5), ..Default::default() }).await;
    start_agent_logging_acks(&mut c);
    let mut stored_before_kill = BTreeSet::new();
    for round in 0..ROUNDS {
        c.wait_online(&["main-pc"], Duration::from_secs(15)).await;
        // Let reports flow for a varying while, so the kills land at different points of the
        // write path (buffering, sending, group commit, acknowledging).
        tokio::time::sleep(Duration::from_millis(150 + (round * 97) % 500)).await;
        // Everything the coordinator lists is durable (it is listed only after its flush), so
        // everything acknowledged is a subset of it.
        let listed = ids(&c.reports("main-pc").await);
        assert!(listed.is_superset(&stored_before_kill), "round {round}: reports stored earlier are gone");
        stored_before_kill = listed;

        if round % 2 == 0 {
            c.agent("main-pc").kill9();
            c.coordinator.as_mut().unwrap().kill9();
        } else {
            c.coordinator.as_mut().unwrap().kill9();
            c.agent("main-pc").kill9();
        }
        let opts = c.opts.clone();
        c.start_coordinator(opts).await; // panics if the store does not open
        start_agent_logging_acks(&mut c);
    }
    c.wait_online(&["main-pc"], Duration::from_secs(15)).await;
    // Once the agent has replayed its buffer, every run's reports are contiguous from 1: a
    // report acknowledged and then lost would leave a gap, one stored twice a duplicate.
    let all = eventually(Duration::from_secs(15), "every stored report to be listed again", || async {
        let r = c.reports("main-pc").await;
        ids(&r).is_superset(&stored_before_kill).then_some(r)
    })
    .await;
    let per_boot = assert_contiguous(&all);
    assert!(per_boot.len() as u64 >= ROUNDS, "expected a boot id per agent start, got {per_boot:?}");
    // The last reports a boot saw acknowledged before its kill are what a crash risks: every
    // one of them is stored.
    let acked = acknowledged(&c.agents["main-pc"].log_text());
    assert!(acked.len() as u64 >= ROUNDS, "the agent logged acknowledgements of {} boots", acked.len());
    for (boot, seq) in &acked {
        let stored = per_boot.get(boot).copied().unwrap_or(0);
        assert!(stored >= *seq, "boot {boot:x}: seq {seq} was acknowledged but only 1..={stored} are stored");
    }
    assert!(!c.agent("main-pc").log_text().contains("UNREADABLE"), "a kill -9 left the agent store unreadable");
}

fn corrupt_store(store: &std::path::Path) {
    assert!(store.is_dir(), "{} should exist", store.display());
    for entry in std::fs::read_dir(store).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_agent_store_is_moved_aside_and_the_agent_starts_clean() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;
    c.agent("main-pc").terminate(Duration::from_secs(10));
    corrupt_store(&c.dir().join("main-pc/store"));

    c.start_agent("main-pc", Duration::from_millis(200));
    let started = fleet_common::now_ms();
    eventually(Duration::from_secs(10), "main-pc to report again", || async {
        let h = c.hosts().await?;
        (h.iter().find(|h| h.name == "main-pc")?.last_report_ms > started).then_some(())
    })
    .await;
    let log = c.agent("main-pc").log_text();
    assert!(log.contains("THE AGENT STORE IS UNREADABLE"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(c.dir().join("main-pc"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept for inspection");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_coordinator_store_stops_the_coordinator_with_a_recovery_hint() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(15));
    let store = c.dir().join("coordinator/store");
    corrupt_store(&store);

    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleet-coordinator"))
            .args(["run", "--config"])
            .arg(c.coordinator_config()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot open the store at {}", store.display())), "{err}");
    assert!(err.contains("move the store aside"), "{err}");
    assert!(store.join("db").exists(), "the coordinator must not touch the damaged store");
}

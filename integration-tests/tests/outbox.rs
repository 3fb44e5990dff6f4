//! The agent's buffer of undelivered reports is bounded: while the coordinator is away the
//! oldest reports are dropped first, every drop is counted, and the count reaches the
//! coordinator (`fleet_agent_reports_dropped_total`, `fleetctl host`).

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, parse_metrics, serial};

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_drops_the_oldest_reports_and_counts_them() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent_with("pc2", Duration::from_millis(100), "[outbox]\nmax_bytes = \"4KiB\"\n");
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;

    let before_outage = c.reports("pc2").await.iter().map(|r| r.id.unwrap().seq).max().unwrap_or(0);
    c.coordinator.as_mut().unwrap().kill9();
    let agent_log = c.agents["pc2"].log.clone();
    eventually(Duration::from_secs(20), "pc2 to drop reports from its full buffer", || {
        let text = std::fs::read_to_string(&agent_log).unwrap_or_default();
        async move { text.contains("dropped the oldest undelivered reports").then_some(()) }
    })
    .await;
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;

    // Every report of this run is either stored or counted as dropped; what is stored is the
    // newest part of the outage (the oldest went first).
    let (stored, dropped) =
        eventually(Duration::from_secs(15), "stored + dropped to account for every report", || async {
            let reports = c.reports("pc2").await;
            let max_seq = reports.iter().map(|r| r.id.unwrap().seq).max()?;
            let (_, text) = c.http_get("/metrics").await;
            let dropped = *parse_metrics(&text).get("fleet_agent_reports_dropped_total{host=\"pc2\"}")? as u64;
            (dropped > 0 && reports.len() as u64 + dropped == max_seq).then_some((reports.len(), dropped))
        })
        .await;
    assert!(stored > 0);
    // The oldest went first: what is missing is one run of reports right after those stored
    // before the outage, and everything newer is there (dropping the newest instead would
    // satisfy the count above, not this).
    let mut seqs: Vec<u64> = c.reports("pc2").await.iter().map(|r| r.id.unwrap().seq).collect();
    seqs.sort_unstable();
    let max = *seqs.last().unwrap();
    let missing: Vec<u64> = (1..=max).filter(|s| seqs.binary_search(s).is_err()).collect();
    assert_eq!(missing.len() as u64, dropped);
    let (first, last) = (missing[0], *missing.last().unwrap());
    assert_eq!(last - first + 1, dropped, "the dropped reports are not one run: {missing:?}");
    assert!(first > before_outage, "a report delivered before the outage is missing: {missing:?}");
    assert!(last < max, "the newest reports must be kept, not dropped");
    let out = c.fleetctl(&["host", "pc2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("dropped      {dropped} reports")), "{text}");
}

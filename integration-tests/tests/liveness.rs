//! Noticing silent hosts: a killed agent is offline within 2s (its socket closes); a stopped
//! agent whose socket stays open is offline within offline_after + 1s, and online again when it
//! continues; and a host that goes away stays listed, offline, with its last-seen time.

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, serial};
use rustix::process::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_offline_within_two_seconds() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(15), ..Default::default() }).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;

    let log_from = c.coordinator.as_ref().unwrap().log_text().len();
    let killed = fleet_common::now_ms();
    c.agent("pc2").kill9();
    eventually(Duration::from_secs(10), "pc2 offline after kill -9", || async {
        (c.online("pc2").await == Some(false)).then_some(())
    })
    .await;
    // Measured by the coordinator's own log: when it marked pc2 offline.
    let log = c.coordinator.as_ref().unwrap().log_text();
    let offline = fleet_integration_tests::logged_at(&log, log_from, "agent offline host=pc2").unwrap();
    assert!(offline - killed < 2000, "offline {} ms after the kill", offline - killed);

    // Still listed, offline, with a last-seen time and a reason; main-pc unaffected.
    let hosts = c.hosts().await.unwrap();
    let pc2 = hosts.iter().find(|h| h.name == "pc2").unwrap();
    assert!(!pc2.online && pc2.last_seen_ms > 0);
    assert!(
        pc2.last_disconnect_reason.contains("connection was lost") || pc2.last_disconnect_reason.contains("closed"),
        "{}",
        pc2.last_disconnect_reason
    );
    assert!(hosts.iter().find(|h| h.name == "main-pc").unwrap().online);
    let (_, text) = c.http_get("/metrics").await;
    let m = fleet_integration_tests::parse_metrics(&text);
    assert_eq!(m["fleet_agent_up{host=\"pc2\"}"], 0.0);
    assert_eq!(m["fleet_agent_up{host=\"main-pc\"}"], 1.0);
    assert!(
        !m.contains_key("fleet_host_cpu_usage_ratio{host=\"pc2\"}"),
        "an offline host's metrics must not be exported as current"
    );
    let out = c.fleetctl(&["host", "pc2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("offline since"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_agent_goes_offline_and_comes_back() {
    let _g = serial().await;
    let offline_after = Duration::from_secs(2);
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after, ..Default::default() }).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;

    let log_from = c.coordinator.as_ref().unwrap().log_text().len();
    let stopped = fleet_common::now_ms();
    c.agent("main-pc").signal(Signal::STOP);
    eventually(offline_after + Duration::from_secs(10), "main-pc offline after SIGSTOP", || async {
        (c.online("main-pc").await == Some(false)).then_some(())
    })
    .await;
    // By the coordinator's own log: not before offline_after of silence (the last report may
    // have left up to one report interval before the stop), and within a second of it.
    let log = c.coordinator.as_ref().unwrap().log_text();
    let offline = fleet_integration_tests::logged_at(&log, log_from, "agent offline host=main-pc").unwrap() - stopped;
    let window = offline_after.as_millis() as i64;
    assert!(offline >= window - 250, "offline too early: {offline} ms after the stop");
    assert!(offline <= window + 1000, "offline too late: {offline} ms after the stop");
    let hosts = c.hosts().await.unwrap();
    let reason = &hosts.iter().find(|h| h.name == "main-pc").unwrap().last_disconnect_reason;
    assert!(reason.contains("no message from the agent for 2s"), "{reason}");
    assert_eq!(c.online("pc2").await, Some(true), "pc2 is unaffected");

    c.agent("main-pc").signal(Signal::CONT);
    eventually(Duration::from_secs(10), "main-pc online again after SIGCONT", || async {
        (c.online("main-pc").await == Some(true)).then_some(())
    })
    .await;
    // And it reports again: reports taken after the resume arrive.
    let resumed = fleet_common::now_ms();
    eventually(Duration::from_secs(10), "a fresh report from main-pc", || async {
        let h = c.hosts().await?;
        (h.iter().find(|h| h.name == "main-pc")?.last_report_ms > resumed).then_some(())
    })
    .await;
}

//! Noticing silent hosts: a killed agent is offline within 2s (its socket closes); a stopped
//! agent whose socket stays open is offline within offline_after + 1s, and online again when it
//! continues; and a host that goes away stays listed, offline, with its last-seen time.

use std::time::{Duration, Instant};

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

    let killed = Instant::now();
    c.agent("pc2").kill9();
    eventually(Duration::from_secs(2), "pc2 offline after kill -9", || async {
        (c.online("pc2").await == Some(false)).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "offline after {took:?}");

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

    let stopped = Instant::now();
    c.agent("main-pc").signal(Signal::STOP);
    eventually(offline_after + Duration::from_secs(1), "main-pc offline after SIGSTOP", || async {
        (c.online("main-pc").await == Some(false)).then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() >= offline_after - Duration::from_millis(300),
        "offline too early: {:?}",
        stopped.elapsed()
    );
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

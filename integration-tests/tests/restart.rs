//! Coordinator restarts: after kill -9 and a restart every host is still listed (offline ones
//! too), the agents reconnect, and the reports they took while it was down arrive with no
//! sequence gap and no duplicate. A SIGTERM shutdown drains and exits cleanly.

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, assert_contiguous, eventually, serial};

#[tokio::test(flavor = "multi_thread")]
async fn reports_taken_during_a_coordinator_outage_arrive_once() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2", "old-box"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    for a in ["main-pc", "pc2", "old-box"] {
        c.start_agent(a, Duration::from_millis(200));
    }
    c.wait_online(&["main-pc", "pc2", "old-box"], Duration::from_secs(10)).await;
    // old-box leaves for good before the outage.
    let status = c.agent("old-box").terminate(Duration::from_secs(10));
    assert!(status.success(), "fleet-agent exits 0 on SIGTERM, got {status}");
    eventually(Duration::from_secs(3), "old-box offline", || async {
        (c.online("old-box").await == Some(false)).then_some(())
    })
    .await;
    let old_box_seen = c.hosts().await.unwrap().into_iter().find(|h| h.name == "old-box").unwrap().last_seen_ms;

    // The outage.
    c.coordinator.as_mut().unwrap().kill9();
    let down_at = fleet_common::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage itself, not a synchronisation
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    let up_at = fleet_common::now_ms();

    let hosts = c.hosts().await.expect("hosts after restart");
    let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["main-pc", "old-box", "pc2"], "every host is still listed");
    let old = hosts.iter().find(|h| h.name == "old-box").unwrap();
    assert!(!old.online);
    assert_eq!(old.last_seen_ms, old_box_seen, "last-seen survives the restart");

    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(15)).await;
    for a in ["main-pc", "pc2"] {
        let reports = eventually(Duration::from_secs(10), &format!("{a}'s outage reports to arrive"), || async {
            let r = c.reports(a).await;
            // Every report the agent took up to now, including those during the outage.
            let during = r.iter().filter(|r| r.timestamp_ms > down_at + 300 && r.timestamp_ms < up_at - 300).count();
            (during >= 5).then_some(r)
        })
        .await;
        let per_boot = assert_contiguous(&reports);
        assert_eq!(per_boot.len(), 1, "{a} kept one boot id: {per_boot:?}");
    }
    // The agents buffered and replayed rather than losing anything.
    let log = c.agent("main-pc").log_text();
    assert!(log.matches("attached to the coordinator").count() >= 2, "{log}");

    // A graceful stop drains and exits 0; the next start still knows every host.
    let status = c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(15));
    assert!(status.success(), "fleet-coordinator exits 0 on SIGTERM, got {status}");
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(15)).await;
    let names: Vec<_> = c.hosts().await.unwrap().into_iter().map(|h| h.name).collect();
    assert_eq!(names, ["main-pc", "old-box", "pc2"]);
    for a in ["main-pc", "pc2"] {
        assert_contiguous(&c.reports(a).await);
    }
}

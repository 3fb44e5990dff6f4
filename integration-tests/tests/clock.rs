//! An agent whose clock is an hour ahead (run under libfaketime, Debian package faketime) is
//! noticed and said, and its samples are stored at the coordinator's time for them: its host
//! stays in queries made now, and its last report time is not in the future.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, Proc, bin, eventually, parse_metrics, serial};

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_an_hour_ahead_is_said_and_its_samples_land_at_the_right_time() {
    let _g = serial().await;
    let lib = libfaketime();
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let cfg = c.agent_config("pc2", Duration::from_millis(200), "");
    // The library preloaded into the agent itself, not the faketime wrapper: the wrapper forks
    // and waits, and killing it at the end of the test would leave the agent running.
    let agent = Proc::spawn_env(
        "pc2",
        &bin("fleet-agent"),
        &["run", "--config", cfg.to_str().unwrap()],
        &c.dir().join("logs/pc2.log"),
        &[("LD_PRELOAD", lib.to_str().unwrap()), ("FAKETIME", "+1h")],
    );
    c.agents.insert("pc2".into(), agent);
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;

    let offset = eventually(Duration::from_secs(10), "the clock offset of pc2", || async {
        let (_, text) = c.http_get("/metrics").await;
        parse_metrics(&text).get("fleet_agent_clock_offset_seconds{host=\"pc2\"}").copied()
    })
    .await;
    assert!((offset - 3600.0).abs() < 5.0, "offset {offset}");
    let log = c.coordinator.as_ref().unwrap().log_text();
    assert!(log.contains("the agent's clock is 3600s ahead of the coordinator's"), "{log}");
    let out = c.fleetctl(&["host", "pc2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ahead of the coordinator; its samples are stored at corrected times; fix its clock"),
        "{text}"
    );

    // Queries made now see pc2, and its last report is not an hour in the future.
    eventually(Duration::from_secs(10), "pc2's load in a query made now", || async {
        let (_, body) = c.http_get("/api/v1/query?query=fleet_host_load1%7Bhost%3D%22pc2%22%7D").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["data"]["result"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let (_, text) = c.http_get("/metrics").await;
    let last = parse_metrics(&text)["fleet_agent_last_report_timestamp_seconds{host=\"pc2\"}"];
    let now = fleet_common::now_ms() as f64 / 1000.0;
    assert!((now - last).abs() < 10.0, "the last report is at {last}, now is {now}");
}

/// libfaketime's library (Debian package libfaketime, which faketime depends on).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        assert!(Path::new("/usr/bin/faketime").exists(), "install faketime (scripts/test.sh does)");
        panic!("no libfaketime.so.1 under /usr/lib/*/faketime/ although faketime is installed")
    })
}

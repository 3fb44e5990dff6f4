//! The Prometheus query API and `fleetctl query`: promtool's instant and range queries against
//! the coordinator return the same series as `fleetctl query`, and the history survives a
//! coordinator restart (a window spanning the outage counts every report the agents took).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, serial};

fn series_of(v: &serde_json::Value) -> BTreeSet<(String, String)> {
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m = &s["metric"];
            (m["__name__"].as_str().unwrap_or("").to_string(), m["host"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_and_fleetctl_query_see_the_same_series() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few seconds of history
    let at = (fleet_common::now_ms() / 1000).to_string();
    let expr = "fleet_host_memory_total_bytes";

    let out = c.fleetctl(&["query", expr, "--at", &at, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours["resultType"], "vector");
    let ours_series = series_of(&ours);
    assert_eq!(ours_series.len(), 2, "{ours}");

    let url = format!("http://{}", c.http);
    let out =
        Command::new("promtool").args(["query", "instant", "-o", "json", "--time", &at, &url, expr]).output().unwrap();
    assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs_series: BTreeSet<(String, String)> = theirs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["metric"]["__name__"].as_str().unwrap().to_string(), s["metric"]["host"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(ours_series, theirs_series);
    // Same values too.
    for s in theirs.as_array().unwrap() {
        let host = s["metric"]["host"].as_str().unwrap();
        let ours_v = ours["result"].as_array().unwrap().iter().find(|x| x["metric"]["host"] == host).unwrap()["values"]
            [0][1]
            .as_f64()
            .unwrap();
        assert_eq!(s["value"][1].as_str().unwrap().parse::<f64>().unwrap(), ours_v);
    }

    let start = (at.parse::<i64>().unwrap() - 2).to_string();
    let out = Command::new("promtool")
        .args([
            "query",
            "range",
            "-o",
            "json",
            "--start",
            &start,
            "--end",
            &at,
            "--step",
            "1s",
            &url,
            "avg by (host) (fleet_host_cpu_usage_ratio)",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stderr));
    let range: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts: BTreeSet<String> =
        range.as_array().unwrap().iter().map(|s| s["metric"]["host"].as_str().unwrap().to_string()).collect();
    assert_eq!(hosts, BTreeSet::from(["main-pc".to_string(), "pc2".to_string()]));
    assert!(range[0]["values"].as_array().unwrap().len() >= 2);

    // Errors come back in Prometheus' format, and fleetctl says what is wrong.
    let (code, body) = c.http_get("/api/v1/query?query=rate(x[5m]").await;
    assert_eq!(code, 400);
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((e["status"].as_str(), e["errorType"].as_str()), (Some("error"), Some("bad_data")));
    // Valid PromQL that fleet does not evaluate: the operation failed (1), not a usage error
    // (2, kept for what is not PromQL at all).
    let out = c.fleetctl(&["query", "info(fleet_host_load1)"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("info"), "{}", String::from_utf8_lossy(&out.stderr));
    // Subqueries are evaluated.
    let out = c.fleetctl(&["query", "max_over_time(fleet_host_load1[5m:1s])"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.fleetctl(&["query", "rate(fleet_host_load1[5m]"]).status.code(), Some(2));
    let (_, body) = c.http_get("/api/v1/label/host/values").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"], serde_json::json!(["main-pc", "pc2"]));
    let (_, body) = c.http_get("/api/v1/series?match[]=fleet_agent_up").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_spanning_a_coordinator_outage_counts_every_report() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.coordinator.as_mut().unwrap().kill9();
    let down = fleet_common::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    let up = fleet_common::now_ms();
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let at = up + 1000;
    // Wait until the replayed and new reports up to `at` are stored.
    let stored = eventually(Duration::from_secs(15), "reports up to the query time", || async {
        let r = c.reports("pc2").await;
        r.iter().any(|x| x.timestamp_ms > at).then_some(r)
    })
    .await;
    let during = stored.iter().filter(|r| r.timestamp_ms > down && r.timestamp_ms < up).count();
    assert!(during >= 5, "reports taken during the outage: {during}");
    // After a start the history is read back from the report log while agents attach.
    eventually(Duration::from_secs(15), "the history to be read back", || async {
        let (_, body) = c.http_get("/health").await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["parts"]["history"]["status"] == "ok").then_some(())
    })
    .await;
    let status = c.fleetctl(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["history"]["loading"], false, "{status}");
    let window_s = ((at - stored[0].timestamp_ms) / 1000) + 2;
    let expected = stored.iter().filter(|r| r.timestamp_ms > at - window_s * 1000 && r.timestamp_ms <= at).count();
    let expr = format!("count_over_time(fleet_host_uptime_seconds{{host=\"pc2\"}}[{window_s}s])");
    let out = c.fleetctl(&["query", &expr, "--at", &format!("{}", at as f64 / 1000.0), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted = v["result"][0]["values"][0][1].as_f64().unwrap();
    assert_eq!(counted as usize, expected, "{v}");
}

//! `[[remote_write]]` to a real Prometheus (Debian's, with `--web.enable-remote-write-receiver`):
//! what fleet stores and what that Prometheus returns for the same queries agree, sample for
//! sample and with the agents' timestamps; a receiver that is down at first is caught up by
//! retries; a coordinator restart resumes after what was acknowledged instead of sending the
//! history again, and the reports agents buffered during the outage reach the receiver too.

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, free_port, serial, start_prometheus};
use serde_json::Value;

async fn query(base: &str, path: &str, params: &[(&str, &str)]) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().ok()?;
    let r = client.get(format!("{base}{path}")).query(params).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    (v["status"] == "success").then_some(v["data"].clone())
}

/// The value of `name{labels}` on the coordinator's /metrics.
async fn metric(c: &Cluster, series: &str) -> f64 {
    let (_, text) = c.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not on /metrics"))
}

/// `(host, [(t, value)])` of a matrix, sorted by host.
fn by_host(data: &Value) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse::<f64>().unwrap()))
                .collect();
            (s["metric"]["host"].as_str().unwrap_or("").to_string(), points)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn assert_same(ours: &[(String, Vec<(f64, f64)>)], theirs: &[(String, Vec<(f64, f64)>)], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: series differ: {ours:?} against {theirs:?}");
    for ((oh, op), (th, tp)) in ours.iter().zip(theirs) {
        assert_eq!(oh, th, "{what}");
        assert_eq!(op.len(), tp.len(), "{what}: points of {oh} differ: {op:?} against {tp:?}");
        for ((ot, ov), (tt, tv)) in op.iter().zip(tp) {
            assert_eq!(ot, tt, "{what}: {oh}");
            assert!((ov - tv).abs() <= 1e-12 * ov.abs().max(1.0), "{what}: {oh} at {ot}: fleet {ov}, Prometheus {tv}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_fed_by_remote_write_answers_as_fleet_does_across_a_restart() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    let opts = CoordinatorOpts {
        extra: format!(
            "\n[[remote_write]]\nurl = \"{prom}/api/v1/write\"\nname = \"prometheus\"\nbatch_send_deadline = \"300ms\"\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n"
        ),
        ..Default::default()
    };
    c.start_coordinator(opts).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;
    // The receiver comes up after the coordinator has started sending: retried until it answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _prometheus = start_prometheus(&c, prom_port, false);
    let fleet = format!("http://{}", c.http);

    // Both hold the same samples of a window that has been sent: the same series, the same
    // values at every step, the agents' own timestamps.
    let at = fleet_common::now_ms() / 1000 + 4;
    eventually(Duration::from_secs(30), "Prometheus to hold what fleet holds up to the window's end", || async {
        let q = [("query", "count_over_time(fleet_host_cpu_usage_ratio[30s])"), ("time", &at.to_string() as &str)];
        if fleet_common::now_ms() / 1000 < at + 1 {
            return None;
        }
        let ours = query(&fleet, "/api/v1/query", &q).await?;
        let theirs = query(&prom, "/api/v1/query", &q).await?;
        let count = |v: &Value| {
            let mut c: Vec<(String, String)> = v["result"]
                .as_array()?
                .iter()
                .map(|s| {
                    (
                        s["metric"]["host"].as_str().unwrap_or("").to_string(),
                        s["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            c.sort();
            Some(c)
        };
        let (o, t) = (count(&ours)?, count(&theirs)?);
        (o.len() == 2 && o == t).then_some(())
    })
    .await;
    let (start, end) = ((at - 10).to_string(), at.to_string());
    let range = |q: &'static str| {
        [("query", q), ("start", start.clone().leak() as &str), ("end", end.clone().leak()), ("step", "1")]
    };
    for q in [
        "avg by (host) (fleet_host_cpu_usage_ratio)",
        "max by (host) (timestamp(fleet_host_memory_available_bytes))",
        "sum by (host) (rate(fleet_host_network_receive_bytes_total[5s]))",
    ] {
        let ours = by_host(&query(&fleet, "/api/v1/query_range", &range(q)).await.unwrap());
        let theirs = by_host(&query(&prom, "/api/v1/query_range", &range(q)).await.unwrap());
        assert_eq!(ours.len(), 2, "{q}: {ours:?}");
        assert_same(&ours, &theirs, q);
    }
    assert!(metric(&c, "fleet_coordinator_remote_write_retries_total{remote=\"prometheus\"}").await >= 1.0);
    let sent_before =
        metric(&c, "fleet_coordinator_remote_write_samples_total{remote=\"prometheus\",result=\"sent\"}").await;
    assert!(sent_before > 100.0, "sent {sent_before}");

    // A restart: stopped (the marks are saved), down for two seconds while the agents buffer,
    // started again. The restarted coordinator sends what came after the marks, not the
    // history it read back.
    let status = c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let down = fleet_common::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let opts = c.opts.clone(); // the same ports, where the agents reconnect
    c.start_coordinator(opts).await;
    let up = fleet_common::now_ms();
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(15)).await;
    let fleet = format!("http://{}", c.http);
    let at = up / 1000 + 3;
    let window = format!("count_over_time(fleet_host_uptime_seconds[{}s])", (at * 1000 - down) / 1000 + 10);
    eventually(Duration::from_secs(30), "Prometheus to hold the outage's reports as fleet does", || {
        let (fleet, prom, window) = (fleet.clone(), prom.clone(), window.clone());
        async move {
            if fleet_common::now_ms() / 1000 < at + 1 {
                return None;
            }
            let q = [("query", window.as_str()), ("time", &at.to_string() as &str)];
            let ours = by_vector(&query(&fleet, "/api/v1/query", &q).await?);
            let theirs = by_vector(&query(&prom, "/api/v1/query", &q).await?);
            (ours.len() == 2 && ours == theirs).then_some(())
        }
    })
    .await;
    // Everything sent since the restart was taken after the stop (less one second): nothing
    // of the history before it was sent again.
    let sent_after =
        metric(&c, "fleet_coordinator_remote_write_samples_total{remote=\"prometheus\",result=\"sent\"}").await;
    let now = fleet_common::now_ms();
    let since_stop = format!("sum(count_over_time({{__name__=~\".+\"}}[{}ms]))", now - (down - 1000));
    let q = [("query", since_stop.as_str()), ("time", &format!("{}", now as f64 / 1000.0) as &str)];
    let taken: f64 =
        query(&fleet, "/api/v1/query", &q).await.unwrap()["result"][0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        sent_after > 0.0 && sent_after <= taken,
        "after the restart {sent_after} samples were sent, of {taken} taken since the stop ({sent_before} before it): the history was sent again"
    );
    assert_eq!(
        metric(&c, "fleet_coordinator_remote_write_samples_total{remote=\"prometheus\",result=\"dropped\"}").await,
        0.0
    );
}

/// `(host, value)` of an instant vector, sorted.
fn by_vector(data: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = data["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| {
                    (
                        s["metric"]["host"].as_str().unwrap_or("").to_string(),
                        s["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

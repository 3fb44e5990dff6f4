//! What a stranger can send to the coordinator's open HTTP port (the query API needs no
//! credentials) is refused or bounded, and the coordinator keeps answering `/health` and
//! keeps its agents online after it (invariant 15): expressions too deep or too long, times
//! that are not times, queries past their timeout or sample bound, queries whose client went
//! away, SIGTERM while a query runs, and connections that never send a request; and on the
//! agents' port, connections past the limit, silent handshakes and a session that never reads.

use std::io::Read;
use std::time::{Duration, Instant};

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, parse_metrics, serial};

async fn api(c: &Cluster, path: &str, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}{path}", c.http))
        .form(params)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the coordinator answers");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn error_type(v: &serde_json::Value) -> &str {
    v["errorType"].as_str().unwrap_or("")
}

/// CPU seconds the process has used (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// An expression that takes minutes: every step of a range query reads every sample of every
/// series, forty times over.
fn slow_query() -> String {
    vec!["sum(count_over_time({__name__=~\"fleet_.+\"}[10y]))"; 40].join(" + ")
}

async fn still_serving(c: &Cluster) {
    assert_eq!(c.http_get("/health").await.0, 200, "the coordinator answers /health");
    assert_eq!(c.online("pc2").await, Some(true), "pc2 is still online");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_queries_are_refused_or_bounded_and_the_coordinator_stays_up() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    let extra = "[query]\ntimeout = \"1s\"\nmax_samples = 500\n".to_string();
    c.start_coordinator(CoordinatorOpts { extra, ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(100));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;
    // Enough history that reading all of it takes a while.
    eventually(Duration::from_secs(20), "40 reports of pc2", || async {
        let (_, v) = api(&c, "/api/v1/query", &[("query", "count_over_time(fleet_agent_up[1h])")]).await;
        (v["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()? >= 40.0).then_some(())
    })
    .await;

    // Too deep, too many operators: bad_data, not a crashed coordinator.
    let deep = format!("{}vector(1){}", "abs(".repeat(2000), ")".repeat(2000));
    let chain = vec!["1"; 5000].join("+");
    for q in [&deep, &chain] {
        let (code, v) = api(&c, "/api/v1/query", &[("query", q)]).await;
        assert_eq!((code, error_type(&v)), (400, "bad_data"), "{v}");
    }
    let out = c.fleetctl(&["query", &chain]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    still_serving(&c).await;

    // Times that are not times, and ranges no clock can hold.
    for t in ["NaN", "+Inf", "-Inf", "1e308"] {
        let (code, v) = api(&c, "/api/v1/query", &[("query", "vector(1)"), ("time", t)]).await;
        assert_eq!((code, error_type(&v)), (400, "bad_data"), "time={t}: {v}");
    }
    let started = Instant::now();
    let (code, v) =
        api(&c, "/api/v1/query_range", &[("query", "vector(1)"), ("start", "0"), ("end", "1e16"), ("step", "1e13")])
            .await;
    assert_eq!((code, error_type(&v)), (400, "bad_data"), "{v}");
    let (code, v) =
        api(&c, "/api/v1/query_range", &[("query", "vector(1)"), ("start", "0"), ("end", "1e9"), ("step", "1")]).await;
    assert_eq!((code, error_type(&v)), (400, "bad_data"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("exceeded maximum resolution"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(10), "refusals are immediate");

    // Past [query] timeout: 503 timeout, within about the timeout.
    let now = fleet_common::now_ms() as f64 / 1000.0;
    let (start, end) = (format!("{}", now - 300.0), format!("{now}"));
    let started = Instant::now();
    let (code, v) =
        api(&c, "/api/v1/query_range", &[("query", &slow_query()), ("start", &start), ("end", &end), ("step", "0.03")])
            .await;
    assert_eq!((code, error_type(&v)), (503, "timeout"), "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "the 1s timeout took {:?}", started.elapsed());

    // More samples than [query] max_samples: 422, and a small query still works.
    let (code, v) = api(&c, "/api/v1/query", &[("query", "count_over_time({__name__=~\"fleet_.+\"}[1h])")]).await;
    assert_eq!((code, error_type(&v)), (422, "execution"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many samples"), "{v}");
    let (code, _) = api(&c, "/api/v1/query", &[("query", "fleet_agent_up")]).await;
    assert_eq!(code, 200);
    still_serving(&c).await;

    // A rule file too deep to evaluate safely is refused by check-config.
    let rules = c.dir().join("deep.rules.yml");
    std::fs::write(
        &rules,
        format!("groups:\n  - name: g\n    rules:\n      - record: r:deep\n        expr: {chain}\n"),
    )
    .unwrap();
    let cfg = c.dir().join("deep.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(c.coordinator_config()).unwrap()
            + &format!("[alerting]\nrule_files = [\"{}\"]\n", rules.display()),
    )
    .unwrap();
    let out = std::process::Command::new(fleet_integration_tests::bin("fleet-coordinator"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operators and parentheses; the limit is 2000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_stops_when_its_client_goes_away_and_sigterm_is_not_held_up_by_one() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { extra: "[query]\ntimeout = \"10m\"\n".into(), ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(100));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;
    let pid = c.coordinator.as_ref().unwrap().child.id();
    let now = fleet_common::now_ms() as f64 / 1000.0;
    let (start, end) = (format!("{}", now - 300.0), format!("{now}"));
    let slow = slow_query();
    let params = [("query", slow.as_str()), ("start", &start), ("end", &end), ("step", "0.03")];

    // The client gives up after a second: the coordinator stops working on it.
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/query_range", c.http))
        .form(&params)
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(r.is_err(), "the query should outlast its client: {r:?}");
    eventually(Duration::from_secs(10), "the coordinator to stop working on the abandoned query", || async {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        (cpu_seconds(pid) - before < 0.25).then_some(())
    })
    .await;
    still_serving(&c).await;

    // SIGTERM while a query runs: the process ends, within the shutdown bound.
    let http = c.http.clone();
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let pending = tokio::spawn(async move {
        reqwest::Client::new().post(format!("http://{http}/api/v1/query_range")).form(&owned).send().await
    });
    eventually(Duration::from_secs(10), "the query to be running", || async {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        (cpu_seconds(pid) - before > 0.1).then_some(())
    })
    .await;
    let started = Instant::now();
    let status = c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(12), "SIGTERM took {:?}", started.elapsed());
    let _ = pending.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_connections_that_send_nothing_are_closed_and_bounded() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { http_extra: "max_connections = 20\n".into(), ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(10)).await;
    let idle: Vec<std::net::TcpStream> = (0..20).map(|_| std::net::TcpStream::connect(&c.http).unwrap()).collect();
    // One more is closed at once: the limit holds.
    let mut extra = std::net::TcpStream::connect(&c.http).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Closed by the server: the read ends (0 bytes, or reset), and does not time out.
    let closed = |s: &mut std::net::TcpStream| match s.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    assert!(closed(&mut extra), "a connection beyond max_connections is closed at once");
    // The silent ones are closed by the server within the header read timeout.
    let started = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(closed(&mut s), "the server closes a connection that sends no request");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "closed after {:?}", started.elapsed());
    // A keep-alive connection that went quiet after a request is closed the same way.
    let mut kept = std::net::TcpStream::connect(&c.http).unwrap();
    std::io::Write::write_all(&mut kept, b"GET /health HTTP/1.1\r\nHost: fleet\r\n\r\n").unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut first = [0u8; 64];
    let n = kept.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
    let mut rest = Vec::new();
    let idle = Instant::now();
    let _ = kept.read_to_end(&mut rest);
    assert!(idle.elapsed() < Duration::from_secs(15), "an idle keep-alive connection was held {:?}", idle.elapsed());
    still_serving(&c).await;
    let (_, text) = c.http_get("/metrics").await;
    assert!(parse_metrics(&text)["fleet_coordinator_http_connections_refused_total"] >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_connections_are_bounded_and_a_silent_handshake_is_cut() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { agents_extra: "max_connections = 4\n".into(), ..Default::default() }).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let grpc = c.addr.trim_start_matches("https://").to_string();
    // Three connections that never start a TLS handshake, and the agent's: the limit.
    let mut silent: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(&grpc).unwrap()).collect();
    let closed = |s: &mut std::net::TcpStream| match s.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let mut extra = std::net::TcpStream::connect(&grpc).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(closed(&mut extra), "a connection beyond max_connections is closed at once");
    // The silent ones are cut by the handshake deadline (10 s); then operators get in again.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert!(closed(s), "a connection that never completes its handshake is closed");
    }
    assert!(c.fleetctl(&["status"]).status.success());
    let (_, text) = c.http_get("/metrics").await;
    assert!(parse_metrics(&text)["fleet_coordinator_connections_refused_total"] >= 1.0);
    assert_eq!(c.online("pc2").await, Some(true), "the agent's session was never at risk");
}

/// An agent (or whoever holds an agent's key) that sends reports as fast as it can and never
/// reads its acks: what the coordinator holds for it is bounded (the HTTP/2 windows and 1,024
/// unsent messages), the session is ended once that is full, the operator sees why, and other
/// agents never notice. (While 512 of its reports wait for the store the coordinator reads no
/// more from it: `select!` in `coordinator/src/session.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_reads_its_acks_is_cut_off_and_bounded() {
    use fleet_common::tls::{TlsMaterial, connect_coordinator};
    use fleet_proto::v1::agent_message::Msg;
    use fleet_proto::v1::agent_service_client::AgentServiceClient;
    use fleet_proto::v1::{AgentMessage, Hello, Report, ReportId};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio_stream::StreamExt;

    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.wait_online(&["main-pc"], Duration::from_secs(15)).await;

    let tls = TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let ch = connect_coordinator(&c.addr, &tls).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let boot_id = 7;
    let hello = AgentMessage {
        msg: Some(Msg::Hello(Hello {
            name: "pc2".into(),
            version: "0.1.0".into(),
            boot_id,
            report_interval_ms: 200,
            time_ms: fleet_common::now_ms(),
            ..Default::default()
        })),
    };
    let flood = tokio_stream::iter(1..=2_000_000u64).map(move |seq| {
        counter.store(seq, Ordering::Relaxed);
        AgentMessage {
            msg: Some(Msg::Report(Report {
                id: Some(ReportId { boot_id, seq }),
                timestamp_ms: fleet_common::now_ms(),
                ..Default::default()
            })),
        }
    });
    let started = Instant::now();
    let stream = tokio_stream::iter([hello]).chain(flood);
    // The response stream is held and never read.
    let _unread = AgentServiceClient::new(ch).attach(stream).await.unwrap();
    let coordinator = c.coordinator.as_ref().unwrap();
    eventually(Duration::from_secs(120), "the coordinator to cut the flooding session", || async {
        coordinator.log_text().contains("the agent is not reading its session").then_some(())
    })
    .await;
    // What the operator sees of pc2: offline, and why.
    let pc2 = eventually(Duration::from_secs(10), "pc2 offline", || async {
        c.hosts().await?.into_iter().find(|h| h.name == "pc2" && !h.online)
    })
    .await;
    assert_eq!(pc2.last_disconnect_reason, "the agent is not reading its session");
    eprintln!("{} reports sent before the cut, in {:?}", sent.load(Ordering::Relaxed), started.elapsed());
    assert_eq!(c.http_get("/health").await.0, 200);
    assert_eq!(c.online("main-pc").await, Some(true));
}

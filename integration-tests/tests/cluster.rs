//! main-pc and pc2 attach over mutual TLS, report, and fleetctl and /metrics show the same
//! cluster; the exposition passes promtool; health endpoints answer.

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, parse_metrics, promtool_check, serial};

#[tokio::test(flavor = "multi_thread")]
async fn agents_come_online_and_fleetctl_agrees_with_metrics() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;

    let out = c.fleetctl(&["hosts", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hosts -o json is JSON");
    let hosts = hosts.as_array().expect("an array");
    assert_eq!(hosts.len(), 2);
    let (_, text) = c.http_get("/metrics").await;
    let metrics = parse_metrics(&text);
    for h in hosts {
        let name = h["name"].as_str().unwrap();
        assert_eq!(h["status"], "online");
        assert!(h["last_seen"].as_str().unwrap().ends_with('Z'), "RFC 3339: {}", h["last_seen"]);
        assert!(h["services"].as_array().unwrap().is_empty());
        assert_eq!(metrics.get(&format!("fleet_agent_up{{host=\"{name}\"}}")), Some(&1.0), "{text}");
        let total = metrics.get(&format!("fleet_host_memory_total_bytes{{host=\"{name}\"}}")).copied();
        assert_eq!(total, h["memory_total_bytes"].as_f64(), "memory total of {name}");
        let cpu = metrics[&format!("fleet_host_cpu_usage_ratio{{host=\"{name}\"}}")];
        assert!((0.0..=1.0).contains(&cpu));
        assert!(
            metrics.contains_key(&format!("fleet_host_network_receive_bytes_total{{host=\"{name}\",device=\"lo\"}}")),
            "{text}"
        );
        assert!(
            metrics
                .keys()
                .any(|k| k.starts_with(&format!("fleet_host_filesystem_size_bytes{{host=\"{name}\",mountpoint=")))
        );
    }
    assert_eq!(metrics["fleet_coordinator_sessions"], 2.0);
    assert!(metrics["fleet_coordinator_reports_stored_total"] >= 2.0);
    assert!(metrics["fleet_coordinator_store_write_duration_seconds_count"] >= 1.0);

    let findings = promtool_check(&text);
    assert!(findings.trim().is_empty(), "promtool check metrics found:\n{findings}");

    // Human output.
    let out = c.fleetctl(&["hosts"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("main-pc") && l.contains("online")), "{table}");
    let out = c.fleetctl(&["host", "pc2"]);
    assert!(out.status.success());
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(detail.contains("status       online") && detail.contains("MOUNTPOINT"), "{detail}");
    let out = c.fleetctl(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["hosts"]["online"], 2);

    // Health endpoints.
    let (code, body) = c.http_get("/health").await;
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["parts"]["store"]["status"], "ok");
    assert_eq!(c.http_get("/health/live").await.0, 200);
    assert_eq!(c.http_get("/health/ready").await.0, 200);
    let (code, page) = c.http_get("/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<td>main-pc</td><td class=on>online</td>"), "{page}");

    // Selectors: the host name is a label; one that picks no host fails (exit 1) rather than
    // printing nothing; a malformed one is a usage error (exit 2).
    let picked = |args: &[&str]| -> Vec<String> {
        let out = c.fleetctl(&[&["hosts", "-o", "json"], args].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter().map(|h| h["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(picked(&["-l", "host=pc2"]), ["pc2"]);
    assert_eq!(picked(&["--selector", "host in (main-pc, pc2), !role"]), ["main-pc", "pc2"]);
    assert_eq!(picked(&["-l", "host!=pc2"]), ["main-pc"]);
    let out = c.fleetctl(&["hosts", "-l", "role=gpu"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no host matches the selector role=gpu"), "{err}");
    let out = c.fleetctl(&["hosts", "-l", "role=(gpu)"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid selector"));
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let _g = serial().await;
    let mut c = Cluster::new(&[]);
    c.start_coordinator(CoordinatorOpts { json_logs: true, ..Default::default() }).await;
    let tls = fleet_common::tls::TlsMaterial::load(&c.pki.files("ops")).unwrap();
    let channel = fleet_common::tls::connect_coordinator(&c.addr, &tls).await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "fleet.v1.AgentService", "fleet.v1.ControlService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "health of {service:?}");
    }
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["fleet.v1.AgentService", "fleet.v1.ControlService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }

    // --log-format json: every line is one JSON object with a level and a message.
    let log = c.coordinator.as_ref().unwrap().log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO" && l["message"].as_str().unwrap_or("").contains("serving")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fleetctl_exit_codes_say_what_went_wrong() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;

    let out = c.fleetctl(&["host", "nosuchhost"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no host named \"nosuchhost\""), "{err}");

    // Nothing listens on the address: exit 3 with the hint.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = c.pki.files("ops");
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["hosts", "--addr", &format!("https://127.0.0.1:{dead}")])
            .env("FLEET_CA", &f.ca)
            .env("FLEET_CERT", &f.cert)
            .env("FLEET_KEY", &f.key),
    );
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection refused") && err.contains("is fleet-coordinator running?"), "{err}");

    // No certificate configured: a usage error that says how to fix it.
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["hosts"])
            .env_remove("FLEET_CERT")
            .env_remove("FLEET_KEY")
            .env_remove("FLEET_CA"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEET_CERT"));
}

/// The Hello carries the services, so a host is listed with them from the moment it is online
/// (and `rollout start` finds them), not one report interval later.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_is_listed_with_its_services_as_soon_as_it_is_online() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(120), ..Default::default() }).await;
    // A deployable service with no release yet: it stays stopped, so no state change makes
    // the agent report before its first 60 s tick.
    let root = c.dir().join("pc2-app");
    c.start_agent_with(
        "pc2",
        Duration::from_secs(60),
        &format!(
            "[[services]]\nname = \"app\"\ncommand = \"bin/start\"\n[services.deploy]\nroot = \"{}\"\n",
            root.display()
        ),
    );
    fleet_integration_tests::eventually(Duration::from_secs(15), "pc2 online", || async {
        c.online("pc2").await.filter(|on| *on)
    })
    .await;
    let out = c.fleetctl(&["hosts", "-o", "json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pc2 = &hosts[0];
    assert_eq!(pc2["last_report"], serde_json::Value::Null, "no report yet: {pc2}");
    let services = pc2["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{pc2}");
    assert_eq!((services[0]["name"].as_str(), services[0]["state"].as_str()), (Some("app"), Some("stopped")));
}

//! Revocation and roles end to end (docs/design.md §11): a revoked agent is offline within two
//! seconds and stays out, across a coordinator restart, while the others never notice; a
//! revoked operator is refused at once; `hosts remove` forgets a host for good; a viewer
//! reads but cannot act, every refusal names the role needed and is audited, and `[access]`
//! is read again on SIGHUP; the coordinator takes a replaced certificate without a restart.

use std::process::Output;
use std::time::{Duration, Instant};

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, parse_metrics, serial, sh_service};
use rustix::process::Signal;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn sessions_opened(c: &Cluster) -> f64 {
    let (_, text) = c.http_get("/metrics").await;
    parse_metrics(&text)["fleet_coordinator_sessions_opened_total"]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_cut_off_at_once_and_stays_out() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.pki.issue("operator", "eve");
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(15)).await;
    let opened = sessions_opened(&c).await;

    let started = Instant::now();
    let out = c.fleetctl(&["certs", "revoke", "agent/pc2", "--reason", "stolen"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("revoked every certificate of spiffe://fleet.local/agent/pc2"), "{}", stdout(&out));
    eventually(Duration::from_secs(5), "pc2 offline", || async {
        (c.online("pc2").await == Some(false)).then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "pc2 went offline {took:?} after the revocation");
    // pc2 says why, and does not hammer the coordinator.
    eventually(Duration::from_secs(5), "pc2 to log its revocation", || async {
        c.agents["pc2"].log_text().contains("this agent's certificate was revoked").then_some(())
    })
    .await;
    let log = c.agents["pc2"].log_text();
    assert!(log.contains("retrying hourly") && log.contains("stolen"), "{log}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.online("pc2").await, Some(false), "pc2 came back");
    assert_eq!(c.agents["pc2"].log_text().matches("retrying hourly").count(), 1, "pc2 retried");
    // A new attempt with the revoked certificate is refused in the handshake. In TLS 1.3 the
    // server checks the client's certificate after the client has finished its half, so the
    // client sees either the certificate_revoked alert or a connection closed under its first
    // call; the coordinator's log says which certificate it refused.
    let tls = fleet_common::tls::TlsMaterial::load(&c.pki.files("pc2")).unwrap();
    let refused = fleet_common::tls::connect_coordinator(&c.addr, &tls).await;
    let reason = match refused {
        Err(e) => e.to_string(),
        Ok(ch) => {
            let r = fleet_proto::v1::agent_service_client::AgentServiceClient::new(ch)
                .fetch_artifact(fleet_proto::v1::FetchArtifactRequest { sha256: "00".repeat(32) })
                .await;
            format!("{:?}", r.expect_err("a revoked certificate got an answer"))
        }
    };
    assert!(
        reason.contains("revoked") || reason.contains("Revoked") || reason.contains("connection closed"),
        "{reason}"
    );
    eventually(Duration::from_secs(5), "the coordinator to log the refused handshake", || async {
        let log = c.coordinator.as_ref().unwrap().log_text();
        log.lines()
            .any(|l| {
                l.contains("refused: TLS handshake with a revoked certificate")
                    && l.contains("identity=spiffe://fleet.local/agent/pc2")
            })
            .then_some(())
    })
    .await;
    // main-pc never noticed.
    assert_eq!(c.online("main-pc").await, Some(true));
    assert_eq!(sessions_opened(&c).await, opened, "a session was opened again");
    let (_, text) = c.http_get("/metrics").await;
    let m = parse_metrics(&text);
    assert!(m["fleet_coordinator_denied_total{reason=\"revoked\"}"] >= 1.0, "{text}");

    // A revoked operator certificate is refused at once.
    assert!(c.fleetctl_as("eve", &["hosts"]).status.success());
    assert!(c.fleetctl(&["certs", "revoke", "operator/eve"]).status.success());
    let out = c.fleetctl_as("eve", &["hosts"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    // What fleetctl asks when a call ends with a bare "connection closed" (TLS 1.3 lets the
    // alert get lost behind the first request): dialing again finds the coordinator's alert,
    // and finds none for a certificate it takes.
    let files = |name: &str| fleet_common::tls::TlsMaterial::load(&c.pki.files(name)).unwrap();
    let (addr, eve, ops) = (c.addr.clone(), files("eve"), files("ops"));
    let (refused, taken) = tokio::task::spawn_blocking(move || {
        let wait = Duration::from_secs(2);
        (fleet_common::tls::refusal_reason(&addr, &eve, wait), fleet_common::tls::refusal_reason(&addr, &ops, wait))
    })
    .await
    .unwrap();
    let refused = refused.expect("the coordinator's alert for a revoked certificate");
    assert!(refused.contains("revoked"), "{refused}");
    assert_eq!(taken, None);

    // The deny list survives a restart.
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["main-pc"], Duration::from_secs(20)).await;
    let out = c.fleetctl_as("eve", &["hosts"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let list = c.fleetctl(&["certs", "revoked", "-o", "json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v.iter().any(|r| r["target"] == "spiffe://fleet.local/agent/pc2" && r["reason"] == "stolen"));
    // pc2 (asked to try now, as a restart would) is still refused.
    c.agent("pc2").kill9();
    c.start_agent("pc2", Duration::from_millis(200));
    eventually(Duration::from_secs(10), "the restarted pc2 to be refused", || async {
        (c.agents["pc2"].log_text().matches("retrying hourly").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(c.online("pc2").await, Some(false));

    // hosts remove: gone from the list, and still gone after a restart.
    let out = c.fleetctl(&["hosts", "remove", "pc2", "--reason", "decommissioned"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = |c: &Cluster| {
        let out = c.fleetctl(&["hosts", "-o", "json"]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter().map(|h| h["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(&c), ["main-pc"]);
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["main-pc"], Duration::from_secs(20)).await;
    assert_eq!(names(&c), ["main-pc"]);
    let out = c.fleetctl(&["audit", "-n", "50", "-o", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for action in ["revoke", "hosts remove"] {
        assert!(entries.iter().any(|e| e["action"] == action && e["outcome"] == "succeeded"), "{action}: {entries:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_look_but_cannot_touch_and_roles_reload_on_sighup() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.pki.issue("operator", "val");
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent_with("pc2", Duration::from_millis(200), &sh_service("web", "echo hello; exec sleep 600", ""));
    c.wait_service("pc2", "web", Duration::from_secs(15), "running", |s| s.pid > 0).await;

    // A viewer lists, queries and reads logs.
    for args in [
        vec!["hosts"],
        vec!["status"],
        vec!["services"],
        vec!["query", "count(fleet_agent_up)"],
        vec!["logs", "pc2", "web", "-n", "5"],
        vec!["alerts"],
        vec!["audit"],
        vec!["whoami"],
    ] {
        let out = c.fleetctl_as("val", &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert!(stdout(&c.fleetctl_as("val", &["whoami"])).contains("operator/val (viewer)"));
    // ... and follows them (the stream stays open until the caller goes away).
    let mut follow = std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
        .args(["logs", "pc2", "web", "-f"])
        .env("FLEET_ADDR", &c.addr)
        .env("FLEET_CA", c.pki.files("val").ca)
        .env("FLEET_CERT", c.pki.files("val").cert)
        .env("FLEET_KEY", c.pki.files("val").key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(follow.try_wait().unwrap().is_none(), "logs -f of a viewer ended");
    let _ = follow.kill();
    let _ = follow.wait();

    // But cannot act: each refusal names the role it needs.
    let artifact = c.dir().join("app.tar.gz");
    fleet_integration_tests::app_release(&artifact, "1.0", false);
    let denied = [
        (vec!["restart", "pc2", "web"], "RunServiceCommand needs the operator role"),
        (vec!["stop", "pc2", "web"], "RunServiceCommand needs the operator role"),
        (
            vec!["rollout", "start", "web", "--artifact", artifact.to_str().unwrap(), "--version", "1.0"],
            "needs the operator role",
        ),
        (vec!["rules", "reload"], "ReloadRules needs the operator role"),
        (vec!["tokens", "list"], "ListTokens needs the admin role"),
        (vec!["certs", "revoke", "agent/pc2"], "RevokeCertificate needs the admin role"),
        (vec!["hosts", "remove", "pc2"], "RemoveHost needs the admin role"),
    ];
    for (args, why) in &denied {
        let out = c.fleetctl_as("val", args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(why) && stderr(&out).contains("is a viewer"), "{args:?}: {}", stderr(&out));
    }
    // pc2's web was never touched.
    let web = c.service("pc2", "web").await.unwrap();
    assert_eq!(web.restarts, 0);
    // Every denial is in the audit log.
    let out = c.fleetctl(&["audit", "-n", "100", "-o", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for rpc in ["RunServiceCommand", "ReloadRules", "ListTokens", "RevokeCertificate", "RemoveHost"] {
        assert!(
            entries.iter().any(|e| e["who"] == "spiffe://fleet.local/operator/val"
                && e["outcome"] == "denied"
                && e["action"] == rpc),
            "no denial of {rpc} in {entries:?}"
        );
    }
    let (_, text) = c.http_get("/metrics").await;
    assert!(parse_metrics(&text)["fleet_coordinator_denied_total{reason=\"access_role\"}"] >= 5.0);

    // Made an operator in coordinator.toml and SIGHUP: val can restart now, not more.
    let cfg = c.coordinator_config();
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("ops = \"admin\"\n", "ops = \"admin\"\nval = \"operator\"\n");
    std::fs::write(&cfg, text).unwrap();
    c.coordinator.as_ref().unwrap().signal(Signal::HUP);
    eventually(Duration::from_secs(10), "val an operator", || async {
        stdout(&c.fleetctl_as("val", &["whoami"])).contains("(operator)").then_some(())
    })
    .await;
    let out = c.fleetctl_as("val", &["restart", "pc2", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.fleetctl_as("val", &["tokens", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("ListTokens needs the admin role"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_coordinator_certificate_is_used_without_a_restart() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let expiry = |text: &str| parse_metrics(text)["fleet_certificate_expiry_timestamp_seconds{identity=\"spiffe://fleet.local/coordinator\",kind=\"coordinator\"}"];
    let (_, before) = c.http_get("/metrics").await;
    // A new certificate in place of the old (as cert-manager or a cron job would).
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["certs", "issue", "coordinator", "coordinator", "--days", "20", "--force", "--dir"])
            .arg(&c.pki.dir),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let new_serial = {
        let pem = std::fs::read_to_string(c.pki.files("coordinator").cert).unwrap();
        fleet_common::pki::cert_info(&fleet_common::pki::first_cert_der(&pem).unwrap()).unwrap().serial
    };
    eventually(Duration::from_secs(20), "the coordinator to load its new certificate", || async {
        let (_, text) = c.http_get("/metrics").await;
        (expiry(&text) < expiry(&before)).then_some(())
    })
    .await;
    // New connections get it; the agent's session never dropped.
    let tls = fleet_common::tls::TlsMaterial::load(&c.pki.files("ops")).unwrap();
    let config = tls.client_config().unwrap();
    let tcp = tokio::net::TcpStream::connect(c.addr.trim_start_matches("https://")).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(config)
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(fleet_common::pki::cert_info(&leaf).unwrap().serial, new_serial);
    assert_eq!(c.agents["pc2"].log_text().matches("attached to the coordinator").count(), 1);

    // fleetctl says when its own certificate is about to expire.
    let out = fleet_integration_tests::run(
        std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["certs", "issue", "operator", "short", "--days", "3", "--dir"])
            .arg(&c.pki.dir),
    );
    assert!(out.status.success());
    let out = c.fleetctl_as("short", &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: your certificate") && stderr(&out).contains("expires at"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&c.fleetctl(&["status"])).contains("warning"), "a year-long certificate is not about to expire");
}

//! Enrollment and renewal end to end (docs/design.md §11): a machine that has only the CA's pin and a
//! join token enrolls and reports; tokens that do not admit it are refused on both sides with
//! nothing written, and audited; an agent whose certificate lives a minute renews it twice
//! while reporting every second without losing a report or going offline.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, assert_contiguous, bin, eventually, run, serial};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `fleetctl tokens create ARGS -o json` as ops: (token, pin, command).
fn token(c: &Cluster, args: &[&str]) -> (String, String, String) {
    let mut all = vec!["tokens", "create", "-o", "json"];
    all.extend_from_slice(args);
    let out = c.fleetctl(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    (s("token"), s("ca_pin"), s("command"))
}

fn enroll(c: &Cluster, token: &str, pin: &str, name: &str, data_dir: &Path) -> Output {
    run(Command::new(bin("fleet-agent")).args([
        "enroll",
        "--coordinator",
        &c.addr,
        "--token",
        token,
        "--ca-pin",
        pin,
        "--name",
        name,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        "/nonexistent/agent.toml",
    ]))
}

fn audit(c: &Cluster) -> Vec<serde_json::Value> {
    let out = c.fleetctl(&["audit", "-n", "100", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_with_a_token_and_the_pin_enrolls_and_bad_tokens_are_refused() {
    let _g = serial().await;
    let mut c = Cluster::new(&[]);
    let extra = c.enrollment_toml("30d");
    c.start_coordinator(CoordinatorOpts { extra, ..Default::default() }).await;

    // The command tokens create prints, run as printed (plus where to keep the identity).
    let (tok, pin, command) = token(&c, &["--name", "pc3", "--labels", "role=gpu,zone=lab"]);
    assert!(command.starts_with("fleet-agent enroll --coordinator https://127.0.0.1:"), "{command}");
    assert!(command.contains(&format!("--token {tok}")) && command.contains(&format!("--ca-pin {pin}")), "{command}");
    assert!(command.ends_with("--name pc3"), "{command}");
    let dir = c.dir().join("pc3");
    let out = enroll(&c, &tok, &pin, "pc3", &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = dir.join("identity/agent.pem");
    assert_eq!(std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    // Its config has no [tls] and says role=cpu: the token's labels win.
    c.start_enrolled_agent("pc3", Duration::from_millis(500), "[labels]\nrole = \"cpu\"\n");
    c.wait_online(&["pc3"], Duration::from_secs(15)).await;
    let host = c.hosts().await.unwrap().into_iter().find(|h| h.name == "pc3").unwrap();
    assert_eq!(host.labels.get("role").map(String::as_str), Some("gpu"));
    assert_eq!(host.labels.get("zone").map(String::as_str), Some("lab"));
    eventually(Duration::from_secs(10), "pc3's reports stored", || async {
        (c.reports("pc3").await.len() >= 2).then_some(())
    })
    .await;

    // Refused, each with its reason, nothing written, and audited.
    let (expired, _, _) = token(&c, &["--ttl", "1s"]);
    let (bound, _, _) = token(&c, &["--name", "pc4"]);
    let (revoked, _, _) = token(&c, &[]);
    assert!(c.fleetctl(&["tokens", "revoke", revoked.split('.').next().unwrap()]).status.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cases = [
        (tok.as_str(), "pc9", "the join token was already used (1 of 1 uses, by pc3)"),
        (expired.as_str(), "pc5", "the join token expired at"),
        (bound.as_str(), "pc5", "the join token is bound to the name pc4, not pc5"),
        (revoked.as_str(), "pc6", "the join token was revoked"),
        ("0123456789abcdef.00000000000000000000000000000000", "pc7", "the join token is not valid"),
    ];
    for (t, name, why) in cases {
        let d = c.dir().join(format!("refused-{name}"));
        let out = enroll(&c, t, &pin, name, &d);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{name}: {}", stderr(&out));
        assert!(!d.exists(), "{name}: something was written");
    }
    let log = c.coordinator.as_ref().unwrap().log_text();
    for (_, _, why) in cases {
        assert!(log.contains(why), "the coordinator does not log {why:?}");
    }
    let entries = audit(&c);
    let denied: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["action"] == "enroll" && e["outcome"] == "denied").collect();
    for (_, name, why) in cases {
        assert!(
            denied.iter().any(|e| e["host"] == name && e["message"].as_str().unwrap().contains(why)),
            "no audit entry for {name}: {entries:?}"
        );
    }
    assert!(entries.iter().any(|e| e["action"] == "enroll" && e["outcome"] == "succeeded" && e["host"] == "pc3"));
    // The coordinator never logs a token's secret.
    assert!(!log.contains(tok.split('.').nth(1).unwrap()), "a token secret is in the log");

    // A wrong pin: the agent does not trust the server and sends nothing.
    let d = c.dir().join("wrong-pin");
    let (fresh, _, _) = token(&c, &[]);
    let out = enroll(&c, &fresh, &format!("sha256:{}", "ab".repeat(32)), "pc8", &d);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no CA with pin sha256:abab"), "{}", stderr(&out));
    assert!(!d.exists());
    let list = c.fleetctl(&["tokens", "list", "-o", "json"]);
    let tokens: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    let fresh_id = fresh.split('.').next().unwrap();
    let t = tokens.iter().find(|t| t["id"] == fresh_id).unwrap();
    assert_eq!((t["uses"].as_u64(), t["state"].as_str()), (Some(0), Some("valid")), "the token was not spent");

    // join_token and ca_pin in agent.toml: enrolled at the first start, then running.
    let (tok2, pin2, _) = token(&c, &["--name", "pc10"]);
    c.start_enrolled_agent(
        "pc10",
        Duration::from_millis(500),
        &format!("join_token = \"{tok2}\"\nca_pin = \"{pin2}\"\n"),
    );
    c.wait_online(&["pc10"], Duration::from_secs(15)).await;
    assert!(c.dir().join("pc10/identity/agent.pem").exists());
    // A second start uses what it enrolled (the token is spent by now).
    c.agent("pc10").terminate(Duration::from_secs(15));
    c.start_enrolled_agent(
        "pc10",
        Duration::from_millis(500),
        &format!("join_token = \"{tok2}\"\nca_pin = \"{pin2}\"\n"),
    );
    eventually(Duration::from_secs(15), "pc10 attached twice", || async {
        (c.agents["pc10"].log_text().matches("attached to the coordinator").count() == 2).then_some(())
    })
    .await;
}

/// With certificates that live a minute, an agent reporting every second renews at 40 s and
/// 80 s over its live session: every report is stored, `fleet_agent_up` never has a gap of
/// more than one report interval or a 0, and the coordinator follows the new certificates.
#[tokio::test(flavor = "multi_thread")]
async fn agents_renew_their_certificates_without_losing_a_report() {
    let _g = serial().await;
    let mut c = Cluster::new(&[]);
    let extra = c.enrollment_toml("1m");
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(5), extra, ..Default::default() }).await;
    let (tok, pin, _) = token(&c, &["--name", "pc3"]);
    c.start_enrolled_agent("pc3", Duration::from_secs(1), &format!("join_token = \"{tok}\"\nca_pin = \"{pin}\"\n"));
    c.wait_online(&["pc3"], Duration::from_secs(15)).await;
    let started_ms = fleet_common::now_ms();
    let serial_now = |c: &Cluster| {
        let pem = std::fs::read_to_string(c.dir().join("pc3/identity/agent.pem")).unwrap();
        fleet_common::pki::cert_info(&fleet_common::pki::first_cert_der(&pem).unwrap()).unwrap().serial
    };
    let first = serial_now(&c);
    eventually(Duration::from_secs(120), "two renewals", || async {
        (c.agents["pc3"].log_text().matches("renewed the agent's certificate").count() >= 2).then_some(())
    })
    .await;
    assert_ne!(serial_now(&c), first);
    // Let the last reports in, then look at everything since the start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = c.agents["pc3"].log_text();
    assert_eq!(log.matches("attached to the coordinator").count(), 3, "one session per certificate: {log}");
    assert!(!log.contains("session with the coordinator ended"), "{log}");
    let reports = c.reports("pc3").await;
    let runs = assert_contiguous(&reports);
    assert_eq!(runs.len(), 1, "one agent run");
    let (_, last) = runs.iter().next().unwrap();
    assert!(*last >= 80, "{last} reports in over 80 s");

    let (start, end) = (started_ms as f64 / 1000.0, fleet_common::now_ms() as f64 / 1000.0 - 2.0);
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/v1/query_range", c.http))
        .query(&[
            ("query", "fleet_agent_up{host=\"pc3\"}"),
            ("start", &format!("{start}")),
            ("end", &format!("{end}")),
            ("step", "1"),
        ])
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let values = v["data"]["result"][0]["values"].as_array().expect("fleet_agent_up of pc3").clone();
    // A value at every step of the range: no step without a sample in the lookback.
    assert_eq!(values.len(), (end - start).floor() as usize + 1, "{v}");
    for p in &values {
        assert_eq!(p[1], "1", "fleet_agent_up went to 0 at {}", p[0]);
    }
    // Samples from reports: none more than one interval late (the range query would hold the
    // last one for 5 minutes, so look at the raw samples).
    let raw = reqwest::Client::new()
        .get(format!("http://{}/api/v1/query", c.http))
        .query(&[("query", "fleet_agent_up{host=\"pc3\"}[3m]")])
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let times: Vec<f64> = raw["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_f64().unwrap())
        .filter(|t| *t * 1000.0 >= started_ms as f64)
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(gap <= 2.0, "a gap of {gap} s in fleet_agent_up with a 1 s report interval");
    // The coordinator follows the newest certificate of pc3.
    let (_, metrics) = c.http_get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("fleet_certificate_expiry_timestamp_seconds{identity=\"spiffe://fleet.local/agent/pc3\"")
        })
        .expect("pc3's certificate expiry");
    let expiry: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(expiry * 1000.0 > fleet_common::now_ms() as f64, "{line}");
}

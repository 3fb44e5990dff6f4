//! Alerting end to end with a real Alertmanager (Debian's prometheus-alertmanager): a killed
//! agent's alert reaches Alertmanager within `for` + 2 evaluation intervals and is resolved
//! when the agent is back; alert state survives a coordinator restart; an invalid rule file on
//! reload is reported with file and line and the previous rules stay active.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_integration_tests::{
    Cluster, CoordinatorOpts, am_alerts, eventually, serial, start_alertmanager, start_alertmanager_https,
    webhook_receiver,
};

const RULES: &str = "groups:\n  - name: fleet\n    interval: 1s\n    rules:\n      - alert: FleetAgentDown\n        expr: fleet_agent_up == 0\n        for: 2s\n        labels:\n          severity: critical\n        annotations:\n          summary: \"agent on {{ $labels.host }} is down\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_down_agent_alerts_alertmanager_and_resolves() {
    let _g = serial().await;
    assert!(
        Path::new("/usr/bin/prometheus-alertmanager").exists(),
        "install prometheus-alertmanager (.ci/run does this)"
    );
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    let (_am, am_port) = start_alertmanager(&c);
    eventually(Duration::from_secs(20), "alertmanager to answer", || async { am_alerts(am_port).await.map(|_| ()) })
        .await;
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("fleet.yml"), RULES).unwrap();
    let (hook_port, hooked) = webhook_receiver().await;
    let extra = format!(
        "[alerting]\nrule_files = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\nalertmanagers = [\"http://127.0.0.1:{am_port}\"]\nwebhooks = [\"http://127.0.0.1:{hook_port}/hook\"]\nexternal_labels = {{ cluster = \"test\" }}\n",
        rules.display()
    );
    c.start_coordinator(CoordinatorOpts { extra, ..Default::default() }).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;
    let rules_out = String::from_utf8_lossy(&c.fleetctl(&["rules"]).stdout).into_owned();
    assert!(rules_out.contains("FleetAgentDown") && rules_out.contains("inactive"), "{rules_out}");

    // Killed: in Alertmanager within for (2s) + 2 evaluation intervals (1s each).
    let killed = Instant::now();
    c.agent("pc2").kill9();
    let alert = eventually(Duration::from_secs(10), "FleetAgentDown in Alertmanager", || async {
        am_alerts(am_port).await?.into_iter().find(|a| a["labels"]["alertname"] == "FleetAgentDown")
    })
    .await;
    let took = killed.elapsed();
    // The contract is `for` (2s) plus two evaluations (1s each); a loaded two-core machine
    // adds scheduling delays of its own, hence the slack (the exact timing of `for` is pinned
    // down by the rule tests on a virtual clock).
    assert!(took <= Duration::from_millis(4000 + 3000), "reached Alertmanager after {took:?}");
    assert_eq!(alert["labels"]["host"], "pc2");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["cluster"], "test", "external labels are added");
    assert_eq!(alert["annotations"]["summary"], "agent on pc2 is down");

    let out = c.fleetctl(&["alerts", "-o", "json"]);
    let alerts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(alerts[0]["state"], "firing");
    let active_at = alerts[0]["active_at"].clone();
    let (_, text) = c.http_get("/metrics").await;
    assert!(text.contains("fleet_alerts_firing{alertname=\"FleetAgentDown\",severity=\"critical\"} 1"), "{text}");
    // How long the group's evaluations take, as Prometheus' prometheus_rule_group_* say.
    let metrics = fleet_integration_tests::parse_metrics(&text);
    let group = format!("{{group=\"{};fleet\"}}", rules.join("fleet.yml").display());
    let took = metrics[&format!("fleet_coordinator_rule_group_last_duration_seconds{group}")];
    assert!((0.0..1.0).contains(&took), "evaluated in {took}s");
    assert_eq!(metrics[&format!("fleet_coordinator_rule_group_interval_seconds{group}")], 1.0);
    let at = metrics[&format!("fleet_coordinator_rule_group_last_evaluation_timestamp_seconds{group}")];
    assert!((fleet_common::now_ms() as f64 / 1000.0 - at).abs() < 10.0, "last evaluated at {at}");
    let (_, api) = c.http_get("/api/v1/alerts").await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["data"]["alerts"][0]["state"], "firing");

    // A coordinator restart neither forgets nor re-fires the alert.
    c.coordinator.as_mut().unwrap().kill9();
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    let after = eventually(Duration::from_secs(10), "the alert to be evaluated again", || async {
        let out = c.fleetctl(&["alerts", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.as_array()?.len() == 1 && v[0]["state"] == "firing").then_some(v)
    })
    .await;
    assert_eq!(after[0]["active_at"], active_at, "the alert keeps the time it became active");

    // A broken rule file on reload: reported with file and line; the old rules stay, all of
    // them as they were: a good file changed in the same reload is not applied either.
    std::fs::write(
        rules.join("fleet.yml"),
        format!("{RULES}      - alert: AddedInTheSameReload\n        expr: vector(1)\n"),
    )
    .unwrap();
    std::fs::write(
        rules.join("broken.yml"),
        "groups:\n  - name: b\n    rules:\n      - alert: B\n        expr: up ==\n",
    )
    .unwrap();
    let out = c.fleetctl(&["rules", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yml:4: invalid expr") && err.contains("previous rules stay active"), "{err}");
    c.coordinator.as_ref().unwrap().signal(rustix::process::Signal::HUP);
    let log = c.coordinator.as_ref().unwrap();
    eventually(Duration::from_secs(5), "the SIGHUP reload to be refused", || async {
        log.log_text().contains("rule reload failed; the previous rules stay active").then_some(())
    })
    .await;
    let listed = String::from_utf8_lossy(&c.fleetctl(&["rules"]).stdout).into_owned();
    assert!(listed.contains("FleetAgentDown"), "{listed}");
    assert!(!listed.contains("AddedInTheSameReload"), "a refused reload applied part of the files:\n{listed}");
    // Valid Prometheus that fleet cannot evaluate is refused the same way, naming the rule and
    // the construct, instead of being loaded to fail at every evaluation.
    std::fs::write(
        rules.join("broken.yml"),
        "groups:\n  - name: b\n    rules:\n      - alert: DiskFilling\n        expr: info(fleet_host_filesystem_avail_bytes) < 0\n",
    )
    .unwrap();
    let out = c.fleetctl(&["rules", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yml:4: alert \"DiskFilling\": the function info() is not supported"), "{err}");
    std::fs::remove_file(rules.join("broken.yml")).unwrap();
    std::fs::write(rules.join("fleet.yml"), RULES).unwrap();
    assert!(c.fleetctl(&["rules", "reload"]).status.success());

    // Back: Alertmanager sees it resolved.
    c.start_agent("pc2", Duration::from_millis(200));
    eventually(Duration::from_secs(15), "the alert resolved in Alertmanager", || async {
        let list = am_alerts(am_port).await?;
        (!list.iter().any(|a| a["labels"]["alertname"] == "FleetAgentDown")).then_some(())
    })
    .await;
    let (_, text) = c.http_get("/metrics").await;
    assert!(!text.contains("fleet_alerts_firing{alertname=\"FleetAgentDown\""), "{text}");

    // The webhook got the same alert, in Alertmanager's webhook format, firing then resolved.
    let bodies = eventually(Duration::from_secs(5), "the resolved notification at the webhook", || async {
        let b = hooked.lock().unwrap().clone();
        b.iter().any(|x| x["status"] == "resolved").then_some(b)
    })
    .await;
    let first = &bodies[0];
    assert_eq!(first["version"], "4");
    assert_eq!(first["status"], "firing");
    assert_eq!(first["alerts"][0]["labels"]["alertname"], "FleetAgentDown");
    assert_eq!(first["alerts"][0]["labels"]["host"], "pc2");
    assert_eq!(first["commonLabels"]["severity"], "critical");
}

/// The alerts of the https Alertmanager on `port`, asked with the cluster's CA and basic auth.
async fn am_alerts_https(c: &Cluster, port: u16) -> Option<Vec<serde_json::Value>> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(c.pki.files("coordinator").ca).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().ok()?;
    let r = client
        .get(format!("https://127.0.0.1:{port}/api/v2/alerts"))
        .basic_auth("fleet", Some("s3cret"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_an_alertmanager_over_https_with_basic_auth() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    let hash = {
        let out = std::process::Command::new(fleet_integration_tests::bin("fleetctl"))
            .args(["hash-password", "--cost", "6"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(b"s3cret\n")?;
                child.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (_am, port) = start_alertmanager_https(&c, "fleet", &hash);
    eventually(Duration::from_secs(20), "the https Alertmanager to answer", || am_alerts_https(&c, port)).await;
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("always.yml"),
        "groups:\n  - name: g\n    interval: 500ms\n    rules:\n      - alert: Always\n        expr: vector(1)\n",
    )
    .unwrap();
    // Right credentials: the alert arrives, over TLS to a server fleet's CA signed.
    let extra = format!(
        "[alerting]\nrule_files = [\"{}/*.yml\"]\nalertmanagers = [\"https://127.0.0.1:{port}\"]\n[alerting.client]\nbasic_auth = {{ username = \"fleet\", password = \"s3cret\" }}\n",
        rules.display()
    );
    c.start_coordinator(CoordinatorOpts { extra, ..Default::default() }).await;
    eventually(Duration::from_secs(15), "the alert in the https Alertmanager", || async {
        am_alerts_https(&c, port).await?.into_iter().find(|a| a["labels"]["alertname"] == "Always").map(|_| ())
    })
    .await;
    let (_, text) = c.http_get("/metrics").await;
    assert!(text.contains("fleet_coordinator_notifications_failed_total 0"), "{text}");

    // A wrong password: Alertmanager refuses (401) and the coordinator counts the failures.
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(10));
    // (A new alert: one restored as already sent would wait a minute to be sent again.)
    std::fs::write(
        rules.join("always.yml"),
        "groups:\n  - name: g\n    interval: 500ms\n    rules:\n      - alert: AlsoAlways\n        expr: vector(1)\n",
    )
    .unwrap();
    let opts = CoordinatorOpts { extra: c.opts.extra.replace("\"s3cret\"", "\"wrong\""), ..c.opts.clone() };
    c.start_coordinator(opts).await;
    eventually(Duration::from_secs(20), "refused notifications counted", || async {
        let (_, text) = c.http_get("/metrics").await;
        let failed: f64 =
            text.lines().find_map(|l| l.strip_prefix("fleet_coordinator_notifications_failed_total ")?.parse().ok())?;
        (failed >= 1.0).then_some(())
    })
    .await;
    assert!(c.coordinator.as_ref().unwrap().log_text().contains("401"), "the refusal is logged with its status");
}

//! `fleetctl exec`, label selectors and maintenance end to end (docs/design.md §12), with real
//! agents: exec streams both outputs and exits with the command's status; an agent without
//! `allow_exec` refuses, saying how to allow it; viewers and operators are refused; Ctrl-C
//! stops the remote command; every exec is audited with its command line and each host's
//! exit. A selector picks exactly the labelled hosts for exec and rollout, one that picks none
//! fails with exit 1, and a drained host is skipped (and said so) and its alerts carry
//! maintenance="true" in a real Alertmanager, across a coordinator restart.

use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_integration_tests::{
    Cluster, CoordinatorOpts, alive, am_alerts, app_release, app_service, bin, eventually, free_port, serial,
    start_alertmanager,
};
use rustix::process::{Pid, Signal, kill_process};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const RULES: &str = "groups:\n  - name: test\n    interval: 1s\n    rules:\n      - alert: AgentUp\n        expr: fleet_agent_up == 1\n        labels:\n          severity: info\n";

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_commands_where_allowed_and_selectors_skip_drained_hosts() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "gpu2", "pc2"]);
    c.pki.issue("operator", "val");
    c.pki.issue("operator", "opal");
    let (_am, am_port) = start_alertmanager(&c);
    eventually(Duration::from_secs(20), "alertmanager to answer", || async { am_alerts(am_port).await.map(|_| ()) })
        .await;
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("test.yml"), RULES).unwrap();
    let extra = format!(
        "[alerting]\nrule_files = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\nalertmanagers = [\"http://127.0.0.1:{am_port}\"]\n",
        rules.display()
    );
    let access = "[access.operators]\nops = \"admin\"\nopal = \"operator\"\n".to_string();
    c.start_coordinator(CoordinatorOpts { extra, access, ..Default::default() }).await;
    for (host, top) in [
        ("main-pc", "allow_exec = true\n[labels]\nrole = \"gpu\"\n"),
        ("gpu2", "allow_exec = true\n[labels]\nrole = \"gpu\"\n"),
        ("pc2", "[labels]\nrole = \"cpu\"\n"),
    ] {
        let app = app_service(&c.dir().join(host).join("app"), free_port(), &c.dir().join(host).join("conf"), "");
        c.start_agent_with(host, Duration::from_millis(300), &format!("{top}{app}"));
    }
    c.wait_online(&["main-pc", "gpu2", "pc2"], Duration::from_secs(15)).await;

    // Both streams, and the command's exit status.
    let out = c.fleetctl(&["exec", "main-pc", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let out = c.fleetctl(&["exec", "main-pc", "--", "sh", "-c", "echo $FLEET_AGENT; pwd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "main-pc\n/\n");

    // Off unless the agent allows it, and said how to allow it.
    let out = c.fleetctl(&["exec", "pc2", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("exec is off on pc2: set allow_exec = true"), "{}", stderr(&out));

    // Admins only.
    for (who, role) in [("val", "viewer"), ("opal", "operator")] {
        let out = c.fleetctl_as(who, &["exec", "main-pc", "--", "true"]);
        assert_eq!(out.status.code(), Some(3), "{who}: {}", stderr(&out));
        assert!(stderr(&out).contains("Exec needs the admin role") && stderr(&out).contains(role), "{}", stderr(&out));
    }

    // A timeout stops the whole process group.
    let out = c.fleetctl(&["exec", "--timeout", "1s", "main-pc", "--", "sh", "-c", "sleep 30 & wait"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out after 1s"), "{}", stderr(&out));

    // Ctrl-C in fleetctl stops the remote command within 2 s.
    let pid_file = c.dir().join("sleep.pid");
    let f = c.pki.files("ops");
    let mut fleetctl = Command::new(bin("fleetctl"))
        .args(["exec", "main-pc", "--", "sh", "-c", &format!("echo $$ > {}; exec sleep 600", pid_file.display())])
        .env("FLEET_ADDR", &c.addr)
        .env("FLEET_CA", &f.ca)
        .env("FLEET_CERT", &f.cert)
        .env("FLEET_KEY", &f.key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let remote: u32 = eventually(Duration::from_secs(10), "the remote sleep to start", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(alive(remote));
    kill_process(Pid::from_raw(fleetctl.id() as i32).unwrap(), Signal::INT).unwrap();
    let interrupted = std::time::Instant::now();
    let status = fleetctl.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    eventually(Duration::from_secs(2), "the remote sleep 600 to be killed", || async {
        (!alive(remote)).then_some(())
    })
    .await;
    assert!(interrupted.elapsed() <= Duration::from_secs(2));

    // A selector picks exactly the labelled hosts, each line prefixed with its host.
    let out = c.fleetctl(&["exec", "-l", "role=gpu", "--", "sh", "-c", "echo hello from $FLEET_AGENT"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lines: Vec<_> = stdout(&out).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(lines, ["gpu2: hello from gpu2", "main-pc: hello from main-pc"]);
    let out = c.fleetctl(&["exec", "-l", "role=tpu", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no host matches the selector role=tpu"), "{}", stderr(&out));
    let out = c.fleetctl(&["exec", "-l", "role in (gpu", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Every exec is audited with its command line, who, and each host's outcome.
    let audit = stdout(&c.fleetctl(&["audit", "-n", "100"]));
    assert!(audit.contains("main-pc/sh -c 'echo out; echo err >&2; exit 3'"), "{audit}");
    assert!(audit.contains("exited with status 3"), "{audit}");
    assert!(audit.contains("pc2/true") && audit.contains("refused"), "{audit}");
    assert!(audit.contains("stopped on request"), "{audit}");

    // Drained: skipped by selectors and rollouts (and said so), marked in its alerts.
    let out = c.fleetctl(&["hosts", "drain", "gpu2", "--reason", "disk swap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts = stdout(&c.fleetctl(&["hosts"]));
    assert!(hosts.lines().any(|l| l.starts_with("gpu2") && l.contains("drained")), "{hosts}");
    let (_, page) = c.http_get("/").await;
    assert!(page.contains("title=\"disk swap\">drained</span>"), "{page}");
    let out = c.fleetctl(&["exec", "-l", "role=gpu", "--", "sh", "-c", "echo hello from $FLEET_AGENT"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "main-pc: hello from main-pc\n");
    assert!(stderr(&out).contains("gpu2: skipped: drained (disk swap)"), "{}", stderr(&out));

    let artifact = c.dir().join("app-1.0.tar.gz");
    app_release(&artifact, "1.0", false);
    let out = c.fleetctl(&[
        "rollout",
        "start",
        "app",
        "--artifact",
        artifact.to_str().unwrap(),
        "--version",
        "1.0",
        "-l",
        "role=gpu",
        "--min-healthy-time",
        "1s",
        "--watch",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("skipped gpu2: drained (disk swap"), "{}", stderr(&out));
    let id = stdout(&out).lines().next().unwrap().to_string();
    let r: serde_json::Value =
        serde_json::from_slice(&c.fleetctl(&["rollout", "status", &id, "-o", "json"]).stdout).unwrap();
    let deployed: Vec<_> = r["hosts"].as_array().unwrap().iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(deployed, ["main-pc"], "{r:#}");
    assert!(r["skipped"][0].as_str().unwrap().starts_with("gpu2: drained (disk swap"), "{r:#}");
    c.wait_service("main-pc", "app", Duration::from_secs(10), "on 1.0", |s| s.version == "1.0").await;
    for host in ["gpu2", "pc2"] {
        let v = c.service(host, "app").await.map(|s| s.version).unwrap_or_default();
        assert_eq!(v, "", "{host} was not deployed");
    }
    // Naming a drained host is refused rather than skipped.
    let out = c.fleetctl(&[
        "rollout",
        "start",
        "app",
        "--artifact",
        artifact.to_str().unwrap(),
        "--version",
        "1.0",
        "--hosts",
        "gpu2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("gpu2 is drained (disk swap)"), "{}", stderr(&out));

    // The alert of each host is in Alertmanager; gpu2's (and only gpu2's) with the mark.
    let agent_up =
        |a: &serde_json::Value, host: &str| a["labels"]["alertname"] == "AgentUp" && a["labels"]["host"] == host;
    eventually(Duration::from_secs(15), "gpu2's alert to carry maintenance=\"true\"", || async {
        let alerts = am_alerts(am_port).await?;
        let marked = alerts.iter().any(|a| agent_up(a, "gpu2") && a["labels"]["maintenance"] == "true");
        let main_marked = alerts.iter().any(|a| agent_up(a, "main-pc") && a["labels"].get("maintenance").is_some());
        (marked && !main_marked).then_some(())
    })
    .await;

    // Persisted: still drained after a coordinator restart.
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["main-pc", "gpu2", "pc2"], Duration::from_secs(15)).await;
    let host: serde_json::Value = serde_json::from_slice(&c.fleetctl(&["host", "gpu2", "-o", "json"]).stdout).unwrap();
    assert_eq!(host["drained"]["reason"], "disk swap", "{host:#}");
    assert_eq!(host["drained"]["by"], "spiffe://fleet.local/operator/ops", "{host:#}");

    // Undrained: picked again, and its alerts lose the mark.
    let out = c.fleetctl(&["hosts", "undrain", "gpu2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.fleetctl(&["exec", "-l", "role=gpu", "--", "true"]);
    assert!(out.status.success() && !stderr(&out).contains("skipped"), "{}", stderr(&out));
    eventually(Duration::from_secs(15), "gpu2's marked alert to be resolved", || async {
        let alerts = am_alerts(am_port).await?;
        (!alerts.iter().any(|a| agent_up(a, "gpu2") && a["labels"]["maintenance"] == "true")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "gpu2's alert in fleet without the mark", || async {
        let out = c.fleetctl(&["alerts", "-o", "json"]);
        let alerts: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let gpu2: Vec<_> = alerts.as_array()?.iter().filter(|a| agent_up(a, "gpu2")).collect();
        (!gpu2.is_empty() && gpu2.iter().all(|a| a["labels"].get("maintenance").is_none())).then_some(())
    })
    .await;
    let audit = stdout(&c.fleetctl(&["audit", "-n", "200"]));
    assert!(audit.contains("drain") && audit.contains("disk swap") && audit.contains("undrain"), "{audit}");
}

//! Several coordinators on a real three-member etcd (docs/design.md §13): one leader at a
//! time, a new one within the lease after the leader is killed with no report lost, a paused
//! leader that wakes up leading nothing, calls to a follower run once by the leader, a
//! rollout the killed leader began finished by the next, alerts from every coordinator
//! notified once, and a cluster that keeps serving reads without etcd.

use std::time::{Duration, Instant};

use fleet_integration_tests::{
    Cluster, Coordinator, CoordinatorOpts, Etcd, am_alerts, app_release, app_service, assert_contiguous, eventually,
    free_port, get_body, serial, sh_service, start_alertmanager_with, webhook_receiver,
};
use rustix::process::Signal;

/// The lease the tests run with: short, so that failovers take seconds.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// Starts `n` coordinators of cluster "test" on `etcd`.
async fn start_coordinators(c: &Cluster, etcd: &Etcd, n: usize) -> Vec<Coordinator> {
    start_coordinators_with(c, etcd, n, "").await
}

/// Starts `n` coordinators of cluster "test" on `etcd`, `more` TOML in each config.
async fn start_coordinators_with(c: &Cluster, etcd: &Etcd, n: usize, more: &str) -> Vec<Coordinator> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(start_member(c, etcd, i, more).await);
    }
    out
}

/// Starts coordinator `i` of cluster "test" on `etcd`, `more` TOML in its config.
async fn start_member(c: &Cluster, etcd: &Etcd, i: usize, more: &str) -> Coordinator {
    let port = free_port();
    let extra = format!(
        "{more}[cluster]\nname = \"test\"\nadvertise = \"127.0.0.1:{port}\"\netcd = {}\nlease_ttl = \"{}s\"\n",
        etcd.toml_urls(),
        LEASE_TTL.as_secs()
    );
    let opts = CoordinatorOpts { grpc_port: port, extra, ..Default::default() };
    c.spawn_coordinator(&format!("coordinator{i}"), opts).await
}

/// `fleetctl status -o json` against `m`.
fn status(c: &Cluster, m: &Coordinator) -> serde_json::Value {
    let out = c.fleetctl_env(&["status", "-o", "json"], &[("FLEET_ADDR", &m.addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status -o json is JSON")
}

/// The advertise address of a coordinator (its gRPC address without the scheme).
fn advertise(m: &Coordinator) -> String {
    m.addr.trim_start_matches("https://").to_string()
}

/// Waits until every coordinator of `live` agrees on one leader among them; returns its index.
async fn agreed_leader(c: &Cluster, members: &[Coordinator], live: &[usize], deadline: Duration) -> usize {
    eventually(deadline, "the coordinators to agree on a leader", || {
        let seen: Vec<(String, bool)> = live
            .iter()
            .map(|&i| {
                let s = status(c, &members[i]);
                (s["cluster"]["leader"].as_str().unwrap_or_default().to_string(), s["cluster"]["is_leader"] == true)
            })
            .collect();
        async move {
            let leader = &seen[0].0;
            if leader.is_empty() || seen.iter().any(|(l, _)| l != leader) {
                return None;
            }
            let at = live.iter().copied().find(|&i| advertise(&members[i]) == *leader)?;
            // Exactly the one named says it leads.
            let leads: Vec<usize> = live.iter().zip(&seen).filter(|(_, (_, is))| *is).map(|(i, _)| *i).collect();
            (leads == [at]).then_some(at)
        }
    })
    .await
}

async fn leader_metric(m: &Coordinator) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", m.http)).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with("fleet_coordinator_leader ")).expect("fleet_coordinator_leader");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_another_within_the_lease_and_no_report_is_lost() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    let etcd = Etcd::start(&c, 3).await;
    let mut members = start_coordinators(&c, &etcd, 3).await;
    // Each agent keeps a session to every coordinator.
    c.coordinators = members.iter().map(|m| m.addr.clone()).collect();
    c.start_agent_with(
        "main-pc",
        Duration::from_millis(200),
        &sh_service("sleeper", "exec sleep 1000", "start_secs = \"100ms\""),
    );
    c.start_agent("pc2", Duration::from_millis(200));
    for m in &members {
        c.addr = m.addr.clone();
        c.wait_online(&["main-pc", "pc2"], Duration::from_secs(15)).await;
    }
    let leader = agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(20)).await;
    for (i, m) in members.iter().enumerate() {
        assert_eq!(leader_metric(m).await, if i == leader { 1.0 } else { 0.0 }, "fleet_coordinator_leader of {i}");
    }
    let s = eventually(Duration::from_secs(5), "a follower to see the three members", || {
        let s = status(&c, &members[(leader + 1) % 3]);
        async move { (s["cluster"]["members"].as_array()?.len() == 3).then_some(s) }
    })
    .await;
    assert_eq!(s["cluster"]["state"], "follower", "{s}");
    assert_eq!(s["cluster"]["etcd"]["up"], 3, "{s}");
    let text = c.fleetctl_env(&["status"], &[("FLEET_ADDR", &members[leader].addr)]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("this coordinator leads"), "{text}");
    assert!(text.contains("etcd         3 of 3 members answer"), "{text}");

    // A restart sent to a follower is passed to the leader, which runs it once.
    let follower = &members[(leader + 1) % 3];
    c.addr = members[leader].addr.clone();
    let before =
        c.wait_service("main-pc", "sleeper", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let out = c.fleetctl_env(&["restart", "main-pc", "sleeper"], &[("FLEET_ADDR", &follower.addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = c
        .wait_service("main-pc", "sleeper", Duration::from_secs(10), "restarted", |s| {
            s.pid != before.pid && s.state == "running"
        })
        .await;
    assert_eq!(after.restarts, before.restarts + 1, "restarted once");
    let audit = |m: &Coordinator| {
        let out = c.fleetctl_env(&["audit"], &[("FLEET_ADDR", &m.addr)]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|l| l.contains("restart") && l.contains("main-pc/sleeper"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let on_leader = eventually(Duration::from_secs(5), "the restart's outcome in the audit", || {
        let a = audit(&members[leader]);
        async move { (a.len() >= 2).then_some(a) }
    })
    .await;
    let count = |what: &str| on_leader.iter().filter(|l| l.contains(&format!("  {what}"))).count();
    assert_eq!((count("requested"), count("succeeded")), (1, 1), "the leader ran the restart once: {on_leader:?}");
    assert!(on_leader.iter().all(|l| l.contains("  ops  ")), "as the operator who asked: {on_leader:?}");
    // The cluster's audit: the follower shows the same entries.
    assert_eq!(audit(follower), on_leader, "every coordinator shows the whole cluster's audit");

    // A drain sent to a follower: every coordinator, and so the next leader, skips the host.
    let out = c.fleetctl_env(&["hosts", "drain", "pc2", "--reason", "disk swap"], &[("FLEET_ADDR", &follower.addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // kill -9 the leader: another leads within the lease and a few seconds.
    let killed = Instant::now();
    let killed_ms = fleet_common::now_ms();
    members[leader].proc.kill9();
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let next = agreed_leader(&c, &members, &live, LEASE_TTL + Duration::from_secs(5)).await;
    let took = killed.elapsed();
    assert_ne!(next, leader);
    assert!(took < LEASE_TTL + Duration::from_secs(5), "a new leader after {took:?}");
    let s = status(&c, &members[live.iter().copied().find(|&i| i != next).unwrap()]);
    assert_eq!(s["cluster"]["leader"], advertise(&members[next]), "{s}");
    // The dead member's lease runs out with it: two members are left.
    eventually(Duration::from_secs(10), "the killed member to leave", || {
        let n = status(&c, &members[next])["cluster"]["members"].as_array().unwrap().len();
        async move { (n == 2).then_some(()) }
    })
    .await;

    c.addr = members[next].addr.clone();
    eventually(Duration::from_secs(5), "the new leader to hold the drain mark", || {
        let out = c.fleetctl(&["hosts", "-o", "json"]);
        let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        async move {
            let hosts = v?;
            let pc2 = hosts.as_array()?.iter().find(|h| h["name"] == "pc2")?.clone();
            (pc2["drained"]["reason"] == "disk swap").then_some(())
        }
    })
    .await;

    // The agents went on reporting to the survivors: each holds every report the agents
    // took, before, during and after the failover, with no gap.
    let after = killed_ms + took.as_millis() as i64 + 1000;
    let taken_after_kill =
        |reports: &[fleet_proto::v1::StoredReport]| reports.iter().filter(|r| r.timestamp_ms > after).count();
    for &i in &live {
        c.addr = members[i].addr.clone();
        for host in ["main-pc", "pc2"] {
            let reports = eventually(Duration::from_secs(10), "reports after the failover", || {
                let r = c.reports(host);
                async move {
                    let r = r.await;
                    (taken_after_kill(&r) > 0).then_some(r)
                }
            })
            .await;
            let per_boot = assert_contiguous(&reports);
            assert_eq!(per_boot.len(), 1, "{host} on coordinator {i}: one agent run");
            let n = *per_boot.values().next().unwrap();
            assert!(n as u128 >= took.as_millis() / 200, "{host} on coordinator {i}: {n} reports");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_wakes_up_a_follower() {
    let _g = serial().await;
    let c = Cluster::new(&["main-pc"]);
    let etcd = Etcd::start(&c, 3).await;
    let members = start_coordinators(&c, &etcd, 3).await;
    let leader = agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(20)).await;
    members[leader].proc.signal(Signal::STOP);
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let next = agreed_leader(&c, &members, &live, LEASE_TTL + Duration::from_secs(5)).await;
    // Paused for longer than its lease: when it runs again it leads nothing, at once.
    members[leader].proc.signal(Signal::CONT);
    assert_eq!(leader_metric(&members[leader]).await, 0.0, "the woken ex-leader says it does not lead");
    // And it rejoins as a follower of the new leader.
    let all = agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(15)).await;
    assert_eq!(all, next, "the new leader stays the leader");
    assert_eq!(status(&c, &members[leader])["cluster"]["state"], "follower");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_etcd_reads_go_on_and_leader_calls_fail_with_no_quorum() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    let mut etcd = Etcd::start(&c, 3).await;
    let members = start_coordinators(&c, &etcd, 2).await;
    let leader = agreed_leader(&c, &members, &[0, 1], Duration::from_secs(20)).await;

    // One etcd member down: nothing visible changes.
    etcd.kill9(0);
    tokio::time::sleep(LEASE_TTL * 2).await; // long enough for a lease to run out if it would
    assert_eq!(agreed_leader(&c, &members, &[0, 1], Duration::from_secs(5)).await, leader);

    // Every member down: reads are served; what only the leader does fails at once, saying why.
    etcd.kill9(1);
    etcd.kill9(2);
    c.addr = members[leader].addr.clone();
    c.http = members[leader].http.clone();
    eventually(LEASE_TTL + Duration::from_secs(10), "the leader to notice etcd is gone", || {
        let s = status(&c, &members[leader]);
        async move { (s["cluster"]["state"] == "no_quorum").then_some(()) }
    })
    .await;
    let t = Instant::now();
    let out = c.fleetctl(&["hosts", "drain", "main-pc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quorum"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "refused at once, not after a timeout");
    let out = c.fleetctl(&["hosts"]);
    assert!(out.status.success(), "reads go on: {}", String::from_utf8_lossy(&out.stderr));
    let (code, body) = c.http_get("/health").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(health["status"], "degraded", "{body}");
    assert_eq!(health["parts"]["cluster"]["status"], "no_quorum", "{body}");

    // A coordinator that starts while etcd is away says so and serves what it can.
    let mut members = members;
    members[leader].proc.kill9();
    let name = format!("coordinator{leader}");
    members[leader] = c.spawn_coordinator(&name, members[leader].opts.clone()).await;
    let s = status(&c, &members[leader]);
    assert_eq!(s["cluster"]["state"], "no_quorum", "{s}");
    assert!(c.fleetctl(&["hosts"]).status.success(), "reads after a start without etcd");
    let log = std::fs::read_to_string(c.dir().join(format!("logs/{name}.log"))).unwrap();
    assert!(log.contains("etcd cannot be reached"), "{log}");

    // etcd back: a leader again.
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_healthy(Duration::from_secs(30)).await;
    agreed_leader(&c, &members, &[0, 1], LEASE_TTL + Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_coordinator_alerts_and_alertmanager_notifies_once() {
    let _g = serial().await;
    let c = Cluster::new(&["main-pc"]);
    let (hook_port, hooked) = webhook_receiver().await;
    let (_am, am_port) = start_alertmanager_with(
        &c,
        &format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1h\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/hook\n"
        ),
    );
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    // Always firing, and the default FleetCoordinatorDown's expression without its minute.
    std::fs::write(
        rules.join("ha.yml"),
        "groups:\n  - name: ha\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n      - alert: CoordinatorGone\n        expr: fleet_coordinator_cluster_member_up == 0\n",
    )
    .unwrap();
    let etcd = Etcd::start(&c, 3).await;
    let alerting = format!(
        "[alerting]\nrule_files = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\nalertmanagers = [\"http://127.0.0.1:{am_port}\"]\n",
        rules.display()
    );
    let mut members = start_coordinators_with(&c, &etcd, 3, &alerting).await;
    agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(20)).await;
    let notified = |name: &str| hooked.lock().unwrap().iter().filter(|b| b["groupLabels"]["alertname"] == name).count();
    eventually(Duration::from_secs(15), "Always at the webhook", || async { (notified("Always") > 0).then_some(()) })
        .await;
    // Every coordinator sends it (each evaluates the rules) ...
    for m in &members {
        let text = reqwest::get(format!("http://{}/metrics", m.http)).await.unwrap().text().await.unwrap();
        let sent = text
            .lines()
            .find(|l| l.starts_with("fleet_coordinator_notifications_sent_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(sent >= 1.0, "coordinator {} sent nothing:\n{text}", m.addr);
    }
    // ... and Alertmanager, seeing the same labels, holds one alert and notifies once.
    let alerts = am_alerts(am_port).await.unwrap();
    let always: Vec<_> = alerts.iter().filter(|a| a["labels"]["alertname"] == "Always").collect();
    assert_eq!(always.len(), 1, "{alerts:?}");
    tokio::time::sleep(Duration::from_secs(3)).await; // several more evaluations and sends
    assert_eq!(notified("Always"), 1, "one notification for three coordinators' alerts");

    // A coordinator lost: the others fire CoordinatorGone for it, one notification.
    let gone = advertise(&members[2]);
    members[2].proc.kill9();
    let alert = eventually(LEASE_TTL + Duration::from_secs(15), "CoordinatorGone in Alertmanager", || async {
        let alerts = am_alerts(am_port).await?;
        alerts.into_iter().find(|a| a["labels"]["alertname"] == "CoordinatorGone")
    })
    .await;
    assert_eq!(alert["labels"]["member"], gone.as_str(), "{alert}");
    eventually(Duration::from_secs(10), "CoordinatorGone at the webhook", || async {
        (notified("CoordinatorGone") == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_leader_finishes_a_rollout_the_killed_leader_began() {
    leader_lost_mid_rollout(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_leader_finishes_a_rollout_whose_leader_was_killed_as_it_started() {
    leader_lost(When::AtStart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_mid_rollout_changes_nothing_when_it_wakes() {
    leader_lost_mid_rollout(true).await;
}

/// A rollout of 2.0 to main-pc and pc2, one at a time, whose leader is lost while main-pc
/// deploys: killed with SIGKILL, or (`pause`) stopped with SIGSTOP for longer than its lease
/// and woken once the next leader has finished the rollout.
/// When the leader is lost in [`leader_lost`].
#[derive(Clone, Copy, PartialEq)]
enum When {
    /// Killed (or, `pause`, stopped) while the first host deploys.
    MidRollout { pause: bool },
    /// Killed as soon as the rollout's start returned: the first rollout of the test was
    /// started through a follower (the artifact uploaded there), this one through the leader
    /// (uploaded there only).
    AtStart,
}

async fn leader_lost_mid_rollout(pause: bool) {
    leader_lost(When::MidRollout { pause }).await;
}

async fn leader_lost(when: When) {
    let pause = when == When::MidRollout { pause: true };
    let _g = serial().await;
    let hosts = ["main-pc", "pc2"];
    let mut c = Cluster::new(&hosts);
    let etcd = Etcd::start(&c, 3).await;
    let mut members = start_coordinators(&c, &etcd, 3).await;
    let leader = agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(20)).await;
    eventually(Duration::from_secs(10), "the leader to see the three members", || {
        let n = status(&c, &members[leader])["cluster"]["members"].as_array().map_or(0, Vec::len);
        async move { (n == 3).then_some(()) }
    })
    .await;
    c.coordinators = members.iter().map(|m| m.addr.clone()).collect();
    c.addr = members[leader].addr.clone();
    let mut ports = Vec::new();
    for h in hosts {
        let port = free_port();
        let svc = app_service(&c.dir().join(h).join("app"), port, &c.dir().join(h).join("conf"), "");
        c.start_agent_with(h, Duration::from_millis(500), &svc);
        ports.push(port);
    }
    for m in &members {
        c.addr = m.addr.clone();
        c.wait_online(&hosts, Duration::from_secs(15)).await;
    }
    c.addr = members[leader].addr.clone();
    let release = |v: &str| {
        let p = c.dir().join(format!("app-{v}.tar.gz"));
        app_release(&p, v, false);
        p
    };
    let (v1, v2) = (release("1.0"), release("2.0"));
    let start = |addr: &str, artifact: &std::path::Path, version: &str, min_healthy: &str, extra: &[&str]| {
        let mut args = vec![
            "rollout",
            "start",
            "app",
            "--artifact",
            artifact.to_str().unwrap(),
            "--version",
            version,
            "--min-healthy-time",
            min_healthy,
            "--healthy-deadline",
            "20s",
        ];
        args.extend_from_slice(extra);
        c.fleetctl_env(&args, &[("FLEET_ADDR", addr)])
    };
    // At start, through a follower: it keeps the upload and passes the start on to the leader.
    let first = if when == When::AtStart { (leader + 1) % 3 } else { leader };
    let out = start(&members[first].addr, &v1, "1.0", "1s", &["--watch", "--max-parallel", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 2.0 one host at a time, uploaded to the leader only.
    let out = start(&members[leader].addr, &v2, "2.0", "3s", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if when == When::AtStart {
        // Lost at once: the first deploy waited for a copy of the artifact on a follower,
        // so the next leader can go on.
        members[leader].proc.kill9();
    }
    if let When::MidRollout { pause } = when {
        lose_mid_rollout(&c, &mut members, leader, &id, &v2, pause).await;
    }
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let next = agreed_leader(&c, &members, &live, LEASE_TTL + Duration::from_secs(5)).await;
    c.addr = members[next].addr.clone();
    let out = c.fleetctl(&["rollout", "status", &id, "--watch"]);
    assert!(
        out.status.success(),
        "the new leader finishes the rollout:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (h, port) in hosts.iter().zip(&ports) {
        assert_eq!(get_body(*port).await.as_deref(), Some("hello from app 2.0\n"), "{h}");
        let log = std::fs::read_to_string(c.dir().join(h).join("logs/app.log")).unwrap();
        assert_eq!(log.matches("app 2.0 listening").count(), 1, "{h} deployed 2.0 more than once:\n{log}");
    }
    // A follower shows the same outcome (it reads the rollout from etcd).
    let other = live.iter().copied().find(|&i| i != next).unwrap();
    eventually(Duration::from_secs(10), "the follower to show the rollout succeeded", || {
        let out = c.fleetctl_env(&["rollout", "status", &id, "-o", "json"], &[("FLEET_ADDR", &members[other].addr)]);
        let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        async move { v.filter(|v| v["state"] == "succeeded").map(|_| ()) }
    })
    .await;
    // The cluster's audit, read from any coordinator, has the start (written by the killed
    // leader) and the end (by the next), each once.
    for i in &live {
        let out = c.fleetctl_env(&["audit", "-o", "json"], &[("FLEET_ADDR", &members[*i].addr)]);
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("audit -o json");
        let of = |action: &str, outcome: &str| {
            entries
                .iter()
                .filter(|e| e["command_id"] == id.as_str() && e["action"] == action && e["outcome"] == outcome)
                .count()
        };
        assert_eq!((of("rollout start", "requested"), of("rollout", "succeeded")), (1, 1), "{entries:?}");
    }
    if !pause {
        return;
    }
    // The paused leader wakes up in the middle of what it was doing: it leads nothing, what
    // it tries to write is refused (its term is over), it sends no command, and it comes to
    // show what the new leader did.
    members[leader].proc.signal(Signal::CONT);
    eventually(Duration::from_secs(15), "the woken ex-leader to show the rollout succeeded", || {
        let out = c.fleetctl_env(&["rollout", "status", &id, "-o", "json"], &[("FLEET_ADDR", &members[leader].addr)]);
        let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        async move { v.filter(|v| v["state"] == "succeeded").map(|_| ()) }
    })
    .await;
    assert_eq!(status(&c, &members[leader])["cluster"]["state"], "follower");
    let r = serde_json::from_slice::<serde_json::Value>(&c.fleetctl(&["rollout", "status", &id, "-o", "json"]).stdout)
        .unwrap();
    assert_eq!(r["state"], "succeeded", "the new leader's record stands: {r}");
    for (h, port) in hosts.iter().zip(&ports) {
        assert_eq!(get_body(*port).await.as_deref(), Some("hello from app 2.0\n"), "{h} still on 2.0");
        let log = std::fs::read_to_string(c.dir().join(h).join("logs/app.log")).unwrap();
        assert_eq!(log.matches("app 2.0 listening").count(), 1, "{h} was not deployed again:\n{log}");
        assert_eq!(log.matches("app 1.0 listening").count(), 1, "{h} was not moved back to 1.0:\n{log}");
    }
}

/// Waits until the first host deploys `v2` and every follower holds its artifact, then kills
/// (or, `pause`, stops) the leader.
async fn lose_mid_rollout(
    c: &Cluster,
    members: &mut [Coordinator],
    leader: usize,
    id: &str,
    v2: &std::path::Path,
    pause: bool,
) {
    let host_state = |r: &serde_json::Value, host: &str| {
        r["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    eventually(Duration::from_secs(30), "main-pc deploying 2.0", || {
        let out = c.fleetctl(&["rollout", "status", id, "-o", "json"]);
        let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        async move { v.filter(|v| host_state(v, "main-pc") == "deploying").map(|_| ()) }
    })
    .await;

    // The followers fetch the artifact of an unfinished rollout from the leader it was
    // uploaded to, within seconds.
    let sha = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(v2).unwrap());
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    for i in (0..3).filter(|&i| i != leader) {
        let path = c.dir().join(format!("coordinator{i}/artifacts/{sha}"));
        eventually(Duration::from_secs(10), "a follower to hold the rollout's artifact", || {
            let there = path.exists();
            async move { there.then_some(()) }
        })
        .await;
    }
    // Lose the leader mid-rollout: the next leader takes it up from etcd and finishes it.
    if pause {
        members[leader].proc.signal(Signal::STOP);
    } else {
        members[leader].proc.kill9();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_knows_one_coordinator_attaches_to_every_member() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    let etcd = Etcd::start(&c, 3).await;
    let mut members = start_coordinators(&c, &etcd, 3).await;
    // The config names one member, by another name than the one the cluster advertises.
    c.coordinators = vec![members[0].addr.replace("127.0.0.1", "localhost")];
    c.start_agent("main-pc", Duration::from_millis(200));
    for m in &members {
        c.addr = m.addr.clone();
        c.wait_online(&["main-pc"], Duration::from_secs(20)).await;
    }
    let file = c.dir().join("main-pc").join("coordinators.json");
    let learned = || {
        let path = &file;
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("coordinators.json")).unwrap();
        v["learned"].as_object().unwrap().keys().cloned().collect::<Vec<_>>()
    };
    let mut others = vec![members[1].addr.clone(), members[2].addr.clone()];
    others.sort();
    // The two others are learned; the configured one is not attached to twice.
    assert_eq!(learned(), others);
    let log = std::fs::read_to_string(c.dir().join("logs/main-pc.log")).unwrap();
    assert_eq!(log.matches("learned a coordinator of the cluster").count(), 2, "{log}");
    assert!(!log.contains("replaced by a newer session"), "{log}");

    // A learned member holds the reports from when it was learned on (the earlier ones had
    // left the buffer once the configured coordinator stored them).
    c.addr = members[0].addr.clone();
    let first = c.reports("main-pc").await[0].id.unwrap().boot_id;

    // The configured coordinator's machine is lost and the agent restarts: it attaches to
    // the members it learned, and each holds the whole new run's reports.
    members[0].proc.kill9();
    let agent = c.agent("main-pc");
    agent.signal(Signal::TERM);
    agent.wait_exit(Duration::from_secs(20));
    c.start_agent("main-pc", Duration::from_millis(200));
    for m in &members[1..] {
        c.addr = m.addr.clone();
        eventually(Duration::from_secs(20), "the restarted agent's reports on a learned member", || {
            let r = c.reports("main-pc");
            async move {
                let new_run: Vec<_> = r.await.into_iter().filter(|r| r.id.unwrap().boot_id != first).collect();
                (assert_contiguous(&new_run).len() == 1).then_some(())
            }
        })
        .await;
    }
    assert_eq!(learned(), others, "still remembered while the configured coordinator is down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_removed_through_a_follower_is_forgotten_by_every_coordinator() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    let etcd = Etcd::start(&c, 3).await;
    let mut members = start_coordinators(&c, &etcd, 3).await;
    c.coordinators = members.iter().map(|m| m.addr.clone()).collect();
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    for m in &members {
        c.addr = m.addr.clone();
        c.wait_online(&["main-pc", "pc2"], Duration::from_secs(20)).await;
    }
    let leader = agreed_leader(&c, &members, &[0, 1, 2], Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let out = c.fleetctl_env(
        &["hosts", "remove", "pc2", "--reason", "decommissioned"],
        &[("FLEET_ADDR", &members[follower].addr)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = |c: &Cluster, m: &Coordinator| {
        let out = c.fleetctl_env(&["hosts", "-o", "json"], &[("FLEET_ADDR", &m.addr)]);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter().map(|h| h["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    for m in &members {
        eventually(Duration::from_secs(15), "every coordinator to forget pc2", || {
            let n = names(&c, m);
            async move { (n == ["main-pc"]).then_some(()) }
        })
        .await;
    }
    // Still forgotten after a follower restarts.
    let opts = members[follower].opts.clone();
    members[follower].proc.kill9();
    members[follower] = c.spawn_coordinator(&format!("coordinator{follower}"), opts).await;
    c.addr = members[follower].addr.clone();
    c.wait_online(&["main-pc"], Duration::from_secs(20)).await;
    assert_eq!(names(&c, &members[follower]), ["main-pc"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_that_joins_takes_up_the_clusters_for_timers() {
    let _g = serial().await;
    let c = Cluster::new(&[]);
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("ha.yml"),
        "groups:\n  - name: ha\n    interval: 1s\n    rules:\n      - alert: Waiting\n        expr: vector(1)\n        for: 1h\n",
    )
    .unwrap();
    let etcd = Etcd::start(&c, 3).await;
    let alerting = format!("[alerting]\nrule_files = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\n", rules.display());
    let mut members = start_coordinators_with(&c, &etcd, 2, &alerting).await;
    let leader = agreed_leader(&c, &members, &[0, 1], Duration::from_secs(20)).await;
    let pending_since = |m: &Coordinator| {
        let url = format!("http://{}/api/v1/alerts", m.http);
        async move {
            let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            let a = v["data"]["alerts"].as_array()?.iter().find(|a| a["labels"]["alertname"] == "Waiting")?.clone();
            (a["state"] == "pending").then(|| a["activeAt"].as_str().unwrap().to_string())
        }
    };
    let since =
        eventually(Duration::from_secs(10), "Waiting pending on the leader", || pending_since(&members[leader])).await;
    // A third coordinator, with nothing of its own yet, joins: its Waiting has been pending
    // since the leader's, not since its own first evaluation.
    members.push(start_member(&c, &etcd, 2, &alerting).await);
    let joined =
        eventually(Duration::from_secs(10), "Waiting pending on the new coordinator", || pending_since(&members[2]))
            .await;
    assert_eq!(joined, since, "the for timer the cluster started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_use_token_enrolls_one_machine_across_coordinators() {
    let _g = serial().await;
    let c = Cluster::new(&[]);
    let etcd = Etcd::start(&c, 3).await;
    let members = start_coordinators_with(&c, &etcd, 2, &c.enrollment_toml("30d")).await;
    agreed_leader(&c, &members, &[0, 1], Duration::from_secs(20)).await;
    let out = c.fleetctl_env(&["tokens", "create", "-o", "json"], &[("FLEET_ADDR", &members[0].addr)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (token, pin) = (v["token"].as_str().unwrap().to_string(), v["ca_pin"].as_str().unwrap().to_string());
    let id = token.split('.').next().unwrap().to_string();
    // Both coordinators know the token ...
    for m in &members {
        eventually(Duration::from_secs(10), "every coordinator to know the token", || {
            let out = c.fleetctl_env(&["tokens", "list"], &[("FLEET_ADDR", &m.addr)]);
            let listed = String::from_utf8_lossy(&out.stdout).contains(&id);
            async move { listed.then_some(()) }
        })
        .await;
    }
    // ... and two machines present it at the same moment, one to each: one is enrolled.
    let enroll = |m: &Coordinator, name: &str| {
        std::process::Command::new(fleet_integration_tests::bin("fleet-agent"))
            .args(["enroll", "--coordinator", &m.addr, "--token", &token, "--ca-pin", &pin, "--name", name])
            .args(["--data-dir", c.dir().join(name).to_str().unwrap(), "--config", "/nonexistent/agent.toml"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (enroll(&members[0], "pc3"), enroll(&members[1], "pc4"));
    for p in [&mut a, &mut b] {
        eventually(Duration::from_secs(30), "both enrollments to end", || {
            let done = p.try_wait().unwrap().is_some();
            async move { done.then_some(()) }
        })
        .await;
    }
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    let said = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(ok, 1, "one enrollment for a single-use token:\n{}\n{}", said(&a), said(&b));
    let refused = if a.status.success() { &b } else { &a };
    assert!(said(refused).contains("already used"), "{}", said(refused));
}

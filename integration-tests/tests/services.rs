//! Service supervision end to end, with real processes: crash restarts, fatal starts, health
//! checks, operator commands (at most once per id), stop timeouts, and the agent's own stop
//! and crash.

use std::time::{Duration, Instant};

use fleet_integration_tests::{
    Cluster, CoordinatorOpts, alive, eventually, free_port, parse_metrics, promtool_check, serial, sh_service,
    web_service,
};
use fleet_proto::v1::{CommandState, RunServiceCommandRequest, ServiceAction};
use rustix::process::{Pid, Signal, kill_process};

fn kill9(pid: u32) {
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_service_runs_again_within_a_second() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent_with(
        "pc2",
        Duration::from_secs(1),
        &sh_service("sleeper", "echo started; exec sleep 1000", "start_secs = \"100ms\""),
    );
    let before = c.wait_service("pc2", "sleeper", Duration::from_secs(10), "running", |s| s.state == "running").await;

    kill9(before.pid);
    // The coordinator hears of it at the next report; the test waits generously for that,
    // and measures the restart itself by the agent's own log.
    let after = c
        .wait_service("pc2", "sleeper", Duration::from_secs(10), "a new process", |s| s.pid != 0 && s.pid != before.pid)
        .await;
    assert!(alive(after.pid));
    assert_eq!(after.restarts, before.restarts + 1);
    let log = std::fs::read_to_string(c.dir().join("pc2/logs/sleeper.log")).unwrap();
    assert!(log.contains("was killed by signal 9 (KILL)"), "{log}");
    assert!(log.contains("restarting in 100ms"), "{log}");
    let died = log.find("was killed by signal 9").unwrap();
    let (exit, start) = (
        fleet_integration_tests::logged_at(&log, died.saturating_sub(64), "was killed by signal 9").unwrap(),
        fleet_integration_tests::logged_at(&log, died, "started (pid").unwrap(),
    );
    assert!(start - exit < 1000, "running again {} ms after it was killed", start - exit);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_fails_at_start_is_fatal_until_started() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let svc = sh_service("broken", "echo 'cannot bind 0.0.0.0:3001: address in use' >&2; exit 3", "start_retries = 3");
    c.start_agent_with("pc2", Duration::from_secs(1), &svc);
    let s = c.wait_service("pc2", "broken", Duration::from_secs(10), "fatal", |s| s.state == "fatal").await;
    assert!(s.message.contains("exited with status 3 during start 3 times in a row"), "{}", s.message);

    // It stays down: no further start for well past the longest backoff it had reached.
    let log_path = c.dir().join("pc2/logs/broken.log");
    let starts = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().matches("started (pid").count();
    assert_eq!(starts(&log_path), 3);
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        assert_eq!(c.service("pc2", "broken").await.unwrap().state, "fatal");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(starts(&log_path), 3, "a fatal service must not be restarted by itself");

    // An operator's start tries again, and says why it failed.
    let out = c.fleetctl(&["start", "pc2", "broken"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("broken on pc2 exited with status 3 during start; last log lines:"), "{err}");
    assert!(err.contains("stderr: cannot bind 0.0.0.0:3001: address in use"), "{err}");
    assert!(starts(&log_path) > 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_services_are_restarted_and_hanging_checks_are_cut() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let health = c.dir().join("web.health");
    let svc = web_service("web", free_port(), &health, "interval = \"300ms\"\ntimeout = \"200ms\"\nretries = 2");
    c.start_agent_with("pc2", Duration::from_secs(1), &svc);
    let s = c.wait_service("pc2", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;
    assert_eq!(s.restarts, 0);

    std::fs::write(&health, "fail").unwrap();
    c.wait_service("pc2", "web", Duration::from_secs(5), "restarted for failing health", |s| s.restarts >= 1).await;
    let log_path = c.dir().join("pc2/logs/web.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("health check failed 2 times in a row: GET http://127.0.0.1:"), "{log}");
    assert!(log.contains("/health: HTTP 503; restarting"), "{log}");

    std::fs::remove_file(&health).unwrap();
    let s = c
        .wait_service("pc2", "web", Duration::from_secs(40), "healthy again", |s| s.healthy && s.state == "running")
        .await;

    // A check that hangs is cut by its timeout and counts as a failure.
    std::fs::write(&health, "hang").unwrap();
    c.wait_service("pc2", "web", Duration::from_secs(5), "restarted for a hanging check", |x| x.restarts > s.restarts)
        .await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("no answer within 200ms"), "{log}");
    std::fs::remove_file(&health).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_restart_stop_and_start_services_at_most_once_per_command() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2", "main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let health = c.dir().join("web.health");
    let svc = web_service("web", free_port(), &health, "interval = \"300ms\"\ntimeout = \"1s\"");
    c.start_agent_with("pc2", Duration::from_secs(1), &svc);
    c.start_agent_with(
        "main-pc",
        Duration::from_secs(1),
        &web_service("web", free_port(), &c.dir().join("m.health"), "interval = \"300ms\""),
    );
    let before = c.wait_service("pc2", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;
    c.wait_service("main-pc", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;

    // restart: a new process, healthy when fleetctl returns.
    let out = c.fleetctl(&["restart", "pc2", "web", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["ok"].as_bool(), r["healthy"].as_bool(), r["state"].as_str()),
        (Some(true), Some(true), Some("running")),
        "{r}"
    );
    let new_pid = r["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, before.pid);
    assert!(!alive(before.pid) && alive(new_pid));

    // stop: stopped, and it stays stopped.
    let out = c.fleetctl(&["stop", "pc2", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!alive(new_pid));
    let log_path = c.dir().join("pc2/logs/web.log");
    let starts = || std::fs::read_to_string(&log_path).unwrap().matches("started (pid").count();
    let n = starts();
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        let s = c.service("pc2", "web").await.unwrap();
        assert_eq!(s.state, "stopped", "{s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(starts(), n, "a stopped service must not be restarted by itself");
    assert!(c.service("pc2", "web").await.unwrap().message.contains("stopped by spiffe://fleet.local/operator/ops"));

    // start: back, running and healthy.
    let out = c.fleetctl(&["start", "pc2", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started web on pc2: web is running (pid"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The same command id twice acts once, also after the coordinator forgot it.
    let restarts = c
        .wait_service("pc2", "web", Duration::from_secs(5), "reported running", |s| s.state == "running")
        .await
        .restarts;
    let req = || RunServiceCommandRequest {
        host: "pc2".into(),
        service: "web".into(),
        action: ServiceAction::Restart as i32,
        timeout_ms: 30_000,
        request_id: "retry-safe-1".into(),
    };
    let first = c.control().await.run_service_command(req()).await.unwrap().into_inner();
    assert_eq!(first.state, CommandState::Succeeded as i32, "{}", first.message);
    let pid = first.service.as_ref().unwrap().pid;
    let second = c.control().await.run_service_command(req()).await.unwrap().into_inner();
    assert_eq!(second.state, CommandState::Succeeded as i32);
    c.coordinator.as_mut().unwrap().kill9();
    let opts = c.opts.clone();
    c.start_coordinator(opts).await;
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let third = c.control().await.run_service_command(req()).await.unwrap().into_inner();
    assert_eq!(third.state, CommandState::Succeeded as i32, "{}", third.message);
    let s = c.wait_service("pc2", "web", Duration::from_secs(5), "reported", |s| s.state == "running").await;
    assert_eq!(s.pid, pid, "a repeated command id restarted the service again");
    assert_eq!(s.restarts, restarts + 1);

    // Unknown and offline hosts fail at once.
    let out = c.fleetctl(&["restart", "nosuch", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no host named \"nosuch\""));
    c.agent("main-pc").terminate(Duration::from_secs(15));
    eventually(Duration::from_secs(5), "main-pc offline", || async {
        (c.online("main-pc").await == Some(false)).then_some(())
    })
    .await;
    let started = Instant::now();
    let out = c.fleetctl(&["restart", "main-pc", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("main-pc is offline"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Everything is in the audit log, with who did it.
    let out = c.fleetctl(&["audit", "-n", "50", "-o", "json"]);
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
                e["who"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (action, outcome) in
        [("restart", "requested"), ("restart", "succeeded"), ("stop", "succeeded"), ("start", "succeeded")]
    {
        assert!(
            rows.iter().any(|(a, o, w)| a == action && o == outcome && w == "spiffe://fleet.local/operator/ops"),
            "no {action}/{outcome} in {rows:?}"
        );
    }
    let table = String::from_utf8_lossy(&c.fleetctl(&["audit"]).stdout).into_owned();
    assert!(table.starts_with("TIME") && table.contains("pc2/web"), "{table}");

    // hosts -o json and /metrics carry the services.
    let out = c.fleetctl(&["hosts", "-o", "json"]);
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pc2 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "pc2").unwrap();
    let web = &pc2["services"][0];
    assert_eq!(
        (web["name"].as_str(), web["state"].as_str(), web["healthy"].as_bool()),
        (Some("web"), Some("running"), Some(true))
    );
    assert!(web["pid"].as_u64().is_some() && web["restarts"].as_u64().is_some());
    let (_, text) = c.http_get("/metrics").await;
    let m = parse_metrics(&text);
    assert_eq!(m.get("fleet_service_up{host=\"pc2\",service=\"web\"}"), Some(&1.0), "{text}");
    assert_eq!(m.get("fleet_service_healthy{host=\"pc2\",service=\"web\"}"), Some(&1.0));
    assert!(m["fleet_service_memory_rss_bytes{host=\"pc2\",service=\"web\"}"] > 0.0);
    assert!(m.contains_key("fleet_service_restarts_total{host=\"pc2\",service=\"web\"}"));
    let findings = promtool_check(&text);
    assert!(findings.trim().is_empty(), "promtool check metrics found:\n{findings}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_all_goes_one_host_at_a_time() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    for a in ["main-pc", "pc2"] {
        let svc = web_service("web", free_port(), &c.dir().join(format!("{a}.health")), "interval = \"300ms\"");
        c.start_agent_with(a, Duration::from_secs(1), &svc);
    }
    let m0 = c.wait_service("main-pc", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;
    let p0 = c.wait_service("pc2", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;
    let out = c.fleetctl(&["restart", "--all", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("[1/2] restarted web on main-pc"), "{text}");
    assert!(lines[1].starts_with("[2/2] restarted web on pc2"), "{text}");
    assert!(!alive(m0.pid) && !alive(p0.pid));
    // The first host was healthy again before the second was touched.
    let main_log = std::fs::read_to_string(c.dir().join("main-pc/logs/web.log")).unwrap();
    let pc2_log = std::fs::read_to_string(c.dir().join("pc2/logs/web.log")).unwrap();
    let stop_time =
        |log: &str| log.lines().find(|l| l.contains("restart requested")).map(|l| l[..24].to_string()).unwrap();
    assert!(stop_time(&main_log) < stop_time(&pc2_log));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_ignoring_sigterm_is_killed_with_its_children() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let child_file = c.dir().join("child.pid");
    let script = format!("trap '' TERM; sleep 1000 & echo $! > {}; sleep 1000", child_file.display());
    c.start_agent_with(
        "pc2",
        Duration::from_secs(1),
        &sh_service("stubborn", &script, "stop_timeout = \"1s\"\nstart_secs = \"100ms\""),
    );
    let s = c.wait_service("pc2", "stubborn", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let child: u32 = eventually(Duration::from_secs(5), "the child's pid", || async {
        std::fs::read_to_string(&child_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(alive(s.pid) && alive(child));
    let started = Instant::now();
    let out = c.fleetctl(&["stop", "pc2", "stubborn"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() >= Duration::from_secs(1), "stopped before stop_timeout: it ignores TERM");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the KILL after stop_timeout (1s) took {:?}",
        started.elapsed()
    );
    eventually(Duration::from_secs(2), "the service and its child to be gone", || async {
        (!alive(s.pid) && !alive(child)).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(c.dir().join("pc2/logs/stubborn.log")).unwrap();
    assert!(log.contains("did not stop within stop_timeout 1s; killing it and its children"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_stops_its_services_and_cleans_up_after_a_crash() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    // b leaves a background child, which must go with it: its pid is written to a file.
    let child_file = c.dir().join("b-child.pid");
    let b_script = format!("sleep 1000 & echo $! > {}; exec sleep 1000", child_file.display());
    let services = format!(
        "{}{}",
        sh_service("a", "exec sleep 1000", "start_secs = \"100ms\""),
        sh_service("b", &b_script, "start_secs = \"100ms\"")
    );
    let child = || async {
        eventually(Duration::from_secs(5), "b's background child", || async {
            std::fs::read_to_string(&child_file).ok()?.trim().parse::<u32>().ok().filter(|p| alive(*p))
        })
        .await
    };
    c.start_agent_with("pc2", Duration::from_secs(1), &services);
    let a = c.wait_service("pc2", "a", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let b = c.wait_service("pc2", "b", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let b_child = child().await;

    // SIGTERM: every service stops with the agent, children included.
    let status = c.agent("pc2").terminate(Duration::from_secs(30));
    assert!(status.success());
    assert!(!alive(a.pid) && !alive(b.pid), "services outlived the agent");
    assert!(!alive(b_child), "b's background child outlived the agent");
    std::fs::remove_file(&child_file).unwrap();

    // kill -9: the services are orphaned; the next agent finds and stops them, then starts
    // supervised ones.
    c.start_agent_with("pc2", Duration::from_secs(1), &services);
    let a = c
        .wait_service("pc2", "a", Duration::from_secs(10), "running again", |s| s.state == "running" && s.pid != a.pid)
        .await;
    let b = c
        .wait_service("pc2", "b", Duration::from_secs(10), "running again", |s| s.state == "running" && s.pid != b.pid)
        .await;
    let b_child = child().await;
    std::fs::remove_file(&child_file).unwrap();
    c.agent("pc2").kill9();
    assert!(alive(a.pid) && alive(b.pid), "services are expected to survive a kill -9 of the agent");
    c.start_agent_with("pc2", Duration::from_secs(1), &services);
    eventually(Duration::from_secs(15), "the orphaned services and their children to be stopped", || async {
        (!alive(a.pid) && !alive(b.pid) && !alive(b_child)).then_some(())
    })
    .await;
    let a2 = c
        .wait_service("pc2", "a", Duration::from_secs(15), "supervised again", |s| {
            s.state == "running" && s.pid != a.pid
        })
        .await;
    assert!(alive(a2.pid));
    let log = std::fs::read_to_string(c.dir().join("pc2/logs/a.log")).unwrap();
    assert!(log.contains(&format!("stopped pid {} left running by an earlier fleet-agent", a.pid)), "{log}");

    // And the last agent leaves nothing either: checked here, before the harness' own
    // clean-up (which kills what pid files name) could hide a leak.
    let (b2, b2_child) = (c.service("pc2", "b").await.unwrap().pid, child().await);
    assert!(c.agent("pc2").terminate(Duration::from_secs(30)).success());
    assert!(!alive(a2.pid) && !alive(b2) && !alive(b2_child), "processes outlived the agent");
}

/// `--timeout` bounds the whole command, and when it runs out fleetctl says what became of
/// the command: still being applied (the agent acknowledged it) or dropped (it did not).
#[tokio::test(flavor = "multi_thread")]
async fn a_command_timeout_is_honoured_and_says_what_became_of_the_command() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(60), ..Default::default() }).await;
    let health = c.dir().join("web.health");
    c.start_agent_with(
        "pc2",
        Duration::from_secs(1),
        &web_service("web", free_port(), &health, "interval = \"300ms\"\ntimeout = \"200ms\"\nretries = 1000"),
    );
    c.wait_service("pc2", "web", Duration::from_secs(10), "healthy", |s| s.healthy).await;

    // The agent works on it but the service never gets healthy: its own answer, in time.
    std::fs::write(&health, "fail").unwrap();
    let started = Instant::now();
    let out = c.fleetctl(&["restart", "pc2", "web", "--timeout", "3s"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out after"), "{}", stderr(&out));
    assert!(took < Duration::from_millis(4500), "--timeout 3s took {took:?}");

    // The agent is stalled: no acknowledgement, and fleetctl says the command was dropped.
    std::fs::remove_file(&health).unwrap();
    let agent = Pid::from_raw(c.agent("pc2").child.id() as i32).unwrap();
    kill_process(agent, Signal::STOP).unwrap();
    let started = Instant::now();
    let out = c.fleetctl(&["restart", "pc2", "web", "--timeout", "3s"]);
    let took = started.elapsed();
    kill_process(agent, Signal::CONT).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not acknowledge the command within 3s") && stderr(&out).contains("fleet dropped it"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_millis(4500), "--timeout 3s took {took:?}");
}

/// Invariant 8 across an agent restart: an agent killed after journaling a command, while
/// applying it, does not apply it again when the same command id comes after its restart, and
/// says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_is_not_applied_twice_across_an_agent_restart() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { offline_after: Duration::from_secs(20), ..Default::default() }).await;
    // Its stop takes 3 s: time to kill the agent while it applies the restart.
    let svc =
        sh_service("slow", "trap 'sleep 3; exit 0' TERM; while true; do sleep 0.1; done", "stop_timeout = \"10s\"");
    c.start_agent_with("pc2", Duration::from_millis(200), &svc);
    c.wait_service("pc2", "slow", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let req = RunServiceCommandRequest {
        host: "pc2".into(),
        service: "slow".into(),
        action: ServiceAction::Restart as i32,
        timeout_ms: 30_000,
        request_id: "once-across-agent-restarts".into(),
    };
    let mut client = c.control().await;
    let first = tokio::spawn({
        let req = req.clone();
        async move { client.run_service_command(req).await }
    });
    eventually(Duration::from_secs(10), "the agent to journal and start applying the restart", || async {
        c.agents["pc2"].log_text().contains("applying a command").then_some(())
    })
    .await;
    c.agent("pc2").kill9();
    eventually(Duration::from_secs(10), "pc2 offline", || async {
        (c.online("pc2").await == Some(false)).then_some(())
    })
    .await;
    let log = c.dir().join("pc2/logs/slow.log");
    c.start_agent_with("pc2", Duration::from_millis(200), &svc);
    eventually(Duration::from_secs(15), "pc2 online again", || async {
        (c.online("pc2").await == Some(true)).then_some(())
    })
    .await;
    // The coordinator sends the command again on reconnect; the journal answers it.
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first.state, CommandState::Failed as i32, "{}", first.message);
    assert!(first.message.contains("it is not applied again"), "{}", first.message);
    c.wait_service("pc2", "slow", Duration::from_secs(15), "running again", |s| s.state == "running").await;
    let starts = || std::fs::read_to_string(&log).unwrap().matches("started (pid").count();
    let before = starts();

    // And so does the same id asked again.
    let again = c.control().await.run_service_command(req).await.unwrap().into_inner();
    assert_eq!(again.state, CommandState::Failed as i32, "{}", again.message);
    assert!(again.message.contains("it is not applied again"), "{}", again.message);
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        assert_eq!(starts(), before, "the repeated command restarted the service");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

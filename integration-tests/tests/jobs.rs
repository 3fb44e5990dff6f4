//! Scheduled jobs end to end, with real agents running real processes (docs/design.md §12):
//! a job every 2 s starts on time; `forbid` skips a run while the previous one runs and says
//! so; `replace` kills the old run; a run past its timeout is killed with its children; a job
//! failing twice then succeeding with `retries = 2` is three attempts; `job run --wait` exits
//! with the run's status; a job that keeps failing fires FleetJobFailed into a real
//! Alertmanager; a run missed while the agent was down is made up once with `catch_up` and
//! not without; a bad job definition is refused by `check-config`, naming the job and key.
//! The scheduling logic itself is tested on tokio's paused clock (agent/src/jobs/scheduler.rs).

use std::path::Path;
use std::time::Duration;

use fleet_integration_tests::{
    Cluster, CoordinatorOpts, alive, am_alerts, bin, eventually, run, serial, start_alertmanager, toml_string,
};
use serde_json::Value;

/// A `[[jobs]]` table running `sh -c SCRIPT`, with extra keys.
fn sh_job(name: &str, schedule: &str, script: &str, extra: &str) -> String {
    format!(
        "\n[[jobs]]\nname = \"{name}\"\nschedule = \"{schedule}\"\ncommand = \"sh\"\nargs = [\"-c\", {}]\n{extra}\n",
        toml_string(script)
    )
}

/// `fleetctl job history HOST JOB -o json`.
fn history(c: &Cluster, host: &str, job: &str) -> Vec<Value> {
    let out = c.fleetctl(&["job", "history", host, job, "-n", "100", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("history JSON")
}

fn ms(rfc3339: &Value) -> i64 {
    let t =
        time::OffsetDateTime::parse(rfc3339.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_on_schedule_by_their_policies_and_are_reported() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    let (_am, am_port) = start_alertmanager(&c);
    eventually(Duration::from_secs(20), "alertmanager to answer", || async { am_alerts(am_port).await.map(|_| ()) })
        .await;
    let rules = c.dir().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let default_rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/fleet.rules.yml");
    std::fs::copy(default_rules, rules.join("fleet.rules.yml")).unwrap();
    let extra = format!(
        "[alerting]\nrule_files = [\"{}/*.yml\"]\nevaluation_interval = \"1s\"\nalertmanagers = [\"http://127.0.0.1:{am_port}\"]\n",
        rules.display()
    );
    c.start_coordinator(CoordinatorOpts { extra, ..Default::default() }).await;
    let work = c.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let workdir = format!("workdir = {}\n", toml_string(work.to_str().unwrap()));
    let jobs = [
        sh_job("tick", "@every 2s", "echo tick $FLEET_JOB_RUN", ""),
        sh_job("slow", "@every 2s", "sleep 3", "concurrency = \"forbid\""),
        sh_job("newest", "@every 2s", "sleep 60", "concurrency = \"replace\"\nstop_timeout = \"1s\""),
        sh_job("hang", "@yearly", "sleep 600 & echo $! > hang-child.pid; wait", &format!("timeout = \"1s\"\n{workdir}")),
        sh_job(
            "flaky",
            "@yearly",
            "n=$(cat flaky.count 2>/dev/null || echo 0); n=$((n+1)); echo $n > flaky.count; echo attempt $n; [ $n -ge 3 ]",
            &format!("retries = 2\nretry_delay = \"200ms\"\n{workdir}"),
        ),
        sh_job("broken", "@every 2s", "echo cannot reach the database >&2; exit 3", ""),
        sh_job("dump", "@yearly", "echo dumped", "after = [\"db\"]\ntimeout = \"2s\""),
        fleet_integration_tests::sh_service("db", "exec sleep 600", ""),
    ]
    .concat();
    c.start_agent_with("main-pc", Duration::from_millis(500), &jobs);
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;

    // Listed at once, with schedule and next run.
    let out = c.fleetctl(&["jobs", "-o", "json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = listed.iter().map(|j| j["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["tick", "slow", "newest", "hang", "flaky", "broken", "dump"], "{listed:#?}");
    assert!(listed.iter().all(|j| j["host"] == "main-pc" && j["next_run"].is_string()), "{listed:#?}");

    // `after`: a run waits for the service, within its timeout.
    c.wait_service("main-pc", "db", Duration::from_secs(10), "running", |s| s.pid > 0).await;
    let out = c.fleetctl(&["job", "run", "main-pc", "dump", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.fleetctl(&["stop", "main-pc", "db"]).status.success());
    let out = c.fleetctl(&["job", "run", "main-pc", "dump", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("db was not running and healthy"), "{stderr}");

    // A run that goes past its timeout is killed with its children and recorded as timed out.
    let out = c.fleetctl(&["job", "run", "main-pc", "hang", "--wait"]);
    assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out") && stderr.contains("timeout of 1s"), "{stderr}");
    let child: u32 = std::fs::read_to_string(work.join("hang-child.pid")).unwrap().trim().parse().unwrap();
    eventually(Duration::from_secs(5), "the timed-out job's child to be gone", || async {
        (!alive(child)).then_some(())
    })
    .await;
    let h = history(&c, "main-pc", "hang");
    assert_eq!((h.len(), h[0]["result"].as_str()), (1, Some("timed_out")), "{h:#?}");

    // Failing twice, then succeeding, with retries = 2: three attempts of one run, exit 0.
    let out = c.fleetctl(&["job", "run", "main-pc", "flaky", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let h = history(&c, "main-pc", "flaky");
    let attempts: Vec<_> = h.iter().map(|r| (r["run"].as_u64(), r["attempt"].as_u64(), r["result"].clone())).collect();
    assert_eq!(
        attempts,
        [
            (Some(1), Some(1), "failed".into()),
            (Some(1), Some(2), "failed".into()),
            (Some(1), Some(3), "succeeded".into())
        ],
        "{h:#?}"
    );
    assert!(h.iter().all(|r| r["trigger"] == "manual (spiffe://fleet.local/operator/ops)"), "{h:#?}");

    // The failing job's run, waited for, exits with the command's status.
    let out = c.fleetctl(&["job", "run", "main-pc", "broken", "--wait"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    let logs = String::from_utf8_lossy(&c.fleetctl(&["logs", "main-pc", "broken", "-n", "50"]).stdout).into_owned();
    assert!(logs.contains("cannot reach the database"), "{logs}");

    // FleetJobFailed reaches Alertmanager with the host and job.
    let alert = eventually(Duration::from_secs(20), "FleetJobFailed in Alertmanager", || async {
        am_alerts(am_port)
            .await?
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "FleetJobFailed" && a["labels"]["job_name"] == "broken")
    })
    .await;
    assert_eq!(alert["labels"]["host"], "main-pc", "{alert:#}");
    assert_eq!(alert["annotations"]["summary"], "job broken on main-pc failed", "{alert:#}");

    // Let the every-2s jobs run for a while.
    eventually(Duration::from_secs(30), "tick to run 6 times", || async {
        (history(&c, "main-pc", "tick").len() >= 6).then_some(())
    })
    .await;
    let ticks = history(&c, "main-pc", "tick");
    for r in &ticks {
        let late = ms(&r["started"]) - ms(&r["due"]);
        assert!((0..=200).contains(&late), "run {} started {late} ms after it was due: {r:#}", r["run"]);
        assert_eq!(ms(&r["due"]) % 2000, 0, "@every 2s is due on even seconds: {r:#}");
    }
    assert!(ticks.iter().all(|r| r["result"] == "succeeded"), "{ticks:#?}");

    // forbid: a run due while the 3 s one runs is skipped, and the history says why.
    let slow = history(&c, "main-pc", "slow");
    let skipped = slow.iter().find(|r| r["result"] == "skipped").unwrap_or_else(|| panic!("no skip: {slow:#?}"));
    let msg = skipped["message"].as_str().unwrap();
    assert!(msg.contains("is still running") && msg.contains("forbid"), "{msg}");
    assert!(slow.iter().any(|r| r["result"] == "succeeded"), "{slow:#?}");

    // replace: each due time kills the run before it.
    let newest = history(&c, "main-pc", "newest");
    let killed = newest.iter().find(|r| r["result"] == "killed").unwrap_or_else(|| panic!("none killed: {newest:#?}"));
    assert!(killed["message"].as_str().unwrap().contains("replaced by run"), "{killed:#}");

    // The status page lists them, failing ones first.
    let (_, page) = c.http_get("/").await;
    let jobs = &page[page.find("<h2>Jobs</h2>").expect("a Jobs table")..];
    assert!(jobs.find(">broken<").unwrap() < jobs.find(">tick<").unwrap(), "{jobs}");

    // The metrics say the same.
    let (_, metrics) = c.http_get("/metrics").await;
    for needle in [
        "fleet_job_runs_total{host=\"main-pc\",job_name=\"slow\",result=\"skipped\"}",
        "fleet_job_runs_total{host=\"main-pc\",job_name=\"hang\",result=\"timed_out\"} 1",
        "fleet_job_runs_total{host=\"main-pc\",job_name=\"flaky\",result=\"failed\"} 2",
        "fleet_job_last_success_timestamp_seconds{host=\"main-pc\",job_name=\"tick\"}",
        "fleet_job_runs_total{host=\"main-pc\",job_name=\"newest\",result=\"killed\"}",
        "fleet_job_running{host=\"main-pc\",job_name=\"hang\"} 0",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_missed_while_the_agent_was_down_is_made_up_once_with_catch_up() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    let jobs = [
        sh_job("caught", "@every 4s", "true", "catch_up = true"),
        sh_job("missed", "@every 4s", "true", "catch_up = false"),
    ]
    .concat();
    c.start_agent_with("main-pc", Duration::from_millis(500), &jobs);
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;
    eventually(Duration::from_secs(15), "both jobs to run once", || async {
        (!history(&c, "main-pc", "caught").is_empty() && !history(&c, "main-pc", "missed").is_empty()).then_some(())
    })
    .await;
    c.agent("main-pc").terminate(Duration::from_secs(15));
    // Down across at least two due times.
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(9) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.start_agent_with("main-pc", Duration::from_millis(500), &jobs);
    c.wait_online(&["main-pc"], Duration::from_secs(10)).await;
    // Past the first due time after the start, so a catch-up (made at start) is in.
    eventually(Duration::from_secs(15), "a scheduled run after the restart", || async {
        let h = history(&c, "main-pc", "missed");
        (h.len() >= 2).then_some(())
    })
    .await;
    let catch_ups = |job: &str| -> Vec<Value> {
        history(&c, "main-pc", job)
            .into_iter()
            .filter(|r| r["trigger"].as_str().unwrap().starts_with("catch-up"))
            .collect()
    };
    let caught = catch_ups("caught");
    assert_eq!(caught.len(), 1, "exactly one catch-up run: {caught:#?}");
    assert!(caught[0]["trigger"].as_str().unwrap().contains("2 missed"), "{caught:#?}");
    assert!(catch_ups("missed").is_empty());
    let log = String::from_utf8_lossy(&c.fleetctl(&["logs", "main-pc", "missed"]).stdout).into_owned();
    assert!(log.contains("not made up (catch_up = false)"), "{log}");
}

#[test]
fn bad_job_definitions_are_refused_by_check_config_naming_the_job_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let text = format!(
        "name = \"main-pc\"\ncoordinator = \"https://127.0.0.1:7443\"\ndata_dir = \"{}\"\n\n[[services]]\nname = \"api\"\ncommand = \"true\"\n{}{}{}{}{}",
        dir.path().join("data").display(),
        sh_job("backup", "0 */6 * *", "true", ""),
        sh_job("redis", "@every 2h", "true", "concurrency = \"sometimes\""),
        sh_job("full", "0 2 * * *", "true", "timeout = \"0s\""),
        sh_job("full", "@daily", "true", ""),
        sh_job("api", "@daily", "true", "after = [\"api\", \"db\"]"),
    );
    std::fs::write(&cfg, text).unwrap();
    let out =
        run(std::process::Command::new(bin("fleet-agent")).args(["check-config", "--config", cfg.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for says in [
        "jobs[backup].schedule: invalid schedule \"0 */6 * *\"",
        "jobs[redis].concurrency: unknown concurrency policy \"sometimes\"",
        "jobs[full].timeout: must be more than 0",
        "jobs[3].name: duplicate job name \"full\"",
        "jobs[4].name: a service is named \"api\" too",
        "jobs[4].after[1]: no service named \"db\"",
    ] {
        assert!(stderr.contains(says), "{says}\n{stderr}");
    }
}

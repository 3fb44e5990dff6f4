//! `fleetctl dev`: the local cluster comes up with main-pc and pc2 and their demo services,
//! fleetctl works with the env file it writes, and nothing it started outlives it: not on SIGTERM, not when a child
//! crashes, not even when fleetctl itself is killed with SIGKILL.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fleet_integration_tests::{Proc, bin, bin_dir, eventually, serial};
use rustix::process::{Pid, Signal, kill_process};

/// Processes whose command line mentions `dir` (the dev cluster's children all do).
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // Zombies have an empty command line; they are not running processes.
        let ours = cmd.contains("fleet-agent") || cmd.contains("fleet-coordinator") || cmd.contains("demo-server");
        if cmd.contains(&needle) && ours {
            out.push((pid, cmd));
        }
    }
    out
}

fn start_dev(dir: &Path) -> Proc {
    let log = dir.with_extension("log");
    Proc::spawn(
        "fleetctl dev",
        &bin("fleetctl"),
        &[
            "dev",
            "--dir",
            dir.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--report-interval",
            "200ms",
            "--bin-dir",
            bin_dir().to_str().unwrap(),
        ],
        &log,
    )
}

async fn wait_up(dev: &mut Proc, dir: &Path) -> Vec<(String, String)> {
    let env_file = dir.join("fleetctl.env");
    eventually(Duration::from_secs(60), "fleetctl dev to write fleetctl.env", || {
        let exited = dev.child.try_wait().unwrap();
        let text = std::fs::read_to_string(&env_file).ok();
        async move {
            if let Some(s) = exited {
                panic!("fleetctl dev exited while starting: {s}");
            }
            let vars: Vec<(String, String)> = text?
                .lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            (vars.len() == 4).then_some(vars)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_cluster_runs_and_leaves_nothing_behind() {
    let _g = serial().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");

    // 1. Up, usable through the env file, and stopped cleanly by SIGTERM.
    let mut dev = start_dev(&dir);
    let _ = std::fs::remove_file(dir.join("fleetctl.env"));
    let vars = wait_up(&mut dev, &dir).await;
    let out = fleet_integration_tests::run(
        Command::new(bin("fleetctl")).args(["hosts", "-o", "json"]).envs(vars.iter().map(|(k, v)| (k, v))),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(names, [("main-pc".to_string(), "online".to_string()), ("pc2".to_string(), "online".to_string())]);
    assert!(dev.log_text().contains("source "), "dev prints what to run next");
    // The coordinator, two agents, and each agent's demo service.
    assert_eq!(processes_under(&dir).len(), 5, "{:?}", processes_under(&dir));
    let out = fleet_integration_tests::run(
        Command::new(bin("fleetctl")).args(["services", "-o", "json"]).envs(vars.iter().map(|(k, v)| (k, v))),
    );
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in services.as_array().unwrap() {
        match s["name"].as_str() {
            Some("web") => {
                assert_eq!((s["state"].as_str(), s["healthy"].as_bool()), (Some("running"), Some(true)), "{s}")
            }
            Some("app") => assert!(s["message"].as_str().unwrap().contains("no release deployed yet"), "{s}"),
            _ => panic!("unexpected service {s}"),
        }
    }

    // The README's walkthrough: build the example app and roll it out to both agents.
    let build = fleet_integration_tests::run(
        Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example-app/build.sh"))
            .args(["1.0", tmp.path().to_str().unwrap()]),
    );
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let artifact = tmp.path().join("app-1.0.tar.gz");
    let out = fleet_integration_tests::run(
        Command::new(bin("fleetctl"))
            .args(["rollout", "start", "app", "--artifact", artifact.to_str().unwrap(), "--version", "1.0"])
            .args(["--min-healthy-time", "1s", "--watch"])
            .envs(vars.iter().map(|(k, v)| (k, v))),
    );
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let urls: Vec<String> = dev
        .log_text()
        .lines()
        .find(|l| l.contains("it then answers on"))
        .expect("fleetctl dev prints the app's addresses")
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 2);
    for u in &urls {
        let body = reqwest::get(u).await.unwrap().text().await.unwrap();
        assert_eq!(body, "hello from app 1.0\n");
    }
    let status = dev.terminate(Duration::from_secs(30));
    assert!(status.success(), "fleetctl dev exits 0 on SIGTERM: {status}");
    assert!(processes_under(&dir).is_empty(), "left behind: {:?}", processes_under(&dir));
    for u in &urls {
        assert!(reqwest::get(u).await.is_err(), "the app at {u} outlived the dev cluster");
    }

    // 2. A crashed child stops the cluster with a clear message, and no orphan remains.
    let _ = std::fs::remove_file(dir.join("fleetctl.env"));
    let mut dev = start_dev(&dir);
    wait_up(&mut dev, &dir).await;
    let (pc2, _) = processes_under(&dir).into_iter().find(|(_, cmd)| cmd.contains("pc2.toml")).expect("pc2 runs");
    kill_process(Pid::from_raw(pc2).unwrap(), Signal::KILL).unwrap();
    let status = eventually(Duration::from_secs(30), "fleetctl dev to stop after pc2 crashed", || {
        let s = dev.child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert_eq!(status.code(), Some(1));
    assert!(dev.log_text().contains("pc2 exited on its own"), "{}", dev.log_text());
    assert!(processes_under(&dir).is_empty(), "left behind: {:?}", processes_under(&dir));

    // 3. Even SIGKILL of fleetctl dev leaves no orphan: the children follow their parent.
    let _ = std::fs::remove_file(dir.join("fleetctl.env"));
    let mut dev = start_dev(&dir);
    wait_up(&mut dev, &dir).await;
    dev.kill9();
    eventually(Duration::from_secs(15), "the children of a killed fleetctl dev to exit", || async {
        processes_under(&dir).is_empty().then_some(())
    })
    .await;
}

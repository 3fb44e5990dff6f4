//! `fleetctl dev`: the local cluster comes up with main-pc and pc2 and their demo services,
//! the README's walkthrough runs under it line by line, exactly as written, and nothing it
//! started outlives it: not on SIGTERM, not when a child crashes, not even when fleetctl
//! itself is killed with SIGKILL.

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
    start_dev_with(dir, &[])
}

fn start_dev_with(dir: &Path, more: &[&str]) -> Proc {
    let log = dir.with_extension("log");
    let bins = bin_dir();
    let mut args = vec![
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
        bins.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    Proc::spawn("fleetctl dev", &bin("fleetctl"), &args, &log)
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
            (vars.len() == 5).then_some(vars)
        }
    })
    .await
}

/// The shell lines of the README's walkthrough: the code blocks of "Trying it" and
/// "Deploying under `fleetctl dev`", in order.
fn readme_walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("## Trying it").expect("README has a walkthrough");
    let end = readme[start..].find("\n## fleetctl").map(|e| start + e).unwrap_or(readme.len());
    let mut lines = Vec::new();
    let mut in_block = false;
    for l in readme[start..end].lines() {
        if l.starts_with("```") {
            in_block = !in_block;
        } else if in_block && !l.trim().is_empty() {
            lines.push(l.to_string());
        }
    }
    lines
}

/// Runs one walkthrough line as a user would in the second terminal: in `cwd`, after
/// sourcing the env file.
fn sh(cwd: &Path, id: &str, line: &str) -> std::process::Output {
    fleet_integration_tests::run(
        Command::new("sh").arg("-c").arg(format!(". .fleet-dev/fleetctl.env && {line}")).current_dir(cwd).env("ID", id),
    )
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn fleetctl_json(cwd: &Path, args: &str) -> serde_json::Value {
    let out = sh(cwd, "", &format!("fleetctl {args} -o json"));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_under_fleetctl_dev() {
    let _g = serial().await;
    let tmp = tempfile::tempdir().unwrap();
    // The user's second terminal: the repository, with fleetctl dev's directory in it.
    let cwd = tmp.path();
    std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"), cwd.join("deploy")).unwrap();
    let dir = cwd.join(".fleet-dev");
    let mut dev = start_dev(&dir);
    let vars = wait_up(&mut dev, &dir).await;
    let addr = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert!(addr("PATH").contains(bin_dir().to_str().unwrap()), "the env file puts fleetctl on PATH");
    // The coordinator, two agents, and each agent's demo service.
    assert_eq!(processes_under(&dir).len(), 5, "{:?}", processes_under(&dir));
    let printed = dev.log_text();
    assert!(printed.contains("source ") && printed.contains("  fleetctl status"), "{printed}");
    let http = printed
        .lines()
        .find_map(|l| l.strip_prefix("status page: http://"))
        .expect("fleetctl dev prints the status page")
        .trim_end_matches('/')
        .to_string();
    let app_urls: Vec<(String, String)> = printed
        .lines()
        .find(|l| l.contains("it then answers on"))
        .expect("fleetctl dev prints the app's addresses")
        .split(" and ")
        .filter_map(|part| {
            let url = part.split_whitespace().find(|w| w.starts_with("http://"))?;
            let host = part.split_whitespace().rev().nth(1)?;
            Some((host.to_string(), url.to_string()))
        })
        .collect();
    assert_eq!(app_urls.len(), 2, "{printed}");
    let serves = |host: &str| {
        let url = app_urls.iter().find(|(h, _)| h == host).map(|(_, u)| u.clone()).unwrap();
        async move { reqwest::get(&url).await.ok()?.text().await.ok() }
    };

    let mut id = String::new();
    let mut watched = 0;
    let mut ran = 0;
    for line in readme_walkthrough() {
        if line.starts_with("source ") || line.contains("127.0.0.1:PORT") {
            continue; // sourced before every line; the app's ports are checked below
        }
        let line = line.replace("127.0.0.1:9090", &http);
        if line.starts_with("fleetctl alerts") {
            // The failing health check makes the agent restart web again and again; the
            // default rules notice within a few evaluations.
            eventually(Duration::from_secs(150), "a firing alert for pc2's web", || async {
                let alerts = fleetctl_json(cwd, "alerts").await;
                alerts.as_array()?.iter().any(|a| a["state"] == "firing" && a["labels"]["host"] == "pc2").then_some(())
            })
            .await;
        }
        let out = if line.starts_with("ID=") {
            sh(cwd, &id, &format!("{line} && printf '%s' \"$ID\""))
        } else {
            sh(cwd, &id, &line)
        };
        let said = text(&out);
        assert!(out.status.success(), "README line failed: {line}\n{said}");
        ran += 1;
        let cmd = line.split('#').next().unwrap().trim();
        match cmd {
            "fleetctl hosts" => {
                // web runs and is healthy; app waits for its first release, which is no failure.
                assert_eq!(said.lines().filter(|l| l.contains(" online ") && l.contains("1/1 ok")).count(), 2, "{said}")
            }
            "fleetctl services" => {
                let web = said.lines().find(|l| l.starts_with("main-pc") && l.contains(" web ")).unwrap();
                assert!(web.contains('%'), "CPU is a share of a core, as in hosts: {said}");
            }
            "fleetctl alerts" => assert!(said.contains("ServiceRestartLoop") && said.contains("firing"), "{said}"),
            "fleetctl audit" => assert!(said.contains("restart") && said.contains("pc2/web"), "{said}"),
            "fleetctl jobs" => {
                assert_eq!(
                    said.lines().filter(|l| l.contains(" backup ") && l.contains("* * * * *")).count(),
                    2,
                    "{said}"
                )
            }
            "fleetctl job history main-pc backup" => {
                assert!(said.contains("manual") && said.contains("succeeded"), "{said}")
            }
            "fleetctl exec -l env=dev -- hostname" => {
                let mut hosts: Vec<_> = said.lines().filter_map(|l| l.split(": ").next()).collect();
                hosts.sort();
                assert_eq!(hosts, ["main-pc", "pc2"], "{said}");
            }
            "fleetctl releases pc2 app" if !id.is_empty() => {
                assert!(said.lines().any(|l| l.starts_with("1.0") && l.contains("current")), "{said}")
            }
            _ if cmd.starts_with("ID=") => {
                id = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
                assert!(id.starts_with('r'), "{said}");
            }
            "fleetctl rollout status $ID --watch" => {
                watched += 1;
                if watched == 1 {
                    assert!(said.contains("waiting_promotion"), "{said}");
                    assert!(said.contains(&format!("fleetctl rollout resume {id}")), "says how to promote: {said}");
                    assert_eq!(serves("main-pc").await.as_deref(), Some("hello from app 3.0\n"));
                    assert_eq!(serves("pc2").await.as_deref(), Some("hello from app 1.0\n"));
                } else {
                    assert!(said.contains("succeeded"), "{said}");
                    assert_eq!(serves("pc2").await.as_deref(), Some("hello from app 3.0\n"));
                }
            }
            _ if cmd.contains("--version 2.0 --watch") => {
                for host in ["main-pc", "pc2"] {
                    assert_eq!(serves(host).await.as_deref(), Some("hello from app 2.0\n"));
                }
            }
            "fleetctl rollback pc2 app" => assert_eq!(serves("pc2").await.as_deref(), Some("hello from app 1.0\n")),
            _ => {}
        }
    }
    assert!(ran >= 20 && watched == 2, "ran {ran} README lines");
    let litter: Vec<_> = std::fs::read_dir(cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    assert!(litter.is_empty(), "build.sh wrote archives into the working tree: {litter:?}");

    // The status page shows services, rollouts, alerts and readable times.
    let page = reqwest::get(format!("http://{http}/")).await.unwrap().text().await.unwrap();
    for part in
        ["<h2>Alerts</h2>", "ServiceRestartLoop", "<h2>Services</h2>", "<td>web</td>", "s ago", "<h2>Hosts</h2>"]
    {
        assert!(page.contains(part), "the status page lacks {part}: {page}");
    }

    check_dashboards(&http).await;

    let status = dev.terminate(Duration::from_secs(30));
    assert!(status.success(), "fleetctl dev exits 0 on SIGTERM: {status}");
    assert!(processes_under(&dir).is_empty(), "left behind: {:?}", processes_under(&dir));
    for (_, u) in &app_urls {
        assert!(reqwest::get(u).await.is_err(), "the app at {u} outlived the dev cluster");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_cluster_leaves_nothing_behind_when_a_child_or_itself_dies() {
    let _g = serial().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");

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

#[tokio::test(flavor = "multi_thread")]
async fn dev_ha_runs_three_coordinators_on_etcd_and_survives_the_leaders_death() {
    let _g = serial().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev_with(&dir, &["--ha"]);
    let vars = wait_up(&mut dev, &dir).await;
    let status = |addr: Option<&str>| {
        let mut cmd = Command::new(bin("fleetctl"));
        cmd.args(["status", "-o", "json"]).envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(a) = addr {
            cmd.env("FLEET_ADDR", a);
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let s = status(None);
    let members: Vec<String> = s["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["advertise"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(members.len(), 3, "{s}");
    let leader = s["cluster"]["leader"].as_str().unwrap().to_string();
    assert!(members.contains(&leader), "{s}");
    // Kill the leader: fleetctl dev goes on, and another coordinator leads.
    let (pid, _) = processes_under(&dir)
        .into_iter()
        .find(|(pid, cmd)| {
            cmd.contains("fleet-coordinator") && {
                let config = cmd.split_whitespace().last().unwrap_or_default().to_string();
                std::fs::read_to_string(&config).is_ok_and(|t| t.contains(&format!("advertise = \"{leader}\"")))
                    && *pid > 0
            }
        })
        .expect("the leader's process");
    kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
    let survivor = members.iter().find(|m| **m != leader).unwrap().clone();
    let url = format!("https://{survivor}");
    let next = eventually(Duration::from_secs(30), "another coordinator to lead", || {
        let s = status(Some(&url));
        let old = leader.clone();
        async move {
            let l = s["cluster"]["leader"].as_str()?.to_string();
            (!l.is_empty() && l != old).then_some(l)
        }
    })
    .await;
    assert_ne!(next, leader);
    assert!(dev.child.try_wait().unwrap().is_none(), "fleetctl dev went on: {}", dev.log_text());
    assert!(dev.log_text().contains("the other coordinators go on"), "{}", dev.log_text());
    dev.signal(Signal::INT);
    dev.wait_exit(Duration::from_secs(30));
    eventually(Duration::from_secs(15), "the dev cluster's processes to exit", || async {
        processes_under(&dir).is_empty().then_some(())
    })
    .await;
}

/// Every panel query of the dashboards in deploy/grafana, with Grafana's variables as the
/// dashboard's defaults give them (all hosts, a 1m rate interval), parses and returns data
/// from the dev cluster's coordinator over the last minutes, as Grafana asks for it (a POSTed
/// range query at a 15 s step); the provisioning files point at those dashboards.
async fn check_dashboards(http: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let provider: serde_json::Value = yaml_file(&root.join("provisioning/dashboards/fleet.yml"));
    assert_eq!(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards/fleet");
    let source = yaml_file(&root.join("provisioning/datasources/fleet.yml"));
    assert_eq!(
        (&source["datasources"][0]["type"], &source["datasources"][0]["uid"]),
        (&"prometheus".into(), &"fleet".into())
    );
    let client = reqwest::Client::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vars = dash["templating"]["list"].as_array().unwrap();
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let def = v["definition"].as_str().unwrap();
            let (metric, label) = def
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(", "))
                .unwrap_or_else(|| panic!("variable {def} is not label_values(metric, label)"));
            let url = format!("http://{http}/api/v1/label/{label}/values");
            let body: serde_json::Value =
                client.get(&url).query(&[("match[]", metric)]).send().await.unwrap().json().await.unwrap();
            assert_eq!(body["data"], serde_json::json!(["main-pc", "pc2"]), "variable {def}");
        }
        let end = fleet_common::now_ms() / 1000;
        let (start, end) = ((end - 300) / 15 * 15, end.to_string());
        let start = start.to_string();
        let mut panels: Vec<&serde_json::Value> = Vec::new();
        for p in dash["panels"].as_array().unwrap() {
            panels.push(p);
            panels.extend(p["panels"].as_array().into_iter().flatten());
        }
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap();
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title} uses the dashboard's data source");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {title} has no query");
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "15s")
                    .replace("$__range", "5m")
                    .replace("$host", ".*");
                assert!(!expr.contains('$'), "panel {title}: an unknown variable in {expr}");
                let form = [("query", expr.as_str()), ("start", &start), ("end", &end), ("step", "15")];
                let r = client.post(format!("http://{http}/api/v1/query_range")).form(&form).send().await.unwrap();
                let code = r.status();
                let body: serde_json::Value = r.json().await.unwrap();
                assert!(code.is_success(), "panel {title}: {expr}: {body}");
                let series = body["data"]["result"].as_array().unwrap();
                assert!(
                    series.iter().any(|s| !s["values"].as_array().unwrap().is_empty()),
                    "panel {title} shows no data: {expr}: {body}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "checked {checked} panel queries");
}

/// A YAML file of deploy/grafana read as JSON.
fn yaml_file(path: &Path) -> serde_json::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

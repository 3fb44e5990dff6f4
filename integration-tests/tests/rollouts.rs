//! Deploys and rollouts end to end, with real agents main-pc and pc2 and real artifacts: v1
//! then v2 everywhere; a failing release rolled back with its backup restored and the rollout
//! stopped; canaries with promotion, pause and abort; manual rollbacks; archives that are
//! refused; and a coordinator killed mid-rollout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_integration_tests::{
    Cluster, CoordinatorOpts, app_release, app_release_on, app_service, eventually, free_port, get_body, serial,
};

struct App {
    c: Cluster,
    ports: Vec<(String, u16)>,
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl App {
    async fn start(hosts: &[&str], extra_deploy: &str) -> App {
        let mut c = Cluster::new(hosts);
        c.start_coordinator(CoordinatorOpts::default()).await;
        let mut ports = Vec::new();
        for h in hosts {
            let port = free_port();
            let svc = app_service(&c.dir().join(h).join("app"), port, &c.dir().join(h).join("conf"), extra_deploy);
            c.start_agent_with(h, Duration::from_millis(500), &svc);
            ports.push((h.to_string(), port));
        }
        c.wait_online(hosts, Duration::from_secs(15)).await;
        for h in hosts {
            c.wait_service(h, "app", Duration::from_secs(10), "reported", |_| true).await;
        }
        App { c, ports }
    }

    fn release(&self, version: &str, broken: bool) -> PathBuf {
        let p = self.c.dir().join(format!("app-{version}.tar.gz"));
        app_release(&p, version, broken);
        p
    }

    fn rollout(&self, version: &str, artifact: &Path, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "rollout",
            "start",
            "app",
            "--artifact",
            artifact.to_str().unwrap(),
            "--version",
            version,
            "--min-healthy-time",
            "1s",
            "--healthy-deadline",
            "20s",
        ];
        args.extend_from_slice(extra);
        self.c.fleetctl(&args)
    }

    async fn serves(&self, host: &str) -> Option<String> {
        let port = self.ports.iter().find(|(h, _)| h == host)?.1;
        get_body(port).await
    }

    fn releases(&self, host: &str) -> Vec<(String, String)> {
        let out = self.c.fleetctl(&["releases", host, "app", "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut s = vec![];
                for k in ["current", "previous", "bad"] {
                    if r[k].as_bool() == Some(true) {
                        s.push(k);
                    }
                }
                (r["version"].as_str().unwrap().to_string(), s.join(","))
            })
            .collect()
    }

    fn rollout_json(&self, id: &str) -> serde_json::Value {
        let out = self.c.fleetctl(&["rollout", "status", id, "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn wait_rollout(&self, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        eventually(Duration::from_secs(60), what, || async {
            let v = self.rollout_json(id);
            pred(&v).then_some(v)
        })
        .await
    }
}

fn host_state(r: &serde_json::Value, host: &str) -> String {
    r["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap()["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_then_v2_everywhere_and_a_failing_release_is_rolled_back() {
    let _g = serial().await;
    let app = App::start(&["main-pc", "pc2"], "").await;
    let s = app.c.service("pc2", "app").await.unwrap();
    assert_eq!(s.state, "stopped");
    assert!(s.message.contains("no release deployed yet"), "{}", s.message);

    // A misspelt service or host is refused before anything is uploaded: the artifact named
    // here does not even exist.
    let missing = app.c.dir().join("not-built-yet.tar.gz");
    let out = app.c.fleetctl(&["rollout", "start", "ap", "--artifact", missing.to_str().unwrap(), "--version", "1.0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no host reports a service named \"ap\""), "{}", stderr(&out));
    let out = app.c.fleetctl(&[
        "rollout",
        "start",
        "web",
        "--hosts",
        "pc2",
        "--artifact",
        missing.to_str().unwrap(),
        "--version",
        "1.0",
    ]);
    assert!(stderr(&out).contains("pc2 reports no service named \"web\""), "{}", stderr(&out));

    let v1 = app.release("1.0", false);
    let out = app.rollout("1.0", &v1, &["--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let v2 = app.release("2.0", false);
    let out = app.rollout("2.0", &v2, &["--watch", "--max-parallel", "2"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().starts_with('r'), "the rollout id comes first: {text}");
    assert!(text.contains("main-pc healthy") && text.contains("pc2 healthy") && text.contains("succeeded"), "{text}");
    for h in ["main-pc", "pc2"] {
        assert_eq!(app.serves(h).await.as_deref(), Some("hello from app 2.0\n"));
        assert_eq!(
            app.releases(h),
            [("2.0".to_string(), "current".to_string()), ("1.0".to_string(), "previous".to_string())]
        );
        let s = app.c.wait_service(h, "app", Duration::from_secs(5), "reports 2.0", |s| s.version == "2.0").await;
        assert!(s.healthy);
    }
    let (_, metrics) = app.c.http_get("/metrics").await;
    assert!(metrics.contains("fleet_service_info{host=\"pc2\",service=\"app\",version=\"2.0\"} 1"), "{metrics}");
    assert!(metrics.contains("fleet_rollouts_total{result=\"succeeded\"} 2"), "{metrics}");

    // A release that cannot start: the first host goes back on its own (files too), the
    // rollout stops before the second host, and fleetctl says why.
    let conf = app.c.dir().join("main-pc/conf/app.conf");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "config of 2.0\n");
    let v3 = app.release("3.0", true);
    let out = app.rollout("3.0", &v3, &["--watch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("failed") && err.contains("exited with status 3 during start"), "{err}");
    assert!(err.contains("stderr: 3.0 cannot start: missing setting"), "the log tail is shown: {err}");
    // Only what 3.0 wrote, said once: not the lines 2.0 wrote before it.
    assert!(!err.contains("listening on"), "the previous release's output is not 3.0's: {err}");
    assert_eq!(err.matches("last log lines of app on main-pc").count(), 1, "{err}");
    assert!(err.lines().filter(|l| l.trim_start().starts_with("stderr: ")).all(|l| l.contains("3.0")), "{err}");
    assert!(err.contains("rolled back to 2.0"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "config of 2.0\n", "backup_paths restored");
    assert_eq!(app.serves("main-pc").await.as_deref(), Some("hello from app 2.0\n"));
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.0\n"));
    let rel = app.releases("main-pc");
    assert!(rel.contains(&("3.0".to_string(), "bad".to_string())), "{rel:?}");
    assert!(rel.contains(&("2.0".to_string(), "current".to_string())), "{rel:?}");
    assert!(!app.releases("pc2").iter().any(|(v, _)| v == "3.0"), "the rollout went on to pc2");
    let list = stdout(&app.c.fleetctl(&["rollout", "list"]));
    assert!(list.lines().nth(1).unwrap().contains("3.0") && list.contains("failed"), "{list}");
    let audit = stdout(&app.c.fleetctl(&["audit", "-n", "100"]));
    assert!(audit.contains("rollout start") && audit.contains("failed"), "{audit}");
    // One line a row, whatever the messages hold; a rollout's target is its service.
    let entries: serde_json::Value =
        serde_json::from_slice(&app.c.fleetctl(&["audit", "-n", "100", "-o", "json"]).stdout).unwrap();
    assert_eq!(audit.lines().count(), entries.as_array().unwrap().len() + 1, "{audit}");
    let ended = audit.lines().find(|l| l.contains(" rollout ") && l.contains("succeeded")).expect("a finished rollout");
    assert!(ended.contains(" app ") && !ended.contains("/app"), "{ended}");
    assert!(ended.trim_end().ends_with("app 1.0 to main-pc,pc2"), "{ended}");
}

#[tokio::test(flavor = "multi_thread")]
async fn canaries_promotion_pause_abort_and_manual_rollbacks() {
    let _g = serial().await;
    let app = App::start(&["main-pc", "pc2"], "").await;
    let v1 = app.release("1.0", false);
    assert!(app.rollout("1.0", &v1, &["--watch", "--max-parallel", "2"]).status.success());

    // Canary: main-pc first, then the rollout waits for promotion, however long that takes:
    // waiting for a person does not count against the progress deadline.
    let v2 = app.release("2.0", false);
    let out = app.rollout("2.0", &v2, &["--canary", "1", "--progress-deadline", "3s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let r = app.wait_rollout(&id, "waiting for promotion", |r| r["state"] == "waiting_promotion").await;
    assert_eq!(host_state(&r, "main-pc"), "healthy");
    assert_eq!(host_state(&r, "pc2"), "pending");
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 1.0\n"));
    let status = stdout(&app.c.fleetctl(&["rollout", "status", &id]));
    assert!(status.contains("1/2 hosts done"), "{status}");
    assert!(status.contains(&format!("promote with `fleetctl rollout resume {id}`")), "{status}");
    tokio::time::sleep(Duration::from_secs(4)).await; // the operator takes longer than the deadline
    assert_eq!(app.rollout_json(&id)["state"], "waiting_promotion");
    assert!(app.c.fleetctl(&["rollout", "resume", &id]).status.success());
    let out = app.c.fleetctl(&["rollout", "status", &id, "--watch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.0\n"));

    // Abort after the canary: the canary goes back.
    let v21 = app.release("2.1", false);
    let id = stdout(&app.rollout("2.1", &v21, &["--canary", "1"])).trim().to_string();
    app.wait_rollout(&id, "waiting for promotion", |r| r["state"] == "waiting_promotion").await;
    assert_eq!(app.serves("main-pc").await.as_deref(), Some("hello from app 2.1\n"));
    assert!(app.c.fleetctl(&["rollout", "abort", &id]).status.success());
    let out = app.c.fleetctl(&["rollout", "status", &id, "--watch"]);
    assert_eq!(out.status.code(), Some(1));
    let r = app.rollout_json(&id);
    assert_eq!(r["state"], "aborted");
    assert_eq!(host_state(&r, "main-pc"), "reverted");
    assert_eq!(app.serves("main-pc").await.as_deref(), Some("hello from app 2.0\n"));

    // Pause: the host in progress finishes, the next one waits; resume finishes the rollout.
    let v22 = app.release("2.2", false);
    let id = stdout(&app.rollout("2.2", &v22, &[])).trim().to_string();
    assert!(app.c.fleetctl(&["rollout", "pause", &id]).status.success());
    let r = app
        .wait_rollout(&id, "paused with main-pc done", |r| {
            r["state"] == "paused" && host_state(r, "main-pc") == "healthy"
        })
        .await;
    assert_eq!(host_state(&r, "pc2"), "pending");
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing must happen while paused
    assert_eq!(host_state(&app.rollout_json(&id), "pc2"), "pending");
    assert!(app.c.fleetctl(&["rollout", "resume", &id]).status.success());
    assert!(app.c.fleetctl(&["rollout", "status", &id, "--watch"]).status.success());
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.2\n"));

    // Manual rollback to the previous release, then --to a version.
    let out = app.c.fleetctl(&["rollback", "pc2", "app", "--min-healthy-time", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.0\n"));
    let out = app.c.fleetctl(&["rollback", "pc2", "app", "--to", "1.0", "--min-healthy-time", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 1.0\n"));
    let rel = app.releases("pc2");
    assert!(rel.contains(&("1.0".to_string(), "current".to_string())), "{rel:?}");
    let out = app.c.fleetctl(&["rollback", "pc2", "app", "--to", "9.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no release 9.9"), "{}", stderr(&out));
}

fn tar_entry(
    b: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_gnu();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn evil_archive(path: &Path, entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) {
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (n, k, d, l) in entries {
        tar_entry(&mut b, n, *k, d, *l);
    }
    b.into_inner().unwrap().finish().unwrap();
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_and_broken_archives_are_refused() {
    use tar::EntryType as T;
    let _g = serial().await;
    let app = App::start(&["pc2"], "max_size = \"64KiB\"\nmax_files = 20").await;
    let v1 = app.release("1.0", false);
    assert!(app.rollout("1.0", &v1, &["--watch"]).status.success());
    let root = app.c.dir().join("pc2");
    let before = tree(&root);
    let big = vec![0u8; 100 * 1024];
    let many: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);
    let cases: Vec<(&str, Vec<Entry<'_>>, &str)> = vec![
        ("absolute", vec![("/tmp/fleet-evil", T::Regular, b"x", None)], "the path is absolute"),
        ("dotdot", vec![("../../evil", T::Regular, b"x", None)], "the path contains `..`"),
        (
            "symlink",
            vec![("out", T::Symlink, b"", Some("../../..")), ("out/evil", T::Regular, b"x", None)],
            "leaves the release directory",
        ),
        ("hardlink", vec![("h", T::Link, b"", Some("../../conf/app.conf"))], "the path contains `..`"),
        ("device", vec![("null", T::Char, b"", None)], "device nodes are not allowed"),
        ("fifo", vec![("pipe", T::Fifo, b"", None)], "FIFOs are not allowed"),
        ("big", vec![("blob", T::Regular, &big, None)], "exceeds the size limit of 64.0 KiB"),
        (
            "many",
            many.iter().map(|n| (n.as_str(), T::Regular, &b"x"[..], None)).collect(),
            "exceeds the file count limit of 20",
        ),
    ];
    for (i, (what, entries, want)) in cases.into_iter().enumerate() {
        let path = app.c.dir().join(format!("evil-{what}.tar.gz"));
        evil_archive(&path, &entries);
        let version = format!("6.{i}");
        let out = app.rollout(&version, &path, &["--watch"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stderr(&out).contains(want), "{what}: {}", stderr(&out));
    }
    assert!(!Path::new("/tmp/fleet-evil").exists());

    // A corrupt gzip.
    let corrupt = app.c.dir().join("corrupt.tar.gz");
    let mut bytes = std::fs::read(&v1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes[mid + 1] ^= 0xff;
    std::fs::write(&corrupt, &bytes).unwrap();
    let out = app.rollout("7.0", &corrupt, &["--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the archive is corrupt"), "{}", stderr(&out));

    // A blob damaged on the coordinator after upload: the agent's digest check catches it.
    let v8 = app.release("8.0", false);
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&v8).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let out = app.c.fleetctl(&[
        "rollout",
        "start",
        "app",
        "--artifact",
        v8.to_str().unwrap(),
        "--version",
        "8.0",
        "--hosts",
        "nosuch",
    ]);
    assert_eq!(out.status.code(), Some(1), "an unknown host is refused before anything starts");
    assert!(stderr(&out).contains("no host named \"nosuch\""), "{}", stderr(&out));
    // Upload it (fleetctl uploads only for a rollout that can start), then damage it.
    {
        use fleet_proto::v1::upload_artifact_request::Part;
        use fleet_proto::v1::{ArtifactHeader, UploadArtifactRequest};
        let data = std::fs::read(&v8).unwrap();
        let header =
            ArtifactHeader { sha256: sha.clone(), size_bytes: data.len() as u64, name: "app-8.0.tar.gz".into() };
        let parts = vec![
            UploadArtifactRequest { part: Some(Part::Header(header)) },
            UploadArtifactRequest { part: Some(Part::Data(data)) },
        ];
        app.c.control().await.upload_artifact(tokio_stream::iter(parts)).await.unwrap();
    }
    let blob = app.c.dir().join("coordinator/artifacts").join(&sha);
    let mut b = std::fs::read(&blob).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&blob, b).unwrap();
    let out = app.rollout("8.0", &v8, &["--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));

    // Nothing was written outside the release directories, and pc2 still serves 1.0.
    let after: Vec<String> = tree(&root)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            !p.starts_with("logs")
                && !p.starts_with("store")
                && !p.starts_with("app/backups")
                && !p.starts_with("artifacts")
        })
        .collect();
    assert!(after.is_empty(), "written outside the releases: {after:?}");
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 1.0\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_survives_a_coordinator_crash() {
    let _g = serial().await;
    let mut app = App::start(&["main-pc", "pc2"], "").await;
    let v1 = app.release("1.0", false);
    assert!(app.rollout("1.0", &v1, &["--watch", "--max-parallel", "2"]).status.success());
    let v2 = app.release("2.0", false);
    let out = app.c.fleetctl(&[
        "rollout",
        "start",
        "app",
        "--artifact",
        v2.to_str().unwrap(),
        "--version",
        "2.0",
        "--min-healthy-time",
        "3s",
        "--healthy-deadline",
        "20s",
    ]);
    let id = stdout(&out).trim().to_string();
    app.wait_rollout(&id, "main-pc deploying", |r| host_state(r, "main-pc") == "deploying").await;
    app.c.coordinator.as_mut().unwrap().kill9();
    let opts = app.c.opts.clone();
    app.c.start_coordinator(opts).await;
    let out = app.c.fleetctl(&["rollout", "status", &id, "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for h in ["main-pc", "pc2"] {
        assert_eq!(app.serves(h).await.as_deref(), Some("hello from app 2.0\n"));
        // The deploy on main-pc ran once: one 2.0 release, switched to once.
        let log = std::fs::read_to_string(app.c.dir().join(h).join("logs/app.log")).unwrap();
        assert_eq!(log.matches("app 2.0 listening").count(), 1, "{h} restarted into 2.0 more than once:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_on_a_later_host_reverts_the_hosts_already_moved() {
    let _g = serial().await;
    let app = App::start(&["main-pc", "pc2"], "").await;
    let v1 = app.release("1.0", false);
    assert!(app.rollout("1.0", &v1, &["--watch", "--max-parallel", "2"]).status.success());
    let v2 = app.c.dir().join("app-2.0.tar.gz");
    app_release_on(&v2, "2.0", Some("pc2"));
    let out = app.rollout("2.0", &v2, &["--watch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("rolled back") && err.contains("pc2: ") && err.contains("exited with status 3 during start"),
        "{err}"
    );
    let text = stdout(&out);
    assert!(text.contains("main-pc healthy") && text.contains("main-pc reverted"), "{text}");
    for h in ["main-pc", "pc2"] {
        assert_eq!(app.serves(h).await.as_deref(), Some("hello from app 1.0\n"), "{h}");
    }
    let list = app.c.fleetctl(&["rollout", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v[0]["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_during_probation_rolls_back_before_starting() {
    let _g = serial().await;
    let mut app = App::start(&["pc2"], "").await;
    let v1 = app.release("1.0", false);
    assert!(app.rollout("1.0", &v1, &["--watch"]).status.success());
    let v2 = app.release("2.0", false);
    let out = app.c.fleetctl(&[
        "rollout",
        "start",
        "app",
        "--artifact",
        v2.to_str().unwrap(),
        "--version",
        "2.0",
        "--min-healthy-time",
        "30s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    // Wait until pc2 serves 2.0: switched, in probation.
    eventually(Duration::from_secs(30), "pc2 in probation on 2.0", || async {
        (app.serves("pc2").await.as_deref() == Some("hello from app 2.0\n")).then_some(())
    })
    .await;
    let current = app.c.dir().join("pc2/app/current");
    assert!(std::fs::read_link(&current).unwrap().to_string_lossy().contains("2.0-"));
    app.c.agent("pc2").kill9();
    let port = app.ports[0].1;
    let conf = app.c.dir().join("pc2/conf");
    let svc = app_service(&app.c.dir().join("pc2/app"), port, &conf, "");
    app.c.start_agent_with("pc2", Duration::from_millis(500), &svc);
    // The new agent switched back before starting the service: it comes up on 1.0.
    let body = eventually(Duration::from_secs(30), "pc2 serving again", || async { app.serves("pc2").await }).await;
    assert_eq!(body, "hello from app 1.0\n");
    assert!(std::fs::read_link(&current).unwrap().to_string_lossy().contains("1.0-"));
    let log = app.c.agent("pc2").log_text();
    assert!(log.contains("found an unfinished deploy: rolling back before starting the service"), "{log}");
    let out = app.c.fleetctl(&["rollout", "status", &id, "--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the agent restarted while applying this command"), "{}", stderr(&out));
    let rel = app.releases("pc2");
    assert!(rel.contains(&("1.0".to_string(), "current".to_string())), "{rel:?}");
    assert!(rel.contains(&("2.0".to_string(), "bad".to_string())), "{rel:?}");
}

/// Invariant 10 at the two points a random kill -9 almost never lands on: right after the
/// pending record is durable (nothing switched yet) and right after `current` moved (the new
/// release never started). Either way the next start rolls back before starting the service:
/// 1.0 serves, the files under `backup_paths` are as they were, 2.0 is marked bad.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_between_the_pending_record_and_the_restart_rolls_back() {
    let _g = serial().await;
    for point in [fleet_agent::failpoint::AFTER_PENDING, fleet_agent::failpoint::AFTER_SWITCH] {
        let mut app = App::start(&["pc2"], "").await;
        let v1 = app.release("1.0", false);
        assert!(app.rollout("1.0", &v1, &["--watch"]).status.success(), "{point}");
        let port = app.ports[0].1;
        let conf = app.c.dir().join("pc2/conf");
        let svc = app_service(&app.c.dir().join("pc2/app"), port, &conf, "");
        app.c.agent("pc2").terminate(Duration::from_secs(15));
        app.c.start_agent_env("pc2", Duration::from_millis(500), &svc, &[("FLEET_FAILPOINTS", point)]);
        app.c.wait_online(&["pc2"], Duration::from_secs(15)).await;

        let v2 = app.release("2.0", false);
        let out = app.rollout("2.0", &v2, &[]);
        assert!(out.status.success(), "{point}: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        let status = app.c.agent("pc2").wait_exit(Duration::from_secs(30));
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{point}: {status:?}");
        let current = std::fs::read_link(app.c.dir().join("pc2/app/current")).unwrap();
        let switched = current.to_string_lossy().contains("2.0-");
        assert_eq!(switched, point == fleet_agent::failpoint::AFTER_SWITCH, "{point}: current is {current:?}");
        // A file that appeared after the backup was taken: the rollback removes it.
        std::fs::write(conf.join("left-by-2.0"), "x").unwrap();

        app.c.start_agent_with("pc2", Duration::from_millis(500), &svc);
        let body = eventually(Duration::from_secs(30), "pc2 serving again", || async { app.serves("pc2").await }).await;
        assert_eq!(body, "hello from app 1.0\n", "{point}");
        let current = std::fs::read_link(app.c.dir().join("pc2/app/current")).unwrap();
        assert!(current.to_string_lossy().contains("1.0-"), "{point}: current is {current:?}");
        assert!(!conf.join("left-by-2.0").exists(), "{point}: backup_paths not restored");
        let log = app.c.agent("pc2").log_text();
        assert!(log.contains("found an unfinished deploy: rolling back before starting the service"), "{point}: {log}");
        let out = app.c.fleetctl(&["rollout", "status", &id, "--watch"]);
        assert_eq!(out.status.code(), Some(1), "{point}");
        assert!(stderr(&out).contains("the agent restarted while applying this command"), "{point}: {}", stderr(&out));
        let rel = app.releases("pc2");
        assert!(rel.contains(&("1.0".to_string(), "current".to_string())), "{point}: {rel:?}");
        assert!(rel.contains(&("2.0".to_string(), "bad".to_string())), "{point}: {rel:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn old_releases_are_pruned_but_never_current_or_previous() {
    let _g = serial().await;
    let app = App::start(&["pc2"], "keep_releases = 2").await;
    for v in ["1.0", "2.0", "3.0"] {
        let a = app.release(v, false);
        let out = app.rollout(v, &a, &["--watch"]);
        assert!(out.status.success(), "{v}: {}", stderr(&out));
    }
    assert_eq!(
        app.releases("pc2"),
        [("3.0".to_string(), "current".to_string()), ("2.0".to_string(), "previous".to_string())]
    );
    let mut dirs: Vec<String> = std::fs::read_dir(app.c.dir().join("pc2/app/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(dirs[0].starts_with("2.0-") && dirs[1].starts_with("3.0-"), "{dirs:?}");
    // The previous release is still there to go back to.
    let out = app.c.fleetctl(&["rollback", "pc2", "app", "--min-healthy-time", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.0\n"));
    // Failed releases are pruned too, not kept until the next good deploy.
    for v in ["4.0", "5.0"] {
        let a = app.release(v, true);
        assert_eq!(app.rollout(v, &a, &["--watch"]).status.code(), Some(1), "{v} is broken");
    }
    let kept = app.releases("pc2");
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains(&("2.0".to_string(), "current".to_string())), "{kept:?}");
    assert_eq!(std::fs::read_dir(app.c.dir().join("pc2/app/releases")).unwrap().count(), 2);
    assert_eq!(app.serves("pc2").await.as_deref(), Some("hello from app 2.0\n"));
}

/// `[artifacts] max_bytes` is enforced: a larger artifact is refused, announced or not, and
/// nothing of it is kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_over_the_size_limit_is_refused() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts { extra: "[artifacts]\nmax_bytes = \"1KiB\"\n".into(), ..Default::default() })
        .await;
    let port = free_port();
    let svc = app_service(&c.dir().join("pc2/app"), port, &c.dir().join("pc2/conf"), "");
    c.start_agent_with("pc2", Duration::from_millis(500), &svc);
    c.wait_online(&["pc2"], Duration::from_secs(15)).await;
    let big = c.dir().join("big.tar.gz");
    std::fs::write(&big, (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let out = c.fleetctl(&["rollout", "start", "app", "--artifact", big.to_str().unwrap(), "--version", "9.0"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("over the coordinator's limit of 1.0 KiB ([artifacts] max_bytes)"),
        "{}",
        stderr(&out)
    );
    // A client that announces less than it sends is cut off too.
    {
        use fleet_proto::v1::upload_artifact_request::Part;
        use fleet_proto::v1::{ArtifactHeader, UploadArtifactRequest};
        use sha2::Digest;
        let data = std::fs::read(&big).unwrap();
        let sha: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        let parts = vec![
            UploadArtifactRequest {
                part: Some(Part::Header(ArtifactHeader { sha256: sha, size_bytes: 100, name: "x".into() })),
            },
            UploadArtifactRequest { part: Some(Part::Data(data)) },
        ];
        let err = c.control().await.upload_artifact(tokio_stream::iter(parts)).await.unwrap_err();
        assert!(err.message().contains("larger than the announced 100 bytes"), "{err}");
    }
    let left: Vec<_> = std::fs::read_dir(c.dir().join("coordinator/artifacts")).unwrap().flatten().collect();
    assert!(left.is_empty(), "nothing of a refused upload is kept: {left:?}");
}

//! `fleet-coordinator check-config` and start-up refuse bad configs with exit 2, naming the
//! file and every bad key, and start nothing.

use std::process::Command;

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"))
}

#[test]
fn every_bad_key_is_reported_with_the_file_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("coordinator.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nretention = \"1h\"\n[grpc]\nlisten = \"localhost:7443\"\n[agents]\noffline_after = \"15 fortnights\"\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/c-key.pem\"\n",
            data.display()
        ),
    )
    .unwrap();
    for args in [vec!["check-config", "--config"], vec!["run", "--config"]] {
        let out = coordinator().args(&args).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let file = cfg.display().to_string();
        for key in [
            "retention: unknown key",
            "grpc.listen: invalid address \"localhost:7443\"",
            "agents.offline_after: invalid duration",
            "tls.ca: cannot read /nonexistent/ca.pem: no such file",
        ] {
            assert!(err.contains(&format!("{file}: {key}")), "missing `{key}` in:\n{err}");
        }
    }
    assert!(!data.exists(), "nothing may start on a bad config");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = coordinator().args(["run", "--config", "/nonexistent/coordinator.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/coordinator.toml: cannot read the config file: no such file")
    );
}

#[test]
fn a_port_in_use_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    fleetctl::certs::init(&pki, "fleet.local", 30, false).unwrap();
    fleetctl::certs::issue(&pki, fleet_common::identity::Role::Coordinator, "coordinator", &[], 30, false).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{d}/data\"\n[grpc]\nlisten = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/coordinator.pem\"\nkey = \"{p}/coordinator-key.pem\"\n",
            busy.local_addr().unwrap(),
            d = dir.path().display(),
            p = pki.display()
        ),
    )
    .unwrap();
    let out = coordinator().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = coordinator().args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address already in use") && err.contains("[grpc] listen"), "{err}");
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
    let pki = dir.path().join("pki");
    let text = std::fs::read_to_string(&example).unwrap().replace("/etc/fleet/pki", pki.to_str().unwrap());
    let cfg = dir.path().join("coordinator.toml");
    std::fs::write(&cfg, text).unwrap();
    fleetctl::certs::init(&pki, "fleet.local", 30, false).unwrap();
    fleetctl::certs::issue(&pki, fleet_common::identity::Role::Coordinator, "coordinator", &[], 30, false).unwrap();
    let out = coordinator().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every commented-out setting is valid once uncommented (the placeholders filled in).
    let hash = bcrypt::hash("secret", 4).unwrap();
    let uncommented: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if (rest.starts_with('[') && rest.ends_with(']'))
                    || rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .map(|l| {
            l.replace("$2y$10$...", &hash)
                .replace("sha256:<64 hex digits>", &format!("sha256:{}", "ab".repeat(32)))
                .replace("http.pem", "coordinator.pem")
                .replace("http-key.pem", "coordinator-key.pem")
                + "\n"
        })
        .collect();
    for section in [
        "[enrollment]",
        "[http.tls]",
        "[http.basic_auth_users]",
        "[access.operators]",
        "ca_key = ",
        "[[remote_write]]",
        "[alerting.client]",
        "[cluster]",
        "[cluster.tls]",
    ] {
        assert!(uncommented.contains(&format!("\n{section}")), "{section} is not in the example: {uncommented}");
    }
    std::fs::write(&cfg, &uncommented).unwrap();
    let out = coordinator().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{uncommented}\n{}", String::from_utf8_lossy(&out.stderr));
}

fn pki_toml(dir: &std::path::Path) -> String {
    let pki = dir.join("pki");
    fleetctl::certs::init(&pki, "fleet.local", 30, false).unwrap();
    fleetctl::certs::issue(&pki, fleet_common::identity::Role::Coordinator, "coordinator", &[], 30, false).unwrap();
    format!(
        "[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/coordinator.pem\"\nkey = \"{p}/coordinator-key.pem\"\n",
        p = pki.display()
    )
}

#[test]
fn check_config_warns_about_rules_and_alertmanagers_that_will_not_work() {
    let dir = tempfile::tempdir().unwrap();
    let tls = pki_toml(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let rules = dir.path().join("rules");
    let cfg = dir.path().join("coordinator.toml");
    let write = |alerting: &str| {
        std::fs::write(&cfg, format!("data_dir = \"{}/data\"\n{tls}[alerting]\n{alerting}", dir.path().display()))
            .unwrap()
    };
    let check = || {
        let out = coordinator().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Valid, but nothing would be loaded and no alert would arrive: said, not refused.
    write(&format!("rule_files = [\"{}/*.yml\"]\nalertmanagers = [\"http://{closed}\"]\n", rules.display()));
    let (code, err) = check();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}: alerting.rule_files: \"{}/*.yml\" matches no file",
            cfg.display(),
            rules.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("alerting.alertmanagers[0]: cannot reach the Alertmanager at http://{closed}")),
        "{err}"
    );

    // An invalid external label name is an error.
    write("external_labels = { \"bad-name\" = \"x\", cluster = \"a\" }\n");
    let (code, err) = check();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("alerting.external_labels.bad-name: is not a valid label name"), "{err}");

    // A rule file fleet cannot evaluate is refused, naming the rule and the construct.
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("node.yml"),
        "groups:\n  - name: node\n    rules:\n      - alert: DiskFilling\n        expr: info(node_filesystem_avail_bytes) < 0\n",
    )
    .unwrap();
    write(&format!("rule_files = [\"{}/*.yml\"]\n", rules.display()));
    let (code, err) = check();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("node.yml:4: alert \"DiskFilling\": the function info() is not supported"), "{err}");
}

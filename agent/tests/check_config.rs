//! `fleet-agent check-config` and start-up refuse bad configs with exit 2, naming the file and
//! every bad key, and start nothing.

use std::path::Path;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
}

fn pki(dir: &Path) -> String {
    for f in ["ca.pem", "a.pem", "a-key.pem"] {
        std::fs::write(dir.join(f), "not checked before the keys are").unwrap();
    }
    format!("[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/a.pem\"\nkey = \"{d}/a-key.pem\"\n", d = dir.display())
}

#[test]
fn every_bad_key_is_reported_with_the_file_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg,
        format!(
            "name = \"main-pc\"\ncoordinator = \"https://127.0.0.1:7443\"\ndata_dir = \"{}\"\nreport_interval = \"every now and then\"\ncolour = \"blue\"\n[labels]\nrole = \"gpu\\u001b[2J\"\n{}\n[[services]]\nname = \"api\"\nrestart = \"sometimes\"\n[services.health]\nhttp = \"::not a url::\"\n[[services]]\nname = \"api\"\ncommand = \"/bin/true\"\n[[services]]\nname = \"web\"\ncommand = \"/bin/true\"\nworkdir = \"/nonexistent/web\"\nuser = \"no-such-user-x\"\n",
            data.display(),
            pki(dir.path())
        ),
    )
    .unwrap();
    for args in [vec!["check-config", "--config"], vec!["run", "--config"]] {
        let out = agent().args(&args).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let file = cfg.display().to_string();
        for key in [
            "report_interval: invalid duration",
            "colour: unknown key",
            "services[api].command: is required",
            "services[api].restart: unknown restart policy \"sometimes\"",
            "services[api].health.http: invalid health URL",
            "services[1].name: duplicate service name \"api\"",
            "services[web].workdir: /nonexistent/web does not exist; create it or fix the path",
            "services[web].user: no user named \"no-such-user-x\"",
            "labels.role: label values may not hold control characters",
        ] {
            assert!(err.contains(&format!("{file}: {key}")), "missing `{key}` in:\n{err}");
        }
    }
    assert!(!data.exists(), "nothing may start on a bad config");
}

#[test]
fn a_missing_config_file_or_bad_address_is_named() {
    let out = agent().args(["check-config", "--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/agent.toml: cannot read the config file: no such file")
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "name = \"x\"\ncoordinator = \"coordinator:7443\"\ndata_dir = \"/tmp/x\"\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/x.pem\"\nkey = \"/nonexistent/x-key.pem\"\n").unwrap();
    let out = agent().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("coordinator: \"coordinator:7443\" must start with https://")
            || err.contains("coordinator: invalid URL"),
        "{err}"
    );
    assert!(err.contains("tls.ca: cannot read /nonexistent/ca.pem: no such file"), "{err}");
}

#[test]
fn the_example_configs_in_deploy_are_valid() {
    for name in ["main-pc", "pc2"] {
        let dir = tempfile::tempdir().unwrap();
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/{name}.toml"));
        let text = std::fs::read_to_string(&example).unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let text = text.replace("/etc/fleet/pki", pki.to_str().unwrap());
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, text).unwrap();
        fleetctl::certs::init(&pki, "fleet.local", 30, false).unwrap();
        fleetctl::certs::issue(&pki, fleet_common::identity::Role::Agent, name, &[], 30, false).unwrap();
        let out = agent().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
        assert!(out.status.success(), "{}: {}", example.display(), String::from_utf8_lossy(&out.stderr));
    }
}

//! `fleetctl certs` as an operator uses it: files and modes, no silent overwrite, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn fleetctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
}

#[test]
fn init_and_issue_write_certificates_and_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out =
        fleetctl().args(["certs", "init", "--dir"]).arg(d).args(["--trust-domain", "lab.example"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fleetctl()
        .args([
            "certs",
            "issue",
            "coordinator",
            "coordinator",
            "--san",
            "fleet.lab.example",
            "--san",
            "10.1.2.3",
            "--dir",
        ])
        .arg(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://lab.example/coordinator"));
    let out = fleetctl().args(["certs", "issue", "agent", "main-pc", "--days", "30", "--dir"]).arg(d).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://lab.example/agent/main-pc"));
    for key in ["ca-key.pem", "coordinator-key.pem", "main-pc-key.pem"] {
        let mode = std::fs::metadata(d.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // No overwrite without --force: exit 1, file unchanged.
    let before = std::fs::read(d.join("main-pc.pem")).unwrap();
    let out = fleetctl().args(["certs", "issue", "agent", "main-pc", "--dir"]).arg(d).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists; pass --force"));
    assert_eq!(std::fs::read(d.join("main-pc.pem")).unwrap(), before);
    let out = fleetctl().args(["certs", "issue", "agent", "main-pc", "--force", "--dir"]).arg(d).output().unwrap();
    assert!(out.status.success());
    assert_ne!(std::fs::read(d.join("main-pc.pem")).unwrap(), before);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleetctl().args(["certs", "issue", "agent", "pc2", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fleetctl certs init"));
    let out = fleetctl().args(["certs", "issue", "wizard", "pc2", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = fleetctl().args(["certs", "issue", "agent", "../evil", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

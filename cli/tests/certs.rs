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
    // With a CA in place, so that it is the name that is refused.
    assert!(fleetctl().args(["certs", "init", "--dir"]).arg(dir.path()).output().unwrap().status.success());
    for evil in ["../evil", "/etc/passwd", "a/b", ".hidden", ""] {
        let out = fleetctl().args(["certs", "issue", "agent", evil, "--dir"]).arg(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{evil:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid name"), "{evil:?}");
    }
    assert!(!dir.path().join("../evil.pem").exists() && !dir.path().join("a").exists());
    // A validity of no days is an already expired certificate: refused.
    let out =
        fleetctl().args(["certs", "issue", "agent", "pc2", "--days", "0", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--days 0 would make a certificate that has already expired")
    );
    assert!(!dir.path().join("pc2.pem").exists());
}

/// An expired certificate is named as such, with when and how to reissue, instead of a
/// handshake that fails for no stated reason.
#[test]
fn an_expired_certificate_says_so_and_how_to_reissue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(fleetctl().args(["certs", "init", "--dir"]).arg(d).output().unwrap().status.success());
    // Made by hand: fleetctl refuses to make an expired certificate.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(d.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(d.join("ca.pem")).unwrap(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names =
        vec![rcgen::SanType::URI("spiffe://fleet.local/operator/alice".to_string().try_into().unwrap())];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(40);
    params.not_after = now - time::Duration::days(10);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join("alice.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("alice-key.pem"), key.serialize_pem()).unwrap();
    let out = fleetctl()
        .args(["hosts", "--addr", "https://127.0.0.1:1", "--ca"])
        .arg(d.join("ca.pem"))
        .arg("--cert")
        .arg(d.join("alice.pem"))
        .arg("--key")
        .arg(d.join("alice-key.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("alice.pem expired at") && err.contains("(10d ago)"), "{err}");
    assert!(err.contains("fleetctl certs issue operator alice --dir DIR"), "{err}");
}

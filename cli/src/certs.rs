//! `fleetctl certs init|issue`: the fleet PKI (docs/design.md §3). ECDSA P-256 keys; a CA valid for
//! 10 years that records the trust domain as its own URI SAN; leaf certificates carrying the
//! identity `spiffe://<trust-domain>/<role>/<name>` as a URI SAN. Private keys are written with
//! mode 0600, and nothing existing is overwritten without `--force`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fleet_common::identity::{DEFAULT_TRUST_DOMAIN, Identity, Role, valid_name};

use crate::CliError;

/// Files written by `certs init`.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key.
pub const CA_KEY: &str = "ca-key.pem";

/// What `certs issue` produced.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// The identity it carries.
    pub identity: Identity,
}

/// The longest validity `--days` may ask for (a hundred years).
pub const MAX_DAYS: u32 = 36_500;

fn check_days(days: u32) -> Result<(), CliError> {
    if days == 0 {
        return Err(CliError::usage("--days 0 would make a certificate that has already expired; give at least 1"));
    }
    if days > MAX_DAYS {
        return Err(CliError::usage(format!("--days {days} is more than {MAX_DAYS} (a hundred years)")));
    }
    Ok(())
}

fn check_free(paths: &[&Path], force: bool) -> Result<(), CliError> {
    if force {
        return Ok(());
    }
    for p in paths {
        if p.exists() {
            return Err(CliError::failed(format!(
                "{} already exists; pass --force to replace it (certificates made from the old one stop working)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with `mode`, through a temporary file in the same
/// directory, so a crash never leaves half a key.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("fleet")));
    let fail = |e: std::io::Error| {
        CliError::failed(format!("cannot write {}: {}", path.display(), fleet_common::io_reason(&e)))
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failed(format!("cannot create {}: {}", dir.display(), fleet_common::io_reason(&e))))
}

/// `certs init`: creates `dir/ca.pem` and `dir/ca-key.pem`.
pub fn init(dir: &Path, trust_domain: &str, days: u32, force: bool) -> Result<(PathBuf, PathBuf), CliError> {
    check_days(days)?;
    if trust_domain.is_empty()
        || !trust_domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(CliError::usage(format!(
            "invalid trust domain \"{trust_domain}\"; use a DNS-like name such as {DEFAULT_TRUST_DOMAIN}"
        )));
    }
    mkdir(dir)?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    check_free(&[&cert_path, &key_path], force)?;
    let (cert_pem, key_pem) = fleet_common::pki::new_root(trust_domain, days).map_err(CliError::failed)?;
    write_file(&key_path, &key_pem, 0o600)?;
    write_file(&cert_path, &cert_pem, 0o644)?;
    Ok((cert_path, key_path))
}

/// The trust domain recorded in a CA certificate (its `spiffe://<domain>` URI SAN).
pub fn ca_trust_domain(ca_pem: &str) -> Option<String> {
    fleet_common::pki::ca_trust_domain(ca_pem)
}

/// `certs issue`: creates `dir/NAME.pem` and `dir/NAME-key.pem`, signed by the CA in `dir`.
pub fn issue(dir: &Path, role: Role, name: &str, sans: &[String], days: u32, force: bool) -> Result<Issued, CliError> {
    check_days(days)?;
    if !valid_name(name) {
        return Err(CliError::usage(format!(
            "invalid name \"{name}\": use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            CliError::usage(format!(
                "cannot read {}: {}; create a CA first with `fleetctl certs init --dir {}`",
                p.display(),
                fleet_common::io_reason(&e),
                dir.display()
            ))
        })
    };
    let ca_pem = read(&ca_cert_path)?;
    let ca_key_pem = read(&ca_key_path)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    check_free(&[&cert_path, &key_path], force)?;
    let minted = mint(&ca_pem, &ca_key_pem, role, name, sans, days).map_err(|e| CliError {
        code: e.code,
        message: e
            .message
            .replace("the CA key", &ca_key_path.display().to_string())
            .replace("the CA certificate", &ca_cert_path.display().to_string()),
    })?;
    write_file(&key_path, &minted.key_pem, 0o600)?;
    write_file(&cert_path, &minted.cert_pem, 0o644)?;
    Ok(Issued { cert: cert_path, key: key_path, identity: minted.identity })
}

pub use fleet_common::pki::Minted;

/// Issues a certificate for `role` `name` signed by the CA given as PEM, in memory (for
/// `certs issue` and for tools such as fleet-loadgen that need many identities).
pub fn mint(
    ca_pem: &str,
    ca_key_pem: &str,
    role: Role,
    name: &str,
    sans: &[String],
    days: u32,
) -> Result<Minted, CliError> {
    if !valid_name(name) {
        return Err(CliError::usage(format!("invalid name \"{name}\"")));
    }
    check_days(days)?;
    let signer = fleet_common::pki::Signer::from_pem(ca_pem, ca_key_pem).map_err(CliError::usage)?;
    signer
        .issue(role, name, sans, days)
        .map_err(|e| if e.starts_with("--san") { CliError::usage(e) } else { CliError::failed(e) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issues_certificates_that_carry_identities() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "example.org", 3650, false).unwrap();
        let ca = std::fs::read_to_string(dir.path().join(CA_CERT)).unwrap();
        assert_eq!(ca_trust_domain(&ca).as_deref(), Some("example.org"));
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let issued = issue(dir.path(), Role::Agent, "pc2", &[], 365, false).unwrap();
        assert_eq!(issued.identity.uri(), "spiffe://example.org/agent/pc2");
        let pem = std::fs::read_to_string(&issued.cert).unwrap();
        let der = fleet_common::pki::first_cert_der(&pem).unwrap();
        assert_eq!(Identity::from_cert_der(&der).unwrap(), issued.identity);
        let mode = std::fs::metadata(&issued.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // Nothing is overwritten without --force.
        let err = issue(dir.path(), Role::Agent, "pc2", &[], 365, false).unwrap_err();
        assert!(err.message.contains("already exists; pass --force"), "{}", err.message);
        assert_eq!(std::fs::read_to_string(&issued.cert).unwrap(), pem);
        issue(dir.path(), Role::Agent, "pc2", &[], 365, true).unwrap();
        assert_ne!(std::fs::read_to_string(&issued.cert).unwrap(), pem);

        let err = init(dir.path(), "example.org", 3650, false).unwrap_err();
        assert!(err.message.contains("ca.pem already exists"), "{}", err.message);
    }

    #[test]
    fn coordinator_certificates_name_the_server() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), DEFAULT_TRUST_DOMAIN, 3650, false).unwrap();
        let issued = issue(
            dir.path(),
            Role::Coordinator,
            "coordinator",
            &["fleet.example".into(), "10.0.0.5".into()],
            30,
            false,
        )
        .unwrap();
        let pem = std::fs::read_to_string(&issued.cert).unwrap();
        let der = fleet_common::pki::first_cert_der(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
        assert!(names.iter().any(|n| n.contains("fleet.example")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("0a:00:00:05")), "{names:?}");
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, 30);
    }

    #[test]
    fn issue_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), Role::Operator, "alice", &[], 365, false).unwrap_err();
        assert!(err.message.contains("fleetctl certs init"), "{}", err.message);
        assert_eq!(err.code, 2);
    }
}

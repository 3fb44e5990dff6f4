//! The agent's identity (docs/design.md §11): the certificate files of `[tls]`, or an enrolled
//! identity kept under `data_dir/identity`: a key made on this machine (it never leaves it),
//! the certificate the coordinator signed for it, and the CA. An enrolled agent renews its
//! certificate over its session once two thirds of its lifetime have passed.
//!
//! The key and the certificate live in one file (`agent.pem`, mode 0600), replaced by a
//! rename, so a crash never pairs a new key with an old certificate.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use fleet_common::identity::{Identity, Role};
use fleet_common::tls::{TlsFiles, TlsMaterial};
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::enroll_service_client::EnrollServiceClient;
use fleet_proto::v1::{EnrollRequest, IssuedCertificate, RenewRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::config::{Join, TlsSource};

/// The directory under data_dir.
pub const DIR: &str = "identity";
const BUNDLE: &str = "agent.pem";
const CA: &str = "ca.pem";
const STATE: &str = "renewal.json";

/// The files of an enrolled identity under `data_dir`.
pub fn enrolled_files(data_dir: &Path) -> TlsFiles {
    let d = data_dir.join(DIR);
    TlsFiles { ca: d.join(CA), cert: d.join(BUNDLE), key: d.join(BUNDLE) }
}

/// Whether an identity was enrolled under `data_dir`.
pub fn is_enrolled(data_dir: &Path) -> bool {
    enrolled_files(data_dir).cert.exists()
}

/// When to renew, by this machine's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Renewal {
    /// Renew from then on (ms).
    renew_at_ms: i64,
    /// The certificate ends then (ms, by this machine's clock at receipt).
    expires_at_ms: i64,
}

/// Why enrollment did not work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnrollError {
    /// The coordinator refused the token (or the request): trying again will not help.
    #[error("the coordinator refused the enrollment: {0}")]
    Refused(String),
    /// The coordinator could not be reached or checked against the pin.
    #[error("cannot reach the coordinator: {0}")]
    Unreachable(String),
    /// Something on this machine (files, keys).
    #[error("{0}")]
    Local(String),
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| format!("cannot write {}: {}", path.display(), fleet_common::io_reason(&e));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks what the coordinator sent and keeps it: the key with its certificate, the CA, and
/// when to renew. Returns the loaded material.
fn keep(data_dir: &Path, name: &str, key_pem: &str, issued: &IssuedCertificate) -> Result<TlsMaterial, String> {
    let bundle = format!("{key_pem}{}", issued.cert_pem);
    let material = TlsMaterial::from_pem(issued.ca_pem.as_bytes(), bundle.as_bytes(), key_pem.as_bytes())
        .map_err(|e| format!("the coordinator's answer is not a usable certificate: {e}"))?;
    let id = material.identity();
    if id.role != Role::Agent || id.name != name {
        return Err(format!("the coordinator issued a certificate for {id}, not for agent {name}"));
    }
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {}", dir.display(), fleet_common::io_reason(&e)))?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let files = enrolled_files(data_dir);
    write_atomic(&files.ca, &issued.ca_pem, 0o644)?;
    write_atomic(&files.cert, &bundle, 0o600)?;
    let now = fleet_common::now_ms();
    let lifetime = issued.lifetime_ms.min(i64::MAX as u64 / 2) as i64;
    let renewal = Renewal { renew_at_ms: now + lifetime * 2 / 3, expires_at_ms: now + lifetime };
    write_atomic(&dir.join(STATE), &serde_json::to_string(&renewal).expect("renewal serializes"), 0o644)?;
    Ok(material)
}

/// Enrolls this machine as agent `name` with `join`: makes a key, checks the coordinator
/// against the CA pin, sends a request with the token, and keeps the answer under
/// `data_dir/identity`. Nothing is written unless the coordinator issued a certificate.
pub async fn enroll(coordinator: &str, join: &Join, name: &str, data_dir: &Path) -> Result<TlsMaterial, EnrollError> {
    let pin = fleet_common::pki::parse_pin(&join.ca_pin).map_err(EnrollError::Local)?;
    // The trust domain is the coordinator's; the request carries only the key.
    let (key_pem, csr) =
        fleet_common::pki::new_key_and_csr(&Identity::new("fleet", Role::Agent, name)).map_err(EnrollError::Local)?;
    let channel = fleet_common::tls::connect_pinned(coordinator, &pin)
        .await
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    let issued = EnrollServiceClient::new(channel)
        .enroll(EnrollRequest { token: join.token.trim().to_string(), name: name.to_string(), csr })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                EnrollError::Refused(s.message().to_string())
            }
            _ => EnrollError::Unreachable(fleet_common::tls::status_detail(&s)),
        })?
        .into_inner();
    let material = keep(data_dir, name, &key_pem, &issued).map_err(EnrollError::Local)?;
    let labels: Vec<String> = issued.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(identity = %material.identity(), labels = %labels.join(","), files = %data_dir.join(DIR).display(), "enrolled");
    Ok(material)
}

/// The identity in use, replaced at renewal.
#[derive(Debug)]
pub struct Credentials {
    data_dir: PathBuf,
    name: String,
    files: TlsFiles,
    renewable: bool,
    current: RwLock<TlsMaterial>,
}

impl Credentials {
    /// Loads the identity `source` names for agent `name`.
    pub fn load(source: &TlsSource, name: &str, data_dir: &Path) -> Result<Credentials, String> {
        let (files, renewable) = match source {
            TlsSource::Files(f) => (f.clone(), false),
            TlsSource::Enrolled { .. } => (enrolled_files(data_dir), true),
        };
        let material = TlsMaterial::load(&files).map_err(|e| e.to_string())?;
        let id = material.identity();
        if id.role != Role::Agent || id.name != name {
            return Err(format!(
                "{} carries identity {id}, but this agent is configured as \"{name}\"; issue it a certificate with `fleetctl certs issue agent {name}` or fix `name`",
                files.cert.display()
            ));
        }
        Ok(Credentials {
            data_dir: data_dir.to_path_buf(),
            name: name.to_string(),
            files,
            renewable,
            current: RwLock::new(material),
        })
    }

    /// The material for the next connection.
    pub fn current(&self) -> TlsMaterial {
        self.current.read().expect("credentials lock").clone()
    }

    /// Whether this agent renews its own certificate (it enrolled).
    pub fn renewable(&self) -> bool {
        self.renewable
    }

    /// How long until the certificate is to be renewed (zero: now), for an enrolled agent.
    pub fn renew_in(&self) -> Option<Duration> {
        if !self.renewable {
            return None;
        }
        let at = std::fs::read(self.data_dir.join(DIR).join(STATE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Renewal>(&b).ok())
            .map(|r| r.renew_at_ms)
            .or_else(|| {
                // Without the note: two thirds of the certificate's own validity.
                let info = fleet_common::pki::cert_info(self.current().leaf()).ok()?;
                let life = info.not_after_s - info.not_before_s;
                Some((info.not_before_s + life * 2 / 3).saturating_mul(1000))
            })?;
        Some(Duration::from_millis((at - fleet_common::now_ms()).max(0) as u64))
    }

    /// Renews over `channel` (the live session's): a new key, a request, the new certificate
    /// kept, and used for the next connection. Returns the new material.
    pub async fn renew(&self, channel: Channel) -> Result<TlsMaterial, String> {
        let id = self.current().identity().clone();
        let (key_pem, csr) = fleet_common::pki::new_key_and_csr(&id)?;
        let issued =
            tokio::time::timeout(Duration::from_secs(30), AgentServiceClient::new(channel).renew(RenewRequest { csr }))
                .await
                .map_err(|_| "the coordinator did not answer the renewal within 30s".to_string())?
                .map_err(|s| fleet_common::tls::status_detail(&s))?
                .into_inner();
        let material = keep(&self.data_dir, &self.name, &key_pem, &issued)?;
        *self.current.write().expect("credentials lock") = material.clone();
        Ok(material)
    }

    /// Loads the files again if they changed since (an operator enrolled the machine again
    /// while the agent ran); returns whether the identity changed.
    pub fn reload_if_changed(&self) -> bool {
        let Ok(m) = TlsMaterial::load(&self.files) else { return false };
        if m.identity().name != self.name {
            return false;
        }
        let mut cur = self.current.write().expect("credentials lock");
        if cur.leaf() == m.leaf() {
            return false;
        }
        *cur = m;
        true
    }
}

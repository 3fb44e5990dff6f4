//! Connecting fleetctl to the coordinator, and turning gRPC failures into exit codes and
//! messages that say what to do next.

use std::path::PathBuf;

use fleet_common::tls::{TlsFiles, TlsMaterial, connect_coordinator};
use fleet_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

use crate::{CliError, Conn};

/// Where fleetctl connects and with which identity.
#[derive(Debug, Clone)]
pub struct Target {
    /// The coordinator's address.
    pub addr: String,
    /// PKI files.
    pub tls: TlsFiles,
}

const HINT: &str =
    "set --ca/--cert/--key or FLEET_CA/FLEET_CERT/FLEET_KEY (under `fleetctl dev`: source .fleet-dev/fleetctl.env)";

impl Target {
    /// Takes the address and files from the command line and environment.
    pub fn from_conn(cli: &Conn) -> Result<Target, CliError> {
        let need = |v: &Option<PathBuf>, what: &str| {
            v.clone().ok_or_else(|| CliError::usage(format!("no {what} given; {HINT}")))
        };
        Ok(Target {
            addr: cli.addr.clone(),
            tls: TlsFiles {
                ca: need(&cli.ca, "CA certificate")?,
                cert: need(&cli.cert, "client certificate")?,
                key: need(&cli.key, "client key")?,
            },
        })
    }

    /// A connected ControlService client; its calls carry the trace context when fleetctl
    /// exports traces (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub async fn control(&self) -> Result<Control, CliError> {
        let tls = TlsMaterial::load(&self.tls).map_err(|e| CliError::usage(e.to_string()))?;
        warn_if_expiring(&tls, &self.tls.cert);
        let _ = DIALED.set(tls.clone());
        let channel = connect_coordinator(&self.addr, &tls).await.map_err(|e| match e {
            fleet_common::tls::ConnectError::BadAddress { .. } => CliError::usage(e.to_string()),
            _ => CliError::connect(e.to_string()),
        })?;
        Ok(ControlServiceClient::with_interceptor(channel, fleet_common::telemetry::Inject))
    }
}

/// The identity fleetctl dialed the coordinator with, for [`status_error`]'s diagnosis of a
/// connection the coordinator closed (fleetctl dials one coordinator per run).
static DIALED: std::sync::OnceLock<TlsMaterial> = std::sync::OnceLock::new();

/// How long [`status_error`] waits for the coordinator's alert when it looks for one.
const DIAGNOSIS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A ControlService client whose calls carry the trace context.
pub type Control =
    ControlServiceClient<tonic::service::interceptor::InterceptedService<Channel, fleet_common::telemetry::Inject>>;

/// How long before its end fleetctl starts saying that its certificate expires.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

/// Says on stderr when the operator's certificate ends within [`EXPIRY_WARNING`].
fn warn_if_expiring(tls: &TlsMaterial, path: &std::path::Path) {
    let Ok(info) = fleet_common::pki::cert_info(tls.leaf()) else { return };
    let left_s = info.not_after_s - fleet_common::now_ms() / 1000;
    if left_s < EXPIRY_WARNING.as_secs() as i64 {
        eprintln!(
            "warning: your certificate {} ({}) expires at {} (in {}); ask an admin for a new one before then (fleetctl certs issue operator {} --force)",
            path.display(),
            tls.identity(),
            fleet_common::rfc3339(info.not_after_s.saturating_mul(1000)),
            fleet_common::human_duration(std::time::Duration::from_secs(left_s.max(0) as u64)),
            tls.identity().name
        );
    }
}

/// Maps a failed call to an exit code and a message.
pub fn status_error(addr: &str, s: tonic::Status) -> CliError {
    use tonic::Code;
    if let Some(c) = std::error::Error::source(&s).and_then(fleet_common::tls::ConnectError::find) {
        return CliError::connect(c.to_string());
    }
    let msg = s.message().to_string();
    // A transport failure (the TLS session refused after the handshake, a reset connection)
    // arrives as a status with a source; the source says what happened.
    if std::error::Error::source(&s).is_some() {
        let detail = fleet_common::tls::status_detail(&s);
        // Closed without a reason right after connecting: the coordinator may have refused
        // the certificate with an alert that got lost (TLS 1.3); dial again to read it.
        let bare = ["connection closed", "connection reset", "broken pipe"].iter().any(|w| detail.contains(w));
        if bare
            && let Some(tls) = DIALED.get()
            && let Some(reason) = fleet_common::tls::refusal_reason(addr, tls, DIAGNOSIS_WAIT)
        {
            return CliError::connect(format!("the connection to {addr} failed: {reason}"));
        }
        return CliError::connect(format!(
            "the connection to {addr} failed: {}{}",
            detail,
            fleet_common::tls::alert_hint(&detail)
        ));
    }
    match s.code() {
        Code::Unauthenticated => CliError::connect(format!("the coordinator at {addr} refused this identity: {msg}")),
        Code::PermissionDenied => CliError::connect(format!("permission denied by the coordinator at {addr}: {msg}")),
        Code::Unavailable => CliError::connect(format!("the coordinator at {addr} is unavailable: {msg}")),
        Code::InvalidArgument => CliError::usage(msg),
        Code::Unimplemented => CliError::failed(format!(
            "the coordinator at {addr} does not support this request ({msg}); is it an older fleet-coordinator?"
        )),
        _ => CliError::failed(msg),
    }
}

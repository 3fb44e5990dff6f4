//! How the coordinator calls services outside fleet over HTTP (Alertmanagers, webhooks,
//! remote-write receivers): credentials and TLS as a configuration table gives them, read the
//! same way wherever they appear (docs/install.md, section 8).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_common::config::Section;

/// Credentials for a receiver.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic { username: String, password: String },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <secret>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<secret>)"),
        }
    }
}

impl Auth {
    /// `req` with these credentials.
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
            Auth::Bearer(t) => req.bearer_auth(t),
        }
    }
}

/// TLS of https calls: the CA certificates to trust and a client certificate to present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificates (PEM); default: fleet's CA (`[tls] ca`).
    pub ca_file: Option<PathBuf>,
    /// Certificate chain and key (PEM) to present.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Reads `basic_auth = { username, password | password_file }` or
/// `bearer_token | bearer_token_file` from `s` (at most one of them).
pub fn read_auth(s: &mut Section) -> Option<Auth> {
    let bearer = secret(s, "bearer_token", "bearer_token_file");
    let basic = match s.section("basic_auth") {
        Some(mut b) => {
            let username = b.required_string("username");
            let password = secret(&mut b, "password", "password_file");
            if password.is_none() && !b.has("password") && !b.has("password_file") {
                b.error("password", "is required: set password or password_file");
            }
            b.finish();
            username.zip(password).map(|(username, password)| Auth::Basic { username, password })
        }
        None => None,
    };
    match (basic, bearer) {
        (Some(_), Some(_)) => {
            s.error("bearer_token", "set basic_auth or bearer_token, not both");
            None
        }
        (b, t) => b.or(t.map(Auth::Bearer)),
    }
}

/// A secret given inline as `key` or in the file `file_key` names (trailing newline dropped).
fn secret(s: &mut Section, key: &'static str, file_key: &'static str) -> Option<String> {
    let inline = s.string(key);
    let file = s.path(file_key);
    match (inline, file) {
        (Some(_), Some(_)) => {
            s.error(key, format!("set {key} or {file_key}, not both"));
            None
        }
        (Some(v), None) => Some(v),
        (None, Some(p)) => match std::fs::read_to_string(&p) {
            Ok(v) => Some(v.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                s.error(file_key, format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)));
                None
            }
        },
        (None, None) => None,
    }
}

/// Reads `ca_file`, `cert_file` and `key_file` from `s`, checking that the files can be read.
pub fn read_tls(s: &mut Section) -> ClientTls {
    let ca_file = s.path("ca_file");
    let (cert, key) = (s.path("cert_file"), s.path("key_file"));
    if cert.is_some() != key.is_some() {
        s.error("cert_file", "cert_file and key_file go together: set both or neither");
    }
    for (k, p) in [("ca_file", &ca_file), ("cert_file", &cert), ("key_file", &key)] {
        if let Some(p) = p
            && let Err(e) = std::fs::metadata(p)
        {
            s.error(k, format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)));
        }
    }
    ClientTls { ca_file, client_cert: cert.zip(key) }
}

/// An http client whose https calls trust `tls.ca_file` (or `fleet_ca`) and present
/// `tls.client_cert`; plain http calls are made as they are.
pub fn client(tls: &ClientTls, fleet_ca: &Path, timeout: Duration) -> Result<reqwest::Client, String> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)))
    };
    let ca = read(tls.ca_file.as_deref().unwrap_or(fleet_ca))?;
    let cert = match &tls.client_cert {
        Some((c, k)) => Some((read(c)?, read(k)?)),
        None => None,
    };
    let config =
        fleet_common::tls::outbound_client_config(&ca, cert.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))?;
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .use_preconfigured_tls(config)
        .build()
        .map_err(|e| e.to_string())
}

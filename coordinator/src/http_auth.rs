//! The HTTP port's security (docs/design.md §11), in the shape of Prometheus' web configuration:
//! optional TLS (with an optional client CA, which then requires client certificates), and
//! authentication by `basic_auth_users` (bcrypt hashes) or `bearer_tokens` (SHA-256 hashes of
//! the tokens). `public_paths` stay open for scrapers and probes. With none of it configured
//! the port is open, as it always was (its default address is loopback).
//!
//! bcrypt is slow on purpose: verifications run one at a time on a blocking thread (a flood
//! of wrong passwords costs at most one core), and a password that verified is remembered
//! (by its SHA-256) so that a scraper's every request does not pay for it again.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The paths open without credentials unless `public_paths` says otherwise.
pub const DEFAULT_PUBLIC_PATHS: [&str; 3] = ["/metrics", "/health/live", "/health/ready"];
/// Passwords remembered as verified, at most.
const VERIFIED_MEMORY: usize = 1024;
/// A bcrypt hash compared against when the user is unknown, so that unknown users take as
/// long as wrong passwords (cost 10, the password "fleet").
const DUMMY_HASH: &str = "$2b$10$pOoEQYvVOeLI.YAePm5y9O.ooCmnJTEmN4AdwbX88Ep9taSa1DbFu";

/// `[http.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTls {
    /// The server certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its key, PEM.
    pub key: PathBuf,
    /// With it, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// What `[http]` says about who may use the port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpSecurity {
    /// TLS, when set.
    pub tls: Option<HttpTls>,
    /// User name to bcrypt hash.
    pub basic_auth_users: BTreeMap<String, String>,
    /// SHA-256 hashes of accepted bearer tokens.
    pub bearer_tokens: Vec<[u8; 32]>,
    /// Paths served without credentials.
    pub public_paths: Vec<String>,
}

impl HttpSecurity {
    /// Whether requests need credentials.
    pub fn requires_credentials(&self) -> bool {
        !self.basic_auth_users.is_empty() || !self.bearer_tokens.is_empty()
    }

    /// Reads the security keys of the `[http]` section `s`.
    pub fn read(s: &mut fleet_common::config::Section) -> HttpSecurity {
        let tls = s.section("tls").and_then(|mut t| {
            let cert = t.required_path("cert");
            let key = t.required_path("key");
            let client_ca = t.path("client_ca");
            for (k, p) in [("cert", &cert), ("key", &key), ("client_ca", &client_ca)] {
                if let Some(p) = p
                    && let Err(e) = std::fs::metadata(p)
                {
                    t.error(k, format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)));
                }
            }
            t.finish();
            Some(HttpTls { cert: cert?, key: key?, client_ca })
        });
        let basic_auth_users = s.string_map("basic_auth_users").unwrap_or_default();
        for (user, hash) in &basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                s.error(
                    &format!("basic_auth_users.{user}"),
                    "is not a bcrypt hash ($2y$, $2b$ or $2a$); make one with `fleetctl hash-password`",
                );
            }
        }
        let mut bearer_tokens = Vec::new();
        for (i, t) in s.string_list("bearer_tokens").unwrap_or_default().iter().enumerate() {
            match parse_sha256(t) {
                Some(h) => bearer_tokens.push(h),
                None => s.error(
                    &format!("bearer_tokens[{i}]"),
                    "must be sha256:<64 hex digits>, the hash of the token (printf %s \"$TOKEN\" | sha256sum); tokens are not kept in clear",
                ),
            }
        }
        let public_paths = match s.string_list("public_paths") {
            Some(p) => {
                for (i, path) in p.iter().enumerate() {
                    if !path.starts_with('/') {
                        s.error(
                            &format!("public_paths[{i}]"),
                            format!("\"{path}\" is not a path (it must start with /)"),
                        );
                    }
                }
                p
            }
            None => DEFAULT_PUBLIC_PATHS.iter().map(|p| p.to_string()).collect(),
        };
        HttpSecurity { tls, basic_auth_users, bearer_tokens, public_paths }
    }

    /// The rustls configuration of `[http.tls]`: TLS 1.2 and 1.3 (Prometheus, Grafana and
    /// browsers), HTTP/1.1, client certificates required when `client_ca` is set.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        let Some(t) = &self.tls else { return Ok(None) };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| format!("http.tls: cannot read {}: {}", p.display(), fleet_common::io_reason(&e)))
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(&t.cert)?).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err(format!("http.tls.cert: {} holds no PEM certificate", t.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&t.key)?)
            .map_err(|_| format!("http.tls.key: {} holds no PEM private key", t.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &t.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca)?).filter_map(Result::ok) {
                    roots.add(c).map_err(|e| format!("http.tls.client_ca: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("http.tls.client_ca: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!("http.tls: {} and {} do not make a TLS identity: {e}", t.cert.display(), t.key.display())
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user and the SHA-256 of a password that verified.
type Verified = (String, [u8; 32]);

/// The authentication step in front of the routes.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    security: Arc<HttpSecurity>,
    /// (user, SHA-256 of the password) that verified.
    verified: Arc<Mutex<HashSet<Verified>>>,
    /// One bcrypt at a time.
    bcrypt: Arc<tokio::sync::Semaphore>,
}

impl Gatekeeper {
    /// For `security`.
    pub fn new(security: HttpSecurity) -> Self {
        Gatekeeper {
            security: Arc::new(security),
            verified: Arc::default(),
            bcrypt: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Whether the request carries valid credentials.
    async fn authenticated(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else { return false };
        if let Some(token) = value.strip_prefix("Bearer ") {
            let h: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            return self.security.bearer_tokens.iter().fold(false, |ok, t| ok | same(t, &h));
        }
        let Some(b64) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
        let Ok(text) = String::from_utf8(decoded) else { return false };
        let Some((user, password)) = text.split_once(':') else { return false };
        let key = (user.to_string(), Sha256::digest(password.as_bytes()).into());
        if self.verified.lock().expect("verified lock").contains(&key) {
            return true;
        }
        let hash = self.security.basic_auth_users.get(user).cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let Ok(_one) = self.bcrypt.acquire().await else { return false };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        if ok {
            let mut v = self.verified.lock().expect("verified lock");
            if v.len() >= VERIFIED_MEMORY {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

/// The middleware: public paths pass, the rest need credentials when any are configured.
pub async fn require_credentials(State(gate): State<Gatekeeper>, req: Request, next: Next) -> Response {
    let s = &gate.security;
    if !s.requires_credentials() || s.public_paths.iter().any(|p| p == req.uri().path()) {
        return next.run(req).await;
    }
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if gate.authenticated(authorization).await {
        return next.run(req).await;
    }
    let mut r =
        (StatusCode::UNAUTHORIZED, "credentials required: basic auth or a bearer token ([http] of coordinator.toml)\n")
            .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"fleet\""));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gatekeeper {
        Gatekeeper::new(HttpSecurity {
            basic_auth_users: [("prometheus".to_string(), bcrypt::hash("s3cret", 4).unwrap())].into(),
            bearer_tokens: vec![Sha256::digest(b"tok").into()],
            public_paths: vec!["/metrics".into()],
            tls: None,
        })
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn credentials_are_checked() {
        let g = gate();
        assert!(g.authenticated(Some(&basic("prometheus", "s3cret"))).await);
        // Remembered, and still right.
        assert!(g.authenticated(Some(&basic("prometheus", "s3cret"))).await);
        assert!(!g.authenticated(Some(&basic("prometheus", "wrong"))).await);
        assert!(!g.authenticated(Some(&basic("nobody", "fleet"))).await, "the dummy hash admits nobody");
        assert!(!g.authenticated(Some("Basic !!!")).await);
        assert!(g.authenticated(Some("Bearer tok")).await);
        assert!(!g.authenticated(Some("Bearer tok2")).await);
        assert!(!g.authenticated(None).await);
        assert!(bcrypt::verify("fleet", DUMMY_HASH).unwrap());
    }

    #[test]
    fn security_is_read_from_the_http_table() {
        let (mut root, errors) = fleet_common::config::parse_toml(&format!(
            "[http]\nbearer_tokens = [\"sha256:{}\", \"plain\"]\npublic_paths = [\"/metrics\", \"nope\"]\n[http.basic_auth_users]\nbob = \"x\"\n",
            "ab".repeat(32)
        ))
        .unwrap();
        let mut s = root.section("http").unwrap();
        let sec = HttpSecurity::read(&mut s);
        s.finish();
        assert_eq!(sec.bearer_tokens.len(), 1);
        let text = format!("{errors:?}");
        for key in ["http.bearer_tokens[1]", "http.public_paths[1]", "http.basic_auth_users.bob"] {
            assert!(text.contains(key), "{key}: {text}");
        }
        let (mut root, _) = fleet_common::config::parse_toml("[http]\n").unwrap();
        let mut s = root.section("http").unwrap();
        let sec = HttpSecurity::read(&mut s);
        assert!(!sec.requires_credentials());
        assert_eq!(sec.public_paths, DEFAULT_PUBLIC_PATHS);
    }
}

//! Mutual TLS for every fleet connection: loading the PKI files, rustls configurations that
//! speak TLS 1.3 only, and the client connector that checks it reached the coordinator.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::Section;
use crate::identity::{Identity, IdentityError, Role};

/// The paths of one party's PKI files, as given in config or on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate that signs every fleet certificate.
    pub ca: PathBuf,
    /// This party's certificate.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads a `[tls]` table (ca, cert, key) and checks that the files can be read.
    pub fn read(root: &mut Section) -> Option<TlsFiles> {
        let Some(mut tls) = root.section("tls") else {
            root.error("tls", "is required: set ca, cert and key (make them with `fleetctl certs`)");
            return None;
        };
        let ca = tls.required_path("ca");
        let cert = tls.required_path("cert");
        let key = tls.required_path("key");
        for (k, p) in [("ca", &ca), ("cert", &cert), ("key", &key)] {
            if let Some(p) = p
                && let Err(e) = std::fs::metadata(p)
            {
                tls.error(k, format!("cannot read {}: {}", p.display(), crate::io_reason(&e)));
            }
        }
        tls.finish();
        Some(TlsFiles { ca: ca?, cert: cert?, key: key? })
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}; {hint}")]
    Read { path: PathBuf, reason: String, hint: &'static str },
    /// A file was read but holds nothing usable.
    #[error("{path} holds no {what}; {hint}")]
    Empty { path: PathBuf, what: &'static str, hint: &'static str },
    /// The certificate has no fleet identity.
    #[error("{path}: {source}")]
    Identity { path: PathBuf, source: IdentityError },
    /// rustls refused the combination (for example key and certificate do not match).
    #[error("{0}")]
    Rustls(String),
    /// The certificate is outside its validity period: the other side would refuse it, with
    /// a message that does not say why.
    #[error("the certificate {path} {when}; {fix} (or check this machine's clock)")]
    Validity { path: PathBuf, when: String, fix: String },
}

/// Whether `cert` is valid at `now_s` (Unix seconds): `Err` says when it expired, or from
/// when it will be valid.
fn check_validity(cert: &CertificateDer<'_>, now_s: i64) -> Result<(), String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Ok(()) };
    let v = x.validity();
    let at = |t: i64| crate::rfc3339(t.saturating_mul(1000));
    if now_s > v.not_after.timestamp() {
        let ago = crate::human_duration(std::time::Duration::from_secs((now_s - v.not_after.timestamp()) as u64));
        return Err(format!("expired at {} ({ago} ago)", at(v.not_after.timestamp())));
    }
    if now_s < v.not_before.timestamp() {
        return Err(format!("is not valid before {}", at(v.not_before.timestamp())));
    }
    Ok(())
}

const HINT_CA: &str = "create a CA with `fleetctl certs init --dir DIR` or point to the right file";
const HINT_CERT: &str = "issue one with `fleetctl certs issue ROLE NAME --dir DIR`";

/// Loaded PKI material: trust roots, this party's chain and key, and its identity.
#[derive(Debug)]
pub struct TlsMaterial {
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

fn read(path: &Path, hint: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read { path: path.to_path_buf(), reason: crate::io_reason(&e), hint })
}

fn certs_from_pem(path: &Path, hint: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, hint)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_path_buf(), what: "PEM certificate", hint });
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// Loads and checks the three files: every problem is named with its path.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let roots = certs_from_pem(&files.ca, HINT_CA)?;
        let chain = certs_from_pem(&files.cert, HINT_CERT)?;
        let key_pem = read(&files.key, HINT_CERT)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Empty {
            path: files.key.clone(),
            what: "PEM private key",
            hint: HINT_CERT,
        })?;
        let identity = Identity::from_cert_der(&chain[0])
            .map_err(|source| TlsError::Identity { path: files.cert.clone(), source })?;
        let now_s = crate::now_ms() / 1000;
        let reissue = format!(
            "issue a new one with `fleetctl certs issue {} {} --dir DIR`",
            identity.role.as_str(),
            identity.name
        );
        let renew_ca =
            "make a new CA with `fleetctl certs init --dir DIR --force` and issue every certificate again".to_string();
        for (path, cert, fix) in [(&files.cert, &chain[0], reissue), (&files.ca, &roots[0], renew_ca)] {
            check_validity(cert, now_s).map_err(|when| TlsError::Validity { path: path.clone(), when, fix })?;
        }
        let material = TlsMaterial { roots, chain, key, identity };
        // Build both configurations once so a mismatched key or a bad CA fails at load time,
        // with the file names, instead of at the first handshake.
        material.server_config().map_err(|e| {
            TlsError::Rustls(format!(
                "{} and {} do not form a usable TLS identity with CA {}: {e}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))
        })?;
        Ok(material)
    }

    /// Material from PEM text in memory (for tools that mint identities, such as
    /// fleet-loadgen).
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let pem = |what: &'static str| TlsError::Empty { path: PathBuf::from("(memory)"), what, hint: HINT_CERT };
        let roots: Vec<_> = CertificateDer::pem_slice_iter(ca).filter_map(Result::ok).collect();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(cert).filter_map(Result::ok).collect();
        if roots.is_empty() {
            return Err(pem("PEM CA certificate"));
        }
        let first = chain.first().ok_or_else(|| pem("PEM certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| pem("PEM private key"))?;
        let identity = Identity::from_cert_der(first)
            .map_err(|source| TlsError::Identity { path: PathBuf::from("(memory)"), source })?;
        Ok(TlsMaterial { roots, chain, key, identity })
    }

    /// This party's identity, from its certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn root_store(&self) -> Result<RootCertStore, rustls::Error> {
        let mut store = RootCertStore::empty();
        for cert in &self.roots {
            store.add(cert.clone())?;
        }
        Ok(store)
    }

    /// A server configuration that requires a client certificate from the fleet CA and speaks
    /// TLS 1.3 with HTTP/2 only.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        self.server_config_with(self.client_verifier(false)?, false)
    }

    /// The fleet CA's verdict on client certificates; with `allow_anonymous`, a client may
    /// also come without one (and is then refused by every service but enrollment).
    pub fn client_verifier(&self, allow_anonymous: bool) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(self.root_store()?), provider());
        let builder = if allow_anonymous { builder.allow_unauthenticated() } else { builder };
        builder.build().map_err(|e| rustls::Error::General(e.to_string()))
    }

    /// A server configuration with `verifier` for client certificates. With `send_roots` the
    /// trust roots follow this party's chain, so that a machine that knows only the CA's pin
    /// can check the server ([`connect_pinned`]).
    pub fn server_config_with(
        &self,
        verifier: Arc<dyn ClientCertVerifier>,
        send_roots: bool,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut chain = self.chain.clone();
        if send_roots {
            chain.extend(self.roots.iter().filter(|r| !self.chain.contains(r)).cloned());
        }
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The trust roots, PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|c| crate::pki::pem_block("CERTIFICATE", c.as_ref())).collect()
    }

    /// The trust roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// This party's certificate, DER.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// A client configuration that presents this party's certificate, trusts only the fleet
    /// CA and speaks TLS 1.3 with HTTP/2 only.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.root_store()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Why a connection to the coordinator could not be made, in words that say what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The address is not an `https://host:port` URL.
    #[error("invalid coordinator address `{addr}`: {reason}; use https://HOST:PORT")]
    BadAddress { addr: String, reason: String },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {reason}; is fleet-coordinator running? set FLEET_ADDR or --addr")]
    Tcp { addr: String, reason: String },
    /// The TLS handshake failed (wrong CA, expired or revoked certificate, not a coordinator).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    /// Connecting took too long.
    #[error("cannot connect to {addr}: no answer within {secs}s; is the address right and the port open?")]
    Timeout { addr: String, secs: u64 },
    /// The local TLS material is unusable.
    #[error("{0}")]
    Tls(String),
}

impl ConnectError {
    /// Finds a `ConnectError` in an error's source chain (tonic wraps connector errors).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(c) = e.downcast_ref::<ConnectError>() {
                return Some(c);
            }
            cur = e.source();
        }
        None
    }
}

/// How long a TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a gRPC channel to the coordinator at `addr` over mutual TLS, checking that the peer's
/// certificate carries the coordinator identity of our trust domain. The channel is connected
/// when this returns.
pub async fn connect_coordinator(addr: &str, tls: &TlsMaterial) -> Result<Channel, ConnectError> {
    let endpoint = coordinator_endpoint(addr)?;
    let connector = Connector {
        addr: addr.to_string(),
        config: tls.client_config().map_err(|e| ConnectError::Tls(e.to_string()))?,
        trust_domain: Some(tls.identity().trust_domain.clone()),
    };
    endpoint.connect_with_connector(connector).await.map_err(|e| match ConnectError::find(&e) {
        Some(c) => c.clone(),
        None => ConnectError::Tcp { addr: addr.to_string(), reason: chain_to_string(&e) },
    })
}

/// Why the coordinator at `addr` refuses connections made with `tls`, if it sends an alert
/// saying so: dials again (blocking, within `wait`), completes the handshake, sends nothing
/// and reads the server's first records. In TLS 1.3 a client's handshake completes before the
/// server has checked the client's certificate, so the alert refusing it (revoked, unknown
/// CA) arrives after the first request was sent, and can be lost behind it: a call then fails
/// with a bare "connection closed". Asked on that failure only, this finds the alert.
pub fn refusal_reason(addr: &str, tls: &TlsMaterial, wait: Duration) -> Option<String> {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let uri: Uri = addr.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let target = (host.as_str(), uri.port_u16().unwrap_or(443)).to_socket_addrs().ok()?.next()?;
    let mut tcp = std::net::TcpStream::connect_timeout(&target, wait).ok()?;
    tcp.set_read_timeout(Some(wait)).ok()?;
    tcp.set_write_timeout(Some(wait)).ok()?;
    let name = ServerName::try_from(host).ok()?;
    let mut conn = rustls::ClientConnection::new(tls.client_config().ok()?, name).ok()?;
    let deadline = std::time::Instant::now() + wait;
    let alert = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        text.contains("alert").then(|| format!("{text}{}", alert_hint(&text)))
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return alert(&e);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
    }
    // The handshake is done from here: what the server sends next is session tickets (it took
    // the certificate) or an alert (it did not).
    let mut buf = [0u8; 512];
    while std::time::Instant::now() < deadline {
        match conn.read_tls(&mut tcp) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if let Err(e) = conn.process_new_packets() {
            return alert(&e);
        }
        // Application data before an alert means the connection works.
        if conn.reader().read(&mut buf).is_ok_and(|n| n > 0) {
            return None;
        }
    }
    None
}

/// Opens a channel to the coordinator at `addr` with server-only TLS, trusting it only if its
/// chain holds the CA whose pin is `pin` and that CA signed its certificate, which must carry
/// the coordinator identity: how a machine that is not enrolled yet reaches enrollment.
pub async fn connect_pinned(addr: &str, pin: &str) -> Result<Channel, ConnectError> {
    let endpoint = coordinator_endpoint(addr)?;
    let verifier = Arc::new(PinVerifier { pin: pin.to_string(), provider: provider() });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector { addr: addr.to_string(), config: Arc::new(config), trust_domain: None };
    endpoint.connect_with_connector(connector).await.map_err(|e| match ConnectError::find(&e) {
        Some(c) => c.clone(),
        None => ConnectError::Tcp { addr: addr.to_string(), reason: chain_to_string(&e) },
    })
}

/// Checks a server against a CA pin: a certificate of the presented chain must have the pinned
/// key, and the server's certificate must verify (signature, validity, name) with that one as
/// the only root.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| crate::pki::ca_pin(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's chain holds no CA with pin {}: this is not the coordinator the pin names (or it is not set up for enrollment)",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(root.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn coordinator_endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    let bad = |reason: &str| ConnectError::BadAddress { addr: addr.to_string(), reason: reason.to_string() };
    let uri: Uri = addr.parse().map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https (fleet speaks only mutual TLS)"));
    }
    if uri.host().is_none() || uri.port_u16().is_none() {
        return Err(bad("host and port are required"));
    }
    // The connector below does TLS itself; tonic refuses an https URI without its own TLS
    // layer, so the endpoint is given the same authority with the http scheme.
    let plain: Uri = format!("http://{}", uri.authority().map(|a| a.as_str()).unwrap_or_default())
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
    Ok(Endpoint::from(plain)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Renders an error and its sources as one line.
pub fn chain_to_string(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// A failed call's message followed by the causes tonic attached (transport errors), on one
/// line, without tonic's debug rendering.
pub fn status_detail(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        let t = e.to_string();
        if !out.contains(&t) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&t);
        }
        cur = e.source();
    }
    out
}

#[derive(Clone)]
struct Connector {
    addr: String,
    config: Arc<ClientConfig>,
    /// The trust domain the coordinator's identity must be in (any, when connecting by pin:
    /// the pinned CA signed it).
    trust_domain: Option<String>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ConnectError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, this.connect(uri)).await.unwrap_or_else(|_| {
                Err(ConnectError::Timeout { addr: this.addr.clone(), secs: CONNECT_TIMEOUT.as_secs() })
            })
        })
    }
}

impl Connector {
    async fn connect(&self, uri: Uri) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, ConnectError> {
        let addr = self.addr.clone();
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| ConnectError::Tcp { addr: addr.clone(), reason: crate::io_reason(&e) })?;
        tcp.set_nodelay(true).ok();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| ConnectError::BadAddress { addr: addr.clone(), reason: e.to_string() })?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| ConnectError::Handshake { addr: addr.clone(), reason: handshake_reason(&e) })?;
        let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
            ConnectError::Handshake { addr: addr.clone(), reason: "the server sent no certificate".into() }
        })?;
        match Identity::from_cert_der(peer) {
            Ok(id)
                if id.role == Role::Coordinator
                    && self.trust_domain.as_ref().is_none_or(|td| *td == id.trust_domain) => {}
            Ok(id) => {
                return Err(ConnectError::Handshake {
                    addr,
                    reason: format!(
                        "the server presented identity {id}, expected spiffe://{}/coordinator",
                        self.trust_domain.as_deref().unwrap_or("<trust-domain>")
                    ),
                });
            }
            Err(e) => return Err(ConnectError::Handshake { addr, reason: format!("the server's certificate: {e}") }),
        }
        Ok(TokioIo::new(tls))
    }
}

fn handshake_reason(e: &io::Error) -> String {
    let base = e.get_ref().map(|inner| inner.to_string()).unwrap_or_else(|| e.to_string());
    let hint = alert_hint(&base);
    format!("{base}{hint}")
}

/// A hint for a TLS failure message: what the alert or verifier error means for the operator.
pub fn alert_hint(base: &str) -> &'static str {
    if base.contains("UnknownIssuer") || base.contains("unknown issuer") {
        "; the coordinator's certificate is not signed by the CA given with --ca/FLEET_CA"
    } else if base.contains("NotValidForName") || base.contains("not valid for name") {
        "; connect with a host name or IP listed in the coordinator certificate (`fleetctl certs issue coordinator coordinator --san HOST`)"
    } else if base.contains("CertificateRequired") || base.contains("certificate required") {
        "; the coordinator requires a client certificate (--cert/--key or FLEET_CERT/FLEET_KEY)"
    } else if base.contains("BadCertificate")
        || base.contains("bad certificate")
        || base.contains("UnknownCA")
        || base.contains("unknown CA")
        || base.contains("DecryptError")
    {
        "; the coordinator does not accept this certificate: was it issued by the coordinator's CA?"
    } else if base.contains("CertificateRevoked") || base.contains("revoked") {
        "; the coordinator revoked this certificate (fleetctl certs revoke): an agent must enroll again with a new join token, an operator needs a new certificate"
    } else if base.contains("Expired") || base.contains("expired") {
        "; a certificate has expired: issue a new one with `fleetctl certs issue`"
    } else {
        ""
    }
}

/// A client configuration for https to services outside fleet (a remote-write receiver, an
/// Alertmanager behind TLS): trusting the CA certificates in `ca_pem` (PEM, one or more),
/// presenting `client` (certificate chain and key, PEM) when given, TLS 1.3, HTTP/1.1.
pub fn outbound_client_config(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the CA file is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no PEM certificate".into());
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert).filter_map(Result::ok).collect();
            if chain.is_empty() {
                return Err("the client certificate file holds no PEM certificate".into());
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| "the client key file holds no PEM private key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not match: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

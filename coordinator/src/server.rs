//! The gRPC listener: our own TLS accept loop in front of tonic, so that every connection is
//! counted against `max_connections`, handshakes have a deadline, a refused handshake (no
//! certificate, another CA, revoked) is logged with the peer and the reason, the server's own
//! certificate can be replaced while it runs ([`ServerTls`]), and the connections of a revoked
//! certificate can be cut ([`Connections`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused connection is drained before it is closed (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// How much of a refused client's data is read and dropped before the connection is closed.
const LINGER_BYTES: usize = 64 * 1024;

/// An accepted mutual-TLS connection, holding its slot of `max_connections` until dropped.
/// Once `cut` fires, every read and write fails and the connection closes.
pub struct Conn {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _registered: Option<Registered>,
}

impl Conn {
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "the connection's certificate was revoked"))
    }
}

/// The open connections by the certificate they were made with, so that revoking one cuts
/// them (and with them every session, stream and call they carry).
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<std::sync::Mutex<ConnTable>>,
}

#[derive(Debug, Default)]
struct ConnTable {
    next: u64,
    open: std::collections::HashMap<u64, (fleet_common::pki::CertInfo, CancellationToken)>,
}

/// A connection's entry, removed when the connection is dropped.
struct Registered {
    id: u64,
    table: Connections,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.inner.lock().expect("connections lock").open.remove(&self.id);
    }
}

impl Connections {
    fn register(&self, cert: fleet_common::pki::CertInfo, token: CancellationToken) -> Registered {
        let mut t = self.inner.lock().expect("connections lock");
        t.next += 1;
        let id = t.next;
        t.open.insert(id, (cert, token));
        Registered { id, table: self.clone() }
    }

    /// Cuts every connection whose certificate `matches`; returns how many.
    pub fn cut(&self, matches: impl Fn(&fleet_common::pki::CertInfo) -> bool) -> usize {
        let t = self.inner.lock().expect("connections lock");
        let mut n = 0;
        for (cert, token) in t.open.values() {
            if matches(cert) && !token.is_cancelled() {
                token.cancel();
                n += 1;
            }
        }
        n
    }
}

/// The server side of TLS, replaceable while the coordinator runs: a renewed certificate is
/// used for the next handshake.
#[derive(Debug, Clone)]
pub struct ServerTls {
    current: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
}

impl ServerTls {
    /// Starts with `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        ServerTls { current: Arc::new(std::sync::RwLock::new(config)) }
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().expect("server tls lock").clone()
    }

    /// Uses `config` from the next handshake on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.current.write().expect("server tls lock") = config;
    }
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and passes finished
/// connections to tonic through `out` until `shutdown`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    connections: Connections,
    max_connections: usize,
    out: mpsc::Sender<io::Result<Conn>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tracing::warn!(%peer, max_connections, "connection refused: max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let out = out.clone();
        let metrics = metrics.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
                Ok(Ok(stream)) => {
                    let token = CancellationToken::new();
                    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let registered = leaf
                        .and_then(|der| fleet_common::pki::cert_info(der).ok())
                        .map(|info| connections.register(info, token.clone()));
                    let conn = Conn {
                        stream,
                        _permit: permit,
                        cut: Box::pin(token.cancelled_owned()),
                        _registered: registered,
                    };
                    let _ = out.send(Ok(conn)).await;
                }
                Ok(Err((e, tcp))) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::warn!(%peer, reason = %handshake_reason(&e), "connection refused: TLS handshake failed");
                    linger(tcp).await;
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::warn!(%peer, "connection refused: TLS handshake not completed within {}s", HANDSHAKE_TIMEOUT.as_secs());
                }
            }
        });
    }
}

/// The server side of the gRPC port's TLS: the coordinator's certificate (followed by the
/// trust roots when enrollment is on, for machines that only know the CA's pin), client
/// certificates checked against the CA and the deny list (optional when enrollment is on:
/// only enrollment is open to a client without one).
pub fn grpc_server_config(
    tls: &fleet_common::tls::TlsMaterial,
    enrollment_on: bool,
    authority: &Arc<crate::guard::Authority>,
) -> Result<Arc<rustls::ServerConfig>, crate::RunError> {
    let base = tls.client_verifier(enrollment_on).map_err(|e| crate::RunError::Serve(e.to_string()))?;
    let a = authority.clone();
    let verifier = crate::revocation::DenyingVerifier::new(base, authority.revocations.clone(), move |cert, r| {
        let who = cert.identity.as_ref().map(|i| i.uri()).unwrap_or_else(|| format!("serial {}", cert.serial));
        let msg = format!(
            "TLS handshake with a revoked certificate (serial {}, revoked at {} by {})",
            cert.serial,
            fleet_common::rfc3339(r.revoked_at_s.saturating_mul(1000)),
            r.by
        );
        a.refused(crate::guard::DenyReason::Revoked, &who, "", "handshake", &msg);
    });
    tls.server_config_with(Arc::new(verifier), enrollment_on).map_err(|e| crate::RunError::Serve(e.to_string()))
}

/// Closes a refused connection so that the client reads the alert saying why (a revoked or
/// unknown certificate): half-closes, then reads and drops what the client already sent, for at
/// most [`LINGER`] and [`LINGER_BYTES`]. Closing a socket with unread data sends a reset, which
/// makes the client's next write fail before it has read the alert. The connection keeps its
/// slot of `max_connections` meanwhile, so lingering connections are bounded too.
async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn handshake_reason(e: &io::Error) -> String {
    let s = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
    if s.contains("no certificates") || s.contains("NoCertificatesPresented") {
        "the client presented no certificate (fleet requires mutual TLS)".into()
    } else if s.contains("UnknownIssuer") || s.contains("unknown issuer") || s.contains("BadSignature") {
        "the client certificate is not signed by this coordinator's CA".into()
    } else if s.contains("Revoked") {
        "the client certificate is revoked (fleetctl certs revoke)".into()
    } else if s.contains("Expired") || s.contains("expired") {
        format!("the client certificate has expired ({s})")
    } else {
        s
    }
}

/// Binds `addr`, with an error that says what to change.
pub fn bind(addr: SocketAddr, what: &str, key: &str) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => "; is another fleet-coordinator (or another program) using it?",
            io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges",
            _ => "",
        };
        format!("cannot listen for {what} on {addr}: {}{hint} (set {key})", fleet_common::io_reason(&e))
    })?;
    l.set_nonblocking(true).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(l)
}

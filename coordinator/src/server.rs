//! The gRPC listener: our own TLS accept loop in front of tonic, so that every connection is
//! counted against `max_connections`, handshakes have a deadline, and a refused handshake
//! (no certificate, another CA) is logged with the peer and the reason.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted mutual-TLS connection, holding its slot of `max_connections` until dropped.
pub struct Conn {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and passes finished
/// connections to tonic through `out` until `shutdown`.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
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
        let acceptor = acceptor.clone();
        let out = out.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = out.send(Ok(Conn { stream, _permit: permit })).await;
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::warn!(%peer, reason = %handshake_reason(&e), "connection refused: TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::warn!(%peer, "connection refused: TLS handshake not completed within {}s", HANDSHAKE_TIMEOUT.as_secs());
                }
            }
        });
    }
}

fn handshake_reason(e: &io::Error) -> String {
    let s = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
    if s.contains("no certificates") || s.contains("NoCertificatesPresented") {
        "the client presented no certificate (fleet requires mutual TLS)".into()
    } else if s.contains("UnknownIssuer") || s.contains("unknown issuer") || s.contains("BadSignature") {
        "the client certificate is not signed by this coordinator's CA".into()
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

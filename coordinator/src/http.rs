//! The coordinator's HTTP side (axum, `[http] listen`): `/metrics` for Prometheus and the
//! health endpoints for load balancers and systemd-style probes, and a read-only status page.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::metrics::Metrics;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    c: Arc<Coordinator>,
    /// The gRPC address actually bound.
    grpc_addr: String,
}

impl HttpState {
    /// What coordinator `c`'s HTTP handlers read; `grpc_addr` is the gRPC port as bound.
    pub fn new(c: Arc<Coordinator>, grpc_addr: String) -> Self {
        HttpState { c, grpc_addr }
    }
}

/// The routes, behind `gate`'s credentials check.
pub fn router(state: HttpState, gate: crate::http_auth::Gatekeeper) -> Router {
    let api = crate::promapi::routes(
        crate::promapi::QueryApi {
            tsdb: state.c.tsdb.clone(),
            limits: state.c.config.query,
            shutdown: state.c.shutdown.clone(),
        },
        state.c.alerting.clone(),
        crate::promapi::ServerInfo {
            started_at_ms: state.c.started_at_ms,
            retention: state.c.config.retention,
            exposition: {
                let c = state.c.clone();
                Arc::new(move || exposition(&c))
            },
        },
    );
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(state)
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(gate, crate::http_auth::require_credentials))
}

/// The `/metrics` text of coordinator `c`.
fn exposition(c: &Coordinator) -> String {
    let mut e = crate::metrics::Exposition::with_capacity(4096 + c.registry.len() * 2048);
    crate::series::render_hosts(&mut e, &c.registry);
    crate::sampler::own_families(c, &mut e);
    e.into_string()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], exposition(&s.c)).into_response()
}

/// The read-only status page (crate::status_page).
async fn status_page(State(s): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::status_page::render(
            &s.c.registry,
            s.c.sessions.load(std::sync::atomic::Ordering::Relaxed),
            &s.c.alerting,
            &s.c.rollouts,
        ),
    )
        .into_response()
}

fn store_status(m: &Metrics) -> (bool, String) {
    match m.store_failing() {
        Some((at, e)) => (false, format!("group commit failed {}s ago: {e}", (fleet_common::now_ms() - at) / 1000)),
        None => (true, format!("{} reports stored since start", m.reports_stored.get())),
    }
}

async fn health(State(s): State<HttpState>) -> Response {
    let (store_ok, store_detail) = store_status(&s.c.metrics);
    let serving = !s.c.shutdown.is_cancelled();
    let (online, offline) = s.c.registry.counts();
    let cluster = cluster_part(&s.c.cluster).await;
    let clustered = cluster.as_ref().is_none_or(|c| c["status"] == "ok");
    let status = match (store_ok && serving, clustered) {
        (false, _) => "failing",
        // Sessions, reports and reads go on; rollouts and commands wait for a leader.
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    let mut body = serde_json::json!({
        "status": status,
        "version": fleet_common::VERSION,
        "started_at": fleet_common::rfc3339(s.c.started_at_ms),
        "parts": {
            "store": { "status": if store_ok { "ok" } else { "failing" }, "detail": store_detail },
            "grpc": { "status": if serving { "ok" } else { "stopping" }, "listen": s.grpc_addr },
            // Loading: after a start, the history is read back from the report log while agents
            // attach; rules wait for it, queries see the part read so far.
            "history": {
                "status": if s.c.tsdb.loaded() { "ok" } else { "loading" },
                "series": s.c.tsdb.len(),
            },
            "agents": {
                "status": "ok",
                "sessions": s.c.sessions.load(Ordering::Relaxed),
                "online": online,
                "offline": offline,
            },
        },
    });
    if let Some(c) = cluster {
        body["parts"]["cluster"] = c;
    }
    let code = if status == "failing" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(body)).into_response()
}

/// `/health`'s `cluster` part: etcd reachable, a leader known. `None` alone.
async fn cluster_part(cluster: &crate::cluster::Cluster) -> Option<serde_json::Value> {
    let st = cluster.status().await?;
    let status = match st.state.as_str() {
        "leader" | "follower" => "ok",
        other => other,
    };
    Some(serde_json::json!({
        "status": status,
        "state": st.state,
        "leader": st.leader,
        "members": st.members.iter().map(|m| m.advertise.as_str()).collect::<Vec<_>>(),
        "etcd": { "up": st.etcd_up, "configured": st.etcd_total },
        "detail": st.detail,
    }))
}

async fn ready(State(s): State<HttpState>) -> Response {
    let (store_ok, detail) = store_status(&s.c.metrics);
    if s.c.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !store_ok {
        (StatusCode::SERVICE_UNAVAILABLE, format!("store failing: {detail}\n")).into_response()
    } else {
        "ready\n".into_response()
    }
}

/// How long a client may take to send a request's headers, and how long an idle keep-alive
/// connection is kept: hyper arms this whenever the connection waits for the next request.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long requests in flight get to finish once the coordinator stops.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` (invariant 15: anything reaching the port may
/// be hostile): at most `max_connections` at once (more are closed at once and counted), a
/// connection that sends no complete request headers within [`HEADER_READ_TIMEOUT`] (also
/// between keep-alive requests) is closed, and requests in flight at shutdown get [`GRACE`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_connections: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            tracing::debug!(%peer, max_connections, "HTTP connection refused: [http] max_connections reached");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _slot = slot;
            let stream = match acceptor {
                None => Either::Plain(stream),
                Some(a) => match tokio::time::timeout(HEADER_READ_TIMEOUT, a.accept(stream)).await {
                    Ok(Ok(s)) => Either::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "HTTPS handshake not completed in time");
                        return;
                    }
                },
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GRACE, conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(GRACE, connections.wait()).await;
}

/// A plain or TLS connection of the HTTP port.
enum Either {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Either {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Either {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Either::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Either::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

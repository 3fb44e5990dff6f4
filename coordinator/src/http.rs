//! The coordinator's HTTP side (axum, `[http] listen`): `/metrics` for Prometheus and the
//! health endpoints for load balancers and systemd-style probes, and a read-only status page.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Cluster state.
    pub registry: Arc<Registry>,
    /// Self metrics.
    pub metrics: Arc<Metrics>,
    /// Open agent sessions.
    pub sessions: Arc<AtomicUsize>,
    /// When the coordinator started.
    pub started_at_ms: i64,
    /// The gRPC address actually bound.
    pub grpc_addr: String,
    /// Cancelled when the coordinator begins shutting down (not ready any more).
    pub shutdown: CancellationToken,
    /// Rollouts, for their metrics.
    pub rollouts: Arc<crate::rollouts::Rollouts>,
    /// The history, for the query API.
    pub tsdb: Arc<crate::tsdb::Tsdb>,
    /// Rules and alerts.
    pub alerting: Arc<crate::alerting::Alerting>,
    /// The store, for its size.
    pub store: crate::store::Store,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    let api = crate::promapi::routes(state.tsdb.clone(), state.alerting.clone());
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(state)
        .merge(api)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let mut text = crate::metrics::render(&s.registry, &s.metrics, s.sessions.load(Ordering::Relaxed), s.started_at_ms);
    crate::metrics::render_rollouts(&mut text, &s.rollouts);
    crate::metrics::render_store(&mut text, &s.store);
    crate::metrics::render_alerting(&mut text, &s.alerting, &s.tsdb);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The read-only status page (crate::status_page).
async fn status_page(State(s): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], crate::status_page::render(&s)).into_response()
}

fn store_status(m: &Metrics) -> (bool, String) {
    match m.last_store_error() {
        Some((at, e)) if fleet_common::now_ms() - at < 60_000 => {
            (false, format!("group commit failed {}s ago: {e}", (fleet_common::now_ms() - at) / 1000))
        }
        _ => (true, format!("{} reports stored since start", m.reports_stored.get())),
    }
}

async fn health(State(s): State<HttpState>) -> Response {
    let (store_ok, store_detail) = store_status(&s.metrics);
    let serving = !s.shutdown.is_cancelled();
    let (online, offline) = s.registry.counts();
    let status = if store_ok && serving { "ok" } else { "failing" };
    let body = serde_json::json!({
        "status": status,
        "version": fleet_common::VERSION,
        "started_at": fleet_common::rfc3339(s.started_at_ms),
        "parts": {
            "store": { "status": if store_ok { "ok" } else { "failing" }, "detail": store_detail },
            "grpc": { "status": if serving { "ok" } else { "stopping" }, "listen": s.grpc_addr },
            // Loading: after a start, the history is read back from the report log while agents
            // attach; rules wait for it, queries see the part read so far.
            "history": {
                "status": if s.tsdb.loaded() { "ok" } else { "loading" },
                "series": s.tsdb.len(),
            },
            "agents": {
                "status": "ok",
                "sessions": s.sessions.load(Ordering::Relaxed),
                "online": online,
                "offline": offline,
            },
        },
    });
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn ready(State(s): State<HttpState>) -> Response {
    let (store_ok, detail) = store_status(&s.metrics);
    if s.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !store_ok {
        (StatusCode::SERVICE_UNAVAILABLE, format!("store failing: {detail}\n")).into_response()
    } else {
        "ready\n".into_response()
    }
}

//! fleet-coordinator: the control plane. Agents attach over mutual-TLS gRPC and report; the
//! coordinator stores every report durably before acknowledging it, keeps the cluster state,
//! notices silent hosts, and serves the operator API, `/metrics` and health endpoints.
//!
//! Code map: [`config`] reads the config file; [`store`] owns the sled schema; [`writer`] is
//! the group-commit task in front of it; [`registry`] is the in-memory cluster state;
//! [`session`] serves agents, [`control`] serves fleetctl, [`guard`] decides who may call
//! what (with [`access`] for operators' roles and [`revocation`] for the deny list);
//! [`enroll`] and [`lifecycle`] issue and take back identities; [`server`] accepts TLS
//! connections; [`http`] and [`metrics`] are the HTTP side.

#![forbid(unsafe_code)]

pub mod access;
pub mod alerting;
pub mod artifacts;
pub mod audit;
pub mod certificates;
pub mod clock;
pub mod commands;
pub mod config;
pub mod control;
pub mod enroll;
pub mod guard;
pub mod http;
pub mod http_auth;
pub mod labels;
pub mod lifecycle;
pub mod metrics;
pub mod promapi;
pub mod query;
pub mod registry;
pub mod revocation;
pub mod rollouts;
pub mod series;
pub mod server;
pub mod session;
pub mod status_page;
pub mod store;
pub mod tsdb;
pub mod writer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use fleet_common::identity::Role;
use fleet_common::tls::{TlsError, TlsMaterial};
use fleet_proto::v1::agent_service_server::AgentServiceServer;
use fleet_proto::v1::control_service_server::ControlServiceServer;
use fleet_proto::v1::enroll_service_server::EnrollServiceServer;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::writer::Writer;

/// How long shutdown may take to drain sessions and flush the store.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message the enrollment service reads (a token, a name and a CSR).
const ENROLL_MAX_MESSAGE: usize = 64 * 1024;
/// The file in `data_dir` that tells tools the addresses actually bound (useful with port 0).
pub const ADDRS_FILE: &str = "coordinator.addrs.json";

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Config-level problems found at start-up.
    #[error("{0}")]
    Setup(String),
    /// The TLS files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The store is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A server failed.
    #[error("{0}")]
    Serve(String),
}

/// The two listening sockets, bound before anything else starts.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC (agents and fleetctl).
    pub grpc: std::net::TcpListener,
    /// HTTP (/metrics, /health).
    pub http: std::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub fn bind(config: &CoordinatorConfig) -> Result<Listeners, RunError> {
        let grpc = server::bind(config.grpc_listen, "gRPC", "[grpc] listen").map_err(RunError::Setup)?;
        let http = server::bind(config.http_listen, "HTTP", "[http] listen").map_err(RunError::Setup)?;
        Ok(Listeners { grpc, http })
    }
}

/// Loads the coordinator's TLS material and checks it carries the coordinator identity.
pub fn load_identity(config: &CoordinatorConfig) -> Result<TlsMaterial, RunError> {
    let tls = TlsMaterial::load(&config.tls)?;
    if tls.identity().role != Role::Coordinator {
        return Err(RunError::Setup(format!(
            "{} carries identity {}, not a coordinator identity; issue one with `fleetctl certs issue coordinator coordinator --san HOST`",
            config.tls.cert.display(),
            tls.identity()
        )));
    }
    Ok(tls)
}

/// The signing CA of `[enrollment]`, if enrollment is on: its key with `ca_cert` (or the
/// trust root), in the coordinator's trust domain.
pub fn load_signer(
    config: &CoordinatorConfig,
    tls: &TlsMaterial,
) -> Result<Option<fleet_common::pki::Signer>, RunError> {
    let Some(e) = &config.enrollment else { return Ok(None) };
    let cert_path = e.ca_cert.clone().unwrap_or_else(|| config.tls.ca.clone());
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|err| {
            RunError::Setup(format!("enrollment: cannot read {}: {}", p.display(), fleet_common::io_reason(&err)))
        })
    };
    let signer = fleet_common::pki::Signer::from_pem(&read(&cert_path)?, &read(&e.ca_key)?).map_err(|err| {
        RunError::Setup(format!(
            "enrollment: {}",
            err.replace("the CA key", &e.ca_key.display().to_string())
                .replace("the CA certificate", &cert_path.display().to_string())
        ))
    })?;
    if signer.trust_domain() != tls.identity().trust_domain {
        return Err(RunError::Setup(format!(
            "enrollment: {} issues identities in trust domain {}, but this coordinator serves {}",
            cert_path.display(),
            signer.trust_domain(),
            tls.identity().trust_domain
        )));
    }
    Ok(Some(signer))
}

/// The server side of the gRPC port's TLS: the coordinator's certificate (followed by the
/// trust roots when enrollment is on, for machines that only know the CA's pin), client
/// certificates checked against the CA and the deny list (optional when enrollment is on:
/// only enrollment is open to a client without one).
fn grpc_server_config(
    tls: &TlsMaterial,
    enrollment_on: bool,
    authority: &Arc<guard::Authority>,
) -> Result<Arc<rustls::ServerConfig>, RunError> {
    let base = tls.client_verifier(enrollment_on).map_err(|e| RunError::Serve(e.to_string()))?;
    let a = authority.clone();
    let verifier = revocation::DenyingVerifier::new(base, authority.revocations.clone(), move |cert, r| {
        let who = cert.identity.as_ref().map(|i| i.uri()).unwrap_or_else(|| format!("serial {}", cert.serial));
        let msg = format!(
            "TLS handshake with a revoked certificate (serial {}, revoked at {} by {})",
            cert.serial,
            fleet_common::rfc3339(r.revoked_at_s.saturating_mul(1000)),
            r.by
        );
        a.refused(guard::DenyReason::Revoked, &who, "", "handshake", &msg);
    });
    tls.server_config_with(Arc::new(verifier), enrollment_on).map_err(|e| RunError::Serve(e.to_string()))
}

/// Follows the coordinator's own certificate files: on SIGHUP (with `[access]` from the
/// config file) and whenever their modification times change, the next handshakes use the
/// new certificate. A file that does not load leaves the current one in use, said in the log.
async fn follow_identity(
    config: CoordinatorConfig,
    server_tls: server::ServerTls,
    authority: Arc<guard::Authority>,
    alerting: Arc<alerting::Alerting>,
    enrollment_on: bool,
    shutdown: CancellationToken,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    let mtimes = |files: &fleet_common::tls::TlsFiles| {
        [&files.ca, &files.cert, &files.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut files = config.tls.clone();
    let mut seen = mtimes(&files);
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => true,
            _ = tick.tick() => false,
        };
        if hangup {
            // SIGHUP reloads the rule files, as it does for Prometheus, and [access].
            if let Err(e) = alerting.reload() {
                tracing::error!(error = %e, "rule reload failed; the previous rules stay active");
            }
            match CoordinatorConfig::load(&config.source) {
                Ok(new) => {
                    for w in new.access.warnings() {
                        tracing::warn!("{w}");
                    }
                    let mut cur = authority.access.write().expect("access lock");
                    if *cur != new.access {
                        tracing::info!(operators = new.access.operators.len(), default_role = %new.access.default_role, "access roles reloaded");
                        *cur = new.access;
                    }
                    files = new.tls;
                }
                Err(e) => tracing::error!(error = %e, "config reload failed; the previous [access] stays in effect"),
            }
        }
        let now = mtimes(&files);
        if !hangup && now == seen {
            continue;
        }
        seen = now;
        let loaded = TlsMaterial::load(&files).map_err(RunError::from).and_then(|tls| {
            if tls.identity().role != Role::Coordinator {
                return Err(RunError::Setup(format!("{} is not a coordinator certificate", files.cert.display())));
            }
            let cfg = grpc_server_config(&tls, enrollment_on, &authority)?;
            Ok((tls, cfg))
        });
        match loaded {
            Ok((tls, cfg)) => {
                if let Ok(info) = fleet_common::pki::cert_info(tls.leaf()) {
                    tracing::info!(serial = %info.serial, not_after = %fleet_common::rfc3339(info.not_after_s.saturating_mul(1000)), "the coordinator's certificate is (re)loaded; new connections use it");
                    authority.seen.note(tls.identity().uri(), "coordinator", &info);
                }
                server_tls.replace(cfg);
            }
            Err(e) => {
                tracing::error!(error = %e, "the coordinator's new certificate files do not load; the current certificate stays in use")
            }
        }
    }
}

/// How often the coordinator's certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(5);

/// How often `fleet_agent_up` is recorded into the history (at most; as often as rules are
/// evaluated when that is more often).
pub const UP_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Records `fleet_agent_up` for every known host (0 while offline), the way Prometheus records
/// `up` per scrape; reports add their own 1s at the times they were taken.
async fn sample_up(
    registry: Arc<Registry>,
    tsdb: Arc<tsdb::Tsdb>,
    rollouts: Arc<rollouts::Rollouts>,
    certificates: certificates::Seen,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !tsdb.loaded() {
            // Samples at the present would come before the past still being read back.
            continue;
        }
        let now = fleet_common::now_ms();
        for h in registry.all() {
            tsdb.append_sample(tsdb::UP, &mut [("host", &h.name)], now, if h.online() { 1.0 } else { 0.0 });
        }
        // The coordinator's own rollout results, so rules can alert on rolled-back rollouts.
        let counts = rollouts.counts.by_result.lock().expect("counts lock").clone();
        for result in ["succeeded", "failed", "rolled_back", "aborted"] {
            let n = counts.get(result).copied().unwrap_or(0) as f64;
            tsdb.append_sample("fleet_rollouts_total", &mut [("result", result)], now, n);
        }
        // Certificate expiry, so that FleetCertificateExpiringSoon can see it.
        for (identity, f) in certificates.all() {
            tsdb.append_sample(
                "fleet_certificate_expiry_timestamp_seconds",
                &mut [("identity", &identity), ("kind", f.kind)],
                now,
                f.not_after_s as f64,
            );
            if let Some(at) = f.renew_at_s {
                tsdb.append_sample(
                    "fleet_certificate_renewal_timestamp_seconds",
                    &mut [("identity", &identity), ("kind", f.kind)],
                    now,
                    at as f64,
                );
            }
        }
    }
}

/// How long after a start the artifact collector first runs: time for the agents to attach
/// and say which releases they run, so that none is taken for unused.
const ARTIFACT_GC_DELAY: Duration = Duration::from_secs(600);

/// The artifacts to keep: those unfinished rollouts need, every host's current release and
/// the release before it (as the rollout that moved the host there recorded it), and the two
/// newest succeeded rollouts of each service. `running` is (host, service, version) of what
/// hosts report running.
pub fn artifacts_to_keep(
    rollouts: &[store::RolloutRecord],
    running: &[(String, String, String)],
) -> std::collections::HashSet<String> {
    use std::collections::HashSet;
    let mut keep: HashSet<String> = rollouts.iter().filter(|r| !r.finished()).map(|r| r.sha256.clone()).collect();
    let artifact_of = |service: &str, version: &str| -> Vec<String> {
        rollouts.iter().filter(|r| r.service == service && r.version == version).map(|r| r.sha256.clone()).collect()
    };
    for (host, service, version) in running {
        keep.extend(artifact_of(service, version));
        // The newest rollout that moved this host to its current version knows what it had.
        let previous = rollouts
            .iter()
            .filter(|r| &r.service == service && &r.version == version)
            .filter_map(|r| {
                r.hosts.iter().find(|h| &h.host == host).map(|h| (r.created_at_ms, h.previous_version.clone()))
            })
            .max_by_key(|(at, _)| *at)
            .map(|(_, p)| p);
        if let Some(p) = previous.filter(|p| !p.is_empty()) {
            keep.extend(artifact_of(service, &p));
        }
    }
    let mut per_service: std::collections::HashMap<&str, usize> = Default::default();
    let mut newest_first: Vec<&store::RolloutRecord> = rollouts.iter().collect();
    newest_first.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    for r in newest_first {
        let n = per_service.entry(r.service.as_str()).or_default();
        if *n < 2 && r.state == "succeeded" {
            keep.insert(r.sha256.clone());
            *n += 1;
        }
    }
    keep
}

/// Removes artifacts that nothing needs ([`artifacts_to_keep`]) every minute, from
/// [`ARTIFACT_GC_DELAY`] after the start on.
async fn artifact_gc(
    artifacts: artifacts::Artifacts,
    registry: Arc<Registry>,
    rollouts: Arc<rollouts::Rollouts>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ARTIFACT_GC_DELAY, Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let running: Vec<(String, String, String)> = registry
            .all()
            .iter()
            .flat_map(|h| {
                let services = h.with(|s| s.latest.as_ref().map(|l| l.services.clone()).unwrap_or_default());
                services.into_iter().map(|s| (h.name.clone(), s.name, s.version)).collect::<Vec<_>>()
            })
            .filter(|(_, _, v)| !v.is_empty())
            .collect();
        let keep = artifacts_to_keep(&rollouts.list(), &running);
        let a = artifacts.clone();
        let _ = tokio::task::spawn_blocking(move || a.collect_garbage(&keep)).await;
    }
}

fn write_addrs(data_dir: &Path, grpc: SocketAddr, http: SocketAddr) -> std::io::Result<()> {
    let body = serde_json::json!({ "grpc": grpc.to_string(), "http": http.to_string(), "pid": std::process::id() });
    let tmp = data_dir.join(format!("{ADDRS_FILE}.tmp"));
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(tmp, data_dir.join(ADDRS_FILE))
}

/// Runs the coordinator on the given listeners until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, listeners: Listeners, shutdown: CancellationToken) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        RunError::Setup(format!(
            "cannot create data_dir {}: {}",
            config.data_dir.display(),
            fleet_common::io_reason(&e)
        ))
    })?;
    let tls = load_identity(&config)?;
    let trust_domain = tls.identity().trust_domain.clone();
    let started_at_ms = fleet_common::now_ms();

    let store = Store::open(&config.data_dir, config.retention)?;
    let since = started_at_ms - config.retention.as_millis() as i64;
    let history_dir = config.data_dir.join("history");
    let tsdb = tsdb::Tsdb::on_disk(history_dir.clone(), config.retention.as_millis() as i64, config.max_series)
        .map_err(|e| RunError::Setup(format!("cannot use {} for the history: {e}", history_dir.display())))?;
    let tsdb = Arc::new(tsdb);
    let loading = std::time::Instant::now();
    let loaded = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.load(since)).await.map_err(|e| RunError::Serve(e.to_string()))??
    };
    let registry = Arc::new(Registry::from_loaded(loaded));
    tracing::info!(
        hosts = registry.len(),
        reports = store.reports_held(),
        seconds = loading.elapsed().as_secs_f64(),
        store = %store.path().display(),
        "loaded the store"
    );
    // The history is rebuilt from the report log while agents attach again: a restart of a
    // coordinator holding hours of thousands of agents' reports takes the history minutes to
    // read, and sessions need only the hosts and their marks.
    tsdb.begin_loading();
    {
        let (store, db, stop) = (store.clone(), tsdb.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match store.replay_history(since, || stop.is_cancelled(), |host, r| db.append_report(host, r)) {
                Ok(n) if !stop.is_cancelled() => {
                    db.finish_loading();
                    tracing::info!(
                        reports = n,
                        series = db.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "loaded the history"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    store.abandon_history_replay();
                    db.finish_loading();
                    tracing::error!(error = %e, "cannot read the report log back into the history; queries and rules see what arrives from now on");
                }
            }
        });
    }

    let audit = audit::AuditLog::open(&config.data_dir)
        .map_err(|e| RunError::Setup(format!("cannot open the audit log in {}: {e}", config.data_dir.display())))?;
    let metrics = Arc::new(Metrics::default());
    let revocations = revocation::Revocations::load(store.clone())?;
    let certificates = certificates::Seen::default();
    if let Ok(info) = fleet_common::pki::cert_info(tls.leaf()) {
        certificates.note(tls.identity().uri(), "coordinator", &info);
    }
    for root in tls.roots() {
        if let Ok(info) = fleet_common::pki::cert_info(root) {
            certificates.note(format!("spiffe://{trust_domain}"), "ca", &info);
        }
    }
    for w in config.access.warnings() {
        tracing::warn!("{w}");
    }
    let authority = Arc::new(guard::Authority::new(
        trust_domain.clone(),
        config.access.clone(),
        revocations,
        metrics.clone(),
        audit.clone(),
        certificates.clone(),
    ));
    let signer = load_signer(&config, &tls)?;
    let enrollment_on = signer.is_some();
    let ttl = config.enrollment.as_ref().map(|e| e.cert_ttl).unwrap_or(Duration::from_secs(30 * 86400));
    let enrollment = Arc::new(
        enroll::Enrollment::open(signer, ttl, &tls, store.clone(), audit.clone(), authority.clone())
            .map_err(RunError::Setup)?,
    );
    let connections = server::Connections::default();
    let hub = Arc::new(commands::Hub::default());
    let artifacts = artifacts::Artifacts::open(&config.data_dir, config.artifact_max_bytes).map_err(|e| {
        RunError::Setup(format!("cannot open the artifact store in {}: {e}", config.data_dir.display()))
    })?;
    let rollouts =
        rollouts::Rollouts::start(store.clone(), registry.clone(), hub.clone(), audit.clone(), shutdown.clone())
            .map_err(RunError::Setup)?;
    let alerting = alerting::Alerting::start(config.alerting.clone(), tsdb.clone(), store.clone(), shutdown.clone())
        .map_err(|e| RunError::Setup(format!("rule files: {e}")))?;
    for w in config.alerting.warnings() {
        tracing::warn!("{w}");
    }
    {
        // Said once at start, without holding it up: an Alertmanager may come up later.
        let alerting = config.alerting.clone();
        tokio::spawn(async move {
            for w in alerting.unreachable_notifiers().await {
                tracing::warn!("{w}");
            }
        });
    }
    let sessions = Arc::new(AtomicUsize::new(0));
    let (writer, writer_task) = Writer::start(store.clone(), config.retention, metrics.clone(), tsdb.clone());

    let grpc = tokio::net::TcpListener::from_std(listeners.grpc).map_err(|e| RunError::Serve(e.to_string()))?;
    let http = tokio::net::TcpListener::from_std(listeners.http).map_err(|e| RunError::Serve(e.to_string()))?;
    let grpc_addr = grpc.local_addr().map_err(|e| RunError::Serve(e.to_string()))?;
    let http_addr = http.local_addr().map_err(|e| RunError::Serve(e.to_string()))?;

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(writer::retention_loop(
        store.clone(),
        tsdb.clone(),
        config.retention,
        Duration::from_secs(30),
        shutdown.clone(),
    ));
    let up_every = UP_SAMPLE_INTERVAL.min(config.alerting.evaluation_interval);
    tasks.spawn(sample_up(
        registry.clone(),
        tsdb.clone(),
        rollouts.clone(),
        certificates.clone(),
        up_every,
        shutdown.clone(),
    ));

    // gRPC: our TLS accept loop feeds tonic.
    let server_tls = server::ServerTls::new(grpc_server_config(&tls, enrollment_on, &authority)?);
    tasks.spawn(follow_identity(
        config.clone(),
        server_tls.clone(),
        authority.clone(),
        alerting.clone(),
        enrollment_on,
        shutdown.clone(),
    ));
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn(server::accept_loop(
        grpc,
        server_tls,
        connections.clone(),
        config.max_connections,
        conn_tx,
        metrics.clone(),
        shutdown.clone(),
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServiceServer<session::AgentApi>>().await;
    health_reporter.set_serving::<ControlServiceServer<control::ControlApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Serve(format!("reflection: {e}")))?;
    let agent_api = session::AgentApi {
        registry: registry.clone(),
        writer: writer.clone(),
        metrics: metrics.clone(),
        offline_after: config.offline_after,
        trust_domain: trust_domain.clone(),
        sessions: sessions.clone(),
        shutdown: shutdown.clone(),
        hub: hub.clone(),
        artifacts: artifacts.clone(),
        tsdb: tsdb.clone(),
        authority: authority.clone(),
        enrollment: enrollment.clone(),
    };
    let lifecycle = Arc::new(lifecycle::Lifecycle {
        authority: authority.clone(),
        enrollment: enrollment.clone(),
        connections: connections.clone(),
        registry: registry.clone(),
        store: store.clone(),
        audit: audit.clone(),
    });
    let control_api = control::ControlApi {
        store: store.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        sessions: sessions.clone(),
        started_at_ms,
        retention: config.retention,
        trust_domain: trust_domain.clone(),
        hub: hub.clone(),
        audit,
        artifacts: artifacts.clone(),
        rollouts: rollouts.clone(),
        tsdb: tsdb.clone(),
        alerting: alerting.clone(),
        query_limits: config.query,
        shutdown: shutdown.clone(),
        lifecycle,
    };
    // HTTP/2 keepalive notices a peer whose socket stays open but that no longer answers;
    // the session's own silence deadline (offline_after) covers the rest.
    let keepalive = (config.offline_after / 2).max(Duration::from_secs(1));
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .add_service(guard::Guard::new(health_service, guard::Gate::AnyIdentity, authority.clone()))
        .add_service(guard::Guard::new(reflection, guard::Gate::AnyIdentity, authority.clone()))
        .add_service(guard::Guard::new(AgentServiceServer::new(agent_api), guard::Gate::Agent, authority.clone()))
        .add_service(guard::Guard::new(ControlServiceServer::new(control_api), guard::Gate::Control, authority.clone()))
        .add_service(guard::Guard::new(
            // Strangers reach this one: small messages only.
            EnrollServiceServer::new(enroll::EnrollApi { enrollment: enrollment.clone() })
                .max_decoding_message_size(ENROLL_MAX_MESSAGE),
            guard::Gate::Open,
            authority.clone(),
        ))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown.clone().cancelled_owned());
    drop(writer);

    tasks.spawn(artifact_gc(artifacts.clone(), registry.clone(), rollouts.clone(), shutdown.clone()));
    let http_state = http::HttpState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        sessions: sessions.clone(),
        started_at_ms,
        grpc_addr: grpc_addr.to_string(),
        shutdown: shutdown.clone(),
        rollouts: rollouts.clone(),
        tsdb: tsdb.clone(),
        alerting: alerting.clone(),
        store: store.clone(),
        query_limits: config.query,
        certificates: certificates.clone(),
        authority: authority.clone(),
    };
    let http_tls = config.http_security.server_config().map_err(RunError::Setup)?;
    let gate = http_auth::Gatekeeper::new(config.http_security.clone());
    let http_server = http::serve(
        http,
        http::router(http_state, gate),
        http_tls,
        config.http_max_connections,
        metrics.clone(),
        shutdown.clone(),
    );

    if let Err(e) = write_addrs(&config.data_dir, grpc_addr, http_addr) {
        tracing::warn!(error = %e, "cannot write {ADDRS_FILE}");
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, trust_domain = %trust_domain, "fleet-coordinator {} serving", fleet_common::VERSION);

    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(http_server);
    // Both ports accept (they were bound before the store opened) and the store is open.
    fleet_common::systemd::ready(&format!("serving gRPC on {grpc_addr}, HTTP on {http_addr}"), shutdown.clone());
    shutdown.cancelled().await;
    tasks.close();
    let drain = async {
        let _ = grpc_task.await;
        let _ = http_task.await;
        tasks.wait().await;
        // Every writer handle is gone once tonic has dropped its services and the sessions
        // have ended; the writer then drains its queue and flushes.
        let _ = writer_task.await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("shutdown did not finish within {}s; flushing and exiting", DRAIN_TIMEOUT.as_secs());
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    let _ = std::fs::remove_file(config.data_dir.join(ADDRS_FILE));
    tracing::info!("fleet-coordinator stopped");
    Ok(())
}

#[cfg(test)]
mod artifact_gc_tests {
    use super::*;
    use store::{HostStep, RolloutRecord};

    fn rollout(id: &str, version: &str, state: &str, at: i64, hosts: &[(&str, &str)]) -> RolloutRecord {
        RolloutRecord {
            id: id.into(),
            service: "api".into(),
            version: version.into(),
            sha256: format!("sha-{version}"),
            size_bytes: 1,
            state: state.into(),
            reason: String::new(),
            hosts: hosts
                .iter()
                .map(|(h, prev)| HostStep {
                    host: h.to_string(),
                    state: "healthy".into(),
                    message: String::new(),
                    previous_version: prev.to_string(),
                    updated_at_ms: at,
                    log_tail: Vec::new(),
                })
                .collect(),
            max_parallel: 1,
            canary: 0,
            auto_promote: false,
            min_healthy_time_ms: 0,
            healthy_deadline_ms: 0,
            progress_deadline_ms: 0,
            auto_revert: true,
            promoted: true,
            abort_requested: false,
            created_by: String::new(),
            created_at_ms: at,
            updated_at_ms: at,
            last_progress_ms: at,
        }
    }

    #[test]
    fn the_current_and_previous_release_of_every_host_are_kept() {
        let rollouts = [
            rollout("r1", "1.0", "succeeded", 1, &[("a", ""), ("b", "")]),
            rollout("r2", "2.0", "succeeded", 2, &[("a", "1.0"), ("b", "1.0")]),
            rollout("r3", "3.0", "succeeded", 3, &[("a", "2.0"), ("b", "2.0")]),
            rollout("r4", "4.0", "rolled_back", 4, &[("a", "3.0")]),
            rollout("r5", "5.0", "succeeded", 5, &[("a", "3.0")]),
        ];
        // a runs 5.0 (before it 3.0), b runs 3.0 (before it 2.0); 4.0 failed, 1.0 is long gone.
        let running =
            [("a".to_string(), "api".to_string(), "5.0".to_string()), ("b".into(), "api".into(), "3.0".into())];
        let keep = artifacts_to_keep(&rollouts, &running);
        for v in ["5.0", "3.0", "2.0"] {
            assert!(keep.contains(&format!("sha-{v}")), "{v} is needed: {keep:?}");
        }
        assert!(!keep.contains("sha-1.0") && !keep.contains("sha-4.0"), "{keep:?}");
        // A host that went back to 1.0 by hand keeps 1.0, and an unfinished rollout its own.
        let mut running = running.to_vec();
        running.push(("c".into(), "api".into(), "1.0".into()));
        let mut rollouts = rollouts.to_vec();
        rollouts.push(rollout("r6", "6.0", "running", 6, &[("c", "1.0")]));
        let keep = artifacts_to_keep(&rollouts, &running);
        assert!(keep.contains("sha-1.0") && keep.contains("sha-6.0"), "{keep:?}");
    }
}

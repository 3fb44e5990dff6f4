//! fleet-coordinator: the control plane. Agents attach over mutual-TLS gRPC and report; the
//! coordinator stores every report durably before acknowledging it, keeps the cluster state,
//! notices silent hosts, and serves the operator API, `/metrics` and health endpoints.
//!
//! Code map (docs/ARCHITECTURE.md has the whole of it): [`coordinator`] opens the state every
//! service shares; [`config`] reads the config file; [`store`] owns the sled schema and the
//! report log; [`writer`] is the group-commit task in front of it; [`registry`] is the
//! in-memory cluster state; [`session`] serves agents, [`control`] serves fleetctl, [`guard`]
//! decides who may call what (with [`access`] for operators' roles and [`revocation`] for the
//! deny list); [`enroll`] and [`lifecycle`] issue and take back identities; [`server`] accepts
//! TLS connections and [`reload`] follows SIGHUP and certificate files; [`http`] and
//! [`metrics`] are the HTTP side. This file only wires them together.

#![forbid(unsafe_code)]

pub mod access;
pub mod alerting;
pub mod artifacts;
pub mod audit;
pub mod certificates;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod enroll;
pub mod exec;
pub mod forward;
pub mod guard;
pub mod http;
pub mod http_auth;
pub mod jobs;
pub mod labels;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod outbound;
pub mod promapi;
pub mod query;
pub mod registry;
pub mod reload;
pub mod remote_write;
pub mod revocation;
pub mod rollouts;
pub mod sampler;
pub mod series;
pub mod server;
pub mod session;
pub mod status_page;
pub mod store;
pub mod tsdb;
pub mod writer;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_common::tls::TlsError;
use fleet_proto::v1::agent_service_server::AgentServiceServer;
use fleet_proto::v1::control_service_server::ControlServiceServer;
use fleet_proto::v1::enroll_service_server::EnrollServiceServer;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
pub use crate::coordinator::{Coordinator, load_identity, load_signer};
use crate::store::StoreError;

/// How long shutdown may take to drain sessions and flush the store.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message the enrollment service reads (a token, a name and a CSR).
const ENROLL_MAX_MESSAGE: usize = 64 * 1024;
/// The file in `data_dir` that tells tools the addresses actually bound (useful with port 0).
pub const ADDRS_FILE: &str = "coordinator.addrs.json";

/// Why the coordinator could not run. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A directory or file under `data_dir` cannot be created or opened.
    #[error("cannot {action}: {reason}")]
    DataDir {
        /// What could not be done, naming the path.
        action: String,
        /// Why, in the system's words.
        reason: String,
    },
    /// A port cannot be listened on.
    #[error("{0}")]
    Listen(String),
    /// The TLS files are unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// The certificate does not carry the coordinator identity.
    #[error("{0}")]
    Identity(String),
    /// `[enrollment]` names a CA that cannot sign.
    #[error("enrollment: {0}")]
    Enrollment(String),
    /// `[http]` TLS or credentials are unusable.
    #[error("{0}")]
    Http(String),
    /// A rule file does not load.
    #[error("rule files: {0}")]
    Rules(#[from] alerting::AlertingError),
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
        let grpc = server::bind(config.grpc_listen, "gRPC", "[grpc] listen").map_err(RunError::Listen)?;
        let http = server::bind(config.http_listen, "HTTP", "[http] listen").map_err(RunError::Listen)?;
        Ok(Listeners { grpc, http })
    }
}

fn write_addrs(data_dir: &Path, grpc: SocketAddr, http: SocketAddr) -> std::io::Result<()> {
    let body = serde_json::json!({ "grpc": grpc.to_string(), "http": http.to_string(), "pid": std::process::id() });
    let tmp = data_dir.join(format!("{ADDRS_FILE}.tmp"));
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(tmp, data_dir.join(ADDRS_FILE))
}

/// Runs the coordinator on the given listeners until `shutdown` is cancelled.
/// How often a coordinator of a cluster reads the deny list, join tokens and enrolled hosts
/// again from etcd: what another coordinator changed takes effect here within it.
const SHARED_RECORDS_EVERY: Duration = Duration::from_secs(2);

/// With several coordinators: takes up the deny list, join tokens, enrolled hosts and drain
/// marks other coordinators changed, cutting the connections of certificates revoked
/// meanwhile.
async fn follow_shared_records(c: std::sync::Arc<Coordinator>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SHARED_RECORDS_EVERY) => {}
        }
        let here = c.clone();
        let changed = tokio::task::spawn_blocking(move || {
            let c = here;
            match c.authority.revocations.reload() {
                Ok(added) => {
                    for r in added {
                        let cut = c.connections.cut(|cert| {
                            r.covers(cert) || r.target == revocation::Revocation::serial_target(&cert.serial)
                        });
                        tracing::info!(target = %r.target, connections = cut, "a revocation made by another coordinator takes effect here");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the deny list again"),
            }
            if let Err(e) = c.enrollment.reload() {
                tracing::debug!(error = %e, "cannot read the join tokens again");
            }
            match c.lifecycle.follow_shared_removals(&c.store) {
                Ok(forgotten) => {
                    for host in forgotten {
                        tracing::warn!(%host, "host removed by another coordinator; forgotten here too");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the removed hosts again"),
            }
            match maintenance::follow_shared_drains(&c) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the drain marks again");
                    Vec::new()
                }
            }
        })
        .await;
        let changed = changed.unwrap_or_default();
        if !changed.is_empty() {
            tracing::info!(hosts = changed.len(), "drain marks set by another coordinator take effect here");
        }
        for host in changed {
            c.writer.save_host(host).await;
        }
        fetch_rollout_artifacts(&c).await;
    }
}

/// Fetches the artifact of every unfinished rollout this coordinator lacks from the others,
/// so that whichever coordinator leads next has it (it is uploaded to one coordinator only).
async fn fetch_rollout_artifacts(c: &Coordinator) {
    if c.cluster.config().is_none() {
        return;
    }
    let needed: std::collections::BTreeSet<String> = c.rollouts.needed_artifacts().into_iter().collect();
    for sha in needed {
        if c.artifacts.stat(&sha).is_some() {
            continue;
        }
        if let Err(why) = c.artifacts.fetch_from_peers(&sha, &c.cluster.peers(), &c.tls).await {
            tracing::debug!(artifact = %sha, %why, "cannot fetch a rollout's artifact from the other coordinators yet");
        }
    }
}

pub async fn run(config: CoordinatorConfig, listeners: Listeners, shutdown: CancellationToken) -> Result<(), RunError> {
    let (c, writer_task) = Coordinator::open(config, shutdown.clone()).await?;
    let config = &c.config;

    let grpc = tokio::net::TcpListener::from_std(listeners.grpc).map_err(|e| RunError::Serve(e.to_string()))?;
    let http = tokio::net::TcpListener::from_std(listeners.http).map_err(|e| RunError::Serve(e.to_string()))?;
    let grpc_addr = grpc.local_addr().map_err(|e| RunError::Serve(e.to_string()))?;
    let http_addr = http.local_addr().map_err(|e| RunError::Serve(e.to_string()))?;

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(writer::retention_loop(
        c.store.clone(),
        c.tsdb.clone(),
        config.retention,
        Duration::from_secs(30),
        shutdown.clone(),
    ));
    tasks.spawn(c.remote_write.clone().run(c.tsdb.clone(), shutdown.clone()));
    if let (Some(cc), Some(etcd)) = (c.cluster.config(), c.cluster.etcd()) {
        let me = cluster::Member {
            advertise: cc.advertise.clone(),
            started_ms: c.started_at_ms,
            version: fleet_common::VERSION.to_string(),
        };
        let election = cluster::EtcdElection::new(etcd.clone(), &cc.name);
        tracing::info!(cluster = %cc.name, advertise = %cc.advertise, etcd = %etcd.endpoints(), "joining the cluster");
        tasks.spawn(c.cluster.clone().run(election, me, shutdown.clone()));
        tasks.spawn(follow_shared_records(c.clone(), shutdown.clone()));
    }
    tasks.spawn(sampler::sample_up(c.clone(), sampler::UP_SAMPLE_INTERVAL.min(config.alerting.evaluation_interval)));
    tasks.spawn(artifacts::collect_garbage_every_minute(
        c.artifacts.clone(),
        c.registry.clone(),
        c.rollouts.clone(),
        shutdown.clone(),
    ));

    // gRPC: our TLS accept loop feeds tonic.
    let enrollment_on = c.enrollment.enabled();
    let server_tls = server::ServerTls::new(server::grpc_server_config(&c.tls, enrollment_on, &c.authority)?);
    tasks.spawn(reload::follow_identity(
        config.clone(),
        server_tls.clone(),
        c.authority.clone(),
        c.alerting.clone(),
        enrollment_on,
        shutdown.clone(),
    ));
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn(server::accept_loop(
        grpc,
        server_tls,
        c.connections.clone(),
        config.max_connections,
        conn_tx,
        c.metrics.clone(),
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
    // HTTP/2 keepalive notices a peer whose socket stays open but that no longer answers;
    // the session's own silence deadline (offline_after) covers the rest.
    let keepalive = (config.offline_after / 2).max(Duration::from_secs(1));
    let authority = &c.authority;
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .add_service(guard::Guard::new(health_service, guard::Gate::AnyIdentity, authority.clone()))
        .add_service(guard::Guard::new(reflection, guard::Gate::AnyIdentity, authority.clone()))
        .add_service(guard::Guard::new(
            AgentServiceServer::new(session::AgentApi::new(c.clone())),
            guard::Gate::Agent,
            authority.clone(),
        ))
        .add_service(
            guard::Guard::new(
                ControlServiceServer::new(control::ControlApi::new(c.clone())),
                guard::Gate::Control,
                authority.clone(),
            )
            .leader_only(std::sync::Arc::new(forward::Forwarder::new(c.cluster.clone(), c.tls.clone()))),
        )
        .add_service(guard::Guard::new(
            // Strangers reach this one: small messages only.
            EnrollServiceServer::new(enroll::EnrollApi { enrollment: c.enrollment.clone() })
                .max_decoding_message_size(ENROLL_MAX_MESSAGE),
            guard::Gate::Open,
            authority.clone(),
        ))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown.clone().cancelled_owned());

    let http_tls = config.http_security.server_config().map_err(RunError::Http)?;
    let gate = http_auth::Gatekeeper::new(config.http_security.clone());
    let http_server = http::serve(
        http,
        http::router(http::HttpState::new(c.clone(), grpc_addr.to_string()), gate),
        http_tls,
        config.http_max_connections,
        c.metrics.clone(),
        shutdown.clone(),
    );

    if let Err(e) = write_addrs(&config.data_dir, grpc_addr, http_addr) {
        tracing::warn!(error = %e, "cannot write {ADDRS_FILE}");
    }
    tracing::info!(grpc = %grpc_addr, http = %http_addr, trust_domain = %c.trust_domain, "fleet-coordinator {} serving", fleet_common::VERSION);

    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(http_server);
    // Both ports accept (they were bound before the store opened) and the store is open.
    fleet_common::systemd::ready(&format!("serving gRPC on {grpc_addr}, HTTP on {http_addr}"), shutdown.clone());
    shutdown.cancelled().await;
    tasks.close();
    let (store, data_dir) = (c.store.clone(), config.data_dir.clone());
    // The writer drains its queue and flushes once every handle on it is gone: this one, and
    // those of the services tonic and axum drop when they stop and of the sessions as they end.
    drop(c);
    let drain = async {
        let _ = grpc_task.await;
        let _ = http_task.await;
        tasks.wait().await;
        let _ = writer_task.await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("shutdown did not finish within {}s; flushing and exiting", DRAIN_TIMEOUT.as_secs());
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    let _ = std::fs::remove_file(data_dir.join(ADDRS_FILE));
    tracing::info!("fleet-coordinator stopped");
    Ok(())
}

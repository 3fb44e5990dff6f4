//! The one handle on a running coordinator: [`Coordinator::open`] opens the store and the
//! history, loads the hosts, starts the writer, rollouts and alerting, and returns everything
//! the agent API, the control API and HTTP share. `run` (lib.rs) puts the servers and the
//! background tasks around it; the start-up benchmark opens it the same way.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use fleet_common::identity::Role;
use fleet_common::tls::TlsMaterial;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerting::Alerting;
use crate::artifacts::{Artifacts, Replicas};
use crate::audit::AuditLog;
use crate::certificates::Seen;
use crate::commands::Hub;
use crate::config::CoordinatorConfig;
use crate::enroll::Enrollment;
use crate::guard::Authority;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rollouts::Rollouts;
use crate::server::Connections;
use crate::store::{SharedState, Store};
use crate::tsdb::Tsdb;
use crate::writer::Writer;
use crate::{RunError, revocation};

/// The default lifetime of an enrolled agent's certificate (`[enrollment] cert_ttl`).
const DEFAULT_CERT_TTL: Duration = Duration::from_secs(30 * 86400);

/// Everything the coordinator's services share. Built once by [`Coordinator::open`]; each
/// service holds an `Arc` of it.
pub struct Coordinator {
    /// The configuration it was opened with.
    pub config: CoordinatorConfig,
    /// The coordinator's own certificate, key and trust roots, as loaded at the start.
    pub tls: TlsMaterial,
    /// The trust domain of the identities it accepts.
    pub trust_domain: String,
    /// When it started (ms since the epoch).
    pub started_at_ms: i64,
    /// Host records and the report log (the writer's), on this machine.
    pub store: Store,
    /// The state several coordinators share (today the same sled store).
    pub shared: Arc<dyn SharedState>,
    /// The history of samples (loaded in the background after a restart).
    pub tsdb: Arc<Tsdb>,
    /// The in-memory cluster state.
    pub registry: Arc<Registry>,
    /// The group-commit writer: a report is acknowledged once it has written it.
    pub writer: Writer,
    /// The coordinator's own counters.
    pub metrics: Arc<Metrics>,
    /// Who did what, on disk.
    pub audit: AuditLog,
    /// Certificates seen (the coordinator's, the CA's, every peer's), for expiry metrics.
    pub certificates: Seen,
    /// Who may call what, the deny list, and where refusals go.
    pub authority: Arc<Authority>,
    /// Join tokens and certificate signing (off without `[enrollment]`).
    pub enrollment: Arc<Enrollment>,
    /// Open connections by certificate, so that a revocation cuts them.
    pub connections: Connections,
    /// Commands on their way to agents.
    pub hub: Arc<Hub>,
    /// Uploaded release archives.
    pub artifacts: Artifacts,
    /// With several coordinators: the copy of a rollout's artifact taken before it starts.
    pub replicas: Option<Replicas>,
    /// Rollouts and their driver tasks.
    pub rollouts: Arc<Rollouts>,
    /// Rule groups, alert state and notifiers.
    pub alerting: Arc<Alerting>,
    /// `[[remote_write]]` queues.
    pub remote_write: Arc<crate::remote_write::RemoteWrite>,
    /// Revoking, renewing and removing identities and hosts.
    pub lifecycle: Arc<Lifecycle>,
    /// Leadership and membership among several coordinators (alone: always the leader).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Agent sessions open now.
    pub sessions: AtomicUsize,
    /// Cancelled when the coordinator begins to shut down.
    pub shutdown: CancellationToken,
}

impl Coordinator {
    /// Opens the coordinator's state under `config.data_dir` and starts the tasks that own
    /// parts of it: the writer (whose task ends once every handle on it is dropped, after
    /// draining its queue), rollouts, alerting, and the history's read-back of the report log.
    /// Agents can attach as soon as this returns; the history follows in the background.
    pub async fn open(
        config: CoordinatorConfig,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Coordinator>, JoinHandle<()>), RunError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| RunError::DataDir {
            action: format!("create data_dir {}", config.data_dir.display()),
            reason: fleet_common::io_reason(&e),
        })?;
        let tls = load_identity(&config)?;
        let trust_domain = tls.identity().trust_domain.clone();
        let started_at_ms = fleet_common::now_ms();

        let cluster = match &config.cluster {
            Some(c) => crate::cluster::Cluster::member(c.clone()).map_err(RunError::Serve)?,
            None => crate::cluster::Cluster::alone(),
        };
        let store = Store::open(&config.data_dir, config.retention)?;
        let shared: Arc<dyn SharedState> = match &config.cluster {
            Some(cc) => Arc::new(
                crate::cluster::shared::EtcdShared::open(cc, cluster.clone(), store.clone())
                    .map_err(RunError::Serve)?,
            ),
            None => Arc::new(store.clone()),
        };
        let since = started_at_ms - config.retention.as_millis() as i64;
        let history_dir = config.data_dir.join("history");
        let tsdb = Tsdb::on_disk(history_dir.clone(), config.retention.as_millis() as i64, config.max_series).map_err(
            |e| RunError::DataDir {
                action: format!("use {} for the history", history_dir.display()),
                reason: e.to_string(),
            },
        )?;
        let tsdb = Arc::new(tsdb);
        let loading = std::time::Instant::now();
        let loaded = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load(since))
                .await
                .map_err(|e| RunError::Serve(e.to_string()))??
        };
        let registry = Arc::new(Registry::from_loaded(loaded));
        tracing::info!(
            hosts = registry.len(),
            reports = store.reports_held(),
            seconds = loading.elapsed().as_secs_f64(),
            store = %store.path().display(),
            "loaded the store"
        );
        read_back_history(store.clone(), tsdb.clone(), since, shutdown.clone());

        let audit = AuditLog::open(&config.data_dir).map_err(|e| RunError::DataDir {
            action: format!("open the audit log in {}", config.data_dir.display()),
            reason: e.to_string(),
        })?;
        let audit = if config.cluster.is_some() { audit.with_shared(shared.clone()) } else { audit };
        let metrics = Arc::new(Metrics::default());
        let revocations = revocation::Revocations::load(shared.clone())?;
        let certificates = Seen::default();
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
        let authority = Arc::new(Authority::new(
            trust_domain.clone(),
            config.access.clone(),
            revocations,
            metrics.clone(),
            audit.clone(),
            certificates.clone(),
        ));
        let signer = load_signer(&config, &tls)?;
        let ttl = config.enrollment.as_ref().map(|e| e.cert_ttl).unwrap_or(DEFAULT_CERT_TTL);
        let enrollment = Arc::new(
            Enrollment::open(signer, ttl, &tls, shared.clone(), audit.clone(), authority.clone())
                .map_err(RunError::Enrollment)?,
        );
        let connections = Connections::default();
        let hub = Arc::new(Hub::for_cluster(cluster.clone()));
        let artifacts =
            Artifacts::open(&config.data_dir, config.artifact_max_bytes).map_err(|e| RunError::DataDir {
                action: format!("open the artifact store in {}", config.data_dir.display()),
                reason: e.to_string(),
            })?;
        let replicas = cluster.config().is_some().then(|| Replicas { cluster: cluster.clone(), tls: tls.clone() });
        let rollouts = Rollouts::start(
            shared.clone(),
            registry.clone(),
            hub.clone(),
            audit.clone(),
            cluster.clone(),
            shutdown.clone(),
        )?;
        let alerting =
            Alerting::start(config.alerting.clone(), tsdb.clone(), shared.clone(), registry.clone(), shutdown.clone())?;
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
        let remote_write = crate::remote_write::RemoteWrite::open(
            &config.remote_write,
            &config.data_dir,
            &config.alerting.external_labels,
            &config.tls.ca,
        )
        .map(Arc::new)
        .map_err(RunError::Serve)?;
        let (writer, writer_task) =
            Writer::start(store.clone(), shared.clone(), config.retention, metrics.clone(), tsdb.clone());
        let lifecycle = Arc::new(Lifecycle {
            authority: authority.clone(),
            enrollment: enrollment.clone(),
            connections: connections.clone(),
            registry: registry.clone(),
            shared: shared.clone(),
            audit: audit.clone(),
        });
        let coordinator = Coordinator {
            config,
            tls,
            trust_domain,
            started_at_ms,
            store,
            shared,
            tsdb,
            registry,
            writer,
            metrics,
            audit,
            certificates,
            authority,
            enrollment,
            connections,
            hub,
            artifacts,
            replicas,
            rollouts,
            alerting,
            remote_write,
            lifecycle,
            cluster,
            sessions: AtomicUsize::new(0),
            shutdown,
        };
        Ok((Arc::new(coordinator), writer_task))
    }
}

/// Rebuilds the history from the report log while agents attach again: a restart of a
/// coordinator holding hours of thousands of agents' reports takes the history minutes to
/// read, and sessions need only the hosts and their marks. [`Tsdb::loaded`] says when it is done.
fn read_back_history(store: Store, tsdb: Arc<Tsdb>, since_ms: i64, stop: CancellationToken) {
    tsdb.begin_loading();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match store.replay_history(since_ms, || stop.is_cancelled(), |host, r| tsdb.append_report(host, r)) {
            Ok(n) if !stop.is_cancelled() => {
                tsdb.finish_loading();
                tracing::info!(
                    reports = n,
                    series = tsdb.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "loaded the history"
                );
            }
            Ok(_) => {}
            Err(e) => {
                store.abandon_history_replay();
                tsdb.finish_loading();
                tracing::error!(error = %e, "cannot read the report log back into the history; queries and rules see what arrives from now on");
            }
        }
    });
}

/// Loads the coordinator's TLS material and checks it carries the coordinator identity.
pub fn load_identity(config: &CoordinatorConfig) -> Result<TlsMaterial, RunError> {
    let tls = TlsMaterial::load(&config.tls)?;
    if tls.identity().role != Role::Coordinator {
        return Err(RunError::Identity(format!(
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
            RunError::Enrollment(format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&err)))
        })
    };
    let signer = fleet_common::pki::Signer::from_pem(&read(&cert_path)?, &read(&e.ca_key)?).map_err(|err| {
        RunError::Enrollment(
            err.replace("the CA key", &e.ca_key.display().to_string())
                .replace("the CA certificate", &cert_path.display().to_string()),
        )
    })?;
    if signer.trust_domain() != tls.identity().trust_domain {
        return Err(RunError::Enrollment(format!(
            "{} issues identities in trust domain {}, but this coordinator serves {}",
            cert_path.display(),
            signer.trust_domain(),
            tls.identity().trust_domain
        )));
    }
    Ok(Some(signer))
}

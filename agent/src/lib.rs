//! fleet-agent: takes host reports on a fixed interval, keeps them in a durable bounded buffer,
//! and delivers them to the coordinator over a mutual-TLS session (docs/design.md §5).
//!
//! Code map: [`config`] reads and validates the config file; [`collector`] reads host
//! metrics; [`supervisor`] runs the services; [`store`] is the durable outbox and command
//! journal (the only module that knows the store's keys); [`session`] attaches to a
//! coordinator and delivers the outbox; [`coordinators`] is which coordinators the agent
//! attaches to (configured and learned); [`commands`] applies the coordinator's commands;
//! [`run`] wires them up.

#![forbid(unsafe_code)]

pub mod collector;
pub mod commands;
pub mod config;
pub mod coordinators;
pub mod credentials;
pub mod deploy;
pub mod exec;
pub mod failpoint;
pub mod jobs;
pub mod schedule;
pub mod session;
pub mod store;
pub mod supervisor;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_common::tls::TlsError;
use fleet_proto::v1::{Hello, Report, ReportId};
use rand::SeedableRng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::collector::Collector;
use crate::commands::Dispatcher;
use crate::config::{AgentConfig, Join, TlsSource};
use crate::coordinators::{Change, Coordinators};
use crate::credentials::Credentials;
use crate::deploy::Deployer;
use crate::jobs::Jobs;
use crate::store::{Opened, Outbox, StoreError};
use crate::supervisor::Supervisor;

/// The least time between an early report (on a service state change) and the one before.
pub const EARLY_REPORT_GAP: Duration = Duration::from_millis(250);

/// How long shutdown may take before the agent gives up waiting for its tasks.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory is unusable.
    #[error("cannot create data_dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate does not belong to this agent.
    #[error("{0}")]
    Identity(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Host metrics cannot be read.
    #[error("{0}")]
    Collector(String),
}

/// Loads the agent's identity and checks it names this agent. An agent to be enrolled at its
/// first start (`join_token`) has none yet: `Ok(None)`.
pub fn load_identity(config: &AgentConfig) -> Result<Option<Credentials>, RunError> {
    if let TlsSource::Enrolled { join } = &config.tls
        && !credentials::is_enrolled(&config.data_dir)
    {
        return match join {
            Some(_) => Ok(None),
            None => Err(RunError::Identity(format!(
                "no [tls] and no enrolled identity in {}: enroll this machine (fleet-agent enroll --coordinator URL --token TOKEN --ca-pin PIN, or join_token and ca_pin in the config; `fleetctl tokens create` prints both), or give [tls] files made with `fleetctl certs issue agent {}`",
                config.data_dir.join(credentials::DIR).display(),
                config.name
            ))),
        };
    }
    Credentials::load(&config.tls, &config.name, &config.data_dir).map(Some).map_err(RunError::Identity)
}

/// Enrolls at the first start (join_token in the config): retried while the coordinator cannot
/// be reached, given up when it refuses the token.
async fn enroll_at_start(config: &AgentConfig, join: &Join, shutdown: &CancellationToken) -> Result<(), RunError> {
    let mut backoff = session::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    loop {
        match credentials::enroll(&config.coordinator, join, &config.name, &config.data_dir).await {
            Ok(_) => return Ok(()),
            Err(credentials::EnrollError::Unreachable(e)) => {
                tracing::warn!(coordinator = %config.coordinator, error = %e, "cannot enroll yet; retrying");
            }
            Err(e) => {
                return Err(RunError::Identity(format!(
                    "{e}; nothing was written (make a new token with `fleetctl tokens create`)"
                )));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(RunError::Identity("stopped before the enrollment finished".into())),
            _ = tokio::time::sleep(backoff.next_delay(&mut rng)) => {}
        }
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| RunError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: fleet_common::io_reason(&e),
    })?;
    let creds = match load_identity(&config)? {
        Some(c) => c,
        None => {
            let TlsSource::Enrolled { join: Some(join) } = &config.tls else {
                unreachable!("load_identity returns None only for an agent to enroll")
            };
            enroll_at_start(&config, join, &shutdown).await?;
            Credentials::load(&config.tls, &config.name, &config.data_dir).map_err(RunError::Identity)?
        }
    };
    let creds = Arc::new(creds);
    let (changes_tx, changes) = tokio::sync::mpsc::channel(16);
    let coordinators = Arc::new(Coordinators::open(&config.data_dir, &config.coordinators, Some(changes_tx)));
    let (outbox, opened) = Outbox::open(&config.data_dir, config.outbox)?;
    let outbox = Arc::new(outbox);
    match opened {
        Opened::New => tracing::info!(data_dir = %config.data_dir.display(), "created a new agent store"),
        Opened::Existing => tracing::info!(buffered = outbox.len(), "opened the agent store"),
        Opened::MovedAside(p) => tracing::error!(moved_to = %p.display(), "started with an empty store"),
    }
    // A deploy interrupted by the agent stopping is rolled back before any service starts.
    deploy::recover(&outbox, &config.services);
    let services_shutdown = CancellationToken::new();
    let supervisor = Arc::new(
        Supervisor::start(&config.name, &config.data_dir, &config.services, services_shutdown.clone())
            .await
            .map_err(|e| RunError::DataDir { path: config.data_dir.display().to_string(), reason: e.to_string() })?,
    );
    let deployer = Arc::new(Deployer::new(
        outbox.clone(),
        supervisor.clone(),
        &config.data_dir,
        coordinators.clone(),
        creds.clone(),
    ));
    let jobs_changed = Arc::new(Notify::new());
    let jobs = Arc::new(
        Jobs::start(
            &config.name,
            &config.data_dir,
            &config.jobs,
            outbox.clone(),
            supervisor.clone(),
            jobs_changed.clone(),
            services_shutdown.clone(),
        )
        .map_err(|e| RunError::DataDir { path: config.data_dir.display().to_string(), reason: e.to_string() })?,
    );
    let exec = commands::ExecPolicy { agent: config.name.clone(), allowed: config.allow_exec };
    let dispatcher = Dispatcher::new(supervisor.clone(), deployer.clone(), jobs.clone(), outbox.clone(), exec);
    let collector = Arc::new(Mutex::new(Collector::new().map_err(RunError::Collector)?));
    let boot_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let hello = Hello {
        name: config.name.clone(),
        version: fleet_common::VERSION.to_string(),
        labels: config.labels.clone().into_iter().collect(),
        boot_id,
        services: Vec::new(),
        hostname: Collector::host_name().unwrap_or_default(),
        os: Collector::os(),
        report_interval_ms: config.report_interval.as_millis() as u64,
        time_ms: 0,
        jobs: Vec::new(),
        allow_exec: config.allow_exec,
    };
    let all = coordinators.all();
    tracing::info!(name = %config.name, boot_id, coordinators = %all.join(", "), "fleet-agent {} starting", fleet_common::VERSION);

    let tasks = tokio_util::task::TaskTracker::new();
    let sessions = Arc::new(Sessions {
        template: session::SessionContext {
            coordinator: String::new(),
            hello,
            outbox: outbox.clone(),
            new_report: Arc::new(Notify::new()),
            supervisor: supervisor.clone(),
            jobs: jobs.clone(),
            dispatcher: dispatcher.clone(),
            coordinators: coordinators.clone(),
        },
        creds: creds.clone(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        running: Mutex::new(std::collections::BTreeMap::new()),
    });
    let reporter = Reporter {
        interval: config.report_interval,
        boot_id,
        collector,
        supervisor: supervisor.clone(),
        deployer: deployer.clone(),
        jobs: jobs.clone(),
        jobs_changed,
        outbox: outbox.clone(),
        sessions: sessions.clone(),
    };
    tasks.spawn(reporter.run(shutdown.clone()));
    // A session to each coordinator; each gets every report (docs/design.md §13).
    sessions
        .apply(&Change { start: all.clone(), stop: Vec::new() })
        .map_err(|e| RunError::DataDir { path: config.data_dir.display().to_string(), reason: e.to_string() })?;
    tasks.spawn(sessions.clone().follow(changes));
    tasks.close();
    fleet_common::systemd::ready(&format!("reporting to {}", all.join(", ")), shutdown.clone());

    shutdown.cancelled().await;
    // Services and job runs first, each within its stop_timeout; the session stays up meanwhile.
    tracing::info!(services = supervisor.all().len(), jobs = jobs.names().len(), "stopping services and jobs");
    services_shutdown.cancel();
    let services_deadline = supervisor.max_stop_timeout().max(jobs.max_stop_timeout()) + Duration::from_secs(5);
    if tokio::time::timeout(services_deadline, async { tokio::join!(supervisor.wait(), jobs.wait()) }).await.is_err() {
        tracing::warn!(
            "services did not stop within {}; exiting anyway",
            fleet_common::human_duration(services_deadline)
        );
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
        tracing::warn!("tasks did not stop within {}s; exiting anyway", DRAIN_TIMEOUT.as_secs());
    }
    outbox.flush().await?;
    tracing::info!(buffered = outbox.len(), "fleet-agent stopped");
    Ok(())
}

/// Every service's state, with the committed release of deployed ones.
fn statuses(supervisor: &Supervisor, deployer: &Deployer) -> Vec<fleet_proto::v1::ServiceStatus> {
    let versions = deployer.versions();
    let mut all = supervisor.statuses();
    for s in &mut all {
        if let Some(v) = versions.get(&s.name) {
            s.version = v.clone();
        }
    }
    all
}

/// Reports that could not be buffered, said once a minute.
static LOST_REPORTS: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));

/// What the report loop reads from.
struct Reporter {
    interval: Duration,
    boot_id: u64,
    collector: Arc<Mutex<Collector>>,
    supervisor: Arc<Supervisor>,
    deployer: Arc<Deployer>,
    jobs: Arc<Jobs>,
    /// Notified when a job's state changed.
    jobs_changed: Arc<Notify>,
    outbox: Arc<Outbox>,
    sessions: Arc<Sessions>,
}

impl Reporter {
    /// Takes a report every `interval` (and early when a service changes state) and appends it
    /// to the outbox.
    async fn run(self, shutdown: CancellationToken) {
        let Reporter { interval, boot_id, collector, supervisor, deployer, jobs, jobs_changed, outbox, sessions } =
            self;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                // A service or job changed state: report now rather than at the next tick, so
                // the coordinator (and operators, and alerts) see it at once; at most every 250 ms.
                _ = async { tokio::select! { _ = supervisor.changed() => {}, _ = jobs_changed.notified() => {} } } => {
                    let early = last + EARLY_REPORT_GAP;
                    if tokio::time::Instant::now() < early {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep_until(early) => {}
                        }
                    }
                    tick.reset();
                }
            }
            last = tokio::time::Instant::now();
            let c = collector.clone();
            let host = match tokio::task::spawn_blocking(move || c.lock().expect("collector lock").collect()).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "collecting host metrics failed");
                    continue;
                }
            };
            seq += 1;
            let now = fleet_common::now_ms();
            let report = Report {
                id: Some(ReportId { boot_id, seq }),
                timestamp_ms: now,
                host: Some(host),
                services: statuses(&supervisor, &deployer),
                reports_dropped_total: outbox.dropped_total(),
                sent_at_ms: 0,
                jobs: jobs.statuses(),
            };
            if let Err(e) = outbox.push(&report, now).await {
                outbox.note_lost();
                // A full disk fails every report: said at once, then once a minute.
                if let Some(held) = LOST_REPORTS.ready() {
                    tracing::error!(error = %e, seq, lost_since_last_said = held, "cannot buffer a report; it is lost (counted in fleet_agent_reports_dropped_total)");
                }
                continue;
            }
            if LOST_REPORTS.clear() {
                tracing::info!("buffering reports again");
            }
            sessions.new_report();
        }
    }
}

/// The sessions, one per coordinator, started and ended as the agent learns its cluster
/// (crate::coordinators).
struct Sessions {
    /// What every session shares; `coordinator` and `new_report` are each session's own.
    template: session::SessionContext,
    creds: Arc<Credentials>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    /// Per coordinator: its wake-up for new reports, and what ends its session.
    running: Mutex<std::collections::BTreeMap<String, (Arc<Notify>, CancellationToken)>>,
}

impl Sessions {
    /// Wakes every session: a report was buffered.
    fn new_report(&self) {
        for (n, _) in self.running.lock().expect("sessions lock").values() {
            n.notify_one();
        }
    }

    /// Ends and starts sessions; the outbox keeps each report until every coordinator that
    /// still has a session stored it.
    fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let mut running = self.running.lock().expect("sessions lock");
        let mut names: Vec<String> = running.keys().filter(|c| !change.stop.contains(c)).cloned().collect();
        for c in &change.start {
            if !names.contains(c) {
                names.push(c.clone());
            }
        }
        self.template.outbox.set_consumers(&names)?;
        for c in &change.stop {
            if let Some((_, stop)) = running.remove(c) {
                stop.cancel();
            }
        }
        for c in &change.start {
            if running.contains_key(c) {
                continue;
            }
            let ctx = session::SessionContext {
                coordinator: c.clone(),
                new_report: Arc::new(Notify::new()),
                ..self.template.clone()
            };
            let stop = self.shutdown.child_token();
            running.insert(c.clone(), (ctx.new_report.clone(), stop.clone()));
            self.tasks.spawn(session::run(ctx, self.creds.clone(), stop));
        }
        Ok(())
    }

    /// Applies the changes the Welcomes bring until shutdown.
    async fn follow(self: Arc<Self>, mut changes: tokio::sync::mpsc::Receiver<Change>) {
        loop {
            let change = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                c = changes.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            if let Err(e) = self.apply(&change) {
                tracing::error!(error = %e, "cannot record the coordinators' marks in the outbox; the sessions stay as they were");
            }
        }
    }
}

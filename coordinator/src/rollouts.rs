//! The rollout engine (docs/design.md §6): a persisted state machine per rollout, driven by one task.
//!
//! Hosts go in order, `max_parallel` at a time; the first `canary` hosts go first and the
//! rollout then waits for promotion (`rollout resume`) unless `auto_promote`. A host is done
//! when its agent committed the release (it became healthy within `healthy_deadline` and stayed
//! healthy for `min_healthy_time`). A failed host stops the rollout; with `auto_revert` the
//! hosts already moved go back to the release they had, still `max_parallel` at a time. Pause
//! stops starting hosts; abort stops the rollout (and reverts, with auto_revert).
//!
//! The record is saved after every step. Commands to agents have ids derived from the rollout,
//! the host and the step, so a coordinator restarted mid-rollout sends them again and the
//! agents' journals answer with the outcome instead of acting twice: the rollout then
//! completes or reverts by itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::{Command, CommandState, CommandUpdate, DeployCommand, RollbackCommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, entry};
use crate::commands::Hub;
use crate::registry::Registry;
use crate::store::{HostStep, RolloutRecord, RolloutState, SharedState, StepState};

mod policy;
pub use policy::{Step, next_step, revert_outcome};

/// How often a follower reads the rollouts again (to show them), and a leader looks at its
/// term.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// The least time between two reads of the shared state for a rollout a follower does not
/// know.
const LOOK_UP_EVERY: Duration = Duration::from_millis(500);
/// Extra time an agent gets beyond the probation to fetch and unpack.
const FETCH_MARGIN: Duration = Duration::from_secs(300);

/// `text` on one line (an agent's message may hold several): audit rows and tables stay one
/// line a row.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The audit message of a rollout that ended: what went where, and why it ended badly.
fn finish_message(r: &RolloutRecord, reason: &str) -> String {
    let hosts: Vec<&str> = r.hosts.iter().map(|h| h.host.as_str()).collect();
    let what = format!("{} {} to {}", r.service, r.version, hosts.join(","));
    if reason.is_empty() { what } else { format!("{what}: {}", one_line(reason)) }
}

/// Counts of finished rollouts by result, for `fleet_rollouts_total`.
#[derive(Debug, Default)]
pub struct RolloutCounts {
    /// result → count since start.
    pub by_result: Mutex<HashMap<String, u64>>,
}

/// What a failed host step carries besides its message.
#[derive(Debug, Default)]
struct Failure {
    /// The newest lines the failed release wrote.
    log_tail: Vec<String>,
    /// Whether it was the move back that failed.
    revert: bool,
}

struct Live {
    record: watch::Sender<RolloutRecord>,
    wake: Arc<tokio::sync::Notify>,
}

/// Every rollout.
pub struct Rollouts {
    shared: Arc<dyn SharedState>,
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    audit: AuditLog,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Finished rollouts by result.
    pub counts: RolloutCounts,
    shutdown: CancellationToken,
    cluster: Arc<crate::cluster::Cluster>,
    /// While this coordinator leads: the token its rollout drivers stop on (cancelled when
    /// the term ends). `None` on a follower, which runs no rollout.
    term: Mutex<Option<CancellationToken>>,
    /// When [`Rollouts::look_up`] last read the shared state.
    looked_up: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rollouts")
    }
}

enum HostOutcome {
    Done(String),
    /// Why, and the newest lines the failed release wrote.
    Failed(String, Vec<String>),
}

impl Rollouts {
    /// Loads every rollout from the store and resumes the unfinished ones. With several
    /// coordinators only the leader drives rollouts: this one takes them up from the shared
    /// state when it becomes the leader and stops when its term ends ([`Rollouts::follow`]).
    pub fn start(
        shared: Arc<dyn SharedState>,
        registry: Arc<Registry>,
        hub: Arc<Hub>,
        audit: AuditLog,
        cluster: Arc<crate::cluster::Cluster>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Rollouts>, crate::store::StoreError> {
        let records = shared.load_rollouts()?;
        let alone = cluster.config().is_none();
        let this = Arc::new(Rollouts {
            shared,
            registry,
            hub,
            audit,
            live: Mutex::new(HashMap::new()),
            counts: RolloutCounts::default(),
            term: Mutex::new(alone.then(|| shutdown.child_token())),
            shutdown,
            cluster,
            looked_up: Mutex::new(None),
        });
        for r in records {
            let resume = alone && !r.finished();
            let id = r.id.clone();
            this.insert(r);
            if resume {
                tracing::info!(rollout = %id, "resuming a rollout after a restart");
                this.spawn(&id);
            }
        }
        if !alone {
            tokio::spawn(this.clone().follow());
        }
        Ok(this)
    }

    /// With several coordinators: on becoming the leader, reads every rollout from the shared
    /// state and resumes the unfinished ones (the command ids are the rollout's, so a host
    /// the previous leader already deployed is not deployed again); when the term ends, stops
    /// them; as a follower, reads the rollouts again every [`FOLLOW_EVERY`] to show them.
    async fn follow(self: Arc<Self>) {
        let mut changes = self.cluster.subscribe();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            let leads = self.cluster.leader_fence().is_some();
            let driving = self.term.lock().expect("term lock").is_some();
            match (leads, driving) {
                (true, false) => {
                    let records = match self.load_shared().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the rollouts to take them up; trying again");
                            continue;
                        }
                    };
                    *self.term.lock().expect("term lock") = Some(self.shutdown.child_token());
                    for r in records {
                        let resume = !r.finished();
                        let id = r.id.clone();
                        self.replace(r);
                        if resume {
                            tracing::info!(rollout = %id, "taking up a rollout as the new leader");
                            self.spawn(&id);
                        }
                    }
                }
                (false, true) => {
                    if let Some(term) = self.term.lock().expect("term lock").take() {
                        term.cancel();
                        tracing::warn!("no longer the leader: this coordinator's rollout drivers stop");
                    }
                }
                (false, false) => {
                    if let Ok(records) = self.load_shared().await {
                        for r in records {
                            self.replace(r);
                        }
                    }
                }
                (true, true) => {}
            }
        }
    }

    async fn load_shared(&self) -> Result<Vec<RolloutRecord>, crate::store::StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.load_rollouts())
            .await
            .map_err(|e| crate::store::StoreError::Shared(e.to_string()))?
    }

    /// Puts `r` in place of the rollout of its id, telling its watchers.
    fn replace(&self, r: RolloutRecord) {
        match self.get_live(&r.id) {
            Some(live) => {
                if *live.record.borrow() != r {
                    live.record.send_replace(r);
                }
            }
            None => {
                self.insert(r);
            }
        }
    }

    fn insert(&self, r: RolloutRecord) -> Arc<Live> {
        let (tx, _) = watch::channel(r.clone());
        let live = Arc::new(Live { record: tx, wake: Arc::new(tokio::sync::Notify::new()) });
        self.live.lock().expect("rollouts lock").insert(r.id.clone(), live.clone());
        live
    }

    fn get_live(&self, id: &str) -> Option<Arc<Live>> {
        self.live.lock().expect("rollouts lock").get(id).cloned()
    }

    /// On a follower, a rollout this coordinator does not know yet (the leader started it
    /// since the last read, [`FOLLOW_EVERY`]) is read from the shared state at once, so that
    /// `fleetctl rollout start --watch` through a follower follows it; at most one read per
    /// [`LOOK_UP_EVERY`], whatever callers ask.
    pub async fn look_up(&self, id: &str) {
        if self.cluster.config().is_none() || self.get_live(id).is_some() {
            return;
        }
        {
            let mut last = self.looked_up.lock().expect("rollouts lock");
            if last.is_some_and(|t| t.elapsed() < LOOK_UP_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if let Ok(records) = self.load_shared().await {
            for r in records {
                if self.get_live(&r.id).is_none() {
                    self.insert(r);
                }
            }
        }
    }

    /// A rollout by id.
    pub fn get(&self, id: &str) -> Option<RolloutRecord> {
        self.get_live(id).map(|l| l.record.borrow().clone())
    }

    /// A receiver of a rollout's changes.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<RolloutRecord>> {
        self.get_live(id).map(|l| l.record.subscribe())
    }

    /// Every rollout, newest first.
    pub fn list(&self) -> Vec<RolloutRecord> {
        let mut v: Vec<RolloutRecord> =
            self.live.lock().expect("rollouts lock").values().map(|l| l.record.borrow().clone()).collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        v
    }

    /// Digests any rollout still needs (for artifact garbage collection).
    pub fn needed_artifacts(&self) -> std::collections::HashSet<String> {
        self.list().into_iter().filter(|r| !r.finished()).map(|r| r.sha256).collect()
    }

    /// Whether a rollout of `service` is under way.
    pub fn active_for(&self, service: &str) -> Option<String> {
        self.list().into_iter().find(|r| r.service == service && !r.finished()).map(|r| r.id)
    }

    /// Registers and starts a new rollout.
    pub async fn create(self: &Arc<Self>, r: RolloutRecord) -> Result<RolloutRecord, String> {
        self.shared.save_rollout(&r).map_err(|e| e.to_string())?;
        let id = r.id.clone();
        self.insert(r.clone());
        self.spawn(&id);
        Ok(r)
    }

    async fn save(&self, live: &Live, f: impl FnOnce(&mut RolloutRecord)) -> RolloutRecord {
        let mut r = live.record.borrow().clone();
        f(&mut r);
        r.updated_at_ms = fleet_common::now_ms();
        if let Err(e) = self.shared.save_rollout(&r) {
            tracing::error!(rollout = %r.id, error = %e, "cannot save a rollout");
        }
        live.record.send_replace(r.clone());
        r
    }

    /// Applies an operator's pause, resume (promotion) or abort.
    pub async fn control(&self, id: &str, action: &str, who: &str) -> Result<RolloutRecord, String> {
        let live =
            self.get_live(id).ok_or_else(|| format!("no rollout with id {id}; `fleetctl rollout list` lists them"))?;
        let cur = live.record.borrow().clone();
        if cur.finished() {
            return Err(format!("rollout {id} has already ended ({})", cur.state));
        }
        let r = match action {
            "pause" => {
                self.save(&live, |r| {
                    if r.state == RolloutState::Running {
                        r.state = RolloutState::Paused
                    }
                })
                .await
            }
            "resume" => {
                let now = fleet_common::now_ms();
                self.save(&live, |r| {
                    if r.state == RolloutState::WaitingPromotion {
                        r.promoted = true;
                    }
                    if matches!(r.state, RolloutState::Paused | RolloutState::WaitingPromotion) {
                        r.state = RolloutState::Running;
                        // The progress deadline covers progress, not the time a person took
                        // to promote or resume (as in Nomad): it starts again now.
                        r.last_progress_ms = now;
                    }
                })
                .await
            }
            "abort" => self.save(&live, |r| r.abort_requested = true).await,
            _ => return Err(format!("unknown action {action}")),
        };
        live.wake.notify_one();
        let _ = self
            .audit
            .append(entry(
                who,
                &format!("rollout {action}"),
                "",
                &r.service,
                id,
                "succeeded",
                &format!("state {}", r.state),
            ))
            .await;
        Ok(r)
    }

    fn spawn(self: &Arc<Self>, id: &str) {
        let Some(stop) = self.term.lock().expect("term lock").clone() else {
            tracing::warn!(rollout = %id, "not the leader: the rollout is left to the leader");
            return;
        };
        let this = self.clone();
        let id = id.to_string();
        // A child of the StartRollout call's span when there is one (a rollout resumed at
        // start is a trace of its own).
        let span = tracing::info_span!(target: fleet_common::telemetry::TARGET, "rollout", rollout = %id);
        tokio::spawn(
            async move {
                if let Some(live) = this.get_live(&id) {
                    this.drive(&live, &stop).await;
                }
            }
            .instrument(span),
        );
    }

    fn previous_version(&self, host: &str, service: &str) -> String {
        self.registry
            .get(host)
            .and_then(|h| {
                h.with(|s| {
                    s.latest
                        .as_ref()
                        .and_then(|l| l.services.iter().find(|x| x.name == service).map(|x| x.version.clone()))
                })
            })
            .unwrap_or_default()
    }

    /// Sends a command to `host` (waiting up to `offline_wait` for it to come online) and waits
    /// up to `timeout` for the outcome.
    async fn run_on(
        &self,
        host: &str,
        command: Command,
        offline_wait: Duration,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<CommandUpdate, String> {
        let waited = tokio::time::Instant::now();
        let host = loop {
            if let Some(h) = self.registry.get(host).filter(|h| h.command_sender().is_some()) {
                break h;
            }
            if waited.elapsed() >= offline_wait {
                return Err(format!("{host} stayed offline for {}", fleet_common::human_duration(offline_wait)));
            }
            tokio::select! {
                _ = stop.cancelled() => return Err("the coordinator is shutting down".into()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        tokio::select! {
            _ = stop.cancelled() => Err("the coordinator is shutting down".into()),
            r = self.hub.send_and_wait(&host, command, timeout, std::future::ready(Ok(()))) => {
                r.map(|o| o.update).map_err(|e| e.to_string())
            }
        }
    }

    async fn deploy_host(&self, r: &RolloutRecord, host: &str, stop: &CancellationToken) -> HostOutcome {
        let probation = Duration::from_millis(r.healthy_deadline_ms + r.min_healthy_time_ms);
        let cmd = Command {
            id: format!("{}-{host}-deploy", r.id),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: r.created_by.clone(),
            timeout_ms: probation.as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::Deploy(DeployCommand {
                service: r.service.clone(),
                version: r.version.clone(),
                sha256: r.sha256.clone(),
                size_bytes: r.size_bytes,
                min_healthy_time_ms: r.min_healthy_time_ms,
                healthy_deadline_ms: r.healthy_deadline_ms,
            })),
        };
        match self.run_on(host, cmd, Duration::from_millis(r.healthy_deadline_ms), probation + FETCH_MARGIN, stop).await
        {
            Ok(u) if u.state == CommandState::Succeeded as i32 => HostOutcome::Done(u.message),
            Ok(u) => HostOutcome::Failed(one_line(&u.message), u.log_tail),
            Err(e) => HostOutcome::Failed(e, Vec::new()),
        }
    }

    async fn revert_host(&self, r: &RolloutRecord, step: &HostStep, stop: &CancellationToken) -> HostOutcome {
        if step.previous_version.is_empty() {
            return HostOutcome::Done("no earlier release to go back to".into());
        }
        let probation = Duration::from_millis(r.healthy_deadline_ms + r.min_healthy_time_ms);
        let cmd = Command {
            id: format!("{}-{}-revert", r.id, step.host),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: r.created_by.clone(),
            timeout_ms: probation.as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::Rollback(RollbackCommand {
                service: r.service.clone(),
                to_version: step.previous_version.clone(),
                min_healthy_time_ms: r.min_healthy_time_ms,
                healthy_deadline_ms: r.healthy_deadline_ms,
            })),
        };
        match self
            .run_on(&step.host, cmd, Duration::from_millis(r.healthy_deadline_ms), probation + FETCH_MARGIN, stop)
            .await
        {
            Ok(u) if u.state == CommandState::Succeeded as i32 => {
                HostOutcome::Done(format!("back on {}", step.previous_version))
            }
            Ok(u) => HostOutcome::Failed(one_line(&u.message), u.log_tail),
            Err(e) => HostOutcome::Failed(e, Vec::new()),
        }
    }

    async fn set_host(&self, live: &Live, host: &str, state: StepState, message: &str) -> RolloutRecord {
        self.set_host_step(live, host, state, message, Failure::default()).await
    }

    async fn set_host_failed(&self, live: &Live, host: &str, message: &str, failure: Failure) -> RolloutRecord {
        self.set_host_step(live, host, StepState::Failed, message, failure).await
    }

    async fn set_host_step(
        &self,
        live: &Live,
        host: &str,
        state: StepState,
        message: &str,
        failure: Failure,
    ) -> RolloutRecord {
        let now = fleet_common::now_ms();
        self.save(live, |r| {
            if let Some(h) = r.hosts.iter_mut().find(|h| h.host == host) {
                h.state = state;
                h.message = message.into();
                h.updated_at_ms = now;
                h.log_tail = failure.log_tail;
                h.revert_failed = failure.revert;
            }
            if matches!(state, StepState::Healthy | StepState::Reverted) {
                r.last_progress_ms = now;
            }
        })
        .await
    }

    async fn finish(&self, live: &Live, state: RolloutState, reason: &str) {
        let r = self
            .save(live, |r| {
                r.state = state;
                if !reason.is_empty() {
                    r.reason = reason.into();
                }
            })
            .await;
        *self.counts.by_result.lock().expect("counts lock").entry(state.as_str().to_string()).or_default() += 1;
        tracing::info!(rollout = %r.id, service = %r.service, version = %r.version, %state, reason, "rollout ended");
        let _ = self
            .audit
            .append(entry(&r.created_by, "rollout", "", &r.service, &r.id, state.as_str(), &finish_message(&r, reason)))
            .await;
    }

    /// Runs hosts in `batch` (at most max_parallel) concurrently with `f`.
    async fn drive(self: &Arc<Self>, live: &Live, stop: &CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let r = live.record.borrow().clone();
            if r.finished() {
                return;
            }
            let eligible = match next_step(&r, fleet_common::now_ms()) {
                Step::Revert(reason) => {
                    self.save(live, |r| {
                        r.state = RolloutState::Reverting;
                        r.reason = reason;
                    })
                    .await;
                    continue;
                }
                Step::Aborted => {
                    self.finish(live, RolloutState::Aborted, "aborted by an operator").await;
                    return;
                }
                Step::WaitForOperator => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = live.wake.notified() => {}
                    }
                    continue;
                }
                Step::Reverting => {
                    self.revert(live, stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                    let r = live.record.borrow().clone();
                    let (end, reason) = revert_outcome(&r);
                    self.finish(live, end, &reason).await;
                    return;
                }
                Step::Promote => {
                    self.save(live, |r| r.promoted = true).await;
                    continue;
                }
                Step::AwaitPromotion => {
                    self.save(live, |r| r.state = RolloutState::WaitingPromotion).await;
                    continue;
                }
                Step::Succeeded => {
                    self.finish(live, RolloutState::Succeeded, "").await;
                    return;
                }
                Step::Fail(reason) => {
                    self.fail(live, &reason).await;
                    continue;
                }
                Step::Idle => {
                    // Canaries still running elsewhere? Nothing to do but wait for a change.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = live.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
                Step::Deploy(hosts) => hosts,
            };
            let mut batch = tokio::task::JoinSet::new();
            for i in eligible {
                let host = r.hosts[i].host.clone();
                if r.hosts[i].state == StepState::Pending {
                    let prev = self.previous_version(&host, &r.service);
                    let now = fleet_common::now_ms();
                    self.save(live, |r| {
                        let h = &mut r.hosts[i];
                        h.state = StepState::Deploying;
                        h.previous_version = prev;
                        h.message = String::new();
                        h.updated_at_ms = now;
                    })
                    .await;
                }
                let (this, stop) = (self.clone(), stop.clone());
                let rec = live.record.borrow().clone();
                let span = tracing::info_span!(target: fleet_common::telemetry::TARGET, "rollout.deploy", host = %host, version = %rec.version);
                batch.spawn(
                    async move {
                        let outcome = this.deploy_host(&rec, &host, &stop).await;
                        (host, outcome)
                    }
                    .instrument(span),
                );
            }
            let mut failure = None;
            while let Some(res) = batch.join_next().await {
                let Ok((host, outcome)) = res else { continue };
                if stop.is_cancelled() {
                    // Leave the host in "deploying": the next coordinator asks again.
                    continue;
                }
                match outcome {
                    HostOutcome::Done(msg) => {
                        self.set_host(live, &host, StepState::Healthy, &msg).await;
                    }
                    HostOutcome::Failed(msg, log_tail) => {
                        self.set_host_failed(live, &host, &msg, Failure { log_tail, revert: false }).await;
                        failure.get_or_insert(format!("{host}: {msg}"));
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
            if let Some(reason) = failure {
                self.fail(live, &reason).await;
            }
        }
    }

    async fn fail(&self, live: &Live, reason: &str) {
        let r = live.record.borrow().clone();
        if r.auto_revert && r.hosts.iter().any(|h| h.state == StepState::Healthy) {
            self.save(live, |r| {
                r.state = RolloutState::Reverting;
                r.reason = reason.into();
            })
            .await;
        } else {
            self.finish(live, RolloutState::Failed, reason).await;
        }
    }

    /// Moves every host that took the new release back, max_parallel at a time.
    async fn revert(self: &Arc<Self>, live: &Live, stop: &CancellationToken) {
        loop {
            let r = live.record.borrow().clone();
            let todo: Vec<HostStep> = r
                .hosts
                .iter()
                .filter(|h| matches!(h.state, StepState::Healthy | StepState::Reverting | StepState::Deploying))
                .take(r.max_parallel.max(1) as usize)
                .cloned()
                .collect();
            if todo.is_empty() || stop.is_cancelled() {
                return;
            }
            let mut batch = tokio::task::JoinSet::new();
            for step in todo {
                self.set_host(live, &step.host, StepState::Reverting, "").await;
                let (this, stop) = (self.clone(), stop.clone());
                let rec = r.clone();
                let span =
                    tracing::info_span!(target: fleet_common::telemetry::TARGET, "rollout.revert", host = %step.host);
                batch.spawn(
                    async move {
                        let outcome = this.revert_host(&rec, &step, &stop).await;
                        (step.host, outcome)
                    }
                    .instrument(span),
                );
            }
            while let Some(res) = batch.join_next().await {
                let Ok((host, outcome)) = res else { continue };
                if stop.is_cancelled() {
                    return;
                }
                match outcome {
                    HostOutcome::Done(msg) => self.set_host(live, &host, StepState::Reverted, &msg).await,
                    HostOutcome::Failed(msg, log_tail) => {
                        let failed = Failure { log_tail, revert: true };
                        self.set_host_failed(live, &host, &format!("revert failed: {msg}"), failed).await
                    }
                };
            }
        }
    }
}

/// Appends `fleet_rollouts_total{result}` and the progress of unfinished rollouts.
impl crate::metrics::FmtMetrics for Rollouts {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        let rollouts = self;
        e.family("fleet_rollouts_total", "counter", "Rollouts that ended since the coordinator started, by result.");
        let counts = rollouts.counts.by_result.lock().expect("counts lock").clone();
        for result in RolloutState::RESULTS.map(RolloutState::as_str) {
            e.sample("fleet_rollouts_total", &[("result", result)], counts.get(result).copied().unwrap_or(0) as f64);
        }
        let active: Vec<_> = rollouts.list().into_iter().filter(|r| !r.finished()).collect();
        e.family("fleet_rollout_hosts", "gauge", "Hosts of unfinished rollouts, by state.");
        for r in &active {
            for state in StepState::ALL {
                let n = r.hosts.iter().filter(|h| h.state == state).count();
                e.sample(
                    "fleet_rollout_hosts",
                    &[("rollout", &r.id), ("service", &r.service), ("state", state.as_str())],
                    n as f64,
                );
            }
        }
        e.family(
            "fleet_rollout_progress_ratio",
            "gauge",
            "Share of an unfinished rollout's hosts that are done, 0 to 1.",
        );
        for r in &active {
            let done = r.hosts.iter().filter(|h| h.state == StepState::Healthy).count();
            e.sample(
                "fleet_rollout_progress_ratio",
                &[("rollout", &r.id), ("service", &r.service)],
                done as f64 / r.hosts.len().max(1) as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollouts::policy::tests::rollout;

    #[test]
    fn finish_messages_are_one_line_and_name_what_went_where() {
        let r = rollout(&["a", "b"], 0, 1);
        assert_eq!(finish_message(&r, ""), "api 2.0 to a,b");
        assert_eq!(finish_message(&r, "a: exited\nstderr: boom"), "api 2.0 to a,b: a: exited stderr: boom");
    }
}

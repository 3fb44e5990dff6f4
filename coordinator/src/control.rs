//! The ControlService: what fleetctl calls. Every call has passed the guard
//! ([`crate::guard`]: an operator identity, not revoked, with the access role the rpc needs)
//! before it reaches these handlers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_common::identity::{Identity, Role};
use fleet_common::selector::Selector;
use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::control_service_server::ControlService;
use fleet_proto::v1::{
    CancelCommand, Command, CommandState, GetHostRequest, GetHostResponse, GetStatusRequest, GetStatusResponse,
    HostService, ListAuditRequest, ListAuditResponse, ListHostsRequest, ListHostsResponse, ListReportsRequest,
    ListReportsResponse, ListServicesRequest, ListServicesResponse, LogLine, LogsCommand, RunServiceCommandRequest,
    RunServiceCommandResponse, ServiceAction, ServiceCommand, StreamLogsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::entry;
use crate::commands::{Outcome, SendError, new_id};
use crate::coordinator::Coordinator;
use crate::registry::Host;
use crate::store::{HostStep, RolloutRecord};
use fleet_proto::v1::upload_artifact_request::Part;
use fleet_proto::v1::{
    ListReleasesRequest, ListReleasesResponse, ListRolloutsRequest, ListRolloutsResponse, ReleasesCommand,
    RollbackCommand, RollbackRequest, Rollout, RolloutRequest, StartRolloutRequest, StatArtifactRequest,
    StatArtifactResponse, UploadArtifactRequest, UploadArtifactResponse,
};

/// Default and longest wait for a service command's outcome.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait a caller may ask for.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);
/// Lines queued towards one `fleetctl logs` stream.
const LOG_STREAM_BUFFER: usize = 4096;

/// Most report ids one ListReports answer carries.
pub const MAX_LIST_REPORTS: usize = 100_000;

/// The ControlService implementation.
#[derive(Clone)]
pub struct ControlApi {
    pub(crate) c: Arc<Coordinator>,
}

impl ControlApi {
    /// The control API of coordinator `c`.
    pub fn new(c: Arc<Coordinator>) -> Self {
        ControlApi { c }
    }
}

fn identity_of<T>(req: &Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no client certificate: fleet requires mutual TLS"))
}

pub(crate) fn caller<T>(req: &Request<T>) -> String {
    req.extensions().get::<Identity>().map(|i| i.uri()).unwrap_or_else(|| "unknown".into())
}

fn action_name(a: ServiceAction) -> &'static str {
    match a {
        ServiceAction::Start => "start",
        ServiceAction::Stop => "stop",
        ServiceAction::Restart => "restart",
        ServiceAction::Unspecified => "unspecified",
    }
}

/// The status of a command that got no outcome.
fn send_status(host: &Host, e: SendError) -> Status {
    match e {
        SendError::Offline { .. } => offline_error(host),
        SendError::Busy => Status::resource_exhausted(e.to_string()),
        SendError::NotSent(_) | SendError::NotAccepting { .. } | SendError::NotLeader(_) => {
            Status::unavailable(e.to_string())
        }
        SendError::TimedOut { .. } => Status::deadline_exceeded(e.to_string()),
    }
}

pub(crate) fn offline_error(host: &Host) -> Status {
    let last = host.with(|s| s.record.last_seen_ms);
    let ago = if last > 0 {
        format!(
            " (last seen {} ago)",
            fleet_common::human_duration(Duration::from_millis((fleet_common::now_ms() - last).max(0) as u64))
        )
    } else {
        String::new()
    };
    Status::failed_precondition(format!("{} is offline{ago}; nothing was sent", host.name))
}

impl ControlApi {
    /// Reads a host's stored reports off the async threads.
    async fn host_reports(&self, host: &str, since_ms: i64, limit: usize) -> Result<crate::store::HostReports, Status> {
        let (store, host) = (self.c.store.clone(), host.to_string());
        tokio::task::spawn_blocking(move || store.host_reports(&host, since_ms, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("cannot read the report store: {e}")))
    }

    pub(crate) fn host(&self, name: &str) -> Result<Arc<Host>, Status> {
        self.c.registry.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no host named \"{name}\"; `fleetctl hosts` lists the hosts this coordinator knows"
            ))
        })
    }

    /// Sends `command` to `host` and waits up to `timeout` for its outcome.
    pub(crate) async fn ask(
        &self,
        host: &Host,
        command: Command,
        timeout: Duration,
    ) -> Result<fleet_proto::v1::CommandUpdate, Status> {
        let outcome = self.c.hub.send_and_wait(host, command, timeout, std::future::ready(Ok(()))).await;
        outcome.map(|o| o.update).map_err(|e| send_status(host, e))
    }

    /// Sends an operator's command to `host`'s agent and waits up to `timeout` for its
    /// outcome. Audited before it is sent (the log must show every attempt, even one whose
    /// outcome never arrives) and with its outcome; a timeout is a FAILED outcome that says
    /// whether the agent still works on it (`look` is the fleetctl command that shows how it
    /// ends).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn audited(
        &self,
        who: &str,
        action: &str,
        host: &Host,
        target: &str,
        command: Command,
        timeout: Duration,
        look: &str,
    ) -> Result<fleet_proto::v1::CommandUpdate, Status> {
        let id = command.id.clone();
        let audit_first = async {
            self.c
                .audit
                .append(entry(who, action, &host.name, target, &id, "requested", ""))
                .await
                .map_err(|e| format!("cannot write the audit log, the command was not sent: {e}"))?;
            tracing::info!(%who, host = %host.name, target, action, command_id = %id, "operator command");
            Ok(())
        };
        let sent = self.c.hub.send_and_wait(host, command, timeout, audit_first).await;
        let (word, u) = match sent {
            // A repeated request: its outcome was audited when it arrived.
            Ok(Outcome { update: u, earlier: true }) => return Ok(u),
            Ok(Outcome { update: u, earlier: false }) => {
                let word = match CommandState::try_from(u.state).unwrap_or(CommandState::Failed) {
                    CommandState::Succeeded => "succeeded",
                    CommandState::Rejected => "rejected",
                    _ => "failed",
                };
                (word, u)
            }
            Err(SendError::NotSent(msg)) => return Err(Status::internal(msg)),
            Err(SendError::NotLeader(msg)) => {
                let _ = self.c.audit.append(entry(who, action, &host.name, target, &id, "failed", &msg)).await;
                return Err(Status::unavailable(msg));
            }
            Err(e @ (SendError::Offline { .. } | SendError::Busy)) => return Err(send_status(host, e)),
            Err(e @ SendError::NotAccepting { .. }) => {
                let msg = e.to_string();
                let _ = self.c.audit.append(entry(who, action, &host.name, target, &id, "failed", &msg)).await;
                return Err(Status::unavailable(msg));
            }
            Err(SendError::TimedOut { accepted, .. }) => {
                let within = fleet_common::human_duration_ms(timeout);
                let look = format!("`{look}`");
                let message = if accepted {
                    format!(
                        "{} received the command but gave no outcome within {within}; it is still being applied there: {look} shows how it ends",
                        host.name
                    )
                } else {
                    format!(
                        "{} did not acknowledge the command within {within} (its agent is stopped, overloaded or cut off), so fleet dropped it and will not send it again; an agent that reads it late, after a stall, still applies it: {look} shows the outcome",
                        host.name
                    )
                };
                let u = fleet_proto::v1::CommandUpdate {
                    command_id: id.clone(),
                    state: CommandState::Failed as i32,
                    message,
                    ..Default::default()
                };
                ("timed out", u)
            }
        };
        let _ = self.c.audit.append(entry(who, action, &host.name, target, &id, word, &u.message)).await;
        Ok(u)
    }

    /// The hosts `host` (one, by name) or `selector` (a label selector) pick, or every host
    /// when both are empty. A selector that picks none is NOT_FOUND, a malformed one
    /// INVALID_ARGUMENT.
    pub(crate) fn select(&self, host: &str, selector: &str) -> Result<Vec<Arc<Host>>, Status> {
        if !host.is_empty() {
            return Ok(vec![self.host(host)?]);
        }
        let mut hosts = self.c.registry.all();
        if selector.is_empty() {
            return Ok(hosts);
        }
        let selector = Selector::parse(selector).map_err(|e| Status::invalid_argument(e.to_string()))?;
        hosts.retain(|h| {
            let labels = h.with(|s| s.record.labels.clone());
            selector.matches(|k| match k {
                "host" => Some(h.name.as_str()),
                _ => labels.get(k).map(String::as_str),
            })
        });
        if hosts.is_empty() {
            return Err(Status::not_found(format!(
                "no host matches the selector {selector}; `fleetctl hosts -o json` shows every host's labels"
            )));
        }
        Ok(hosts)
    }

    fn timed<T>(&self, started: Instant, r: T) -> T {
        self.c.metrics.control_seconds.observe(started.elapsed().as_secs_f64());
        r
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        let t = Instant::now();
        let (online, offline) = self.c.registry.counts();
        let resp = GetStatusResponse {
            coordinator_version: fleet_common::VERSION.to_string(),
            started_at_ms: self.c.started_at_ms,
            hosts_online: online as u32,
            hosts_offline: offline as u32,
            sessions: self.c.sessions.load(Ordering::Relaxed) as u32,
            reports_stored: self.c.metrics.reports_stored.get(),
            history_reports: self.c.store.reports_held(),
            history_retention_seconds: self.c.config.retention.as_secs(),
            trust_domain: self.c.trust_domain.clone(),
            history_loading: !self.c.tsdb.loaded(),
            cluster: self.c.cluster.status().await,
        };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_hosts(&self, req: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        let t = Instant::now();
        let hosts = self.select("", &req.get_ref().selector)?.iter().map(|h| h.summary()).collect();
        Ok(self.timed(t, Response::new(ListHostsResponse { hosts })))
    }

    async fn get_host(&self, req: Request<GetHostRequest>) -> Result<Response<GetHostResponse>, Status> {
        let t = Instant::now();
        let host = self.host(&req.get_ref().name)?;
        let held = self.host_reports(&host.name, i64::MIN, 0).await?;
        let resp = GetHostResponse {
            host: Some(host.summary()),
            history_reports: held.count,
            history_oldest_ms: held.oldest_ms,
        };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_reports(&self, req: Request<ListReportsRequest>) -> Result<Response<ListReportsResponse>, Status> {
        let t = Instant::now();
        let r = req.get_ref();
        let host = self.host(&r.host)?;
        let limit = if r.limit == 0 { MAX_LIST_REPORTS } else { (r.limit as usize).min(MAX_LIST_REPORTS) };
        let reports = self
            .host_reports(&host.name, r.since_ms, limit)
            .await?
            .newest
            .into_iter()
            .map(|r| fleet_proto::v1::StoredReport {
                id: Some(fleet_proto::v1::ReportId { boot_id: r.boot_id, seq: r.seq }),
                timestamp_ms: r.timestamp_ms,
            })
            .collect();
        Ok(self.timed(t, Response::new(ListReportsResponse { reports })))
    }

    async fn list_services(&self, req: Request<ListServicesRequest>) -> Result<Response<ListServicesResponse>, Status> {
        let t = Instant::now();
        let hosts = self.select(&req.get_ref().host, &req.get_ref().selector)?;
        let mut services = Vec::new();
        for h in hosts {
            let sum = h.summary();
            for s in sum.services {
                services.push(HostService { host: sum.name.clone(), host_online: sum.online, service: Some(s) });
            }
        }
        Ok(self.timed(t, Response::new(ListServicesResponse { services })))
    }

    async fn run_service_command(
        &self,
        req: Request<RunServiceCommandRequest>,
    ) -> Result<Response<RunServiceCommandResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let action = r.action();
        if action == ServiceAction::Unspecified {
            return Err(Status::invalid_argument("action must be start, stop or restart"));
        }
        let host = self.host(&r.host)?;
        if host.command_sender().is_none() {
            return Err(offline_error(&host));
        }
        let known = host.with(|s| s.latest.as_ref().map(|l| l.services.iter().any(|x| x.name == r.service)));
        if known == Some(false) {
            return Err(Status::not_found(format!(
                "{} has no service named \"{}\"; `fleetctl services --host {}` lists them",
                r.host, r.service, r.host
            )));
        }
        let timeout = if r.timeout_ms == 0 {
            DEFAULT_COMMAND_TIMEOUT
        } else {
            Duration::from_millis(r.timeout_ms).min(MAX_COMMAND_TIMEOUT)
        };
        let id = if r.request_id.is_empty() { new_id() } else { r.request_id.clone() };
        let name = action_name(action);
        // The operator's timeout bounds the whole call: the agent gets a little less, so that
        // its own "timed out" answer, with the service's state, arrives in time.
        let margin = (timeout / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let command = Command {
            id: id.clone(),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: who.clone(),
            timeout_ms: timeout.saturating_sub(margin).max(Duration::from_millis(100)).as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::Service(ServiceCommand { service: r.service.clone(), action: action as i32 })),
        };
        let look = format!("fleetctl services --host {}", r.host);
        let u = self.audited(&who, name, &host, &r.service, command, timeout, &look).await?;
        Ok(Response::new(RunServiceCommandResponse {
            command_id: id,
            state: u.state,
            message: u.message,
            service: u.service,
            log_tail: u.log_tail,
        }))
    }

    type StreamLogsStream = ReceiverStream<Result<LogLine, Status>>;

    async fn stream_logs(&self, req: Request<StreamLogsRequest>) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = req.into_inner();
        let hosts = if r.host.is_empty() {
            self.c.registry.all().into_iter().filter(|h| h.online()).collect()
        } else {
            let h = self.host(&r.host)?;
            if !h.online() {
                return Err(offline_error(&h));
            }
            vec![h]
        };
        if hosts.is_empty() {
            return Err(Status::failed_precondition("no host is online"));
        }
        let (tx, rx) = mpsc::channel(LOG_STREAM_BUFFER);
        let mut started = Vec::new();
        for h in hosts {
            let Some(queue) = h.command_sender() else { continue };
            let id = new_id();
            self.c.hub.add_logs(&id, &h.name, tx.clone())?;
            let command = Command {
                id: id.clone(),
                issued_at_ms: fleet_common::now_ms(),
                action: Some(CmdAction::Logs(LogsCommand {
                    service: r.service.clone(),
                    lines: r.lines.min(10_000),
                    follow: r.follow,
                })),
                ..Default::default()
            };
            if queue.try_send(Box::new(command)).is_err() {
                self.c.hub.remove_logs(&id);
                continue;
            }
            started.push((id, queue));
        }
        // When the caller goes away, tell the agents to stop following. The watcher holds only
        // a weak sender, so a finished (not following) stream still ends on its own.
        let weak = tx.downgrade();
        drop(tx);
        if r.follow {
            let hub = self.c.hub.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match weak.upgrade() {
                        None => return,
                        Some(s) if s.is_closed() => break,
                        Some(_) => {}
                    }
                }
                for (id, queue) in started {
                    hub.remove_logs(&id);
                    let cancel = Command {
                        id: new_id(),
                        issued_at_ms: fleet_common::now_ms(),
                        action: Some(CmdAction::Cancel(CancelCommand { command_id: id })),
                        ..Default::default()
                    };
                    let _ = queue.try_send(Box::new(cancel));
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let n = match req.get_ref().limit {
            0 => 100,
            n => (n as usize).min(100_000),
        };
        let audit = self.c.audit.clone();
        let entries =
            tokio::task::spawn_blocking(move || audit.last(n)).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListAuditResponse { entries: entries.into_iter().map(Into::into).collect() }))
    }

    async fn stat_artifact(&self, req: Request<StatArtifactRequest>) -> Result<Response<StatArtifactResponse>, Status> {
        let sha = &req.get_ref().sha256;
        let mut size = self.c.artifacts.stat(sha);
        let from_coordinator = req.extensions().get::<Identity>().is_some_and(|i| i.role == Role::Coordinator);
        if size.is_none() && req.get_ref().fetch && from_coordinator && crate::artifacts::valid_sha256(sha) {
            // The leader wants a copy here before its rollout starts (crate::artifacts::Replicas).
            size = self.c.artifacts.fetch_from_peers(sha, &self.c.cluster.peers(), &self.c.tls).await.ok();
        }
        Ok(Response::new(StatArtifactResponse { exists: size.is_some(), size_bytes: size.unwrap_or(0) }))
    }

    async fn upload_artifact(
        &self,
        req: Request<tonic::Streaming<UploadArtifactRequest>>,
    ) -> Result<Response<UploadArtifactResponse>, Status> {
        let who = caller(&req);
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("an upload starts with a header"));
        };
        let Some(Part::Header(header)) = first.part else {
            return Err(Status::invalid_argument("an upload starts with a header"));
        };
        let sha = header.sha256.clone();
        let name = header.name.clone();
        let (size, existed) = self.c.artifacts.store(header, stream).await?;
        if !existed {
            tracing::info!(%who, sha256 = %sha, size, %name, "artifact uploaded");
        }
        Ok(Response::new(UploadArtifactResponse { sha256: sha, size_bytes: size, existed }))
    }

    async fn start_rollout(&self, req: Request<StartRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        if !fleet_common::identity::valid_name(&r.service) {
            return Err(Status::invalid_argument(format!("invalid service name \"{}\"", r.service)));
        }
        if r.version.is_empty()
            || r.version.len() > 64
            || !r.version.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_+".contains(&b))
        {
            return Err(Status::invalid_argument(format!(
                "invalid version \"{}\": use letters, digits, '.', '_', '+' and '-'",
                r.version
            )));
        }
        if let Some(id) = self.c.rollouts.active_for(&r.service) {
            return Err(Status::failed_precondition(format!(
                "rollout {id} of {} is still under way; wait for it, or `fleetctl rollout abort {id}`",
                r.service
            )));
        }
        let has_service = |h: &crate::registry::Host| {
            h.with(|s| s.latest.as_ref().is_some_and(|l| l.services.iter().any(|x| x.name == r.service)))
        };
        let mut skipped = Vec::new();
        let hosts: Vec<String> = if r.hosts.is_empty() {
            let mut picked = Vec::new();
            for h in self.select("", &r.selector)? {
                if !has_service(&h) {
                    continue;
                }
                match h.drained() {
                    Some(why) => skipped.push(format!("{}: drained ({why})", h.name)),
                    None => picked.push(h.name.clone()),
                }
            }
            picked
        } else {
            if !r.selector.is_empty() {
                return Err(Status::invalid_argument("give either hosts or a selector, not both"));
            }
            for name in &r.hosts {
                let h = self.host(name)?;
                if !has_service(&h) {
                    return Err(Status::failed_precondition(format!(
                        "{name} reports no service named \"{}\"; `fleetctl services --host {name}` lists its services",
                        r.service
                    )));
                }
                if let Some(why) = h.drained() {
                    return Err(Status::failed_precondition(format!(
                        "{name} is drained ({why}); `fleetctl hosts undrain {name}` first, or leave it out"
                    )));
                }
            }
            r.hosts.clone()
        };
        if hosts.is_empty() {
            let what =
                if r.selector.is_empty() { String::new() } else { format!(" among the hosts {} picks", r.selector) };
            let drained =
                if skipped.is_empty() { String::new() } else { format!(" but drained ones ({})", skipped.join("; ")) };
            return Err(Status::failed_precondition(format!(
                "no host{what} reports a service named \"{}\"{drained}; name the hosts with --hosts",
                r.service
            )));
        }
        let mut dedup = std::collections::HashSet::new();
        if !hosts.iter().all(|h| dedup.insert(h.clone())) {
            return Err(Status::invalid_argument("a host is listed twice"));
        }
        if r.canary as usize > hosts.len() {
            return Err(Status::invalid_argument(format!(
                "--canary {} is more than the {} hosts",
                r.canary,
                hosts.len()
            )));
        }
        let mut held = self.c.artifacts.stat(&r.sha256);
        if held.is_none() && self.c.cluster.config().is_some() && crate::artifacts::valid_sha256(&r.sha256) {
            // Uploaded to the coordinator the operator dialed, which passed the start on to
            // this one, the leader: fetched from the others.
            match self.c.artifacts.fetch_from_peers(&r.sha256, &self.c.cluster.peers(), &self.c.tls).await {
                Ok(size) => held = Some(size),
                Err(why) => {
                    tracing::warn!(artifact = %r.sha256, %why, "the rollout's artifact is on no other coordinator either")
                }
            }
        }
        let size = match held {
            Some(size) => size,
            None if r.validate_only => 0,
            None => {
                return Err(Status::failed_precondition(format!(
                    "the coordinator holds no artifact {}; upload it first",
                    r.sha256
                )));
            }
        };
        let ms = |v: u64, d: u64| if v == 0 { d } else { v };
        let now = fleet_common::now_ms();
        let rec = RolloutRecord {
            id: format!("r{}", &new_id()[..12]),
            service: r.service.clone(),
            version: r.version.clone(),
            sha256: r.sha256.clone(),
            size_bytes: size,
            state: crate::store::RolloutState::Running,
            reason: String::new(),
            hosts: hosts
                .iter()
                .map(|h| HostStep {
                    host: h.clone(),
                    state: crate::store::StepState::Pending,
                    revert_failed: false,
                    message: String::new(),
                    previous_version: String::new(),
                    updated_at_ms: now,
                    log_tail: Vec::new(),
                })
                .collect(),
            max_parallel: r.max_parallel.max(1),
            canary: r.canary,
            auto_promote: r.auto_promote,
            min_healthy_time_ms: ms(r.min_healthy_time_ms, 10_000),
            healthy_deadline_ms: ms(r.healthy_deadline_ms, 300_000),
            progress_deadline_ms: ms(r.progress_deadline_ms, 600_000),
            auto_revert: !r.no_auto_revert,
            promoted: r.canary == 0,
            abort_requested: false,
            created_by: who.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            last_progress_ms: now,
            skipped,
        };
        if r.validate_only {
            return Ok(Response::new(rec.to_proto()));
        }
        // In a cluster, a copy of the artifact on another coordinator first: should this
        // leader be lost once the rollout started, the next one goes on with it.
        if let Some(replicas) = &self.c.replicas {
            replicas.ensure_copy(&rec.sha256).await.map_err(Status::unavailable)?;
        }
        let msg = format!("{} {} to {}", rec.service, rec.version, hosts.join(","));
        self.c
            .audit
            .append(entry(&who, "rollout start", "", &rec.service, &rec.id, "requested", &msg))
            .await
            .map_err(|e| Status::internal(format!("cannot write the audit log, the rollout was not started: {e}")))?;
        let rec = self.c.rollouts.create(rec).await.map_err(Status::internal)?;
        tracing::info!(%who, rollout = %rec.id, "{msg}");
        Ok(Response::new(rec.to_proto()))
    }

    async fn get_rollout(&self, req: Request<RolloutRequest>) -> Result<Response<Rollout>, Status> {
        let id = &req.get_ref().id;
        self.c.rollouts.look_up(id).await;
        let r =
            self.c.rollouts.get(id).ok_or_else(|| {
                Status::not_found(format!("no rollout with id {id}; `fleetctl rollout list` lists them"))
            })?;
        Ok(Response::new(r.to_proto()))
    }

    type WatchRolloutStream = ReceiverStream<Result<Rollout, Status>>;

    async fn watch_rollout(&self, req: Request<RolloutRequest>) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let id = req.get_ref().id.clone();
        self.c.rollouts.look_up(&id).await;
        let mut rx = self.c.rollouts.watch(&id).ok_or_else(|| Status::not_found(format!("no rollout with id {id}")))?;
        let (tx, out) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let r = rx.borrow_and_update().clone();
                let done = r.finished();
                if tx.send(Ok(r.to_proto())).await.is_err() || done {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn list_rollouts(&self, _: Request<ListRolloutsRequest>) -> Result<Response<ListRolloutsResponse>, Status> {
        Ok(Response::new(ListRolloutsResponse {
            rollouts: self.c.rollouts.list().iter().map(RolloutRecord::to_proto).collect(),
        }))
    }

    async fn pause_rollout(&self, req: Request<RolloutRequest>) -> Result<Response<Rollout>, Status> {
        let who = caller(&req);
        let r = self.c.rollouts.control(&req.get_ref().id, "pause", &who).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(r.to_proto()))
    }

    async fn resume_rollout(&self, req: Request<RolloutRequest>) -> Result<Response<Rollout>, Status> {
        let who = caller(&req);
        let r =
            self.c.rollouts.control(&req.get_ref().id, "resume", &who).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(r.to_proto()))
    }

    async fn abort_rollout(&self, req: Request<RolloutRequest>) -> Result<Response<Rollout>, Status> {
        let who = caller(&req);
        let r = self.c.rollouts.control(&req.get_ref().id, "abort", &who).await.map_err(Status::failed_precondition)?;
        Ok(Response::new(r.to_proto()))
    }

    async fn rollback(&self, req: Request<RollbackRequest>) -> Result<Response<RunServiceCommandResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let host = self.host(&r.host)?;
        let probation = Duration::from_millis(if r.healthy_deadline_ms == 0 { 300_000 } else { r.healthy_deadline_ms })
            + Duration::from_millis(if r.min_healthy_time_ms == 0 { 10_000 } else { r.min_healthy_time_ms });
        let id = new_id();
        let to = if r.to_version.is_empty() { "the previous release".to_string() } else { r.to_version.clone() };
        self.c
            .audit
            .append(entry(&who, "rollback", &r.host, &r.service, &id, "requested", &format!("to {to}")))
            .await
            .map_err(|e| Status::internal(format!("cannot write the audit log, nothing was sent: {e}")))?;
        let command = Command {
            id: id.clone(),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: who.clone(),
            timeout_ms: probation.as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::Rollback(RollbackCommand {
                service: r.service.clone(),
                to_version: r.to_version.clone(),
                min_healthy_time_ms: r.min_healthy_time_ms,
                healthy_deadline_ms: r.healthy_deadline_ms,
            })),
        };
        let u = match self.ask(&host, command, probation + Duration::from_secs(30)).await {
            Ok(u) => u,
            Err(s) => {
                let _ =
                    self.c.audit.append(entry(&who, "rollback", &r.host, &r.service, &id, "failed", s.message())).await;
                return Err(s);
            }
        };
        let word = if u.state == CommandState::Succeeded as i32 { "succeeded" } else { "failed" };
        let _ = self.c.audit.append(entry(&who, "rollback", &r.host, &r.service, &id, word, &u.message)).await;
        Ok(Response::new(RunServiceCommandResponse {
            command_id: id,
            state: u.state,
            message: u.message,
            service: u.service,
            log_tail: u.log_tail,
        }))
    }

    async fn list_releases(&self, req: Request<ListReleasesRequest>) -> Result<Response<ListReleasesResponse>, Status> {
        let r = req.into_inner();
        let host = self.host(&r.host)?;
        let command = Command {
            id: new_id(),
            issued_at_ms: fleet_common::now_ms(),
            action: Some(CmdAction::Releases(ReleasesCommand { service: r.service.clone() })),
            ..Default::default()
        };
        let u = self.ask(&host, command, Duration::from_secs(15)).await?;
        if u.state != CommandState::Succeeded as i32 {
            return Err(Status::not_found(format!("{}: {}", r.host, u.message)));
        }
        Ok(Response::new(ListReleasesResponse { releases: u.releases }))
    }

    async fn query(
        &self,
        req: Request<fleet_proto::v1::QueryRequest>,
    ) -> Result<Response<fleet_proto::v1::QueryResponse>, Status> {
        use crate::query::{self, Answer, QueryError};
        use fleet_proto::v1::{QueryPoint, QueryResponse, QuerySeries};
        let t0 = Instant::now();
        let r = req.into_inner();
        let db = self.c.tsdb.clone();
        let answer = query::run(self.c.config.query, self.c.shutdown.clone(), move |l| {
            if r.step_ms > 0 {
                query::range(&*db, &r.expr, r.start_ms, r.end_ms, r.step_ms, l)
            } else {
                let t = if r.time_ms == 0 { fleet_common::now_ms() } else { r.time_ms };
                query::instant(&*db, &r.expr, t, l)
            }
        })
        .await
        .map_err(|e| match e {
            QueryError::BadData(m) => Status::invalid_argument(m),
            // Valid PromQL that cannot be answered: the operation failed (fleetctl exits 1).
            QueryError::Unsupported(m) | QueryError::Execution(m) => Status::failed_precondition(m),
            QueryError::Timeout(m) => Status::deadline_exceeded(m),
            QueryError::Canceled(m) => Status::cancelled(m),
        })?;
        let series = |l: fleet_rules::promql::Labels, pts: Vec<(i64, f64)>| QuerySeries {
            labels: l.to_owned_map(),
            points: pts.into_iter().map(|(t, v)| QueryPoint { time_ms: t, value: v }).collect(),
        };
        let resp = match answer {
            Answer::Vector(v, t) => QueryResponse {
                result_type: "vector".into(),
                series: v.into_iter().map(|(l, x)| series(l, vec![(t, x)])).collect(),
                time_ms: t,
                ..Default::default()
            },
            Answer::Matrix(m) => QueryResponse {
                result_type: "matrix".into(),
                series: m.into_iter().map(|(l, p)| series(l, p)).collect(),
                ..Default::default()
            },
            Answer::Scalar(x, t) => {
                QueryResponse { result_type: "scalar".into(), scalar: x, time_ms: t, ..Default::default() }
            }
            Answer::String(s, t) => {
                QueryResponse { result_type: "string".into(), string: s, time_ms: t, ..Default::default() }
            }
        };
        Ok(self.timed(t0, Response::new(resp)))
    }

    async fn list_rules(
        &self,
        _: Request<fleet_proto::v1::ListRulesRequest>,
    ) -> Result<Response<fleet_proto::v1::ListRulesResponse>, Status> {
        use fleet_proto::v1::{ListRulesResponse, RuleGroupInfo, RuleInfo};
        use fleet_rules::rules::{AlertState, Rule};
        let mut groups = Vec::new();
        for g in self.c.alerting.groups() {
            let g = g.lock().expect("group lock");
            let rules = g
                .rules
                .iter()
                .map(|r| match r {
                    Rule::Alert(a) => {
                        let count = |s: AlertState| a.active.values().filter(|x| x.state == s).count() as u32;
                        let (firing, pending) = (count(AlertState::Firing), count(AlertState::Pending));
                        RuleInfo {
                            r#type: "alerting".into(),
                            name: a.name.clone(),
                            expr: a.expr_text.clone(),
                            state: if firing > 0 {
                                "firing"
                            } else if pending > 0 {
                                "pending"
                            } else {
                                "inactive"
                            }
                            .into(),
                            health: if a.last_error.is_some() { "err" } else { "ok" }.into(),
                            last_error: a.last_error.clone().unwrap_or_default(),
                            pending,
                            firing,
                            for_ms: a.hold.as_millis() as u64,
                        }
                    }
                    Rule::Record(rr) => RuleInfo {
                        r#type: "recording".into(),
                        name: rr.name.clone(),
                        expr: rr.expr_text.clone(),
                        health: if rr.last_error.is_some() { "err" } else { "ok" }.into(),
                        last_error: rr.last_error.clone().unwrap_or_default(),
                        ..Default::default()
                    },
                })
                .collect();
            groups.push(RuleGroupInfo {
                name: g.name.clone(),
                file: g.file.display().to_string(),
                interval_ms: self.c.alerting.group_interval(&g).as_millis() as u64,
                last_evaluation_ms: g.last_eval.map(|(t, _)| t).unwrap_or(0),
                evaluation_us: g.last_eval.map(|(_, d)| d.as_micros() as u64).unwrap_or(0),
                rules,
            });
        }
        Ok(Response::new(ListRulesResponse { groups }))
    }

    async fn list_alerts(
        &self,
        _: Request<fleet_proto::v1::ListAlertsRequest>,
    ) -> Result<Response<fleet_proto::v1::ListAlertsResponse>, Status> {
        let alerts = self
            .c
            .alerting
            .alerts()
            .into_iter()
            .map(|a| fleet_proto::v1::AlertInfo {
                labels: a.labels.to_owned_map(),
                annotations: a.annotations.into_iter().collect(),
                state: a.state.as_str().into(),
                active_at_ms: a.active_at,
                value: a.value,
            })
            .collect();
        Ok(Response::new(fleet_proto::v1::ListAlertsResponse { alerts }))
    }

    async fn who_am_i(
        &self,
        req: Request<fleet_proto::v1::WhoAmIRequest>,
    ) -> Result<Response<fleet_proto::v1::WhoAmIResponse>, Status> {
        let caller = req
            .extensions()
            .get::<crate::guard::Caller>()
            .ok_or_else(|| Status::unauthenticated("no client certificate: fleet requires mutual TLS"))?;
        Ok(Response::new(fleet_proto::v1::WhoAmIResponse {
            identity: caller.identity.uri(),
            role: caller.role.map(|r| r.as_str()).unwrap_or_default().to_string(),
            serial: caller.cert.serial.clone(),
            not_after_ms: caller.cert.not_after_s.saturating_mul(1000),
        }))
    }

    async fn create_token(
        &self,
        req: Request<fleet_proto::v1::CreateTokenRequest>,
    ) -> Result<Response<fleet_proto::v1::CreateTokenResponse>, Status> {
        let by = identity_of(&req)?;
        let addr = req.extensions().get::<crate::guard::Dialed>().map(|d| d.0.clone()).unwrap_or_default();
        let r = req.into_inner();
        let out = self.c.lifecycle.create_token(&by, &r, &addr);
        let (outcome, message) = match &out {
            Ok(t) => ("succeeded", format!("token {}", t.token.as_ref().map(|t| t.id.as_str()).unwrap_or(""))),
            Err(s) => ("failed", s.message().to_string()),
        };
        let _ = self.c.audit.append(entry(&by.uri(), "tokens create", &r.name, "", "", outcome, &message)).await;
        out.map(Response::new)
    }

    async fn list_tokens(
        &self,
        _: Request<fleet_proto::v1::ListTokensRequest>,
    ) -> Result<Response<fleet_proto::v1::ListTokensResponse>, Status> {
        Ok(Response::new(fleet_proto::v1::ListTokensResponse { tokens: self.c.lifecycle.enrollment.list_tokens() }))
    }

    async fn revoke_token(
        &self,
        req: Request<fleet_proto::v1::RevokeTokenRequest>,
    ) -> Result<Response<fleet_proto::v1::JoinToken>, Status> {
        let by = identity_of(&req)?;
        let id = req.into_inner().id;
        let out = self.c.lifecycle.enrollment.revoke_token(&id);
        let outcome = if out.is_ok() { "succeeded" } else { "failed" };
        let shown: String = id.split('.').next().unwrap_or_default().chars().take(64).collect();
        let _ = self
            .c
            .audit
            .append(entry(&by.uri(), "tokens revoke", "", "", "", outcome, &format!("token {shown}")))
            .await;
        out.map(Response::new)
    }

    async fn revoke_certificate(
        &self,
        req: Request<fleet_proto::v1::RevokeCertificateRequest>,
    ) -> Result<Response<fleet_proto::v1::RevokeCertificateResponse>, Status> {
        let by = identity_of(&req)?;
        self.c.lifecycle.revoke(&by, &req.into_inner()).await.map(Response::new)
    }

    async fn list_revocations(
        &self,
        _: Request<fleet_proto::v1::ListRevocationsRequest>,
    ) -> Result<Response<fleet_proto::v1::ListRevocationsResponse>, Status> {
        Ok(Response::new(fleet_proto::v1::ListRevocationsResponse { revocations: self.c.lifecycle.revocations() }))
    }

    async fn remove_host(
        &self,
        req: Request<fleet_proto::v1::RemoveHostRequest>,
    ) -> Result<Response<fleet_proto::v1::RemoveHostResponse>, Status> {
        let by = identity_of(&req)?;
        let r = req.into_inner();
        self.c.lifecycle.remove_host(&by, &r.name, &r.reason).await.map(Response::new)
    }

    async fn reload_rules(
        &self,
        req: Request<fleet_proto::v1::ReloadRulesRequest>,
    ) -> Result<Response<fleet_proto::v1::ReloadRulesResponse>, Status> {
        let who = caller(&req);
        match self.c.alerting.reload() {
            Ok((g, r)) => {
                let _ = self
                    .c
                    .audit
                    .append(entry(&who, "rules reload", "", "", "", "succeeded", &format!("{g} groups, {r} rules")))
                    .await;
                Ok(Response::new(fleet_proto::v1::ReloadRulesResponse { groups: g as u32, rules: r as u32 }))
            }
            Err(e) => {
                let _ = self.c.audit.append(entry(&who, "rules reload", "", "", "", "failed", &e.to_string())).await;
                Err(Status::invalid_argument(format!("{e}; the previous rules stay active")))
            }
        }
    }

    async fn list_jobs(
        &self,
        req: Request<fleet_proto::v1::ListJobsRequest>,
    ) -> Result<Response<fleet_proto::v1::ListJobsResponse>, Status> {
        self.jobs_list(req.into_inner()).map(Response::new)
    }

    async fn run_job(
        &self,
        req: Request<fleet_proto::v1::RunJobRequest>,
    ) -> Result<Response<fleet_proto::v1::RunJobResponse>, Status> {
        let who = caller(&req);
        self.job_run(&who, req.into_inner()).await.map(Response::new)
    }

    async fn get_job_history(
        &self,
        req: Request<fleet_proto::v1::GetJobHistoryRequest>,
    ) -> Result<Response<fleet_proto::v1::GetJobHistoryResponse>, Status> {
        self.job_history(req.into_inner()).await.map(Response::new)
    }

    async fn drain_host(
        &self,
        req: Request<fleet_proto::v1::DrainHostRequest>,
    ) -> Result<Response<fleet_proto::v1::HostSummary>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        self.set_drain(&who, &r.name, Some(r.reason)).await.map(Response::new)
    }

    async fn undrain_host(
        &self,
        req: Request<fleet_proto::v1::UndrainHostRequest>,
    ) -> Result<Response<fleet_proto::v1::HostSummary>, Status> {
        let who = caller(&req);
        self.set_drain(&who, &req.into_inner().name, None).await.map(Response::new)
    }

    type ExecStream = ReceiverStream<Result<fleet_proto::v1::ExecEvent, Status>>;

    async fn exec(&self, req: Request<fleet_proto::v1::ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let who = caller(&req);
        self.exec_start(who, req.into_inner()).map(Response::new)
    }
}

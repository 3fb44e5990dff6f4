//! The ControlService: what fleetctl calls. Every call has passed the operator-only
//! interceptor ([`crate::auth::OperatorOnly`]) before it reaches these handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_common::identity::Identity;
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

use crate::audit::{AuditLog, entry};
use crate::commands::{Hub, Submitted, new_id};
use crate::metrics::Metrics;
use crate::registry::{Host, Registry};

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
    /// Cluster state.
    pub registry: Arc<Registry>,
    /// Self metrics.
    pub metrics: Arc<Metrics>,
    /// Open agent sessions.
    pub sessions: Arc<AtomicUsize>,
    /// When the coordinator started.
    pub started_at_ms: i64,
    /// History retention.
    pub retention: Duration,
    /// Trust domain.
    pub trust_domain: String,
    /// Commands in flight.
    pub hub: Arc<Hub>,
    /// The audit log.
    pub audit: AuditLog,
}

fn caller<T>(req: &Request<T>) -> String {
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

fn offline_error(host: &Host) -> Status {
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
    fn host(&self, name: &str) -> Result<Arc<Host>, Status> {
        self.registry.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no host named \"{name}\"; `fleetctl hosts` lists the hosts this coordinator knows"
            ))
        })
    }

    fn timed<T>(&self, started: Instant, r: T) -> T {
        self.metrics.control_seconds.observe(started.elapsed().as_secs_f64());
        r
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn get_status(&self, _: Request<GetStatusRequest>) -> Result<Response<GetStatusResponse>, Status> {
        let t = Instant::now();
        let (online, offline) = self.registry.counts();
        let resp = GetStatusResponse {
            coordinator_version: fleet_common::VERSION.to_string(),
            started_at_ms: self.started_at_ms,
            hosts_online: online as u32,
            hosts_offline: offline as u32,
            sessions: self.sessions.load(Ordering::Relaxed) as u32,
            reports_stored: self.metrics.reports_stored.get(),
            history_reports: self.registry.history_len() as u64,
            history_retention_seconds: self.retention.as_secs(),
            trust_domain: self.trust_domain.clone(),
        };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_hosts(&self, _: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        let t = Instant::now();
        let hosts = self.registry.all().iter().map(|h| h.summary()).collect();
        Ok(self.timed(t, Response::new(ListHostsResponse { hosts })))
    }

    async fn get_host(&self, req: Request<GetHostRequest>) -> Result<Response<GetHostResponse>, Status> {
        let t = Instant::now();
        let host = self.host(&req.get_ref().name)?;
        let (n, oldest) = host.with(|s| (s.history.len(), s.history.iter().map(|h| h.2).min().unwrap_or(0)));
        let resp = GetHostResponse { host: Some(host.summary()), history_reports: n as u64, history_oldest_ms: oldest };
        Ok(self.timed(t, Response::new(resp)))
    }

    async fn list_reports(&self, req: Request<ListReportsRequest>) -> Result<Response<ListReportsResponse>, Status> {
        let t = Instant::now();
        let r = req.get_ref();
        let host = self.host(&r.host)?;
        let limit = if r.limit == 0 { MAX_LIST_REPORTS } else { (r.limit as usize).min(MAX_LIST_REPORTS) };
        let reports = host.reports(r.since_ms, limit);
        Ok(self.timed(t, Response::new(ListReportsResponse { reports })))
    }

    async fn list_services(&self, req: Request<ListServicesRequest>) -> Result<Response<ListServicesResponse>, Status> {
        let t = Instant::now();
        let hosts =
            if req.get_ref().host.is_empty() { self.registry.all() } else { vec![self.host(&req.get_ref().host)?] };
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
        let Some(queue) = self.registry.command_sender(&host) else { return Err(offline_error(&host)) };
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
        let command = Command {
            id: id.clone(),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: who.clone(),
            timeout_ms: timeout.as_millis() as u64,
            action: Some(CmdAction::Service(ServiceCommand { service: r.service.clone(), action: action as i32 })),
        };
        let rx = match self.hub.submit(&r.host, command.clone())? {
            Submitted::Done(u) => {
                return Ok(Response::new(RunServiceCommandResponse {
                    command_id: id,
                    state: u.state,
                    message: u.message,
                    service: u.service,
                    log_tail: u.log_tail,
                }));
            }
            Submitted::Joined(rx) => rx,
            Submitted::New(rx) => {
                // Audited before it is sent: the log must show every attempt, even one whose
                // outcome never arrives.
                if let Err(e) = self.audit.append(entry(&who, name, &r.host, &r.service, &id, "requested", "")).await {
                    self.hub.abandon(&id);
                    return Err(Status::internal(format!("cannot write the audit log, the command was not sent: {e}")));
                }
                tracing::info!(%who, host = %r.host, service = %r.service, action = name, command_id = %id, "service command");
                if queue.try_send(command).is_err() {
                    self.hub.abandon(&id);
                    let msg = format!(
                        "{} is not accepting commands right now (its queue is full or its session just ended); retry",
                        r.host
                    );
                    let _ = self.audit.append(entry(&who, name, &r.host, &r.service, &id, "failed", &msg)).await;
                    return Err(Status::unavailable(msg));
                }
                rx
            }
        };
        // The agent enforces the timeout itself; the margin lets its answer arrive.
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(5), rx).await;
        let resp = match outcome {
            Ok(Ok(u)) => {
                let state = CommandState::try_from(u.state).unwrap_or(CommandState::Failed);
                let word = match state {
                    CommandState::Succeeded => "succeeded",
                    CommandState::Rejected => "rejected",
                    _ => "failed",
                };
                let _ = self.audit.append(entry(&who, name, &r.host, &r.service, &id, word, &u.message)).await;
                RunServiceCommandResponse {
                    command_id: id,
                    state: u.state,
                    message: u.message,
                    service: u.service,
                    log_tail: u.log_tail,
                }
            }
            _ => {
                self.hub.abandon(&id);
                let msg = format!(
                    "no outcome from {} within {}; the command may still complete: check `fleetctl services --host {}`",
                    r.host,
                    fleet_common::human_duration_ms(timeout),
                    r.host
                );
                let _ = self.audit.append(entry(&who, name, &r.host, &r.service, &id, "timed out", &msg)).await;
                RunServiceCommandResponse {
                    command_id: id,
                    state: CommandState::Failed as i32,
                    message: msg,
                    service: None,
                    log_tail: Vec::new(),
                }
            }
        };
        Ok(Response::new(resp))
    }

    type StreamLogsStream = ReceiverStream<Result<LogLine, Status>>;

    async fn stream_logs(&self, req: Request<StreamLogsRequest>) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = req.into_inner();
        let hosts = if r.host.is_empty() {
            self.registry.all().into_iter().filter(|h| h.online()).collect()
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
            let Some(queue) = self.registry.command_sender(&h) else { continue };
            let id = new_id();
            self.hub.add_logs(&id, &h.name, tx.clone())?;
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
            if queue.try_send(command).is_err() {
                self.hub.remove_logs(&id);
                continue;
            }
            started.push((id, queue));
        }
        // When the caller goes away, tell the agents to stop following. The watcher holds only
        // a weak sender, so a finished (not following) stream still ends on its own.
        let weak = tx.downgrade();
        drop(tx);
        if r.follow {
            let hub = self.hub.clone();
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
                    let _ = queue.try_send(cancel);
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
        let audit = self.audit.clone();
        let entries =
            tokio::task::spawn_blocking(move || audit.last(n)).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListAuditResponse { entries: entries.into_iter().map(Into::into).collect() }))
    }
}

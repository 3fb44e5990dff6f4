//! The AgentService: one task per agent session. It checks the agent's identity against its
//! Hello, registers the host online, hands reports to the group-commit writer, acknowledges
//! them in order once durable, and ends the session (host offline) when the stream closes,
//! when it is replaced, or when the agent is silent for `offline_after`.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet_proto::v1::agent_message::Msg as AgentMsg;
use fleet_proto::v1::agent_service_server::AgentService;
use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::coordinator_message::Msg as CoordMsg;
use fleet_proto::v1::{
    Ack, AgentMessage, ArtifactChunk, CancelCommand, ClusterMembers, Command, CoordinatorMessage, FetchArtifactRequest,
    Hello, IssuedCertificate, RenewRequest, ReportId, Welcome,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::commands::Relay;
use crate::coordinator::Coordinator;
use crate::registry::Host;

/// Reports of one session waiting for the store at once; the agent's window is smaller.
const MAX_PENDING: usize = 512;
/// Messages queued towards one agent.
const OUTBOUND: usize = 1024;
/// How long an agent may take to send Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The AgentService implementation.
#[derive(Clone)]
pub struct AgentApi {
    c: Arc<Coordinator>,
}

impl AgentApi {
    /// The agent API of coordinator `c`.
    pub fn new(c: Arc<Coordinator>) -> Self {
        AgentApi { c }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type AttachStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;
    type FetchArtifactStream = ReceiverStream<Result<ArtifactChunk, Status>>;

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<IssuedCertificate>, Status> {
        let caller = caller_of(&req)?.clone();
        let csr = req.into_inner().csr;
        self.c.enrollment.renew(&caller, &csr).await.map(Response::new)
    }

    async fn fetch_artifact(
        &self,
        req: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let from_agent = caller_of(&req)?.identity.role == fleet_common::identity::Role::Agent;
        let sha = req.into_inner().sha256;
        if !crate::artifacts::valid_sha256(&sha) {
            return Err(Status::not_found(format!("the coordinator holds no artifact {sha}")));
        }
        if self.c.artifacts.stat(&sha).is_none() {
            // Uploaded to another coordinator of the cluster: fetch it from the one that has it
            // (asked for by an agent only, so that two coordinators never ask each other).
            let peers = if from_agent { self.c.cluster.peers() } else { Vec::new() };
            if peers.is_empty() {
                return Err(Status::not_found(format!("the coordinator holds no artifact {sha}")));
            }
            if let Err(why) = self.c.artifacts.fetch_from_peers(&sha, &peers, &self.c.tls).await {
                return Err(Status::not_found(format!(
                    "the coordinator holds no artifact {sha}, nor does any other coordinator of the cluster ({why})"
                )));
            }
        }
        let mut file =
            tokio::fs::File::open(self.c.artifacts.path(&sha)).await.map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.send(Ok(ArtifactChunk { data: buf[..n].to_vec() })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading the artifact: {e}")))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn attach(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::AttachStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        // The guard admitted an agent identity whose certificate is not revoked.
        let id = caller_of(&req)?.identity.clone();
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage { msg: Some(AgentMsg::Hello(h)) }))) => h,
            Ok(Err(s)) => return Err(s),
            Err(_) | Ok(Ok(_)) => {
                self.c.metrics.sessions_rejected_protocol.inc();
                tracing::warn!(%peer, identity = %id, "agent session refused: the first message was not a hello");
                return Err(Status::invalid_argument("the first message of a session must be a hello"));
            }
        };
        if hello.name != id.name {
            self.c.metrics.sessions_rejected_identity.inc();
            let msg = format!("certificate names {} but the agent calls itself {}", id.name, hello.name);
            self.c.authority.refused(crate::guard::DenyReason::Impersonation, &id.uri(), &peer, "Attach", &msg);
            return Err(Status::permission_denied(msg));
        }
        if hello.boot_id == 0 {
            self.c.metrics.sessions_rejected_protocol.inc();
            return Err(Status::invalid_argument("hello.boot_id must not be 0"));
        }
        if let Err(why) = validate_hello(&hello) {
            self.c.metrics.sessions_rejected_protocol.inc();
            tracing::warn!(%peer, identity = %id, "agent session refused: {why}");
            return Err(Status::invalid_argument(why));
        }
        // Labels a join token bound are the host's whatever its config says.
        let mut hello = hello;
        if let Some(bound) = self.c.enrollment.bound_labels(&hello.name) {
            for (k, v) in bound {
                if hello.labels.get(&k).is_some_and(|have| *have != v) {
                    tracing::debug!(host = %hello.name, label = %k, "the join token's label value wins over the agent's");
                }
                hello.labels.insert(k, v);
            }
        }
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let api = self.clone();
        tokio::spawn(async move { api.session(hello, peer, inbound, Outbound(tx)).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|m| *m))))
    }
}

/// Services a Hello may list, at most.
pub const MAX_SERVICES: usize = 256;
/// Jobs one agent may list (as its config allows).
pub const MAX_JOBS: usize = 256;

/// The caller the guard admitted ([`crate::guard`]).
fn caller_of<T>(req: &Request<T>) -> Result<&crate::guard::Caller, Status> {
    req.extensions()
        .get::<crate::guard::Caller>()
        .ok_or_else(|| Status::unauthenticated("no client certificate: fleet requires mutual TLS"))
}

/// What an agent says of itself is shown to operators and becomes labels of series: bounded,
/// well-formed, and free of control characters that would reach operators' terminals.
fn validate_hello(h: &Hello) -> Result<(), String> {
    let fix = "fix the agent's config";
    crate::labels::check(h.labels.iter()).map_err(|e| format!("the agent's labels: {e} ({fix})"))?;
    for (what, s) in [("version", &h.version), ("hostname", &h.hostname), ("os", &h.os)] {
        if s.len() > crate::labels::MAX_VALUE || fleet_common::has_control(s) {
            return Err(format!(
                "hello.{what} is longer than {} bytes or holds control characters",
                crate::labels::MAX_VALUE
            ));
        }
    }
    if h.services.len() > MAX_SERVICES {
        return Err(format!("the agent lists {} services; at most {MAX_SERVICES} are accepted", h.services.len()));
    }
    if let Some(s) = h.services.iter().find(|s| !fleet_common::identity::valid_name(&s.name)) {
        return Err(format!("service name {:?} is not a valid name", s.name));
    }
    if h.jobs.len() > MAX_JOBS {
        return Err(format!("the agent lists {} jobs; at most {MAX_JOBS} are accepted", h.jobs.len()));
    }
    if let Some(j) = h.jobs.iter().find(|j| !fleet_common::identity::valid_name(&j.name)) {
        return Err(format!("job name {:?} is not a valid name", j.name));
    }
    Ok(())
}

/// The queue of messages to one agent. Its entries are boxed: a tokio channel allocates its
/// slots 32 at a time, and 32 unboxed `Result<CoordinatorMessage, Status>` are 5 KiB per
/// session before anything is sent.
struct Outbound(mpsc::Sender<Box<Result<CoordinatorMessage, Status>>>);

impl Outbound {
    async fn send(&self, m: Result<CoordinatorMessage, Status>) -> Result<(), ()> {
        self.0.send(Box::new(m)).await.map_err(drop)
    }

    fn try_send(&self, m: Result<CoordinatorMessage, Status>) -> Result<(), ()> {
        self.0.try_send(Box::new(m)).map_err(drop)
    }
}

/// Counts a session as open for as long as it lives.
struct OpenSession(Arc<Coordinator>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Inbound {
    Message(AgentMessage),
    End(String),
}

impl AgentApi {
    async fn session(self, hello: Hello, peer: String, mut inbound: Streaming<AgentMessage>, tx: Outbound) {
        let now = fleet_common::now_ms();
        let (host, handle, mut commands) = match self.c.registry.attach(&hello, &peer, now, &self.c.shutdown) {
            Ok(attached) => attached,
            Err(c) => {
                self.c.metrics.identity_conflicts.inc();
                let msg = format!(
                    "{name} is already attached from {} (boot id {:x}, since {}): two machines use the certificate of {name}; this session from {peer} (boot id {:x}) is refused. Give each machine its own certificate (fleetctl certs issue agent NAME)",
                    c.peer,
                    c.boot_id,
                    fleet_common::rfc3339(c.since_ms),
                    hello.boot_id,
                    name = hello.name,
                );
                tracing::error!(host = %hello.name, %peer, kept = %c.peer, "identity conflict: {msg}");
                let _ = tx.send(Err(Status::already_exists(msg))).await;
                return;
            }
        };
        // The agent's clock, followed through the session (crate::clock).
        let mut clock = crate::clock::ClockOffset::default();
        if hello.time_ms != 0 {
            let offset = clock.observe(hello.time_ms, now);
            self.note_clock(&host, offset);
        }
        self.c.sessions.fetch_add(1, Ordering::Relaxed);
        let _open = OpenSession(self.c.clone());
        self.c.metrics.sessions_opened.inc();
        self.c.writer.save_host(host.clone()).await;
        let last_stored = host.with(|s| s.record.last_stored()).map(|b| ReportId { boot_id: b.boot_id, seq: b.seq });
        // The cluster's members, told to the agent now and whenever they change.
        let mut members = self.c.cluster.watch_addresses();
        let welcome = Welcome {
            coordinator_version: fleet_common::VERSION.to_string(),
            offline_after_ms: self.c.config.offline_after.as_millis() as u64,
            last_stored,
            coordinator: self.c.cluster.address(),
            coordinators: members.borrow_and_update().clone(),
        };
        if tx.send(Ok(CoordinatorMessage { msg: Some(CoordMsg::Welcome(welcome)) })).await.is_err() {
            self.end(&host, handle.generation, "the agent went away before the welcome", None, &tx).await;
            return;
        }
        if host.with(|s| std::mem::take(&mut s.quiet_reconnect)) {
            tracing::debug!(host = %hello.name, %peer, boot_id = hello.boot_id, "agent online again");
        } else {
            tracing::info!(host = %hello.name, %peer, version = %hello.version, boot_id = hello.boot_id, "agent online");
        }
        // Commands that were waiting for an outcome when the last session ended go again; the
        // agent's journal makes sure none is applied twice.
        for cmd in self.c.hub.pending_for(&host.name) {
            tracing::info!(host = %host.name, command_id = %cmd.id, "sending a pending command again");
            let _ = tx.try_send(Ok(CoordinatorMessage { msg: Some(CoordMsg::Command(cmd)) }));
        }

        let mut pending = FuturesOrdered::new();
        let mut silence = pin!(tokio::time::sleep(self.c.config.offline_after));
        let (reason, status) = loop {
            tokio::select! {
                biased;
                _ = handle.cancel.cancelled() => {
                    let ended = handle.ended_by.lock().expect("session end lock").take();
                    break if let Some((reason, status)) = ended {
                        (reason, Some(status))
                    } else if self.c.shutdown.is_cancelled() {
                        ("the coordinator shut down".to_string(), Some(Status::unavailable("the coordinator is shutting down; reconnect")))
                    } else {
                        ("replaced by a newer session of the same agent".to_string(), Some(Status::aborted("replaced by a newer session of the same agent")))
                    };
                }
                Some((id, outcome)) = pending.next(), if !pending.is_empty() => {
                    match outcome {
                        Ok(Ok(_)) => {
                            let ack = CoordinatorMessage { msg: Some(CoordMsg::Ack(Ack { id: Some(id) })) };
                            if tx.try_send(Ok(ack)).is_err() {
                                break ("the agent is not reading its session".to_string(), None);
                            }
                        }
                        // RESOURCE_EXHAUSTED tells the agent to keep its reports and come back in
                        // a little while, not at once (a full disk fails every commit).
                        Ok(Err(e)) => break (format!("the store failed: {e}"), Some(Status::resource_exhausted("the coordinator cannot store reports right now (is its disk full?); the agent keeps them and retries"))),
                        Err(_) => break ("the store writer stopped".to_string(), Some(Status::unavailable("the coordinator is shutting down; reconnect"))),
                    }
                }
                Ok(()) = members.changed() => {
                    let m = ClusterMembers { coordinator: self.c.cluster.address(), coordinators: members.borrow_and_update().clone() };
                    if tx.try_send(Ok(CoordinatorMessage { msg: Some(CoordMsg::Members(m)) })).is_err() {
                        break ("the agent is not reading its session".to_string(), None);
                    }
                }
                Some(cmd) = commands.recv() => {
                    if tx.try_send(Ok(CoordinatorMessage { msg: Some(CoordMsg::Command(*cmd)) })).is_err() {
                        break ("the agent is not reading its session".to_string(), None);
                    }
                }
                _ = &mut silence => {
                    let msg = format!("no message from the agent for {}", humanize(self.c.config.offline_after));
                    break (msg.clone(), Some(Status::deadline_exceeded(msg)));
                }
                m = next_inbound(&mut inbound), if pending.len() < MAX_PENDING => {
                    silence.as_mut().reset(tokio::time::Instant::now() + self.c.config.offline_after);
                    handle.last_heard_ms.store(fleet_common::now_ms(), Ordering::Relaxed);
                    let msg = match m {
                        Inbound::End(reason) => break (reason, None),
                        Inbound::Message(m) => m,
                    };
                    match msg.msg {
                        Some(AgentMsg::Report(mut report)) => {
                            if report.sent_at_ms != 0 {
                                let offset = clock.observe(report.sent_at_ms, fleet_common::now_ms());
                                self.note_clock(&host, offset);
                                report.timestamp_ms = crate::clock::corrected(report.timestamp_ms, offset);
                            }
                            // Job names become label values: an agent's config allows only
                            // valid names, and at most MAX_JOBS.
                            report.jobs.retain(|j| fleet_common::identity::valid_name(&j.name));
                            report.jobs.truncate(MAX_JOBS);
                            let Some(id) = report.id.filter(|i| i.boot_id != 0 && i.seq != 0) else {
                                break ("the agent sent a report without an id".to_string(), Some(Status::invalid_argument("report.id must carry a boot id and a sequence number")));
                            };
                            match self.c.writer.store_report(host.clone(), Arc::new(report)).await {
                                Ok(rx) => pending.push_back(async move { (id, rx.await) }),
                                Err(e) => break (e.to_string(), Some(Status::unavailable("the coordinator is shutting down; reconnect"))),
                            }
                        }
                        Some(AgentMsg::CommandUpdate(u)) => {
                            tracing::debug!(host = %host.name, command_id = %u.command_id, state = u.state, message = %u.message, "command update");
                            if let Some(svc) = &u.service {
                                // The outcome carries the service's new state: show it now rather
                                // than at the agent's next report.
                                host.update_service(svc.clone());
                            }
                            self.c.hub.update(u);
                        }
                        Some(AgentMsg::LogBatch(batch)) => {
                            let relay = self.c.hub.relay(&batch.command_id, &host.name, batch.lines);
                            if relay == Relay::Cancel {
                                // The operator went away or fell behind: stop the agent's stream.
                                let cancel = Command {
                                    id: crate::commands::new_id(),
                                    issued_at_ms: fleet_common::now_ms(),
                                    action: Some(CmdAction::Cancel(CancelCommand { command_id: batch.command_id })),
                                    ..Default::default()
                                };
                                let _ = tx.try_send(Ok(CoordinatorMessage { msg: Some(CoordMsg::Command(cancel)) }));
                            }
                        }
                        Some(AgentMsg::ExecOutput(out)) => self.c.hub.relay_exec(&host.name, out),
                        Some(AgentMsg::Hello(_)) => {
                            break ("the agent sent a second hello".to_string(), Some(Status::invalid_argument("hello may only be sent once per session")));
                        }
                        None => {}
                    }
                }
            }
        };
        self.end(&host, handle.generation, &reason, status, &tx).await;
    }

    /// Keeps the host's clock offset for metrics and fleetctl, and says when it crosses
    /// [`crate::clock::WARN_MS`] (either way).
    fn note_clock(&self, host: &Host, offset_ms: i64) {
        let was = host.with(|s| s.clock_offset_ms.replace(offset_ms));
        let skewed = |o: i64| o.abs() > crate::clock::WARN_MS;
        let seconds = offset_ms as f64 / 1000.0;
        match was {
            Some(w) if skewed(w) == skewed(offset_ms) => {}
            _ if skewed(offset_ms) => tracing::warn!(
                host = %host.name,
                offset_seconds = seconds,
                "the agent's clock is {:.0}s {} the coordinator's: its samples are stored at corrected times; fix its clock (NTP)",
                seconds.abs(),
                if offset_ms > 0 { "ahead of" } else { "behind" }
            ),
            Some(_) => {
                tracing::info!(host = %host.name, offset_seconds = seconds, "the agent's clock agrees with the coordinator's again")
            }
            None => {}
        }
    }

    async fn end(&self, host: &Arc<Host>, generation: u64, reason: &str, status: Option<Status>, tx: &Outbound) {
        // Sessions ended because the store cannot write (a full disk) come back every few
        // seconds: the store's failure is logged (once a minute), their comings and goings not.
        let store_failing = status.as_ref().is_some_and(|s| s.code() == tonic::Code::ResourceExhausted);
        if let Some(s) = status {
            let _ = tx.try_send(Err(s));
        }
        let now = fleet_common::now_ms();
        if self.c.registry.detach(host, generation, reason, now) {
            self.c.hub.host_gone(&host.name);
            // Rules see the host down at once, not at the next up sample (once the history is
            // loaded: until then nothing may come before the past being read back).
            if self.c.tsdb.loaded() {
                self.c.tsdb.append_sample(crate::tsdb::UP, &mut [("host", &host.name)], now, 0.0);
            }
            if store_failing {
                host.with(|s| s.quiet_reconnect = true);
                tracing::debug!(host = %host.name, %reason, "agent offline");
            } else {
                tracing::info!(host = %host.name, %reason, "agent offline");
            }
            self.c.writer.save_host(host.clone()).await;
        } else {
            tracing::debug!(host = %host.name, %reason, "superseded session ended");
        }
    }
}

async fn next_inbound(inbound: &mut Streaming<AgentMessage>) -> Inbound {
    match inbound.message().await {
        Ok(Some(m)) => Inbound::Message(m),
        Ok(None) => Inbound::End("the agent closed the session".to_string()),
        Err(s) => Inbound::End(format!(
            "the connection was lost ({})",
            if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() }
        )),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

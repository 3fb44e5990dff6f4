//! Commands from the coordinator: service start/stop/restart, applied at most once per id
//! (journalled durably before they are acted on), and log requests streamed back over the
//! session. Each command runs in its own task so the session keeps reporting meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::agent_message::Msg as AgentMsg;
use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::{
    AgentMessage, Command, CommandState, CommandUpdate, JobRun, LogBatch, LogLine, LogsCommand, ServiceAction,
};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::deploy::{Deployer, Probation};
use crate::jobs::{Jobs, run_to_proto};
use crate::store::{Outbox, Recorded};
use crate::supervisor::logs::LogFile;
use crate::supervisor::{Action, Supervisor};

/// Default time a service command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time a service command may take.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Commands handled at once; more are rejected as busy.
const MAX_CONCURRENT: usize = 64;
/// Following log streams at once.
const MAX_FOLLOWERS: usize = 32;
/// Lines per LogBatch message.
const BATCH: usize = 256;
/// Exec'd commands running at once; more are rejected as busy.
const MAX_EXECS: usize = 16;
/// Default time an exec'd command may run.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest time an exec'd command may run.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(86400);

type Sender = mpsc::Sender<AgentMessage>;

/// Runs commands against the supervisor.
#[derive(Debug)]
pub struct Dispatcher {
    supervisor: Arc<Supervisor>,
    deployer: Arc<Deployer>,
    jobs: Arc<Jobs>,
    store: Arc<Outbox>,
    busy: Arc<Semaphore>,
    /// Service commands being applied now, with the channel their final update goes out on
    /// (a repeated delivery after a reconnect waits for the same outcome).
    in_progress: Mutex<HashMap<String, watch::Receiver<Option<CommandUpdate>>>>,
    /// Log streams, by command id.
    followers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Exec'd commands running, by command id.
    execs: Mutex<HashMap<String, tokio_util::sync::CancellationToken>>,
    /// What exec needs: the agent's name and whether its config allows exec.
    exec: ExecPolicy,
}

/// Whether and as whom `fleetctl exec` runs commands here.
#[derive(Debug, Clone)]
pub struct ExecPolicy {
    /// The agent's name (FLEET_AGENT, and messages).
    pub agent: String,
    /// `allow_exec` from the config.
    pub allowed: bool,
}

fn requested_by(cmd: &Command) -> String {
    if cmd.requested_by.is_empty() { "the coordinator".to_string() } else { cmd.requested_by.clone() }
}

fn update(id: &str, state: CommandState, message: impl Into<String>) -> CommandUpdate {
    CommandUpdate {
        command_id: id.to_string(),
        state: state as i32,
        message: message.into(),
        service: None,
        log_tail: Vec::new(),
        releases: Vec::new(),
        job_runs: Vec::new(),
        exit_code: None,
        signal: 0,
        timed_out: false,
    }
}

/// What a journalled command acts on.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Service(&'a str),
    Job(&'a str),
    Exec,
}

/// The outcome of a journalled command: `Ok(message)` or `Err((reason, last log lines))`, and
/// the job attempt it started or waited for.
struct Applied {
    result: Result<String, (String, Vec<String>)>,
    run: Option<JobRun>,
    exec: Option<crate::exec::Exited>,
}

impl From<Result<String, (String, Vec<String>)>> for Applied {
    fn from(result: Result<String, (String, Vec<String>)>) -> Self {
        Applied { result, run: None, exec: None }
    }
}

async fn send(tx: &Sender, u: CommandUpdate) {
    let _ = tx.send(AgentMessage { msg: Some(AgentMsg::CommandUpdate(u)) }).await;
}

impl Dispatcher {
    /// A dispatcher over `supervisor`, journalling in `store`.
    pub fn new(
        supervisor: Arc<Supervisor>,
        deployer: Arc<Deployer>,
        jobs: Arc<Jobs>,
        store: Arc<Outbox>,
        exec: ExecPolicy,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            supervisor,
            deployer,
            jobs,
            store,
            busy: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            in_progress: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            exec,
        })
    }

    /// Handles one command; updates go out on `tx`.
    pub fn handle(self: &Arc<Self>, cmd: Command, tx: Sender) {
        let Ok(permit) = self.busy.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                send(&tx, update(&cmd.id, CommandState::Rejected, "the agent is busy with other commands; retry")).await
            });
            return;
        };
        let this = self.clone();
        // A span of the trace that sent the command (`trace_context`), when traces are exported.
        let span = tracing::info_span!(
            target: fleet_common::telemetry::TARGET,
            "agent.command",
            otel.kind = "consumer",
            command = %cmd.id,
            action = action_name(&cmd),
        );
        fleet_common::telemetry::set_parent_from_map(&span, &cmd.trace_context);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _permit = permit;
                match cmd.action.clone() {
                    Some(CmdAction::Service(sc)) => {
                        let action = match sc.action() {
                            ServiceAction::Start => Action::Start,
                            ServiceAction::Stop => Action::Stop,
                            ServiceAction::Restart => Action::Restart,
                            ServiceAction::Unspecified => {
                                send(&tx, update(&cmd.id, CommandState::Rejected, "no action given")).await;
                                return;
                            }
                        };
                        let timeout = if cmd.timeout_ms == 0 {
                            DEFAULT_TIMEOUT
                        } else {
                            Duration::from_millis(cmd.timeout_ms).min(MAX_TIMEOUT)
                        };
                        let by = requested_by(&cmd);
                        let (sup, svc) = (this.supervisor.clone(), sc.service.clone());
                        this.journalled(&cmd, Target::Service(&sc.service), false, tx, async move {
                            sup.request(&svc, action, &by, timeout).await.into()
                        })
                        .await
                    }
                    Some(CmdAction::Deploy(d)) => {
                        let p = Probation::from_ms(d.min_healthy_time_ms, d.healthy_deadline_ms);
                        let dep = this.deployer.clone();
                        let service = d.service.clone();
                        this.journalled(&cmd, Target::Service(&service), true, tx, async move {
                            dep.deploy(&d.service, &d.version, &d.sha256, d.size_bytes, p).await.into()
                        })
                        .await
                    }
                    Some(CmdAction::Rollback(r)) => {
                        let p = Probation::from_ms(r.min_healthy_time_ms, r.healthy_deadline_ms);
                        let dep = this.deployer.clone();
                        let service = r.service.clone();
                        this.journalled(&cmd, Target::Service(&service), true, tx, async move {
                            dep.rollback(&r.service, &r.to_version, p).await.into()
                        })
                        .await
                    }
                    Some(CmdAction::Releases(r)) => {
                        let u = match this.deployer.releases(&r.service) {
                            Ok(releases) => CommandUpdate { releases, ..update(&cmd.id, CommandState::Succeeded, "") },
                            Err((reason, _)) => update(&cmd.id, CommandState::Rejected, reason),
                        };
                        send(&tx, u).await;
                    }
                    Some(CmdAction::RunJob(j)) => {
                        let jobs = this.jobs.clone();
                        let by = requested_by(&cmd);
                        let name = j.job.clone();
                        this.journalled(&cmd, Target::Job(&name), false, tx, async move {
                            match jobs.run_now(&j.job, &by, j.wait).await {
                                Ok(r) => {
                                    let result = match r.result.as_str() {
                                        "running" => Ok(format!("run {} started (pid {})", r.run, r.pid)),
                                        "succeeded" => Ok(format!("run {} succeeded: {}", r.run, r.message)),
                                        other => Err((
                                            format!("run {} {}: {}", r.run, other.replace('_', " "), r.message),
                                            Vec::new(),
                                        )),
                                    };
                                    Applied { result, run: Some(run_to_proto(&j.job, &r)), exec: None }
                                }
                                Err(e) => Applied::from(Err((e, Vec::new()))),
                            }
                        })
                        .await
                    }
                    Some(CmdAction::JobHistory(h)) => {
                        let limit = if h.limit == 0 { usize::MAX } else { h.limit as usize };
                        let u = match this.jobs.history(&h.job, limit) {
                            Some(runs) => CommandUpdate {
                                job_runs: runs.iter().map(|r| run_to_proto(&h.job, r)).collect(),
                                ..update(&cmd.id, CommandState::Succeeded, "")
                            },
                            None => update(&cmd.id, CommandState::Rejected, this.no_job(&h.job)),
                        };
                        send(&tx, u).await;
                    }
                    Some(CmdAction::Exec(e)) => this.exec_command(&cmd, e.argv, tx).await,
                    Some(CmdAction::Logs(l)) => this.logs_command(cmd.id, l, tx).await,
                    Some(CmdAction::Cancel(c)) => {
                        let handle = this.followers.lock().expect("followers lock").remove(&c.command_id);
                        if let Some(h) = handle {
                            h.abort();
                            send(&tx, update(&c.command_id, CommandState::Succeeded, "cancelled")).await;
                        }
                        // An exec'd command answers for itself once its process group is stopped.
                        if let Some(stop) = this.execs.lock().expect("execs lock").get(&c.command_id) {
                            stop.cancel();
                        }
                        send(&tx, update(&cmd.id, CommandState::Succeeded, "")).await;
                    }
                    None => {
                        send(
                            &tx,
                            update(
                                &cmd.id,
                                CommandState::Rejected,
                                format!("fleet-agent {} does not know this command", fleet_common::VERSION),
                            ),
                        )
                        .await
                    }
                }
            },
            span,
        ));
    }

    /// The state of `service` with its deployed version.
    fn status(&self, service: &str) -> Option<fleet_proto::v1::ServiceStatus> {
        let mut s = self.supervisor.get(service)?.report();
        if let Some(v) = self.deployer.versions().remove(service) {
            s.version = v;
        }
        Some(s)
    }

    /// Applies a command at most once: a repeated delivery gets the recorded outcome, the id is
    /// journalled durably before `apply` runs, and the outcome is journalled before it is sent.
    async fn journalled<F>(&self, cmd: &Command, target: Target<'_>, with_releases: bool, tx: Sender, apply: F)
    where
        F: std::future::Future<Output = Applied>,
    {
        let (service, job) = match target {
            Target::Service(s) => (s, None),
            Target::Job(j) => ("", Some(j)),
            Target::Exec => ("", None),
        };
        let is_exec = matches!(target, Target::Exec);
        let id = cmd.id.clone();
        // A delivery of a command that is still being applied waits for the same outcome.
        let running = self.in_progress.lock().expect("in_progress lock").get(&id).cloned();
        if let Some(mut rx) = running {
            let _ = rx.wait_for(Option::is_some).await;
            let u = rx.borrow().clone();
            if let Some(u) = u {
                send(&tx, u).await;
            }
            return;
        }
        match self.store.command(&id) {
            Ok(Some(rec)) => {
                let u = if rec.finished {
                    let state = CommandState::try_from(rec.state).unwrap_or(CommandState::Failed);
                    let mut u = update(&id, state, rec.message.clone());
                    u.service = self.status(service);
                    if is_exec {
                        u.exit_code = rec.exit_code;
                    }
                    if let Some(job) = job {
                        u.job_runs = vec![JobRun {
                            job: job.to_string(),
                            exit_code: rec.exit_code,
                            message: rec.message,
                            ..Default::default()
                        }];
                    }
                    u
                } else {
                    update(
                        &id,
                        CommandState::Failed,
                        "the agent restarted while applying this command; it is not applied again: check the service and send a new command",
                    )
                };
                send(&tx, u).await;
                return;
            }
            Ok(None) => {}
            Err(e) => {
                send(&tx, update(&id, CommandState::Failed, format!("cannot read the command journal: {e}"))).await;
                return;
            }
        }
        if let Some(job) = job {
            if self.jobs.get(job).is_none() {
                send(&tx, update(&id, CommandState::Rejected, self.no_job(job))).await;
                return;
            }
        } else if !is_exec && self.supervisor.get(service).is_none() {
            let names: Vec<_> = self.supervisor.all().iter().map(|h| h.config.name.as_str()).collect();
            let msg = format!(
                "no service named \"{service}\" on this host (it has: {})",
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            );
            send(&tx, update(&id, CommandState::Rejected, msg)).await;
            return;
        }
        // Journal first: from here on, this id is never applied again.
        let now = fleet_common::now_ms();
        if let Err(e) = self
            .store
            .record_command(
                &id,
                &Recorded { at_ms: now, finished: false, state: 0, message: String::new(), exit_code: None },
            )
            .await
        {
            send(&tx, update(&id, CommandState::Failed, format!("cannot journal the command, not applying it: {e}")))
                .await;
            return;
        }
        let (done_tx, done_rx) = watch::channel(None);
        self.in_progress.lock().expect("in_progress lock").insert(id.clone(), done_rx);
        send(&tx, update(&id, CommandState::Running, "")).await;
        tracing::info!(command_id = %id, service, job = job.unwrap_or_default(), by = %requested_by(cmd), "applying a command");
        let applied = apply.await;
        let mut u = match applied.result {
            Ok(msg) => update(&id, CommandState::Succeeded, msg),
            Err((reason, tail)) => CommandUpdate { log_tail: tail, ..update(&id, CommandState::Failed, reason) },
        };
        let mut exit_code = applied.run.as_ref().and_then(|r| r.exit_code);
        u.job_runs.extend(applied.run);
        if let Some(x) = applied.exec {
            exit_code = x.exit_code;
            u.exit_code = x.exit_code;
            u.signal = x.signal;
            u.timed_out = x.timed_out;
        }
        if job.is_none() && !is_exec {
            u.service = self.status(service);
        }
        if with_releases {
            u.releases = self.deployer.releases(service).unwrap_or_default();
        }
        let rec = Recorded { at_ms: now, finished: true, state: u.state, message: u.message.clone(), exit_code };
        if let Err(e) = self.store.record_command(&id, &rec).await {
            tracing::error!(command_id = %id, error = %e, "cannot journal a command's outcome");
        }
        let _ = done_tx.send(Some(u.clone()));
        self.in_progress.lock().expect("in_progress lock").remove(&id);
        send(&tx, u).await;
    }

    /// Runs an ExecCommand (when the config allows it), at most once per id.
    async fn exec_command(&self, cmd: &Command, argv: Vec<String>, tx: Sender) {
        if !self.exec.allowed {
            let msg = format!(
                "exec is off on {}: set allow_exec = true in its agent.toml and restart the agent (docs/install.md, \"Jobs and runbooks\")",
                self.exec.agent
            );
            send(&tx, update(&cmd.id, CommandState::Rejected, msg)).await;
            return;
        }
        let stop = tokio_util::sync::CancellationToken::new();
        // A repeated delivery of a running command waits for its outcome (journalled) and
        // leaves the running one's entry alone.
        let (admitted, ours) = {
            let mut execs = self.execs.lock().expect("execs lock");
            if execs.contains_key(&cmd.id) {
                (true, false)
            } else if execs.len() < MAX_EXECS {
                execs.insert(cmd.id.clone(), stop.clone());
                (true, true)
            } else {
                (false, false)
            }
        };
        if !admitted {
            let msg = format!("{MAX_EXECS} exec'd commands run here already; retry once one ended");
            send(&tx, update(&cmd.id, CommandState::Rejected, msg)).await;
            return;
        }
        let timeout = match cmd.timeout_ms {
            0 => DEFAULT_EXEC_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_EXEC_TIMEOUT),
        };
        let (id, agent, out) = (cmd.id.clone(), self.exec.agent.clone(), tx.clone());
        self.journalled(cmd, Target::Exec, false, tx, async move {
            match crate::exec::run(&id, &agent, &argv, timeout, stop, out).await {
                Ok(x) => {
                    let result = if x.exit_code == Some(0) {
                        Ok(x.message.clone())
                    } else {
                        Err((x.message.clone(), Vec::new()))
                    };
                    Applied { result, run: None, exec: Some(x) }
                }
                Err(e) => Applied::from(Err((format!("could not start: {e}"), Vec::new()))),
            }
        })
        .await;
        if ours {
            self.execs.lock().expect("execs lock").remove(&cmd.id);
        }
    }

    /// "no job named ... (it has: ...)".
    fn no_job(&self, job: &str) -> String {
        let names = self.jobs.names();
        format!(
            "no job named \"{job}\" on this host (it has: {})",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    }

    async fn logs_command(self: &Arc<Self>, id: String, req: LogsCommand, tx: Sender) {
        let logs: Vec<(String, Arc<LogFile>)> = if req.service.is_empty() {
            self.supervisor.all().iter().map(|h| (h.config.name.clone(), h.log.clone())).collect()
        } else if let Some(j) = self.jobs.get(&req.service) {
            vec![(j.config.name.clone(), j.log.clone())]
        } else {
            match self.supervisor.get(&req.service) {
                Some(h) => vec![(h.config.name.clone(), h.log.clone())],
                None => {
                    send(
                        &tx,
                        update(
                            &id,
                            CommandState::Rejected,
                            format!("no service or job named \"{}\" on this host", req.service),
                        ),
                    )
                    .await;
                    return;
                }
            }
        };
        let n = req.lines as usize;
        if !req.follow {
            for (_, log) in logs {
                for chunk in log.tail(n).chunks(BATCH) {
                    if !send_lines(&tx, &id, chunk.to_vec()).await {
                        return;
                    }
                }
            }
            send(&tx, update(&id, CommandState::Succeeded, "")).await;
            return;
        }
        if self.followers.lock().expect("followers lock").len() >= MAX_FOLLOWERS {
            send(
                &tx,
                update(
                    &id,
                    CommandState::Rejected,
                    format!("this agent already streams {MAX_FOLLOWERS} logs; stop one first"),
                ),
            )
            .await;
            return;
        }
        let mut tails = Vec::new();
        let mut streams = Vec::new();
        for (name, log) in &logs {
            let (tail, rx) = log.follow(n);
            tails.extend(tail);
            let service = name.clone();
            streams.push(BroadcastStream::new(rx).map(move |r| match r {
                Ok(line) => line,
                Err(BroadcastStreamRecvError::Lagged(k)) => LogLine {
                    service: service.clone(),
                    timestamp_ms: fleet_common::now_ms(),
                    stream: "fleet".into(),
                    line: format!("{k} lines skipped: the reader fell behind"),
                    host: String::new(),
                },
            }));
        }
        // Interleave the backlog of several services by time.
        tails.sort_by_key(|l| l.timestamp_ms);
        let this = self.clone();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            for chunk in tails.chunks(BATCH) {
                if !send_lines(&tx, &task_id, chunk.to_vec()).await {
                    return;
                }
            }
            let mut merged = futures_util::stream::select_all(streams);
            // Until the reader stops or the session the request came on ends (the agent keeps
            // a session to each coordinator; the others' followers go on).
            loop {
                let first = tokio::select! {
                    () = tx.closed() => break,
                    l = merged.next() => match l {
                        Some(l) => l,
                        None => break,
                    },
                };
                let mut lines = vec![first];
                // Take whatever else is ready, up to a batch, without waiting.
                while lines.len() < BATCH {
                    match futures_util::FutureExt::now_or_never(merged.next()) {
                        Some(Some(l)) => lines.push(l),
                        _ => break,
                    }
                }
                if !send_lines(&tx, &task_id, lines).await {
                    break;
                }
            }
            this.followers.lock().expect("followers lock").remove(&task_id);
        });
        self.followers.lock().expect("followers lock").insert(id, task.abort_handle());
    }
}

async fn send_lines(tx: &Sender, id: &str, lines: Vec<LogLine>) -> bool {
    tx.send(AgentMessage { msg: Some(AgentMsg::LogBatch(LogBatch { command_id: id.to_string(), lines })) })
        .await
        .is_ok()
}

/// What a command asks for, for its span.
fn action_name(cmd: &Command) -> &'static str {
    match &cmd.action {
        Some(CmdAction::Service(_)) => "service",
        Some(CmdAction::Logs(_)) => "logs",
        Some(CmdAction::Cancel(_)) => "cancel",
        Some(CmdAction::Deploy(_)) => "deploy",
        Some(CmdAction::Rollback(_)) => "rollback",
        Some(CmdAction::Releases(_)) => "releases",
        Some(CmdAction::RunJob(_)) => "run_job",
        Some(CmdAction::JobHistory(_)) => "job_history",
        Some(CmdAction::Exec(_)) => "exec",
        None => "none",
    }
}

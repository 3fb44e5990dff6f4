//! Commands in flight between operators and agents. Every command with an outcome (service
//! commands, deploys, rollbacks) goes through one path, [`Hub::send_and_wait`]: registered
//! here, queued to the host's session, waited for until a deadline, and forgotten when nobody
//! waits any more. Commands still waiting are sent again when their agent reconnects, which
//! the agent's journal makes safe; recently finished outcomes are kept so a retried request
//! with the same id gets the same answer. Log streams map each agent's log command id to the
//! operator's stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::{Command, CommandState, CommandUpdate, ExecEvent, ExecOutput, LogLine, exec_event};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::registry::Host;

/// Service commands waiting for an outcome, at most.
pub const MAX_PENDING: usize = 10_000;
/// Finished outcomes remembered for retries.
pub const MAX_RECENT: usize = 1024;
/// Log streams open at once, at most.
pub const MAX_LOG_STREAMS: usize = 1024;

/// Where relayed log lines go.
pub type LogSender = mpsc::Sender<Result<LogLine, Status>>;
/// Where relayed exec output goes.
pub type ExecSender = mpsc::Sender<Result<ExecEvent, Status>>;
/// Exec streams open at once, at most.
pub const MAX_EXEC_STREAMS: usize = 1024;

#[derive(Debug)]
struct ExecStream {
    host: String,
    tx: ExecSender,
    /// Bytes of output dropped because the operator's stream was full.
    dropped: u64,
}

#[derive(Debug)]
struct Pending {
    host: String,
    command: Command,
    waiters: Vec<oneshot::Sender<CommandUpdate>>,
    /// Whether the agent said it received the command (a RUNNING update): without it, a
    /// caller that gives up knows the command most likely never arrived.
    accepted: bool,
}

#[derive(Debug)]
struct LogStream {
    host: String,
    tx: LogSender,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    recent: VecDeque<(String, CommandUpdate)>,
    logs: HashMap<String, LogStream>,
    execs: HashMap<String, ExecStream>,
}

/// The registry of commands in flight.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
    /// With several coordinators, only the leader sends commands to agents (each agent keeps a
    /// session to every coordinator); `None` alone.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What submitting a command did.
#[derive(Debug)]
enum Submitted {
    /// A new command: send it, then wait on the receiver.
    New(oneshot::Receiver<CommandUpdate>),
    /// The same id is already in flight: wait on the receiver, send nothing.
    Joined(oneshot::Receiver<CommandUpdate>),
    /// The same id already finished: here is its outcome.
    Done(CommandUpdate),
}

/// The outcome of a command sent with [`Hub::send_and_wait`].
#[derive(Debug)]
pub struct Outcome {
    /// The agent's final update.
    pub update: CommandUpdate,
    /// Whether it is the recorded outcome of an earlier request with the same id, for which
    /// nothing was sent (and whose caller has already recorded it).
    pub earlier: bool,
}

/// Why [`Hub::send_and_wait`] has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The host has no session.
    #[error("{host} is offline")]
    Offline {
        /// The host.
        host: String,
    },
    /// Too many commands wait for an outcome already.
    #[error("{MAX_PENDING} commands are already waiting for an outcome; retry later")]
    Busy,
    /// The step before sending (the caller's audit entry) failed; nothing was sent.
    #[error("{0}")]
    NotSent(String),
    /// The session's queue is full or the session just ended; nothing was sent.
    #[error("{host} is not accepting commands right now (its queue is full or its session just ended); retry")]
    NotAccepting {
        /// The host.
        host: String,
    },
    /// No outcome before the deadline; the command is forgotten and not sent again.
    #[error("no outcome from {host} within {}", fleet_common::human_duration(*within))]
    TimedOut {
        /// The host.
        host: String,
        /// The deadline it was given.
        within: Duration,
        /// Whether the agent acknowledged the command (so it is most likely still being
        /// applied there) before the deadline.
        accepted: bool,
    },
    /// This coordinator does not lead the cluster (any more): nothing was sent.
    #[error("{0}")]
    NotLeader(String),
}

/// Forgets the command when its caller stops waiting, whether it returns or is dropped
/// (a cancelled rollout, a client gone away).
struct Waiting<'a> {
    hub: &'a Hub,
    id: String,
    rx: Option<oneshot::Receiver<CommandUpdate>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // The receiver goes first, so that abandon sees this waiter gone.
        drop(self.rx.take());
        self.hub.abandon(&self.id);
    }
}

/// What the session should do after relaying log lines.
#[derive(Debug, PartialEq, Eq)]
pub enum Relay {
    /// Keep going.
    Ok,
    /// The operator went away or fell behind: tell the agent to stop this stream.
    Cancel,
}

fn is_final(state: i32) -> bool {
    matches!(
        CommandState::try_from(state),
        Ok(CommandState::Succeeded) | Ok(CommandState::Failed) | Ok(CommandState::Rejected)
    )
}

impl Hub {
    /// A hub that sends only while `cluster` says this coordinator leads.
    pub fn for_cluster(cluster: Arc<crate::cluster::Cluster>) -> Hub {
        Hub { cluster: Some(cluster), ..Default::default() }
    }

    fn check_leader(&self) -> Result<(), SendError> {
        match self.cluster.as_ref().and_then(|c| c.refusal("send commands to agents")) {
            Some(why) => Err(SendError::NotLeader(why)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub lock")
    }

    /// Sends `command` to `host` and waits up to `deadline` for its outcome. A command with
    /// the id of one in flight joins it (nothing is sent again); one with the id of a recent
    /// command gets that outcome. `before_send` runs only when the command is new, before it
    /// is queued (the caller's audit entry: every attempt is recorded, even one whose outcome
    /// never comes); its error stops the send.
    #[tracing::instrument(target = "fleet_otel", name = "command.deliver", skip_all, fields(host = %host.name, command = %command.id, otel.kind = "producer"))]
    pub async fn send_and_wait(
        &self,
        host: &Host,
        mut command: Command,
        deadline: Duration,
        before_send: impl Future<Output = Result<(), String>> + Send,
    ) -> Result<Outcome, SendError> {
        // The agent's spans for the command join this one (kept in the copy re-sent after a
        // reconnect too).
        fleet_common::telemetry::inject_map(&mut command.trace_context);
        self.check_leader()?;
        let Some(queue) = host.command_sender() else { return Err(SendError::Offline { host: host.name.clone() }) };
        let id = command.id.clone();
        let mut waiting = match self.submit(&host.name, command.clone())? {
            Submitted::Done(update) => return Ok(Outcome { update, earlier: true }),
            Submitted::Joined(rx) => Waiting { hub: self, id, rx: Some(rx) },
            Submitted::New(rx) => {
                let waiting = Waiting { hub: self, id, rx: Some(rx) };
                before_send.await.map_err(SendError::NotSent)?;
                // Leadership may have been lost while the audit entry was written.
                self.check_leader()?;
                if queue.try_send(Box::new(command)).is_err() {
                    return Err(SendError::NotAccepting { host: host.name.clone() });
                }
                waiting
            }
        };
        let rx = waiting.rx.as_mut().expect("the receiver");
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(update)) => Ok(Outcome { update, earlier: false }),
            _ => Err(SendError::TimedOut {
                host: host.name.clone(),
                within: deadline,
                accepted: self.accepted(&waiting.id),
            }),
        }
    }

    /// Registers a service command for `host`.
    fn submit(&self, host: &str, command: Command) -> Result<Submitted, SendError> {
        let mut inner = self.lock();
        if let Some((_, u)) = inner.recent.iter().find(|(id, _)| *id == command.id) {
            return Ok(Submitted::Done(u.clone()));
        }
        let (tx, rx) = oneshot::channel();
        if let Some(p) = inner.pending.get_mut(&command.id) {
            p.waiters.push(tx);
            return Ok(Submitted::Joined(rx));
        }
        if inner.pending.len() >= MAX_PENDING {
            return Err(SendError::Busy);
        }
        inner.pending.insert(
            command.id.clone(),
            Pending { host: host.to_string(), command, waiters: vec![tx], accepted: false },
        );
        Ok(Submitted::New(rx))
    }

    /// A caller stopped waiting for `id`. With nobody waiting the command is forgotten and
    /// not sent again.
    fn abandon(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(id) {
            p.waiters.retain(|w| !w.is_closed());
            if p.waiters.is_empty() {
                inner.pending.remove(id);
            }
        }
    }

    /// Whether the agent acknowledged command `id`, which is still waiting for its outcome.
    fn accepted(&self, id: &str) -> bool {
        self.lock().pending.get(id).is_some_and(|p| p.accepted)
    }

    /// Service commands of `host` still waiting for an outcome: sent again on reconnect.
    pub fn pending_for(&self, host: &str) -> Vec<Command> {
        self.lock().pending.values().filter(|p| p.host == host).map(|p| p.command.clone()).collect()
    }

    /// An update from an agent. Returns whether it was for a log stream (and should end it).
    pub fn update(&self, u: CommandUpdate) {
        let mut inner = self.lock();
        if let Some(stream) = inner.logs.get(&u.command_id) {
            if is_final(u.state) {
                let state = CommandState::try_from(u.state).unwrap_or(CommandState::Failed);
                if state != CommandState::Succeeded {
                    let _ =
                        stream.tx.try_send(Err(Status::failed_precondition(format!("{}: {}", stream.host, u.message))));
                }
                inner.logs.remove(&u.command_id);
            }
            return;
        }
        if !is_final(u.state) {
            if u.state == CommandState::Running as i32
                && let Some(p) = inner.pending.get_mut(&u.command_id)
            {
                p.accepted = true;
            }
            return;
        }
        if let Some(p) = inner.pending.remove(&u.command_id) {
            for w in p.waiters {
                let _ = w.send(u.clone());
            }
            inner.recent.push_back((u.command_id.clone(), u));
            while inner.recent.len() > MAX_RECENT {
                inner.recent.pop_front();
            }
        }
    }

    /// Registers a log stream of `host` under command `id`.
    pub fn add_logs(&self, id: &str, host: &str, tx: LogSender) -> Result<(), Status> {
        let mut inner = self.lock();
        if inner.logs.len() >= MAX_LOG_STREAMS {
            return Err(Status::resource_exhausted(format!("{MAX_LOG_STREAMS} log streams are open; retry later")));
        }
        inner.logs.insert(id.to_string(), LogStream { host: host.to_string(), tx });
        Ok(())
    }

    /// Forgets a log stream.
    pub fn remove_logs(&self, id: &str) {
        self.lock().logs.remove(id);
    }

    /// Relays lines of log command `id` to the operator's stream.
    pub fn relay(&self, id: &str, host: &str, lines: Vec<LogLine>) -> Relay {
        let mut inner = self.lock();
        let Some(stream) = inner.logs.get(id) else { return Relay::Cancel };
        for mut l in lines {
            l.host = host.to_string();
            match stream.tx.try_send(Ok(l)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = stream.tx.try_send(Err(Status::resource_exhausted(
                        "the log stream was cut: the reader fell behind; narrow it to one host or service",
                    )));
                    inner.logs.remove(id);
                    return Relay::Cancel;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    inner.logs.remove(id);
                    return Relay::Cancel;
                }
            }
        }
        Relay::Ok
    }

    /// Registers the output stream of exec command `id` on `host`.
    pub fn add_exec(&self, id: &str, host: &str, tx: ExecSender) -> Result<(), Status> {
        let mut inner = self.lock();
        if inner.execs.len() >= MAX_EXEC_STREAMS {
            return Err(Status::resource_exhausted(format!("{MAX_EXEC_STREAMS} exec streams are open; retry later")));
        }
        inner.execs.insert(id.to_string(), ExecStream { host: host.to_string(), tx, dropped: 0 });
        Ok(())
    }

    /// Forgets the output stream of exec command `id`; the bytes it had to drop.
    pub fn remove_exec(&self, id: &str) -> u64 {
        self.lock().execs.remove(id).map(|s| s.dropped).unwrap_or(0)
    }

    /// Relays output of exec command `id` from `host` to the operator's stream. Output the
    /// operator cannot take as fast as it comes is dropped and counted (the session, which
    /// carries every other message of the host, never waits for an operator).
    pub fn relay_exec(&self, host: &str, out: ExecOutput) {
        let mut inner = self.lock();
        let Some(stream) = inner.execs.get_mut(&out.command_id) else { return };
        if stream.host != host {
            return;
        }
        let n = out.data.len() as u64;
        let event = ExecEvent {
            host: host.to_string(),
            event: Some(exec_event::Event::Output(ExecOutput { command_id: String::new(), ..out })),
        };
        if stream.tx.try_send(Ok(event)).is_err() {
            stream.dropped += n;
        }
    }

    /// Ends the log streams of `host` (its session ended).
    pub fn host_gone(&self, host: &str) {
        let mut inner = self.lock();
        let ids: Vec<String> = inner.logs.iter().filter(|(_, s)| s.host == host).map(|(id, _)| id.clone()).collect();
        for id in ids {
            if let Some(s) = inner.logs.remove(&id) {
                let _ = s.tx.try_send(Err(Status::unavailable(format!("{host} went offline"))));
            }
        }
    }
}

/// A new random command id.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_proto::v1::Hello;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::registry::Registry;

    /// An online host and the queue its session reads commands from.
    fn online(registry: &Registry, name: &str) -> (Arc<Host>, mpsc::Receiver<Box<Command>>) {
        let hello = Hello { name: name.into(), boot_id: 1, ..Default::default() };
        let (host, _handle, rx) = registry.attach(&hello, "127.0.0.1:1", 0, &CancellationToken::new()).unwrap();
        (host, rx)
    }

    fn no_audit() -> std::future::Ready<Result<(), String>> {
        std::future::ready(Ok(()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_is_sent_once_and_its_outcome_is_remembered() {
        let (hub, registry) = (Arc::new(Hub::default()), Registry::default());
        let (host, mut queue) = online(&registry, "pc2");
        let agent = {
            let hub = hub.clone();
            tokio::spawn(async move {
                let c = queue.recv().await.unwrap();
                hub.update(done(&c.id, CommandState::Succeeded));
                queue
            })
        };
        let o = hub.send_and_wait(&host, cmd("a"), Duration::from_secs(5), no_audit()).await.unwrap();
        assert_eq!((o.update.state, o.earlier), (CommandState::Succeeded as i32, false));
        let mut queue = agent.await.unwrap();
        let again = hub.send_and_wait(&host, cmd("a"), Duration::from_secs(5), no_audit()).await.unwrap();
        assert!(again.earlier, "a retried id gets the recorded outcome");
        assert!(queue.try_recv().is_err(), "and nothing is sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_without_an_outcome_forgets_the_command_and_says_whether_it_arrived() {
        let (hub, registry) = (Hub::default(), Registry::default());
        let (host, mut queue) = online(&registry, "pc2");
        let e = hub.send_and_wait(&host, cmd("a"), Duration::from_secs(5), no_audit()).await.unwrap_err();
        assert!(matches!(e, SendError::TimedOut { accepted: false, .. }), "{e:?}");
        assert_eq!(e.to_string(), "no outcome from pc2 within 5s");
        assert!(hub.pending_for("pc2").is_empty(), "forgotten, not sent again on reconnect");
        assert_eq!(queue.recv().await.unwrap().id, "a");
        // Acknowledged (RUNNING) but unfinished: still being applied there.
        let waiting = hub.send_and_wait(&host, cmd("b"), Duration::from_secs(5), no_audit());
        let ack = async {
            let c = queue.recv().await.unwrap();
            hub.update(done(&c.id, CommandState::Running));
            std::future::pending::<()>().await
        };
        let e = tokio::select! { e = waiting => e.unwrap_err(), _ = ack => unreachable!() };
        assert!(matches!(e, SendError::TimedOut { accepted: true, .. }), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_when_the_step_before_fails_or_the_caller_goes_away() {
        let (hub, registry) = (Hub::default(), Registry::default());
        let (host, mut queue) = online(&registry, "pc2");
        let e = hub
            .send_and_wait(&host, cmd("a"), Duration::from_secs(5), std::future::ready(Err("no audit log".into())))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no audit log");
        assert!(queue.try_recv().is_err() && hub.pending_for("pc2").is_empty());
        // A caller dropped while waiting (a cancelled rollout) leaves nothing behind.
        let waiting = hub.send_and_wait(&host, cmd("b"), Duration::from_secs(60), no_audit());
        let _ = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(hub.pending_for("pc2").is_empty());
    }

    fn cmd(id: &str) -> Command {
        Command { id: id.into(), ..Default::default() }
    }

    fn done(id: &str, state: CommandState) -> CommandUpdate {
        CommandUpdate { command_id: id.into(), state: state as i32, ..Default::default() }
    }

    #[tokio::test]
    async fn a_repeated_id_joins_or_gets_the_recorded_outcome() {
        let hub = Hub::default();
        let Submitted::New(rx1) = hub.submit("pc2", cmd("a")).unwrap() else { panic!() };
        let Submitted::Joined(rx2) = hub.submit("pc2", cmd("a")).unwrap() else { panic!() };
        assert_eq!(hub.pending_for("pc2").len(), 1);
        assert!(!hub.accepted("a"));
        hub.update(done("a", CommandState::Running));
        assert_eq!(hub.pending_for("pc2").len(), 1, "running is not an outcome");
        assert!(hub.accepted("a"), "the agent acknowledged it");
        hub.update(done("a", CommandState::Succeeded));
        assert_eq!(rx1.await.unwrap().state, CommandState::Succeeded as i32);
        assert_eq!(rx2.await.unwrap().state, CommandState::Succeeded as i32);
        let Submitted::Done(u) = hub.submit("pc2", cmd("a")).unwrap() else { panic!() };
        assert_eq!(u.state, CommandState::Succeeded as i32);
        assert!(hub.pending_for("pc2").is_empty());
    }

    #[tokio::test]
    async fn abandoned_commands_are_forgotten() {
        let hub = Hub::default();
        let Submitted::New(rx) = hub.submit("pc2", cmd("b")).unwrap() else { panic!() };
        drop(rx);
        hub.abandon("b");
        assert!(hub.pending_for("pc2").is_empty());
    }

    #[tokio::test]
    async fn log_relay_cuts_slow_readers_and_reports_closed_ones() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(2);
        hub.add_logs("l", "pc2", tx).unwrap();
        let line = LogLine { line: "x".into(), ..Default::default() };
        assert_eq!(hub.relay("l", "pc2", vec![line.clone()]), Relay::Ok);
        assert_eq!(rx.recv().await.unwrap().unwrap().host, "pc2");
        assert_eq!(hub.relay("l", "pc2", vec![line.clone(), line.clone(), line.clone()]), Relay::Cancel);
        assert_eq!(hub.relay("l", "pc2", vec![line]), Relay::Cancel, "the stream is gone");
        assert!(new_id() != new_id());
    }
}

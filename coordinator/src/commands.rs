//! Commands in flight between operators and agents. Service commands wait here for their
//! outcome (and are sent again when their agent reconnects, which the agent's journal makes
//! safe); log streams map each agent's log command id to the operator's stream. Recently
//! finished outcomes are kept so a retried request with the same id gets the same answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use fleet_proto::v1::{Command, CommandState, CommandUpdate, LogLine};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Service commands waiting for an outcome, at most.
pub const MAX_PENDING: usize = 10_000;
/// Finished outcomes remembered for retries.
pub const MAX_RECENT: usize = 1024;
/// Log streams open at once, at most.
pub const MAX_LOG_STREAMS: usize = 1024;

/// Where relayed log lines go.
pub type LogSender = mpsc::Sender<Result<LogLine, Status>>;

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
}

/// The registry of commands in flight.
#[derive(Debug, Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

/// What submitting a service command did.
#[derive(Debug)]
pub enum Submitted {
    /// A new command: send it, then wait on the receiver.
    New(oneshot::Receiver<CommandUpdate>),
    /// The same id is already in flight: wait on the receiver, send nothing.
    Joined(oneshot::Receiver<CommandUpdate>),
    /// The same id already finished: here is its outcome.
    Done(CommandUpdate),
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub lock")
    }

    /// Registers a service command for `host`.
    pub fn submit(&self, host: &str, command: Command) -> Result<Submitted, Status> {
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
            return Err(Status::resource_exhausted(format!(
                "{MAX_PENDING} commands are already waiting for an outcome; retry later"
            )));
        }
        inner.pending.insert(
            command.id.clone(),
            Pending { host: host.to_string(), command, waiters: vec![tx], accepted: false },
        );
        Ok(Submitted::New(rx))
    }

    /// A caller stopped waiting for `id` (timed out). With nobody waiting the command is
    /// forgotten and not sent again.
    pub fn abandon(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(id) {
            p.waiters.retain(|w| !w.is_closed());
            if p.waiters.is_empty() {
                inner.pending.remove(id);
            }
        }
    }

    /// Whether the agent acknowledged command `id`, which is still waiting for its outcome.
    pub fn accepted(&self, id: &str) -> bool {
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
    use super::*;

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

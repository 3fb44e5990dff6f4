//! `fleetctl exec`: a one-off command on one host or on the hosts a selector picks
//! (docs/design.md §12). Each host gets an ExecCommand through the audited command path (the
//! full command line is in the audit log before anything is sent, and each host's exit status
//! after); its output is relayed as it comes ([`crate::commands::Hub::relay_exec`]); drained
//! hosts are skipped and said so; when the operator goes away (Ctrl-C), every remote command
//! still running is stopped.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::{
    CancelCommand, Command, CommandState, ExecCommand, ExecEvent, ExecExit, ExecRequest, exec_event,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::audit::entry;
use crate::commands::{ExecSender, new_id};
use crate::control::ControlApi;
use crate::registry::Host;

/// How long a command may run by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a command may run.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86400);
/// Arguments a command line may have.
pub const MAX_ARGS: usize = 1024;
/// Bytes a command line may have, all arguments together.
pub const MAX_LINE_BYTES: usize = 128 * 1024;
/// Events queued towards the operator; output beyond it is dropped and counted.
const STREAM_BUFFER: usize = 1024;
/// How much longer than the command's timeout the coordinator waits for its outcome (the
/// agent stops the process group at the timeout and answers).
const OUTCOME_MARGIN: Duration = Duration::from_secs(30);

/// The command line as a shell would read it back, for the audit log and messages.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain { a.clone() } else { format!("'{}'", a.replace('\'', r"'\''")) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a command line: some program, bounded, no NUL bytes (which no program can receive).
fn check_argv(argv: &[String]) -> Result<(), Status> {
    if argv.first().is_none_or(String::is_empty) {
        return Err(Status::invalid_argument(
            "no command given: write it after --, for example fleetctl exec HOST -- uptime",
        ));
    }
    if argv.len() > MAX_ARGS {
        return Err(Status::invalid_argument(format!("{} arguments; at most {MAX_ARGS}", argv.len())));
    }
    let bytes: usize = argv.iter().map(String::len).sum();
    if bytes > MAX_LINE_BYTES {
        return Err(Status::invalid_argument(format!("the command line is {bytes} bytes; at most {MAX_LINE_BYTES}")));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Status::invalid_argument("an argument holds a NUL byte, which no program can receive"));
    }
    Ok(())
}

fn exit_event(host: &str, exit: ExecExit) -> Result<ExecEvent, Status> {
    Ok(ExecEvent { host: host.to_string(), event: Some(exec_event::Event::Exit(exit)) })
}

fn refused(host: &str, message: String) -> Result<ExecEvent, Status> {
    exit_event(host, ExecExit { ok: false, message, ..Default::default() })
}

impl ControlApi {
    /// Exec: checks the request, then runs the command on every host picked, at most
    /// `max_parallel` at once, streaming events.
    pub(crate) fn exec_start(
        &self,
        who: String,
        r: ExecRequest,
    ) -> Result<ReceiverStream<Result<ExecEvent, Status>>, Status> {
        check_argv(&r.argv)?;
        if r.host.is_empty() && r.selector.is_empty() {
            return Err(Status::invalid_argument("name a host, or pick hosts with --selector"));
        }
        let hosts = self.select(&r.host, &r.selector)?;
        let timeout = match r.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_TIMEOUT),
        };
        let parallel = match r.max_parallel {
            0 => hosts.len(),
            n => n as usize,
        }
        .max(1);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        let argv = Arc::new(r.argv);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(parallel));
            let mut runs = tokio::task::JoinSet::new();
            for host in hosts {
                if let Some(reason) = host.drained() {
                    let skipped =
                        format!("skipped: drained ({reason}); `fleetctl hosts undrain {}` brings it back", host.name);
                    let event = ExecEvent { host: host.name.clone(), event: Some(exec_event::Event::Skipped(skipped)) };
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                if tx.is_closed() {
                    break;
                }
                let (this, who, argv, tx) = (this.clone(), who.clone(), argv.clone(), tx.clone());
                runs.spawn(async move {
                    this.exec_on(&who, &host, &argv, timeout, tx).await;
                    drop(slot);
                });
            }
            while runs.join_next().await.is_some() {}
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Runs the command on one host and sends its exit.
    async fn exec_on(&self, who: &str, host: &Arc<Host>, argv: &[String], timeout: Duration, tx: ExecSender) {
        let line = shell_line(argv);
        let name = host.name.as_str();
        if host.command_sender().is_none() {
            let _ = tx.send(refused(name, format!("{name} is offline; nothing was sent"))).await;
            return;
        }
        if !host.with(|s| s.record.allow_exec) {
            let msg = format!(
                "exec is off on {name}: set allow_exec = true in its agent.toml and restart the agent (docs/install.md, \"Jobs and runbooks\")"
            );
            let _ = self.c.audit.append(entry(who, "exec", name, &line, "", "refused", &msg)).await;
            let _ = tx.send(refused(name, msg)).await;
            return;
        }
        let id = new_id();
        if let Err(e) = self.c.hub.add_exec(&id, name, tx.clone()) {
            let _ = tx.send(refused(name, e.message().to_string())).await;
            return;
        }
        let command = Command {
            id: id.clone(),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: who.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::Exec(ExecCommand { argv: argv.to_vec() })),
        };
        let look = "fleetctl audit";
        let sent = self.audited(who, "exec", host, &line, command, timeout + OUTCOME_MARGIN, look);
        tokio::pin!(sent);
        let outcome = tokio::select! {
            r = &mut sent => r,
            _ = tx.closed() => {
                // The operator went away: stop the command, and still record how it ended.
                if let Some(queue) = host.command_sender() {
                    let cancel = Command {
                        id: new_id(),
                        issued_at_ms: fleet_common::now_ms(),
                        action: Some(CmdAction::Cancel(CancelCommand { command_id: id.clone() })),
                        ..Default::default()
                    };
                    let _ = queue.try_send(Box::new(cancel));
                }
                tracing::info!(host = name, command_id = %id, "the operator went away; stopping the exec'd command");
                sent.await
            }
        };
        let dropped = self.c.hub.remove_exec(&id);
        let exit = match outcome {
            Ok(u) => {
                let mut message = u.message;
                if dropped > 0 {
                    message.push_str(&format!(
                        " ({} of output dropped: the reader fell behind)",
                        fleet_common::human_bytes(dropped)
                    ));
                }
                ExecExit {
                    ok: u.state == CommandState::Succeeded as i32,
                    exit_code: u.exit_code,
                    signal: u.signal,
                    timed_out: u.timed_out,
                    message,
                }
            }
            Err(status) => ExecExit { ok: false, message: status.message().to_string(), ..Default::default() },
        };
        let _ = tx.send(exit_event(name, exit)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_read_back_as_a_shell_would() {
        let argv: Vec<String> = ["sh", "-c", "echo out; echo 'err' >&2", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(shell_line(&argv), r#"sh -c 'echo out; echo '\''err'\'' >&2' ''"#);
    }

    #[test]
    fn command_lines_are_bounded() {
        assert!(check_argv(&[]).is_err());
        assert!(check_argv(&["a\0b".into()]).is_err());
        assert!(check_argv(&vec!["x".into(); MAX_ARGS + 1]).is_err());
        assert!(check_argv(&["x".repeat(MAX_LINE_BYTES + 1)]).is_err());
        assert!(check_argv(&["uptime".into()]).is_ok());
    }
}

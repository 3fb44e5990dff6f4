//! One-off commands from `fleetctl exec` (docs/design.md §12), on an agent whose config sets
//! `allow_exec = true`: the command runs in its own process group with stdin closed, like a
//! service ([`crate::supervisor::Launch`]); what it writes goes back as it comes, in pieces of
//! at most [`CHUNK`] bytes (the session's queue holds the process back when the coordinator is
//! slower than its output); at its timeout, or when the operator goes away, its group gets
//! TERM, then KILL after [`STOP_GRACE`].

use std::path::PathBuf;
use std::time::Duration;

use fleet_proto::v1::agent_message::Msg as AgentMsg;
use fleet_proto::v1::{AgentMessage, ExecOutput};
use rustix::process::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::supervisor::{Launch, base_env, describe_exit, kill_group};

/// The most bytes of output one message carries.
pub const CHUNK: usize = 16 * 1024;
/// Time between TERM and KILL when a command is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long output left in the pipes (by children that outlive the command) is read after it
/// exited.
const DRAIN: Duration = Duration::from_secs(1);

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// Its exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, 0 when none did.
    pub signal: i32,
    /// Whether it was stopped at its timeout.
    pub timed_out: bool,
    /// What happened, for people.
    pub message: String,
}

async fn pump(mut r: impl AsyncRead + Unpin, id: String, stream: &'static str, tx: mpsc::Sender<AgentMessage>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let out = ExecOutput { command_id: id.clone(), stream: stream.to_string(), data: buf[..n].to_vec() };
        if tx.send(AgentMessage { msg: Some(AgentMsg::ExecOutput(out)) }).await.is_err() {
            return;
        }
    }
}

/// Runs `argv` for command `id` until it exits, `timeout` passes or `stop` is cancelled,
/// sending its output on `tx`. Err when it could not start.
pub async fn run(
    id: &str,
    agent: &str,
    argv: &[String],
    timeout: Duration,
    stop: CancellationToken,
    tx: mpsc::Sender<AgentMessage>,
) -> Result<Exited, String> {
    let Some((program, args)) = argv.split_first() else { return Err("no command given".into()) };
    let env = Default::default();
    let (mut child, _) = Launch {
        command: program,
        args,
        env: &env,
        workdir: PathBuf::from("/"),
        user: None,
        fleet_env: &[("FLEET_AGENT", agent), ("FLEET_EXEC_ID", id)],
    }
    .spawn(&base_env())?;
    let pid = child.id().ok_or("the process ended before it could be watched")?;
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, id.to_string(), "stdout", tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, id.to_string(), "stderr", tx.clone())));
    }
    tracing::info!(command_id = id, pid, argv = ?argv, "exec started");
    let mut why = None;
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tokio::time::sleep(timeout) => { why = Some(true); stop_group(pid, &mut child).await }
        _ = stop.cancelled() => { why = Some(false); stop_group(pid, &mut child).await }
    };
    if why.is_some() {
        // Stopped: whatever it started goes with it.
        kill_group(pid, Signal::KILL);
    }
    let drained = tokio::time::timeout(DRAIN, futures_util::future::join_all(pumps.iter_mut())).await;
    if drained.is_err() {
        for p in &pumps {
            p.abort();
        }
    }
    let status = status.map_err(|e| format!("cannot wait for pid {pid}: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    let ended = describe_exit(status);
    let message = match why {
        Some(true) => format!("timed out after {}; stopped it ({ended})", fleet_common::human_duration_ms(timeout)),
        Some(false) => format!("stopped on request ({ended})"),
        None => ended,
    };
    tracing::info!(command_id = id, pid, %message, "exec ended");
    Ok(Exited { exit_code: status.code(), signal: status.signal().unwrap_or(0), timed_out: why == Some(true), message })
}

/// TERM to the group, KILL after [`STOP_GRACE`]; the process's status.
async fn stop_group(pid: u32, child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    kill_group(pid, Signal::TERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            kill_group(pid, Signal::KILL);
            child.wait().await
        }
    }
}

//! `fleetctl exec HOST -- CMD ARGS...` and `fleetctl exec --selector SEL -- ...`: a one-off
//! command on one host or several (docs/design.md §12). Output is shown as it comes (with a
//! `host: ` prefix on each line when a selector picks the hosts); fleetctl exits with the
//! command's status, the worst one across hosts. Ctrl-C ends fleetctl, and the coordinator
//! then stops the remote commands.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_proto::v1::{ExecExit, ExecRequest, exec_event};
use serde_json::json;

use crate::client::{Target, status_error};
use crate::{CliError, Output};

/// The exit status fleetctl gives for a host's exit: the command's own status, 128 + the
/// signal that ended it, 124 when it was stopped at its timeout, 1 when it did not run.
pub fn exit_status(e: &ExecExit) -> u8 {
    if e.ok {
        return 0;
    }
    if e.timed_out {
        return 124;
    }
    match e.exit_code {
        Some(c) if (1..=255).contains(&c) => c as u8,
        _ if (1..=127).contains(&e.signal) => 128 + e.signal as u8,
        _ => 1,
    }
}

/// Output of several hosts, one prefixed line at a time.
#[derive(Default)]
struct Lines {
    partial: HashMap<(String, bool), Vec<u8>>,
}

impl Lines {
    fn push(&mut self, host: &str, stderr: bool, data: &[u8]) {
        let buf = self.partial.entry((host.to_string(), stderr)).or_default();
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            emit(host, stderr, &line);
        }
        // A line without an end is shown once it is long.
        if buf.len() >= 64 * 1024 {
            let line = std::mem::take(buf);
            emit(host, stderr, &line);
            crate::output::write_bytes(b"\n", stderr);
        }
    }

    /// Shows what is left of `host`'s output (a last line without a line break).
    fn flush(&mut self, host: &str) {
        for stderr in [false, true] {
            if let Some(rest) = self.partial.remove(&(host.to_string(), stderr))
                && !rest.is_empty()
            {
                emit(host, stderr, &rest);
                crate::output::write_bytes(b"\n", stderr);
            }
        }
    }
}

fn emit(host: &str, stderr: bool, line: &[u8]) {
    let mut out = Vec::with_capacity(host.len() + 2 + line.len());
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(line);
    crate::output::write_bytes(&out, stderr);
}

/// `fleetctl exec`.
pub async fn exec(
    target: &Target,
    host: Option<&str>,
    selector: Option<&str>,
    argv: Vec<String>,
    timeout: Duration,
    max_parallel: u32,
    output: Output,
) -> Result<(), CliError> {
    let selector = crate::views::checked_selector(selector)?;
    let several = host.is_none();
    let mut c = target.control().await?;
    let req = ExecRequest {
        host: host.unwrap_or_default().to_string(),
        selector,
        argv,
        timeout_ms: timeout.as_millis() as u64,
        max_parallel,
    };
    let mut stream = c.exec(req).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    let mut lines = Lines::default();
    let mut exits: BTreeMap<String, ExecExit> = BTreeMap::new();
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    let mut json_output: Vec<serde_json::Value> = Vec::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let event = tokio::select! {
            m = stream.message() => m.map_err(|e| status_error(&target.addr, e))?,
            _ = &mut interrupt => {
                // Dropping the stream tells the coordinator, which stops the remote commands.
                drop(stream);
                return Err(CliError { code: 130, message: "interrupted: the remote command is being stopped".into() });
            }
        };
        let Some(event) = event else { break };
        match event.event {
            Some(exec_event::Event::Output(o)) => {
                let to_stderr = o.stream == "stderr";
                if output == Output::Json {
                    json_output.push(json!({
                        "host": event.host,
                        "stream": o.stream,
                        "text": String::from_utf8_lossy(&o.data),
                    }));
                } else if several {
                    lines.push(&event.host, to_stderr, &o.data);
                } else {
                    crate::output::write_bytes(&o.data, to_stderr);
                }
            }
            Some(exec_event::Event::Exit(e)) => {
                lines.flush(&event.host);
                // Hosts that failed say so (as pdsh does); the others' output speaks for them.
                if several && output == Output::Table && !e.ok {
                    eprintln!(
                        "{}: failed ({}): {}",
                        event.host,
                        exit_status(&e),
                        fleet_common::printable(&e.message, &[])
                    );
                }
                exits.insert(event.host, e);
            }
            Some(exec_event::Event::Skipped(why)) => {
                if output == Output::Table {
                    eprintln!("{}: {}", event.host, fleet_common::printable(&why, &[]));
                }
                skipped.insert(event.host, why);
            }
            None => {}
        }
    }
    let worst = exits.values().map(exit_status).max().unwrap_or(0);
    if output == Output::Json {
        crate::views::print_json(&json!({
            "output": json_output,
            "hosts": exits.iter().map(|(h, e)| json!({
                "host": h,
                "ok": e.ok,
                "exit_code": e.exit_code,
                "signal": (e.signal != 0).then_some(e.signal),
                "timed_out": e.timed_out,
                "status": exit_status(e),
                "message": e.message,
            })).collect::<Vec<_>>(),
            "skipped": skipped.iter().map(|(h, why)| json!({ "host": h, "reason": why })).collect::<Vec<_>>(),
        }));
    }
    if exits.is_empty() {
        return Err(CliError::failed("no host ran the command: every host picked was skipped"));
    }
    if worst == 0 {
        return Ok(());
    }
    // One host whose command did not exit by itself (not run, stopped, killed) says why; a
    // command's own failure speaks for itself in its output and exit status.
    let message = match exits.values().next() {
        Some(e) if !several && e.exit_code.is_none() && output == Output::Table => e.message.clone(),
        _ => String::new(),
    };
    Err(CliError { code: worst, message })
}

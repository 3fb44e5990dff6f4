//! `services`, `restart|start|stop`, `logs` and `audit`: what operators do to services.

use std::time::Duration;

use fleet_proto::v1::{
    CommandState, HostService, HostSummary, ListAuditRequest, ListServicesRequest, LogLine, RunServiceCommandRequest,
    RunServiceCommandResponse, ServiceAction, StreamLogsRequest,
};
use serde_json::{Value, json};

use crate::client::{Target, status_error};
use crate::views::{health_word, table};
use crate::{CliError, Output};

fn service_json(h: &HostService) -> Value {
    let s = h.service.clone().unwrap_or_default();
    json!({
        "host": h.host,
        "host_online": h.host_online,
        "name": s.name,
        "state": s.state,
        "healthy": s.healthy,
        "has_health_check": s.has_health_check,
        "pid": if s.pid == 0 { Value::Null } else { json!(s.pid) },
        "restarts": s.restarts,
        "uptime_seconds": s.uptime_seconds,
        "cpu_seconds": s.cpu_seconds,
        "cpu_usage_ratio": s.cpu_usage_ratio,
        "awaiting_release": s.awaiting_release,
        "memory_rss_bytes": s.memory_rss_bytes,
        "version": if s.version.is_empty() { Value::Null } else { json!(s.version) },
        "message": s.message,
    })
}

/// `fleetctl services [--host NAME] [-l SELECTOR]`.
pub async fn list(target: &Target, host: Option<&str>, selector: Option<&str>, output: Output) -> Result<(), CliError> {
    let selector = crate::views::checked_selector(selector)?;
    let mut c = target.control().await?;
    let list = c
        .list_services(ListServicesRequest { host: host.unwrap_or_default().to_string(), selector })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner()
        .services;
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(list.iter().map(service_json).collect())).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        outln!("no services reported{}", host.map(|h| format!(" by {h}")).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|h| {
            let s = h.service.clone().unwrap_or_default();
            let state = if h.host_online { s.state.clone() } else { format!("{} (host offline)", s.state) };
            vec![
                h.host.clone(),
                s.name.clone(),
                state,
                health_word(&s).to_string(),
                if s.pid == 0 { "-".into() } else { s.pid.to_string() },
                s.restarts.to_string(),
                if s.pid == 0 {
                    "-".into()
                } else {
                    fleet_common::human_duration(Duration::from_secs(s.uptime_seconds))
                },
                // A share of one core, as top shows it (hosts shows the whole machine's).
                if s.pid == 0 { "-".into() } else { format!("{:.0}%", s.cpu_usage_ratio * 100.0) },
                if s.memory_rss_bytes == 0 { "-".into() } else { fleet_common::human_bytes(s.memory_rss_bytes) },
                if s.version.is_empty() { "-".into() } else { s.version.clone() },
                s.message.clone(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &["HOST", "SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "UPTIME", "CPU", "MEMORY", "VERSION", "MESSAGE"],
            &rows
        )
    );
    Ok(())
}

fn verb(a: ServiceAction) -> (&'static str, &'static str) {
    match a {
        ServiceAction::Start => ("start", "started"),
        ServiceAction::Stop => ("stop", "stopped"),
        _ => ("restart", "restarted"),
    }
}

/// Puts the host into an agent's message: "api exited ..." becomes "api on pc2 exited ...".
fn with_host(message: &str, service: &str, host: &str) -> String {
    match message.strip_prefix(service) {
        Some(rest) if rest.starts_with(' ') => format!("{service} on {host}{rest}"),
        _ => format!("{service} on {host}: {message}"),
    }
}

/// Runs one action on one host's service and waits for the outcome.
pub async fn act(
    target: &Target,
    host: &str,
    service: &str,
    action: ServiceAction,
    timeout: Duration,
    request_id: Option<String>,
) -> Result<RunServiceCommandResponse, CliError> {
    let mut c = target.control().await?;
    let req = RunServiceCommandRequest {
        host: host.to_string(),
        service: service.to_string(),
        action: action as i32,
        timeout_ms: timeout.as_millis() as u64,
        request_id: request_id.unwrap_or_default(),
    };
    let mut request = tonic::Request::new(req);
    request.set_timeout(timeout + Duration::from_secs(15));
    c.run_service_command(request).await.map(|r| r.into_inner()).map_err(|e| status_error(&target.addr, e))
}

fn outcome(
    host: &str,
    service: &str,
    action: ServiceAction,
    r: &RunServiceCommandResponse,
    output: Output,
) -> Result<(), CliError> {
    let ok = r.state == CommandState::Succeeded as i32;
    if output == Output::Json {
        let v = json!({
            "host": host,
            "service": service,
            "action": verb(action).0,
            "command_id": r.command_id,
            "ok": ok,
            "message": r.message,
            "state": r.service.as_ref().map(|s| s.state.clone()),
            "healthy": r.service.as_ref().map(|s| s.healthy),
            "pid": r.service.as_ref().map(|s| s.pid),
            "log_tail": r.log_tail,
        });
        crate::views::print_json(&v);
        return if ok { Ok(()) } else { Err(CliError::failed(with_host(&r.message, service, host))) };
    }
    if ok {
        outln!("{} {service} on {host}: {}", verb(action).1, fleet_common::printable(&r.message, &[]));
        return Ok(());
    }
    let mut msg = with_host(&r.message, service, host);
    if !r.log_tail.is_empty() {
        msg.push_str("; last log lines:");
        for l in &r.log_tail {
            msg.push_str("\n  ");
            msg.push_str(l);
        }
    }
    Err(CliError::failed(msg))
}

/// `fleetctl restart|start|stop HOST SERVICE`.
pub async fn one(
    target: &Target,
    host: &str,
    service: &str,
    action: ServiceAction,
    timeout: Duration,
    output: Output,
) -> Result<(), CliError> {
    let r = act(target, host, service, action, timeout, None).await?;
    outcome(host, service, action, &r, output)
}

/// `fleetctl restart --all SERVICE [-l SELECTOR]`: one host at a time, each healthy before
/// the next; stops at the first failure so a bad restart does not spread. Drained hosts are
/// skipped and said so.
pub async fn restart_all(
    target: &Target,
    service: &str,
    selector: Option<&str>,
    timeout: Duration,
    output: Output,
) -> Result<(), CliError> {
    let picked = crate::views::picked_hosts(target, selector).await?;
    let has = |h: &HostSummary| h.services.iter().any(|s| s.name == service);
    let mut skipped = Vec::new();
    let mut hosts = Vec::new();
    for h in picked.iter().filter(|h| has(h)) {
        match &h.drained {
            Some(d) => skipped.push((h.name.clone(), crate::views::drained_why(d))),
            None => hosts.push(h),
        }
    }
    for (name, why) in &skipped {
        if output == Output::Table {
            outln!("skipped {name}: drained ({why})");
        }
    }
    if hosts.is_empty() {
        let picked = if selector.is_some() { " among the hosts the selector picks" } else { "" };
        return Err(CliError::failed(format!(
            "no host{picked} that is not drained has a service named \"{service}\"; `fleetctl services` lists them"
        )));
    }
    let total = hosts.len();
    for (i, h) in hosts.iter().enumerate() {
        if !h.online {
            return Err(CliError::failed(format!(
                "[{}/{total}] {} is offline; stopped here ({i} of {total} restarted)",
                i + 1,
                h.name
            )));
        }
        let r = act(target, &h.name, service, ServiceAction::Restart, timeout, None).await?;
        if r.state != CommandState::Succeeded as i32 {
            outcome(&h.name, service, ServiceAction::Restart, &r, output).map_err(|e| {
                CliError::failed(format!("[{}/{total}] {}; stopped here ({i} of {total} restarted)", i + 1, e.message))
            })?;
        }
        if output == Output::Table {
            outln!(
                "[{}/{total}] restarted {service} on {}: {}",
                i + 1,
                h.name,
                fleet_common::printable(&r.message, &[])
            );
        }
    }
    if output == Output::Json {
        outln!(
            "{}",
            json!({
                "service": service,
                "restarted": hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
                "skipped": skipped.iter().map(|(h, why)| json!({ "host": h, "reason": format!("drained ({why})") })).collect::<Vec<_>>(),
            })
        );
    }
    Ok(())
}

fn print_line(l: &LogLine, prefix: bool, output: Output) {
    if output == Output::Json {
        outln!(
            "{}",
            json!({ "host": l.host, "service": l.service, "time": fleet_common::rfc3339(l.timestamp_ms), "stream": l.stream, "line": l.line })
        );
        return;
    }
    let ts = fleet_common::rfc3339(l.timestamp_ms);
    let note = if l.stream == "fleet" { "[fleet] " } else { "" };
    if prefix {
        outln!("{}/{} {ts} {note}{}", l.host, l.service, fleet_common::printable(&l.line, &['\t']));
    } else {
        outln!("{ts} {note}{}", fleet_common::printable(&l.line, &['\t']));
    }
}

/// `fleetctl logs HOST [SERVICE] [-n N] [-f]` and `fleetctl logs --all [-f]`.
pub async fn logs(
    target: &Target,
    host: &str,
    service: &str,
    lines: u32,
    follow: bool,
    output: Output,
) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let req = StreamLogsRequest { host: host.to_string(), service: service.to_string(), lines, follow };
    let mut stream = c.stream_logs(req).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    let prefix = host.is_empty() || service.is_empty();
    loop {
        match stream.message().await {
            Ok(Some(l)) => print_line(&l, prefix, output),
            Ok(None) => return Ok(()),
            Err(e) => return Err(status_error(&target.addr, e)),
        }
    }
}

/// `fleetctl audit [-n N]`.
pub async fn audit(target: &Target, n: u32, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let entries = c
        .list_audit(ListAuditRequest { limit: n })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner()
        .entries;
    if output == Output::Json {
        let v: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "time": fleet_common::rfc3339(e.at_ms), "who": e.who, "action": e.action, "host": e.host,
                    "service": e.service, "command_id": e.command_id, "outcome": e.outcome, "message": e.message,
                })
            })
            .collect();
        crate::views::print_json(&Value::Array(v));
        return Ok(());
    }
    if entries.is_empty() {
        outln!("the audit log is empty");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                fleet_common::rfc3339(e.at_ms),
                e.who.rsplit('/').next().unwrap_or(&e.who).to_string(),
                e.action.clone(),
                match (e.host.is_empty(), e.service.is_empty()) {
                    (false, false) => format!("{}/{}", e.host, e.service),
                    (true, _) => e.service.clone(),
                    (false, true) => e.host.clone(),
                },
                e.outcome.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    out!("{}", table(&["TIME", "WHO", "ACTION", "TARGET", "OUTCOME", "MESSAGE"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_host() {
        assert_eq!(
            with_host("api exited with status 3 during start", "api", "pc2"),
            "api on pc2 exited with status 3 during start"
        );
        assert_eq!(with_host("timed out", "api", "pc2"), "api on pc2: timed out");
    }
}

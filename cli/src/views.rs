//! `status`, `hosts` and `host NAME`: readable tables on a terminal, one JSON document with
//! `-o json` (the `hosts` shape is a public contract, docs/design.md §7).

use fleet_common::{human_bytes, human_duration, now_ms, rfc3339};
use fleet_proto::v1::{GetHostRequest, GetStatusRequest, HostSummary, ListHostsRequest};
use serde_json::{Value, json};

use crate::client::{Target, status_error};
use crate::{CliError, Output};

/// Renders rows as a left-aligned table with a header, columns two spaces apart, one line a
/// row: a cell of several lines shows its lines joined, and control characters are shown
/// escaped, never sent to the terminal (`-o json` has cells as they are).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |c: &String| {
        let flat = if c.contains('\n') { c.lines().map(str::trim).collect::<Vec<_>>().join(" ") } else { c.clone() };
        fleet_common::printable(&flat, &[]).into_owned()
    };
    let flat: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let rows = &flat;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let d = (now_ms() - ms).max(0) as u64;
    format!("{} ago", human_duration(std::time::Duration::from_millis(d)))
}

fn opt_time(ms: i64) -> Value {
    if ms > 0 { Value::String(rfc3339(ms)) } else { Value::Null }
}

/// The JSON object of one host, as `hosts -o json` prints it.
pub fn host_json(h: &HostSummary) -> Value {
    let m = h.metrics.clone().unwrap_or_default();
    let has = h.metrics.is_some();
    let num = |v: f64| if has { json!(v) } else { Value::Null };
    let int = |v: u64| if has { json!(v) } else { Value::Null };
    json!({
        "name": h.name,
        "status": if h.online { "online" } else { "offline" },
        "last_seen": opt_time(h.last_seen_ms),
        "last_report": opt_time(h.last_report_ms),
        "labels": h.labels,
        "agent_version": h.agent_version,
        "os": h.os,
        "hostname": h.hostname,
        "address": h.peer_address,
        "report_interval_seconds": h.report_interval_ms as f64 / 1000.0,
        "disconnect_reason": if h.last_disconnect_reason.is_empty() { Value::Null } else { json!(h.last_disconnect_reason) },
        "drained": h.drained.as_ref().map(|d| json!({ "reason": d.reason, "by": d.by, "since": opt_time(d.since_ms) })),
        "allow_exec": h.allow_exec,
        "cpu_usage_ratio": num(m.cpu_usage_ratio),
        "cpu_count": int(u64::from(m.cpu_count)),
        "memory_total_bytes": int(m.memory_total_bytes),
        "memory_available_bytes": int(m.memory_available_bytes),
        "load1": num(m.load1),
        "uptime_seconds": int(m.uptime_seconds),
        "reports_dropped_total": h.reports_dropped_total,
        "clock_offset_seconds": if h.online { json!(h.clock_offset_ms as f64 / 1000.0) } else { Value::Null },
        "services": h.services.iter().map(|s| json!({
            "name": s.name,
            "state": s.state,
            "healthy": s.healthy,
            "pid": if s.pid == 0 { Value::Null } else { json!(s.pid) },
            "restarts": s.restarts,
            "version": if s.version.is_empty() { Value::Null } else { json!(s.version) },
            "awaiting_release": s.awaiting_release,
        })).collect::<Vec<_>>(),
    })
}

/// The HEALTH column: "healthy", "unhealthy", or "-" without a check.
pub fn health_word(s: &fleet_proto::v1::ServiceStatus) -> &'static str {
    match (s.has_health_check, s.healthy, s.state.as_str()) {
        (false, _, _) => "-",
        (true, true, _) => "healthy",
        (true, false, "running") if s.message.is_empty() => "checking",
        (true, false, "running") => "unhealthy",
        (true, false, _) => "-",
    }
}

/// An agent's clock offset for people: in step, or how far off and what fleet does about it
/// (the coordinator corrects beyond 5 s and warns beyond 30 s; coordinator/src/clock.rs).
fn clock(offset_ms: i64) -> String {
    if offset_ms.abs() <= 1000 {
        return "in step with the coordinator".into();
    }
    let way = if offset_ms > 0 { "ahead of" } else { "behind" };
    let mut s = format!("{:.1}s {way} the coordinator", offset_ms.abs() as f64 / 1000.0);
    if offset_ms.abs() > 5_000 {
        s.push_str("; its samples are stored at corrected times");
    }
    if offset_ms.abs() > 30_000 {
        s.push_str("; fix its clock (NTP)");
    }
    s
}

/// Prints one JSON document, pretty.
pub fn print_json(v: &impl serde::Serialize) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn pct(r: f64) -> String {
    format!("{:.0}%", r * 100.0)
}

fn mem(m: &fleet_proto::v1::HostMetrics) -> String {
    let used = m.memory_total_bytes.saturating_sub(m.memory_available_bytes);
    if m.memory_total_bytes == 0 {
        return "-".into();
    }
    format!("{:.0}% of {}", used as f64 * 100.0 / m.memory_total_bytes as f64, human_bytes(m.memory_total_bytes))
}

/// `fleetctl status`.
pub async fn status(target: &Target, output: Output) -> Result<(), CliError> {
    let mut client = target.control().await?;
    let s = client.get_status(GetStatusRequest {}).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    let uptime = std::time::Duration::from_millis((now_ms() - s.started_at_ms).max(0) as u64);
    if output == Output::Json {
        let cluster = s.cluster.as_ref().map(|c| {
            json!({
                "name": c.name,
                "advertise": c.advertise,
                "state": c.state,
                "leader": c.leader,
                "is_leader": c.is_leader,
                "detail": c.detail,
                "members": c.members.iter().map(|m| json!({ "advertise": m.advertise, "started_at": rfc3339(m.started_at_ms), "version": m.version })).collect::<Vec<_>>(),
                "etcd": { "up": c.etcd_up, "configured": c.etcd_total },
            })
        });
        print_json(&json!({
            "coordinator": { "address": target.addr, "version": s.coordinator_version, "started_at": rfc3339(s.started_at_ms), "trust_domain": s.trust_domain },
            "cluster": cluster,
            "hosts": { "online": s.hosts_online, "offline": s.hosts_offline },
            "sessions": s.sessions,
            "reports_stored": s.reports_stored,
            "history": { "reports": s.history_reports, "retention_seconds": s.history_retention_seconds, "loading": s.history_loading },
        }));
        return Ok(());
    }
    outln!(
        "coordinator  {} (fleet-coordinator {}, up {}, trust domain {})",
        target.addr,
        s.coordinator_version,
        human_duration(uptime),
        s.trust_domain
    );
    outln!("hosts        {} online, {} offline", s.hosts_online, s.hosts_offline);
    outln!("sessions     {}", s.sessions);
    outln!(
        "history      {} reports in the last {} ({} stored since start){}",
        s.history_reports,
        human_duration(std::time::Duration::from_secs(s.history_retention_seconds)),
        s.reports_stored,
        if s.history_loading { "; still loading after the start: rules wait, queries see part of it" } else { "" }
    );
    if let Some(c) = &s.cluster {
        cluster_lines(c);
    }
    Ok(())
}

/// `fleetctl status`'s lines about several coordinators.
fn cluster_lines(c: &fleet_proto::v1::ClusterStatus) {
    let role = match c.state.as_str() {
        "leader" => "this coordinator leads".to_string(),
        "follower" => "follower".to_string(),
        "no_quorum" => format!("NO QUORUM: {}; rollouts and commands wait for etcd", c.detail),
        _ => "electing a leader".to_string(),
    };
    outln!("cluster      {} ({}; advertises {})", c.name, role, c.advertise);
    outln!("leader       {}", if c.leader.is_empty() { "none known" } else { &c.leader });
    outln!("members      {}", c.members.len());
    for m in &c.members {
        let mark = if m.advertise == c.leader { "  (leader)" } else { "" };
        outln!("  {}  fleet-coordinator {}, joined {}{mark}", m.advertise, m.version, rfc3339(m.started_at_ms));
    }
    outln!("etcd         {} of {} members answer", c.etcd_up, c.etcd_total);
}

/// A selector given on the command line, checked: a bad one is a usage error, said before
/// anything is dialled. Empty when none was given.
pub fn checked_selector(selector: Option<&str>) -> Result<String, CliError> {
    match selector {
        Some(text) => {
            Ok(fleet_common::selector::Selector::parse(text).map_err(|e| CliError::usage(e.to_string()))?.to_string())
        }
        None => Ok(String::new()),
    }
}

/// The hosts a selector picks (every host without one), as summaries with their services,
/// jobs and drain marks. No match is exit 1, a malformed selector exit 2.
pub async fn picked_hosts(target: &Target, selector: Option<&str>) -> Result<Vec<HostSummary>, CliError> {
    let selector = checked_selector(selector)?;
    let mut client = target.control().await?;
    client.list_hosts(ListHostsRequest { selector }).await.map(|r| r.into_inner().hosts).map_err(|e| match e.code() {
        tonic::Code::NotFound => CliError::failed(e.message().to_string()),
        _ => status_error(&target.addr, e),
    })
}

/// A drain's reason, for messages.
pub fn drained_why(d: &fleet_proto::v1::Drain) -> String {
    let by = format!("by {}", d.by);
    if d.reason.is_empty() { by } else { format!("{}, {by}", d.reason) }
}

/// `fleetctl hosts [--selector SEL]`.
pub async fn hosts(target: &Target, selector: Option<&str>, output: Output) -> Result<(), CliError> {
    let selector = checked_selector(selector)?;
    let mut client = target.control().await?;
    let list = client
        .list_hosts(ListHostsRequest { selector })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner()
        .hosts;
    if output == Output::Json {
        print_json(&Value::Array(list.iter().map(host_json).collect()));
        return Ok(());
    }
    if list.is_empty() {
        outln!("no hosts yet: start fleet-agent on a machine and it appears here");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|h| {
            let m = h.metrics.as_ref();
            let (ok, expected) = fleet_proto::services_ok(&h.services);
            let status = if h.online { "online" } else { "offline" };
            vec![
                h.name.clone(),
                if h.drained.is_some() { format!("{status}, drained") } else { status.to_string() },
                if h.online { "now".into() } else { ago(h.last_seen_ms) },
                m.filter(|_| h.online).map(|m| pct(m.cpu_usage_ratio)).unwrap_or_else(|| "-".into()),
                m.filter(|_| h.online).map(mem).unwrap_or_else(|| "-".into()),
                m.filter(|_| h.online).map(|m| format!("{:.2}", m.load1)).unwrap_or_else(|| "-".into()),
                format!("{ok}/{expected} ok"),
                if h.agent_version.is_empty() { "-".into() } else { h.agent_version.clone() },
            ]
        })
        .collect();
    out!("{}", table(&["NAME", "STATUS", "LAST SEEN", "CPU", "MEMORY", "LOAD", "SERVICES", "AGENT"], &rows));
    Ok(())
}

/// `fleetctl hosts drain NAME [--reason R]` (`reason` set) and `fleetctl hosts undrain NAME`.
pub async fn drain(target: &Target, name: &str, reason: Option<&str>, output: Output) -> Result<(), CliError> {
    let mut client = target.control().await?;
    let host = match reason {
        Some(r) => {
            client.drain_host(fleet_proto::v1::DrainHostRequest { name: name.to_string(), reason: r.to_string() }).await
        }
        None => client.undrain_host(fleet_proto::v1::UndrainHostRequest { name: name.to_string() }).await,
    }
    .map_err(|e| match e.code() {
        tonic::Code::NotFound => CliError::failed(e.message().to_string()),
        _ => status_error(&target.addr, e),
    })?
    .into_inner();
    if output == Output::Json {
        print_json(&host_json(&host));
    } else if reason.is_some() {
        outln!(
            "drained {name}: rollouts and --selector actions skip it, its alerts carry maintenance=\"true\"; `fleetctl hosts undrain {name}` brings it back"
        );
    } else {
        outln!("undrained {name}: rollouts and --selector actions include it again");
    }
    Ok(())
}

/// `fleetctl host NAME`.
pub async fn host(target: &Target, name: &str, output: Output) -> Result<(), CliError> {
    let mut client = target.control().await?;
    let resp = client
        .get_host(GetHostRequest { name: name.to_string() })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner();
    let h = resp.host.unwrap_or_default();
    let m = h.metrics.clone().unwrap_or_default();
    if output == Output::Json {
        let mut v = host_json(&h);
        v["swap_total_bytes"] = json!(m.swap_total_bytes);
        v["swap_used_bytes"] = json!(m.swap_used_bytes);
        v["load5"] = json!(m.load5);
        v["load15"] = json!(m.load15);
        v["filesystems"] = json!(m.filesystems.iter().map(|f| json!({
            "mountpoint": f.mountpoint, "device": f.device, "fstype": f.fstype, "size_bytes": f.size_bytes, "avail_bytes": f.avail_bytes,
        })).collect::<Vec<_>>());
        v["networks"] = json!(m.networks.iter().map(|n| json!({
            "device": n.device, "receive_bytes_total": n.receive_bytes_total, "transmit_bytes_total": n.transmit_bytes_total,
        })).collect::<Vec<_>>());
        v["history"] = json!({ "reports": resp.history_reports, "oldest": opt_time(resp.history_oldest_ms) });
        print_json(&v);
        return Ok(());
    }
    let status = if h.online {
        "online".to_string()
    } else {
        format!("offline since {} ({})", ago(h.last_seen_ms), h.last_disconnect_reason)
    };
    let labels: Vec<String> = {
        let mut l: Vec<_> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        l
    };
    // What the agent says of itself is shown, never sent to the terminal.
    let p = |s: &str| fleet_common::printable(if s.is_empty() { "-" } else { s }, &[]).into_owned();
    outln!("name         {}", p(&h.name));
    outln!("status       {}", p(&status));
    if let Some(d) = &h.drained {
        let why = if d.reason.is_empty() { String::new() } else { format!(": {}", d.reason) };
        outln!("maintenance  drained by {} {}{}", p(&d.by), ago(d.since_ms), p(&why));
    }
    outln!("address      {}", p(&h.peer_address));
    outln!("hostname     {}", p(&h.hostname));
    outln!("os           {}", p(&h.os));
    outln!(
        "agent        fleet-agent {}, reporting every {}",
        p(&h.agent_version),
        human_duration(std::time::Duration::from_millis(h.report_interval_ms))
    );
    outln!("labels       {}", p(&labels.join(", ")));
    outln!("last report  {}", ago(h.last_report_ms));
    if h.online {
        outln!("clock        {}", clock(h.clock_offset_ms));
    }
    if h.metrics.is_some() {
        outln!("cpu          {} of {} cores", pct(m.cpu_usage_ratio), m.cpu_count);
        outln!("memory       {}", mem(&m));
        outln!("swap         {} of {}", human_bytes(m.swap_used_bytes), human_bytes(m.swap_total_bytes));
        outln!("load         {:.2} {:.2} {:.2}", m.load1, m.load5, m.load15);
        outln!("uptime       {}", human_duration(std::time::Duration::from_secs(m.uptime_seconds)));
    }
    outln!(
        "history      {} reports since {}",
        resp.history_reports,
        if resp.history_oldest_ms > 0 { rfc3339(resp.history_oldest_ms) } else { "-".into() }
    );
    if h.reports_dropped_total > 0 {
        outln!(
            "dropped      {} reports (the agent's buffer overflowed while the coordinator was unreachable)",
            h.reports_dropped_total
        );
    }
    if !m.filesystems.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = m
            .filesystems
            .iter()
            .map(|f| {
                let used = f.size_bytes.saturating_sub(f.avail_bytes);
                vec![
                    f.mountpoint.clone(),
                    f.fstype.clone(),
                    human_bytes(f.size_bytes),
                    human_bytes(f.avail_bytes),
                    format!("{:.0}%", used as f64 * 100.0 / f.size_bytes.max(1) as f64),
                ]
            })
            .collect();
        out!("{}", table(&["MOUNTPOINT", "TYPE", "SIZE", "AVAIL", "USED"], &rows));
    }
    if !m.networks.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = m
            .networks
            .iter()
            .map(|n| vec![n.device.clone(), human_bytes(n.receive_bytes_total), human_bytes(n.transmit_bytes_total)])
            .collect();
        out!("{}", table(&["INTERFACE", "RECEIVED", "SENT"], &rows));
    }
    outln!();
    if h.services.is_empty() {
        outln!("no services reported");
    } else {
        let rows: Vec<Vec<String>> = h
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.state.clone(),
                    health_word(s).to_string(),
                    if s.pid == 0 { "-".into() } else { s.pid.to_string() },
                    s.restarts.to_string(),
                    if s.memory_rss_bytes == 0 { "-".into() } else { human_bytes(s.memory_rss_bytes) },
                    if s.version.is_empty() { "-".into() } else { s.version.clone() },
                    s.message.clone(),
                ]
            })
            .collect();
        out!("{}", table(&["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MEMORY", "VERSION", "MESSAGE"], &rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
    }

    #[test]
    fn host_json_has_the_contract_fields() {
        let h =
            HostSummary { name: "pc2".into(), online: false, last_seen_ms: 1_700_000_000_000, ..Default::default() };
        let v = host_json(&h);
        assert_eq!(v["name"], "pc2");
        assert_eq!(v["status"], "offline");
        assert_eq!(v["last_seen"], "2023-11-14T22:13:20.000Z");
        assert!(v["services"].as_array().unwrap().is_empty());
    }
}

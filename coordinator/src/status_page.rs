//! The read-only status page at `/` on the HTTP port (docs/install.md, "The status page"): for
//! a person with a browser and no fleetctl at hand, what `fleetctl hosts`, `services`,
//! `rollout list` and `alerts` would say, refreshed every 5 s. It shows problems first and is
//! bounded: at most [`MAX_ROWS`] rows a table, with a note of how many more there are.

use std::fmt::Write as _;

use fleet_proto::v1::HostSummary;
use fleet_rules::rules::AlertState;

use crate::alerting::Alerting;
use crate::registry::Registry;
use crate::rollouts::Rollouts;

/// Rows shown at most in each table; the rest are counted, and fleetctl lists them all.
pub const MAX_ROWS: usize = 500;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// "12 s ago", "4 min ago", "3 h ago", "2 d ago", or "never"; the exact time is the cell's
/// tooltip.
fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - ms).max(0) / 1000;
    let text = match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    };
    format!("<span title=\"{}\">{text}</span>", fleet_common::rfc3339(ms))
}

/// A table with a header, at most [`MAX_ROWS`] rows, and a note when rows were left out.
fn table(out: &mut String, title: &str, header: &[&str], rows: &[String], empty: &str, more_hint: &str) {
    let _ = write!(out, "<h2>{title}</h2>");
    if rows.is_empty() {
        let _ = write!(out, "<p class=quiet>{empty}</p>");
        return;
    }
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>\n");
    for r in rows.iter().take(MAX_ROWS) {
        out.push_str(r);
    }
    out.push_str("</table>");
    if rows.len() > MAX_ROWS {
        let _ = write!(out, "<p class=quiet>and {} more: {more_hint}</p>", rows.len() - MAX_ROWS);
    }
}

/// The page, from the cluster state, the number of open sessions, the alerts and the rollouts.
pub fn render(registry: &Registry, sessions: usize, alerting: &Alerting, rollouts: &Rollouts) -> String {
    let now = fleet_common::now_ms();
    let hosts: Vec<HostSummary> = registry.all().iter().map(|h| h.summary()).collect();
    let online = hosts.iter().filter(|h| h.online).count();
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5><title>fleet</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{padding:.3em 1em;text-align:left;border-bottom:1px solid #ddd}}h2{{margin-top:1.5em}}\
         .on{{color:#080}}.off{{color:#b00}}.warn{{color:#b60}}.quiet{{color:#777}}</style></head><body>\
         <h1>fleet</h1><p>fleet-coordinator {} &middot; {online} online, {} offline &middot; {} sessions &middot; \
         <a href=/metrics>metrics</a> &middot; <a href=/health>health</a> &middot; \
         <a href=/api/v1/alerts>alerts API</a> &middot; <a href=/api/v1/rules>rules API</a></p>",
        fleet_common::VERSION,
        hosts.len() - online,
        sessions,
    );

    // Alerts: firing first, then pending.
    let alerts = alerting.alerts();
    let rows: Vec<String> = alerts
        .iter()
        .map(|a| {
            let name = a.labels.get("alertname").unwrap_or_default();
            let labels: Vec<String> =
                a.labels.iter().filter(|(k, _)| *k != "alertname").map(|(k, v)| format!("{k}={v}")).collect();
            let (class, state) = match a.state {
                AlertState::Firing => ("off", "firing"),
                _ => ("warn", "pending"),
            };
            format!(
                "<tr><td>{}</td><td class={class}>{state}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(name),
                esc(&labels.join(", ")),
                ago(a.fired_at.unwrap_or(a.active_at), now),
                esc(a.annotations.get("summary").map(String::as_str).unwrap_or("")),
            )
        })
        .collect();
    table(
        &mut out,
        "Alerts",
        &["alert", "state", "labels", "since", "summary"],
        &rows,
        "no alerts pending or firing",
        "fleetctl alerts",
    );

    // Rollouts under way.
    let running: Vec<_> = rollouts.list().into_iter().filter(|r| !r.finished()).collect();
    let rows: Vec<String> = running
        .iter()
        .map(|r| {
            let done = r.hosts.iter().filter(|h| h.state == crate::store::StepState::Healthy).count();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{done}/{}</td><td>{}</td></tr>\n",
                esc(&r.id),
                esc(&r.service),
                esc(&r.version),
                esc(&r.state.as_str().replace('_', " ")),
                r.hosts.len(),
                ago(r.created_at_ms, now),
            )
        })
        .collect();
    table(
        &mut out,
        "Rollouts under way",
        &["id", "service", "version", "state", "hosts done", "started"],
        &rows,
        "no rollout under way",
        "fleetctl rollout list",
    );

    // Hosts, offline first.
    let mut ordered: Vec<&HostSummary> = hosts.iter().collect();
    ordered.sort_by_key(|h| h.online);
    let rows: Vec<String> = ordered
        .iter()
        .map(|h| {
            let m = h.metrics.as_ref().filter(|_| h.online);
            let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let mem = m.map(|m| {
                let used = m.memory_total_bytes.saturating_sub(m.memory_available_bytes);
                format!(
                    "{:.0}% of {}",
                    used as f64 * 100.0 / m.memory_total_bytes.max(1) as f64,
                    fleet_common::human_bytes(m.memory_total_bytes)
                )
            });
            let drained = match &h.drained {
                Some(d) => format!(", <span class=warn title=\"{}\">drained</span>", esc(&d.reason)),
                None => String::new(),
            };
            let state = if h.online {
                format!("<td class=on>online{drained}</td>")
            } else {
                format!("<td class=off title=\"{}\">offline{drained}</td>", esc(&h.last_disconnect_reason))
            };
            let (ok, total) = fleet_proto::services_ok(&h.services);
            let class = if ok < total { "warn" } else { "on" };
            format!(
                "<tr><td>{}</td>{state}<td>{}</td><td class={class}>{ok}/{total}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&h.name),
                ago(h.last_seen_ms, now),
                cell(m.map(|m| format!("{:.0}%", m.cpu_usage_ratio * 100.0))),
                cell(mem),
                cell(m.map(|m| format!("{:.2}", m.load1))),
                esc(&h.agent_version),
            )
        })
        .collect();
    table(
        &mut out,
        "Hosts",
        &["host", "status", "last seen", "services ok", "cpu", "memory", "load", "agent"],
        &rows,
        "no host has attached yet",
        "fleetctl hosts",
    );

    // Services, those not running and healthy first.
    let mut services: Vec<(&HostSummary, &fleet_proto::v1::ServiceStatus)> =
        hosts.iter().flat_map(|h| h.services.iter().map(move |s| (h, s))).collect();
    services.sort_by_key(|(h, s)| (h.online && s.state == "running" && s.healthy, h.name.clone(), s.name.clone()));
    let rows: Vec<String> = services
        .iter()
        .map(|(h, s)| {
            let (class, health) = match (s.state.as_str(), s.healthy, s.has_health_check) {
                ("running", true, true) => ("on", "healthy"),
                ("running", true, false) => ("on", "no check"),
                ("running", false, _) => ("off", "unhealthy"),
                _ => ("quiet", "-"),
            };
            let state_class = if s.state == "running" { "on" } else if s.state == "stopped" { "quiet" } else { "off" };
            format!(
                "<tr><td>{}</td><td>{}</td><td class={state_class}>{}</td><td class={class}>{health}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&h.name),
                esc(&s.name),
                esc(&s.state),
                esc(if s.version.is_empty() { "-" } else { &s.version }),
                s.restarts,
                esc(&s.message),
            )
        })
        .collect();
    table(
        &mut out,
        "Services",
        &["host", "service", "state", "health", "release", "restarts", "message"],
        &rows,
        "no services reported",
        "fleetctl services",
    );

    // Jobs, those whose newest run did not succeed first.
    let mut jobs: Vec<(&HostSummary, &fleet_proto::v1::JobStatus)> =
        hosts.iter().flat_map(|h| h.jobs.iter().map(move |j| (h, j))).collect();
    let failed = |j: &fleet_proto::v1::JobStatus| j.last_run.as_ref().is_some_and(|r| r.result != "succeeded");
    jobs.sort_by_key(|(h, j)| (!failed(j), h.name.clone(), j.name.clone()));
    let rows: Vec<String> = jobs
        .iter()
        .map(|(h, j)| {
            let (class, result) = match &j.last_run {
                Some(r) if r.result == "succeeded" => ("on", "succeeded".to_string()),
                Some(r) => ("off", format!("{}: {}", r.result, r.message)),
                None => ("quiet", "-".to_string()),
            };
            let next = if j.next_run_ms > 0 { fleet_common::rfc3339(j.next_run_ms) } else { "-".into() };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class={class}>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&h.name),
                esc(&j.name),
                esc(&j.schedule),
                j.last_run.as_ref().map(|r| ago(r.ended_ms, now)).unwrap_or_else(|| "never".into()),
                esc(&result),
                ago(j.last_success_ms, now),
                esc(&next),
            )
        })
        .collect();
    table(
        &mut out,
        "Jobs",
        &["host", "job", "schedule", "last run", "result", "last success", "next run"],
        &rows,
        "no jobs reported",
        "fleetctl jobs",
    );
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_800_000_000_000;
        assert!(ago(now - 12_000, now).ends_with(">12 s ago</span>"));
        assert!(ago(now - 4 * 60_000, now).ends_with(">4 min ago</span>"));
        assert!(ago(now - 3 * 3_600_000, now).ends_with(">3 h ago</span>"));
        assert!(ago(now - 2 * 86_400_000, now).ends_with(">2 d ago</span>"));
        assert_eq!(ago(0, now), "never");
    }
}

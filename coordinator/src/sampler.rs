//! The coordinator's own series in the history, recorded every few seconds: `fleet_agent_up`
//! for every known host (0 while offline, the way Prometheus records `up` per scrape), the
//! rollout results, and certificate expiry, so that rules can alert on them; and the
//! coordinator's own families of `/metrics` (`fleet_coordinator_*`, `fleet_alerts_firing`),
//! as a Prometheus scraping itself would keep them, so that a dashboard on the coordinator's
//! query API shows its health (deploy/grafana).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::coordinator::Coordinator;
use crate::tsdb;

/// How often `fleet_agent_up` is recorded into the history (at most; as often as rules are
/// evaluated when that is more often).
pub const UP_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Records `fleet_agent_up` for every known host (0 while offline), the way Prometheus records
/// `up` per scrape; reports add their own 1s at the times they were taken.
pub async fn sample_up(c: Arc<Coordinator>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = c.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !c.tsdb.loaded() {
            // Samples at the present would come before the past still being read back.
            continue;
        }
        // Appending can write a full chunk to disk: off the async threads.
        let c = c.clone();
        let _ = tokio::task::spawn_blocking(move || record(&c, fleet_common::now_ms())).await;
    }
}

/// Writes the coordinator's own families of `/metrics` (everything but the per-host ones,
/// which the reports and `fleet_agent_up` give).
pub fn own_families(c: &Coordinator, e: &mut crate::metrics::Exposition) {
    use crate::metrics::FmtMetrics;
    crate::series::render_coordinator(e, &c.registry, c.sessions.load(Ordering::Relaxed), c.started_at_ms);
    let parts: [&dyn FmtMetrics; 9] = [
        &*c.metrics,
        &*c.authority,
        &*c.rollouts,
        &c.store,
        &*c.tsdb,
        &*c.alerting,
        &c.certificates,
        &*c.remote_write,
        &*c.cluster,
    ];
    for part in parts {
        part.fmt_metrics(e);
    }
}

/// The families of [`own_families`] recorded into the history (the others are recorded above).
const RECORDED: [&str; 2] = ["fleet_coordinator_", "fleet_alerts_firing"];

/// Appends one sample of each of the coordinator's own series at `now`.
fn record(c: &Coordinator, now: i64) {
    let tsdb = &c.tsdb;
    let mut e = crate::metrics::Exposition::with_capacity(64 * 1024);
    own_families(c, &mut e);
    for line in e.into_string().lines() {
        if !RECORDED.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        if let Some((name, labels, v)) = parse_sample(line) {
            let mut pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            tsdb.append_sample(name, &mut pairs, now, v);
        }
    }
    for h in c.registry.all() {
        tsdb.append_sample(tsdb::UP, &mut [("host", &h.name)], now, if h.online() { 1.0 } else { 0.0 });
    }
    // The coordinator's own rollout results, so rules can alert on rolled-back rollouts.
    let counts = c.rollouts.counts.by_result.lock().expect("counts lock").clone();
    for result in crate::store::RolloutState::RESULTS.map(crate::store::RolloutState::as_str) {
        let n = counts.get(result).copied().unwrap_or(0) as f64;
        tsdb.append_sample("fleet_rollouts_total", &mut [("result", result)], now, n);
    }
    // Certificate expiry, so that FleetCertificateExpiringSoon can see it.
    for (identity, f) in c.certificates.all() {
        tsdb.append_sample(
            "fleet_certificate_expiry_timestamp_seconds",
            &mut [("identity", &identity), ("kind", f.kind)],
            now,
            f.not_after_s as f64,
        );
        if let Some(at) = f.renew_at_s {
            tsdb.append_sample(
                "fleet_certificate_renewal_timestamp_seconds",
                &mut [("identity", &identity), ("kind", f.kind)],
                now,
                at as f64,
            );
        }
    }
}

/// The labels of a sample line: names borrowed, values unescaped.
type SampleLabels<'a> = Vec<(&'a str, String)>;

/// One sample line of the text format fleet writes (`name{k="v",...} value`, values escaped
/// as `\\`, `\"` and `\n`), or None when it is not one.
fn parse_sample(line: &str) -> Option<(&str, SampleLabels<'_>, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = rest[..eq].trim_start_matches(',');
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = rest[eq + 2 + close + 1..].trim_start_matches(',');
        }
    }
    let v = crate::metrics::parse_value(rest.trim())?;
    Some((name, labels, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_read_back_as_written() {
        assert_eq!(parse_sample("fleet_coordinator_sessions 2"), Some(("fleet_coordinator_sessions", vec![], 2.0)));
        let (name, labels, v) =
            parse_sample(r#"fleet_alerts_firing{alertname="A \"b\"",severity="x\\y\nz"} 3.5"#).unwrap();
        assert_eq!((name, v), ("fleet_alerts_firing", 3.5));
        assert_eq!(labels, vec![("alertname", "A \"b\"".to_string()), ("severity", "x\\y\nz".to_string())]);
        assert!(parse_sample("fleet_x{a=\"unterminated} 1").is_none());
        assert!(parse_sample("fleet_x{a=\"1\"} +Inf").unwrap().2.is_infinite());
    }
}

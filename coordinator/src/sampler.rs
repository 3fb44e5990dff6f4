//! The coordinator's own series in the history, recorded every few seconds: `fleet_agent_up`
//! for every known host (0 while offline, the way Prometheus records `up` per scrape), the
//! rollout results, and certificate expiry, so that rules can alert on them.

use std::sync::Arc;
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

/// Appends one sample of each of the coordinator's own series at `now`.
fn record(c: &Coordinator, now: i64) {
    let tsdb = &c.tsdb;
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

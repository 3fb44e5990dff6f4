//! Maintenance (docs/design.md §12): `fleetctl hosts drain NAME` puts a host aside. Rollouts
//! and selector-picked actions (exec, and fleetctl's restart --all and job run) skip it and
//! say so, and its alerts carry `maintenance="true"` ([`crate::alerting::MAINTENANCE`]) so
//! that Alertmanager can inhibit or route them. The mark is part of the host's record,
//! durable before the call answers, and audited.

use tonic::Status;

use crate::audit::entry;
use crate::control::ControlApi;
use crate::store::{Drain, RecordKind};

/// The longest drain reason.
pub const MAX_REASON: usize = 256;

impl ControlApi {
    /// Drains host `name` (with `reason`), or undrains it (`None`).
    pub(crate) async fn set_drain(
        &self,
        who: &str,
        name: &str,
        reason: Option<String>,
    ) -> Result<fleet_proto::v1::HostSummary, Status> {
        if let Some(r) = &reason
            && (r.len() > MAX_REASON || fleet_common::has_control(r))
        {
            return Err(Status::invalid_argument(format!(
                "the reason is longer than {MAX_REASON} bytes or holds control characters"
            )));
        }
        let host = self.host(name)?;
        let action = if reason.is_some() { "drain" } else { "undrain" };
        let before = host.with(|s| {
            let before = s.record.drained.clone();
            s.record.drained =
                reason.clone().map(|reason| Drain { reason, by: who.to_string(), since_ms: fleet_common::now_ms() });
            before
        });
        let saved = match self.c.writer.save_host_durably(host.clone()).await {
            Ok(()) => self.share_drain(name, host.with(|s| s.record.drained.clone())).await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            host.with(|s| s.record.drained = before);
            let _ = self.c.audit.append(entry(who, action, name, "", "", "failed", &e)).await;
            return Err(Status::unavailable(format!("cannot save the host record, nothing changed: {e}")));
        }
        let _ =
            self.c.audit.append(entry(who, action, name, "", "", "succeeded", reason.as_deref().unwrap_or(""))).await;
        tracing::info!(%who, host = name, action, reason = reason.as_deref().unwrap_or(""), "maintenance");
        Ok(host.summary())
    }

    /// With several coordinators, the mark goes to the shared state too, so that every
    /// coordinator (and the next leader) skips the host.
    async fn share_drain(&self, name: &str, drained: Option<Drain>) -> Result<(), String> {
        if self.c.cluster.config().is_none() {
            return Ok(());
        }
        let (shared, name) = (self.c.shared.clone(), name.to_string());
        tokio::task::spawn_blocking(move || match &drained {
            Some(d) => shared.put(RecordKind::Drained, &name, d),
            None => shared.remove_record(RecordKind::Drained, &name),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

/// With several coordinators: makes every host's drain mark the one in the shared state
/// (another coordinator drained or undrained it). Returns the hosts that changed, to save.
pub fn follow_shared_drains(
    c: &crate::coordinator::Coordinator,
) -> Result<Vec<std::sync::Arc<crate::registry::Host>>, String> {
    let marks: std::collections::HashMap<String, Drain> =
        c.shared.all::<Drain>(RecordKind::Drained).map_err(|e| e.to_string())?.into_iter().collect();
    let mut changed = Vec::new();
    for host in c.registry.all() {
        let want = marks.get(&host.name).cloned();
        let differs = host.with(|s| {
            let differs = s.record.drained != want;
            if differs {
                s.record.drained = want.clone();
            }
            differs
        });
        if differs {
            changed.push(host);
        }
    }
    Ok(changed)
}

//! Maintenance (docs/design.md §12): `fleetctl hosts drain NAME` puts a host aside. Rollouts
//! and selector-picked actions (exec, and fleetctl's restart --all and job run) skip it and
//! say so, and its alerts carry `maintenance="true"` ([`crate::alerting::MAINTENANCE`]) so
//! that Alertmanager can inhibit or route them. The mark is part of the host's record,
//! durable before the call answers, and audited.

use tonic::Status;

use crate::audit::entry;
use crate::control::ControlApi;
use crate::store::Drain;

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
        if let Err(e) = self.c.writer.save_host_durably(host.clone()).await {
            host.with(|s| s.record.drained = before);
            let _ = self.c.audit.append(entry(who, action, name, "", "", "failed", &e)).await;
            return Err(Status::unavailable(format!("cannot save the host record, nothing changed: {e}")));
        }
        let _ =
            self.c.audit.append(entry(who, action, name, "", "", "succeeded", reason.as_deref().unwrap_or(""))).await;
        tracing::info!(%who, host = name, action, reason = reason.as_deref().unwrap_or(""), "maintenance");
        Ok(host.summary())
    }
}

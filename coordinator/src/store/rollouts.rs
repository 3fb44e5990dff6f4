//! Rollouts as the store keeps them (`o<id>` records): the engine's state after every step
//! (crate::rollouts drives it), and its protocol form.

use fleet_proto::v1::{Rollout, RolloutHost};
use serde::{Deserialize, Serialize};

/// Rollouts kept in the store (the newest; finished ones beyond this are forgotten).
pub const MAX_ROLLOUTS: usize = 1000;
/// One host of a rollout, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStep {
    /// The host.
    pub host: String,
    /// pending, deploying, healthy, failed, reverting, reverted.
    pub state: String,
    /// Details, one line.
    pub message: String,
    /// The version it had before (empty when none).
    pub previous_version: String,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// When it failed: the newest lines the failed release wrote.
    #[serde(default)]
    pub log_tail: Vec<String>,
}

/// A rollout, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Id.
    pub id: String,
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// Artifact digest.
    pub sha256: String,
    /// Artifact size.
    pub size_bytes: u64,
    /// running, paused, waiting_promotion, reverting, succeeded, failed, rolled_back, aborted.
    pub state: String,
    /// Why it ended badly.
    pub reason: String,
    /// Hosts in order.
    pub hosts: Vec<HostStep>,
    /// Parameters.
    pub max_parallel: u32,
    /// Canary hosts.
    pub canary: u32,
    /// Promote without waiting.
    pub auto_promote: bool,
    /// Probation.
    pub min_healthy_time_ms: u64,
    /// Probation.
    pub healthy_deadline_ms: u64,
    /// Progress deadline.
    pub progress_deadline_ms: u64,
    /// Revert on failure.
    pub auto_revert: bool,
    /// Whether the canaries were promoted.
    pub promoted: bool,
    /// Whether an abort was asked for.
    pub abort_requested: bool,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// Last time a host finished (for the progress deadline).
    pub last_progress_ms: i64,
}

impl RolloutRecord {
    /// Whether the rollout has ended.
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "rolled_back" | "aborted")
    }

    /// The protocol form.
    pub fn to_proto(&self) -> Rollout {
        Rollout {
            id: self.id.clone(),
            service: self.service.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            state: self.state.clone(),
            reason: self.reason.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|h| RolloutHost {
                    host: h.host.clone(),
                    state: h.state.clone(),
                    message: h.message.clone(),
                    previous_version: h.previous_version.clone(),
                    updated_at_ms: h.updated_at_ms,
                    log_tail: h.log_tail.clone(),
                })
                .collect(),
            max_parallel: self.max_parallel,
            canary: self.canary,
            auto_promote: self.auto_promote,
            min_healthy_time_ms: self.min_healthy_time_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
            progress_deadline_ms: self.progress_deadline_ms,
            auto_revert: self.auto_revert,
            created_by: self.created_by.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }
}

//! Rollouts as the store keeps them (`o<id>` records): the engine's state after every step
//! (crate::rollouts drives it), and its protocol form.

use fleet_proto::v1::{Rollout, RolloutHost};
use serde::{Deserialize, Serialize};

/// Rollouts kept in the store (the newest; finished ones beyond this are forgotten).
pub const MAX_ROLLOUTS: usize = 1000;

/// Where a rollout is. Persisted and sent as the snake_case word (`waiting_promotion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Moving hosts.
    Running,
    /// An operator paused it: no host starts.
    Paused,
    /// The canaries are done; `fleetctl rollout resume` promotes it.
    WaitingPromotion,
    /// A host failed or an operator aborted: the hosts moved go back.
    Reverting,
    /// Every host runs the new release.
    Succeeded,
    /// A host failed and nothing was moved back (no auto_revert, or nothing to move).
    Failed,
    /// A host failed and the hosts moved went back.
    RolledBack,
    /// An operator aborted it.
    Aborted,
}

impl RolloutState {
    /// Every result a rollout can end with, for `fleet_rollouts_total{result}`.
    pub const RESULTS: [RolloutState; 4] =
        [RolloutState::Succeeded, RolloutState::Failed, RolloutState::RolledBack, RolloutState::Aborted];

    /// The word, as persisted and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::WaitingPromotion => "waiting_promotion",
            RolloutState::Reverting => "reverting",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Whether a rollout in this state has ended.
    pub fn finished(self) -> bool {
        Self::RESULTS.contains(&self)
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one host of a rollout is. Persisted and sent as the snake_case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// The deploy command is out: the agent fetches, switches and watches the probation.
    Deploying,
    /// The agent committed the new release.
    Healthy,
    /// The deploy (or the revert, see [`HostStep::revert_failed`]) failed.
    Failed,
    /// Going back to the release it had.
    Reverting,
    /// Back on the release it had.
    Reverted,
}

impl StepState {
    /// Every state, in the order `fleet_rollout_hosts{state}` lists them.
    pub const ALL: [StepState; 6] = [
        StepState::Pending,
        StepState::Deploying,
        StepState::Healthy,
        StepState::Failed,
        StepState::Reverting,
        StepState::Reverted,
    ];

    /// The word, as persisted and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Deploying => "deploying",
            StepState::Healthy => "healthy",
            StepState::Failed => "failed",
            StepState::Reverting => "reverting",
            StepState::Reverted => "reverted",
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host of a rollout, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStep {
    /// The host.
    pub host: String,
    /// Where it is.
    pub state: StepState,
    /// Details, one line.
    pub message: String,
    /// Whether moving it back failed (it stays [`StepState::Failed`] on the new release; the
    /// rollout ends naming it).
    #[serde(default)]
    pub revert_failed: bool,
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
    /// The rollout id (`fleetctl rollout status ID`).
    pub id: String,
    /// The service it moves.
    pub service: String,
    /// The version it moves the service to.
    pub version: String,
    /// The sha256 of the release archive, in the artifact store.
    pub sha256: String,
    /// The archive's size in bytes.
    pub size_bytes: u64,
    /// Where it is.
    pub state: RolloutState,
    /// Why it ended badly.
    pub reason: String,
    /// Hosts in order.
    pub hosts: Vec<HostStep>,
    /// Hosts deployed at once.
    pub max_parallel: u32,
    /// How many of the first hosts are canaries (deployed before the others, then promoted).
    pub canary: u32,
    /// Promote once the canaries are done, without waiting for `rollout resume`.
    pub auto_promote: bool,
    /// How long a host must stay healthy on the new release before it counts as done.
    pub min_healthy_time_ms: u64,
    /// How long a host has to become healthy on the new release.
    pub healthy_deadline_ms: u64,
    /// How long the rollout may go without a host finishing before it fails.
    pub progress_deadline_ms: u64,
    /// Move the hosts already changed back when the rollout fails or is aborted.
    pub auto_revert: bool,
    /// Whether the canaries were promoted.
    pub promoted: bool,
    /// Whether an abort was asked for.
    pub abort_requested: bool,
    /// The identity that started it.
    pub created_by: String,
    /// When it was started (ms since the epoch).
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
    /// Last time a host finished (for the progress deadline).
    pub last_progress_ms: i64,
    /// Hosts left out, each "<host>: <why>" (drained).
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl RolloutRecord {
    /// Whether the rollout has ended.
    pub fn finished(&self) -> bool {
        self.state.finished()
    }

    /// The protocol form.
    pub fn to_proto(&self) -> Rollout {
        Rollout {
            id: self.id.clone(),
            service: self.service.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            state: self.state.to_string(),
            reason: self.reason.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|h| RolloutHost {
                    host: h.host.clone(),
                    state: h.state.to_string(),
                    message: h.message.clone(),
                    previous_version: h.previous_version.clone(),
                    updated_at_ms: h.updated_at_ms,
                    log_tail: h.log_tail.clone(),
                    revert_failed: h.revert_failed,
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
            skipped: self.skipped.clone(),
        }
    }
}

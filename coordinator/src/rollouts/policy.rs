//! What a rollout does next, decided from its record and the time alone: no I/O, no clock
//! of its own, so that every decision is a unit test (the engine in the parent module does
//! the sending and saving).

use std::time::Duration;

use crate::store::{RolloutRecord, RolloutState, StepState};

/// What a rollout does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Move the hosts already changed back (auto_revert), for this reason.
    Revert(String),
    /// End as aborted: nothing to move back.
    Aborted,
    /// Paused or waiting for promotion: nothing happens until an operator acts.
    WaitForOperator,
    /// In the middle of moving hosts back.
    Reverting,
    /// The canaries are done: promote (auto_promote).
    Promote,
    /// The canaries are done: wait for `rollout resume`.
    AwaitPromotion,
    /// Every host is done.
    Succeeded,
    /// No host finished within the progress deadline.
    Fail(String),
    /// Start (or go on with) these hosts, by index, at most max_parallel.
    Deploy(Vec<usize>),
    /// Hosts are busy and none may start: wait for a change.
    Idle,
}

/// The next step of `r` at `now_ms` (the rollout has not ended).
pub fn next_step(r: &RolloutRecord, now_ms: i64) -> Step {
    if r.abort_requested && r.state != RolloutState::Reverting {
        if r.auto_revert && r.hosts.iter().any(|h| h.state == StepState::Healthy || h.state == StepState::Deploying) {
            return Step::Revert("aborted by an operator".into());
        }
        return Step::Aborted;
    }
    match r.state {
        RolloutState::Paused | RolloutState::WaitingPromotion => return Step::WaitForOperator,
        RolloutState::Reverting => return Step::Reverting,
        _ => {}
    }
    let in_canary = |i: usize| (i as u32) < r.canary;
    let canaries_done =
        r.hosts.iter().enumerate().filter(|(i, _)| in_canary(*i)).all(|(_, h)| h.state == StepState::Healthy);
    if r.canary > 0 && canaries_done && !r.promoted {
        return if r.auto_promote { Step::Promote } else { Step::AwaitPromotion };
    }
    if r.hosts.iter().all(|h| h.state == StepState::Healthy) {
        return Step::Succeeded;
    }
    // Measured from the last host that finished, or from the start, or from the last resume:
    // time spent waiting for an operator does not count.
    if now_ms - r.last_progress_ms > r.progress_deadline_ms as i64 {
        return Step::Fail(format!(
            "no host finished within the progress deadline of {}",
            fleet_common::human_duration(Duration::from_millis(r.progress_deadline_ms))
        ));
    }
    let eligible: Vec<usize> = r
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            (h.state == StepState::Pending || h.state == StepState::Deploying)
                && (r.promoted || r.canary == 0 || in_canary(*i))
        })
        .map(|(i, _)| i)
        .take(r.max_parallel.max(1) as usize)
        .collect();
    if eligible.is_empty() { Step::Idle } else { Step::Deploy(eligible) }
}

/// How a rollout that was moving its hosts back ends: aborted (when an operator asked) or
/// rolled back, with the reason it failed and the hosts that could not be moved back.
pub fn revert_outcome(r: &RolloutRecord) -> (RolloutState, String) {
    let stuck: Vec<&str> = r.hosts.iter().filter(|h| h.revert_failed).map(|h| h.host.as_str()).collect();
    let end = if r.abort_requested { RolloutState::Aborted } else { RolloutState::RolledBack };
    let reason = if stuck.is_empty() {
        r.reason.clone()
    } else {
        format!("{}; could not revert {}", r.reason, stuck.join(", "))
    };
    (end, reason)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::HostStep;

    /// A running rollout of api 2.0 to `hosts`, none started.
    pub(in crate::rollouts) fn rollout(hosts: &[&str], canary: u32, max_parallel: u32) -> RolloutRecord {
        RolloutRecord {
            id: "r1".into(),
            service: "api".into(),
            version: "2.0".into(),
            sha256: "x".into(),
            size_bytes: 1,
            state: RolloutState::Running,
            reason: String::new(),
            hosts: hosts
                .iter()
                .map(|h| HostStep {
                    host: h.to_string(),
                    state: StepState::Pending,
                    message: String::new(),
                    revert_failed: false,
                    previous_version: "1.0".into(),
                    updated_at_ms: 0,
                    log_tail: Vec::new(),
                })
                .collect(),
            max_parallel,
            canary,
            auto_promote: false,
            min_healthy_time_ms: 10_000,
            healthy_deadline_ms: 300_000,
            progress_deadline_ms: 600_000,
            auto_revert: true,
            promoted: canary == 0,
            abort_requested: false,
            created_by: "ops".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_progress_ms: 0,
            skipped: Vec::new(),
        }
    }

    #[test]
    fn canaries_go_first_and_wait_for_promotion() {
        let mut r = rollout(&["a", "b", "c"], 1, 2);
        assert_eq!(next_step(&r, 1), Step::Deploy(vec![0]), "only the canary");
        r.hosts[0].state = StepState::Healthy;
        assert_eq!(next_step(&r, 1), Step::AwaitPromotion);
        r.auto_promote = true;
        assert_eq!(next_step(&r, 1), Step::Promote);
        r.promoted = true;
        assert_eq!(next_step(&r, 1), Step::Deploy(vec![1, 2]), "max_parallel at a time");
        r.hosts[1].state = StepState::Healthy;
        r.hosts[2].state = StepState::Healthy;
        assert_eq!(next_step(&r, 1), Step::Succeeded);
    }

    #[test]
    fn hosts_go_max_parallel_at_a_time_and_an_interrupted_host_is_taken_up_again() {
        let mut r = rollout(&["a", "b", "c"], 0, 1);
        assert_eq!(next_step(&r, 1), Step::Deploy(vec![0]));
        // A coordinator restarted while a was deploying asks a again (the agent's journal
        // answers with the outcome).
        r.hosts[0].state = StepState::Deploying;
        assert_eq!(next_step(&r, 1), Step::Deploy(vec![0]));
        r.hosts[0].state = StepState::Healthy;
        assert_eq!(next_step(&r, 1), Step::Deploy(vec![1]));
    }

    #[test]
    fn the_progress_deadline_counts_from_the_last_progress() {
        let mut r = rollout(&["a", "b"], 0, 1);
        assert_eq!(next_step(&r, 599_000), Step::Deploy(vec![0]));
        assert!(matches!(next_step(&r, 601_000), Step::Fail(m) if m.contains("progress deadline of 10m")));
        // A resume (or a host finishing) starts it again.
        r.last_progress_ms = 600_000;
        assert_eq!(next_step(&r, 1_000_000), Step::Deploy(vec![0]));
        // Waiting for an operator is not progress that can run late.
        r.state = RolloutState::WaitingPromotion;
        assert_eq!(next_step(&r, 10_000_000), Step::WaitForOperator);
    }

    #[test]
    fn an_abort_moves_back_what_was_moved_unless_told_not_to() {
        let mut r = rollout(&["a", "b"], 0, 1);
        r.abort_requested = true;
        assert_eq!(next_step(&r, 1), Step::Aborted, "nothing moved yet");
        r.hosts[0].state = StepState::Healthy;
        assert_eq!(next_step(&r, 1), Step::Revert("aborted by an operator".into()));
        r.auto_revert = false;
        assert_eq!(next_step(&r, 1), Step::Aborted);
        r.auto_revert = true;
        r.state = RolloutState::Reverting;
        assert_eq!(next_step(&r, 1), Step::Reverting, "an abort while reverting goes on reverting");
    }

    #[test]
    fn a_paused_rollout_starts_nothing() {
        let mut r = rollout(&["a", "b"], 0, 2);
        r.state = RolloutState::Paused;
        assert_eq!(next_step(&r, 1), Step::WaitForOperator);
    }

    #[test]
    fn a_revert_ends_rolled_back_or_aborted_naming_the_hosts_it_could_not_move_back() {
        let mut r = rollout(&["a", "b", "c"], 0, 1);
        r.reason = "b: unhealthy".into();
        assert_eq!(revert_outcome(&r), (RolloutState::RolledBack, "b: unhealthy".into()));
        r.hosts[0].state = StepState::Failed;
        r.hosts[0].revert_failed = true;
        r.hosts[1].state = StepState::Failed;
        assert_eq!(revert_outcome(&r), (RolloutState::RolledBack, "b: unhealthy; could not revert a".into()));
        r.abort_requested = true;
        assert_eq!(revert_outcome(&r).0, RolloutState::Aborted);
    }
}

//! Scheduled jobs as operators see them (docs/design.md §12): listed from the agents' newest
//! reports, run on request through the agent (audited like service commands), and their
//! history asked of the agent, which keeps it. The ControlService handlers of
//! [`crate::control`] call these.

use std::time::Duration;

use fleet_proto::v1::command::Action as CmdAction;
use fleet_proto::v1::{
    Command, CommandState, GetJobHistoryRequest, GetJobHistoryResponse, HostJob, JobHistoryCommand, ListJobsRequest,
    ListJobsResponse, RunJobCommand, RunJobRequest, RunJobResponse,
};
use tonic::Status;

use crate::commands::new_id;
use crate::control::{ControlApi, MAX_COMMAND_TIMEOUT, offline_error};
use crate::registry::Host;

/// How long `RunJob` waits by default for a run to start.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `RunJob` waits by default for a run to end.
const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a history request may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(15);

/// NOT_FOUND unless `host`'s newest report lists `job`.
fn known_job(host: &Host, job: &str) -> Result<(), Status> {
    let known = host.with(|s| s.latest.as_ref().map(|l| l.jobs.iter().any(|j| j.name == job)));
    if known == Some(false) {
        return Err(Status::not_found(format!(
            "{} has no job named \"{job}\"; `fleetctl jobs --host {}` lists them",
            host.name, host.name
        )));
    }
    Ok(())
}

impl ControlApi {
    /// ListJobs.
    pub(crate) fn jobs_list(&self, r: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        let mut jobs = Vec::new();
        for h in self.select(&r.host, &r.selector)? {
            let sum = h.summary();
            for j in sum.jobs {
                jobs.push(HostJob { host: sum.name.clone(), host_online: sum.online, job: Some(j) });
            }
        }
        Ok(ListJobsResponse { jobs })
    }

    /// RunJob.
    pub(crate) async fn job_run(&self, who: &str, r: RunJobRequest) -> Result<RunJobResponse, Status> {
        let host = self.host(&r.host)?;
        if host.command_sender().is_none() {
            return Err(offline_error(&host));
        }
        known_job(&host, &r.job)?;
        let timeout = match r.timeout_ms {
            0 if r.wait => DEFAULT_WAIT_TIMEOUT,
            0 => DEFAULT_START_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_COMMAND_TIMEOUT),
        };
        let id = if r.request_id.is_empty() { new_id() } else { r.request_id.clone() };
        let command = Command {
            id: id.clone(),
            issued_at_ms: fleet_common::now_ms(),
            requested_by: who.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            trace_context: Default::default(),
            action: Some(CmdAction::RunJob(RunJobCommand { job: r.job.clone(), wait: r.wait })),
        };
        let action = if r.wait { "job run --wait" } else { "job run" };
        let look = format!("fleetctl job history {} {}", r.host, r.job);
        let u = self.audited(who, action, &host, &r.job, command, timeout, &look).await?;
        let run = u.job_runs.into_iter().next_back();
        Ok(RunJobResponse { command_id: id, state: u.state, message: u.message, run })
    }

    /// GetJobHistory.
    pub(crate) async fn job_history(&self, r: GetJobHistoryRequest) -> Result<GetJobHistoryResponse, Status> {
        let host = self.host(&r.host)?;
        if host.command_sender().is_none() {
            return Err(offline_error(&host));
        }
        known_job(&host, &r.job)?;
        let command = Command {
            id: new_id(),
            issued_at_ms: fleet_common::now_ms(),
            action: Some(CmdAction::JobHistory(JobHistoryCommand { job: r.job.clone(), limit: r.limit })),
            ..Default::default()
        };
        let u = self.ask(&host, command, HISTORY_TIMEOUT).await?;
        match CommandState::try_from(u.state) {
            Ok(CommandState::Succeeded) => Ok(GetJobHistoryResponse { runs: u.job_runs }),
            _ => Err(Status::not_found(u.message)),
        }
    }
}

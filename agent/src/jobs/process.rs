//! The processes of job runs: each attempt starts the job's command in its own process group
//! (as a service is started, [`crate::supervisor::Launch`]), copies its output into the job's
//! log, and is stopped like a service: the stop signal to the group, KILL after stop_timeout.
//! Whatever the command left running in its group when it ended is killed with it, as
//! systemd does for a finished unit. A pid file per attempt lets a restarted agent stop what a
//! killed one left behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tokio_util::sync::CancellationToken;

use super::scheduler::{AttemptFuture, Ended, Runner};
use crate::config::JobConfig;
use crate::supervisor::logs::LogFile;
use crate::supervisor::{Launch, Supervisor, describe_exit, kill_group, pidfile, procinfo, signal_by_name};

/// How long the output of an ended attempt may take to reach the log.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs job attempts as processes.
#[derive(Debug)]
pub struct ProcessRunner {
    /// The agent's name (FLEET_AGENT).
    pub agent: String,
    /// Where pid files go (the supervisor's run directory).
    pub run_dir: PathBuf,
    /// The environment before the job's own.
    pub base_env: Vec<(String, String)>,
    /// The services, for `after`.
    pub supervisor: Arc<Supervisor>,
}

/// How often an attempt looks at the services it waits for.
const AFTER_POLL: Duration = Duration::from_millis(250);

/// Waits until every service of `after` runs and is healthy; Err naming the one still
/// awaited when `stop` is cancelled first.
async fn wait_for(
    supervisor: &Supervisor,
    after: &[String],
    log: &LogFile,
    stop: &CancellationToken,
) -> Result<(), String> {
    for name in after {
        let up = || supervisor.get(name).map(|h| h.report()).is_some_and(|s| s.state == "running" && s.healthy);
        if up() {
            continue;
        }
        log.write("fleet", &format!("waiting for {name} to run and be healthy (after)"));
        while !up() {
            tokio::select! {
                _ = stop.cancelled() => return Err(format!("{name} was not running and healthy (after = [\"{name}\"])")),
                _ = tokio::time::sleep(AFTER_POLL) => {}
            }
        }
    }
    Ok(())
}

impl Runner for ProcessRunner {
    fn attempt(
        &self,
        job: &JobConfig,
        log: &Arc<LogFile>,
        run: u64,
        attempt: u32,
        stop: CancellationToken,
    ) -> AttemptFuture {
        let (job, log, agent, run_dir, base_env) =
            (job.clone(), log.clone(), self.agent.clone(), self.run_dir.clone(), self.base_env.clone());
        let supervisor = self.supervisor.clone();
        Box::pin(async move {
            wait_for(&supervisor, &job.after, &log, &stop).await?;
            let (run_s, attempt_s) = (run.to_string(), attempt.to_string());
            let (mut child, program) = Launch {
                command: &job.command,
                args: &job.args,
                env: &job.env,
                workdir: job.workdir.clone().unwrap_or_else(|| PathBuf::from("/")),
                user: job.user.as_deref(),
                fleet_env: &[
                    ("FLEET_JOB", &job.name),
                    ("FLEET_AGENT", &agent),
                    ("FLEET_JOB_RUN", &run_s),
                    ("FLEET_JOB_ATTEMPT", &attempt_s),
                ],
            }
            .spawn(&base_env)
            .inspect_err(|e| log.write("fleet", &format!("run {run} attempt {attempt} could not start: {e}")))?;
            let pid = child.id().ok_or("the process ended before it could be watched")?;
            let pid_name = format!("{}@{pid}", job.name);
            if let Some(stat) = procinfo::stat(pid) {
                pidfile::write(&run_dir, &pid_name, pid, stat.start_ticks);
            }
            let mut pumps = Vec::with_capacity(2);
            if let Some(out) = child.stdout.take() {
                pumps.push(tokio::spawn(crate::supervisor::service::pump(out, log.clone(), "stdout")));
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(tokio::spawn(crate::supervisor::service::pump(err, log.clone(), "stderr")));
            }
            log.write(
                "fleet",
                &format!(
                    "run {run} attempt {attempt} started (pid {pid}): {} {}",
                    program.display(),
                    job.args.join(" ")
                ),
            );
            let status = tokio::select! {
                s = child.wait() => s,
                _ = stop.cancelled() => {
                    kill_group(pid, signal_by_name(&job.stop_signal));
                    match tokio::time::timeout(job.stop_timeout, child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            log.write("fleet", &format!(
                                "run {run} did not stop within stop_timeout {}; killing it and its children",
                                fleet_common::human_duration_ms(job.stop_timeout)
                            ));
                            kill_group(pid, Signal::KILL);
                            child.wait().await
                        }
                    }
                }
            };
            // Whatever it started and left in its group ends with it.
            kill_group(pid, Signal::KILL);
            let _ = tokio::time::timeout(DRAIN, futures_util::future::join_all(pumps)).await;
            pidfile::remove(&run_dir, &pid_name);
            let status = status.map_err(|e| format!("cannot wait for pid {pid}: {e}"))?;
            use std::os::unix::process::ExitStatusExt;
            let message = describe_exit(status);
            log.write("fleet", &format!("run {run} attempt {attempt} {message}"));
            Ok(Ended { exit_code: status.code(), signal: status.signal(), message, pid })
        })
    }
}

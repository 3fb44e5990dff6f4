//! Scheduled jobs (docs/design.md §12): one task per `[[jobs]]` entry ([`scheduler`]), whose
//! attempts run as processes ([`process`]) when the [`crate::schedule`] has them due, on an
//! operator's request, or once after a downtime (`catch_up`). Each job's record (counters and
//! a bounded history of runs) is kept in the agent store; its state goes out in every report,
//! which is where `fleet_job_*` and `fleetctl jobs` come from.

pub mod process;
pub mod scheduler;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_proto::v1::{JobRun, JobStatus};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::JobConfig;
use crate::store::{JobRecord, Outbox, RunRecord};
use crate::supervisor::logs::LogFile;
pub use scheduler::MAX_PARALLEL_RUNS;
use scheduler::{Clock, JobCtl, Parts, Persist, Runner, Trigger};

/// Keeps job records in the agent store.
struct StorePersist(Arc<Outbox>);

impl Persist for StorePersist {
    fn save(&self, job: &str, rec: JobRecord) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let (store, job) = (self.0.clone(), job.to_string());
        Box::pin(async move { store.save_job(&job, &rec).await.map_err(|e| e.to_string()) })
    }
}

/// The agent's jobs.
#[derive(Debug)]
pub struct Jobs {
    jobs: Vec<Arc<JobCtl>>,
    tasks: TaskTracker,
}

/// A run as the wire carries it.
pub fn run_to_proto(job: &str, r: &RunRecord) -> JobRun {
    JobRun {
        job: job.to_string(),
        run: r.run,
        attempt: r.attempt,
        trigger: r.trigger.clone(),
        due_ms: r.due_ms,
        started_ms: r.started_ms,
        ended_ms: r.ended_ms,
        result: r.result.clone(),
        exit_code: r.exit_code,
        signal: r.signal.unwrap_or(0),
        message: r.message.clone(),
        pid: r.pid,
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Jobs {
    /// Starts every job of `configs`, their records read from `store`; records of jobs no
    /// longer configured are forgotten. Logs go under `data_dir/logs`, pid files under
    /// `data_dir/run`.
    pub fn start(
        agent: &str,
        data_dir: &Path,
        configs: &[JobConfig],
        store: Arc<Outbox>,
        supervisor: Arc<crate::supervisor::Supervisor>,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Jobs> {
        let log_dir = data_dir.join("logs");
        let run_dir = data_dir.join("run");
        std::fs::create_dir_all(&log_dir)?;
        std::fs::create_dir_all(&run_dir)?;
        let mut records: std::collections::HashMap<String, JobRecord> = match store.jobs() {
            Ok(r) => r.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job records; every job's history starts anew");
                Default::default()
            }
        };
        for name in records.keys().filter(|n| !configs.iter().any(|c| &c.name == *n)) {
            tracing::info!(job = %name, "forgetting the record of a job that is no longer configured");
            if let Err(e) = store.remove_job(name) {
                tracing::warn!(job = %name, error = %e, "cannot forget the job's record");
            }
        }
        let runner: Arc<dyn Runner> = Arc::new(process::ProcessRunner {
            agent: agent.to_string(),
            run_dir,
            base_env: crate::supervisor::base_env(),
            supervisor,
        });
        let persist: Arc<dyn Persist> = Arc::new(StorePersist(store));
        let clock: Arc<dyn Clock> = Arc::new(scheduler::WallClock);
        let tasks = TaskTracker::new();
        let mut jobs = Vec::with_capacity(configs.len());
        for c in configs {
            let log = LogFile::open(&log_dir, &c.name, c.log_max_bytes, c.log_backups)?;
            let (ctl, rx) = JobCtl::new(Parts {
                config: c.clone(),
                log,
                record: records.remove(&c.name).unwrap_or_default(),
                clock: clock.clone(),
                runner: runner.clone(),
                persist: persist.clone(),
                changed: changed.clone(),
            });
            tasks.spawn(ctl.clone().run(rx, shutdown.clone()));
            jobs.push(ctl);
        }
        tasks.close();
        Ok(Jobs { jobs, tasks })
    }

    /// No jobs (an agent without `[[jobs]]`, and tests).
    pub fn none() -> Jobs {
        let tasks = TaskTracker::new();
        tasks.close();
        Jobs { jobs: Vec::new(), tasks }
    }

    /// The job named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<JobCtl>> {
        self.jobs.iter().find(|j| j.config.name == name)
    }

    /// Every job's name.
    pub fn names(&self) -> Vec<&str> {
        self.jobs.iter().map(|j| j.config.name.as_str()).collect()
    }

    /// Resolves once every job's task ended (after shutdown: their runs are stopped).
    pub async fn wait(&self) {
        self.tasks.wait().await
    }

    /// The longest time stopping a job's run may take.
    pub fn max_stop_timeout(&self) -> Duration {
        self.jobs.iter().map(|j| j.config.stop_timeout).max().unwrap_or_default()
    }

    /// Every job's state, for a report.
    pub fn statuses(&self) -> Vec<JobStatus> {
        self.jobs
            .iter()
            .map(|j| {
                let rec = j.record();
                let c = &j.config;
                JobStatus {
                    name: c.name.clone(),
                    schedule: c.schedule.text().to_string(),
                    timezone: c.schedule.zone().as_str().to_string(),
                    concurrency: c.concurrency.as_str().to_string(),
                    running: j.running() as u32,
                    last_run: rec.last_finished.as_ref().map(|r| run_to_proto(&c.name, r)),
                    last_success_ms: rec.last_success_ms,
                    next_run_ms: j.next_due().map(ms).unwrap_or(0),
                    period_ms: j.period().as_millis() as u64,
                    runs_total: scheduler::RESULTS
                        .iter()
                        .map(|r| (r.to_string(), rec.runs_total.get(*r).copied().unwrap_or(0)))
                        .collect(),
                }
            })
            .collect()
    }

    /// Runs job `name` now for `by`, by its concurrency policy: the first attempt once it
    /// started, or (`wait`) the final attempt once the run is over. Err says why not (no such
    /// job, skipped because a run is in progress, the job's queue is full).
    pub async fn run_now(&self, name: &str, by: &str, wait: bool) -> Result<RunRecord, String> {
        let job = self.get(name).ok_or_else(|| format!("no job named \"{name}\" on this host"))?;
        let (started_tx, started) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel();
        let trigger =
            Trigger::Manual { by: by.to_string(), started: started_tx, finished: wait.then_some(finished_tx) };
        job.triggers()
            .try_send(trigger)
            .map_err(|_| format!("job \"{name}\" has too many runs asked for already; retry shortly"))?;
        let first = started.await.map_err(|_| "the agent is stopping".to_string())??;
        if !wait {
            return Ok(first);
        }
        finished.await.map_err(|_| "the agent stopped before the run ended".to_string())
    }

    /// The newest `limit` attempts of job `name`, oldest first.
    pub fn history(&self, name: &str, limit: usize) -> Option<Vec<RunRecord>> {
        let rec = self.get(name)?.record();
        let skip = rec.history.len().saturating_sub(limit);
        Some(rec.history.into_iter().skip(skip).collect())
    }
}

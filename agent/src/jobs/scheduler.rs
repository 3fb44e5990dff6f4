//! One job's life: it waits for the job's due times, starts runs by its concurrency policy,
//! stops an attempt at its timeout, retries a failed attempt after a doubling delay, makes up
//! (once) a run missed while the agent was down when `catch_up` says so, and keeps the job's
//! record (counters and history) in the store.
//!
//! Time comes from a [`Clock`], attempts from a [`Runner`] and persistence goes through
//! [`Persist`], so that the timing logic is tested on tokio's paused clock (the tests below)
//! while the processes are tested end to end (integration-tests/tests/jobs.rs).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Concurrency, JobConfig, MAX_RETRY_DELAY};
use crate::store::{JobRecord, MAX_JOB_HISTORY, RunRecord};
use crate::supervisor::logs::LogFile;

/// The most runs of one job (`concurrency = "allow"`) at once; more are skipped.
pub const MAX_PARALLEL_RUNS: usize = 16;
/// Manual runs queued towards one job.
const TRIGGER_QUEUE: usize = 16;
/// The results an attempt can have, as `fleet_job_runs_total{result}` counts them.
pub const RESULTS: [&str; 5] = ["succeeded", "failed", "timed_out", "killed", "skipped"];

/// Where the time comes from.
pub trait Clock: Send + Sync {
    /// Now, on the wall clock.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// How an attempt's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// "exited with status 3", "was killed by signal 15 (TERM)".
    pub message: String,
    /// Its process id.
    pub pid: u32,
}

/// An attempt in progress: its end, or why it could not start.
pub type AttemptFuture = Pin<Box<dyn Future<Output = Result<Ended, String>> + Send>>;

/// Runs attempts of a job.
pub trait Runner: Send + Sync {
    /// Starts attempt `attempt` of run `run` of `job`, resolving once its process ended. Once
    /// `stop` is cancelled the runner stops the process (the stop signal to its group, KILL
    /// after stop_timeout) and resolves.
    fn attempt(
        &self,
        job: &JobConfig,
        log: &Arc<LogFile>,
        run: u64,
        attempt: u32,
        stop: CancellationToken,
    ) -> AttemptFuture;
}

/// Keeps a job's record durably.
pub trait Persist: Send + Sync {
    /// Saves `rec` as the record of job `job`.
    fn save(&self, job: &str, rec: JobRecord) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// Why a run is wanted.
#[derive(Debug)]
pub enum Trigger {
    /// The schedule had it due at `due`.
    Schedule {
        /// The due time.
        due: SystemTime,
    },
    /// It was due at `due` while the agent was down (`catch_up = true`).
    CatchUp {
        /// The newest missed due time.
        due: SystemTime,
        /// How many due times were missed.
        missed: u64,
    },
    /// An operator asked for it (`fleetctl job run`).
    Manual {
        /// Who asked.
        by: String,
        /// Gets the first attempt once it started, or why the run was not started.
        started: oneshot::Sender<Result<RunRecord, String>>,
        /// Gets the final attempt once the run is over, when the caller waits for it.
        finished: Option<oneshot::Sender<RunRecord>>,
    },
}

/// A run in progress.
#[derive(Debug)]
struct Active {
    run: u64,
    started_ms: i64,
    stop: CancellationToken,
    /// Why it is being stopped, once it is (replaced, the agent stopping).
    why: Option<String>,
}

#[derive(Debug)]
struct JobState {
    record: JobRecord,
    running: Vec<Active>,
    next_due: Option<SystemTime>,
}

/// One job: its config, log and state, and the task that runs it.
pub struct JobCtl {
    /// Its config.
    pub config: JobConfig,
    /// Its captured output (every run's, with the agent's notes).
    pub log: Arc<LogFile>,
    clock: Arc<dyn Clock>,
    runner: Arc<dyn Runner>,
    persist: Arc<dyn Persist>,
    state: Mutex<JobState>,
    /// Notified whenever a run ends.
    ended: Notify,
    /// Notified when something operators see changed (the agent reports early).
    changed: Arc<Notify>,
    triggers: mpsc::Sender<Trigger>,
    /// The schedule's period, from when the agent started.
    period: Duration,
}

impl std::fmt::Debug for JobCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCtl").field("name", &self.config.name).finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch.
fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Sleeps until the wall clock reads `t`, looking at it again at least every 30 s, so that a
/// clock set forwards or back is followed.
async fn sleep_until_wall(clock: &dyn Clock, t: SystemTime) {
    loop {
        let Ok(left) = t.duration_since(clock.now()) else { return };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(30))).await;
    }
}

/// What a job's task is given.
pub struct Parts {
    /// The job's config.
    pub config: JobConfig,
    /// Its log.
    pub log: Arc<LogFile>,
    /// Its record as the store had it (default for a new job).
    pub record: JobRecord,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// What runs attempts.
    pub runner: Arc<dyn Runner>,
    /// Where its record is kept.
    pub persist: Arc<dyn Persist>,
    /// Notified when operators would see a change.
    pub changed: Arc<Notify>,
}

impl JobCtl {
    /// The job and the receiving end of its triggers (for [`JobCtl::run`]).
    pub fn new(p: Parts) -> (Arc<JobCtl>, mpsc::Receiver<Trigger>) {
        let now = p.clock.now();
        let mut record = p.record;
        if record.since_ms == 0 {
            record.since_ms = ms(now);
        }
        // Attempts that were running when the agent stopped (or was killed) are over.
        let mut lost = 0;
        for r in record.history.iter_mut().filter(|r| r.ended_ms == 0) {
            r.ended_ms = r.started_ms;
            r.result = "killed".into();
            r.message = format!("the agent stopped while it ran (pid {})", r.pid);
            lost += 1;
        }
        *record.runs_total.entry("killed".into()).or_default() += lost;
        let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
        let period = p.config.schedule.period(now);
        let ctl = JobCtl {
            config: p.config,
            log: p.log,
            clock: p.clock,
            runner: p.runner,
            persist: p.persist,
            state: Mutex::new(JobState { record, running: Vec::new(), next_due: None }),
            ended: Notify::new(),
            changed: p.changed,
            triggers: tx,
            period,
        };
        (Arc::new(ctl), rx)
    }

    /// Where manual runs are asked for.
    pub fn triggers(&self) -> &mpsc::Sender<Trigger> {
        &self.triggers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().expect("job state lock")
    }

    /// The job's record as it stands.
    pub fn record(&self) -> JobRecord {
        self.lock().record.clone()
    }

    /// Runs in progress now.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// When the schedule next has it due.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.lock().next_due
    }

    /// How long the job goes between runs, at most.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Saves the record; a failure is logged (the run goes on).
    async fn save(&self) {
        let rec = self.lock().record.clone();
        if let Err(e) = self.persist.save(&self.config.name, rec).await {
            tracing::error!(job = %self.config.name, error = %e, "cannot save the job's record");
        }
        self.changed.notify_one();
    }

    /// Adds or updates (same run and attempt) a history entry, keeping the newest.
    fn put_history(st: &mut JobState, rec: &RunRecord) {
        let h = &mut st.record.history;
        if let Some(e) = h.iter_mut().rev().find(|e| e.run == rec.run && e.attempt == rec.attempt) {
            *e = rec.clone();
        } else {
            h.push_back(rec.clone());
            while h.len() > MAX_JOB_HISTORY {
                h.pop_front();
            }
        }
    }

    /// The job's task: schedule, catch-up and manual runs until `shutdown`, then every run in
    /// progress is stopped.
    pub async fn run(self: Arc<Self>, mut triggers: mpsc::Receiver<Trigger>, shutdown: CancellationToken) {
        let runs = TaskTracker::new();
        self.catch_up(&runs).await;
        loop {
            let due = self.config.schedule.next_after(self.clock.now());
            self.lock().next_due = due;
            let wait = async {
                match due {
                    Some(d) => sleep_until_wall(&*self.clock, d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait => {
                    let due = due.expect("a due time was waited for");
                    self.fire(Trigger::Schedule { due }, &runs).await;
                }
                Some(t) = triggers.recv() => self.fire(t, &runs).await,
            }
        }
        self.stop_all("the agent stopped");
        runs.close();
        runs.wait().await;
    }

    /// Stops every run in progress, saying why.
    fn stop_all(&self, why: &str) {
        let mut st = self.lock();
        for a in &mut st.running {
            a.why.get_or_insert_with(|| why.to_string());
            a.stop.cancel();
        }
    }

    /// At start: a due time missed while the agent was down is made up once (catch_up), or
    /// noted in the job's log.
    async fn catch_up(self: &Arc<Self>, runs: &TaskTracker) {
        let now = self.clock.now();
        let base = {
            let st = self.lock();
            st.record.last_due_ms.max(st.record.since_ms)
        };
        let base = UNIX_EPOCH + Duration::from_millis(base.max(0) as u64);
        let mut missed = 0u64;
        let mut newest = None;
        let mut t = base;
        while let Some(n) = self.config.schedule.next_after(t) {
            if n > now || missed >= 100_000 {
                break;
            }
            missed += 1;
            newest = Some(n);
            t = n;
        }
        let Some(due) = newest else { return };
        if self.config.catch_up {
            self.log.write(
                "fleet",
                &format!("{missed} run(s) came due while the agent was down; making up one (catch_up = true)"),
            );
            self.fire(Trigger::CatchUp { due, missed }, runs).await;
        } else {
            self.log.write(
                "fleet",
                &format!(
                    "{missed} run(s) came due while the agent was down, the newest at {}; not made up (catch_up = false)",
                    rfc3339(due)
                ),
            );
            self.lock().record.last_due_ms = ms(due);
            self.save().await;
        }
    }

    /// Starts a run for `trigger`, by the concurrency policy.
    async fn fire(self: &Arc<Self>, trigger: Trigger, runs: &TaskTracker) {
        let (what, due, by, started, finished) = match trigger {
            Trigger::Schedule { due } => ("schedule".to_string(), Some(due), None, None, None),
            Trigger::CatchUp { due, missed } => {
                (format!("catch-up ({missed} missed, newest due {})", rfc3339(due)), Some(due), None, None, None)
            }
            Trigger::Manual { by, started, finished } => {
                (format!("manual ({by})"), None, Some(by), Some(started), finished)
            }
        };
        let policy = self.config.concurrency;
        let conflict = {
            let st = self.lock();
            st.running.first().map(|a| (a.run, a.started_ms, st.running.len()))
        };
        if let Some((run, started_ms, count)) = conflict {
            let since = rfc3339(UNIX_EPOCH + Duration::from_millis(started_ms.max(0) as u64));
            let skip = match policy {
                Concurrency::Forbid => {
                    Some(format!("skipped: run {run} (started {since}) is still running and concurrency is \"forbid\""))
                }
                Concurrency::Allow if count >= MAX_PARALLEL_RUNS => {
                    Some(format!("skipped: {count} runs are running already, the most one job may have"))
                }
                Concurrency::Allow => None,
                Concurrency::Replace => {
                    self.replace_running().await;
                    None
                }
            };
            if let Some(message) = skip {
                self.skip(&what, due, message.clone()).await;
                if let Some(s) = started {
                    let _ = s.send(Err(message));
                }
                return;
            }
        }
        let (run, stop) = {
            let mut st = self.lock();
            st.record.last_run += 1;
            if let Some(d) = due {
                st.record.last_due_ms = ms(d);
            }
            let run = st.record.last_run;
            let stop = CancellationToken::new();
            st.running.push(Active { run, started_ms: ms(self.clock.now()), stop: stop.clone(), why: None });
            (run, stop)
        };
        if let Some(by) = &by {
            tracing::info!(job = %self.config.name, run, %by, "running a job on request");
        }
        let this = self.clone();
        runs.spawn(async move {
            this.run_attempts(run, what, due.map(ms).unwrap_or(0), stop, started, finished).await;
        });
    }

    /// Stops the runs in progress for a new one (`concurrency = "replace"`) and waits, up to
    /// their stop timeout and a little more, for them to end.
    async fn replace_running(&self) {
        let next = self.lock().record.last_run + 1;
        self.stop_all(&format!("replaced by run {next} (concurrency = \"replace\")"));
        let deadline = tokio::time::Instant::now() + self.config.stop_timeout + Duration::from_secs(5);
        loop {
            let ended = self.ended.notified();
            if self.lock().running.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                self.log.write("fleet", "the replaced run has not ended yet; starting the new one anyway");
                return;
            }
        }
    }

    /// Records a skipped run.
    async fn skip(&self, what: &str, due: Option<SystemTime>, message: String) {
        self.log.write("fleet", &message);
        {
            let mut st = self.lock();
            st.record.last_run += 1;
            if let Some(d) = due {
                st.record.last_due_ms = ms(d);
            }
            let now = ms(self.clock.now());
            let rec = RunRecord {
                run: st.record.last_run,
                attempt: 1,
                trigger: what.to_string(),
                due_ms: due.map(ms).unwrap_or(0),
                started_ms: now,
                ended_ms: now,
                result: "skipped".into(),
                message,
                ..Default::default()
            };
            Self::put_history(&mut st, &rec);
            *st.record.runs_total.entry("skipped".into()).or_default() += 1;
        }
        self.save().await;
    }

    /// One run: attempts until one succeeds, the retries are used up, or it is stopped.
    async fn run_attempts(
        self: Arc<Self>,
        run: u64,
        what: String,
        due_ms: i64,
        stop: CancellationToken,
        mut started: Option<oneshot::Sender<Result<RunRecord, String>>>,
        finished: Option<oneshot::Sender<RunRecord>>,
    ) {
        let c = &self.config;
        let mut delay = c.retry_delay;
        let mut last = RunRecord::default();
        for attempt in 1..=c.retries.saturating_add(1) {
            let mut rec = RunRecord {
                run,
                attempt,
                trigger: what.clone(),
                due_ms,
                started_ms: ms(self.clock.now()),
                result: "running".into(),
                ..Default::default()
            };
            Self::put_history(&mut self.lock(), &rec);
            self.save().await;
            if let Some(s) = started.take() {
                let _ = s.send(Ok(rec.clone()));
            }
            let attempt_stop = stop.child_token();
            let mut fut = self.runner.attempt(c, &self.log, run, attempt, attempt_stop.clone());
            let mut timed_out = false;
            let outcome = tokio::select! {
                r = &mut fut => r,
                _ = tokio::time::sleep(c.timeout) => {
                    timed_out = true;
                    attempt_stop.cancel();
                    fut.await
                }
            };
            rec.ended_ms = ms(self.clock.now());
            match outcome {
                Err(e) if timed_out => {
                    rec.result = "timed_out".into();
                    rec.message = format!(
                        "did not start within its timeout of {}: {e}",
                        fleet_common::human_duration_ms(c.timeout)
                    );
                }
                Err(e) => {
                    rec.result = "failed".into();
                    rec.message = format!("could not start: {e}");
                }
                Ok(end) => {
                    rec.pid = end.pid;
                    rec.exit_code = end.exit_code;
                    rec.signal = end.signal;
                    (rec.result, rec.message) = if timed_out {
                        (
                            "timed_out".into(),
                            format!(
                                "ran longer than its timeout of {}; stopped it and its children ({})",
                                fleet_common::human_duration_ms(c.timeout),
                                end.message
                            ),
                        )
                    } else if stop.is_cancelled() {
                        let why = self.lock().running.iter().find(|a| a.run == run).and_then(|a| a.why.clone());
                        ("killed".into(), format!("{}; {}", why.unwrap_or_else(|| "stopped".into()), end.message))
                    } else if end.exit_code == Some(0) {
                        ("succeeded".into(), end.message)
                    } else {
                        ("failed".into(), end.message)
                    };
                }
            }
            {
                let mut st = self.lock();
                Self::put_history(&mut st, &rec);
                *st.record.runs_total.entry(rec.result.clone()).or_default() += 1;
                if rec.result == "succeeded" {
                    st.record.last_success_ms = rec.ended_ms;
                }
            }
            self.save().await;
            let again = rec.result != "succeeded" && !stop.is_cancelled() && attempt <= c.retries;
            last = rec;
            if !again {
                break;
            }
            self.log.write(
                "fleet",
                &format!(
                    "run {run} attempt {attempt} {}: {}; retrying in {}",
                    last.result,
                    last.message,
                    fleet_common::human_duration_ms(delay)
                ),
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => break,
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        {
            let mut st = self.lock();
            st.record.last_finished = Some(last.clone());
            st.running.retain(|a| a.run != run);
        }
        self.save().await;
        self.ended.notify_waiters();
        if let Some(f) = finished {
            let _ = f.send(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;
    use crate::schedule::{Schedule, Zone};

    /// The wall clock as tokio's (paused) clock moves it.
    struct TestClock {
        base: SystemTime,
        start: tokio::time::Instant,
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            self.base + self.start.elapsed()
        }
    }

    /// Attempts that take a scripted time and end with a scripted status; a stopped one ends
    /// at once, killed by TERM.
    #[derive(Default)]
    struct Script {
        /// (how long, exit status) per attempt, in order; then `otherwise`.
        plan: Mutex<VecDeque<(Duration, i32)>>,
        otherwise: Option<(Duration, i32)>,
        starts: Mutex<Vec<SystemTime>>,
        clock: Option<Arc<TestClock>>,
    }

    impl Runner for Script {
        fn attempt(&self, _: &JobConfig, _: &Arc<LogFile>, _: u64, _: u32, stop: CancellationToken) -> AttemptFuture {
            self.starts.lock().unwrap().push(self.clock.as_ref().unwrap().now());
            let (took, code) =
                self.plan.lock().unwrap().pop_front().or(self.otherwise).unwrap_or((Duration::from_millis(10), 0));
            Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(took) => Ok(Ended { exit_code: Some(code), signal: None, message: format!("exited with status {code}"), pid: 7 }),
                    _ = stop.cancelled() => Ok(Ended { exit_code: None, signal: Some(15), message: "was killed by signal 15 (TERM)".into(), pid: 7 }),
                }
            })
        }
    }

    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, JobRecord>>);

    impl Persist for Memory {
        fn save(&self, job: &str, rec: JobRecord) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
            self.0.lock().unwrap().insert(job.to_string(), rec);
            Box::pin(std::future::ready(Ok(())))
        }
    }

    fn job(schedule: &str) -> JobConfig {
        JobConfig {
            name: "backup".into(),
            schedule: Schedule::parse(schedule, Zone::Utc).unwrap(),
            command: "/bin/true".into(),
            args: vec![],
            env: Default::default(),
            workdir: None,
            user: None,
            timeout: Duration::from_secs(3600),
            concurrency: Concurrency::Forbid,
            retries: 0,
            retry_delay: Duration::from_secs(1),
            catch_up: false,
            stop_signal: "TERM".into(),
            stop_timeout: Duration::from_secs(1),
            log_max_bytes: 1 << 20,
            log_backups: 1,
            after: Vec::new(),
        }
    }

    struct Harness {
        ctl: Arc<JobCtl>,
        script: Arc<Script>,
        clock: Arc<TestClock>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    /// Starts `config` at wall time `base` with `record` and `script`.
    fn start(config: JobConfig, base: &str, record: JobRecord, mut script: Script) -> Harness {
        let base: chrono::DateTime<chrono::Utc> = base.parse().unwrap();
        let clock = Arc::new(TestClock { base: base.into(), start: tokio::time::Instant::now() });
        script.clock = Some(clock.clone());
        let script = Arc::new(script);
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "backup", 1 << 20, 1).unwrap();
        let (ctl, rx) = JobCtl::new(Parts {
            config,
            log,
            record,
            clock: clock.clone(),
            runner: script.clone(),
            persist: Arc::new(Memory::default()),
            changed: Arc::new(Notify::new()),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ctl.clone().run(rx, shutdown.clone()));
        Harness { ctl, script, clock, shutdown, task, _dir: dir }
    }

    impl Harness {
        fn results(&self) -> Vec<(u64, u32, String)> {
            self.ctl.record().history.iter().map(|r| (r.run, r.attempt, r.result.clone())).collect()
        }

        async fn stop(self) -> JobRecord {
            self.shutdown.cancel();
            self.task.await.unwrap();
            self.ctl.record()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_two_seconds_runs_on_time_for_a_minute() {
        let h = start(job("@every 2s"), "2026-12-01T10:00:00.300Z", JobRecord::default(), Script::default());
        tokio::time::sleep(Duration::from_millis(60_000)).await;
        let starts = h.script.starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 30, "one run every 2 s for a minute");
        for (i, s) in starts.iter().enumerate() {
            let due = UNIX_EPOCH + Duration::from_millis(ms(h.clock.base) as u64 / 2000 * 2000 + 2000 * (i as u64 + 1));
            let late = s.duration_since(due).expect("never early");
            assert!(late <= Duration::from_millis(200), "run {i} started {late:?} after it was due");
        }
        let rec = h.stop().await;
        assert_eq!(rec.runs_total["succeeded"], 30);
    }

    #[tokio::test(start_paused = true)]
    async fn forbid_skips_a_run_while_the_previous_runs_and_says_so() {
        let script = Script { plan: Mutex::new([(Duration::from_millis(3500), 0)].into()), ..Default::default() };
        let h = start(job("@every 2s"), "2026-12-01T10:00:00Z", JobRecord::default(), script);
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let rec = h.ctl.record();
        assert_eq!(
            h.results(),
            [(1, 1, "succeeded".into()), (2, 1, "skipped".into()), (3, 1, "succeeded".into())],
            "{rec:#?}"
        );
        assert!(rec.history[1].message.contains("run 1") && rec.history[1].message.contains("forbid"));
        assert_eq!(h.stop().await.runs_total["skipped"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn replace_kills_the_running_one() {
        let mut config = job("@every 2s");
        config.concurrency = Concurrency::Replace;
        let script = Script { plan: Mutex::new([(Duration::from_secs(60), 0)].into()), ..Default::default() };
        let h = start(config, "2026-12-01T10:00:00Z", JobRecord::default(), script);
        tokio::time::sleep(Duration::from_millis(4100)).await;
        let rec = h.ctl.record();
        assert_eq!(h.results()[..2], [(1, 1, "killed".into()), (2, 1, "succeeded".into())], "{rec:#?}");
        assert!(rec.history[0].message.contains("replaced by run 2"), "{}", rec.history[0].message);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_past_its_timeout_is_stopped_and_recorded_as_timed_out() {
        let mut config = job("@hourly");
        config.timeout = Duration::from_secs(5);
        let script = Script { otherwise: Some((Duration::from_secs(600), 0)), ..Default::default() };
        let h = start(config, "2026-12-01T10:59:59Z", JobRecord::default(), script);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rec = h.ctl.record();
        let r = &rec.history[0];
        assert_eq!((r.result.as_str(), r.ended_ms - r.started_ms), ("timed_out", 5000), "{rec:#?}");
        assert!(r.message.contains("timeout of 5s"), "{}", r.message);
        assert_eq!(h.ctl.running(), 0);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failing_twice_then_succeeding_is_three_attempts_with_doubling_delays() {
        let mut config = job("@hourly");
        config.retries = 2;
        config.retry_delay = Duration::from_secs(10);
        let script = Script {
            plan: Mutex::new(
                [(Duration::from_secs(1), 1), (Duration::from_secs(1), 1), (Duration::from_secs(1), 0)].into(),
            ),
            ..Default::default()
        };
        let h = start(config, "2026-12-01T10:59:59Z", JobRecord::default(), script);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(h.results(), [(1, 1, "failed".into()), (1, 2, "failed".into()), (1, 3, "succeeded".into())]);
        let starts = h.script.starts.lock().unwrap().clone();
        let gaps: Vec<_> = starts.windows(2).map(|w| w[1].duration_since(w[0]).unwrap().as_secs()).collect();
        assert_eq!(gaps, [11, 21], "1 s runs, then 10 s and 20 s delays");
        let rec = h.stop().await;
        assert_eq!(rec.last_finished.unwrap().attempt, 3);
        assert_eq!((rec.runs_total["failed"], rec.runs_total["succeeded"]), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_run_is_made_up_once_with_catch_up_and_not_without() {
        // The agent last ran the daily job on Nov 28 and was down until now (three missed).
        let earlier: chrono::DateTime<chrono::Utc> = "2026-11-28T02:00:00Z".parse().unwrap();
        let record = JobRecord { since_ms: 1, last_due_ms: earlier.timestamp_millis(), ..Default::default() };
        for catch_up in [true, false] {
            let mut config = job("0 2 * * *");
            config.catch_up = catch_up;
            let h = start(config, "2026-12-01T09:00:00Z", record.clone(), Script::default());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let rec = h.stop().await;
            let runs: Vec<_> = rec.history.iter().map(|r| r.trigger.clone()).collect();
            if catch_up {
                assert_eq!(runs.len(), 1, "{runs:?}");
                assert!(runs[0].starts_with("catch-up (3 missed, newest due 2026-12-01T02:00:00"), "{runs:?}");
            } else {
                assert!(runs.is_empty(), "{runs:?}");
            }
            assert_eq!(
                rec.last_due_ms,
                "2026-12-01T02:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp_millis()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_job_does_not_catch_up_and_a_run_cut_by_a_crash_is_recorded() {
        let mut config = job("0 2 * * *");
        config.catch_up = true;
        let crashed =
            RunRecord { run: 4, attempt: 1, started_ms: 5, result: "running".into(), pid: 99, ..Default::default() };
        let record = JobRecord { history: [crashed].into(), last_run: 4, ..Default::default() };
        let h = start(config, "2026-12-01T09:00:00Z", record, Script::default());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let rec = h.stop().await;
        assert_eq!(rec.history.len(), 1, "no catch-up for a job never scheduled before: {rec:#?}");
        assert_eq!(rec.history[0].result, "killed");
        assert!(rec.history[0].message.contains("pid 99"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_manual_run_respects_forbid_and_reports_its_end() {
        let script = Script { plan: Mutex::new([(Duration::from_secs(5), 3)].into()), ..Default::default() };
        let h = start(job("@daily"), "2026-12-01T10:00:00Z", JobRecord::default(), script);
        let ask = |wait: bool| {
            let (s, started) = oneshot::channel();
            let (f, finished) = oneshot::channel();
            let by = "operator/alice".to_string();
            h.ctl.triggers().try_send(Trigger::Manual { by, started: s, finished: wait.then_some(f) }).unwrap();
            (started, finished)
        };
        let (started, finished) = ask(true);
        assert_eq!(started.await.unwrap().unwrap().trigger, "manual (operator/alice)");
        let (again, _) = ask(false);
        assert!(again.await.unwrap().unwrap_err().contains("still running"));
        let end = finished.await.unwrap();
        assert_eq!((end.result.as_str(), end.exit_code), ("failed", Some(3)));
        h.stop().await;
    }
}

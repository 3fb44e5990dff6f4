//! One supervised service: a task that starts its process, watches it (exit, start_secs,
//! health checks, memory), restarts it by the policy, and obeys start/stop/restart requests.
//! The task publishes its status on a watch channel; requests carry a reply that is answered
//! once the outcome is known (running and healthy, stopped, or failed with the reason).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::logs::LogFile;
use super::policy::{AfterExit, Backoff, HealthTracker, HealthVerdict, MemoryWatch};
use super::{describe_exit, health, pidfile};
use crate::config::ServiceConfig;

/// States of docs/design.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running, by request (or never started).
    Stopped,
    /// Started, not yet past start_secs.
    Starting,
    /// Past start_secs.
    Running,
    /// Waiting to be restarted.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Ended and left down by the restart policy.
    Exited,
    /// Failed to start start_retries times in a row; down until started by an operator.
    Fatal,
}

impl State {
    /// The name used in reports and by fleetctl.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Fatal => "fatal",
        }
    }
}

/// What the service task publishes.
#[derive(Debug, Clone)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// Last health verdict (true without a health check while running).
    pub healthy: bool,
    /// Pid of the current process.
    pub pid: Option<u32>,
    /// When the current process started.
    pub started_at: Option<std::time::SystemTime>,
    /// Restarts since the agent started supervising it.
    pub restarts: u64,
    /// Why it is in this state.
    pub message: String,
}

/// A request to the service task.
#[derive(Debug)]
pub enum Request {
    /// Start (also out of fatal); reply once running and healthy.
    Start(Reply),
    /// Stop; reply once stopped.
    Stop { by: String, reply: Reply },
    /// Stop if running, then start; reply once running and healthy.
    Restart(Reply),
}

/// The outcome of a request: `Ok(message)` or `Err((reason, last log lines))`.
pub type Outcome = Result<String, (String, Vec<String>)>;
/// Where a request's outcome goes.
pub type Reply = oneshot::Sender<Outcome>;

/// Everything a service task owns.
pub struct ServiceTask {
    /// The service's config.
    pub config: ServiceConfig,
    /// Its log.
    pub log: Arc<LogFile>,
    /// Where pid files live.
    pub run_dir: PathBuf,
    /// Environment every service gets before its own `env`.
    pub base_env: Vec<(String, String)>,
    /// Requests from the supervisor.
    pub requests: mpsc::Receiver<Request>,
    /// Published status.
    pub status: watch::Sender<Status>,
    /// Cancelled when the agent stops.
    pub shutdown: CancellationToken,
    /// The agent's name (for FLEET_AGENT).
    pub agent: String,
    /// Notified when the state, health or pid changes (the agent reports early).
    pub changed: Arc<tokio::sync::Notify>,
}

/// Why a watched process stopped being watched.
enum Ended {
    Exited { status: ExitStatus, during_start: bool },
    StopRequested { by: String, reply: Reply },
    RestartRequested(Reply),
    Failing(String),
    Shutdown,
}

/// A health probe in flight.
type ProbeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// A started process and its output pumps.
struct Running {
    child: Child,
    pid: u32,
    started: Instant,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits (briefly) until everything the process wrote is in the log, so failure messages
    /// carry its last lines.
    async fn drain_output(&mut self) {
        for p in self.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
        }
    }
}

impl ServiceTask {
    fn publish(&self, f: impl FnOnce(&mut Status)) {
        let changed = self.status.send_if_modified(|s| {
            let before = (s.state, s.healthy, s.pid);
            f(s);
            before != (s.state, s.healthy, s.pid)
        });
        if changed {
            self.changed.notify_one();
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn note(&self, text: &str) {
        self.log.write("fleet", text);
    }

    fn fail_all(&self, waiting: &mut Vec<Reply>, reason: &str) {
        let tail = self.log.output_tail(10);
        for r in waiting.drain(..) {
            let _ = r.send(Err((reason.to_string(), tail.clone())));
        }
    }

    fn succeed_all(waiting: &mut Vec<Reply>, message: &str) {
        for r in waiting.drain(..) {
            let _ = r.send(Ok(message.to_string()));
        }
    }

    /// Runs the service until the agent shuts down.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.start_retries);
        let mut want_up = true;
        if let Some(d) = &self.config.deploy
            && std::fs::symlink_metadata(d.root.join("current")).is_err()
        {
            // Nothing to run until the first release is deployed.
            want_up = false;
            self.publish(|s| s.message = "no release deployed yet (fleetctl rollout start)".into());
        }
        let mut waiting: Vec<Reply> = Vec::new();
        loop {
            if !want_up {
                // Down: wait for an operator (or shutdown).
                let req = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = self.requests.recv() => r,
                };
                match req {
                    None => return,
                    Some(Request::Start(reply)) | Some(Request::Restart(reply)) => {
                        backoff.reset();
                        waiting.push(reply);
                        want_up = true;
                    }
                    Some(Request::Stop { by, reply }) => {
                        self.publish(|s| {
                            if matches!(s.state, State::Fatal | State::Exited) {
                                s.state = State::Stopped;
                                s.message = format!("stopped by {by}");
                            }
                        });
                        let _ = reply.send(Ok(format!("{} is not running", self.name())));
                        continue;
                    }
                }
            }
            let proc = match self.spawn() {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("cannot start: {e}");
                    self.note(&reason);
                    self.fail_all(&mut waiting, &format!("{} {reason}", self.name()));
                    match backoff.after_exit(Instant::now(), true, false, self.config.restart) {
                        AfterExit::Restart(delay) => {
                            if !self.wait_backoff(delay, &reason, &mut waiting, &mut want_up, &mut backoff).await {
                                return;
                            }
                        }
                        _ => {
                            self.publish(|s| {
                                s.state = State::Fatal;
                                s.message = format!("{reason}; `fleetctl start` to try again");
                            });
                            want_up = false;
                        }
                    }
                    continue;
                }
            };
            let ended = self.watch(proc, &mut backoff, &mut waiting).await;
            match ended {
                (Ended::Shutdown, proc) => {
                    self.stop_process(proc, "the agent is stopping").await;
                    self.publish(|s| {
                        s.state = State::Stopped;
                        s.message = "stopped with the agent".into();
                    });
                    self.fail_all(&mut waiting, "the agent is stopping");
                    return;
                }
                (Ended::StopRequested { by, reply }, proc) => {
                    self.stop_process(proc, &format!("stop requested by {by}")).await;
                    backoff.not_healthy();
                    self.publish(|s| {
                        s.state = State::Stopped;
                        s.message = format!("stopped by {by}");
                    });
                    self.fail_all(
                        &mut waiting,
                        &format!("{} was stopped by {by} before it became healthy", self.name()),
                    );
                    let _ = reply.send(Ok(format!("{} stopped", self.name())));
                    want_up = false;
                }
                (Ended::RestartRequested(reply), proc) => {
                    self.stop_process(proc, "restart requested").await;
                    backoff.reset();
                    self.publish(|s| s.restarts += 1);
                    waiting.push(reply);
                }
                (Ended::Failing(reason), proc) => {
                    self.note(&format!("{reason}; restarting"));
                    self.stop_process(proc, &reason).await;
                    self.fail_all(&mut waiting, &format!("{} {reason}", self.name()));
                    let delay = backoff.forced_restart(Instant::now());
                    self.publish(|s| s.restarts += 1);
                    if !self.wait_backoff(delay, &reason, &mut waiting, &mut want_up, &mut backoff).await {
                        return;
                    }
                }
                (Ended::Exited { status, during_start }, mut proc) => {
                    // Whatever the service left behind in its process group goes with it.
                    self.kill_group(proc.pid, Signal::KILL);
                    proc.drain_output().await;
                    pidfile::remove(&self.run_dir, self.name());
                    let how = describe_exit(status);
                    let reason = if during_start { format!("{how} during start") } else { how.clone() };
                    self.note(&reason);
                    self.fail_all(&mut waiting, &format!("{} {reason}", self.name()));
                    match backoff.after_exit(Instant::now(), during_start, status.success(), self.config.restart) {
                        AfterExit::Restart(delay) => {
                            self.publish(|s| s.restarts += 1);
                            if !self.wait_backoff(delay, &reason, &mut waiting, &mut want_up, &mut backoff).await {
                                return;
                            }
                        }
                        AfterExit::StayDown => {
                            self.publish(|s| {
                                s.state = State::Exited;
                                s.message = reason.clone();
                            });
                            want_up = false;
                        }
                        AfterExit::Fatal => {
                            let n = backoff.failed_starts();
                            let msg = format!(
                                "{reason} {n} time{} in a row; not restarting until `fleetctl start`",
                                if n == 1 { "" } else { "s" }
                            );
                            self.note(&msg);
                            self.publish(|s| {
                                s.state = State::Fatal;
                                s.message = msg;
                            });
                            want_up = false;
                        }
                    }
                }
            }
        }
    }

    /// Waits out a restart delay in state backoff. Returns false on shutdown.
    async fn wait_backoff(
        &mut self,
        delay: Duration,
        reason: &str,
        waiting: &mut Vec<Reply>,
        want_up: &mut bool,
        backoff: &mut Backoff,
    ) -> bool {
        self.note(&format!("restarting in {}", fleet_common::human_duration_ms(delay)));
        self.publish(|s| {
            s.state = State::Backoff;
            s.pid = None;
            s.started_at = None;
            s.healthy = false;
            s.message = format!("{reason}; restarting in {}", fleet_common::human_duration_ms(delay));
        });
        tokio::select! {
            _ = self.shutdown.cancelled() => {
                self.publish(|s| { s.state = State::Stopped; s.message = "stopped with the agent".into(); });
                self.fail_all(waiting, "the agent is stopping");
                false
            }
            _ = tokio::time::sleep(delay) => true,
            r = self.requests.recv() => match r {
                None => false,
                Some(Request::Stop { by, reply }) => {
                    self.publish(|s| { s.state = State::Stopped; s.message = format!("stopped by {by}"); });
                    self.fail_all(waiting, &format!("{} was stopped by {by}", self.name()));
                    let _ = reply.send(Ok(format!("{} stopped", self.name())));
                    *want_up = false;
                    true
                }
                Some(Request::Start(reply)) | Some(Request::Restart(reply)) => {
                    // An operator does not wait for the backoff.
                    backoff.reset();
                    waiting.push(reply);
                    true
                }
            }
        }
    }

    fn spawn(&self) -> Result<Running, String> {
        let c = &self.config;
        let workdir = c
            .workdir
            .clone()
            .or_else(|| c.deploy.as_ref().map(|d| d.root.join("current")))
            .unwrap_or_else(|| PathBuf::from("/"));
        let (mut child, program) = super::Launch {
            command: &c.command,
            args: &c.args,
            env: &c.env,
            workdir,
            user: c.user.as_deref(),
            fleet_env: &[("FLEET_SERVICE", &c.name), ("FLEET_AGENT", &self.agent)],
        }
        .spawn(&self.base_env)?;
        let pid = child.id().ok_or("the process ended before it could be watched")?;
        if let Some(stat) = super::procinfo::stat(pid) {
            pidfile::write(&self.run_dir, &c.name, pid, stat.start_ticks);
        }
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, self.log.clone(), "stdout")));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, self.log.clone(), "stderr")));
        }
        self.note(&format!("started (pid {pid}): {} {}", program.display(), c.args.join(" ")));
        Ok(Running { child, pid, started: Instant::now(), pumps })
    }

    /// Watches a started process until it ends or must be stopped.
    async fn watch(&mut self, mut proc: Running, backoff: &mut Backoff, waiting: &mut Vec<Reply>) -> (Ended, Running) {
        let start_secs = self.config.start_secs;
        let health_cfg = self.config.health.clone();
        let memory_max = self.config.memory_max;
        let pid = proc.pid;
        self.publish(|s| {
            s.state = State::Starting;
            s.pid = Some(pid);
            s.started_at = Some(std::time::SystemTime::now());
            s.healthy = false;
            s.message = String::new();
        });
        let mut starting = true;
        let start_done = sleep_until(proc.started + start_secs);
        tokio::pin!(start_done);
        let mut tracker = health_cfg.as_ref().map(|h| HealthTracker::new(h.retries, h.start_period, proc.started));
        let mut next_probe: Option<Instant> = None;
        let mut probe: Option<ProbeFuture> = None;
        let mut memory = MemoryWatch::default();
        let mut mem_tick = tokio::time::interval(Duration::from_secs(1));
        mem_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        loop {
            let reset_at = backoff.reset_deadline().unwrap_or(far);
            let probe_at = next_probe.unwrap_or(far);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return (Ended::Shutdown, proc),
                status = proc.child.wait() => {
                    let status = match status {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(service = %self.name(), error = %e, "cannot wait for the service process");
                            return (Ended::Failing(format!("cannot wait for the process: {e}")), proc);
                        }
                    };
                    return (Ended::Exited { status, during_start: starting }, proc);
                }
                r = self.requests.recv() => match r {
                    None => return (Ended::Shutdown, proc),
                    Some(Request::Stop { by, reply }) => return (Ended::StopRequested { by, reply }, proc),
                    Some(Request::Restart(reply)) => return (Ended::RestartRequested(reply), proc),
                    Some(Request::Start(reply)) => {
                        let s = self.status.borrow().clone();
                        if s.state == State::Running && s.healthy {
                            let _ = reply.send(Ok(format!("{} is already running", self.name())));
                        } else {
                            waiting.push(reply);
                        }
                    }
                },
                _ = &mut start_done, if starting => {
                    starting = false;
                    let has_check = tracker.is_some();
                    self.publish(|s| {
                        s.state = State::Running;
                        s.healthy = !has_check;
                    });
                    if has_check {
                        // Probe at once: an operator waiting for a restart should not wait an interval.
                        next_probe = Some(Instant::now());
                    } else {
                        backoff.up_and_healthy(Instant::now());
                        Self::succeed_all(waiting, &format!("{} is running (pid {pid})", self.name()));
                    }
                }
                _ = sleep_until(probe_at), if probe.is_none() && next_probe.is_some() => {
                    let h = health_cfg.clone().expect("probes only with a health check");
                    probe = Some(Box::pin(async move { health::probe(&h.probe, h.timeout).await }));
                    next_probe = None;
                }
                result = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    probe = None;
                    let h = health_cfg.as_ref().expect("probes only with a health check");
                    next_probe = Some(Instant::now() + h.interval);
                    let t = tracker.as_mut().expect("tracker with a health check");
                    let was_healthy = t.healthy();
                    match t.record(Instant::now(), result) {
                        HealthVerdict::Healthy => {
                            if !was_healthy {
                                self.publish(|s| { s.healthy = true; s.message = String::new(); });
                                backoff.up_and_healthy(Instant::now());
                                Self::succeed_all(waiting, &format!("{} is running (pid {pid}) and healthy", self.name()));
                            }
                        }
                        HealthVerdict::Failing => {
                            if was_healthy {
                                self.note(&format!("health check failed: {}", t.last_error()));
                            }
                            let err = t.last_error().to_string();
                            self.publish(|s| { s.healthy = false; s.message = format!("health check failing: {err}"); });
                            backoff.not_healthy();
                        }
                        HealthVerdict::Unhealthy(reason) => {
                            self.publish(|s| { s.healthy = false; s.message = reason.clone(); });
                            return (Ended::Failing(reason), proc);
                        }
                    }
                }
                _ = sleep_until(reset_at), if backoff.reset_deadline().is_some() => {
                    backoff.check_stable(Instant::now());
                    backoff.not_healthy();
                    backoff.up_and_healthy(Instant::now());
                }
                _ = mem_tick.tick(), if memory_max.is_some() => {
                    if let (Some(max), Some(rss)) = (memory_max, super::procinfo::rss_bytes(pid))
                        && let Some(reason) = memory.record(rss, max)
                    {
                        return (Ended::Failing(reason), proc);
                    }
                }
            }
        }
    }

    fn kill_group(&self, pid: u32, sig: Signal) {
        super::kill_group(pid, sig)
    }

    /// Stops a process: stop_signal to its group, KILL after stop_timeout, and KILL for
    /// anything left in the group.
    async fn stop_process(&self, mut proc: Running, why: &str) {
        let sig = super::signal_by_name(&self.config.stop_signal);
        let timeout = self.config.stop_timeout;
        self.publish(|s| s.state = State::Stopping);
        self.note(&format!("stopping (pid {}): {why}; sending SIG{}", proc.pid, self.config.stop_signal));
        self.kill_group(proc.pid, sig);
        match tokio::time::timeout(timeout, proc.child.wait()).await {
            Ok(Ok(status)) => self.note(&format!("stopped: {}", describe_exit(status))),
            _ => {
                self.note(&format!(
                    "did not stop within stop_timeout {}; killing it and its children",
                    fleet_common::human_duration_ms(timeout)
                ));
                self.kill_group(proc.pid, Signal::KILL);
                let _ = proc.child.wait().await;
            }
        }
        self.kill_group(proc.pid, Signal::KILL);
        proc.drain_output().await;
        pidfile::remove(&self.run_dir, self.name());
        self.publish(|s| {
            s.pid = None;
            s.started_at = None;
            s.healthy = false;
        });
    }
}

/// Copies one output stream into the log, line by line (bounded line length).
pub(crate) async fn pump(stream: impl AsyncRead + Unpin, log: Arc<LogFile>, name: &'static str) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        buf.clear();
        // Read up to a newline, but never hold more than MAX_LINE bytes of one line.
        let n = {
            let mut total = 0;
            while let Ok(available) = reader.fill_buf().await {
                if available.is_empty() {
                    break;
                }
                let (take, done) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (available.len(), false),
                };
                let room = super::logs::MAX_LINE.saturating_sub(buf.len());
                buf.extend_from_slice(&available[..take.min(room)]);
                reader.consume(take);
                total += take;
                if done || buf.len() >= super::logs::MAX_LINE {
                    break;
                }
            }
            total
        };
        if n == 0 {
            return;
        }
        log.write(name, &String::from_utf8_lossy(&buf));
    }
}

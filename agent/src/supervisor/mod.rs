//! The service supervisor (docs/design.md §5): one task per `[[services]]` entry (see [`service`]),
//! started with the agent, stopped with it. It answers operators' start/stop/restart requests,
//! reports every service's state, and serves the captured logs.

pub mod health;
pub mod logs;
pub mod pidfile;
pub mod policy;
pub mod procinfo;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_proto::v1::ServiceStatus;
use rustix::process::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServiceConfig;
use logs::LogFile;
use service::{Outcome, Request, ServiceTask, State, Status};

/// What an operator can ask of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it.
    Start,
    /// Stop it.
    Stop,
    /// Restart it.
    Restart,
}

/// A handle on one supervised service.
#[derive(Debug)]
pub struct Handle {
    /// Its config.
    pub config: ServiceConfig,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<Status>,
    /// Its captured output.
    pub log: Arc<LogFile>,
    cpu: std::sync::Mutex<CpuMeter>,
}

/// The CPU use of a service's current process over a recent window, from two readings of its
/// CPU time at least [`CpuMeter::WINDOW`] apart (reports are taken more often than that while
/// deploys watch a service, and a shorter window would be noise).
#[derive(Debug, Default)]
struct CpuMeter {
    /// The reading the next ratio is measured from: pid, when, CPU seconds.
    base: Option<(u32, std::time::Instant, f64)>,
    /// The newest ratio.
    ratio: f64,
}

impl CpuMeter {
    const WINDOW: Duration = Duration::from_secs(1);

    /// Takes a reading of `pid` at `now` and returns the ratio (1.0 = one core busy).
    fn read(&mut self, pid: Option<u32>, now: std::time::Instant, cpu_seconds: f64) -> f64 {
        let Some(pid) = pid else {
            *self = CpuMeter::default();
            return 0.0;
        };
        match self.base {
            Some((p, at, cpu)) if p == pid => {
                let elapsed = now.duration_since(at);
                if elapsed >= Self::WINDOW {
                    self.ratio = ((cpu_seconds - cpu) / elapsed.as_secs_f64()).max(0.0);
                    self.base = Some((pid, now, cpu_seconds));
                }
            }
            _ => *self = CpuMeter { base: Some((pid, now, cpu_seconds)), ratio: 0.0 },
        }
        self.ratio
    }
}

/// Every supervised service of this agent.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Handle>,
    tasks: TaskTracker,
    changed: Arc<tokio::sync::Notify>,
}

/// The signal named in config (`TERM`, `INT`, ...).
pub fn signal_by_name(name: &str) -> Signal {
    match name {
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "HUP" => Signal::HUP,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        _ => Signal::TERM,
    }
}

/// "exited with status 3", "was killed by signal 9 (KILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = Signal::from_named_raw(sig).map(|s| format!(" ({})", signal_name(s))).unwrap_or_default();
            format!("was killed by signal {sig}{name}")
        }
        None => format!("ended ({status})"),
    }
}

fn signal_name(s: Signal) -> &'static str {
    match s {
        Signal::KILL => "KILL",
        Signal::TERM => "TERM",
        Signal::INT => "INT",
        Signal::QUIT => "QUIT",
        Signal::HUP => "HUP",
        Signal::SEGV => "SEGV",
        Signal::ABORT => "ABRT",
        Signal::BUS => "BUS",
        Signal::PIPE => "PIPE",
        Signal::USR1 => "USR1",
        Signal::USR2 => "USR2",
        _ => "?",
    }
}

/// A process fleet starts (a service's or a job's): in its own process group, so that stop
/// signals reach it and everything it started; with a clean environment (the base, then
/// `fleet_env`, then its own `env`); stdin closed, stdout and stderr piped.
pub struct Launch<'a> {
    /// The program; a relative path with a '/' is taken from `workdir`.
    pub command: &'a str,
    /// Its arguments.
    pub args: &'a [String],
    /// Its own environment.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// Its working directory.
    pub workdir: PathBuf,
    /// The user to run as.
    pub user: Option<&'a str>,
    /// `FLEET_*` variables saying what it is.
    pub fleet_env: &'a [(&'a str, &'a str)],
}

impl Launch<'_> {
    /// Starts it; the error says why it could not start, naming the program.
    pub fn spawn(&self, base_env: &[(String, String)]) -> Result<(tokio::process::Child, PathBuf), String> {
        let program = if self.command.contains('/') && !Path::new(self.command).is_absolute() {
            self.workdir.join(self.command)
        } else {
            PathBuf::from(self.command)
        };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(self.args)
            .env_clear()
            .envs(base_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(self.fleet_env.iter().copied())
            .envs(self.env)
            .current_dir(&self.workdir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(user) = self.user {
            let (uid, gid) = crate::config::lookup_user(user)?;
            if !rustix::process::geteuid().is_root() && uid != rustix::process::geteuid().as_raw() {
                return Err(format!("user = \"{user}\" needs fleet-agent to run as root"));
            }
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {}", program.display(), fleet_common::io_reason(&e)))?;
        Ok((child, program))
    }
}

/// Sends `sig` to the process group led by `pid`.
pub fn kill_group(pid: u32, sig: Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// The environment every service starts with, before its own `env`: a sane PATH and the
/// locale and time zone of the agent. Nothing else of the agent's environment leaks in.
pub fn base_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
    )];
    for k in ["LANG", "LC_ALL", "TZ", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env
}

impl Supervisor {
    /// Stops whatever an earlier agent left running, then starts every service.
    pub async fn start(
        agent: &str,
        data_dir: &Path,
        services: &[ServiceConfig],
        shutdown: CancellationToken,
    ) -> std::io::Result<Supervisor> {
        let run_dir = data_dir.join("run");
        let log_dir = data_dir.join("logs");
        std::fs::create_dir_all(&run_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        for stray in pidfile::strays(&run_dir) {
            let cfg = services.iter().find(|s| s.name == stray.service);
            let signal = cfg.map(|c| signal_by_name(&c.stop_signal)).unwrap_or(Signal::TERM);
            let timeout = cfg.map(|c| c.stop_timeout).unwrap_or(Duration::from_secs(10));
            tracing::warn!(
                service = %stray.service,
                pid = stray.pid,
                "found a service process left running by an earlier fleet-agent; stopping it so it runs supervised again"
            );
            pidfile::stop_stray(&run_dir, &stray, signal, timeout).await;
            if let Some(c) = cfg
                && let Ok(log) = LogFile::open(&log_dir, &c.name, c.log_max_bytes, c.log_backups)
            {
                log.write("fleet", &format!("stopped pid {} left running by an earlier fleet-agent", stray.pid));
            }
        }
        let tasks = TaskTracker::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        let env = base_env();
        let mut handles = Vec::with_capacity(services.len());
        for c in services {
            let log = LogFile::open(&log_dir, &c.name, c.log_max_bytes, c.log_backups)?;
            let (tx, rx) = mpsc::channel(16);
            let (status_tx, status_rx) = watch::channel(Status {
                state: State::Stopped,
                healthy: false,
                pid: None,
                started_at: None,
                restarts: 0,
                message: String::new(),
            });
            let task = ServiceTask {
                config: c.clone(),
                log: log.clone(),
                run_dir: run_dir.clone(),
                base_env: env.clone(),
                requests: rx,
                status: status_tx,
                shutdown: shutdown.clone(),
                agent: agent.to_string(),
                changed: changed.clone(),
            };
            tasks.spawn(task.run());
            handles.push(Handle { config: c.clone(), requests: tx, status: status_rx, log, cpu: Default::default() });
        }
        tasks.close();
        Ok(Supervisor { services: handles, tasks, changed })
    }

    /// Resolves when a service's state, health or pid changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The longest stop_timeout of any service: how long a shutdown may take.
    pub fn max_stop_timeout(&self) -> Duration {
        self.services.iter().map(|h| h.config.stop_timeout).max().unwrap_or_default()
    }

    /// Waits until every service task has stopped its process (after shutdown).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// The service named `name`.
    pub fn get(&self, name: &str) -> Option<&Handle> {
        self.services.iter().find(|h| h.config.name == name)
    }

    /// Every service.
    pub fn all(&self) -> &[Handle] {
        &self.services
    }

    /// The current state of every service, as reports carry it.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(Handle::report).collect()
    }

    /// Asks a service to start, stop or restart and waits up to `timeout` for the outcome.
    pub async fn request(&self, name: &str, action: Action, by: &str, timeout: Duration) -> Outcome {
        let Some(h) = self.get(name) else {
            return Err((format!("no service named \"{name}\" on this host"), Vec::new()));
        };
        let (tx, rx) = oneshot::channel();
        let req = match action {
            Action::Start => Request::Start(tx),
            Action::Stop => Request::Stop { by: by.to_string(), reply: tx },
            Action::Restart => Request::Restart(tx),
        };
        if h.requests.send(req).await.is_err() {
            return Err(("the agent is stopping".to_string(), Vec::new()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(("the agent is stopping".to_string(), Vec::new())),
            Err(_) => {
                let s = h.status.borrow().clone();
                let what = match action {
                    Action::Stop => "to stop",
                    _ if h.config.health.is_some() => "to be running and healthy",
                    _ => "to be running",
                };
                let detail = if s.message.is_empty() { String::new() } else { format!(": {}", s.message) };
                Err((
                    format!(
                        "timed out after {} waiting for {name} {what} (it is {}{detail})",
                        fleet_common::human_duration_ms(timeout),
                        s.state.as_str()
                    ),
                    h.log.output_tail(10),
                ))
            }
        }
    }
}

impl Handle {
    /// The service's state as reports carry it.
    pub fn report(&self) -> ServiceStatus {
        let s = self.status.borrow().clone();
        let (cpu, rss) = match s.pid {
            Some(pid) => {
                (procinfo::stat(pid).map(|st| st.cpu_seconds).unwrap_or(0.0), procinfo::rss_bytes(pid).unwrap_or(0))
            }
            None => (0.0, 0),
        };
        let uptime =
            s.started_at.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs()).unwrap_or(0);
        let cpu_usage_ratio = self.cpu.lock().expect("cpu meter lock").read(s.pid, std::time::Instant::now(), cpu);
        // Nothing to run until the first rollout: the supervisor waits for `current`.
        let awaiting_release = s.pid.is_none()
            && self.config.deploy.as_ref().is_some_and(|d| std::fs::symlink_metadata(d.root.join("current")).is_err());
        ServiceStatus {
            name: self.config.name.clone(),
            state: s.state.as_str().to_string(),
            healthy: s.healthy,
            pid: s.pid.unwrap_or(0),
            restarts: s.restarts,
            uptime_seconds: uptime,
            cpu_seconds: cpu,
            memory_rss_bytes: rss,
            version: String::new(),
            message: s.message,
            has_health_check: self.config.health.is_some(),
            awaiting_release,
            cpu_usage_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_measured_over_a_window_of_one_process() {
        let t0 = std::time::Instant::now();
        let mut m = CpuMeter::default();
        assert_eq!(m.read(Some(7), t0, 10.0), 0.0, "one reading is no rate");
        assert_eq!(m.read(Some(7), t0 + Duration::from_millis(100), 10.5), 0.0, "too soon: the last ratio");
        let r = m.read(Some(7), t0 + Duration::from_secs(2), 11.0);
        assert!((r - 0.5).abs() < 1e-9, "{r}");
        assert_eq!(m.read(Some(8), t0 + Duration::from_secs(3), 0.2), 0.0, "a new process starts over");
        assert_eq!(m.read(None, t0 + Duration::from_secs(4), 0.0), 0.0);
    }
}

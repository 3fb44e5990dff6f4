//! Pid files under `data_dir/run/`: one per running service, with the pid and the process's
//! start time. They let a restarted agent find services that a killed agent left running.
//!
//! Such services are stopped, not re-adopted: their stdout and stderr were pipes to the dead
//! agent (now broken, so the next write fails or kills them), and a process that is not the
//! agent's child cannot be waited for, so its exit would go unnoticed. Stopping them (stop
//! signal to the group, KILL after stop_timeout) and starting fresh gives a service that is
//! fully supervised again, at the cost of one restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};

use super::procinfo;

fn path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.pid"))
}

/// Records a started service.
pub fn write(dir: &Path, service: &str, pid: u32, start_ticks: u64) {
    let p = path(dir, service);
    let tmp = dir.join(format!(".{service}.pid.tmp"));
    let result = std::fs::write(&tmp, format!("{pid} {start_ticks}\n")).and_then(|_| std::fs::rename(&tmp, &p));
    if let Err(e) = result {
        tracing::warn!(service, error = %e, "cannot write the pid file");
    }
}

/// Forgets a service that is no longer running.
pub fn remove(dir: &Path, service: &str) {
    let _ = std::fs::remove_file(path(dir, service));
}

/// A service process left by an earlier agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// The service name (from the pid file's name).
    pub service: String,
    /// Its pid (also its process group).
    pub pid: u32,
}

/// Pid files whose process is still the one recorded.
pub fn strays(dir: &Path) -> Vec<Stray> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(service) = name.strip_suffix(".pid") else { continue };
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut parts = text.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(ticks))) =
            (parts.next().map(str::parse::<u32>), parts.next().map(str::parse::<u64>))
        else {
            let _ = std::fs::remove_file(e.path());
            continue;
        };
        if procinfo::same_process(pid, ticks) {
            out.push(Stray { service: service.to_string(), pid });
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    out
}

/// Stops a stray: `signal` to its process group, KILL after `timeout`.
pub async fn stop_stray(dir: &Path, stray: &Stray, signal: Signal, timeout: Duration) {
    let Some(pg) = Pid::from_raw(stray.pid as i32) else { return };
    let _ = kill_process_group(pg, signal);
    let deadline = tokio::time::Instant::now() + timeout;
    while procinfo::group_alive(stray.pid as i32) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if procinfo::group_alive(stray.pid as i32) {
        let _ = kill_process_group(pg, Signal::KILL);
    }
    remove(dir, &stray.service);
}

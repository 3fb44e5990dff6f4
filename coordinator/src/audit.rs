//! The append-only audit log (docs/design.md §3): who did what to which host and service, when, and
//! how it ended. One JSON object per line in `data_dir/audit.jsonl`, written and synced before
//! the action it records is answered, so log shippers can follow it like any log file. It is
//! rotated at 64 MiB into `audit.jsonl.1` … `.4`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_proto::v1::AuditEntry;
use serde::{Deserialize, Serialize};

/// Size at which the audit log is rotated.
pub const ROTATE_BYTES: u64 = 64 << 20;
/// Rotated files kept.
pub const BACKUPS: u32 = 4;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// When, RFC 3339.
    pub at: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The caller's identity URI.
    pub who: String,
    /// "restart", "start", "stop".
    pub action: String,
    /// The host acted on.
    pub host: String,
    /// The service acted on.
    pub service: String,
    /// The command id.
    pub command_id: String,
    /// "requested", "succeeded", "failed", "rejected", "timed out".
    pub outcome: String,
    /// What happened, one line (an agent's answer, a refusal's reason).
    pub message: String,
}

impl From<Entry> for AuditEntry {
    fn from(e: Entry) -> AuditEntry {
        AuditEntry {
            at_ms: e.at_ms,
            who: e.who,
            action: e.action,
            host: e.host,
            service: e.service,
            command_id: e.command_id,
            outcome: e.outcome,
            message: e.message,
        }
    }
}

/// The audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<(File, u64)>>,
    /// With several coordinators, where every entry also goes so that each coordinator shows
    /// the whole cluster's audit (docs/design.md §13).
    shared: Option<Arc<dyn crate::store::SharedState>>,
}

impl AuditLog {
    /// Opens (appending) `data_dir/audit.jsonl`.
    pub fn open(data_dir: &Path) -> std::io::Result<AuditLog> {
        let path = data_dir.join("audit.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog { path, file: Arc::new(Mutex::new((file, size))), shared: None })
    }

    /// Also writes every entry to `shared`, and reads the audit from there first: the audit of
    /// a cluster, whichever coordinator served each call.
    pub fn with_shared(mut self, shared: Arc<dyn crate::store::SharedState>) -> AuditLog {
        self.shared = Some(shared);
        self
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn backup(&self, i: u32) -> PathBuf {
        PathBuf::from(format!("{}.{i}", self.path.display()))
    }

    fn append_blocking(&self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut guard = self.file.lock().expect("audit lock");
        if guard.1 + line.len() as u64 > ROTATE_BYTES {
            let _ = std::fs::remove_file(self.backup(BACKUPS));
            for i in (1..BACKUPS).rev() {
                let _ = std::fs::rename(self.backup(i), self.backup(i + 1));
            }
            std::fs::rename(&self.path, self.backup(1))?;
            *guard = (OpenOptions::new().create(true).append(true).open(&self.path)?, 0);
        }
        guard.0.write_all(&line)?;
        guard.0.sync_data()?;
        guard.1 += line.len() as u64;
        drop(guard);
        if let Some(shared) = &self.shared {
            line.pop();
            if let Err(e) = shared.append_audit(entry.at_ms, &line) {
                // The entry is in this coordinator's log; the cluster's misses it.
                tracing::warn!(error = %e, "cannot add an audit entry to the cluster's audit in etcd");
            }
        }
        Ok(())
    }

    /// Appends an entry durably. A failure is logged loudly and returned.
    pub async fn append(&self, entry: Entry) -> std::io::Result<()> {
        let this = self.clone();
        let e = entry.clone();
        let r = tokio::task::spawn_blocking(move || this.append_blocking(&e))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(err) = &r {
            tracing::error!(error = %err, ?entry, "cannot write the audit log");
        }
        r
    }

    /// The newest `n` entries, oldest first: the cluster's when there are several
    /// coordinators and etcd answers, this coordinator's own otherwise.
    pub fn last(&self, n: usize) -> Vec<Entry> {
        if let Some(shared) = &self.shared {
            match shared.shared_audit(n) {
                Ok(Some(lines)) => return lines.iter().filter_map(|l| serde_json::from_slice(l).ok()).collect(),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster's audit from etcd; showing this coordinator's")
                }
            }
        }
        self.local_last(n)
    }

    fn local_last(&self, n: usize) -> Vec<Entry> {
        let _guard = self.file.lock().expect("audit lock");
        let mut out: Vec<Entry> = Vec::new();
        let mut files = vec![self.path.clone()];
        files.extend((1..=BACKUPS).map(|i| self.backup(i)));
        for f in files {
            if out.len() >= n {
                break;
            }
            let Ok(lines) = fleet_common::last_lines(&f, n - out.len()) else { break };
            let mut entries: Vec<Entry> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
            entries.append(&mut out);
            out = entries;
        }
        out
    }
}

/// An entry for now.
pub fn entry(
    who: &str,
    action: &str,
    host: &str,
    service: &str,
    command_id: &str,
    outcome: &str,
    message: &str,
) -> Entry {
    let now = fleet_common::now_ms();
    Entry {
        at: fleet_common::rfc3339(now),
        at_ms: now,
        who: who.into(),
        action: action.into(),
        host: host.into(),
        service: service.into(),
        command_id: command_id.into(),
        outcome: outcome.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_survive_a_reopen_and_read_back_newest_last() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            for i in 0..5 {
                log.append(entry(
                    "spiffe://fleet.local/operator/alice",
                    "restart",
                    "pc2",
                    "api",
                    &format!("c{i}"),
                    "succeeded",
                    "",
                ))
                .await
                .unwrap();
            }
        }
        let log = AuditLog::open(dir.path()).unwrap();
        let last: Vec<_> = log.last(3).into_iter().map(|e| e.command_id).collect();
        assert_eq!(last, ["c2", "c3", "c4"]);
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(text.lines().all(|l| serde_json::from_str::<Entry>(l).is_ok()));
    }
}

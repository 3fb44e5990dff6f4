//! The coordinator's durable store (sled), and the only module that knows its keys and schema.
//!
//! One tree, `cluster`, so a group commit is a single atomic batch:
//! - `h<name>` → JSON [`HostRecord`]: what the coordinator knows of a host, including the
//!   newest stored sequence number of each recent agent run (for de-duplication).
//! - `r<name>\0<ts:8><boot:8><seq:8>` (big-endian) → a protobuf `Report`, at the time the agent
//!   took it. Host names cannot contain `\0`, so a host's reports form one contiguous range.
//! - `o<id>` → JSON `rollouts::RolloutRecord`, saved after every step of a rollout.
//! - `a<rule file>\0<group>` → JSON alert state of a rule group, saved after every evaluation.
//!
//! Reports older than the retention are deleted by [`Store::trim`]. A store that cannot be
//! opened is never silently replaced: the coordinator refuses to start and says how to recover.

use std::path::{Path, PathBuf};

use fleet_proto::v1::Report;
use prost::Message;
use serde::{Deserialize, Serialize};

/// sled's page cache (its default is 1 GiB). The store is written far more than read: reads
/// happen at start-up and for `fleetctl host`/`list_reports`, queries use the history in
/// [`crate::tsdb`], so a small cache costs little. sled's memory is several times this figure
/// under a heavy write load: at 10,000 agents, 8 MiB instead of 64 MiB saved ~120 MiB after
/// 8 minutes (docs/benchmarks.md).
const CACHE_BYTES: u64 = 8 << 20;

/// Newest stored sequence number of one agent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootMark {
    /// The agent run.
    pub boot_id: u64,
    /// The highest sequence number stored for it.
    pub seq: u64,
}

/// Agent runs remembered per host for de-duplication. A run older than the 16 most recent
/// cannot send anything any more (the agent replays its buffer oldest first).
pub const MAX_BOOT_MARKS: usize = 16;

/// What the coordinator keeps about a host across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostRecord {
    /// The agent name.
    pub name: String,
    /// Labels from the agent's last Hello.
    pub labels: std::collections::BTreeMap<String, String>,
    /// fleet-agent version.
    pub agent_version: String,
    /// Operating system.
    pub os: String,
    /// Machine host name.
    pub hostname: String,
    /// Report interval of the agent in milliseconds.
    pub report_interval_ms: u64,
    /// When the host was first seen (ms since the epoch).
    pub first_seen_ms: i64,
    /// When anything was last heard from it.
    pub last_seen_ms: i64,
    /// When its newest stored report was taken.
    pub last_report_ms: i64,
    /// The address of its current or last session.
    pub peer_address: String,
    /// Why its last session ended.
    pub last_disconnect_reason: String,
    /// Newest stored sequence number per recent agent run, oldest run first.
    pub boots: Vec<BootMark>,
}

impl HostRecord {
    /// Whether the report (boot, seq) is already stored.
    pub fn has_stored(&self, boot_id: u64, seq: u64) -> bool {
        self.boots.iter().any(|b| b.boot_id == boot_id && seq <= b.seq)
    }

    /// Notes that (boot, seq) is stored.
    pub fn mark_stored(&mut self, boot_id: u64, seq: u64) {
        match self.boots.iter_mut().find(|b| b.boot_id == boot_id) {
            Some(b) => b.seq = b.seq.max(seq),
            None => {
                self.boots.push(BootMark { boot_id, seq });
                if self.boots.len() > MAX_BOOT_MARKS {
                    self.boots.remove(0);
                }
            }
        }
    }

    /// The newest stored report id: the highest sequence number of the newest run.
    pub fn last_stored(&self) -> Option<BootMark> {
        self.boots.last().copied()
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be opened; the coordinator must not start on it.
    #[error(
        "cannot open the store at {path}: {reason}\n  the coordinator will not start on a store it cannot read. To recover:\n  \
         - if another fleet-coordinator uses this data_dir, stop it or give this one another data_dir;\n  \
         - otherwise move the store aside (mv {path} {path}.broken) to start with an empty history and host list\n    \
         (agents re-register on their next report), or restore {path} from a backup"
    )]
    Open { path: PathBuf, reason: String },
    /// A read or write failed.
    #[error("store at {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// The coordinator's durable store.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A report key.
pub fn report_key(host: &str, timestamp_ms: i64, boot_id: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 26);
    k.push(b'r');
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&(timestamp_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(&boot_id.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn host_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(b'h');
    k.extend_from_slice(name.as_bytes());
    k
}

/// A parsed report key: (host, timestamp, boot, seq).
fn parse_report_key(k: &[u8]) -> Option<(String, i64, u64, u64)> {
    let rest = k.strip_prefix(b"r")?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let (name, tail) = rest.split_at(nul);
    let tail = &tail[1..];
    if tail.len() != 24 {
        return None;
    }
    let n = |i: usize| u64::from_be_bytes(tail[i..i + 8].try_into().expect("8 bytes"));
    Some((String::from_utf8(name.to_vec()).ok()?, n(0) as i64, n(8), n(16)))
}

/// One report found while loading: its identity and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedReport {
    /// The agent run.
    pub boot_id: u64,
    /// Sequence number in that run.
    pub seq: u64,
    /// When it was taken.
    pub timestamp_ms: i64,
}

/// Everything loaded at start-up for one host.
#[derive(Debug, Default)]
pub struct LoadedHost {
    /// The persisted record.
    pub record: HostRecord,
    /// Reports held within the retention window.
    pub held: u64,
    /// The newest report, decoded.
    pub latest: Option<Report>,
}

/// What [`Store::host_reports`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostReports {
    /// Reports of the host held.
    pub count: u64,
    /// When the oldest was taken (0 if none).
    pub oldest_ms: i64,
    /// The newest ones asked for, oldest first.
    pub newest: std::collections::VecDeque<LoadedReport>,
}

/// One write of a group commit.
#[derive(Debug)]
pub enum Write<'a> {
    /// Store a report (already encoded).
    Report { host: &'a str, timestamp_ms: i64, boot_id: u64, seq: u64, encoded: &'a [u8] },
    /// Store a host record.
    Host(&'a HostRecord),
}

impl Store {
    /// Opens the store under `data_dir/store`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let open_err = |reason: String| StoreError::Open { path: path.clone(), reason };
        let p = path.clone();
        let db = match std::panic::catch_unwind(move || {
            sled::Config::new().path(p).cache_capacity(CACHE_BYTES).flush_every_ms(Some(1000)).open()
        }) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                let s = e.to_string();
                let reason =
                    if s.contains("lock") || s.contains("WouldBlock") || s.contains("Resource temporarily unavailable")
                    {
                        format!("{s} (another process has it open)")
                    } else {
                        s
                    };
                return Err(open_err(reason));
            }
            Err(_) => return Err(open_err("the store is damaged (reading it failed)".into())),
        };
        let tree = db.open_tree("cluster").map_err(|e| open_err(e.to_string()))?;
        Ok(Store { path, db, tree })
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: e.to_string() }
    }

    /// Loads every host record and the reports taken at or after `since_ms`, deleting older
    /// ones on the way. Damaged entries make the load fail: the operator must decide.
    pub fn load(&self, since_ms: i64) -> Result<Vec<LoadedHost>, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: self.path.clone(), reason };
        let mut hosts: std::collections::BTreeMap<String, LoadedHost> = Default::default();
        for item in self.tree.scan_prefix(b"h") {
            let (k, v) = item.map_err(|e| open_err(e.to_string()))?;
            let record: HostRecord = serde_json::from_slice(&v)
                .map_err(|e| open_err(format!("host record {}: {e}", String::from_utf8_lossy(&k[1..]))))?;
            hosts.insert(record.name.clone(), LoadedHost { record, ..Default::default() });
        }
        let mut expired = sled::Batch::default();
        let mut n_expired = 0usize;
        let mut latest_key: std::collections::HashMap<String, sled::IVec> = Default::default();
        for item in self.tree.scan_prefix(b"r") {
            let (k, _) = item.map_err(|e| open_err(e.to_string()))?;
            let (name, ts, _, _) =
                parse_report_key(&k).ok_or_else(|| open_err(format!("malformed report key {k:?}")))?;
            if ts < since_ms {
                expired.remove(k);
                n_expired += 1;
                continue;
            }
            let h = hosts.entry(name.clone()).or_insert_with(|| LoadedHost {
                record: HostRecord { name: name.clone(), ..Default::default() },
                ..Default::default()
            });
            h.held += 1;
            latest_key.insert(name, k);
        }
        for (name, k) in latest_key {
            let v = self.tree.get(&k).map_err(|e| open_err(e.to_string()))?;
            if let Some(v) = v {
                let r = Report::decode(v.as_ref()).map_err(|e| open_err(format!("report of {name}: {e}")))?;
                if let Some(h) = hosts.get_mut(&name) {
                    h.latest = Some(r);
                }
            }
        }
        if n_expired > 0 {
            self.tree.apply_batch(expired).map_err(|e| self.io(e))?;
            tracing::info!(reports = n_expired, "deleted reports older than the retention");
        }
        Ok(hosts.into_values().collect())
    }

    /// Calls `f` with every stored report taken at or after `since_ms`, oldest first per host.
    pub fn replay_reports(&self, since_ms: i64, mut f: impl FnMut(&str, &Report)) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.tree.scan_prefix(b"r") {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let Some((name, ts, _, _)) = parse_report_key(&k) else { continue };
            if ts < since_ms {
                continue;
            }
            let r = Report::decode(v.as_ref()).map_err(|e| self.io(format!("report of {name}: {e}")))?;
            f(&name, &r);
            n += 1;
        }
        Ok(n)
    }

    /// Applies one group commit atomically and makes it durable before returning.
    pub fn commit(&self, writes: &[Write<'_>]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Report { host, timestamp_ms, boot_id, seq, encoded } => {
                    batch.insert(report_key(host, *timestamp_ms, *boot_id, *seq), *encoded);
                }
                Write::Host(rec) => {
                    let json = serde_json::to_vec(rec).map_err(|e| self.io(e))?;
                    batch.insert(host_key(&rec.name), json);
                }
            }
        }
        self.tree.apply_batch(batch).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }

    /// How many reports of `host` are held, the oldest one's time, and the newest `limit` taken
    /// at or after `since_ms`, oldest first (read from the store: the coordinator keeps no index
    /// of stored reports in memory).
    pub fn host_reports(&self, host: &str, since_ms: i64, limit: usize) -> Result<HostReports, StoreError> {
        let start = report_key(host, i64::MIN, 0, 0);
        let mut end = start[..host.len() + 1].to_vec();
        end.push(1);
        let mut out = HostReports::default();
        for item in self.tree.range(start..end) {
            let (k, _) = item.map_err(|e| self.io(e))?;
            let Some((_, ts, boot_id, seq)) = parse_report_key(&k) else { continue };
            if out.count == 0 {
                out.oldest_ms = ts;
            }
            out.count += 1;
            if ts >= since_ms && limit > 0 {
                if out.newest.len() == limit {
                    out.newest.pop_front();
                }
                out.newest.push_back(LoadedReport { boot_id, seq, timestamp_ms: ts });
            }
        }
        Ok(out)
    }

    /// Deletes `host`'s reports taken before `before_ms`; returns how many.
    pub fn trim(&self, host: &str, before_ms: i64) -> Result<usize, StoreError> {
        let mut start = Vec::with_capacity(host.len() + 2);
        start.push(b'r');
        start.extend_from_slice(host.as_bytes());
        start.push(0);
        let end = report_key(host, before_ms, 0, 0);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.range(start..end) {
            let (k, _) = item.map_err(|e| self.io(e))?;
            batch.remove(k);
            n += 1;
        }
        if n > 0 {
            self.tree.apply_batch(batch).map_err(|e| self.io(e))?;
        }
        Ok(n)
    }

    /// Flushes outstanding writes.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.io(e))
    }

    /// Saves a rollout durably (flushed before returning), forgetting the oldest finished
    /// rollouts beyond [`crate::rollouts::MAX_ROLLOUTS`].
    pub fn save_rollout(&self, r: &crate::rollouts::RolloutRecord) -> Result<(), StoreError> {
        let mut key = vec![b'o'];
        key.extend_from_slice(r.id.as_bytes());
        let json = serde_json::to_vec(r).map_err(|e| self.io(e))?;
        self.tree.insert(key, json).map_err(|e| self.io(e))?;
        let total = self.tree.scan_prefix(b"o").count();
        if total > crate::rollouts::MAX_ROLLOUTS {
            let mut done: Vec<(i64, sled::IVec)> = self
                .tree
                .scan_prefix(b"o")
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    let r: crate::rollouts::RolloutRecord = serde_json::from_slice(&v).ok()?;
                    r.finished().then_some((r.created_at_ms, k))
                })
                .collect();
            done.sort_by_key(|(t, _)| *t);
            let excess = total - crate::rollouts::MAX_ROLLOUTS;
            for (_, k) in done.into_iter().take(excess) {
                self.tree.remove(k).map_err(|e| self.io(e))?;
            }
        }
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Saves the alert state of one rule group (not flushed: the next group commit or the
    /// background flush makes it durable within a second).
    pub fn save_alert_state(&self, group: &str, json: &[u8]) -> Result<(), StoreError> {
        let mut key = vec![b'a'];
        key.extend_from_slice(group.as_bytes());
        self.tree.insert(key, json).map_err(|e| self.io(e))?;
        Ok(())
    }

    /// The saved alert state of every rule group.
    pub fn load_alert_state(&self) -> Result<std::collections::HashMap<String, Vec<u8>>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for item in self.tree.scan_prefix(b"a") {
            let (k, v) = item.map_err(|e| self.io(e))?;
            out.insert(String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec());
        }
        Ok(out)
    }

    /// Every stored rollout.
    pub fn load_rollouts(&self) -> Result<Vec<crate::rollouts::RolloutRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"o") {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let r = serde_json::from_slice(&v).map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: format!("rollout {}: {e}", String::from_utf8_lossy(&k[1..])),
            })?;
            out.push(r);
        }
        Ok(out)
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_keys_sort_by_host_then_time() {
        let a = report_key("a", 5, 9, 9);
        let b = report_key("a", 6, 1, 1);
        let c = report_key("a-b", 0, 0, 0);
        assert!(a < b && b < c, "a's range must end before a-b's starts");
        assert_eq!(parse_report_key(&b), Some(("a".to_string(), 6, 1, 1)));
    }

    #[test]
    fn commits_load_back_and_trim() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut rec = HostRecord { name: "pc2".into(), ..Default::default() };
            let mut writes_data = vec![];
            for seq in 1..=4u64 {
                let r = Report { timestamp_ms: seq as i64 * 1000, ..Default::default() };
                writes_data.push((seq, r.encode_to_vec()));
                rec.mark_stored(7, seq);
            }
            let mut writes: Vec<Write<'_>> = writes_data
                .iter()
                .map(|(seq, enc)| Write::Report {
                    host: "pc2",
                    timestamp_ms: *seq as i64 * 1000,
                    boot_id: 7,
                    seq: *seq,
                    encoded: enc,
                })
                .collect();
            writes.push(Write::Host(&rec));
            s.commit(&writes).unwrap();
            assert_eq!(s.trim("pc2", 2000).unwrap(), 1);
        }
        let s = Store::open(dir.path()).unwrap();
        let hosts = s.load(2500).unwrap();
        assert_eq!(hosts.len(), 1);
        let h = &hosts[0];
        assert_eq!(h.record.last_stored(), Some(BootMark { boot_id: 7, seq: 4 }));
        assert!(h.record.has_stored(7, 3) && !h.record.has_stored(7, 5) && !h.record.has_stored(8, 1));
        assert_eq!(h.held, 2, "seq 1 was trimmed, seq 2 is older than the window");
        let found = s.host_reports("pc2", 0, 10).unwrap();
        let seqs: Vec<_> = found.newest.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!((found.count, found.oldest_ms), (2, 3000));
        let newest = s.host_reports("pc2", 0, 1).unwrap();
        assert_eq!(newest.newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4], "the limit keeps the newest");
        assert_eq!(s.host_reports("pc2", 3500, 10).unwrap().newest.len(), 1, "since_ms filters");
        assert_eq!(s.host_reports("pc", 0, 10).unwrap().count, 0, "another host's reports are not counted");
        assert_eq!(h.latest.as_ref().unwrap().timestamp_ms, 4000);
    }

    #[test]
    fn second_open_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another process has it open") || err.contains("lock"), "{err}");
        assert!(err.contains("move the store aside"), "{err}");
    }

    #[test]
    fn boot_marks_are_bounded() {
        let mut rec = HostRecord::default();
        for boot in 1..=40 {
            rec.mark_stored(boot, 1);
        }
        assert_eq!(rec.boots.len(), MAX_BOOT_MARKS);
        assert_eq!(rec.last_stored(), Some(BootMark { boot_id: 40, seq: 1 }));
    }
}

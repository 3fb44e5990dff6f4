//! The coordinator's durable store, and the only module that knows its files, keys and schema.
//!
//! Reports go to the report log ([`reports`]): append-only segment files under
//! `data_dir/reports`, group-committed, read back once at start-up and deleted whole past the
//! retention. Everything else is small and changes rarely, and lives in sled (`data_dir/store`),
//! one tree, `cluster`:
//! - `h<name>` → JSON [`HostRecord`]: what the coordinator knows of a host, saved when its agent
//!   says hello and when its session ends. Its de-duplication marks and newest report time move
//!   on with every report; at start-up they are taken from the report log, which holds every
//!   report the saved record may not know of.
//! - `o<id>` → JSON `RolloutRecord` (store/rollouts.rs), saved after every step of a rollout.
//! - `a<rule file>\0<group>` → JSON alert state of a rule group, saved after every evaluation.
//!
//! A store that cannot be opened is never silently replaced: the coordinator refuses to start
//! and says how to recover.

mod reopen;
pub mod reports;
mod rollouts;
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::Report;
use prost::Message;
use serde::{Deserialize, Serialize};

pub use reports::Record;
use reports::{LogError, ReportLog};
pub use rollouts::{HostStep, MAX_ROLLOUTS, RolloutRecord, RolloutState, StepState};
pub use shared::{RecordKind, SharedState};

/// sled's page cache (its default is 1 GiB). sled holds only host records, rollouts and alert
/// state, read at start-up and written a few times a minute.
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

/// How long after a host's removal its reports still do not bring it back: until another
/// coordinator of a cluster read the deny list again (every 2 s) and cut the session, the
/// removed agent may have gone on reporting there.
pub const REMOVAL_GRACE_MS: i64 = 10_000;

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
    /// Whether the agent's config allows `fleetctl exec` (from its last Hello).
    pub allow_exec: bool,
    /// Set while the host is drained (`fleetctl hosts drain`).
    pub drained: Option<Drain>,
}

/// Why and since when a host is drained: skipped by rollouts and selectors, its alerts
/// marked `maintenance="true"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Drain {
    /// The reason given, or empty.
    pub reason: String,
    /// Who drained it.
    pub by: String,
    /// When, in milliseconds since the epoch.
    pub since_ms: i64,
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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A record cannot be encoded, or read back.
    #[error("store: {what}: {reason}")]
    Record { what: String, reason: String },
    /// The state several coordinators share (in etcd) cannot be read or written.
    #[error("shared state: {0}")]
    Shared(String),
}

/// The coordinator's durable store.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    /// sled (host records, rollouts, alert state), opened again after an I/O error.
    sled: Arc<reopen::Reopening>,
    reports: Arc<ReportLog>,
}

/// The sled tree that holds everything.
const TREE: &str = "cluster";

/// How long opening waits for a held lock to be released: a previous handle of this process
/// (closed, or being opened again after an I/O error) lets go once its flusher thread ends.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_sled(path: &Path) -> Result<sled::Db, String> {
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_sled_once(path) {
            Err(e) if e.ends_with("(another process has it open)") && std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn open_sled_once(path: &Path) -> Result<sled::Db, String> {
    let p = path.to_path_buf();
    // sled panics on some kinds of damage instead of returning an error; treat both alike.
    match std::panic::catch_unwind(move || {
        sled::Config::new().path(p).cache_capacity(CACHE_BYTES).flush_every_ms(Some(1000)).open()
    }) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => {
            let s = e.to_string();
            if s.contains("lock") || s.contains("WouldBlock") || s.contains("Resource temporarily unavailable") {
                Err(format!("{s} (another process has it open)"))
            } else {
                Err(s)
            }
        }
        Err(_) => Err("the store is damaged (reading it failed)".into()),
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

fn host_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(b'h');
    k.extend_from_slice(name.as_bytes());
    k
}

/// A report key of fleet 0.1's sled store, `r<name>\0<ts:8><boot:8><seq:8>`, parsed:
/// (host, timestamp, boot, seq). Such reports are moved to the report log at start-up.
fn parse_legacy_report_key(k: &[u8]) -> Option<(String, i64, u64, u64)> {
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
    /// The persisted record, with the de-duplication marks and newest report time the report
    /// log adds to it.
    pub record: HostRecord,
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

impl Store {
    /// Opens the store: sled under `data_dir/store`, the report log under `data_dir/reports`
    /// (read by [`Store::load`]). `retention` sets how finely the log is cut into files.
    pub fn open(data_dir: &Path, retention: Duration) -> Result<Store, StoreError> {
        let path = data_dir.join("store");
        let open_err = |reason: String| StoreError::Open { path: path.clone(), reason };
        let db = open_sled(&path).map_err(open_err)?;
        let tree = db.open_tree(TREE).map_err(|e| open_err(e.to_string()))?;
        // sled's lock (above) keeps a second coordinator out of the report log too.
        let reports = ReportLog::open(data_dir.join("reports"), retention.as_millis() as i64)
            .map_err(|e| StoreError::Open { path: data_dir.join("reports"), reason: e.to_string() })?;
        let sled = Arc::new(reopen::Reopening::new(&path, db, tree, TREE, open_sled));
        Ok(Store { path, sled, reports: Arc::new(reports) })
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: e.to_string() }
    }

    fn log_err(&self, e: LogError) -> StoreError {
        StoreError::Io { path: self.reports.dir().to_path_buf(), reason: e.to_string() }
    }

    /// Loads every host record, and reads the report log: every report taken at or after
    /// `since_ms` brings its host's de-duplication marks, newest report and times up to date,
    /// and older segments are deleted. What the coordinator needs before it takes sessions;
    /// the history follows with [`Store::replay_history`]. Damage makes the load fail: the
    /// operator must decide.
    pub fn load(&self, since_ms: i64) -> Result<Vec<LoadedHost>, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: self.path.clone(), reason };
        let mut hosts: BTreeMap<String, LoadedHost> = Default::default();
        let records =
            self.sled.with(|_, tree| tree.scan_prefix(b"h").collect::<sled::Result<Vec<_>>>()).map_err(open_err)?;
        for (k, v) in records {
            let record: HostRecord = serde_json::from_slice(&v)
                .map_err(|e| open_err(format!("host record {}: {e}", String::from_utf8_lossy(&k[1..]))))?;
            hosts.insert(record.name.clone(), LoadedHost { record, ..Default::default() });
        }
        self.move_legacy_reports(since_ms)?;

        // Marks as the log is read: the log holds each (agent run, seq) once, but a crash between
        // the move above and its clean-up could have written some twice. Of the reports, only
        // each host's newest is decoded, after the scan.
        let mut marks: HashMap<String, HostRecord> = HashMap::new();
        let mut newest: HashMap<String, (i64, Vec<u8>)> = HashMap::new();
        let log_dir = self.reports.dir().to_path_buf();
        let repaired = self
            .reports
            .load(since_ms, |r| {
                let m = match marks.get_mut(r.host) {
                    Some(m) => m,
                    None => marks.entry(r.host.to_string()).or_default(),
                };
                if m.has_stored(r.boot_id, r.seq) {
                    return false;
                }
                m.mark_stored(r.boot_id, r.seq);
                m.last_report_ms = m.last_report_ms.max(r.timestamp_ms);
                match newest.get_mut(r.host) {
                    Some((t, _)) if *t > r.timestamp_ms => {}
                    Some((t, bytes)) => {
                        *t = r.timestamp_ms;
                        bytes.clear();
                        bytes.extend_from_slice(r.encoded);
                    }
                    None => {
                        newest.insert(r.host.to_string(), (r.timestamp_ms, r.encoded.to_vec()));
                    }
                }
                true
            })
            .map_err(|e| StoreError::Open { path: log_dir.clone(), reason: e.to_string() })?;
        if let Some(d) = repaired {
            tracing::warn!(
                segment = %d.path.display(),
                offset = d.offset,
                reason = %d.reason,
                "the report log ended in a write a crash cut short (never acknowledged); cut it off"
            );
        }
        for (name, m) in marks {
            let h = hosts.entry(name.clone()).or_insert_with(|| LoadedHost {
                record: HostRecord { name: name.clone(), ..Default::default() },
                ..Default::default()
            });
            for b in &m.boots {
                h.record.mark_stored(b.boot_id, b.seq);
            }
            h.record.last_report_ms = h.record.last_report_ms.max(m.last_report_ms);
            // The record may be older than the reports (a crash before the session ended).
            h.record.last_seen_ms = h.record.last_seen_ms.max(m.last_report_ms);
            if let Some((_, bytes)) = newest.remove(&name) {
                let r = Report::decode(bytes.as_slice()).map_err(|e| StoreError::Open {
                    path: log_dir.clone(),
                    reason: format!("the newest report of {name} cannot be decoded: {e}"),
                })?;
                h.latest = Some(r);
            }
        }
        // Hosts an operator removed stay gone unless they reported since.
        for (name, gone_at_ms) in (self as &dyn SharedState).all::<i64>(RecordKind::RemovedHost)? {
            if hosts.get(&name).is_some_and(|h| h.record.last_report_ms <= gone_at_ms + REMOVAL_GRACE_MS) {
                hosts.remove(&name);
            }
        }
        Ok(hosts.into_values().collect())
    }

    /// Forgets host `name` as of `at_ms` (reports up to [`REMOVAL_GRACE_MS`] later do not
    /// bring it back either): its record goes, and its reports in the log (which
    /// age out with the retention) no longer bring it back at the next start.
    pub fn remove_host(&self, name: &str, at_ms: i64) -> Result<(), StoreError> {
        self.put_raw(RecordKind::RemovedHost.prefix(), name, at_ms.to_string().as_bytes())?;
        let key = host_key(name);
        self.sled
            .with(|db, tree| {
                tree.remove(key.as_slice())?;
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Calls `f` with every report taken at or after `since_ms`, in the order of the log
    /// (each host's in order), for the history: those [`Store::load`] found, then those
    /// appended since, until none is left; from then on [`Store::append_reports`] says that
    /// the writer hands reports to the history itself. Returns how many reports were read;
    /// `stop` ends it early (at shutdown).
    pub fn replay_history(
        &self,
        since_ms: i64,
        stop: impl Fn() -> bool,
        mut f: impl FnMut(&str, &Report),
    ) -> Result<u64, StoreError> {
        let mut marks: HashMap<String, HostRecord> = HashMap::new();
        let mut undecodable = 0u64;
        let n = self
            .reports
            .replay(since_ms, stop, |r| {
                let m = match marks.get_mut(r.host) {
                    Some(m) => m,
                    None => marks.entry(r.host.to_string()).or_default(),
                };
                if m.has_stored(r.boot_id, r.seq) {
                    return;
                }
                m.mark_stored(r.boot_id, r.seq);
                match Report::decode(r.encoded) {
                    Ok(report) => f(r.host, &report),
                    Err(e) => {
                        if undecodable == 0 {
                            tracing::error!(host = %r.host, error = %e, "a stored report cannot be decoded; the history lacks it");
                        }
                        undecodable += 1;
                    }
                }
            })
            .map_err(|e| self.log_err(e))?;
        if undecodable > 0 {
            tracing::error!(
                reports = undecodable,
                "stored reports that cannot be decoded are missing from the history"
            );
        }
        Ok(n)
    }

    /// Moves the reports fleet 0.1 kept in sled to the report log (those within the window),
    /// and deletes them from sled.
    fn move_legacy_reports(&self, since_ms: i64) -> Result<(), StoreError> {
        let open_err = |reason: String| StoreError::Open { path: self.path.clone(), reason };
        let mut moved = 0usize;
        loop {
            let batch = self
                .sled
                .with(|_, tree| tree.scan_prefix(b"r").take(4096).collect::<sled::Result<Vec<_>>>())
                .map_err(open_err)?;
            let (keys, values): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            if keys.is_empty() {
                break;
            }
            let parsed: Vec<_> = keys.iter().map(|k| parse_legacy_report_key(k)).collect();
            let records: Vec<Record<'_>> = parsed
                .iter()
                .zip(&values)
                .filter_map(|(p, v)| {
                    let (host, ts, boot, seq) = p.as_ref()?;
                    (*ts >= since_ms).then_some(Record {
                        host,
                        timestamp_ms: *ts,
                        boot_id: *boot,
                        seq: *seq,
                        encoded: v,
                    })
                })
                .collect();
            moved += records.len();
            self.reports
                .append(&records)
                .map_err(|e| StoreError::Open { path: self.reports.dir().to_path_buf(), reason: e.to_string() })?;
            self.sled
                .with(|db, tree| {
                    let mut batch = sled::Batch::default();
                    for k in &keys {
                        batch.remove(k.clone());
                    }
                    tree.apply_batch(batch)?;
                    db.flush()
                })
                .map_err(open_err)?;
        }
        if moved > 0 {
            tracing::info!(reports = moved, "moved the reports of the sled store to the report log");
        }
        Ok(())
    }

    /// Appends reports to the report log; they are durable when this returns. Returns whether
    /// the caller hands them to the history (not while [`Store::replay_history`] still runs:
    /// it reads them from the log itself).
    pub fn append_reports(&self, records: &[Record<'_>]) -> Result<bool, StoreError> {
        self.reports.append(records).map_err(|e| self.log_err(e))
    }

    /// Gives up on [`Store::replay_history`] after it failed: appended reports go to the
    /// history at once, which then holds what arrives from now on.
    pub fn abandon_history_replay(&self) {
        self.reports.abandon_replay();
    }

    /// Whether every stored report has reached the history.
    pub fn history_replayed(&self) -> bool {
        self.reports.replayed()
    }

    /// Saves host records durably (flushed before returning).
    pub fn save_hosts(&self, records: &[&HostRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(records.len());
        for rec in records {
            encoded.push((host_key(&rec.name), serde_json::to_vec(rec).map_err(|e| self.io(e))?));
        }
        self.sled
            .with(|db, tree| {
                let mut batch = sled::Batch::default();
                for (k, v) in &encoded {
                    batch.insert(k.as_slice(), v.as_slice());
                }
                tree.apply_batch(batch)?;
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// How many reports of `host` are held, the oldest one's time, and the newest `limit` taken
    /// at or after `since_ms`, oldest first. Counting is free; listing reads the report log.
    pub fn host_reports(&self, host: &str, since_ms: i64, limit: usize) -> Result<HostReports, StoreError> {
        let found = self.reports.host_reports(host, since_ms, limit).map_err(|e| self.log_err(e))?;
        Ok(HostReports {
            count: found.count,
            oldest_ms: found.oldest_ms,
            newest: found
                .newest
                .into_iter()
                .map(|(boot_id, seq, timestamp_ms)| LoadedReport { boot_id, seq, timestamp_ms })
                .collect(),
        })
    }

    /// Deletes the report log's files whose every report was taken before `cutoff_ms`;
    /// returns how many reports went.
    pub fn trim_reports(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.reports.trim(cutoff_ms).map_err(|e| self.log_err(e))
    }

    /// Reports held in the report log.
    pub fn reports_held(&self) -> u64 {
        self.reports.held()
    }

    /// Bytes of the report log's files.
    pub fn reports_disk_bytes(&self) -> u64 {
        self.reports.disk_bytes()
    }

    /// Flushes outstanding writes.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sled.with(|db, _| db.flush()).map(|_| ()).map_err(|e| self.io(e))
    }

    /// Saves a rollout durably (flushed before returning), forgetting the oldest finished
    /// rollouts beyond [`MAX_ROLLOUTS`].
    pub fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let mut key = vec![b'o'];
        key.extend_from_slice(r.id.as_bytes());
        let json = serde_json::to_vec(r).map_err(|e| self.io(e))?;
        self.sled
            .with(|db, tree| {
                tree.insert(key.as_slice(), json.as_slice())?;
                let total = tree.scan_prefix(b"o").count();
                if total > MAX_ROLLOUTS {
                    let mut done: Vec<(i64, sled::IVec)> = tree
                        .scan_prefix(b"o")
                        .filter_map(Result::ok)
                        .filter_map(|(k, v)| {
                            let r: RolloutRecord = serde_json::from_slice(&v).ok()?;
                            r.finished().then_some((r.created_at_ms, k))
                        })
                        .collect();
                    done.sort_by_key(|(t, _)| *t);
                    let excess = total - MAX_ROLLOUTS;
                    for (_, k) in done.into_iter().take(excess) {
                        tree.remove(k)?;
                    }
                }
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Saves the alert state of one rule group durably (flushed: one sync per group
    /// evaluation, so that a crash right after an alert fired neither forgets it nor fires it
    /// again with a new start time).
    pub fn save_alert_state(&self, group: &str, json: &[u8]) -> Result<(), StoreError> {
        let mut key = vec![b'a'];
        key.extend_from_slice(group.as_bytes());
        self.sled
            .with(|db, tree| {
                tree.insert(key.as_slice(), json)?;
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// The saved alert state of every rule group.
    pub fn load_alert_state(&self) -> Result<std::collections::HashMap<String, Vec<u8>>, StoreError> {
        let mut out = std::collections::HashMap::new();
        let items = self
            .sled
            .with(|_, tree| tree.scan_prefix(b"a").collect::<sled::Result<Vec<_>>>())
            .map_err(|e| self.io(e))?;
        for (k, v) in items {
            out.insert(String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec());
        }
        Ok(out)
    }

    /// Every stored rollout.
    pub fn load_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut out = Vec::new();
        let items = self
            .sled
            .with(|_, tree| tree.scan_prefix(b"o").collect::<sled::Result<Vec<_>>>())
            .map_err(|e| self.io(e))?;
        for (k, v) in items {
            let r = serde_json::from_slice(&v).map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: format!("rollout {}: {e}", String::from_utf8_lossy(&k[1..])),
            })?;
            out.push(r);
        }
        Ok(out)
    }

    /// Saves one small record under key prefix `kind` ([`RecordKind::prefix`]) durably,
    /// flushed before returning.
    fn put_raw(&self, kind: u8, id: &str, json: &[u8]) -> Result<(), StoreError> {
        let mut key = vec![kind];
        key.extend_from_slice(id.as_bytes());
        self.sled
            .with(|db, tree| {
                tree.insert(key.as_slice(), json)?;
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Removes a record saved with [`Store::put_raw`], durably.
    fn remove_raw(&self, kind: u8, id: &str) -> Result<(), StoreError> {
        let mut key = vec![kind];
        key.extend_from_slice(id.as_bytes());
        self.sled
            .with(|db, tree| {
                tree.remove(key.as_slice())?;
                db.flush()
            })
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Every record under key prefix `kind`, with its id.
    fn raw_records(&self, kind: u8) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let items = self
            .sled
            .with(|_, tree| tree.scan_prefix([kind]).collect::<sled::Result<Vec<_>>>())
            .map_err(|e| self.io(e))?;
        Ok(items.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec())).collect())
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Appends what the store holds: reports in the history window and the report log's size.
impl crate::metrics::FmtMetrics for Store {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        let store = self;
        e.family("fleet_coordinator_history_reports", "gauge", "Reports held in the history window.");
        e.sample("fleet_coordinator_history_reports", &[], store.reports_held() as f64);
        e.family("fleet_coordinator_report_log_bytes", "gauge", "Bytes of the report log's segment files.");
        e.sample("fleet_coordinator_report_log_bytes", &[], store.reports_disk_bytes() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn report(seq: u64, ts: i64) -> Report {
        Report { id: Some(fleet_proto::v1::ReportId { boot_id: 7, seq }), timestamp_ms: ts, ..Default::default() }
    }

    fn append(s: &Store, host: &str, reports: &[Report]) {
        let encoded: Vec<Vec<u8>> = reports.iter().map(|r| r.encode_to_vec()).collect();
        let records: Vec<Record<'_>> = reports
            .iter()
            .zip(&encoded)
            .map(|(r, e)| {
                let id = r.id.unwrap();
                Record { host, timestamp_ms: r.timestamp_ms, boot_id: id.boot_id, seq: id.seq, encoded: e }
            })
            .collect();
        s.append_reports(&records).unwrap();
    }

    #[test]
    fn reports_and_records_load_back_and_trim() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), HOUR).unwrap();
            // The record is saved at hello, before any report: the log brings it up to date.
            let rec = HostRecord { name: "pc2".into(), last_seen_ms: 500, ..Default::default() };
            s.save_hosts(&[&rec]).unwrap();
            append(&s, "pc2", &(1..=4).map(|seq| report(seq, seq as i64 * 1000)).collect::<Vec<_>>());
            append(&s, "main-pc", &[report(1, 1500)]);
            assert_eq!(s.reports_held(), 5);
        }
        let s = Store::open(dir.path(), HOUR).unwrap();
        let hosts = s.load(2500).unwrap();
        assert!(!s.history_replayed());
        let mut replayed = vec![];
        let n = s.replay_history(2500, || false, |h, r| replayed.push((h.to_string(), r.timestamp_ms))).unwrap();
        assert_eq!(replayed, [("pc2".to_string(), 3000), ("pc2".to_string(), 4000)], "only the window is replayed");
        assert_eq!(n, 2);
        assert!(s.history_replayed());
        assert_eq!(hosts.len(), 1, "main-pc has no record and no report in the window");
        let h = &hosts[0];
        assert_eq!(h.record.last_stored(), Some(BootMark { boot_id: 7, seq: 4 }));
        assert!(h.record.has_stored(7, 3) && !h.record.has_stored(7, 5) && !h.record.has_stored(8, 1));
        assert_eq!((h.record.last_report_ms, h.record.last_seen_ms), (4000, 4000));
        assert_eq!(h.latest.as_ref().unwrap().timestamp_ms, 4000);

        let found = s.host_reports("pc2", 0, 10).unwrap();
        assert_eq!(found.newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!((found.count, found.oldest_ms), (2, 3000));
        let newest = s.host_reports("pc2", 0, 1).unwrap();
        assert_eq!(newest.newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4], "the limit keeps the newest");
        assert_eq!(s.host_reports("pc2", 3500, 10).unwrap().newest.len(), 1, "since_ms filters");
        assert_eq!(s.host_reports("pc", 0, 10).unwrap().count, 0, "another host's reports are not counted");

        // New reports go to a new segment; trimming deletes the old one whole.
        append(&s, "pc2", &[report(5, 9000)]);
        assert_eq!(s.trim_reports(5000).unwrap(), 2);
        let left = s.host_reports("pc2", 0, 10).unwrap();
        assert_eq!((left.count, left.newest.iter().map(|r| r.seq).collect::<Vec<_>>()), (1, vec![5]));
    }

    #[test]
    fn reports_of_the_sled_store_move_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), HOUR).unwrap();
            for (seq, ts) in [(1u64, 1000i64), (2, 2000), (3, 3000)] {
                let mut k = b"rpc2\0".to_vec();
                for n in [ts as u64, 7, seq] {
                    k.extend_from_slice(&n.to_be_bytes());
                }
                s.sled.with(|_, tree| tree.insert(k.as_slice(), report(seq, ts).encode_to_vec())).unwrap();
            }
            s.flush().unwrap();
        }
        let s = Store::open(dir.path(), HOUR).unwrap();
        let hosts = s.load(1500).unwrap();
        let mut replayed = 0;
        s.replay_history(1500, || false, |_, _| replayed += 1).unwrap();
        assert_eq!(replayed, 2);
        assert_eq!(hosts[0].record.last_stored(), Some(BootMark { boot_id: 7, seq: 3 }));
        assert_eq!(
            s.sled.with(|_, tree| Ok(tree.scan_prefix(b"r").count())).unwrap(),
            0,
            "sled no longer holds reports"
        );
        assert_eq!(s.host_reports("pc2", 0, 10).unwrap().count, 2);
        drop(s);
        let s = Store::open(dir.path(), HOUR).unwrap();
        assert_eq!(s.load(0).unwrap()[0].record.last_stored(), Some(BootMark { boot_id: 7, seq: 3 }));
        assert_eq!(s.host_reports("pc2", 0, 10).unwrap().count, 2, "moved once");
    }

    #[test]
    fn legacy_report_keys_parse() {
        let mut k = b"rmain-pc\0".to_vec();
        for n in [6u64, 1, 2] {
            k.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(parse_legacy_report_key(&k), Some(("main-pc".to_string(), 6, 1, 2)));
        assert_eq!(parse_legacy_report_key(b"hmain-pc"), None);
    }

    #[test]
    fn second_open_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path(), HOUR).unwrap();
        let err = Store::open(dir.path(), HOUR).unwrap_err().to_string();
        assert!(err.contains("another process has it open") || err.contains("lock"), "{err}");
        assert!(err.contains("move the store aside"), "{err}");
    }

    /// The store keeps at most MAX_ROLLOUTS rollouts: the oldest finished ones go, an
    /// unfinished one never does.
    #[test]
    fn rollouts_are_bounded_and_unfinished_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), HOUR).unwrap();
        let rollout = |i: usize, state: &str| -> RolloutRecord {
            serde_json::from_value(serde_json::json!({
                "id": format!("r{i:05}"), "service": "api", "version": "1", "sha256": "x", "size_bytes": 1,
                "state": state, "reason": "", "hosts": [], "max_parallel": 1, "canary": 0, "auto_promote": false,
                "min_healthy_time_ms": 0, "healthy_deadline_ms": 0, "progress_deadline_ms": 0, "auto_revert": true,
                "promoted": true, "abort_requested": false, "created_by": "", "created_at_ms": i as i64,
                "updated_at_ms": i as i64, "last_progress_ms": 0
            }))
            .unwrap()
        };
        s.save_rollout(&rollout(0, "running")).unwrap();
        let max = MAX_ROLLOUTS;
        for i in 1..=max + 5 {
            s.save_rollout(&rollout(i, "succeeded")).unwrap();
        }
        let kept = s.load_rollouts().unwrap();
        assert_eq!(kept.len(), max);
        assert!(kept.iter().any(|r| r.id == "r00000"), "the unfinished rollout is kept");
        assert!(!kept.iter().any(|r| r.id == "r00001"), "the oldest finished one went first");
        assert!(kept.iter().any(|r| r.id == format!("r{:05}", max + 5)));
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

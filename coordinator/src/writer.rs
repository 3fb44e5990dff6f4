//! Group commit: one task owns every write to the store. Sessions hand it reports through a
//! bounded channel; it takes everything queued (up to a batch limit), de-duplicates, appends
//! them to the report log with one write and one `fdatasync`, saves the host records asked for,
//! updates the in-memory registry, and only then answers each session, which acknowledges to
//! its agent. Thousands of reports a second cost a few fsyncs, and a report is acknowledged
//! only once it is on disk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::v1::Report;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::registry::Host;
use crate::store::{HostRecord, Record, SharedState, Store, StoreError};

/// Most operations in one group commit.
pub const MAX_BATCH: usize = 4096;

/// Failed commits and record saves are logged at once, then once a minute.
static COMMIT_FAILED: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));
static RECORDS_FAILED: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));
/// Capacity of the queue in front of the writer: sessions wait (backpressure) beyond it.
pub const QUEUE: usize = 16_384;

/// The outcome of storing one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written now.
    New,
    /// Already stored earlier (a replay after a lost Ack); not written again.
    Duplicate,
}

/// Why a report was not stored (and so not acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The writer has stopped: the coordinator is shutting down.
    #[error("the store writer has stopped")]
    Stopped,
    /// The group commit failed (a full disk, a broken store).
    #[error(transparent)]
    Commit(#[from] StoreError),
}

/// What the writer answers about one report.
pub type Reply = Result<Stored, WriteError>;

/// One request to the writer.
#[derive(Debug)]
pub enum Op {
    /// Store a report of `host` and answer on `reply` once it is durable.
    Report { host: Arc<Host>, report: Arc<Report>, reply: oneshot::Sender<Reply> },
    /// Persist `host`'s record as it is in memory now (after a Hello or a disconnect).
    Record { host: Arc<Host>, done: Option<oneshot::Sender<Result<(), String>>> },
}

/// The handle sessions use to reach the writer.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl Writer {
    /// Starts the writer task; it ends once every `Writer` clone is dropped and the queue is
    /// drained.
    pub fn start(
        store: Store,
        shared: Arc<dyn SharedState>,
        retention: Duration,
        metrics: Arc<Metrics>,
        tsdb: Arc<crate::tsdb::Tsdb>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, shared, rx, retention, metrics, tsdb));
        (Writer { tx }, task)
    }

    /// Stores `report` of `host`; resolves once it is durable (or known to be stored).
    pub async fn store_report(
        &self,
        host: Arc<Host>,
        report: Arc<Report>,
    ) -> Result<oneshot::Receiver<Reply>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Op::Report { host, report, reply }).await.map_err(|_| WriteError::Stopped)?;
        Ok(rx)
    }

    /// Persists `host`'s record.
    pub async fn save_host(&self, host: Arc<Host>) {
        if self.tx.send(Op::Record { host, done: None }).await.is_err() {
            tracing::warn!("the store writer has stopped; a host record was not saved");
        }
    }

    /// Persists `host`'s record as it is now, and returns once it is durable.
    pub async fn save_host_durably(&self, host: Arc<Host>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Record { host, done: Some(done) })
            .await
            .map_err(|_| "the store writer has stopped".to_string())?;
        rx.await.map_err(|_| "the store writer has stopped".to_string())?
    }
}

struct Pending {
    host: Arc<Host>,
    report: Arc<Report>,
    reply: oneshot::Sender<Reply>,
    outcome: Stored,
}

async fn run(
    store: Store,
    shared: Arc<dyn SharedState>,
    mut rx: mpsc::Receiver<Op>,
    retention: Duration,
    metrics: Arc<Metrics>,
    tsdb: Arc<crate::tsdb::Tsdb>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut ops, MAX_BATCH).await > 0 {
        commit_batch(&store, &shared, std::mem::take(&mut ops), retention, &metrics, &tsdb).await;
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "final store flush failed");
    }
    tracing::debug!("store writer stopped");
}

async fn commit_batch(
    store: &Store,
    shared: &Arc<dyn SharedState>,
    ops: Vec<Op>,
    retention: Duration,
    metrics: &Metrics,
    tsdb: &Arc<crate::tsdb::Tsdb>,
) {
    let now = fleet_common::now_ms();
    let cutoff = now - retention.as_millis() as i64;
    // The record of every host this batch touches, with this batch's changes applied; the
    // registry gets them only once they are durable. Only those asked for are saved: the
    // de-duplication marks a report moves on are in the report log with it.
    let mut records: HashMap<String, (Arc<Host>, HostRecord)> = HashMap::new();
    let mut save: HashSet<String> = HashSet::new();
    let mut pending: Vec<Pending> = Vec::with_capacity(ops.len());
    let mut encoded: Vec<(String, i64, u64, u64, Vec<u8>)> = Vec::new();
    let mut record_waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    for op in ops {
        match op {
            Op::Report { host, report, reply } => {
                metrics.reports_received.inc();
                let id = report.id.unwrap_or_default();
                let (_, rec) =
                    records.entry(host.name.clone()).or_insert_with(|| (host.clone(), host.with(|s| s.record.clone())));
                let outcome = if rec.has_stored(id.boot_id, id.seq) {
                    Stored::Duplicate
                } else {
                    rec.mark_stored(id.boot_id, id.seq);
                    rec.last_seen_ms = rec.last_seen_ms.max(now);
                    rec.last_report_ms = rec.last_report_ms.max(report.timestamp_ms);
                    // A replayed report already older than the window is acknowledged (the
                    // agent may drop it) but not written: retention would delete it at once.
                    if report.timestamp_ms >= cutoff {
                        encoded.push((
                            host.name.clone(),
                            report.timestamp_ms,
                            id.boot_id,
                            id.seq,
                            report.encode_to_vec(),
                        ));
                    }
                    Stored::New
                };
                pending.push(Pending { host, report, reply, outcome });
            }
            Op::Record { host, done } => {
                record_waiters.extend(done);
                let current = host.with(|s| s.record.clone());
                save.insert(host.name.clone());
                match records.get_mut(&host.name) {
                    // Keep this batch's de-duplication marks; take everything else as it is now.
                    Some((_, rec)) => {
                        let boots = std::mem::take(&mut rec.boots);
                        let last_report = rec.last_report_ms;
                        *rec = HostRecord { boots, last_report_ms: last_report.max(current.last_report_ms), ..current };
                    }
                    None => {
                        records.insert(host.name.clone(), (host.clone(), current));
                    }
                }
            }
        }
    }
    let started = Instant::now();
    // Whether this commit writes anything: only a write that succeeds says the store works.
    let (wrote_reports, wrote_records) = (!encoded.is_empty(), !save.is_empty());
    let writer_store = store.clone();
    let shared = shared.clone();
    // The history's appends write full chunks to disk: on the blocking thread too.
    let for_history: Vec<(String, Arc<Report>)> = pending
        .iter()
        .filter(|p| p.outcome == Stored::New && p.report.timestamp_ms >= cutoff)
        .map(|p| (p.host.name.clone(), p.report.clone()))
        .collect();
    let history = tsdb.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let reports: Vec<Record<'_>> = encoded
            .iter()
            .map(|(h, ts, b, s, e)| Record { host: h, timestamp_ms: *ts, boot_id: *b, seq: *s, encoded: e })
            .collect();
        let stored = writer_store.append_reports(&reports);
        drop(reports);
        // While the history is still being read back from the log at start-up, the reader
        // takes these reports from the log too, after the older ones.
        if let Ok(true) = stored {
            for (host, report) in &for_history {
                history.append_report(host, report);
            }
        }
        // Records are saved after the reports they know of: a record is never ahead of the log.
        let saved = match &stored {
            Ok(_) => {
                let to_save: Vec<&HostRecord> =
                    records.iter().filter(|(name, _)| save.contains(*name)).map(|(_, (_, r))| r).collect();
                shared.save_hosts(&to_save)
            }
            Err(_) => Ok(()),
        };
        (stored, saved, records)
    })
    .await;
    metrics.store_write_seconds.observe(started.elapsed().as_secs_f64());
    let (stored, saved, records) = match joined {
        Ok(r) => r,
        Err(e) => (
            Err(crate::store::StoreError::Io { path: store.path().to_path_buf(), reason: e.to_string() }),
            Ok(()),
            HashMap::new(),
        ),
    };

    let records_outcome = match (&stored, &saved) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e.to_string()),
        _ => Ok(()),
    };
    for w in record_waiters {
        let _ = w.send(records_outcome.clone());
    }
    if let Err(e) = stored {
        metrics.store_failed(e.to_string());
        // A full disk fails every commit: said at once, then once a minute.
        if let Some(held) = COMMIT_FAILED.ready() {
            tracing::error!(error = %e, reports = pending.len(), failures_not_logged = held, "group commit failed; the reports are not acknowledged");
        }
        for p in pending {
            let _ = p.reply.send(Err(WriteError::Commit(e.clone())));
        }
        return;
    }
    if let Err(e) = saved {
        // The reports are durable and acknowledged; the records are saved again at the next
        // hello or disconnect, and the report log brings them up to date at start-up.
        metrics.store_failed(e.to_string());
        if let Some(held) = RECORDS_FAILED.ready() {
            tracing::error!(error = %e, failures_not_logged = held, "saving host records failed");
        }
    } else if wrote_reports || wrote_records {
        let was_failing = (wrote_reports && COMMIT_FAILED.clear()) | (wrote_records && RECORDS_FAILED.clear());
        if was_failing {
            tracing::info!("the store accepts writes again");
        }
        metrics.store_ok();
    }
    for (_, (host, rec)) in records {
        host.with(|s| {
            s.record.boots = rec.boots;
            s.record.last_report_ms = s.record.last_report_ms.max(rec.last_report_ms);
            s.record.last_seen_ms = s.record.last_seen_ms.max(rec.last_seen_ms);
        });
    }
    for p in pending {
        if p.outcome == Stored::New {
            metrics.reports_stored.inc();
            let ts = p.report.timestamp_ms;
            p.host.with(|s| {
                if s.latest.as_ref().is_none_or(|l| l.timestamp_ms <= ts) {
                    s.latest = Some(p.report.clone());
                }
            });
        } else {
            metrics.reports_duplicate.inc();
        }
        let _ = p.reply.send(Ok(p.outcome));
    }
}

/// Deletes reports and samples older than the retention, on disk and in memory, every `every`.
pub async fn retention_loop(
    store: Store,
    tsdb: Arc<crate::tsdb::Tsdb>,
    retention: Duration,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fleet_common::now_ms();
        let cutoff = now - retention.as_millis() as i64;
        tsdb.trim(now);
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.trim_reports(cutoff)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(reports = n, "deleted reports past the retention"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete reports past the retention"),
            _ => {}
        }
    }
}

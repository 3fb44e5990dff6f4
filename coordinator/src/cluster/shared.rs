//! [`SharedState`] for several coordinators: rollouts and the small records (join tokens,
//! enrolled hosts, the deny list, removed hosts) live in etcd under `/fleet/<cluster>/`, so
//! that a new leader resumes every rollout and every coordinator refuses a revoked
//! certificate. A rollout is written only by the leader, in a transaction that holds only
//! while its term lasts ([`super::Fence`]): a deposed leader's write changes nothing and
//! fails. What each coordinator keeps for itself stays in its own store, as alone: host
//! records (each coordinator gets every report) and alert state (each evaluates the rules, as
//! a Prometheus HA pair does); the leader also publishes each rule group's alert state when
//! it changes, so that a coordinator that starts takes up the cluster's `for` timers.
//!
//! The trait is synchronous (sled's is); the calls to etcd run on a thread of their own with
//! its own client, and a caller waits for each within [`WAIT`]. Nothing here is written per
//! report or per heartbeat: rollouts change per host step, records per operator action.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::etcd::{self, Etcd, EtcdError};
use super::{Cluster, ClusterConfig};
use crate::store::{HostRecord, MAX_ROLLOUTS, RecordKind, RolloutRecord, SharedState, Store, StoreError};

/// The longest a caller waits for one call to etcd (each member tried in turn).
const WAIT: Duration = Duration::from_secs(10);
/// Said at most once a minute while etcd is away.
static ETCD_AWAY: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));
/// Shared audit entries kept in etcd: the oldest beyond it are deleted (each coordinator's
/// own log keeps its part for longer).
pub const MAX_SHARED_AUDIT: usize = 10_000;
/// Appends between two prunings of the shared audit.
const PRUNE_EVERY: u64 = 100;
/// Calls queued for the etcd thread, at most.
const QUEUE: usize = 256;
/// Prefixes whose last listing is kept, at most (a handful are listed).
const MAX_CACHED_LISTS: usize = 64;
/// The largest alert state of one rule group shared through etcd (whose requests are at most
/// 1.5 MiB by default); a bigger one stays this coordinator's own.
const MAX_ALERT_STATE: usize = 1024 * 1024;
/// Rule groups whose last published state is remembered, at most (then forgotten at once:
/// the next evaluation of each writes it again).
const MAX_PUBLISHED_GROUPS: usize = 10_000;
/// How long a starting coordinator waits for the published alert state before it starts
/// from its own.
const ALERT_STATE_WAIT: Duration = Duration::from_secs(2);
/// Said at most once a minute.
static ALERT_STATE_TOO_BIG: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &Etcd) + Send>;

/// Shared state in etcd, the rest in this coordinator's store.
pub struct EtcdShared {
    prefix: String,
    /// This coordinator's address: part of its audit keys, which must not collide.
    advertise: String,
    audit_seq: std::sync::atomic::AtomicU64,
    cluster: Arc<Cluster>,
    local: Store,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// Per rule group, a digest of the alert state last published.
    published: std::sync::Mutex<HashMap<String, u64>>,
    /// Per prefix listed, the revision of the last read and what it found.
    lists: std::sync::Mutex<HashMap<String, ListCache>>,
}

/// A prefix's keys and values as of a revision.
type ListCache = (i64, Arc<Vec<(String, Vec<u8>)>>);

impl std::fmt::Debug for EtcdShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdShared").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl EtcdShared {
    /// Shared state of the cluster `config` describes, with `local` for the rest. Starts the
    /// thread that talks to etcd.
    pub fn open(config: &ClusterConfig, cluster: Arc<Cluster>, local: Store) -> Result<EtcdShared, String> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (urls, tls) = (config.etcd.clone(), config.tls.clone());
        std::thread::Builder::new()
            .name("fleet-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                // The client's connections belong to this thread's runtime, so a caller that
                // blocks an async worker never holds up the I/O it waits for.
                let client = {
                    let _in = rt.enter();
                    Etcd::new(&urls, tls.as_ref())
                };
                let client = match client {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&rt, &client);
                }
            })
            .map_err(|e| format!("cannot start the etcd thread: {e}"))?;
        ready_rx.recv().map_err(|_| "the etcd thread ended at once".to_string())??;
        Ok(EtcdShared {
            prefix: format!("/fleet/{}/", config.name),
            advertise: config.advertise.clone(),
            audit_seq: Default::default(),
            cluster,
            local,
            jobs,
            published: Default::default(),
            lists: Default::default(),
        })
    }

    /// Runs `f` against etcd on the etcd thread and waits for its answer.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Etcd) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        self.run_within(WAIT, f)
    }

    /// [`EtcdShared::run`], waiting at most `wait`.
    fn run_within<T, F, Fut>(&self, wait: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Etcd) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |rt, client| {
            let _ = tx.send(rt.block_on(f(client.clone())));
        });
        self.jobs.try_send(job).map_err(|_| StoreError::Shared("too many calls to etcd are waiting".into()))?;
        match rx.recv_timeout(wait) {
            Ok(r) => r.map_err(|e| StoreError::Shared(e.to_string())),
            Err(_) => Err(StoreError::Shared(format!("etcd gave no answer within {wait:?}"))),
        }
    }

    fn rollout_key(&self, id: &str) -> String {
        format!("{}rollouts/{id}", self.prefix)
    }

    fn record_prefix(&self, kind: RecordKind) -> String {
        let kind = match kind {
            RecordKind::Token => "tokens",
            RecordKind::Enrolled => "enrolled",
            RecordKind::Revocation => "revocations",
            RecordKind::RemovedHost => "removed",
            RecordKind::Drained => "drained",
        };
        format!("{}records/{kind}/", self.prefix)
    }

    fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Writes `puts` and `deletes` in one transaction that holds only while this
    /// coordinator's term as leader lasts.
    fn fenced(&self, puts: Vec<(String, Vec<u8>)>, deletes: Vec<String>) -> Result<(), StoreError> {
        let Some(fence) = self.cluster.leader_fence() else {
            return Err(StoreError::Shared(
                "this coordinator does not lead the cluster (any more): only the leader writes rollouts".into(),
            ));
        };
        let leader_key = self.leader_key();
        let succeeded = self.run(move |client| async move {
            let mut ops: Vec<_> = puts.iter().map(|(k, v)| etcd::put_op(k, v, 0)).collect();
            ops.extend(deletes.iter().map(|k| etcd::delete_op(k)));
            let r = client.txn(vec![etcd::created_at(&leader_key, fence.revision)], ops, Vec::new()).await?;
            Ok(r.succeeded)
        })?;
        if !succeeded {
            return Err(StoreError::Shared(
                "the leader's term ended (another coordinator leads now): nothing was written".into(),
            ));
        }
        Ok(())
    }

    fn load_from_etcd(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.list(format!("{}rollouts/", self.prefix))?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Record {
                    what: format!("the rollout at {k} in etcd cannot be read back"),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Every key under `prefix` with its value. Read again only when etcd's revision moved
    /// since the last read of `prefix` (a steady cluster's followers, reading the records
    /// every 2 s, then ask for one number instead of every token and host).
    fn list(&self, prefix: String) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let cached = self.lists.lock().expect("lists lock").get(&prefix).cloned();
        if let Some((at, kvs)) = cached {
            let now = self.run(move |client| async move { client.revision().await })?;
            if now == at {
                return Ok(kvs.as_ref().clone());
            }
        }
        let key = prefix.clone();
        let (at, kvs) = self.run(move |client| async move { client.list_at(&key).await })?;
        let kvs: Vec<(String, Vec<u8>)> =
            kvs.into_iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value)).collect();
        let mut lists = self.lists.lock().expect("lists lock");
        if lists.len() >= MAX_CACHED_LISTS {
            lists.clear();
        }
        lists.insert(prefix, (at, Arc::new(kvs.clone())));
        Ok(kvs)
    }
}

impl SharedState for EtcdShared {
    fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(r).map_err(|e| StoreError::Shared(e.to_string()))?;
        let mut deletes = Vec::new();
        if r.finished() {
            // Forget the oldest finished rollouts beyond the bound, as alone.
            let mut all = self.load_from_etcd()?;
            if all.len() > MAX_ROLLOUTS {
                all.retain(|x| x.finished() && x.id != r.id);
                all.sort_by_key(|x| x.created_at_ms);
                let excess = all.len().saturating_sub(MAX_ROLLOUTS - 1);
                deletes = all.iter().take(excess).map(|x| self.rollout_key(&x.id)).collect();
            }
        }
        self.fenced(vec![(self.rollout_key(&r.id), json)], deletes)?;
        // A copy in this coordinator's store: what it shows should etcd be away at its start.
        if let Err(e) = self.local.save_rollout(r) {
            tracing::warn!(rollout = %r.id, error = %e, "cannot keep a copy of a rollout in the local store");
        }
        Ok(())
    }

    fn load_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        match self.load_from_etcd() {
            Ok(all) => Ok(all),
            Err(e) => {
                if let Some(n) = ETCD_AWAY.ready() {
                    tracing::warn!(error = %e, times = n, "cannot read the rollouts from etcd; showing this coordinator's copy");
                }
                self.local.load_rollouts()
            }
        }
    }

    fn save_alert_state(&self, group: &str, json: &[u8]) -> Result<(), StoreError> {
        self.local.save_alert_state(group, json)
    }

    fn load_alert_state(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        self.local.load_alert_state()
    }

    /// Written by the leader only, in its term, and only when the group's state changed
    /// (an alert became pending, firing or resolved): a steady cluster writes nothing.
    fn publish_alert_state(&self, key: &str, json: &[u8]) -> Result<(), StoreError> {
        if !self.cluster.is_leader() {
            return Ok(());
        }
        if json.len() > MAX_ALERT_STATE {
            if let Some(n) = ALERT_STATE_TOO_BIG.ready() {
                tracing::warn!(group = %key, bytes = json.len(), times = n, "a rule group's alert state is too big to share through etcd; the other coordinators start its for timers afresh");
            }
            return Ok(());
        }
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            json.hash(&mut h);
            h.finish()
        };
        if self.published.lock().expect("published lock").get(key) == Some(&digest) {
            return Ok(());
        }
        self.fenced(vec![(format!("{}alerts/{key}", self.prefix), json.to_vec())], Vec::new())?;
        let mut published = self.published.lock().expect("published lock");
        if published.len() >= MAX_PUBLISHED_GROUPS {
            published.clear();
        }
        published.insert(key.to_string(), digest);
        Ok(())
    }

    fn publishes_alert_state(&self) -> bool {
        true
    }

    fn published_alert_state(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        let prefix = format!("{}alerts/", self.prefix);
        let listed = self.run_within(ALERT_STATE_WAIT, move |client| async move { client.list(&prefix).await })?;
        let prefix = format!("{}alerts/", self.prefix);
        Ok(listed
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                (key.strip_prefix(&prefix).unwrap_or(&key).to_string(), kv.value)
            })
            .collect())
    }

    fn save_hosts(&self, records: &[&HostRecord]) -> Result<(), StoreError> {
        self.local.save_hosts(records)
    }

    /// Recorded in etcd too, so that every coordinator forgets the host
    /// (crate::lifecycle::Lifecycle::follow_shared_removals).
    fn remove_host(&self, name: &str, at_ms: i64) -> Result<(), StoreError> {
        let key = format!("{}{name}", self.record_prefix(RecordKind::RemovedHost));
        let value = at_ms.to_string().into_bytes();
        self.run(move |client| async move { client.put(&key, &value, 0).await })?;
        self.local.remove_host(name, at_ms)
    }

    fn put_record(&self, kind: RecordKind, id: &str, json: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (format!("{}{id}", self.record_prefix(kind)), json.to_vec());
        self.run(move |client| async move { client.put(&key, &value, 0).await })?;
        SharedState::put_record(&self.local, kind, id, json)
    }

    /// An etcd transaction comparing the value, so that two coordinators counting a use of
    /// one token at once cannot both succeed.
    fn swap_record(
        &self,
        kind: RecordKind,
        id: &str,
        expected: &[u8],
        json: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, StoreError> {
        let key = format!("{}{id}", self.record_prefix(kind));
        let (expected, value) = (expected.to_vec(), json.to_vec());
        let swapped = self.run(move |client| async move {
            let r = client
                .txn(vec![etcd::value_is(&key, &expected)], vec![etcd::put_op(&key, &value, 0)], Vec::new())
                .await?;
            if r.succeeded {
                return Ok(Ok(()));
            }
            Ok(Err(client.get(&key).await?.map(|kv| kv.value)))
        })?;
        match &swapped {
            Ok(()) => SharedState::put_record(&self.local, kind, id, json)?,
            Err(Some(now)) => SharedState::put_record(&self.local, kind, id, now)?,
            Err(None) => SharedState::remove_record(&self.local, kind, id)?,
        }
        Ok(swapped)
    }

    fn remove_record(&self, kind: RecordKind, id: &str) -> Result<(), StoreError> {
        let key = format!("{}{id}", self.record_prefix(kind));
        self.run(move |client| async move { client.delete(&key).await })?;
        SharedState::remove_record(&self.local, kind, id)
    }

    /// From etcd, kept in this coordinator's store as it goes; the kept copy when etcd cannot
    /// be reached (a deny list is never empty for want of etcd).
    fn records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.record_prefix(kind);
        let fetched = match self.list(prefix.clone()) {
            Ok(f) => f,
            Err(e) => {
                if let Some(n) = ETCD_AWAY.ready() {
                    tracing::warn!(?kind, error = %e, times = n, "cannot read shared records from etcd; using this coordinator's copy");
                }
                return SharedState::records(&self.local, kind);
            }
        };
        let fetched: Vec<(String, Vec<u8>)> =
            fetched.into_iter().map(|(k, v)| (k.strip_prefix(&prefix).unwrap_or(&k).to_string(), v)).collect();
        let kept = SharedState::records(&self.local, kind)?;
        for (id, _) in kept.iter().filter(|(id, _)| !fetched.iter().any(|(f, _)| f == id)) {
            SharedState::remove_record(&self.local, kind, id)?;
        }
        for (id, v) in fetched.iter().filter(|(id, v)| !kept.iter().any(|(k, kv)| k == id && kv == v)) {
            SharedState::put_record(&self.local, kind, id, v)?;
        }
        Ok(fetched)
    }

    fn append_audit(&self, at_ms: i64, json: &[u8]) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let seq = self.audit_seq.fetch_add(1, Ordering::Relaxed);
        // Keys sort by time; the address and a counter keep two coordinators' entries apart.
        let key = format!("{}audit/{:016}-{}-{seq:08}", self.prefix, at_ms.max(0), self.advertise);
        let value = json.to_vec();
        self.run(move |client| async move { client.put(&key, &value, 0).await })?;
        if seq % PRUNE_EVERY == PRUNE_EVERY - 1 {
            let prefix = format!("{}audit/", self.prefix);
            let pruned = self.run(move |client| async move {
                let (count, _) = client.first_keys(&prefix, 1).await?;
                let excess = (count as usize).saturating_sub(MAX_SHARED_AUDIT).min(1000);
                if excess == 0 {
                    return Ok(0);
                }
                let (_, keys) = client.first_keys(&prefix, excess).await?;
                let deletes = keys.iter().map(|k| etcd::delete_op(&String::from_utf8_lossy(k))).collect();
                client.txn(Vec::new(), deletes, Vec::new()).await?;
                Ok(keys.len())
            });
            if let Err(e) = pruned {
                tracing::debug!(error = %e, "cannot prune the shared audit");
            }
        }
        Ok(())
    }

    fn shared_audit(&self, n: usize) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let prefix = format!("{}audit/", self.prefix);
        let kvs = self.run(move |client| async move { client.last(&prefix, n).await })?;
        Ok(Some(kvs.into_iter().map(|kv| kv.value).collect()))
    }
}

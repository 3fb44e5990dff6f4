//! The state several coordinators share: rollouts, alert state, host records, join tokens,
//! enrolled hosts, the deny list and removed hosts. The subsystems that own such state
//! (rollouts, alerting, enrollment, revocation, lifecycle) read and write it through
//! [`SharedState`], never through the sled [`Store`] directly, so that a second
//! implementation (etcd, for several coordinators) can go beside [`Store`]'s; so does the
//! writer for host records, which it saves after the reports they follow. Their
//! de-duplication marks travel in the report log too, so an implementation shared by several
//! coordinators need not write them on every report.
//!
//! Not in it, because it is each coordinator's own: the report log and the history (each
//! coordinator keeps what its agents sent), and the artifacts (content-addressed files).

use std::collections::HashMap;

use super::{HostRecord, RolloutRecord, Store, StoreError};

/// The kinds of small records kept by id, each a key prefix in the sled implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A join token (stored hashed), by token id.
    Token,
    /// A host enrolled with a token, by host name.
    Enrolled,
    /// A revoked identity or serial, by its target.
    Revocation,
    /// A host an operator removed, by host name: the time it was removed.
    RemovedHost,
    /// With several coordinators: a drained host's mark, by host name (alone the mark lives
    /// in the host record).
    Drained,
}

impl RecordKind {
    /// The sled key prefix of this kind.
    pub(super) fn prefix(self) -> u8 {
        match self {
            RecordKind::Token => b'k',
            RecordKind::Enrolled => b'n',
            RecordKind::Revocation => b'x',
            RecordKind::RemovedHost => b'g',
            RecordKind::Drained => b'd',
        }
    }
}

/// Durable shared state. Every write returns once it is durable (for sled: flushed), so that
/// a crash right after an acknowledged change neither loses nor repeats it.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Saves a rollout, forgetting the oldest finished rollouts beyond
    /// [`super::MAX_ROLLOUTS`].
    fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError>;
    /// Every stored rollout.
    fn load_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Saves the alert state of one rule group (JSON written by alerting).
    fn save_alert_state(&self, group: &str, json: &[u8]) -> Result<(), StoreError>;
    /// The saved alert state of every rule group.
    fn load_alert_state(&self) -> Result<HashMap<String, Vec<u8>>, StoreError>;
    /// Saves host records that changed (the writer calls it after the reports it knows of
    /// are stored, so a record is never ahead of the report log).
    fn save_hosts(&self, records: &[&HostRecord]) -> Result<(), StoreError>;
    /// Forgets host `name` as of `at_ms`: its reports in the log no longer bring it back.
    fn remove_host(&self, name: &str, at_ms: i64) -> Result<(), StoreError>;
    /// Saves record `id` of `kind` (JSON).
    fn put_record(&self, kind: RecordKind, id: &str, json: &[u8]) -> Result<(), StoreError>;
    /// Removes record `id` of `kind`.
    fn remove_record(&self, kind: RecordKind, id: &str) -> Result<(), StoreError>;
    /// Saves record `id` of `kind` only if it still holds `expected` (compare and swap):
    /// false, writing nothing, when another writer changed it since it was read. Returns
    /// the record as it now stands in that case, if it exists.
    fn swap_record(
        &self,
        kind: RecordKind,
        id: &str,
        expected: &[u8],
        json: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, StoreError>;
    /// Every record of `kind` with its id, as JSON.
    fn records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Publishes the alert state of rule group `key` (JSON, without this coordinator's send
    /// times) for the other coordinators of a cluster, which take up its `for` timers when
    /// they start. Called after every evaluation: an implementation writes only changes.
    /// Alone there is nothing to do.
    fn publish_alert_state(&self, _key: &str, _json: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether [`SharedState::publish_alert_state`] does anything (false alone: the
    /// evaluation loop then skips preparing what it would publish).
    fn publishes_alert_state(&self) -> bool {
        false
    }
    /// The alert state the cluster's leader published, per group key; empty alone.
    fn published_alert_state(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        Ok(HashMap::new())
    }
    /// Appends an audit entry (JSON) that every coordinator of a cluster reads. Alone there
    /// is nothing to do: the coordinator's own audit log is the audit.
    fn append_audit(&self, _at_ms: i64, _json: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The newest `n` shared audit entries (JSON), oldest first; `None` alone.
    fn shared_audit(&self, _n: usize) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        Ok(None)
    }
}

impl dyn SharedState {
    /// Saves `value` as record `id` of `kind`.
    pub fn put<T: serde::Serialize>(&self, kind: RecordKind, id: &str, value: &T) -> Result<(), StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| StoreError::Record {
            what: format!("the {kind:?} record {id} cannot be encoded"),
            reason: e.to_string(),
        })?;
        self.put_record(kind, id, &json)
    }

    /// Every record of `kind`, decoded. A record that cannot be read back fails the whole
    /// read: a deny list must not silently lose an entry.
    pub fn all<T: serde::de::DeserializeOwned>(&self, kind: RecordKind) -> Result<Vec<(String, T)>, StoreError> {
        self.records(kind)?
            .into_iter()
            .map(|(id, json)| {
                let value = serde_json::from_slice(&json).map_err(|e| StoreError::Record {
                    what: format!(
                        "the stored {kind:?} record {id} cannot be read back (restore the store from a backup)"
                    ),
                    reason: e.to_string(),
                })?;
                Ok((id, value))
            })
            .collect()
    }
}

impl SharedState for Store {
    fn save_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        Store::save_rollout(self, r)
    }
    fn load_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        Store::load_rollouts(self)
    }
    fn save_alert_state(&self, group: &str, json: &[u8]) -> Result<(), StoreError> {
        Store::save_alert_state(self, group, json)
    }
    fn load_alert_state(&self) -> Result<HashMap<String, Vec<u8>>, StoreError> {
        Store::load_alert_state(self)
    }
    fn save_hosts(&self, records: &[&HostRecord]) -> Result<(), StoreError> {
        Store::save_hosts(self, records)
    }
    fn remove_host(&self, name: &str, at_ms: i64) -> Result<(), StoreError> {
        Store::remove_host(self, name, at_ms)
    }
    fn put_record(&self, kind: RecordKind, id: &str, json: &[u8]) -> Result<(), StoreError> {
        self.put_raw(kind.prefix(), id, json)
    }
    fn remove_record(&self, kind: RecordKind, id: &str) -> Result<(), StoreError> {
        self.remove_raw(kind.prefix(), id)
    }
    fn records(&self, kind: RecordKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.raw_records(kind.prefix())
    }
    /// One coordinator alone: its callers hold their own lock around the read and the swap
    /// (the enrollment's token lock), so the record can only be as they read it.
    fn swap_record(
        &self,
        kind: RecordKind,
        id: &str,
        _expected: &[u8],
        json: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, StoreError> {
        self.put_raw(kind.prefix(), id, json).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_round_trip_through_the_interface_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let shared: Arc<dyn SharedState> = Arc::new(Store::open(dir.path(), Duration::from_secs(3600)).unwrap());
            shared.put(RecordKind::Token, "t1", &vec![1, 2]).unwrap();
            shared.put(RecordKind::Token, "t2", &vec![3]).unwrap();
            shared.put(RecordKind::Enrolled, "t1", &vec![9]).unwrap();
            shared.remove_record(RecordKind::Token, "t2").unwrap();
        }
        let shared: Arc<dyn SharedState> = Arc::new(Store::open(dir.path(), Duration::from_secs(3600)).unwrap());
        assert_eq!(shared.all::<Vec<i32>>(RecordKind::Token).unwrap(), [("t1".to_string(), vec![1, 2])]);
        assert_eq!(shared.all::<Vec<i32>>(RecordKind::Enrolled).unwrap(), [("t1".to_string(), vec![9])]);
        assert!(shared.all::<Vec<i32>>(RecordKind::Revocation).unwrap().is_empty());
        // A record that does not read back fails the whole read, naming it.
        shared.put_record(RecordKind::Revocation, "bad", b"{not json").unwrap();
        let err = shared.all::<Vec<i32>>(RecordKind::Revocation).unwrap_err().to_string();
        assert!(err.contains("Revocation record bad cannot be read back"), "{err}");
    }
}

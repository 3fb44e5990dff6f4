//! A small etcd v3 client over fleet's own tonic (`proto/etcd/rpc.proto`): ranges, puts,
//! transactions, leases and a member's status, with every call bounded by a deadline and
//! moved to the next endpoint when the one in use does not answer. It is what
//! [`super::EtcdElection`] and the shared state kept in etcd are built on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use fleet_proto::etcd::kv_client::KvClient;
use fleet_proto::etcd::lease_client::LeaseClient;
use fleet_proto::etcd::maintenance_client::MaintenanceClient;
use fleet_proto::etcd::request_op::Request;
use fleet_proto::etcd::{
    Compare, DeleteRangeRequest, KeyValue, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest, TxnResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::EtcdTls;

/// How long one call to one etcd member may take before the next member is tried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The most keys one range returns: fleet's prefixes hold tens of keys (members), not more.
const RANGE_LIMIT: i64 = 10_000;
/// The largest range answer read: a thousand rollouts of a few KiB each.
const MAX_RANGE_BYTES: usize = 64 << 20;

/// Why a call to etcd failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member answered (down, unreachable, or without a quorum).
    #[error("no etcd member answered ({endpoints}): {last}; is etcd running and does it have a quorum?")]
    Unavailable {
        /// The endpoints tried.
        endpoints: String,
        /// The last member's error.
        last: String,
    },
    /// etcd refused the call (for example an unknown lease).
    #[error("etcd refused the call: {0}")]
    Refused(String),
}

/// A client for the etcd members of `[cluster] etcd`.
#[derive(Debug, Clone)]
pub struct Etcd {
    channels: Arc<Vec<(String, Channel)>>,
    /// The member in use; moved on when it fails.
    current: Arc<AtomicUsize>,
}

impl Etcd {
    /// A client for `urls` (`http://` or, with `tls`, `https://`). Connections are made when
    /// first used, so a coordinator starts while etcd is down.
    pub fn new(urls: &[String], tls: Option<&EtcdTls>) -> Result<Etcd, String> {
        let tls = match tls {
            Some(t) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)))
                };
                let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&t.ca)?));
                if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                    c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                Some(c)
            }
            None => None,
        };
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let mut e = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("\"{url}\" is not a URL: {e}"))?
                .connect_timeout(CALL_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(CALL_TIMEOUT);
            if let Some(t) = &tls {
                e = e.tls_config(t.clone()).map_err(|e| format!("TLS to {url}: {e}"))?;
            }
            channels.push((url.clone(), e.connect_lazy()));
        }
        if channels.is_empty() {
            return Err("no etcd endpoint".into());
        }
        Ok(Etcd { channels: Arc::new(channels), current: Arc::new(AtomicUsize::new(0)) })
    }

    /// Runs `call` against the member in use, then each other member in turn until one
    /// answers; an answer that is an error of etcd's own (not of reaching it) is returned.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let at = (start + i) % n;
            let (url, channel) = &self.channels[at];
            match tokio::time::timeout(CALL_TIMEOUT, call(channel.clone())).await {
                Ok(Ok(v)) => {
                    if i > 0 {
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(s)) if !unreachable(&s) => return Err(EtcdError::Refused(s.message().to_string())),
                Ok(Err(s)) => last = format!("{url}: {}", fleet_common::tls::status_detail(&s)),
                Err(_) => last = format!("{url}: no answer within {CALL_TIMEOUT:?}"),
            }
        }
        self.current.store((start + 1) % n, Ordering::Relaxed);
        Err(EtcdError::Unavailable { endpoints: self.endpoints(), last })
    }

    /// The configured endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.channels.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The value of `key` with its revisions, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let req = RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
        let resp = self.call(|c| async { KvClient::new(c).range(req.clone()).await }).await?;
        Ok(resp.into_inner().kvs.into_iter().next())
    }

    /// Every key under `prefix`, in key order (at most [`RANGE_LIMIT`]).
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        Ok(self.list_at(prefix).await?.1)
    }

    /// [`Etcd::list`], with the store's revision the answer reflects.
    pub async fn list_at(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit: RANGE_LIMIT,
            ..Default::default()
        };
        let resp = self
            .call(|c| async { KvClient::new(c).max_decoding_message_size(MAX_RANGE_BYTES).range(req.clone()).await })
            .await?
            .into_inner();
        Ok((resp.header.map_or(0, |h| h.revision), resp.kvs))
    }

    /// The store's revision now (it moves with every change of any key): a read of nothing.
    pub async fn revision(&self) -> Result<i64, EtcdError> {
        let req = RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() };
        let resp = self.call(|c| async { KvClient::new(c).range(req.clone()).await }).await?.into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// The last `n` keys under `prefix` in key order (newest first when keys sort by time),
    /// returned oldest first.
    pub async fn last(&self, prefix: &str, n: usize) -> Result<Vec<KeyValue>, EtcdError> {
        use fleet_proto::etcd::range_request::{SortOrder, SortTarget};
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit: (n as i64).clamp(1, RANGE_LIMIT),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            ..Default::default()
        };
        let resp = self
            .call(|c| async { KvClient::new(c).max_decoding_message_size(MAX_RANGE_BYTES).range(req.clone()).await })
            .await?;
        let mut kvs = resp.into_inner().kvs;
        kvs.reverse();
        Ok(kvs)
    }

    /// How many keys are under `prefix`, and the first `n` of them (keys only).
    pub async fn first_keys(&self, prefix: &str, n: usize) -> Result<(i64, Vec<Vec<u8>>), EtcdError> {
        let req = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            limit: (n as i64).clamp(1, RANGE_LIMIT),
            keys_only: true,
            ..Default::default()
        };
        let resp = self.call(|c| async { KvClient::new(c).range(req.clone()).await }).await?.into_inner();
        Ok((resp.count, resp.kvs.into_iter().map(|kv| kv.key).collect()))
    }

    /// Sets `key` to `value`, bound to `lease` (0: none).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let req = PutRequest { key: key.as_bytes().to_vec(), value: value.to_vec(), lease, prev_kv: false };
        self.call(|c| async { KvClient::new(c).put(req.clone()).await }).await?;
        Ok(())
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        let req = DeleteRangeRequest { key: key.as_bytes().to_vec(), ..Default::default() };
        self.call(|c| async { KvClient::new(c).delete_range(req.clone()).await }).await?;
        Ok(())
    }

    /// A transaction: `success` if every comparison holds, else `failure`.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        success: Vec<RequestOp>,
        failure: Vec<RequestOp>,
    ) -> Result<TxnResponse, EtcdError> {
        let req = TxnRequest { compare, success, failure };
        let resp = self.call(|c| async { KvClient::new(c).txn(req.clone()).await }).await?;
        Ok(resp.into_inner())
    }

    /// A new lease of `ttl` (whole seconds, at least one).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let req = LeaseGrantRequest { ttl: ttl.as_secs().max(1) as i64, id: 0 };
        let resp = self.call(|c| async { LeaseClient::new(c).lease_grant(req).await }).await?.into_inner();
        if !resp.error.is_empty() {
            return Err(EtcdError::Refused(resp.error));
        }
        Ok(resp.id)
    }

    /// Renews `lease` once; its remaining TTL in seconds (0: it has expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.call(|c| async move {
            let once = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
            let mut answers = LeaseClient::new(c).lease_keep_alive(once).await?.into_inner();
            match answers.message().await? {
                Some(a) => Ok(a.ttl),
                None => Err(tonic::Status::unavailable("the keep-alive stream closed without an answer")),
            }
        })
        .await
    }

    /// Revokes `lease`: every key bound to it goes at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(|c| async move { LeaseClient::new(c).lease_revoke(LeaseRevokeRequest { id: lease }).await }).await?;
        Ok(())
    }

    /// How many members answer their status, of how many configured, and the first error
    /// (all asked at once, each within [`CALL_TIMEOUT`]).
    pub async fn members_up(&self) -> (usize, usize, Option<String>) {
        let asks = self.channels.iter().map(|(url, channel)| async move {
            let mut client = MaintenanceClient::new(channel.clone());
            match tokio::time::timeout(CALL_TIMEOUT, client.status(StatusRequest {})).await {
                Ok(Ok(s)) if s.get_ref().errors.is_empty() => Ok(()),
                Ok(Ok(s)) => Err(format!("{url}: {}", s.get_ref().errors.join("; "))),
                Ok(Err(s)) => Err(format!("{url}: {}", fleet_common::tls::status_detail(&s))),
                Err(_) => Err(format!("{url}: no answer within {CALL_TIMEOUT:?}")),
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let up = answers.iter().filter(|a| a.is_ok()).count();
        (up, answers.len(), answers.into_iter().find_map(Result::err))
    }
}

/// Whether a call failed because the member could not serve it (go to the next member) rather
/// than because etcd refused it.
fn unreachable(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
        || s.message().contains("no leader")
        || s.message().contains("leader changed")
        || s.message().contains("timed out")
}

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A comparison: `key` was created at revision `rev` (0: it does not exist).
pub fn created_at(key: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

/// A comparison: `key` holds `value` (false when `key` does not exist).
pub fn value_is(key: &str, value: &[u8]) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(TargetUnion::Value(value.to_vec())),
        range_end: Vec::new(),
    }
}

/// A put in a transaction.
pub fn put_op(key: &str, value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            lease,
            prev_kv: false,
        })),
    }
}

/// A delete in a transaction.
pub fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// A read in a transaction.
pub fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/fleet/a/"), b"/fleet/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}

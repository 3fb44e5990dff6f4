//! Operators may dial any coordinator of a cluster (docs/design.md §13): a follower passes
//! the calls only the leader serves ([`crate::access::LEADER_RPCS`]) on to the leader, over
//! mutual TLS with its own coordinator identity, carrying the certificate of the operator it
//! authenticated in [`FORWARDED_CERT`]. The leader's guard decides on that operator (trust
//! domain, deny list, access role) as if it had called, and audits it; the answer, streamed
//! or not, comes back through the follower. A call is forwarded once: one that arrives
//! forwarded at a coordinator that does not lead is refused, naming the leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_common::tls::{TlsMaterial, connect_coordinator};
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::Channel;

use crate::cluster::Cluster;

/// The request header with the forwarded operator's certificate (DER, hex).
pub const FORWARDED_CERT: &str = "fleet-forwarded-cert";
/// The response header that names the leader when a follower refuses a call only the leader
/// serves.
pub const LEADER_HEADER: &str = "fleet-leader";
/// Longest certificate accepted in [`FORWARDED_CERT`] (fleet's are under 1 KiB).
const MAX_CERT_BYTES: usize = 8 * 1024;
/// How long dialing the leader may take before the call is refused instead.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Passes calls to the leader.
#[derive(Debug)]
pub struct Forwarder {
    cluster: Arc<Cluster>,
    tls: TlsMaterial,
    /// The channel to the leader last dialed, by its address.
    channel: Mutex<Option<(String, Channel)>>,
}

impl Forwarder {
    /// A forwarder for `cluster`, dialing with the coordinator's own `tls`.
    pub fn new(cluster: Arc<Cluster>, tls: TlsMaterial) -> Forwarder {
        Forwarder { cluster, tls, channel: Mutex::new(None) }
    }

    /// The cluster it forwards within.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    async fn channel(&self, leader: &str) -> Result<Channel, String> {
        if let Some((addr, ch)) = &*self.channel.lock().expect("forward lock")
            && addr == leader
        {
            return Ok(ch.clone());
        }
        let url = format!("https://{leader}");
        let ch = tokio::time::timeout(DIAL_TIMEOUT, connect_coordinator(&url, &self.tls))
            .await
            .map_err(|_| format!("the leader {leader} did not answer within {DIAL_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot reach the leader {leader}: {e}"))?;
        *self.channel.lock().expect("forward lock") = Some((leader.to_string(), ch.clone()));
        Ok(ch)
    }

    /// Sends `req` (the operator's certificate `operator` attached) to `leader` and returns its
    /// answer; `Err` with why when the leader cannot be reached.
    pub async fn forward(
        &self,
        leader: &str,
        mut req: http::Request<tonic::body::Body>,
        operator: &[u8],
    ) -> Result<http::Response<tonic::body::Body>, String> {
        use tower::Service;
        let mut ch = self.channel(leader).await?;
        let value = http::HeaderValue::from_str(&hex(operator)).map_err(|e| e.to_string())?;
        req.headers_mut().insert(FORWARDED_CERT, value);
        futures_util::future::poll_fn(|cx| ch.poll_ready(cx)).await.map_err(|e| e.to_string())?;
        match ch.call(req).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                // Dial again next time: the leader may have moved or restarted.
                self.channel.lock().expect("forward lock").take();
                Err(format!("the leader {leader} did not take the call: {e}"))
            }
        }
    }
}

/// The operator certificate a forwarding coordinator attached, if the header is there and
/// well formed.
pub fn forwarded_cert<B>(req: &http::Request<B>) -> Option<Vec<u8>> {
    let text = req.headers().get(FORWARDED_CERT)?.to_str().ok()?;
    if text.len() > 2 * MAX_CERT_BYTES || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The refusal of a call only the leader serves, for a coordinator that cannot forward it.
pub fn refusal(cluster: &Cluster, method: &str, why: Option<&str>) -> Status {
    let mut msg = cluster.refusal(&format!("serve {method}")).unwrap_or_default();
    if let Some(why) = why {
        msg = format!("{msg} ({why})");
    }
    let mut status = match cluster.leadership() {
        crate::cluster::Leadership::NoQuorum { .. } => Status::unavailable(msg),
        _ => Status::failed_precondition(msg),
    };
    if let Some(leader) = cluster.leader_address()
        && let Ok(v) = leader.parse()
    {
        status.metadata_mut().insert(LEADER_HEADER, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_certificate_reads_back_and_nonsense_is_ignored() {
        let der = vec![0x30, 0x82, 0x01, 0xff, 0x00];
        let req = http::Request::builder().header(FORWARDED_CERT, hex(&der)).body(()).unwrap();
        assert_eq!(forwarded_cert(&req), Some(der));
        for bad in ["zz", "abc", &"00".repeat(MAX_CERT_BYTES + 1)] {
            let req = http::Request::builder().header(FORWARDED_CERT, bad).body(()).unwrap();
            assert_eq!(forwarded_cert(&req), None, "{bad:.10}");
        }
    }
}

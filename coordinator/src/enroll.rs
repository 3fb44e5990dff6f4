//! Enrollment (docs/design.md §11): join tokens, and the signing of agents' own keys with them, then
//! again at every renewal. A token is `<id>.<secret>`; the coordinator keeps the id and a
//! SHA-256 of the secret (the secret is 128 random bits, so a plain hash is enough), compared
//! in constant time. Tokens expire, allow a bounded number of uses, may be bound to a name and
//! carry labels the enrolled hosts get whatever their config says. Every use and refusal is
//! audited; attempts are rate-limited per address.
//!
//! With no `[enrollment] ca_key` all of this is off: tokens cannot be made and the hand-made
//! PKI (`fleetctl certs issue`) is the only way in, as before.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_common::identity::{Identity, Role};
use fleet_common::pki::Signer;
use fleet_proto::v1::{CreateTokenRequest, EnrollRequest, IssuedCertificate, JoinToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::audit::{AuditLog, entry};
use crate::guard::{Authority, Caller, DenyReason};
use crate::store::{RecordKind, SharedState};

/// Tokens kept at once (live and recently ended); creating more is refused.
pub const MAX_TOKENS: usize = 10_000;
/// How long a token is kept (listed) after it expired or was used up.
const KEEP_ENDED: Duration = Duration::from_secs(7 * 86400);
/// The default and the longest lifetime of a token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest lifetime a token may have: it is a bearer secret.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
/// How often a token's use is judged again when other coordinators count uses at once.
const SWAP_ATTEMPTS: u32 = 5;

/// Most uses one token may allow.
pub const MAX_USES: u32 = 10_000;
/// Enrollment attempts one address may make in a burst, and how often one more is allowed.
const BURST: f64 = 10.0;
const REFILL: Duration = Duration::from_secs(6);
/// Addresses followed by the rate limiter.
const LIMITER_MEMORY: usize = 4096;
/// How far before the signing a certificate is valid (clocks differ).
const BACKDATE_S: i64 = 60;

/// `[enrollment]` of coordinator.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentConfig {
    /// The signing key (the CA's, or an intermediate's).
    pub ca_key: std::path::PathBuf,
    /// Its certificate; the trust root (`[tls] ca`) when absent.
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long enrolled agents' certificates are valid.
    pub cert_ttl: Duration,
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public half.
    pub id: String,
    /// SHA-256 of the secret half, hex.
    pub secret_sha256: String,
    /// The bound name, or empty.
    pub name: String,
    /// Labels it gives.
    pub labels: BTreeMap<String, String>,
    /// When it was made (ms).
    pub created_at_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// When it stops working (ms).
    pub expires_at_ms: i64,
    /// Uses allowed and made.
    pub uses_allowed: u32,
    /// Uses made.
    pub uses: u32,
    /// Revoked by an operator.
    pub revoked: bool,
    /// The names enrolled with it.
    pub enrolled: Vec<String>,
}

impl TokenRecord {
    fn to_proto(&self) -> JoinToken {
        JoinToken {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone().into_iter().collect(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            created_by: self.created_by.clone(),
            uses_allowed: self.uses_allowed,
            uses: self.uses,
            revoked: self.revoked,
            enrolled: self.enrolled.clone(),
        }
    }

    fn ended(&self, now_ms: i64) -> bool {
        self.revoked || self.uses >= self.uses_allowed || now_ms >= self.expires_at_ms
    }
}

/// A host enrolled with a token: what the token bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledHost {
    /// The token it enrolled with.
    pub token_id: String,
    /// The labels the token gave.
    pub labels: BTreeMap<String, String>,
    /// When (ms).
    pub enrolled_at_ms: i64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Equal in constant time (for equal lengths; lengths are public).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Per-address token buckets.
#[derive(Debug, Default)]
struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= LIMITER_MEMORY && !self.buckets.contains_key(&ip) {
            // Forget the addresses that have been quiet longest.
            let mut by_age: Vec<(IpAddr, Instant)> = self.buckets.iter().map(|(k, v)| (*k, v.1)).collect();
            by_age.sort_by_key(|(_, at)| *at);
            for (k, _) in by_age.into_iter().take(LIMITER_MEMORY / 4) {
                self.buckets.remove(&k);
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / REFILL.as_secs_f64()).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Enrollment and renewal.
#[derive(Debug)]
pub struct Enrollment {
    signer: Option<Signer>,
    /// The chain after an issued certificate (the intermediate, when signing with one).
    chain_tail: String,
    /// The trust roots agents get.
    ca_pem: String,
    /// The pin of the first root.
    ca_pin: String,
    cert_ttl: Duration,
    shared: Arc<dyn SharedState>,
    audit: AuditLog,
    authority: Arc<Authority>,
    tokens: Mutex<BTreeMap<String, TokenRecord>>,
    enrolled: Mutex<BTreeMap<String, EnrolledHost>>,
    limiter: Mutex<Limiter>,
}

impl Enrollment {
    /// Loads tokens and enrolled hosts. `signer` is None when enrollment is off. `roots` are
    /// the coordinator's trust roots (what agents are given).
    pub fn open(
        signer: Option<Signer>,
        cert_ttl: Duration,
        roots: &fleet_common::tls::TlsMaterial,
        shared: Arc<dyn SharedState>,
        audit: AuditLog,
        authority: Arc<Authority>,
    ) -> Result<Enrollment, String> {
        let ca_pem = roots.roots_pem();
        let ca_pin = roots.roots().first().map(|r| fleet_common::pki::ca_pin(r)).transpose()?.unwrap_or_default();
        let chain_tail = match &signer {
            Some(s) => {
                let signer_der = fleet_common::pki::first_cert_der(s.cert_pem()).unwrap_or_default();
                if roots.roots().iter().any(|r| r.as_ref() == signer_der.as_slice()) {
                    String::new()
                } else {
                    s.cert_pem().to_string()
                }
            }
            None => String::new(),
        };
        let tokens = shared.all::<TokenRecord>(RecordKind::Token).map_err(|e| e.to_string())?.into_iter().collect();
        let enrolled: BTreeMap<String, EnrolledHost> =
            shared.all::<EnrolledHost>(RecordKind::Enrolled).map_err(|e| e.to_string())?.into_iter().collect();
        for name in enrolled.keys() {
            authority.seen.renews_itself(Identity::new(authority.trust_domain.clone(), Role::Agent, name).uri());
        }
        Ok(Enrollment {
            signer,
            chain_tail,
            ca_pem,
            ca_pin,
            cert_ttl,
            shared,
            audit,
            authority,
            tokens: Mutex::new(tokens),
            enrolled: Mutex::new(enrolled),
            limiter: Mutex::new(Limiter::default()),
        })
    }

    /// Whether the coordinator can sign (`[enrollment] ca_key` is set).
    pub fn enabled(&self) -> bool {
        self.signer.is_some()
    }

    /// The CA pin new machines check.
    pub fn ca_pin(&self) -> &str {
        &self.ca_pin
    }

    fn signer(&self) -> Result<&Signer, Status> {
        self.signer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "enrollment is off on this coordinator: set [enrollment] ca_key in coordinator.toml (docs/install.md)",
            )
        })
    }

    /// Labels a join token bound to host `name`.
    pub fn bound_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.enrolled.lock().expect("enrolled lock").get(name).map(|e| e.labels.clone()).filter(|l| !l.is_empty())
    }

    /// Forgets that `name` was enrolled (the host was removed).
    pub fn forget_host(&self, name: &str) -> Result<(), String> {
        self.shared.remove_record(RecordKind::Enrolled, name).map_err(|e| e.to_string())?;
        self.enrolled.lock().expect("enrolled lock").remove(name);
        Ok(())
    }

    /// Makes a token for `by`. Returns it and its secret (`<id>.<secret>`).
    pub fn create_token(&self, by: &Identity, req: &CreateTokenRequest) -> Result<(JoinToken, String), Status> {
        self.signer()?;
        if !req.name.is_empty() && !fleet_common::identity::valid_name(&req.name) {
            return Err(Status::invalid_argument(format!(
                "\"{}\" is not a valid agent name: use 1-63 letters, digits, '-', '_' or '.'",
                req.name
            )));
        }
        let labels: BTreeMap<String, String> = req.labels.clone().into_iter().collect();
        crate::labels::check(labels.iter()).map_err(Status::invalid_argument)?;
        let ttl = if req.ttl_ms == 0 { DEFAULT_TOKEN_TTL } else { Duration::from_millis(req.ttl_ms) };
        if ttl > MAX_TOKEN_TTL || ttl < Duration::from_secs(1) {
            return Err(Status::invalid_argument(format!(
                "--ttl must be between 1s and {} (a token is a secret: keep it short-lived)",
                fleet_common::human_duration(MAX_TOKEN_TTL)
            )));
        }
        let uses = if req.uses == 0 { 1 } else { req.uses };
        if uses > MAX_USES {
            return Err(Status::invalid_argument(format!("--uses must be at most {MAX_USES}")));
        }
        let now = fleet_common::now_ms();
        let id = hex(&rand::random::<[u8; 8]>());
        let secret = hex(&rand::random::<[u8; 16]>());
        let record = TokenRecord {
            id: id.clone(),
            secret_sha256: sha256_hex(&secret),
            name: req.name.clone(),
            labels,
            created_at_ms: now,
            created_by: by.uri(),
            expires_at_ms: now + ttl.as_millis() as i64,
            uses_allowed: uses,
            uses: 0,
            revoked: false,
            enrolled: Vec::new(),
        };
        {
            let mut tokens = self.tokens.lock().expect("tokens lock");
            self.prune(&mut tokens, now);
            if tokens.len() >= MAX_TOKENS {
                return Err(Status::resource_exhausted(format!(
                    "the coordinator holds {MAX_TOKENS} join tokens; revoke unused ones (fleetctl tokens list)"
                )));
            }
            self.shared.put(RecordKind::Token, &id, &record).map_err(|e| Status::unavailable(e.to_string()))?;
            tokens.insert(id.clone(), record.clone());
        }
        Ok((record.to_proto(), format!("{id}.{secret}")))
    }

    /// Forgets tokens that ended more than [`KEEP_ENDED`] ago.
    /// Reads the join tokens and enrolled hosts again from the shared state (another
    /// coordinator of the cluster may have changed them).
    pub fn reload(&self) -> Result<(), String> {
        let tokens = self.shared.all::<TokenRecord>(RecordKind::Token).map_err(|e| e.to_string())?;
        let enrolled = self.shared.all::<EnrolledHost>(RecordKind::Enrolled).map_err(|e| e.to_string())?;
        *self.tokens.lock().expect("tokens lock") = tokens.into_iter().collect();
        *self.enrolled.lock().expect("enrolled lock") = enrolled.into_iter().collect();
        Ok(())
    }

    fn prune(&self, tokens: &mut BTreeMap<String, TokenRecord>, now_ms: i64) {
        let old: Vec<String> = tokens
            .values()
            .filter(|t| t.ended(now_ms) && now_ms - t.expires_at_ms.min(now_ms) > KEEP_ENDED.as_millis() as i64)
            .map(|t| t.id.clone())
            .collect();
        for id in old {
            if self.shared.remove_record(RecordKind::Token, &id).is_ok() {
                tokens.remove(&id);
            }
        }
    }

    /// Every token, newest first.
    pub fn list_tokens(&self) -> Vec<JoinToken> {
        let mut tokens = self.tokens.lock().expect("tokens lock");
        self.prune(&mut tokens, fleet_common::now_ms());
        let mut v: Vec<JoinToken> = tokens.values().map(TokenRecord::to_proto).collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.created_at_ms));
        v
    }

    /// Revokes token `id` (its id, or the whole token).
    pub fn revoke_token(&self, id: &str) -> Result<JoinToken, Status> {
        let id = id.split('.').next().unwrap_or_default();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        let Some(t) = tokens.get(id) else {
            return Err(Status::not_found(format!("no join token {id}; `fleetctl tokens list` shows them")));
        };
        let mut t = t.clone();
        t.revoked = true;
        self.shared.put(RecordKind::Token, id, &t).map_err(|e| Status::unavailable(e.to_string()))?;
        tokens.insert(id.to_string(), t.clone());
        Ok(t.to_proto())
    }

    fn refuse(&self, peer: &str, name: &str, token_id: &str, why: String) -> Status {
        let who = if fleet_common::identity::valid_name(name) {
            Identity::new(self.authority.trust_domain.clone(), Role::Agent, name).uri()
        } else {
            format!("agent {name:?}")
        };
        self.authority.count(DenyReason::Token);
        tracing::warn!(%peer, name = %fleet_common::printable(name, &[]), token = %token_id, "enrollment refused: {why}");
        let audit = self.audit.clone();
        let e = entry(&who, "enroll", name, "", token_id, "denied", &format!("{why} (from {peer})"));
        tokio::spawn(async move {
            let _ = audit.append(e).await;
        });
        Status::permission_denied(why)
    }

    fn not_before_for(&self, identity: &Identity, now_s: i64) -> i64 {
        // A certificate issued after a revocation of its identity must not be covered by it.
        let revoked = self.authority.revocations.of_identity(&identity.uri()).map(|r| r.revoked_at_s);
        (now_s - BACKDATE_S).max(revoked.map(|r| r + 1).unwrap_or(i64::MIN))
    }

    fn issue(
        &self,
        identity: &Identity,
        csr: &[u8],
        labels: BTreeMap<String, String>,
    ) -> Result<IssuedCertificate, Status> {
        let signer = self.signer()?;
        let now_s = fleet_common::now_ms() / 1000;
        let not_before = self.not_before_for(identity, now_s);
        let not_after = now_s + self.cert_ttl.as_secs() as i64;
        let (pem, info) = signer.sign_csr(csr, identity, not_before, not_after).map_err(Status::invalid_argument)?;
        self.authority.seen.saw(identity, &info);
        Ok(IssuedCertificate {
            cert_pem: format!("{pem}{}", self.chain_tail),
            ca_pem: self.ca_pem.clone(),
            lifetime_ms: self.cert_ttl.as_millis() as u64,
            labels: labels.into_iter().collect(),
        })
    }

    /// A new machine's enrollment, from `peer`.
    pub async fn enroll(
        &self,
        peer: Option<std::net::SocketAddr>,
        req: EnrollRequest,
    ) -> Result<IssuedCertificate, Status> {
        self.signer()?;
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into());
        if let Some(ip) = peer.map(|p| p.ip())
            && !self.limiter.lock().expect("limiter lock").allow(ip, Instant::now())
        {
            self.authority.refused(DenyReason::RateLimited, &peer_s, &peer_s, "enroll", "too many enrollment attempts");
            return Err(Status::resource_exhausted(format!(
                "too many enrollment attempts from {ip}; wait a minute and try again"
            )));
        }
        let (identity, id) = self.use_token(&peer_s, &req)?;
        let issued = self.issue(&identity, &req.csr, self.bound_labels(&req.name).unwrap_or_default());
        let issued = match issued {
            Ok(i) => i,
            Err(s) => return Err(self.refuse(&peer_s, &req.name, &id, s.message().to_string())),
        };
        tracing::info!(host = %req.name, peer = %peer_s, token = %id, "agent enrolled");
        let _ = self
            .audit
            .append(entry(&identity.uri(), "enroll", &req.name, "", &id, "succeeded", &format!("from {peer_s}")))
            .await;
        Ok(issued)
    }

    /// Checks the token of `req` and, when it admits it, counts the use and records the host
    /// as enrolled with the token's labels (the request's key is checked before: see
    /// [`Enrollment::enroll`]). Returns the identity to issue and the token id.
    fn use_token(&self, peer_s: &str, req: &EnrollRequest) -> Result<(Identity, String), Status> {
        let (id, secret) = req.token.split_once('.').unwrap_or((req.token.as_str(), ""));
        let id = if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) { id } else { "?" };
        if !fleet_common::identity::valid_name(&req.name) {
            return Err(self.refuse(
                peer_s,
                &req.name,
                id,
                format!("{:?} is not a valid agent name", fleet_common::printable(&req.name, &[])),
            ));
        }
        let identity = Identity::new(self.authority.trust_domain.clone(), Role::Agent, &req.name);
        let now = fleet_common::now_ms();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        // The use is counted by a compare and swap on the shared record: when another
        // coordinator of the cluster counted one at the same time, the token is judged again
        // as it now stands (a bounded number of times).
        let mut attempts = 0;
        let (labels, used) = loop {
            attempts += 1;
            let Some(t) = tokens.get(id).filter(|t| same(&t.secret_sha256, &sha256_hex(secret))) else {
                drop(tokens);
                return Err(self.refuse(
                    peer_s,
                    &req.name,
                    id,
                    "the join token is not valid (mistyped, or made by another coordinator)".into(),
                ));
            };
            let why = if t.revoked {
                Some("the join token was revoked".to_string())
            } else if now >= t.expires_at_ms {
                Some(format!(
                    "the join token expired at {}; make a new one with `fleetctl tokens create`",
                    fleet_common::rfc3339(t.expires_at_ms)
                ))
            } else if t.uses >= t.uses_allowed {
                Some(format!(
                    "the join token was already used ({} of {} uses, by {}); make a new one with `fleetctl tokens create`",
                    t.uses,
                    t.uses_allowed,
                    t.enrolled.join(", ")
                ))
            } else if !t.name.is_empty() && t.name != req.name {
                Some(format!("the join token is bound to the name {}, not {}", t.name, req.name))
            } else {
                None
            };
            if let Some(why) = why {
                drop(tokens);
                return Err(self.refuse(peer_s, &req.name, id, why));
            }
            if let Err(e) = fleet_common::pki::check_csr(&req.csr) {
                drop(tokens);
                return Err(self.refuse(peer_s, &req.name, id, e));
            }
            let labels = t.labels.clone();
            let mut used = t.clone();
            used.uses += 1;
            if used.enrolled.len() < 100 {
                used.enrolled.push(req.name.clone());
            }
            let encode = |r: &TokenRecord| serde_json::to_vec(r).map_err(|e| Status::internal(e.to_string()));
            let (expected, json) = (encode(t)?, encode(&used)?);
            match self.shared.swap_record(RecordKind::Token, id, &expected, &json) {
                Err(e) => return Err(Status::unavailable(e.to_string())),
                Ok(Ok(())) => break (labels, used),
                Ok(Err(_)) if attempts >= SWAP_ATTEMPTS => {
                    return Err(Status::unavailable(
                        "the join token is being used on other coordinators at the same time; try again",
                    ));
                }
                Ok(Err(Some(now))) => match serde_json::from_slice::<TokenRecord>(&now) {
                    Ok(current) => {
                        tokens.insert(id.to_string(), current);
                    }
                    Err(e) => return Err(Status::internal(format!("the join token's record cannot be read: {e}"))),
                },
                Ok(Err(None)) => {
                    tokens.remove(id);
                }
            }
        };
        tokens.insert(id.to_string(), used);
        drop(tokens);
        let host = EnrolledHost { token_id: id.to_string(), labels, enrolled_at_ms: now };
        self.shared.put(RecordKind::Enrolled, &req.name, &host).map_err(|e| Status::unavailable(e.to_string()))?;
        self.enrolled.lock().expect("enrolled lock").insert(req.name.clone(), host);
        self.authority.seen.renews_itself(identity.uri());
        Ok((identity, id.to_string()))
    }

    /// An enrolled agent's renewal over its session.
    pub async fn renew(&self, caller: &Caller, csr: &[u8]) -> Result<IssuedCertificate, Status> {
        let labels = self.bound_labels(&caller.identity.name).unwrap_or_default();
        let issued = self.issue(&caller.identity, csr, labels)?;
        tracing::info!(host = %caller.identity.name, old_serial = %caller.cert.serial, "agent certificate renewed");
        let _ = self
            .audit
            .append(entry(
                &caller.identity.uri(),
                "renew",
                &caller.identity.name,
                "",
                "",
                "succeeded",
                &format!("replacing serial {}", caller.cert.serial),
            ))
            .await;
        Ok(issued)
    }
}

/// The EnrollService.
#[derive(Debug, Clone)]
pub struct EnrollApi {
    /// Tokens and signing, shared with the agent API's renewals.
    pub enrollment: Arc<Enrollment>,
}

#[tonic::async_trait]
impl fleet_proto::v1::enroll_service_server::EnrollService for EnrollApi {
    async fn enroll(&self, req: tonic::Request<EnrollRequest>) -> Result<tonic::Response<IssuedCertificate>, Status> {
        let peer = req.remote_addr();
        self.enrollment.enroll(peer, req.into_inner()).await.map(tonic::Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_one_every_few_seconds() {
        let mut l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.allow(ip, t0));
        }
        assert!(!l.allow(ip, t0));
        assert!(l.allow(ip, t0 + REFILL));
        assert!(!l.allow(ip, t0 + REFILL));
        // Another address has its own bucket.
        assert!(l.allow("10.0.0.2".parse().unwrap(), t0));
        // Bounded.
        for i in 0..(LIMITER_MEMORY as u32 + 10) {
            l.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.buckets.len() <= LIMITER_MEMORY);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}

//! Who may call what on the gRPC port (docs/design.md §3, §11), decided in one place before any
//! handler runs: a tower layer in front of each service reads the peer's certificate, checks
//! its trust domain, its role, the deny list and, for the ControlService, the operator's
//! access role the rpc needs ([`crate::access::CONTROL_RPCS`]). What it admits reaches the
//! handler with the caller's [`Identity`] and [`Caller`] in the request's extensions; what it
//! refuses is answered here, logged, counted in `fleet_coordinator_denied_total{reason}` and
//! written to the audit log (repeats of the same refusal of the same call within a minute are
//! counted only).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fleet_common::identity::{Identity, Role};
use fleet_common::pki::CertInfo;
use tonic::Status;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::access::{Access, AccessRole};
use crate::audit::AuditLog;
use crate::metrics::{Counter, Metrics};
use crate::revocation::Revocations;

/// Why a call or a handshake was refused: the `reason` label of
/// `fleet_coordinator_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No client certificate where one is needed.
    NoCertificate,
    /// A certificate without a usable fleet identity, or of another trust domain.
    BadIdentity,
    /// An identity of the wrong kind for the service (an agent calling the operator API).
    WrongRole,
    /// An operator whose access role is below what the rpc needs.
    AccessRole,
    /// A certificate on the deny list.
    Revoked,
    /// An agent attaching as another agent.
    Impersonation,
    /// A join token that does not admit the request.
    Token,
    /// Too many enrollment attempts from one address.
    RateLimited,
}

impl DenyReason {
    /// Every reason, in exposition order.
    pub const ALL: [DenyReason; 8] = [
        DenyReason::NoCertificate,
        DenyReason::BadIdentity,
        DenyReason::WrongRole,
        DenyReason::AccessRole,
        DenyReason::Revoked,
        DenyReason::Impersonation,
        DenyReason::Token,
        DenyReason::RateLimited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoCertificate => "no_certificate",
            DenyReason::BadIdentity => "bad_identity",
            DenyReason::WrongRole => "wrong_role",
            DenyReason::AccessRole => "access_role",
            DenyReason::Revoked => "revoked",
            DenyReason::Impersonation => "impersonation",
            DenyReason::Token => "token",
            DenyReason::RateLimited => "rate_limited",
        }
    }
}

/// Which callers a service admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Operators, each rpc by the access role it needs.
    Control,
    /// Agents only, each acting as the host its certificate names.
    Agent,
    /// Anyone: the service authenticates by other means (enrollment's join token).
    Open,
    /// Any fleet identity of this trust domain (health, reflection).
    AnyIdentity,
}

/// The caller of an admitted call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its identity.
    pub identity: Identity,
    /// What its certificate says.
    pub cert: CertInfo,
    /// For operators, the access role it has.
    pub role: Option<AccessRole>,
}

/// The address the client dialed (`host:port` of the request), for commands shown back to it.
#[derive(Debug, Clone)]
pub struct Dialed(pub String);

/// How long the same refusal (identity, reason, call) is counted without being audited again.
const AUDIT_REPEAT: Duration = Duration::from_secs(60);
/// Most distinct refusals remembered for that.
const AUDIT_MEMORY: usize = 4096;

/// The decisions and what they need: shared by every guarded service and the TLS verifier.
#[derive(Debug)]
pub struct Authority {
    /// The coordinator's trust domain.
    pub trust_domain: String,
    /// `[access]`, replaced on SIGHUP.
    pub access: RwLock<Access>,
    /// The deny list.
    pub revocations: Revocations,
    /// The coordinator's own counters, for `fleet_coordinator_control_denied_total`.
    pub metrics: Arc<Metrics>,
    /// Refusals by reason, in the order of [`DenyReason::ALL`].
    denied: [Counter; DenyReason::ALL.len()],
    /// Where refusals are written.
    pub audit: AuditLog,
    /// Certificates seen, for `fleet_certificate_expiry_timestamp_seconds`.
    pub seen: crate::certificates::Seen,
    audited: Mutex<HashMap<(String, DenyReason, String), Instant>>,
}

impl Authority {
    /// The authority for `trust_domain`.
    pub fn new(
        trust_domain: String,
        access: Access,
        revocations: Revocations,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        seen: crate::certificates::Seen,
    ) -> Self {
        Authority {
            trust_domain,
            access: RwLock::new(access),
            revocations,
            metrics,
            denied: Default::default(),
            audit,
            seen,
            audited: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refusal (without logging it: see [`Authority::refused`]).
    pub fn count(&self, reason: DenyReason) {
        if let Some(i) = DenyReason::ALL.iter().position(|r| *r == reason) {
            self.denied[i].inc();
        }
    }

    /// The access role of operator `name` now.
    pub fn role_of(&self, name: &str) -> AccessRole {
        self.access.read().expect("access lock").role_of(name)
    }

    /// Records a refusal: counted always; logged, and audited when the caller has an identity,
    /// unless the same refusal was within the last minute. `who` is the identity URI, or the
    /// peer's address (without the port) when there is none.
    pub fn refused(&self, reason: DenyReason, who: &str, peer: &str, action: &str, message: &str) {
        self.count(reason);
        let anonymous = !who.starts_with("spiffe://");
        let who = if anonymous { who.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(who) } else { who };
        let now = Instant::now();
        let fresh = {
            let mut seen = self.audited.lock().expect("audit throttle lock");
            if seen.len() >= AUDIT_MEMORY {
                seen.retain(|_, at| now.duration_since(*at) < AUDIT_REPEAT);
                if seen.len() >= AUDIT_MEMORY {
                    seen.clear();
                }
            }
            let key = (who.to_string(), reason, action.to_string());
            match seen.get(&key) {
                Some(at) if now.duration_since(*at) < AUDIT_REPEAT => false,
                _ => {
                    seen.insert(key, now);
                    true
                }
            }
        };
        if !fresh {
            return;
        }
        tracing::warn!(identity = %who, %peer, reason = reason.as_str(), %action, "refused: {message}");
        if anonymous {
            return;
        }
        let audit = self.audit.clone();
        let entry = crate::audit::entry(who, action, "", "", "", "denied", message);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                let _ = audit.append(entry).await;
            });
        }
    }

    /// Decides one call: `method` of a service behind `gate`, from a peer with `certs`.
    /// `forwarded` is the certificate (DER) of the operator on whose behalf another
    /// coordinator of the cluster forwards the call to this one, its leader; it counts only
    /// when the peer is a coordinator of this trust domain, and then decides as if the
    /// operator had called.
    pub fn admit(
        &self,
        gate: Gate,
        method: &str,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        peer: &str,
        forwarded: Option<&[u8]>,
    ) -> Result<Option<Caller>, Status> {
        if gate == Gate::Open {
            return Ok(None);
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            let msg = "no client certificate: fleet requires mutual TLS (enroll this machine, or pass --cert/--key)";
            self.refused(DenyReason::NoCertificate, peer, peer, method, msg);
            return Err(Status::unauthenticated(msg));
        };
        let (mut cert, mut identity) = self.checked_identity(leaf, method, peer)?;
        if gate == Gate::Control
            && identity.role == Role::Coordinator
            && let Some(der) = forwarded
        {
            let via = format!("{peer} (forwarded by {})", identity.uri());
            (cert, identity) = self.checked_identity(der, method, &via)?;
            tracing::debug!(operator = %identity.uri(), %via, %method, "a call forwarded to the leader");
        }
        let who = identity.uri();
        let role = match gate {
            Gate::Open => unreachable!("handled above"),
            Gate::AnyIdentity => None,
            Gate::Agent if identity.role == Role::Agent => None,
            // Another coordinator of the cluster fetching an artifact it lacks (design §13).
            Gate::Agent if identity.role == Role::Coordinator && method == "FetchArtifact" => None,
            // The leader asking whether another coordinator holds a rollout's artifact.
            Gate::Control if identity.role == Role::Coordinator && method == "StatArtifact" && forwarded.is_none() => {
                None
            }
            Gate::Agent => {
                let msg = format!("{who} is not an agent identity; the agent API needs an agent certificate");
                self.refused(DenyReason::WrongRole, &who, peer, method, &msg);
                return Err(Status::permission_denied(msg));
            }
            Gate::Control if identity.role != Role::Operator => {
                let msg = format!(
                    "{who} is {} identity; the operator API needs an operator certificate (`fleetctl certs issue operator NAME`)",
                    match identity.role {
                        Role::Agent => "an agent",
                        Role::Coordinator => "the coordinator's",
                        Role::Operator => "an operator",
                    }
                );
                self.metrics.control_denied.inc();
                self.refused(DenyReason::WrongRole, &who, peer, method, &msg);
                return Err(Status::permission_denied(msg));
            }
            Gate::Control => {
                let has = self.role_of(&identity.name);
                let needs = crate::access::required_role(method);
                match needs {
                    Some(needs) if has >= needs => {}
                    _ => {
                        let msg = match needs {
                            Some(needs) => format!(
                                "{method} needs the {needs} role; {who} is {} {has} (an admin can change that in [access] of coordinator.toml)",
                                if has == AccessRole::Admin { "an" } else { "a" }
                            ),
                            None => format!("{method} is not an rpc this coordinator serves to operators"),
                        };
                        self.metrics.control_denied.inc();
                        self.refused(DenyReason::AccessRole, &who, peer, method, &msg);
                        return Err(Status::permission_denied(msg));
                    }
                }
                Some(has)
            }
        };
        self.seen.saw(&identity, &cert);
        Ok(Some(Caller { identity, cert, role }))
    }

    /// The identity a certificate carries, if it belongs to this trust domain and is not
    /// revoked.
    fn checked_identity(&self, der: &[u8], method: &str, peer: &str) -> Result<(CertInfo, Identity), Status> {
        let cert = fleet_common::pki::cert_info(der).map_err(Status::unauthenticated)?;
        let Some(identity) = cert.identity.clone() else {
            let msg =
                "the client certificate carries no spiffe:// fleet identity; issue it with `fleetctl certs issue`";
            self.refused(DenyReason::BadIdentity, peer, peer, method, msg);
            return Err(Status::unauthenticated(msg));
        };
        let who = identity.uri();
        if identity.trust_domain != self.trust_domain {
            let msg = format!(
                "identity {who} belongs to trust domain {}, this coordinator serves {}",
                identity.trust_domain, self.trust_domain
            );
            self.refused(DenyReason::BadIdentity, &who, peer, method, &msg);
            return Err(Status::permission_denied(msg));
        }
        if let Some(r) = self.revocations.check(&cert) {
            let msg = format!(
                "the certificate of {who} (serial {}) was revoked at {} by {}{}",
                cert.serial,
                fleet_common::rfc3339(r.revoked_at_s.saturating_mul(1000)),
                r.by,
                if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
            );
            self.refused(DenyReason::Revoked, &who, peer, method, &msg);
            return Err(Status::permission_denied(msg));
        }
        Ok((cert, identity))
    }
}

/// A service behind a [`Gate`].
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    gate: Gate,
    authority: Arc<Authority>,
    forwarder: Option<Arc<crate::forward::Forwarder>>,
}

impl<S> Guard<S> {
    /// Puts `inner` behind `gate`.
    pub fn new(inner: S, gate: Gate, authority: Arc<Authority>) -> Self {
        Guard { inner, gate, authority, forwarder: None }
    }

    /// Passes [`crate::access::LEADER_RPCS`] on to the leader while this coordinator does not
    /// lead (refusing them, naming the leader, when that cannot be done).
    pub fn leader_only(mut self, forwarder: Arc<crate::forward::Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
        let info = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer =
            info.and_then(|i| i.get_ref().remote_addr()).map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        let certs = info.and_then(|i| i.peer_certs());
        let dialed = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        req.extensions_mut().insert(Dialed(dialed));
        let forwarded = crate::forward::forwarded_cert(&req);
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.to_vec());
        match self.authority.admit(
            self.gate,
            &method,
            certs.as_deref().map(|c| c.as_slice()),
            &peer,
            forwarded.as_deref(),
        ) {
            // Only the leader serves it: pass it on, or say who leads.
            Ok(Some(_))
                if let Some(fwd) = self.forwarder.clone()
                    && crate::access::LEADER_RPCS.contains(&method.as_str())
                    && !fwd.cluster().is_leader() =>
            {
                let leader = match fwd.cluster().leadership() {
                    crate::cluster::Leadership::Follower { leader: Some(l) } => Some(l),
                    _ => None,
                };
                Box::pin(async move {
                    let why = match (leader, forwarded, leaf) {
                        (Some(leader), None, Some(leaf)) => {
                            let req = req.map(tonic::body::Body::new);
                            match fwd.forward(&leader, req, &leaf).await {
                                Ok(resp) => return Ok(resp),
                                Err(why) => Some(why),
                            }
                        }
                        (Some(_), Some(_), _) => Some("it was forwarded here already".to_string()),
                        _ => None,
                    };
                    Ok(crate::forward::refusal(fwd.cluster(), &method, why.as_deref()).into_http())
                })
            }
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller.identity.clone());
                    req.extensions_mut().insert(caller);
                }
                // The service was made ready by poll_ready; a clone takes its place.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                // An operator's call is a span of the caller's trace (its `traceparent`); an
                // agent's session lasts for hours and is not.
                if self.gate == Gate::Control && fleet_common::telemetry::enabled() {
                    use tracing::Instrument;
                    let span = tracing::info_span!(
                        target: fleet_common::telemetry::TARGET,
                        "grpc.server",
                        otel.name = %req.uri().path().trim_start_matches('/'),
                        otel.kind = "server",
                        rpc.system = "grpc",
                        rpc.method = %method,
                    );
                    fleet_common::telemetry::set_parent_from_headers(&span, req.headers());
                    return Box::pin(async move { ready.call(req).await }.instrument(span));
                }
                Box::pin(async move { ready.call(req).await })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

/// `fleet_coordinator_denied_total{reason}`.
impl crate::metrics::FmtMetrics for Authority {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        e.family(
            "fleet_coordinator_denied_total",
            "counter",
            "Calls, TLS handshakes and enrollments refused since start, by reason.",
        );
        for (reason, c) in DenyReason::ALL.iter().zip(&self.denied) {
            e.sample("fleet_coordinator_denied_total", &[("reason", reason.as_str())], c.get() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_common::identity::Role;

    fn der(path: &std::path::Path) -> tonic::transport::CertificateDer<'static> {
        let pem = std::fs::read_to_string(path).unwrap();
        tonic::transport::CertificateDer::from(fleet_common::pki::first_cert_der(&pem).unwrap())
    }

    #[tokio::test]
    async fn only_a_coordinator_may_forward_an_operator_and_the_operator_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        fleetctl::certs::init(&pki, "fleet.local", 30, false).unwrap();
        let issue = |role, name| der(&fleetctl::certs::issue(&pki, role, name, &[], 30, false).unwrap().cert);
        let (coordinator, ops, eve, agent) = (
            issue(Role::Coordinator, "coordinator"),
            issue(Role::Operator, "ops"),
            issue(Role::Operator, "eve"),
            issue(Role::Agent, "pc2"),
        );
        let store = crate::store::Store::open(&dir.path().join("data"), Duration::from_secs(3600)).unwrap();
        let revocations = Revocations::load(Arc::new(store)).unwrap();
        let access = Access::default();
        let audit = AuditLog::open(dir.path()).unwrap();
        let a = Authority::new(
            "fleet.local".into(),
            access,
            revocations.clone(),
            Arc::new(Metrics::default()),
            audit,
            Default::default(),
        );
        let admit = |peer: &tonic::transport::CertificateDer<'static>, fwd: Option<&[u8]>| {
            a.admit(Gate::Control, "GetStatus", Some(std::slice::from_ref(peer)), "127.0.0.1:1", fwd)
        };
        // A coordinator calling for itself is no operator.
        assert_eq!(admit(&coordinator, None).unwrap_err().code(), tonic::Code::PermissionDenied);
        // Forwarding for ops: decided as ops.
        let caller = admit(&coordinator, Some(ops.as_ref())).unwrap().unwrap();
        assert_eq!(caller.identity.name, "ops");
        // An operator or an agent cannot pass itself off as someone else.
        assert_eq!(admit(&eve, Some(ops.as_ref())).unwrap().unwrap().identity.name, "eve");
        assert_eq!(admit(&agent, Some(ops.as_ref())).unwrap_err().code(), tonic::Code::PermissionDenied);
        // A forwarded operator on the deny list is refused like one calling directly.
        let info = fleet_common::pki::cert_info(eve.as_ref()).unwrap();
        revocations
            .add(crate::revocation::Revocation {
                target: crate::revocation::Revocation::serial_target(&info.serial),
                revoked_at_s: fleet_common::now_ms() / 1000,
                by: "test".into(),
                reason: String::new(),
            })
            .unwrap();
        let err = admit(&coordinator, Some(eve.as_ref())).unwrap_err();
        assert!(err.message().contains("revoked"), "{err:?}");
    }
}

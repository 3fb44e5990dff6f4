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
    pub fn admit(
        &self,
        gate: Gate,
        method: &str,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
        peer: &str,
    ) -> Result<Option<Caller>, Status> {
        if gate == Gate::Open {
            return Ok(None);
        }
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            let msg = "no client certificate: fleet requires mutual TLS (enroll this machine, or pass --cert/--key)";
            self.refused(DenyReason::NoCertificate, peer, peer, method, msg);
            return Err(Status::unauthenticated(msg));
        };
        let cert = fleet_common::pki::cert_info(leaf).map_err(Status::unauthenticated)?;
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
        let role = match gate {
            Gate::Open => unreachable!("handled above"),
            Gate::AnyIdentity => None,
            Gate::Agent if identity.role == Role::Agent => None,
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
}

/// A service behind a [`Gate`].
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    gate: Gate,
    authority: Arc<Authority>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl<S> Guard<S> {
    /// Puts `inner` behind `gate`.
    pub fn new(inner: S, gate: Gate, authority: Arc<Authority>) -> Self {
        Guard { inner, gate, authority, cluster: None }
    }

    /// Refuses [`crate::access::LEADER_RPCS`] while `cluster` says this coordinator does not
    /// lead.
    pub fn leader_only(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }
}

/// The response header that names the leader when a follower refuses a call only the leader
/// serves.
pub const LEADER_HEADER: &str = "fleet-leader";

/// Why `method` is refused here for want of leadership, if it is.
fn not_leader(cluster: Option<&crate::cluster::Cluster>, method: &str) -> Option<Status> {
    let cluster = cluster?;
    if !crate::access::LEADER_RPCS.contains(&method) {
        return None;
    }
    let msg = cluster.refusal(&format!("serve {method}"))?;
    let mut status = match cluster.leadership() {
        crate::cluster::Leadership::NoQuorum { .. } => Status::unavailable(msg),
        _ => Status::failed_precondition(msg),
    };
    if let Some(leader) = cluster.leader_address()
        && let Ok(v) = leader.parse()
    {
        status.metadata_mut().insert(LEADER_HEADER, v);
    }
    Some(status)
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
    B: Send + 'static,
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
        match self.authority.admit(self.gate, &method, certs.as_deref().map(|c| c.as_slice()), &peer) {
            Ok(_) if let Some(status) = not_leader(self.cluster.as_deref(), &method) => {
                Box::pin(async move { Ok(status.into_http()) })
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

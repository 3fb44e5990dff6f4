//! What admins do to identities (docs/design.md §11): join tokens, revocation and removing hosts.
//! A revocation is durable before it takes effect; then the identity's live agent session is
//! ended with a message saying so, and a moment later every connection made with the
//! certificate is cut (operators' streams included).

use std::sync::Arc;
use std::time::Duration;

use fleet_common::identity::{Identity, Role};
use fleet_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, RemoveHostResponse, Revocation as RevocationProto,
    RevokeCertificateRequest, RevokeCertificateResponse,
};
use tonic::Status;

use crate::audit::{AuditLog, entry};
use crate::enroll::Enrollment;
use crate::guard::Authority;
use crate::registry::Registry;
use crate::revocation::Revocation;
use crate::server::Connections;
use crate::store::{RecordKind, SharedState};

/// How long after ending an agent's session its connections are cut: time for the agent to
/// read why.
const CUT_AFTER: Duration = Duration::from_millis(200);

/// The handles identity changes need.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Decisions and the deny list.
    pub authority: Arc<Authority>,
    /// Tokens and signing.
    pub enrollment: Arc<Enrollment>,
    /// Open connections by certificate.
    pub connections: Connections,
    /// Cluster state.
    pub registry: Arc<Registry>,
    /// Where removed hosts are recorded.
    pub shared: Arc<dyn SharedState>,
    /// The audit log.
    pub audit: AuditLog,
}

fn to_proto(r: &Revocation) -> RevocationProto {
    RevocationProto {
        target: r.target.clone(),
        revoked_at_ms: r.revoked_at_s.saturating_mul(1000),
        by: r.by.clone(),
        reason: r.reason.clone(),
    }
}

/// Reads `agent/NAME`, `operator/NAME` or a whole `spiffe://` URI in `trust_domain`.
pub fn parse_identity(s: &str, trust_domain: &str) -> Result<Identity, String> {
    let id = if s.starts_with("spiffe://") {
        Identity::parse_uri(s).map_err(|e| e.to_string())?
    } else {
        let (role, name) = s.split_once('/').ok_or_else(|| {
            format!("\"{s}\" is not an identity: use agent/NAME, operator/NAME or spiffe://{trust_domain}/agent/NAME")
        })?;
        let role = match role {
            "agent" => Role::Agent,
            "operator" => Role::Operator,
            _ => return Err(format!("\"{role}\" is not a role that can be revoked: use agent/NAME or operator/NAME")),
        };
        if !fleet_common::identity::valid_name(name) {
            return Err(format!("\"{name}\" is not a valid name"));
        }
        Identity::new(trust_domain, role, name)
    };
    if id.trust_domain != trust_domain {
        return Err(format!("{id} is not of this coordinator's trust domain {trust_domain}"));
    }
    if id.role == Role::Coordinator {
        return Err("the coordinator's own identity cannot be revoked here: replace its certificate".into());
    }
    Ok(id)
}

impl Lifecycle {
    /// A join token for `by`, with the command to run on the new machine (`addr`: how the
    /// operator reached this coordinator).
    pub fn create_token(
        &self,
        by: &Identity,
        req: &CreateTokenRequest,
        addr: &str,
    ) -> Result<CreateTokenResponse, Status> {
        let (token, secret) = self.enrollment.create_token(by, req)?;
        let pin = self.enrollment.ca_pin().to_string();
        let name = if token.name.is_empty() { String::new() } else { format!(" --name {}", token.name) };
        let command = format!("fleet-agent enroll --coordinator https://{addr} --token {secret} --ca-pin {pin}{name}");
        tracing::info!(by = %by, token = %token.id, name = %token.name, expires_at = %fleet_common::rfc3339(token.expires_at_ms), "join token created");
        Ok(CreateTokenResponse { token: Some(token), secret, ca_pin: pin, command })
    }

    /// Puts `target` on the deny list and cuts what uses it.
    pub async fn revoke(
        &self,
        by: &Identity,
        req: &RevokeCertificateRequest,
    ) -> Result<RevokeCertificateResponse, Status> {
        let td = self.authority.trust_domain.clone();
        let (target, identity) = match (req.identity.is_empty(), req.serial.is_empty()) {
            (false, true) => {
                let id = parse_identity(&req.identity, &td).map_err(Status::invalid_argument)?;
                (id.uri(), Some(id))
            }
            (true, false) => {
                let serial = fleet_common::pki::normalize_serial(&req.serial).ok_or_else(|| {
                    Status::invalid_argument(format!("\"{}\" is not a certificate serial (hex digits)", req.serial))
                })?;
                (Revocation::serial_target(&serial), None)
            }
            _ => return Err(Status::invalid_argument("give an identity or --serial, not both")),
        };
        let entry_ = Revocation {
            target: target.clone(),
            revoked_at_s: fleet_common::now_ms() / 1000,
            by: by.uri(),
            reason: req.reason.clone(),
        };
        self.authority.revocations.add(entry_.clone()).map_err(Status::unavailable)?;
        let cut = self.cut(&entry_, identity.as_ref()).await;
        tracing::warn!(by = %by, %target, connections = cut, reason = %req.reason, "certificate revoked");
        let _ = self
            .audit
            .append(entry(
                &by.uri(),
                "revoke",
                identity.as_ref().filter(|i| i.role == Role::Agent).map(|i| i.name.as_str()).unwrap_or(""),
                "",
                "",
                "succeeded",
                &format!(
                    "{target}{}; {cut} connections cut",
                    if req.reason.is_empty() { String::new() } else { format!(" ({})", req.reason) }
                ),
            ))
            .await;
        Ok(RevokeCertificateResponse { revocation: Some(to_proto(&entry_)), connections_cut: cut as u32 })
    }

    /// Ends the agent session the entry covers (with a message), then cuts every connection
    /// made with a certificate it covers. Returns how many connections were cut.
    async fn cut(&self, r: &Revocation, identity: Option<&Identity>) -> usize {
        let msg = format!(
            "this agent's certificate was revoked by {}{}; enroll it again with a new join token (fleet-agent enroll, docs/install.md)",
            r.by,
            if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
        );
        let mut ended = false;
        match identity {
            Some(id) if id.role == Role::Agent => {
                ended = self.registry.end_session(
                    &id.name,
                    "its certificate was revoked",
                    Status::permission_denied(msg.clone()),
                );
            }
            Some(_) => {}
            None => {
                // A serial: end the session of whichever agent attached with it.
                for host in self.registry.all() {
                    let uri = Identity::new(self.authority.trust_domain.clone(), Role::Agent, &host.name).uri();
                    if self
                        .authority
                        .seen
                        .all()
                        .iter()
                        .any(|(k, f)| *k == uri && r.target == Revocation::serial_target(&f.serial))
                    {
                        ended |= self.registry.end_session(
                            &host.name,
                            "its certificate was revoked",
                            Status::permission_denied(msg.clone()),
                        );
                    }
                }
            }
        }
        if ended {
            tokio::time::sleep(CUT_AFTER).await;
        }
        let r = r.clone();
        self.connections.cut(move |c| r.covers(c) || r.target == Revocation::serial_target(&c.serial))
    }

    /// Revokes agent `name` and forgets the host.
    pub async fn remove_host(&self, by: &Identity, name: &str, reason: &str) -> Result<RemoveHostResponse, Status> {
        if self.registry.get(name).is_none() && self.enrollment.bound_labels(name).is_none() {
            return Err(Status::not_found(format!("no host named \"{name}\"; `fleetctl hosts` lists them")));
        }
        let id = Identity::new(self.authority.trust_domain.clone(), Role::Agent, name);
        let req = RevokeCertificateRequest { identity: id.uri(), serial: String::new(), reason: reason.to_string() };
        let revoked = self.revoke(by, &req).await?;
        // The session ends at once; wait for it to be marked so, then forget the host.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.registry.get(name).is_some_and(|h| h.online()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.registry.remove(name);
        self.shared.remove_host(name, fleet_common::now_ms()).map_err(|e| Status::unavailable(e.to_string()))?;
        self.enrollment.forget_host(name).map_err(Status::unavailable)?;
        self.authority.seen.forget(&id.uri());
        tracing::warn!(by = %by, host = %name, "host removed");
        let _ = self.audit.append(entry(&by.uri(), "hosts remove", name, "", "", "succeeded", reason)).await;
        Ok(RemoveHostResponse { revocation: revoked.revocation })
    }

    /// With several coordinators: forgets the hosts another coordinator removed (their
    /// records in etcd) once their session here has ended, unless they reported here since
    /// (later than [`crate::store::REMOVAL_GRACE_MS`] after the removal: until this coordinator read the
    /// deny list again and cut the session, the revoked agent may still have reported).
    /// Returns the names forgotten.
    pub fn follow_shared_removals(&self, store: &crate::store::Store) -> Result<Vec<String>, String> {
        let removed = self.shared.all::<i64>(RecordKind::RemovedHost).map_err(|e| e.to_string())?;
        let mut forgotten = Vec::new();
        for (name, gone_at_ms) in removed {
            let Some(host) = self.registry.get(&name) else { continue };
            if host.online() || host.with(|s| s.record.last_report_ms) > gone_at_ms + crate::store::REMOVAL_GRACE_MS {
                continue;
            }
            self.registry.remove(&name);
            store.remove_host(&name, gone_at_ms).map_err(|e| e.to_string())?;
            let id = Identity::new(self.authority.trust_domain.clone(), Role::Agent, &name);
            self.authority.seen.forget(&id.uri());
            forgotten.push(name);
        }
        Ok(forgotten)
    }

    /// The deny list.
    pub fn revocations(&self) -> Vec<RevocationProto> {
        self.authority.revocations.list().iter().map(to_proto).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_read_in_every_spelling() {
        let td = "fleet.local";
        assert_eq!(parse_identity("agent/pc2", td).unwrap().uri(), "spiffe://fleet.local/agent/pc2");
        assert_eq!(parse_identity("operator/alice", td).unwrap().uri(), "spiffe://fleet.local/operator/alice");
        assert_eq!(
            parse_identity("spiffe://fleet.local/agent/pc2", td).unwrap().uri(),
            "spiffe://fleet.local/agent/pc2"
        );
        assert!(parse_identity("spiffe://other.org/agent/pc2", td).unwrap_err().contains("trust domain"));
        assert!(parse_identity("spiffe://fleet.local/coordinator", td).unwrap_err().contains("own identity"));
        assert!(parse_identity("pc2", td).unwrap_err().contains("agent/NAME"));
        assert!(parse_identity("root/x", td).is_err());
        assert!(parse_identity("agent/../x", td).is_err());
    }
}

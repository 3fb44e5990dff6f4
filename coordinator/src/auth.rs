//! Authorisation by the identity in the peer's certificate (DESIGN §3): agents may only attach
//! as the agent their certificate names, and only operators may call the ControlService.

use std::sync::Arc;

use fleet_common::identity::{Identity, Role};
use tonic::{Request, Status};

use crate::metrics::Metrics;

/// The identity of the peer of `req`, which must belong to `trust_domain`.
pub fn peer_identity<T>(req: &Request<T>, trust_domain: &str) -> Result<Identity, Status> {
    let certs =
        req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate: fleet requires mutual TLS"))?;
    let leaf =
        certs.first().ok_or_else(|| Status::unauthenticated("no client certificate: fleet requires mutual TLS"))?;
    let id = Identity::from_cert_der(leaf).map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    if id.trust_domain != trust_domain {
        return Err(Status::permission_denied(format!(
            "identity {id} belongs to trust domain {}, this coordinator serves {trust_domain}",
            id.trust_domain
        )));
    }
    Ok(id)
}

fn peer_addr<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
}

/// A tonic interceptor admitting only operator identities to the ControlService.
#[derive(Clone)]
pub struct OperatorOnly {
    /// The coordinator's trust domain.
    pub trust_domain: String,
    /// Where denials are counted.
    pub metrics: Arc<Metrics>,
}

impl tonic::service::Interceptor for OperatorOnly {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let id = match peer_identity(&req, &self.trust_domain) {
            Ok(id) => id,
            Err(s) => {
                self.metrics.control_denied.inc();
                tracing::warn!(peer = %peer_addr(&req), reason = %s.message(), "operator API call refused");
                return Err(s);
            }
        };
        if id.role != Role::Operator {
            self.metrics.control_denied.inc();
            let msg = format!(
                "{id} is {} identity; the operator API needs an operator certificate (`fleetctl certs issue operator NAME`)",
                match id.role {
                    Role::Agent => "an agent",
                    Role::Coordinator => "the coordinator's",
                    Role::Operator => "an operator",
                }
            );
            tracing::warn!(peer = %peer_addr(&req), identity = %id, "operator API call refused: not an operator identity");
            return Err(Status::permission_denied(msg));
        }
        req.extensions_mut().insert(id);
        Ok(req)
    }
}

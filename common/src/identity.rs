//! Identities as they live in certificates: a URI SAN `spiffe://<trust-domain>/<role>/<name>`
//! (or `spiffe://<trust-domain>/coordinator`). Authorisation everywhere is decided on these.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The trust domain `fleetctl certs init` uses unless told otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "fleet.local";

/// What a certificate holder is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A fleet-agent on one machine.
    Agent,
    /// A person or tool running fleetctl.
    Operator,
    /// The fleet-coordinator.
    Coordinator,
}

impl Role {
    /// The path segment used in the identity URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed fleet identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The trust domain, for example `fleet.local`.
    pub trust_domain: String,
    /// The role.
    pub role: Role,
    /// The agent or operator name; `coordinator` for the coordinator.
    pub name: String,
}

/// Why a certificate or URI does not carry a usable fleet identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The certificate could not be parsed at all.
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// No `spiffe://` URI SAN was found.
    #[error("certificate carries no spiffe:// URI identity; issue it with `fleetctl certs issue`")]
    Missing,
    /// A URI that is not of the expected shape.
    #[error(
        "`{0}` is not a fleet identity (expected spiffe://<trust-domain>/agent|operator/<name> or spiffe://<trust-domain>/coordinator)"
    )]
    Malformed(String),
}

impl Identity {
    /// An identity for `role` named `name` in `trust_domain`.
    pub fn new(trust_domain: impl Into<String>, role: Role, name: impl Into<String>) -> Self {
        let name = match role {
            Role::Coordinator => "coordinator".to_string(),
            _ => name.into(),
        };
        Identity { trust_domain: trust_domain.into(), role, name }
    }

    /// The URI SAN form of this identity.
    pub fn uri(&self) -> String {
        match self.role {
            Role::Coordinator => format!("spiffe://{}/coordinator", self.trust_domain),
            role => format!("spiffe://{}/{}/{}", self.trust_domain, role, self.name),
        }
    }

    /// Parses the URI SAN form.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next().filter(|s| !s.is_empty()).ok_or_else(malformed)?;
        let role = parts.next().ok_or_else(malformed)?;
        let id = match (role, parts.next(), parts.next()) {
            ("coordinator", None, None) => Identity::new(trust_domain, Role::Coordinator, ""),
            ("agent", Some(name), None) if valid_name(name) => Identity::new(trust_domain, Role::Agent, name),
            ("operator", Some(name), None) if valid_name(name) => Identity::new(trust_domain, Role::Operator, name),
            _ => return Err(malformed()),
        };
        Ok(id)
    }

    /// Reads the fleet identity out of a DER certificate's URI SANs.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert.subject_alternative_name().map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let Some(san) = san else { return Err(IdentityError::Missing) };
        let mut first_error = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if !uri.starts_with("spiffe://") {
                    continue;
                }
                match Identity::parse_uri(uri) {
                    Ok(id) => return Ok(id),
                    Err(e) => first_error = first_error.or(Some(e)),
                }
            }
        }
        Err(first_error.unwrap_or(IdentityError::Missing))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Whether `name` is usable as an agent, operator or service name: 1 to 63 characters of
/// ASCII letters, digits, `-`, `_` and `.`, starting with a letter or digit. These names end
/// up in file names, URIs and metric labels, so the alphabet is deliberately small.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_role() {
        for id in [
            Identity::new("fleet.local", Role::Agent, "main-pc"),
            Identity::new("fleet.local", Role::Operator, "alice"),
            Identity::new("example.org", Role::Coordinator, "ignored"),
        ] {
            assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
        }
        assert_eq!(Identity::new("d", Role::Coordinator, "x").uri(), "spiffe://d/coordinator");
    }

    #[test]
    fn rejects_malformed_uris() {
        for uri in [
            "https://fleet.local/agent/a",
            "spiffe:///agent/a",
            "spiffe://fleet.local/agent",
            "spiffe://fleet.local/agent/",
            "spiffe://fleet.local/agent/a/b",
            "spiffe://fleet.local/admin/a",
            "spiffe://fleet.local/agent/../x",
            "spiffe://fleet.local/coordinator/x",
        ] {
            assert!(Identity::parse_uri(uri).is_err(), "{uri} was accepted");
        }
    }

    #[test]
    fn reads_identity_from_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://fleet.local/agent/pc2".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = Identity::from_cert_der(cert.der()).unwrap();
        assert_eq!(id, Identity::new("fleet.local", Role::Agent, "pc2"));

        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(Identity::from_cert_der(cert.der()), Err(IdentityError::Missing));
    }
}

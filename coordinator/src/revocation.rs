//! The deny list (docs/design.md §11): certificates taken back before they expire. An entry names one
//! certificate by serial, or an identity: then every certificate of that identity issued up to
//! the revocation is refused, and one enrolled later (a reinstalled machine with a new token)
//! is not. Entries are persisted in the store and checked twice: in the TLS handshake
//! ([`DenyingVerifier`]) and on every call ([`crate::guard`]); revoking one also cuts the
//! connections that carry it ([`crate::server::Connections`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use fleet_common::pki::CertInfo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::store::{RecordKind, SharedState, StoreError};

/// The store's key prefix for revocations.
/// Most entries the deny list holds (each is a few hundred bytes, checked per handshake).
pub const MAX_ENTRIES: usize = 100_000;

/// One entry of the deny list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `serial:<hex>` or the identity URI.
    pub target: String,
    /// When, Unix seconds.
    pub revoked_at_s: i64,
    /// Who revoked it (an identity URI).
    pub by: String,
    /// Why, as the operator said.
    pub reason: String,
}

impl Revocation {
    /// The key of an entry for a serial.
    pub fn serial_target(serial: &str) -> String {
        format!("serial:{serial}")
    }

    /// Whether this entry refuses the certificate `cert`.
    pub fn covers(&self, cert: &CertInfo) -> bool {
        match self.target.strip_prefix("serial:") {
            Some(serial) => serial == cert.serial,
            // Issued up to the revocation: a certificate's validity starts at (or before) its
            // issue, so one valid from after the revocation was issued after it.
            None => {
                cert.identity.as_ref().is_some_and(|i| i.uri() == self.target) && cert.not_before_s <= self.revoked_at_s
            }
        }
    }
}

/// The deny list, in memory and in the store.
#[derive(Debug, Clone)]
pub struct Revocations {
    entries: Arc<RwLock<BTreeMap<String, Revocation>>>,
    shared: Arc<dyn SharedState>,
}

impl Revocations {
    /// Loads the persisted entries.
    pub fn load(shared: Arc<dyn SharedState>) -> Result<Revocations, StoreError> {
        let entries = shared.all::<Revocation>(RecordKind::Revocation)?.into_iter().collect();
        Ok(Revocations { entries: Arc::new(RwLock::new(entries)), shared })
    }

    /// The entry refusing `cert`, if any.
    pub fn check(&self, cert: &CertInfo) -> Option<Revocation> {
        let entries = self.entries.read().expect("revocations lock");
        if let Some(r) = entries.get(&Revocation::serial_target(&cert.serial)) {
            return Some(r.clone());
        }
        let r = entries.get(&cert.identity.as_ref()?.uri())?;
        r.covers(cert).then(|| r.clone())
    }

    /// Adds (or renews) an entry, durably, before it takes effect anywhere.
    pub fn add(&self, entry: Revocation) -> Result<(), String> {
        if self.entries.read().expect("revocations lock").len() >= MAX_ENTRIES
            && !self.entries.read().expect("revocations lock").contains_key(&entry.target)
        {
            return Err(format!("the deny list holds {MAX_ENTRIES} entries, its limit"));
        }
        self.shared.put(RecordKind::Revocation, &entry.target, &entry).map_err(|e| e.to_string())?;
        self.entries.write().expect("revocations lock").insert(entry.target.clone(), entry);
        Ok(())
    }

    /// Reads the entries again from the shared state (another coordinator of the cluster may
    /// have added some) and returns those that are new here.
    pub fn reload(&self) -> Result<Vec<Revocation>, StoreError> {
        let fresh: BTreeMap<String, Revocation> =
            self.shared.all::<Revocation>(RecordKind::Revocation)?.into_iter().take(MAX_ENTRIES).collect();
        let mut entries = self.entries.write().expect("revocations lock");
        let added = fresh.iter().filter(|(k, v)| entries.get(*k) != Some(*v)).map(|(_, v)| v.clone()).collect();
        *entries = fresh;
        Ok(added)
    }

    /// Every entry, newest first.
    pub fn list(&self) -> Vec<Revocation> {
        let mut v: Vec<Revocation> = self.entries.read().expect("revocations lock").values().cloned().collect();
        v.sort_by(|a, b| b.revoked_at_s.cmp(&a.revoked_at_s).then_with(|| a.target.cmp(&b.target)));
        v
    }

    /// The identity entry for `uri`, if there is one.
    pub fn of_identity(&self, uri: &str) -> Option<Revocation> {
        self.entries.read().expect("revocations lock").get(uri).cloned()
    }
}

/// What is told of a refused certificate.
type OnRefusal = dyn Fn(&CertInfo, &Revocation) + Send + Sync;

/// The client verifier of the gRPC port: the fleet CA's verdict, then the deny list. A revoked
/// certificate is refused with TLS' `certificate_revoked` alert, which fleetctl and the agent
/// turn into words.
pub struct DenyingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Revocations,
    on_refusal: Box<OnRefusal>,
}

impl std::fmt::Debug for DenyingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyingVerifier").finish_non_exhaustive()
    }
}

impl DenyingVerifier {
    /// Wraps `inner`; `on_refusal` is told of every certificate the deny list refuses.
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        revocations: Revocations,
        on_refusal: impl Fn(&CertInfo, &Revocation) + Send + Sync + 'static,
    ) -> Self {
        DenyingVerifier { inner, revocations, on_refusal: Box::new(on_refusal) }
    }
}

impl ClientCertVerifier for DenyingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if let Ok(info) = fleet_common::pki::cert_info(end_entity)
            && let Some(r) = self.revocations.check(&info)
        {
            (self.on_refusal)(&info, &r);
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use fleet_common::identity::{Identity, Role};

    fn cert(name: &str, serial: &str, not_before_s: i64) -> CertInfo {
        CertInfo {
            identity: Some(Identity::new("fleet.local", Role::Agent, name)),
            serial: serial.into(),
            not_before_s,
            not_after_s: not_before_s + 3600,
        }
    }

    #[test]
    fn entries_refuse_what_they_name_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), std::time::Duration::from_secs(3600)).unwrap();
        let r = Revocations::load(Arc::new(store.clone())).unwrap();
        let entry = |target: &str, at: i64| Revocation {
            target: target.into(),
            revoked_at_s: at,
            by: "x".into(),
            reason: String::new(),
        };
        r.add(entry("spiffe://fleet.local/agent/pc2", 1000)).unwrap();
        r.add(entry(&Revocation::serial_target("abc"), 1000)).unwrap();
        // Every certificate of pc2 issued up to the revocation; not one issued after it.
        assert!(r.check(&cert("pc2", "1", 999)).is_some());
        assert!(r.check(&cert("pc2", "2", 1000)).is_some());
        assert!(r.check(&cert("pc2", "3", 1001)).is_none());
        // A serial, whoever it names and whenever it was issued.
        assert!(r.check(&cert("main-pc", "abc", 5000)).is_some());
        assert!(r.check(&cert("main-pc", "abd", 5000)).is_none());
        drop(r);
        store.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path(), std::time::Duration::from_secs(3600)).unwrap();
        let r = Revocations::load(Arc::new(store)).unwrap();
        assert_eq!(r.list().len(), 2);
        assert!(r.check(&cert("pc2", "1", 999)).is_some());
    }
}

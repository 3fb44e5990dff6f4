//! The certificates the coordinator knows, for `fleet_certificate_expiry_timestamp_seconds
//! {identity,kind}` (docs/design.md §11): its own, the CA's, and the newest one each agent and operator
//! presented or was issued. Enrolled agents renew their own certificates at two thirds of
//! their lifetime: for them `fleet_certificate_renewal_timestamp_seconds` says when, so that
//! `FleetCertificateExpiringSoon` waits for a renewal that is due instead of warning about
//! every enrolled agent in the last third of its certificate. Rules see both series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fleet_common::identity::{Identity, Role};
use fleet_common::pki::CertInfo;

/// Most certificates followed; beyond it new identities are not (each is one series).
pub const MAX_FOLLOWED: usize = 100_000;

/// A followed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// `coordinator`, `ca`, `agent` or `operator`.
    pub kind: &'static str,
    /// Its serial.
    pub serial: String,
    /// When it expires, Unix seconds.
    pub not_after_s: i64,
    /// When its holder renews it (enrolled agents), Unix seconds.
    pub renew_at_s: Option<i64>,
}

/// The certificates seen, by identity URI (the CA by its trust domain URI).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    inner: Arc<Mutex<BTreeMap<String, Followed>>>,
    /// Identities that renew their own certificates (enrolled agents).
    renewing: Arc<Mutex<std::collections::HashSet<String>>>,
}

fn kind_of(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Operator => "operator",
        Role::Coordinator => "coordinator",
    }
}

impl Seen {
    /// Notes the certificate `identity` presented or was issued (the newest wins).
    pub fn saw(&self, identity: &Identity, cert: &CertInfo) {
        self.note(identity.uri(), kind_of(identity.role), cert);
    }

    /// Notes that `uri` renews its own certificates (it enrolled).
    pub fn renews_itself(&self, uri: String) {
        let mut r = self.renewing.lock().expect("certificates lock");
        if r.len() < MAX_FOLLOWED {
            r.insert(uri);
        }
    }

    /// Notes a certificate under a name of `kind` (the coordinator's own, the CA's).
    pub fn note(&self, name: String, kind: &'static str, cert: &CertInfo) {
        let renew_at_s = self.renewing.lock().expect("certificates lock").contains(&name).then(|| {
            let life = cert.not_after_s - cert.not_before_s;
            cert.not_before_s + life * 2 / 3
        });
        let mut m = self.inner.lock().expect("certificates lock");
        if m.len() >= MAX_FOLLOWED && !m.contains_key(&name) {
            return;
        }
        let f = Followed { kind, serial: cert.serial.clone(), not_after_s: cert.not_after_s, renew_at_s };
        if m.get(&name) != Some(&f) {
            m.insert(name, f);
        }
    }

    /// Stops following `uri` (a removed host).
    pub fn forget(&self, uri: &str) {
        self.inner.lock().expect("certificates lock").remove(uri);
        self.renewing.lock().expect("certificates lock").remove(uri);
    }

    /// Every followed certificate, by name.
    pub fn all(&self) -> Vec<(String, Followed)> {
        self.inner.lock().expect("certificates lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Appends `fleet_certificate_expiry_timestamp_seconds{identity,kind}` for every certificate
/// the coordinator follows.
impl crate::metrics::FmtMetrics for Seen {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        let seen = self;
        e.family(
            "fleet_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a certificate the coordinator knows expires, in seconds since the Unix epoch.",
        );
        let all = seen.all();
        for (identity, f) in &all {
            e.sample(
                "fleet_certificate_expiry_timestamp_seconds",
                &[("identity", identity), ("kind", f.kind)],
                f.not_after_s as f64,
            );
        }
        e.family(
            "fleet_certificate_renewal_timestamp_seconds",
            "gauge",
            "When the holder of a certificate renews it itself (enrolled agents), in seconds since the Unix epoch.",
        );
        for (identity, f) in &all {
            if let Some(at) = f.renew_at_s {
                e.sample(
                    "fleet_certificate_renewal_timestamp_seconds",
                    &[("identity", identity), ("kind", f.kind)],
                    at as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_certificate_of_an_identity_is_followed() {
        let seen = Seen::default();
        let id = Identity::new("fleet.local", Role::Agent, "pc2");
        let cert = |serial: &str, end: i64| CertInfo {
            identity: Some(id.clone()),
            serial: serial.into(),
            not_before_s: 0,
            not_after_s: end,
        };
        seen.saw(&id, &cert("a", 100));
        seen.saw(&id, &cert("b", 200));
        let followed = |serial: &str, end, renew| Followed {
            kind: "agent",
            serial: serial.into(),
            not_after_s: end,
            renew_at_s: renew,
        };
        assert_eq!(seen.all(), vec![(id.uri(), followed("b", 200, None))]);
        // Enrolled: renewed at two thirds of its lifetime.
        seen.renews_itself(id.uri());
        seen.saw(&id, &cert("c", 300));
        assert_eq!(seen.all(), vec![(id.uri(), followed("c", 300, Some(200)))]);
        seen.forget(&id.uri());
        assert!(seen.all().is_empty());
    }
}

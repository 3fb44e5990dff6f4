//! The fleet PKI in code (docs/design.md §3, §11): issuing certificates that carry fleet identities
//! (by `fleetctl certs` and by the coordinator's enrollment), signing an agent's certificate
//! request, reading what a certificate says (identity, serial, validity) and the CA pin a new
//! machine checks before it trusts a coordinator.
//!
//! Keys are ECDSA P-256. Every certificate is valid from a little before its issue (clocks
//! differ) to its end; serials are 128 random bits.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{DEFAULT_TRUST_DOMAIN, Identity, Role};

/// The largest certificate request accepted (an ECDSA request is a few hundred bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What a certificate says, as far as fleet cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The fleet identity in its URI SAN, if it has one.
    pub identity: Option<Identity>,
    /// The serial number, lower-case hex without leading zeros.
    pub serial: String,
    /// Valid from, Unix seconds.
    pub not_before_s: i64,
    /// Valid until, Unix seconds.
    pub not_after_s: i64,
}

/// Reads identity, serial and validity from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    Ok(CertInfo {
        identity: Identity::from_cert_der(der).ok(),
        serial: serial_hex(x.raw_serial()),
        not_before_s: x.validity().not_before.timestamp(),
        not_after_s: x.validity().not_after.timestamp(),
    })
}

/// A serial number as fleet prints and matches it: lower-case hex, no leading zeros.
pub fn serial_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0".into() } else { trimmed.into() }
}

/// Normalises a serial typed by an operator (`0A:1b`, `0x0a1b`, `a1b`) to [`serial_hex`]'s form.
pub fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = hex.trim_start_matches('0');
    Some(if t.is_empty() { "0".into() } else { t.into() })
}

/// The pin of a CA certificate: `sha256:<hex of its SubjectPublicKeyInfo>`, what
/// `fleet-agent enroll --ca-pin` checks (as kubeadm's discovery token CA hash does).
pub fn ca_pin(der: &[u8]) -> Result<String, String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let digest = Sha256::digest(x.public_key().raw);
    Ok(format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Checks the shape of a pin given by an operator.
pub fn parse_pin(pin: &str) -> Result<String, String> {
    let hex = pin.strip_prefix("sha256:").ok_or_else(|| {
        format!("the CA pin \"{pin}\" does not start with sha256:; copy it from `fleetctl tokens create`")
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("the CA pin \"{pin}\" is not sha256: followed by 64 hex digits"));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// The first certificate of a PEM text, as DER.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).next().map(|c| c.to_vec())
}

/// The trust domain a CA certificate records (its `spiffe://<domain>` URI SAN).
pub fn ca_trust_domain(ca_pem: &str) -> Option<String> {
    let der = first_cert_der(ca_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => {
            u.strip_prefix("spiffe://").filter(|d| !d.is_empty() && !d.contains('/')).map(str::to_string)
        }
        _ => None,
    })
}

/// How long before its issue a certificate is already valid: room for clocks that are a
/// little behind.
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A certificate and key made in memory.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The identity it carries.
    pub identity: Identity,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

/// A signing CA (the root made by `fleetctl certs init`, or an intermediate): its key, its
/// certificate, and the trust domain it issues identities in.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(
    identity: &Identity,
    sans: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.name.as_str());
    dn.push(DnType::OrganizationalUnitName, identity.role.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity.role {
        Role::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Agent | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let mut san_list = vec![SanType::URI(identity.uri().try_into().map_err(|e| format!("identity: {e}"))?)];
    for s in sans {
        let s = s.trim();
        match s.parse::<IpAddr>() {
            Ok(ip) => san_list.push(SanType::IpAddress(ip)),
            Err(_) => san_list.push(SanType::DnsName(
                s.to_string().try_into().map_err(|e| format!("--san {s}: not a DNS name or IP address: {e}"))?,
            )),
        }
    }
    params.subject_alt_names = san_list;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// Makes a new self-signed root CA for `trust_domain`, valid for `days`: (cert PEM, key PEM).
/// It may sign one level of intermediates ([`Signer::intermediate`]).
pub fn new_root(trust_domain: &str, days: u32) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = ca_params(&format!("fleet CA {trust_domain}"), trust_domain, 1)?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(i64::from(days));
    let cert = params.self_signed(&key).map_err(|e| format!("cannot sign the CA: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(common_name: &str, trust_domain: &str, path_len: u8) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "fleet");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{trust_domain}").try_into().map_err(|e| format!("trust domain: {e}"))?)];
    params.serial_number = Some(random_serial());
    Ok(params)
}

impl Signer {
    /// A signer from a CA certificate and its key, both PEM. The words "the CA key" and "the
    /// CA certificate" in errors stand for the files the caller read them from.
    pub fn from_pem(ca_pem: &str, ca_key_pem: &str) -> Result<Signer, String> {
        let key = KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the CA key is not a usable private key: {e}"))?;
        let key_raw = key.public_key_raw().to_vec();
        let issuer =
            Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        let der = first_cert_der(ca_pem).ok_or("the CA certificate holds no PEM certificate")?;
        let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("the CA certificate: {e}"))?;
        if x.public_key().subject_public_key.data.as_ref() != key_raw.as_slice() {
            return Err("the CA key does not belong to the CA certificate".into());
        }
        if !x.is_ca() {
            return Err("the CA certificate is not a CA certificate".into());
        }
        let trust_domain = ca_trust_domain(ca_pem).unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
        Ok(Signer { issuer, cert_pem: ca_pem.to_string(), trust_domain })
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The signing certificate, PEM (what an issued chain is completed with when it is an
    /// intermediate).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate and a new key for `role` `name`, valid for `days` from now.
    pub fn issue(&self, role: Role, name: &str, sans: &[String], days: u32) -> Result<Minted, String> {
        if !crate::identity::valid_name(name) {
            return Err(format!("invalid name \"{name}\""));
        }
        let identity = Identity::new(self.trust_domain.clone(), role, name);
        let mut names: Vec<String> = sans.to_vec();
        if role == Role::Coordinator && names.is_empty() {
            // A coordinator certificate with no --san still works on this machine.
            names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        }
        let now = OffsetDateTime::now_utc();
        let params = leaf_params(&identity, &names, now - BACKDATE, now + time::Duration::days(i64::from(days)))?;
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| format!("cannot sign: {e}"))?;
        Ok(Minted { identity, cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Makes an intermediate CA under this (root) CA, valid for `days`: (cert PEM, key PEM).
    pub fn intermediate(&self, name: &str, days: u32) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
        let mut params = ca_params(&format!("fleet intermediate CA {name}"), &self.trust_domain, 0)?;
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(i64::from(days));
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| format!("cannot sign: {e}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs the public key of a certificate request (DER) for `identity`, valid from
    /// `not_before_s` for `ttl_s` seconds. Nothing of the request but its key and its
    /// signature is used: the coordinator decides what the certificate says.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        not_before_s: i64,
        not_after_s: i64,
    ) -> Result<(String, CertInfo), String> {
        if csr_der.len() > MAX_CSR_BYTES {
            return Err(format!(
                "the certificate request is {} bytes; at most {MAX_CSR_BYTES} are accepted",
                csr_der.len()
            ));
        }
        let der = CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| format!("the certificate request is not a valid, self-signed PKCS#10 request: {e}"))?;
        let at = |s: i64| OffsetDateTime::from_unix_timestamp(s).map_err(|e| format!("time {s}: {e}"));
        csr.params = leaf_params(identity, &[], at(not_before_s)?, at(not_after_s)?)?;
        let cert = csr.signed_by(&self.issuer).map_err(|e| format!("cannot sign: {e}"))?;
        let info = cert_info(cert.der())?;
        Ok((cert.pem(), info))
    }
}

/// Checks that `csr_der` is a well-formed, self-signed PKCS#10 request of a size fleet accepts.
pub fn check_csr(csr_der: &[u8]) -> Result<(), String> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(format!(
            "the certificate request is {} bytes; at most {MAX_CSR_BYTES} are accepted",
            csr_der.len()
        ));
    }
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map(drop)
        .map_err(|e| format!("the certificate request is not a valid, self-signed PKCS#10 request: {e}"))
}

/// A new key and a certificate request for it (DER), made where the key is to stay.
pub fn new_key_and_csr(identity: &Identity) -> Result<(String, Vec<u8>), String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.name.as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(|e| format!("cannot make a certificate request: {e}"))?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// DER as a PEM block.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_signed_for_the_identity_the_signer_chooses() {
        let (ca, ca_key) = new_root("example.org", 30).unwrap();
        let signer = Signer::from_pem(&ca, &ca_key).unwrap();
        assert_eq!(signer.trust_domain(), "example.org");
        let wanted = Identity::new("example.org", Role::Agent, "pc2");
        // The request asks for nothing in particular; the certificate names pc2.
        let (_key, csr) = new_key_and_csr(&Identity::new("evil.org", Role::Operator, "root")).unwrap();
        let now = crate::now_ms() / 1000;
        let (pem, info) = signer.sign_csr(&csr, &wanted, now - 60, now + 60).unwrap();
        assert_eq!(info.identity.as_ref(), Some(&wanted));
        assert_eq!((info.not_before_s, info.not_after_s), (now - 60, now + 60));
        assert!(info.serial.len() >= 30, "{}", info.serial);
        assert_eq!(cert_info(&first_cert_der(&pem).unwrap()).unwrap(), info);
        // A mangled request is refused.
        let mut bad = csr.clone();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        assert!(signer.sign_csr(&bad, &wanted, now, now + 60).is_err());
        assert!(
            signer.sign_csr(&vec![0u8; MAX_CSR_BYTES + 1], &wanted, now, now + 60).unwrap_err().contains("at most")
        );
        assert!(signer.sign_csr(b"nonsense", &wanted, now, now + 60).is_err());
    }

    #[test]
    fn der_written_as_pem_reads_back() {
        let (ca, _) = new_root("fleet.local", 30).unwrap();
        let der = first_cert_der(&ca).unwrap();
        let pem = pem_block("CERTIFICATE", &der);
        assert_eq!(first_cert_der(&pem).unwrap(), der);
        for n in 1..6 {
            let bytes: Vec<u8> = (0..n).collect();
            let pem = pem_block("CERTIFICATE", &bytes);
            let back = rustls_pki_types::pem::from_buf(&mut pem.as_bytes()).unwrap().unwrap();
            assert_eq!(back.1, bytes, "{pem}");
        }
    }

    #[test]
    fn pins_and_serials_have_one_spelling() {
        let (ca, ca_key) = new_root("fleet.local", 30).unwrap();
        let pin = ca_pin(&first_cert_der(&ca).unwrap()).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
        assert_eq!(parse_pin(&pin.to_uppercase().replace("SHA256:", "sha256:")).unwrap(), pin);
        assert!(parse_pin("abc").unwrap_err().contains("sha256:"));
        assert!(parse_pin("sha256:12").is_err());
        assert_eq!(normalize_serial("0A:1b").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial("0x00A1B").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(serial_hex(&[0, 0x0a, 0x1b]), "a1b");
        // Another key is not this CA's.
        let (_, other_key) = new_root("fleet.local", 30).unwrap();
        assert!(Signer::from_pem(&ca, &other_key).unwrap_err().contains("does not belong"));
        let _ = ca_key;
    }

    #[test]
    fn an_intermediate_signs_certificates_a_root_trusting_client_accepts() {
        let (root, root_key) = new_root("fleet.local", 30).unwrap();
        let (inter, inter_key) = Signer::from_pem(&root, &root_key).unwrap().intermediate("issuing", 30).unwrap();
        let signer = Signer::from_pem(&inter, &inter_key).unwrap();
        let m = signer.issue(Role::Agent, "pc2", &[], 1).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(first_cert_der(&root).unwrap().into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = rustls_pki_types::CertificateDer::from(first_cert_der(&m.cert_pem).unwrap());
        let via = [rustls_pki_types::CertificateDer::from(first_cert_der(&inter).unwrap())];
        verifier.verify_client_cert(&leaf, &via, rustls_pki_types::UnixTime::now()).unwrap();
        // Without the intermediate the chain does not reach the root.
        assert!(verifier.verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now()).is_err());
    }
}

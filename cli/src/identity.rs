//! Identities from fleetctl (docs/design.md §11): join tokens, revocation, removing hosts, `whoami`,
//! and intermediate CAs.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fleet_common::printable;
use fleet_proto::v1::{
    CreateTokenRequest, ListRevocationsRequest, ListTokensRequest, RemoveHostRequest, RevokeCertificateRequest,
    RevokeTokenRequest, WhoAmIRequest,
};
use serde_json::json;

use crate::client::{Target, status_error};
use crate::views::{print_json, table};
use crate::{CliError, Output};

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("\"{part}\" is not k=v"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn when(ms: i64) -> String {
    if ms <= 0 { "-".into() } else { fleet_common::rfc3339(ms) }
}

fn token_state(t: &fleet_proto::v1::JoinToken, now_ms: i64) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.uses >= t.uses_allowed {
        "used"
    } else if now_ms >= t.expires_at_ms {
        "expired"
    } else {
        "valid"
    }
}

fn token_json(t: &fleet_proto::v1::JoinToken) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "labels": t.labels, "created_at": when(t.created_at_ms),
        "created_by": t.created_by, "expires_at": when(t.expires_at_ms), "uses_allowed": t.uses_allowed,
        "uses": t.uses, "state": token_state(t, fleet_common::now_ms()), "enrolled": t.enrolled,
    })
}

/// `fleetctl tokens create`.
pub async fn create_token(
    target: &Target,
    name: Option<&str>,
    labels: &HashMap<String, String>,
    ttl: Duration,
    uses: u32,
    output: Output,
) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let r = c
        .create_token(CreateTokenRequest {
            name: name.unwrap_or_default().to_string(),
            labels: labels.clone(),
            ttl_ms: ttl.as_millis() as u64,
            uses,
        })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::FailedPrecondition => CliError::failed(e.message().to_string()),
            _ => status_error(&target.addr, e),
        })?
        .into_inner();
    let t = r.token.unwrap_or_default();
    if output == Output::Json {
        print_json(&json!({
            "id": t.id, "token": r.secret, "ca_pin": r.ca_pin, "expires_at": when(t.expires_at_ms), "command": r.command,
        }));
        return Ok(());
    }
    outln!(
        "join token {} (valid until {}, {} use{}{})",
        t.id,
        when(t.expires_at_ms),
        t.uses_allowed,
        if t.uses_allowed == 1 { "" } else { "s" },
        if t.name.is_empty() { String::new() } else { format!(", only for {}", t.name) }
    );
    outln!();
    outln!("On the new machine, as root:");
    outln!();
    outln!("  {}", r.command);
    outln!();
    outln!("The token is shown only now: the coordinator keeps a hash of it. Keep it secret until it is used.");
    Ok(())
}

/// `fleetctl tokens list`.
pub async fn list_tokens(target: &Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let tokens =
        c.list_tokens(ListTokensRequest {}).await.map_err(|e| status_error(&target.addr, e))?.into_inner().tokens;
    if output == Output::Json {
        print_json(&tokens.iter().map(token_json).collect::<Vec<_>>());
        return Ok(());
    }
    if tokens.is_empty() {
        outln!("no join tokens (make one with `fleetctl tokens create`)");
        return Ok(());
    }
    let now = fleet_common::now_ms();
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let mut labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                t.id.clone(),
                token_state(t, now).into(),
                if t.name.is_empty() { "(any)".into() } else { t.name.clone() },
                labels.join(","),
                format!("{}/{}", t.uses, t.uses_allowed),
                when(t.expires_at_ms),
                t.created_by.rsplit('/').next().unwrap_or_default().to_string(),
                t.enrolled.join(","),
            ]
            .into_iter()
            .map(|c| printable(&c, &[]).into_owned())
            .collect()
        })
        .collect();
    out!("{}", table(&["ID", "STATE", "NAME", "LABELS", "USES", "EXPIRES", "BY", "ENROLLED"], &rows));
    Ok(())
}

/// `fleetctl tokens revoke ID`.
pub async fn revoke_token(target: &Target, id: &str, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let t = c
        .revoke_token(RevokeTokenRequest { id: id.to_string() })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::NotFound => CliError::failed(e.message().to_string()),
            _ => status_error(&target.addr, e),
        })?
        .into_inner();
    if output == Output::Json {
        print_json(&token_json(&t));
    } else {
        outln!("join token {} revoked: it enrolls nothing from now on", t.id);
    }
    Ok(())
}

fn revocation_json(r: &fleet_proto::v1::Revocation) -> serde_json::Value {
    json!({ "target": r.target, "revoked_at": when(r.revoked_at_ms), "by": r.by, "reason": r.reason })
}

/// `fleetctl certs revoke IDENTITY | --serial HEX`.
pub async fn revoke(
    target: &Target,
    identity: Option<&str>,
    serial: Option<&str>,
    reason: &str,
    output: Output,
) -> Result<(), CliError> {
    if identity.is_some() == serial.is_some() {
        return Err(CliError::usage(
            "name what to revoke: fleetctl certs revoke agent/NAME | operator/NAME | --serial HEX",
        ));
    }
    let mut c = target.control().await?;
    let r = c
        .revoke_certificate(RevokeCertificateRequest {
            identity: identity.unwrap_or_default().to_string(),
            serial: serial.unwrap_or_default().to_string(),
            reason: reason.to_string(),
        })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner();
    let rev = r.revocation.unwrap_or_default();
    if output == Output::Json {
        let mut v = revocation_json(&rev);
        v["connections_cut"] = json!(r.connections_cut);
        print_json(&v);
    } else {
        let what = match rev.target.strip_prefix("serial:") {
            Some(s) => format!("the certificate with serial {s}"),
            None => format!("every certificate of {} issued until now", rev.target),
        };
        outln!("revoked {what}; {} connection{} cut", r.connections_cut, if r.connections_cut == 1 { "" } else { "s" });
    }
    Ok(())
}

/// `fleetctl certs revoked`: the deny list.
pub async fn revocations(target: &Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let list = c
        .list_revocations(ListRevocationsRequest {})
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner()
        .revocations;
    if output == Output::Json {
        print_json(&list.iter().map(revocation_json).collect::<Vec<_>>());
        return Ok(());
    }
    if list.is_empty() {
        outln!("nothing is revoked");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.target.clone(),
                when(r.revoked_at_ms),
                r.by.rsplit('/').next().unwrap_or_default().into(),
                r.reason.clone(),
            ]
            .into_iter()
            .map(|c| printable(&c, &[]).into_owned())
            .collect()
        })
        .collect();
    out!("{}", table(&["REVOKED", "AT", "BY", "REASON"], &rows));
    Ok(())
}

/// `fleetctl hosts remove NAME`.
pub async fn remove_host(target: &Target, name: &str, reason: &str, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let r = c
        .remove_host(RemoveHostRequest { name: name.to_string(), reason: reason.to_string() })
        .await
        .map_err(|e| match e.code() {
            tonic::Code::NotFound => CliError::failed(e.message().to_string()),
            _ => status_error(&target.addr, e),
        })?
        .into_inner();
    if output == Output::Json {
        print_json(&revocation_json(&r.revocation.unwrap_or_default()));
    } else {
        outln!(
            "removed {name}: its certificates are revoked and it is no longer listed; its history ages out. To bring the machine back, enroll it again with a new join token."
        );
    }
    Ok(())
}

/// `fleetctl whoami`.
pub async fn whoami(target: &Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let r = c.who_am_i(WhoAmIRequest {}).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    if output == Output::Json {
        print_json(
            &json!({ "identity": r.identity, "role": r.role, "serial": r.serial, "expires_at": when(r.not_after_ms) }),
        );
    } else {
        outln!("{} ({}), certificate {} valid until {}", r.identity, r.role, r.serial, when(r.not_after_ms));
    }
    Ok(())
}

/// `fleetctl certs intermediate`: an intermediate CA under the root in `dir`, written to
/// `out/intermediate.pem` and `out/intermediate-key.pem`.
pub fn intermediate(dir: &Path, out: &Path, name: &str, days: u32, force: bool) -> Result<(), CliError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::usage(format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e))))
    };
    let ca = dir.join(crate::certs::CA_CERT);
    let key = dir.join(crate::certs::CA_KEY);
    let signer = fleet_common::pki::Signer::from_pem(&read(&ca)?, &read(&key)?).map_err(|e| {
        CliError::usage(
            e.replace("the CA key", &key.display().to_string())
                .replace("the CA certificate", &ca.display().to_string()),
        )
    })?;
    let (cert_pem, key_pem) = signer.intermediate(name, days).map_err(CliError::failed)?;
    std::fs::create_dir_all(out)
        .map_err(|e| CliError::failed(format!("cannot create {}: {}", out.display(), fleet_common::io_reason(&e))))?;
    let cert_path = out.join("intermediate.pem");
    let key_path = out.join("intermediate-key.pem");
    for p in [&cert_path, &key_path] {
        if p.exists() && !force {
            return Err(CliError::failed(format!("{} already exists; pass --force to replace it", p.display())));
        }
    }
    crate::certs::write_file(&key_path, &key_pem, 0o600)?;
    crate::certs::write_file(&cert_path, &cert_pem, 0o644)?;
    outln!("wrote {} and {}", cert_path.display(), key_path.display());
    outln!(
        "give the coordinator these as [enrollment] ca_cert and ca_key, and keep {} (the root's key) offline",
        key.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_as_k_equals_v() {
        let l = parse_labels("role=gpu, zone=eu ,").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l["role"], "gpu");
        assert_eq!(l["zone"], "eu");
        assert!(parse_labels("role").unwrap_err().contains("k=v"));
    }
}

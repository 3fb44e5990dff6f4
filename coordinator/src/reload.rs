//! What changes while the coordinator runs: on SIGHUP the rule files and `[access]` are read
//! again (as Prometheus reloads its rules), and the coordinator's own certificate files are
//! followed, so that new handshakes use a renewed certificate without a restart.

use std::sync::Arc;
use std::time::Duration;

use fleet_common::identity::Role;
use fleet_common::tls::TlsMaterial;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::alerting::Alerting;
use crate::config::CoordinatorConfig;
use crate::guard::Authority;
use crate::server::{ServerTls, grpc_server_config};

/// Follows the coordinator's own certificate files: on SIGHUP (with `[access]` from the
/// config file) and whenever their modification times change, the next handshakes use the
/// new certificate. A file that does not load leaves the current one in use, said in the log.
pub async fn follow_identity(
    config: CoordinatorConfig,
    server_tls: ServerTls,
    authority: Arc<Authority>,
    alerting: Arc<Alerting>,
    enrollment_on: bool,
    shutdown: CancellationToken,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    let mtimes = |files: &fleet_common::tls::TlsFiles| {
        [&files.ca, &files.cert, &files.key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut files = config.tls.clone();
    let mut seen = mtimes(&files);
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => true,
            _ = tick.tick() => false,
        };
        if hangup {
            // SIGHUP reloads the rule files, as it does for Prometheus, and [access].
            if let Err(e) = alerting.reload() {
                tracing::error!(error = %e, "rule reload failed; the previous rules stay active");
            }
            match CoordinatorConfig::load(&config.source) {
                Ok(new) => {
                    for w in new.access.warnings() {
                        tracing::warn!("{w}");
                    }
                    let mut cur = authority.access.write().expect("access lock");
                    if *cur != new.access {
                        tracing::info!(operators = new.access.operators.len(), default_role = %new.access.default_role, "access roles reloaded");
                        *cur = new.access;
                    }
                    files = new.tls;
                }
                Err(e) => tracing::error!(error = %e, "config reload failed; the previous [access] stays in effect"),
            }
        }
        let now = mtimes(&files);
        if !hangup && now == seen {
            continue;
        }
        seen = now;
        let loaded = TlsMaterial::load(&files).map_err(RunError::from).and_then(|tls| {
            if tls.identity().role != Role::Coordinator {
                return Err(RunError::Identity(format!("{} is not a coordinator certificate", files.cert.display())));
            }
            let cfg = grpc_server_config(&tls, enrollment_on, &authority)?;
            Ok((tls, cfg))
        });
        match loaded {
            Ok((tls, cfg)) => {
                if let Ok(info) = fleet_common::pki::cert_info(tls.leaf()) {
                    tracing::info!(serial = %info.serial, not_after = %fleet_common::rfc3339(info.not_after_s.saturating_mul(1000)), "the coordinator's certificate is (re)loaded; new connections use it");
                    authority.seen.note(tls.identity().uri(), "coordinator", &info);
                }
                server_tls.replace(cfg);
            }
            Err(e) => {
                tracing::error!(error = %e, "the coordinator's new certificate files do not load; the current certificate stays in use")
            }
        }
    }
}

/// How often the coordinator's certificate files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(5);

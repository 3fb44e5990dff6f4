//! The coordinator's configuration file (docs/design.md §8), read so that every problem is reported at
//! once with the file and the key, before any socket is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_common::config::{ConfigErrors, Section, read_toml};
use fleet_common::tls::TlsFiles;

/// The whole coordinator configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The file it was read from (read again on SIGHUP).
    pub source: PathBuf,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The gRPC (agents and fleetctl) listen address.
    pub grpc_listen: SocketAddr,
    /// The HTTP (/metrics, /health) listen address.
    pub http_listen: SocketAddr,
    /// Most HTTP connections open at once.
    pub http_max_connections: usize,
    /// TLS and credentials of the HTTP port.
    pub http_security: crate::http_auth::HttpSecurity,
    /// The coordinator's PKI files.
    pub tls: TlsFiles,
    /// An agent silent for this long is offline and its session is closed.
    pub offline_after: Duration,
    /// How long reports are kept in the history.
    pub retention: Duration,
    /// Most series the history holds; samples of further series are dropped (and counted).
    pub max_series: usize,
    /// Most agent sessions and operator connections open at once.
    pub max_connections: usize,
    /// The largest artifact accepted.
    pub artifact_max_bytes: u64,
    /// Alerting: rule files, evaluation, notifications.
    pub alerting: AlertingConfig,
    /// `[query]`: what one query may use.
    pub query: crate::query::QueryLimits,
    /// `[access]`: operators' roles.
    pub access: crate::access::Access,
    /// `[enrollment]`: signing agents' keys with join tokens; None when off.
    pub enrollment: Option<crate::enroll::EnrollmentConfig>,
    /// `[[remote_write]]`: receivers of every sample of the history.
    pub remote_write: Vec<crate::remote_write::RemoteWriteConfig>,
    /// `[telemetry]`: where traces go.
    pub telemetry: fleet_common::telemetry::TelemetryConfig,
    /// `[cluster]`: several coordinators on etcd (docs/design.md §13); none, alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[alerting]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertingConfig {
    /// Rule file globs.
    pub rule_files: Vec<String>,
    /// Default evaluation interval of rule groups.
    pub evaluation_interval: Duration,
    /// Alertmanager base URLs (`http://host:9093`).
    pub alertmanagers: Vec<String>,
    /// Webhook URLs receiving Alertmanager's webhook format.
    pub webhooks: Vec<String>,
    /// Labels added to every alert (and visible as $externalLabels).
    pub external_labels: std::collections::BTreeMap<String, String>,
    /// `[alerting.client]` TLS of https notifiers.
    pub client_tls: crate::outbound::ClientTls,
    /// `[alerting.client]` credentials sent to Alertmanagers (as Prometheus'
    /// `alertmanager_config` sends them; webhooks get none).
    pub alertmanager_auth: Option<crate::outbound::Auth>,
    /// fleet's CA (`[tls] ca`), trusted by https notifiers without a `ca_file`.
    pub fleet_ca: PathBuf,
}

impl AlertingConfig {
    /// What is valid but probably not what the operator meant: a `rule_files` pattern that
    /// matches no file (no rules load from it). `check-config` prints these and the coordinator
    /// logs them at start; neither refuses to run.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.rule_files {
            if expand_rule_files(std::slice::from_ref(g)).is_ok_and(|f| f.is_empty()) {
                out.push(format!(
                    "alerting.rule_files: \"{g}\" matches no file, so no rules are loaded from it (fleet's default rules are in deploy/rules; docs/install.md)"
                ));
            }
        }
        out
    }

    /// The http client notifications go out with: fleet's CA or `[alerting.client] ca_file`
    /// for https URLs, a client certificate when one is set.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        let https = self.alertmanagers.iter().chain(&self.webhooks).any(|u| u.starts_with("https://"));
        if https {
            return crate::outbound::client(&self.client_tls, &self.fleet_ca, timeout);
        }
        reqwest::Client::builder().timeout(timeout).build().map_err(|e| e.to_string())
    }

    /// `req` to an Alertmanager, with its credentials.
    pub fn to_alertmanager(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.alertmanager_auth {
            Some(a) => a.apply(req),
            None => req,
        }
    }

    /// Asks every Alertmanager whether it is up (`GET /-/healthy`, a few seconds each) and
    /// says which one cannot be reached: alerts would then only be retried and counted.
    pub async fn unreachable_notifiers(&self) -> Vec<String> {
        let client = match self.client(Duration::from_secs(3)) {
            Ok(c) => c,
            Err(e) => return vec![format!("alerting.client: {e}; no notification can be sent")],
        };
        let mut out = Vec::new();
        for (i, url) in self.alertmanagers.iter().enumerate() {
            let probe = format!("{}/-/healthy", url.trim_end_matches('/'));
            let why = match self.to_alertmanager(client.get(&probe)).send().await {
                Ok(r) if r.status().is_success() => continue,
                Ok(r) => format!("it answered {}", r.status()),
                Err(e) if e.is_timeout() => "it did not answer within 3s".to_string(),
                Err(e) if e.is_connect() => "nothing accepts connections there".to_string(),
                Err(e) => e.to_string(),
            };
            out.push(format!(
                "alerting.alertmanagers[{i}]: cannot reach the Alertmanager at {url} ({why}); alerts are retried and counted in fleet_coordinator_notifications_failed_total until it is up"
            ));
        }
        out
    }
}

/// The rule files the globs name, sorted; a glob that matches nothing is not an error.
pub fn expand_rule_files(globs: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for g in globs {
        let paths = glob::glob(g).map_err(|e| format!("invalid pattern \"{g}\": {e}"))?;
        for p in paths {
            out.push(p.map_err(|e| e.to_string())?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl CoordinatorConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let (mut root, errors) = read_toml(path)?;
        let data_dir = root.required_path("data_dir");
        let grpc_listen = listen(&mut root, "grpc", "0.0.0.0:7443");
        let (http_listen, http_max_connections, http_security) = http_section(&mut root);
        let tls = TlsFiles::read(&mut root);
        let (offline_after, max_connections) = match root.section("agents") {
            Some(mut s) => {
                let o = s.duration_in("offline_after", Duration::from_millis(500), Duration::from_secs(3600));
                let m = s.u64("max_connections");
                if let Some(m) = m
                    && m == 0
                {
                    s.error("max_connections", "must be at least 1");
                }
                s.finish();
                (o, m)
            }
            None => (None, None),
        };
        let artifact_max_bytes = match root.section("artifacts") {
            Some(mut s) => {
                let m = s.bytes("max_bytes");
                s.finish();
                m
            }
            None => None,
        };
        let alerting = match root.section("alerting") {
            Some(mut s) => {
                let rule_files = s.string_list("rule_files").unwrap_or_default();
                let evaluation_interval = s
                    .duration_in("evaluation_interval", Duration::from_millis(100), Duration::from_secs(3600))
                    .unwrap_or(Duration::from_secs(15));
                let alertmanagers = s.string_list("alertmanagers").unwrap_or_default();
                let webhooks = s.string_list("webhooks").unwrap_or_default();
                let external_labels = s.string_map("external_labels").unwrap_or_default();
                for k in external_labels.keys() {
                    let valid = k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !k.starts_with("__");
                    if !valid {
                        s.error(
                            &format!("external_labels.{k}"),
                            "is not a valid label name: use letters, digits and '_', not starting with a digit or \"__\"",
                        );
                    }
                }
                for (key, urls) in [("alertmanagers", &alertmanagers), ("webhooks", &webhooks)] {
                    for (i, u) in urls.iter().enumerate() {
                        let ok = u
                            .parse::<tonic::transport::Uri>()
                            .ok()
                            .is_some_and(|x| matches!(x.scheme_str(), Some("http" | "https")) && x.host().is_some());
                        if !ok {
                            s.error(&format!("{key}[{i}]"), format!("\"{u}\" is not an http:// or https:// URL"));
                        }
                    }
                }
                match expand_rule_files(&rule_files) {
                    Ok(files) => {
                        for f in files {
                            if let Err(e) = fleet_rules::rules::load_file(&f) {
                                s.error("rule_files", e.to_string());
                            }
                        }
                    }
                    Err(e) => s.error("rule_files", e),
                }
                let (client_tls, alertmanager_auth) = match s.section("client") {
                    Some(mut c) => {
                        let tls = crate::outbound::read_tls(&mut c);
                        let auth = crate::outbound::read_auth(&mut c);
                        c.finish();
                        (tls, auth)
                    }
                    None => Default::default(),
                };
                s.finish();
                AlertingConfig {
                    rule_files,
                    evaluation_interval,
                    alertmanagers,
                    webhooks,
                    external_labels,
                    client_tls,
                    alertmanager_auth,
                    fleet_ca: PathBuf::new(),
                }
            }
            None => AlertingConfig { evaluation_interval: Duration::from_secs(15), ..Default::default() },
        };
        let query = match root.section("query") {
            Some(mut s) => {
                let d = crate::query::QueryLimits::default();
                let timeout = s.duration_in("timeout", Duration::from_millis(100), Duration::from_secs(3600));
                let max_samples = s.u64("max_samples");
                if max_samples == Some(0) {
                    s.error("max_samples", "must be at least 1");
                }
                s.finish();
                crate::query::QueryLimits {
                    timeout: timeout.unwrap_or(d.timeout),
                    max_samples: max_samples.map(|m| m.max(1) as usize).unwrap_or(d.max_samples),
                }
            }
            None => crate::query::QueryLimits::default(),
        };
        let (retention, max_series) = match root.section("history") {
            Some(mut s) => {
                let r = s.duration_in("retention", Duration::from_secs(60), Duration::from_secs(90 * 86400));
                let m = s.u64("max_series");
                if m == Some(0) {
                    s.error("max_series", "must be at least 1");
                }
                s.finish();
                (r, m)
            }
            None => (None, None),
        };
        let access = crate::access::Access::read(&mut root);
        let enrollment = enrollment_section(&mut root);
        let remote_write = crate::remote_write::read_config(&mut root, retention.unwrap_or(Duration::from_secs(3600)));
        let telemetry = fleet_common::telemetry::read_section(&mut root);
        let cluster = crate::cluster::read_config(&mut root);
        root.finish();
        let fleet_ca = tls.as_ref().map(|t| t.ca.clone());
        let config = (|| {
            Some(CoordinatorConfig {
                source: path.to_path_buf(),
                data_dir: data_dir?,
                grpc_listen: grpc_listen?,
                http_listen: http_listen?,
                http_max_connections,
                http_security,
                tls: tls?,
                offline_after: offline_after.unwrap_or(Duration::from_secs(15)),
                retention: retention.unwrap_or(Duration::from_secs(3600)),
                max_series: max_series.map(|m| m.max(1) as usize).unwrap_or(crate::tsdb::DEFAULT_MAX_SERIES),
                max_connections: max_connections.map(|m| m.max(1) as usize).unwrap_or(20_000),
                artifact_max_bytes: artifact_max_bytes.unwrap_or(1 << 30),
                alerting: AlertingConfig { fleet_ca: fleet_ca?, ..alerting },
                query,
                access,
                enrollment,
                remote_write,
                telemetry,
                cluster,
            })
        })();
        errors.into_result(path, ()).map(|()| config.expect("required keys are present when there are no errors"))
    }
}

/// Reads `[http]`: `listen`, `max_connections` (default 1024) and who may use the port
/// ([`crate::http_auth::HttpSecurity`]).
fn http_section(root: &mut Section) -> (Option<SocketAddr>, usize, crate::http_auth::HttpSecurity) {
    const DEFAULT: &str = "127.0.0.1:9090";
    let open = || crate::http_auth::HttpSecurity {
        public_paths: crate::http_auth::DEFAULT_PUBLIC_PATHS.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let Some(mut s) = root.section("http") else { return (DEFAULT.parse().ok(), 1024, open()) };
    let addr = if s.has("listen") { s.socket_addr("listen") } else { DEFAULT.parse().ok() };
    let max = s.u64("max_connections");
    if max == Some(0) {
        s.error("max_connections", "must be at least 1");
    }
    let security = crate::http_auth::HttpSecurity::read(&mut s);
    s.finish();
    (addr, max.map(|m| m.clamp(1, 1 << 20) as usize).unwrap_or(1024), security)
}

/// Reads `[enrollment]`: `ca_key` (required), `ca_cert`, `cert_ttl` (default 30 days, from a
/// minute to a year). The key and certificate are checked to form a signing CA.
fn enrollment_section(root: &mut Section) -> Option<crate::enroll::EnrollmentConfig> {
    let mut s = root.section("enrollment")?;
    let ca_key = s.required_path("ca_key");
    let ca_cert = s.path("ca_cert");
    let cert_ttl = s
        .duration_in("cert_ttl", Duration::from_secs(60), Duration::from_secs(366 * 86400))
        .unwrap_or(Duration::from_secs(30 * 86400));
    for (k, p) in [("ca_key", &ca_key), ("ca_cert", &ca_cert)] {
        if let Some(p) = p
            && let Err(e) = std::fs::metadata(p)
        {
            s.error(k, format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)));
        }
    }
    s.finish();
    Some(crate::enroll::EnrollmentConfig { ca_key: ca_key?, ca_cert, cert_ttl })
}

/// Reads `[<table>] listen`, with `default` when the table or the key is absent.
fn listen(root: &mut Section, table: &'static str, default: &str) -> Option<SocketAddr> {
    let Some(mut s) = root.section(table) else { return default.parse().ok() };
    let addr = if s.has("listen") { s.socket_addr("listen") } else { default.parse().ok() };
    s.finish();
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[grpc]\nlisten = \"localhost\"\n[agents]\noffline_after = \"fifteen\"\n[tls]\nca = \"/nope/ca.pem\"\ncert = \"/nope/c.pem\"\nkey = \"/nope/k.pem\"\n[alerts]\nx = 1\n",
        )
        .unwrap();
        let err = CoordinatorConfig::load(&p).unwrap_err();
        let keys: Vec<_> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["data_dir", "grpc.listen", "tls.ca", "tls.cert", "tls.key", "agents.offline_after", "alerts"],
            "{err}"
        );
        assert!(err.to_string().contains("invalid address \"localhost\""));
    }

    #[test]
    fn missing_file_is_named() {
        let err = CoordinatorConfig::load(Path::new("/nonexistent/coordinator.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/coordinator.toml: cannot read the config file: no such file"),
            "{err}"
        );
    }
}

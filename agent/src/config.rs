//! The agent's configuration file (docs/design.md §8): parsed, then validated as a whole, so that
//! `check-config` and start-up report every problem at once with the file and the key.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_common::config::{ConfigErrors, Section, read_toml};
use fleet_common::identity::valid_name;
use fleet_common::tls::TlsFiles;

use crate::schedule::{Schedule, Zone};

/// The whole agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name; must match its certificate.
    pub name: String,
    /// `[telemetry]`: where traces go.
    pub telemetry: fleet_common::telemetry::TelemetryConfig,
    /// The coordinator's gRPC address, `https://host:port` (the first of `coordinators`).
    pub coordinator: String,
    /// Every coordinator the agent keeps a session to (`coordinators = [...]`, or just
    /// `coordinator`): each gets every report (docs/design.md §13).
    pub coordinators: Vec<String>,
    /// Where the agent keeps its store and service logs.
    pub data_dir: PathBuf,
    /// How often a report is taken.
    pub report_interval: Duration,
    /// Operator-chosen labels.
    pub labels: BTreeMap<String, String>,
    /// Where the agent's certificate comes from.
    pub tls: TlsSource,
    /// Bounds of the buffer of undelivered reports.
    pub outbox: OutboxLimits,
    /// Supervised services.
    pub services: Vec<ServiceConfig>,
    /// Scheduled jobs.
    pub jobs: Vec<JobConfig>,
    /// Whether `fleetctl exec` may run commands on this machine.
    pub allow_exec: bool,
}

/// Where the agent's identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// `[tls]`: files made by `fleetctl certs issue` (renewed by whoever made them).
    Files(TlsFiles),
    /// Enrollment: a key made here and a certificate from the coordinator, kept under
    /// `data_dir/identity` and renewed by the agent; `join` enrolls on the first start.
    Enrolled {
        /// `join_token` and `ca_pin`, when set.
        join: Option<Join>,
    },
}

/// `join_token` and `ca_pin` of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The join token.
    pub token: String,
    /// The CA pin, `sha256:<hex>`.
    pub ca_pin: String,
}

/// How much undelivered history the agent keeps while the coordinator is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Reports older than this are dropped (and counted).
    pub max_age: Duration,
    /// When the buffer exceeds this many bytes the oldest reports are dropped (and counted).
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { max_age: Duration::from_secs(24 * 3600), max_bytes: 64 << 20 }
    }
}

/// When a service is restarted after its process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart it.
    No,
    /// When it exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Whenever it ends.
    Always,
}

/// How a service's health is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP GET that must answer 2xx.
    Http(String),
    /// A TCP connect to `host:port`.
    Tcp(String),
    /// A command that must exit 0.
    Exec(Vec<String>),
}

/// A service's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What to probe.
    pub probe: Probe,
    /// Time between probes.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Failed probes in a row before the service counts as unhealthy.
    pub retries: u32,
    /// Failures during this time after a start do not count.
    pub start_period: Duration,
}

/// Where and how a service is deployed by fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    /// Holds `releases/`, `current` and `backups/`.
    pub root: PathBuf,
    /// Releases kept on disk.
    pub keep_releases: u32,
    /// Paths backed up before a switch and restored on rollback.
    pub backup_paths: Vec<PathBuf>,
    /// Most bytes one release may unpack to.
    pub max_size: u64,
    /// Most entries one release archive may hold.
    pub max_files: u64,
}

/// One `[[services]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Unique name on this agent.
    pub name: String,
    /// The program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// User to run as (only when the agent runs as root).
    pub user: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// A start that ends sooner than this is a failed start.
    pub start_secs: Duration,
    /// Failed starts in a row before the service is fatal.
    pub start_retries: u32,
    /// The signal sent to stop it, by name (`TERM`, `INT`, `QUIT`, `HUP`, `KILL`, `USR1`, `USR2`).
    pub stop_signal: String,
    /// Time between the stop signal and KILL.
    pub stop_timeout: Duration,
    /// Restart when the resident memory stays above this.
    pub memory_max: Option<u64>,
    /// Size at which a log file is rotated.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_backups: u32,
    /// Health check, if any.
    pub health: Option<HealthCheck>,
    /// Deploy settings, for services fleet deploys.
    pub deploy: Option<DeployConfig>,
}

/// What happens when a job comes due while an earlier run of it still runs (after
/// Kubernetes' CronJob `concurrencyPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// The new run is skipped (and the skip recorded).
    Forbid,
    /// The running one is killed and the new one started.
    Replace,
    /// Both run (at most [`crate::jobs::MAX_PARALLEL_RUNS`] at once).
    Allow,
}

impl Concurrency {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
            Concurrency::Allow => "allow",
        }
    }
}

/// One `[[jobs]]` table.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Unique name on this agent (services and jobs share one namespace).
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
    /// The program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub workdir: Option<PathBuf>,
    /// User to run as (only when the agent runs as root).
    pub user: Option<String>,
    /// How long one attempt may run before its process group is stopped.
    pub timeout: Duration,
    /// What to do when it comes due while it still runs.
    pub concurrency: Concurrency,
    /// Attempts after a failed one (not after a timeout-free kill).
    pub retries: u32,
    /// The wait before the first retry; doubled for each next one, at most [`MAX_RETRY_DELAY`].
    pub retry_delay: Duration,
    /// Whether a run missed while the agent was down is made up (once) when it starts.
    pub catch_up: bool,
    /// The signal sent to stop it (timeout, replace, agent stopping).
    pub stop_signal: String,
    /// Time between the stop signal and KILL.
    pub stop_timeout: Duration,
    /// Size at which its log file is rotated.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_backups: u32,
    /// Services that must be running (and healthy) before an attempt starts; it waits for
    /// them, within its timeout.
    pub after: Vec<String>,
}

/// The longest wait between two attempts of a job.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The most jobs one agent runs.
pub const MAX_JOBS: usize = 256;

const SIGNALS: [&str; 7] = ["TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"];

impl AgentConfig {
    /// Reads and validates `path`. `default_name` is used when the file has no `name` (the
    /// machine's host name).
    pub fn load(path: &Path, default_name: impl FnOnce() -> Option<String>) -> Result<Self, ConfigErrors> {
        let (mut root, errors) = read_toml(path)?;
        let name = root.nonempty_string("name").or_else(|| {
            let n = default_name();
            if n.is_none() {
                root.error("name", "is not set and the host name cannot be read; set name = \"...\"");
            }
            n
        });
        if let Some(n) = &name
            && !valid_name(n)
        {
            root.error(
                "name",
                format!("\"{n}\" is not a valid agent name: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
            );
        }
        let coordinators = if root.has("coordinators") {
            if root.has("coordinator") {
                root.error("coordinators", "give either coordinator (one) or coordinators (several), not both");
            }
            match root.string_list("coordinators") {
                Some(list) if list.is_empty() => {
                    root.error("coordinators", "lists no coordinator");
                    None
                }
                Some(list) if list.len() > MAX_COORDINATORS => {
                    root.error(
                        "coordinators",
                        format!("lists {} coordinators; at most {MAX_COORDINATORS}", list.len()),
                    );
                    None
                }
                Some(list) => {
                    for (i, c) in list.iter().enumerate() {
                        check_coordinator_url(&root, &format!("coordinators[{i}]"), c);
                        if list[..i].contains(c) {
                            root.error(&format!("coordinators[{i}]"), format!("\"{c}\" is listed twice"));
                        }
                    }
                    Some(list)
                }
                None => None,
            }
        } else {
            let c = root.required_string("coordinator");
            if let Some(c) = &c {
                check_coordinator_url(&root, "coordinator", c);
            }
            c.map(|c| vec![c])
        };
        let coordinator = coordinators.as_ref().map(|c| c[0].clone());
        let data_dir = root.required_path("data_dir");
        let report_interval = root
            .duration_in("report_interval", Duration::from_millis(100), Duration::from_secs(3600))
            .or(if root.has("report_interval") { None } else { Some(Duration::from_secs(5)) });
        let labels = root.string_map("labels").unwrap_or_default();
        for (k, v) in &labels {
            if !valid_label_name(k) {
                root.error(
                    &format!("labels.{k}"),
                    "label names use letters, digits and '_' and do not start with a digit or \"__\"",
                );
            }
            if v.len() > 256 {
                root.error(&format!("labels.{k}"), "label values are at most 256 bytes");
            }
            if fleet_common::has_control(v) {
                root.error(
                    &format!("labels.{k}"),
                    "label values may not hold control characters (escape sequences, tabs, newlines)",
                );
            }
        }
        if labels.len() > 32 {
            root.error("labels", "at most 32 labels");
        }
        let token = root.nonempty_string("join_token");
        let pin = root.nonempty_string("ca_pin");
        if let Some(p) = &pin
            && let Err(e) = fleet_common::pki::parse_pin(p)
        {
            root.error("ca_pin", e);
        }
        let tls = match (root.has("tls"), token, pin) {
            (true, None, None) => TlsFiles::read(&mut root).map(TlsSource::Files),
            (true, _, _) => {
                root.error(
                    "join_token",
                    "set either [tls] (certificates made by hand) or join_token and ca_pin (enrollment), not both",
                );
                None
            }
            (false, Some(token), Some(ca_pin)) => Some(TlsSource::Enrolled { join: Some(Join { token, ca_pin }) }),
            (false, Some(_), None) => {
                root.error("ca_pin", "is required with join_token: copy it from `fleetctl tokens create`");
                None
            }
            (false, None, Some(_)) => {
                root.error("join_token", "is required with ca_pin: make one with `fleetctl tokens create`");
                None
            }
            // Enrolled before (fleet-agent enroll), or an error at start: said by load_identity.
            (false, None, None) => Some(TlsSource::Enrolled { join: None }),
        };
        let outbox = match root.section("outbox") {
            Some(mut s) => {
                let d = OutboxLimits::default();
                let limits = OutboxLimits {
                    max_age: s
                        .duration_in("max_age", Duration::from_secs(60), Duration::from_secs(30 * 86400))
                        .unwrap_or(d.max_age),
                    max_bytes: s.bytes("max_bytes").unwrap_or(d.max_bytes),
                };
                if limits.max_bytes < 4 << 10 {
                    s.error("max_bytes", "must be at least 4KiB");
                }
                s.finish();
                limits
            }
            None => OutboxLimits::default(),
        };
        let mut services = Vec::new();
        let mut seen = HashSet::new();
        for s in root.sections("services") {
            if let Some(svc) = read_service(s, &mut seen) {
                services.push(svc);
            }
        }
        let mut jobs = Vec::new();
        let mut job_names = HashSet::new();
        let job_sections = root.sections("jobs");
        if job_sections.len() > MAX_JOBS {
            root.error("jobs", format!("{} jobs; one agent runs at most {MAX_JOBS}", job_sections.len()));
        }
        for s in job_sections {
            if let Some(job) = read_job(s, &seen, &mut job_names) {
                jobs.push(job);
            }
        }
        let allow_exec = root.bool("allow_exec").unwrap_or(false);
        let telemetry = fleet_common::telemetry::read_section(&mut root);
        root.finish();
        let config = match (name, coordinator, data_dir, report_interval, tls) {
            (Some(name), Some(coordinator), Some(data_dir), Some(report_interval), Some(tls)) => Some(AgentConfig {
                name,
                coordinator,
                coordinators: coordinators.unwrap_or_default(),
                data_dir,
                report_interval,
                labels,
                tls,
                outbox,
                services,
                jobs,
                allow_exec,
                telemetry,
            }),
            _ => None,
        };
        match errors.clone().into_result(path, ()) {
            Ok(()) => Ok(config.expect("every required key is present when there are no errors")),
            Err(e) => Err(e),
        }
    }
}

/// The most coordinators an agent keeps sessions to (a cluster has three or five).
pub const MAX_COORDINATORS: usize = 7;

fn check_coordinator_url(root: &Section, key: &str, url: &str) {
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
        root.error(key, format!("invalid URL \"{url}\"; write https://HOST:PORT"));
        return;
    };
    if uri.scheme_str() != Some("https") {
        root.error(key, format!("\"{url}\" must start with https:// (fleet speaks only mutual TLS)"));
    } else if uri.host().is_none() || uri.port_u16().is_none() {
        root.error(key, format!("\"{url}\" needs a host and a port, for example https://coordinator.example:7443"));
    }
}

fn valid_label_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with("__")
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn read_service(mut s: Section, seen: &mut HashSet<String>) -> Option<ServiceConfig> {
    let name = s.required_string("name");
    if let Some(n) = &name {
        if valid_name(n) && !seen.contains(n) {
            s.relabel(n);
        }
        if !valid_name(n) {
            s.error("name", format!("\"{n}\" is not a valid service name: use 1-63 letters, digits, '-', '_' or '.'"));
        } else if !seen.insert(n.clone()) {
            s.error("name", format!("duplicate service name \"{n}\"; service names must be unique"));
        }
    }
    let command = s.required_string("command");
    let args = s.string_list("args").unwrap_or_default();
    let env = s.string_map("env").unwrap_or_default();
    let workdir = s.path("workdir");
    let user = s.nonempty_string("user");
    let restart = match s.string("restart").as_deref() {
        None | Some("on-failure") => Some(RestartPolicy::OnFailure),
        Some("always") => Some(RestartPolicy::Always),
        Some("no") => Some(RestartPolicy::No),
        Some(other) => {
            s.error("restart", format!("unknown restart policy \"{other}\"; use \"no\", \"on-failure\" or \"always\""));
            None
        }
    };
    let start_secs =
        s.duration_in("start_secs", Duration::ZERO, Duration::from_secs(600)).unwrap_or(Duration::from_secs(1));
    let start_retries = s.u64("start_retries").map(|n| n.min(1000) as u32).unwrap_or(5);
    let stop_signal = read_stop_signal(&mut s);
    let stop_timeout =
        s.duration_in("stop_timeout", Duration::ZERO, Duration::from_secs(3600)).unwrap_or(Duration::from_secs(10));
    let memory_max = s.bytes("memory_max");
    let log_max_bytes = s.bytes("log_max_bytes").unwrap_or(10 << 20);
    if log_max_bytes < 4096 {
        s.error("log_max_bytes", "must be at least 4KiB");
    }
    let log_backups = s.u64("log_backups").map(|n| n.min(100) as u32).unwrap_or(5);
    let health = s.section("health").and_then(read_health);
    let deploy = s.section("deploy").and_then(read_deploy);
    let under_deploy_root = workdir.as_ref().is_some_and(|w| deploy.as_ref().is_some_and(|d| w.starts_with(&d.root)));
    check_workdir_and_user(&s, &workdir, under_deploy_root, &user);
    s.finish();
    Some(ServiceConfig {
        name: name?,
        command: command?,
        args,
        env,
        workdir,
        user,
        restart: restart?,
        start_secs,
        start_retries,
        stop_signal,
        stop_timeout,
        memory_max,
        log_max_bytes,
        log_backups,
        health,
        deploy,
    })
}

/// The stop signal of a service or job, checked.
fn read_stop_signal(s: &mut Section) -> String {
    let stop_signal = s.string("stop_signal").map(|v| v.trim_start_matches("SIG").to_ascii_uppercase());
    if let Some(sig) = &stop_signal
        && !SIGNALS.contains(&sig.as_str())
    {
        s.error("stop_signal", format!("unknown signal \"{sig}\"; use one of {}", SIGNALS.join(", ")));
    }
    stop_signal.unwrap_or_else(|| "TERM".to_string())
}

/// Says now what would only fail when the process starts: a working directory that is not
/// there (`may_appear`: one under a deploy root appears with the first release) and a user
/// this machine does not have.
fn check_workdir_and_user(s: &Section, workdir: &Option<PathBuf>, may_appear: bool, user: &Option<String>) {
    if let Some(w) = workdir
        && !w.is_dir()
        && !may_appear
    {
        let what = if w.exists() { "is not a directory" } else { "does not exist" };
        s.error("workdir", format!("{} {what}; create it or fix the path", w.display()));
    }
    if let Some(u) = user
        && let Err(e) = lookup_user(u)
    {
        s.error("user", format!("{e}; create the user (useradd --system {u}) or fix the name"));
    }
}

fn read_job(mut s: Section, services: &HashSet<String>, seen: &mut HashSet<String>) -> Option<JobConfig> {
    let name = s.required_string("name");
    if let Some(n) = &name {
        if valid_name(n) && !seen.contains(n) && !services.contains(n) {
            s.relabel(n);
        }
        if !valid_name(n) {
            s.error("name", format!("\"{n}\" is not a valid job name: use 1-63 letters, digits, '-', '_' or '.'"));
        } else if services.contains(n) {
            s.error(
                "name",
                format!("a service is named \"{n}\" too; services and jobs share one namespace on an agent (`fleetctl logs HOST NAME` reads either): rename one"),
            );
        } else if !seen.insert(n.clone()) {
            s.error("name", format!("duplicate job name \"{n}\"; job names must be unique"));
        }
    }
    let zone = match s.string("timezone").as_deref() {
        None | Some("local") => Some(Zone::Local),
        Some(z) if z.eq_ignore_ascii_case("utc") => Some(Zone::Utc),
        Some(other) => {
            s.error(
                "timezone",
                format!("unknown time zone \"{other}\"; use \"local\" (the host's, the default) or \"UTC\""),
            );
            None
        }
    };
    let schedule =
        s.required_string("schedule").and_then(|text| match Schedule::parse(&text, zone.unwrap_or(Zone::Local)) {
            Ok(sch) => Some(sch),
            Err(e) => {
                s.error("schedule", e);
                None
            }
        });
    let command = s.required_string("command");
    let args = s.string_list("args").unwrap_or_default();
    let env = s.string_map("env").unwrap_or_default();
    let workdir = s.path("workdir");
    let user = s.nonempty_string("user");
    let timeout = match s.duration("timeout") {
        None => Some(Duration::from_secs(3600)),
        Some(d) if d.is_zero() => {
            s.error(
                "timeout",
                "must be more than 0: a job that may run for ever blocks its next runs; write for example \"30m\"",
            );
            None
        }
        Some(d) if d > Duration::from_secs(7 * 86400) => {
            s.error("timeout", "is more than 7 days; a job runs for at most a week");
            None
        }
        Some(d) => Some(d),
    };
    let concurrency = match s.string("concurrency").as_deref() {
        None | Some("forbid") => Some(Concurrency::Forbid),
        Some("replace") => Some(Concurrency::Replace),
        Some("allow") => Some(Concurrency::Allow),
        Some(other) => {
            s.error(
                "concurrency",
                format!(
                    "unknown concurrency policy \"{other}\"; use \"forbid\" (the default), \"replace\" or \"allow\""
                ),
            );
            None
        }
    };
    let retries = match s.u64("retries") {
        Some(n) if n > 100 => {
            s.error("retries", "at most 100");
            None
        }
        n => Some(n.unwrap_or(0) as u32),
    };
    let retry_delay =
        s.duration_in("retry_delay", Duration::from_millis(100), MAX_RETRY_DELAY).unwrap_or(Duration::from_secs(10));
    let catch_up = s.bool("catch_up").unwrap_or(false);
    let stop_signal = read_stop_signal(&mut s);
    let stop_timeout =
        s.duration_in("stop_timeout", Duration::ZERO, Duration::from_secs(3600)).unwrap_or(Duration::from_secs(10));
    let log_max_bytes = s.bytes("log_max_bytes").unwrap_or(10 << 20);
    if log_max_bytes < 4096 {
        s.error("log_max_bytes", "must be at least 4KiB");
    }
    let log_backups = s.u64("log_backups").map(|n| n.min(100) as u32).unwrap_or(5);
    let after = s.string_list("after").unwrap_or_default();
    for (i, a) in after.iter().enumerate() {
        if !services.contains(a) {
            s.error(
                &format!("after[{i}]"),
                format!("no service named \"{a}\" in this config; after names services this agent supervises"),
            );
        }
    }
    check_workdir_and_user(&s, &workdir, false, &user);
    s.finish();
    Some(JobConfig {
        name: name?,
        schedule: schedule?,
        command: command?,
        args,
        env,
        workdir,
        user,
        timeout: timeout?,
        concurrency: concurrency?,
        retries: retries?,
        retry_delay,
        catch_up,
        stop_signal,
        stop_timeout,
        log_max_bytes,
        log_backups,
        after,
    })
}

fn read_health(mut h: Section) -> Option<HealthCheck> {
    let http = h.nonempty_string("http");
    let tcp = h.nonempty_string("tcp");
    let exec = h.string_list("exec");
    let mut probes = Vec::new();
    if let Some(url) = http {
        match url.parse::<tonic::transport::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => probes.push(Probe::Http(url)),
            Ok(u) if u.scheme_str() == Some("https") => h.error(
                "http",
                format!("\"{url}\": https health checks are not supported; probe the service's plain-HTTP health port"),
            ),
            _ => {
                h.error("http", format!("invalid health URL \"{url}\"; write for example http://127.0.0.1:3001/health"))
            }
        }
    }
    if let Some(addr) = tcp {
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => probes.push(Probe::Tcp(addr)),
            _ => h.error("tcp", format!("invalid address \"{addr}\"; write HOST:PORT, for example 127.0.0.1:3001")),
        }
    }
    if let Some(cmd) = exec {
        if cmd.is_empty() || cmd[0].is_empty() {
            h.error("exec", "must name a command, for example [\"/usr/bin/check\", \"--quick\"]");
        } else {
            probes.push(Probe::Exec(cmd));
        }
    }
    let interval = h
        .duration_in("interval", Duration::from_millis(100), Duration::from_secs(3600))
        .unwrap_or(Duration::from_secs(5));
    let timeout =
        h.duration_in("timeout", Duration::from_millis(10), Duration::from_secs(600)).unwrap_or(Duration::from_secs(2));
    let retries = h.u64("retries").map(|n| n.clamp(1, 100) as u32).unwrap_or(3);
    let start_period =
        h.duration_in("start_period", Duration::ZERO, Duration::from_secs(3600)).unwrap_or(Duration::ZERO);
    let ok_count = probes.len();
    if ok_count > 1 {
        h.error("", "set exactly one of http, tcp or exec");
    }
    let had_probe_key = ok_count > 0 || !h.errors().is_empty();
    if ok_count == 0 && !had_probe_key {
        h.error("", "set one of http, tcp or exec");
    }
    h.finish();
    if ok_count != 1 {
        return None;
    }
    Some(HealthCheck { probe: probes.remove(0), interval, timeout, retries, start_period })
}

fn read_deploy(mut d: Section) -> Option<DeployConfig> {
    let root = d.required_path("root");
    if let Some(r) = &root
        && !r.is_absolute()
    {
        d.error("root", format!("\"{}\" must be an absolute path", r.display()));
    }
    let keep_releases = d.u64("keep_releases").unwrap_or(5);
    if keep_releases < 2 {
        d.error("keep_releases", "must be at least 2 (the current and the previous release are always kept)");
    }
    let backup_paths: Vec<PathBuf> =
        d.string_list("backup_paths").unwrap_or_default().into_iter().map(PathBuf::from).collect();
    for (i, p) in backup_paths.iter().enumerate() {
        if !p.is_absolute() {
            d.error(&format!("backup_paths[{i}]"), format!("\"{}\" must be an absolute path", p.display()));
        }
    }
    let max_size = d.bytes("max_size").unwrap_or(2 << 30);
    let max_files = d.u64("max_files").unwrap_or(100_000);
    d.finish();
    Some(DeployConfig { root: root?, keep_releases: keep_releases.min(1000) as u32, backup_paths, max_size, max_files })
}

/// The uid and gid of a local user, from /etc/passwd.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            let uid = f[2].parse().map_err(|_| format!("bad uid for user {name} in /etc/passwd"))?;
            let gid = f[3].parse().map_err(|_| format!("bad gid for user {name} in /etc/passwd"))?;
            return Ok((uid, gid));
        }
    }
    Err(format!("no user named \"{name}\" in /etc/passwd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        for f in ["ca.pem", "a.pem", "a-key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        p
    }

    fn base(dir: &Path) -> String {
        format!(
            "coordinator = \"https://127.0.0.1:7443\"\ndata_dir = \"{d}/data\"\n[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/a.pem\"\nkey = \"{d}/a-key.pem\"\n",
            d = dir.display()
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &format!("name = \"main-pc\"\n{}", base(dir.path())));
        let c = AgentConfig::load(&p, || None).unwrap();
        assert_eq!(c.name, "main-pc");
        assert_eq!(c.report_interval, Duration::from_secs(5));
        assert_eq!(c.outbox, OutboxLimits::default());
        assert!(c.services.is_empty());
    }

    #[test]
    fn name_defaults_to_host_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &base(dir.path()));
        let c = AgentConfig::load(&p, || Some("box1".into())).unwrap();
        assert_eq!(c.name, "box1");
    }

    #[test]
    fn bad_services_are_named_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "name = \"a\"\n{}\n[[services]]\nname = \"api\"\n\n[[services]]\nname = \"api\"\ncommand = \"x\"\nrestart = \"sometimes\"\n[services.health]\nhttp = \"not a url\"\n",
            base(dir.path())
        );
        let p = write(dir.path(), &text);
        let err = AgentConfig::load(&p, || None).unwrap_err();
        let got: Vec<_> = err.errors.iter().map(|e| e.key.clone()).collect();
        assert_eq!(
            got,
            ["services[api].command", "services[1].name", "services[1].restart", "services[1].health.http"],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("duplicate service name \"api\""), "{text}");
        assert!(text.contains("unknown restart policy \"sometimes\""), "{text}");
    }

    #[test]
    fn bad_jobs_are_named_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let job = |body: &str| format!("\n[[jobs]]\ncommand = \"/bin/true\"\n{body}\n");
        let text = format!(
            "name = \"a\"\n{}\n[[services]]\nname = \"api\"\ncommand = \"x\"\n{}{}{}{}{}{}",
            base(dir.path()),
            job("name = \"backup\"\nschedule = \"61 * * * *\""),
            job("name = \"redis\"\nschedule = \"@hourly\"\nconcurrency = \"sometimes\""),
            job("name = \"full\"\nschedule = \"0 2 * * *\"\ntimeout = \"0s\""),
            job("name = \"full\"\nschedule = \"@daily\""),
            job("name = \"api\"\nschedule = \"@daily\""),
            job("name = \"tz\"\nschedule = \"@daily\"\ntimezone = \"Mars/Olympus\""),
        );
        let p = write(dir.path(), &text);
        let err = AgentConfig::load(&p, || None).unwrap_err();
        let got: Vec<_> = err.errors.iter().map(|e| e.key.clone()).collect();
        assert_eq!(
            got,
            [
                "jobs[backup].schedule",
                "jobs[redis].concurrency",
                "jobs[full].timeout",
                "jobs[3].name",
                "jobs[4].name",
                "jobs[tz].timezone"
            ],
            "{err}"
        );
        let text = err.to_string();
        for says in [
            "invalid schedule \"61 * * * *\"",
            "unknown concurrency policy \"sometimes\"",
            "must be more than 0",
            "duplicate job name \"full\"",
            "a service is named \"api\" too",
            "unknown time zone",
        ] {
            assert!(text.contains(says), "{says}: {text}");
        }
        let good = format!(
            "name = \"a\"\nallow_exec = true\n{}{}",
            base(dir.path()),
            job("name = \"backup\"\nschedule = \"0 */6 * * *\"\ntimezone = \"UTC\"\nretries = 2\ncatch_up = true")
        );
        let c = AgentConfig::load(&write(dir.path(), &good), || None).unwrap();
        assert!(c.allow_exec);
        let j = &c.jobs[0];
        assert_eq!(
            (j.retries, j.catch_up, j.timeout, j.concurrency),
            (2, true, Duration::from_secs(3600), Concurrency::Forbid)
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name = \"a\"\ncoordinator = \"http://x\"\nreport_interval = \"often\"\ncolour = \"blue\"\n[tls]\nca = \"/nonexistent/ca.pem\"\n";
        let p = write(dir.path(), text);
        let err = AgentConfig::load(&p, || None).unwrap_err();
        let got: Vec<_> = err.errors.iter().map(|e| e.key.clone()).collect();
        assert_eq!(
            got,
            ["coordinator", "data_dir", "report_interval", "tls.cert", "tls.key", "tls.ca", "colour"],
            "{err}"
        );
    }

    #[test]
    fn several_coordinators_are_listed_once_each_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let base = "name = \"a\"\ndata_dir = \"/tmp/a\"\n[tls]\nca = \"/nonexistent/ca.pem\"\n";
        let load = |head: &str| {
            let p = write(dir.path(), &format!("{head}\n{base}"));
            match AgentConfig::load(&p, || None) {
                Ok(c) => Ok(c.coordinators),
                Err(e) => Err(e.errors.iter().map(|e| format!("{}: {}", e.key, e.message)).collect::<Vec<_>>()),
            }
        };
        let errs = load("coordinators = [\"https://a:7443\", \"http://b:7443\", \"https://a:7443\"]").unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with("coordinators[1]: ") && e.contains("https://")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("coordinators[2]: ") && e.contains("listed twice")), "{errs:?}");
        let errs = load("coordinator = \"https://a:7443\"\ncoordinators = [\"https://b:7443\"]").unwrap_err();
        assert!(errs.iter().any(|e| e.contains("not both")), "{errs:?}");
        let errs = load("coordinators = []").unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with("coordinators: lists no coordinator")), "{errs:?}");
    }
}

//! fleetctl, the operator CLI (docs/design.md §7). Exit codes: 0 success; 1 the operation failed;
//! 2 usage or config error; 3 cannot connect or authenticate. Every error says what to do next.
//!
//! Code map: [`certs`] makes the PKI; [`client`] connects to the coordinator and maps gRPC
//! failures to exit codes; [`views`] renders hosts and status as tables or JSON;
//! [`services`] acts on services and reads logs and the audit log; [`dev`] runs a local
//! cluster, and [`demo`] is the small HTTP service it supervises; [`output`] writes standard
//! output and ends fleetctl quietly when its reader goes away.

#![deny(unsafe_code)]

/// `println!` to standard output through [`output::print`].
macro_rules! outln {
    () => {
        $crate::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to standard output through [`output::print`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

pub mod certs;
pub mod client;
pub mod demo;
pub mod dev;
pub mod exec;
pub mod identity;
pub mod jobs;
pub mod output;
pub mod rollout;
pub mod services;
pub mod views;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fleet_common::identity::{DEFAULT_TRUST_DOMAIN, Role};
use fleet_proto::v1::ServiceAction;

use crate::client::Target;

/// A failure with the exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// 1 operation failed, 2 usage or config, 3 connection or authentication.
    pub code: u8,
    /// What went wrong and what to do.
    pub message: String,
}

impl CliError {
    /// The operation failed (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
    /// Usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { code: 2, message: message.into() }
    }
    /// Cannot connect or authenticate (exit 3).
    pub fn connect(message: impl Into<String>) -> Self {
        CliError { code: 3, message: message.into() }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// fleetctl operates a fleet: hosts, services, deploys, alerts.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version)]
pub struct Cli {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the coordinator is and who you are: taken by every command that talks to the
/// coordinator, and only by those (`certs`, `dev` and `rules test` work offline).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct Conn {
    /// The coordinator's gRPC address.
    #[arg(long, env = "FLEET_ADDR", default_value = "https://127.0.0.1:7443")]
    pub addr: String,
    /// The fleet CA certificate.
    #[arg(long, env = "FLEET_CA")]
    pub ca: Option<PathBuf>,
    /// Your operator certificate.
    #[arg(long, env = "FLEET_CERT")]
    pub cert: Option<PathBuf>,
    /// Your operator private key.
    #[arg(long, env = "FLEET_KEY")]
    pub key: Option<PathBuf>,
}

/// The roles a certificate can be issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CertRole {
    /// The coordinator (server and client).
    Coordinator,
    /// An agent.
    Agent,
    /// An operator (a person or a tool using fleetctl).
    Operator,
}

impl From<CertRole> for Role {
    fn from(r: CertRole) -> Role {
        match r {
            CertRole::Coordinator => Role::Coordinator,
            CertRole::Agent => Role::Agent,
            CertRole::Operator => Role::Operator,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the fleet's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run a coordinator and agents main-pc and pc2 on this machine, until Ctrl-C.
    Dev(dev::DevArgs),
    /// Cluster summary.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// One row per host; `hosts remove NAME` revokes a host and forgets it.
    Hosts {
        /// What to do (default: list).
        #[command(subcommand)]
        cmd: Option<HostsCommand>,
        /// Only the hosts this label selector picks: `role=gpu,env!=test`, `zone in (a,b)`,
        /// `role`, `!role`; `host` is a label (docs/install.md, "Selectors"). None: exit 1.
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Join tokens: how new machines enroll.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Who the coordinator takes you for, and your role.
    Whoami {
        #[command(flatten)]
        conn: Conn,
    },
    /// One host in detail.
    Host {
        /// The host (agent) name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Services of every host, or of one.
    Services {
        /// Only this host.
        #[arg(long, conflicts_with = "selector")]
        host: Option<String>,
        /// Only the hosts this label selector picks (as for `hosts`).
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Scheduled jobs of every host (or one): schedule, last run and result, next run.
    Jobs {
        /// Only this host.
        #[arg(long, conflicts_with = "selector")]
        host: Option<String>,
        /// Only the hosts this label selector picks (as for `hosts`).
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a job now, or show its history.
    #[command(subcommand)]
    Job(JobCommand),
    /// Run a one-off command on a host, or on the hosts a selector picks, and exit with its
    /// status (the worst across hosts); needs the admin role and allow_exec = true on the
    /// agent. Ctrl-C stops the remote command.
    Exec {
        /// Run on the hosts this label selector picks instead of on HOST (drained hosts are
        /// skipped); each output line is prefixed with its host.
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        /// Stop the command (its whole process group) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// On how many hosts at once (default: all).
        #[arg(long, default_value_t = 0)]
        max_parallel: u32,
        /// HOST -- CMD [ARGS...], or with --selector: -- CMD [ARGS...].
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_names = ["HOST", "CMD"])]
        words: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restart a service; returns once it runs again (and is healthy, where it has a check).
    Restart {
        /// Restart SERVICE on every host that has it, one host at a time (drained hosts are
        /// skipped).
        #[arg(long)]
        all: bool,
        /// With --all: only the hosts this label selector picks.
        #[arg(long, short = 'l', value_name = "SELECTOR", requires = "all")]
        selector: Option<String>,
        /// HOST SERVICE, or SERVICE with --all.
        #[arg(required = true, num_args = 1..=2, value_names = ["HOST", "SERVICE"])]
        targets: Vec<String>,
        /// How long to wait for the outcome.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a service (also one that is fatal); returns once it runs (and is healthy).
    Start(ServiceArgs),
    /// Stop a service; it stays stopped until started.
    Stop(ServiceArgs),
    /// Show a service's (or a job's) captured output.
    Logs {
        /// Every service of every online host, prefixed with host/service.
        #[arg(long)]
        all: bool,
        /// HOST [SERVICE|JOB] (without SERVICE: every service of HOST).
        #[arg(num_args = 0..=2, value_names = ["HOST", "SERVICE"])]
        targets: Vec<String>,
        /// How many recent lines to show first (per service).
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: u32,
        /// Keep showing new lines as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// The audit log: who did what, when, and how it ended.
    Audit {
        /// How many of the newest entries.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deploy releases across hosts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Switch one host's service back to an earlier release (with probation).
    Rollback {
        /// The host.
        host: String,
        /// The service.
        service: String,
        /// The version to go back to (default: the previous release).
        #[arg(long = "to")]
        to: Option<String>,
        /// The release must stay healthy this long.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        min_healthy_time: Duration,
        /// The release must be healthy within this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        healthy_deadline: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// A host's releases of a service: version, digest, when, current/previous/bad.
    Releases {
        /// The host.
        host: String,
        /// The service.
        service: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Alert and recording rules: without a subcommand, every group and rule with its state.
    Rules {
        /// What to do (default: list).
        #[command(subcommand)]
        cmd: Option<RulesCommand>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Pending and firing alerts.
    Alerts {
        #[command(flatten)]
        conn: Conn,
    },
    /// Evaluate a PromQL expression over the coordinator's history.
    Query {
        /// The expression, for example 'avg by (host) (fleet_host_cpu_usage_ratio)'.
        expr: String,
        /// Evaluation time: RFC 3339 or Unix seconds (default: now).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read a password on stdin and print its bcrypt hash, for `[http.basic_auth_users]`.
    HashPassword {
        /// bcrypt cost (each step doubles the work).
        #[arg(long, default_value_t = 10)]
        cost: u32,
    },
    /// A small HTTP service for trying fleet (used by `fleetctl dev`).
    #[command(hide = true)]
    DemoServer(demo::DemoArgs),
}

/// `job` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run HOST's job JOB now, by its concurrency policy (a "forbid" job that is running
    /// refuses); with --wait, exits with the run's exit status.
    Run {
        /// Run it on every host this label selector picks that has the job (drained hosts
        /// are skipped), one host at a time; then give only JOB.
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        /// HOST JOB, or JOB with --selector.
        #[arg(required = true, num_args = 1..=2, value_names = ["HOST", "JOB"])]
        targets: Vec<String>,
        /// Wait for the run (with its retries) to end.
        #[arg(long)]
        wait: bool,
        /// How long to wait for the run to start (or, with --wait, to end).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// A job's newest runs on a host: every attempt, with its result.
    History {
        /// The host.
        host: String,
        /// The job.
        job: String,
        /// How many of the newest attempts.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `hosts` subcommands.
#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Revoke a host's identity and forget it (its history ages out); needs the admin role.
    Remove {
        /// The host (agent) name.
        name: String,
        /// Why, for the audit log and the deny list.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a host in maintenance: rollouts and --selector actions skip it (and say so), and
    /// its alerts carry maintenance="true" for Alertmanager to inhibit.
    Drain {
        /// The host (agent) name.
        name: String,
        /// Why, shown by `fleetctl hosts` and in the audit log.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// End a host's maintenance.
    Undrain {
        /// The host (agent) name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `tokens` subcommands (the admin role).
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a join token and print the command that enrolls a machine with it.
    Create {
        /// Only a machine enrolling under this name may use it.
        #[arg(long)]
        name: Option<String>,
        /// Labels the enrolled hosts get, whatever their config says: k=v,k2=v2.
        #[arg(long, value_parser = identity::parse_labels, default_value = "")]
        labels: std::collections::HashMap<String, String>,
        /// How long it can be used.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        ttl: Duration,
        /// How many machines may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every join token with its state and uses.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a join token unusable.
    Revoke {
        /// The token's id (or the whole token).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `rules` subcommands.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Read the rule files again on the coordinator (like SIGHUP); on an error the previous
    /// rules stay active.
    Reload {
        #[command(flatten)]
        conn: Conn,
    },
    /// Run rule unit tests in promtool's format (`promtool test rules`); exit 1 if any fails.
    Test {
        /// Test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check rule files as the coordinator loads them (`promtool check rules`): syntax, and
    /// that fleet can evaluate every expression and template; exit 1 if any file is refused.
    Check {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also evaluate every rule, as the coordinator would, over a made-up history holding a
        /// series for each selector; exit 1 if any evaluation fails.
        #[arg(long)]
        eval: bool,
        /// Write a promtool-format test of the rule file's alerts over that made-up history,
        /// expecting what fleet fires (labels and rendered annotations): promtool passing it
        /// shows Prometheus agrees. Takes one rule file.
        #[arg(long, value_name = "TEST_FILE")]
        emit_test: Option<PathBuf>,
    },
    /// Run PromQL test files in Prometheus' promqltest format (load, eval instant, eval range,
    /// eval_fail, ...) through fleet's engine; exit 1 if any case fails. Native histogram cases
    /// are skipped and listed.
    Promqltest {
        /// Test files, or directories of *.test files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also list the skipped cases.
        #[arg(long)]
        list_skipped: bool,
    },
}

/// `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Upload a release and deploy it across hosts; prints the rollout id.
    Start(rollout::StartArgs),
    /// Where a rollout stands.
    Status {
        /// The rollout id.
        id: String,
        /// Follow it until it ends (exit 1 if it does not succeed) or waits for you to promote
        /// or resume it (exit 0, saying what to run).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every rollout, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop starting new hosts.
    Pause {
        /// The rollout id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Continue a paused rollout, or promote one waiting after its canaries.
    Resume {
        /// The rollout id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop the rollout; hosts it moved go back unless it was started with --no-auto-revert.
    Abort {
        /// The rollout id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// HOST SERVICE and how long to wait.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The host.
    pub host: String,
    /// The service.
    pub service: String,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The coordinator.
    #[command(flatten)]
    pub conn: Conn,
}

/// `fleetctl rules`.
async fn rules_list(target: &client::Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let groups = c
        .list_rules(fleet_proto::v1::ListRulesRequest {})
        .await
        .map_err(|e| client::status_error(&target.addr, e))?
        .into_inner()
        .groups;
    if output == Output::Json {
        let v: Vec<serde_json::Value> = groups
            .iter()
            .map(|g| serde_json::json!({
                "name": g.name, "file": g.file, "interval_seconds": g.interval_ms as f64 / 1000.0,
                "last_evaluation": if g.last_evaluation_ms > 0 { serde_json::json!(fleet_common::rfc3339(g.last_evaluation_ms)) } else { serde_json::Value::Null },
                "rules": g.rules.iter().map(|r| serde_json::json!({
                    "type": r.r#type, "name": r.name, "expr": r.expr, "state": r.state, "health": r.health,
                    "last_error": r.last_error, "pending": r.pending, "firing": r.firing,
                })).collect::<Vec<_>>(),
            }))
            .collect();
        crate::views::print_json(&v);
        return Ok(());
    }
    if groups.is_empty() {
        outln!("no rules loaded (set [alerting] rule_files in the coordinator's config)");
        return Ok(());
    }
    let mut rows = Vec::new();
    for g in &groups {
        let last = if g.last_evaluation_ms > 0 { fleet_common::rfc3339(g.last_evaluation_ms) } else { "never".into() };
        for r in &g.rules {
            let state = if r.r#type == "alerting" {
                format!("{} ({} firing, {} pending)", r.state, r.firing, r.pending)
            } else {
                "-".into()
            };
            let health =
                if r.last_error.is_empty() { r.health.clone() } else { format!("{}: {}", r.health, r.last_error) };
            rows.push(vec![g.name.clone(), r.r#type.clone(), r.name.clone(), state, health, last.clone()]);
        }
    }
    out!("{}", views::table(&["GROUP", "TYPE", "NAME", "STATE", "HEALTH", "LAST EVALUATION"], &rows));
    Ok(())
}

/// `fleetctl rules reload`.
async fn rules_reload(target: &client::Target) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let r = c.reload_rules(fleet_proto::v1::ReloadRulesRequest {}).await.map_err(|e| match e.code() {
        tonic::Code::InvalidArgument => CliError::failed(e.message().to_string()),
        _ => client::status_error(&target.addr, e),
    })?;
    let r = r.into_inner();
    outln!("reloaded: {} groups, {} rules", r.groups, r.rules);
    Ok(())
}

/// `fleetctl alerts`.
async fn alerts(target: &client::Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let alerts = c
        .list_alerts(fleet_proto::v1::ListAlertsRequest {})
        .await
        .map_err(|e| client::status_error(&target.addr, e))?
        .into_inner()
        .alerts;
    if output == Output::Json {
        let v: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "labels": a.labels, "annotations": a.annotations, "state": a.state,
                    "active_at": fleet_common::rfc3339(a.active_at_ms), "value": a.value,
                })
            })
            .collect();
        crate::views::print_json(&v);
        return Ok(());
    }
    if alerts.is_empty() {
        outln!("no alerts pending or firing");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let name = a.labels.get("alertname").cloned().unwrap_or_default();
            let mut rest: Vec<String> =
                a.labels.iter().filter(|(k, _)| k.as_str() != "alertname").map(|(k, v)| format!("{k}={v}")).collect();
            rest.sort();
            vec![name, a.state.clone(), rest.join(","), format!("{}", a.value), fleet_common::rfc3339(a.active_at_ms)]
        })
        .collect();
    out!("{}", views::table(&["ALERT", "STATE", "LABELS", "VALUE", "SINCE"], &rows));
    Ok(())
}

/// `fleetctl query EXPR [--at TIME]`.
async fn query(target: &client::Target, expr: &str, at: Option<&str>, output: Output) -> Result<(), CliError> {
    let time_ms = match at {
        Some(s) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f.abs() < 1e13 => (f * 1000.0).round() as i64,
            Ok(_) => {
                return Err(CliError::usage(format!(
                    "--at {s}: write RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds"
                )));
            }
            Err(_) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    CliError::usage(format!("--at {s}: write RFC 3339 (2026-01-02T15:04:05Z) or Unix seconds"))
                })?,
        },
        None => 0,
    };
    let mut c = target.control().await?;
    let r = c
        .query(fleet_proto::v1::QueryRequest { expr: expr.to_string(), time_ms, ..Default::default() })
        .await
        .map_err(|e| client::status_error(&target.addr, e))?
        .into_inner();
    let name = |l: &std::collections::HashMap<String, String>| {
        let sorted: std::collections::BTreeMap<_, _> = l.iter().collect();
        let metric = sorted.get(&"__name__".to_string()).map(|s| s.as_str()).unwrap_or("");
        let rest: Vec<String> =
            sorted.iter().filter(|(k, _)| k.as_str() != "__name__").map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{metric}{{{}}}", rest.join(", "))
    };
    if output == Output::Json {
        let v = match r.result_type.as_str() {
            "scalar" => serde_json::json!({ "resultType": "scalar", "result": [r.time_ms as f64 / 1000.0, r.scalar] }),
            "string" => serde_json::json!({ "resultType": "string", "result": [r.time_ms as f64 / 1000.0, r.string] }),
            t => serde_json::json!({
                "resultType": t,
                "result": r.series.iter().map(|s| serde_json::json!({
                    "metric": s.labels,
                    "values": s.points.iter().map(|p| serde_json::json!([p.time_ms as f64 / 1000.0, p.value])).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        };
        crate::views::print_json(&v);
        return Ok(());
    }
    match r.result_type.as_str() {
        "scalar" => outln!("{}", r.scalar),
        "string" => outln!("{}", fleet_common::printable(&r.string, &['\n', '\t'])),
        _ => {
            if r.series.is_empty() {
                outln!("no data");
            }
            let mut rows: Vec<Vec<String>> = Vec::new();
            for s in &r.series {
                for p in &s.points {
                    rows.push(vec![name(&s.labels), format!("{}", p.value), fleet_common::rfc3339(p.time_ms)]);
                }
            }
            rows.sort();
            if !rows.is_empty() {
                out!("{}", views::table(&["SERIES", "VALUE", "TIME"], &rows));
            }
        }
    }
    Ok(())
}

/// `fleetctl rules test FILE...`: prints like promtool and fails if any test fails.
fn rules_test(files: &[PathBuf]) -> Result<(), CliError> {
    let mut failed = 0;
    for f in files {
        outln!("Unit Testing:  {}", f.display());
        match fleet_rules::unittest::run_file(f) {
            Ok(o) if o.failures.is_empty() => outln!("  SUCCESS\n"),
            Ok(o) => {
                failed += 1;
                outln!("  FAILED:");
                for fail in &o.failures {
                    outln!("    {}", fail.replace('\n', "\n    "));
                }
                outln!();
            }
            Err(e) => {
                failed += 1;
                outln!("  FAILED:\n    {e}\n");
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} of {} rule test files failed", files.len())));
    }
    Ok(())
}

/// `fleetctl rules promqltest PATH...`: every failing case with its file, line and why; the
/// counts; exit 1 when any case failed.
fn promqltest(paths: &[PathBuf], list_skipped: bool) -> Result<(), CliError> {
    let s = fleet_rules::promqltest::run_paths(paths).map_err(CliError::usage)?;
    for c in &s.failed {
        outln!("FAIL {}:{}: {}\n     {}", c.file, c.line, c.expr, c.reason.replace('\n', "\n     "));
    }
    if list_skipped {
        for c in &s.skipped {
            outln!("SKIP {}:{}: {} ({})", c.file, c.line, c.expr, c.reason);
        }
    }
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &s.skipped {
        *reasons.entry(c.reason.as_str()).or_default() += 1;
    }
    let skipped: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    outln!(
        "{} passed, {} failed, {} skipped{}{}",
        s.passed,
        s.failed.len(),
        s.skipped.len(),
        if skipped.is_empty() { String::new() } else { format!(" ({})", skipped.join(", ")) },
        if s.annotations_unchecked > 0 {
            format!(
                "; {} passed cases also expect a warning or info, which fleet does not produce",
                s.annotations_unchecked
            )
        } else {
            String::new()
        }
    );
    if s.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::failed(format!("{} PromQL test cases failed", s.failed.len())))
    }
}

/// `fleetctl rules check FILE...`: prints like promtool and fails if any file is refused.
fn rules_check(files: &[PathBuf], eval: bool) -> Result<(), CliError> {
    let mut failed = 0;
    for f in files {
        outln!("Checking {}", f.display());
        match fleet_rules::rules::load_file(f) {
            Ok(mut groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                if !eval {
                    outln!("  SUCCESS: {n} rules found\n");
                    continue;
                }
                let e = fleet_rules::unittest::evaluate_groups(&mut groups);
                if e.errors.is_empty() {
                    outln!("  SUCCESS: {n} rules found, all evaluated ({} returned series)\n", e.returned);
                } else {
                    failed += 1;
                    outln!("  FAILED: {} of {n} rules failed to evaluate:", e.errors.len());
                    for err in &e.errors {
                        outln!("    {err}");
                    }
                    outln!();
                }
            }
            Err(e) => {
                failed += 1;
                outln!("  FAILED:\n{e}\n");
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} of {} rule files were refused", files.len())));
    }
    Ok(())
}

/// `fleetctl rules check --emit-test OUT FILE`: the differential test of FILE's alerts.
fn rules_emit_test(files: &[PathBuf], out: &Path, eval: bool) -> Result<(), CliError> {
    let [file] = files else { return Err(CliError::usage("--emit-test takes exactly one rule file")) };
    if eval {
        rules_check(files, true)?;
    }
    let text = fleet_rules::unittest::differential_test(file).map_err(CliError::failed)?;
    std::fs::write(out, text).map_err(|e| CliError::failed(format!("cannot write {}: {e}", out.display())))?;
    outln!(
        "wrote {}: promtool test rules {} checks that Prometheus fires the same alerts",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `fleetctl hash-password`: the first line of stdin, bcrypt-hashed.
fn hash_password(cost: u32) -> Result<(), CliError> {
    if !(4..=16).contains(&cost) {
        return Err(CliError::usage("--cost must be between 4 and 16"));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| CliError::failed(format!("cannot read stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(CliError::usage("no password on stdin: echo -n PASSWORD | fleetctl hash-password"));
    }
    let hash = bcrypt::hash(password, cost).map_err(|e| CliError::failed(e.to_string()))?;
    outln!("{hash}");
    Ok(())
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write for example 30s or 2m"))
}

/// `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca-key.pem.
    Init {
        /// Where to write the files.
        #[arg(long)]
        dir: PathBuf,
        /// The trust domain of every identity this CA signs.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue {
        /// What the certificate is for.
        #[arg(value_enum)]
        role: CertRole,
        /// The agent or operator name (for a coordinator, the file name).
        name: String,
        /// Where the CA is and where to write the files.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address the coordinator is reached at (repeatable); default
        /// localhost, 127.0.0.1 and ::1.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make an intermediate CA under the root in DIR, for the coordinator to sign enrolled
    /// agents with, so that the root's key can be kept offline.
    Intermediate {
        /// Where the root CA is.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write intermediate.pem and intermediate-key.pem.
        #[arg(long)]
        out: PathBuf,
        /// A name for it (shown in its subject).
        #[arg(long, default_value = "issuing")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 1825)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate: every one of an identity (agent/NAME, operator/NAME or its
    /// spiffe:// URI) issued until now, or one by serial. Its connections are cut; needs the
    /// admin role.
    Revoke {
        /// agent/NAME, operator/NAME or spiffe://<trust-domain>/<role>/<name>.
        identity: Option<String>,
        /// A certificate serial (hex) instead of an identity.
        #[arg(long)]
        serial: Option<String>,
        /// Why, for the audit log and the deny list.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// The deny list.
    Revoked {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Certs(CertsCommand::Init { dir, trust_domain, days, force }) => {
            let (cert, key) = certs::init(dir, trust_domain, *days, *force)?;
            outln!("wrote {} and {} (trust domain {trust_domain})", cert.display(), key.display());
            outln!("keep {} secret: it can mint any fleet identity", key.display());
            Ok(())
        }
        Command::Certs(CertsCommand::Issue { role, name, dir, sans, days, force }) => {
            let issued = certs::issue(dir, (*role).into(), name, sans, *days, *force)?;
            outln!("wrote {} and {} for {}", issued.cert.display(), issued.key.display(), issued.identity);
            Ok(())
        }
        Command::Certs(CertsCommand::Intermediate { dir, out, name, days, force }) => {
            identity::intermediate(dir, out, name, *days, *force)
        }
        Command::Certs(CertsCommand::Revoke { identity: id, serial, reason, conn }) => {
            identity::revoke(&Target::from_conn(conn)?, id.as_deref(), serial.as_deref(), reason, cli.output).await
        }
        Command::Certs(CertsCommand::Revoked { conn }) => {
            identity::revocations(&Target::from_conn(conn)?, cli.output).await
        }
        Command::Tokens(TokensCommand::Create { name, labels, ttl, uses, conn }) => {
            identity::create_token(&Target::from_conn(conn)?, name.as_deref(), labels, *ttl, *uses, cli.output).await
        }
        Command::Tokens(TokensCommand::List { conn }) => {
            identity::list_tokens(&Target::from_conn(conn)?, cli.output).await
        }
        Command::Tokens(TokensCommand::Revoke { id, conn }) => {
            identity::revoke_token(&Target::from_conn(conn)?, id, cli.output).await
        }
        Command::Whoami { conn } => identity::whoami(&Target::from_conn(conn)?, cli.output).await,
        Command::Hosts { cmd: Some(HostsCommand::Remove { name, reason, conn }), .. } => {
            identity::remove_host(&Target::from_conn(conn)?, name, reason, cli.output).await
        }
        Command::Hosts { cmd: Some(HostsCommand::Drain { name, reason, conn }), .. } => {
            views::drain(&Target::from_conn(conn)?, name, Some(reason), cli.output).await
        }
        Command::Hosts { cmd: Some(HostsCommand::Undrain { name, conn }), .. } => {
            views::drain(&Target::from_conn(conn)?, name, None, cli.output).await
        }
        Command::Dev(args) => dev::run(args.clone()).await,
        Command::Status { conn } => views::status(&Target::from_conn(conn)?, cli.output).await,
        Command::Hosts { cmd: None, selector, conn } => {
            views::hosts(&Target::from_conn(conn)?, selector.as_deref(), cli.output).await
        }
        Command::Host { name, conn } => views::host(&Target::from_conn(conn)?, name, cli.output).await,
        Command::Services { host, selector, conn } => {
            services::list(&Target::from_conn(conn)?, host.as_deref(), selector.as_deref(), cli.output).await
        }
        Command::Jobs { host, selector, conn } => {
            jobs::list(&Target::from_conn(conn)?, host.as_deref(), selector.as_deref(), cli.output).await
        }
        Command::Job(JobCommand::Run { selector, targets, wait, timeout, conn }) => {
            let default = if *wait { Duration::from_secs(3600) } else { Duration::from_secs(60) };
            let timeout = timeout.unwrap_or(default);
            match (selector, targets.as_slice()) {
                (Some(sel), [job]) => {
                    jobs::run_selected(&Target::from_conn(conn)?, sel, job, *wait, timeout, cli.output).await
                }
                (None, [host, job]) => {
                    jobs::run(&Target::from_conn(conn)?, host, job, *wait, timeout, cli.output).await
                }
                (Some(_), _) => Err(CliError::usage("with --selector give only the job: fleetctl job run -l SEL JOB")),
                (None, _) => Err(CliError::usage("give the host and the job: fleetctl job run HOST JOB")),
            }
        }
        Command::Exec { selector, timeout, max_parallel, words, conn } => {
            // `--` after HOST arrives as a word of its own.
            let unseparated = |w: &[String]| -> Vec<String> {
                if w.first().is_some_and(|a| a == "--") { w[1..].to_vec() } else { w.to_vec() }
            };
            let words = if selector.is_some() {
                unseparated(words)
            } else {
                match words.split_first() {
                    Some((host, rest)) => [vec![host.clone()], unseparated(rest)].concat(),
                    None => Vec::new(),
                }
            };
            let (host, argv) = match (selector, words.split_first()) {
                (Some(_), _) => (None, words.clone()),
                (None, Some((host, argv))) if !argv.is_empty() => (Some(host.as_str()), argv.to_vec()),
                (None, _) => {
                    return Err(CliError::usage(
                        "give the host and the command: fleetctl exec HOST -- CMD [ARGS...] (or --selector SEL -- CMD)",
                    ));
                }
            };
            let t = Target::from_conn(conn)?;
            exec::exec(&t, host, selector.as_deref(), argv, *timeout, *max_parallel, cli.output).await
        }
        Command::Job(JobCommand::History { host, job, n, conn }) => {
            jobs::history(&Target::from_conn(conn)?, host, job, *n, cli.output).await
        }
        Command::Restart { all, selector, targets, timeout, conn } => {
            let t = Target::from_conn(conn)?;
            match (all, targets.as_slice()) {
                (true, [service]) => {
                    services::restart_all(&t, service, selector.as_deref(), *timeout, cli.output).await
                }
                (false, [host, service]) => {
                    services::one(&t, host, service, ServiceAction::Restart, *timeout, cli.output).await
                }
                (true, _) => Err(CliError::usage("with --all give only the service: fleetctl restart --all SERVICE")),
                (false, _) => Err(CliError::usage("give the host and the service: fleetctl restart HOST SERVICE")),
            }
        }
        Command::Start(a) => {
            services::one(
                &Target::from_conn(&a.conn)?,
                &a.host,
                &a.service,
                ServiceAction::Start,
                a.timeout,
                cli.output,
            )
            .await
        }
        Command::Stop(a) => {
            services::one(&Target::from_conn(&a.conn)?, &a.host, &a.service, ServiceAction::Stop, a.timeout, cli.output)
                .await
        }
        Command::Logs { all, targets, lines, follow, conn } => {
            let t = Target::from_conn(conn)?;
            match (all, targets.as_slice()) {
                (true, []) => services::logs(&t, "", "", *lines, *follow, cli.output).await,
                (false, [host]) => services::logs(&t, host, "", *lines, *follow, cli.output).await,
                (false, [host, service]) => services::logs(&t, host, service, *lines, *follow, cli.output).await,
                (true, _) => Err(CliError::usage("--all takes no host or service: fleetctl logs --all [-f]")),
                (false, _) => Err(CliError::usage("give a host and a service: fleetctl logs HOST SERVICE [-n N] [-f]")),
            }
        }
        Command::Audit { n, conn } => services::audit(&Target::from_conn(conn)?, *n, cli.output).await,
        Command::Rollout(r) => match r {
            RolloutCommand::Start(a) => rollout::start(&Target::from_conn(&a.conn)?, a, cli.output).await,
            RolloutCommand::Status { id, watch, conn } => {
                rollout::status(&Target::from_conn(conn)?, id, *watch, cli.output).await
            }
            RolloutCommand::List { conn } => rollout::list(&Target::from_conn(conn)?, cli.output).await,
            RolloutCommand::Pause { id, conn } => {
                rollout::control(&Target::from_conn(conn)?, id, "pause", cli.output).await
            }
            RolloutCommand::Resume { id, conn } => {
                rollout::control(&Target::from_conn(conn)?, id, "resume", cli.output).await
            }
            RolloutCommand::Abort { id, conn } => {
                rollout::control(&Target::from_conn(conn)?, id, "abort", cli.output).await
            }
        },
        Command::Rollback { host, service, to, min_healthy_time, healthy_deadline, conn } => {
            let t = Target::from_conn(conn)?;
            rollout::rollback(&t, host, service, to.as_deref(), (*min_healthy_time, *healthy_deadline), cli.output)
                .await
        }
        Command::Releases { host, service, conn } => {
            rollout::releases(&Target::from_conn(conn)?, host, service, cli.output).await
        }
        Command::Rules { cmd: Some(RulesCommand::Test { files }), .. } => rules_test(files),
        Command::Rules { cmd: Some(RulesCommand::Check { files, eval, emit_test: Some(out) }), .. } => {
            rules_emit_test(files, out, *eval)
        }
        Command::Rules { cmd: Some(RulesCommand::Check { files, eval, emit_test: None }), .. } => {
            rules_check(files, *eval)
        }
        Command::Rules { cmd: Some(RulesCommand::Promqltest { paths, list_skipped }), .. } => {
            promqltest(paths, *list_skipped)
        }
        Command::Rules { cmd: Some(RulesCommand::Reload { conn }), .. } => {
            rules_reload(&Target::from_conn(conn)?).await
        }
        Command::Rules { cmd: None, conn } => rules_list(&Target::from_conn(conn)?, cli.output).await,
        Command::Alerts { conn } => alerts(&Target::from_conn(conn)?, cli.output).await,
        Command::Query { expr, at, conn } => query(&Target::from_conn(conn)?, expr, at.as_deref(), cli.output).await,
        Command::HashPassword { cost } => hash_password(*cost),
        Command::DemoServer(a) => demo::run(a.clone()).await,
    }
}

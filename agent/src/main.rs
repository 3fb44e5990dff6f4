//! The fleet-agent binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_agent::config::AgentConfig;
use fleet_common::logging::LogFormat;

/// fleet-agent reports this machine's metrics to the fleet coordinator and supervises its services.
#[derive(Parser)]
#[command(name = "fleet-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file.
    #[arg(long, short = 'c', default_value = "/etc/fleet/agent.toml", env = "FLEET_AGENT_CONFIG")]
    config: PathBuf,
    /// Log format: text or json (filter with RUST_LOG).
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run(RunArgs),
    /// Check a config file, report every problem and exit: 0 when valid, 2 otherwise.
    CheckConfig {
        /// The config file.
        #[arg(long, short = 'c', default_value = "/etc/fleet/agent.toml")]
        config: PathBuf,
    },
    /// Enroll this machine with a join token (`fleetctl tokens create` prints the command):
    /// make a key here, check the coordinator against the CA pin, and keep the certificate it
    /// issues under data_dir/identity. Exit 0 when enrolled, 1 when refused, 3 when the
    /// coordinator cannot be reached.
    Enroll(EnrollArgs),
}

#[derive(clap::Args)]
struct EnrollArgs {
    /// The coordinator, https://HOST:PORT (default: `coordinator` of the config file).
    #[arg(long)]
    coordinator: Option<String>,
    /// The join token.
    #[arg(long, env = "FLEET_JOIN_TOKEN")]
    token: String,
    /// The CA pin, sha256:<hex>.
    #[arg(long)]
    ca_pin: String,
    /// The agent name (default: `name` of the config file, or this machine's host name).
    #[arg(long)]
    name: Option<String>,
    /// Where the agent keeps its state (default: `data_dir` of the config file, or
    /// /var/lib/fleet-agent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The agent's config file, read for the defaults above when it exists.
    #[arg(long, short = 'c', default_value = "/etc/fleet/agent.toml")]
    config: PathBuf,
}

/// `fleet-agent enroll`.
fn enroll(args: EnrollArgs) -> ExitCode {
    fleet_common::logging::init(LogFormat::Text, "info");
    let from_config = if args.config.exists() { load(&args.config).ok() } else { None };
    let name = args
        .name
        .or_else(|| from_config.as_ref().map(|c| c.name.clone()))
        .or_else(fleet_agent::collector::Collector::host_name);
    let Some(name) = name.filter(|n| fleet_common::identity::valid_name(n)) else {
        eprintln!("error: no valid agent name: pass --name NAME (1-63 letters, digits, '-', '_' or '.')");
        return ExitCode::from(2);
    };
    if let (Some(given), Some(c)) = (&args.coordinator, &from_config)
        && *given != c.coordinator
    {
        eprintln!(
            "warning: {} says coordinator = \"{}\", where the agent will attach; set it to \"{given}\" before starting the agent",
            args.config.display(),
            c.coordinator
        );
    }
    let Some(coordinator) = args.coordinator.or_else(|| from_config.as_ref().map(|c| c.coordinator.clone())) else {
        eprintln!("error: no coordinator: pass --coordinator https://HOST:PORT");
        return ExitCode::from(2);
    };
    let data_dir = args
        .data_dir
        .or_else(|| from_config.as_ref().map(|c| c.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/fleet-agent"));
    let join = fleet_agent::config::Join { token: args.token, ca_pin: args.ca_pin };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fleet_agent::credentials::enroll(&coordinator, &join, &name, &data_dir)) {
        Ok(m) => {
            println!(
                "enrolled as {} (identity in {}); start the agent: systemctl enable --now fleet-agent",
                m.identity(),
                data_dir.join(fleet_agent::credentials::DIR).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                fleet_agent::credentials::EnrollError::Refused(_) => 1,
                fleet_agent::credentials::EnrollError::Unreachable(_) => 3,
                fleet_agent::credentials::EnrollError::Local(_) => 1,
            })
        }
    }
}

fn load(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path, fleet_agent::collector::Collector::host_name).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::CheckConfig { config }) => {
            return match load(&config) {
                Ok(c) => match fleet_agent::load_identity(&c) {
                    Ok(creds) => {
                        let how = match creds {
                            None => ", enrolls at its first start",
                            Some(c) if c.renewable() => ", enrolled",
                            Some(_) => "",
                        };
                        println!("{}: ok (agent \"{}\", {} services{how})", config.display(), c.name, c.services.len());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {}: tls: {e}", config.display());
                        ExitCode::from(2)
                    }
                },
                Err(code) => code,
            };
        }
        Some(Command::Enroll(args)) => return enroll(args),
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Logging starts once the config says where traces go (docs/install.md, "Traces").
    let telemetry = fleet_common::telemetry::start_configured(&config.telemetry, "fleet-agent", Some(&config.name));
    fleet_common::logging::init_with(args.log_format, "info", telemetry.as_ref());
    // A certificate that does not name this agent is a configuration error: exit 2 at once.
    if let Err(e) = fleet_agent::load_identity(&config) {
        eprintln!("error: {}: tls: {e}", args.config.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = match fleet_common::shutdown::on_signals() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        match fleet_agent::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                // An identity problem (a refused join token) is for the operator to fix, as a
                // config error is: exit 2, which the unit does not restart on.
                if matches!(e, fleet_agent::RunError::Identity(_) | fleet_agent::RunError::Tls(_)) {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    });
    drop(runtime);
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

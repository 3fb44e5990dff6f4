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
                    Ok(_) => {
                        println!("{}: ok (agent \"{}\", {} services)", config.display(), c.name, c.services.len());
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
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    fleet_common::logging::init(args.log_format, "info");
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
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
    runtime.block_on(async {
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
                ExitCode::FAILURE
            }
        }
    })
}

//! The fleet-coordinator binary: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_common::logging::LogFormat;
use fleet_coordinator::config::CoordinatorConfig;

// jemalloc instead of the C library's allocator: rule evaluations over tens of thousands of
// series allocate and free hundreds of megabytes of small objects on whichever blocking thread
// runs them; glibc keeps such memory in per-thread arenas (RSS at 10,000 agents rose from 750
// to 1,130 MiB with the default rules), jemalloc hands it back to the system within seconds
// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// fleet-coordinator is the control plane of a fleet: agents attach to it, fleetctl talks to it.
#[derive(Parser)]
#[command(name = "fleet-coordinator", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file.
    #[arg(long, short = 'c', default_value = "/etc/fleet/coordinator.toml", env = "FLEET_COORDINATOR_CONFIG")]
    config: PathBuf,
    /// Log format: text or json (filter with RUST_LOG).
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (the default).
    Run(RunArgs),
    /// Check a config file, report every problem and exit: 0 when valid, 2 otherwise.
    CheckConfig {
        /// The config file.
        #[arg(long, short = 'c', default_value = "/etc/fleet/coordinator.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::CheckConfig { config }) => {
            return match CoordinatorConfig::load(&config) {
                Ok(c) => match fleet_coordinator::load_identity(&c).and_then(|tls| {
                    fleet_coordinator::load_signer(&c, &tls)?;
                    c.http_security.server_config().map_err(fleet_coordinator::RunError::Http)?;
                    Ok(tls)
                }) {
                    Ok(tls) => {
                        let mut warnings = c.alerting.warnings();
                        warnings.extend(c.access.warnings());
                        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                            warnings.extend(rt.block_on(c.alerting.unreachable_notifiers()));
                        }
                        for w in &warnings {
                            eprintln!("warning: {}: {w}", config.display());
                        }
                        println!(
                            "{}: ok (identity {}, gRPC {}, HTTP {}){}",
                            config.display(),
                            tls.identity(),
                            c.grpc_listen,
                            c.http_listen,
                            if warnings.is_empty() { String::new() } else { format!(", {} warnings", warnings.len()) }
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {}: {e}", config.display());
                        ExitCode::from(2)
                    }
                },
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    let config = match CoordinatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Logging starts once the config says where traces go (docs/install.md, "Traces").
    let telemetry = fleet_common::telemetry::start_configured(&config.telemetry, "fleet-coordinator", None);
    fleet_common::logging::init_with(args.log_format, "info", telemetry.as_ref());
    if let Err(e) =
        fleet_coordinator::load_identity(&config).and_then(|tls| fleet_coordinator::load_signer(&config, &tls))
    {
        eprintln!("error: {}: {e}", args.config.display());
        return ExitCode::from(2);
    }
    // Bind before starting anything: a port in use is a config problem, reported at once.
    let listeners = match fleet_coordinator::Listeners::bind(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
        match fleet_coordinator::run(config, listeners, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Work still on blocking threads (a query, a store flush) has been told to stop; the
    // process exits within this bound whatever it is doing.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

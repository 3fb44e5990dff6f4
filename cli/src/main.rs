//! The fleetctl binary: parses the command line, runs it, and maps failures to exit codes
//! (0 success, 1 operation failed, 2 usage or config error, 3 cannot connect or authenticate).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use fleetctl::Cli;
use tracing::Instrument;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The command as typed (`rollout start`) names the trace's root span.
    let mut name = Vec::new();
    let mut m = &matches;
    while let Some((sub, next)) = m.subcommand() {
        name.push(sub.to_string());
        m = next;
    }
    let name = name.join(" ");
    // Traces only where the operator asks for them, and never for the long-running commands.
    let telemetry = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(e) if !e.is_empty() && !matches!(name.as_str(), "dev" | "demo-server") => {
            let config = fleet_common::telemetry::TelemetryConfig { otlp_endpoint: Some(e) };
            fleet_common::telemetry::start_configured(&config, "fleetctl", None)
        }
        _ => None,
    };
    fleet_common::logging::init_with(fleet_common::logging::LogFormat::Text, "warn", telemetry.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let root = tracing::info_span!(target: fleet_common::telemetry::TARGET, "fleetctl", otel.name = %name, otel.kind = "client");
    let result = runtime.block_on(fleetctl::run(cli).instrument(root));
    drop(runtime);
    if let Some(t) = telemetry {
        t.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors carry agents' and services' words: shown, never sent to the terminal. A
            // remote command's own exit status (exec, job run --wait) comes without one.
            if !e.message.is_empty() {
                eprintln!("error: {}", fleet_common::printable(&e.message, &['\n']));
            }
            ExitCode::from(e.code)
        }
    }
}

//! The fleetctl binary: parses the command line, runs it, and maps failures to exit codes
//! (0 success, 1 operation failed, 2 usage or config error, 3 cannot connect or authenticate).

use std::process::ExitCode;

use clap::Parser;
use fleetctl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    fleet_common::logging::init(fleet_common::logging::LogFormat::Text, "warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fleetctl::run(cli)) {
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

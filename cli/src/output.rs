//! fleetctl's standard output, written through [`outln!`] and [`out!`].
//!
//! fleetctl keeps Rust's default of ignoring SIGPIPE: a connection the coordinator closes while
//! fleetctl writes to it (a refused certificate in TLS 1.3 is seen by the client only after its
//! next write) must be an error fleetctl reports with exit code 3, not a silent death by signal.
//! Only a closed standard output (`fleetctl hosts | head`) ends fleetctl the way SIGPIPE ends a
//! Unix tool: quietly, killed by the signal.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to standard output; see the module documentation for a closed output.
pub fn print(args: fmt::Arguments<'_>) {
    match io::stdout().lock().write_fmt(args) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

/// Writes `bytes` as they are to standard output (or, `to_stderr`, standard error), flushed:
/// a remote command's output, passed through.
pub fn write_bytes(bytes: &[u8], to_stderr: bool) {
    let result = if to_stderr {
        let mut e = io::stderr().lock();
        e.write_all(bytes).and_then(|_| e.flush())
    } else {
        let mut o = io::stdout().lock();
        o.write_all(bytes).and_then(|_| o.flush())
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => die_of_sigpipe(),
        Err(e) => {
            eprintln!("error: cannot write the command's output: {e}");
            std::process::exit(1)
        }
    }
}

/// Ends the process by SIGPIPE, as a Unix tool whose reader went away.
#[allow(unsafe_code)]
fn die_of_sigpipe() -> ! {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE, and raising a signal has no
    // preconditions; the process ends here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

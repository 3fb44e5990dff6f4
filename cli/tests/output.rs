//! fleetctl and SIGPIPE: a connection closed under fleetctl's write is an error it reports, not
//! a silent death; a closed standard output (`fleetctl hosts | head`) ends it quietly.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

fn fleetctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
}

/// The signal mask of ignored signals of process `pid`, from /proc.
fn ignored_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).expect("SigIgn in /proc/PID/status");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn fleetctl_ignores_sigpipe_while_it_runs() {
    // A write to a socket the coordinator has reset raises SIGPIPE (writev has no
    // MSG_NOSIGNAL); fleetctl must see EPIPE and report it instead of dying of the signal.
    let mut child = fleetctl()
        .args(["demo-server", "--listen", "127.0.0.1:0", "--heartbeat", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "{line}");
    let ignored = ignored_signals(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE is not ignored: SigIgn {ignored:x}");
}

#[test]
fn a_closed_standard_output_ends_fleetctl_quietly() {
    let mut child = fleetctl()
        .args(["hash-password", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

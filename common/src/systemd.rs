//! The daemons under systemd (docs/design.md §15): `sd_notify` readiness, stopping and watchdog
//! messages for `Type=notify` units, spoken directly on `$NOTIFY_SOCKET` (a datagram socket,
//! possibly in the abstract namespace) so that nothing links libsystemd. Outside systemd
//! (no `$NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends `state` (for example `READY=1`) to the socket at `addr`: a path, or `@name` for the
/// abstract namespace.
pub fn notify_to(addr: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &a)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(addr))?;
    }
    Ok(())
}

/// Tells systemd `state` when it is listening; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Ok(addr) = std::env::var("NOTIFY_SOCKET") else { return };
    if let Err(e) = notify_to(&addr, state) {
        tracing::warn!(socket = %addr, error = %e, "cannot notify systemd");
    }
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), if it asks this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Says READY once `ready` is true of the daemon, then pings the watchdog at half its
/// interval from the runtime (a runtime that stops making progress stops pinging, and
/// systemd restarts the daemon), and says STOPPING when `shutdown` fires.
pub fn ready(status: &str, shutdown: CancellationToken) {
    notify(&format!("READY=1\nSTATUS={status}"));
    let every = watchdog_interval().map(|w| w / 2);
    tokio::spawn(async move {
        match every {
            Some(every) => {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => notify("WATCHDOG=1"),
                    }
                }
            }
            None => shutdown.cancelled().await,
        }
        notify("STOPPING=1\nSTATUS=stopping");
    });
}

/// Whether stderr is the journal's stream (`$JOURNAL_STREAM` names its device and inode), so
/// that log lines should go to the journal with their priorities.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_or_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("fleet-test-{}", std::process::id());
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&a).unwrap();
        notify_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}

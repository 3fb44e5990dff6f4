//! The coordinator under systemd's `Type=notify` (docs/design.md §15), with a `$NOTIFY_SOCKET` this
//! test reads itself: READY=1 comes only once both ports accept connections, WATCHDOG=1 at half
//! of `WatchdogSec`, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use fleet_integration_tests::{Cluster, CoordinatorOpts, serial};

#[tokio::test(flavor = "multi_thread")]
async fn ready_comes_after_the_listeners_and_stopping_on_sigterm() {
    let _g = serial().await;
    let mut c = Cluster::new(&[]);
    let sock_path = c.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let addrs = c.dir().join("coordinator/coordinator.addrs.json");
    // At READY, both ports must take a connection at once.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut seen = Vec::new();
        let n = sock.recv(&mut buf).expect("a first notification within 30 s");
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&addrs).unwrap()).unwrap();
        for port in ["grpc", "http"] {
            let a = v[port].as_str().unwrap();
            std::net::TcpStream::connect_timeout(&a.parse().unwrap(), Duration::from_millis(200))
                .unwrap_or_else(|e| panic!("READY came before {port} ({a}) accepted: {e}"));
        }
        seen.push((Instant::now(), first));
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while let Ok(n) = sock.recv(&mut buf) {
            seen.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            if seen.last().unwrap().1.starts_with("STOPPING=1") {
                break;
            }
        }
        seen
    });
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), sock_path.to_str().unwrap().to_string()),
        ("WATCHDOG_USEC".to_string(), "2000000".to_string()),
    ];
    c.start_coordinator(CoordinatorOpts { env, ..Default::default() }).await;
    // A few watchdog periods, then SIGTERM.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let stopped_at = Instant::now();
    c.coordinator.as_mut().unwrap().terminate(Duration::from_secs(20));
    let seen = reader.join().expect("the notifications");
    let states: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    assert!(states[0].starts_with("READY=1\nSTATUS=serving gRPC on 127.0.0.1:"), "{states:?}");
    let pings = seen.iter().filter(|(at, s)| s == "WATCHDOG=1" && *at < stopped_at).count();
    assert!(pings >= 2, "{pings} watchdog pings in 3.5 s with WatchdogSec=2s: {states:?}");
    assert!(states.last().unwrap().starts_with("STOPPING=1"), "{states:?}");
}

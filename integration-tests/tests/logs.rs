//! `fleetctl logs`: recent lines, following new ones across log rotation, and every host's
//! services merged with `host/service` prefixes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_integration_tests::{Cluster, CoordinatorOpts, bin, eventually, serial, sh_service};

/// Prints numbered, 150-byte lines, 50 a second.
const CHATTY: &str = "i=0; while true; do i=$((i+1)); echo \"line $i $(printf '%0130d' 0)\"; sleep 0.02; done";

fn numbers(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "line").nth(1).and_then(|n| n.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_recent_lines_and_follow_across_rotation() {
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2", "main-pc"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent_with(
        "pc2",
        Duration::from_secs(1),
        &sh_service("chatty", CHATTY, "log_max_bytes = \"8KiB\"\nlog_backups = 2"),
    );
    c.start_agent_with(
        "main-pc",
        Duration::from_secs(1),
        // Its second line tries to retitle and clear the operator's terminal.
        &sh_service(
            "hello",
            "echo hello from main-pc; printf 'evil\\033]0;owned\\007\\033[2Jdone\\n'; exec sleep 1000",
            "",
        ),
    );
    c.wait_service("pc2", "chatty", Duration::from_secs(10), "running", |s| s.state == "running").await;
    c.wait_service("main-pc", "hello", Duration::from_secs(10), "running", |s| s.state == "running").await;

    // -n: the newest lines, in order.
    let out = c.fleetctl(&["logs", "pc2", "chatty", "-n", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let n = numbers(&lines);
    assert_eq!(n.len(), 5, "{lines:?}");
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{n:?}");
    assert!(lines[0].starts_with("20") && lines[0].contains('Z'), "lines carry their time: {}", lines[0]);

    // -f: new lines as they come, with no gap, while the file rotates underneath.
    let f = c.pki.files("ops");
    let mut follower = Command::new(bin("fleetctl"))
        .args(["logs", "pc2", "chatty", "-f", "-n", "1"])
        .env("FLEET_ADDR", &c.addr)
        .env("FLEET_CA", &f.ca)
        .env("FLEET_CERT", &f.cert)
        .env("FLEET_KEY", &f.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let rotated = c.dir().join("pc2/logs/chatty.log.1");
    let first_rotation = std::fs::metadata(&rotated).and_then(|m| m.modified()).ok();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 200 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let n = numbers(&got);
    assert!(n.len() >= 200, "followed only {} lines", n.len());
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "a gap while following: {n:?}");
    let later_rotation = std::fs::metadata(&rotated).and_then(|m| m.modified()).ok();
    assert!(later_rotation.is_some() && later_rotation != first_rotation, "the log did not rotate while following");

    // --all: every host's services, prefixed.
    let out = c.fleetctl(&["logs", "--all", "-n", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("pc2/chatty ") && l.contains("line ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("main-pc/hello ") && l.ends_with("hello from main-pc")), "{text}");

    // Control characters a service writes are shown, never sent to the terminal; JSON keeps
    // them, escaped as JSON does.
    let out = c.fleetctl(&["logs", "main-pc", "hello", "-n", "5"]);
    assert!(!out.stdout.iter().any(|b| *b == 0x1b || *b == 0x07), "{:?}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil\\x1b]0;owned\\x07\\x1b[2Jdone"), "{text}");
    let out = c.fleetctl(&["logs", "main-pc", "hello", "-n", "5", "-o", "json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("evil\\u001b]0;owned\\u0007\\u001b[2Jdone"));

    // A service that does not exist is a clear error.
    let out = c.fleetctl(&["logs", "pc2", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service or job named \"nosuch\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent streams at most 32 followed logs at once: the 33rd is refused with a message that
/// says so, the others keep streaming, and once one ends another may start.
#[tokio::test(flavor = "multi_thread")]
async fn followed_logs_are_bounded_per_agent() {
    use fleet_proto::v1::StreamLogsRequest;
    let _g = serial().await;
    let mut c = Cluster::new(&["pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent_with(
        "pc2",
        Duration::from_secs(1),
        &sh_service("chatty", "while true; do echo tick; sleep 0.1; done", ""),
    );
    c.wait_service("pc2", "chatty", Duration::from_secs(10), "running", |s| s.state == "running").await;
    let req = || StreamLogsRequest { host: "pc2".into(), service: "chatty".into(), lines: 0, follow: true };
    let mut open = Vec::new();
    for _ in 0..32 {
        let mut s = c.control().await.stream_logs(req()).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("a line").unwrap();
        assert!(first.is_some());
        open.push(s);
    }
    let mut extra = c.control().await.stream_logs(req()).await.unwrap().into_inner();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match extra.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        }
    })
    .await
    .expect("the 33rd stream ends");
    let e = refused.expect("the 33rd stream is refused, not ended quietly");
    assert!(e.message().contains("already streams 32 logs"), "{e}");
    // The 32 still stream.
    for s in open.iter_mut().take(3) {
        assert!(tokio::time::timeout(Duration::from_secs(5), s.message()).await.unwrap().unwrap().is_some());
    }
    // One goes away: its slot is freed on the agent, and a new follower gets in.
    drop(open.pop());
    eventually(Duration::from_secs(15), "a new follower once one went away", || async {
        let mut s = c.control().await.stream_logs(req()).await.ok()?.into_inner();
        tokio::time::timeout(Duration::from_secs(3), s.message()).await.ok()?.ok()?.map(|_| ())
    })
    .await;
}

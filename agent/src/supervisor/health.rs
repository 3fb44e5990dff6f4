//! Health probes: an HTTP GET that must answer 2xx or 3xx, a TCP connect, or a command that
//! must exit 0; each cut off by its timeout, so a probe that hangs counts as failed.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Probe;

/// Runs one probe; `Err` says why it failed.
pub async fn probe(p: &Probe, timeout: Duration) -> Result<(), String> {
    let what = match p {
        Probe::Http(url) => format!("GET {url}"),
        Probe::Tcp(addr) => format!("connect to {addr}"),
        Probe::Exec(cmd) => format!("`{}`", cmd.join(" ")),
    };
    let run = async {
        match p {
            Probe::Http(url) => http_get(url).await,
            Probe::Tcp(addr) => {
                TcpStream::connect(addr.as_str()).await.map(|_| ()).map_err(|e| fleet_common::io_reason(&e))
            }
            Probe::Exec(cmd) => exec(cmd).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {}", fleet_common::human_duration_ms(timeout))),
    }
}

/// A minimal HTTP/1.1 GET: the status line is all a health check needs.
async fn http_get(url: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut s = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| fleet_common::io_reason(&e))?;
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: fleet-agent/{}\r\nConnection: close\r\n\r\n",
        fleet_common::VERSION
    );
    s.write_all(req.as_bytes()).await.map_err(|e| fleet_common::io_reason(&e))?;
    // The status line fits in the first few bytes; read until it is complete (bounded).
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| fleet_common::io_reason(&e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        if line.is_empty() {
            "the connection closed without an answer".to_string()
        } else {
            format!("not an HTTP answer: {line:?}")
        }
    })?;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code}")) }
}

async fn exec(cmd: &[String]) -> Result<(), String> {
    let out = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run: {}", fleet_common::io_reason(&e)))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or("").trim();
    let status = super::describe_exit(out.status);
    Err(if first.is_empty() { status } else { format!("{status}: {first}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                if !answer.is_empty() {
                    let _ = s.write_all(answer).await;
                } else {
                    // Hang: keep the connection open and say nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_rejects_the_rest() {
        let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        assert_eq!(probe(&Probe::Http(ok), Duration::from_secs(2)).await, Ok(()));
        let bad = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let e = probe(&Probe::Http(bad.clone()), Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e, format!("GET {bad}: HTTP 503"));
    }

    #[tokio::test]
    async fn a_hanging_http_check_is_cut_by_its_timeout() {
        let hang = server(b"").await;
        let started = std::time::Instant::now();
        let e = probe(&Probe::Http(hang), Duration::from_millis(300)).await.unwrap_err();
        assert!(e.ends_with("no answer within 300ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tcp_and_exec_probes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert_eq!(probe(&Probe::Tcp(addr.clone()), Duration::from_secs(1)).await, Ok(()));
        drop(l);
        assert!(probe(&Probe::Tcp(addr), Duration::from_secs(1)).await.unwrap_err().contains("connection refused"));
        assert_eq!(probe(&Probe::Exec(vec!["true".into()]), Duration::from_secs(5)).await, Ok(()));
        let e = probe(
            &Probe::Exec(vec!["sh".into(), "-c".into(), "echo broken >&2; exit 4".into()]),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e, "`sh -c echo broken >&2; exit 4`: exited with status 4: broken");
    }
}

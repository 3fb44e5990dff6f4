//! `fleetctl demo-server`: a small HTTP service for the dev cluster and the examples, so a
//! newcomer sees supervised services, health checks and logs with nothing but fleet's own
//! binaries. `/` greets, `/health` answers 200, or 503 / never while the file named by
//! `--health-file` says `fail` / `hang` (to watch fleet react to an unhealthy service).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::CliError;

/// Options of the demo server.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A name to greet with.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// The version to report (deploys set it).
    #[arg(long, default_value = "dev")]
    pub version: String,
    /// A file whose content `fail` or `hang` makes /health fail or hang.
    #[arg(long)]
    pub health_file: Option<PathBuf>,
    /// Seconds between heartbeat log lines (0 for none).
    #[arg(long, default_value_t = 10)]
    pub heartbeat: u64,
}

fn say(line: &str) {
    outln!("{line}");
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {}", args.listen, fleet_common::io_reason(&e))))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| CliError::failed(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| CliError::failed(e.to_string()))?;
    say(&format!("{} {} listening on http://{}", args.name, args.version, args.listen));
    let served = Arc::new(AtomicU64::new(0));
    let args = Arc::new(args);
    let mut beat = tokio::time::interval(Duration::from_secs(args.heartbeat.max(1)));
    beat.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = beat.tick(), if args.heartbeat > 0 => say(&format!("heartbeat: {} requests served", served.load(Ordering::Relaxed))),
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let args = args.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(3600), handle(stream, &args, &served)).await;
                });
            }
        }
    }
    say(&format!("{} shutting down", args.name));
    Ok(())
}

async fn handle(mut stream: tokio::net::TcpStream, args: &DemoArgs, served: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let r = stream.read(&mut buf[n..]).await?;
        if r == 0 {
            return Ok(());
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (code, body) = if path == "/health" {
        let mode = match &args.health_file {
            Some(f) => std::fs::read_to_string(f).unwrap_or_default(),
            None => String::new(),
        };
        match mode.trim() {
            "hang" => {
                say("GET /health: hanging (health file says hang)");
                std::future::pending::<()>().await;
                unreachable!("pending never completes")
            }
            "fail" => (503, "unhealthy\n".to_string()),
            _ => (200, "ok\n".to_string()),
        }
    } else if path == "/" {
        (200, format!("hello from {} {}\n", args.name, args.version))
    } else {
        (404, "not found\n".to_string())
    };
    served.fetch_add(1, Ordering::Relaxed);
    if path != "/health" || code != 200 {
        say(&format!("GET {path} {code}"));
    }
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

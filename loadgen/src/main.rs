//! fleet-loadgen: simulates N agents against a coordinator, each a real mutual-TLS session
//! with its own certificate minted from the CA in `--pki DIR`, sending reports of the size and
//! shape a real agent with 5 services sends. Progress goes to stderr; at the end one JSON line
//! on stdout: agents, reports_sent, reports_acked, ack_p50_ms, ack_p99_ms, errors,
//! connect_failures.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fleet_common::identity::Role;
use fleet_common::tls::{TlsMaterial, connect_coordinator};
use fleet_proto::v1::agent_message::Msg;
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::coordinator_message::Msg as CMsg;
use fleet_proto::v1::{AgentMessage, Hello};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Simulates many fleet agents against one coordinator.
#[derive(Parser, Debug)]
#[command(name = "fleet-loadgen", version)]
struct Args {
    /// The coordinator's gRPC address.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    addr: String,
    /// A directory with the fleet CA: ca.pem and ca-key.pem.
    #[arg(long)]
    pki: PathBuf,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Report interval of each agent.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    report_interval: Duration,
    /// How long to run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Agent name prefix.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Over how long the agents connect (default: one report interval).
    #[arg(long, value_parser = humantime::parse_duration)]
    ramp: Option<Duration>,
    /// Leave out of the latency percentiles the reports sent before the ramp plus this long
    /// (to see the steady state apart from the connection storm); default 0.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    connect_failures: AtomicU64,
    connected: AtomicU64,
    /// Ack latencies.
    latencies: std::sync::Mutex<fleet_loadgen::Histogram>,
    /// Reports sent before this are not in the percentiles.
    measure_from: std::sync::OnceLock<Instant>,
}

impl Stats {
    /// Retires every in-flight report up to `acked` and records its latency,
    /// unless it was sent during warm-up.
    fn record_ack(&self, in_flight: &mut VecDeque<(u64, Instant)>, acked: u64) {
        let now = Instant::now();
        let from = self.measure_from.get().copied();
        let mut lat = Vec::new();
        let mut n = 0;
        while in_flight.front().is_some_and(|(s, _)| *s <= acked) {
            let (_, at) = in_flight.pop_front().expect("checked");
            n += 1;
            if from.is_none_or(|f| at >= f) {
                lat.push(now.duration_since(at).as_micros().min(u32::MAX as u128) as u32);
            }
        }
        self.acked.fetch_add(n, Ordering::Relaxed);
        let mut l = self.latencies.lock().expect("stats lock");
        for us in lat {
            l.record(us);
        }
    }
}

async fn agent(i: usize, args: Arc<Args>, tls: TlsMaterial, stats: Arc<Stats>, start_at: Instant, end_at: Instant) {
    tokio::time::sleep_until(start_at.into()).await;
    let name = format!("{}-{i}", args.prefix);
    let mut host = fleet_loadgen::SimHost::new(i as u64, rand::random());
    let boot = host.boot_id();
    let interval_s = args.report_interval.as_secs().max(1);
    // The agent's own reconnect policy: jittered exponential backoff, capped at 30s.
    let mut backoff = fleet_agent::session::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    while Instant::now() < end_at {
        let channel = match connect_coordinator(&args.addr, &tls).await {
            Ok(c) => c,
            Err(_) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.next_delay(&mut rng)).await;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        let hello = Hello {
            name: name.clone(),
            version: fleet_common::VERSION.into(),
            boot_id: boot,
            report_interval_ms: args.report_interval.as_millis() as u64,
            ..Default::default()
        };
        let _ = tx.send(AgentMessage { msg: Some(Msg::Hello(hello)) }).await;
        let mut inbound =
            match AgentServiceClient::new(channel).attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(_) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut tick = tokio::time::interval(args.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end_at.into()) => break true,
                _ = tick.tick() => {
                    let report = host.next_report(fleet_common::now_ms(), interval_s);
                    let seq = report.id.unwrap_or_default().seq;
                    in_flight.push_back((seq, Instant::now()));
                    if tx.send(AgentMessage { msg: Some(Msg::Report(report)) }).await.is_err() {
                        break false;
                    }
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                m = inbound.next() => match m {
                    Some(Ok(m)) => {
                        if let Some(CMsg::Ack(a)) = m.msg {
                            stats.record_ack(&mut in_flight, a.id.map(|x| x.seq).unwrap_or(0));
                        }
                    }
                    _ => break false,
                },
            }
        };
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        if ended {
            // Give outstanding acks a moment, then stop.
            let grace = Instant::now() + Duration::from_secs(2);
            while !in_flight.is_empty() && Instant::now() < grace {
                match tokio::time::timeout(Duration::from_millis(200), inbound.next()).await {
                    Ok(Some(Ok(m))) => {
                        if let Some(CMsg::Ack(a)) = m.msg {
                            stats.record_ack(&mut in_flight, a.id.map(|x| x.seq).unwrap_or(0));
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            return;
        }
        stats.errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff.next_delay(&mut rng)).await;
    }
}

fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    let ca = std::fs::read_to_string(args.pki.join("ca.pem"));
    let ca_key = std::fs::read_to_string(args.pki.join("ca-key.pem"));
    let (Ok(ca), Ok(ca_key)) = (ca, ca_key) else {
        eprintln!(
            "error: cannot read {0}/ca.pem and {0}/ca-key.pem; create them with `fleetctl certs init --dir {0}`",
            args.pki.display()
        );
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        eprintln!("minting {} agent certificates...", args.agents);
        let mut materials = Vec::with_capacity(args.agents);
        for i in 0..args.agents {
            let m = match fleetctl::certs::mint(&ca, &ca_key, Role::Agent, &format!("{}-{i}", args.prefix), &[], 2) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {}", e.message);
                    return ExitCode::from(2);
                }
            };
            match TlsMaterial::from_pem(ca.as_bytes(), m.cert_pem.as_bytes(), m.key_pem.as_bytes()) {
                Ok(t) => materials.push(t),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let stats = Arc::new(Stats::default());
        let start = Instant::now();
        let ramp = args.ramp.unwrap_or(args.report_interval);
        let _ = stats.measure_from.set(start + ramp + args.warmup);
        let end = start + ramp + args.duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, tls) in materials.into_iter().enumerate() {
            let at = start + ramp.mul_f64(i as f64 / args.agents.max(1) as f64);
            tasks.spawn(agent(i, args.clone(), tls, stats.clone(), at, end));
        }
        let progress = {
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    eprintln!(
                        "{:>5}s connected {} sent {} acked {} errors {} connect failures {}",
                        start.elapsed().as_secs(),
                        stats.connected.load(Ordering::Relaxed),
                        stats.sent.load(Ordering::Relaxed),
                        stats.acked.load(Ordering::Relaxed),
                        stats.errors.load(Ordering::Relaxed),
                        stats.connect_failures.load(Ordering::Relaxed)
                    );
                }
            })
        };
        while tasks.join_next().await.is_some() {}
        progress.abort();
        let l = std::mem::take(&mut *stats.latencies.lock().expect("stats lock"));
        let out = serde_json::json!({
            "agents": args.agents,
            "latency_samples": l.count(),
            "reports_sent": stats.sent.load(Ordering::Relaxed),
            "reports_acked": stats.acked.load(Ordering::Relaxed),
            "ack_p50_ms": l.quantile_ms(0.5),
            "ack_p99_ms": l.quantile_ms(0.99),
            "errors": stats.errors.load(Ordering::Relaxed),
            "connect_failures": stats.connect_failures.load(Ordering::Relaxed),
        });
        println!("{out}");
        ExitCode::SUCCESS
    })
}

//! The agent's session with the coordinator: dial over mutual TLS, say Hello, send buffered
//! reports in order with a bounded window, drop them from the buffer as Acks arrive, renew an
//! enrolled certificate in time (moving to a new session before leaving the old one), and
//! reconnect with capped, jittered exponential backoff when anything goes wrong; a revoked
//! agent says so and tries only hourly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fleet_common::tls::{TlsMaterial, connect_coordinator};
use fleet_proto::v1::agent_message::Msg as AgentMsg;
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::coordinator_message::Msg as CoordMsg;
use fleet_proto::v1::{AgentMessage, Hello};
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::commands::Dispatcher;
use crate::credentials::Credentials;
use crate::store::Outbox;
use crate::supervisor::Supervisor;

/// Reports sent but not yet acknowledged, at most. Bounds memory on both sides during a replay.
pub const WINDOW: usize = 128;
/// Messages queued towards the coordinator (reports, command updates, log batches).
const OUTBOUND: usize = 256;
/// How long the coordinator may take to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);

/// Reconnect delays: exponential from `initial`, capped at `max`, with equal jitter (half the
/// delay fixed, half random) so a fleet that lost its coordinator does not come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, current: initial }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.current.min(self.max);
        self.current = (self.current * 2).min(self.max);
        let half = base / 2;
        half + Duration::from_micros(rng.random_range(0..=half.as_micros() as u64))
    }

    /// Starts over after a session that worked.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// What the session needs from the rest of the agent.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The coordinator address.
    pub coordinator: String,
    /// Hello as sent at the start of each session (its services are refreshed each time).
    pub hello: Hello,
    /// The buffer of undelivered reports.
    pub outbox: Arc<Outbox>,
    /// Signalled whenever a report was added to the outbox.
    pub new_report: Arc<Notify>,
    /// The supervised services.
    pub supervisor: Arc<Supervisor>,
    /// The jobs, for the Hello.
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Runs the coordinator's commands.
    pub dispatcher: Arc<Dispatcher>,
    /// Every coordinator's session; told what each Welcome says of the cluster.
    pub coordinators: Arc<crate::coordinators::Coordinators>,
}

/// Runs sessions until `shutdown` is cancelled.
pub async fn run(ctx: SessionContext, creds: Arc<Credentials>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut failures: u32 = 0;
    // A session opened with a renewed certificate before the one it replaces was dropped.
    let mut next: Option<Opened> = None;
    while !shutdown.is_cancelled() {
        let opened = match next.take() {
            Some(o) => Ok(o),
            None => open(&ctx, &creds.current(), &shutdown).await,
        };
        let end = match opened {
            Ok(o) => serve(&ctx, o, &creds, &shutdown).await,
            Err(r) => Err(r),
        };
        if shutdown.is_cancelled() {
            break;
        }
        match end {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::Renewed(o)) => {
                next = Some(o);
                continue;
            }
            Ok(SessionEnd::CannotStore { reason }) => {
                // The coordinator is up but cannot store (its disk is full): the reports stay
                // here, and the agent comes back every few seconds, saying so once a minute.
                if let Some(held) = CANNOT_STORE.ready() {
                    tracing::warn!(coordinator = %ctx.coordinator, %reason, sessions_not_logged = held, "the coordinator cannot store reports; keeping them and retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
                continue;
            }
            Ok(SessionEnd::Lost { reason, welcomed }) => {
                if welcomed {
                    backoff.reset();
                    failures = 0;
                }
                failures += 1;
                CANNOT_STORE.clear();
                tracing::warn!(coordinator = %ctx.coordinator, %reason, "session with the coordinator ended; reconnecting");
            }
            Err(Refused::Revoked(reason)) => {
                // Not transient: the coordinator will refuse this certificate for good. Say
                // so, then try again only hourly, or as soon as the machine was enrolled anew.
                tracing::error!(
                    coordinator = %ctx.coordinator,
                    %reason,
                    "this agent's certificate was revoked: it cannot attach until the machine is enrolled again (fleet-agent enroll --token NEW_TOKEN, docs/install.md); retrying hourly"
                );
                if !wait_revoked(&creds, &shutdown).await {
                    break;
                }
                continue;
            }
            Err(Refused::IdentityConflict(reason)) => {
                // Not a transient failure: another machine holds this agent's certificate.
                // Said loudly at every attempt (the backoff spaces them out to 30 s).
                failures += 1;
                tracing::error!(coordinator = %ctx.coordinator, %reason, "the coordinator refused this agent: its identity is in use by another machine");
            }
            Err(Refused::Other(reason)) => {
                failures += 1;
                // The first failures are worth a warning; a long outage should not flood logs.
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(coordinator = %ctx.coordinator, attempts = failures, %reason, "cannot attach to the coordinator");
                } else {
                    tracing::debug!(coordinator = %ctx.coordinator, attempts = failures, %reason, "cannot attach to the coordinator");
                }
            }
        }
        let delay = backoff.next_delay(&mut rng);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How long a revoked agent waits before trying again.
pub const REVOKED_RETRY: Duration = Duration::from_secs(3600);

/// Waits [`REVOKED_RETRY`], or until the identity files change (the machine was enrolled
/// again); false on shutdown.
async fn wait_revoked(creds: &Credentials, shutdown: &CancellationToken) -> bool {
    let until = tokio::time::Instant::now() + REVOKED_RETRY;
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if creds.reload_if_changed() {
            tracing::info!("the agent's identity files changed (enrolled again); attaching");
            return true;
        }
    }
    true
}

enum SessionEnd {
    Shutdown,
    Lost {
        reason: String,
        welcomed: bool,
    },
    /// The coordinator ended the session because it cannot store reports.
    CannotStore {
        reason: String,
    },
    /// The certificate was renewed and a session with the new one is open.
    Renewed(Opened),
}

/// How long to wait before attaching again to a coordinator that cannot store reports.
const STORE_RETRY: Duration = Duration::from_secs(2);
static CANNOT_STORE: fleet_common::Throttle = fleet_common::Throttle::new(Duration::from_secs(60));

/// Why a session could not start.
enum Refused {
    /// Another machine is attached with this agent's identity.
    IdentityConflict(String),
    /// The coordinator revoked this agent's certificate.
    Revoked(String),
    Other(String),
}

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        if reason.contains("revoked") { Refused::Revoked(reason) } else { Refused::Other(reason) }
    }
}

/// A session that was welcomed: its channel, its two streams and what the welcome said.
struct Opened {
    channel: Channel,
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<fleet_proto::v1::CoordinatorMessage>,
}

/// Connects, says Hello and waits for the welcome; drops what the coordinator already holds.
async fn open(ctx: &SessionContext, tls: &TlsMaterial, shutdown: &CancellationToken) -> Result<Opened, Refused> {
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Err(Refused::Other("shutting down".into())),
        c = connect_coordinator(&ctx.coordinator, tls) => c.map_err(|e| e.to_string())?,
    };
    let mut client = AgentServiceClient::new(channel.clone());
    let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND);
    let mut hello = ctx.hello.clone();
    hello.services = ctx.supervisor.statuses();
    hello.jobs = ctx.jobs.statuses();
    hello.time_ms = fleet_common::now_ms();
    tx.try_send(AgentMessage { msg: Some(AgentMsg::Hello(hello)) }).map_err(|e| format!("cannot queue hello: {e}"))?;
    let mut inbound = tokio::select! {
        _ = shutdown.cancelled() => return Err(Refused::Other("shutting down".into())),
        r = client.attach(ReceiverStream::new(rx)) => r.map_err(|s| status_reason(&s))?.into_inner(),
    };
    let welcome = tokio::select! {
        _ = shutdown.cancelled() => return Err(Refused::Other("shutting down".into())),
        m = tokio::time::timeout(WELCOME_TIMEOUT, inbound.next()) => match m {
            Err(_) => return Err(format!("no welcome within {}s", WELCOME_TIMEOUT.as_secs()).into()),
            Ok(None) => return Err("the coordinator closed the session before welcoming the agent".to_string().into()),
            Ok(Some(Err(s))) if s.code() == tonic::Code::AlreadyExists => {
                return Err(Refused::IdentityConflict(status_reason(&s)));
            }
            Ok(Some(Err(s))) => return Err(status_reason(&s).into()),
            Ok(Some(Ok(m))) => match m.msg {
                Some(CoordMsg::Welcome(w)) => w,
                _ => return Err("the coordinator's first message was not a welcome".to_string().into()),
            },
        },
    };
    let interval_ms = ctx.hello.report_interval_ms;
    if welcome.offline_after_ms > 0 && interval_ms * 2 > welcome.offline_after_ms {
        tracing::warn!(
            report_interval_ms = interval_ms,
            offline_after_ms = welcome.offline_after_ms,
            "report_interval is more than half the coordinator's offline_after: this agent will flap offline; lower report_interval"
        );
    }
    // The members of the coordinator's cluster: a session to each (crate::coordinators).
    ctx.coordinators.welcomed(&ctx.coordinator, &welcome.coordinator, &welcome.coordinators, fleet_common::now_ms());
    // Anything the coordinator already holds (its Ack was lost) need not be sent again.
    if let Some(last) = &welcome.last_stored
        && let Some(index) = ctx.outbox.index_of(last)
    {
        let n = ctx.outbox.ack_through(&ctx.coordinator, index).map_err(|e| e.to_string())?;
        tracing::info!(dropped = n, "the coordinator already held buffered reports; not resending them");
    }
    tracing::info!(
        coordinator = %ctx.coordinator,
        coordinator_version = %welcome.coordinator_version,
        buffered = ctx.outbox.len(),
        "attached to the coordinator"
    );
    Ok(Opened { channel, tx, inbound })
}

/// Runs a welcomed session: sends buffered reports in order within the window, drops them as
/// Acks arrive, hands commands to the dispatcher, and renews the certificate when it is time
/// (opening the next session before this one is dropped, so the host never goes offline).
async fn serve(
    ctx: &SessionContext,
    opened: Opened,
    creds: &Credentials,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, Refused> {
    let Opened { channel, tx, mut inbound } = opened;
    let mut renew_at = creds.renew_in().map(|d| tokio::time::Instant::now() + d);
    // Sent but unacknowledged: (outbox index, boot, seq), in send order.
    let mut in_flight: VecDeque<(u64, u64, u64)> = VecDeque::new();
    // Where this coordinator's acknowledgements left off (with several coordinators the
    // outbox keeps what the others still need).
    let mut last_sent: Option<u64> = ctx.outbox.acked(&ctx.coordinator);
    loop {
        let can_send = in_flight.len() < WINDOW && ctx.outbox.has_after(last_sent);
        let renewal = async {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            _ = renewal => {
                match creds.renew(channel.clone()).await {
                    Ok(material) => {
                        tracing::info!(identity = %material.identity(), "renewed the agent's certificate; moving the session to it");
                        match open(ctx, &material, shutdown).await {
                            Ok(next) => return Ok(SessionEnd::Renewed(next)),
                            Err(Refused::Other(reason) | Refused::Revoked(reason) | Refused::IdentityConflict(reason)) => {
                                // This session goes on; the next one uses the new certificate.
                                tracing::warn!(%reason, "cannot open a session with the renewed certificate yet; keeping the current one");
                            }
                        }
                        renew_at = creds.renew_in().map(|d| tokio::time::Instant::now() + d);
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "cannot renew the agent's certificate; trying again in a minute");
                        renew_at = Some(tokio::time::Instant::now() + RENEW_RETRY);
                    }
                }
            }
            _ = ctx.new_report.notified(), if !can_send => {}
            // One report at a time, each when the queue has room: command updates and log
            // lines share the queue, and a report is never dropped for lack of room.
            permit = tx.reserve(), if can_send => {
                let Ok(permit) = permit else {
                    return Ok(SessionEnd::Lost { reason: "the session's send queue closed".into(), welcomed: true });
                };
                let Some((index, mut report)) = ctx.outbox.read_after(last_sent, 1).map_err(|e| e.to_string())?.into_iter().next() else {
                    continue;
                };
                // The send time, not the time it was taken: how the coordinator follows this
                // agent's clock, also while it replays old reports.
                report.sent_at_ms = fleet_common::now_ms();
                let id = report.id.unwrap_or_default();
                permit.send(AgentMessage { msg: Some(AgentMsg::Report(report)) });
                in_flight.push_back((index, id.boot_id, id.seq));
                last_sent = Some(index);
            }
            msg = inbound.next() => {
                let msg = match msg {
                    None => return Ok(SessionEnd::Lost { reason: "the coordinator closed the session".into(), welcomed: true }),
                    Some(Err(s)) if s.code() == tonic::Code::ResourceExhausted => {
                        return Ok(SessionEnd::CannotStore { reason: status_reason(&s) });
                    }
                    Some(Err(s)) if s.code() == tonic::Code::PermissionDenied && s.message().contains("revoked") => {
                        return Err(Refused::Revoked(s.message().to_string()));
                    }
                    Some(Err(s)) => return Ok(SessionEnd::Lost { reason: status_reason(&s), welcomed: true }),
                    Some(Ok(m)) => m,
                };
                match msg.msg {
                    Some(CoordMsg::Ack(ack)) => {
                        let id = ack.id.unwrap_or_default();
                        let Some(pos) = in_flight.iter().position(|&(_, b, s)| b == id.boot_id && s == id.seq) else {
                            tracing::debug!(boot_id = id.boot_id, seq = id.seq, "ack for a report not in flight");
                            continue;
                        };
                        let (index, _, _) = in_flight[pos];
                        in_flight.drain(..=pos);
                        // What the coordinator has promised to keep (RUST_LOG=fleet_agent::acks=debug):
                        // the crash tests hold it to that promise.
                        tracing::debug!(target: "fleet_agent::acks", boot_id = id.boot_id, seq = id.seq, "acknowledged");
                        ctx.outbox.ack_through(&ctx.coordinator, index).map_err(|e| e.to_string())?;
                    }
                    Some(CoordMsg::Command(cmd)) => ctx.dispatcher.handle(cmd, tx.clone()),
                    Some(CoordMsg::Members(m)) => {
                        ctx.coordinators.welcomed(&ctx.coordinator, &m.coordinator, &m.coordinators, fleet_common::now_ms());
                    }
                    Some(CoordMsg::Welcome(_)) | None => {}
                }
            }
        }
    }
}

/// How long after a failed renewal the agent tries again.
const RENEW_RETRY: Duration = Duration::from_secs(60);

fn status_reason(s: &tonic::Status) -> String {
    if let Some(c) = std::error::Error::source(s).and_then(fleet_common::tls::ConnectError::find) {
        return c.to_string();
    }
    if std::error::Error::source(s).is_some() {
        let detail = fleet_common::tls::status_detail(s);
        return format!("{detail}{}", fleet_common::tls::alert_hint(&detail));
    }
    format!("{:?}: {}", s.code(), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_is_jittered_capped_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut bases = vec![];
        for _ in 0..12 {
            let d = b.next_delay(&mut rng);
            bases.push(d);
        }
        // Each delay lies within [base/2, base] for base = 200ms * 2^n, capped at 30s.
        for (n, d) in bases.iter().enumerate() {
            let base = (Duration::from_millis(200) * 2u32.pow(n as u32)).min(Duration::from_secs(30));
            assert!(*d >= base / 2 && *d <= base, "delay {n} = {d:?}, base {base:?}");
        }
        assert!(bases.iter().all(|d| *d <= Duration::from_secs(30)));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(200));
    }
}

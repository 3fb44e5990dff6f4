//! The cluster state in memory: every host ever seen, whether its session is up, and its
//! newest report.
//!
//! There is no global lock on the report path: the host map is behind a read-mostly `RwLock`
//! (written only when a host is seen for the first time), and each host has its own mutex,
//! never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fleet_proto::v1::{Command, Hello, HostSummary, Report};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{HostRecord, LoadedHost};

/// One host.
#[derive(Debug)]
pub struct Host {
    /// The agent name.
    pub name: String,
    state: Mutex<HostState>,
}

/// Mutable state of a host.
#[derive(Debug, Default)]
pub struct HostState {
    /// The persisted part.
    pub record: HostRecord,
    /// The current session, if one is up.
    pub session: Option<SessionHandle>,
    /// The newest stored report.
    pub latest: Option<Arc<Report>>,
    /// Its last session ended because the store could not write: its return is not news.
    pub quiet_reconnect: bool,
    /// Its clock minus the coordinator's (ms), as its session estimates it (crate::clock).
    pub clock_offset_ms: Option<i64>,
}

/// The session currently attached for a host.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Distinguishes sessions of the same host over time.
    pub generation: u64,
    /// The boot id of the agent run on the other end.
    pub boot_id: u64,
    /// Where it connects from.
    pub peer: String,
    /// When it attached, and when it last sent anything (ms): whether it is still alive.
    pub attached_ms: i64,
    /// Updated by the session for every message it receives.
    pub last_heard_ms: Arc<std::sync::atomic::AtomicI64>,
    /// How often that agent reports.
    pub report_interval_ms: u64,
    /// Cancelled to end the session (replaced by a newer one, revoked, or shutdown).
    pub cancel: CancellationToken,
    /// Why it was ended, when not replaced or shut down: the reason shown to operators and
    /// the status the agent gets.
    pub ended_by: Arc<Mutex<Option<(String, tonic::Status)>>>,
    /// Commands to send to the agent over this session (boxed: a tokio channel allocates 32
    /// slots at once, which for unboxed commands is kilobytes per idle session).
    pub commands: mpsc::Sender<Box<Command>>,
}

/// Commands queued towards one agent session, at most.
pub const COMMAND_QUEUE: usize = 256;

/// A session just attached: its host, its handle, and the queue of commands to send over it.
pub type Attached = (Arc<Host>, SessionHandle, mpsc::Receiver<Box<Command>>);

/// A second machine attaching with an identity whose session is up and alive on another
/// (two machines holding one certificate): the first is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    /// Where the kept session connects from.
    pub peer: String,
    /// Its boot id.
    pub boot_id: u64,
    /// When it attached (ms).
    pub since_ms: i64,
}

impl SessionHandle {
    /// Whether the agent on this session was heard from lately: within two of its report
    /// intervals (at least 2 s). A session whose agent died without closing it (a power cut)
    /// goes quiet and may be replaced before `offline_after` ends it.
    pub fn alive(&self, now_ms: i64) -> bool {
        let window = (2 * self.report_interval_ms as i64).max(2_000);
        now_ms - self.last_heard_ms.load(Ordering::Relaxed) < window
    }
}

impl Host {
    fn new(name: String, record: HostRecord) -> Self {
        Host { name, state: Mutex::new(HostState { record, ..Default::default() }) }
    }

    /// The command queue of the host's current session, if it is online.
    pub fn command_sender(&self) -> Option<mpsc::Sender<Box<Command>>> {
        self.with(|s| s.session.as_ref().map(|h| h.commands.clone()))
    }

    /// Runs `f` with the host's state locked. Never `.await` inside.
    pub fn with<R>(&self, f: impl FnOnce(&mut HostState) -> R) -> R {
        f(&mut self.state.lock().expect("host lock poisoned"))
    }

    /// Whether the host's session is up.
    pub fn online(&self) -> bool {
        self.with(|s| s.session.is_some())
    }

    /// The operator-facing summary.
    pub fn summary(&self) -> HostSummary {
        self.with(|s| {
            let r = &s.record;
            HostSummary {
                name: self.name.clone(),
                online: s.session.is_some(),
                last_seen_ms: r.last_seen_ms,
                labels: r.labels.clone().into_iter().collect(),
                agent_version: r.agent_version.clone(),
                metrics: s.latest.as_ref().and_then(|l| l.host.clone()),
                services: s.latest.as_ref().map(|l| l.services.clone()).unwrap_or_default(),
                jobs: s.latest.as_ref().map(|l| l.jobs.clone()).unwrap_or_default(),
                allow_exec: r.allow_exec,
                drained: r.drained.as_ref().map(|d| fleet_proto::v1::Drain {
                    reason: d.reason.clone(),
                    by: d.by.clone(),
                    since_ms: d.since_ms,
                }),
                last_report_ms: r.last_report_ms,
                os: r.os.clone(),
                hostname: r.hostname.clone(),
                peer_address: r.peer_address.clone(),
                report_interval_ms: r.report_interval_ms,
                reports_dropped_total: s.latest.as_ref().map(|l| l.reports_dropped_total).unwrap_or(0),
                clock_offset_ms: s.clock_offset_ms.unwrap_or(0),
                last_disconnect_reason: if s.session.is_some() {
                    String::new()
                } else {
                    r.last_disconnect_reason.clone()
                },
            }
        })
    }

    /// Why the host is drained ("no reason given" when none was), None when it is not.
    pub fn drained(&self) -> Option<String> {
        self.with(|s| {
            s.record
                .drained
                .as_ref()
                .map(|d| if d.reason.is_empty() { "no reason given".to_string() } else { d.reason.clone() })
        })
    }

    /// Replaces one service's state in the newest report (from a command's outcome).
    pub fn update_service(&self, svc: fleet_proto::v1::ServiceStatus) {
        self.with(|s| {
            if let Some(latest) = s.latest.as_mut() {
                let report = Arc::make_mut(latest);
                if let Some(slot) = report.services.iter_mut().find(|x| x.name == svc.name) {
                    *slot = svc;
                }
            }
        });
    }
}

/// Every host the coordinator knows.
#[derive(Debug, Default)]
pub struct Registry {
    hosts: RwLock<HashMap<String, Arc<Host>>>,
    generations: AtomicU64,
}

impl Registry {
    /// Builds the registry from what the store held; every host starts offline.
    pub fn from_loaded(loaded: Vec<LoadedHost>) -> Registry {
        let reg = Registry::default();
        {
            let mut map = reg.hosts.write().expect("registry lock");
            for l in loaded {
                let host = Host::new(l.record.name.clone(), l.record);
                host.with(|s| s.latest = l.latest.map(Arc::new));
                map.insert(host.name.clone(), Arc::new(host));
            }
        }
        reg
    }

    /// The host named `name`, if known.
    pub fn get(&self, name: &str) -> Option<Arc<Host>> {
        self.hosts.read().expect("registry lock").get(name).cloned()
    }

    /// Every host, sorted by name.
    pub fn all(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<_> = self.hosts.read().expect("registry lock").values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of known hosts.
    pub fn len(&self) -> usize {
        self.hosts.read().expect("registry lock").len()
    }

    /// Whether no host is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attaches a new session for the agent in `hello`, replacing (and ending) any session the
    /// host still had: one of the same agent run (a reconnect), or one that went quiet. A live
    /// session of another run (another machine with the same certificate) is kept and the new
    /// one refused. The session ends on its own when `shutdown` is cancelled. Returns the host,
    /// the new session's handle and the queue of commands to send over it.
    pub fn attach(
        &self,
        hello: &Hello,
        peer: &str,
        now_ms: i64,
        shutdown: &CancellationToken,
    ) -> Result<Attached, IdentityConflict> {
        let host = {
            let existing = self.get(&hello.name);
            match existing {
                Some(h) => h,
                None => {
                    let mut map = self.hosts.write().expect("registry lock");
                    map.entry(hello.name.clone())
                        .or_insert_with(|| {
                            let rec =
                                HostRecord { name: hello.name.clone(), first_seen_ms: now_ms, ..Default::default() };
                            Arc::new(Host::new(hello.name.clone(), rec))
                        })
                        .clone()
                }
            }
        };
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = SessionHandle {
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            boot_id: hello.boot_id,
            peer: peer.to_string(),
            attached_ms: now_ms,
            last_heard_ms: Arc::new(std::sync::atomic::AtomicI64::new(now_ms)),
            report_interval_ms: hello.report_interval_ms,
            cancel: shutdown.child_token(),
            ended_by: Arc::new(Mutex::new(None)),
            commands,
        };
        let replaced = host.with(|s| {
            if let Some(cur) = &s.session
                && cur.boot_id != hello.boot_id
                && cur.alive(now_ms)
            {
                return Err(IdentityConflict {
                    peer: cur.peer.clone(),
                    boot_id: cur.boot_id,
                    since_ms: cur.attached_ms,
                });
            }
            let r = &mut s.record;
            r.labels = hello.labels.clone().into_iter().collect();
            r.agent_version = hello.version.clone();
            r.os = hello.os.clone();
            r.hostname = hello.hostname.clone();
            r.report_interval_ms = hello.report_interval_ms;
            r.last_seen_ms = now_ms;
            r.peer_address = peer.to_string();
            r.allow_exec = hello.allow_exec;
            if r.first_seen_ms == 0 {
                r.first_seen_ms = now_ms;
            }
            // The Hello says which services run and on which release, so the host is listed
            // with them (and a rollout can target it) from the moment it is online, not one
            // report interval later. The rest of the newest report stands until the next.
            let mut latest = s.latest.as_deref().cloned().unwrap_or_default();
            latest.services = hello.services.clone();
            latest.jobs = hello.jobs.clone();
            s.latest = Some(Arc::new(latest));
            Ok(s.session.replace(handle.clone()))
        })?;
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        Ok((host, handle, command_rx))
    }

    /// Marks the session `generation` of `host` ended. A newer session (that replaced it) is
    /// left alone. Returns whether the host went offline.
    pub fn detach(&self, host: &Host, generation: u64, reason: &str, now_ms: i64) -> bool {
        host.with(|s| {
            if s.session.as_ref().map(|h| h.generation) != Some(generation) {
                return false;
            }
            s.session = None;
            s.record.last_seen_ms = s.record.last_seen_ms.max(now_ms);
            s.record.last_disconnect_reason = reason.to_string();
            true
        })
    }

    /// Ends the live session of `name`, if any, telling the agent `status`; returns whether
    /// there was one.
    pub fn end_session(&self, name: &str, reason: &str, status: tonic::Status) -> bool {
        let Some(host) = self.get(name) else { return false };
        let Some(handle) = host.with(|s| s.session.clone()) else { return false };
        *handle.ended_by.lock().expect("session end lock") = Some((reason.to_string(), status));
        handle.cancel.cancel();
        true
    }

    /// Forgets host `name` (its session must have ended); returns whether it was known.
    pub fn remove(&self, name: &str) -> bool {
        self.hosts.write().expect("registry lock").remove(name).is_some()
    }

    /// (online, offline) host counts.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.all();
        let online = all.iter().filter(|h| h.online()).count();
        (online, all.len() - online)
    }
}

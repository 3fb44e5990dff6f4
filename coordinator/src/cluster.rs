//! Several coordinators on etcd (docs/design.md §13): `[cluster]`, membership and leadership.
//!
//! Each coordinator holds an etcd lease of `lease_ttl`, renewed every third of it, and keeps
//! its member key (its advertise address) bound to that lease. The leader is whoever created
//! the leader key, also bound to its lease: when the leader dies or is cut off, its lease
//! runs out, the key goes, and the next campaign (each member tries every second) elects
//! another. The leader's term is the key's create revision, its [`Fence`]: every write the
//! leader makes to shared state is a transaction that holds only while the leader key still
//! has that revision, so a leader that was paused or cut off past its lease changes nothing.
//! It also stops acting on its own: [`Cluster::leader_fence`] answers only while the last
//! renewal etcd acknowledged is younger than the lease (measured from when it was sent).
//!
//! Election sits behind [`Election`]; [`EtcdElection`] is the implementation. Without
//! `[cluster]` a coordinator is alone and always the leader.

pub mod etcd;
pub mod shared;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_common::config::Section;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::etcd::{Etcd, EtcdError};

/// The default `[cluster] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a member campaigns, reads the members and checks the leader.
const TICK: Duration = Duration::from_secs(1);
/// The most members kept in memory (a cluster has three or five).
const MAX_MEMBERS: usize = 64;

/// `[cluster]` in coordinator.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's name: its keys are under `/fleet/<name>/` in etcd.
    pub name: String,
    /// The address other coordinators, agents and operators reach this one's gRPC port at.
    pub advertise: String,
    /// The etcd members' client URLs.
    pub etcd: Vec<String>,
    /// TLS to etcd (`[cluster.tls]`).
    pub tls: Option<EtcdTls>,
    /// How long a member that stops renewing its lease stays a member (and leader).
    pub lease_ttl: Duration,
}

/// `[cluster.tls]`: the CA that signed etcd's certificates, and a client certificate when etcd
/// asks for one (`--client-cert-auth`).
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
}

/// Reads `[cluster]`, recording every problem under its key.
pub fn read_config(root: &mut Section) -> Option<ClusterConfig> {
    let mut s = root.section("cluster")?;
    let name = s.required_string("name");
    if let Some(n) = &name
        && (n.is_empty()
            || n.len() > 64
            || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    {
        s.error("name", "must be 1 to 64 letters, digits, '-', '_' or '.' (it names the cluster's keys in etcd)");
    }
    let advertise = s.required_string("advertise");
    if let Some(a) = &advertise
        && !valid_host_port(a)
    {
        s.error(
            "advertise",
            format!(
                "\"{a}\" is not HOST:PORT; write the address the other coordinators and the agents reach this coordinator's gRPC port at, for example \"10.0.0.1:7443\""
            ),
        );
    }
    let etcd = s.string_list("etcd");
    match &etcd {
        None => {
            s.error("etcd", "is required: the client URLs of the etcd members, for example [\"http://10.0.0.1:2379\"]")
        }
        Some(urls) if urls.is_empty() => s.error("etcd", "lists no etcd member"),
        Some(urls) => {
            for (i, u) in urls.iter().enumerate() {
                let ok = u
                    .parse::<tonic::transport::Uri>()
                    .ok()
                    .is_some_and(|x| matches!(x.scheme_str(), Some("http" | "https")) && x.port_u16().is_some());
                if !ok {
                    s.error(
                        &format!("etcd[{i}]"),
                        format!("\"{u}\" is not an http:// or https:// URL with a port, for example \"http://10.0.0.1:2379\""),
                    );
                }
            }
        }
    }
    let lease_ttl = s.duration_in("lease_ttl", Duration::from_secs(2), Duration::from_secs(300));
    if let Some(t) = lease_ttl
        && t.subsec_nanos() != 0
    {
        s.error("lease_ttl", "must be whole seconds (etcd's leases are), for example \"10s\"");
    }
    let tls = match s.section("tls") {
        Some(mut t) => {
            let ca = t.required_path("ca");
            let cert = t.path("cert");
            let key = t.path("key");
            if cert.is_some() != key.is_some() {
                t.error(if cert.is_some() { "key" } else { "cert" }, "cert and key go together");
            }
            for (k, p) in [("ca", &ca), ("cert", &cert), ("key", &key)] {
                if let Some(p) = p
                    && let Err(e) = std::fs::metadata(p)
                {
                    t.error(k, format!("cannot read {}: {}", p.display(), fleet_common::io_reason(&e)));
                }
            }
            t.finish();
            ca.map(|ca| EtcdTls { ca, cert, key })
        }
        None => None,
    };
    if let Some(urls) = &etcd
        && tls.is_none()
        && urls.iter().any(|u| u.starts_with("https://"))
    {
        s.error(
            "tls",
            "is required for https:// etcd URLs: set [cluster.tls] ca to the CA that signed etcd's certificates",
        );
    }
    s.finish();
    Some(ClusterConfig {
        name: name?,
        advertise: advertise?,
        etcd: etcd?,
        tls,
        lease_ttl: lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
    })
}

fn valid_host_port(a: &str) -> bool {
    let Some((host, port)) = a.rsplit_once(':') else { return false };
    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// A coordinator of the cluster, as its member key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its gRPC address (`[cluster] advertise`).
    pub advertise: String,
    /// When it joined (ms since the epoch).
    pub started_ms: i64,
    /// Its version.
    pub version: String,
}

/// A leader's term: the leader key's create revision (and the lease it is bound to). Writes
/// guarded by it hold only while that term lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The revision at which this leader created the leader key.
    pub revision: i64,
    /// The leader's lease.
    pub lease: i64,
}

/// What this coordinator knows about leadership now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// No `[cluster]`: alone, and so the leader.
    Alone,
    /// This coordinator leads, for the term of `fence`.
    Leader {
        /// Its term.
        fence: Fence,
    },
    /// Another coordinator leads (`leader`: its advertise address, if one is known).
    Follower {
        /// The leader's address.
        leader: Option<String>,
    },
    /// etcd cannot be reached: nobody is known to lead.
    NoQuorum {
        /// Why, for `/health` and refusals.
        reason: String,
    },
}

/// What a campaign found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This member leads (it created the leader key now, or had already).
    Won(Fence),
    /// Another member leads.
    Lost {
        /// The leader's advertise address.
        leader: String,
    },
}

/// Leader election and membership: a lease-holding session, a campaign, the member list.
/// [`EtcdElection`] implements it on etcd.
pub trait Election: Send + Sync + 'static {
    /// Starts a session: a lease of `ttl`, returning its id.
    fn open_session(&self, ttl: Duration) -> impl Future<Output = Result<i64, EtcdError>> + Send;
    /// Renews the session's lease; false when it has expired.
    fn renew(&self, lease: i64) -> impl Future<Output = Result<bool, EtcdError>> + Send;
    /// Registers `me` as a member for as long as `lease` lives.
    fn join(&self, me: &Member, lease: i64) -> impl Future<Output = Result<(), EtcdError>> + Send;
    /// Becomes the leader if there is none; otherwise says who is.
    fn campaign(&self, me: &Member, lease: i64) -> impl Future<Output = Result<Campaign, EtcdError>> + Send;
    /// The members, ordered by address.
    fn members(&self) -> impl Future<Output = Result<Vec<Member>, EtcdError>> + Send;
    /// Ends the session (leadership and membership go with it).
    fn close_session(&self, lease: i64) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

/// [`Election`] on etcd: keys under `/fleet/<cluster>/`.
#[derive(Debug, Clone)]
pub struct EtcdElection {
    etcd: Etcd,
    prefix: String,
}

impl EtcdElection {
    /// The election of cluster `name` on `etcd`.
    pub fn new(etcd: Etcd, name: &str) -> EtcdElection {
        EtcdElection { etcd, prefix: format!("/fleet/{name}/") }
    }

    fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix)
    }
}

impl Election for EtcdElection {
    async fn open_session(&self, ttl: Duration) -> Result<i64, EtcdError> {
        self.etcd.grant(ttl).await
    }

    async fn renew(&self, lease: i64) -> Result<bool, EtcdError> {
        Ok(self.etcd.keep_alive(lease).await? > 0)
    }

    async fn join(&self, me: &Member, lease: i64) -> Result<(), EtcdError> {
        let value = serde_json::to_vec(me).expect("a member encodes");
        self.etcd.put(&format!("{}{}", self.members_prefix(), me.advertise), &value, lease).await
    }

    async fn campaign(&self, me: &Member, lease: i64) -> Result<Campaign, EtcdError> {
        use fleet_proto::etcd::response_op::Response;
        let key = self.leader_key();
        // A read first: while a leader holds the key (the steady state) a campaign writes
        // nothing, so three coordinators campaigning every second cost etcd no raft entries.
        if let Some(kv) = self.etcd.get(&key).await? {
            return Ok(if kv.lease == lease {
                Campaign::Won(Fence { revision: kv.create_revision, lease })
            } else {
                Campaign::Lost { leader: String::from_utf8_lossy(&kv.value).into_owned() }
            });
        }
        let resp = self
            .etcd
            .txn(
                vec![etcd::created_at(&key, 0)],
                vec![etcd::put_op(&key, me.advertise.as_bytes(), lease)],
                vec![etcd::get_op(&key)],
            )
            .await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        if resp.succeeded {
            return Ok(Campaign::Won(Fence { revision, lease }));
        }
        let kv = resp.responses.into_iter().find_map(|r| match r.response {
            Some(Response::ResponseRange(r)) => r.kvs.into_iter().next(),
            _ => None,
        });
        match kv {
            // The key is bound to this member's own lease: it won before (an earlier campaign
            // whose answer was lost, or the previous tick).
            Some(kv) if kv.lease == lease => Ok(Campaign::Won(Fence { revision: kv.create_revision, lease })),
            Some(kv) => Ok(Campaign::Lost { leader: String::from_utf8_lossy(&kv.value).into_owned() }),
            // Gone between the comparison and the read: the next tick campaigns again.
            None => Err(EtcdError::Refused("the leader key changed during the campaign".into())),
        }
    }

    async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let kvs = self.etcd.list(&self.members_prefix()).await?;
        Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
    }

    async fn close_session(&self, lease: i64) -> Result<(), EtcdError> {
        self.etcd.revoke(lease).await
    }
}

/// Leadership and membership as this coordinator sees them, shared by the services.
#[derive(Debug)]
pub struct Cluster {
    config: Option<ClusterConfig>,
    state: watch::Sender<Leadership>,
    /// Until when this member's lease surely lives: the send time of the last renewal etcd
    /// acknowledged, plus the lease. Past it, this member acts as if it led nothing.
    valid_until: Mutex<Option<Instant>>,
    members: Mutex<Vec<Member>>,
    /// The live members' addresses as agents dial them (`https://ADVERTISE`), for the
    /// sessions to tell their agents when they change.
    addresses: watch::Sender<Vec<String>>,
    /// Every member seen since this coordinator started (at most [`MAX_MEMBERS`]): one that
    /// left is `fleet_coordinator_cluster_member_up{member} 0`, for FleetCoordinatorDown.
    seen: Mutex<std::collections::BTreeSet<String>>,
    etcd: Option<Etcd>,
}

impl Cluster {
    /// A coordinator alone (no `[cluster]`): always the leader.
    pub fn alone() -> Arc<Cluster> {
        Arc::new(Cluster {
            config: None,
            state: watch::Sender::new(Leadership::Alone),
            valid_until: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            addresses: watch::Sender::new(Vec::new()),
            seen: Mutex::default(),
            etcd: None,
        })
    }

    /// A member of the cluster `config` describes, not yet knowing its leader. [`Cluster::run`]
    /// does the rest.
    pub fn member(config: ClusterConfig) -> Result<Arc<Cluster>, String> {
        let etcd = Etcd::new(&config.etcd, config.tls.as_ref())?;
        Ok(Arc::new(Cluster {
            config: Some(config),
            state: watch::Sender::new(Leadership::NoQuorum { reason: "connecting to etcd".into() }),
            valid_until: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            addresses: watch::Sender::new(Vec::new()),
            seen: Mutex::default(),
            etcd: Some(etcd),
        }))
    }

    /// The cluster's config, when there is one.
    pub fn config(&self) -> Option<&ClusterConfig> {
        self.config.as_ref()
    }

    /// The etcd client, when there is a cluster.
    pub fn etcd(&self) -> Option<&Etcd> {
        self.etcd.as_ref()
    }

    /// Leadership now.
    pub fn leadership(&self) -> Leadership {
        self.state.borrow().clone()
    }

    /// Changes of leadership, as they happen.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// Whether this coordinator may act as the leader now: alone, or leading with a lease that
    /// surely still lives.
    pub fn is_leader(&self) -> bool {
        match self.leadership() {
            Leadership::Alone => true,
            Leadership::Leader { .. } => self.lease_valid(),
            _ => false,
        }
    }

    /// The term to guard a write with, when this coordinator leads a cluster now.
    pub fn leader_fence(&self) -> Option<Fence> {
        match self.leadership() {
            Leadership::Leader { fence } if self.lease_valid() => Some(fence),
            _ => None,
        }
    }

    fn lease_valid(&self) -> bool {
        self.valid_until.lock().expect("cluster lock").is_some_and(|t| Instant::now() < t)
    }

    /// The leader's address: this coordinator's own when it leads.
    pub fn leader_address(&self) -> Option<String> {
        match self.leadership() {
            Leadership::Leader { .. } => self.config.as_ref().map(|c| c.advertise.clone()),
            Leadership::Follower { leader } => leader,
            _ => None,
        }
    }

    /// The members as last read from etcd.
    pub fn members(&self) -> Vec<Member> {
        self.members.lock().expect("cluster lock").clone()
    }

    /// The other live members' advertise addresses (none alone).
    pub fn peers(&self) -> Vec<String> {
        let Some(me) = &self.config else { return Vec::new() };
        self.members().into_iter().map(|m| m.advertise).filter(|a| *a != me.advertise).collect()
    }

    /// The live members' addresses (`https://ADVERTISE`, sorted; empty alone), as they
    /// change.
    pub fn watch_addresses(&self) -> watch::Receiver<Vec<String>> {
        self.addresses.subscribe()
    }

    /// This coordinator's address as agents dial it (`https://ADVERTISE`; empty alone).
    pub fn address(&self) -> String {
        self.config.as_ref().map(|c| format!("https://{}", c.advertise)).unwrap_or_default()
    }

    /// Why this coordinator will not run something only the leader runs, naming the leader to
    /// ask instead; `None` when it may.
    pub fn refusal(&self, what: &str) -> Option<String> {
        if self.is_leader() {
            return None;
        }
        Some(match self.leadership() {
            Leadership::Follower { leader: Some(l) } => {
                format!(
                    "this coordinator is not the cluster's leader, so it does not {what}; the leader is {l} (fleetctl --coordinator {l})"
                )
            }
            Leadership::NoQuorum { reason } => {
                format!("no quorum: etcd cannot be reached ({reason}), so no coordinator may {what} until it is back")
            }
            _ => format!(
                "no leader is known yet (an election is under way), so this coordinator does not {what}; try again in a few seconds"
            ),
        })
    }

    /// The state name `fleetctl status` and `/health` show: "leader", "follower",
    /// "electing" or "no_quorum" (`None` alone).
    pub fn state_name(&self) -> Option<&'static str> {
        Some(match self.leadership() {
            Leadership::Alone => return None,
            Leadership::Leader { .. } if self.lease_valid() => "leader",
            Leadership::Follower { leader: Some(_) } => "follower",
            Leadership::NoQuorum { .. } => "no_quorum",
            _ => "electing",
        })
    }

    /// Leadership, the members and etcd's members as `fleetctl status` shows them; `None`
    /// alone.
    pub async fn status(&self) -> Option<fleet_proto::v1::ClusterStatus> {
        let (config, etcd) = (self.config.as_ref()?, self.etcd.as_ref()?);
        let (etcd_up, etcd_total, _) = etcd.members_up().await;
        let detail = match self.leadership() {
            Leadership::NoQuorum { reason } => reason,
            _ => String::new(),
        };
        Some(fleet_proto::v1::ClusterStatus {
            name: config.name.clone(),
            advertise: config.advertise.clone(),
            leader: self.leader_address().unwrap_or_default(),
            is_leader: self.is_leader(),
            state: self.state_name().unwrap_or_default().to_string(),
            detail,
            members: self
                .members()
                .into_iter()
                .map(|m| fleet_proto::v1::ClusterMember {
                    advertise: m.advertise,
                    started_at_ms: m.started_ms,
                    version: m.version,
                })
                .collect(),
            etcd_up: etcd_up as u32,
            etcd_total: etcd_total as u32,
        })
    }

    fn set(&self, new: Leadership) {
        self.state.send_if_modified(|s| {
            if *s == new {
                return false;
            }
            match &new {
                Leadership::Leader { fence } => {
                    tracing::info!(term = fence.revision, "this coordinator is now the cluster's leader")
                }
                Leadership::Follower { leader: Some(l) } if matches!(s, Leadership::Leader { .. }) => {
                    tracing::warn!(leader = %l, "this coordinator is no longer the leader")
                }
                Leadership::Follower { leader: Some(l) } => tracing::info!(leader = %l, "the cluster's leader"),
                Leadership::NoQuorum { reason } => tracing::warn!(%reason, "etcd cannot be reached"),
                _ => {}
            }
            *s = new;
            true
        });
    }

    /// Takes part in the election until `shutdown`, then leaves (revoking the lease, so that
    /// another member leads at once rather than after the lease).
    pub async fn run<E: Election>(self: Arc<Self>, election: E, me: Member, shutdown: CancellationToken) {
        let Some(ttl) = self.config.as_ref().map(|c| c.lease_ttl) else { return };
        let mut backoff = Duration::from_millis(250);
        while !shutdown.is_cancelled() {
            let lease = match election.open_session(ttl).await {
                Ok(l) => l,
                Err(e) => {
                    self.set(Leadership::NoQuorum { reason: e.to_string() });
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            *self.valid_until.lock().expect("cluster lock") = Some(Instant::now() + ttl);
            let ended = self.session(&election, &me, lease, ttl, &shutdown).await;
            *self.valid_until.lock().expect("cluster lock") = None;
            if shutdown.is_cancelled() {
                let _ = tokio::time::timeout(etcd::CALL_TIMEOUT, election.close_session(lease)).await;
                return;
            }
            tracing::warn!(reason = %ended, "the coordinator's etcd session ended; starting a new one");
            self.set(Leadership::NoQuorum { reason: ended });
        }
    }

    /// One lease's life: renew it every third of `ttl`; campaign and read the members every
    /// [`TICK`]. Returns why it ended.
    async fn session<E: Election>(
        &self,
        election: &E,
        me: &Member,
        lease: i64,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> String {
        let renewals = async {
            let mut next = Instant::now() + ttl / 3;
            loop {
                tokio::time::sleep_until(next.into()).await;
                // A pause (SIGSTOP, a frozen VM) longer than the lease: whatever etcd says, the
                // lease is gone, and with it any term this member held.
                if !self.lease_valid() {
                    return format!("the lease ran out ({ttl:?} without a renewal etcd acknowledged)");
                }
                let sent = Instant::now();
                match election.renew(lease).await {
                    Ok(true) => {
                        *self.valid_until.lock().expect("cluster lock") = Some(sent + ttl);
                        next = sent + ttl / 3;
                    }
                    Ok(false) => return "etcd says the lease has expired".to_string(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the coordinator's etcd lease");
                        next = Instant::now() + TICK.min(ttl / 3);
                    }
                }
            }
        };
        let observe = async {
            let mut joined = false;
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if !self.lease_valid() {
                    // The renewals end the session; until then, this member leads nothing.
                    continue;
                }
                if !joined {
                    match election.join(me, lease).await {
                        Ok(()) => joined = true,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot register with the cluster");
                            continue;
                        }
                    }
                }
                match election.campaign(me, lease).await {
                    Ok(Campaign::Won(fence)) => self.set(Leadership::Leader { fence }),
                    Ok(Campaign::Lost { leader }) => self.set(Leadership::Follower { leader: Some(leader) }),
                    Err(e @ EtcdError::Unavailable { .. }) => self.set(Leadership::NoQuorum { reason: e.to_string() }),
                    Err(e) => tracing::debug!(error = %e, "campaign"),
                }
                if let Ok(mut m) = election.members().await {
                    m.sort_by(|a, b| a.advertise.cmp(&b.advertise));
                    m.truncate(MAX_MEMBERS);
                    let mut seen = self.seen.lock().expect("cluster lock");
                    for member in &m {
                        if seen.len() < MAX_MEMBERS {
                            seen.insert(member.advertise.clone());
                        }
                    }
                    drop(seen);
                    let addresses: Vec<String> = m.iter().map(|m| format!("https://{}", m.advertise)).collect();
                    self.addresses.send_if_modified(|a| {
                        let changed = *a != addresses;
                        *a = addresses;
                        changed
                    });
                    *self.members.lock().expect("cluster lock") = m;
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => "shutting down".into(),
            why = renewals => why,
            () = observe => "shutting down".into(),
        }
    }
}

impl crate::metrics::FmtMetrics for Cluster {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        e.family(
            "fleet_coordinator_leader",
            "gauge",
            "1 on the coordinator that leads (runs rollouts and sends commands): always, alone; the elected one of several on etcd.",
        );
        e.sample("fleet_coordinator_leader", &[], if self.is_leader() { 1.0 } else { 0.0 });
        if self.config.is_none() {
            return;
        }
        e.family(
            "fleet_coordinator_cluster_members",
            "gauge",
            "Coordinators holding a lease in the cluster, as this one last read them from etcd.",
        );
        e.sample("fleet_coordinator_cluster_members", &[], self.members().len() as f64);
        e.family(
            "fleet_coordinator_cluster_member_up",
            "gauge",
            "1 for each coordinator holding a lease in the cluster, 0 for one seen since this coordinator started that no longer does (FleetCoordinatorDown).",
        );
        let members = self.members();
        for addr in self.seen.lock().expect("cluster lock").iter() {
            let up = members.iter().any(|m| &m.advertise == addr);
            e.sample("fleet_coordinator_cluster_member_up", &[("member", addr)], if up { 1.0 } else { 0.0 });
        }
        e.family(
            "fleet_coordinator_etcd_quorum",
            "gauge",
            "1 while this coordinator reaches a working etcd (its last campaign got an answer), 0 without.",
        );
        let quorum = !matches!(self.leadership(), Leadership::NoQuorum { .. });
        e.sample("fleet_coordinator_etcd_quorum", &[], if quorum { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<ClusterConfig>, Vec<String>) {
        let (mut root, errors) = fleet_common::config::parse_toml(text).unwrap();
        let c = read_config(&mut root);
        root.finish();
        let errs = match errors.into_result(std::path::Path::new("c.toml"), ()) {
            Ok(()) => Vec::new(),
            Err(e) => e.errors.iter().map(|e| format!("{}: {}", e.key, e.message)).collect(),
        };
        (c, errs)
    }

    #[test]
    fn reads_a_cluster_with_defaults() {
        let (c, errs) = parse(
            "[cluster]\nname = \"prod\"\nadvertise = \"10.0.0.1:7443\"\netcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let c = c.unwrap();
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.etcd.len(), 2);
        assert_eq!(c.advertise, "10.0.0.1:7443");
    }

    #[test]
    fn names_every_bad_key() {
        let (_, errs) = parse(
            "[cluster]\nname = \"a b\"\nadvertise = \"10.0.0.1\"\netcd = [\"10.0.0.1:2379\", \"https://e:2379\"]\nlease_ttl = \"1500ms\"\n",
        );
        let keys: Vec<_> = errs.iter().map(|e| e.split(':').next().unwrap().to_string()).collect();
        assert_eq!(
            keys,
            ["cluster.name", "cluster.advertise", "cluster.etcd[0]", "cluster.lease_ttl", "cluster.tls"],
            "{errs:?}"
        );
        let (_, errs) = parse("[cluster]\nname = \"a\"\nadvertise = \"h:1\"\n");
        assert!(errs.iter().any(|e| e.starts_with("cluster.etcd: is required")), "{errs:?}");
    }

    #[test]
    fn alone_is_always_the_leader() {
        let c = Cluster::alone();
        assert!(c.is_leader());
        assert_eq!(c.refusal("start rollouts"), None);
        assert_eq!(c.leader_fence(), None);
    }
}

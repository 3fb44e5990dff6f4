//! The deployer (docs/design.md §5): releases of a service under its deploy root, switched atomically,
//! watched through probation, and rolled back on their own when unhealthy.
//!
//! Layout under `root`: `releases/<version>-<sha256[..8]>/`, `current` (a symbolic link to one
//! of them, replaced by rename so it is never missing or half-written), `backups/<release>/`
//! (the service's `backup_paths` as they were just before that release was switched to).
//!
//! A deploy: fetch the artifact from the coordinator and verify its sha256; unpack into
//! `releases/<id>.partial`; rename; back up `backup_paths`; write a durable *pending* record;
//! switch `current`; restart; probation (healthy within `healthy_deadline`, then healthy for
//! `min_healthy_time`); commit. Any failure after the switch rolls back: `current` goes back,
//! the backup is restored, the service restarts, and the release is marked bad with the reason.
//! An agent that starts and finds a pending record rolls back before starting any service.

pub mod unpack;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_common::tls::connect_coordinator;
use fleet_proto::v1::agent_service_client::AgentServiceClient;
use fleet_proto::v1::{FetchArtifactRequest, Release};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::config::{DeployConfig, ServiceConfig};
use crate::store::{Outbox, PendingSwitch, ReleaseRecord, ServiceReleases};
use crate::supervisor::{Action, Supervisor};

/// The largest artifact an agent fetches.
pub const MAX_ARTIFACT_BYTES: u64 = 2 << 30;

/// Attempts at fetching an artifact when the connection fails (a coordinator restarting
/// mid-deploy): 1 + 2 + 4 + 8 s of waiting in all.
const FETCH_ATTEMPTS: u32 = 5;

/// Why a fetch failed: worth another attempt, or not.
enum Fetch {
    Transient(String),
    /// The coordinator asked does not hold the artifact.
    Missing(String),
    Fatal(String),
}

/// How long a switched-to release must prove itself.
#[derive(Debug, Clone, Copy)]
pub struct Probation {
    /// Healthy for this long after becoming healthy.
    pub min_healthy_time: Duration,
    /// Healthy within this long after the switch.
    pub healthy_deadline: Duration,
}

impl Probation {
    /// From a command's milliseconds, with the defaults of docs/design.md §6 for 0.
    pub fn from_ms(min_healthy_ms: u64, deadline_ms: u64) -> Self {
        Probation {
            min_healthy_time: if min_healthy_ms == 0 {
                Duration::from_secs(10)
            } else {
                Duration::from_millis(min_healthy_ms)
            },
            healthy_deadline: if deadline_ms == 0 {
                Duration::from_secs(300)
            } else {
                Duration::from_millis(deadline_ms)
            },
        }
    }
}

/// A deploy or rollback failure: the reason and the service's last log lines.
pub type Failure = (String, Vec<String>);

/// Whether `v` is usable as a version (it becomes part of a directory name).
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

fn io(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {}", p.display(), fleet_common::io_reason(&e))
}

/// Points `root/current` at `releases/<id>` (or removes it for `None`) atomically: a new link
/// under a temporary name, renamed over `current`, and the directory synced.
pub fn switch_current(root: &Path, id: Option<&str>) -> Result<(), String> {
    let current = root.join("current");
    match id {
        Some(id) => {
            let tmp = root.join(".current.tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp).map_err(|e| io("cannot link", &tmp, e))?;
            std::fs::rename(&tmp, &current).map_err(|e| io("cannot switch", &current, e))?;
        }
        None => match std::fs::remove_file(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &current, e)),
        },
    }
    unpack::sync_dir(root).map_err(|e| e.to_string())
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        std::fs::set_permissions(dst, meta.permissions())?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(src, dst).map(|_| ())
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a backup holds: each backup path and whether it existed.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    paths: Vec<(PathBuf, bool)>,
}

/// Copies `backup_paths` into `dir` (replacing what was there).
fn take_backup(cfg: &DeployConfig, dir: &Path) -> Result<(), String> {
    remove_any(dir).map_err(|e| io("cannot clear", dir, e))?;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let mut manifest = Manifest { paths: Vec::new() };
    for (i, p) in cfg.backup_paths.iter().enumerate() {
        let exists = std::fs::symlink_metadata(p).is_ok();
        if exists {
            copy_tree(p, &dir.join(i.to_string())).map_err(|e| io("cannot back up", p, e))?;
        }
        manifest.paths.push((p.clone(), exists));
    }
    let json = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let mf = dir.join("manifest.json");
    let mut f = std::fs::File::create(&mf).map_err(|e| io("cannot write", &mf, e))?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(|e| io("cannot write", &mf, e))?;
    Ok(())
}

/// Puts `backup_paths` back as the backup in `dir` recorded them.
fn restore_backup(dir: &Path) -> Result<(), String> {
    let mf = dir.join("manifest.json");
    let text = std::fs::read(&mf).map_err(|e| io("cannot read", &mf, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", mf.display()))?;
    for (i, (p, existed)) in manifest.paths.iter().enumerate() {
        remove_any(p).map_err(|e| io("cannot remove", p, e))?;
        if *existed {
            copy_tree(&dir.join(i.to_string()), p).map_err(|e| io("cannot restore", p, e))?;
        }
    }
    Ok(())
}

/// Runs deploys and rollbacks for every deployable service.
#[derive(Debug)]
pub struct Deployer {
    store: Arc<Outbox>,
    supervisor: Arc<Supervisor>,
    artifacts: PathBuf,
    /// Where artifacts come from: each coordinator in turn, from one attempt to the next.
    coordinators: Arc<crate::coordinators::Coordinators>,
    credentials: Arc<crate::credentials::Credentials>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Rolls back switches left pending by an agent that stopped mid-deploy. Runs before any
/// service starts, so the service starts on the release it had before.
pub fn recover(store: &Outbox, services: &[ServiceConfig]) {
    for svc in services {
        let Some(cfg) = &svc.deploy else { continue };
        let mut st = match store.releases(&svc.name) {
            Ok(st) => st,
            Err(e) => {
                tracing::error!(service = %svc.name, error = %e, "cannot read the release state");
                continue;
            }
        };
        let Some(p) = st.pending.take() else { continue };
        tracing::warn!(service = %svc.name, release = %p.to, "found an unfinished deploy: rolling back before starting the service");
        if let Err(e) = switch_current(&cfg.root, p.from.as_deref()) {
            tracing::error!(service = %svc.name, error = %e, "cannot switch back");
        }
        if let Err(e) = restore_backup(&p.backup) {
            tracing::error!(service = %svc.name, error = %e, "cannot restore the backup");
        }
        if let Some(r) = st.releases.iter_mut().find(|r| r.id == p.to) {
            r.bad = true;
            r.reason = "the agent stopped before the release passed its probation".into();
        }
        st.current = p.from;
        if let Err(e) = store.save_releases_blocking(&svc.name, &st) {
            tracing::error!(service = %svc.name, error = %e, "cannot save the release state");
        }
    }
}

impl Deployer {
    /// A deployer fetching artifacts from `coordinators` (the first that has it) with the
    /// agent's `credentials`.
    pub fn new(
        store: Arc<Outbox>,
        supervisor: Arc<Supervisor>,
        data_dir: &Path,
        coordinators: Arc<crate::coordinators::Coordinators>,
        credentials: Arc<crate::credentials::Credentials>,
    ) -> Deployer {
        Deployer {
            store,
            supervisor,
            artifacts: data_dir.join("artifacts"),
            coordinators,
            credentials,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("deploy locks").entry(service.to_string()).or_default().clone()
    }

    fn config(&self, service: &str) -> Result<(ServiceConfig, DeployConfig), Failure> {
        let h = self
            .supervisor
            .get(service)
            .ok_or_else(|| (format!("no service named \"{service}\" on this host"), Vec::new()))?;
        let d = h.config.deploy.clone().ok_or_else(|| {
            (
                format!("{service} has no [services.deploy] section in this agent's config: it cannot be deployed"),
                Vec::new(),
            )
        })?;
        Ok((h.config.clone(), d))
    }

    /// The committed version of every deployed service.
    pub fn versions(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for h in self.supervisor.all() {
            if h.config.deploy.is_none() {
                continue;
            }
            if let Ok(st) = self.store.releases(&h.config.name) {
                let v = st.version_of(&st.current);
                if st.current.is_some() {
                    out.insert(h.config.name.clone(), v);
                }
            }
        }
        out
    }

    /// A service's releases.
    pub fn releases(&self, service: &str) -> Result<Vec<Release>, Failure> {
        self.config(service)?;
        self.store.releases(service).map(|s| s.to_proto()).map_err(|e| (e.to_string(), Vec::new()))
    }

    /// Fetches an artifact from the coordinator, retrying what a coordinator restart or a
    /// dropped connection causes ([`FETCH_ATTEMPTS`] attempts, 1 s apart and doubling); a
    /// missing artifact, a wrong size or digest, or a local error fails at once.
    #[tracing::instrument(target = "fleet_otel", name = "deploy.fetch", skip_all, fields(sha256 = %sha256, size))]
    async fn fetch(&self, sha256: &str, size: u64) -> Result<PathBuf, String> {
        let mut delay = std::time::Duration::from_secs(1);
        let mut attempt = 1;
        let coordinators = self.coordinators.all();
        let n = coordinators.len().max(1);
        loop {
            let from = &coordinators[(attempt - 1) % n];
            match self.fetch_once(from, sha256, size).await {
                // Another coordinator may have it (each keeps the artifacts uploaded to it).
                Err(Fetch::Missing(e)) if attempt < n => {
                    tracing::warn!(artifact = %sha256, coordinator = %from, error = %e, "artifact not on this coordinator; trying the next");
                    attempt += 1;
                }
                Err(Fetch::Transient(e)) if attempt < (FETCH_ATTEMPTS as usize).max(n) => {
                    tracing::warn!(artifact = %sha256, attempt, error = %e, "artifact fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(Fetch::Transient(e) | Fetch::Fatal(e) | Fetch::Missing(e)) => return Err(e),
                Ok(p) => return Ok(p),
            }
        }
    }

    async fn fetch_once(&self, coordinator: &str, sha256: &str, size: u64) -> Result<PathBuf, Fetch> {
        let transient = |s: tonic::Status, what: &str| {
            let msg = format!("{what} {sha256}: {}", s.message());
            match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted => Fetch::Transient(msg),
                tonic::Code::NotFound => Fetch::Missing(msg),
                _ => Fetch::Fatal(msg),
            }
        };
        if size > MAX_ARTIFACT_BYTES {
            return Err(Fetch::Fatal(format!(
                "the artifact is {}, over this agent's limit of {}",
                fleet_common::human_bytes(size),
                fleet_common::human_bytes(MAX_ARTIFACT_BYTES)
            )));
        }
        std::fs::create_dir_all(&self.artifacts).map_err(|e| Fetch::Fatal(io("cannot create", &self.artifacts, e)))?;
        let dest = self.artifacts.join(format!("{sha256}.tar.gz"));
        let partial = self.artifacts.join(format!("{sha256}.partial"));
        let channel = connect_coordinator(coordinator, &self.credentials.current())
            .await
            .map_err(|e| Fetch::Transient(format!("cannot fetch artifact {sha256}: {e}")))?;
        let mut stream = AgentServiceClient::new(channel)
            .fetch_artifact(FetchArtifactRequest { sha256: sha256.to_string() })
            .await
            .map_err(|s| transient(s, "cannot fetch artifact"))?
            .into_inner();
        let mut file = std::fs::File::create(&partial).map_err(|e| Fetch::Fatal(io("cannot create", &partial, e)))?;
        let mut hasher = sha2::Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| transient(s, "fetching artifact"))? {
            got += chunk.data.len() as u64;
            if got > size.max(1) {
                let _ = std::fs::remove_file(&partial);
                return Err(Fetch::Fatal(format!("artifact {sha256} is larger than announced ({size} bytes)")));
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).map_err(|e| Fetch::Fatal(io("cannot write", &partial, e)))?;
        }
        file.sync_all().map_err(|e| Fetch::Fatal(io("cannot sync", &partial, e)))?;
        let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if digest != sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(Fetch::Fatal(format!(
                "sha256 mismatch: expected {sha256}, the fetched artifact has {digest}; nothing was unpacked"
            )));
        }
        std::fs::rename(&partial, &dest).map_err(|e| Fetch::Fatal(io("cannot rename", &partial, e)))?;
        Ok(dest)
    }

    /// Deploys `version` (artifact `sha256`) of `service`.
    #[tracing::instrument(target = "fleet_otel", name = "deploy", skip_all, fields(service = %service, version = %version))]
    pub async fn deploy(
        &self,
        service: &str,
        version: &str,
        sha256: &str,
        size: u64,
        probation: Probation,
    ) -> Result<String, Failure> {
        let (_svc, cfg) = self.config(service)?;
        if !valid_version(version) {
            return Err((
                format!("invalid version \"{version}\": use letters, digits, '.', '_', '+' and '-'"),
                Vec::new(),
            ));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((format!("invalid sha256 \"{sha256}\""), Vec::new()));
        }
        let lock = self.lock(service);
        let _guard = lock.lock().await;
        let id = format!("{version}-{}", &sha256[..8]);
        let mut st = self.store.releases(service).map_err(|e| (e.to_string(), Vec::new()))?;
        if st.current.as_deref() == Some(id.as_str()) {
            return Ok(format!("{service} {version} is already the current release"));
        }
        let releases = cfg.root.join("releases");
        std::fs::create_dir_all(&releases).map_err(|e| (io("cannot create", &releases, e), Vec::new()))?;
        let dir = releases.join(&id);
        if !dir.exists() {
            let archive = self.fetch(sha256, size).await.map_err(|e| (e, Vec::new()))?;
            let partial = releases.join(format!("{id}.partial"));
            let _ = std::fs::remove_dir_all(&partial);
            let a = archive.clone();
            let p = partial.clone();
            let limits = unpack::Limits { max_bytes: cfg.max_size, max_files: cfg.max_files };
            let unpacked = tokio::task::spawn_blocking(move || unpack::unpack(&a, &p, limits))
                .await
                .map_err(|e| (e.to_string(), Vec::new()))?;
            let _ = std::fs::remove_file(&archive);
            unpacked.map_err(|e| (format!("the artifact of {service} {version} was refused: {e}"), Vec::new()))?;
            std::fs::rename(&partial, &dir).map_err(|e| (io("cannot rename", &partial, e), Vec::new()))?;
            unpack::sync_dir(&releases).map_err(|e| (e.to_string(), Vec::new()))?;
        }
        let now = fleet_common::now_ms();
        st.releases.retain(|r| r.id != id);
        st.releases.push(ReleaseRecord {
            id: id.clone(),
            version: version.into(),
            sha256: sha256.into(),
            deployed_at_ms: now,
            bad: false,
            reason: String::new(),
        });
        self.switch(service, &cfg, st, &id, None, probation).await
    }

    /// Switches `service` back to `to_version` (empty: the previous release).
    #[tracing::instrument(target = "fleet_otel", name = "rollback", skip_all, fields(service = %service, to = %to_version))]
    pub async fn rollback(&self, service: &str, to_version: &str, probation: Probation) -> Result<String, Failure> {
        let (_svc, cfg) = self.config(service)?;
        let lock = self.lock(service);
        let _guard = lock.lock().await;
        let mut st = self.store.releases(service).map_err(|e| (e.to_string(), Vec::new()))?;
        let target = if to_version.is_empty() {
            st.previous
                .clone()
                .ok_or_else(|| (format!("{service} has no previous release to roll back to"), Vec::new()))?
        } else {
            st.releases.iter().rev().find(|r| r.version == to_version).map(|r| r.id.clone()).ok_or_else(|| {
                let have: Vec<_> = st.releases.iter().map(|r| r.version.as_str()).collect();
                (
                    format!("{service} has no release {to_version} on this host (it has: {})", have.join(", ")),
                    Vec::new(),
                )
            })?
        };
        if st.current.as_deref() == Some(target.as_str()) {
            return Ok(format!("{service} {} is already the current release", st.version_of(&Some(target))));
        }
        // Going back to the previous release also puts back the files as they were before the
        // current one was deployed.
        let restore = (st.previous.as_deref() == Some(target.as_str()))
            .then(|| st.current.as_ref().map(|c| cfg.root.join("backups").join(c)))
            .flatten()
            .filter(|p| p.join("manifest.json").exists());
        if let Some(r) = st.releases.iter_mut().find(|r| r.id == target) {
            r.deployed_at_ms = fleet_common::now_ms();
        }
        let from = st.current.clone();
        let msg = self.switch(service, &cfg, st, &target, restore, probation).await?;
        if let Some(from) = from {
            // The release rolled back from is marked bad, so it is not mistaken for a good one.
            let mut st = self.store.releases(service).map_err(|e| (e.to_string(), Vec::new()))?;
            if let Some(r) = st.releases.iter_mut().find(|r| r.id == from) {
                r.bad = true;
                r.reason = "rolled back by an operator".into();
            }
            self.store.save_releases(service, &st).await.map_err(|e| (e.to_string(), Vec::new()))?;
        }
        Ok(msg)
    }

    /// The transaction: backup, pending record, switch, restart, probation, then commit or
    /// roll back.
    #[tracing::instrument(target = "fleet_otel", name = "deploy.switch", skip_all, fields(service = %service, to = %to))]
    async fn switch(
        &self,
        service: &str,
        cfg: &DeployConfig,
        mut st: ServiceReleases,
        to: &str,
        restore: Option<PathBuf>,
        probation: Probation,
    ) -> Result<String, Failure> {
        let version = st.version_of(&Some(to.to_string()));
        let from = st.current.clone();
        let backup = cfg.root.join("backups").join(to);
        take_backup(cfg, &backup).map_err(|e| (e, Vec::new()))?;
        st.pending = Some(PendingSwitch { to: to.to_string(), from: from.clone(), backup: backup.clone() });
        self.store.save_releases(service, &st).await.map_err(|e| (e.to_string(), Vec::new()))?;
        crate::failpoint::hit(crate::failpoint::AFTER_PENDING);
        switch_current(&cfg.root, Some(to)).map_err(|e| (e, Vec::new()))?;
        crate::failpoint::hit(crate::failpoint::AFTER_SWITCH);
        if let Some(r) = &restore
            && let Err(e) = restore_backup(r)
        {
            tracing::warn!(service, error = %e, "cannot restore the files of the earlier release");
        }
        tracing::info!(service, release = to, "switched; restarting for probation");
        match self.probation(service, probation).await {
            Ok(()) => {
                st.previous = from;
                st.current = Some(to.to_string());
                st.pending = None;
                if let Some(r) = st.releases.iter_mut().find(|r| r.id == to) {
                    r.bad = false;
                    r.reason.clear();
                }
                self.collect_garbage(cfg, &mut st);
                self.store.save_releases(service, &st).await.map_err(|e| (e.to_string(), Vec::new()))?;
                Ok(format!("{service} {version} is running and passed its probation"))
            }
            Err((reason, tail)) => {
                tracing::warn!(service, release = to, %reason, "probation failed; rolling back");
                let back = st.version_of(&from);
                let mut notes = Vec::new();
                if let Err(e) = switch_current(&cfg.root, from.as_deref()) {
                    notes.push(e);
                }
                if let Err(e) = restore_backup(&backup) {
                    notes.push(e);
                }
                if let Some(r) = st.releases.iter_mut().find(|r| r.id == to) {
                    r.bad = true;
                    r.reason = reason.clone();
                }
                st.pending = None;
                // Bad releases count against keep_releases too: a run of failed deploys must
                // not fill the disk before the next good one.
                self.collect_garbage(cfg, &mut st);
                self.store.save_releases(service, &st).await.map_err(|e| (e.to_string(), Vec::new()))?;
                if from.is_some() {
                    if let Err((e, _)) = self
                        .supervisor
                        .request(service, Action::Restart, "the deployer", probation.healthy_deadline)
                        .await
                    {
                        notes.push(format!("after the rollback: {e}"));
                    }
                } else {
                    let _ =
                        self.supervisor.request(service, Action::Stop, "the deployer", Duration::from_secs(60)).await;
                }
                let extra = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
                Err((format!("{service} {version} {reason}; rolled back to {back}{extra}"), tail))
            }
        }
    }

    /// Restart, healthy within the deadline, then healthy for min_healthy_time.
    #[tracing::instrument(target = "fleet_otel", name = "deploy.probation", skip_all, fields(service = %service))]
    async fn probation(&self, service: &str, p: Probation) -> Result<(), Failure> {
        let h = self.supervisor.get(service).expect("checked by config()");
        // A failure shows what the new release wrote, never the old release's last words.
        let since = fleet_common::now_ms();
        self.supervisor.request(service, Action::Restart, "the deployer", p.healthy_deadline).await.map_err(
            |(reason, _)| {
                // The supervisor's reasons start with the service name.
                let reason = reason.strip_prefix(service).map(|r| r.trim_start().to_string()).unwrap_or(reason);
                (reason, h.log.output_since(since, 10))
            },
        )?;
        let start = h.report();
        let until = tokio::time::Instant::now() + p.min_healthy_time;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100).min(p.min_healthy_time)).await;
            let now = h.report();
            if now.state != "running" || !now.healthy || now.pid != start.pid {
                let why = if now.message.is_empty() { now.state.clone() } else { now.message.clone() };
                return Err((
                    format!("did not stay healthy for {}: {why}", fleet_common::human_duration_ms(p.min_healthy_time)),
                    h.log.output_since(since, 10),
                ));
            }
        }
        Ok(())
    }

    /// Keeps keep_releases releases, never removing the current or the previous one.
    fn collect_garbage(&self, cfg: &DeployConfig, st: &mut ServiceReleases) {
        while st.releases.len() > cfg.keep_releases as usize {
            let Some(pos) = st
                .releases
                .iter()
                .position(|r| Some(&r.id) != st.current.as_ref() && Some(&r.id) != st.previous.as_ref())
            else {
                break;
            };
            let r = st.releases.remove(pos);
            let _ = std::fs::remove_dir_all(cfg.root.join("releases").join(&r.id));
            let _ = std::fs::remove_dir_all(cfg.root.join("backups").join(&r.id));
            tracing::info!(release = %r.id, "removed an old release");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_current_is_atomic_and_reversible() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("releases/1.0-aaaaaaaa")).unwrap();
        std::fs::create_dir_all(root.join("releases/2.0-bbbbbbbb")).unwrap();
        switch_current(root, Some("1.0-aaaaaaaa")).unwrap();
        assert_eq!(std::fs::read_link(root.join("current")).unwrap(), Path::new("releases/1.0-aaaaaaaa"));
        switch_current(root, Some("2.0-bbbbbbbb")).unwrap();
        assert_eq!(std::fs::read_link(root.join("current")).unwrap(), Path::new("releases/2.0-bbbbbbbb"));
        assert!(!root.join(".current.tmp").exists());
        switch_current(root, None).unwrap();
        assert!(std::fs::symlink_metadata(root.join("current")).is_err());
    }

    #[test]
    fn backups_restore_files_and_remove_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        let added = dir.path().join("added");
        std::fs::create_dir_all(conf.join("sub")).unwrap();
        std::fs::write(conf.join("sub/a.toml"), "v1").unwrap();
        let cfg = DeployConfig {
            root: dir.path().join("root"),
            keep_releases: 5,
            backup_paths: vec![conf.clone(), added.clone()],
            max_size: 1 << 20,
            max_files: 100,
        };
        let b = dir.path().join("backup");
        take_backup(&cfg, &b).unwrap();
        std::fs::write(conf.join("sub/a.toml"), "v2").unwrap();
        std::fs::write(conf.join("new.toml"), "x").unwrap();
        std::fs::write(&added, "created by v2").unwrap();
        restore_backup(&b).unwrap();
        assert_eq!(std::fs::read_to_string(conf.join("sub/a.toml")).unwrap(), "v1");
        assert!(!conf.join("new.toml").exists());
        assert!(!added.exists(), "a path that did not exist before is removed");
    }

    fn release(id: &str) -> ReleaseRecord {
        let version = id.split('-').next().unwrap().to_string();
        ReleaseRecord {
            id: id.into(),
            version,
            sha256: String::new(),
            deployed_at_ms: 0,
            bad: false,
            reason: String::new(),
        }
    }

    /// Invariant 10: an agent that stopped after writing the pending record, before or after
    /// switching `current`, rolls back at its next start: `current` on the earlier release,
    /// its files restored, the new release marked bad, nothing pending.
    #[tokio::test]
    async fn recover_rolls_back_an_unfinished_switch_wherever_it_stopped() {
        for (from, switched) in [(Some("1.0-aaaaaaaa"), false), (Some("1.0-aaaaaaaa"), true), (None, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (root, conf) = (dir.path().join("app"), dir.path().join("conf"));
            for id in ["1.0-aaaaaaaa", "2.0-bbbbbbbb"] {
                std::fs::create_dir_all(root.join("releases").join(id)).unwrap();
            }
            std::fs::create_dir_all(&conf).unwrap();
            std::fs::write(conf.join("app.conf"), "before").unwrap();
            switch_current(&root, from).unwrap();
            let cfg = DeployConfig {
                root: root.clone(),
                keep_releases: 5,
                backup_paths: vec![conf.clone()],
                max_size: 1 << 20,
                max_files: 100,
            };
            let service = ServiceConfig {
                name: "app".into(),
                command: "bin/start".into(),
                args: Vec::new(),
                env: Default::default(),
                workdir: None,
                user: None,
                restart: crate::config::RestartPolicy::OnFailure,
                start_secs: Duration::from_secs(1),
                start_retries: 5,
                stop_signal: "TERM".into(),
                stop_timeout: Duration::from_secs(10),
                memory_max: None,
                log_max_bytes: 1 << 20,
                log_backups: 1,
                health: None,
                deploy: Some(cfg.clone()),
            };
            let (store, _) = Outbox::open(&dir.path().join("data"), Default::default()).unwrap();
            // The switch as far as it got: backup, pending record, maybe the switch itself.
            let backup = root.join("backups/2.0-bbbbbbbb");
            take_backup(&cfg, &backup).unwrap();
            let st = ServiceReleases {
                releases: vec![release("1.0-aaaaaaaa"), release("2.0-bbbbbbbb")],
                current: from.map(str::to_string),
                previous: None,
                pending: Some(PendingSwitch { to: "2.0-bbbbbbbb".into(), from: from.map(str::to_string), backup }),
            };
            store.save_releases("app", &st).await.unwrap();
            if switched {
                switch_current(&root, Some("2.0-bbbbbbbb")).unwrap();
                std::fs::write(conf.join("app.conf"), "written by 2.0").unwrap();
            }

            recover(&store, &[service]);

            let case = format!("from {from:?}, switched {switched}");
            match from {
                Some(f) => assert_eq!(
                    std::fs::read_link(root.join("current")).unwrap(),
                    Path::new("releases").join(f),
                    "{case}"
                ),
                None => assert!(std::fs::symlink_metadata(root.join("current")).is_err(), "{case}: nothing to run"),
            }
            assert_eq!(std::fs::read_to_string(conf.join("app.conf")).unwrap(), "before", "{case}: files restored");
            let after = store.releases("app").unwrap();
            assert_eq!(after.pending, None, "{case}");
            assert_eq!(after.current.as_deref(), from, "{case}");
            assert!(after.record("2.0-bbbbbbbb").unwrap().bad, "{case}: the new release is marked bad");
        }
    }

    #[test]
    fn versions_must_be_safe_names() {
        assert!(valid_version("1.4.2+build-7"));
        assert!(!valid_version("../1"));
        assert!(!valid_version(""));
        assert!(!valid_version("a b"));
    }
}

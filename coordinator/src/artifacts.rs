//! Content-addressed artifacts (docs/design.md §6): release archives stored under
//! `data_dir/artifacts/<sha256>`, written through a temporary file and kept only once their
//! digest and size are checked. Agents fetch them by digest; blobs that no rollout and no
//! current or previous release needs are removed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::upload_artifact_request::Part;
use fleet_proto::v1::{ArtifactHeader, UploadArtifactRequest};
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::store::{RolloutRecord, RolloutState};

/// How long a peer coordinator may take to connect, or between two chunks of an artifact.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// The artifact store.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    max_bytes: u64,
    /// One fetch from the other coordinators per artifact at a time: the agents of a rollout
    /// asking at once for one this coordinator lacks wait for a single transfer.
    fetching: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Whether `s` is a lowercase hex sha256.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Artifacts {
    /// Opens (creating) `data_dir/artifacts`; uploads larger than `max_bytes` are refused.
    pub fn open(data_dir: &Path, max_bytes: u64) -> std::io::Result<Artifacts> {
        let dir = data_dir.join("artifacts");
        std::fs::create_dir_all(&dir)?;
        // Uploads cut short by a crash leave temporary files; they are worthless.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Artifacts { dir, max_bytes, fetching: Default::default() })
    }

    /// The file of artifact `sha256`.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The size of artifact `sha256`, if held.
    pub fn stat(&self, sha256: &str) -> Option<u64> {
        if !valid_sha256(sha256) {
            return None;
        }
        std::fs::metadata(self.path(sha256)).ok().map(|m| m.len())
    }

    /// Stores an upload whose first message was `header`. Returns (size, existed).
    pub async fn store(
        &self,
        header: ArtifactHeader,
        mut rest: Streaming<UploadArtifactRequest>,
    ) -> Result<(u64, bool), Status> {
        if !valid_sha256(&header.sha256) {
            return Err(Status::invalid_argument(format!("\"{}\" is not a lowercase hex sha256", header.sha256)));
        }
        if header.size_bytes > self.max_bytes {
            return Err(Status::invalid_argument(format!(
                "the artifact is {}, over the coordinator's limit of {} ([artifacts] max_bytes)",
                fleet_common::human_bytes(header.size_bytes),
                fleet_common::human_bytes(self.max_bytes)
            )));
        }
        if let Some(size) = self.stat(&header.sha256) {
            return Ok((size, true));
        }
        let partial = self.dir.join(format!("{}.{}.partial", header.sha256, crate::commands::new_id()));
        let result = self.receive(&header, &mut rest, &partial).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        let size = result?;
        std::fs::rename(&partial, self.path(&header.sha256))
            .map_err(|e| Status::internal(format!("cannot keep the artifact: {e}")))?;
        Ok((size, false))
    }

    async fn receive(
        &self,
        header: &ArtifactHeader,
        rest: &mut Streaming<UploadArtifactRequest>,
        partial: &Path,
    ) -> Result<u64, Status> {
        let mut file =
            std::fs::File::create(partial).map_err(|e| Status::internal(format!("cannot store the artifact: {e}")))?;
        let mut hasher = sha2::Sha256::new();
        let mut got = 0u64;
        while let Some(msg) = rest.message().await? {
            let Some(Part::Data(data)) = msg.part else {
                return Err(Status::invalid_argument("only data may follow the header"));
            };
            got += data.len() as u64;
            if got > header.size_bytes || got > self.max_bytes {
                return Err(Status::invalid_argument(format!(
                    "the upload is larger than the announced {} bytes",
                    header.size_bytes
                )));
            }
            hasher.update(&data);
            file.write_all(&data).map_err(|e| Status::internal(format!("cannot store the artifact: {e}")))?;
        }
        if got != header.size_bytes {
            return Err(Status::invalid_argument(format!(
                "the upload ended after {got} of {} bytes",
                header.size_bytes
            )));
        }
        let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if digest != header.sha256 {
            return Err(Status::invalid_argument(format!(
                "sha256 mismatch: announced {}, received {digest}",
                header.sha256
            )));
        }
        file.sync_all().map_err(|e| Status::internal(format!("cannot store the artifact: {e}")))?;
        Ok(got)
    }

    /// Fetches artifact `sha256` from the first of `peers` (other coordinators' gRPC
    /// addresses) that holds it, checks its digest and size against this store's limit, and
    /// keeps it. Returns whether it is here now, and what each peer said when not.
    pub async fn fetch_from_peers(
        &self,
        sha256: &str,
        peers: &[String],
        tls: &fleet_common::tls::TlsMaterial,
    ) -> Result<u64, String> {
        let gate = self.fetching.lock().expect("fetching lock").entry(sha256.to_string()).or_default().clone();
        let result = {
            let _one = gate.lock().await;
            // Fetched meanwhile by the caller that held the gate.
            match self.stat(sha256) {
                Some(size) => Ok(size),
                None => self.fetch_once_from_peers(sha256, peers, tls).await,
            }
        };
        let mut fetching = self.fetching.lock().expect("fetching lock");
        // The last one out removes the gate (the map holds one, this caller another).
        if Arc::strong_count(&gate) <= 2 {
            fetching.remove(sha256);
        }
        result
    }

    async fn fetch_once_from_peers(
        &self,
        sha256: &str,
        peers: &[String],
        tls: &fleet_common::tls::TlsMaterial,
    ) -> Result<u64, String> {
        let mut why = Vec::new();
        for peer in peers {
            match self.fetch_from(sha256, peer, tls).await {
                Ok(size) => {
                    tracing::info!(artifact = %sha256, %peer, size, "fetched an artifact from another coordinator");
                    return Ok(size);
                }
                Err(e) => why.push(format!("{peer}: {e}")),
            }
        }
        Err(if why.is_empty() { "no other coordinator to ask".into() } else { why.join("; ") })
    }

    /// Whether `peer` (another coordinator's advertise address) holds artifact `sha256`;
    /// with `fetch`, it first fetches it from the coordinators that do.
    pub async fn peer_holds(
        sha256: &str,
        peer: &str,
        tls: &fleet_common::tls::TlsMaterial,
        fetch: bool,
    ) -> Result<bool, String> {
        use fleet_proto::v1::control_service_client::ControlServiceClient;
        let url = format!("https://{peer}");
        let ask = async {
            let channel = fleet_common::tls::connect_coordinator(&url, tls).await.map_err(|e| e.to_string())?;
            let r = ControlServiceClient::new(channel)
                .stat_artifact(fleet_proto::v1::StatArtifactRequest { sha256: sha256.to_string(), fetch })
                .await
                .map_err(|s| s.message().to_string())?;
            Ok(r.into_inner().exists)
        };
        let wait = if fetch { REPLICA_WAIT } else { PEER_TIMEOUT };
        tokio::time::timeout(wait, ask).await.map_err(|_| format!("no answer within {wait:?}"))?
    }

    async fn fetch_from(&self, sha256: &str, peer: &str, tls: &fleet_common::tls::TlsMaterial) -> Result<u64, String> {
        use fleet_proto::v1::agent_service_client::AgentServiceClient;
        let url = format!("https://{peer}");
        let channel = tokio::time::timeout(PEER_TIMEOUT, fleet_common::tls::connect_coordinator(&url, tls))
            .await
            .map_err(|_| format!("no answer within {PEER_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let mut stream = AgentServiceClient::new(channel)
            .fetch_artifact(fleet_proto::v1::FetchArtifactRequest { sha256: sha256.to_string() })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let partial = self.dir.join(format!("{sha256}.{}.partial", crate::commands::new_id()));
        let result = async {
            let mut file = std::fs::File::create(&partial).map_err(|e| format!("cannot store it: {e}"))?;
            let mut hasher = sha2::Sha256::new();
            let mut got = 0u64;
            loop {
                let chunk = tokio::time::timeout(PEER_TIMEOUT, stream.message())
                    .await
                    .map_err(|_| format!("the transfer stalled for {PEER_TIMEOUT:?}"))?
                    .map_err(|s| s.message().to_string())?;
                let Some(chunk) = chunk else { break };
                got += chunk.data.len() as u64;
                if got > self.max_bytes {
                    return Err(format!(
                        "it is larger than this coordinator's limit of {} ([artifacts] max_bytes)",
                        fleet_common::human_bytes(self.max_bytes)
                    ));
                }
                hasher.update(&chunk.data);
                file.write_all(&chunk.data).map_err(|e| format!("cannot store it: {e}"))?;
            }
            let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if digest != sha256 {
                return Err(format!("sha256 mismatch: the peer sent {digest}"));
            }
            file.sync_all().map_err(|e| format!("cannot store it: {e}"))?;
            Ok(got)
        }
        .await;
        match result {
            Ok(got) => {
                std::fs::rename(&partial, self.path(sha256)).map_err(|e| format!("cannot keep it: {e}"))?;
                Ok(got)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }

    /// Removes every blob not in `keep`.
    pub fn collect_garbage(&self, keep: &HashSet<String>) -> usize {
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_sha256(&name) && !keep.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
                tracing::info!(sha256 = %name, "removed an artifact no rollout or release needs");
                removed += 1;
            }
        }
        removed
    }
}

/// How long after a start the artifact collector first runs: time for the agents to attach
/// and say which releases they run, so that none is taken for unused.
const ARTIFACT_GC_DELAY: Duration = Duration::from_secs(600);

/// The artifacts to keep: those unfinished rollouts need, every host's current release and
/// the release before it (as the rollout that moved the host there recorded it), and the two
/// newest succeeded rollouts of each service. `running` is (host, service, version) of what
/// hosts report running.
pub fn artifacts_to_keep(
    rollouts: &[RolloutRecord],
    running: &[(String, String, String)],
) -> std::collections::HashSet<String> {
    use std::collections::HashSet;
    let mut keep: HashSet<String> = rollouts.iter().filter(|r| !r.finished()).map(|r| r.sha256.clone()).collect();
    let artifact_of = |service: &str, version: &str| -> Vec<String> {
        rollouts.iter().filter(|r| r.service == service && r.version == version).map(|r| r.sha256.clone()).collect()
    };
    for (host, service, version) in running {
        keep.extend(artifact_of(service, version));
        // The newest rollout that moved this host to its current version knows what it had.
        let previous = rollouts
            .iter()
            .filter(|r| &r.service == service && &r.version == version)
            .filter_map(|r| {
                r.hosts.iter().find(|h| &h.host == host).map(|h| (r.created_at_ms, h.previous_version.clone()))
            })
            .max_by_key(|(at, _)| *at)
            .map(|(_, p)| p);
        if let Some(p) = previous.filter(|p| !p.is_empty()) {
            keep.extend(artifact_of(service, &p));
        }
    }
    let mut per_service: std::collections::HashMap<&str, usize> = Default::default();
    let mut newest_first: Vec<&RolloutRecord> = rollouts.iter().collect();
    newest_first.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
    for r in newest_first {
        let n = per_service.entry(r.service.as_str()).or_default();
        if *n < 2 && r.state == RolloutState::Succeeded {
            keep.insert(r.sha256.clone());
            *n += 1;
        }
    }
    keep
}

/// Removes artifacts that nothing needs ([`artifacts_to_keep`]) every minute, from
/// [`ARTIFACT_GC_DELAY`] after the start on.
pub async fn collect_garbage_every_minute(
    artifacts: Artifacts,
    registry: Arc<crate::registry::Registry>,
    rollouts: Arc<crate::rollouts::Rollouts>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ARTIFACT_GC_DELAY, Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let running: Vec<(String, String, String)> = registry
            .all()
            .iter()
            .flat_map(|h| {
                let services = h.with(|s| s.latest.as_ref().map(|l| l.services.clone()).unwrap_or_default());
                services.into_iter().map(|s| (h.name.clone(), s.name, s.version)).collect::<Vec<_>>()
            })
            .filter(|(_, _, v)| !v.is_empty())
            .collect();
        let keep = artifacts_to_keep(&rollouts.list(), &running);
        let a = artifacts.clone();
        let _ = tokio::task::spawn_blocking(move || a.collect_garbage(&keep)).await;
    }
}

#[cfg(test)]
mod gc_tests {
    use super::*;
    use crate::store::HostStep;

    fn rollout(id: &str, version: &str, state: RolloutState, at: i64, hosts: &[(&str, &str)]) -> RolloutRecord {
        RolloutRecord {
            id: id.into(),
            service: "api".into(),
            version: version.into(),
            sha256: format!("sha-{version}"),
            size_bytes: 1,
            state,
            reason: String::new(),
            hosts: hosts
                .iter()
                .map(|(h, prev)| HostStep {
                    host: h.to_string(),
                    state: crate::store::StepState::Healthy,
                    message: String::new(),
                    revert_failed: false,
                    previous_version: prev.to_string(),
                    updated_at_ms: at,
                    log_tail: Vec::new(),
                })
                .collect(),
            max_parallel: 1,
            canary: 0,
            auto_promote: false,
            min_healthy_time_ms: 0,
            healthy_deadline_ms: 0,
            progress_deadline_ms: 0,
            auto_revert: true,
            promoted: true,
            abort_requested: false,
            created_by: String::new(),
            created_at_ms: at,
            updated_at_ms: at,
            last_progress_ms: at,
            skipped: Vec::new(),
        }
    }

    #[test]
    fn the_current_and_previous_release_of_every_host_are_kept() {
        let rollouts = [
            rollout("r1", "1.0", RolloutState::Succeeded, 1, &[("a", ""), ("b", "")]),
            rollout("r2", "2.0", RolloutState::Succeeded, 2, &[("a", "1.0"), ("b", "1.0")]),
            rollout("r3", "3.0", RolloutState::Succeeded, 3, &[("a", "2.0"), ("b", "2.0")]),
            rollout("r4", "4.0", RolloutState::RolledBack, 4, &[("a", "3.0")]),
            rollout("r5", "5.0", RolloutState::Succeeded, 5, &[("a", "3.0")]),
        ];
        // a runs 5.0 (before it 3.0), b runs 3.0 (before it 2.0); 4.0 failed, 1.0 is long gone.
        let running =
            [("a".to_string(), "api".to_string(), "5.0".to_string()), ("b".into(), "api".into(), "3.0".into())];
        let keep = artifacts_to_keep(&rollouts, &running);
        for v in ["5.0", "3.0", "2.0"] {
            assert!(keep.contains(&format!("sha-{v}")), "{v} is needed: {keep:?}");
        }
        assert!(!keep.contains("sha-1.0") && !keep.contains("sha-4.0"), "{keep:?}");
        // A host that went back to 1.0 by hand keeps 1.0, and an unfinished rollout its own.
        let mut running = running.to_vec();
        running.push(("c".into(), "api".into(), "1.0".into()));
        let mut rollouts = rollouts.to_vec();
        rollouts.push(rollout("r6", "6.0", RolloutState::Running, 6, &[("c", "1.0")]));
        let keep = artifacts_to_keep(&rollouts, &running);
        assert!(keep.contains("sha-1.0") && keep.contains("sha-6.0"), "{keep:?}");
    }
}

/// How long a rollout's start waits for another coordinator to take a copy of its artifact.
pub const REPLICA_WAIT: Duration = Duration::from_secs(60);

/// With several coordinators: a rollout starts only once another coordinator holds a copy of
/// its artifact (it is uploaded to one), so that a leader lost right after the start leaves
/// the next one able to go on.
#[derive(Debug)]
pub struct Replicas {
    /// This cluster.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// The coordinator's own identity, to ask the others.
    pub tls: fleet_common::tls::TlsMaterial,
}

impl Replicas {
    /// Asks every other live member to hold `sha256` (fetching it from the coordinators that
    /// do) and returns once one does. Alone, or with no other member up, there is no one to
    /// ask: `Ok` (said in the log). An error names why none could.
    pub async fn ensure_copy(&self, sha256: &str) -> Result<(), String> {
        let peers = self.cluster.peers();
        if self.cluster.config().is_none() {
            return Ok(());
        }
        if peers.is_empty() {
            tracing::warn!(artifact = %sha256, "no other coordinator is up to hold a copy of the rollout's artifact; starting with this one's only");
            return Ok(());
        }
        let mut asked: futures_util::stream::FuturesUnordered<_> =
            peers.iter().map(|p| async move { (p, Artifacts::peer_holds(sha256, p, &self.tls, true).await) }).collect();
        let mut why = Vec::new();
        let deadline = tokio::time::sleep(REPLICA_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = futures_util::StreamExt::next(&mut asked) => match next {
                    Some((_, Ok(true))) => return Ok(()),
                    Some((p, Ok(false))) => why.push(format!("{p}: cannot fetch it")),
                    Some((p, Err(e))) => why.push(format!("{p}: {e}")),
                    None => break,
                },
                () = &mut deadline => {
                    why.push(format!("no copy within {REPLICA_WAIT:?}"));
                    break;
                }
            }
        }
        Err(format!(
            "no other coordinator could take a copy of artifact {sha256} ({}); the rollout was not started, so that losing this leader cannot strand it. Check the other coordinators (fleetctl status) and start it again",
            why.join("; ")
        ))
    }
}

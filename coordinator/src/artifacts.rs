//! Content-addressed artifacts (DESIGN §6): release archives stored under
//! `data_dir/artifacts/<sha256>`, written through a temporary file and kept only once their
//! digest and size are checked. Agents fetch them by digest; blobs that no rollout and no
//! current or previous release needs are removed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use fleet_proto::v1::upload_artifact_request::Part;
use fleet_proto::v1::{ArtifactHeader, UploadArtifactRequest};
use sha2::Digest;
use tonic::{Status, Streaming};

/// The artifact store.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    max_bytes: u64,
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
        Ok(Artifacts { dir, max_bytes })
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

//! `rollout start|status|list|pause|resume|abort`, `rollback` and `releases`: deploying
//! releases across hosts and looking at what each host runs.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use fleet_proto::v1::upload_artifact_request::Part;
use fleet_proto::v1::{
    ArtifactHeader, CommandState, ListReleasesRequest, ListRolloutsRequest, RollbackRequest, Rollout, RolloutRequest,
    StartRolloutRequest, StatArtifactRequest, UploadArtifactRequest,
};
use serde_json::{Value, json};
use sha2::Digest;

use crate::client::{Target, status_error};
use crate::views::table;
use crate::{CliError, Output};

/// `rollout start` options.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// The service to deploy.
    pub service: String,
    /// The release archive (.tar.gz).
    #[arg(long)]
    pub artifact: std::path::PathBuf,
    /// The release's version.
    #[arg(long)]
    pub version: String,
    /// The hosts, in order (default: every host that has the service and is not drained).
    #[arg(long, value_delimiter = ',', conflicts_with = "selector")]
    pub hosts: Vec<String>,
    /// Only the hosts this label selector picks that have the service (drained ones skipped).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Hosts deployed at once.
    #[arg(long, default_value_t = 1)]
    pub max_parallel: u32,
    /// Hosts deployed first; the rollout then waits for `rollout resume`.
    #[arg(long, default_value_t = 0)]
    pub canary: u32,
    /// Continue after the canaries without waiting.
    #[arg(long)]
    pub auto_promote: bool,
    /// A host is done after staying healthy this long.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub min_healthy_time: Duration,
    /// A host must be healthy within this long after its switch.
    #[arg(long, default_value = "5m", value_parser = crate::parse_duration)]
    pub healthy_deadline: Duration,
    /// The rollout fails if no host finishes within this long.
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    pub progress_deadline: Duration,
    /// Leave hosts on the new release when the rollout fails.
    #[arg(long)]
    pub no_auto_revert: bool,
    /// Follow the rollout until it ends (exit 1 if it does not succeed) or waits for you to
    /// promote or resume it (exit 0, saying what to run).
    #[arg(long)]
    pub watch: bool,
    /// The coordinator.
    #[command(flatten)]
    pub conn: crate::Conn,
}

fn sha256_file(path: &Path) -> Result<(String, u64), CliError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {}", path.display(), fleet_common::io_reason(&e))))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        if r == 0 {
            break;
        }
        n += r as u64;
        h.update(&buf[..r]);
    }
    Ok((h.finalize().iter().map(|b| format!("{b:02x}")).collect(), n))
}

/// Uploads `path` unless the coordinator already holds it; returns its sha256.
pub async fn upload(target: &Target, path: &Path) -> Result<String, CliError> {
    let (sha, size) = sha256_file(path)?;
    let mut c = target.control().await?;
    let stat = c
        .stat_artifact(StatArtifactRequest { sha256: sha.clone(), fetch: false })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner();
    if stat.exists {
        eprintln!("{} is already on the coordinator (sha256 {})", path.display(), &sha[..12]);
        return Ok(sha);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let show = std::io::stderr().is_terminal();
    let file =
        std::fs::File::open(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let header = UploadArtifactRequest {
        part: Some(Part::Header(ArtifactHeader { sha256: sha.clone(), size_bytes: size, name: name.clone() })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadArtifactRequest>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut file = file;
        if tx.blocking_send(header).is_err() {
            return;
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent += n as u64;
            if tx.blocking_send(UploadArtifactRequest { part: Some(Part::Data(buf[..n].to_vec())) }).is_err() {
                return;
            }
            if show {
                eprint!(
                    "\ruploading {name}: {:>3}% ({} of {})   ",
                    sent * 100 / size.max(1),
                    fleet_common::human_bytes(sent),
                    fleet_common::human_bytes(size)
                );
                let _ = std::io::stderr().flush();
            }
        }
    });
    let resp = c.upload_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let _ = reader.await;
    if show {
        eprintln!();
    }
    let resp = resp.map_err(|e| status_error(&target.addr, e))?.into_inner();
    eprintln!("uploaded {} ({}, sha256 {})", path.display(), fleet_common::human_bytes(resp.size_bytes), &sha[..12]);
    Ok(sha)
}

/// `rollout start`.
pub async fn start(target: &Target, a: &StartArgs, output: Output) -> Result<(), CliError> {
    let selector = crate::views::checked_selector(a.selector.as_deref())?;
    let mut req = StartRolloutRequest {
        selector,
        service: a.service.clone(),
        version: a.version.clone(),
        sha256: String::new(),
        hosts: a.hosts.clone(),
        max_parallel: a.max_parallel,
        canary: a.canary,
        auto_promote: a.auto_promote,
        min_healthy_time_ms: a.min_healthy_time.as_millis() as u64,
        healthy_deadline_ms: a.healthy_deadline.as_millis() as u64,
        progress_deadline_ms: a.progress_deadline.as_millis() as u64,
        no_auto_revert: a.no_auto_revert,
        validate_only: true,
    };
    // A misspelt service or host fails here, before a possibly large upload.
    let mut c = target.control().await?;
    c.start_rollout(req.clone()).await.map_err(|e| match e.code() {
        tonic::Code::NotFound => CliError::failed(e.message().to_string()),
        _ => status_error(&target.addr, e),
    })?;
    req.sha256 = upload(target, &a.artifact).await?;
    req.validate_only = false;
    let mut c = target.control().await?;
    let r = c.start_rollout(req).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    if output == Output::Json && !a.watch {
        crate::views::print_json(&rollout_json(&r));
        return Ok(());
    }
    outln!("{}", r.id);
    eprintln!(
        "rollout {} started: {} {} to {}",
        r.id,
        r.service,
        r.version,
        r.hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>().join(", ")
    );
    for skipped in &r.skipped {
        eprintln!("skipped {}", fleet_common::printable(skipped, &[]));
    }
    if a.watch { watch(target, &r.id, output).await } else { Ok(()) }
}

fn rollout_json(r: &Rollout) -> Value {
    json!({
        "id": r.id, "service": r.service, "version": r.version, "sha256": r.sha256, "state": r.state,
        "reason": if r.reason.is_empty() { Value::Null } else { json!(r.reason) },
        "created_by": r.created_by, "created_at": fleet_common::rfc3339(r.created_at_ms), "updated_at": fleet_common::rfc3339(r.updated_at_ms),
        "max_parallel": r.max_parallel, "canary": r.canary, "auto_promote": r.auto_promote, "auto_revert": r.auto_revert,
        "min_healthy_time_seconds": r.min_healthy_time_ms as f64 / 1000.0, "healthy_deadline_seconds": r.healthy_deadline_ms as f64 / 1000.0,
        "skipped": r.skipped,
        "hosts": r.hosts.iter().map(|h| json!({
            "host": h.host, "state": h.state, "message": h.message, "log_tail": h.log_tail, "revert_failed": h.revert_failed,
            "previous_version": if h.previous_version.is_empty() { Value::Null } else { json!(h.previous_version) },
        })).collect::<Vec<_>>(),
    })
}

fn hosts_done(r: &Rollout) -> usize {
    r.hosts.iter().filter(|h| h.state == "healthy").count()
}

fn render(r: &Rollout) -> String {
    let rows: Vec<Vec<String>> = r
        .hosts
        .iter()
        .map(|h| vec![h.host.clone(), h.state.clone(), h.message.lines().next().unwrap_or("").to_string()])
        .collect();
    let mut out = format!(
        "rollout {}: {} {}  {}  {}/{} hosts done\n{}",
        r.id,
        r.service,
        r.version,
        r.state,
        hosts_done(r),
        r.hosts.len(),
        table(&["HOST", "STATE", "MESSAGE"], &rows)
    );
    for skipped in &r.skipped {
        out.push_str(&format!("skipped {}\n", fleet_common::printable(skipped, &[])));
    }
    if let Some(hint) = next_step(r) {
        out.push_str(&hint);
        out.push('\n');
    }
    out
}

/// What the operator is expected to do next, when the rollout waits for them.
fn next_step(r: &Rollout) -> Option<String> {
    match r.state.as_str() {
        "waiting_promotion" => Some(format!(
            "the canaries are healthy: promote with `fleetctl rollout resume {id}` (or stop with `fleetctl rollout abort {id}`)",
            id = r.id
        )),
        "paused" => Some(format!("paused: continue with `fleetctl rollout resume {}`", r.id)),
        _ => None,
    }
}

fn ended(r: &Rollout) -> bool {
    matches!(r.state.as_str(), "succeeded" | "failed" | "rolled_back" | "aborted")
}

/// Whether the rollout waits for a person (to promote its canaries, or to resume it): `--watch`
/// returns then, saying what to run, rather than waiting with them.
fn waits_for_operator(r: &Rollout) -> bool {
    matches!(r.state.as_str(), "waiting_promotion" | "paused")
}

fn verdict(r: &Rollout) -> Result<(), CliError> {
    if r.state == "succeeded" {
        return Ok(());
    }
    let mut msg = format!("rollout {} {}: {}", r.id, r.state.replace('_', " "), r.reason);
    for h in r.hosts.iter().filter(|h| h.state == "failed") {
        // The reason already names the first host that failed; say each other one once.
        if !r.reason.contains(&format!("{}: {}", h.host, h.message)) {
            msg.push_str(&format!("\n  {}: {}", h.host, h.message));
        }
        if !h.log_tail.is_empty() {
            msg.push_str(&format!("\n  last log lines of {} on {}:", r.service, h.host));
            for l in &h.log_tail {
                msg.push_str("\n    ");
                msg.push_str(l);
            }
        }
    }
    Err(CliError::failed(msg))
}

/// Follows a rollout until it ends: a live table on a terminal, a line per change when piped.
pub async fn watch(target: &Target, id: &str, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let mut stream = c
        .watch_rollout(RolloutRequest { id: id.to_string() })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner();
    let tty = std::io::stdout().is_terminal() && output == Output::Table;
    let mut last_lines = 0usize;
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut last_state = String::new();
    let mut last: Option<Rollout> = None;
    while let Some(r) = stream.message().await.map_err(|e| status_error(&target.addr, e))? {
        if output == Output::Json {
            last = Some(r);
            continue;
        }
        if tty {
            let text = render(&r);
            if last_lines > 0 {
                out!("\x1b[{last_lines}A\x1b[J");
            }
            out!("{text}");
            last_lines = text.lines().count();
        } else {
            for h in &r.hosts {
                if seen.get(&h.host) != Some(&h.state) {
                    let detail = if h.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", fleet_common::printable(h.message.lines().next().unwrap_or(""), &[]))
                    };
                    outln!("{} {}{detail}", h.host, h.state);
                    seen.insert(h.host.clone(), h.state.clone());
                }
            }
            if r.state != last_state {
                outln!("rollout {} {}", r.id, r.state);
                if let Some(hint) = next_step(&r) {
                    outln!("{hint}");
                }
                last_state = r.state.clone();
            }
        }
        let _ = std::io::stdout().flush();
        let done = ended(&r) || waits_for_operator(&r);
        last = Some(r);
        if done {
            break;
        }
    }
    let r = last.ok_or_else(|| CliError::failed("the coordinator sent nothing"))?;
    if output == Output::Json {
        crate::views::print_json(&rollout_json(&r));
    }
    if waits_for_operator(&r) {
        return Ok(());
    }
    if !ended(&r) {
        return Err(CliError::connect(
            "the coordinator stopped sending updates before the rollout ended; `fleetctl rollout status ID` shows where it is",
        ));
    }
    verdict(&r)
}

/// `rollout status ID [--watch]`.
pub async fn status(target: &Target, id: &str, follow: bool, output: Output) -> Result<(), CliError> {
    if follow {
        return watch(target, id, output).await;
    }
    let mut c = target.control().await?;
    let r = c
        .get_rollout(RolloutRequest { id: id.to_string() })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner();
    if output == Output::Json {
        crate::views::print_json(&rollout_json(&r));
    } else {
        out!("{}", render(&r));
        if !r.reason.is_empty() {
            outln!("reason: {}", fleet_common::printable(&r.reason, &[]));
        }
    }
    Ok(())
}

/// `rollout list`.
pub async fn list(target: &Target, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let list =
        c.list_rollouts(ListRolloutsRequest {}).await.map_err(|e| status_error(&target.addr, e))?.into_inner().rollouts;
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(list.iter().map(rollout_json).collect())).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        outln!("no rollouts yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.service.clone(),
                r.version.clone(),
                r.state.clone(),
                format!("{}/{}", hosts_done(r), r.hosts.len()),
                fleet_common::rfc3339(r.created_at_ms),
                r.created_by.rsplit('/').next().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out!("{}", table(&["ID", "SERVICE", "VERSION", "STATE", "DONE", "STARTED", "BY"], &rows));
    Ok(())
}

/// `rollout pause|resume|abort ID`.
pub async fn control(target: &Target, id: &str, action: &str, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let req = RolloutRequest { id: id.to_string() };
    let r = match action {
        "pause" => c.pause_rollout(req).await,
        "resume" => c.resume_rollout(req).await,
        _ => c.abort_rollout(req).await,
    }
    .map_err(|e| status_error(&target.addr, e))?
    .into_inner();
    if output == Output::Json {
        crate::views::print_json(&rollout_json(&r));
    } else {
        let verb = match action {
            "pause" => "paused",
            "resume" => "resumed",
            _ => "aborting",
        };
        outln!("rollout {} {verb} (state {})", r.id, r.state);
    }
    Ok(())
}

/// `rollback HOST SERVICE [--to VERSION]`.
pub async fn rollback(
    target: &Target,
    host: &str,
    service: &str,
    to: Option<&str>,
    probation: (Duration, Duration),
    output: Output,
) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let req = RollbackRequest {
        host: host.into(),
        service: service.into(),
        to_version: to.unwrap_or_default().into(),
        min_healthy_time_ms: probation.0.as_millis() as u64,
        healthy_deadline_ms: probation.1.as_millis() as u64,
    };
    let mut request = tonic::Request::new(req);
    request.set_timeout(probation.0 + probation.1 + Duration::from_secs(60));
    let r = c.rollback(request).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    let ok = r.state == CommandState::Succeeded as i32;
    if output == Output::Json {
        outln!(
            "{}",
            json!({ "host": host, "service": service, "ok": ok, "message": r.message, "log_tail": r.log_tail, "version": r.service.as_ref().map(|s| s.version.clone()) })
        );
    } else if ok {
        outln!("rolled back {service} on {host}: {}", fleet_common::printable(&r.message, &[]));
    }
    if ok {
        return Ok(());
    }
    let mut msg = format!("rollback of {service} on {host} failed: {}", r.message);
    if !r.log_tail.is_empty() {
        msg.push_str("; last log lines:");
        for l in &r.log_tail {
            msg.push_str("\n  ");
            msg.push_str(l);
        }
    }
    Err(CliError::failed(msg))
}

/// `releases HOST SERVICE`.
pub async fn releases(target: &Target, host: &str, service: &str, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let list = c
        .list_releases(ListReleasesRequest { host: host.into(), service: service.into() })
        .await
        .map_err(|e| status_error(&target.addr, e))?
        .into_inner()
        .releases;
    if output == Output::Json {
        let v: Vec<Value> = list
            .iter()
            .map(|r| {
                json!({
                    "version": r.version, "sha256": r.sha256, "deployed_at": fleet_common::rfc3339(r.deployed_at_ms),
                    "current": r.current, "previous": r.previous, "bad": r.bad, "reason": r.reason,
                })
            })
            .collect();
        crate::views::print_json(&Value::Array(v));
        return Ok(());
    }
    if list.is_empty() {
        outln!("{service} on {host} has no releases yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let mut status = vec![];
            if r.current {
                status.push("current");
            }
            if r.previous {
                status.push("previous");
            }
            if r.bad {
                status.push("bad");
            }
            vec![
                r.version.clone(),
                r.sha256.chars().take(12).collect(),
                fleet_common::rfc3339(r.deployed_at_ms),
                status.join(","),
                r.reason.lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out!("{}", table(&["VERSION", "SHA256", "DEPLOYED", "STATUS", "REASON"], &rows));
    Ok(())
}

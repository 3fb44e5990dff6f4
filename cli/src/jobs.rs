//! `jobs`, `job run` and `job history`: scheduled jobs as operators see and drive them
//! (docs/design.md §12). `fleetctl logs HOST JOB` reads a job's output like a service's.

use std::time::Duration;

use fleet_proto::v1::{CommandState, GetJobHistoryRequest, HostJob, JobRun, ListJobsRequest, RunJobRequest};
use serde_json::{Value, json};

use crate::client::{Target, status_error};
use crate::views::{ago, table};
use crate::{CliError, Output};

/// The exit status `fleetctl job run --wait` (and exec) gives for an attempt: the command's
/// own status, 128 + the signal that killed it (as shells say it), 124 for a timeout (as
/// timeout(1) says it), 1 for anything else that is not a success.
pub fn exit_status(r: &JobRun) -> u8 {
    match (r.result.as_str(), r.exit_code) {
        ("succeeded", _) => 0,
        ("timed_out", _) => 124,
        (_, Some(c)) if (1..=255).contains(&c) => c as u8,
        _ if (1..=127).contains(&r.signal) => 128 + r.signal as u8,
        _ => 1,
    }
}

fn when(ms: i64) -> String {
    if ms <= 0 { "-".into() } else { fleet_common::rfc3339(ms) }
}

fn until(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let d = (ms - fleet_common::now_ms()).max(0) as u64;
    format!("in {}", fleet_common::human_duration(Duration::from_millis(d)))
}

fn run_json(r: &JobRun) -> Value {
    json!({
        "job": r.job,
        "run": r.run,
        "attempt": r.attempt,
        "trigger": r.trigger,
        "due": (r.due_ms > 0).then(|| fleet_common::rfc3339(r.due_ms)),
        "started": (r.started_ms > 0).then(|| fleet_common::rfc3339(r.started_ms)),
        "ended": (r.ended_ms > 0).then(|| fleet_common::rfc3339(r.ended_ms)),
        "duration_seconds": (r.ended_ms > 0).then(|| r.ended_ms.saturating_sub(r.started_ms).max(0) as f64 / 1000.0),
        "result": r.result,
        "exit_code": r.exit_code,
        "signal": (r.signal != 0).then_some(r.signal),
        "message": r.message,
        "pid": (r.pid != 0).then_some(r.pid),
    })
}

fn job_json(h: &HostJob) -> Value {
    let j = h.job.clone().unwrap_or_default();
    json!({
        "host": h.host,
        "host_online": h.host_online,
        "name": j.name,
        "schedule": j.schedule,
        "timezone": j.timezone,
        "concurrency": j.concurrency,
        "running": j.running,
        "last_run": j.last_run.as_ref().map(run_json),
        "last_success": (j.last_success_ms > 0).then(|| fleet_common::rfc3339(j.last_success_ms)),
        "next_run": (j.next_run_ms > 0).then(|| fleet_common::rfc3339(j.next_run_ms)),
        "period_seconds": j.period_ms as f64 / 1000.0,
        "runs_total": j.runs_total,
    })
}

/// `fleetctl jobs [--host NAME] [-l SELECTOR]`.
pub async fn list(target: &Target, host: Option<&str>, selector: Option<&str>, output: Output) -> Result<(), CliError> {
    let selector = crate::views::checked_selector(selector)?;
    let mut c = target.control().await?;
    let req = ListJobsRequest { host: host.unwrap_or_default().to_string(), selector };
    let list = c.list_jobs(req).await.map_err(|e| status_error(&target.addr, e))?.into_inner().jobs;
    if output == Output::Json {
        crate::views::print_json(&Value::Array(list.iter().map(job_json).collect()));
        return Ok(());
    }
    if list.is_empty() {
        outln!("no jobs reported{}", host.map(|h| format!(" by {h}")).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|h| {
            let j = h.job.clone().unwrap_or_default();
            let schedule = if j.timezone == "UTC" && !j.schedule.starts_with("@every") {
                format!("{} UTC", j.schedule)
            } else {
                j.schedule.clone()
            };
            let (last, result) = match &j.last_run {
                Some(r) if r.result == "succeeded" => (ago(r.ended_ms), r.result.clone()),
                Some(r) => (ago(r.ended_ms), format!("{}: {}", r.result, fleet_common::printable(&r.message, &[]))),
                None => ("never".into(), "-".into()),
            };
            let next = if h.host_online { until(j.next_run_ms) } else { "(host offline)".into() };
            vec![
                h.host.clone(),
                j.name.clone(),
                schedule,
                if j.running > 0 { format!("running ({})", j.running) } else { last },
                result,
                ago(j.last_success_ms),
                next,
            ]
        })
        .collect();
    out!("{}", table(&["HOST", "JOB", "SCHEDULE", "LAST RUN", "RESULT", "LAST SUCCESS", "NEXT RUN"], &rows));
    Ok(())
}

/// `fleetctl job run HOST JOB [--wait] [--timeout D]`: with --wait, exits with the run's
/// status ([`exit_status`]).
pub async fn run(
    target: &Target,
    host: &str,
    job: &str,
    wait: bool,
    timeout: Duration,
    output: Output,
) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let req = RunJobRequest {
        host: host.to_string(),
        job: job.to_string(),
        wait,
        timeout_ms: timeout.as_millis() as u64,
        request_id: String::new(),
    };
    let mut request = tonic::Request::new(req);
    request.set_timeout(timeout + Duration::from_secs(15));
    let r = c.run_job(request).await.map_err(|e| status_error(&target.addr, e))?.into_inner();
    let ok = r.state == CommandState::Succeeded as i32;
    if output == Output::Json {
        crate::views::print_json(&json!({
            "host": host,
            "job": job,
            "command_id": r.command_id,
            "ok": ok,
            "message": r.message,
            "run": r.run.as_ref().map(run_json),
        }));
    } else if ok {
        outln!("{job} on {host}: {}", fleet_common::printable(&r.message, &[]));
    }
    if ok {
        return Ok(());
    }
    let message = if output == Output::Json { String::new() } else { format!("{job} on {host}: {}", r.message) };
    let code = match &r.run {
        Some(run) if wait && run.result != "running" => exit_status(run),
        _ => 1,
    };
    Err(CliError { code, message })
}

/// `fleetctl job run -l SELECTOR JOB [--wait]`: on every host the selector picks that has the
/// job, one at a time, drained hosts skipped and said so; exits with the worst status.
pub async fn run_selected(
    target: &Target,
    selector: &str,
    job: &str,
    wait: bool,
    timeout: Duration,
    output: Output,
) -> Result<(), CliError> {
    let picked = crate::views::picked_hosts(target, Some(selector)).await?;
    let mut worst: Option<CliError> = None;
    let mut ran = 0;
    for h in picked.iter().filter(|h| h.jobs.iter().any(|j| j.name == job)) {
        if let Some(d) = &h.drained {
            eprintln!("skipped {}: drained ({})", h.name, crate::views::drained_why(d));
            continue;
        }
        ran += 1;
        if let Err(e) = run(target, &h.name, job, wait, timeout, output).await {
            eprintln!("error: {}", fleet_common::printable(&e.message, &[]));
            if worst.as_ref().is_none_or(|w| e.code > w.code) {
                worst = Some(CliError { code: e.code, message: String::new() });
            }
        }
    }
    if ran == 0 {
        return Err(CliError::failed(format!(
            "no host the selector picks that is not drained has a job named \"{job}\"; `fleetctl jobs` lists them"
        )));
    }
    worst.map_or(Ok(()), Err)
}

/// `fleetctl job history HOST JOB [-n N]`.
pub async fn history(target: &Target, host: &str, job: &str, n: u32, output: Output) -> Result<(), CliError> {
    let mut c = target.control().await?;
    let req = GetJobHistoryRequest { host: host.to_string(), job: job.to_string(), limit: n };
    let runs = c.get_job_history(req).await.map_err(|e| status_error(&target.addr, e))?.into_inner().runs;
    if output == Output::Json {
        crate::views::print_json(&Value::Array(runs.iter().map(run_json).collect()));
        return Ok(());
    }
    if runs.is_empty() {
        outln!("{job} on {host} has not run yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.run.to_string(),
                r.attempt.to_string(),
                when(r.started_ms),
                if r.ended_ms > 0 {
                    fleet_common::human_duration_ms(Duration::from_millis(
                        r.ended_ms.saturating_sub(r.started_ms).max(0) as u64,
                    ))
                } else {
                    "-".into()
                },
                r.result.clone(),
                r.trigger.clone(),
                fleet_common::printable(&r.message, &[]).into_owned(),
            ]
        })
        .collect();
    out!("{}", table(&["RUN", "ATTEMPT", "STARTED", "DURATION", "RESULT", "TRIGGER", "MESSAGE"], &rows));
    Ok(())
}

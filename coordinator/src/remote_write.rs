//! Remote write (docs/design.md §14): every sample of the history, with the agent's
//! timestamps, sent to Prometheus' remote-write 1.0 receivers (Prometheus, VictoriaMetrics,
//! Mimir, Thanos) as snappy-compressed protobuf `WriteRequest`s.
//!
//! The queue is the history itself, as Prometheus' queue is its WAL: each `[[remote_write]]`
//! keeps, per series, the timestamp of the newest sample its receiver acknowledged, and every
//! `batch_send_deadline` sends what each series holds after it, oldest first, in batches of
//! `max_samples_per_send`. Nothing is buffered beside the history but the batch on its way, so
//! a receiver that is down costs no memory; what stays unsent past `max_backlog` is dropped and
//! counted. A series' samples leave in time order, so a host's samples reach the receiver in the
//! order the agent took them. The marks are saved under `data_dir/remote_write/` every 10 s and
//! at shutdown: a restarted coordinator, whose history is rebuilt from the report store,
//! resumes after them instead of sending everything again (at most the last 10 s twice, which
//! receivers ignore as duplicates).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_common::config::Section;
use fleet_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use fleet_rules::promql::{Labels, Storage};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, Exposition, FmtMetrics};
use crate::outbound::{Auth, ClientTls};
use crate::tsdb::Tsdb;

/// How often the acknowledged marks are saved.
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// The marks file's first line.
const MAGIC: &[u8] = b"fleet remote_write marks 1\n";
/// Headers the protocol sets, which `headers` may not replace (as Prometheus refuses them).
const RESERVED_HEADERS: [&str; 5] =
    ["content-encoding", "content-type", "user-agent", "x-prometheus-remote-write-version", "authorization"];

/// One `[[remote_write]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteConfig {
    /// The `remote` label of its metrics and the name of its marks file (default: the URL's
    /// host and port).
    pub name: String,
    /// The receiver's endpoint (`http://prometheus:9090/api/v1/write`).
    pub url: String,
    /// Extra request headers (`X-Scope-OrgID` for Mimir, say).
    pub headers: BTreeMap<String, String>,
    /// How the coordinator authenticates, if it does.
    pub auth: Option<Auth>,
    /// TLS of an https URL.
    pub tls: ClientTls,
    /// How long one request may take.
    pub timeout: Duration,
    /// Most samples in one request.
    pub max_samples_per_send: usize,
    /// How often new samples are sent.
    pub batch_send_deadline: Duration,
    /// First wait before a retry, doubled up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Samples still unsent this long after they were taken are dropped (and counted).
    pub max_backlog: Duration,
}

/// Reads every `[[remote_write]]` table of the coordinator's configuration; `retention` bounds
/// `max_backlog`.
pub fn read_config(root: &mut Section, retention: Duration) -> Vec<RemoteWriteConfig> {
    let mut out: Vec<RemoteWriteConfig> = Vec::new();
    for mut s in root.sections("remote_write") {
        let Some(url) = s.required_string("url") else {
            s.finish();
            continue;
        };
        let parsed = url.parse::<tonic::transport::Uri>().ok().filter(|u| u.host().is_some());
        let scheme = parsed.as_ref().and_then(|u| u.scheme_str()).map(str::to_string);
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            s.error(
                "url",
                format!("\"{url}\" is not an http:// or https:// URL (Prometheus receives at /api/v1/write)"),
            );
        }
        let default_name =
            parsed.as_ref().and_then(|u| u.authority()).map(|a| a.as_str().to_string()).unwrap_or_else(|| url.clone());
        let name = s.nonempty_string("name").unwrap_or(default_name);
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
            s.error("name", format!("\"{name}\" may hold only letters, digits, '-', '_', '.' and ':'"));
        }
        if out.iter().any(|o| o.name == name) {
            s.error("name", format!("\"{name}\" names another [[remote_write]] too: give each its own name"));
        }
        let headers = s.string_map("headers").unwrap_or_default();
        for k in headers.keys() {
            if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                s.error(
                    &format!("headers.{k}"),
                    "is set by the protocol (use basic_auth or bearer_token for credentials)",
                );
            }
        }
        let auth = crate::outbound::read_auth(&mut s);
        let tls = crate::outbound::read_tls(&mut s);
        let ms = Duration::from_millis;
        let timeout = s.duration_in("timeout", ms(100), Duration::from_secs(600)).unwrap_or(Duration::from_secs(30));
        let max_samples_per_send = match s.u64("max_samples_per_send") {
            Some(n) if !(1..=100_000).contains(&n) => {
                s.error("max_samples_per_send", "must be between 1 and 100000");
                2000
            }
            Some(n) => n as usize,
            None => 2000,
        };
        let batch_send_deadline =
            s.duration_in("batch_send_deadline", ms(100), Duration::from_secs(600)).unwrap_or(Duration::from_secs(5));
        let min_backoff = s.duration_in("min_backoff", ms(1), Duration::from_secs(600)).unwrap_or(ms(30));
        let max_backoff =
            s.duration_in("max_backoff", ms(1), Duration::from_secs(3600)).unwrap_or(Duration::from_secs(5));
        if max_backoff < min_backoff {
            s.error("max_backoff", "must not be shorter than min_backoff");
        }
        let max_backlog = s
            .duration_in("max_backlog", Duration::from_secs(1), Duration::from_secs(90 * 86400))
            .unwrap_or(Duration::from_secs(3600))
            .min(retention);
        s.finish();
        out.push(RemoteWriteConfig {
            name,
            url,
            headers,
            auth,
            tls,
            timeout,
            max_samples_per_send,
            batch_send_deadline,
            min_backoff,
            max_backoff,
            max_backlog,
        });
    }
    out
}

/// Every configured receiver's queue.
#[derive(Debug, Default)]
pub struct RemoteWrite {
    queues: Vec<Arc<Queue>>,
}

impl RemoteWrite {
    /// Opens a queue per configuration, with its marks from `data_dir/remote_write/`;
    /// `fleet_ca` is trusted for https receivers without a `ca_file`.
    pub fn open(
        configs: &[RemoteWriteConfig],
        data_dir: &Path,
        external_labels: &BTreeMap<String, String>,
        fleet_ca: &Path,
    ) -> Result<RemoteWrite, String> {
        let mut queues = Vec::new();
        for cfg in configs {
            let client = http_client(cfg, fleet_ca).map_err(|e| format!("remote_write \"{}\": {e}", cfg.name))?;
            let path = data_dir.join("remote_write").join(format!("{}.marks", cfg.name.replace(':', "_")));
            let marks = Marks::load(&path).unwrap_or_else(|e| {
                tracing::warn!(remote = %cfg.name, error = %e, "cannot read the remote_write marks; sending from now on");
                Marks::starting_now()
            });
            queues.push(Arc::new(Queue {
                cfg: cfg.clone(),
                client,
                external: external_labels.clone(),
                path,
                marks: Mutex::new(marks),
                sent: Counter::default(),
                dropped: Counter::default(),
                rejected: Counter::default(),
                retries: Counter::default(),
                highest_sent_ms: AtomicI64::new(0),
            }));
        }
        Ok(RemoteWrite { queues })
    }

    /// Runs every queue until `shutdown`, then saves their marks.
    pub async fn run(self: Arc<Self>, tsdb: Arc<Tsdb>, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for q in &self.queues {
            tasks.spawn(q.clone().run(tsdb.clone(), shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl FmtMetrics for RemoteWrite {
    fn fmt_metrics(&self, e: &mut Exposition) {
        if self.queues.is_empty() {
            return;
        }
        e.family(
            "fleet_coordinator_remote_write_samples_total",
            "counter",
            "Samples of the history by what became of them at each [[remote_write]] receiver: sent (acknowledged), rejected (a 4xx answer other than 429) or dropped (unsent past max_backlog).",
        );
        for q in &self.queues {
            for (result, c) in [("sent", &q.sent), ("rejected", &q.rejected), ("dropped", &q.dropped)] {
                e.sample(
                    "fleet_coordinator_remote_write_samples_total",
                    &[("remote", &q.cfg.name), ("result", result)],
                    c.get() as f64,
                );
            }
        }
        e.family(
            "fleet_coordinator_remote_write_retries_total",
            "counter",
            "Requests to a [[remote_write]] receiver retried after a network error, a 5xx or a 429.",
        );
        for q in &self.queues {
            e.sample(
                "fleet_coordinator_remote_write_retries_total",
                &[("remote", &q.cfg.name)],
                q.retries.get() as f64,
            );
        }
        e.family(
            "fleet_coordinator_remote_write_highest_sent_timestamp_seconds",
            "gauge",
            "Timestamp of the newest sample a [[remote_write]] receiver acknowledged.",
        );
        for q in &self.queues {
            let t = q.highest_sent_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            e.sample("fleet_coordinator_remote_write_highest_sent_timestamp_seconds", &[("remote", &q.cfg.name)], t);
        }
    }
}

/// The http client of one receiver: rustls, with fleet's CA or `ca_file` for https.
fn http_client(cfg: &RemoteWriteConfig, fleet_ca: &Path) -> Result<reqwest::Client, String> {
    if cfg.url.starts_with("https://") {
        return crate::outbound::client(&cfg.tls, fleet_ca, cfg.timeout);
    }
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| e.to_string())
}

/// One receiver's queue.
#[derive(Debug)]
struct Queue {
    cfg: RemoteWriteConfig,
    client: reqwest::Client,
    external: BTreeMap<String, String>,
    path: PathBuf,
    marks: Mutex<Marks>,
    sent: Counter,
    dropped: Counter,
    rejected: Counter,
    retries: Counter,
    highest_sent_ms: AtomicI64,
}

/// The newest acknowledged sample of each series, by a hash of its labels.
#[derive(Debug)]
struct Marks {
    by_series: HashMap<u64, i64>,
    /// Where a series with no mark starts: when the marks were last saved (a series born
    /// since then may have been sent in part), or the start when there were none.
    unmarked_from: i64,
}

/// What became of one request.
enum Outcome {
    Sent,
    Rejected,
    Stopped,
}

impl Marks {
    fn starting_now() -> Marks {
        Marks { by_series: HashMap::new(), unmarked_from: fleet_common::now_ms() }
    }

    /// The saved marks, or [`Marks::starting_now`] when there are none yet.
    fn load(path: &Path) -> Result<Marks, String> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Marks::starting_now()),
            Err(e) => return Err(format!("{}: {}", path.display(), fleet_common::io_reason(&e))),
        };
        let bad = || format!("{} is damaged", path.display());
        let body = data.strip_prefix(MAGIC).ok_or_else(bad)?;
        if body.len() < 12 || (body.len() - 12) % 16 != 0 {
            return Err(bad());
        }
        let (rest, crc) = body.split_at(body.len() - 4);
        if crc32fast::hash(rest).to_le_bytes() != crc {
            return Err(bad());
        }
        let saved_at = i64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let by_series = rest[8..]
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    i64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        Ok(Marks { by_series, unmarked_from: saved_at })
    }

    /// Writes the marks to `path` atomically (a temporary file renamed over it).
    fn save(&self, path: &Path, now: i64) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(MAGIC.len() + 12 + self.by_series.len() * 16);
        body.extend_from_slice(MAGIC);
        let start = body.len();
        body.extend_from_slice(&now.to_le_bytes());
        for (h, t) in &self.by_series {
            body.extend_from_slice(&h.to_le_bytes());
            body.extend_from_slice(&t.to_le_bytes());
        }
        let crc = crc32fast::hash(&body[start..]);
        body.extend_from_slice(&crc.to_le_bytes());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("marks.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, path)
    }
}

/// A series' identity across restarts: the stable hash of its labels (`__name__` included).
fn series_hash(labels: &Labels) -> u64 {
    labels.stable_hash()
}

/// Samples of one pass: per series its hash, labels and the points to send.
type Batch = Vec<(u64, Labels, Vec<(i64, f64)>)>;

impl Queue {
    async fn run(self: Arc<Self>, tsdb: Arc<Tsdb>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.batch_send_deadline);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = tokio::time::Instant::now();
        'outer: loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !tsdb.loaded() {
                continue;
            }
            loop {
                let (q, db) = (self.clone(), tsdb.clone());
                let budget = self.cfg.max_samples_per_send * 10;
                let Ok((batch, full)) = tokio::task::spawn_blocking(move || q.collect(&db, budget)).await else {
                    break;
                };
                for request in split(batch, self.cfg.max_samples_per_send) {
                    let n: usize = request.iter().map(|(_, _, p)| p.len()).sum();
                    match self.send(&request, &shutdown).await {
                        Outcome::Sent => {
                            self.sent.add(n as u64);
                            self.acknowledge(&request);
                        }
                        Outcome::Rejected => {
                            self.rejected.add(n as u64);
                            self.acknowledge(&request);
                        }
                        Outcome::Stopped => break 'outer,
                    }
                }
                if last_save.elapsed() >= SAVE_EVERY {
                    self.save();
                    last_save = tokio::time::Instant::now();
                }
                if !full || shutdown.is_cancelled() {
                    break;
                }
            }
        }
        self.save();
    }

    /// What the history holds after each series' mark, oldest first: at most `budget`
    /// samples, shared among the series so that a long backlog of one does not starve the
    /// others; the second value says whether the budget ran out (more is waiting).
    fn collect(&self, tsdb: &Tsdb, budget: usize) -> (Batch, bool) {
        let now = fleet_common::now_ms();
        let horizon = now - self.cfg.max_backlog.as_millis() as i64;
        let per_series = (budget / tsdb.len().max(1)).max(16);
        let mut marks = self.marks.lock().expect("marks lock");
        let unmarked_from = marks.unmarked_from.max(horizon);
        let mut out: Batch = Vec::new();
        let (mut taken, mut full, mut dropped) = (0usize, false, 0u64);
        let matchers = promql_parser::label::Matchers::empty();
        tsdb.select_each(None, &matchers, horizon.min(unmarked_from) - 1, now, &mut |labels, points| {
            let h = series_hash(&labels);
            let from = match marks.by_series.get(&h) {
                Some(&t) if t < horizon => {
                    // Unsent past max_backlog: dropped and counted, the mark moved on.
                    dropped += points.iter().filter(|(t0, _)| *t0 > t && *t0 <= horizon).count() as u64;
                    marks.by_series.insert(h, horizon);
                    horizon
                }
                Some(&t) => t,
                None => unmarked_from,
            };
            if taken >= budget {
                full |= points.last().is_some_and(|(t, _)| *t > from);
                return;
            }
            let fresh: Vec<(i64, f64)> =
                points.iter().copied().filter(|(t, _)| *t > from).take(per_series.min(budget - taken)).collect();
            if fresh.is_empty() {
                return;
            }
            full |= fresh.len() == per_series || points.last().is_some_and(|(t, _)| *t > fresh[fresh.len() - 1].0);
            taken += fresh.len();
            out.push((h, labels, fresh));
        });
        // Marks of series the history no longer holds go, so the map stays bounded by it.
        if marks.by_series.len() > tsdb.len() * 2 + 1024 {
            marks.by_series.retain(|_, t| *t >= horizon);
        }
        drop(marks);
        self.dropped.add(dropped);
        (out, full)
    }

    /// Moves the marks of the series in `request` to their newest sample sent.
    fn acknowledge(&self, request: &Batch) {
        let mut marks = self.marks.lock().expect("marks lock");
        let mut highest = self.highest_sent_ms.load(Ordering::Relaxed);
        for (h, _, points) in request {
            if let Some(&(t, _)) = points.last() {
                let m = marks.by_series.entry(*h).or_insert(t);
                *m = (*m).max(t);
                highest = highest.max(t);
            }
        }
        self.highest_sent_ms.store(highest, Ordering::Relaxed);
    }

    fn save(&self) {
        let marks = self.marks.lock().expect("marks lock");
        if let Err(e) = marks.save(&self.path, fleet_common::now_ms()) {
            tracing::warn!(remote = %self.cfg.name, path = %self.path.display(), error = %fleet_common::io_reason(&e), "cannot save the remote_write marks");
        }
    }

    /// The request's body: a snappy-compressed `WriteRequest`, labels sorted by name with the
    /// external labels added where a series lacks them, as Prometheus sends them.
    fn encode(&self, request: &Batch) -> Vec<u8> {
        let timeseries = request
            .iter()
            .map(|(_, labels, points)| {
                let mut l: Vec<Label> =
                    labels.iter().map(|(k, v)| Label { name: k.to_string(), value: v.to_string() }).collect();
                for (k, v) in &self.external {
                    if labels.get(k).is_none() {
                        l.push(Label { name: k.clone(), value: v.clone() });
                    }
                }
                l.sort_by(|a, b| a.name.cmp(&b.name));
                TimeSeries {
                    labels: l,
                    samples: points.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect(),
                }
            })
            .collect();
        let body = prost::Message::encode_to_vec(&WriteRequest { timeseries, metadata: Vec::new() });
        snap::raw::Encoder::new().compress_vec(&body).expect("snappy compresses any input")
    }

    /// Sends one request, retrying network errors, 5xx and 429 with backoff until it is
    /// answered or the coordinator stops.
    async fn send(&self, request: &Batch, shutdown: &CancellationToken) -> Outcome {
        let body = self.encode(request);
        let mut backoff = self.cfg.min_backoff;
        loop {
            let mut req = self
                .client
                .post(&self.cfg.url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("User-Agent", format!("fleet-coordinator/{}", fleet_common::VERSION))
                .header("X-Prometheus-Remote-Write-Version", "0.1.0");
            for (k, v) in &self.cfg.headers {
                req = req.header(k, v);
            }
            if let Some(auth) = &self.cfg.auth {
                req = auth.apply(req);
            }
            let wait = match req.body(body.clone()).send().await {
                Ok(r) if r.status().is_success() => return Outcome::Sent,
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    let after = r
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    tracing::debug!(remote = %self.cfg.name, status = %r.status(), "remote write to be retried");
                    after.unwrap_or(backoff).min(self.cfg.max_backoff)
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let text: String = text.chars().take(256).collect();
                    tracing::warn!(remote = %self.cfg.name, %status, answer = %text.trim(), "the receiver refused a remote write; its samples are dropped");
                    return Outcome::Rejected;
                }
                Err(e) => {
                    tracing::debug!(remote = %self.cfg.name, error = %fleet_common::tls::chain_to_string(&e), "remote write to be retried");
                    backoff
                }
            };
            self.retries.inc();
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }
}

/// `batch` in requests of at most `max` samples, a series' points in time order across them.
fn split(batch: Batch, max: usize) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut current: Batch = Vec::new();
    let mut n = 0;
    for (h, labels, points) in batch {
        let mut rest = &points[..];
        while !rest.is_empty() {
            let take = rest.len().min(max - n);
            current.push((h, labels.clone(), rest[..take].to_vec()));
            n += take;
            rest = &rest[take..];
            if n == max {
                out.push(std::mem::take(&mut current));
                n = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut l = Labels::new();
        for (k, v) in pairs {
            l.insert(*k, v.to_string());
        }
        l
    }

    fn read(text: &str) -> (Vec<RemoteWriteConfig>, String) {
        let (mut root, errors) = fleet_common::config::parse_toml(text).unwrap();
        let out = read_config(&mut root, Duration::from_secs(1800));
        root.finish();
        let msg = errors.into_result(Path::new("c.toml"), ()).err().map(|e| e.to_string()).unwrap_or_default();
        (out, msg)
    }

    #[test]
    fn configuration_is_checked_key_by_key() {
        let (ok, msg) = read(
            "[[remote_write]]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\nbasic_auth = { username = \"u\", password = \"p\" }\nmax_backlog = \"2h\"\n",
        );
        assert_eq!(msg, "");
        assert_eq!(ok[0].name, "127.0.0.1:9090");
        assert_eq!(ok[0].auth, Some(Auth::Basic { username: "u".into(), password: "p".into() }));
        assert_eq!(ok[0].max_backlog, Duration::from_secs(1800), "bounded by the retention");
        assert_eq!((ok[0].max_samples_per_send, ok[0].batch_send_deadline), (2000, Duration::from_secs(5)));
        let (_, msg) = read(
            "[[remote_write]]\nurl = \"ftp://x/\"\nheaders = { Authorization = \"x\" }\nbearer_token = \"t\"\nbasic_auth = { username = \"u\" }\n[[remote_write]]\nurl = \"http://a:1/w\"\nname = \"n\"\nmax_samples_per_send = 0\n[[remote_write]]\nurl = \"http://a:1/w\"\nname = \"n\"\ncert_file = \"/nonexistent\"\nlatency = 1\n",
        );
        for part in [
            "remote_write[0].url: \"ftp://x/\" is not an http:// or https:// URL",
            "headers.Authorization: is set by the protocol",
            "basic_auth.password: is required",
            "max_samples_per_send: must be between 1 and 100000",
            "name: \"n\" names another [[remote_write]] too",
            "cert_file and key_file go together",
            "cannot read /nonexistent",
            "latency",
        ] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
    }

    #[test]
    fn requests_hold_at_most_max_samples_and_keep_each_series_in_order() {
        let a = labels(&[("__name__", "a")]);
        let b = labels(&[("__name__", "b")]);
        let batch: Batch =
            vec![(1, a, (0..5).map(|t| (t, t as f64)).collect()), (2, b, (10..13).map(|t| (t, 0.0)).collect())];
        let requests = split(batch, 3);
        let sizes: Vec<usize> = requests.iter().map(|r| r.iter().map(|(_, _, p)| p.len()).sum()).collect();
        assert_eq!(sizes, [3, 3, 2]);
        let a_times: Vec<i64> =
            requests.iter().flatten().filter(|(h, _, _)| *h == 1).flat_map(|(_, _, p)| p.iter().map(|x| x.0)).collect();
        assert_eq!(a_times, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn marks_survive_a_restart_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remote_write/r.marks");
        let mut m = Marks::starting_now();
        m.by_series.insert(7, 1234);
        m.by_series.insert(u64::MAX, -5);
        m.save(&path, 99).unwrap();
        let back = Marks::load(&path).unwrap();
        assert_eq!(back.by_series, m.by_series);
        assert_eq!(back.unmarked_from, 99);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 5;
        data[last] ^= 1;
        std::fs::write(&path, data).unwrap();
        assert!(Marks::load(&path).unwrap_err().contains("damaged"));
        assert!(Marks::load(&dir.path().join("none.marks")).unwrap().by_series.is_empty());
    }

    #[test]
    fn a_series_hash_is_its_labels() {
        let a = labels(&[("__name__", "up"), ("host", "pc2")]);
        let b = labels(&[("__name__", "up"), ("host", "pc3")]);
        assert_ne!(series_hash(&a), series_hash(&b));
        assert_eq!(series_hash(&a), series_hash(&labels(&[("host", "pc2"), ("__name__", "up")])));
        // Stable across builds and runs: the marks file depends on it.
        assert_eq!(series_hash(&labels(&[("a", "b")])), 15182603570120227210);
    }
}

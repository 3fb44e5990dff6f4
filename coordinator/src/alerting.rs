//! Rule evaluation on the coordinator (docs/design.md §6): rule groups from `[alerting] rule_files`,
//! each evaluated on its interval over the history; recording rules write back into it;
//! alerts go to Alertmanager (API v2) and webhooks (Alertmanager's webhook format). Alert state
//! is saved after every evaluation and restored at start, so a restart neither re-fires nor
//! forgets an alert. Reloads (SIGHUP, `fleetctl rules reload`) keep the previous rules when a
//! file is invalid.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_rules::promql::Labels;
use fleet_rules::rules::{Alert, AlertState, Group, Rule};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertingConfig, expand_rule_files};
use crate::metrics::Counter;
use crate::store::SharedState;
use crate::tsdb::{Tsdb, Writable};

/// How often a firing alert is sent again.
pub const RESEND_DELAY_MS: i64 = 60_000;
/// Batches of alerts waiting to be sent, at most.
const QUEUE: usize = 1024;
/// Alerts per request.
const BATCH: usize = 64;

/// Notification counters.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    /// Alerts delivered (per receiver).
    pub sent: Counter,
    /// Deliveries that failed after retries.
    pub failed: Counter,
    /// Batches dropped because the queue was full.
    pub dropped: Counter,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedAlert {
    labels: Labels,
    state: String,
    active_at: i64,
    fired_at: Option<i64>,
    last_sent: Option<i64>,
}

/// Alert state saved per group: rule name → alerts.
type SavedGroup = BTreeMap<String, Vec<SavedAlert>>;

/// An alert as notifiers send it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Labels, external labels included.
    pub labels: Labels,
    /// Annotations, templates expanded.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (ms).
    pub starts_at: i64,
    /// When it ends (resolved time, or a validity horizon while firing).
    pub ends_at: i64,
    /// Whether it is resolved.
    pub resolved: bool,
}

/// The label the alerts of a drained host carry (with value "true").
pub const MAINTENANCE: &str = "maintenance";

/// The rule manager.
pub struct Alerting {
    config: AlertingConfig,
    tsdb: Arc<Tsdb>,
    shared: Arc<dyn SharedState>,
    /// Which hosts are drained: their alerts carry maintenance="true".
    registry: Arc<crate::registry::Registry>,
    groups: Mutex<Vec<Arc<Mutex<Group>>>>,
    /// Per group (`FILE;NAME`, as Prometheus' `rule_group`): when it was last evaluated
    /// (ms), how long that took and its interval, for `/metrics` without waiting on a group
    /// being evaluated.
    evaluations: Mutex<BTreeMap<String, (i64, Duration, Duration)>>,
    running: Mutex<CancellationToken>,
    shutdown: CancellationToken,
    notify: mpsc::Sender<Vec<Outgoing>>,
    /// Notification counters.
    pub metrics: Arc<NotifyMetrics>,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerting")
    }
}

fn group_key(g: &Group) -> String {
    format!("{}\0{}", g.file.display(), g.name)
}

/// A group's `group` label in `/metrics`: its file and name, as Prometheus' `rule_group`.
fn metric_group(g: &Group) -> String {
    format!("{};{}", g.file.display(), g.name)
}

/// A group's key among the coordinators of a cluster, whose rule files may lie in other
/// directories: the file's name and the group's.
fn shared_group_key(g: &Group) -> String {
    let file = g.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{file}/{}", g.name)
}

/// Why the rules could not be loaded or their state restored.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// A `rule_files` pattern is not a valid glob.
    #[error("{0}")]
    Pattern(String),
    /// A rule file does not load (it names the file, the line and the rule).
    #[error(transparent)]
    Rules(#[from] fleet_rules::rules::RuleError),
    /// The saved alert state cannot be read.
    #[error("cannot read the saved alert state: {0}")]
    State(#[from] crate::store::StoreError),
}

fn load(config: &AlertingConfig) -> Result<Vec<Group>, AlertingError> {
    let mut out = Vec::new();
    for f in expand_rule_files(&config.rule_files).map_err(AlertingError::Pattern)? {
        out.extend(fleet_rules::rules::load_file(&f)?);
    }
    Ok(out)
}

impl Alerting {
    /// Loads the rules, restores saved alert state, and starts evaluating and notifying.
    pub fn start(
        config: AlertingConfig,
        tsdb: Arc<Tsdb>,
        shared: Arc<dyn SharedState>,
        registry: Arc<crate::registry::Registry>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Alerting>, AlertingError> {
        let groups = load(&config)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let metrics = Arc::new(NotifyMetrics::default());
        tokio::spawn(deliver(config.clone(), rx, metrics.clone()));
        let this = Arc::new(Alerting {
            config,
            tsdb,
            shared,
            registry,
            groups: Mutex::new(Vec::new()),
            evaluations: Mutex::new(BTreeMap::new()),
            running: Mutex::new(CancellationToken::new()),
            shutdown,
            notify: tx,
            metrics,
        });
        let saved = this.shared.load_alert_state()?;
        // In a cluster, what the leader published comes first: its `for` timers are the
        // cluster's, and this coordinator's own copy may be old.
        let published = this.shared.published_alert_state().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the cluster's alert state; starting from this coordinator's own");
            HashMap::new()
        });
        let groups: Vec<Group> = groups
            .into_iter()
            .map(|mut g| {
                let from = published.get(&shared_group_key(&g)).or_else(|| saved.get(&group_key(&g)));
                if let Some(bytes) = from
                    && let Ok(s) = serde_json::from_slice::<SavedGroup>(bytes)
                {
                    restore(&mut g, &s);
                }
                g
            })
            .collect();
        this.install(groups);
        Ok(this)
    }

    fn interval(&self, g: &Group) -> Duration {
        g.interval.unwrap_or(self.config.evaluation_interval)
    }

    fn install(self: &Arc<Self>, groups: Vec<Group>) {
        let token = self.shutdown.child_token();
        let old = std::mem::replace(&mut *self.running.lock().expect("alerting lock"), token.clone());
        old.cancel();
        let groups: Vec<Arc<Mutex<Group>>> = groups.into_iter().map(|g| Arc::new(Mutex::new(g))).collect();
        for g in &groups {
            let this = self.clone();
            let g = g.clone();
            let token = token.clone();
            tokio::spawn(async move { this.run_group(g, token).await });
        }
        // The groups of the rules loaded now only (a reload may have removed some).
        let keys: std::collections::BTreeSet<String> =
            groups.iter().map(|g| metric_group(&g.lock().expect("group lock"))).collect();
        self.evaluations.lock().expect("alerting lock").retain(|k, _| keys.contains(k));
        *self.groups.lock().expect("alerting lock") = groups;
    }

    /// Reads the rule files again; on error the current rules stay.
    pub fn reload(self: &Arc<Self>) -> Result<(usize, usize), AlertingError> {
        let mut fresh = load(&self.config)?;
        // Alerts carry over into the same rule of the same group.
        let current = self.groups.lock().expect("alerting lock").clone();
        for g in &mut fresh {
            if let Some(old) = current.iter().find(|o| group_key(&o.lock().expect("group lock")) == group_key(g)) {
                let old = old.lock().expect("group lock");
                restore(g, &snapshot(&old));
            }
        }
        let n_rules = fresh.iter().map(|g| g.rules.len()).sum();
        let n_groups = fresh.len();
        self.install(fresh);
        tracing::info!(groups = n_groups, rules = n_rules, "rules reloaded");
        Ok((n_groups, n_rules))
    }

    async fn run_group(self: Arc<Self>, group: Arc<Mutex<Group>>, token: CancellationToken) {
        let interval = self.interval(&group.lock().expect("group lock"));
        let step = interval.as_millis().max(1) as i64;
        loop {
            // Evaluate on multiples of the interval, as Prometheus aligns groups.
            let now = fleet_common::now_ms();
            let next = (now / step + 1) * step;
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
            }
            if !self.tsdb.loaded() {
                // Rules over a history still being read back would see a partial past (a host
                // with no samples yet looks absent); recording rules would write out of order.
                continue;
            }
            let tsdb = self.tsdb.clone();
            let external = self.config.external_labels.clone();
            let g = group.clone();
            let registry = self.registry.clone();
            let span = if fleet_common::telemetry::enabled() {
                let name = group.lock().expect("group lock").name.clone();
                tracing::info_span!(target: fleet_common::telemetry::TARGET, "rules.evaluate", group = %name, at = next)
            } else {
                tracing::Span::none()
            };
            let out = tokio::task::spawn_blocking(move || {
                let _span = span.enter();
                let mut g = g.lock().expect("group lock");
                let mut w = Writable(tsdb);
                // The alerts of a drained host say so, for Alertmanager to inhibit or route.
                let mark = |labels: &mut Labels| {
                    let drained =
                        labels.get("host").and_then(|h| registry.get(h)).is_some_and(|h| h.drained().is_some());
                    if drained {
                        labels.insert(MAINTENANCE, "true");
                    }
                };
                g.eval_marked(&mut w, next, &external, &mark);
                let outgoing = to_send(&mut g, next, step, &external);
                let evaluated = g.last_eval.map(|(at, took)| (metric_group(&g), at, took));
                (outgoing, snapshot(&g), group_key(&g), shared_group_key(&g), evaluated)
            })
            .await;
            let Ok((outgoing, saved, key, shared_key, evaluated)) = out else { continue };
            if let Some((name, at, took)) = evaluated {
                self.evaluations.lock().expect("alerting lock").insert(name, (at, took, interval));
            }
            if let Ok(json) = serde_json::to_vec(&saved)
                && let Err(e) = self.shared.save_alert_state(&key, &json)
            {
                tracing::warn!(error = %e, "cannot save alert state");
            }
            // For the cluster: the timers without this coordinator's send times, which
            // change at every resend (crate::cluster::shared writes only changes).
            if self.shared.publishes_alert_state() {
                let mut shared = saved;
                shared.values_mut().flatten().for_each(|a| a.last_sent = None);
                if let Ok(json) = serde_json::to_vec(&shared) {
                    let state = self.shared.clone();
                    let published =
                        tokio::task::spawn_blocking(move || state.publish_alert_state(&shared_key, &json)).await;
                    if let Ok(Err(e)) = published {
                        tracing::debug!(error = %e, "cannot publish alert state to the cluster");
                    }
                }
            }
            for chunk in outgoing.chunks(BATCH) {
                if self.notify.try_send(chunk.to_vec()).is_err() {
                    self.metrics.dropped.inc();
                }
            }
        }
    }

    /// Every group, for listing.
    pub fn groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.groups.lock().expect("alerting lock").clone()
    }

    /// The evaluation interval of a group.
    pub fn group_interval(&self, g: &Group) -> Duration {
        self.interval(g)
    }

    /// Pending and firing alerts, firing first.
    pub fn alerts(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        for g in self.groups() {
            let g = g.lock().expect("group lock");
            for r in &g.rules {
                if let Rule::Alert(a) = r {
                    out.extend(a.active.values().filter(|x| x.state != AlertState::Inactive).cloned());
                }
            }
        }
        out.sort_by(|a, b| {
            (b.state == AlertState::Firing).cmp(&(a.state == AlertState::Firing)).then(a.labels.cmp(&b.labels))
        });
        out
    }
}

fn snapshot(g: &Group) -> SavedGroup {
    let mut out = SavedGroup::new();
    for r in &g.rules {
        if let Rule::Alert(a) = r {
            let list = a
                .active
                .values()
                .filter(|x| x.state != AlertState::Inactive)
                .map(|x| SavedAlert {
                    labels: x.labels.clone(),
                    state: x.state.as_str().into(),
                    active_at: x.active_at,
                    fired_at: x.fired_at,
                    last_sent: x.last_sent_ms,
                })
                .collect();
            out.insert(a.name.clone(), list);
        }
    }
    out
}

fn restore(g: &mut Group, saved: &SavedGroup) {
    for r in &mut g.rules {
        let Rule::Alert(a) = r else { continue };
        let Some(list) = saved.get(&a.name) else { continue };
        for s in list {
            let state = if s.state == "firing" { AlertState::Firing } else { AlertState::Pending };
            a.active.insert(
                s.labels.clone(),
                Alert {
                    labels: s.labels.clone(),
                    annotations: BTreeMap::new(),
                    state,
                    active_at: s.active_at,
                    fired_at: s.fired_at,
                    resolved_at: None,
                    keep_firing_since: None,
                    value: f64::NAN,
                    last_sent_ms: s.last_sent,
                },
            );
        }
    }
}

/// The alerts of `g` that need sending at `t`, as Prometheus' `sendAlerts`.
fn to_send(g: &mut Group, t: i64, interval_ms: i64, external: &BTreeMap<String, String>) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let delta = interval_ms.max(RESEND_DELAY_MS);
    for r in &mut g.rules {
        let Rule::Alert(a) = r else { continue };
        for al in a.active.values_mut() {
            if al.state == AlertState::Pending {
                continue;
            }
            let resolved_after_sent = al.resolved_at.is_some_and(|r| al.last_sent_ms.is_none_or(|s| r > s));
            let due = al.last_sent_ms.is_none_or(|s| s + RESEND_DELAY_MS <= t);
            if !(resolved_after_sent || (al.state == AlertState::Firing && due)) {
                continue;
            }
            al.last_sent_ms = Some(t);
            let mut labels = al.labels.clone();
            for (k, v) in external {
                if !labels.contains_key(k) {
                    labels.insert(k.as_str(), v.as_str());
                }
            }
            out.push(Outgoing {
                labels,
                annotations: al.annotations.clone(),
                starts_at: al.fired_at.unwrap_or(al.active_at),
                ends_at: al.resolved_at.unwrap_or(t + 4 * delta),
                resolved: al.state == AlertState::Inactive,
            });
        }
    }
    out
}

fn rfc3339(ms: i64) -> String {
    fleet_common::rfc3339(ms)
}

fn am_body(batch: &[Outgoing]) -> Value {
    Value::Array(
        batch
            .iter()
            .map(|a| {
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(a.starts_at),
                    "endsAt": rfc3339(a.ends_at),
                    "generatorURL": "",
                })
            })
            .collect(),
    )
}

fn webhook_body(batch: &[Outgoing]) -> Value {
    let firing = batch.iter().any(|a| !a.resolved);
    let common = |maps: Vec<BTreeMap<String, String>>| -> BTreeMap<String, String> {
        let mut it = maps.into_iter();
        let Some(mut c) = it.next() else { return BTreeMap::new() };
        for m in it {
            c.retain(|k, v| m.get(k) == Some(v));
        }
        c
    };
    let label_maps = batch.iter().map(|a| a.labels.to_owned_map()).collect();
    json!({
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": "fleet",
        "groupLabels": {},
        "commonLabels": common(label_maps),
        "commonAnnotations": common(batch.iter().map(|a| a.annotations.clone()).collect()),
        "externalURL": "",
        "alerts": batch.iter().map(|a| json!({
            "status": if a.resolved { "resolved" } else { "firing" },
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at),
            "endsAt": if a.resolved { rfc3339(a.ends_at) } else { "0001-01-01T00:00:00Z".to_string() },
            "generatorURL": "",
        })).collect::<Vec<_>>(),
    })
}

/// Sends batches to every receiver, with retries; failures are counted, never fatal.
async fn deliver(config: AlertingConfig, mut rx: mpsc::Receiver<Vec<Outgoing>>, metrics: Arc<NotifyMetrics>) {
    let client = match config.client(Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the notification client; alerts are not sent");
            return;
        }
    };
    while let Some(batch) = rx.recv().await {
        let mut targets: Vec<(String, Value, bool)> = Vec::new();
        for am in &config.alertmanagers {
            targets.push((format!("{}/api/v2/alerts", am.trim_end_matches('/')), am_body(&batch), true));
        }
        for w in &config.webhooks {
            targets.push((w.clone(), webhook_body(&batch), false));
        }
        for (url, body, is_am) in targets {
            let mut delay = Duration::from_millis(200);
            let mut ok = false;
            for attempt in 1..=3 {
                let mut req = client.post(&url).json(&body);
                if is_am {
                    req = config.to_alertmanager(req);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        ok = true;
                        break;
                    }
                    Ok(r) => tracing::warn!(%url, status = %r.status(), attempt, "alert delivery refused"),
                    Err(e) => tracing::warn!(%url, error = %e, attempt, "alert delivery failed"),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            if ok {
                metrics.sent.inc();
            } else {
                metrics.failed.inc();
            }
        }
    }
}

/// `fleet_alerts_firing{alertname,severity}` and the notification counters.
impl crate::metrics::FmtMetrics for Alerting {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        let alerting = self;
        let mut firing: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for a in alerting.alerts() {
            if a.state == fleet_rules::rules::AlertState::Firing {
                let key = (
                    a.labels.get("alertname").unwrap_or_default().to_string(),
                    a.labels.get("severity").unwrap_or_default().to_string(),
                );
                *firing.entry(key).or_default() += 1;
            }
        }
        e.family("fleet_alerts_firing", "gauge", "Alerts firing now, by alert name and severity.");
        for ((name, sev), n) in &firing {
            e.sample("fleet_alerts_firing", &[("alertname", name), ("severity", sev)], *n as f64);
        }
        let m = &alerting.metrics;
        e.family(
            "fleet_coordinator_notifications_sent_total",
            "counter",
            "Alert batches delivered to an Alertmanager or webhook.",
        );
        e.sample("fleet_coordinator_notifications_sent_total", &[], m.sent.get() as f64);
        e.family(
            "fleet_coordinator_notifications_failed_total",
            "counter",
            "Alert batches that could not be delivered after retries.",
        );
        e.sample("fleet_coordinator_notifications_failed_total", &[], m.failed.get() as f64);
        e.family(
            "fleet_coordinator_notifications_dropped_total",
            "counter",
            "Alert batches dropped because the notification queue was full.",
        );
        e.sample("fleet_coordinator_notifications_dropped_total", &[], m.dropped.get() as f64);
        // Prometheus' prometheus_rule_group_* equivalents.
        let evaluations = self.evaluations.lock().expect("alerting lock").clone();
        e.family(
            "fleet_coordinator_rule_group_last_duration_seconds",
            "gauge",
            "How long the last evaluation of a rule group took (group: FILE;NAME).",
        );
        for (group, (_, took, _)) in &evaluations {
            e.sample("fleet_coordinator_rule_group_last_duration_seconds", &[("group", group)], took.as_secs_f64());
        }
        e.family(
            "fleet_coordinator_rule_group_last_evaluation_timestamp_seconds",
            "gauge",
            "When a rule group was last evaluated (the evaluation time, seconds since the epoch).",
        );
        for (group, (at, _, _)) in &evaluations {
            e.sample(
                "fleet_coordinator_rule_group_last_evaluation_timestamp_seconds",
                &[("group", group)],
                *at as f64 / 1000.0,
            );
        }
        e.family("fleet_coordinator_rule_group_interval_seconds", "gauge", "A rule group's evaluation interval.");
        for (group, (_, _, interval)) in &evaluations {
            e.sample("fleet_coordinator_rule_group_interval_seconds", &[("group", group)], interval.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_alerts_are_resent_every_minute_and_resolved_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yml");
        std::fs::write(&p, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x > 0\n").unwrap();
        let mut groups = fleet_rules::rules::load_file(&p).unwrap();
        let g = &mut groups[0];
        let Rule::Alert(a) = &mut g.rules[0] else { panic!() };
        let labels: Labels = [("alertname", "A")].into_iter().collect();
        a.active.insert(
            labels.clone(),
            Alert {
                labels,
                annotations: BTreeMap::new(),
                state: AlertState::Firing,
                active_at: 0,
                fired_at: Some(0),
                resolved_at: None,
                keep_firing_since: None,
                value: 1.0,
                last_sent_ms: None,
            },
        );
        let ext: BTreeMap<String, String> = [("dc".to_string(), "x".to_string())].into();
        let first = to_send(g, 1_000, 15_000, &ext);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].ends_at, 1_000 + 4 * 60_000);
        assert_eq!(first[0].labels.get("dc"), Some("x"));
        assert!(to_send(g, 30_000, 15_000, &ext).is_empty(), "not again within the resend delay");
        assert_eq!(to_send(g, 61_000, 15_000, &ext).len(), 1);
        let Rule::Alert(a) = &mut g.rules[0] else { panic!() };
        for al in a.active.values_mut() {
            al.state = AlertState::Inactive;
            al.resolved_at = Some(70_000);
        }
        let resolved = to_send(g, 70_000, 15_000, &ext);
        assert!(resolved[0].resolved && resolved[0].ends_at == 70_000);
        assert!(to_send(g, 75_000, 15_000, &ext).is_empty(), "resolved alerts are sent once");
    }
}

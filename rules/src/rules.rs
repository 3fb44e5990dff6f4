//! Rule files in Prometheus' format and their evaluation: recording rules, and alerting rules
//! with Prometheus' state machine (inactive → pending → firing → resolved; `for` counted from
//! the first evaluation that returned the series; a pending alert whose series disappears is
//! dropped; `keep_firing_for` holds a firing alert after its condition clears). An alert's
//! identity is its label set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;

use crate::promql::{self, Labels, NAME, Storage, Value};
use crate::template::{self, Template};

/// How long a resolved alert is kept (to be sent as resolved).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// A rule file problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct RuleError {
    /// The file.
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    /// Absent (`{}`) is no groups, as in Prometheus.
    #[serde(default)]
    groups: Vec<GroupDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDef {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    alert: Option<String>,
    record: Option<String>,
    expr: serde_yaml::Value,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Parses a Prometheus duration: `30s`, `5m`, `1h30m`, `2d`, `1w`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("duration \"{s}\" has no unit"))?;
        if n_end == 0 {
            return Err(format!("invalid duration \"{s}\""));
        }
        let n: u64 = rest[..n_end].parse().map_err(|_| format!("invalid duration \"{s}\""))?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let mult = match &rest[..u_end] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            u => return Err(format!("unknown unit \"{u}\" in duration \"{s}\"")),
        };
        // As Prometheus: a duration is at most what an int64 of nanoseconds holds (292 years).
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .filter(|t| *t <= i64::MAX as u64 / 1_000_000)
            .ok_or_else(|| format!("duration \"{s}\" is out of range (at most 292y)"))?;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_millis(total))
}

/// A loaded rule group.
#[derive(Debug)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Its own interval, if set.
    pub interval: Option<Duration>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// When it was last evaluated (ms), and how long that took.
    pub last_eval: Option<(i64, Duration)>,
}

/// A recording or alerting rule.
#[derive(Debug)]
pub enum Rule {
    /// `record:`
    Record(RecordRule),
    /// `alert:`
    Alert(AlertRule),
}

/// A recording rule.
#[derive(Debug)]
pub struct RecordRule {
    /// The recorded metric name.
    pub name: String,
    /// The expression text.
    pub expr_text: String,
    /// The expression, parsed once at load.
    pub expr: Expr,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// The last evaluation's error.
    pub last_error: Option<String>,
    /// The series the last evaluation wrote: those it no longer gives get a staleness marker.
    pub written: BTreeSet<Labels>,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// The condition held; waiting for `for`.
    Pending,
    /// The condition held for `for`: sent to Alertmanager.
    Firing,
    /// Resolved (kept for a while to be sent as resolved).
    Inactive,
}

impl AlertState {
    /// As Prometheus names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Inactive => "inactive",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its labels (its identity), `alertname` included.
    pub labels: Labels,
    /// Expanded annotations.
    pub annotations: BTreeMap<String, String>,
    /// Where it is in the alert state machine.
    pub state: AlertState,
    /// When it became active (ms).
    pub active_at: i64,
    /// When it started firing.
    pub fired_at: Option<i64>,
    /// When it resolved.
    pub resolved_at: Option<i64>,
    /// Since when it is held by keep_firing_for.
    pub keep_firing_since: Option<i64>,
    /// The value of the last evaluation.
    pub value: f64,
    /// When it was last sent to Alertmanager.
    pub last_sent_ms: Option<i64>,
}

/// An alerting rule and its alerts.
#[derive(Debug)]
pub struct AlertRule {
    /// `alert:` name.
    pub name: String,
    /// The expression text.
    pub expr_text: String,
    /// The expression, parsed once at load.
    pub expr: Expr,
    /// `for`.
    pub hold: Duration,
    /// `keep_firing_for`.
    pub keep_firing_for: Duration,
    /// Label templates, as written.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates, as written.
    pub annotations: BTreeMap<String, String>,
    /// The label templates, parsed when the file was loaded.
    pub label_templates: Vec<(String, Template)>,
    /// The annotation templates, parsed when the file was loaded.
    pub annotation_templates: Vec<(String, Template)>,
    /// Alerts by label set.
    pub active: BTreeMap<Labels, Alert>,
    /// The last evaluation's error.
    pub last_error: Option<String>,
    /// The `ALERTS` and `ALERTS_FOR_STATE` series the last evaluation wrote.
    pub written: BTreeSet<Labels>,
}

fn valid_metric_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(s: &str) -> bool {
    !s.is_empty() && !s.as_bytes()[0].is_ascii_digit() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Loads one rule file. Every problem names the file and, where it can, the line.
pub fn load_file(path: &Path) -> Result<Vec<Group>, RuleError> {
    let err = |line: Option<usize>, reason: String| RuleError { file: path.to_path_buf(), line, reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot read the rule file: {}", e)))?;
    // An empty file (or one that is only `null`, as mixins generate) has no groups and is
    // valid, as in Prometheus.
    let def: Option<FileDef> = serde_yaml::from_str(&text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        err(line, msg)
    })?;
    let Some(def) = def else { return Ok(Vec::new()) };
    // Lines of each rule, found by their `- alert:` / `- record:` keys, for messages.
    let rule_lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ").trim_start();
            t.starts_with("alert:") || t.starts_with("record:")
        })
        .map(|(i, _)| i + 1)
        .collect();
    let mut groups = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut rule_index = 0;
    for g in def.groups {
        if !names.insert(g.name.clone()) {
            return Err(err(None, format!("group name \"{}\" is used twice", g.name)));
        }
        if g.limit.is_some_and(|l| l > 0) {
            return Err(err(None, format!("group \"{}\": `limit` is not supported by fleet", g.name)));
        }
        let interval = match &g.interval {
            Some(s) => Some(parse_duration(s).map_err(|e| err(None, format!("group \"{}\": interval: {e}", g.name)))?),
            None => None,
        };
        let mut rules = Vec::new();
        for r in g.rules {
            let line = rule_lines.get(rule_index).copied();
            rule_index += 1;
            let expr_text = match &r.expr {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => return Err(err(line, "expr must be a PromQL expression".into())),
            };
            let expr =
                promql::parse(&expr_text).map_err(|e| err(line, format!("invalid expr \"{expr_text}\": {e}")))?;
            // Refused here rather than failing at every evaluation (invariant 12).
            if let Err(e) = promql::check(&expr) {
                let rule = match (&r.alert, &r.record) {
                    (Some(a), _) => format!("alert \"{a}\""),
                    (_, Some(rec)) => format!("recording rule \"{rec}\""),
                    _ => "rule".to_string(),
                };
                return Err(err(line, format!("{rule}: {e}; the expression is \"{expr_text}\"")));
            }
            for k in r.labels.keys().chain(r.annotations.keys()) {
                if !valid_label_name(k) {
                    return Err(err(line, format!("invalid label name \"{k}\"")));
                }
            }
            // An alert's labels and annotations are templates, parsed (and so checked) once
            // here; a recording rule's labels are plain values, as in Prometheus.
            let parse_all = |m: &BTreeMap<String, String>| -> Result<Vec<(String, Template)>, RuleError> {
                m.iter()
                    .map(|(k, v)| {
                        Template::parse(v)
                            .map(|t| (k.clone(), t))
                            .map_err(|e| err(line, format!("template of \"{k}\": {e}")))
                    })
                    .collect()
            };
            match (r.alert, r.record) {
                (Some(name), None) => {
                    let hold = match &r.for_ {
                        Some(s) => parse_duration(s).map_err(|e| err(line, format!("for: {e}")))?,
                        None => Duration::ZERO,
                    };
                    let keep = match &r.keep_firing_for {
                        Some(s) => parse_duration(s).map_err(|e| err(line, format!("keep_firing_for: {e}")))?,
                        None => Duration::ZERO,
                    };
                    let label_templates = parse_all(&r.labels)?;
                    let annotation_templates = parse_all(&r.annotations)?;
                    rules.push(Rule::Alert(AlertRule {
                        name,
                        expr_text,
                        expr,
                        hold,
                        keep_firing_for: keep,
                        label_templates,
                        annotation_templates,
                        labels: r.labels,
                        annotations: r.annotations,
                        active: BTreeMap::new(),
                        last_error: None,
                        written: BTreeSet::new(),
                    }));
                }
                (None, Some(name)) => {
                    if !valid_metric_name(&name) {
                        return Err(err(line, format!("invalid recording rule name \"{name}\"")));
                    }
                    if r.for_.is_some() || r.keep_firing_for.is_some() || !r.annotations.is_empty() {
                        return Err(err(
                            line,
                            format!(
                                "recording rule \"{name}\": for, keep_firing_for and annotations belong to alerting rules"
                            ),
                        ));
                    }
                    rules.push(Rule::Record(RecordRule {
                        name,
                        expr_text,
                        expr,
                        labels: r.labels,
                        last_error: None,
                        written: BTreeSet::new(),
                    }));
                }
                _ => return Err(err(line, "a rule needs exactly one of `alert` and `record`".into())),
            }
        }
        groups.push(Group { name: g.name, file: path.to_path_buf(), interval, rules, last_eval: None });
    }
    Ok(groups)
}

/// The `query` function of alert templates: PromQL over the rules' storage at the time of
/// the evaluation, a scalar result being one sample without labels (as in Prometheus).
struct StorageQuerier<'a> {
    storage: &'a dyn Storage,
    t: i64,
}

impl template::Querier for StorageQuerier<'_> {
    fn query(&self, expr: &str) -> Result<Vec<template::QuerySample>, String> {
        let e = promql::parse(expr).map_err(|e| e.to_string())?;
        promql::check(&e).map_err(|e| e.to_string())?;
        match promql::eval(&e, self.storage, self.t).map_err(|e| e.to_string())? {
            Value::Vector(v) => Ok(v
                .into_iter()
                .map(|s| template::QuerySample { labels: s.labels.to_owned_map(), value: s.v })
                .collect()),
            Value::Scalar(x) => Ok(vec![template::QuerySample { labels: BTreeMap::new(), value: x }]),
            _ => Err("the query must return an instant vector or a scalar".into()),
        }
    }
}

/// A store that recording rules can write back into.
pub trait Appender {
    /// Adds a sample of `labels` at `t`.
    fn append(&mut self, labels: Labels, t: i64, v: f64);
}

/// Adds labels to an alert's own (after the rule's labels and `alertname`): how a
/// coordinator marks the alerts of a host in maintenance.
pub type Mark<'a> = &'a dyn Fn(&mut Labels);

impl Group {
    /// Evaluates every rule at `t`, in order; recording rules' results are appended (and seen
    /// by the rules after them).
    pub fn eval<S: Storage + Appender>(&mut self, storage: &mut S, t: i64, external_labels: &BTreeMap<String, String>) {
        self.eval_marked(storage, t, external_labels, &|_| {})
    }

    /// [`Group::eval`], with `mark` applied to the labels of every alert (which makes them part
    /// of the alert's identity, as the rule's own labels are).
    pub fn eval_marked<S: Storage + Appender>(
        &mut self,
        storage: &mut S,
        t: i64,
        external_labels: &BTreeMap<String, String>,
        mark: Mark<'_>,
    ) {
        let started = std::time::Instant::now();
        for rule in &mut self.rules {
            match rule {
                Rule::Record(r) => match promql::eval(&r.expr, storage, t) {
                    Ok(v) => {
                        r.last_error = None;
                        let samples = match v {
                            Value::Vector(v) => v,
                            Value::Scalar(x) => vec![promql::Sample { labels: Labels::new(), t, v: x }],
                            _ => {
                                r.last_error = Some("the expression is not a vector or scalar".into());
                                continue;
                            }
                        };
                        let mut written = BTreeSet::new();
                        for s in samples {
                            let mut l = s.labels;
                            l.insert(NAME, r.name.clone());
                            for (k, v) in &r.labels {
                                l.insert(k.clone(), v.clone());
                            }
                            written.insert(l.clone());
                            storage.append(l, t, s.v);
                        }
                        end_series(storage, std::mem::replace(&mut r.written, written), &r.written, t);
                    }
                    Err(e) => {
                        r.last_error = Some(e.to_string());
                        // Prometheus ends the series of a rule that failed, too.
                        end_series(storage, std::mem::take(&mut r.written), &BTreeSet::new(), t);
                    }
                },
                Rule::Alert(a) => {
                    if let Err(e) = a.eval(&*storage, t, external_labels, mark) {
                        a.last_error = Some(e);
                    } else {
                        a.last_error = None;
                    }
                    // Prometheus' ALERTS (1 per pending or firing alert, with `alertstate`)
                    // and ALERTS_FOR_STATE (when it became active), for dashboards and rules.
                    let mut written = BTreeSet::new();
                    for alert in a.active.values().filter(|x| x.state != AlertState::Inactive) {
                        let mut l = alert.labels.clone();
                        l.insert(NAME, "ALERTS_FOR_STATE");
                        written.insert(l.clone());
                        storage.append(l.clone(), t, alert.active_at as f64 / 1000.0);
                        l.insert(NAME, "ALERTS");
                        l.insert("alertstate", alert.state.as_str());
                        written.insert(l.clone());
                        storage.append(l, t, 1.0);
                    }
                    end_series(storage, std::mem::replace(&mut a.written, written), &a.written, t);
                }
            }
        }
        self.last_eval = Some((t, started.elapsed()));
    }
}

/// Writes a staleness marker at `t` for each series of `before` that is not in `now`, as
/// Prometheus ends the series a rule stopped giving.
fn end_series<S: Appender>(storage: &mut S, before: BTreeSet<Labels>, now: &BTreeSet<Labels>, t: i64) {
    for l in before {
        if !now.contains(&l) {
            storage.append(l, t, f64::from_bits(promql::STALE_NAN_BITS));
        }
    }
}

impl AlertRule {
    /// One evaluation at `t`, as Prometheus' `AlertingRule.Eval`.
    pub fn eval(
        &mut self,
        storage: &dyn Storage,
        t: i64,
        external_labels: &BTreeMap<String, String>,
        mark: Mark<'_>,
    ) -> Result<(), String> {
        let samples = match promql::eval(&self.expr, storage, t).map_err(|e| e.to_string())? {
            Value::Vector(v) => v,
            Value::Scalar(_) => return Err("an alerting rule's expression must return a vector".into()),
            _ => return Err("an alerting rule's expression must return a vector".into()),
        };
        let mut seen: BTreeMap<Labels, Alert> = BTreeMap::new();
        let querier = StorageQuerier { storage, t };
        for s in samples {
            // As in Prometheus, $labels is the series' labels, __name__ included.
            let data = template::Data {
                labels: s.labels.to_owned_map(),
                value: s.v,
                external_labels: external_labels.clone(),
                timestamp: t as f64 / 1000.0,
                querier: Some(&querier),
                ..Default::default()
            };
            // A template that fails on its data does not stop the alert: Prometheus fires it
            // with the error as the text, so that the failure is seen where the alert is.
            let expand =
                |tmpl: &Template| tmpl.render(&data).unwrap_or_else(|e| format!("<error expanding template: {e}>"));
            let mut labels = s.labels.clone();
            labels.remove(NAME);
            for (k, tmpl) in &self.label_templates {
                let x = expand(tmpl);
                if x.is_empty() {
                    labels.remove(k);
                } else {
                    labels.insert(k.clone(), x);
                }
            }
            let mut annotations = BTreeMap::new();
            for (k, tmpl) in &self.annotation_templates {
                annotations.insert(k.clone(), expand(tmpl));
            }
            labels.insert("alertname", self.name.clone());
            mark(&mut labels);
            if seen.contains_key(&labels) {
                return Err(
                    "the expression returns series with the same labels after applying the alert's labels".into()
                );
            }
            seen.insert(
                labels.clone(),
                Alert {
                    labels,
                    annotations,
                    state: AlertState::Pending,
                    active_at: t,
                    fired_at: None,
                    resolved_at: None,
                    keep_firing_since: None,
                    value: s.v,
                    last_sent_ms: None,
                },
            );
        }
        for (k, a) in &seen {
            match self.active.get_mut(k) {
                Some(existing) if existing.state != AlertState::Inactive => {
                    existing.value = a.value;
                    existing.annotations = a.annotations.clone();
                }
                _ => {
                    self.active.insert(k.clone(), a.clone());
                }
            }
        }
        let hold = self.hold.as_millis() as i64;
        let keep_for = self.keep_firing_for.as_millis() as i64;
        let mut remove = Vec::new();
        for (k, a) in self.active.iter_mut() {
            if !seen.contains_key(k) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && keep_for > 0 {
                    let since = *a.keep_firing_since.get_or_insert(t);
                    if t - since < keep_for {
                        keep_firing = true;
                    }
                }
                if a.state == AlertState::Pending || a.resolved_at.is_some_and(|r| t - r > RESOLVED_RETENTION_MS) {
                    remove.push(k.clone());
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(t);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                a.keep_firing_since = None;
            }
            if a.state == AlertState::Pending && t - a.active_at >= hold {
                a.state = AlertState::Firing;
                a.fired_at = Some(t);
            }
        }
        for k in remove {
            self.active.remove(&k);
        }
        Ok(())
    }

    /// Alerts in a state, sorted by labels.
    pub fn alerts(&self, state: AlertState) -> Vec<&Alert> {
        self.active.values().filter(|a| a.state == state).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_prometheus() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999y").unwrap_err().contains("out of range"));
        assert!(parse_duration("300y").unwrap_err().contains("out of range"));
        assert_eq!(parse_duration("292y").unwrap(), Duration::from_secs(292 * 365 * 86400));
    }

    #[test]
    fn broken_files_are_reported_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.yml");
        std::fs::write(&p, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n").unwrap();
        let e = load_file(&p).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.to_string().starts_with(&format!("{}:4: invalid expr \"up ==\"", p.display())), "{e}");
        std::fs::write(&p, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        forr: 1m\n")
            .unwrap();
        let e = load_file(&p).unwrap_err();
        assert!(e.to_string().contains("unknown field `forr`"), "{e}");
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn empty_files_are_valid_and_unsupported_constructs_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yml");
        for empty in ["", "\n", "null\n", "{}\n", "groups: []\n", "# only a comment\n"] {
            std::fs::write(&p, empty).unwrap();
            assert!(load_file(&p).unwrap().is_empty(), "{empty:?}");
        }
        std::fs::write(&p, "groups:\n  - name: g\n    rules:\n").unwrap();
        assert_eq!(load_file(&p).unwrap()[0].rules.len(), 0, "a group without rules is valid");
        std::fs::write(
            &p,
            "groups:\n  - name: disks\n    rules:\n      - alert: Ok\n        expr: up == 0\n      - alert: DiskWillFill\n        expr: info(fs_avail) < 0\n",
        )
        .unwrap();
        let e = load_file(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:6: alert \"DiskWillFill\": the function info()", p.display())), "{e}");
        assert!(e.contains("not supported"), "{e}");
        std::fs::write(
            &p,
            "groups:\n  - name: g\n    rules:\n      - record: r:x\n        expr: max_over_time(info(x)[5m:1m])\n",
        )
        .unwrap();
        let e = load_file(&p).unwrap_err().to_string();
        assert!(e.contains(":4: recording rule \"r:x\": the function info()"), "{e}");
    }
}

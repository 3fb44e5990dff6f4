//! The Prometheus HTTP API (docs/design.md §14) on the coordinator's HTTP port, with Prometheus'
//! JSON shapes, error types and warnings: `/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values` (with `match[]`, `start`,
//! `end` and `limit`), `/api/v1/metadata` (the types and help of fleet's families),
//! `/api/v1/query_exemplars` (fleet keeps none), `/api/v1/format_query`,
//! `/api/v1/status/buildinfo` and `/api/v1/status/runtimeinfo`, `/api/v1/rules` and
//! `/api/v1/alerts`: what Grafana's Prometheus data source and promtool ask for. Parameters
//! come from the query string or a form body, as Prometheus accepts them.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use fleet_rules::promql::{self, Labels};
use serde_json::{Value, json};

use crate::query::{self, Answer, QueryError, QueryLimits};
use crate::tsdb::Tsdb;

/// What the query endpoints read: the history, the limits of one query, and the
/// coordinator's shutdown (which calls off queries in flight).
#[derive(Clone)]
pub struct QueryApi {
    /// The history.
    pub tsdb: Arc<Tsdb>,
    /// `[query]`.
    pub limits: QueryLimits,
    /// Cancelled when the coordinator stops.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What the status and metadata endpoints report.
#[derive(Clone)]
pub struct ServerInfo {
    /// When the coordinator started (ms since the epoch).
    pub started_at_ms: i64,
    /// `[history] retention`.
    pub retention: std::time::Duration,
    /// The `/metrics` text, where the families' types and help are.
    pub exposition: Arc<dyn Fn() -> String + Send + Sync>,
}

/// The Prometheus version whose HTTP API and PromQL fleet answers as (its promqltest files
/// pass): what `buildinfo` says, for clients that choose features by version.
pub const PROMETHEUS_COMPATIBLE: &str = "3.5.0";

/// The routes under /api/v1.
pub fn routes(api: QueryApi, alerting: Arc<crate::alerting::Alerting>, info: ServerInfo) -> Router {
    let rules =
        Router::new().route("/api/v1/rules", get(rules)).route("/api/v1/alerts", get(alerts)).with_state(alerting);
    let status = Router::new()
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/runtimeinfo", get(runtimeinfo))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .with_state(info);
    let tsdb = api.tsdb.clone();
    Router::new()
        .route("/api/v1/query", get(instant).post(instant))
        .route("/api/v1/query_range", get(range).post(range))
        .with_state(api)
        .merge(
            Router::new()
                .route("/api/v1/series", get(series).post(series))
                .route("/api/v1/labels", get(labels).post(labels))
                .route("/api/v1/label/{name}/values", get(label_values))
                .with_state(tsdb),
        )
        .merge(rules)
        .merge(status)
}

async fn buildinfo() -> Response {
    ok(json!({
        "version": PROMETHEUS_COMPATIBLE,
        "revision": format!("fleet-coordinator {}", fleet_common::VERSION),
        "branch": "fleet",
        "buildUser": "fleet",
        "buildDate": "",
        "goVersion": "",
        "application": "fleet",
    }))
}

async fn runtimeinfo(State(info): State<ServerInfo>) -> Response {
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    ok(json!({
        "startTime": fleet_common::rfc3339(info.started_at_ms),
        "CWD": cwd,
        "reloadConfigSuccess": true,
        "lastConfigTime": fleet_common::rfc3339(info.started_at_ms),
        "corruptionCount": 0,
        "goroutineCount": 0,
        "GOMAXPROCS": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "GOMEMLIMIT": 0,
        "GOGC": "",
        "GODEBUG": "",
        "storageRetention": humantime::format_duration(info.retention).to_string(),
    }))
}

/// `limit` of a request: 0 (the default) is no limit.
fn limit(p: &Params) -> Result<usize, Response> {
    match get_param(p, "limit") {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(&format!("invalid parameter \"limit\": cannot parse \"{v}\" to a valid limit"))),
    }
}

/// `data` with at most `limit` entries, and Prometheus' warning when some were left out.
fn limited(mut items: Vec<Value>, limit: usize) -> Response {
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        return Json(json!({ "status": "success", "data": items, "warnings": ["results truncated due to limit"] }))
            .into_response();
    }
    ok(Value::Array(items))
}

async fn metadata(State(info): State<ServerInfo>, RawQuery(q): RawQuery) -> Response {
    let p = params(q, &Bytes::new());
    let lim = match limit(&p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let only = get_param(&p, "metric").filter(|m| !m.is_empty());
    let text = (info.exposition)();
    let mut meta: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for line in text.lines() {
        let (kind, rest) = match (line.strip_prefix("# HELP "), line.strip_prefix("# TYPE ")) {
            (Some(r), _) => ("help", r),
            (_, Some(r)) => ("type", r),
            _ => continue,
        };
        let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
        if only.is_some_and(|m| m != name) {
            continue;
        }
        let e = meta.entry(name.to_string()).or_default();
        if kind == "help" {
            e.1 = value.replace("\\n", "\n").replace("\\\\", "\\");
        } else {
            e.0 = value.to_string();
        }
    }
    let mut data = serde_json::Map::new();
    for (name, (kind, help)) in meta {
        if lim > 0 && data.len() >= lim {
            break;
        }
        data.insert(name, json!([{ "type": kind, "help": help, "unit": "" }]));
    }
    ok(Value::Object(data))
}

async fn exemplars(RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let Some(expr) = get_param(&p, "query") else { return bad("the query parameter is missing") };
    if let Err(e) = promql::parse(expr) {
        return bad(&format!("invalid parameter \"query\": {e}"));
    }
    for k in ["start", "end"] {
        if let Some(v) = get_param(&p, k)
            && let Err(e) = query::parse_time(v)
        {
            return bad(&format!("invalid parameter \"{k}\": {e}"));
        }
    }
    // fleet keeps no exemplars: every query has none.
    ok(json!([]))
}

async fn format_query(RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let Some(expr) = get_param(&p, "query") else { return bad("the query parameter is missing") };
    match promql::parse(expr) {
        Ok(e) => ok(json!(e.prettify())),
        Err(e) => bad(&format!("invalid parameter \"query\": {e}")),
    }
}

fn alert_json(a: &fleet_rules::rules::Alert) -> Value {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": fleet_common::rfc3339(a.active_at),
        "value": fmt_value(a.value),
    })
}

async fn rules(State(al): State<Arc<crate::alerting::Alerting>>) -> Response {
    use fleet_rules::rules::{AlertState, Rule};
    let mut groups = Vec::new();
    for g in al.groups() {
        let g = g.lock().expect("group lock");
        let (last, took) = g
            .last_eval
            .map(|(t, d)| (fleet_common::rfc3339(t), d.as_secs_f64()))
            .unwrap_or(("0001-01-01T00:00:00Z".into(), 0.0));
        let rules: Vec<Value> = g
            .rules
            .iter()
            .map(|r| match r {
                Rule::Alert(a) => {
                    let alerts: Vec<Value> = a.active.values().filter(|x| x.state != AlertState::Inactive).map(alert_json).collect();
                    let state = if a.active.values().any(|x| x.state == AlertState::Firing) {
                        "firing"
                    } else if a.active.values().any(|x| x.state == AlertState::Pending) {
                        "pending"
                    } else {
                        "inactive"
                    };
                    json!({
                        "type": "alerting", "name": a.name, "query": a.expr_text, "duration": a.hold.as_secs_f64(),
                        "keepFiringFor": a.keep_firing_for.as_secs_f64(), "labels": a.labels, "annotations": a.annotations,
                        "alerts": alerts, "health": if a.last_error.is_some() { "err" } else { "ok" },
                        "lastError": a.last_error.clone().unwrap_or_default(), "state": state, "lastEvaluation": last, "evaluationTime": 0.0,
                    })
                }
                Rule::Record(rr) => json!({
                    "type": "recording", "name": rr.name, "query": rr.expr_text, "labels": rr.labels,
                    "health": if rr.last_error.is_some() { "err" } else { "ok" }, "lastError": rr.last_error.clone().unwrap_or_default(),
                    "lastEvaluation": last, "evaluationTime": 0.0,
                }),
            })
            .collect();
        groups.push(json!({
            "name": g.name, "file": g.file.display().to_string(), "interval": al.group_interval(&g).as_secs_f64(),
            "rules": rules, "lastEvaluation": last, "evaluationTime": took, "limit": 0,
        }));
    }
    ok(json!({ "groups": groups }))
}

async fn alerts(State(al): State<Arc<crate::alerting::Alerting>>) -> Response {
    ok(json!({ "alerts": al.alerts().iter().map(alert_json).collect::<Vec<_>>() }))
}

type Params = Vec<(String, String)>;

fn params(q: Option<String>, body: &Bytes) -> Params {
    let mut p: Params = q.as_deref().map(|q| serde_urlencoded::from_str(q).unwrap_or_default()).unwrap_or_default();
    if !body.is_empty() {
        p.extend(serde_urlencoded::from_bytes::<Params>(body).unwrap_or_default());
    }
    p
}

fn get_param<'a>(p: &'a Params, k: &str) -> Option<&'a str> {
    p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

fn error(code: StatusCode, kind: &str, msg: &str) -> Response {
    (code, Json(json!({ "status": "error", "errorType": kind, "error": msg }))).into_response()
}

fn bad(msg: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_data", msg)
}

fn fail(e: QueryError) -> Response {
    match e {
        QueryError::BadData(m) | QueryError::Unsupported(m) => bad(&m),
        QueryError::Execution(m) => error(StatusCode::UNPROCESSABLE_ENTITY, "execution", &m),
        QueryError::Timeout(m) => error(StatusCode::SERVICE_UNAVAILABLE, "timeout", &m),
        // Prometheus' "client closed connection"; seen only by a client that is still there
        // while the coordinator stops.
        QueryError::Canceled(m) => {
            error(StatusCode::from_u16(499).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "canceled", &m)
        }
    }
}

fn ok(data: Value) -> Response {
    Json(json!({ "status": "success", "data": data })).into_response()
}

/// A float as Prometheus writes sample values.
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// A timestamp as Prometheus writes one: seconds, with the milliseconds only when there are
/// some (`4`, `4.5`, never `4.0`).
fn ts(ms: i64) -> Value {
    if ms % 1000 == 0 { json!(ms / 1000) } else { json!(ms as f64 / 1000.0) }
}

fn metric(l: &Labels) -> Value {
    Value::Object(l.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect())
}

fn answer_json(a: Answer) -> Value {
    match a {
        Answer::Vector(v, t) => json!({
            "resultType": "vector",
            "result": v.iter().map(|(l, x)| json!({ "metric": metric(l), "value": [ts(t), fmt_value(*x)] })).collect::<Vec<_>>(),
        }),
        Answer::Matrix(m) => json!({
            "resultType": "matrix",
            "result": m.iter().map(|(l, pts)| json!({
                "metric": metric(l),
                "values": pts.iter().map(|(t, x)| json!([ts(*t), fmt_value(*x)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Answer::Scalar(x, t) => json!({ "resultType": "scalar", "result": [ts(t), fmt_value(x)] }),
        Answer::String(s, t) => json!({ "resultType": "string", "result": [ts(t), s] }),
    }
}

async fn instant(State(api): State<QueryApi>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let Some(expr) = get_param(&p, "query") else { return bad("the query parameter is missing") };
    let t = match get_param(&p, "time") {
        Some(s) => match query::parse_time(s) {
            Ok(t) => t,
            Err(e) => return bad(&format!("invalid parameter \"time\": {e}")),
        },
        None => fleet_common::now_ms(),
    };
    let limits = match request_limits(api.limits, &p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (db, expr) = (api.tsdb.clone(), expr.to_string());
    match query::run(limits, api.shutdown.clone(), move |l| query::instant(&*db, &expr, t, l)).await {
        Ok(a) => ok(answer_json(a)),
        Err(e) => fail(e),
    }
}

async fn range(State(api): State<QueryApi>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let Some(expr) = get_param(&p, "query") else { return bad("the query parameter is missing") };
    let parse = |k: &str, f: fn(&str) -> Result<i64, String>| -> Result<i64, Response> {
        let v = get_param(&p, k).ok_or_else(|| bad(&format!("the {k} parameter is missing")))?;
        f(v).map_err(|e| bad(&format!("invalid parameter \"{k}\": {e}")))
    };
    let (start, end, step) =
        match (parse("start", query::parse_time), parse("end", query::parse_time), parse("step", query::parse_step)) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
        };
    let limits = match request_limits(api.limits, &p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (db, expr) = (api.tsdb.clone(), expr.to_string());
    match query::run(limits, api.shutdown.clone(), move |l| query::range(&*db, &expr, start, end, step, l)).await {
        Ok(a) => ok(answer_json(a)),
        Err(e) => fail(e),
    }
}

/// The limits of one query: the `timeout` a request gives (Grafana's "query timeout") may
/// shorten `[query] timeout`, never lengthen it, as Prometheus caps it by `--query.timeout`.
fn request_limits(mut limits: query::QueryLimits, p: &Params) -> Result<query::QueryLimits, Response> {
    if let Some(v) = get_param(p, "timeout").filter(|v| !v.is_empty()) {
        let ms = query::parse_step(v)
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| bad(&format!("invalid parameter \"timeout\": cannot parse \"{v}\" to a valid duration")))?;
        limits.timeout = limits.timeout.min(std::time::Duration::from_millis(ms as u64));
    }
    Ok(limits)
}

/// The time range of a metadata request (default: the whole history).
fn window(p: &Params) -> Result<(i64, i64), Response> {
    let start = match get_param(p, "start") {
        Some(s) => query::parse_time(s).map_err(|e| bad(&format!("invalid parameter \"start\": {e}")))? - 1,
        None => i64::MIN / 2,
    };
    let end = match get_param(p, "end") {
        Some(s) => query::parse_time(s).map_err(|e| bad(&format!("invalid parameter \"end\": {e}")))?,
        None => i64::MAX / 2,
    };
    Ok((start, end))
}

/// The label sets selected by every `match[]`, or all series without one.
fn selected(db: &Tsdb, p: &Params, start: i64, end: i64, required: bool) -> Result<Vec<Labels>, Response> {
    let matchers: Vec<&str> = p.iter().filter(|(k, _)| k == "match[]").map(|(_, v)| v.as_str()).collect();
    if matchers.is_empty() {
        if required {
            return Err(bad("no match[] parameter provided"));
        }
        return Ok(db.label_sets(None, &promql_parser::label::Matchers::empty(), start, end));
    }
    let mut out = BTreeSet::new();
    for m in matchers {
        let e = promql::parse(m).map_err(|e| bad(&format!("invalid parameter \"match[]\": {e}")))?;
        let promql_parser::parser::Expr::VectorSelector(vs) = e else {
            return Err(bad(&format!("invalid parameter \"match[]\": {m} is not a series selector")));
        };
        out.extend(db.label_sets(vs.name.as_deref(), &vs.matchers, start, end));
    }
    Ok(out.into_iter().collect())
}

async fn series(State(db): State<Arc<Tsdb>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let (start, end) = match window(&p) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let lim = match limit(&p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match selected(&db, &p, start, end, true) {
        Ok(sets) => limited(sets.iter().map(metric).collect(), lim),
        Err(r) => r,
    }
}

async fn labels(State(db): State<Arc<Tsdb>>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = params(q, &body);
    let (start, end) = match window(&p) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let lim = match limit(&p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match selected(&db, &p, start, end, false) {
        Ok(sets) => {
            let names: BTreeSet<&str> = sets.iter().flat_map(|l| l.keys()).collect();
            limited(names.into_iter().map(|n| json!(n)).collect(), lim)
        }
        Err(r) => r,
    }
}

async fn label_values(State(db): State<Arc<Tsdb>>, Path(name): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = params(q, &Bytes::new());
    let (start, end) = match window(&p) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let lim = match limit(&p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    match selected(&db, &p, start, end, false) {
        Ok(sets) => {
            let values: BTreeSet<&str> = sets.iter().filter_map(|l| l.get(&name)).collect();
            limited(values.into_iter().map(|v| json!(v)).collect(), lim)
        }
        Err(r) => r,
    }
}

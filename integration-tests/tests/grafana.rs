//! Grafana's Prometheus data source against fleet's query API: the requests Grafana makes when
//! an operator adds the data source ("Save & test"), opens Explore (metric names, metadata,
//! label names, the metrics browser, a query) and loads a dashboard (a `label_values`
//! variable, range panels), with the parameters and methods Grafana's source uses
//! (pkg/promlib/healthcheck.go and heuristics.go, pkg/promlib/client/client.go and the
//! frontend's language provider), in both of the data source's HTTP methods (POST forms, the
//! default, and GET). Each request also goes to a real Prometheus scraping the coordinator: the
//! JSON shapes must agree, and where both hold the same thing (the answer to `1+1`, the
//! metadata of fleet's own families, a formatted query) the answers must be equal.

use std::time::Duration;

use fleet_integration_tests::{Cluster, CoordinatorOpts, eventually, free_port, serial, start_prometheus};
use serde_json::{Value, json};

/// Grafana's `DEFAULT_SERIES_LIMIT`, sent with metric names, label names and series.
const GRAFANA_LIMIT: &str = "40000";

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Get,
    Post,
}

/// A data source as Grafana's backend calls it.
struct DataSource {
    base: String,
    method: Method,
    client: reqwest::Client,
}

/// Endpoints Grafana always asks with GET, whatever the data source's method
/// (`endpointsSupportOnlyGet` in pkg/promlib/client/client.go).
fn get_only(path: &str) -> bool {
    ["/api/v1/label/", "/api/v1/metadata", "/api/v1/status/", "/api/v1/rules", "/api/v1/alerts"]
        .iter()
        .any(|p| path.starts_with(p))
}

impl DataSource {
    fn new(base: String, method: Method) -> DataSource {
        DataSource {
            base,
            method,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        }
    }

    /// Sends `params` to `path` the way Grafana does: a form body when the data source uses
    /// POST (with Grafana's Content-Type), the query string otherwise.
    async fn call(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.try_call(path, params).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Like [`DataSource::call`], an error when nothing answers.
    async fn try_call(&self, path: &str, params: &[(&str, &str)]) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let req = if self.method == Method::Post && !get_only(path) {
            self.client
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(params).unwrap())
        } else {
            self.client.get(&url).query(params)
        };
        let r = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let code = r.status().as_u16();
        let text = r.text().await.map_err(|e| format!("{url}: {e}"))?;
        let v = serde_json::from_str(&text).map_err(|e| format!("{url} answered {code} with no JSON ({e}): {text}"))?;
        Ok((code, v))
    }

    async fn ok(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let (code, v) = self.call(path, params).await;
        assert_eq!(code, 200, "{path} {params:?}: {v}");
        assert_eq!(v["status"], "success", "{path}: {v}");
        v
    }
}

/// The structure of a JSON value: its types, object keys and the distinct shapes of array
/// elements. Objects whose keys are data (label sets, metadata by metric name) collapse to
/// `{"*": shape of a value}`.
fn shape(v: &Value) -> Value {
    shape_in(v, false)
}

fn shape_in(v: &Value, keys_are_data: bool) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => {
            let mut seen: Vec<Value> = Vec::new();
            for e in a {
                let s = shape_in(e, false);
                if !seen.contains(&s) {
                    seen.push(s);
                }
            }
            Value::Array(seen)
        }
        Value::Object(o) if keys_are_data => match o.values().next() {
            Some(first) => json!({ "*": shape_in(first, false) }),
            None => json!({}),
        },
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), shape_in(v, matches!(k.as_str(), "metric" | "labels" | "annotations"))))
                .collect(),
        ),
    }
}

/// [`shape`] of a `/api/v1/series` answer, whose elements are label sets.
fn series_shape(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(sets) = v.get_mut("data").and_then(Value::as_array_mut) {
        for s in sets {
            *s = json!({ "metric": s.take() });
        }
    }
    shape(&v)
}

/// `keys` of `theirs` that `ours` lacks or has with another type.
fn missing_keys(ours: &Value, theirs: &Value) -> Vec<String> {
    let (Some(o), Some(t)) = (ours.as_object(), theirs.as_object()) else { return vec!["<not an object>".into()] };
    t.iter().filter(|(k, v)| o.get(*k).map(shape) != Some(shape(v))).map(|(k, _)| k.clone()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn grafana_data_source_requests_get_prometheus_answers() {
    let _g = serial().await;
    let mut c = Cluster::new(&["main-pc", "pc2"]);
    c.start_coordinator(CoordinatorOpts::default()).await;
    c.start_agent("main-pc", Duration::from_millis(200));
    c.start_agent("pc2", Duration::from_millis(200));
    c.wait_online(&["main-pc", "pc2"], Duration::from_secs(10)).await;
    let prom_port = free_port();
    let _prom = start_prometheus(&c, prom_port, true);

    let fleet_get = DataSource::new(format!("http://{}", c.http), Method::Get);
    let prom_get = DataSource::new(format!("http://127.0.0.1:{prom_port}"), Method::Get);
    // More than one 15 s step of history in fleet for both hosts (a dashboard's range query
    // at Grafana's step then has points), and Prometheus holding fleet's families.
    eventually(Duration::from_secs(40), "16 s of two hosts' history in fleet", || async {
        let q = "count(min_over_time(timestamp(fleet_host_memory_total_bytes)[1m:200ms]) < time() - 16)";
        let v = fleet_get.ok("/api/v1/query", &[("query", q)]).await;
        (v["data"]["result"][0]["value"][1] == "2").then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "Prometheus scraping the coordinator", || async {
        let (code, v) =
            prom_get.try_call("/api/v1/query", &[("query", "up{job=\"fleet-coordinator\"} == 1")]).await.ok()?;
        (code == 200 && v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "Prometheus' metadata of fleet's families", || async {
        let v = prom_get.ok("/api/v1/metadata", &[]).await;
        v["data"].as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("fleet_coordinator_"))).then_some(())
    })
    .await;

    for method in [Method::Post, Method::Get] {
        let fleet = DataSource::new(format!("http://{}", c.http), method);
        let prom = DataSource::new(format!("http://127.0.0.1:{prom_port}"), method);
        replay(&fleet, &prom).await;
    }
}

async fn replay(fleet: &DataSource, prom: &DataSource) {
    let now = fleet_common::now_ms() / 1000;
    let (start, end) = ((now - 300).to_string(), (now + 1).to_string());
    let range = [("start", start.as_str()), ("end", end.as_str())];

    // --- Adding the data source: "Save & test". -------------------------------------------
    // The health check: an instant `1+1` at t=4 (pkg/promlib/healthcheck.go).
    let health = [("query", "1+1"), ("time", "4")];
    let ours = fleet.ok("/api/v1/query", &health).await;
    let theirs = prom.ok("/api/v1/query", &health).await;
    assert_eq!(ours, theirs);
    assert_eq!(ours["data"], json!({ "resultType": "scalar", "result": [4, "2"] }));
    // The heuristics: buildinfo without "features" is Prometheus (not Mimir).
    let ours = fleet.ok("/api/v1/status/buildinfo", &[]).await;
    let theirs = prom.ok("/api/v1/status/buildinfo", &[]).await;
    assert_eq!(missing_keys(&ours["data"], &theirs["data"]), Vec::<String>::new(), "{ours} against {theirs}");
    assert!(ours["data"].get("features").is_none(), "{ours}");
    let version = ours["data"]["version"].as_str().unwrap();
    assert!(version.starts_with("3."), "Grafana picks PromQL features by this version: {version}");
    // The data source settings page shows the server's runtime.
    let ours = fleet.ok("/api/v1/status/runtimeinfo", &[]).await;
    let theirs = prom.ok("/api/v1/status/runtimeinfo", &[]).await;
    assert_eq!(missing_keys(&ours["data"], &theirs["data"]), Vec::<String>::new(), "{ours} against {theirs}");
    assert_eq!(ours["data"]["storageRetention"], "1h", "{ours}");

    // The version detection of the settings page sends buildinfo as a POST first and retries
    // with GET on 405, as both servers answer.
    let post = fleet.client.post(format!("{}/api/v1/status/buildinfo", fleet.base)).send().await.unwrap();
    let prom_post = prom.client.post(format!("{}/api/v1/status/buildinfo", prom.base)).send().await.unwrap();
    assert_eq!((post.status().as_u16(), prom_post.status().as_u16()), (405, 405));

    // --- Opening Explore: the data source's init(), then the language provider's start(). --
    // Recording rules for the query field's hints.
    let ours = fleet.ok("/api/v1/rules", &[]).await;
    assert_eq!(shape(&ours), shape(&prom.ok("/api/v1/rules", &[]).await));
    // The exemplar probe, with times in milliseconds.
    let probe_end = (now * 1000).to_string();
    let probe_start = ((now - 3600) * 1000).to_string();
    let probe = [("query", "test"), ("start", probe_start.as_str()), ("end", probe_end.as_str())];
    assert_eq!(fleet.ok("/api/v1/query_exemplars", &probe).await, prom.ok("/api/v1/query_exemplars", &probe).await);
    let with_limit = [range[0], range[1], ("limit", GRAFANA_LIMIT)];
    let names = fleet.ok("/api/v1/label/__name__/values", &with_limit).await;
    assert_eq!(shape(&names), shape(&prom.ok("/api/v1/label/__name__/values", &with_limit).await));
    let names = strings(&names["data"]);
    for n in ["fleet_agent_up", "fleet_host_cpu_usage_ratio", "fleet_host_memory_total_bytes"] {
        assert!(names.iter().any(|x| x == n), "{n} missing from metric names: {names:?}");
    }
    // Metadata: for every family Prometheus scraped from the coordinator, the same type and help.
    let ours = fleet.ok("/api/v1/metadata", &[("limit", GRAFANA_LIMIT)]).await;
    let theirs = prom.ok("/api/v1/metadata", &[("limit", GRAFANA_LIMIT)]).await;
    assert_eq!(shape(&ours)["data"].as_object().map(|_| ()), Some(()));
    let (om, tm) = (ours["data"].as_object().unwrap(), theirs["data"].as_object().unwrap());
    let common: Vec<&String> = tm.keys().filter(|k| k.starts_with("fleet_")).collect();
    assert!(common.len() >= 10, "Prometheus holds {} of fleet's families: {common:?}", common.len());
    for name in common {
        assert_eq!(om.get(name), tm.get(name), "metadata of {name}");
    }
    let host_up = &om["fleet_agent_up"][0];
    assert_eq!(host_up["type"], "gauge", "{host_up}");
    assert!(!host_up["help"].as_str().unwrap().is_empty(), "{host_up}");
    // One metric's metadata, and a limit on the number of metrics.
    let one = fleet.ok("/api/v1/metadata", &[("metric", "fleet_agent_up")]).await;
    assert_eq!(one["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["fleet_agent_up"]);
    let two = fleet.ok("/api/v1/metadata", &[("limit", "2")]).await;
    assert_eq!(two["data"].as_object().unwrap().len(), 2, "{two}");
    // Label names for the query field.
    let labels = fleet.ok("/api/v1/labels", &with_limit).await;
    assert_eq!(shape(&labels), shape(&prom.ok("/api/v1/labels", &with_limit).await));
    let labels = strings(&labels["data"]);
    assert!(labels.contains(&"host".to_string()) && labels.contains(&"__name__".to_string()), "{labels:?}");

    // A provisioned data source without httpMethod: the parameters stay in the URL of a POST.
    let url = format!("{}/api/v1/labels?start={start}&end={end}&limit={GRAFANA_LIMIT}", fleet.base);
    let v: Value = serde_json::from_str(&fleet.client.post(url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(strings(&v["data"]), labels);
    // Autocomplete of a metric name in code mode.
    let typed = [("limit", "1000"), range[0], range[1], ("match[]", "{__name__=~\".*cpu.*\"}")];
    let ours = fleet.ok("/api/v1/label/__name__/values", &typed).await;
    assert!(strings(&ours["data"]).iter().all(|n| n.contains("cpu")), "{ours}");
    assert!(strings(&ours["data"]).contains(&"fleet_host_cpu_usage_ratio".to_string()), "{ours}");

    // The metrics browser: a metric's label names, a label's values, the series.
    let fleet_match = [range[0], range[1], ("match[]", "fleet_agent_up")];
    let prom_match = [range[0], range[1], ("match[]", "up")];
    let ours = fleet.ok("/api/v1/labels", &fleet_match).await;
    assert_eq!(shape(&ours), shape(&prom.ok("/api/v1/labels", &prom_match).await));
    assert_eq!(strings(&ours["data"]), ["__name__", "host"]);
    let ours = fleet.ok("/api/v1/label/host/values", &fleet_match).await;
    assert_eq!(shape(&ours), shape(&prom.ok("/api/v1/label/job/values", &prom_match).await));
    assert_eq!(strings(&ours["data"]), ["main-pc", "pc2"]);
    let all = [range[0], range[1], ("match[]", "{__name__!=\"\"}"), ("limit", GRAFANA_LIMIT)];
    let ours = fleet.ok("/api/v1/series", &all).await;
    assert_eq!(series_shape(&ours), series_shape(&prom.ok("/api/v1/series", &all).await));
    assert!(ours["data"].as_array().unwrap().len() > 20, "{ours}");
    // A limit smaller than the answer: truncated, with Prometheus' warning.
    for (path, params) in [
        ("/api/v1/series", vec![range[0], range[1], ("match[]", "fleet_agent_up"), ("limit", "1")]),
        ("/api/v1/labels", vec![range[0], range[1], ("limit", "1")]),
        ("/api/v1/label/host/values", vec![range[0], range[1], ("limit", "1")]),
    ] {
        let v = fleet.ok(path, &params).await;
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{path}: {v}");
        assert_eq!(v["warnings"], json!(["results truncated due to limit"]), "{path}: {v}");
    }

    // Running a query in Explore: range and instant ("Both"), and exemplars.
    let step = "15";
    let aligned_start = ((now - 300) / 15 * 15).to_string();
    let q_range = |q: &'static str| {
        [("query", q), ("start", aligned_start.clone().leak()), ("end", end.clone().leak()), ("step", step)]
    };
    let ours = fleet.ok("/api/v1/query_range", &q_range("avg by (host) (fleet_host_cpu_usage_ratio)")).await;
    // (Prometheus started scraping a few seconds ago: a 1 s step reaches its samples.)
    let mut prom_range = q_range("avg by (job) (up)");
    prom_range[3].1 = "1";
    let theirs = prom.ok("/api/v1/query_range", &prom_range).await;
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(ours["data"]["resultType"], "matrix");
    assert_eq!(ours["data"]["result"].as_array().unwrap().len(), 2, "{ours}");
    let instant = [("query", "fleet_agent_up"), ("time", end.as_str())];
    let ours = fleet.ok("/api/v1/query", &instant).await;
    let theirs = prom.ok("/api/v1/query", &[("query", "up"), ("time", end.as_str())]).await;
    assert_eq!(shape(&ours), shape(&theirs));
    assert_eq!(ours["data"]["result"].as_array().unwrap().len(), 2, "{ours}");
    let ex = [("query", "fleet_agent_up"), ("start", aligned_start.as_str()), ("end", end.as_str())];
    let ours = fleet.ok("/api/v1/query_exemplars", &ex).await;
    assert_eq!(ours, prom.ok("/api/v1/query_exemplars", &ex).await);
    // Grafana's query timeout setting travels as `timeout`.
    let timed = [("query", "fleet_agent_up"), ("time", end.as_str()), ("timeout", "30s")];
    assert_eq!(fleet.ok("/api/v1/query", &timed).await["data"]["result"].as_array().unwrap().len(), 2);
    // "Format query" in the query editor.
    for q in ["sum(rate(fleet_host_network_receive_bytes_total{host=\"pc2\"}[5m])) by (host)", "fleet_agent_up==bool 1"]
    {
        let ours = fleet.ok("/api/v1/format_query", &[("query", q)]).await;
        let theirs = prom.ok("/api/v1/format_query", &[("query", q)]).await;
        assert_eq!(ours, theirs, "format_query of {q}");
    }

    // --- Loading a dashboard: a `label_values(fleet_agent_up, host)` variable, then panels. ---
    let var =
        fleet.ok("/api/v1/label/host/values", &[with_limit[0], with_limit[1], with_limit[2], fleet_match[2]]).await;
    assert_eq!(strings(&var["data"]), ["main-pc", "pc2"]);
    // `label_values(host)`, `query_result(...)` and a bare expression as variables.
    let var = fleet.ok("/api/v1/label/host/values", &with_limit).await;
    assert!(strings(&var["data"]).starts_with(&["main-pc".to_string(), "pc2".to_string()]), "{var}");
    let qr = [("query", "topk(1, fleet_host_memory_total_bytes)"), ("time", end.as_str())];
    let ours = fleet.ok("/api/v1/query", &qr).await;
    assert_eq!(ours["data"]["result"].as_array().unwrap().len(), 1, "{ours}");
    let bare = fleet.ok("/api/v1/series", &[("match[]", "fleet_agent_up"), range[0], range[1]]).await;
    assert_eq!(bare["data"].as_array().unwrap().len(), 2, "{bare}");
    for q in [
        "sum(fleet_agent_up)",
        "fleet_host_cpu_usage_ratio{host=~\"main-pc|pc2\"}",
        "1 - fleet_host_memory_available_bytes / fleet_host_memory_total_bytes",
    ] {
        let v = fleet.ok("/api/v1/query_range", &q_range(q)).await;
        let series = v["data"]["result"].as_array().unwrap();
        assert!(!series.is_empty() && !series[0]["values"].as_array().unwrap().is_empty(), "{q}: {v}");
    }

    // --- Errors Grafana shows under a panel: Prometheus' error types and status codes. -----
    for (path, params) in [
        ("/api/v1/query", vec![("query", "sum(")]),
        ("/api/v1/query", vec![("query", "no_such_function(fleet_agent_up)")]),
        ("/api/v1/query", vec![("query", "fleet_agent_up"), ("time", "yesterday")]),
        ("/api/v1/query_range", vec![("query", "fleet_agent_up"), ("start", "0"), ("end", "100000"), ("step", "1")]),
        ("/api/v1/query_range", vec![("query", "fleet_agent_up"), ("start", "10"), ("end", "0"), ("step", "1")]),
    ] {
        let (oc, ours) = fleet.call(path, &params).await;
        let (tc, theirs) = prom.call(path, &params).await;
        assert_eq!((oc, shape(&ours)), (tc, shape(&theirs)), "{path} {params:?}: {ours} against {theirs}");
        assert_eq!(ours["errorType"], theirs["errorType"], "{path} {params:?}: {ours} against {theirs}");
        assert_eq!(ours["status"], "error");
    }
}

//! The history as time series (DESIGN §6): every sample agents reported, under the metric names
//! of `/metrics`, at the time the agent took it, kept for the retention and bounded by a series
//! limit. Rules, the Prometheus query API and `fleetctl query` read it through
//! [`fleet_rules::promql::Storage`].
//!
//! The series are rebuilt from the durable report store at start-up; `fleet_agent_up` is
//! sampled from the registry every few seconds, the way Prometheus records `up` at each scrape.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use fleet_proto::v1::Report;
use fleet_rules::promql::{Labels, NAME, Series, Storage};
use promql_parser::label::Matchers;

use crate::metrics::{HOST_GAUGES, SERVICE};

/// Series kept at most, whatever the retention.
pub const DEFAULT_MAX_SERIES: usize = 200_000;

/// Samples by series, each oldest first.
type SeriesMap = HashMap<Arc<Labels>, VecDeque<(i64, f64)>>;

/// The series store.
#[derive(Debug)]
pub struct Tsdb {
    series: RwLock<SeriesMap>,
    retention_ms: i64,
    max_series: usize,
    dropped_series: std::sync::atomic::AtomicU64,
}

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert(NAME.into(), name.into());
    l
}

/// The labels of `fleet_agent_up` for `host`.
pub fn up_labels(host: &str) -> Labels {
    labels("fleet_agent_up", &[("host", host)])
}

/// The samples one report carries, as (labels, value).
pub fn report_samples(host: &str, r: &Report) -> Vec<(Labels, f64)> {
    let mut out = Vec::with_capacity(64);
    // A report is proof of life at the time it was taken (offline hosts get their 0s from the
    // up sampler).
    out.push((up_labels(host), 1.0));
    out.push((labels("fleet_agent_reports_dropped_total", &[("host", host)]), r.reports_dropped_total as f64));
    if let Some(m) = &r.host {
        for (name, _, get) in HOST_GAUGES {
            out.push((labels(name, &[("host", host)]), get(m)));
        }
        for fs in &m.filesystems {
            let l = [("host", host), ("mountpoint", fs.mountpoint.as_str())];
            out.push((labels("fleet_host_filesystem_size_bytes", &l), fs.size_bytes as f64));
            out.push((labels("fleet_host_filesystem_avail_bytes", &l), fs.avail_bytes as f64));
        }
        for n in &m.networks {
            let l = [("host", host), ("device", n.device.as_str())];
            out.push((labels("fleet_host_network_receive_bytes_total", &l), n.receive_bytes_total as f64));
            out.push((labels("fleet_host_network_transmit_bytes_total", &l), n.transmit_bytes_total as f64));
        }
    }
    for s in &r.services {
        let l = [("host", host), ("service", s.name.as_str())];
        for (name, _, _, get) in SERVICE {
            out.push((labels(name, &l), get(s)));
        }
        out.push((
            labels(
                "fleet_service_info",
                &[("host", host), ("service", s.name.as_str()), ("version", s.version.as_str())],
            ),
            1.0,
        ));
    }
    out
}

impl Tsdb {
    /// An empty store keeping `retention_ms` of samples in at most `max_series` series.
    pub fn new(retention_ms: i64, max_series: usize) -> Tsdb {
        Tsdb { series: RwLock::new(HashMap::new()), retention_ms, max_series, dropped_series: Default::default() }
    }

    /// Adds a sample; keeps each series ordered by time (replayed reports may be older).
    pub fn append(&self, labels: Labels, t: i64, v: f64) {
        let mut map = self.series.write().expect("tsdb lock");
        let len = map.len();
        let max = self.max_series;
        let Some(points) = (match map.get_mut(&labels) {
            Some(p) => Some(p),
            None if len < max => Some(map.entry(Arc::new(labels)).or_default()),
            None => None,
        }) else {
            self.dropped_series.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        match points.back() {
            Some(&(last, _)) if last < t => points.push_back((t, v)),
            None => points.push_back((t, v)),
            _ => {
                let i = points.partition_point(|&(x, _)| x < t);
                if points.get(i).is_some_and(|&(x, _)| x == t) {
                    points[i].1 = v;
                } else {
                    points.insert(i, (t, v));
                }
            }
        }
    }

    /// Adds every sample of a report.
    pub fn append_report(&self, host: &str, r: &Report) {
        for (l, v) in report_samples(host, r) {
            self.append(l, r.timestamp_ms, v);
        }
    }

    /// Drops samples older than the retention and series left empty.
    pub fn trim(&self, now_ms: i64) {
        let cutoff = now_ms - self.retention_ms;
        let mut map = self.series.write().expect("tsdb lock");
        map.retain(|_, p| {
            while p.front().is_some_and(|&(t, _)| t < cutoff) {
                p.pop_front();
            }
            !p.is_empty()
        });
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.read().expect("tsdb lock").len()
    }

    /// Whether there is no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples refused because the series limit was reached.
    pub fn dropped_series(&self) -> u64 {
        self.dropped_series.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every label set matching, with samples in `(start, end]` (for `/api/v1/series`).
    pub fn label_sets(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Labels> {
        self.select(name, m, start, end).into_iter().map(|s| s.labels).collect()
    }
}

impl Storage for Tsdb {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        let map = self.series.read().expect("tsdb lock");
        let mut out = Vec::new();
        for (l, points) in map.iter() {
            if !fleet_rules::promql::matches(l, name, m) {
                continue;
            }
            let from = points.partition_point(|&(t, _)| t <= start);
            let to = points.partition_point(|&(t, _)| t <= end);
            if from < to {
                out.push(Series { labels: (**l).clone(), points: points.range(from..to).copied().collect() });
            }
        }
        out
    }
}

/// A store that also accepts recording rules' results.
#[derive(Debug, Clone)]
pub struct Writable(pub Arc<Tsdb>);

impl Storage for Writable {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.0.select(name, m, start, end)
    }
}

impl fleet_rules::rules::Appender for Writable {
    fn append(&mut self, labels: Labels, t: i64, v: f64) {
        self.0.append(labels, t, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_rules::promql::{Value, eval, parse};

    #[test]
    fn reports_become_series_queryable_with_promql() {
        let db = Tsdb::new(3_600_000, 1000);
        for i in 0..10 {
            let r = Report {
                timestamp_ms: i * 1000,
                host: Some(fleet_proto::v1::HostMetrics { cpu_usage_ratio: 0.5, ..Default::default() }),
                ..Default::default()
            };
            db.append_report("pc2", &r);
        }
        // A replayed, older report lands in order.
        db.append_report("pc2", &Report { timestamp_ms: 500, host: Some(Default::default()), ..Default::default() });
        let v =
            eval(&parse("count_over_time(fleet_host_cpu_usage_ratio{host=\"pc2\"}[1m])").unwrap(), &db, 9_000).unwrap();
        let Value::Vector(v) = v else { panic!() };
        assert_eq!(v[0].v, 11.0);
        db.trim(3_600_000 + 5_000);
        let v =
            eval(&parse("count_over_time(fleet_host_cpu_usage_ratio[2h])").unwrap(), &db, 3_600_000 + 5_000).unwrap();
        let Value::Vector(v) = v else { panic!() };
        assert_eq!(v[0].v, 5.0, "samples older than the retention (before 5s) are gone");
    }

    #[test]
    fn the_series_limit_holds() {
        let db = Tsdb::new(3_600_000, 2);
        for i in 0..5 {
            db.append(labels("x", &[("i", &i.to_string())]), 0, 1.0);
        }
        assert_eq!(db.len(), 2);
        assert_eq!(db.dropped_series(), 3);
    }
}

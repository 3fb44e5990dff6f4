//! The history as time series (docs/design.md §6): every sample agents reported, under the metric names
//! of `/metrics`, at the time the agent took it, kept for the retention and bounded by a series
//! limit. Rules, the Prometheus query API and `fleetctl query` read it through
//! [`fleet_rules::promql::Storage`].
//!
//! The series are rebuilt from the durable report store at start-up; `fleet_agent_up` is
//! sampled from the registry every few seconds, the way Prometheus records `up` at each scrape.

mod chunk;

pub use chunk::CHUNK_SAMPLES;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fleet_proto::v1::Report;
use fleet_rules::promql::{Labels, NAME, Series, Storage};
use promql_parser::label::Matchers;

/// Series kept at most, whatever the retention.
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;

/// Hash maps keyed by interned ids and label strings: foldhash is several times faster than
/// SipHash on these short keys and still seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An interned string.
type Sym = u32;

/// A series' labels other than the metric name: (name, value) pairs sorted by name.
type Key = Box<[(Sym, Sym)]>;

/// Label names and values, each stored once however many series carry it (every series of a
/// host repeats `host="…"`, every series of a metric its name).
#[derive(Debug, Default)]
struct Interner {
    ids: Map<Arc<str>, Sym>,
    strings: Vec<Arc<str>>,
}

impl Interner {
    fn get(&self, s: &str) -> Option<Sym> {
        self.ids.get(s).copied()
    }

    fn intern(&mut self, s: &str) -> Sym {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as Sym;
        let s: Arc<str> = s.into();
        self.strings.push(s.clone());
        self.ids.insert(s, id);
        id
    }

    fn resolve(&self, id: Sym) -> &str {
        &self.strings[id as usize]
    }

    /// The string, shared.
    fn shared(&self, id: Sym) -> Arc<str> {
        self.strings[id as usize].clone()
    }
}

/// Series by metric name, then by the rest of their labels.
#[derive(Debug, Default)]
struct Inner {
    strings: Interner,
    by_name: Map<Sym, Map<Key, chunk::Samples>>,
    series: usize,
    /// The key being looked up.
    scratch: Vec<(Sym, Sym)>,
    files: chunk::ChunkFiles,
    /// Samples before this time are past the retention, even where their chunk is still kept.
    cutoff_ms: i64,
}

impl Inner {
    /// The samples of the series `name{pairs}`, created if the series limit allows. Finding an
    /// existing series allocates nothing: the key is built in a reused buffer.
    fn samples_mut(
        &mut self,
        name: &str,
        pairs: &mut [(&str, &str)],
        max_series: usize,
    ) -> Option<(&mut chunk::Samples, &mut chunk::ChunkFiles)> {
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        self.scratch.clear();
        let mut known = self.strings.get(name);
        for (k, v) in pairs.iter() {
            match (self.strings.get(k), self.strings.get(v)) {
                (Some(k), Some(v)) => self.scratch.push((k, v)),
                _ => known = None,
            }
        }
        if let Some(n) = known
            && self.by_name.get(&n).is_some_and(|m| m.contains_key(self.scratch.as_slice()))
        {
            let samples =
                self.by_name.get_mut(&n).and_then(|m| m.get_mut(self.scratch.as_slice())).expect("just found");
            return Some((samples, &mut self.files));
        }
        if self.series >= max_series {
            return None;
        }
        let n = self.strings.intern(name);
        let key: Key = pairs.iter().map(|(k, v)| (self.strings.intern(k), self.strings.intern(v))).collect();
        self.series += 1;
        Some((self.by_name.entry(n).or_default().entry(key).or_default(), &mut self.files))
    }

    /// A series' labels: its interned strings shared, not copied.
    fn labels(&self, name: Sym, key: &Key) -> Labels {
        let mut l =
            Labels::from_sorted(key.iter().map(|&(k, v)| (self.strings.shared(k), self.strings.shared(v))).collect());
        l.insert(Arc::<str>::from(NAME), self.strings.shared(name));
        l
    }

    /// Rebuilds the interner from the strings live series use, once most are dead (host and
    /// version labels come and go).
    fn compact_strings(&mut self) {
        if self.strings.strings.len() < 1024 || self.strings.strings.len() < 4 * (self.series + self.by_name.len()) {
            return;
        }
        let old = std::mem::take(&mut self.strings);
        let by_name = std::mem::take(&mut self.by_name);
        for (n, series) in by_name {
            let n = self.strings.intern(old.resolve(n));
            let m: Map<Key, chunk::Samples> = series
                .into_iter()
                .map(|(key, s)| {
                    let key = key
                        .iter()
                        .map(|&(k, v)| (self.strings.intern(old.resolve(k)), self.strings.intern(old.resolve(v))))
                        .collect();
                    (key, s)
                })
                .collect();
            self.by_name.insert(n, m);
        }
    }
}

/// The series store.
#[derive(Debug)]
pub struct Tsdb {
    inner: RwLock<Inner>,
    retention_ms: i64,
    max_series: usize,
    dropped_series: AtomicU64,
    /// False while the series are being rebuilt from the report log at start-up.
    loaded: std::sync::atomic::AtomicBool,
}

/// The metric that says whether a host's agent is up.
pub const UP: &str = "fleet_agent_up";

/// Calls `f(name, labels, value)` for every sample one report carries: `fleet_agent_up` (a
/// report is proof of life at the time it was taken; offline hosts get their 0s from the up
/// sampler) and the families of [`crate::series::REPORT_FAMILIES`].
pub fn report_samples(host: &str, r: &Report, mut f: impl FnMut(&str, &mut [(&str, &str)], f64)) {
    f(UP, &mut [("host", host)], 1.0);
    crate::series::report_samples(host, r, f);
}

/// What the store holds, for `/metrics` and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Series held.
    pub series: usize,
    /// Samples in them.
    pub samples: usize,
    /// Bytes of compressed samples in memory.
    pub sample_bytes: usize,
    /// Bytes of compressed samples in segment files.
    pub disk_bytes: u64,
    /// Chunks that could not be written to or read from their segment file.
    pub chunk_errors: u64,
}

impl Tsdb {
    /// An empty store keeping `retention_ms` of samples in at most `max_series` series, all in
    /// memory.
    pub fn new(retention_ms: i64, max_series: usize) -> Tsdb {
        Tsdb {
            inner: RwLock::new(Inner::default()),
            retention_ms,
            max_series,
            dropped_series: Default::default(),
            loaded: true.into(),
        }
    }

    /// Marks the history as being rebuilt: samples taken now (`fleet_agent_up`, recording
    /// rules) must wait, so that every series is written in time order, and so must rules,
    /// which would see a partial past.
    pub fn begin_loading(&self) {
        self.loaded.store(false, Ordering::Release);
    }

    /// Marks the history as rebuilt.
    pub fn finish_loading(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the history holds everything stored (false while it is rebuilt at start-up).
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Like [`Tsdb::new`], with full chunks moved to segment files in `dir` (emptied first:
    /// the history is rebuilt from the report store at start-up).
    pub fn on_disk(dir: std::path::PathBuf, retention_ms: i64, max_series: usize) -> std::io::Result<Tsdb> {
        let db = Tsdb::new(retention_ms, max_series);
        db.write().files = chunk::ChunkFiles::open(dir)?;
        Ok(db)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("tsdb lock")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("tsdb lock")
    }

    fn append_locked(&self, inner: &mut Inner, name: &str, pairs: &mut [(&str, &str)], t: i64, v: f64) {
        match inner.samples_mut(name, pairs, self.max_series) {
            Some((s, files)) => s.append(t, v, files),
            None => {
                self.dropped_series.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds a sample; keeps each series ordered by time (replayed reports may be older).
    pub fn append(&self, labels: Labels, t: i64, v: f64) {
        let name = labels.get(NAME).unwrap_or_default();
        let mut pairs: Vec<(&str, &str)> = labels.iter().filter(|(k, _)| *k != NAME).collect();
        self.append_locked(&mut self.write(), name, &mut pairs, t, v);
    }

    /// Adds a sample of `name{pairs}` (any order) without building a label map.
    pub fn append_sample(&self, name: &str, pairs: &mut [(&str, &str)], t: i64, v: f64) {
        self.append_locked(&mut self.write(), name, pairs, t, v);
    }

    /// Adds every sample of a report, under one lock.
    pub fn append_report(&self, host: &str, r: &Report) {
        let mut inner = self.write();
        report_samples(host, r, |name, pairs, v| self.append_locked(&mut inner, name, pairs, r.timestamp_ms, v));
    }

    /// Drops samples older than the retention and series left empty.
    pub fn trim(&self, now_ms: i64) {
        let cutoff = now_ms - self.retention_ms;
        let mut inner = self.write();
        inner.cutoff_ms = inner.cutoff_ms.max(cutoff);
        let mut removed = 0;
        for series in inner.by_name.values_mut() {
            series.retain(|_, s| {
                let keep = s.trim(cutoff);
                removed += usize::from(!keep);
                keep
            });
            series.shrink_to_fit();
        }
        inner.by_name.retain(|_, m| !m.is_empty());
        inner.series -= removed;
        inner.files.trim(cutoff);
        if removed > 0 {
            inner.compact_strings();
        }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.read().series
    }

    /// Whether there is no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples refused because the series limit was reached.
    pub fn dropped_series(&self) -> u64 {
        self.dropped_series.load(Ordering::Relaxed)
    }

    /// Bytes in segment files, and chunks that could not be written or read.
    pub fn chunk_files(&self) -> (u64, u64) {
        let inner = self.read();
        (inner.files.disk_bytes(), inner.files.errors())
    }

    /// Counts series, samples and their bytes (walks every series: for benchmarks and tests).
    pub fn footprint(&self) -> Footprint {
        let inner = self.read();
        let mut f = Footprint {
            series: inner.series,
            sample_bytes: inner.files.memory_bytes(),
            disk_bytes: inner.files.disk_bytes(),
            chunk_errors: inner.files.errors(),
            samples: 0,
        };
        for s in inner.by_name.values().flat_map(|m| m.values()) {
            f.samples += s.len(&inner.files, inner.cutoff_ms);
            f.sample_bytes += s.heap_bytes();
        }
        f
    }

    /// Every label set matching, with samples in `(start, end]` (for `/api/v1/series`).
    pub fn label_sets(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Labels> {
        self.select(name, m, start, end).into_iter().map(|s| s.labels).collect()
    }
}

impl Tsdb {
    /// Calls `f` with the series matching and their samples in `(start, end]` (all of them, or
    /// only the newest), one series at a time.
    fn select_with(
        &self,
        name: Option<&str>,
        m: &Matchers,
        start: i64,
        end: i64,
        latest: bool,
        f: &mut fleet_rules::promql::EachSeries<'_>,
    ) {
        // Under the lock, only what is in memory: the matching series, a copy of their open
        // chunks and where their sealed ones begin. The sealed chunks are read from disk after
        // the lock is released, so reports keep being appended while rules read the past.
        let (found, reader, start) = {
            let inner = self.read();
            let start = start.max(inner.cutoff_ms - 1);
            let names: Vec<Sym> = match name {
                Some(n) => inner.strings.get(n).into_iter().collect(),
                None => inner.by_name.keys().copied().collect(),
            };
            let mut found = Vec::new();
            for n in names {
                let Some(series) = inner.by_name.get(&n) else { continue };
                let metric = inner.strings.resolve(n);
                for (key, samples) in series {
                    let get = |label: &str| {
                        if label == NAME {
                            return Some(metric);
                        }
                        key.iter()
                            .find(|(k, _)| inner.strings.resolve(*k) == label)
                            .map(|&(_, v)| inner.strings.resolve(v))
                    };
                    if !fleet_rules::promql::matches_with(get, name, m) {
                        continue;
                    }
                    if let Some(snapshot) = samples.snapshot(start, end) {
                        found.push((inner.labels(n, key), snapshot));
                    }
                }
            }
            (found, inner.files.reader(), start)
        };
        let mut points = Vec::new();
        for (labels, snapshot) in found {
            points.clear();
            if latest {
                points.extend(snapshot.latest(start, end, &reader));
            } else {
                snapshot.range(start, end, &reader, &mut points);
            }
            if !points.is_empty() {
                f(labels, &points);
            }
        }
    }

    /// [`Tsdb::select_with`] into a vector.
    fn collect(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64, latest: bool) -> Vec<Series> {
        let mut out = Vec::new();
        self.select_with(name, m, start, end, latest, &mut |labels, points| {
            out.push(Series { labels, points: points.to_vec() })
        });
        out
    }
}

impl Storage for Tsdb {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.collect(name, m, start, end, false)
    }

    fn select_each(
        &self,
        name: Option<&str>,
        m: &Matchers,
        start: i64,
        end: i64,
        f: &mut fleet_rules::promql::EachSeries<'_>,
    ) {
        self.select_with(name, m, start, end, false, f);
    }

    fn select_latest(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.collect(name, m, start, end, true)
    }
}

/// A store that also accepts recording rules' results.
#[derive(Debug, Clone)]
pub struct Writable(pub Arc<Tsdb>);

impl Storage for Writable {
    fn select(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.0.select(name, m, start, end)
    }

    fn select_each(
        &self,
        name: Option<&str>,
        m: &Matchers,
        start: i64,
        end: i64,
        f: &mut fleet_rules::promql::EachSeries<'_>,
    ) {
        self.0.select_each(name, m, start, end, f);
    }

    fn select_latest(&self, name: Option<&str>, m: &Matchers, start: i64, end: i64) -> Vec<Series> {
        self.0.select_latest(name, m, start, end)
    }
}

impl fleet_rules::rules::Appender for Writable {
    fn append(&mut self, labels: Labels, t: i64, v: f64) {
        self.0.append(labels, t, v);
    }
}

/// The history's size: series held and dropped, bytes of chunk files, chunk errors.
impl crate::metrics::FmtMetrics for Tsdb {
    fn fmt_metrics(&self, e: &mut crate::metrics::Exposition) {
        let tsdb = self;
        e.family("fleet_coordinator_history_series", "gauge", "Series held in the history.");
        e.sample("fleet_coordinator_history_series", &[], tsdb.len() as f64);
        e.family(
            "fleet_coordinator_history_series_dropped_total",
            "counter",
            "Samples dropped because the history reached [history] max_series.",
        );
        e.sample("fleet_coordinator_history_series_dropped_total", &[], tsdb.dropped_series() as f64);
        let (disk_bytes, chunk_errors) = tsdb.chunk_files();
        e.family(
            "fleet_coordinator_history_disk_bytes",
            "gauge",
            "Bytes of full history chunks in segment files under data_dir/history.",
        );
        e.sample("fleet_coordinator_history_disk_bytes", &[], disk_bytes as f64);
        e.family(
            "fleet_coordinator_history_chunk_errors_total",
            "counter",
            "History chunks that could not be written to disk (kept in memory instead) or read back.",
        );
        e.sample("fleet_coordinator_history_chunk_errors_total", &[], chunk_errors as f64);
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
            let mut l = Labels::new();
            l.insert(NAME, "x");
            l.insert("i", i.to_string());
            db.append(l, 0, 1.0);
        }
        assert_eq!(db.len(), 2);
        assert_eq!(db.dropped_series(), 3);
    }
}

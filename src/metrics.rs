//! Metrics: counters (of events, or of time in seconds), latency histograms and bounded label
//! families, and the Prometheus text endpoint that shows them.
//!
//! Metrics are process-wide (like Prometheus client libraries): a component asks the registry
//! for its counter once, keeps the `Arc`, and bumps it on the hot path with one atomic add.
//! Histograms are Prometheus histograms (`_bucket{le}`, `_sum`, `_count`, in seconds) over one
//! fixed bucket layout, [`BUCKETS_SECONDS`], so the same metric of many agents can be summed
//! before `histogram_quantile`; recording is two atomic adds, no lock. Label values that come
//! from clients (topic names) go through a [`Bounded`] family, which gives the first
//! `max` values their own series and counts the rest under `__other`. Families whose names are
//! not known in advance (the metrics clients push) come from [`text_families`] sources, which
//! bound themselves. [`render`] writes them all in Prometheus' text format (`GET /metrics`,
//! served by [`crate::health::serve`]).
//!
//! Conventions: base units in names (`_seconds`, `_bytes`), `_total` on counters and only on
//! them, Kafka's names for APIs (`Produce`) and error codes (`NOT_COORDINATOR`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The upper bounds (`le`) of every histogram's buckets, in seconds: 1-2-5 steps from 100 us
/// to 50 s, then 60 s (and `+Inf`). Each bucket is at most 2.5 times the one below, so an
/// interpolated quantile is within that factor; the bounds are round numbers that alert
/// thresholds (`> 2`) can sit on.
pub const BUCKETS_SECONDS: [f64; 19] =
    [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 60.0];

/// [`BUCKETS_SECONDS`] in nanoseconds, for the hot path (no float arithmetic per record).
const BUCKETS_NS: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < 19 {
        out[i] = (BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// Latencies, counted in the buckets of [`BUCKETS_SECONDS`] (the last one `+Inf`), with their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); index 19 is above 60 s.
    buckets: [AtomicU64; BUCKETS_SECONDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A copy of a histogram: cumulative counts per bucket (the last one `+Inf`: the count), and
/// the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; BUCKETS_SECONDS.len() + 1],
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is >= the value (Prometheus' `le`).
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; BUCKETS_SECONDS.len() + 1];
        let mut total = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *c = total;
        }
        HistogramSnapshot { cumulative, sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[BUCKETS_SECONDS.len()]
    }

    /// The `q` quantile in seconds as Prometheus' `histogram_quantile` estimates it (linear
    /// within a bucket, the first from 0, the highest finite bound for `+Inf`); None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&BUCKETS_SECONDS, &self.cumulative, q)
    }
}

/// `histogram_quantile(q)` over cumulative bucket counts `cumulative` with upper bounds
/// `bounds` (one fewer than the counts: the last count is `+Inf`'s).
pub fn quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 || bounds.len() + 1 != cumulative.len() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let i = cumulative.iter().position(|&c| c as f64 >= rank)?;
    if i == bounds.len() {
        return bounds.last().copied();
    }
    let (lower, below) = if i == 0 { (0.0, 0) } else { (bounds[i - 1], cumulative[i - 1]) };
    let in_bucket = (cumulative[i] - below) as f64;
    if in_bucket == 0.0 {
        return Some(bounds[i]);
    }
    Some(lower + (bounds[i] - lower) * (rank - below as f64) / in_bucket)
}

/// The series of a family with one client-chosen label (a topic name), bounded: the first
/// `max` values get their own (made by `make`), later ones share [`OTHER`]'s. A value keeps its
/// series for the life of the process (a counter must not jump between series). Looking a
/// value up takes a read lock and no allocation; the write lock only for a value not seen yet.
pub struct Bounded<T> {
    max: usize,
    make: fn(&str) -> Arc<T>,
    known: RwLock<BTreeMap<Box<str>, Arc<T>>>,
}

impl<T> Bounded<T> {
    pub const fn new(max: usize, make: fn(&str) -> Arc<T>) -> Self {
        Bounded { max, make, known: RwLock::new(BTreeMap::new()) }
    }

    /// The series of `value` (or [`OTHER`]'s).
    pub fn get(&self, value: &str) -> Arc<T> {
        if let Some(s) = self.known.read().unwrap_or_else(|p| p.into_inner()).get(value) {
            return s.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = known.get(value) {
            return s.clone();
        }
        let value = if known.len() < self.max { value } else { OTHER };
        let s = known.entry(value.into()).or_insert_with(|| (self.make)(value)).clone();
        debug_assert!(known.len() <= self.max + 1);
        s
    }
}

impl Bounded<Counter> {
    /// Adds `n` to the counter of `value` (or [`OTHER`]'s).
    pub fn add(&self, value: &str, n: u64) {
        if let Some(c) = self.known.read().unwrap_or_else(|p| p.into_inner()).get(value) {
            c.add(n);
            return;
        }
        self.get(value).add(n);
    }
}

/// The label value that stands for every value past a family's bound.
pub const OTHER: &str = "__other";

/// Topics a per-topic family names (as `sidestream_stored_topic_bytes` does); the rest are
/// counted under [`OTHER`].
pub const TOPIC_LABELS_MAX: usize = 100;

enum Metric {
    Counter(Arc<Counter>),
    Histogram(Arc<Histogram>),
    /// A counter of microseconds, shown in seconds ([`seconds_counter`]).
    Seconds(Arc<Counter>),
}

/// Metric name + sorted labels.
type Key = (&'static str, Vec<(&'static str, String)>);

/// Samples of a gauge family, computed when scraped: (labels, value).
pub type GaugeSamples = Vec<(Vec<(&'static str, String)>, i64)>;
type GaugeFn = Box<dyn Fn() -> GaugeSamples + Send + Sync>;
type TextFn = Box<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
struct Registry {
    help: Mutex<BTreeMap<&'static str, &'static str>>,
    metrics: Mutex<BTreeMap<Key, Metric>>,
    /// Gauge families computed at scrape time (name -> help, samples).
    gauges: Mutex<BTreeMap<&'static str, (&'static str, GaugeFn)>>,
    /// Whole families written in the text format at scrape time, by source name.
    texts: Mutex<BTreeMap<&'static str, TextFn>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let mut l: Vec<_> = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    l.sort();
    (name, l)
}

/// The counter `name{labels}` (created on first use).
pub fn counter(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Counter> {
    let r = registry();
    r.help.lock().unwrap_or_else(|p| p.into_inner()).insert(name, help);
    let mut m = r.metrics.lock().unwrap_or_else(|p| p.into_inner());
    match m.entry(key(name, labels)).or_insert_with(|| Metric::Counter(Arc::default())) {
        Metric::Counter(c) => c.clone(),
        // A name used as two kinds: keep the second invisible.
        Metric::Histogram(_) | Metric::Seconds(_) => Arc::default(),
    }
}

/// The latency histogram `name{labels}` (created on first use).
pub fn histogram(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Histogram> {
    let r = registry();
    r.help.lock().unwrap_or_else(|p| p.into_inner()).insert(name, help);
    let mut m = r.metrics.lock().unwrap_or_else(|p| p.into_inner());
    match m.entry(key(name, labels)).or_insert_with(|| Metric::Histogram(Arc::default())) {
        Metric::Histogram(h) => h.clone(),
        Metric::Counter(_) | Metric::Seconds(_) => Arc::default(),
    }
}

/// The counter `name{labels}` of a duration: add microseconds, it shows seconds (a name ending
/// in `_seconds_total`).
pub fn seconds_counter(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Counter> {
    let r = registry();
    r.help.lock().unwrap_or_else(|p| p.into_inner()).insert(name, help);
    let mut m = r.metrics.lock().unwrap_or_else(|p| p.into_inner());
    match m.entry(key(name, labels)).or_insert_with(|| Metric::Seconds(Arc::default())) {
        Metric::Seconds(c) => c.clone(),
        Metric::Counter(_) | Metric::Histogram(_) => Arc::default(),
    }
}

/// Registers (or replaces) the gauge family `name`, whose samples `samples` computes at every
/// scrape (values that live elsewhere, like consumer lag).
pub fn gauges(name: &'static str, help: &'static str, samples: impl Fn() -> GaugeSamples + Send + Sync + 'static) {
    registry().gauges.lock().unwrap_or_else(|p| p.into_inner()).insert(name, (help, Box::new(samples)));
}

/// Registers (or replaces) the source `name` of whole families that [`render`] appends in
/// the text format (`# HELP`, `# TYPE`, samples): series whose names are not known in advance,
/// like the metrics clients push ([`crate::agent::client_telemetry`]). The source bounds what
/// it writes. Not part of [`snapshot`] (OTLP export).
pub fn text_families(name: &'static str, write: impl Fn(&mut String) + Send + Sync + 'static) {
    registry().texts.lock().unwrap_or_else(|p| p.into_inner()).insert(name, Box::new(write));
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// Every metric in the Prometheus text exposition format.
pub fn render() -> String {
    let r = registry();
    let help = r.help.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let metrics = r.metrics.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let mut last = "";
    for ((name, labels), m) in metrics.iter() {
        if *name != last {
            let kind = if matches!(m, Metric::Histogram(_)) { "histogram" } else { "counter" };
            let _ = writeln!(out, "# HELP {name} {}", help.get(name).unwrap_or(&""));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last = name;
        }
        match m {
            Metric::Counter(c) => {
                let _ = writeln!(out, "{name}{} {}", label_text(labels, None), c.get());
            }
            Metric::Seconds(c) => {
                let _ = writeln!(out, "{name}{} {}", label_text(labels, None), c.get() as f64 / 1e6);
            }
            Metric::Histogram(h) => {
                let snap = h.snapshot();
                for (i, c) in snap.cumulative.iter().enumerate() {
                    let le = BUCKETS_SECONDS.get(i).map_or_else(|| "+Inf".to_string(), f64::to_string);
                    let _ = writeln!(out, "{name}_bucket{} {c}", label_text(labels, Some(("le", &le))));
                }
                let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), snap.sum_seconds);
                let _ = writeln!(out, "{name}_count{} {}", label_text(labels, None), snap.count());
            }
        }
    }
    drop(metrics);
    let gauges = r.gauges.lock().unwrap_or_else(|p| p.into_inner());
    for (name, (help, samples)) in gauges.iter() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, v) in samples() {
            let _ = writeln!(out, "{name}{} {v}", label_text(&labels, None));
        }
    }
    drop(gauges);
    let texts = r.texts.lock().unwrap_or_else(|p| p.into_inner());
    for write in texts.values() {
        write(&mut out);
    }
    out
}

/// One series' value in a [`snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter of events (monotonic).
    Counter(u64),
    /// A counter of time, in seconds (monotonic).
    Seconds(f64),
    /// A gauge's sample, computed now.
    Gauge(i64),
    /// A latency histogram over [`BUCKETS_SECONDS`].
    Histogram(HistogramSnapshot),
}

/// One series of the registry as data: the same names, help texts and labels as [`render`]
/// writes (`sidestream_produce_records_total{...}`), for exporters that want values, not text
/// (OTLP, `crate::telemetry`).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// Every series of the registry now, sorted by name then labels (gauge families after the
/// rest, as [`render`] orders them).
pub fn snapshot() -> Vec<Series> {
    let r = registry();
    let help = r.help.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let metrics = r.metrics.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(metrics.len());
    for ((name, labels), m) in metrics.iter() {
        let value = match m {
            Metric::Counter(c) => Value::Counter(c.get()),
            Metric::Seconds(c) => Value::Seconds(c.get() as f64 / 1e6),
            Metric::Histogram(h) => Value::Histogram(h.snapshot()),
        };
        out.push(Series { name, help: help.get(name).copied().unwrap_or(""), labels: labels.clone(), value });
    }
    drop(metrics);
    let gauges = r.gauges.lock().unwrap_or_else(|p| p.into_inner());
    for (name, (help, samples)) in gauges.iter() {
        for (labels, v) in samples() {
            out.push(Series { name, help, labels, value: Value::Gauge(v) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let c = counter("test_things_total", "Things.", &[("kind", "a")]);
        c.add(3);
        counter("test_things_total", "Things.", &[("kind", "a")]).inc();
        let h = histogram("test_latency_seconds", "Latency.", &[("api", "Produce")]);
        h.record(Duration::from_millis(2));
        h.record(Duration::from_micros(2500));
        let text = render();
        assert!(text.contains("test_things_total{kind=\"a\"} 4"), "{text}");
        assert!(text.contains("# TYPE test_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("test_latency_seconds_bucket{api=\"Produce\",le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("test_latency_seconds_bucket{api=\"Produce\",le=\"0.002\"} 1\n"), "{text}");
        assert!(text.contains("test_latency_seconds_bucket{api=\"Produce\",le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("test_latency_seconds_bucket{api=\"Produce\",le=\"60\"} 2\n"), "{text}");
        assert!(text.contains("test_latency_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("test_latency_seconds_sum{api=\"Produce\"} 0.0045\n"), "{text}");
        assert!(text.contains("test_latency_seconds_count{api=\"Produce\"} 2\n"), "{text}");
        seconds_counter("test_waited_seconds_total", "Waits.", &[]).add(1_500_000);
        let text = render();
        assert!(text.contains("# TYPE test_waited_seconds_total counter\ntest_waited_seconds_total 1.5"), "{text}");
        gauges("test_lag", "Lag.", || vec![(vec![("group", "g\"1\\\n".to_string())], 7)]);
        let text = render();
        assert!(text.contains("# TYPE test_lag gauge\ntest_lag{group=\"g\\\"1\\\\\\n\"} 7"), "{text}");
    }

    #[test]
    fn text_families_are_appended_and_replaced_by_name() {
        text_families("test_text", |out| out.push_str("# TYPE test_pushed gauge\ntest_pushed 1\n"));
        assert!(render().contains("# TYPE test_pushed gauge\ntest_pushed 1\n"));
        text_families("test_text", |out| out.push_str("test_pushed 2\n"));
        let text = render();
        assert!(text.contains("test_pushed 2\n") && !text.contains("test_pushed 1\n"), "{text}");
        assert!(snapshot().iter().all(|s| s.name != "test_pushed"), "not in the OTLP snapshot");
    }

    #[test]
    fn bucket_bounds_are_inclusive_and_cover_100us_to_60s() {
        assert!(BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1] && w[1] / w[0] <= 2.5));
        assert_eq!((BUCKETS_SECONDS[0], BUCKETS_SECONDS[18]), (0.0001, 60.0));
        assert_eq!(BUCKETS_NS[0], 100_000);
        assert_eq!(BUCKETS_NS[18], 60_000_000_000);
        let h = Histogram::default();
        // On a bound: that bucket (le is <=); just above: the next; beyond 60 s: +Inf.
        for (d, bucket) in [
            (Duration::ZERO, 0),
            (Duration::from_micros(100), 0),
            (Duration::from_nanos(100_001), 1),
            (Duration::from_millis(1), 3),
            (Duration::from_secs(60), 18),
            (Duration::from_secs(61), 19),
            (Duration::MAX, 19),
        ] {
            let before = h.snapshot().cumulative;
            h.record(d);
            let after = h.snapshot().cumulative;
            let moved: Vec<usize> = (0..after.len()).filter(|&i| after[i] != before[i]).collect();
            assert_eq!(moved, (bucket..after.len()).collect::<Vec<_>>(), "{d:?}");
        }
        assert_eq!(h.snapshot().count(), 7);
    }

    #[test]
    fn quantiles_as_prometheus_estimates_them() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // 100 observations of 3 ms: all in (2 ms, 5 ms].
        for _ in 0..100 {
            h.record(Duration::from_millis(3));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        assert!((p50 - 0.0035).abs() < 1e-9, "{p50}");
        assert!((s.quantile(1.0).unwrap() - 0.005).abs() < 1e-9);
        // One beyond the last bound: the top quantile is the highest finite bound.
        h.record(Duration::from_secs(100));
        assert_eq!(h.snapshot().quantile(1.0), Some(60.0));
        assert_eq!(quantile(&[1.0, 2.0], &[0, 4, 4], 0.5), Some(1.5));
        assert_eq!(quantile(&[1.0, 2.0], &[2, 4], 0.5), None, "counts and bounds must match");
    }

    #[test]
    fn bounded_counters_fold_values_past_the_bound_into_other() {
        static FAMILY: Bounded<Counter> = Bounded::new(2, |t| counter("test_topic_bytes_total", "Bytes.", &[("topic", t)]));
        FAMILY.add("a", 1);
        FAMILY.add("b", 2);
        FAMILY.add("c", 4);
        FAMILY.add("d", 8);
        FAMILY.add("a", 16);
        FAMILY.add(OTHER, 32);
        let text = render();
        assert!(text.contains("test_topic_bytes_total{topic=\"a\"} 17\n"), "{text}");
        assert!(text.contains("test_topic_bytes_total{topic=\"b\"} 2\n"), "{text}");
        assert!(text.contains("test_topic_bytes_total{topic=\"__other\"} 44\n"), "{text}");
        assert!(!text.contains("topic=\"c\""), "{text}");
        assert_eq!(FAMILY.known.read().unwrap().len(), 3, "a, b and __other");
    }

    #[test]
    fn snapshot_holds_what_render_shows() {
        counter("test_snap_total", "Snapped.", &[("kind", "x")]).add(5);
        histogram("test_snap_seconds", "Snap latency.", &[]).record(Duration::from_millis(3));
        seconds_counter("test_snap_waited_seconds_total", "Waits.", &[]).add(250_000);
        gauges("test_snap_gauge", "A gauge.", || vec![(vec![("g", "1".to_string())], -2)]);
        let all = snapshot();
        let find = |n: &str| all.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("{n} missing"));
        let c = find("test_snap_total");
        assert_eq!((c.help, &c.labels[..], &c.value), ("Snapped.", &[("kind", "x".to_string())][..], &Value::Counter(5)));
        assert_eq!(find("test_snap_waited_seconds_total").value, Value::Seconds(0.25));
        assert_eq!(find("test_snap_gauge").value, Value::Gauge(-2));
        match &find("test_snap_seconds").value {
            Value::Histogram(h) => assert_eq!((h.count(), h.cumulative[5]), (1, 1)),
            v => panic!("{v:?}"),
        }
    }
}

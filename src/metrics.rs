//! Metrics: counters (of events, or of time in seconds) and latency histograms, and the Prometheus text endpoint that shows them.
//!
//! Metrics are process-wide (like Prometheus client libraries): a component asks the registry
//! for its counter once, keeps the `Arc`, and bumps it on the hot path with one atomic add.
//! Histograms (hdrhistogram, microseconds, 3 significant digits) are rendered as Prometheus
//! summaries with p50, p99 and p999. [`render`] writes them all in Prometheus' text format
//! (`GET /metrics`, served by [`crate::health::serve`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// Latencies in microseconds, 1 us to 1 hour.
pub struct Histogram(Mutex<hdrhistogram::Histogram<u64>>);

impl Histogram {
    fn new() -> Self {
        let h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid");
        Histogram(Mutex::new(h))
    }
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = h.record(us);
    }
    /// (count, sum in us, p50, p99, p999 in us)
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let sum = h.iter_recorded().map(|v| v.value_iterated_to() * v.count_at_value()).sum();
        (h.len(), sum, h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999))
    }
}

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

#[derive(Default)]
struct Registry {
    help: Mutex<BTreeMap<&'static str, &'static str>>,
    metrics: Mutex<BTreeMap<Key, Metric>>,
    /// Gauge families computed at scrape time (name -> help, samples).
    gauges: Mutex<BTreeMap<&'static str, (&'static str, GaugeFn)>>,
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
    match m.entry(key(name, labels)).or_insert_with(|| Metric::Histogram(Arc::new(Histogram::new()))) {
        Metric::Histogram(h) => h.clone(),
        Metric::Counter(_) | Metric::Seconds(_) => Arc::new(Histogram::new()),
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

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\""))).collect();
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
            let kind = if matches!(m, Metric::Histogram(_)) { "summary" } else { "counter" };
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
                let (count, sum_us, p50, p99, p999) = h.snapshot();
                for (q, v) in [("0.5", p50), ("0.99", p99), ("0.999", p999)] {
                    let _ = writeln!(out, "{name}{} {}", label_text(labels, Some(("quantile", q))), v as f64 / 1e6);
                }
                let _ = writeln!(out, "{name}_sum{} {}", label_text(labels, None), sum_us as f64 / 1e6);
                let _ = writeln!(out, "{name}_count{} {count}", label_text(labels, None));
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
        let h = histogram("test_latency_seconds", "Latency.", &[]);
        h.record(Duration::from_millis(2));
        let text = render();
        assert!(text.contains("test_things_total{kind=\"a\"} 4"), "{text}");
        assert!(text.contains("# TYPE test_latency_seconds summary"));
        assert!(text.contains("test_latency_seconds_count 1"));
        seconds_counter("test_waited_seconds_total", "Waits.", &[]).add(1_500_000);
        let text = render();
        assert!(text.contains("# TYPE test_waited_seconds_total counter\ntest_waited_seconds_total 1.5"), "{text}");
        gauges("test_lag", "Lag.", || vec![(vec![("group", "g\"1".to_string())], 7)]);
        let text = render();
        assert!(text.contains("# TYPE test_lag gauge\ntest_lag{group=\"g\\\"1\"} 7"), "{text}");
    }
}

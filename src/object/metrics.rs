//! Object store metrics: a wrapper that counts every call of any [`ObjectStore`], and the
//! counters behind it.
//!
//! [`MeteredStore`] records, per operation kind, the calls, the errors, the bytes moved and a
//! latency histogram. Backends that turn one call into several HTTP requests (S3 multipart
//! uploads, parallel ranged GETs) also count those requests by name through
//! [`StoreMetrics::record_request`], so "requests per GB" reflects what the provider bills.
//! [`StoreMetrics::snapshot`] is the accessor of one store's counters (tests, the shutdown
//! summary); every count is also added to the process-wide registry that `GET /metrics` shows
//! (`sidestream_object_store_*`, `sidestream_object_store_http_requests_total`). Counting must never fail or block the data path for long:
//! counters are atomics, histograms sit behind short mutexes that recover from poisoning.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use hdrhistogram::Histogram;

use super::store::{ObjectError, ObjectMeta, ObjectStore};
use crate::metrics as prom;

/// The operations of [`ObjectStore`], as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Put,
    PutIfAbsent,
    Get,
    GetRange,
    Head,
    Delete,
    List,
}

impl OpKind {
    pub const ALL: [OpKind; 7] =
        [OpKind::Put, OpKind::PutIfAbsent, OpKind::Get, OpKind::GetRange, OpKind::Head, OpKind::Delete, OpKind::List];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::PutIfAbsent => "put_if_absent",
            OpKind::Get => "get",
            OpKind::GetRange => "get_range",
            OpKind::Head => "head",
            OpKind::Delete => "delete",
            OpKind::List => "list",
        }
    }
}

/// Latencies above this are recorded as this (the histogram's bound).
const LATENCY_US_MAX: u64 = 600_000_000;

struct OpStats {
    calls: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    /// None only if the histogram could not be created (its bounds are constants: never).
    latency_us: Mutex<Option<Histogram<u64>>>,
    /// The same counts in the process-wide `/metrics` registry.
    prom_calls: Arc<prom::Counter>,
    prom_errors: Arc<prom::Counter>,
    prom_bytes: Arc<prom::Counter>,
    prom_latency: Arc<prom::Histogram>,
}

impl OpStats {
    fn new(kind: OpKind) -> Self {
        // 3 significant digits up to 10 minutes: a few tens of KiB per kind.
        let h = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).ok();
        let op = [("op", kind.name())];
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latency_us: Mutex::new(h),
            prom_calls: prom::counter("sidestream_object_store_calls_total", "Object store calls (each retry attempt counts).", &op),
            prom_errors: prom::counter("sidestream_object_store_errors_total", "Object store calls that failed.", &op),
            prom_bytes: prom::counter("sidestream_object_store_bytes_total", "Bytes written (puts) or read (gets).", &op),
            prom_latency: prom::histogram("sidestream_object_store_seconds", "Latency of one object store call.", &op),
        }
    }
}

/// Counters of one store (shared between the wrapper, the backend and readers).
pub struct StoreMetrics {
    ops: [OpStats; 7],
    /// HTTP requests a backend sent, by request name (`PutObject`, `UploadPart`...).
    requests: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self { ops: OpKind::ALL.map(OpStats::new), requests: Mutex::new(BTreeMap::new()) }
    }
}

/// One operation kind's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    pub calls: u64,
    pub errors: u64,
    /// Bytes written (puts) or read (gets).
    pub bytes: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub ops: BTreeMap<OpKind, OpSnapshot>,
    /// Backend HTTP requests by name; empty for backends that send none (local, memory).
    pub requests: BTreeMap<&'static str, u64>,
}

/// Backend request names that write (billed as PUT-class by S3 and most clouds).
const WRITE_REQUESTS: &[&str] = &["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"];
const READ_REQUESTS: &[&str] = &["GetObject"];
const GIB: f64 = (1u64 << 30) as f64;

impl MetricsSnapshot {
    fn op(&self, kind: OpKind) -> OpSnapshot {
        self.ops.get(&kind).cloned().unwrap_or_default()
    }

    /// Bytes stored by successful and failed put calls alike (what was sent).
    pub fn bytes_written(&self) -> u64 {
        self.op(OpKind::Put).bytes + self.op(OpKind::PutIfAbsent).bytes
    }

    pub fn bytes_read(&self) -> u64 {
        self.op(OpKind::Get).bytes + self.op(OpKind::GetRange).bytes
    }

    /// Write requests sent: the backend's HTTP count when it reports one, else the put calls.
    pub fn write_requests(&self) -> u64 {
        if self.requests.is_empty() {
            self.op(OpKind::Put).calls + self.op(OpKind::PutIfAbsent).calls
        } else {
            WRITE_REQUESTS.iter().filter_map(|n| self.requests.get(n)).sum()
        }
    }

    pub fn read_requests(&self) -> u64 {
        if self.requests.is_empty() {
            self.op(OpKind::Get).calls + self.op(OpKind::GetRange).calls
        } else {
            READ_REQUESTS.iter().filter_map(|n| self.requests.get(n)).sum()
        }
    }

    /// Write requests per GiB written (None before anything was written).
    pub fn puts_per_gib(&self) -> Option<f64> {
        let b = self.bytes_written();
        (b > 0).then(|| self.write_requests() as f64 * GIB / b as f64)
    }

    /// Read requests per GiB read (None before anything was read).
    pub fn gets_per_gib(&self) -> Option<f64> {
        let b = self.bytes_read();
        (b > 0).then(|| self.read_requests() as f64 * GIB / b as f64)
    }

    /// One line for the log: totals, per-GiB ratios, then each kind that was used.
    pub fn summary(&self) -> String {
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let mut s = format!(
            "bytes_written={} write_requests={} puts_per_gib={} bytes_read={} read_requests={} gets_per_gib={}",
            self.bytes_written(),
            self.write_requests(),
            ratio(self.puts_per_gib()),
            self.bytes_read(),
            self.read_requests(),
            ratio(self.gets_per_gib()),
        );
        for (kind, o) in self.ops.iter().filter(|(_, o)| o.calls > 0) {
            s.push_str(&format!(
                " {}=[calls={} errors={} bytes={} p50_us={} p99_us={} max_us={}]",
                kind.name(),
                o.calls,
                o.errors,
                o.bytes,
                o.latency_p50_us,
                o.latency_p99_us,
                o.latency_max_us
            ));
        }
        for (name, n) in &self.requests {
            s.push_str(&format!(" {name}={n}"));
        }
        s
    }
}

impl StoreMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn stats(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind as usize]
    }

    /// Records one finished call.
    pub fn record(&self, kind: OpKind, bytes: u64, elapsed_us: u64, ok: bool) {
        let s = self.stats(kind);
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        s.prom_calls.inc();
        s.prom_bytes.add(bytes);
        s.prom_latency.record(std::time::Duration::from_micros(elapsed_us));
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
            s.prom_errors.inc();
        }
        if let Some(h) = s.latency_us.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            h.saturating_record(elapsed_us.clamp(1, LATENCY_US_MAX));
        }
    }

    /// Records one HTTP request a backend sent (whatever its outcome).
    pub fn record_request(&self, name: &'static str) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_insert(0) += 1;
        prom::counter(
            "sidestream_object_store_http_requests_total",
            "HTTP requests sent to the object store service, by request (what the provider bills).",
            &[("request", name)],
        )
        .inc();
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut ops = BTreeMap::new();
        for kind in OpKind::ALL {
            let s = self.stats(kind);
            let h = s.latency_us.lock().unwrap_or_else(|p| p.into_inner());
            let q = |q: f64| h.as_ref().map_or(0, |h| h.value_at_quantile(q));
            ops.insert(
                kind,
                OpSnapshot {
                    calls: s.calls.load(Ordering::Relaxed),
                    errors: s.errors.load(Ordering::Relaxed),
                    bytes: s.bytes.load(Ordering::Relaxed),
                    latency_p50_us: q(0.5),
                    latency_p99_us: q(0.99),
                    latency_max_us: h.as_ref().map_or(0, |h| h.max()),
                },
            );
        }
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        MetricsSnapshot { ops, requests }
    }
}

/// Counts every call to `inner` into `metrics`. Put it directly around the backend (under the
/// retry wrapper) so each attempt counts as a request.
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<StoreMetrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: Arc<StoreMetrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        kind: OpKind,
        bytes_in: u64,
        bytes_out: impl FnOnce(&T) -> u64,
        call: impl std::future::Future<Output = Result<T, ObjectError>>,
    ) -> Result<T, ObjectError> {
        let started = Instant::now();
        let result = call.await;
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bytes = bytes_in + result.as_ref().map_or(0, bytes_out);
        // A missing object is an answer, not a failure of the store.
        let ok = matches!(&result, Ok(_) | Err(ObjectError::NotFound(_)));
        self.metrics.record(kind, bytes, elapsed_us, ok);
        result
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        let n = body.len() as u64;
        self.timed(OpKind::Put, n, |_| 0, self.inner.put(key, body)).await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        let n = body.len() as u64;
        self.timed(OpKind::PutIfAbsent, n, |_| 0, self.inner.put_if_absent(key, body)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.timed(OpKind::GetRange, 0, |b: &Bytes| b.len() as u64, self.inner.get_range(key, range)).await
    }

    async fn get_range_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.timed(OpKind::GetRange, 0, |b: &Bytes| b.len() as u64, self.inner.get_range_once(key, range)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.timed(OpKind::Get, 0, |b: &Bytes| b.len() as u64, self.inner.get(key)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.timed(OpKind::Head, 0, |_| 0, self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.timed(OpKind::Delete, 0, |_| 0, self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.timed(OpKind::List, 0, |_| 0, self.inner.list(prefix)).await
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.timed(OpKind::List, 0, |_| 0, self.inner.list_page(prefix, start_after, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::memory::MemoryStore;

    #[tokio::test]
    async fn counts_calls_bytes_errors_and_ratios() {
        let metrics = Arc::new(StoreMetrics::new());
        let s = MeteredStore::new(Arc::new(MemoryStore::new()), metrics.clone());
        s.put("00/a/x.sso", Bytes::from(vec![0u8; 1000])).await.unwrap();
        assert!(!s.put_if_absent("00/a/x.sso", Bytes::from(vec![0u8; 10])).await.unwrap());
        assert_eq!(s.get_range("00/a/x.sso", 0..100).await.unwrap().len(), 100);
        assert!(matches!(s.get("00/a/missing").await, Err(ObjectError::NotFound(_))));
        assert!(s.put("../bad", Bytes::new()).await.is_err());
        let snap = metrics.snapshot();
        let put = &snap.ops[&OpKind::Put];
        assert_eq!((put.calls, put.errors, put.bytes), (2, 1, 1000));
        assert_eq!(snap.ops[&OpKind::Get].errors, 0, "not found is not an error");
        assert_eq!(snap.bytes_written(), 1010);
        assert_eq!(snap.bytes_read(), 100);
        assert_eq!(snap.write_requests(), 3);
        assert!(snap.latency_ok());
        // With backend request counts, ratios use them.
        metrics.record_request("PutObject");
        metrics.record_request("GetObject");
        metrics.record_request("GetObject");
        let snap = metrics.snapshot();
        assert_eq!((snap.write_requests(), snap.read_requests()), (1, 2));
        let per_gib = snap.puts_per_gib().unwrap();
        assert!((per_gib - GIB / 1010.0).abs() < 1e-6, "{per_gib}");
        assert!(snap.summary().contains("PutObject=1"), "{}", snap.summary());
        let exposed = prom::render();
        assert!(exposed.contains("sidestream_object_store_calls_total{op=\"put\"}"), "{exposed}");
        assert!(exposed.contains("sidestream_object_store_http_requests_total{request=\"GetObject\"}"), "{exposed}");
    }

    impl MetricsSnapshot {
        fn latency_ok(&self) -> bool {
            self.ops.values().all(|o| o.latency_p50_us <= o.latency_p99_us && o.latency_p99_us <= o.latency_max_us)
        }
    }
}

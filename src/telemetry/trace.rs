//! Spans: sampled once at a request's root, carried to its children by a task-local context,
//! queued for export when they end.
//!
//! A request handler asks [`root`] for its span: `None` unless export is on and the request is
//! sampled (one atomic load when off, one thread-local random draw when on; no allocation
//! either way), so an unsampled request carries an `Option` that is `None` and nothing else.
//! The handler runs its work inside [`scope`], and code below it (the WAL append, the wait for
//! a commit, the object store GETs) opens [`child`] spans of whatever span is current, without
//! its signature naming one. Work that leaves the request's task (the uploader batches many
//! requests into one object) takes the [`SpanContext`] along as data and opens spans of its
//! own, linked to the requests they serve ([`Span::link`]).
//!
//! An ended span goes into a bounded queue ([`install`]'s `max_queued_spans`); when it is full
//! the span is dropped and counted (`sidestream_otlp_dropped_spans_total`), so a slow receiver
//! never holds up a request. This module does not export: `super` drains the queue.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::metrics;

/// Links one span may carry (an object holds the data of many requests); more are not kept.
pub const LINKS_MAX: usize = 32;

/// A span's identity, as children and links name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// OTLP's span kinds (the values of `Span.SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<i32> for AttrValue {
    fn from(v: i32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<i16> for AttrValue {
    fn from(v: i16) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// An ended span, as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub links: Vec<SpanContext>,
    /// Set when the operation failed: the status message (OTLP status code ERROR).
    pub error: Option<String>,
}

/// A span being recorded; it ends (and is queued for export) when dropped.
pub struct Span {
    /// Taken when the span ends.
    data: Option<Box<SpanData>>,
    started: Instant,
}

impl Span {
    fn start(name: &'static str, kind: SpanKind, trace_id: [u8; 16], parent: Option<[u8; 8]>) -> Span {
        let data = SpanData {
            context: SpanContext { trace_id, span_id: random_span_id() },
            parent,
            name,
            kind,
            start_unix_ns: unix_ns(),
            end_unix_ns: 0,
            attributes: Vec::new(),
            links: Vec::new(),
            error: None,
        };
        Span { data: Some(Box::new(data)), started: Instant::now() }
    }

    fn data(&mut self) -> &mut SpanData {
        self.data.as_mut().expect("a span's data is taken only when it ends")
    }

    pub fn context(&self) -> SpanContext {
        self.data.as_ref().expect("a span's data is taken only when it ends").context
    }

    /// Sets attribute `key` (the last value set wins).
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        let value = value.into();
        match self.data().attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.data().attributes.push((key, value)),
        }
    }

    /// Links this span to `other` (a request whose data it carries); at most [`LINKS_MAX`].
    pub fn link(&mut self, other: SpanContext) {
        let links = &mut self.data().links;
        if links.len() < LINKS_MAX && !links.contains(&other) {
            links.push(other);
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, why: impl std::fmt::Display) {
        self.data().error = Some(why.to_string());
    }

    /// A child of this span.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        let parent = self.context();
        Span::start(name, kind, parent.trace_id, Some(parent.span_id))
    }

    /// Ends the span now (as dropping it does).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        // The wall clock may step while a span runs: its length comes from the monotonic one.
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(mut data) = self.data.take() {
            data.end_unix_ns = data.start_unix_ns.saturating_add(elapsed);
            enqueue(data);
        }
    }
}

/// The sampling threshold: a request is sampled when a uniform u64 draw is below it (0: off,
/// u64::MAX: every one).
static THRESHOLD: AtomicU64 = AtomicU64::new(0);

type Queue = mpsc::Sender<Box<SpanData>>;

fn queue() -> &'static RwLock<Option<Queue>> {
    static QUEUE: OnceLock<RwLock<Option<Queue>>> = OnceLock::new();
    QUEUE.get_or_init(|| RwLock::new(None))
}

fn dropped() -> &'static Arc<metrics::Counter> {
    static DROPPED: OnceLock<Arc<metrics::Counter>> = OnceLock::new();
    DROPPED.get_or_init(|| {
        metrics::counter(
            "sidestream_otlp_dropped_spans_total",
            "Spans not exported: the queue ([telemetry] max_queued_spans) was full, or their export failed.",
            &[],
        )
    })
}

/// Starts sampling `ratio` (0.0 to 1.0) of the requests into a queue of `max_queued_spans`;
/// returns the queue's receiving end. Replaces an earlier queue (a restart in one process).
pub fn install(ratio: f64, max_queued_spans: usize) -> mpsc::Receiver<Box<SpanData>> {
    assert!((0.0..=1.0).contains(&ratio), "sample ratio {ratio} outside 0..=1");
    assert!(max_queued_spans > 0);
    dropped();
    let (tx, rx) = mpsc::channel(max_queued_spans);
    *queue().write().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    THRESHOLD.store(threshold(ratio), Ordering::Relaxed);
    rx
}

/// Stops sampling; spans still open are dropped as they end.
pub fn uninstall() {
    THRESHOLD.store(0, Ordering::Relaxed);
    *queue().write().unwrap_or_else(|p| p.into_inner()) = None;
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 { u64::MAX } else { (ratio * u64::MAX as f64) as u64 }
}

/// Counts `n` spans as dropped (the queue was full, or their export failed).
pub fn count_dropped(n: u64) {
    dropped().add(n);
}

fn enqueue(data: Box<SpanData>) {
    let queue = queue().read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = queue.as_ref()
        && tx.try_send(data).is_err()
    {
        dropped().inc();
    }
}

/// Whether export is on and this draw falls in the sampled share.
pub fn sample() -> bool {
    match THRESHOLD.load(Ordering::Relaxed) {
        0 => false,
        u64::MAX => true,
        t => random_u64() < t,
    }
}

/// A new trace's root span, if export is on and this request is sampled.
pub fn root(name: &'static str, kind: SpanKind) -> Option<Span> {
    if !sample() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
    trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
    if trace_id == [0; 16] {
        trace_id[15] = 1;
    }
    Some(Span::start(name, kind, trace_id, None))
}

/// A new trace's root span without sampling (work that carries sampled requests' data),
/// if export is on.
pub fn root_unsampled(name: &'static str, kind: SpanKind) -> Option<Span> {
    if THRESHOLD.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
    trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
    Some(Span::start(name, kind, trace_id, None))
}

tokio::task_local! {
    static CURRENT: SpanContext;
}

/// The span current in this task ([`scope`]), if any.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// A child of the current span, if there is one (the request is sampled).
pub fn child(name: &'static str, kind: SpanKind) -> Option<Span> {
    current().map(|parent| Span::start(name, kind, parent.trace_id, Some(parent.span_id)))
}

/// A child of `parent`, if there is one.
pub fn child_of(parent: Option<SpanContext>, name: &'static str, kind: SpanKind) -> Option<Span> {
    parent.map(|p| Span::start(name, kind, p.trace_id, Some(p.span_id)))
}

/// Runs `f` with `span` current (children opened inside it are its); as `f` when None.
pub async fn scope<F: Future>(span: Option<SpanContext>, f: F) -> F::Output {
    match span {
        Some(c) => CURRENT.scope(c, f).await,
        None => f.await,
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Ids and sampling draws: xorshift64* per thread, seeded from the OS-keyed hasher. Trace ids
/// need to be unique, not secret, and never decide anything on the data path.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(unix_ns());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn random_span_id() -> [u8; 8] {
    let id = random_u64();
    (if id == 0 { 1 } else { id }).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cover_the_ratio() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        let t = threshold(0.25) as f64 / u64::MAX as f64;
        assert!((t - 0.25).abs() < 1e-9, "{t}");
    }

    /// The one test that installs a queue (it is process-wide): a tree through the task-local
    /// scope, nothing when off, overflow counted.
    #[tokio::test]
    async fn sampled_requests_make_a_tree_and_unsampled_ones_nothing() {
        let mut rx = install(1.0, 64);
        let mut root_span = root("Produce", SpanKind::Server).expect("ratio 1.0 samples every request");
        root_span.set("kafka.acks", -1i16);
        let ctx = root_span.context();
        assert!(child("outside", SpanKind::Internal).is_none(), "no current span outside a scope");
        scope(Some(ctx), async {
            assert_eq!(current(), Some(ctx));
            let mut wal = child("wal.append", SpanKind::Internal).unwrap();
            wal.set("sidestream.bytes", 10u64);
            wal.set("sidestream.bytes", 12u64);
            // Another task does not inherit it: contexts travel as data.
            let other = tokio::spawn(async { current() }).await.unwrap();
            assert_eq!(other, None);
            tokio::task::yield_now().await;
        })
        .await;
        let mut linked = root_unsampled("object.upload", SpanKind::Internal).unwrap();
        linked.link(ctx);
        linked.link(ctx);
        let linked_ctx = linked.context();
        drop(linked);
        drop(root_span);
        let mut mine = Vec::new();
        while let Ok(s) = rx.try_recv() {
            if s.context.trace_id == ctx.trace_id || s.context == linked_ctx {
                mine.push(s);
            }
        }
        let find = |name: &str| mine.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {mine:?}"));
        let (r, w, o) = (find("Produce"), find("wal.append"), find("object.upload"));
        assert_eq!((r.parent, w.parent), (None, Some(ctx.span_id)));
        assert_eq!(w.attributes, vec![("sidestream.bytes", AttrValue::Int(12))]);
        assert!(r.end_unix_ns >= w.end_unix_ns && w.start_unix_ns >= r.start_unix_ns);
        assert_ne!(o.context.trace_id, ctx.trace_id, "an object is a trace of its own");
        assert_eq!(o.links, vec![ctx], "linked once");

        // A full queue drops (and counts) what does not fit.
        let before = dropped().get();
        let _rx = install(1.0, 1);
        for _ in 0..3 {
            drop(root("Fetch", SpanKind::Server));
        }
        assert!(dropped().get() >= before + 2);
        uninstall();
        assert!(root("Fetch", SpanKind::Server).is_none() && root_unsampled("object.upload", SpanKind::Internal).is_none());
        assert!(!sample());
    }

    #[test]
    fn ids_are_not_zero_and_differ() {
        let a: Vec<[u8; 8]> = (0..1000).map(|_| random_span_id()).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
        assert!(a.iter().all(|id| *id != [0; 8]));
    }
}

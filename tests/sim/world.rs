//! The simulated world: seeded random streams, the simulated wall clock, the trace, and the two
//! things every agent shares, the object store and the controller, each behind a wrapper that
//! injects the run's faults ([`SimStore`], [`SimController`]), and the agents' local disks
//! ([`SimDisk`], under their WALs).
//!
//! Every wrapper belongs to one agent incarnation ([`Life`]): once that incarnation crashed,
//! its calls never return (a dead process makes no more requests), whatever task made them.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sidestream::agent::client::ControllerClient;
use sidestream::agent::wal::{self, DiskFault, DiskOp};
use sidestream::api::calls::prelude::*;
use sidestream::api::calls::{Call, Reply};
use sidestream::api::{PartitionOffsets, TopicRef};
use sidestream::clock::Clock;
use sidestream::controller::Controller;
use sidestream::object::memory::MemoryStore;
use sidestream::object::store::ObjectMeta;
use sidestream::object::{ObjectError, ObjectStore};
use tokio::sync::watch;
use uuid::Uuid;

/// Lines a trace keeps at most (the rest are counted, not kept).
const TRACE_LINES_MAX: usize = 200_000;
/// Real time an operation run to completion on the sim's thread may take ([`block_here`]).
const BLOCK_REAL_TIME_MAX: Duration = Duration::from_secs(30);

/// SplitMix64: one stream per component, all derived from the run's seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        sidestream::clock::splitmix64_next(&mut self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// A new stream, forked from this one.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// Wall-clock time that follows tokio's (paused) clock: simulated hours pass in no real time.
pub struct SimClock {
    start_ms: i64,
    base: tokio::time::Instant,
}

impl SimClock {
    pub fn new(start_ms: i64) -> Self {
        Self { start_ms, base: tokio::time::Instant::now() }
    }

    /// Simulated milliseconds since the run began.
    pub fn elapsed_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.elapsed_ms() as i64
    }
}

/// What happened, at which simulated millisecond: the same seed gives the same lines.
pub struct Trace {
    clock: Arc<SimClock>,
    lines: Mutex<(Vec<String>, u64)>,
}

impl Trace {
    pub fn new(clock: Arc<SimClock>) -> Self {
        Self { clock, lines: Mutex::new((Vec::new(), 0)) }
    }

    pub fn log(&self, what: impl std::fmt::Display) {
        let line = format!("{:>10} {what}", self.clock.elapsed_ms());
        let mut lines = self.lines.lock().unwrap();
        if lines.0.len() < TRACE_LINES_MAX {
            lines.0.push(line);
        } else {
            lines.1 += 1;
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        let mut out = lines.0.clone();
        if lines.1 > 0 {
            out.push(format!("... {} more lines", lines.1));
        }
        out
    }
}

/// Windows of simulated time (ms since the run began, start inclusive, end exclusive).
#[derive(Debug, Clone, Default)]
pub struct Windows(pub Vec<(u64, u64)>);

impl Windows {
    pub fn active(&self, at_ms: u64) -> bool {
        self.0.iter().any(|&(s, e)| s <= at_ms && at_ms < e)
    }
}

/// The object store's faults for one run.
#[derive(Debug, Clone, Default)]
pub struct StoreFaults {
    /// Transient errors (I/O hiccups, timeouts).
    pub error_rate: f64,
    /// 503 SlowDown.
    pub slow_down_rate: f64,
    /// PUTs that store the object and then report a failure.
    pub lying_put_rate: f64,
    pub latency_max_ms: u64,
    /// The store is unreachable.
    pub outages: Windows,
}

/// The controller link's faults for one run.
#[derive(Debug, Clone, Default)]
pub struct ControllerFaults {
    /// Calls that fail before they reach the controller.
    pub fail_rate: f64,
    /// Calls the controller runs whose reply is lost.
    pub lost_reply_rate: f64,
    pub delay_max_ms: u64,
    /// The controller is down (crashed; restarted from its store when the window ends).
    pub outages: Windows,
}

/// The agents' local disks' faults for one run (under their WALs).
#[derive(Debug, Clone, Default)]
pub struct DiskFaults {
    /// Writes (after part of their bytes), fsyncs and truncations that fail with an I/O error.
    pub error_rate: f64,
    /// Every agent's disk is full: creates, writes (after part of their bytes) and fsyncs fail
    /// with ENOSPC.
    pub full: Windows,
}

/// What every agent shares.
pub struct World {
    pub clock: Arc<SimClock>,
    pub trace: Trace,
    /// The bucket, without faults (the checks read it directly).
    pub bucket: Arc<MemoryStore>,
    controller: RwLock<Arc<Controller>>,
    store_faults: RwLock<StoreFaults>,
    controller_faults: RwLock<ControllerFaults>,
    disk_faults: RwLock<DiskFaults>,
    store_rng: Mutex<Rng>,
    controller_rng: Mutex<Rng>,
    disk_rng: Mutex<Rng>,
}

impl World {
    pub fn new(
        clock: Arc<SimClock>,
        controller: Arc<Controller>,
        store_faults: StoreFaults,
        controller_faults: ControllerFaults,
        disk_faults: DiskFaults,
        rng: &mut Rng,
    ) -> Self {
        Self {
            trace: Trace::new(clock.clone()),
            clock,
            bucket: Arc::new(MemoryStore::new()),
            controller: RwLock::new(controller),
            store_faults: RwLock::new(store_faults),
            controller_faults: RwLock::new(controller_faults),
            disk_faults: RwLock::new(disk_faults),
            store_rng: Mutex::new(rng.fork()),
            controller_rng: Mutex::new(rng.fork()),
            disk_rng: Mutex::new(rng.fork()),
        }
    }

    pub fn controller(&self) -> Arc<Controller> {
        self.controller.read().unwrap().clone()
    }

    /// A controller restarted from its store replaces the running one.
    pub fn replace_controller(&self, c: Arc<Controller>) {
        *self.controller.write().unwrap() = c;
    }

    pub fn controller_down(&self) -> bool {
        self.controller_faults.read().unwrap().outages.active(self.clock.elapsed_ms())
    }

    pub fn controller_outages(&self) -> Windows {
        self.controller_faults.read().unwrap().outages.clone()
    }

    /// Every fault stops (the final checks run on a healthy cluster).
    pub fn heal(&self) {
        *self.store_faults.write().unwrap() = StoreFaults::default();
        *self.controller_faults.write().unwrap() = ControllerFaults::default();
        *self.disk_faults.write().unwrap() = DiskFaults::default();
    }
}

/// One agent incarnation: alive until its crash.
#[derive(Clone, Default)]
pub struct Life(Arc<AtomicBool>);

impl Life {
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn end(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Returns while alive; never, once dead.
    async fn check(&self) {
        if !self.0.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

/// One agent's disk under its WAL, with the run's disk faults. The WAL's writer runs in the
/// appending task under the simulation, so these draws happen in the run's order.
pub struct SimDisk {
    pub world: Arc<World>,
    pub node: usize,
}

impl wal::DiskFaults for SimDisk {
    fn check(&self, op: DiskOp) -> Result<(), DiskFault> {
        let faults = self.world.disk_faults.read().unwrap().clone();
        let full = faults.full.active(self.world.clock.elapsed_ms());
        let (error, landed) = {
            let mut rng = self.world.disk_rng.lock().unwrap();
            (rng.chance(faults.error_rate), rng.next_u64())
        };
        let (kind, written_bytes) = match op {
            DiskOp::Write { bytes } if full => (std::io::ErrorKind::StorageFull, (landed % (bytes as u64 + 1)) as usize),
            DiskOp::Write { bytes } if error => (std::io::ErrorKind::Other, (landed % (bytes as u64 + 1)) as usize),
            DiskOp::Create | DiskOp::Sync if full => (std::io::ErrorKind::StorageFull, 0),
            DiskOp::Sync | DiskOp::Truncate if error => (std::io::ErrorKind::Other, 0),
            _ => return Ok(()),
        };
        self.world.trace.log(format_args!("disk a{} {op:?}: injected {kind:?} after {written_bytes} bytes", self.node));
        Err(DiskFault { written_bytes, error: std::io::Error::new(kind, format!("simulated {kind:?}: {op:?}")) })
    }
}

/// The bucket as one agent incarnation sees it, with the run's store faults.
pub struct SimStore {
    pub world: Arc<World>,
    pub life: Life,
    pub node: usize,
}

impl SimStore {
    /// Latency, then an injected failure or Ok (then the request reaches the bucket).
    async fn enter(&self, op: &str, key: &str) -> Result<(), ObjectError> {
        let faults = self.world.store_faults.read().unwrap().clone();
        let (latency_ms, error, slow_down) = {
            let mut rng = self.world.store_rng.lock().unwrap();
            (rng.range(0, faults.latency_max_ms), rng.chance(faults.error_rate), rng.chance(faults.slow_down_rate))
        };
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
        self.life.check().await;
        if faults.outages.active(self.world.clock.elapsed_ms()) {
            return Err(ObjectError::Transient(format!("simulated outage: {op}")));
        }
        if error {
            self.world.trace.log(format_args!("store a{} {op} {key}: injected error", self.node));
            return Err(ObjectError::Transient(format!("simulated error: {op}")));
        }
        if slow_down {
            self.world.trace.log(format_args!("store a{} {op} {key}: injected 503", self.node));
            return Err(ObjectError::Transient(format!("simulated 503 SlowDown: {op}")));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.enter("put", key).await?;
        self.world.bucket.put(key, body).await?;
        let lie = {
            let rate = self.world.store_faults.read().unwrap().lying_put_rate;
            self.world.store_rng.lock().unwrap().chance(rate)
        };
        if lie {
            self.world.trace.log(format_args!("store a{} put {key}: stored, reported failed", self.node));
            return Err(ObjectError::Transient("simulated 503 after the object was stored".into()));
        }
        Ok(())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.enter("get", key).await?;
        self.world.bucket.get_range(key, range).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.enter("get", key).await?;
        self.world.bucket.get(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.enter("head", key).await?;
        self.world.bucket.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.enter("delete", key).await?;
        self.world.trace.log(format_args!("store a{} delete {key}", self.node));
        self.world.bucket.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.enter("list", prefix).await?;
        self.world.bucket.list(prefix).await
    }
}

/// The controller as one agent incarnation reaches it, with the run's link faults.
pub struct SimController {
    pub world: Arc<World>,
    pub life: Life,
    pub node: usize,
}

#[async_trait]
impl ControllerClient for SimController {
    fn cluster_id(&self) -> String {
        self.world.controller().cluster_id().to_string()
    }
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>> {
        self.world.controller().topic(r)
    }
    fn topics(&self) -> Vec<Arc<TopicMeta>> {
        self.world.controller().topics()
    }
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError> {
        self.world.controller().offsets(topic_id, partition)
    }
    fn commit_watch(&self) -> watch::Receiver<u64> {
        self.world.controller().commit_watch()
    }
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError> {
        self.world.controller().last_stable_offset(topic_id, partition)
    }
    fn acls(&self) -> Arc<AclSet> {
        self.world.controller().acls()
    }
    fn client_quotas(&self) -> Arc<QuotaSet> {
        self.world.controller().client_quotas()
    }

    async fn call(&self, call: Call) -> Reply {
        let faults = self.world.controller_faults.read().unwrap().clone();
        let (delay_ms, fail, lose) = {
            let mut rng = self.world.controller_rng.lock().unwrap();
            (rng.range(0, faults.delay_max_ms), rng.chance(faults.fail_rate), rng.chance(faults.lost_reply_rate))
        };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        self.life.check().await;
        let name = call.name();
        if faults.outages.active(self.world.clock.elapsed_ms()) {
            return call.failed(ControllerError::Unavailable("simulated controller outage".into()));
        }
        if fail {
            self.world.trace.log(format_args!("controller a{} {name}: injected failure", self.node));
            return call.failed(ControllerError::Unavailable("simulated: call not delivered".into()));
        }
        let failed = call.failed(ControllerError::Unavailable("simulated: reply lost".into()));
        let reply = sidestream::controller::calls::dispatch(&self.world.controller(), call).await;
        // A reply to a dead incarnation never arrives.
        self.life.check().await;
        if lose {
            self.world.trace.log(format_args!("controller a{} {name}: ran, reply lost", self.node));
            return failed;
        }
        reply
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on the sim's thread without letting any other task run meanwhile,
/// for work that waits on nothing but itself (acks=1 requests: the WAL's writer runs inline)
/// or on a task already finished: it finishes at the same point of the simulation. Panics if it does not finish in
/// [`BLOCK_REAL_TIME_MAX`] of real time (it waited on another task: a bug of the sim).
pub fn block_here<F: Future>(f: F) -> F::Output {
    let waker = Arc::new(ThreadWaker(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    // Unconstrained: tokio's cooperative budget would otherwise run out and never refill.
    let mut f = std::pin::pin!(tokio::task::unconstrained(f));
    let started = std::time::Instant::now();
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(started.elapsed() < BLOCK_REAL_TIME_MAX, "sim: an operation run in place waited on another task");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

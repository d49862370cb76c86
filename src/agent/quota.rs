//! Client quota enforcement, as Kafka's `ClientQuotaManager` (produce and fetch bytes),
//! `ClientRequestQuotaManager` (request time) and `ControllerMutationQuotaManager` (partitions
//! created and deleted) do it, per agent.
//!
//! - **Which quota.** For a request of user `U` (the principal's name: `alice`, `ANONYMOUS`,
//!   `CN=app,O=Example`) with client id `C`, each kind's quota is that of the most specific
//!   entity that sets its key: `U`+`C`, `U`+default client, `U`, default user+`C`, default
//!   user+default client, default user, `C`, default client ([`Index::resolve`]). An empty
//!   client id matches only the user levels, as in Kafka.
//! - **Whose rate.** The rate is kept per Kafka's metric tags of the level that matched: a
//!   user-only quota is shared by all the user's client ids, a client-id-only quota by all users
//!   of the client id, the others per (user, client id). At most [`ENTITIES_MAX`] rates are
//!   kept; beyond, those idle for a whole window go first (they hold nothing), then the least
//!   recently used (`sidestream_quota_entities`).
//! - **The rate.** [`Rate`]: [`SAMPLES`] samples of [`SAMPLE_MS`] (Kafka's
//!   `quota.window.num` 11 and `quota.window.size.seconds` 1), the sum over the samples not
//!   older than the window divided by the time they span, never less than ten samples' time.
//!   A value over the quota gives a throttle time `(rate - quota) / quota * window`: the time
//!   after which the rate is back at the quota if nothing more comes (request time: at most
//!   one sample's time). Controller mutations use a token bucket instead ([`Bucket`]: burst
//!   of a whole window's quota, refilled at the quota; throttle time `-tokens / quota`).
//! - **Request time.** A request's time is the time its handler is polled ([`Busy`]), as
//!   percent of a second (Kafka's thread time): waits (long polls, commits) do not count.
//!
//! The protocol layer decides what to record and how to throttle (the response's
//! `throttle_time_ms`, and no further request read from the connection for that long); this
//! module owns the numbers. Time comes from the agent's [`Clock`]. Must not touch: Kafka wire
//! types.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};

use crate::api::quota::{EntityName, QuotaKey, QuotaSet};
use crate::clock::Clock;
use crate::metrics::{self, Counter};

/// Samples of a rate (Kafka's `quota.window.num`: ten whole ones and the current one).
pub const SAMPLES: usize = 11;
/// Time one sample spans (Kafka's `quota.window.size.seconds`).
pub const SAMPLE_MS: i64 = 1000;
/// Rates kept at once; beyond, idle and then least recently used ones are forgotten.
pub const ENTITIES_MAX: usize = 10_000;
/// The longest throttle for request time (Kafka: one sample's time).
pub const REQUEST_THROTTLE_MS_MAX: u64 = SAMPLE_MS as u64;
/// The longest a connection is muted at a time (a whole window). A throttle time may be longer
/// (Kafka does not bound those of bytes and mutations); a request still over its quota after
/// this is held or refused again, so the bound weakens nothing, it only keeps a connection from
/// going deaf for hours after one huge request.
pub const MUTE_MS_MAX: u64 = SAMPLES as u64 * SAMPLE_MS as u64;

/// What a quota limits, and the key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Produce request bytes (`producer_byte_rate`).
    Produce,
    /// Fetch response bytes (`consumer_byte_rate`).
    Fetch,
    /// Request handling time in percent (`request_percentage`).
    Request,
    /// Partitions created or deleted (`controller_mutation_rate`).
    ControllerMutation,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Produce, Kind::Fetch, Kind::Request, Kind::ControllerMutation];

    pub fn key(self) -> QuotaKey {
        match self {
            Kind::Produce => QuotaKey::ProducerByteRate,
            Kind::Fetch => QuotaKey::ConsumerByteRate,
            Kind::Request => QuotaKey::RequestPercentage,
            Kind::ControllerMutation => QuotaKey::ControllerMutationRate,
        }
    }

    /// The `kind` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Fetch => "fetch",
            Kind::Request => "request",
            Kind::ControllerMutation => "controller_mutation",
        }
    }

    fn of(key: QuotaKey) -> Kind {
        match key {
            QuotaKey::ProducerByteRate => Kind::Produce,
            QuotaKey::ConsumerByteRate => Kind::Fetch,
            QuotaKey::RequestPercentage => Kind::Request,
            QuotaKey::ControllerMutationRate => Kind::ControllerMutation,
        }
    }
}

/// Whose rate: Kafka's metric tags of the level that matched (`""`: not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub kind: Kind,
    pub user: String,
    pub client_id: String,
}

/// The quota that applies to a request, and whose rate it counts against.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub quota: f64,
    pub key: RateKey,
}

impl Limit {
    /// The largest value that can be recorded at once without being throttled for sure (Kafka's
    /// `getMaxValueInQuotaWindow`): a fetch's response is kept below it.
    pub fn max_in_window(&self) -> f64 {
        self.quota * (SAMPLES - 1) as f64 * SAMPLE_MS as f64 / 1000.0
    }
}

/// Each kind's quota for one request (`None`: that kind is not limited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits([Option<Limit>; 4]);

impl Limits {
    pub fn get(&self, kind: Kind) -> Option<&Limit> {
        self.0[kind as usize].as_ref()
    }
}

type Values = [Option<f64>; 4];

/// One user's (or the default user's) quotas: its own, per client id, its default client's.
#[derive(Debug, Default)]
struct UserLevel {
    own: Values,
    clients: HashMap<String, Values>,
    default_client: Values,
}

/// A [`QuotaSet`] arranged for lookups by name without allocating.
#[derive(Debug, Default)]
pub struct Index {
    version: u64,
    users: HashMap<String, UserLevel>,
    default_user: UserLevel,
    clients: HashMap<String, Values>,
    default_client: Values,
}

impl Index {
    pub fn build(set: &QuotaSet) -> Self {
        let mut ix = Index { version: set.version, ..Index::default() };
        for e in &set.entries {
            let values = {
                let mut v: Values = [None; 4];
                for (k, q) in &e.values {
                    v[Kind::of(*k) as usize] = Some(*q);
                }
                v
            };
            let user = match &e.entity.user {
                None => None,
                Some(EntityName::Default) => Some(&mut ix.default_user),
                Some(EntityName::Name(u)) => Some(ix.users.entry(u.clone()).or_default()),
            };
            let slot = match (user, &e.entity.client_id) {
                (Some(u), None) => &mut u.own,
                (Some(u), Some(EntityName::Default)) => &mut u.default_client,
                (Some(u), Some(EntityName::Name(c))) => u.clients.entry(c.clone()).or_default(),
                (None, Some(EntityName::Default)) => &mut ix.default_client,
                (None, Some(EntityName::Name(c))) => ix.clients.entry(c.clone()).or_default(),
                (None, None) => continue,
            };
            *slot = values;
        }
        ix
    }

    /// Kafka's precedence (`DefaultQuotaCallback.quotaLimit` and `quotaMetricTags`): the first
    /// of user+client, user+default client, user, default user+client, default user+default
    /// client, default user, client, default client that sets `kind`'s key; with the rate's key.
    pub fn resolve(&self, kind: Kind, user: &str, client_id: &str) -> Option<Limit> {
        let k = kind as usize;
        let limit = |quota: f64, user: &str, client_id: &str| {
            Some(Limit { quota, key: RateKey { kind, user: user.to_string(), client_id: client_id.to_string() } })
        };
        let has_client = !client_id.is_empty();
        let named = self.users.get(user);
        if has_client && let Some(u) = named {
            if let Some(q) = u.clients.get(client_id).and_then(|v| v[k]) {
                return limit(q, user, client_id);
            }
            if let Some(q) = u.default_client[k] {
                return limit(q, user, client_id);
            }
        }
        if let Some(q) = named.and_then(|u| u.own[k]) {
            return limit(q, user, "");
        }
        let d = &self.default_user;
        if has_client {
            if let Some(q) = d.clients.get(client_id).and_then(|v| v[k]) {
                return limit(q, user, client_id);
            }
            if let Some(q) = d.default_client[k] {
                return limit(q, user, client_id);
            }
        }
        if let Some(q) = d.own[k] {
            return limit(q, user, "");
        }
        if has_client {
            if let Some(q) = self.clients.get(client_id).and_then(|v| v[k]) {
                return limit(q, "", client_id);
            }
            if let Some(q) = self.default_client[k] {
                return limit(q, "", client_id);
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    start_ms: i64,
    value: f64,
}

/// Kafka's `Rate` over a `SampledStat` of [`SAMPLES`] samples of [`SAMPLE_MS`].
#[derive(Debug, Default)]
pub struct Rate {
    samples: Vec<Sample>,
    current: usize,
}

impl Rate {
    pub fn record(&mut self, value: f64, now_ms: i64) {
        if self.samples.is_empty() {
            self.samples.push(Sample { start_ms: now_ms, value: 0.0 });
        }
        if now_ms - self.samples[self.current].start_ms >= SAMPLE_MS {
            self.current = (self.current + 1) % SAMPLES;
            let fresh = Sample { start_ms: now_ms, value: 0.0 };
            match self.samples.get_mut(self.current) {
                Some(s) => *s = fresh,
                None => self.samples.push(fresh),
            }
        }
        self.samples[self.current].value += value;
    }

    /// Samples that ended a whole window ago start over (empty, from now).
    fn purge(&mut self, now_ms: i64) {
        for s in &mut self.samples {
            if now_ms - s.start_ms >= SAMPLES as i64 * SAMPLE_MS {
                *s = Sample { start_ms: now_ms, value: 0.0 };
            }
        }
    }

    /// The time the rate is taken over: since the oldest sample began, but at least ten whole
    /// samples (so a burst at the start is spread over the window, as in Kafka).
    pub fn window_ms(&mut self, now_ms: i64) -> i64 {
        self.purge(now_ms);
        let oldest = self.samples.iter().map(|s| s.start_ms).min().unwrap_or(now_ms);
        let elapsed = (now_ms - oldest).max(0);
        let full = elapsed / SAMPLE_MS;
        let min_full = SAMPLES as i64 - 1;
        if full < min_full { elapsed + (min_full - full) * SAMPLE_MS } else { elapsed }
    }

    /// Per second, and the window it was taken over.
    pub fn measure(&mut self, now_ms: i64) -> (f64, i64) {
        let window = self.window_ms(now_ms);
        let sum: f64 = self.samples.iter().map(|s| s.value).sum();
        (sum / (window as f64 / 1000.0), window)
    }

    /// The time until the rate is back at `quota` if nothing more is recorded (0: within it).
    pub fn throttle_ms(&mut self, quota: f64, now_ms: i64) -> u64 {
        let (rate, window) = self.measure(now_ms);
        if rate <= quota || quota <= 0.0 {
            return 0;
        }
        ((rate - quota) / quota * window as f64).round() as u64
    }

    /// Holds nothing any more: every sample is older than the window.
    fn idle(&self, now_ms: i64) -> bool {
        self.samples.iter().all(|s| now_ms - s.start_ms >= SAMPLES as i64 * SAMPLE_MS)
    }
}

/// Kafka's `TokenBucket` (KIP-599): starts full with a whole window's quota, refills at the
/// quota per second up to that, each mutation takes a token; below zero is over the quota.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    fn burst(quota: f64) -> f64 {
        quota * SAMPLES as f64 * SAMPLE_MS as f64 / 1000.0
    }

    pub fn new(quota: f64, now_ms: i64) -> Self {
        Self { tokens: Self::burst(quota), last_ms: now_ms }
    }

    fn refill(&mut self, quota: f64, now_ms: i64) {
        let elapsed_s = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + quota * elapsed_s).min(Self::burst(quota));
        self.last_ms = now_ms.max(self.last_ms);
    }

    pub fn record(&mut self, permits: f64, quota: f64, now_ms: i64) {
        self.refill(quota, now_ms);
        self.tokens = (self.tokens - permits).min(Self::burst(quota));
    }

    /// The time until the bucket is back at zero (0: not below).
    pub fn throttle_ms(&mut self, quota: f64, now_ms: i64) -> u64 {
        self.refill(quota, now_ms);
        if self.tokens >= 0.0 || quota <= 0.0 {
            return 0;
        }
        (-self.tokens / quota * 1000.0).round() as u64
    }

    fn full(&mut self, quota: f64, now_ms: i64) -> bool {
        self.refill(quota, now_ms);
        self.tokens >= Self::burst(quota)
    }
}

#[derive(Debug)]
enum Sensor {
    Rate(Rate),
    Bucket(Bucket),
}

struct Tracked {
    sensor: Sensor,
    last_used_ms: i64,
    /// The quota last used with it (to tell whether a bucket is full).
    quota: f64,
}

impl Tracked {
    /// Forgetting it changes nothing: it would start over just as it is.
    fn idle(&mut self, now_ms: i64) -> bool {
        match &mut self.sensor {
            Sensor::Rate(r) => r.idle(now_ms),
            Sensor::Bucket(b) => b.full(self.quota, now_ms),
        }
    }
}

/// The source of the quotas (the controller client's cached set).
pub type QuotaSource = Box<dyn Fn() -> Arc<QuotaSet> + Send + Sync>;

/// The agent's quota enforcement: the quotas' index and the rates of who used them.
pub struct Quotas {
    source: QuotaSource,
    clock: Arc<dyn Clock>,
    index: RwLock<Arc<Index>>,
    tracked: Mutex<HashMap<RateKey, Tracked>>,
    entities_max: usize,
    /// `tracked`'s size, for the gauge.
    count: Arc<AtomicUsize>,
}

impl Quotas {
    pub fn new(source: QuotaSource, clock: Arc<dyn Clock>, entities_max: usize) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let gauge = count.clone();
        metrics::gauges("sidestream_quota_entities", "Rates kept for client quota enforcement (by user and client id).", move || {
            vec![(Vec::new(), gauge.load(Ordering::Relaxed) as i64)]
        });
        Self {
            source,
            clock,
            index: RwLock::new(Arc::new(Index::default())),
            tracked: Mutex::new(HashMap::new()),
            entities_max: entities_max.max(1),
            count,
        }
    }

    /// The quotas of a request of `user` with `client_id`; `None` when no quota is set at all
    /// (nothing to record).
    pub fn limits(&self, user: &str, client_id: &str) -> Option<Limits> {
        let set = (self.source)();
        if set.entries.is_empty() {
            return None;
        }
        let index = self.index_of(&set);
        let limits = Limits(Kind::ALL.map(|k| index.resolve(k, user, client_id)));
        Some(limits)
    }

    fn index_of(&self, set: &QuotaSet) -> Arc<Index> {
        let current = self.index.read().unwrap_or_else(|p| p.into_inner()).clone();
        if current.version == set.version {
            return current;
        }
        let built = Arc::new(Index::build(set));
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = built.clone();
        built
    }

    /// Records `value` against `limit` (a rate) and returns the throttle time (Kafka's
    /// `recordAndGetThrottleTimeMs`; request time at most [`REQUEST_THROTTLE_MS_MAX`]).
    pub fn record(&self, limit: &Limit, value: f64) -> u64 {
        let ms = self.with_rate(limit, |r, now| {
            r.record(value, now);
            r.throttle_ms(limit.quota, now)
        });
        if limit.key.kind == Kind::Request { ms.min(REQUEST_THROTTLE_MS_MAX) } else { ms }
    }

    /// Takes back a recorded value (a fetch answered empty after all: Kafka's
    /// `unrecordQuotaSensor`).
    pub fn unrecord(&self, limit: &Limit, value: f64) {
        self.with_rate(limit, |r, now| r.record(-value, now));
    }

    /// The throttle time now, recording nothing (a fetch over its quota is answered empty).
    pub fn throttle_now(&self, limit: &Limit) -> u64 {
        self.with_rate(limit, |r, now| r.throttle_ms(limit.quota, now))
    }

    /// Controller mutations, strict (CreateTopics v6+, DeleteTopics v5+): the throttle time if
    /// the bucket is already below zero (the request is refused), else 0.
    pub fn mutations_exceeded(&self, limit: &Limit) -> u64 {
        self.with_bucket(limit, |b, now| b.throttle_ms(limit.quota, now))
    }

    /// Records `permits` partitions created or deleted; returns the throttle time if the bucket
    /// is now below zero (the permissive versions throttle then; strict ones ignore it).
    pub fn record_mutations(&self, limit: &Limit, permits: f64) -> u64 {
        self.with_bucket(limit, |b, now| {
            b.record(permits, limit.quota, now);
            b.throttle_ms(limit.quota, now)
        })
    }

    fn with_rate<R>(&self, limit: &Limit, f: impl FnOnce(&mut Rate, i64) -> R) -> R {
        self.with_tracked(limit, |t, now| match &mut t.sensor {
            Sensor::Rate(r) => f(r, now),
            Sensor::Bucket(_) => f(&mut Rate::default(), now),
        })
    }

    fn with_bucket<R>(&self, limit: &Limit, f: impl FnOnce(&mut Bucket, i64) -> R) -> R {
        self.with_tracked(limit, |t, now| match &mut t.sensor {
            Sensor::Bucket(b) => f(b, now),
            Sensor::Rate(_) => f(&mut Bucket::new(limit.quota, now), now),
        })
    }

    fn with_tracked<R>(&self, limit: &Limit, f: impl FnOnce(&mut Tracked, i64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        if !tracked.contains_key(&limit.key) {
            if tracked.len() >= self.entities_max {
                evict(&mut tracked, self.entities_max, now);
            }
            let sensor = match limit.key.kind {
                Kind::ControllerMutation => Sensor::Bucket(Bucket::new(limit.quota, now)),
                _ => Sensor::Rate(Rate::default()),
            };
            tracked.insert(limit.key.clone(), Tracked { sensor, last_used_ms: now, quota: limit.quota });
            self.count.store(tracked.len(), Ordering::Relaxed);
        }
        let Some(t) = tracked.get_mut(&limit.key) else { unreachable!("inserted above under the same lock") };
        t.last_used_ms = now;
        t.quota = limit.quota;
        f(t, now)
    }

    /// Rates kept now.
    pub fn tracked(&self) -> usize {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Makes room for one more: forgets every idle rate, and if that is not enough the least
/// recently used eighth (so a stream of new client ids costs a sort per `max / 8` of them).
fn evict(tracked: &mut HashMap<RateKey, Tracked>, max: usize, now_ms: i64) {
    tracked.retain(|_, t| !t.idle(now_ms));
    if tracked.len() < max {
        return;
    }
    let drop_count = (max / 8).max(1).min(tracked.len());
    let mut by_use: Vec<(i64, RateKey)> = tracked.iter().map(|(k, t)| (t.last_used_ms, k.clone())).collect();
    by_use.select_nth_unstable_by_key(drop_count - 1, |(used, _)| *used);
    for (_, k) in by_use.into_iter().take(drop_count) {
        tracked.remove(&k);
    }
    evicted().add(drop_count as u64);
}

fn evicted() -> &'static Counter {
    static C: OnceLock<Arc<Counter>> = OnceLock::new();
    C.get_or_init(|| {
        metrics::counter(
            "sidestream_quota_entities_evicted_total",
            "Client quota rates forgotten while still in use, to stay under the bound.",
            &[],
        )
    })
}

/// Counts a throttle applied to a connection, under the kind that decided it.
pub fn throttled(kind: Kind, ms: u64) {
    static BY_KIND: OnceLock<[Arc<Counter>; 4]> = OnceLock::new();
    let c = BY_KIND.get_or_init(|| {
        Kind::ALL.map(|k| {
            metrics::seconds_counter(
                "sidestream_quota_throttle_seconds_total",
                "Time connections were throttled (muted) for client quotas, by the kind of quota that decided it.",
                &[("kind", k.label())],
            )
        })
    });
    c[kind as usize].add(ms.saturating_mul(1000));
}

/// The time a request's handler has been polled so far (Kafka's request thread time).
#[derive(Debug)]
pub struct Busy {
    base: std::time::Instant,
    /// Nanoseconds of finished polls.
    done_ns: AtomicU64,
    /// When the current poll began (nanoseconds since `base`, plus one; 0: not in a poll).
    polling_since: AtomicU64,
}

impl Default for Busy {
    fn default() -> Self {
        Self { base: std::time::Instant::now(), done_ns: AtomicU64::new(0), polling_since: AtomicU64::new(0) }
    }
}

impl Busy {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The polled time so far, the current poll included.
    pub fn nanos(&self) -> u64 {
        let since = self.polling_since.load(Ordering::Relaxed);
        let current = if since == 0 { 0 } else { self.now_ns().saturating_sub(since - 1) };
        self.done_ns.load(Ordering::Relaxed) + current
    }

    /// As Kafka records request time: percent of one second.
    pub fn percent(&self) -> f64 {
        self.nanos() as f64 * 100.0 / 1e9
    }

    /// `fut`, with every poll's time added here.
    pub fn time<F: Future>(&self, fut: F) -> Timed<'_, F> {
        Timed { busy: self, fut: Box::pin(fut) }
    }
}

/// A future whose polls are timed into a [`Busy`].
pub struct Timed<'a, F> {
    busy: &'a Busy,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for Timed<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let busy = self.busy;
        let start = busy.now_ns();
        busy.polling_since.store(start + 1, Ordering::Relaxed);
        let out = self.fut.as_mut().poll(cx);
        busy.polling_since.store(0, Ordering::Relaxed);
        busy.done_ns.fetch_add(busy.now_ns().saturating_sub(start), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::quota::{QuotaEntity, QuotaEntry};
    use crate::clock::ManualClock;
    use std::collections::BTreeMap;

    fn name(n: &str) -> Option<EntityName> {
        Some(EntityName::Name(n.into()))
    }

    fn set(entries: &[(Option<EntityName>, Option<EntityName>, f64)]) -> QuotaSet {
        QuotaSet {
            version: 1,
            entries: entries
                .iter()
                .map(|(u, c, q)| QuotaEntry {
                    entity: QuotaEntity { user: u.clone(), client_id: c.clone() },
                    values: BTreeMap::from([(QuotaKey::ProducerByteRate, *q)]),
                })
                .collect(),
        }
    }

    fn key(user: &str, client_id: &str) -> RateKey {
        RateKey { kind: Kind::Produce, user: user.into(), client_id: client_id.into() }
    }

    /// Each level wins over every level below it, and the rate's key is Kafka's metric tags.
    #[test]
    fn the_most_specific_entity_wins_in_kafkas_order() {
        let d = || Some(EntityName::Default);
        let levels = [
            (name("alice"), name("c1"), 1.0, key("alice", "c1")),
            (name("alice"), d(), 2.0, key("alice", "c1")),
            (name("alice"), None, 3.0, key("alice", "")),
            (d(), name("c1"), 4.0, key("alice", "c1")),
            (d(), d(), 5.0, key("alice", "c1")),
            (d(), None, 6.0, key("alice", "")),
            (None, name("c1"), 7.0, key("", "c1")),
            (None, d(), 8.0, key("", "c1")),
        ];
        for first in 0..levels.len() {
            let entries: Vec<_> = levels[first..].iter().map(|(u, c, q, _)| (u.clone(), c.clone(), *q)).collect();
            let ix = Index::build(&set(&entries));
            let got = ix.resolve(Kind::Produce, "alice", "c1").unwrap();
            assert_eq!(got, Limit { quota: levels[first].2, key: levels[first].3.clone() }, "levels {first}..");
            // Another kind's key is not set anywhere.
            assert_eq!(ix.resolve(Kind::Fetch, "alice", "c1"), None);
        }
        let ix = Index::build(&set(&[(name("alice"), name("c1"), 1.0), (None, name("c2"), 7.0), (d(), d(), 5.0)]));
        assert_eq!(ix.resolve(Kind::Produce, "bob", "c2").unwrap().quota, 5.0, "default user + default client before client");
        assert_eq!(ix.resolve(Kind::Produce, "bob", "c1").unwrap().key, key("bob", "c1"));
        // An empty client id matches the user levels only.
        let ix = Index::build(&set(&[(name("alice"), d(), 2.0), (None, d(), 8.0)]));
        assert_eq!(ix.resolve(Kind::Produce, "alice", ""), None);
        let ix = Index::build(&set(&[(d(), None, 6.0), (None, d(), 8.0)]));
        assert_eq!(ix.resolve(Kind::Produce, "bob", ""), Some(Limit { quota: 6.0, key: key("bob", "") }));
    }

    #[test]
    fn the_rate_spreads_over_at_least_ten_samples_and_forgets_old_ones() {
        let mut r = Rate::default();
        r.record(1000.0, 0);
        // A burst at the start counts over ten samples' time.
        assert_eq!(r.measure(0), (100.0, 10_000));
        assert_eq!(r.measure(500), (1000.0 / 10.5, 10_500));
        for s in 1..=10 {
            r.record(1000.0, s * 1000);
        }
        // Eleven samples of 1000 over 10.5 s.
        assert_eq!(r.measure(10_500), (11_000.0 / 10.5, 10_500));
        // The first sample (from 0) ends a window after it began: 11 s.
        let (rate, window) = r.measure(11_000);
        assert_eq!(window, 10_000);
        assert_eq!(rate, 1000.0);
        // Nothing for a whole window: nothing held.
        assert!(r.idle(22_000));
        assert_eq!(r.measure(22_000).0, 0.0);
    }

    #[test]
    fn throttle_time_brings_the_rate_back_to_the_quota() {
        let mut r = Rate::default();
        r.record(3000.0, 0);
        // 3000 over 10 s = 300/s against 200/s: (300 - 200) / 200 * 10 s = 5 s.
        assert_eq!(r.throttle_ms(200.0, 0), 5000);
        assert_eq!(r.throttle_ms(300.0, 0), 0);
        // Waiting as told puts the rate back within the quota, not half of it.
        let mut r = Rate::default();
        for t in (0..10_000).step_by(1000) {
            r.record(300.0, t);
        }
        let ms = r.throttle_ms(200.0, 9_999) as i64;
        assert_eq!(ms, 4001);
        assert!(r.measure(9_999 + ms / 2).0 > 200.0);
        assert!(r.measure(9_999 + ms).0 <= 200.0);
    }

    #[test]
    fn the_mutation_bucket_bursts_a_window_then_refills_at_the_quota() {
        let mut b = Bucket::new(1.0, 0);
        // 11 partitions at once fit; the 12th puts it below zero for a second.
        b.record(11.0, 1.0, 0);
        assert_eq!(b.throttle_ms(1.0, 0), 0);
        b.record(9.0, 1.0, 0);
        assert_eq!(b.throttle_ms(1.0, 0), 9000);
        assert_eq!(b.throttle_ms(1.0, 4000), 5000);
        assert_eq!(b.throttle_ms(1.0, 9000), 0);
        assert!(b.full(1.0, 20_000));
    }

    fn quotas(entries: &[(Option<EntityName>, Option<EntityName>, f64)], clock: Arc<ManualClock>, max: usize) -> Quotas {
        let s = Arc::new(set(entries));
        Quotas::new(Box::new(move || s.clone()), clock, max)
    }

    #[test]
    fn no_quota_means_nothing_tracked() {
        let q = Quotas::new(Box::new(|| Arc::new(QuotaSet::default())), Arc::new(ManualClock::new(0)), 10);
        assert_eq!(q.limits("alice", "c1"), None);
        assert_eq!(q.tracked(), 0);
    }

    #[test]
    fn records_throttle_and_share_rates_as_the_level_says() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        // A default client-id quota: each client id has a rate of its own.
        let q = quotas(&[(None, Some(EntityName::Default), 100.0)], clock.clone(), 10);
        let l1 = q.limits("alice", "c1").unwrap();
        let l2 = q.limits("bob", "c2").unwrap();
        let p1 = l1.get(Kind::Produce).unwrap();
        assert_eq!(q.record(p1, 1000.0), 0);
        assert_eq!(q.record(p1, 1000.0), 10_000);
        assert_eq!(q.throttle_now(p1), 10_000);
        assert_eq!(q.record(l2.get(Kind::Produce).unwrap(), 1000.0), 0);
        // Same client id, other user: the same rate (a client-id level).
        assert_eq!(q.throttle_now(q.limits("carol", "c1").unwrap().get(Kind::Produce).unwrap()), 10_000);
        assert_eq!(q.tracked(), 2);
        clock.advance_ms(20_000);
        assert_eq!(q.throttle_now(p1), 0);
        assert_eq!(p1.max_in_window(), 1000.0);
    }

    #[test]
    fn tracking_is_bounded_idle_first_then_least_recently_used() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let q = quotas(&[(None, Some(EntityName::Default), 100.0)], clock.clone(), 16);
        let record = |client: &str, v: f64| {
            let l = q.limits("u", client).unwrap();
            q.record(l.get(Kind::Produce).unwrap(), v)
        };
        for i in 0..16 {
            record(&format!("c{i}"), 1000.0);
            clock.advance_ms(10);
        }
        assert_eq!(q.tracked(), 16);
        // Full: the least recently used eighth (c0, c1) goes for c16.
        record("c16", 1.0);
        assert_eq!(q.tracked(), 15);
        assert!(record("c2", 1000.0) > 0, "c2 kept its rate");
        assert_eq!(record("c0", 1.0), 0, "c0 was forgotten");
        assert_eq!(q.tracked(), 16);
        // A window later every rate is idle: all of them go at once, none counted as evicted.
        clock.advance_ms(11_000);
        let evicted_before = evicted().get();
        record("c100", 1.0);
        assert_eq!(q.tracked(), 1);
        assert_eq!(evicted().get(), evicted_before);
    }

    #[tokio::test]
    async fn busy_time_counts_polls_not_waits() {
        let busy = Busy::default();
        busy.time(async {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        })
        .await;
        let ms = busy.nanos() / 1_000_000;
        assert!((20..150).contains(&ms), "{ms} ms");
        assert!(busy.percent() >= 2.0);
    }
}

//! Client telemetry (KIP-714): the subscription clients are given (GetTelemetrySubscriptions),
//! the client instances that push (PushTelemetry), and the series they pushed, shown on
//! `GET /metrics` as `kafka_client_<metric name, dots as underscores>{client_id,
//! client_instance_id, <the data point's attributes>}`.
//!
//! What a client is asked for is the union of the subscriptions it matches, as Kafka's
//! `ClientMetricsManager` computes it when the instance is made: the config file's
//! (`[client_telemetry] metrics`, every client, when not empty) and the CLIENT_METRICS
//! resources set at run time ([`crate::api::client_metrics`], matched on client id, instance
//! id, software name and version, source address and port); the metric prefixes of all, `*`
//! alone if any has it, and the shortest interval. None matching: no metrics, every
//! [`NO_SUBSCRIPTION_PUSH_INTERVAL_MS`]. With `enabled = false` every client gets that empty
//! subscription (the resources are still stored and shown, not applied).
//!
//! Semantics are Kafka's `ClientMetricsManager`: a client sending the zero UUID gets a new
//! instance id; the subscription id is a CRC32C of the requested metrics and the push interval,
//! XORed with the instance id's hash, so it changes when the subscription does (and a push
//! with an old one gets UNKNOWN_SUBSCRIPTION_ID); a GetTelemetrySubscriptions or a push sooner
//! than the interval after the previous one is throttled (a push right after a
//! GetTelemetrySubscriptions is always taken: clients jitter their first push); a push after a
//! terminating one is refused. Payloads are bounded twice: `max_bytes` as sent (Kafka's
//! `telemetry.max.bytes`), `max_decompressed_bytes` once decompressed.
//!
//! Bounds: at most `max_clients` instances (a new one evicts the longest silent; an instance
//! silent for max(60 s, 3 push intervals) expires), at most `max_series_per_client` series each
//! (more are dropped), [`ATTRIBUTES_PER_POINT_MAX`] labels per series, label values cut at
//! [`LABEL_VALUE_BYTES_MAX`]. Every drop and eviction is counted
//! (`sidestream_client_telemetry_*`). Temporality: clients are asked for cumulative sums
//! (delta_temporality false, unlike Kafka, whose plugins take deltas), which Prometheus counters
//! are; a client sending deltas anyway has them added up.
//!
//! Must not touch: Kafka request/response types (the handler in `protocol/handlers/telemetry`
//! maps [`ClientTelemetryError`] to Kafka's codes).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use crate::api::client_metrics::{ALL_METRICS, ClientMeta, INTERVAL_MS_DEFAULT, ParsedSubscription};
use crate::clock::{Clock, Entropy};
use crate::config::ClientTelemetryConfig;
use crate::format::otlp_metrics::{self, ATTRIBUTES_PER_POINT_MAX, Kind};
use crate::format::records::{DecompressError, decompress_bounded};
use crate::metrics;

/// An instance silent this long (or 3 push intervals, if longer) is forgotten (Kafka's
/// client metrics cache expiry).
pub const INSTANCE_EXPIRY_MIN_MS: i64 = 60_000;
/// Requests look for expired instances at most this often (a scan of every instance).
pub const EXPIRY_SWEEP_INTERVAL_MS: i64 = 1_000;
/// Label values longer than this are cut (at a character boundary).
pub const LABEL_VALUE_BYTES_MAX: usize = 128;
/// Metric names longer than this (before the prefix) are dropped.
pub const METRIC_NAME_BYTES_MAX: usize = 200;
/// Kafka's push interval when no subscription matches (`interval.ms`'s default).
pub const NO_SUBSCRIPTION_PUSH_INTERVAL_MS: u64 = INTERVAL_MS_DEFAULT;
/// The codecs pushes may use, in the agent's order of preference (Kafka's list): zstd, lz4,
/// gzip, snappy (Kafka's ids). Uncompressed (0) is always taken.
pub const ACCEPTED_COMPRESSION_TYPES: [i8; 4] = [4, 3, 1, 2];
/// How often an agent loads the CLIENT_METRICS subscriptions from the controller (while
/// `enabled`): a change made through another agent reaches this one's clients within this
/// (plus their push interval: they learn of it at their next push).
pub const RUNTIME_REFRESH_INTERVAL_MS: u64 = 5_000;
/// Prefix of every exported client series.
pub const SERIES_PREFIX: &str = "kafka_client_";
/// A push this much (or a tenth of the interval, if less) before the interval has passed is
/// still taken: a client's timer and the network jitter, not a client pushing too fast.
pub const PUSH_EARLY_TOLERANCE_MS: i64 = 1_000;

/// Why a request is refused, by what the client must do: wait, get a new subscription,
/// change what it sends, or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientTelemetryError {
    /// THROTTLING_QUOTA_EXCEEDED: sooner than the push interval after the previous request.
    #[error("request before the push interval has passed")]
    Throttled,
    /// UNKNOWN_SUBSCRIPTION_ID: the subscription changed since the client got it.
    #[error("unknown or outdated subscription id")]
    UnknownSubscription,
    /// UNSUPPORTED_COMPRESSION_TYPE.
    #[error("unsupported compression type")]
    UnsupportedCompression,
    /// TELEMETRY_TOO_LARGE: over `max_bytes`, or over `max_decompressed_bytes` decompressed.
    #[error("payload larger than the agent takes")]
    TooLarge,
    /// INVALID_RECORD: the payload does not decompress, or is not OTLP metrics.
    #[error("payload is not compressed OTLP metrics")]
    InvalidRecord,
    /// INVALID_REQUEST: a reserved instance id, or a push after a terminating one.
    #[error("invalid client instance id, or a push after a terminating push")]
    InvalidRequest,
}

/// What clients are asked to push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Metric name prefixes (`*`: all; empty: none).
    pub metrics: Vec<String>,
    pub push_interval_ms: u64,
}

impl Subscription {
    fn wants(&self, metric: &str) -> bool {
        self.metrics.iter().any(|m| m == "*" || metric.starts_with(m.as_str()))
    }
}

/// The subscription id of `subscription` for instance `id`: CRC32C of the sorted metric
/// prefixes and the interval, XOR Kafka's `Uuid.hashCode` of `id`.
pub fn subscription_id(subscription: &Subscription, id: Uuid) -> i32 {
    let mut metrics = subscription.metrics.clone();
    metrics.sort();
    let text = format!("[{}]{}", metrics.join(", "), subscription.push_interval_ms);
    let crc = crc32c::crc32c(text.as_bytes()) as i32;
    let (hi, lo) = id.as_u64_pair();
    let h = hi ^ lo;
    crc ^ ((h >> 32) as i32 ^ h as i32)
}

/// A GetTelemetrySubscriptions answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    pub client_instance_id: Uuid,
    pub subscription_id: i32,
    pub push_interval_ms: u64,
    pub max_bytes: usize,
    pub metrics: Vec<String>,
}

/// A series' key within an instance: the exported name and the attribute labels, sorted.
type SeriesKey = (String, Vec<(String, String)>);

struct Instance {
    client_id: String,
    /// What the subscriptions are matched on (the client id as first seen).
    meta: ClientMeta,
    /// The union of the subscriptions matched when the instance was (re)evaluated.
    subscription: Subscription,
    subscription_id: i32,
    subscription_version: u64,
    last_get_ms: Option<i64>,
    last_push_ms: Option<i64>,
    last_seen_ms: i64,
    terminating: bool,
    last_error: Option<ClientTelemetryError>,
    series: BTreeMap<SeriesKey, (Kind, f64)>,
}

struct State {
    /// The config file's subscription (every client), if it asks for any metric.
    file: Option<Subscription>,
    /// The CLIENT_METRICS resources, as last loaded from the controller.
    runtime: Vec<ParsedSubscription>,
    /// `[client_telemetry] enabled`: when false no subscription applies.
    enabled: bool,
    /// Bumped when the subscriptions change: instances made before re-evaluate theirs.
    version: u64,
    instances: HashMap<Uuid, Instance>,
    /// When expired instances were last looked for.
    last_sweep_ms: i64,
}

/// The client telemetry of one agent.
pub struct ClientTelemetry {
    max_bytes: usize,
    max_decompressed_bytes: usize,
    max_clients: usize,
    max_series_per_client: usize,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    state: Mutex<State>,
}

/// A point of a push, ready to store: exported name, labels, value.
struct Ready {
    key: SeriesKey,
    kind: Kind,
    value: f64,
}

fn count(name: &'static str, help: &'static str, label: &'static str, value: &str) {
    metrics::counter(name, help, &[(label, value)]).inc();
}

fn dropped(reason: &str, n: u64) {
    if n > 0 {
        metrics::counter(
            "sidestream_client_telemetry_series_dropped_total",
            "Pushed client metric points not kept, by reason (series_limit, unsubscribed, invalid_name).",
            &[("reason", reason)],
        )
        .add(n);
    }
}

fn evicted(reason: &str) {
    count(
        "sidestream_client_telemetry_clients_evicted_total",
        "Client instances whose metrics were forgotten, by reason (expired, capacity).",
        "reason",
        reason,
    );
}

/// `s` with every byte outside `[a-zA-Z0-9_]` as `_` (a Prometheus metric or label name).
fn sanitize(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn cut(v: &str) -> &str {
    if v.len() <= LABEL_VALUE_BYTES_MAX {
        return v;
    }
    let mut end = LABEL_VALUE_BYTES_MAX;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

/// The labels every series of an instance has; attributes of these names are left out.
const INSTANCE_LABELS: [&str; 2] = ["client_id", "client_instance_id"];

impl ClientTelemetry {
    pub fn new(config: &ClientTelemetryConfig, clock: Arc<dyn Clock>, entropy: Arc<dyn Entropy>) -> Arc<Self> {
        let file = (!config.metrics.is_empty())
            .then(|| Subscription { metrics: config.metrics.clone(), push_interval_ms: config.push_interval_ms });
        Arc::new(Self {
            max_bytes: config.max_bytes as usize,
            max_decompressed_bytes: config.max_decompressed_bytes as usize,
            max_clients: (config.max_clients as usize).max(1),
            max_series_per_client: config.max_series_per_client as usize,
            clock,
            entropy,
            state: Mutex::new(State {
                file,
                runtime: Vec::new(),
                enabled: config.enabled,
                version: 0,
                instances: HashMap::new(),
                last_sweep_ms: i64::MIN,
            }),
        })
    }

    /// Shows the pushed series on `GET /metrics`, and gauges of how many instances and series
    /// are kept (the registry holds a weak reference: a dropped agent shows nothing).
    pub fn register_metrics(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        metrics::text_families("kafka_client", move |out| {
            if let Some(t) = weak.upgrade() {
                t.render(out);
            }
        });
        let weak = Arc::downgrade(self);
        metrics::gauges("sidestream_client_telemetry_clients", "Client instances whose pushed metrics are kept.", move || {
            weak.upgrade().map_or_else(Vec::new, |t| vec![(vec![], t.lock().instances.len() as i64)])
        });
        let weak = Arc::downgrade(self);
        metrics::gauges("sidestream_client_telemetry_series", "Pushed client series kept (all instances).", move || {
            weak.upgrade()
                .map_or_else(Vec::new, |t| vec![(vec![], t.lock().instances.values().map(|i| i.series.len() as i64).sum())])
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the subscription: every instance gets a new subscription id (its next push
    /// with the old one is refused, and it fetches the new one at once).
    pub fn set_subscription(&self, subscription: Subscription) {
        let mut state = self.lock();
        let file = (!subscription.metrics.is_empty()).then_some(subscription);
        if state.file != file {
            state.file = file;
            state.version += 1;
        }
    }

    /// Replaces the CLIENT_METRICS subscriptions (as loaded from the controller); instances
    /// re-evaluate theirs only when the set changed. Whether it changed is answered.
    pub fn set_runtime_subscriptions(&self, subscriptions: Vec<ParsedSubscription>) -> bool {
        let key = |v: &[ParsedSubscription]| -> Vec<String> { v.iter().map(|s| format!("{s:?}")).collect() };
        let mut state = self.lock();
        if key(&state.runtime) == key(&subscriptions) {
            return false;
        }
        state.runtime = subscriptions;
        state.version += 1;
        true
    }

    /// Whether subscriptions apply at all (`[client_telemetry] enabled`).
    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The union of the subscriptions `client` matches (Kafka's `createClientInstance`).
    fn subscription_for(state: &State, client: &ClientMeta) -> Subscription {
        let mut metrics: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut interval = NO_SUBSCRIPTION_PUSH_INTERVAL_MS;
        if state.enabled {
            let file = state.file.iter().map(|f| (&f.metrics, f.push_interval_ms));
            let runtime = state.runtime.iter().filter(|s| s.matches(client)).map(|s| (&s.metrics, s.interval_ms));
            for (m, i) in file.chain(runtime) {
                metrics.extend(m.iter().cloned());
                interval = interval.min(i);
            }
        }
        let metrics = if metrics.contains(ALL_METRICS) { vec![ALL_METRICS.to_string()] } else { metrics.into_iter().collect() };
        Subscription { metrics, push_interval_ms: interval }
    }

    fn expiry_ms(inst: &Instance) -> i64 {
        INSTANCE_EXPIRY_MIN_MS.max(3 * inst.subscription.push_interval_ms as i64)
    }

    /// Forgets instances silent for longer than their expiry (looked for at most every
    /// [`EXPIRY_SWEEP_INTERVAL_MS`] by requests; at every scrape).
    fn expire(state: &mut State, now: i64, scrape: bool) {
        if !scrape && now.saturating_sub(state.last_sweep_ms) < EXPIRY_SWEEP_INTERVAL_MS {
            return;
        }
        state.last_sweep_ms = now;
        let before = state.instances.len();
        state.instances.retain(|_, i| now - i.last_seen_ms < Self::expiry_ms(i));
        for _ in state.instances.len()..before {
            evicted("expired");
        }
    }

    /// The instance `id` (made, or its subscription re-evaluated, as needed), seen now.
    fn instance<'s>(&self, state: &'s mut State, id: Uuid, client: &ClientMeta, now: i64) -> &'s mut Instance {
        Self::expire(state, now, false);
        if !state.instances.contains_key(&id) && state.instances.len() >= self.max_clients {
            let oldest = state.instances.iter().min_by_key(|(_, i)| i.last_seen_ms).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                state.instances.remove(&oldest);
                evicted("capacity");
            }
        }
        assert!(state.instances.len() < self.max_clients || state.instances.contains_key(&id), "more client instances than max_clients");
        let version = state.version;
        let stale = state.instances.get(&id).is_none_or(|i| i.subscription_version < version);
        // Kafka matches on what the instance was made with; the instance id is always its own.
        let meta = match state.instances.get(&id) {
            Some(i) => i.meta.clone(),
            None => ClientMeta { client_instance_id: kafka_uuid(id), ..client.clone() },
        };
        let subscription = if stale { Self::subscription_for(state, &meta) } else { Subscription::default() };
        let sub_id = subscription_id(&subscription, id);
        let inst = state.instances.entry(id).or_insert_with(|| Instance {
            client_id: cut(&client.client_id).to_string(),
            meta,
            subscription: subscription.clone(),
            subscription_id: sub_id,
            subscription_version: version,
            last_get_ms: None,
            last_push_ms: None,
            last_seen_ms: now,
            terminating: false,
            last_error: None,
            series: BTreeMap::new(),
        });
        if inst.subscription_version < version {
            // Kafka makes a new instance: fresh request times, the new subscription id.
            inst.subscription = subscription;
            inst.subscription_id = sub_id;
            inst.subscription_version = version;
            inst.last_get_ms = None;
            inst.last_push_ms = None;
        }
        inst.last_seen_ms = now;
        if !client.client_id.is_empty() {
            inst.client_id = cut(&client.client_id).to_string();
        }
        inst
    }

    /// GetTelemetrySubscriptions from `client` holding instance id `id` (nil: a new one is
    /// assigned). `client.client_instance_id` is ignored (it is `id`'s).
    pub fn subscribe(&self, id: Uuid, client: &ClientMeta) -> Result<Granted, ClientTelemetryError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let id = if id.is_nil() {
            loop {
                let fresh = self.entropy.uuid();
                if !is_reserved(fresh) && !state.instances.contains_key(&fresh) {
                    break fresh;
                }
            }
        } else {
            id
        };
        let inst = self.instance(&mut state, id, client, now);
        let interval = inst.subscription.push_interval_ms as i64;
        let metrics = inst.subscription.metrics.clone();
        let last = inst.last_get_ms.max(inst.last_push_ms);
        let due = last.is_none_or(|l| now - l >= interval);
        let retrying =
            matches!(inst.last_error, Some(ClientTelemetryError::UnknownSubscription | ClientTelemetryError::UnsupportedCompression));
        if !due && !retrying {
            count("sidestream_client_telemetry_requests_total", REQUESTS_HELP, "outcome", "throttled");
            return Err(ClientTelemetryError::Throttled);
        }
        // Unlike Kafka, a retrying client's get counts as one, so its next push is taken at
        // once (Kafka would throttle it until the interval has passed since the refused push).
        inst.last_get_ms = Some(now);
        inst.last_error = None;
        count("sidestream_client_telemetry_requests_total", REQUESTS_HELP, "outcome", "subscribed");
        Ok(Granted {
            client_instance_id: id,
            subscription_id: inst.subscription_id,
            push_interval_ms: interval as u64,
            max_bytes: self.max_bytes,
            metrics,
        })
    }

    /// PushTelemetry: checks the request as Kafka does, then decompresses and reads the
    /// payload and keeps its points.
    pub fn push(
        &self,
        id: Uuid,
        client: &ClientMeta,
        subscription_id: i32,
        terminating: bool,
        compression: i8,
        payload: &[u8],
    ) -> Result<(), ClientTelemetryError> {
        let outcome = self.push_checked(id, client, subscription_id, terminating, compression, payload);
        let label = match outcome {
            Ok(()) => "pushed",
            Err(ClientTelemetryError::Throttled) => "throttled",
            Err(ClientTelemetryError::UnknownSubscription) => "unknown_subscription",
            Err(ClientTelemetryError::UnsupportedCompression) => "unsupported_compression",
            Err(ClientTelemetryError::TooLarge) => "too_large",
            Err(ClientTelemetryError::InvalidRecord) => "invalid_record",
            Err(ClientTelemetryError::InvalidRequest) => "invalid_request",
        };
        count("sidestream_client_telemetry_requests_total", REQUESTS_HELP, "outcome", label);
        outcome
    }

    fn push_checked(
        &self,
        id: Uuid,
        client: &ClientMeta,
        subscription_id: i32,
        terminating: bool,
        compression: i8,
        payload: &[u8],
    ) -> Result<(), ClientTelemetryError> {
        if is_reserved(id) {
            return Err(ClientTelemetryError::InvalidRequest);
        }
        let now = self.clock.now_ms();
        let subscription = {
            let mut state = self.lock();
            let inst = self.instance(&mut state, id, client, now);
            let interval = inst.subscription.push_interval_ms as i64;
            let subscription = inst.subscription.clone();
            let checked = Self::check_push(inst, now, interval, subscription_id, terminating, compression, payload.len(), self.max_bytes);
            inst.terminating |= terminating;
            if let Err(e) = checked {
                inst.last_error = Some(e);
                return Err(e);
            }
            subscription
        };
        // Decompressed and read outside the lock.
        let read = self.read_payload(&subscription, compression, payload);
        let mut state = self.lock();
        let Some(inst) = state.instances.get_mut(&id) else {
            return read.map(|_| ()); // evicted meanwhile: nothing to keep it in
        };
        match read {
            Ok(points) => {
                inst.last_error = None;
                let mut over = 0;
                for p in points {
                    let room = inst.series.len() < self.max_series_per_client;
                    match inst.series.get_mut(&p.key) {
                        Some(slot) => {
                            let value = if p.kind == Kind::DeltaCounter { slot.1 + p.value } else { p.value };
                            *slot = (p.kind, value);
                        }
                        None if room => {
                            inst.series.insert(p.key, (p.kind, p.value));
                        }
                        None => over += 1,
                    }
                }
                assert!(inst.series.len() <= self.max_series_per_client, "more series than max_series_per_client");
                dropped("series_limit", over);
                Ok(())
            }
            Err(e) => {
                inst.last_error = Some(e);
                Err(e)
            }
        }
    }

    /// Kafka's checks of a push, in Kafka's order; records the push time when it is taken.
    #[allow(clippy::too_many_arguments)]
    fn check_push(
        inst: &mut Instance,
        now: i64,
        interval: i64,
        subscription_id: i32,
        terminating: bool,
        compression: i8,
        len: usize,
        max_bytes: usize,
    ) -> Result<(), ClientTelemetryError> {
        if inst.terminating {
            return Err(ClientTelemetryError::InvalidRequest);
        }
        let tolerance = PUSH_EARLY_TOLERANCE_MS.min(interval / 10);
        let taken = match (inst.last_get_ms, inst.last_push_ms) {
            (_, None) => true,
            (Some(get), Some(push)) if get > push => true,
            (_, Some(push)) => now - push >= interval - tolerance,
        };
        if taken {
            inst.last_push_ms = Some(now);
        } else if !terminating {
            return Err(ClientTelemetryError::Throttled);
        }
        if subscription_id != inst.subscription_id {
            return Err(ClientTelemetryError::UnknownSubscription);
        }
        if compression != 0 && !ACCEPTED_COMPRESSION_TYPES.contains(&compression) {
            return Err(ClientTelemetryError::UnsupportedCompression);
        }
        if len > max_bytes {
            return Err(ClientTelemetryError::TooLarge);
        }
        Ok(())
    }

    /// The payload's points the subscription asked for, named and labelled for export (at
    /// most `max_series_per_client`: an instance keeps no more).
    fn read_payload(&self, subscription: &Subscription, compression: i8, payload: &[u8]) -> Result<Vec<Ready>, ClientTelemetryError> {
        if payload.is_empty() {
            return Ok(Vec::new());
        }
        let data = decompress_bounded(i16::from(compression), payload, self.max_decompressed_bytes).map_err(|e| match e {
            DecompressError::TooLarge => ClientTelemetryError::TooLarge,
            DecompressError::UnknownCodec => ClientTelemetryError::UnsupportedCompression,
            DecompressError::Bad => ClientTelemetryError::InvalidRecord,
        })?;
        let mut out = Vec::new();
        let (mut unsubscribed, mut invalid, mut over) = (0u64, 0u64, 0u64);
        otlp_metrics::read_metrics_data(&data, &mut |p| {
            if !subscription.wants(p.metric) {
                unsubscribed += 1;
                return;
            }
            if p.metric.is_empty() || p.metric.len() > METRIC_NAME_BYTES_MAX {
                invalid += 1;
                return;
            }
            if out.len() >= self.max_series_per_client {
                over += 1;
                return;
            }
            let name = format!("{SERIES_PREFIX}{}{}", sanitize(p.metric), p.suffix);
            let mut labels: Vec<(String, String)> = Vec::with_capacity(p.attributes.len());
            for (k, v) in &p.attributes {
                let k = sanitize(k);
                if k.is_empty() || k.starts_with("__") || INSTANCE_LABELS.contains(&k.as_str()) || labels.iter().any(|(l, _)| *l == k) {
                    continue;
                }
                labels.push((k, cut(v).to_string()));
            }
            labels.sort();
            debug_assert!(labels.len() <= ATTRIBUTES_PER_POINT_MAX);
            out.push(Ready { key: (name, labels), kind: p.kind, value: p.value });
        })
        .map_err(|_| ClientTelemetryError::InvalidRecord)?;
        dropped("unsubscribed", unsubscribed);
        dropped("invalid_name", invalid);
        dropped("series_limit", over);
        Ok(out)
    }

    /// Every kept series in Prometheus' text format, one family per name (`counter` when all
    /// its series are monotonic sums, `gauge` when none is, else `untyped`).
    pub fn render(&self, out: &mut String) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        Self::expire(&mut state, now, true);
        let mut families: BTreeMap<&str, Vec<(String, Kind, f64)>> = BTreeMap::new();
        for (id, inst) in &state.instances {
            for ((name, labels), (kind, value)) in &inst.series {
                let mut text = format!("client_id=\"{}\",client_instance_id=\"{}\"", metrics::escape(&inst.client_id), id.as_hyphenated());
                for (k, v) in labels {
                    let _ = write!(text, ",{k}=\"{}\"", metrics::escape(v));
                }
                families.entry(name.as_str()).or_default().push((text, *kind, *value));
            }
        }
        for (name, series) in families {
            let counters = series.iter().filter(|(_, k, _)| *k != Kind::Gauge).count();
            let kind = match counters {
                0 => "gauge",
                n if n == series.len() => "counter",
                _ => "untyped",
            };
            let _ = writeln!(out, "# HELP {name} Pushed by clients (KIP-714).");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, _, value) in series {
                let _ = writeln!(out, "{name}{{{labels}}} {}", prometheus_float(value));
            }
        }
    }
}

/// Loads the CLIENT_METRICS subscriptions from the controller into `agent`'s client telemetry
/// (while enabled). A subscription this release cannot parse is skipped, with a warning; a
/// failed load keeps the previous set (the next refresh retries).
pub async fn refresh_runtime_subscriptions(agent: &crate::agent::Agent) {
    refresh(&agent.client_telemetry, agent.controller.as_ref()).await;
}

async fn refresh(telemetry: &ClientTelemetry, controller: &dyn crate::agent::client::ControllerClient) {
    if !telemetry.enabled() {
        return;
    }
    let all = match controller.all_client_metrics().await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %e, "loading the client metrics subscriptions from the controller failed");
            return;
        }
    };
    let parsed = all
        .iter()
        .filter_map(|r| match crate::api::client_metrics::parse(r) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(subscription = %r.name, error = %e, "a stored client metrics subscription is skipped");
                None
            }
        })
        .collect();
    if telemetry.set_runtime_subscriptions(parsed) {
        tracing::info!(subscriptions = all.len(), "client metrics subscriptions loaded");
    }
}

/// Keeps an agent's CLIENT_METRICS subscriptions fresh: loads them every
/// [`RUNTIME_REFRESH_INTERVAL_MS`] while telemetry is enabled, until `shutdown`.
pub fn spawn_refresh(
    telemetry: Arc<ClientTelemetry>,
    controller: Arc<dyn crate::agent::client::ControllerClient>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if !telemetry.enabled() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(RUNTIME_REFRESH_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => refresh(&telemetry, controller.as_ref()).await,
            }
        }
    }))
}

const REQUESTS_HELP: &str = "GetTelemetrySubscriptions and PushTelemetry requests, by outcome.";

/// Kafka's `Uuid.toString`: the 16 bytes in URL-safe base64 without padding.
pub fn kafka_uuid(id: Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// Kafka's reserved UUIDs (`Uuid.RESERVED`): zero, one (the metadata topic's id).
fn is_reserved(id: Uuid) -> bool {
    id.is_nil() || id.as_u128() == 1
}

fn prometheus_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SeededEntropy};
    use crate::format::otlp_metrics::encode::{counter, gauge, metrics_data, number_point};

    fn m(client_id: &str) -> ClientMeta {
        ClientMeta { client_id: client_id.into(), ..Default::default() }
    }

    fn config(interval: u64) -> ClientTelemetryConfig {
        ClientTelemetryConfig { enabled: true, push_interval_ms: interval, ..Default::default() }
    }

    fn setup(config: ClientTelemetryConfig) -> (Arc<ClientTelemetry>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let t = ClientTelemetry::new(&config, clock.clone(), Arc::new(SeededEntropy::new(7)));
        (t, clock)
    }

    fn payload(value: f64) -> Vec<u8> {
        metrics_data(
            &[],
            &[
                gauge("org.apache.kafka.producer.record.queue.time.avg", &[number_point(value, &[("node.id", "1")])]),
                counter("org.apache.kafka.producer.record.send.total", &[number_point(value * 2.0, &[])], false),
            ],
        )
    }

    fn rendered(t: &ClientTelemetry) -> String {
        let mut s = String::new();
        t.render(&mut s);
        s
    }

    #[test]
    fn a_zero_id_gets_a_new_instance_and_pushes_show_up_labelled() {
        let (t, clock) = setup(config(1000));
        let g = t.subscribe(Uuid::nil(), &m("p1")).unwrap();
        assert!(!g.client_instance_id.is_nil());
        assert_eq!((g.push_interval_ms, g.metrics.clone()), (1000, vec!["*".to_string()]));
        t.push(g.client_instance_id, &m("p1"), g.subscription_id, false, 0, &payload(1.5)).unwrap();
        let text = rendered(&t);
        let id = g.client_instance_id.as_hyphenated().to_string();
        assert!(text.contains("# TYPE kafka_client_org_apache_kafka_producer_record_queue_time_avg gauge\n"), "{text}");
        assert!(
            text.contains(&format!(
                "kafka_client_org_apache_kafka_producer_record_queue_time_avg{{client_id=\"p1\",client_instance_id=\"{id}\",node_id=\"1\"}} 1.5\n"
            )),
            "{text}"
        );
        assert!(text.contains("# TYPE kafka_client_org_apache_kafka_producer_record_send_total counter\n"), "{text}");
        // A second push after the interval replaces the values.
        clock.advance_ms(1000);
        t.push(g.client_instance_id, &m("p1"), g.subscription_id, false, 0, &payload(4.0)).unwrap();
        assert!(rendered(&t).contains(&format!("record_send_total{{client_id=\"p1\",client_instance_id=\"{id}\"}} 8\n")));
    }

    #[test]
    fn pushes_faster_than_the_interval_are_throttled_but_the_first_after_a_get_is_taken() {
        let (t, clock) = setup(config(10_000));
        let g = t.subscribe(Uuid::nil(), &m("p")).unwrap();
        let id = g.client_instance_id;
        // A second get at once: throttled.
        assert_eq!(t.subscribe(id, &m("p")), Err(ClientTelemetryError::Throttled));
        clock.advance_ms(10);
        t.push(id, &m("p"), g.subscription_id, false, 0, &payload(1.0)).unwrap();
        clock.advance_ms(5_000);
        assert_eq!(t.push(id, &m("p"), g.subscription_id, false, 0, &payload(1.0)), Err(ClientTelemetryError::Throttled));
        // Within the early tolerance (1 s of 10 s): taken.
        clock.advance_ms(4_100);
        t.push(id, &m("p"), g.subscription_id, false, 0, &payload(1.0)).unwrap();
        // A terminating push is taken whatever the time; nothing after it is.
        clock.advance_ms(1);
        t.push(id, &m("p"), g.subscription_id, true, 0, &payload(1.0)).unwrap();
        clock.advance_ms(20_000);
        assert_eq!(t.push(id, &m("p"), g.subscription_id, false, 0, &payload(1.0)), Err(ClientTelemetryError::InvalidRequest));
    }

    #[test]
    fn the_subscription_id_changes_with_the_subscription() {
        let (t, clock) = setup(config(1000));
        let g = t.subscribe(Uuid::nil(), &m("p")).unwrap();
        let id = g.client_instance_id;
        let s = |metrics: &[&str], interval| Subscription {
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            push_interval_ms: interval,
        };
        assert_eq!(subscription_id(&s(&["*"], 1000), id), g.subscription_id);
        assert_ne!(subscription_id(&s(&["*"], 2000), id), g.subscription_id);
        assert_ne!(subscription_id(&s(&["org.apache.kafka.producer."], 1000), id), g.subscription_id);
        assert_ne!(subscription_id(&s(&["*"], 1000), Uuid::from_u128(99)), g.subscription_id, "per instance");
        assert_eq!(subscription_id(&s(&["a", "b"], 5), id), subscription_id(&s(&["b", "a"], 5), id), "order does not matter");
        t.set_subscription(s(&["org.apache.kafka.producer."], 1000));
        clock.advance_ms(1);
        assert_eq!(t.push(id, &m("p"), g.subscription_id, false, 0, &payload(1.0)), Err(ClientTelemetryError::UnknownSubscription));
        // The client fetches the new one at once (not throttled after that error) and pushes.
        clock.advance_ms(1);
        let g2 = t.subscribe(id, &m("p")).unwrap();
        assert_ne!(g2.subscription_id, g.subscription_id);
        assert_eq!(g2.metrics, ["org.apache.kafka.producer."]);
        t.push(id, &m("p"), g2.subscription_id, false, 0, &payload(1.0)).unwrap();
    }

    #[test]
    fn payload_errors_get_kafkas_codes() {
        let (t, clock) = setup(ClientTelemetryConfig { max_bytes: 2048, max_decompressed_bytes: 4096, ..config(100) });
        let g = t.subscribe(Uuid::nil(), &m("p")).unwrap();
        let (id, sub) = (g.client_instance_id, g.subscription_id);
        let push = |compression: i8, body: &[u8]| {
            clock.advance_ms(100);
            t.push(id, &m("p"), sub, false, compression, body)
        };
        assert_eq!(push(0, &[0x0b, 1, 2]), Err(ClientTelemetryError::InvalidRecord));
        assert_eq!(push(4, b"not zstd"), Err(ClientTelemetryError::InvalidRecord));
        assert_eq!(push(9, &payload(1.0)), Err(ClientTelemetryError::UnsupportedCompression));
        assert_eq!(push(0, &vec![0u8; 2049]), Err(ClientTelemetryError::TooLarge));
        // A zip bomb: 1 MiB of zeros, zstd-compressed to a few bytes, over the decompressed bound.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert!(bomb.len() < 2048);
        assert_eq!(push(4, &bomb), Err(ClientTelemetryError::TooLarge));
        // Compressed payloads that fit are read.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &payload(3.0)).unwrap();
        assert_eq!(push(1, &gz.finish().unwrap()), Ok(()));
        assert_eq!(push(4, &zstd::bulk::compress(&payload(3.0), 3).unwrap()), Ok(()));
        assert_eq!(push(0, &[]), Ok(()), "an empty push is taken");
        assert_eq!(t.push(Uuid::nil(), &m("p"), sub, false, 0, &[]), Err(ClientTelemetryError::InvalidRequest));
    }

    #[test]
    fn series_and_clients_are_bounded() {
        let (t, clock) = setup(ClientTelemetryConfig { max_clients: 2, max_series_per_client: 3, ..config(100) });
        let many: Vec<Vec<u8>> = (0..10).map(|i| gauge(&format!("m{i}"), &[number_point(i as f64, &[])])).collect();
        let g = t.subscribe(Uuid::nil(), &m("a")).unwrap();
        t.push(g.client_instance_id, &m("a"), g.subscription_id, false, 0, &metrics_data(&[], &many)).unwrap();
        let text = rendered(&t);
        assert_eq!(text.matches("client_id=\"a\"").count(), 3, "{text}");
        // A third client evicts the longest silent.
        clock.advance_ms(10);
        let b = t.subscribe(Uuid::nil(), &m("b")).unwrap();
        t.push(b.client_instance_id, &m("b"), b.subscription_id, false, 0, &payload(1.0)).unwrap();
        clock.advance_ms(10);
        let c = t.subscribe(Uuid::nil(), &m("c")).unwrap();
        t.push(c.client_instance_id, &m("c"), c.subscription_id, false, 0, &payload(1.0)).unwrap();
        let text = rendered(&t);
        assert!(!text.contains("client_id=\"a\""), "{text}");
        assert!(text.contains("client_id=\"b\"") && text.contains("client_id=\"c\""), "{text}");
        // Silent for the expiry: gone, seen by the next request and by a scrape.
        clock.advance_ms(INSTANCE_EXPIRY_MIN_MS as u64);
        let d = t.subscribe(Uuid::nil(), &m("d")).unwrap();
        assert_eq!(t.lock().instances.keys().collect::<Vec<_>>(), [&d.client_instance_id]);
        clock.advance_ms(INSTANCE_EXPIRY_MIN_MS as u64);
        assert_eq!(rendered(&t), "");
        assert!(t.lock().instances.is_empty());
    }

    #[test]
    fn unsubscribed_metrics_and_hostile_names_are_handled() {
        let (t, _) = setup(ClientTelemetryConfig { metrics: vec!["org.apache.kafka.producer.".into()], ..config(100) });
        let g = t.subscribe(Uuid::nil(), &m("we\"ird\n")).unwrap();
        let body = metrics_data(
            &[],
            &[
                gauge("org.apache.kafka.consumer.x", &[number_point(1.0, &[])]),
                gauge("org.apache.kafka.producer.a-b", &[number_point(2.0, &[("client_id", "spoof"), ("9x", "\"v\"")])]),
            ],
        );
        t.push(g.client_instance_id, &m("we\"ird\n"), g.subscription_id, false, 0, &body).unwrap();
        let text = rendered(&t);
        assert!(!text.contains("consumer"), "{text}");
        assert!(text.contains("kafka_client_org_apache_kafka_producer_a_b{client_id=\"we\\\"ird\\n\",client_instance_id="), "{text}");
        assert!(text.contains(",_9x=\"\\\"v\\\"\"} 2\n"), "{text}");
        assert!(!text.contains("spoof"), "{text}");
    }

    #[test]
    fn disabled_means_an_empty_subscription() {
        let (t, _) = setup(ClientTelemetryConfig::default());
        let g = t.subscribe(Uuid::nil(), &m("p")).unwrap();
        assert!(g.metrics.is_empty());
        assert_eq!(g.push_interval_ms, NO_SUBSCRIPTION_PUSH_INTERVAL_MS);
    }

    #[test]
    fn delta_sums_are_added_up() {
        let (t, clock) = setup(config(100));
        let g = t.subscribe(Uuid::nil(), &m("p")).unwrap();
        let body = metrics_data(&[], &[counter("d.total", &[number_point(2.0, &[])], true)]);
        t.push(g.client_instance_id, &m("p"), g.subscription_id, false, 0, &body).unwrap();
        clock.advance_ms(100);
        t.push(g.client_instance_id, &m("p"), g.subscription_id, false, 0, &body).unwrap();
        assert!(rendered(&t).contains("kafka_client_d_total{client_id=\"p\",client_instance_id="), "{}", rendered(&t));
        assert!(rendered(&t).contains("\"} 4\n"), "{}", rendered(&t));
    }
}
